//! The driver: runs the engine and executes its outputs.
//!
//! The [`Engine`] lives behind one lock (`state.rs`); whoever holds it drives
//! the engine and routes its outputs. Every connection is served by the
//! I/O threads (`io_thread.rs`, `socket_conn.rs`): each owns its
//! connections and its own `mio` poller, reads, drives the engine with what
//! it read, and writes the replies itself — the `get_token` hot path (read,
//! decode, a store cache hit, encode, write) runs on one thread without
//! waking another, and connections on different threads are served on
//! different cores at once. Streams that are not sockets (stdio,
//! embedders' boxed `AsyncRead`/`AsyncWrite` halves) are bridged onto a
//! socket pair (`bridge.rs`) and served by the same code.
//!
//! The loop task ([`Driver::run`], on the caller's [`LocalExecutor`]) does
//! the rest: it registers new connections, sleeps until the engine's next
//! deadline (woken early when a connection's handler moves it), and
//! executes the effects that cannot be answered inline. Those that may
//! block (store reads and writes, lock waits, HTTP) run on smol's blocking
//! pool through [`Executor::execute`], their results queued in
//! `completions.rs` for whoever takes the engine lock next (the loop task
//! is woken by [`Event::EffectsDone`] in case nobody does). The loopback listener effects run on the
//! [`LocalExecutor`]: `StartListener` binds at once (a local bind does not
//! wait) and answers `Listening(true|false)`; the driver keeps the running
//! listeners by port and `StopListener` drops one. Each loopback `GET`
//! comes back as [`Event::Loopback`]; the engine's `Output::LoopbackReply`
//! is routed to the waiting connection by request id. On shutdown the
//! listeners stop, every held store lock is released, and the connections
//! get a bounded time to flush the replies already produced.
//!
//! Back-pressure and fairness are per connection: see `socket_conn.rs`.

mod audit_queue;
mod bridge;
mod completions;
mod io_thread;
mod socket_conn;
mod state;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use self::audit_queue::AuditQueue;
use std::time::Instant;

use credproxy_core::{ConnId, EffectId, EffectResult, Engine, Peer};
use rand_core::CryptoRng;
use smol::channel::{Receiver, Sender, bounded, unbounded};
use smol::io::{AsyncRead, AsyncWrite};
use smol::{LocalExecutor, Timer};

use self::io_thread::IoThreads;
pub use self::io_thread::default_threads;
use self::socket_conn::SocketConn;
use self::state::{ConnIo, Flow, Shared, State, drive, lock};
use crate::audit_log::AuditLog;
use crate::effects::Executor;
use crate::loopback::{self, Incoming, Listener};
use crate::store::Store;

/// Unsent output per connection above which reading pauses (1 MiB).
pub const MAX_UNSENT: usize = 1024 * 1024;

/// How long [`Driver::run`] waits, after the loop has ended, for the
/// connections to flush the replies already produced (a peer that stops
/// reading cannot hold the process forever).
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// A boxed reading half.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
/// A boxed writing half.
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;
/// Called once the writer has flushed its last bytes for a closed
/// connection (e.g. to shut the socket down so the reader stops).
pub type OnClose = Box<dyn FnOnce() + Send>;

/// Something for the loop task.
pub enum Event {
    /// A transport accepted a connection over a pair of streams (bridged
    /// onto a socket pair and served like a socket, see `bridge.rs`).
    Open {
        /// Reading half.
        reader: Reader,
        /// Writing half.
        writer: Writer,
        /// Run once everything the connection wrote has been written to
        /// `writer` and it is closed.
        on_close: OnClose,
        /// Who is connected.
        peer: Peer,
    },
    /// A transport accepted a Unix socket connection (served by the I/O
    /// threads).
    OpenSocket {
        /// The connection.
        stream: std::os::unix::net::UnixStream,
        /// Who is connected.
        peer: Peer,
    },
    /// A transport refused a connection before it reached the engine.
    Refused {
        /// Short reason (audit outcome).
        reason: &'static str,
    },
    /// A loopback listener effect: the listeners live on the loop task's
    /// executor.
    Listener(EffectId, Listen),
    /// Effect results wait in the completions queue (sent when the queue
    /// stops being empty).
    EffectsDone,
    /// The engine's next deadline moved earlier than the loop's timer.
    Rearm,
    /// A bridged connection ended (everything written to its writer), or
    /// the last connection was removed.
    ConnectionEnded,
    /// A loopback listener received a `GET`. The `target` (path and query)
    /// holds an authorization code and `state`: never log it.
    Loopback {
        /// Id the engine answers under.
        request: u64,
        /// The listener's port.
        port: u16,
        /// Request target (path and query).
        target: String,
        /// Where the engine's `(status, body)` goes.
        reply: Sender<loopback::Reply>,
    },
    /// Stop serving.
    Shutdown,
}

