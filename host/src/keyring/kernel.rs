//! Linux: the kernel keyring (keyutils), read only.
//!
//! llxprt-code's keyring library writes here when no Secret Service
//! answers (headless Linux): a `user` key described
//! `keyring:<account>@<service>` in the session keyring, also linked into
//! the user's persistent keyring. credproxy never writes here (the keys
//! are lost at reboot); it reads them to import them.
//!
//! Reads use linux-keyutils directly rather than its keyring-core store:
//! that store's read re-links the key into the session and persistent
//! keyrings (a write), and it cannot list. Like llxprt's library, opening
//! links the user's persistent keyring into the session keyring (the
//! kernel creates it if missing; it expires after 3 days unused), so keys
//! from an earlier login session are found.

use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier, LinkNode};
use zeroize::Zeroizing;

use super::error::KeyringError;

/// Most links read from one keyring when listing.
const MAX_LINKS: usize = 4096;

/// The session keyring, ready to search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kernel {
    session: KeyRing,
    persistent: Option<KeyRing>,
}

fn describe(err: KeyError) -> String {
    format!("kernel keyring: {err:?}")
}

/// The key description llxprt's library uses for (service, account).
pub(crate) fn description(service: &str, account: &str) -> String {
    format!("keyring:{account}@{service}")
}

impl Kernel {
    /// The calling process's session keyring (not created if missing).
    pub(crate) fn open() -> Result<Self, KeyringError> {
        let session = KeyRing::from_special_id(KeyRingIdentifier::Session, false)
            .map_err(|e| KeyringError::Unavailable(describe(e)))?;
        let persistent = KeyRing::get_persistent(KeyRingIdentifier::Session).ok();
        Ok(Kernel {
            session,
            persistent,
        })
    }

    /// The payload of the `user` key for (service, account), if any.
    pub(crate) fn get(
        &self,
        service: &str,
        account: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyringError> {
        let desc = description(service, account);
        let key = match self.session.search(&desc) {
            Ok(key) => key,
            Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired) => {
                return Ok(None);
            }
            Err(KeyError::AccessDenied) => {
                return Err(KeyringError::Other(format!(
                    "kernel keyring: access to the key for service {service:?}, account \
                     {account:?} denied"
                )));
            }
            Err(e) => return Err(KeyringError::Other(describe(e))),
        };
        match key.read_to_vec() {
            Ok(data) => Ok(Some(Zeroizing::new(data))),
            Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired) => {
                Ok(None)
            }
            Err(e) => Err(KeyringError::Other(describe(e))),
        }
    }

    /// The accounts of `service`: the `user` keys described
    /// `keyring:<account>@<service>` linked in the session keyring, the
    /// persistent keyring, or a keyring linked from either.
    pub(crate) fn list(&self, service: &str) -> Result<Vec<String>, KeyringError> {
        let suffix = format!("@{service}");
        let mut rings = vec![self.session];
        rings.extend(self.persistent);
        let mut seen = Vec::new();
        let mut accounts = Vec::new();
        while let Some(ring) = rings.pop() {
            let links = match ring.get_links(MAX_LINKS) {
                Ok(links) => links,
                Err(KeyError::AccessDenied) => continue,
                Err(e) => return Err(KeyringError::Other(describe(e))),
            };
            for node in links.iter() {
                match node {
                    LinkNode::KeyRing(inner) => {
                        if !seen.contains(inner) {
                            seen.push(*inner);
                            rings.push(*inner);
                        }
                    }
                    LinkNode::Key(key) => {
                        // get_links yields only `user` keys and keyrings.
                        let Ok(meta) = key.metadata() else { continue };
                        let account = meta
                            .get_description()
                            .strip_prefix("keyring:")
                            .and_then(|rest| rest.strip_suffix(&suffix));
                        if let Some(account) = account
                            && !account.is_empty()
                        {
                            accounts.push(account.to_owned());
                        }
                    }
                }
            }
        }
        accounts.sort();
        accounts.dedup();
        Ok(accounts)
    }
}
