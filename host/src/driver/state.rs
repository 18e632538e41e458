//! The state behind the engine lock: the [`Engine`], the connections'
//! outboxes, and the execution of the engine's outputs (the drain
//! contract of the core).
//!
//! Whoever holds the lock drives the engine: an I/O thread with the
//! bytes a connection read, or the loop task with a timer, an effect result or a new
//! connection. Every handler is followed by [`State::drain`], so the
//! engine's output queue is empty whenever the lock is free. Outputs are
//! routed under the lock — bytes into the target connection's outbox (a
//! FIFO channel, so replies keep the engine's order whichever thread writes
//! them), audit lines into the [`AuditQueue`], store cache lookups set
//! aside, other effects that cannot block executed, those that may block
//! started on the blocking pool, the listener effects forwarded to the
//! loop task. After the lock is released ([`drive`]) the audit lines
//! are written and the cache lookups done (each costs a system call that
//! would otherwise hold up every other connection), their results handed
//! to the engine under the lock again; sockets are written by the
//! connections' I/O threads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use credproxy_core::{ConnId, Effect, EffectId, Engine, Mono, Now, Output};
use rand_core::CryptoRng;
use smol::channel::Sender;

use super::audit_queue::AuditQueue;
use super::completions::Completions;
use super::io_thread::Handle;
use super::{Event, Listen, MAX_UNSENT};
use crate::audit_log::Timestamps;
use crate::clock::Clock;
use crate::effects::Executor;
use crate::loopback;

/// What a connection's I/O thread is told by whoever drains the engine.
pub(super) enum Outgoing {
    /// Bytes to write, in order.
    Bytes(Vec<u8>),
    /// Write what came before, then close.
    Close,
}

/// Flags shared by a connection's I/O thread and the engine's side.
pub(super) struct Flow {
    /// Bytes queued in the outbox and not yet written.
    pub unsent: AtomicUsize,
    /// Reading stopped because `unsent` exceeded [`MAX_UNSENT`].
    pub paused: AtomicBool,
}

/// The engine's side of a connection.
pub(super) struct ConnIo {
    pub outbox: Sender<Outgoing>,
    pub flow: Arc<Flow>,
    /// The I/O thread serving the connection, told when the outbox has
    /// something.
    pub owner: Arc<Handle>,
}

impl ConnIo {
    fn push(&self, conn: ConnId, item: Outgoing) {
        let _ = self.outbox.try_send(item);
        self.owner.mark_dirty(conn);
    }
}

/// What the loop task and the I/O threads share.
pub(super) struct Shared<R> {
    /// The engine lock.
    pub state: Mutex<State<R>>,
    pub audit: AuditQueue,
    pub executor: Executor,
    /// Effect results from the blocking pool, fed by the next lock holder.
    pub completions: Arc<Completions>,
}

/// Locks the engine. A panic while it was held leaves the engine in an
/// unknown state: the process stops rather than serve from it.
pub(super) fn lock<R>(state: &Mutex<State<R>>) -> MutexGuard<'_, State<R>> {
    match state.lock() {
        Ok(guard) => guard,
        Err(_) => {
            eprintln!("credproxy: the engine lock was poisoned by a panic; aborting");
            std::process::abort()
        }
    }
}

/// Who is driving the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    /// The loop task, which re-arms its timer itself.
    Loop,
    /// An I/O thread: the loop task is woken if its timer must fire
    /// earlier.
    Connection,
}

