//! Store backends: the names, the choice of `auto`, and [`Store`], the one
//! type the driver, the effects and the CLI use.
//!
//! `file` (plaintext), `encrypted-file` and `keyring` share the directory
//! layout of [`FileStore`] and differ only in the bytes of each file
//! ([`Codec`]; for `keyring` a stamp, the secret being a keyring item).
//! [`Store`] is an enum with one arm per kind of storage, dispatching the
//! same method names as [`FileStore`]; a PostgreSQL backend
//! becomes one more arm.
//!
//! `auto` (the default) is `encrypted-file` for a new store, with the key
//! file given, else `$XDG_CONFIG_HOME/credproxy/store.key`, created on
//! first use (a notice says so). A store already marked encrypted is opened
//! as `encrypted-file` (its key must exist: a new key is never made for
//! it), and an existing store with plaintext entries keeps working as
//! `file` (`credproxy status` says how to migrate). A store marked
//! `keyring` (its `keyring.check`) is opened as one. With
//! [`StoreSpec::probe_keyring`] (`serve` and the CLI), `auto` makes a new
//! store a `keyring` store when the OS keyring answers within
//! [`crate::keyring::PROBE_TIMEOUT`] with its default collection
//! unlocked, and no key was given; else `encrypted-file` as above.
//!
//! A proxy opens with [`Store::open_for_proxy`]: a store already marked
//! `keyring` opens even when no OS keyring answers yet, and connects
//! later (see `keyring_conn`); the one-shot CLI keeps failing at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::keyring::ErrorKind;

use super::codec::{self, Codec};
use super::key::{self, DataKey};
use super::keyring_conn::KeyringConn;
use super::keyring_key::{self, WHENCE};
use super::postgres::{self, PgOptions, PgStore};
use super::stamp;
use super::{FileStore, KEYS, META, Store, StoreError, TOKENS, atomic, read};

/// A backend as configured (`--store-backend`, `store_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendName {
    /// `keyring` for a new store when the OS keyring is unlocked (with
    /// [`StoreSpec::probe_keyring`]), else `encrypted-file`; an existing
    /// store as what it is.
    #[default]
    Auto,
    /// Plaintext files (mode 0600), for CI and tests.
    File,
    /// Each file an AES-256-GCM envelope under a key kept apart.
    EncryptedFile,
    /// The secrets in the OS keyring (Secret Service / Keychain), a stamp
    /// in each file.
    Keyring,
    /// Sealed rows in a PostgreSQL database shared by a fleet of proxies.
    Postgres,
}

impl BackendName {
    /// The name as written in flags and the configuration file.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BackendName::Auto => "auto",
            BackendName::File => "file",
            BackendName::EncryptedFile => "encrypted-file",
            BackendName::Keyring => "keyring",
            BackendName::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the data key of an encrypted store comes from.
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    /// `--store-key-file`, else the configuration file's
    /// `store_key_file`, else `CREDPROXY_STORE_KEY_FILE`.
    pub file: Option<PathBuf>,
    /// `--store-key-fd N`: the key text on an inherited descriptor.
    pub fd: Option<u32>,
    /// The `auto` backend's key file (`$XDG_CONFIG_HOME/credproxy/store.key`).
    pub default_file: Option<PathBuf>,
}

/// Where the `postgres` backend's database is and how it is used.
#[derive(Debug, Clone, Default)]
pub struct PgSpec {
    /// The configuration file's `postgres_url_file` (the connection string
    /// is `CREDPROXY_POSTGRES_URL` when that is set).
    pub url_file: Option<PathBuf>,
    /// Pool size, timeouts, lease (the `[postgres]` table).
    pub options: PgOptions,
}

/// Everything needed to open the store.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    /// The store directory (not used by the `postgres` backend).
    pub root: PathBuf,
    /// The configured backend.
    pub backend: BackendName,
    /// The key, for an encrypted store.
    pub key: KeySource,
    /// Whether `auto` may choose `keyring` for a new store (when the OS
    /// keyring answers within [`crate::keyring::PROBE_TIMEOUT`], unlocked):
    /// what `serve` and the CLI do; `false` keeps today's `encrypted-file`
    /// choice (`store migrate`'s target, tests, the bench).
    pub probe_keyring: bool,
    /// The database, for the `postgres` backend.
    pub postgres: PgSpec,
}

