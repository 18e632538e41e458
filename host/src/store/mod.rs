//! The embedded default credential store (SPEC §7).
//!
//! OAuth tokens, per-key metadata, refresh locks and API keys live in files
//! under one private root (`$XDG_DATA_HOME/credproxy` by default):
//!
//! ```text
//! <root>/tokens/<hex(provider)>.<hex(bucket)>.json   the token (JSON object)
//! <root>/meta/<hex(provider)>.<hex(bucket)>.json     KeyMeta, outside the token
//! <root>/locks/<hex(provider)>.<hex(bucket)>.lock    flock target, never deleted
//! <root>/keys/<hex(name)>                            an API key, raw bytes
//! ```
//!
//! Everything is synchronous: the async driver calls it through
//! `smol::unblock`, or inline for [`FileStore::get_token_cached`], which
//! costs one lstat. [`FileStore`] is `Send + Sync` and meant to be shared
//! behind an `Arc`; several instances (in this process or others) may use
//! the same root at once.

mod atomic;
mod backend;
mod backoff;
mod cache;
mod codec;
mod corrupt;
mod dirs;
mod dispatch;
mod envelope;
mod error;
pub mod key;
mod keyring_conn;
pub(crate) mod keyring_key;
mod lock;
mod names;
pub mod postgres;
mod read;
mod stamp;

#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credproxy_core::{Secret, Token};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use cache::{FileId, TokenCache};
use codec::Codec;
use envelope::Kind;
use keyring_conn::KeyringConn;
use names::{
    api_key_file_name, check_api_key_name, check_key_part, json_file_name, lock_file_name,
    parse_api_key_file_name, parse_json_file_name,
};
use zeroize::Zeroizing;

pub use backend::{Backend, BackendName, KeySource, PgSpec, StoreSpec};
pub use corrupt::Replaced;
pub use dispatch::Store;
pub use error::{NameKind, StoreError};
pub use lock::KeyLock;
pub use names::MAX_NAME_LEN;

/// Largest token or metadata file we will read (tokens are a few KiB).
const MAX_JSON_BYTES: u64 = 1024 * 1024;
/// What an envelope adds to a file (read caps allow for it on both
/// backends).
const SEAL: u64 = envelope::OVERHEAD as u64;
/// Largest API key we will store or read: what a protocol v2 reply can
/// carry (4 MiB); a larger v1 reply becomes `RESPONSE_TOO_LARGE`.
const MAX_KEY_BYTES: u64 = 4 * 1024 * 1024;

/// Subdirectory names under the root.
const TOKENS: &str = "tokens";
const META: &str = "meta";
const LOCKS: &str = "locks";
const KEYS: &str = "keys";

/// Per-key metadata kept beside, never inside, the token, so `get_token`
/// cannot leak it and a token rewrite cannot lose it by accident.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyMeta {
    /// The provider rejected the stored refresh token (`invalid_grant` and
    /// the like): refreshing again is pointless until a login or a
    /// `save_token` with a new token clears this (SPEC §5.3).
    pub refresh_unusable: bool,
}

/// The file-backed store. Cheap to share: wrap it in an `Arc`.
///
/// Errors, for every method: [`StoreError::InvalidName`] for a bad name,
/// before the disk is touched; [`StoreError::Insecure`] for a symlink or a
/// file or directory that is not private; [`StoreError::Corrupt`] for a file
/// that does not parse; [`StoreError::Io`] for anything the OS refuses.
pub struct FileStore {
    root: PathBuf,
    tokens: PathBuf,
    meta: PathBuf,
    locks: PathBuf,
    keys: PathBuf,
    codec: Codec,
    cache: TokenCache,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cache holds tokens: show only where the store is.
        f.debug_struct("FileStore")
            .field("root", &self.root)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// `$XDG_DATA_HOME/credproxy`, else `$HOME/.local/share/credproxy`: the
    /// XDG location, so the CLI and every proxy of the user agree on it. A
    /// relative `XDG_DATA_HOME` is ignored (XDG spec); without an absolute
    /// `HOME` this is an error rather than a store in the working directory.
    pub fn default_root() -> Result<PathBuf, StoreError> {
        dirs::default_root()
    }

