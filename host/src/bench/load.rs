//! The load generator: N connections, each on its own thread with a
//! blocking `UnixStream`, D requests in flight per connection.
//!
//! A run: every thread connects and handshakes (not measured), then all
//! wait on a barrier; the main thread takes the start instant `t0` and
//! releases them. Each thread writes its first D requests in one write and
//! from then on, whenever a read brings replies, sends one new request per
//! reply (all of them in one write). The warm-up `[t0, t0 + warmup)` and the
//! measurement window `[t0 + warmup, t0 + warmup + duration)` are judged by
//! the instant a reply arrives: only replies arriving inside the window
//! are counted and their latencies (arrival − the instant the request was
//! written) recorded. After the window no new requests are sent and the
//! outstanding ones are drained before the connection is closed.
//!
//! Request frames are encoded once per op; each request copies its frame
//! and writes a fixed-width decimal id in place. The id is
//! `generation × D + slot`, so a reply's id names its slot without a map
//! and ids are never reused on a connection.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use credproxy_core::Secret;
use credproxy_core::frame::parse_object;
use credproxy_unix::client::proto::{ClientProto, Event, Handshake, IdGen};
use serde_json::{Map, Value, json};

use super::frame::{FrameError, FrameReader, MAX_ID, RequestTemplate, error_summary, reply_head};
use super::stats::{Latencies, RunResult};

/// Bound on every read while connecting, handshaking and during a run.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply frame the generator accepts (the protocol's v2 ceiling).
pub const MAX_REPLY: usize = 4 * 1024 * 1024 + 64;

/// Initial read buffer per connection.
const READ_BUFFER: usize = 16 * 1024;

/// One operation of the mix.
#[derive(Debug, Clone)]
pub struct MixEntry {
    /// The encoded request.
    pub template: RequestTemplate,
    /// Its payload (for reports).
    pub payload: Value,
    /// Relative share of the requests.
    pub weight: u32,
}

impl MixEntry {
    /// `op` with `payload` and `weight`.
    ///
    /// # Errors
    ///
    /// When `payload` is not a JSON object.
    pub fn new(op: &str, payload: Value, weight: u32) -> Result<MixEntry, String> {
        Ok(MixEntry {
            template: RequestTemplate::new(op, &payload)?,
            payload,
            weight,
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The server's socket.
    pub socket: PathBuf,
    /// Capability token for the handshake, if the server wants one.
    pub token: Option<String>,
    /// Connections (one thread each).
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Measurement window.
    pub duration: Duration,
    /// Warm-up before the window.
    pub warmup: Duration,
    /// Operations and their weights.
    pub mix: Vec<MixEntry>,
}

/// The order in which a connection cycles through the mix: smooth
/// weighted round robin, so `a:8,b:2` gives `a a a a b a a a a b` rather
/// than eight `a` in a row.
#[must_use]
pub fn schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::new();
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
            .expect("a non-empty mix");
        current[best] -= total;
        out.push(best);
    }
    out
}

/// The default payload for `op` against a server seeded by
/// `credproxy bench` (provider `anthropic`, API key `bench`).
#[must_use]
pub fn default_payload(op: &str) -> Value {
    match op {
        "get_token" | "refresh_token" | "remove_token" | "list_buckets" | "get_bucket_stats"
        | "oauth_initiate" => json!({"provider": "anthropic"}),
        "get_api_key" | "has_api_key" => json!({"name": "bench"}),
        _ => Value::Object(Map::new()),
    }
}

/// Sends the handshake on `stream` and reads its reply with `reader`;
/// returns the reply body as received and the protocol, now `Ready`.
///
/// # Errors
///
/// A message naming what failed; "handshake refused" unless the reply is
/// an accepting one.
pub fn handshake(
    stream: &mut UnixStream,
    reader: &mut FrameReader,
    token: Option<&str>,
) -> Result<(Vec<u8>, ClientProto), String> {
    let mut proto = ClientProto::new(IdGen::new(""), MAX_REPLY);
    stream
        .write_all(&proto.handshake(token.map(Secret::new).as_ref()))
        .map_err(|e| format!("handshake: {e}"))?;
    let reply = reader
        .read_one(stream)
        .map_err(|e| format!("handshake: {e}"))?;
    if let Ok(frame) = parse_object(&reply) {
        proto.handle_frame(frame);
    }
    match proto.poll_event() {
        Some(Event::Handshake {
            outcome: Handshake::Accepted { .. },
            ..
        }) => Ok((reply, proto)),
        _ => Err(format!("handshake refused: {}", error_summary(&reply))),
    }
}

/// A handshaken connection.
pub struct Conn {
    /// The socket.
    pub stream: UnixStream,
    /// Its reader.
    pub reader: FrameReader,
    /// The handshake reply body as received.
    pub handshake_reply: Vec<u8>,
    /// The protocol, for single calls ([`Conn::call`]).
    proto: ClientProto,
}

/// Connects to `path` and handshakes; fails unless the reply is `ok`.
///
/// # Errors
///
/// A message naming what failed.
pub fn connect(path: &Path, token: Option<&str>) -> Result<Conn, String> {
    let mut stream = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(READ_BUFFER, MAX_REPLY);
    let (handshake_reply, proto) = handshake(&mut stream, &mut reader, token)?;
    Ok(Conn {
        stream,
        reader,
        handshake_reply,
        proto,
    })
}

impl Conn {
    /// Sends `op` with `payload` under `id` (as the generator writes ids:
    /// [`super::frame::ID_WIDTH`] digits) and returns its reply body (the
    /// only request outstanding).
    ///
    /// # Errors
    ///
    /// I/O and framing failures, and a reply for another id.
    pub fn call(&mut self, op: &str, payload: &Value, id: u64) -> Result<Vec<u8>, String> {
        let id = format!("{id:0width$}", width = super::frame::ID_WIDTH);
        let frame = self
            .proto
            .request_with_id(&id, op, payload, ())
            .map_err(|_| format!("{op}: the connection is closed"))?;
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("{op}: {e}"))?;
        let reply = self
            .reader
            .read_one(&mut self.stream)
            .map_err(|e| format!("{op}: {e}"))?;
        if let Ok(frame) = parse_object(&reply) {
            self.proto.handle_frame(frame);
        }
        match self.proto.poll_event() {
            Some(Event::Reply { .. }) => Ok(reply),
            _ => {
                // Whatever it was, the call is over.
                self.proto.cancel(&id);
                Err(format!(
                    "{op}: a reply for another request: {}",
                    String::from_utf8_lossy(&reply)
                ))
            }
        }
    }
}

