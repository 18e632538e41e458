//! # The OS keyring
//!
//! Blocking access to the operating system's credential store by
//! (service, account): the freedesktop Secret Service on Linux (GNOME
//! Keyring, KWallet; through keyring-core's pure-Rust zbus store), the
//! login Keychain on macOS. On Linux the kernel keyring (keyutils) is a
//! read-only fallback, for what llxprt-code stored there on machines
//! without a Secret Service.
//!
//! - [`Keyring::open`] connects within a time limit; [`probe`] says whether
//!   and how fast a keyring answers (the `auto` store backend asks for 1 s,
//!   [`PROBE_TIMEOUT`]) and whether its default collection is unlocked,
//!   locked or missing ([`Readiness`]), without prompting.
//! - [`Keyring::get`], [`Keyring::set`], [`Keyring::delete`] and
//!   [`Keyring::list`] each run on a short-lived thread bounded by the
//!   handle's call limit ([`DEFAULT_CALL_TIMEOUT`]), so a stalled daemon or
//!   an unanswered unlock prompt returns an error instead of hanging.
//! - Items are matched on the attributes `service` and `username` only, the
//!   way llxprt-code's library (the same crates) writes them; extra
//!   attributes on an item (gnome-keyring adds `xdg:schema`) do not matter.
//!   New items get the caller's label (what Seahorse shows).
//! - Secrets come back in [`Zeroizing`] buffers and go in as borrowed bytes
//!   copied into one; no secret is in any error or `Debug` output. Copies
//!   the platform crates make on the way (D-Bus messages, the session's
//!   AES buffers) are outside this module's reach.
//! - Errors are a [`KeyringError`]: unavailable, locked, not found, other.
//! - Open once and keep the handle: each [`Keyring::open`] connects to the
//!   bus and negotiates an encrypted session (a Diffie-Hellman exchange);
//!   the calls on a handle reuse it.

mod deadline;
mod error;
#[cfg(target_os = "linux")]
mod kernel;
#[cfg(target_os = "macos")]
mod keychain;
mod probe;
#[cfg(target_os = "linux")]
mod secret_service;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keyring_core::{CredentialStore, Entry};
use zeroize::Zeroizing;

pub use error::{ErrorKind, KeyringError};
pub use probe::{PROBE_TIMEOUT, Probe, Readiness, probe};

use error::from_core;

/// Limit on one keyring call: the D-Bus default method-call timeout, long
/// enough for a person to answer an unlock prompt.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// Which credential store a [`Keyring`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The freedesktop Secret Service on the D-Bus session bus.
    SecretService,
    /// The macOS login Keychain.
    Keychain,
    /// The Linux kernel keyring (keyutils), read only.
    KernelKeyring,
}

impl Backend {
    /// A name for messages and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::SecretService => "Secret Service",
            Backend::Keychain => "macOS Keychain",
            Backend::KernelKeyring => "kernel keyring",
        }
    }

    /// This platform's writable OS keyring, `None` where there is none
    /// (a proxy waits for it to appear only where one can).
    pub fn os() -> Option<Backend> {
        if cfg!(target_os = "linux") {
            Some(Backend::SecretService)
        } else if cfg!(target_os = "macos") {
            Some(Backend::Keychain)
        } else {
            None
        }
    }

    /// Whether [`Keyring::set`] and [`Keyring::delete`] work on it.
    pub fn writable(self) -> bool {
        !matches!(self, Backend::KernelKeyring)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone)]
enum Inner {
    Os {
        store: Arc<CredentialStore>,
        backend: Backend,
    },
    #[cfg(target_os = "linux")]
    Kernel(kernel::Kernel),
}

/// A connection to the OS keyring. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Keyring {
    inner: Inner,
    call_timeout: Duration,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("backend", &self.backend())
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

/// Connects to this platform's writable store (blocking, unbounded).
fn open_os_store() -> Result<(Arc<CredentialStore>, Backend), KeyringError> {
    #[cfg(target_os = "linux")]
    {
        secret_service::open().map(|s| (s, Backend::SecretService))
    }
    #[cfg(target_os = "macos")]
    {
        keychain::open().map(|s| (s, Backend::Keychain))
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        Err(KeyringError::Unavailable(
            "credproxy supports the OS keyring on Linux and macOS only".into(),
        ))
    }
}

/// The creation modifiers carrying an item's label, where the store has one.
fn label_modifier(label: &str) -> Option<(&'static str, &str)> {
    #[cfg(target_os = "linux")]
    {
        secret_service::label_modifier(label)
    }
    #[cfg(target_os = "macos")]
    {
        keychain::label_modifier(label)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = label;
        None
    }
}

#[cfg(target_os = "linux")]
fn read_only(backend: Backend, what: &str) -> KeyringError {
    KeyringError::Other(format!(
        "{what} refused: credproxy only reads the {backend} (to import what \
         llxprt-code stored there), it never writes to it"
    ))
}