/// What was opened, for `status` and messages (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The backend in use: `file` or `encrypted-file`.
    pub name: BackendName,
    /// The configured one (`auto` when it was chosen).
    pub configured: BackendName,
    /// Where the key came from (`key file PATH`, `fd N`), if encrypted.
    pub key: Option<String>,
    /// A one-time notice (a key file was created), for stderr.
    pub notice: Option<String>,
    /// A one-time warning (the OS keyring did not answer yet), for stderr.
    pub warning: Option<String>,
}

impl Backend {
    /// `file (plaintext)` or `encrypted-file (key file PATH)`.
    #[must_use]
    pub fn describe(&self) -> String {
        match (&self.name, &self.key) {
            (BackendName::EncryptedFile, Some(k)) => format!("encrypted-file ({k})"),
            (BackendName::Keyring, Some(k)) => format!("keyring ({k})"),
            (BackendName::Postgres, Some(k)) => format!("postgres ({k})"),
            (name, _) if *name == BackendName::File => "file (plaintext)".to_owned(),
            (name, _) => name.to_string(),
        }
    }

    /// How to move to an encrypted store, when `auto` kept a plaintext
    /// one (an explicit `file` needs no advice).
    #[must_use]
    pub fn migrate_hint(&self) -> Option<String> {
        (self.name == BackendName::File && self.configured == BackendName::Auto)
            .then(|| "to encrypt it: credproxy store migrate --to encrypted-file".to_owned())
    }
}

/// Whether a keyring store opens without its keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyringWait {
    /// Opening fails when the OS keyring does not answer (the one-shot CLI).
    Never,
    /// A store marked as a keyring store opens anyway and connects later
    /// (a proxy, see `keyring_conn`).
    IfMarked,
}

impl Store {
    /// Opens the store `spec` names, choosing for `auto`.
    ///
    /// # Errors
    ///
    /// As [`FileStore::open`], and [`StoreError::Key`] for a missing or
    /// wrong key, or a backend that does not fit the store on disk.
    pub fn open(spec: &StoreSpec) -> Result<(Store, Backend), StoreError> {
        Store::open_with(spec, KeyringWait::Never)
    }

    /// [`Store::open`] for a proxy, which runs for long: a store already
    /// marked as a keyring store opens even when no OS keyring answers
    /// yet (with a [`Backend::warning`]); its items are
    /// [`StoreError::KeyringUnavailable`] until the keyring answers.
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub fn open_for_proxy(spec: &StoreSpec) -> Result<(Store, Backend), StoreError> {
        Store::open_with(spec, KeyringWait::IfMarked)
    }

    /// See [`Store::open`] and [`Store::open_for_proxy`].
    fn open_with(spec: &StoreSpec, wait: KeyringWait) -> Result<(Store, Backend), StoreError> {
        let root = &spec.root;
        let (name, key, notice) = match spec.backend {
            BackendName::Postgres => return open_postgres(spec),
            BackendName::Keyring => return open_keyring(spec, wait),
            BackendName::Auto if has_keyring_marker(root) => return open_keyring(spec, wait),
            BackendName::Auto if spec.probe_keyring && is_new_store(spec) && keyring_ready() => {
                return open_keyring(spec, KeyringWait::Never);
            }
            BackendName::File => (BackendName::File, None, None),
            BackendName::EncryptedFile => {
                let key = match explicit_key(&spec.key)? {
                    Some(key) => key,
                    None => {
                        keyring_key::for_encrypted_file(spec)?.ok_or_else(|| StoreError::Key {
                            detail:
                                "the encrypted-file backend needs a key: --store-key-file PATH \
                                 (or CREDPROXY_STORE_KEY_FILE, or store_key_file in the \
                                 configuration file) or --store-key-fd N, or a reachable OS \
                                 keyring; create a key file with `credproxy store init-key`"
                                    .to_owned(),
                        })?
                    }
                };
                (BackendName::EncryptedFile, Some(key), None)
            }
            BackendName::Auto => auto_choice(spec)?,
        };
        let whence = key.as_ref().map(|(_, w)| w.clone());
        let store = match key {
            None => FileStore::open(root)?,
            Some((key, _)) => FileStore::open_encrypted(root, key)?,
        };
        let about = Backend {
            name,
            configured: spec.backend,
            key: whence.or_else(|| store_key_label(spec, name)),
            notice,
            warning: None,
        };
        Ok((Store::Files(store), about))
    }
}

