//! The `keyring` backend's files: each token and API key file holds a
//! stamp, one line that names a version of the entry and holds no secret;
//! the secret itself is an item of the OS keyring (Secret Service /
//! Keychain) under service `credproxy`, account `<provider>/<bucket>` for a
//! token and `key/<name>` for an API key.
//!
//! ```text
//! credproxy-keyring 1 <32 hex digits, random for every write>
//! ```
//!
//! Everything the OS keyring cannot do stays in the files: listing and
//! existence (the stamp files), compare-and-set and the refresh lock (the
//! lock files), metadata (the meta files, which hold no secret) and the
//! cache's change detection (the stamp file's identity).
//!
//! A write sets the keyring item first, then replaces the stamp
//! atomically: a crash between the two leaves the old stamp and the new
//! secret, so nothing is lost, and the next write renews both. A delete
//! removes the stamp, then the item; an item left without a stamp (a crash
//! in between) is never read, and the next write of that entry replaces
//! it. A stamp whose item is gone reads as a corrupt entry ("missing in
//! the keyring"), which a new login or `key set` replaces.

use std::path::Path;

use zeroize::Zeroizing;

use super::envelope::Kind;
use super::error::{NameKind, StoreError};
use super::keyring_conn::KeyringConn;
use crate::keyring::KeyringError;

/// The keyring service of every item.
pub const SERVICE: &str = "credproxy";
/// Name of the file that marks a store as a keyring store. Holds no secret.
pub const CHECK_FILE: &str = "keyring.check";
/// The check file's content.
pub const CHECK_TEXT: &[u8] = b"credproxy keyring store\n";
/// First word of every stamp, and its format version.
const STAMP_PREFIX: &str = "credproxy-keyring 1 ";
/// Random bytes in a stamp (so every write gives a new file content).
const STAMP_RANDOM: usize = 16;

/// The keyring side of the `keyring` backend.
#[derive(Debug)]
pub struct KeyringCodec {
    keyring: KeyringConn,
}

impl KeyringCodec {
    /// Uses `keyring` for the secrets (see [`KeyringConn`] for a keyring
    /// that is not there yet or goes away).
    pub fn new(keyring: KeyringConn) -> KeyringCodec {
        KeyringCodec { keyring }
    }

    /// The OS store the secrets go to, for `status`.
    pub fn store_name(&self) -> &'static str {
        self.keyring.backend().as_str()
    }

    /// Fails (without touching an item) unless the keyring can be reached
    /// now: asked before a stamp is removed, so that a delete does not
    /// leave its item behind because the keyring was away.
    pub fn ready(&self, kind: Kind, parts: &[&str]) -> Result<(), StoreError> {
        match account(kind, parts)? {
            Some(account) => self.keyring.ready("remove", &account),
            None => Ok(()),
        }
    }

    /// Stores `plain` for `kind`/`parts` in the keyring (metadata passes
    /// through) and returns the file bytes: a new stamp.
    pub fn encode(
        &self,
        kind: Kind,
        parts: &[&str],
        plain: Zeroizing<Vec<u8>>,
        path: &Path,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let Some(account) = account(kind, parts)? else {
            return Ok(plain);
        };
        let stamp = new_stamp().map_err(|e| StoreError::io("stamp", path, e))?;
        self.keyring.with("store", &account, |k| {
            k.set(SERVICE, &account, &label(kind, parts), &plain)
        })?;
        Ok(Zeroizing::new(stamp.into_bytes()))
    }

    /// The secret the stamp `bytes` of `kind`/`parts` stands for (metadata
    /// passes through).
    pub fn decode(
        &self,
        kind: Kind,
        parts: &[&str],
        bytes: Vec<u8>,
        path: &Path,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let Some(account) = account(kind, parts)? else {
            return Ok(Zeroizing::new(bytes));
        };
        if !is_stamp(&bytes) {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: "not a keyring stamp (a file of another backend in a keyring store?)"
                    .to_owned(),
            });
        }
        match self
            .keyring
            .with("read", &account, |k| k.get(SERVICE, &account))?
        {
            Some(secret) => Ok(secret),
            None => Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!(
                    "its secret is missing in the keyring (service {SERVICE}, account \
                     {account}): it was removed from the keyring outside credproxy"
                ),
            }),
        }
    }

    /// Removes the keyring item of `kind`/`parts`, after its stamp was
    /// removed; an item that is already gone is fine.
    pub fn forget(&self, kind: Kind, parts: &[&str]) -> Result<(), StoreError> {
        let Some(account) = account(kind, parts)? else {
            return Ok(());
        };
        self.keyring
            .with("remove", &account, |k| match k.delete(SERVICE, &account) {
                Ok(()) | Err(KeyringError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            })
    }
}

