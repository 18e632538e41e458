//! One connection to the proxy: the handshake, a writer task that owns the
//! write side, a reader task that hands each reply to its waiter, and the
//! idle close. The protocol itself (frames, the handshake, the table of
//! pending requests and matching replies by id) is the sans-IO
//! [`ClientProto`], kept under the connection's `inner` lock with each
//! request's waiter as its tag.
//!
//! Locks: the client's `state` lock is always taken before a connection's
//! `inner` lock, never the other way round, and neither is held across an
//! `await`. Registering a request holds `state`, so the idle close (which
//! also holds `state`) sees either the registration or the `Idle` state.

use std::io;
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_net::unix::UnixStream;
use credproxy_core::Secret;
use credproxy_core::config::MAX_FRAME_CEILING;
use serde_json::Value;
use smol::Timer;
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::ClientOptions;
use super::error::ClientError;
use super::proto::{ClientProto, Event, Handshake, IdGen, ProtocolError, Reply, RequestId};

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

/// Request ids for a new client: a random prefix (12 hex digits) and a
/// counter shared by all its connections.
pub(super) fn new_ids() -> IdGen {
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
    IdGen::new(raw.iter().map(|b| format!("{b:02x}")).collect::<String>())
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
    /// The protocol; each pending request's tag is its waiter.
    proto: ClientProto<Sender<Reply>>,
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
        let attempt = connect_and_handshake(&shared.path, shared.token.as_ref(), &shared.ids);
        let (stream, version, proto) = match timeout {
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
                proto,
                last_activity: Instant::now(),
            }),
        });
        shared.version.store(version, Ordering::Relaxed);
        *lock(&shared.state) = State::Open(conn.clone());
        smol::spawn(writer(conn.clone(), stream.clone(), queued)).detach();
        let idle = shared.options.idle_close();
        smol::spawn(reader(conn, stream, idle)).detach();
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

    /// Registers a request and queues its frame. Call with the client's
    /// state lock held.
    pub(super) fn start(
        &self,
        op: &str,
        payload: &Value,
    ) -> Result<(RequestId, Receiver<Reply>), Status> {
        let mut inner = lock(&self.inner);
        if inner.status != Status::Open {
            return Err(inner.status);
        }
        let (tx, rx) = smol::channel::bounded(1);
        // Not ready: the protocol just broke; the reader is failing the
        // connection.
        let (id, bytes) = inner
            .proto
            .request(op, payload, tx)
            .map_err(|_| Status::Broken)?;
        inner.last_activity = Instant::now();
        self.send(bytes);
        Ok((id, rx))
    }

    /// Gives up on a request: if it is still pending, forgets it and
    /// queues `cancel` for it (under a fresh id whose reply is ignored).
    pub(super) fn cancel(&self, id: &str) {
        let mut inner = lock(&self.inner);
        if let Some((_waiter, bytes)) = inner.proto.cancel(id) {
            inner.last_activity = Instant::now();
            self.send(bytes);
        }
    }

    /// Queues a frame for the writer. A closed outbox means the connection
    /// is going away; the request's reply channel reports it.
    fn send(&self, bytes: Vec<u8>) {
        let _ = self.outbox.try_send(bytes);
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
            inner.proto.close();
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
            if inner.status != Status::Open || inner.proto.pending() > 0 {
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
            inner.proto.close();
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
        if inner.proto.pending() > 0 {
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

    /// Decodes `bytes` and hands every reply to its waiter; false when the
    /// stream or a reply is malformed.
    fn feed(&self, bytes: &[u8]) -> bool {
        let mut inner = lock(&self.inner);
        inner.proto.handle_bytes(bytes);
        drain(&mut inner)
    }
}

/// Hands out the protocol's events: replies to their waiters; frames that
/// answer nothing pending (a cancelled request, a `cancel`) are ignored.
/// False once the protocol broke.
fn drain(inner: &mut Inner) -> bool {
    while let Some(event) = inner.proto.poll_event() {
        match event {
            Event::Reply { reply, tag, .. } => {
                inner.last_activity = Instant::now();
                let _ = tag.try_send(reply);
            }
            Event::Error(_) => return false,
            Event::Unsolicited(_) | Event::Handshake { .. } => {}
        }
    }
    true
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
/// version, and the protocol (holding what followed the reply).
async fn connect_and_handshake(
    path: &Path,
    token: Option<&Secret>,
    ids: &IdGen,
) -> Result<(UnixStream, u8, ClientProto<Sender<Reply>>), ClientError> {
    let io_error = |error: io::Error| ClientError::Connect {
        path: path.to_path_buf(),
        error,
    };
    let mut stream = UnixStream::connect(path).await.map_err(io_error)?;
    let mut proto = ClientProto::new(ids.clone(), MAX_REPLY_BYTES);
    let mut hello = proto.handshake(token);
    let written = stream.write_all(&hello).await;
    hello.fill(0);
    written.map_err(io_error)?;

    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = stream.read(&mut buf).await.map_err(io_error)?;
        if n == 0 {
            return Err(ClientError::Protocol {
                reason: "the credential proxy closed the connection during the handshake",
            });
        }
        proto.handle_bytes(&buf[..n]);
        // While handshaking the first event is the handshake's outcome.
        return match proto.poll_event() {
            None => continue,
            Some(Event::Handshake {
                outcome: Handshake::Accepted { version },
                ..
            }) => Ok((stream, version, proto)),
            Some(Event::Handshake {
                outcome: Handshake::Refused { code, message },
                ..
            }) => Err(ClientError::Handshake { code, message }),
            Some(Event::Error(ProtocolError::Handshake(reason))) => {
                Err(ClientError::Protocol { reason })
            }
            Some(_) => Err(ClientError::Protocol {
                reason: "the handshake reply is not a valid frame",
            }),
        };
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

enum Wake {
    Read(io::Result<usize>),
    IdleTimer,
}

/// Reads replies and dispatches them; runs the idle timer.
async fn reader(conn: Arc<Conn>, mut stream: UnixStream, idle: Option<Duration>) {
    // Frames that came with the handshake reply.
    if !drain(&mut lock(&conn.inner)) {
        conn.fail();
        return;
    }
    let mut buf = vec![0u8; READ_CHUNK];
    let mut idle_at = idle.map(|d| Instant::now() + d);
    loop {
        let read = async { Wake::Read(stream.read(&mut buf).await) };
        let event = match idle_at {
            None => read.await,
            Some(at) => {
                read.or(async {
                    Timer::at(at).await;
                    Wake::IdleTimer
                })
                .await
            }
        };
        match event {
            // EOF or an error after a deliberate close is expected; both
            // are then no-ops.
            Wake::Read(Ok(0)) => {
                conn.peer_closed();
                return;
            }
            Wake::Read(Err(_)) => {
                conn.fail();
                return;
            }
            Wake::Read(Ok(n)) => {
                if !conn.feed(&buf[..n]) {
                    conn.fail();
                    return;
                }
            }
            Wake::IdleTimer => match idle.map(|d| conn.idle_check(d)) {
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
