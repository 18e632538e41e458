//! The driver loop: runs the engine on smol and executes its outputs.
//!
//! One task owns the [`Engine`]. Transports hand it connections; each
//! connection gets a reader task (bytes → engine) and a writer task
//! (engine → bytes). Effects are answered inline when the store's cache can
//! (no thread hop on the `get_token` hot path) and otherwise on smol's
//! blocking pool, their results coming back as events. The loop sleeps
//! until the next event or the engine's next deadline.
//!
//! Effects that may block (store reads and writes, lock waits, HTTP) run on
//! smol's blocking pool through [`Executor::execute`]. A lock release is
//! performed inline, in emission order. The loopback listener effects run
//! on the [`LocalExecutor`]: `StartListener` binds at once (a local bind
//! does not wait) and answers `Listening(true|false)` inline; the driver
//! keeps the running listeners by port and `StopListener` drops one. Each
//! loopback `GET` comes back as [`Event::Loopback`]; the engine's
//! `Output::LoopbackReply` is routed to the waiting connection by request
//! id. On shutdown the listeners stop and every held store lock is
//! released.
//!
//! Back-pressure: when more than [`MAX_UNSENT`] bytes wait in a
//! connection's writer, the driver stops reading that connection and tells
//! the engine (which suspends its partial-frame deadline); reading resumes
//! once the writer has drained below the limit.
//!
//! Fairness: a reader hands the engine one chunk (at most [`READ_CHUNK`]
//! bytes) and reads again only once the engine has taken it, so a client
//! that floods its socket gets one chunk per turn of the loop like everyone
//! else, instead of queueing its whole backlog ahead of other connections
//! (and of effect results). When the driver forgets a connection, its
//! reader's channels close and the reader ends, releasing the socket even
//! while reading was paused.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use credproxy_core::{ConnId, Effect, EffectId, EffectResult, Engine, Output, Peer};
use rand_core::CryptoRng;
use smol::channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{LocalExecutor, Timer};

use crate::audit_log::AuditLog;
use crate::clock::Clock;
use crate::effects::Executor;
use crate::loopback::{self, Incoming, Listener};
use crate::store::FileStore;

/// Unsent output per connection above which reading pauses (1 MiB).
pub const MAX_UNSENT: usize = 1024 * 1024;

/// Size of one read from a connection: the most input a connection hands
/// the engine per turn of the loop.
const READ_CHUNK: usize = 16 * 1024;

/// A connection's first read buffer, doubled (up to [`READ_CHUNK`]) after
/// each read that fills it: an idle connection holds 512 bytes instead of
/// a whole chunk (10 000 idle connections: 5 MiB instead of 160 MiB; see
/// BENCHMARKS.md, "Memory").
const READ_FIRST: usize = 512;

/// How long [`Driver::run`] waits, after the loop has ended, for the
/// writers to flush the replies already produced (a peer that stops
/// reading cannot hold the process forever).
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// A boxed reading half.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
/// A boxed writing half.
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;
/// Called once the writer has flushed its last bytes for a closed
/// connection (e.g. to shut the socket down so the reader stops).
pub type OnClose = Box<dyn FnOnce() + Send>;

/// Something that happened, for the engine task.
pub enum Event {
    /// A transport accepted a connection.
    Open {
        /// Reading half.
        reader: Reader,
        /// Writing half.
        writer: Writer,
        /// Run after the final flush.
        on_close: OnClose,
        /// Who is connected.
        peer: Peer,
    },
    /// A transport refused a connection before it reached the engine.
    Refused {
        /// Short reason (audit outcome).
        reason: &'static str,
    },
    /// Bytes arrived.
    Bytes(ConnId, Vec<u8>),
    /// The peer closed its write side.
    ReadClosed(ConnId),
    /// The connection failed.
    Gone(ConnId),
    /// The writer drained below the back-pressure limit.
    Drained(ConnId),
    /// An effect finished on the blocking pool.
    EffectDone(EffectId, EffectResult),
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

/// State shared by a connection's tasks and the engine task.
struct Shared {
    unsent: AtomicUsize,
    paused: AtomicBool,
}

enum WriterMsg {
    Bytes(Vec<u8>),
    Close,
}

/// The driver's side of a connection. Dropping it closes the reader's
/// channels, which ends the reader.
struct ConnIo {
    writer: Sender<WriterMsg>,
    shared: Arc<Shared>,
    /// Wakes the reader: its last chunk was taken, or reading resumed
    /// after back-pressure. One channel serves both, which keeps an idle
    /// connection small (see BENCHMARKS.md, "Memory").
    wake: Sender<()>,
}

/// When the loop should end on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Until [`Event::Shutdown`].
    UntilShutdown,
    /// Until the first connection has come and gone (stdio).
    SingleConnection,
}

