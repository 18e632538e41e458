//! OAuth login sessions: a three-state machine (SPEC §2.1, §4).
//!
//! ```text
//!   Initiated(step) ──► Complete(outcome) ──► Used
//!        │                                    ▲
//!        └────────────────────────────────────┘  (answered directly)
//! ```
//!
//! `Initiated` carries which step the flow is at and the attempt count;
//! `Complete` holds a token or a failure the client has not collected yet;
//! `Used` is terminal. Transitions are methods that return the next state
//! or an error, the top-level state only moves forward, and the attempt
//! count never decreases. Secrets (verifier, state, device code) live in
//! [`Secret`]s and never leave the engine.

use crate::engine::audit::ConnId;
use crate::engine::secret::Secret;
use crate::engine::time::Mono;
use crate::oauth::provider::FlowType;
use crate::tokens::token::Token;
use crate::wire::handshake::ConnClass;
use crate::wire::reply::Failure;

/// Attempts allowed for a code exchange that fails transiently.
pub const MAX_EXCHANGE_ATTEMPTS: u8 = 3;

/// Who may use a session: the initiating peer's uid and class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Peer uid, where known.
    pub uid: Option<u32>,
    /// Connection class.
    pub class: ConnClass,
}

/// Where an initiated flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for a pasted code (pkce_redirect).
    AwaitingCode {
        /// Exchanges tried so far.
        attempts: u8,
    },
    /// Waiting for the browser's redirect (browser_redirect); a pasted
    /// redirect URL is accepted too.
    AwaitingCallback {
        /// Exchanges tried so far.
        attempts: u8,
    },
    /// A code exchange is in flight.
    Exchanging {
        /// Exchanges tried, this one included.
        attempts: u8,
        /// Whether the flow goes back to awaiting the browser on a
        /// transient failure.
        browser: bool,
    },
    /// The device authorization request is in flight: the provider's
    /// polling interval is not known yet (so no placeholder interval can
    /// later hold the real one up, RFC 8628 §3.2).
    Authorizing,
    /// The host polls the device endpoint in the background.
    Polling {
        /// Current polling interval.
        interval_ms: u64,
        /// Whether a `slow_down` was received (the reply then shows
        /// `interval`).
        slowed: bool,
        /// Consecutive transport errors (for backoff).
        errors: u8,
    },
    /// A token was obtained and is being stored.
    Storing {
        /// Exchanges tried.
        attempts: u8,
    },
}

impl Step {
    /// The attempt count carried by the step.
    #[must_use]
    pub fn attempts(&self) -> u8 {
        match *self {
            Step::AwaitingCode { attempts }
            | Step::AwaitingCallback { attempts }
            | Step::Exchanging { attempts, .. }
            | Step::Storing { attempts } => attempts,
            Step::Authorizing | Step::Polling { .. } => 0,
        }
    }
}

/// The result of a finished flow.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The stored token (full; sanitized when sent).
    Token(Token),
    /// The failure to report once.
    Failed(Failure),
}

/// The session state.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionState {
    /// The flow is under way.
    Initiated(Step),
    /// The flow has finished; the outcome is not collected yet.
    Complete(Outcome),
    /// Collected, or ended; terminal.
    Used,
}

impl SessionState {
    /// 0, 1, 2 for Initiated, Complete, Used: never decreases.
    #[must_use]
    pub fn rank(&self) -> u8 {
        match self {
            SessionState::Initiated(_) => 0,
            SessionState::Complete(_) => 1,
            SessionState::Used => 2,
        }
    }
}

/// Why a transition is not possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionError {
    /// An exchange is already running, or the outcome is already there.
    AlreadyUsed,
    /// The session has ended.
    Ended,
    /// The step does not allow this transition.
    WrongStep,
}

/// One login session.
#[derive(Debug)]
pub struct Session {
    /// Serial number (for timer keys).
    pub serial: u64,
    /// Provider name.
    pub provider: String,
    /// Bucket the token is stored under.
    pub bucket: String,
    /// Flow type.
    pub flow: FlowType,
    /// Who may use it.
    pub owner: Owner,
    /// The connection that initiated it: while the session lives, that
    /// connection is not evicted as idle (SPEC §3.1).
    pub origin: ConnId,
    /// When it stops being usable.
    pub expires: Mono,
    /// PKCE verifier.
    pub verifier: Secret,
    /// OAuth `state`.
    pub state_param: Secret,
    /// Device code (device flows), or the Codex `device_auth_id`.
    pub device_code: Option<Secret>,
    /// User code (device flows).
    pub user_code: Option<String>,
    /// Loopback port, for browser flows.
    pub port: Option<u16>,
    state: SessionState,
}

