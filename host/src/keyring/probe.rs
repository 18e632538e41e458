//! Whether an OS keyring answers, how fast, and whether it can be used
//! without a prompt: what the `auto` store backend and `credproxy status`
//! ask before choosing the keyring.

use std::time::{Duration, Instant};

use super::{Backend, KeyringError, deadline};

/// How long the `auto` store backend waits for a keyring to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The state of the collection new items go to (Secret Service: the
/// `default` alias, normally `login`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Unlocked: reads and writes work without a prompt.
    Unlocked,
    /// Locked: the first use asks to unlock it (a desktop prompt), and
    /// fails with [`KeyringError::Locked`] where no prompt can be shown.
    Locked,
    /// No default collection (e.g. gnome-keyring started by D-Bus
    /// activation on a headless machine, before any login keyring
    /// exists): writes fail.
    NoDefaultCollection,
    /// Not checked on this platform (macOS: the Keychain unlocks with the
    /// login session).
    NotChecked,
}

/// A keyring that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Which store answered.
    pub backend: Backend,
    /// How long connecting and checking took.
    pub elapsed: Duration,
    /// The default collection's state.
    pub readiness: Readiness,
}

impl Probe {
    /// Whether items can be read and written now without any prompt.
    pub fn ready(&self) -> bool {
        matches!(self.readiness, Readiness::Unlocked | Readiness::NotChecked)
    }
}

fn check() -> Result<(Backend, Readiness), KeyringError> {
    #[cfg(target_os = "linux")]
    {
        super::secret_service::readiness().map(|r| (Backend::SecretService, r))
    }
    #[cfg(not(target_os = "linux"))]
    {
        super::open_os_store().map(|(_, backend)| (backend, Readiness::NotChecked))
    }
}

/// Connects to the OS keyring (Secret Service / Keychain, never the
/// read-only kernel keyring) and checks its default collection without
/// touching an item or prompting; an error, at the latest after
/// `timeout`, if it does not answer.
pub fn probe(timeout: Duration) -> Result<Probe, KeyringError> {
    let start = Instant::now();
    let (backend, readiness) = deadline::within(timeout, "connecting to the OS keyring", check)?;
    Ok(Probe {
        backend,
        elapsed: start.elapsed(),
        readiness,
    })
}
