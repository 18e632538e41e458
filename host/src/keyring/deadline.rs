//! Every keyring call runs on its own short-lived thread and is waited for
//! with a time limit, so a Secret Service that never answers (a hung
//! daemon, a D-Bus activation that stalls, an unlock prompt nobody
//! answers) costs the caller at most that limit, never a hang.
//!
//! A call that overruns keeps running on its thread until the platform
//! gives up; its result, a secret included, is then dropped (and wiped, as
//! results hold secrets in `Zeroizing`).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use super::error::KeyringError;

/// Runs `call` on a new thread and waits up to `limit` for its result.
/// `what` names the operation in the error.
pub(crate) fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    call: impl FnOnce() -> Result<T, KeyringError> + Send + 'static,
) -> Result<T, KeyringError> {
    let (tx, rx) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name("keyring-call".into())
        .spawn(move || {
            // The receiver is gone if the caller stopped waiting.
            let _ = tx.send(call());
        })
        .map_err(|e| KeyringError::Other(format!("cannot start a thread for {what}: {e}")))?;
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(KeyringError::Unavailable(format!(
            "{what}: no answer within {} ms (a hung keyring daemon, or an unlock prompt \
             nobody answered)",
            limit.as_millis()
        ))),
        Err(RecvTimeoutError::Disconnected) => Err(KeyringError::Other(format!(
            "{what}: the keyring call failed unexpectedly"
        ))),
    }
}