impl Session {
    /// A new session in its first step.
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        serial: u64,
        provider: String,
        bucket: String,
        flow: FlowType,
        (owner, origin): (Owner, ConnId),
        expires: Mono,
        verifier: Secret,
        state_param: Secret,
        first: Step,
    ) -> Session {
        Session {
            serial,
            provider,
            bucket,
            flow,
            owner,
            origin,
            expires,
            verifier,
            state_param,
            device_code: None,
            user_code: None,
            port: None,
            state: SessionState::Initiated(first),
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The current step, while initiated.
    #[must_use]
    pub fn step(&self) -> Option<Step> {
        match self.state {
            SessionState::Initiated(s) => Some(s),
            _ => None,
        }
    }

    fn set(&mut self, next: SessionState) {
        debug_assert!(
            next.rank() >= self.state.rank(),
            "session state moved backwards"
        );
        if let (SessionState::Initiated(a), SessionState::Initiated(b)) = (&self.state, &next) {
            debug_assert!(b.attempts() >= a.attempts(), "attempt count decreased");
        }
        self.state = next;
    }

    /// Starts a code exchange from a waiting step.
    pub fn begin_exchange(&mut self) -> Result<u8, TransitionError> {
        let (attempts, browser) = match self.state {
            SessionState::Initiated(Step::AwaitingCode { attempts }) => (attempts, false),
            SessionState::Initiated(Step::AwaitingCallback { attempts }) => (attempts, true),
            SessionState::Initiated(Step::Exchanging { .. } | Step::Storing { .. })
            | SessionState::Complete(_) => return Err(TransitionError::AlreadyUsed),
            SessionState::Initiated(Step::Authorizing | Step::Polling { .. }) => {
                return Err(TransitionError::WrongStep);
            }
            SessionState::Used => return Err(TransitionError::Ended),
        };
        let attempts = attempts.saturating_add(1);
        self.set(SessionState::Initiated(Step::Exchanging {
            attempts,
            browser,
        }));
        Ok(attempts)
    }

    /// A transient exchange failure: back to waiting while attempts remain.
    /// Returns false, leaving the state for the caller to end or complete,
    /// when the attempts are used up.
    pub fn exchange_failed_transiently(&mut self) -> Result<bool, TransitionError> {
        let SessionState::Initiated(Step::Exchanging { attempts, browser }) = self.state else {
            return Err(TransitionError::WrongStep);
        };
        if attempts >= MAX_EXCHANGE_ATTEMPTS {
            return Ok(false);
        }
        let step = if browser {
            Step::AwaitingCallback { attempts }
        } else {
            Step::AwaitingCode { attempts }
        };
        self.set(SessionState::Initiated(step));
        Ok(true)
    }

    /// A token was obtained (exchange or device poll); it is being stored.
    pub fn token_obtained(&mut self) -> Result<(), TransitionError> {
        match self.state {
            SessionState::Initiated(Step::Exchanging { attempts, .. }) => {
                self.set(SessionState::Initiated(Step::Storing { attempts }));
                Ok(())
            }
            SessionState::Initiated(Step::Polling { .. }) => {
                self.set(SessionState::Initiated(Step::Storing { attempts: 0 }));
                Ok(())
            }
            SessionState::Used => Err(TransitionError::Ended),
            _ => Err(TransitionError::WrongStep),
        }
    }

    /// The device authorization answered: polling starts at the provider's
    /// interval (or the default when it gave none), whatever it is.
    pub fn start_polling(&mut self, interval_ms: u64) -> Result<(), TransitionError> {
        let SessionState::Initiated(Step::Authorizing) = self.state else {
            return Err(TransitionError::WrongStep);
        };
        self.set(SessionState::Initiated(Step::Polling {
            interval_ms,
            slowed: false,
            errors: 0,
        }));
        Ok(())
    }

    /// Updates the polling step (interval changes, error counts). The
    /// interval never decreases: `slow_down` raises it for good.
    pub fn set_polling(
        &mut self,
        interval_ms: u64,
        slowed: bool,
        errors: u8,
    ) -> Result<(), TransitionError> {
        let SessionState::Initiated(Step::Polling {
            interval_ms: old, ..
        }) = self.state
        else {
            return Err(TransitionError::WrongStep);
        };
        let interval_ms = interval_ms.max(old);
        self.set(SessionState::Initiated(Step::Polling {
            interval_ms,
            slowed,
            errors,
        }));
        Ok(())
    }

    /// The flow finished in the background; the outcome waits for a poll.
    pub fn complete(&mut self, outcome: Outcome) -> Result<(), TransitionError> {
        match self.state {
            SessionState::Initiated(_) => {
                self.set(SessionState::Complete(outcome));
                Ok(())
            }
            SessionState::Complete(_) => Err(TransitionError::AlreadyUsed),
            SessionState::Used => Err(TransitionError::Ended),
        }
    }

    /// Takes the outcome of a complete session; the session becomes `Used`.
    pub fn collect(&mut self) -> Result<Outcome, TransitionError> {
        match std::mem::replace(&mut self.state, SessionState::Used) {
            SessionState::Complete(outcome) => Ok(outcome),
            other => {
                self.state = other;
                Err(TransitionError::WrongStep)
            }
        }
    }

    /// Ends the session (answered directly, failed for good, cancelled).
    pub fn end(&mut self) {
        self.set(SessionState::Used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(first: Step) -> Session {
        Session::new(
            1,
            "p".into(),
            "default".into(),
            FlowType::PkceRedirect,
            (
                Owner {
                    uid: Some(1),
                    class: ConnClass::Host,
                },
                ConnId(1),
            ),
            Mono(100),
            Secret::new("v"),
            Secret::new("s"),
            first,
        )
    }

    #[test]
    fn exchange_retries_then_ends() {
        let mut s = session(Step::AwaitingCode { attempts: 0 });
        for n in 1..=2 {
            assert_eq!(s.begin_exchange(), Ok(n));
            assert_eq!(s.begin_exchange(), Err(TransitionError::AlreadyUsed));
            assert_eq!(s.exchange_failed_transiently(), Ok(true));
        }
        assert_eq!(s.begin_exchange(), Ok(3));
        assert_eq!(s.exchange_failed_transiently(), Ok(false));
        s.end();
        assert_eq!(s.state(), &SessionState::Used);
        assert_eq!(s.begin_exchange(), Err(TransitionError::Ended));
    }

    #[test]
    fn polling_starts_at_the_provider_interval() {
        // The default interval before the grant arrives must not hold a
        // shorter provider interval up (it did when it was a placeholder
        // `Polling` step and `set_polling` kept the maximum).
        let mut s = session(Step::Authorizing);
        assert_eq!(
            s.set_polling(1_000, false, 0),
            Err(TransitionError::WrongStep)
        );
        s.start_polling(1_000).unwrap();
        assert_eq!(
            s.step(),
            Some(Step::Polling {
                interval_ms: 1_000,
                slowed: false,
                errors: 0
            })
        );
        assert_eq!(s.start_polling(2_000), Err(TransitionError::WrongStep));
    }

    #[test]
    fn complete_then_collect_once() {
        let mut s = session(Step::Polling {
            interval_ms: 5000,
            slowed: false,
            errors: 0,
        });
        assert_eq!(s.begin_exchange(), Err(TransitionError::WrongStep));
        s.set_polling(10_000, true, 0).unwrap();
        s.set_polling(5_000, true, 0).unwrap();
        assert_eq!(
            s.step(),
            Some(Step::Polling {
                interval_ms: 10_000,
                slowed: true,
                errors: 0
            })
        );
        s.token_obtained().unwrap();
        s.complete(Outcome::Failed(Failure::internal())).unwrap();
        assert_eq!(
            s.complete(Outcome::Failed(Failure::internal())),
            Err(TransitionError::AlreadyUsed)
        );
        assert!(s.collect().is_ok());
        assert_eq!(s.state(), &SessionState::Used);
        assert_eq!(s.collect(), Err(TransitionError::WrongStep));
    }
}