    /// Opens the store at `root`, creating it (0700) and its subdirectories
    /// if missing. An existing root or subdirectory must be a real directory
    /// owned by our euid with no group/other bits, and every file in them a
    /// private regular file; otherwise the error says how to fix it. Temp
    /// files left by a crash (no live writer holds their lock) are removed.
    ///
    /// This is the plaintext `file` backend: a store marked encrypted is
    /// refused with [`StoreError::Key`].
    pub fn open(root: &Path) -> Result<FileStore, StoreError> {
        FileStore::open_with(root, Codec::Plain)
    }

    /// Opens the store at `root` as an `encrypted-file` store with `key`:
    /// every token, metadata and API key file is an AES-256-GCM envelope.
    /// A new (or empty) store is marked encrypted by its check file; an
    /// existing one must open with `key`, and a store with plaintext
    /// entries is refused (migrate it first).
    pub fn open_encrypted(root: &Path, key: key::DataKey) -> Result<FileStore, StoreError> {
        FileStore::open_with(root, Codec::Sealed(std::sync::Arc::new(key)))
    }

    fn open_with(root: &Path, codec: Codec) -> Result<FileStore, StoreError> {
        if fs::symlink_metadata(root).is_err()
            && let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty())
        {
            fs::create_dir_all(parent)
                .map_err(|e| StoreError::io("create directory", parent, e))?;
        }
        dirs::ensure_private_dir(root)?;
        let store = FileStore {
            root: root.to_owned(),
            tokens: root.join(TOKENS),
            meta: root.join(META),
            locks: root.join(LOCKS),
            keys: root.join(KEYS),
            codec,
            cache: TokenCache::default(),
        };
        for dir in [&store.tokens, &store.meta, &store.locks, &store.keys] {
            dirs::ensure_private_dir(dir)?;
            check_entries(dir)?;
        }
        backend::check_marker(&store)?;
        Ok(store)
    }

    /// Opens the store at `root` as a `keyring` store: token and API key
    /// files hold stamps, the secrets are items of `keyring` (see
    /// [`stamp`]). A new (or empty) store is marked by its check file.
    pub fn open_keyring(
        root: &Path,
        keyring: crate::keyring::Keyring,
    ) -> Result<FileStore, StoreError> {
        let conn = KeyringConn::connected(keyring, backend::KEYRING_OPEN_TIMEOUT);
        FileStore::open_keyring_conn(root, conn)
    }

    /// [`FileStore::open_keyring`] on a connection that may not be made
    /// yet (see [`keyring_conn`]).
    fn open_keyring_conn(root: &Path, keyring: KeyringConn) -> Result<FileStore, StoreError> {
        FileStore::open_with(
            root,
            Codec::Keyring(std::sync::Arc::new(stamp::KeyringCodec::new(keyring))),
        )
    }

    /// The backend's name: `file`, `encrypted-file` or `keyring`.
    pub fn backend_name(&self) -> BackendName {
        match &self.codec {
            Codec::Plain => BackendName::File,
            Codec::Sealed(_) => BackendName::EncryptedFile,
            Codec::Keyring(_) => BackendName::Keyring,
        }
    }

    /// The OS store of a `keyring` store's secrets (`Secret Service`).
    pub fn keyring_store_name(&self) -> Option<&'static str> {
        match &self.codec {
            Codec::Keyring(k) => Some(k.store_name()),
            _ => None,
        }
    }

    /// The root directory, for messages and the CLI.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The token of `provider`/`bucket`, `None` if none is stored. With
    /// `fresh = false` a cache entry is used when one lstat shows the file
    /// unchanged; `fresh = true` always reads the file (refresh re-reads
    /// under the lock, SPEC §5.3).
    pub fn get_token(
        &self,
        provider: &str,
        bucket: &str,
        fresh: bool,
    ) -> Result<Option<Token>, StoreError> {
        check_key(provider, bucket)?;
        if !fresh && let Some(hit) = self.cached(provider, bucket) {
            return Ok(hit);
        }
        self.read_token(provider, bucket)
    }

    /// Cache-only fast path for the async driver: `Some(answer)` when the
    /// cached entry is still valid (the file has the same device, inode,
    /// size and mtime, or is still absent), `None` when a real read is needed
    /// (including for invalid names, so the read reports the error).
    pub fn get_token_cached(&self, provider: &str, bucket: &str) -> Option<Option<Token>> {
        // Only validated keys have an entry, so no check is needed here.
        self.cached(provider, bucket)
    }

    /// Stores `token` for `provider`/`bucket`, replacing any previous one
    /// atomically. Merging is the caller's business (SPEC §5.2).
    pub fn put_token(&self, provider: &str, bucket: &str, token: &Token) -> Result<(), StoreError> {
        self.put_token_replacing(provider, bucket, token).map(drop)
    }

    /// [`FileStore::put_token`], also saying whether the file it replaced
    /// was corrupt: that file is then kept beside it as
    /// `.corrupt-<unix-time>-<name>` (see [`corrupt`]), so the caller can
    /// report it once. Call under the key's lock, as every write does.
    pub fn put_token_replacing(
        &self,
        provider: &str,
        bucket: &str,
        token: &Token,
    ) -> Result<Replaced, StoreError> {
        check_key(provider, bucket)?;
        let name = json_file_name(provider, bucket);
        let path = self.tokens.join(&name);
        let parts = [provider, bucket];
        let bytes = self
            .codec
            .encode(Kind::Token, &parts, to_json(token, &path)?, &path)?;
        // A valid cache entry vouches for the file (one lstat); otherwise
        // look at what is about to be replaced.
        let replaced = if self.cached(provider, bucket).is_some() {
            Replaced::Nothing
        } else {
            corrupt::keep_if_corrupt(&self.tokens, &name, MAX_JSON_BYTES + SEAL, |bytes| {
                // A keyring stamp is whole or not; its item was just set.
                if let Some(whole) = self.codec.stamp_is_whole(&bytes) {
                    return whole;
                }
                self.codec
                    .decode(Kind::Token, &parts, bytes, &path)
                    .is_ok_and(|plain| serde_json::from_slice::<Map<String, Value>>(&plain).is_ok())
            })?
        };
        match atomic::write_atomic(&self.tokens, &name, &bytes) {
            Ok(meta) => {
                self.cache
                    .set_present(provider, bucket, &path, token.clone(), FileId::of(&meta));
                Ok(replaced)
            }
            Err(e) => {
                // The rename may or may not have happened: read next time.
                self.cache.forget(provider, bucket);
                Err(e)
            }
        }
    }

    /// Deletes the token of `provider`/`bucket`; deleting an absent token
    /// succeeds (removal is idempotent for the CLI and `remove_token`).
    pub fn delete_token(&self, provider: &str, bucket: &str) -> Result<(), StoreError> {
        check_key(provider, bucket)?;
        let name = json_file_name(provider, bucket);
        self.codec
            .ready_to_forget(Kind::Token, &[provider, bucket])?;
        match atomic::remove_durably(&self.tokens, &name) {
            Ok(_) => {
                self.cache
                    .set_absent(provider, bucket, &self.tokens.join(&name));
                self.codec.forget(Kind::Token, &[provider, bucket])
            }
            Err(e) => {
                self.cache.forget(provider, bucket);
                Err(e)
            }
        }
    }

    /// Providers that have at least one stored token, sorted, without
    /// duplicates (for `list_providers` and the CLI).
    pub fn list_providers(&self) -> Result<Vec<String>, StoreError> {
        let mut providers: Vec<String> = list_dir(&self.tokens)?
            .iter()
            .filter_map(|n| parse_json_file_name(n))
            .map(|(p, _)| p)
            .collect();
        providers.sort();
        providers.dedup();
        Ok(providers)
    }

    /// Buckets with a stored token for `provider`, sorted.
    pub fn list_buckets(&self, provider: &str) -> Result<Vec<String>, StoreError> {
        check_key_part(NameKind::Provider, provider)?;
        let mut buckets: Vec<String> = list_dir(&self.tokens)?
            .iter()
            .filter_map(|n| parse_json_file_name(n))
            .filter(|(p, _)| p == provider)
            .map(|(_, b)| b)
            .collect();
        buckets.sort();
        Ok(buckets)
    }

    /// The API key called `name`, `None` if there is none. Read from the file
    /// each time (keys change only through the CLI and are read rarely).
    pub fn get_api_key(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        check_api_key_name(name)?;
        let path = self.keys.join(api_key_file_name(name));
        let Some(contents) = read::read_private(&path, MAX_KEY_BYTES + SEAL)? else {
            return Ok(None);
        };
        let plain = self
            .codec
            .decode(Kind::ApiKey, &[name], contents.bytes, &path)?;
        match String::from_utf8(plain.to_vec()) {
            Ok(value) => Ok(Some(Secret::new(value))),
            Err(_) => Err(StoreError::Corrupt {
                path,
                detail: "not UTF-8".to_owned(),
            }),
        }
    }

    /// Names of the stored API keys, sorted.
    pub fn list_api_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = list_dir(&self.keys)?
            .iter()
            .filter_map(|n| parse_api_key_file_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether an API key called `name` exists, without reading its value.
    /// A key file that is a symlink or not private is an error, as on read.
    pub fn has_api_key(&self, name: &str) -> Result<bool, StoreError> {
        check_api_key_name(name)?;
        let path = self.keys.join(api_key_file_name(name));
        match fs::symlink_metadata(&path) {
            Ok(meta) => dirs::verify_file(&path, &meta).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("inspect", &path, e)),
        }
    }

    /// Stores (or replaces) the API key `name` atomically. The value is
    /// written byte for byte, without a trailing newline.
    pub fn set_api_key(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        check_api_key_name(name)?;
        if value.expose().len() as u64 > MAX_KEY_BYTES {
            return Err(StoreError::io(
                "store",
                self.keys.join(api_key_file_name(name)),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("the value is larger than {MAX_KEY_BYTES} bytes"),
                ),
            ));
        }
        let file = api_key_file_name(name);
        let bytes = self.codec.encode(
            Kind::ApiKey,
            &[name],
            Zeroizing::new(value.expose().as_bytes().to_vec()),
            &self.keys.join(&file),
        )?;
        atomic::write_atomic(&self.keys, &file, &bytes).map(drop)
    }

    /// Removes the API key `name`; `true` if it existed.
    pub fn remove_api_key(&self, name: &str) -> Result<bool, StoreError> {
        check_api_key_name(name)?;
        self.codec.ready_to_forget(Kind::ApiKey, &[name])?;
        let existed = atomic::remove_durably(&self.keys, &api_key_file_name(name))?;
        self.codec.forget(Kind::ApiKey, &[name])?;
        Ok(existed)
    }

    /// Takes the cross-process refresh lock of `provider`/`bucket`
    /// (`flock(LOCK_EX)` on its lock file), waiting at most `wait`.
    /// `Ok(None)` on timeout. The lock is released when the guard is dropped.
    pub fn lock_key(
        &self,
        provider: &str,
        bucket: &str,
        wait: Duration,
    ) -> Result<Option<KeyLock>, StoreError> {
        check_key(provider, bucket)?;
        lock::acquire(&self.locks.join(lock_file_name(provider, bucket)), wait)
    }

    /// The metadata of `provider`/`bucket`; the default when none is stored.
    pub fn get_meta(&self, provider: &str, bucket: &str) -> Result<KeyMeta, StoreError> {
        check_key(provider, bucket)?;
        let path = self.meta.join(json_file_name(provider, bucket));
        match read::read_private(&path, MAX_JSON_BYTES + SEAL)? {
            None => Ok(KeyMeta::default()),
            Some(contents) => {
                let plain =
                    self.codec
                        .decode(Kind::Meta, &[provider, bucket], contents.bytes, &path)?;
                serde_json::from_slice(&plain).map_err(|e| StoreError::corrupt_json(&path, &e))
            }
        }
    }

    /// Stores the metadata of `provider`/`bucket` atomically. The default
    /// value is stored by removing the file, which means the same.
    pub fn put_meta(&self, provider: &str, bucket: &str, meta: &KeyMeta) -> Result<(), StoreError> {
        check_key(provider, bucket)?;
        let name = json_file_name(provider, bucket);
        if *meta == KeyMeta::default() {
            return atomic::remove_durably(&self.meta, &name).map(drop);
        }
        let path = self.meta.join(&name);
        let bytes = self.codec.encode(
            Kind::Meta,
            &[provider, bucket],
            to_json(meta, &path)?,
            &path,
        )?;
        atomic::write_atomic(&self.meta, &name, &bytes).map(drop)
    }

    /// The cached answer if one lstat shows it still valid.
    fn cached(&self, provider: &str, bucket: &str) -> Option<Option<Token>> {
        let path = self.cache.path(provider, bucket)?;
        let current = match fs::symlink_metadata(&path) {
            Ok(meta) => Some(FileId::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            // Let the real read report the problem.
            Err(_) => return None,
        };
        self.cache.lookup(provider, bucket, current)
    }

    /// Reads and parses the token file, updating the cache.
    fn read_token(&self, provider: &str, bucket: &str) -> Result<Option<Token>, StoreError> {
        let path = self.tokens.join(json_file_name(provider, bucket));
        let Some(contents) = read::read_private(&path, MAX_JSON_BYTES + SEAL)? else {
            self.cache.set_absent(provider, bucket, &path);
            return Ok(None);
        };
        let meta = contents.meta;
        let plain = match self
            .codec
            .decode(Kind::Token, &[provider, bucket], contents.bytes, &path)
        {
            Ok(plain) => plain,
            Err(e) => {
                self.cache.forget(provider, bucket);
                return Err(e);
            }
        };
        let map: Map<String, Value> = match serde_json::from_slice(&plain) {
            Ok(map) => map,
            Err(e) => {
                self.cache.forget(provider, bucket);
                return Err(StoreError::corrupt_json(&path, &e));
            }
        };
        let token = Token::from_map(map);
        self.cache
            .set_present(provider, bucket, &path, token.clone(), FileId::of(&meta));
        Ok(Some(token))
    }
}

fn check_key(provider: &str, bucket: &str) -> Result<(), StoreError> {
    check_key_part(NameKind::Provider, provider)?;
    check_key_part(NameKind::Bucket, bucket)
}

/// Pretty JSON with a final newline, so a person inspecting the store can
/// read it. Serializing a JSON map or a plain struct does not fail in
/// practice; if it ever did, the error names the target, not the content.
fn to_json<T: Serialize>(value: &T, target: &Path) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(8192));
    serde_json::to_writer_pretty(&mut *bytes, value).map_err(|_| {
        StoreError::io(
            "serialize",
            target,
            io::Error::other("cannot serialize value"),
        )
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// File names in `dir` that are valid UTF-8 (ours always are).
fn list_dir(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// The open-time check of one subdirectory: every symlink or non-private
/// file is refused with a fix hint; temp files no writer holds (crash
/// leftovers) are removed.
fn check_entries(dir: &Path) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Renamed or removed by a concurrent writer meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("inspect", &path, e)),
        };
        if entry.file_name().to_str().is_some_and(atomic::is_temp_name) {
            atomic::remove_abandoned_temp(&path, &meta);
            continue;
        }
        dirs::verify_file(&path, &meta)?;
    }
    Ok(())
}