/// What a listener effect asks of the loop task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// `Effect::StartListener` on this port.
    Start(u16),
    /// `Effect::StopListener` on this port.
    Stop(u16),
}

/// Counts the connections open now (for a warning; takes the engine lock).
pub type OpenCount = Box<dyn Fn() -> usize>;

/// A connection the engine accepted.
struct Registered {
    conn: ConnId,
    outbox: Receiver<state::Outgoing>,
    flow: Arc<Flow>,
}

/// When the loop should end on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Until [`Event::Shutdown`].
    UntilShutdown,
    /// Until the first connection has come and gone (stdio).
    SingleConnection,
}

/// The engine with its connections, and the loop task's own state.
pub struct Driver<R> {
    shared: Arc<Shared<R>>,
    events: Sender<Event>,
    io_threads: NonZeroUsize,
    /// The I/O threads, once started.
    io: Option<IoThreads>,
    /// Cloned into every connection (and bridge) and dropped when it has
    /// written its last bytes, so the receiver sees the channel close once
    /// every connection has flushed.
    writers_alive: Sender<()>,
    writers_done: Receiver<()>,
    /// Running loopback listeners by port.
    listeners: BTreeMap<u16, Listener>,
    /// The next loopback request id (shared with the listeners' callbacks).
    next_loopback: Rc<Cell<u64>>,
    /// The loop's timer and the instant it is set to.
    timer: Timer,
    timer_at: Option<Instant>,
}

