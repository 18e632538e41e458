//! The engine: connection lifecycle, inputs and the output queue.
//!
//! Inputs are the `handle_*` methods; outputs are drained with
//! [`Engine::poll_output`] until it returns `None`; the next deadline comes
//! from [`Engine::poll_timeout`]. See the crate docs for the driver loop.

use std::collections::VecDeque;

use rand_core::CryptoRng;

use crate::conn::connection::{Connections, Phase};
use crate::conn::peer::Peer;
use crate::engine::audit::{AuditEvent, ConnId, Level};
use crate::engine::config::{Config, ConfigError};
use crate::engine::effect::{Effect, EffectId, EffectResult};
use crate::engine::time::{Mono, Now};
use crate::engine::timer::{TimerKey, Timers};
use crate::oauth::endpoints::OauthEndpoints;
use crate::operations::stats::Stats;
use crate::operations::task::TaskId;
use crate::operations::tasks::Tasks;
use crate::sessions::session_table::Sessions;
use crate::wire::frame::{self, DecodeError, encode_payload};
use crate::wire::handshake::{self, TokenDigest};
use crate::wire::request;
use crate::writes::keylock::Key;
use crate::writes::keys::Keys;

/// Something the driver must do, drained with [`Engine::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write these bytes (one or more whole frames) to the connection.
    Send {
        /// Target connection.
        conn: ConnId,
        /// Framed bytes.
        bytes: Vec<u8>,
    },
    /// Flush what was sent to the connection, then close it. The engine has
    /// already forgotten the connection.
    Close {
        /// Connection to close.
        conn: ConnId,
    },
    /// Perform an effect and report its result with
    /// [`Engine::handle_effect_result`].
    Effect {
        /// Id to report the result under.
        id: EffectId,
        /// What to do.
        effect: Effect,
    },
    /// Record an audit event.
    Audit(AuditEvent),
    /// Answer a loopback HTTP request (see
    /// [`Engine::handle_loopback_request`]) with a short plain-text page.
    LoopbackReply {
        /// The id the request was reported under.
        request: u64,
        /// HTTP status.
        status: u16,
        /// Page body (plain text).
        body: &'static str,
    },
}

/// A new connection was refused because the connection limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRefused;

/// The sans-IO credential proxy engine. `R` is the injected crypto RNG.
///
/// It owns a few parts, each keeping its own invariants behind its own API
/// (in the manner of quinn-proto's `Connection`): the connection table
/// (`Connections`), the tasks and the effect ids they wait on (`Tasks`), the
/// OAuth sessions (`Sessions`), the per-key write state (`Keys`) and the
/// providers' endpoints and loopback listeners (`OauthEndpoints`). Parts that
/// own deadlines take the engine's [`Timers`] in the calls that arm or drop
/// them. The engine itself keeps the context every step reads (config,
/// clock, RNG) and the output queue.
pub struct Engine<R> {
    pub(crate) config: Config,
    token: Option<TokenDigest>,
    pub(crate) rng: R,
    pub(crate) now: Now,
    pub(crate) timers: Timers,
    pub(crate) stats: Stats,
    outputs: VecDeque<Output>,
    pub(crate) conns: Connections,
    pub(crate) tasks: Tasks,
    pub(crate) sessions: Sessions,
    pub(crate) keys: Keys,
    pub(crate) endpoints: OauthEndpoints,
}

impl<R> std::fmt::Debug for Engine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("connections", &self.conns.len())
            .field("tasks", &self.tasks.len())
            .field("effects", &self.tasks.pending_effects())
            .finish_non_exhaustive()
    }
}