/// What one connection thread measured.
#[derive(Debug, Default)]
struct ConnStats {
    latencies: Latencies,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ConnStats {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

/// A request slot of a connection.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    sent: Instant,
    busy: bool,
}

/// Shared, read-only plan of a run.
struct Plan {
    templates: Vec<RequestTemplate>,
    order: Vec<usize>,
    depth: usize,
    warmup: Duration,
    duration: Duration,
}

/// Runs the load once and returns the merged result.
///
/// # Errors
///
/// When a connection cannot be opened or handshaken (nothing is measured
/// then).
pub fn run_once(w: &Workload) -> Result<RunResult, String> {
    if w.connections == 0 || w.depth == 0 {
        return Err("--connections and --depth must be at least 1".into());
    }
    let plan = Arc::new(Plan {
        templates: w.mix.iter().map(|m| m.template.clone()).collect(),
        order: schedule(&w.mix.iter().map(|m| m.weight).collect::<Vec<_>>()),
        depth: w.depth,
        warmup: w.warmup,
        duration: w.duration,
    });
    let ready = Arc::new(Barrier::new(w.connections + 1));
    let go = Arc::new(Barrier::new(w.connections + 1));
    let start: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    // Set before the first barrier by a thread that could not connect, so
    // the others stop at once instead of loading the server for nothing.
    let failed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(w.connections);
    for index in 0..w.connections {
        let (plan, ready, go) = (plan.clone(), ready.clone(), go.clone());
        let (start, failed) = (start.clone(), failed.clone());
        let socket = w.socket.clone();
        let token = w.token.clone();
        let t = thread::Builder::new()
            .name(format!("bench-conn-{index}"))
            .spawn(move || {
                // Connect and handshake before the barrier: not measured.
                let conn = connect(&socket, token.as_deref());
                if conn.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                ready.wait();
                go.wait();
                let mut conn = conn?;
                if failed.load(Ordering::SeqCst) {
                    return Ok(ConnStats::default());
                }
                let t0 = *start.get().expect("start set before release");
                Ok::<_, String>(drive(&mut conn, &plan, t0, index))
            })
            .map_err(|e| format!("cannot start a connection thread: {e}"))?;
        threads.push(t);
    }
    ready.wait();
    let t0 = Instant::now();
    start.set(t0).expect("set once");
    go.wait();
    let mut total = ConnStats::default();
    let mut failure = None;
    for t in threads {
        match t.join() {
            Ok(Ok(s)) => {
                total.latencies.merge(&s.latencies);
                total.requests += s.requests;
                total.errors += s.errors;
                if total.first_error.is_none() {
                    total.first_error = s.first_error;
                }
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a connection thread panicked".to_owned())),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let elapsed = w.duration.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rps = if elapsed > 0.0 {
        total.requests as f64 / elapsed
    } else {
        0.0
    };
    Ok(RunResult {
        requests: total.requests,
        errors: total.errors,
        elapsed_s: elapsed,
        rps,
        latency_us: total.latencies.summary(),
        first_error: total.first_error,
    })
}

/// One connection's load loop (see the module docs).
fn drive(conn: &mut Conn, plan: &Plan, t0: Instant, index: usize) -> ConnStats {
    let depth = plan.depth as u64;
    let warm_end = t0 + plan.warmup;
    let end = warm_end + plan.duration;
    let mut stats = ConnStats::default();
    let mut slots = vec![
        Slot {
            id: 0,
            sent: t0,
            busy: false,
        };
        plan.depth
    ];
    let mut generation = vec![0u64; plan.depth];
    let mut ready: Vec<usize> = (0..plan.depth).collect();
    let mut outstanding = 0usize;
    // Each connection starts at a different place in the mix.
    let mut next_op = index % plan.order.len();
    let frame_len = plan.templates.iter().map(|t| t.bytes.len()).max();
    let mut out = Vec::with_capacity(frame_len.unwrap_or(64) * plan.depth);
    let Conn { stream, reader, .. } = conn;
    loop {
        if !ready.is_empty() {
            out.clear();
            let sent = Instant::now();
            for &slot in &ready {
                let id = generation[slot] * depth + slot as u64;
                generation[slot] += 1;
                if id > MAX_ID {
                    // Ran out of ids (not reachable in a realistic run).
                    continue;
                }
                let template = &plan.templates[plan.order[next_op]];
                next_op = (next_op + 1) % plan.order.len();
                template.append(&mut out, id);
                slots[slot] = Slot {
                    id,
                    sent,
                    busy: true,
                };
                outstanding += 1;
            }
            ready.clear();
            if let Err(e) = stream.write_all(&out) {
                stats.error(|| format!("write failed: {e}"));
                return stats;
            }
        }
        if outstanding == 0 {
            return stats;
        }
        match reader.fill(stream) {
            Ok(0) => {
                let e = if reader.has_partial() {
                    FrameError::Truncated
                } else {
                    FrameError::Closed
                };
                stats.error(|| e.to_string());
                return stats;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                stats.error(|| FrameError::Io(e).to_string());
                return stats;
            }
        }
        let now = Instant::now();
        let counted = now >= warm_end && now < end;
        loop {
            let body = match reader.next_frame() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    stats.error(|| e.to_string());
                    return stats;
                }
            };
            let head = reply_head(&body);
            let slot = head
                .and_then(|h| h.id)
                .map(|id| (id, usize::try_from(id % depth).expect("slot < depth")))
                .filter(|&(id, slot)| slots[slot].busy && slots[slot].id == id);
            let Some((_, slot)) = slot else {
                stats.error(|| {
                    format!(
                        "a reply that matches no request: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )
                });
                continue;
            };
            slots[slot].busy = false;
            outstanding -= 1;
            if counted {
                stats.requests += 1;
                stats.latencies.record(now - slots[slot].sent);
                if head.is_some_and(|h| !h.ok) {
                    stats.error(|| error_summary(&body));
                }
            }
            if now < end {
                ready.push(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credproxy_core::frame;

    #[test]
    fn schedule_interleaves_by_weight() {
        assert_eq!(schedule(&[1]), vec![0]);
        let s = schedule(&[8, 2]);
        assert_eq!(s.len(), 10);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 2);
        // Never more than four of the heavy one in a row.
        let doubled: Vec<usize> = s.iter().chain(s.iter()).copied().collect();
        assert!(!doubled.windows(5).any(|w| w.iter().all(|&i| i == 0)));
        assert_eq!(schedule(&[1, 1, 1]), vec![0, 1, 2]);
    }

    /// Runs [`handshake`] against a peer that already queued `reply`;
    /// returns the outcome and the frame the handshake sent.
    fn handshake_with(token: Option<&str>, reply: &Value) -> (Result<Vec<u8>, String>, Value) {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&frame::encode(reply)).unwrap();
        let mut reader = FrameReader::new(64, 1024);
        let got = handshake(&mut ours, &mut reader, token).map(|(body, _)| body);
        let sent = FrameReader::new(64, 1024).read_one(&mut theirs).unwrap();
        (got, serde_json::from_slice(&sent).unwrap())
    }

    #[test]
    fn handshake_frame_carries_the_token() {
        let accepted = json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}});
        let (got, v) = handshake_with(Some("ab"), &accepted);
        assert_eq!(v["payload"]["capabilityToken"], "ab");
        assert_eq!(v["op"], "handshake");
        assert_eq!(
            serde_json::from_slice::<Value>(&got.unwrap()).unwrap(),
            accepted
        );
        let (got, v) = handshake_with(None, &accepted);
        assert!(v["payload"].get("capabilityToken").is_none());
        assert!(got.is_ok());
        let refused = json!({"v":2,"op":"handshake","ok":false,"code":"UNAUTHORIZED","error":"no"});
        assert_eq!(
            handshake_with(None, &refused).0,
            Err("handshake refused: UNAUTHORIZED: no".to_owned())
        );
    }
}