impl<R: CryptoRng + Send + 'static> Driver<R> {
    /// A driver for `engine`; `events` is the sender half of the channel
    /// whose receiver is passed to [`Driver::run`].
    pub fn new(
        engine: Engine<R>,
        store: Arc<Store>,
        audit: Arc<AuditLog>,
        events: Sender<Event>,
    ) -> Driver<R> {
        let executor = Executor::new(store).with_audit(audit.clone());
        Driver::with_executor(engine, executor, audit, events)
    }

    /// A driver whose effects run on `executor` (e.g. to share its lock
    /// table with the caller).
    pub fn with_executor(
        engine: Engine<R>,
        executor: Executor,
        audit: Arc<AuditLog>,
        events: Sender<Event>,
    ) -> Driver<R> {
        let (writers_alive, writers_done) = bounded(1);
        let state = State::new(engine, events.clone());
        Driver {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                audit: AuditQueue::new(audit),
                executor,
                completions: Arc::default(),
            }),
            events,
            io_threads: default_threads(),
            io: None,
            writers_alive,
            writers_done,
            listeners: BTreeMap::new(),
            next_loopback: Rc::new(Cell::new(1)),
            timer: Timer::never(),
            timer_at: None,
        }
    }

    /// Sets the number of I/O threads (default: [`default_threads`]).
    #[must_use]
    pub fn io_threads(mut self, threads: NonZeroUsize) -> Driver<R> {
        self.io_threads = threads;
        self
    }

    /// A way to count the open connections from elsewhere (the accept
    /// loop's warning when descriptors run out).
    #[must_use]
    pub fn open_connections(&self) -> OpenCount {
        let shared = self.shared.clone();
        Box::new(move || lock(&shared.state).conns.len())
    }

    /// Starts the I/O threads now rather than in [`Driver::run`] (so that a
    /// server announces its socket with all its resources in place).
    ///
    /// # Errors
    ///
    /// When a thread or its poller cannot be created.
    pub fn start_io(&mut self) -> std::io::Result<()> {
        if self.io.is_none() {
            self.io = Some(IoThreads::start(self.io_threads, &self.shared)?);
        }
        Ok(())
    }

    /// Runs until shutdown (or, for [`Lifetime::SingleConnection`], until
    /// the connection is closed). Fails only when the I/O threads cannot
    /// be started.
    pub async fn run(
        mut self,
        ex: &LocalExecutor<'_>,
        rx: Receiver<Event>,
        lifetime: Lifetime,
    ) -> std::io::Result<()> {
        self.start_io()?;
        let Some(io) = self.io.take() else {
            return Ok(());
        };
        loop {
            let deadline = self.arm();
            let Some(event) = next_event(&rx, &mut self.timer, &mut self.timer_at, deadline).await
            else {
                self.with_state(|s, now| s.engine.handle_timeout(now));
                continue;
            };
            if matches!(event, Event::Shutdown) {
                break;
            }
            self.handle(ex, &io, event);
            if lifetime == Lifetime::SingleConnection {
                let state = lock(&self.shared.state);
                if state.served_one && state.conns.is_empty() {
                    break;
                }
            }
        }
        lock(&self.shared.state).close_all();
        // Stop listening and let go of every store lock (a lock held for
        // work that will never finish would block other processes).
        self.listeners.clear();
        lock(&self.shared.state).loopback_replies.clear();
        self.shared.executor.locks().shutdown();
        // Let the connections put the last replies on the wire first
        // (stdio EOF, shutdown); the I/O threads stop after.
        let Driver {
            writers_alive,
            writers_done,
            ..
        } = self;
        drop(writers_alive);
        smol::future::or(
            async {
                let _ = writers_done.recv().await;
            },
            async {
                Timer::after(FINAL_FLUSH).await;
            },
        )
        .await;
        drop(io);
        Ok(())
    }

    /// Records the engine's next deadline as the one the loop sleeps
    /// until, and returns it as an OS instant.
    fn arm(&self) -> Option<Instant> {
        let mut state = lock(&self.shared.state);
        state.armed = state.engine.poll_timeout();
        state.armed.map(|at| state.clock.instant_of(at))
    }

    /// Runs `f` on the engine (see [`drive`]).
    fn with_state(&self, f: impl FnOnce(&mut State<R>, credproxy_core::Now)) {
        drive(&self.shared, state::Caller::Loop, f);
        self.shared.audit.flush();
    }

    /// Handles `event`.
    fn handle(&mut self, ex: &LocalExecutor<'_>, io: &IoThreads, event: Event) {
        match event {
            Event::Open {
                reader,
                writer,
                on_close,
                peer,
            } => self.open(ex, io, (reader, writer), on_close, peer),
            Event::OpenSocket { stream, peer } => self.open_socket(io, stream, peer),
            Event::Refused { reason } => {
                let ev = credproxy_core::AuditEvent::new(
                    credproxy_core::Level::Warn,
                    None,
                    "connection_refused",
                    reason,
                );
                self.shared.audit.log().write(&ev);
            }
            Event::Listener(id, effect) => self.listener(ex, id, effect),
            // `drive` feeds the waiting results first.
            Event::EffectsDone => self.with_state(|_, _| {}),
            Event::Loopback {
                request,
                port,
                target,
                reply,
            } => self.with_state(|s, now| {
                s.loopback_replies.insert(request, reply);
                s.engine
                    .handle_loopback_request(request, port, &target, now);
            }),
            Event::Rearm | Event::ConnectionEnded | Event::Shutdown => {}
        }
    }

    /// Registers a connection with the engine; `None` when it refused it.
    fn register(&self, peer: Peer, owner: Arc<io_thread::Handle>) -> Option<Registered> {
        let (outbox_tx, outbox) = unbounded();
        let flow = Arc::new(Flow {
            unsent: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
        });
        let io = ConnIo {
            outbox: outbox_tx,
            flow: flow.clone(),
            owner,
        };
        let mut opened: Option<ConnId> = None;
        self.with_state(|state, now| {
            if let Ok(conn) = state.engine.handle_open(peer, now) {
                state.served_one = true;
                state.conns.insert(conn, io);
                opened = Some(conn);
            }
        });
        opened.map(|conn| Registered { conn, outbox, flow })
    }

    /// Registers a stream connection: one end of a socket pair is served
    /// as a socket, the other bridged to the halves.
    fn open(
        &mut self,
        ex: &LocalExecutor<'_>,
        io: &IoThreads,
        halves: (Reader, Writer),
        on_close: OnClose,
        peer: Peer,
    ) {
        let (inner, outer) = match std::os::unix::net::UnixStream::pair() {
            Ok(pair) => pair,
            Err(_) => {
                on_close();
                return;
            }
        };
        // The bridge first: the connection's first bytes (the handshake
        // reply) must find a reader.
        let alive = self.writers_alive.clone();
        if bridge::spawn(ex, outer, halves, on_close, alive, self.events.clone()).is_err() {
            return;
        }
        self.open_socket(io, inner, peer);
    }

    /// Registers a socket connection and hands it to an I/O thread.
    fn open_socket(&mut self, io: &IoThreads, stream: std::os::unix::net::UnixStream, peer: Peer) {
        let owner = io.pick();
        let Some(Registered { conn, outbox, flow }) = self.register(peer, owner.clone()) else {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        };
        match SocketConn::new(conn, stream, outbox, flow, self.writers_alive.clone()) {
            Ok(socket) => IoThreads::adopt(&owner, socket),
            Err(_) => self.with_state(|s, now| s.connection_gone(conn, now)),
        }
    }

    /// Starts or stops a loopback listener and answers the engine.
    fn listener(&mut self, ex: &LocalExecutor<'_>, id: EffectId, op: Listen) {
        let result = match op {
            Listen::Start(port) => self.start_listener(ex, port),
            Listen::Stop(port) => {
                self.listeners.remove(&port);
                EffectResult::Done
            }
        };
        self.with_state(|s, now| s.engine.handle_effect_result(id, result, now));
    }

    /// Binds the loopback listener on `port` unless one runs there.
    fn start_listener(&mut self, ex: &LocalExecutor<'_>, port: u16) -> EffectResult {
        if self.listeners.contains_key(&port) {
            return EffectResult::Listening(true);
        }
        // Port 0 would pick a port the engine cannot learn.
        if port == 0 {
            return EffectResult::Listening(false);
        }
        let events = self.events.clone();
        let next = self.next_loopback.clone();
        let submit = move |incoming: Incoming| {
            let request = next.get();
            next.set(request + 1);
            // Unbounded channel: only fails when the driver is gone, which
            // drops `reply` and answers 503.
            let _ = events.try_send(Event::Loopback {
                request,
                port: incoming.port,
                target: incoming.target,
                reply: incoming.reply,
            });
        };
        match Listener::bind(ex, port, submit) {
            Ok(listener) => {
                self.listeners.insert(port, listener);
                EffectResult::Listening(true)
            }
            Err(e) => {
                log_listener_error(port, &e);
                EffectResult::Listening(false)
            }
        }
    }
}

/// Reports on stderr a listener that could not start (the port and the
/// OS reason only), like the store's errors.
fn log_listener_error(port: u16, error: &std::io::Error) {
    use std::io::Write as _;
    let line = serde_json::json!({
        "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "component": "credproxy",
        "level": "ERROR",
        "op": "loopback_listener",
        "outcome": "failed",
        "port": port,
        "detail": error.to_string(),
    });
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Waits for an event, or returns `None` when the timer fires. The timer
/// is re-armed only when the deadline changed: setting a timer registers
/// it with the reactor, which costs system calls on every loop turn
/// otherwise.
async fn next_event(
    rx: &Receiver<Event>,
    timer: &mut Timer,
    timer_at: &mut Option<Instant>,
    deadline: Option<Instant>,
) -> Option<Event> {
    let recv = async { Some(rx.recv().await.unwrap_or(Event::Shutdown)) };
    let Some(at) = deadline else {
        return recv.await;
    };
    if *timer_at != Some(at) {
        timer.set_at(at);
        *timer_at = Some(at);
    }
    let event = smol::future::or(recv, async {
        (&mut *timer).await;
        None
    })
    .await;
    if event.is_none() {
        // A fired timer stays silent until it is set again.
        *timer_at = None;
    }
    event
}
