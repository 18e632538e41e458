//! One connection to the proxy: the handshake, a writer task that owns the
//! write side, a reader task that dispatches replies by id, the table of
//! pending requests, and the idle close.
//!
//! Locks: the client's `state` lock is always taken before a connection's
//! `inner` lock, never the other way round, and neither is held across an
//! `await`. Registering a request holds `state`, so the idle close (which
//! also holds `state`) sees either the registration or the `Idle` state.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_net::unix::UnixStream;
use credproxy_core::Secret;
use credproxy_core::config::MAX_FRAME_CEILING;
use credproxy_core::frame::{self, FrameDecoder};
use serde_json::{Map, Value, json};
use smol::Timer;
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::ClientOptions;
use super::error::ClientError;
use super::reply::{HandshakeReply, Reply, handshake};

/// Largest reply payload accepted (the v2 bound).
const MAX_REPLY_BYTES: usize = MAX_FRAME_CEILING;
/// Read buffer size.
const READ_CHUNK: usize = 16 * 1024;
/// After an idle close, how long to wait for the proxy to close its side.
const LINGER: Duration = Duration::from_secs(5);

/// Locks a mutex, ignoring poisoning (no invariant spans a panic here).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the handles of one client share.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) token: Option<Secret>,
    pub(super) options: ClientOptions,
    pub(super) state: Mutex<State>,
    /// Serializes (re)connects so concurrent calls share one.
    pub(super) connect_lock: smol::lock::Mutex<()>,
    pub(super) ids: IdGen,
    /// The version of the latest handshake.
    pub(super) version: AtomicU8,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = std::mem::replace(
            self.state.get_mut().unwrap_or_else(PoisonError::into_inner),
            State::Idle(Closer::Client),
        );
        if let State::Open(conn) = state {
            conn.close_now();
        }
    }
}

/// Who closed the connection of an idle client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closer {
    /// The client: its idle timer (or not connected yet).
    Client,
    /// The proxy, with nothing pending (it evicts the connection idle
    /// longest when its table is full). If the next connect finds no proxy
    /// at all, the proxy is gone: that is a lost connection, not a
    /// connect error.
    Proxy,
}

/// The client's connection state.
pub(super) enum State {
    /// Connected and handshaken.
    Open(Arc<Conn>),
    /// Not connected (closed while idle); the next call connects.
    Idle(Closer),
    /// The connection broke; every call fails.
    Lost,
}

/// Request ids: a random per-client prefix and a counter.
pub(super) struct IdGen {
    prefix: String,
    next: AtomicU64,
}

