//! The baseline: a raw Unix-socket echo server, in process, one thread per
//! connection, that answers every request frame with the exact reply bytes
//! the real server sent for that operation, only the `id` rewritten.
//!
//! The replies are captured first ([`capture`]): one connection to the
//! real server, a handshake, each operation of the mix once with a known
//! id. The reply is split around that id into a prefix and a suffix; an
//! answer is `len ‖ prefix ‖ id ‖ suffix`. The echo reads whatever the
//! socket has, answers every complete frame and writes all answers in one
//! write: the least work a server of this protocol can do per request,
//! i.e. the physical limit of the machine for this load.

use std::fs;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use credproxy_core::frame::encode_payload as encode;
use serde_json::Value;

use super::frame::{FrameReader, ID_WIDTH, error_summary, put_id, reply_head};
use super::load::{MixEntry, connect};

/// The id under which replies are captured (12 digits, like every id the
/// generator sends, and unlikely to appear anywhere else in a reply).
const CAPTURE_ID: u64 = 424_242_424_242;

/// Largest request the echo accepts.
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// A captured reply, split around its id.
#[derive(Debug, Clone)]
struct OpReply {
    op: Vec<u8>,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

impl OpReply {
    fn write(&self, id: &[u8], out: &mut Vec<u8>) {
        let len = self.prefix.len() + id.len() + self.suffix.len();
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.suffix);
    }
}

/// The replies the echo sends.
#[derive(Debug, Clone)]
pub struct Replies {
    handshake: Vec<u8>,
    ops: Vec<OpReply>,
    /// Ops whose captured reply is an error (`CODE: message`), for a
    /// warning: the baseline then answers with that error too.
    pub errors: Vec<String>,
}

/// Connects to the real server and records its handshake reply and one
/// reply per operation of `mix`.
///
/// # Errors
///
/// When the server cannot be reached, or a reply does not carry the id.
pub fn capture(socket: &Path, token: Option<&str>, mix: &[MixEntry]) -> Result<Replies, String> {
    let mut conn = connect(socket, token)?;
    let mut id = [0u8; ID_WIDTH];
    put_id(&mut id, CAPTURE_ID);
    let mut needle = Vec::with_capacity(ID_WIDTH + 2);
    needle.push(b'"');
    needle.extend_from_slice(&id);
    needle.push(b'"');
    let mut ops = Vec::new();
    let mut errors = Vec::new();
    for m in mix {
        let reply = conn.call(&m.template.op, &m.payload, CAPTURE_ID)?;
        if reply_head(&reply).is_some_and(|h| !h.ok) {
            errors.push(format!("{}: {}", m.template.op, error_summary(&reply)));
        }
        let at = reply
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .ok_or_else(|| format!("the reply to {} does not carry its id", m.template.op))?;
        ops.push(OpReply {
            op: m.template.op.as_bytes().to_vec(),
            prefix: reply[..=at].to_vec(),
            suffix: reply[at + 1 + ID_WIDTH..].to_vec(),
        });
    }
    Ok(Replies {
        handshake: conn.handshake_reply,
        ops,
        errors,
    })
}

impl Replies {
    fn find(&self, op: &[u8]) -> Option<&OpReply> {
        self.ops.iter().find(|r| r.op == op)
    }