/// How long opening (or reconnecting) waits for the OS keyring to answer.
pub(super) const KEYRING_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the `postgres` store `spec.postgres` names, sealed with the key
/// given explicitly (a database shared by machines needs the same key on
/// each: one made on first use, or kept in one machine's keyring, would
/// not be).
fn open_postgres(spec: &StoreSpec) -> Result<(Store, Backend), StoreError> {
    let url = postgres::url::resolve(&|n| std::env::var_os(n), spec.postgres.url_file.as_deref())?;
    let Some((key, whence)) = explicit_key(&spec.key)? else {
        return Err(StoreError::Key {
            detail: "the postgres backend needs the store key every proxy of the fleet \
                     shares: --store-key-file PATH (or CREDPROXY_STORE_KEY_FILE, or \
                     store_key_file in the configuration file) or --store-key-fd N; create \
                     one with `credproxy store init-key` and copy it to each machine"
                .to_owned(),
        });
    };
    let store = PgStore::connect(&url, key, spec.postgres.options)?;
    let about = Backend {
        name: BackendName::Postgres,
        configured: spec.backend,
        key: Some(whence),
        notice: None,
        warning: None,
    };
    Ok((Store::Postgres(Box::new(store)), about))
}

/// Opens the store at `spec.root` as a `keyring` store. With
/// [`KeyringWait::IfMarked`], a store already marked as one opens without
/// an answering keyring (a new store is never made without one).
fn open_keyring(spec: &StoreSpec, wait: KeyringWait) -> Result<(Store, Backend), StoreError> {
    let (conn, warning) = match crate::keyring::Keyring::open(KEYRING_OPEN_TIMEOUT) {
        Ok(keyring) => (KeyringConn::connected(keyring, KEYRING_OPEN_TIMEOUT), None),
        Err(e) => {
            let waiting = (wait == KeyringWait::IfMarked
                && e.kind() == ErrorKind::Unavailable
                && has_keyring_marker(&spec.root))
            .then(|| KeyringConn::waiting(e.clone(), KEYRING_OPEN_TIMEOUT))
            .flatten();
            let Some(conn) = waiting else {
                return Err(StoreError::Key {
                    detail: format!(
                        "the keyring backend needs the OS keyring: {e}; use --store-backend \
                         encrypted-file (or file) where there is none"
                    ),
                });
            };
            let warning = format!(
                "the keyring store {} is served without its secrets for now: {e}; requests \
                 for a token or API key answer STORE_UNAVAILABLE until the OS keyring \
                 answers, which is tried again on such a request (the pause between \
                 attempts doubling from 100 ms to 5 s)",
                spec.root.display()
            );
            (conn, Some(warning))
        }
    };
    let store = FileStore::open_keyring_conn(&spec.root, conn)?;
    let about = Backend {
        name: BackendName::Keyring,
        configured: spec.backend,
        key: store.keyring_store_name().map(str::to_owned),
        notice: None,
        warning,
    };
    Ok((Store::Files(store), about))
}

/// Whether `auto` would create a new store at `spec.root`: no marker, no
/// entry, and no key given for it.
pub(super) fn is_new_store(spec: &StoreSpec) -> bool {
    spec.key.fd.is_none()
        && spec.key.file.is_none()
        && std::fs::symlink_metadata(codec::check_path(&spec.root)).is_err()
        && !has_plaintext_entries(&spec.root)
}

/// Whether the OS keyring answers within the probe timeout and can be
/// used without a prompt (no session bus: an error at once).
pub(super) fn keyring_ready() -> bool {
    crate::keyring::probe(crate::keyring::PROBE_TIMEOUT).is_ok_and(|p| p.ready())
}

