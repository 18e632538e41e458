//! The `keyring` backend's connection to the OS keyring, which may come
//! and go while the proxy runs: on a desktop login a proxy started as a
//! systemd user service often starts before gnome-keyring does.
//!
//! A proxy (`serve`, `exec`, `stdio`) opens a store already marked as a
//! keyring store even when no Secret Service answers
//! ([`KeyringConn::waiting`]): what needs no keyring item (listing,
//! existence, metadata) is served from the files as usual, and an
//! operation that needs an item connects first. A failed connect arms a
//! [`Backoff`] (100 ms doubling to 5 s); until it is due, such operations
//! fail at once with [`StoreError::KeyringUnavailable`] and the time the
//! next attempt is due (the wire's `STORE_UNAVAILABLE` with `retryAfter`).
//! The first operation after that tries again, on the blocking pool like
//! every store operation, bounded by the open timeout; one attempt at a
//! time, the others fail at once meanwhile. Success clears the back-off.
//!
//! A connection whose call says the keyring is unreachable (the daemon or
//! the bus went away, or no answer within the call limit) is dropped, and
//! the next operation connects anew with a new session, so a Secret
//! Service that restarts is found again without restarting the proxy.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::backoff::{Backoff, MIN_RETRY_AFTER};
use super::error::StoreError;
use crate::keyring::{self, ErrorKind, Keyring, KeyringError};

/// How a new connection is made (the real keyring, or a test's stand-in).
type Connector = Box<dyn Fn() -> Result<Keyring, KeyringError> + Send + Sync>;

/// See the module documentation.
pub struct KeyringConn {
    state: Mutex<State>,
    connect: Connector,
    backend: keyring::Backend,
}

#[derive(Default)]
struct State {
    keyring: Option<Keyring>,
    /// Counts connections made, so a caller drops only the one it used.
    generation: u64,
    backoff: Backoff,
    /// Why the last connect failed (no secret in it).
    last: Option<KeyringError>,
    connecting: bool,
}

