//! A request/reply connection for `call` and `login`: a running proxy's
//! socket, or an in-process proxy (`credproxy stdio` as a child).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use credproxy_core::frame::FrameDecoder;
use credproxy_unix::client::{BlockingClient, CapabilitySource, ClientError, ClientOptions};
use serde_json::{Map, Value, json};

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
/// host-class connection).
pub(super) struct ChildProxy {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Map<String, Value>>,
    next_id: u64,
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
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let mut decoder = FrameDecoder::new(CHILD_MAX_FRAME);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut input = &buf[..n];
                while !input.is_empty() {
                    match decoder.decode(&mut input) {
                        Ok(Some(frame)) => {
                            if tx.send(frame).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        let mut proxy = ChildProxy {
            child,
            stdin,
            frames,
            next_id: 1,
            timeout,
        };
        proxy.send(&json!({"v": 2, "op": "handshake",
            "payload": {"minVersion": 1, "maxVersion": 2}}))?;
        let reply = proxy.recv(|_| true).map_err(|e| failed(e.to_string()))?;
        if reply.get("ok") != Some(&Value::Bool(true)) {
            return Err(failed(format!(
                "the in-process proxy refused the handshake: {}",
                Value::Object(reply)
            )));
        }
        Ok(proxy)
    }

    fn send(&mut self, frame: &Value) -> Result<(), Failure> {
        let bytes = credproxy_core::frame::encode(frame);
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| failed("the in-process proxy is closed"))?;
        w.write_all(&bytes)
            .and_then(|()| w.flush())
            .map_err(|_| failed(self.gone_message()))
    }

    fn recv(
        &mut self,
        wanted: impl Fn(&Map<String, Value>) -> bool,
    ) -> Result<Map<String, Value>, CallError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(frame) if wanted(&frame) => return Ok(frame),
                Ok(_) => {}
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
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send(&json!({"v": 2, "id": id, "op": op, "payload": payload}))
            .map_err(|Failure(_, m)| CallError::Transport(m))?;
        let mut reply = self.recv(|f| f.get("id").and_then(Value::as_str) == Some(id.as_str()))?;
        if reply.get("ok") == Some(&Value::Bool(true)) {
            return match reply.remove("data") {
                Some(Value::Object(data)) => Ok(data),
                _ => Ok(Map::new()),
            };
        }
        let text = |k: &str| {
            reply
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Err(CallError::Reply {
            code: text("code"),
            message: text("error"),
            retry_after: reply.get("retryAfter").and_then(Value::as_u64),
        })
    }
}