/// Whether the store at `root` is marked as a keyring store.
fn has_keyring_marker(root: &Path) -> bool {
    std::fs::symlink_metadata(root.join(stamp::CHECK_FILE)).is_ok()
}

/// The key given explicitly (fd first, then file), with where it came from.
fn explicit_key(src: &KeySource) -> Result<Option<(DataKey, String)>, StoreError> {
    if let Some(fd) = src.fd {
        return key::load_fd(fd).map(|k| Some((k, format!("key on fd {fd}"))));
    }
    match &src.file {
        Some(p) => key::load_file(p).map(|k| Some((k, format!("key file {}", p.display())))),
        None => Ok(None),
    }
}

fn store_key_label(spec: &StoreSpec, name: BackendName) -> Option<String> {
    if name != BackendName::EncryptedFile {
        return None;
    }
    let k = &spec.key;
    Some(match (k.fd, &k.file, &k.default_file) {
        (Some(fd), _, _) => format!("key on fd {fd}"),
        (None, Some(p), _) | (None, None, Some(p)) => format!("key file {}", p.display()),
        (None, None, None) => "key".to_owned(),
    })
}

type Choice = (BackendName, Option<(DataKey, String)>, Option<String>);

/// What `auto` means for the store at `spec.root`.
fn auto_choice(spec: &StoreSpec) -> Result<Choice, StoreError> {
    let root = &spec.root;
    let marked = std::fs::symlink_metadata(codec::check_path(root)).is_ok();
    if !marked && has_plaintext_entries(root) {
        // An existing plaintext store keeps working as it is.
        return Ok((BackendName::File, None, None));
    }
    if let Some(key) = explicit_key(&spec.key)? {
        return Ok((BackendName::EncryptedFile, Some(key), None));
    }
    if keyring_key::marked(root)? {
        let key = keyring_key::load(root, false)?;
        return Ok((BackendName::EncryptedFile, Some((key, WHENCE.into())), None));
    }
    let Some(default) = &spec.key.default_file else {
        return Err(StoreError::Key {
            detail: "cannot place the store key: neither XDG_CONFIG_HOME nor HOME is an \
                     absolute path; pass --store-key-file, or --store-backend file"
                .to_owned(),
        });
    };
    let whence = format!("key file {}", default.display());
    if marked || std::fs::symlink_metadata(default).is_ok() {
        // An encrypted store never gets a new key: that would lose it.
        return Ok((
            BackendName::EncryptedFile,
            Some((key::load_file(default)?, whence)),
            None,
        ));
    }
    let key = match key::create_file(default, root) {
        Ok(key) => key,
        // Another process made it a moment ago: use that one.
        Err(e) if std::fs::symlink_metadata(default).is_ok() => {
            return key::load_file(default)
                .map(|k| (BackendName::EncryptedFile, Some((k, whence)), None))
                .map_err(|_| e);
        }
        Err(e) => return Err(e),
    };
    let notice = format!(
        "created the store key {} (mode 0600): the store {} is encrypted with it; \
         keep a copy of the key apart from the store, without it the store cannot be read",
        default.display(),
        root.display()
    );
    Ok((
        BackendName::EncryptedFile,
        Some((key, whence)),
        Some(notice),
    ))
}

/// Whether the store at `root` holds any token, metadata or API key file
/// (temp and kept-corrupt files, whose names start with `.`, do not count).
fn has_plaintext_entries(root: &Path) -> bool {
    [TOKENS, META, KEYS].iter().any(|sub| {
        std::fs::read_dir(root.join(sub)).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        })
    })
}