/// The engine task with its connections.
pub struct Driver<R> {
    engine: Engine<R>,
    executor: Executor,
    audit: Arc<AuditLog>,
    clock: Clock,
    conns: BTreeMap<ConnId, ConnIo>,
    events: Sender<Event>,
    served_one: bool,
    /// Audit lines of the current loop turn, written at the end of
    /// [`Driver::drain`] with one system call.
    audit_lines: Vec<u8>,
    /// Cloned into every writer task and dropped when it ends, so the
    /// receiver sees the channel close once every writer has flushed.
    writers_alive: Sender<()>,
    writers_done: Receiver<()>,
    /// Running loopback listeners by port.
    listeners: BTreeMap<u16, Listener>,
    /// Loopback requests waiting for the engine's reply, by request id.
    loopback_replies: BTreeMap<u64, Sender<loopback::Reply>>,
    /// The next loopback request id (shared with the listeners' callbacks).
    next_loopback: Rc<Cell<u64>>,
}

impl<R: CryptoRng> Driver<R> {
    /// A driver for `engine`; `events` is the sender half of the channel
    /// whose receiver is passed to [`Driver::run`].
    pub fn new(
        engine: Engine<R>,
        store: Arc<FileStore>,
        audit: Arc<AuditLog>,
        events: Sender<Event>,
    ) -> Driver<R> {
        Driver::with_executor(engine, Executor::new(store), audit, events)
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
        Driver {
            engine,
            executor,
            audit,
            clock: Clock::start(),
            conns: BTreeMap::new(),
            events,
            served_one: false,
            audit_lines: Vec::new(),
            writers_alive,
            writers_done,
            listeners: BTreeMap::new(),
            loopback_replies: BTreeMap::new(),
            next_loopback: Rc::new(Cell::new(1)),
        }
    }

    /// Runs until shutdown (or, for [`Lifetime::SingleConnection`], until
    /// the connection is closed).
    pub async fn run(mut self, ex: &LocalExecutor<'_>, rx: Receiver<Event>, lifetime: Lifetime) {
        loop {
            let event = self.next_event(&rx).await;
            let Some(event) = event else {
                self.engine.handle_timeout(self.clock.now());
                self.drain(ex);
                continue;
            };
            if matches!(event, Event::Shutdown) {
                break;
            }
            self.handle(ex, event);
            self.drain(ex);
            if lifetime == Lifetime::SingleConnection && self.served_one && self.conns.is_empty() {
                break;
            }
        }
        self.close_all();
        // Stop listening and let go of every store lock (a lock held for
        // work that will never finish would block other processes).
        self.listeners.clear();
        self.loopback_replies.clear();
        self.executor.locks().shutdown();
        // The executor stops when this future returns: let the writers put
        // the last replies on the wire first (stdio EOF, shutdown).
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
    }

    /// Waits for an event, or returns `None` at the engine's next deadline.
    async fn next_event(&self, rx: &Receiver<Event>) -> Option<Event> {
        let recv = async { Some(rx.recv().await.unwrap_or(Event::Shutdown)) };
        match self.engine.poll_timeout() {
            None => recv.await,
            Some(at) => {
                let deadline = self.clock.instant_of(at);
                smol::future::or(recv, async {
                    Timer::at(deadline).await;
                    None
                })
                .await
            }
        }
    }

    fn handle(&mut self, ex: &LocalExecutor<'_>, event: Event) {
        let now = self.clock.now();
        match event {
            Event::Open {
                reader,
                writer,
                on_close,
                peer,
            } => self.open(ex, reader, writer, on_close, peer),
            Event::Refused { reason } => {
                let ev = credproxy_core::AuditEvent::new(
                    credproxy_core::Level::Warn,
                    None,
                    "connection_refused",
                    reason,
                );
                self.audit.write(&ev);
            }
            Event::Bytes(conn, bytes) => {
                self.engine.handle_bytes(conn, &bytes, now);
                if let Some(io) = self.conns.get(&conn) {
                    let _ = io.wake.try_send(());
                }
            }
            Event::ReadClosed(conn) => self.engine.handle_read_closed(conn, now),
            Event::Gone(conn) => {
                self.engine.handle_connection_gone(conn, now);
                if let Some(io) = self.conns.remove(&conn) {
                    let _ = io.writer.try_send(WriterMsg::Close);
                }
            }
            Event::Drained(conn) => {
                if let Some(io) = self.conns.get(&conn)
                    && io.shared.paused.swap(false, Ordering::SeqCst)
                {
                    let _ = io.wake.try_send(());
                    self.engine.handle_resume_reading(conn, now);
                }
            }
            Event::EffectDone(id, result) => self.engine.handle_effect_result(id, result, now),
            Event::Loopback {
                request,
                port,
                target,
                reply,
            } => {
                self.loopback_replies.insert(request, reply);
                self.engine
                    .handle_loopback_request(request, port, &target, now);
            }
            Event::Shutdown => {}
        }
    }