impl<R: CryptoRng> Engine<R> {
    /// An engine with the given configuration and RNG.
    pub fn new(config: Config, rng: R) -> Result<Engine<R>, ConfigError> {
        config.validate()?;
        let token = config.capability_token.as_ref().map(TokenDigest::of);
        Ok(Engine {
            config,
            token,
            rng,
            now: Now::default(),
            timers: Timers::default(),
            stats: Stats::default(),
            outputs: VecDeque::new(),
            conns: Connections::default(),
            tasks: Tasks::default(),
            sessions: Sessions::default(),
            keys: Keys::default(),
            endpoints: OauthEndpoints::default(),
        })
    }
}

impl<R: CryptoRng> Engine<R> {
    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of live connections (pending and handshaken); at most
    /// [`crate::Limits::max_sockets`].
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Number of connections still in their handshake.
    #[must_use]
    pub fn pending_handshakes(&self) -> usize {
        self.conns.pending()
    }

    /// Number of requests waiting for effects (attached or detached).
    #[must_use]
    pub fn pending_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The next output, or `None` when the queue is empty. Drain it until
    /// `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest deadline; call [`Engine::handle_timeout`] when it passes.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Mono> {
        self.timers.next()
    }

    /// Advances the engine clock; the monotonic part never goes backwards.
    pub(crate) fn tick(&mut self, now: Now) {
        self.now = Now {
            mono: self.now.mono.max(now.mono),
            unix_ms: now.unix_ms,
        };
    }

    pub(crate) fn push(&mut self, output: Output) {
        if let Output::Send { conn, .. } = &output
            && let Some(c) = self.conns.get_mut(*conn)
        {
            c.last_active = self.now.mono;
        }
        self.outputs.push_back(output);
    }

    pub(crate) fn audit(&mut self, event: AuditEvent) {
        self.push(Output::Audit(event));
    }

    /// Emits an effect whose result nobody waits for (lock release,
    /// listener stop).
    pub(crate) fn emit_detached(&mut self, effect: Effect) {
        let id = self.tasks.detached_effect();
        self.push(Output::Effect { id, effect });
    }

    /// Number of live OAuth sessions.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The live sessions and their states, for diagnostics and model tests.
    /// Ended (`Used`) sessions are removed at once and do not appear.
    pub fn session_states(
        &self,
    ) -> impl Iterator<Item = (&str, &crate::sessions::session::SessionState)> {
        self.sessions.iter().map(|(id, s)| (id.as_str(), s.state()))
    }

    /// Emits an effect whose result `task` waits for.
    pub(crate) fn emit_effect(&mut self, task: TaskId, effect: Effect) {
        let id = self.tasks.effect_for(task, &effect);
        self.push(Output::Effect { id, effect });
    }

    /// A transport accepted a connection. Refused (and audited) when its
    /// peer process holds `max_connections_per_pid` already: the driver
    /// closes it at once. A full pending budget closes the oldest pending
    /// connection instead (see `admission`).
    pub fn handle_open(&mut self, peer: Peer, now: Now) -> Result<ConnId, ConnectionRefused> {
        self.tick(now);
        if self.admit_open(peer.pid).is_err() {
            return Err(ConnectionRefused);
        }
        let conn = self
            .conns
            .open(peer, &self.config.limits, self.now.mono, &mut self.timers);
        self.audit(AuditEvent::new(Level::Info, Some(conn), "connect", "ok"));
        Ok(conn)
    }

    /// The peer of a connection, while it is open.
    #[must_use]
    pub fn peer(&self, conn: ConnId) -> Option<Peer> {
        self.conns.get(conn).map(|c| c.peer)
    }

    /// Bytes arrived on a connection.
    pub fn handle_bytes(&mut self, conn: ConnId, bytes: &[u8], now: Now) {
        self.tick(now);
        let mut input = bytes;
        loop {
            let Some(c) = self.conns.get_mut(conn) else {
                return;
            };
            if c.read_closed {
                return;
            }
            let handled = match c.decoder.decode_payload(&mut input) {
                Ok(Some(payload)) => self.on_payload(conn, &payload),
                Ok(None) => break,
                Err(DecodeError::Oversize { len, max }) => {
                    // `input` now starts at the body: whatever of it is in
                    // this chunk is all the oversize reply may look at.
                    return self.on_oversize(conn, len, max, input);
                }
                Err(e) => Err(e),
            };
            if let Err(e) = handled {
                self.audit(AuditEvent::new(
                    Level::Warn,
                    Some(conn),
                    "frame_decode_error",
                    e.reason(),
                ));
                self.close(conn);
                return;
            }
        }
        self.arm_partial_deadline(conn);
    }

    /// Parses a complete frame as its connection's phase expects (the
    /// handshake as an object, requests borrowed) and handles it.
    fn on_payload(&mut self, conn: ConnId, payload: &[u8]) -> Result<(), DecodeError> {
        let Some(c) = self.conns.get_mut(conn) else {
            return Ok(());
        };
        c.last_active = self.now.mono;
        match c.phase() {
            Phase::AwaitingHandshake => {
                let frame = frame::parse_object(payload)?;
                self.frame_done(conn);
                self.on_handshake(conn, &frame);
            }
            Phase::Open(accepted) => {
                let request = request::parse(payload)?;
                self.frame_done(conn);
                self.dispatch(conn, accepted, request);
            }
        }
        Ok(())
    }

    /// The frame whose deadline ran (or was suspended) is done.
    fn frame_done(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.partial_left_ms = None;
        }
        self.timers.cancel(TimerKey::PartialFrame(conn));
    }

    /// Starts the partial-frame deadline when a frame has started. While
    /// paused, a frame that started gets its full time saved for the resume.
    fn arm_partial_deadline(&mut self, conn: ConnId) {
        let partial_ms = self.config.limits.partial_frame_ms;
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let key = TimerKey::PartialFrame(conn);
        if !c.decoder.is_partial() {
            c.partial_left_ms = None;
            self.timers.cancel(key);
        } else if c.paused {
            c.partial_left_ms.get_or_insert(partial_ms);
            self.timers.cancel(key);
        } else if self.timers.get(key).is_none() {
            let at = self.now.mono.plus(self.config.limits.partial_frame_ms);
            self.timers.set(key, at);
        }
    }

    fn on_handshake(&mut self, conn: ConnId, frame: &serde_json::Map<String, serde_json::Value>) {
        self.timers.cancel(TimerKey::Handshake(conn));
        match handshake::evaluate(frame, self.token.as_ref()) {
            Ok(_) if !self.admit_handshaken(conn) => {
                // `admit_handshaken` audited the refusal.
                let bytes = encode_payload(&handshake::reject_json(
                    handshake::Rejection::TooManyConnections,
                ));
                self.push(Output::Send { conn, bytes });
                self.close(conn);
            }
            Ok(accepted) => {
                self.conns.accept(conn, accepted);
                let bytes = encode_payload(&handshake::accept_json(accepted.version));
                self.push(Output::Send { conn, bytes });
                let mut ev = AuditEvent::new(Level::Info, Some(conn), "handshake_ok", "ok");
                ev.class = Some(accepted.class);
                self.audit(ev);
            }
            Err(rejection) => {
                let bytes = encode_payload(&handshake::reject_json(rejection));
                self.push(Output::Send { conn, bytes });
                self.audit(AuditEvent::new(
                    Level::Warn,
                    Some(conn),
                    "handshake_rejected",
                    rejection.reason(),
                ));
                self.close(conn);
            }
        }
    }

    /// The peer closed its write side. In-flight requests finish and are
    /// answered, then the connection closes.
    pub fn handle_read_closed(&mut self, conn: ConnId, now: Now) {
        self.tick(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        c.read_closed = true;
        c.partial_left_ms = None;
        let done = matches!(c.phase(), Phase::AwaitingHandshake) || c.in_flight.is_empty();
        self.timers.cancel(TimerKey::PartialFrame(conn));
        if done {
            self.close(conn);
        }
    }

    /// The connection is gone (reset, or the driver closed it). Its requests
    /// are detached; writes among them still complete.
    pub fn handle_connection_gone(&mut self, conn: ConnId, now: Now) {
        self.tick(now);
        if self.forget(conn) {
            self.audit(AuditEvent::new(
                Level::Info,
                Some(conn),
                "disconnect",
                "peer_gone",
            ));
        }
    }

    /// The driver stopped reading the connection because too much output is
    /// unsent. Its partial-frame deadline is suspended.
    pub fn handle_pause_reading(&mut self, conn: ConnId, now: Now) {
        self.tick(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.paused {
            return;
        }
        c.paused = true;
        let key = TimerKey::PartialFrame(conn);
        if let Some(at) = self.timers.get(key) {
            c.partial_left_ms = Some(at.since(self.now.mono));
            self.timers.cancel(key);
        }
    }

    /// The driver reads the connection again; a suspended partial-frame
    /// deadline resumes with the time it had left.
    pub fn handle_resume_reading(&mut self, conn: ConnId, now: Now) {
        self.tick(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !c.paused {
            return;
        }
        c.paused = false;
        if let Some(left) = c.partial_left_ms.take() {
            let at = self.now.mono.plus(left);
            self.timers.set(TimerKey::PartialFrame(conn), at);
        }
    }

    /// Time passed; fires every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        self.tick(now);
        while let Some(key) = self.timers.pop_expired(self.now.mono) {
            match key {
                TimerKey::Handshake(conn) => {
                    self.audit(AuditEvent::new(
                        Level::Warn,
                        Some(conn),
                        "handshake_timeout",
                        "closed",
                    ));
                    self.close(conn);
                }
                TimerKey::PartialFrame(conn) => {
                    self.audit(AuditEvent::new(
                        Level::Warn,
                        Some(conn),
                        "partial_frame_timeout",
                        "closed",
                    ));
                    self.close(conn);
                }
                TimerKey::SessionSweep => self.sweep_sessions(),
                TimerKey::DevicePoll(serial) => self.device_poll_due(serial),
                TimerKey::RefreshRetry(serial) => self.refresh_retry_due(serial),
                TimerKey::Renewal(serial) => self.renewal_due(serial),
                TimerKey::WriteBack(serial) => self.write_back_due(serial),
            }
        }
    }

    /// The result of an effect. Unknown ids (work that was dropped) are
    /// ignored. A result of another kind than the effect's (a `Done` for a
    /// token read, say) is a host fault and is handled as
    /// [`EffectResult::Failed`].
    pub fn handle_effect_result(&mut self, id: EffectId, result: EffectResult, now: Now) {
        self.tick(now);
        let Some((task, kind)) = self.tasks.take_result(id) else {
            return;
        };
        let result = if kind.accepts(&result) {
            result
        } else {
            EffectResult::Failed
        };
        self.resume(task, result);
    }

    /// Closes a connection from the engine side: flush, close, forget.
    pub(crate) fn close(&mut self, conn: ConnId) {
        if self.forget(conn) {
            self.push(Output::Close { conn });
            self.audit(AuditEvent::new(
                Level::Info,
                Some(conn),
                "disconnect",
                "closed",
            ));
        }
    }

    /// Drops a connection's state and detaches its requests.
    fn forget(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.remove(conn, &mut self.timers) else {
            return false;
        };
        for task in c.in_flight.into_values() {
            self.detach(task);
        }
        true
    }

    /// Closes a half-closed connection once its last request is answered.
    pub(crate) fn maybe_finish_half_close(&mut self, conn: ConnId) {
        if self
            .conns
            .get(conn)
            .is_some_and(|c| c.read_closed && c.in_flight.is_empty())
        {
            self.close(conn);
        }
    }

    /// Releases a write lock and starts the next waiter.
    pub(crate) fn release_key(&mut self, key: &Key, holder: TaskId) {
        if let Some(next) = self.keys.unlock(key, holder) {
            self.write_granted(next);
        }
    }
}