/// Runs `f` on the engine under the lock — after the effect results
/// waiting in [`Completions`] — and drains it; then, with the lock released, performs the cache lookups the engine asked for, handing
/// their results back under the lock, until nothing is left. The audit
/// lines are staged, not written: the caller calls [`AuditQueue::flush`]
/// once it has no more work at hand (one write for a batch of requests).
pub(super) fn drive<R: CryptoRng>(
    shared: &Shared<R>,
    by: Caller,
    f: impl FnOnce(&mut State<R>, Now),
) {
    let mut lookups = {
        let mut state = lock(&shared.state);
        let now = state.now();
        shared.completions.feed(&mut state.engine, now);
        f(&mut state, now);
        state.drain(shared, by)
    };
    while !lookups.is_empty() {
        let results: Vec<_> = lookups
            .drain(..)
            .map(|(id, effect)| (id, shared.executor.try_inline(&effect).ok_or(effect)))
            .collect();
        lookups = {
            let mut state = lock(&shared.state);
            let now = state.now();
            shared.completions.feed(&mut state.engine, now);
            for (id, result) in results {
                match result {
                    Ok(result) => state.engine.handle_effect_result(id, result, now),
                    // Not in the cache: read the store.
                    Err(effect) => state.run(shared, id, effect),
                }
            }
            state.drain(shared, by)
        };
    }
}

/// Accounts for `n` bytes a connection's I/O thread wrote; resumes reading once
/// the backlog is below the limit again (checked again under the lock,
/// where the pause was decided).
pub(super) fn written<R: CryptoRng>(shared: &Shared<R>, conn: ConnId, flow: &Flow, n: usize) {
    let left = flow.unsent.fetch_sub(n, Ordering::SeqCst) - n;
    if left <= MAX_UNSENT && flow.paused.load(Ordering::SeqCst) {
        drive(shared, Caller::Connection, |s, now| {
            if flow.unsent.load(Ordering::SeqCst) <= MAX_UNSENT
                && flow.paused.swap(false, Ordering::SeqCst)
            {
                s.engine.handle_resume_reading(conn, now);
            }
        });
    }
}

/// Everything the engine lock protects.
pub(super) struct State<R> {
    pub engine: Engine<R>,
    pub clock: Clock,
    pub conns: BTreeMap<ConnId, ConnIo>,
    /// The loop task's channel: listener effects, completions waiting,
    /// deadline changes.
    pub events: Sender<Event>,
    /// A connection has been opened (for [`super::Lifetime::SingleConnection`]).
    pub served_one: bool,
    /// Audit lines of the current drain.
    audit_lines: Vec<u8>,
    /// Their timestamps, formatted once per millisecond.
    timestamps: Timestamps,
    /// Store cache lookups of the current drain, done after the lock is
    /// released.
    lookups: Vec<(EffectId, Effect)>,
    /// Loopback requests waiting for the engine's reply, by request id.
    pub loopback_replies: BTreeMap<u64, Sender<loopback::Reply>>,
    /// The deadline the loop task sleeps until (`None`: no deadline). A
    /// drain that leaves the engine with an earlier one wakes the loop task.
    pub armed: Option<Mono>,
}

impl<R: CryptoRng> State<R> {
    pub fn new(engine: Engine<R>, events: Sender<Event>) -> State<R> {
        State {
            engine,
            clock: Clock::start(),
            conns: BTreeMap::new(),
            events,
            served_one: false,
            audit_lines: Vec::new(),
            timestamps: Timestamps::default(),
            lookups: Vec::new(),
            loopback_replies: BTreeMap::new(),
            armed: None,
        }
    }