/// The keyring account of an entry: `<provider>/<bucket>`, `key/<name>`;
/// `None` for metadata, which stays in its file. The provider `key` is
/// refused for tokens: its accounts would be those of API keys.
fn account(kind: Kind, parts: &[&str]) -> Result<Option<String>, StoreError> {
    match (kind, parts) {
        (Kind::Token, [provider, _]) if *provider == "key" => Err(StoreError::InvalidName {
            kind: NameKind::Provider,
            shown: "\"key\"".to_owned(),
            reason: "is reserved in the keyring backend (its accounts key/NAME are API keys)",
        }),
        (Kind::Token, [provider, bucket]) => Ok(Some(format!("{provider}/{bucket}"))),
        (Kind::ApiKey, [name]) => Ok(Some(format!("key/{name}"))),
        _ => Ok(None),
    }
}

/// What Seahorse / Keychain Access shows for the item.
fn label(kind: Kind, parts: &[&str]) -> String {
    match (kind, parts) {
        (Kind::ApiKey, [name]) => format!("credproxy: API key {name}"),
        _ => format!("credproxy: {} token", parts.join("/")),
    }
}

fn new_stamp() -> std::io::Result<String> {
    let mut random = [0u8; STAMP_RANDOM];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut s = String::with_capacity(STAMP_PREFIX.len() + 2 * STAMP_RANDOM + 1);
    s.push_str(STAMP_PREFIX);
    for b in random {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('\n');
    Ok(s)
}

/// Whether `bytes` is a stamp of this format version.
pub fn is_stamp(bytes: &[u8]) -> bool {
    let Some(rest) = bytes.strip_prefix(STAMP_PREFIX.as_bytes()) else {
        return false;
    };
    let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
    rest.len() == 2 * STAMP_RANDOM && rest.iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_new_every_time_and_recognised() {
        let a = new_stamp().expect("stamp");
        let b = new_stamp().expect("stamp");
        assert_ne!(a, b);
        assert!(is_stamp(a.as_bytes()), "{a}");
        assert!(!is_stamp(b"{\"access_token\": \"x\"}\n"));
        assert!(!is_stamp(&a.as_bytes()[..a.len() - 3]));
        assert!(!is_stamp(b"CPXE\x01"));
    }

    #[test]
    fn accounts_and_labels_are_what_a_person_recognises() {
        assert_eq!(
            account(Kind::Token, &["anthropic", "default"]).expect("ok"),
            Some("anthropic/default".to_owned())
        );
        assert_eq!(
            account(Kind::ApiKey, &["OPENAI"]).expect("ok"),
            Some("key/OPENAI".to_owned())
        );
        assert_eq!(account(Kind::Meta, &["a", "b"]).expect("ok"), None);
        let e = account(Kind::Token, &["key", "OPENAI"]).expect_err("reserved");
        assert!(e.to_string().contains("reserved"), "{e}");
        assert_eq!(
            label(Kind::Token, &["anthropic", "default"]),
            "credproxy: anthropic/default token"
        );
        assert_eq!(
            label(Kind::ApiKey, &["OPENAI"]),
            "credproxy: API key OPENAI"
        );
    }
}