    fn open(
        &mut self,
        ex: &LocalExecutor<'_>,
        reader: Reader,
        writer: Writer,
        on_close: OnClose,
        peer: Peer,
    ) {
        let Ok(conn) = self.engine.handle_open(peer, self.clock.now()) else {
            on_close();
            return;
        };
        self.served_one = true;
        let (wake_tx, wake_rx) = bounded(1);
        let shared = Arc::new(Shared {
            unsent: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
        });
        let (wtx, wrx) = unbounded();
        ex.spawn(read_loop(
            conn,
            reader,
            self.events.clone(),
            shared.clone(),
            wake_rx,
        ))
        .detach();
        ex.spawn(write_loop(
            conn,
            writer,
            wrx,
            self.events.clone(),
            shared.clone(),
            on_close,
            self.writers_alive.clone(),
        ))
        .detach();
        self.conns.insert(
            conn,
            ConnIo {
                writer: wtx,
                shared,
                wake: wake_tx,
            },
        );
    }

    /// Drains the engine's outputs (the drain contract of the core).
    fn drain(&mut self, ex: &LocalExecutor<'_>) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send { conn, bytes } => self.send(conn, bytes),
                Output::Close { conn } => {
                    if let Some(io) = self.conns.remove(&conn) {
                        let _ = io.writer.try_send(WriterMsg::Close);
                    }
                }
                Output::Audit(event) => self.audit.encode_into(&event, &mut self.audit_lines),
                Output::Effect { id, effect } => self.effect(ex, id, effect),
                Output::LoopbackReply {
                    request,
                    status,
                    body,
                } => {
                    if let Some(reply) = self.loopback_replies.remove(&request) {
                        // The connection may have timed out meanwhile.
                        let _ = reply.try_send((status, body));
                    }
                }
                _ => {}
            }
        }
        self.audit.write_bytes(&self.audit_lines);
        self.audit_lines.clear();
    }

    /// Executes an effect: inline when it cannot block, listeners on the
    /// event loop, everything else on the blocking pool.
    fn effect(&mut self, ex: &LocalExecutor<'_>, id: EffectId, effect: Effect) {
        let inline = match &effect {
            Effect::StartListener { port, .. } => Some(self.start_listener(ex, *port)),
            Effect::StopListener { port } => {
                self.listeners.remove(port);
                Some(EffectResult::Done)
            }
            other => self.executor.try_inline(other),
        };
        if let Some(result) = inline {
            self.engine
                .handle_effect_result(id, result, self.clock.now());
            return;
        }
        let executor = self.executor.clone();
        let events = self.events.clone();
        ex.spawn(async move {
            let result = smol::unblock(move || executor.execute(effect)).await;
            let _ = events.send(Event::EffectDone(id, result)).await;
        })
        .detach();
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

    fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let Some(io) = self.conns.get(&conn) else {
            return;
        };
        let unsent = io.shared.unsent.fetch_add(bytes.len(), Ordering::SeqCst) + bytes.len();
        let _ = io.writer.try_send(WriterMsg::Bytes(bytes));
        if unsent > MAX_UNSENT && !io.shared.paused.swap(true, Ordering::SeqCst) {
            self.engine.handle_pause_reading(conn, self.clock.now());
        }
    }

    fn close_all(&mut self) {
        for (_, io) in std::mem::take(&mut self.conns) {
            let _ = io.writer.try_send(WriterMsg::Close);
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

/// Reads a connection into events, one chunk at a time: after each chunk
/// it waits until the engine has taken it, and while reading is paused
/// until it resumes (both signalled on `wake`; a stale signal only makes it
/// check the pause flag again). Ends at EOF, on an error, or when the driver
/// drops the connection (its channels close).
async fn read_loop(
    conn: ConnId,
    mut reader: Reader,
    events: Sender<Event>,
    shared: Arc<Shared>,
    wake: Receiver<()>,
) {
    let mut buf = vec![0u8; READ_FIRST.min(READ_CHUNK)];
    loop {
        while shared.paused.load(Ordering::SeqCst) {
            if wake.recv().await.is_err() {
                return;
            }
        }
        let event = match reader.read(&mut buf).await {
            Ok(0) => Event::ReadClosed(conn),
            Ok(n) => {
                let bytes = buf[..n].to_vec();
                if n == buf.len() && n < READ_CHUNK {
                    buf.resize((n * 2).min(READ_CHUNK), 0);
                }
                Event::Bytes(conn, bytes)
            }
            Err(_) => Event::Gone(conn),
        };
        let last = !matches!(event, Event::Bytes(..));
        if events.send(event).await.is_err() || last {
            return;
        }
        if wake.recv().await.is_err() {
            return;
        }
    }
}

async fn write_loop(
    conn: ConnId,
    mut writer: Writer,
    messages: Receiver<WriterMsg>,
    events: Sender<Event>,
    shared: Arc<Shared>,
    on_close: OnClose,
    _alive: Sender<()>,
) {
    while let Ok(msg) = messages.recv().await {
        let WriterMsg::Bytes(bytes) = msg else { break };
        if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
            let _ = events.send(Event::Gone(conn)).await;
            break;
        }
        let left = shared.unsent.fetch_sub(bytes.len(), Ordering::SeqCst) - bytes.len();
        if left <= MAX_UNSENT && shared.paused.load(Ordering::SeqCst) {
            match events.try_send(Event::Drained(conn)) {
                Ok(()) | Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(ev)) => {
                    let _ = events.send(ev).await;
                }
            }
        }
    }
    let _ = writer.flush().await;
    let _ = writer.close().await;
    on_close();
}