/// The open-time check of the markers: a plaintext store must not be
/// marked, an encrypted one must open with its key, a keyring store must
/// be opened as one; an unmarked, empty store opened encrypted or keyring
/// is marked now.
pub(super) fn check_marker(store: &FileStore) -> Result<(), StoreError> {
    let path = codec::check_path(&store.root);
    let root = store.root.display();
    let mut keyring_marked = has_keyring_marker(&store.root);
    if !keyring_marked
        && matches!(store.codec, Codec::Keyring(_))
        && !has_plaintext_entries(&store.root)
        && std::fs::symlink_metadata(&path).is_err()
    {
        // A new (or empty) store becomes a keyring store.
        atomic::write_atomic(&store.root, stamp::CHECK_FILE, stamp::CHECK_TEXT)?;
        keyring_marked = true;
    }
    if keyring_marked != matches!(store.codec, Codec::Keyring(_)) {
        return Err(StoreError::Key {
            detail: if keyring_marked {
                format!(
                    "the store {root} keeps its secrets in the OS keyring (backend keyring); \
                     open it with --store-backend keyring or auto"
                )
            } else {
                format!(
                    "the store {root} holds entries of another backend (file or \
                     encrypted-file); open it with its own backend, or move it with \
                     `credproxy store migrate --to keyring`"
                )
            },
        });
    }
    let found = read::read_private(&path, 4096)?;
    match (&store.codec, found) {
        (Codec::Plain, None) => Ok(()),
        (Codec::Plain | Codec::Keyring(_), Some(_)) => Err(StoreError::Key {
            detail: format!(
                "the store {root} is encrypted (backend encrypted-file); open it with \
                 --store-backend encrypted-file or auto and its key"
            ),
        }),
        (Codec::Sealed(key), Some(c)) if codec::check_opens(key, &c.bytes) => Ok(()),
        (Codec::Sealed(_), Some(_)) => Err(StoreError::Key {
            detail: format!(
                "the store key does not open the store {root} (the key of another store, \
                 or {} was changed); nothing was read or written",
                path.display()
            ),
        }),
        (Codec::Keyring(_), None) => {
            let marker = read::read_private(&store.root.join(stamp::CHECK_FILE), 4096)?;
            if marker.is_some_and(|m| m.bytes == stamp::CHECK_TEXT) {
                Ok(())
            } else {
                Err(StoreError::Corrupt {
                    path: store.root.join(stamp::CHECK_FILE),
                    detail: "not a keyring store marker".to_owned(),
                })
            }
        }
        (Codec::Sealed(key), None) => {
            if has_plaintext_entries(&store.root) {
                return Err(StoreError::Key {
                    detail: format!(
                        "the store {root} holds plaintext entries (backend file); open it with \
                         --store-backend file, or encrypt it with \
                         `credproxy store migrate --to encrypted-file`"
                    ),
                });
            }
            let bytes = codec::check_bytes(key).map_err(|e| StoreError::io("encrypt", &path, e))?;
            atomic::write_atomic(&store.root, codec::CHECK_FILE, &bytes).map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto_spec(tmp: &Path) -> StoreSpec {
        StoreSpec {
            root: tmp.join("store"),
            backend: BackendName::Auto,
            key: KeySource {
                default_file: Some(tmp.join("config/credproxy/store.key")),
                ..KeySource::default()
            },
            probe_keyring: false,
            postgres: PgSpec::default(),
        }
    }

    #[test]
    fn first_uses_at_once_agree_on_one_key_and_one_notice() {
        for _ in 0..10 {
            let tmp = tempfile::tempdir().expect("tempdir");
            let spec = auto_spec(tmp.path());
            let opened: Vec<Backend> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| Store::open(&spec).map(|(_, b)| b)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("thread").expect("open"))
                    .collect()
            });
            assert!(opened.iter().all(|b| b.name == BackendName::EncryptedFile));
            assert_eq!(opened.iter().filter(|b| b.notice.is_some()).count(), 1);
            let (store, _) = Store::open(&spec).expect("reopen");
            assert_eq!(store.backend_name(), BackendName::EncryptedFile);
        }
    }

    #[test]
    fn auto_never_makes_a_new_key_for_an_encrypted_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let spec = auto_spec(tmp.path());
        drop(Store::open(&spec).expect("create"));
        let key = spec.key.default_file.clone().expect("default");
        std::fs::remove_file(&key).expect("lose the key");
        let e = Store::open(&spec).expect_err("no key");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!key.exists(), "no new key made");
    }
}
