//! A request/reply connection for `call` and `login`: a running proxy's
//! socket, or an in-process proxy (`credproxy stdio` as a child).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use credproxy_unix::client::proto::{ClientProto, Event, Handshake, IdGen, ProtocolError};
use credproxy_unix::client::{BlockingClient, CapabilitySource, ClientError, ClientOptions};
use serde_json::{Map, Value};

use super::{Failure, failed};

// A request/reply connection: a running proxy's socket, or an in-process
// proxy (`credproxy stdio` as a child).

/// Why a call failed.
pub(super) enum CallError {
    /// The proxy answered with an error.
    Reply {
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// No answer: connection, timeout, protocol.
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Reply {
                code,
                message,
                retry_after,
            } => {
                write!(f, "{code}: {message}")?;
                if let Some(s) = retry_after {
                    write!(f, " (retry after {s}s)")?;
                }
                Ok(())
            }
            CallError::Transport(m) => f.write_str(m),
        }
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> CallError {
        match e {
            ClientError::Server {
                code,
                message,
                retry_after,
            } => CallError::Reply {
                code,
                message,
                retry_after,
            },
            other => CallError::Transport(connect_message(&other)),
        }
    }
}

pub(super) trait Conn {
    fn call(&mut self, op: &str, payload: Value) -> Result<Map<String, Value>, CallError>;
}

impl Conn for BlockingClient {
    fn call(&mut self, op: &str, payload: Value) -> Result<Map<String, Value>, CallError> {
        BlockingClient::call(self, op, payload).map_err(CallError::from)
    }
}

/// The socket named by `flag`, else `CREDPROXY_SOCKET`, else
/// `LLXPRT_CREDENTIAL_SOCKET`.
pub(super) fn client_socket(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        ["CREDPROXY_SOCKET", "LLXPRT_CREDENTIAL_SOCKET"]
            .into_iter()
            .find_map(|v| std::env::var_os(v).filter(|s| !s.is_empty()))
            .map(PathBuf::from)
    })
}

pub(super) fn connect_message(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => format!(
            "{e}; is the proxy running? Start one with `credproxy serve` and pass its \
             socket with --socket PATH or CREDPROXY_SOCKET"
        ),
        other => other.to_string(),
    }
}

pub(super) fn connect(
    socket: &Path,
    capability_file: Option<&Path>,
    timeout_ms: u64,
) -> Result<BlockingClient, Failure> {
    let capability = match capability_file {
        Some(p) => CapabilitySource::File(p.to_path_buf()),
        None => CapabilitySource::from_env().map_err(failed)?,
    };
    let options = ClientOptions {
        request_timeout_ms: timeout_ms,
        handshake_timeout_ms: timeout_ms,
        idle_close_ms: 0,
    };
    BlockingClient::connect_with_options(socket, capability, options)
        .map_err(|e| failed(connect_message(&e)))
}

/// `credproxy stdio` as a child process, spoken to over its pipes (a
/// host-class connection). A thread forwards what the child writes; the
/// protocol (handshake, ids, matching replies) is [`ClientProto`].
pub(super) struct ChildProxy {
    child: Child,
    stdin: Option<ChildStdin>,
    chunks: mpsc::Receiver<Vec<u8>>,
    proto: ClientProto,
    timeout: Duration,
}

/// Largest reply frame read from the child.
pub(super) const CHILD_MAX_FRAME: usize = 8 * 1024 * 1024;

impl ChildProxy {
    pub(super) fn start(args: &[String], timeout: Duration) -> Result<ChildProxy, Failure> {
        let exe = std::env::current_exe()
            .map_err(|e| failed(format!("cannot find the credproxy executable: {e}")))?;
        let mut child = Command::new(&exe)
            .arg("stdio")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed(format!("cannot start {} stdio: {e}", exe.display())))?;
        let stdin = child.stdin.take();
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed("the in-process proxy has no stdout"))?;
        let (tx, chunks) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        // Ids are plain numbers: this connection is ours alone.
        let proto = ClientProto::new(IdGen::new(""), CHILD_MAX_FRAME);
        let hello = proto.handshake(None);
        let mut proxy = ChildProxy {
            child,
            stdin,
            chunks,
            proto,
            timeout,
        };
        proxy.send(&hello)?;
        let deadline = Instant::now() + proxy.timeout;
        match proxy
            .next_event(deadline)
            .map_err(|e| failed(e.to_string()))?
        {
            Event::Handshake {
                outcome: Handshake::Accepted { .. },
                ..
            } => Ok(proxy),
            Event::Handshake { frame, .. } => Err(failed(format!(
                "the in-process proxy refused the handshake: {}",
                Value::Object(frame)
            ))),
            Event::Error(e) => Err(failed(proxy.broken(e).to_string())),
            Event::Reply { .. } | Event::Unsolicited(_) => {
                Err(failed("the in-process proxy did not answer the handshake"))
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| failed("the in-process proxy is closed"))?;
        w.write_all(bytes)
            .and_then(|()| w.flush())
            .map_err(|_| failed(self.gone_message()))
    }

    /// The next protocol event, reading what the child writes until
    /// `deadline`.
    fn next_event(&mut self, deadline: Instant) -> Result<Event, CallError> {
        loop {
            if let Some(event) = self.proto.poll_event() {
                return Ok(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(bytes) => self.proto.handle_bytes(&bytes),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(CallError::Transport(format!(
                        "the in-process proxy did not answer within {}s",
                        self.timeout.as_secs()
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(CallError::Transport(self.gone_message()));
                }
            }
        }
    }

    /// What to report when the child broke the protocol: a stream that is
    /// not frames reads as the child going away (it is no proxy then); a
    /// malformed envelope names what is wrong.
    fn broken(&mut self, e: ProtocolError) -> CallError {
        match e {
            ProtocolError::Framing(_) => CallError::Transport(self.gone_message()),
            ProtocolError::Handshake(why) | ProtocolError::Reply(why) => CallError::Transport(
                format!("the in-process proxy (credproxy stdio) broke the protocol: {why}"),
            ),
        }
    }

    fn gone_message(&mut self) -> String {
        // Its stdin closed, a child that is still running ends too.
        drop(self.stdin.take());
        let status = self.child.wait().ok().and_then(|s| s.code());
        match status {
            Some(code) => format!(
                "the in-process proxy (credproxy stdio) exited with status {code}; see its message above"
            ),
            None => "the in-process proxy (credproxy stdio) ended unexpectedly".to_owned(),
        }
    }

    /// Closes stdin (the child finishes and exits) and reaps the child.
    pub(super) fn finish(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Conn for ChildProxy {
    fn call(&mut self, op: &str, payload: Value) -> Result<Map<String, Value>, CallError> {
        let (id, bytes) = self
            .proto
            .request(op, &payload, ())
            .map_err(|_| CallError::Transport("the in-process proxy is closed".to_owned()))?;
        self.send(&bytes)
            .map_err(|Failure(_, m)| CallError::Transport(m))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next_event(deadline)? {
                Event::Reply {
                    id: answered,
                    reply,
                    ..
                } if answered == id => {
                    return reply.into_result().map_err(|e| CallError::Reply {
                        code: e.code.unwrap_or_default(),
                        message: e.message.unwrap_or_default(),
                        retry_after: e.retry_after.and_then(|n| n.as_u64()),
                    });
                }
                Event::Error(e) => return Err(self.broken(e)),
                // The late reply to a call that timed out, or a frame for
                // no request.
                Event::Reply { .. } | Event::Unsolicited(_) | Event::Handshake { .. } => {}
            }
        }
    }
}
