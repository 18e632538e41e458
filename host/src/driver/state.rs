//! The state behind the engine lock: the [`Engine`], the connections'
//! outboxes, and the execution of the engine's outputs (the drain
//! contract of the core).
//!
//! Whoever holds the lock drives the engine: a connection task with the
//! bytes it read, or the loop task with a timer, an effect result or a new
//! connection. Every handler is followed by [`State::drain`], so the
//! engine's output queue is empty whenever the lock is free. Outputs are
//! routed under the lock — bytes into the target connection's outbox (a
//! FIFO channel, so replies keep the engine's order whichever thread writes
//! them), effects executed inline when they cannot block and otherwise
//! forwarded to the loop task — and written to sockets after it is
//! released.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use credproxy_core::{ConnId, Effect, Engine, Mono, Now, Output};
use rand_core::CryptoRng;
use smol::channel::Sender;

use super::{Event, MAX_UNSENT};
use crate::audit_log::AuditLog;
use crate::clock::Clock;
use crate::effects::Executor;
use crate::loopback;

/// What a connection's task is told by whoever drains the engine.
pub(super) enum Outgoing {
    /// Bytes to write, in order.
    Bytes(Vec<u8>),
    /// Write what came before, then close.
    Close,
}

/// Flags shared by a connection's task and the engine's side.
pub(super) struct Flow {
    /// Bytes queued in the outbox and not yet written.
    pub unsent: AtomicUsize,
    /// Reading stopped because `unsent` exceeded [`MAX_UNSENT`].
    pub paused: AtomicBool,
}

/// The engine's side of a connection. Dropping it closes the outbox,
/// which ends the connection's task.
pub(super) struct ConnIo {
    pub outbox: Sender<Outgoing>,
    pub flow: Arc<Flow>,
}

/// Everything the engine lock protects.
pub(super) struct State<R> {
    pub engine: Engine<R>,
    pub executor: Executor,
    pub audit: Arc<AuditLog>,
    pub clock: Clock,
    pub conns: BTreeMap<ConnId, ConnIo>,
    /// The loop task's channel: forwarded effects and deadline changes.
    pub events: Sender<Event>,
    /// A connection has been opened (for [`super::Lifetime::SingleConnection`]).
    pub served_one: bool,
    /// Audit lines of the current drain, written with one system call.
    audit_lines: Vec<u8>,
    /// Loopback requests waiting for the engine's reply, by request id.
    pub loopback_replies: BTreeMap<u64, Sender<loopback::Reply>>,
    /// The deadline the loop task sleeps until (`None`: no deadline). A
    /// drain that leaves the engine with an earlier one wakes the loop task.
    pub armed: Option<Mono>,
}

impl<R: CryptoRng> State<R> {
    pub fn new(engine: Engine<R>, executor: Executor, audit: Arc<AuditLog>, events: Sender<Event>) -> State<R> {
        State {
            engine,
            executor,
            audit,
            clock: Clock::start(),
            conns: BTreeMap::new(),
            events,
            served_one: false,
            audit_lines: Vec::new(),
            loopback_replies: BTreeMap::new(),
            armed: None,
        }
    }

    /// The current time. Taken under the lock, so the engine never sees
    /// time go backwards between two threads' calls.
    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Drains the engine's outputs and wakes the loop task if its timer
    /// must fire earlier (for handlers run outside the loop task).
    pub fn drain(&mut self) {
        self.drain_outputs();
        self.wake_loop_if_earlier();
    }

    /// Drains the engine's outputs.
    pub fn drain_outputs(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Send { conn, bytes } => self.send(conn, bytes),
                Output::Close { conn } => self.forget(conn),
                Output::Audit(event) => self.audit.encode_into(&event, &mut self.audit_lines),
                Output::Effect { id, effect } => self.effect(id, effect),
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
                _ => {}
            }
        }
        self.audit.write_bytes(&self.audit_lines);
        self.audit_lines.clear();
    }

    /// Drops the connection's outbox after queueing a close: its task
    /// writes what is queued, closes, and ends.
    pub fn forget(&mut self, conn: ConnId) {
        if let Some(io) = self.conns.remove(&conn) {
            let _ = io.outbox.try_send(Outgoing::Close);
        }
    }

    /// Queues a close on every connection.
    pub fn close_all(&mut self) {
        for (_, io) in std::mem::take(&mut self.conns) {
            let _ = io.outbox.try_send(Outgoing::Close);
        }
    }

    /// Executes an effect inline when it cannot block; forwards it to the
    /// loop task otherwise (which owns the listeners and spawns the rest on
    /// the blocking pool).
    fn effect(&mut self, id: credproxy_core::EffectId, effect: Effect) {
        if let Some(result) = self.executor.try_inline(&effect) {
            let now = self.now();
            self.engine.handle_effect_result(id, result, now);
        } else {
            // Unbounded: fails only once the loop task is gone.
            let _ = self.events.try_send(Event::Effect(id, effect));
        }
    }

    /// Queues `bytes` for `conn`; pauses its reading above [`MAX_UNSENT`].
    fn send(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let Some(io) = self.conns.get(&conn) else {
            return;
        };
        let len = bytes.len();
        let unsent = io.flow.unsent.fetch_add(len, Ordering::SeqCst) + len;
        let _ = io.outbox.try_send(Outgoing::Bytes(bytes));
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