impl Keyring {
    /// Connects to the OS keyring (Secret Service / Keychain), giving up
    /// with [`KeyringError::Unavailable`] after `timeout`.
    pub fn open(timeout: Duration) -> Result<Keyring, KeyringError> {
        let (store, backend) =
            deadline::within(timeout, "connecting to the OS keyring", open_os_store)?;
        Ok(Keyring {
            inner: Inner::Os { store, backend },
            call_timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// For reading what llxprt-code stored, the way its library chooses:
    /// the OS keyring if it answers within `timeout`, else (Linux) the
    /// kernel keyring, read only. Errors other than "unavailable" (a
    /// locked keyring) are returned as they are.
    pub fn open_for_reading(timeout: Duration) -> Result<Keyring, KeyringError> {
        match Keyring::open(timeout) {
            #[cfg(target_os = "linux")]
            Err(KeyringError::Unavailable(why)) => Keyring::kernel().map_err(|e| {
                KeyringError::Unavailable(format!("{why}; and the kernel keyring: {e}"))
            }),
            other => other,
        }
    }

    /// The calling process's kernel keyring (session and persistent
    /// keyrings), read only.
    #[cfg(target_os = "linux")]
    pub fn kernel() -> Result<Keyring, KeyringError> {
        Ok(Keyring {
            inner: Inner::Kernel(kernel::Kernel::open()?),
            call_timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// The same connection with another limit on each call.
    pub fn with_call_timeout(mut self, limit: Duration) -> Keyring {
        self.call_timeout = limit;
        self
    }

    /// The limit on each call of this handle.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The store this handle talks to.
    pub fn backend(&self) -> Backend {
        match &self.inner {
            Inner::Os { backend, .. } => *backend,
            #[cfg(target_os = "linux")]
            Inner::Kernel(_) => Backend::KernelKeyring,
        }
    }

    /// The secret stored for (`service`, `account`), `None` if there is none.
    pub fn get(
        &self,
        service: &str,
        account: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyringError> {
        match &self.inner {
            Inner::Os { store, .. } => {
                let (store, service, account) = owned(store, service, account);
                deadline::within(self.call_timeout, "keyring read", move || {
                    let entry = Entry::new_in_store(&store, &service, &account)
                        .map_err(|e| from_core(e, &service, &account))?;
                    match entry.get_secret() {
                        Ok(secret) => Ok(Some(Zeroizing::new(secret))),
                        Err(keyring_core::Error::NoEntry) => Ok(None),
                        Err(e) => Err(from_core(e, &service, &account)),
                    }
                })
            }
            #[cfg(target_os = "linux")]
            Inner::Kernel(kernel) => kernel.get(service, account),
        }
    }

    /// [`Keyring::get`] as text: an entry that is not UTF-8 is an error
    /// (its bytes wiped, not shown).
    pub fn get_string(
        &self,
        service: &str,
        account: &str,
    ) -> Result<Option<Zeroizing<String>>, KeyringError> {
        let Some(mut bytes) = self.get(service, account)? else {
            return Ok(None);
        };
        match String::from_utf8(std::mem::take(&mut *bytes)) {
            Ok(text) => Ok(Some(Zeroizing::new(text))),
            Err(e) => {
                drop(Zeroizing::new(e.into_bytes()));
                Err(KeyringError::Other(format!(
                    "the entry for service {service:?}, account {account:?} is not UTF-8 text"
                )))
            }
        }
    }

    /// Stores `secret` for (`service`, `account`), replacing the secret of
    /// an existing item (which keeps its label) or creating one labelled
    /// `label` in the default collection.
    pub fn set(
        &self,
        service: &str,
        account: &str,
        label: &str,
        secret: &[u8],
    ) -> Result<(), KeyringError> {
        match &self.inner {
            Inner::Os { store, .. } => {
                let (store, service, account) = owned(store, service, account);
                let label = label.to_owned();
                let secret = Zeroizing::new(secret.to_vec());
                deadline::within(self.call_timeout, "keyring write", move || {
                    let modifiers: HashMap<&str, &str> =
                        label_modifier(&label).into_iter().collect();
                    let entry =
                        Entry::new_in_store_with_modifiers(&store, &service, &account, &modifiers)
                            .map_err(|e| from_core(e, &service, &account))?;
                    entry
                        .set_secret(&secret)
                        .map_err(|e| from_core(e, &service, &account))
                })
            }
            #[cfg(target_os = "linux")]
            Inner::Kernel(_) => Err(read_only(self.backend(), "keyring write")),
        }
    }

    /// Removes the entry for (`service`, `account`):
    /// [`KeyringError::NotFound`] if there is none.
    pub fn delete(&self, service: &str, account: &str) -> Result<(), KeyringError> {
        match &self.inner {
            Inner::Os { store, .. } => {
                let (store, service, account) = owned(store, service, account);
                deadline::within(self.call_timeout, "keyring delete", move || {
                    let entry = Entry::new_in_store(&store, &service, &account)
                        .map_err(|e| from_core(e, &service, &account))?;
                    entry
                        .delete_credential()
                        .map_err(|e| from_core(e, &service, &account))
                })
            }
            #[cfg(target_os = "linux")]
            Inner::Kernel(_) => Err(read_only(self.backend(), "keyring delete")),
        }
    }

    /// The accounts stored under `service`, sorted, without duplicates.
    pub fn list(&self, service: &str) -> Result<Vec<String>, KeyringError> {
        match &self.inner {
            Inner::Os { store, .. } => {
                let (store, service, _) = owned(store, service, "");
                deadline::within(self.call_timeout, "keyring list", move || {
                    let spec = HashMap::from([("service", service.as_str())]);
                    let entries = match store.search(&spec) {
                        Ok(entries) => entries,
                        Err(keyring_core::Error::NoEntry) => Vec::new(),
                        Err(e) => return Err(from_core(e, &service, "*")),
                    };
                    let mut accounts: Vec<String> = entries
                        .iter()
                        .filter_map(Entry::get_specifiers)
                        .filter(|(s, _)| *s == service)
                        .map(|(_, account)| account)
                        .collect();
                    accounts.sort();
                    accounts.dedup();
                    Ok(accounts)
                })
            }
            #[cfg(target_os = "linux")]
            Inner::Kernel(kernel) => kernel.list(service),
        }
    }
}

fn owned(
    store: &Arc<CredentialStore>,
    service: &str,
    account: &str,
) -> (Arc<CredentialStore>, String, String) {
    (Arc::clone(store), service.to_owned(), account.to_owned())
}
