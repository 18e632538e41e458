//! The driver loop: runs the engine on smol and executes its outputs.
//!
//! One task owns the [`Engine`]. Transports hand it connections; each
//! connection gets a reader task (bytes → engine) and a writer task
//! (engine → bytes). Effects are answered inline when the store's cache can
//! (no thread hop on the `get_token` hot path) and otherwise on smol's
//! blocking pool, their results coming back as events. The loop sleeps
//! until the next event or the engine's next deadline.
//!
//! Back-pressure: when more than [`MAX_UNSENT`] bytes wait in a
//! connection's writer, the driver stops reading that connection and tells
//! the engine (which suspends its partial-frame deadline); reading resumes
//! once the writer has drained below the limit.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use credproxy_core::{ConnId, EffectId, EffectResult, Engine, Output, Peer};
use rand_core::CryptoRng;
use smol::channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{LocalExecutor, Timer};

use crate::audit_log::AuditLog;
use crate::clock::Clock;
use crate::effects;
use crate::store::FileStore;

/// Unsent output per connection above which reading pauses (1 MiB).
pub const MAX_UNSENT: usize = 1024 * 1024;

/// Size of one read from a connection.
const READ_CHUNK: usize = 64 * 1024;

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
    /// Stop serving.
    Shutdown,
}

/// State shared by a connection's tasks and the engine task.
struct Shared {
    unsent: AtomicUsize,
    paused: AtomicBool,
    resume: Sender<()>,
}

enum WriterMsg {
    Bytes(Vec<u8>),
    Close,
}

struct ConnIo {
    writer: Sender<WriterMsg>,
    shared: Arc<Shared>,
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
    store: Arc<FileStore>,
    audit: Arc<AuditLog>,
    clock: Clock,
    conns: BTreeMap<ConnId, ConnIo>,
    events: Sender<Event>,
    served_one: bool,
    /// Cloned into every writer task and dropped when it ends, so the
    /// receiver sees the channel close once every writer has flushed.
    writers_alive: Sender<()>,
    writers_done: Receiver<()>,
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
        let (writers_alive, writers_done) = bounded(1);
        Driver {
            engine,
            store,
            audit,
            clock: Clock::start(),
            conns: BTreeMap::new(),
            events,
            served_one: false,
            writers_alive,
            writers_done,
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
            Event::Bytes(conn, bytes) => self.engine.handle_bytes(conn, &bytes, now),
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
                    let _ = io.shared.resume.try_send(());
                    self.engine.handle_resume_reading(conn, now);
                }
            }
            Event::EffectDone(id, result) => self.engine.handle_effect_result(id, result, now),
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
        let (resume_tx, resume_rx) = bounded(1);
        let shared = Arc::new(Shared {
            unsent: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            resume: resume_tx,
        });
        let (wtx, wrx) = unbounded();
        ex.spawn(read_loop(
            conn,
            reader,
            self.events.clone(),
            shared.clone(),
            resume_rx,
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
                Output::Audit(event) => self.audit.write(&event),
                Output::Effect { id, effect } => {
                    if let Some(result) = effects::try_inline(&self.store, &effect) {
                        self.engine
                            .handle_effect_result(id, result, self.clock.now());
                        continue;
                    }
                    let store = self.store.clone();
                    let events = self.events.clone();
                    ex.spawn(async move {
                        let result = smol::unblock(move || effects::execute(&store, effect)).await;
                        let _ = events.send(Event::EffectDone(id, result)).await;
                    })
                    .detach();
                }
                _ => {}
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

async fn read_loop(
    conn: ConnId,
    mut reader: Reader,
    events: Sender<Event>,
    shared: Arc<Shared>,
    resume: Receiver<()>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        while shared.paused.load(Ordering::SeqCst) {
            if resume.recv().await.is_err() {
                return;
            }
        }
        let event = match reader.read(&mut buf).await {
            Ok(0) => Event::ReadClosed(conn),
            Ok(n) => Event::Bytes(conn, buf[..n].to_vec()),
            Err(_) => Event::Gone(conn),
        };
        let last = !matches!(event, Event::Bytes(..));
        if events.send(event).await.is_err() || last {
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