impl std::fmt::Debug for KeyringConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringConn")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl KeyringConn {
    /// A connection made already; remade the same way (same time limits)
    /// when it is lost.
    pub fn connected(keyring: Keyring, open_timeout: Duration) -> KeyringConn {
        let call_timeout = keyring.call_timeout();
        let backend = keyring.backend();
        KeyringConn {
            state: Mutex::new(State {
                keyring: Some(keyring),
                generation: 1,
                ..State::default()
            }),
            connect: Box::new(move || {
                Keyring::open(open_timeout).map(|k| k.with_call_timeout(call_timeout))
            }),
            backend,
        }
    }

    /// No connection yet: the first connect failed with `first` just now.
    /// `None` where this platform has no writable OS keyring to wait for.
    pub fn waiting(first: KeyringError, open_timeout: Duration) -> Option<KeyringConn> {
        let backend = keyring::Backend::os()?;
        Some(KeyringConn::with_connector(
            first,
            backend,
            Box::new(move || Keyring::open(open_timeout)),
        ))
    }

    fn with_connector(
        first: KeyringError,
        backend: keyring::Backend,
        connect: Connector,
    ) -> KeyringConn {
        let mut state = State::default();
        state.backoff.fail(Instant::now());
        state.last = Some(first);
        KeyringConn {
            state: Mutex::new(state),
            connect,
            backend,
        }
    }

    /// The OS store the secrets go to, for `status`.
    pub fn backend(&self) -> keyring::Backend {
        self.backend
    }

    /// Runs `call` on the connection (made first if there is none) for the
    /// item `account`; `op` ("read", "store", "remove") names it in errors.
    pub fn with<T>(
        &self,
        op: &'static str,
        account: &str,
        call: impl FnOnce(&Keyring) -> Result<T, KeyringError>,
    ) -> Result<T, StoreError> {
        let (keyring, generation) = self.handle(op, account)?;
        match call(&keyring) {
            Ok(v) => Ok(v),
            Err(cause @ KeyringError::Unavailable(_)) => {
                self.lost(generation);
                Err(unavailable(op, account, cause, MIN_RETRY_AFTER))
            }
            Err(cause) => Err(StoreError::Keyring {
                op,
                account: account.to_owned(),
                cause,
            }),
        }
    }

    /// Makes sure a connection is there (connecting if due), without
    /// touching any item: asked before a stamp is removed, so a delete
    /// never leaves an item behind for want of a keyring.
    pub fn ready(&self, op: &'static str, account: &str) -> Result<(), StoreError> {
        self.handle(op, account).map(drop)
    }

    /// The connection and its generation, connecting if there is none and
    /// the back-off allows.
    fn handle(&self, op: &'static str, account: &str) -> Result<(Keyring, u64), StoreError> {
        {
            let mut s = lock(&self.state);
            if let Some(k) = &s.keyring {
                return Ok((k.clone(), s.generation));
            }
            if let Some(wait) = s.backoff.wait(Instant::now()) {
                return Err(unavailable(
                    op,
                    account,
                    last(&s),
                    Backoff::retry_after(wait),
                ));
            }
            if s.connecting {
                return Err(unavailable(op, account, last(&s), MIN_RETRY_AFTER));
            }
            s.connecting = true;
        }
        let made = (self.connect)();
        let mut s = lock(&self.state);
        s.connecting = false;
        match made {
            Ok(k) => {
                s.backoff.reset();
                s.last = None;
                s.generation += 1;
                s.keyring = Some(k.clone());
                Ok((k, s.generation))
            }
            Err(cause) => {
                let delay = s.backoff.fail(Instant::now());
                s.last = Some(cause.clone());
                if cause.kind() == ErrorKind::Unavailable {
                    Err(unavailable(op, account, cause, Backoff::retry_after(delay)))
                } else {
                    Err(StoreError::Keyring {
                        op,
                        account: account.to_owned(),
                        cause,
                    })
                }
            }
        }
    }

    /// The connection of `generation` proved unreachable: drop it (unless
    /// another caller already replaced it), so the next operation reconnects.
    fn lost(&self, generation: u64) {
        let mut s = lock(&self.state);
        if s.generation == generation {
            s.keyring = None;
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn last(s: &State) -> KeyringError {
    s.last.clone().unwrap_or_else(|| {
        KeyringError::Unavailable("connecting to the OS keyring (an attempt is under way)".into())
    })
}

fn unavailable(
    op: &'static str,
    account: &str,
    cause: KeyringError,
    retry_after: Duration,
) -> StoreError {
    StoreError::KeyringUnavailable {
        op,
        account: account.to_owned(),
        cause,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn down() -> KeyringError {
        KeyringError::Unavailable("no D-Bus session bus, or no Secret Service on it".into())
    }

    /// A connection that never comes, counting the attempts.
    fn never(kind: fn() -> KeyringError) -> (KeyringConn, Arc<AtomicUsize>) {
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&tries);
        let conn = KeyringConn::with_connector(
            down(),
            keyring::Backend::SecretService,
            Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Err(kind())
            }),
        );
        (conn, tries)
    }

    fn retry_after(e: &StoreError) -> Duration {
        match e {
            StoreError::KeyringUnavailable { retry_after, .. } => *retry_after,
            other => panic!("not KeyringUnavailable: {other}"),
        }
    }

    #[test]
    fn while_the_back_off_runs_callers_fail_at_once_without_an_attempt() {
        let (conn, tries) = never(down);
        {
            // A pause of 5 s, longer than the calls below take.
            let mut s = lock(&conn.state);
            let now = Instant::now();
            for _ in 0..7 {
                s.backoff.fail(now);
            }
        }
        for _ in 0..3 {
            let e = conn
                .with("read", "key/OPENAI", |_| Ok(()))
                .expect_err("down");
            let after = retry_after(&e);
            assert!(
                after > Duration::from_secs(4) && after <= Duration::from_secs(5),
                "{after:?}"
            );
            let text = e.to_string();
            assert!(
                text.contains("key/OPENAI") && text.contains("no Secret Service"),
                "{text}"
            );
        }
        assert_eq!(
            tries.load(Ordering::SeqCst),
            0,
            "the first pause is not over"
        );
    }

    #[test]
    fn an_attempt_is_made_when_due_and_its_failure_arms_the_next_pause() {
        let (conn, tries) = never(down);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Poll until the first pause (100 ms) is over and an attempt is made.
        while tries.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no attempt within 10 s");
            let e = conn.ready("read", "a/b").expect_err("down");
            assert!(matches!(e, StoreError::KeyringUnavailable { .. }), "{e}");
        }
        {
            let s = lock(&conn.state);
            let wait = s.backoff.wait(Instant::now()).expect("a pause armed");
            assert!(
                wait <= Duration::from_millis(200),
                "the second pause: {wait:?}"
            );
            assert!(s.keyring.is_none() && !s.connecting);
        }
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_connect_refused_for_another_reason_is_that_error() {
        let (conn, tries) = never(|| KeyringError::Other("refused".into()));
        lock(&conn.state).backoff.reset();
        let e = conn.with("store", "a/b", |_| Ok(())).expect_err("refused");
        assert!(matches!(e, StoreError::Keyring { .. }), "{e}");
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        // It still holds off the next attempt.
        let e = conn.with("store", "a/b", |_| Ok(())).expect_err("held off");
        assert!(matches!(e, StoreError::KeyringUnavailable { .. }), "{e}");
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