    /// The current time. Taken under the lock, so the engine never sees
    /// time go backwards between two threads' calls.
    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Drains the engine's outputs, stages the audit lines, wakes the loop
    /// task if its timer must fire earlier (when not driven by it), and
    /// returns the cache lookups to do once the lock is released.
    /// (`shared` is the [`Shared`] this state is locked in: its audit queue
    /// and executor are used, never its lock.)
    pub fn drain(&mut self, shared: &Shared<R>, by: Caller) -> Vec<(EffectId, Effect)> {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send { conn, bytes } => self.send(conn, bytes),
                Output::Close { conn } => self.forget(conn),
                Output::Audit(event) => {
                    shared.audit.log().encode_with(
                        &event,
                        &mut self.timestamps,
                        &mut self.audit_lines,
                    );
                }
                Output::Effect { id, effect } => self.effect(shared, id, effect),
                Output::LoopbackReply {
                    request,
                    status,
                    body,
                } => {
                    if let Some(reply) = self.loopback_replies.remove(&request) {
                        // The browser's connection may have timed out.
                        let _ = reply.try_send((status, body));
                    }
                }
            }
        }
        shared.audit.stage(&mut self.audit_lines);
        if by == Caller::Connection {
            self.wake_loop_if_earlier();
        }
        std::mem::take(&mut self.lookups)
    }

    /// Drops the connection's outbox after queueing a close: its I/O thread
    /// writes what is queued, closes, and ends.
    pub fn forget(&mut self, conn: ConnId) {
        if let Some(io) = self.conns.remove(&conn) {
            io.push(conn, Outgoing::Close);
            self.removed();
        }
    }

    /// The connection failed (a read or write error): the engine and the
    /// driver forget it; its I/O thread closes it.
    pub fn connection_gone(&mut self, conn: ConnId, now: Now) {
        self.engine.handle_connection_gone(conn, now);
        if self.conns.remove(&conn).is_some() {
            self.removed();
        }
    }

    /// Wakes the loop task when the last connection is gone, so that a
    /// single-connection driver (stdio) ends whichever thread removed it
    /// and in whatever order its bridge finished (a failed write to the
    /// writing half ends the bridge before the I/O thread sees the
    /// connection fail).
    fn removed(&self) {
        if self.conns.is_empty() {
            let _ = self.events.try_send(Event::ConnectionEnded);
        }
    }

    /// Queues a close on every connection.
    pub fn close_all(&mut self) {
        for (conn, io) in std::mem::take(&mut self.conns) {
            io.push(conn, Outgoing::Close);
        }
    }

    /// Sets a store cache lookup aside for after the lock; executes the
    /// other effects that cannot block (a lock release, in emission order);
    /// starts the rest (see [`State::run`]).
    fn effect(&mut self, shared: &Shared<R>, id: EffectId, effect: Effect) {
        if matches!(effect, Effect::TokenGet { fresh: false, .. }) {
            self.lookups.push((id, effect));
        } else if let Some(result) = shared.executor.try_inline(&effect) {
            let now = self.now();
            self.engine.handle_effect_result(id, result, now);
        } else {
            self.run(shared, id, effect);
        }
    }

    /// Starts an effect that cannot be answered inline: the loopback
    /// listener effects on the loop task (which owns the listeners),
    /// everything else on the blocking pool.
    fn run(&mut self, shared: &Shared<R>, id: EffectId, effect: Effect) {
        match effect {
            // Unbounded: fails only once the loop task is gone.
            Effect::StartListener { port, .. } => {
                let _ = self
                    .events
                    .try_send(Event::Listener(id, Listen::Start(port)));
            }
            Effect::StopListener { port } => {
                let _ = self
                    .events
                    .try_send(Event::Listener(id, Listen::Stop(port)));
            }
            effect => shared
                .completions
                .run(&shared.executor, &self.events, id, effect),
        }
    }

    /// Queues `bytes` for `conn`; pauses its reading above [`MAX_UNSENT`].
    fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let Some(io) = self.conns.get(&conn) else {
            return;
        };
        let len = bytes.len();
        let unsent = io.flow.unsent.fetch_add(len, Ordering::SeqCst) + len;
        io.push(conn, Outgoing::Bytes(bytes));
        if unsent > MAX_UNSENT && !io.flow.paused.swap(true, Ordering::SeqCst) {
            let now = self.now();
            self.engine.handle_pause_reading(conn, now);
        }
    }

    /// Tells the loop task to re-arm its timer when the engine now has a
    /// deadline earlier than the one it sleeps until.
    fn wake_loop_if_earlier(&mut self) {
        let next = self.engine.poll_timeout();
        let earlier = match (next, self.armed) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if earlier {
            self.armed = next;
            let _ = self.events.try_send(Event::Rearm);
        }
    }
}
