//! What a store file's bytes are: the value itself (`file` backend), an
//! envelope of it (`encrypted-file`, see [`super::envelope`]), or a stamp
//! naming a version of a secret kept in the OS keyring (`keyring`, see
//! [`super::stamp`]). The layout of the directory, the atomic writes, the
//! locks and the cache are the same for all three; only the bytes of each
//! file differ.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::envelope::{self, Kind};
use super::error::StoreError;
use super::key::DataKey;
use super::stamp::KeyringCodec;

/// Name of the file that marks a store as encrypted and proves a key is
/// its key: an envelope of [`CHECK_TEXT`] (kind `check`). Holds no secret.
pub const CHECK_FILE: &str = "encrypted.check";
const CHECK_TEXT: &[u8] = b"credproxy encrypted-file store";

/// How values are written to and read from the files.
#[derive(Clone)]
pub enum Codec {
    /// As they are (the `file` backend: plaintext, mode 0600).
    Plain,
    /// AES-256-GCM envelopes under this key (the `encrypted-file` backend).
    Sealed(Arc<DataKey>),
    /// Secrets in the OS keyring, stamps in the files (the `keyring`
    /// backend; metadata stays in the files as it is).
    Keyring(Arc<KeyringCodec>),
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::Plain => "Plain",
            Codec::Sealed(_) => "Sealed",
            Codec::Keyring(_) => "Keyring",
        })
    }
}

impl Codec {
    /// The bytes to write for the value `plain` of entry `kind`/`parts`.
    pub fn encode(
        &self,
        kind: Kind,
        parts: &[&str],
        plain: Zeroizing<Vec<u8>>,
        path: &Path,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        match self {
            Codec::Plain => Ok(plain),
            Codec::Sealed(key) => envelope::seal(key, kind, parts, &plain)
                .map(Zeroizing::new)
                .map_err(|e| StoreError::io("encrypt", path, e)),
            Codec::Keyring(k) => k.encode(kind, parts, plain, path),
        }
    }

    /// The value in the file bytes `bytes` of entry `kind`/`parts`.
    pub fn decode(
        &self,
        kind: Kind,
        parts: &[&str],
        bytes: Vec<u8>,
        path: &Path,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        match self {
            Codec::Plain => Ok(Zeroizing::new(bytes)),
            Codec::Sealed(key) => {
                let bytes = Zeroizing::new(bytes);
                envelope::open(key, kind, parts, &bytes).map_err(|e| StoreError::Corrupt {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })
            }
            Codec::Keyring(k) => k.decode(kind, parts, bytes, path),
        }
    }

    /// For a keyring store, whether `bytes` is a well-formed stamp (no
    /// keyring call); `None` for the other backends.
    pub fn stamp_is_whole(&self, bytes: &[u8]) -> Option<bool> {
        match self {
            Codec::Keyring(_) => Some(super::stamp::is_stamp(bytes)),
            Codec::Plain | Codec::Sealed(_) => None,
        }
    }

    /// Before the file of entry `kind`/`parts` is removed: fails unless
    /// what the entry has outside the files (the keyring item) can be
    /// removed too, so a delete does not leave it behind.
    pub fn ready_to_forget(&self, kind: Kind, parts: &[&str]) -> Result<(), StoreError> {
        match self {
            Codec::Plain | Codec::Sealed(_) => Ok(()),
            Codec::Keyring(k) => k.ready(kind, parts),
        }
    }

    /// After the file of entry `kind`/`parts` was removed: drops what the
    /// entry has outside the files (the keyring item), if anything.
    pub fn forget(&self, kind: Kind, parts: &[&str]) -> Result<(), StoreError> {
        match self {
            Codec::Plain | Codec::Sealed(_) => Ok(()),
            Codec::Keyring(k) => k.forget(kind, parts),
        }
    }
}

/// The check file of the store at `root`.
pub fn check_path(root: &Path) -> PathBuf {
    root.join(CHECK_FILE)
}

/// The check file's content for `key`.
pub fn check_bytes(key: &DataKey) -> Result<Vec<u8>, std::io::Error> {
    envelope::seal(key, Kind::Check, &[], CHECK_TEXT)
}

/// Whether `bytes` (the check file) opens with `key`.
pub fn check_opens(key: &DataKey, bytes: &[u8]) -> bool {
    envelope::open(key, Kind::Check, &[], bytes).is_ok_and(|t| t.as_slice() == CHECK_TEXT)
}
