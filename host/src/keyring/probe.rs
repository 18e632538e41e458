//! Whether an OS keyring answers, and how fast: what the `auto` store
//! backend and `credproxy status` ask before choosing the keyring.

use std::time::{Duration, Instant};

use super::{Backend, Keyring, KeyringError};

/// How long the `auto` store backend waits for a keyring to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A keyring that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Which store answered.
    pub backend: Backend,
    /// How long connecting took.
    pub elapsed: Duration,
}

/// Connects to the OS keyring (Secret Service / Keychain, never the
/// read-only kernel keyring) and reports how long it took; an error, at
/// the latest after `timeout`, if it does not answer. Connecting opens a
/// Secret Service session but touches no item, so a locked keyring still
/// answers (its items then fail with [`KeyringError::Locked`]).
pub fn probe(timeout: Duration) -> Result<Probe, KeyringError> {
    let start = Instant::now();
    let keyring = Keyring::open(timeout)?;
    Ok(Probe {
        backend: keyring.backend(),
        elapsed: start.elapsed(),
    })
}