    /// Appends the answer to one request frame body to `out`.
    fn answer(&self, req: &[u8], out: &mut Vec<u8>) {
        // Fast path: the layout the generator writes,
        // {"v":2,"id":"<12 digits>","op":"<op>",…
        if let Some(rest) = req.strip_prefix(br#"{"v":2,"id":""#)
            && rest.len() > ID_WIDTH
            && rest[ID_WIDTH] == b'"'
            && let Some(op_rest) = rest[ID_WIDTH + 1..].strip_prefix(br#","op":""#)
            && let Some(q) = op_rest.iter().position(|&b| b == b'"')
            && let Some(reply) = self.find(&op_rest[..q])
        {
            reply.write(&rest[..ID_WIDTH], out);
            return;
        }
        self.answer_slow(req, out);
    }

    /// Anything else: the handshake, another client's layout, an unknown
    /// op.
    fn answer_slow(&self, req: &[u8], out: &mut Vec<u8>) {
        let v: Value = serde_json::from_slice(req).unwrap_or(Value::Null);
        let op = v.get("op").and_then(Value::as_str).unwrap_or("");
        if op == "handshake" {
            out.extend_from_slice(&encode(&self.handshake));
            return;
        }
        let id = match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => "unknown".to_owned(),
        };
        let quoted = serde_json::to_string(&id).expect("JSON string");
        let id_bytes = &quoted.as_bytes()[1..quoted.len() - 1];
        match self.find(op.as_bytes()) {
            Some(reply) => reply.write(id_bytes, out),
            None => {
                let body = serde_json::json!({
                    "id": id, "ok": false, "code": "INVALID_REQUEST",
                    "error": format!("Unknown operation: {op}"),
                });
                out.extend_from_slice(&encode(&serde_json::to_vec(&body).expect("JSON")));
            }
        }
    }
}

/// A running echo server; stopped (and its socket removed) on drop.
pub struct EchoServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `path` and answers with `replies`.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub fn start(path: &Path, replies: Replies) -> Result<EchoServer, String> {
        let _ = fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot bind the echo socket {}: {e}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(replies);
        let flag = stop.clone();
        let accept = thread::Builder::new()
            .name("bench-echo-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let replies = replies.clone();
                    let _ = thread::Builder::new()
                        .name("bench-echo-conn".into())
                        .spawn(move || serve(stream, &replies));
                }
            })
            .map_err(|e| format!("cannot start the echo server: {e}"))?;
        Ok(EchoServer {
            path: path.to_path_buf(),
            stop,
            accept: Some(accept),
        })
    }

    /// The socket path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// One echo connection: answer every complete frame, one write per read.
fn serve(mut stream: UnixStream, replies: &Replies) {
    let mut reader = FrameReader::new(16 * 1024, MAX_REQUEST);
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        match reader.fill(&mut stream) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        out.clear();
        loop {
            match reader.next_frame() {
                Ok(Some(req)) => replies.answer(&req, &mut out),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() && stream.write_all(&out).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::frame::RequestTemplate;
    use serde_json::json;

    fn replies() -> Replies {
        Replies {
            handshake: br#"{"v":2,"op":"handshake","ok":true,"data":{"version":2}}"#.to_vec(),
            ops: vec![OpReply {
                op: b"get_token".to_vec(),
                prefix: br#"{"id":""#.to_vec(),
                suffix: br#"","ok":true,"data":{"access_token":"x"}}"#.to_vec(),
            }],
            errors: Vec::new(),
        }
    }

    fn body(out: &[u8]) -> Value {
        serde_json::from_slice(&out[4..]).unwrap()
    }

    #[test]
    fn answers_generator_frames_with_the_id_rewritten() {
        let t = RequestTemplate::new("get_token", &json!({"provider":"a"})).unwrap();
        let mut frame = Vec::new();
        t.append(&mut frame, 77);
        let mut out = Vec::new();
        replies().answer(&frame[4..], &mut out);
        assert_eq!(
            body(&out),
            json!({"id":"000000000077","ok":true,"data":{"access_token":"x"}})
        );
        assert_eq!(
            out.len(),
            4 + u32::from_be_bytes(out[..4].try_into().unwrap()) as usize
        );
    }

    #[test]
    fn answers_handshakes_other_layouts_and_unknown_ops() {
        let r = replies();
        let mut out = Vec::new();
        r.answer(br#"{"v":2,"op":"handshake","payload":{}}"#, &mut out);
        assert_eq!(body(&out)["data"]["version"], 2);
        out.clear();
        r.answer(br#"{"op":"get_token","id":5,"v":2}"#, &mut out);
        assert_eq!(body(&out)["id"], "5");
        out.clear();
        r.answer(br#"{"v":2,"id":"a\"b","op":"nope"}"#, &mut out);
        assert_eq!(body(&out)["code"], "INVALID_REQUEST");
        assert_eq!(body(&out)["id"], "a\"b");
    }
}
