//! The keyring half of the import: what llxprt-code stored in the OS
//! keyring (Secret Service, or the kernel keyring where no Secret Service
//! answers), read the way llxprt reads it.
//!
//! - OAuth tokens: service `llxprt-code-oauth`, accounts `<provider>:<bucket>`
//!   from a listing of the service; API keys: `llxprt-code-provider-keys`,
//!   the plaintext is the raw key. Accounts starting `__securestore_probe__`
//!   are llxprt's own probes and skipped.
//! - The machine secret `llxprt-code-machine-secret`/`default` is read by the
//!   file half (see `Keys` in the parent module), before `<data>/machine_secret`.
//! - A locked or unreachable keyring after a successful connection stops
//!   the keyring half (llxprt turns its keyring off for the process in the
//!   same case): what was read is kept, and the state says why the rest
//!   was not.
//!
//! [`KeyringSource`] is the little the import needs, so the logic is
//! tested without a bus; the real one is [`crate::keyring::Keyring`].

use zeroize::Zeroizing;

use super::names::{PROBE_PREFIX, split_account};
use super::paths::{KEYS_SERVICE, OAUTH_SERVICE};
use super::write::Target;
use crate::keyring::{ErrorKind, Keyring, KeyringError};

/// Read access to a keyring by (service, account).
pub trait KeyringSource {
    /// The store's name for messages: `Secret Service`, `kernel keyring`…
    fn backend(&self) -> &'static str;
    /// The accounts stored under `service`.
    fn list(&self, service: &str) -> Result<Vec<String>, KeyringError>;
    /// The secret of (`service`, `account`), `None` when there is none.
    fn get(&self, service: &str, account: &str)
    -> Result<Option<Zeroizing<Vec<u8>>>, KeyringError>;
}

impl KeyringSource for Keyring {
    fn backend(&self) -> &'static str {
        Keyring::backend(self).as_str()
    }

    fn list(&self, service: &str) -> Result<Vec<String>, KeyringError> {
        Keyring::list(self, service)
    }

    fn get(
        &self,
        service: &str,
        account: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyringError> {
        Keyring::get(self, service, account)
    }
}

/// What the import could do with the keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringState {
    /// Not asked for (`--files-only`).
    NotAsked,
    /// Read: `backend` answered and `entries` llxprt entries were found.
    Read {
        /// Which store answered.
        backend: &'static str,
        /// Entries listed (after `--only`).
        entries: usize,
    },
    /// No keyring could be reached at all (no session bus, no Secret
    /// Service on it and no kernel keyring): nothing to read.
    Unreachable(String),
    /// A keyring answered but could not be read (locked, stalled, another
    /// error); entries already read were kept.
    Failed {
        /// Which store answered.
        backend: &'static str,
        /// Why it stopped.
        reason: String,
        /// Entries read before it stopped.
        entries: usize,
    },
}

/// One llxprt entry found in the keyring, its secret read.
pub struct Item {
    /// `llxprt-code-oauth` or `llxprt-code-provider-keys`.
    pub service: &'static str,
    /// llxprt's account.
    pub account: String,
    /// Where it goes in credproxy.
    pub target: Target,
    /// The plaintext, or why it could not be read.
    pub value: Result<Zeroizing<Vec<u8>>, String>,
}

/// Where an account of `service` goes in credproxy.
pub fn target_of(service: &str, account: &str) -> Target {
    if service == OAUTH_SERVICE {
        let (provider, bucket) = split_account(account);
        Target::Token {
            provider: provider.to_owned(),
            bucket: bucket.to_owned(),
        }
    } else {
        Target::ApiKey {
            name: account.to_owned(),
        }
    }
}

/// Whether an error means the keyring as a whole is out of reach now.
fn stops_the_keyring(e: &KeyringError) -> bool {
    matches!(e.kind(), ErrorKind::Locked | ErrorKind::Unavailable)
}

