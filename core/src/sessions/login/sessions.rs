//! The session table as clients see it: `oauth_poll` and `oauth_cancel`,
//! owner checks, expiry (reported once as `SESSION_EXPIRED`, then
//! forgotten) and the periodic sweep.

use rand_core::CryptoRng;
use serde_json::{Map, Value};

use crate::engine::engine::Engine;
use crate::engine::timer::TimerKey;
use crate::oauth::provider::FlowType;
use crate::operations::op::Op;
use crate::sessions::session::{Outcome, Owner, Step};
use crate::wire::error::ErrorCode;
use crate::wire::handshake::ConnClass;
use crate::wire::reply::{Answer, Failure};

use super::errors::{failure, flow_mismatch, not_found};
use super::initiate::object;

impl<R: CryptoRng> Engine<R> {
    /// `oauth_poll {session_id}`: reads the session, never waits.
    pub(crate) fn oauth_poll(&mut self, owner: Owner, sid: &str) -> Answer {
        self.lookup(sid, owner)?;
        let Some(session) = self.sessions.get_mut(sid) else {
            return Err(not_found());
        };
        if session.flow == FlowType::PkceRedirect {
            return Err(flow_mismatch(Op::OauthPoll, session.flow));
        }
        if let Some(step) = session.step() {
            let mut data = object(vec![("status", Value::from("pending"))]);
            let (interval, slowed) = match step {
                Step::Polling {
                    interval_ms,
                    slowed,
                    ..
                } => (interval_ms, slowed),
                _ => (self.config.limits.device_poll_ms, false),
            };
            data.insert("pollIntervalMs".into(), Value::from(interval));
            if slowed {
                data.insert("interval".into(), Value::from(interval.div_ceil(1000)));
            }
            return Ok(data.into());
        }
        let outcome = session.collect().map_err(|_| not_found())?;
        self.drop_session(sid);
        match outcome {
            Outcome::Token(t) => Ok(object(vec![
                ("status", Value::from("complete")),
                ("token", Value::Object(t.into_sanitized())),
            ])
            .into()),
            Outcome::Failed(f) => Err(f),
        }
    }

    /// `oauth_cancel {session_id}`: ends the session; `{}` in every case.
    pub(crate) fn oauth_cancel(&mut self, owner: Owner, sid: &str) -> Answer {
        self.sessions.take_tombstone(sid, owner);
        if self.sessions.get(sid).is_some_and(|s| s.owner == owner) {
            self.drop_session(sid);
        }
        Ok(Map::new().into())
    }

    /// Checks that `sid` names a live session of `owner`; an expired one is
    /// reported once and removed.
    pub(super) fn lookup(&mut self, sid: &str, owner: Owner) -> Result<(), Failure> {
        let expired = || failure(ErrorCode::SessionExpired, "OAuth session expired");
        if self.sessions.take_tombstone(sid, owner) {
            return Err(expired());
        }
        match self.sessions.get(sid) {
            Some(s) if s.owner == owner => {
                if s.expires <= self.now.mono {
                    self.drop_session(sid);
                    return Err(expired());
                }
                Ok(())
            }
            _ => Err(not_found()),
        }
    }

    /// Removes a session with its timers and its use of a listener.
    pub(crate) fn drop_session(&mut self, sid: &str) {
        let Some(s) = self.sessions.remove(sid, &mut self.timers) else {
            return;
        };
        if let Some(port) = s.port {
            self.stop_listener_if_idle(port);
        }
    }

    /// Arms the session sweep if it is not armed.
    pub(super) fn arm_sweep(&mut self) {
        if self.timers.get(TimerKey::SessionSweep).is_none() {
            let at = self.now.mono.plus(self.config.limits.session_sweep_ms);
            self.timers.set(TimerKey::SessionSweep, at);
        }
    }

    /// The periodic sweep: expired sessions become tombstones (reported
    /// once as `SESSION_EXPIRED`), old tombstones go.
    pub(crate) fn sweep_sessions(&mut self) {
        let now = self.now.mono;
        let ttl = self.config.limits.session_ttl_ms;
        self.sessions.drop_old_tombstones(now, ttl);
        for sid in self.sessions.expired_at(now) {
            if let Some(s) = self.sessions.expire(&sid, now, &mut self.timers)
                && let Some(port) = s.port
            {
                self.stop_listener_if_idle(port);
            }
        }
        self.sessions
            .cap_tombstones(self.config.limits.sessions_total);
        if self.sessions.needs_sweep() {
            self.timers.set(
                TimerKey::SessionSweep,
                now.plus(self.config.limits.session_sweep_ms),
            );
        }
    }
}

/// The owner of a request: its peer uid and connection class.
#[must_use]
pub(crate) fn owner_of(uid: Option<u32>, class: ConnClass) -> Owner {
    Owner { uid, class }
}