impl IdGen {
    pub(super) fn new() -> IdGen {
        let mut raw = [0u8; 6];
        if getrandom::fill(&mut raw).is_err() {
            // Ids need only be unique among our own requests in flight; the
            // prefix just keeps them apart from other clients' in logs.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            raw[..4].copy_from_slice(&nanos.to_be_bytes());
            raw[4..].copy_from_slice(&(std::process::id() as u16).to_be_bytes());
        }
        let prefix = raw.iter().map(|b| format!("{b:02x}")).collect();
        IdGen {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    pub(super) fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// Serving requests.
    Open,
    /// Closed on purpose (idle, or the client was dropped).
    Closing,
    /// Broken: EOF, an I/O error or a malformed reply.
    Broken,
}

struct Inner {
    status: Status,
    pending: HashMap<String, Sender<Reply>>,
    /// Last registration or completion; the idle timer runs from here.
    last_activity: Instant,
}

/// One handshaken connection.
pub(super) struct Conn {
    shared: Weak<Shared>,
    version: u8,
    /// A handle for shutting the socket down.
    stream: UnixStream,
    /// Frames for the writer task.
    outbox: Sender<Vec<u8>>,
    inner: Mutex<Inner>,
}

impl Conn {
    /// Connects, handshakes, installs the connection as `shared`'s state and
    /// starts its tasks.
    pub(super) async fn open(shared: &Arc<Shared>) -> Result<(), ClientError> {
        let timeout = shared.options.handshake_timeout();
        let attempt = connect_and_handshake(&shared.path, shared.token.as_ref());
        let (stream, version, decoder, leftover) = match timeout {
            None => attempt.await?,
            Some(t) => {
                attempt
                    .or(async {
                        Timer::after(t).await;
                        Err(ClientError::HandshakeTimeout {
                            ms: shared.options.handshake_timeout_ms,
                        })
                    })
                    .await?
            }
        };
        let (outbox, queued) = smol::channel::unbounded();
        let conn = Arc::new(Conn {
            shared: Arc::downgrade(shared),
            version,
            stream: stream.clone(),
            outbox,
            inner: Mutex::new(Inner {
                status: Status::Open,
                pending: HashMap::new(),
                last_activity: Instant::now(),
            }),
        });
        shared.version.store(version, Ordering::Relaxed);
        *lock(&shared.state) = State::Open(conn.clone());
        smol::spawn(writer(conn.clone(), stream.clone(), queued)).detach();
        let idle = shared.options.idle_close();
        smol::spawn(reader(conn, stream, decoder, leftover, idle)).detach();
        Ok(())
    }

    /// Connects again if the client is idle (call with the client's
    /// connect lock held). After a close by the proxy, finding no proxy at
    /// all means it is gone: the client is lost, as when the proxy dies
    /// with requests pending.
    pub(super) async fn reopen(shared: &Arc<Shared>) -> Result<(), ClientError> {
        let closer = match &*lock(&shared.state) {
            State::Idle(closer) => *closer,
            // Another call connected meanwhile, or the client is lost.
            State::Open(_) | State::Lost => return Ok(()),
        };
        match Conn::open(shared).await {
            Err(ClientError::Connect { .. }) if closer == Closer::Proxy => {
                *lock(&shared.state) = State::Lost;
                Err(ClientError::ConnectionLost)
            }
            other => other,
        }
    }

    /// The negotiated protocol version.
    pub(super) fn version(&self) -> u8 {
        self.version
    }

    /// Registers a request. Call with the client's state lock held.
    pub(super) fn register(&self, id: &str) -> Result<Receiver<Reply>, Status> {
        let mut inner = lock(&self.inner);
        if inner.status != Status::Open {
            return Err(inner.status);
        }
        let (tx, rx) = smol::channel::bounded(1);
        inner.pending.insert(id.to_owned(), tx);
        inner.last_activity = Instant::now();
        Ok(rx)
    }

    /// Forgets a pending request; true if it was still pending.
    pub(super) fn forget(&self, id: &str) -> bool {
        let mut inner = lock(&self.inner);
        let was = inner.pending.remove(id).is_some();
        if was {
            inner.last_activity = Instant::now();
        }
        was
    }

    /// Queues a frame for the writer. A closed outbox means the connection
    /// is going away; the request's reply channel reports it.
    pub(super) fn send(&self, value: &Value) {
        let _ = self.outbox.try_send(frame::encode(value));
    }

    /// Queues `cancel {targetId}` under a fresh id whose reply is ignored.
    pub(super) fn send_cancel(&self, cancel_id: &str, target: &str) {
        self.send(&json!({
            "v": self.version,
            "id": cancel_id,
            "op": "cancel",
            "payload": {"targetId": target},
        }));
    }

    /// The connection broke: fail every pending request, mark the client
    /// lost and shut the socket. A no-op after a deliberate close.
    fn fail(self: &Arc<Self>) {
        let shared = self.shared.upgrade();
        let mut state = shared.as_ref().map(|s| lock(&s.state));
        {
            let mut inner = lock(&self.inner);
            if inner.status != Status::Open {
                return;
            }
            inner.status = Status::Broken;
            // Dropping the senders wakes every waiter with "closed".
            inner.pending.clear();
        }
        if let Some(state) = state.as_deref_mut()
            && matches!(state, State::Open(c) if Arc::ptr_eq(c, self))
        {
            *state = State::Lost;
        }
        drop(state);
        self.outbox.close();
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// The proxy closed the connection (a clean EOF). With nothing pending
    /// this is like our own idle close — the proxy drops the connection idle
    /// longest to admit a newcomer when its table is full (SPEC §3.1) — so
    /// the client goes back to `Idle` and the next call connects and
    /// handshakes again. With requests pending it is a broken connection
    /// ([`Conn::fail`]).
    fn peer_closed(self: &Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else {
            self.fail();
            return;
        };
        let mut state = lock(&shared.state);
        {
            let mut inner = lock(&self.inner);
            if inner.status != Status::Open || !inner.pending.is_empty() {
                drop(inner);
                drop(state);
                self.fail();
                return;
            }
            inner.status = Status::Closing;
        }
        if matches!(&*state, State::Open(c) if Arc::ptr_eq(c, self)) {
            *state = State::Idle(Closer::Proxy);
        }
        drop(state);
        self.outbox.close();
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Closes at once (the client is gone).
    fn close_now(&self) {
        {
            let mut inner = lock(&self.inner);
            if inner.status == Status::Open {
                inner.status = Status::Closing;
            }
            inner.pending.clear();
        }
        self.outbox.close();
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Closes gracefully if nothing is pending and the connection has been
    /// idle long enough; otherwise says when to check again.
    fn idle_check(self: &Arc<Self>, idle: Duration) -> IdleCheck {
        let Some(shared) = self.shared.upgrade() else {
            return IdleCheck::Gone;
        };
        let mut state = lock(&shared.state);
        let mut inner = lock(&self.inner);
        if inner.status != Status::Open {
            return IdleCheck::Gone;
        }
        let now = Instant::now();
        if !inner.pending.is_empty() {
            return IdleCheck::Wait(now + idle);
        }
        let due = inner.last_activity + idle;
        if now < due {
            return IdleCheck::Wait(due);
        }
        inner.status = Status::Closing;
        drop(inner);
        if matches!(&*state, State::Open(c) if Arc::ptr_eq(c, self)) {
            *state = State::Idle(Closer::Client);
        }
        drop(state);
        // The writer sends what is queued, then half-closes.
        self.outbox.close();
        IdleCheck::Closed
    }

    /// Hands a reply to its waiter. Frames without an id, or whose id is not
    /// pending, are ignored; a malformed reply is an error.
    fn dispatch(&self, frame: Map<String, Value>) -> Result<(), ()> {
        let Some(Value::String(id)) = frame.get("id") else {
            return Ok(());
        };
        let waiter = {
            let mut inner = lock(&self.inner);
            let waiter = inner.pending.remove(id.as_str());
            if waiter.is_some() {
                inner.last_activity = Instant::now();
            }
            waiter
        };
        let Some(waiter) = waiter else {
            return Ok(());
        };
        let reply = Reply::parse(frame).map_err(|_| ())?;
        let _ = waiter.try_send(reply);
        Ok(())
    }

    /// Decodes and dispatches every complete frame in `bytes`; false when
    /// the stream or a reply is malformed.
    fn feed(&self, decoder: &mut FrameDecoder, mut bytes: &[u8]) -> bool {
        loop {
            match decoder.decode(&mut bytes) {
                Ok(Some(frame)) => {
                    if self.dispatch(frame).is_err() {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

enum IdleCheck {
    /// Closed; the reader lingers for the proxy's close.
    Closed,
    /// Not yet; check again then.
    Wait(Instant),
    /// The connection is closed or broken already, or the client is gone.
    Gone,
}

/// Connects and runs the handshake; returns the stream, the negotiated
/// version, and the decoder with any bytes that followed the reply.
async fn connect_and_handshake(
    path: &Path,
    token: Option<&Secret>,
) -> Result<(UnixStream, u8, FrameDecoder, Vec<u8>), ClientError> {
    let io_error = |error: io::Error| ClientError::Connect {
        path: path.to_path_buf(),
        error,
    };
    let mut stream = UnixStream::connect(path).await.map_err(io_error)?;
    let mut payload = json!({"minVersion": 1, "maxVersion": 2});
    if let Some(token) = token {
        payload["capabilityToken"] = Value::String(token.expose().to_owned());
    }
    let mut hello = frame::encode(&json!({"v": 2, "op": "handshake", "payload": payload}));
    let written = stream.write_all(&hello).await;
    hello.fill(0);
    written.map_err(io_error)?;

    let mut decoder = FrameDecoder::new(MAX_REPLY_BYTES);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = stream.read(&mut buf).await.map_err(io_error)?;
        if n == 0 {
            return Err(ClientError::Protocol {
                reason: "the credential proxy closed the connection during the handshake",
            });
        }
        let mut input = &buf[..n];
        match decoder.decode(&mut input) {
            Ok(None) => {}
            Ok(Some(reply)) => {
                let leftover = input.to_vec();
                return match handshake(reply) {
                    Ok(HandshakeReply::Accepted(version)) => {
                        Ok((stream, version, decoder, leftover))
                    }
                    Ok(HandshakeReply::Refused { code, message }) => {
                        Err(ClientError::Handshake { code, message })
                    }
                    Err(reason) => Err(ClientError::Protocol { reason }),
                };
            }
            Err(_) => {
                return Err(ClientError::Protocol {
                    reason: "the handshake reply is not a valid frame",
                });
            }
        }
    }
}

/// Writes queued frames in order; on close, flushes and half-closes.
async fn writer(conn: Arc<Conn>, mut stream: UnixStream, queued: Receiver<Vec<u8>>) {
    while let Ok(bytes) = queued.recv().await {
        if stream.write_all(&bytes).await.is_err() {
            conn.fail();
            return;
        }
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown(Shutdown::Write);
}

enum Event {
    Read(io::Result<usize>),
    IdleTimer,
}

/// Reads replies and dispatches them; runs the idle timer.
async fn reader(
    conn: Arc<Conn>,
    mut stream: UnixStream,
    mut decoder: FrameDecoder,
    leftover: Vec<u8>,
    idle: Option<Duration>,
) {
    if !conn.feed(&mut decoder, &leftover) {
        conn.fail();
        return;
    }
    let mut buf = vec![0u8; READ_CHUNK];
    let mut idle_at = idle.map(|d| Instant::now() + d);
    loop {
        let read = async { Event::Read(stream.read(&mut buf).await) };
        let event = match idle_at {
            None => read.await,
            Some(at) => {
                read.or(async {
                    Timer::at(at).await;
                    Event::IdleTimer
                })
                .await
            }
        };
        match event {
            // EOF or an error after a deliberate close is expected; both
            // are then no-ops.
            Event::Read(Ok(0)) => {
                conn.peer_closed();
                return;
            }
            Event::Read(Err(_)) => {
                conn.fail();
                return;
            }
            Event::Read(Ok(n)) => {
                if !conn.feed(&mut decoder, &buf[..n]) {
                    conn.fail();
                    return;
                }
            }
            Event::IdleTimer => match idle.map(|d| conn.idle_check(d)) {
                Some(IdleCheck::Wait(at)) => idle_at = Some(at),
                Some(IdleCheck::Closed) => break,
                Some(IdleCheck::Gone) | None => return,
            },
        }
    }
    // Closed for idling: the writer half-closes; wait (bounded) for the
    // proxy to close its side, ignoring anything it still sends.
    drop(conn);
    let drain = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    drain
        .or(async {
            Timer::after(LINGER).await;
        })
        .await;
    let _ = stream.shutdown(Shutdown::Both);
}