/// What [`read`] found.
pub struct Found {
    /// Entries selected by `wanted`, with their secrets.
    pub items: Vec<Item>,
    /// Every (service, account) listed, selected or not.
    pub listed: Vec<(&'static str, String)>,
    /// The keyring's state afterwards.
    pub state: KeyringState,
}

/// Lists both services and reads the entries `wanted` selects.
pub fn read(src: &dyn KeyringSource, wanted: &dyn Fn(&'static str, &str) -> bool) -> Found {
    let backend = src.backend();
    let mut found = Found {
        items: Vec::new(),
        listed: Vec::new(),
        state: KeyringState::Read {
            backend,
            entries: 0,
        },
    };
    let stop = |found: &mut Found, e: &KeyringError| {
        found.state = KeyringState::Failed {
            backend,
            reason: e.to_string(),
            entries: found.items.len(),
        };
    };
    for service in [OAUTH_SERVICE, KEYS_SERVICE] {
        let accounts = match src.list(service) {
            Ok(a) => a,
            Err(e) => {
                stop(&mut found, &e);
                return found;
            }
        };
        for account in accounts {
            if account.starts_with(PROBE_PREFIX) {
                continue;
            }
            found.listed.push((service, account.clone()));
            if !wanted(service, &account) {
                continue;
            }
            let value = match src.get(service, &account) {
                Ok(Some(v)) => Ok(v),
                // Gone since the listing: nothing to import.
                Ok(None) => continue,
                Err(KeyringError::NotFound { .. }) => continue,
                Err(e) if stops_the_keyring(&e) => {
                    stop(&mut found, &e);
                    return found;
                }
                Err(e) => Err(e.to_string()),
            };
            found.items.push(Item {
                service,
                target: target_of(service, &account),
                account,
                value,
            });
        }
    }
    found.state = KeyringState::Read {
        backend,
        entries: found.items.len(),
    };
    found
}

#[cfg(test)]
pub(crate) mod fake {
    //! A keyring in memory for the import's unit tests.

    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    /// Entries by (service, account); `fail_list`/`fail_get` make calls fail.
    #[derive(Default)]
    pub(crate) struct FakeKeyring {
        pub(crate) entries: BTreeMap<(String, String), Vec<u8>>,
        pub(crate) fail_list: Option<KeyringError>,
        pub(crate) fail_get: Option<(String, KeyringError)>,
        pub(crate) calls: RefCell<Vec<String>>,
    }

    impl FakeKeyring {
        pub(crate) fn with(mut self, service: &str, account: &str, value: &str) -> Self {
            self.entries.insert(
                (service.to_owned(), account.to_owned()),
                value.as_bytes().to_vec(),
            );
            self
        }
    }

    impl KeyringSource for FakeKeyring {
        fn backend(&self) -> &'static str {
            "fake keyring"
        }

        fn list(&self, service: &str) -> Result<Vec<String>, KeyringError> {
            self.calls.borrow_mut().push(format!("list {service}"));
            if let Some(e) = &self.fail_list {
                return Err(e.clone());
            }
            Ok(self
                .entries
                .keys()
                .filter(|(s, _)| s == service)
                .map(|(_, a)| a.clone())
                .collect())
        }

        fn get(
            &self,
            service: &str,
            account: &str,
        ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyringError> {
            self.calls
                .borrow_mut()
                .push(format!("get {service} {account}"));
            if let Some((a, e)) = &self.fail_get
                && a == account
            {
                return Err(e.clone());
            }
            Ok(self
                .entries
                .get(&(service.to_owned(), account.to_owned()))
                .map(|v| Zeroizing::new(v.clone())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeKeyring;
    use super::*;

    #[test]
    fn lists_both_services_skips_probes_and_reads_only_what_is_wanted() {
        let k = FakeKeyring::default()
            .with(OAUTH_SERVICE, "anthropic:default", "T1")
            .with(OAUTH_SERVICE, "__securestore_probe__x", "P")
            .with(OAUTH_SERVICE, "gemini", "T2")
            .with(KEYS_SERVICE, "openai", "K");
        let found = read(&k, &|_, a| a != "gemini");
        assert_eq!(
            found.state,
            KeyringState::Read {
                backend: "fake keyring",
                entries: 2
            }
        );
        assert_eq!(found.listed.len(), 3);
        let names: Vec<_> = found.items.iter().map(|i| i.account.as_str()).collect();
        assert_eq!(names, ["anthropic:default", "openai"]);
        assert_eq!(
            found.items[0].target,
            Target::Token {
                provider: "anthropic".into(),
                bucket: "default".into()
            }
        );
        assert!(!k.calls.borrow().iter().any(|c| c.contains("gemini")));
        assert!(!k.calls.borrow().iter().any(|c| c.contains("probe")));
    }

    #[test]
    fn a_locked_keyring_stops_and_keeps_what_was_read() {
        let mut k = FakeKeyring::default()
            .with(OAUTH_SERVICE, "a:1", "T1")
            .with(OAUTH_SERVICE, "b:1", "T2")
            .with(KEYS_SERVICE, "openai", "K");
        k.fail_get = Some(("b:1".into(), KeyringError::Locked("locked".into())));
        let found = read(&k, &|_, _| true);
        assert_eq!(found.items.len(), 1);
        match found.state {
            KeyringState::Failed {
                entries, reason, ..
            } => {
                assert_eq!(entries, 1);
                assert!(reason.contains("locked"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Nothing was asked after the keyring stopped.
        assert!(!k.calls.borrow().iter().any(|c| c.contains(KEYS_SERVICE)));
    }

    #[test]
    fn another_error_fails_that_entry_only() {
        let mut k = FakeKeyring::default()
            .with(OAUTH_SERVICE, "a:1", "T1")
            .with(KEYS_SERVICE, "openai", "K");
        k.fail_get = Some(("a:1".into(), KeyringError::Other("odd".into())));
        let found = read(&k, &|_, _| true);
        assert_eq!(found.items.len(), 2);
        assert!(found.items[0].value.as_ref().is_err());
        assert!(matches!(found.state, KeyringState::Read { entries: 2, .. }));
        let mut k = FakeKeyring::default().with(OAUTH_SERVICE, "a:1", "T1");
        k.fail_list = Some(KeyringError::Locked("IsLocked".into()));
        let found = read(&k, &|_, _| true);
        assert!(found.items.is_empty());
        assert!(matches!(
            found.state,
            KeyringState::Failed { entries: 0, .. }
        ));
    }
}
