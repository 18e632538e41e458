//! Behaviour of `FileStore` through its public API, plus the on-disk facts
//! (modes, names, symlinks) that API cannot show.
//!
//! By concern: `api.rs` (what the API stores and returns, names), `disk.rs`
//! (modes, owners, symlinks, corrupt and leftover files, what errors show),
//! `sharing.rs` (several instances, locks, threads) and `corrupt.rs` (a
//! corrupt token file kept aside). The fixtures all of them use are here.

use std::fs::{self, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use credproxy_core::Token;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::store::names::json_file_name;

use super::*;

/// The two file backends, for the tests that run on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// `file`: plaintext.
    Plain,
    /// `encrypted-file`, with a fixed test key.
    Encrypted,
}

impl Flavor {
    /// Opens (another instance of) the store at `root`.
    fn open(self, root: &Path) -> Result<FileStore, StoreError> {
        match self {
            Flavor::Plain => FileStore::open(root),
            Flavor::Encrypted => FileStore::open_encrypted(root, test_key()),
        }
    }

    /// A fresh store at `<tmp>/credproxy` of this flavor.
    fn new_store(self) -> (TempDir, PathBuf, FileStore) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("credproxy");
        let store = self.open(&root).expect("open");
        (tmp, root, store)
    }
}

fn test_key() -> key::DataKey {
    key::DataKey::from_bytes([0x5a; key::KEY_LEN])
}

/// Runs each named test function `f(Flavor)` once per backend, as
/// `file::f` and `encrypted_file::f` (parametrised, not copied).
macro_rules! on_each_backend {
    ($($f:ident),* $(,)?) => {
        mod file {
            $( #[test] fn $f() { super::$f(super::Flavor::Plain) } )*
        }
        mod encrypted_file {
            $( #[test] fn $f() { super::$f(super::Flavor::Encrypted) } )*
        }
    };
}

mod api;
mod corrupt;
mod disk;
mod encrypted;
mod sharing;

const SECRET_TOKEN: &str = "at-SENTINEL-7f3a9c";

const SECRET_REFRESH: &str = "rt-SENTINEL-51be02";

const SECRET_KEY: &str = "sk-SENTINEL-c0ffee";

fn tok(v: Value) -> Token {
    match v {
        Value::Object(m) => Token::from_map(m),
        _ => unreachable!("test tokens are objects"),
    }
}

fn secret_token() -> Token {
    tok(json!({
        "access_token": SECRET_TOKEN,
        "refresh_token": SECRET_REFRESH,
        "token_type": "Bearer",
        "expiry": 1_900_000_000,
        "account_id": "acct-1",
    }))
}

/// A fresh store at `<tmp>/credproxy` (created by `open`).
fn new_store() -> (TempDir, PathBuf, FileStore) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    let store = FileStore::open(&root).expect("open");
    (tmp, root, store)
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("lstat").mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
}

fn token_path(root: &Path, p: &str, b: &str) -> PathBuf {
    root.join("tokens").join(json_file_name(p, b))
}

fn assert_invalid_name<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::InvalidName { .. })),
        "{what}: {r:?}"
    );
}

/// Writes `bytes` as the token file of p/b with the right mode.
fn plant_token_file(root: &Path, bytes: &[u8]) -> PathBuf {
    let path = token_path(root, "p", "b");
    fs::write(&path, bytes).expect("write");
    chmod(&path, 0o600);
    path
}
