//! The `encrypted-file` backend's data key kept in the OS keyring.
//!
//! When `encrypted-file` is chosen with no key file or descriptor and the
//! OS keyring is ready, a new store's 32-byte key is made at random and
//! stored as hex under service `credproxy`, account `store-key:<id>`, where
//! `<id>` is 32 random hex digits. The file [`KEY_SOURCE_FILE`] beside
//! `encrypted.check` (no secret) records that account, so a later open
//! looks there, a store moved or renamed (`store migrate --keep` renames
//! the old one) still finds its key, and an open says clearly when the
//! keyring cannot be reached. Stores made before the id was recorded hold
//! only `keyring`: their account is `store-key:<absolute store root>`,
//! written into the file at their next open so they too can move from
//! then on. An explicit key still wins; a wrong one is caught by the
//! check file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use zeroize::Zeroizing;

use super::backend::{self, StoreSpec};
use super::error::StoreError;
use super::key::{DataKey, KEY_LEN};
use super::{atomic, dirs, read};

/// The file that records where the data key is (`keyring ACCOUNT`).
pub const KEY_SOURCE_FILE: &str = "key-source";
/// What stores made before the account was recorded hold.
const LEGACY_TEXT: &[u8] = b"keyring\n";
const ACCOUNT_PREFIX: &str = "store-key:";
/// Random bytes in a new store's account id (128 bits: never reused).
const ID_LEN: usize = 16;
/// The longest account id a record may hold, in bytes: an older store's
/// is its absolute path (`PATH_MAX`).
const MAX_ID_BYTES: usize = 4096;
/// The longest `key-source` file credproxy writes.
const MAX_RECORD_BYTES: u64 = ("keyring ".len() + ACCOUNT_PREFIX.len() + MAX_ID_BYTES + 1) as u64;
/// How `status` names the source.
pub const WHENCE: &str = "key in the OS keyring";
const SERVICE: &str = "credproxy";
/// How long opening waits for the OS keyring to answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

fn absolute(root: &Path) -> PathBuf {
    std::path::absolute(root).unwrap_or_else(|_| root.to_owned())
}

/// The keyring account the store at `root` records, as its
/// `key-source` file says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recorded {
    /// `keyring store-key:…`: the account is named in the file.
    Named(String),
    /// `keyring` alone (an older store): named after the store's path.
    ByPath(String),
}

impl Recorded {
    fn account(&self) -> &str {
        match self {
            Recorded::Named(a) | Recorded::ByPath(a) => a,
        }
    }
}

fn marker_text(account: &str) -> String {
    format!("keyring {account}\n")
}

/// Parses a `key-source` file's bytes; `None` if credproxy did not write
/// them (an account is `store-key:` and an id of at most
/// [`MAX_ID_BYTES`] without control characters: 32 hex digits, or an
/// older store's path, which may hold spaces and any letter).
fn parse(bytes: &[u8], root: &Path) -> Option<Recorded> {
    if bytes == LEGACY_TEXT {
        return Some(Recorded::ByPath(format!(
            "{ACCOUNT_PREFIX}{}",
            absolute(root).display()
        )));
    }
    let account = std::str::from_utf8(bytes)
        .ok()?
        .strip_prefix("keyring ")?
        .strip_suffix('\n')?;
    let id = account.strip_prefix(ACCOUNT_PREFIX)?;
    (!id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control))
        .then(|| Recorded::Named(account.to_owned()))
}

/// What the `key-source` file of the store at `root` records, if any.
fn recorded(root: &Path) -> Result<Option<Recorded>, StoreError> {
    let path = root.join(KEY_SOURCE_FILE);
    let Some(file) = read::read_private(&path, MAX_RECORD_BYTES)? else {
        return Ok(None);
    };
    parse(&file.bytes, root)
        .map(Some)
        .ok_or_else(|| StoreError::Key {
            detail: format!(
                "{} is not a key-source file credproxy wrote (it should hold \
                 `keyring store-key:ID`); nothing was read or written",
                path.display()
            ),
        })
}

/// Whether the store at `root` records that its key is in the keyring.
pub fn marked(root: &Path) -> Result<bool, StoreError> {
    Ok(recorded(root)?.is_some())
}

/// The account of a new store: `store-key:` and 32 random hex digits.
fn new_account() -> Result<String, StoreError> {
    let mut id = [0u8; ID_LEN];
    getrandom::fill(&mut id).map_err(|e| StoreError::Key {
        detail: format!("cannot generate a store key id: {e}"),
    })?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{ACCOUNT_PREFIX}{hex}"))
}

/// The account recorded by the store at `root`, if its key is in the
/// keyring (`store migrate` removes that item with the store).
pub fn recorded_account(root: &Path) -> Result<Option<String>, StoreError> {
    Ok(recorded(root)?.map(|r| r.account().to_owned()))
}

fn keyring(root: &Path) -> Result<crate::keyring::Keyring, StoreError> {
    crate::keyring::Keyring::open(OPEN_TIMEOUT).map_err(|e| StoreError::Key {
        detail: format!(
            "the store key of {} is in the OS keyring, which is not reachable: {e}; \
             nothing was read or written",
            root.display()
        ),
    })
}

fn keyring_error(root: &Path, e: &crate::keyring::KeyringError) -> StoreError {
    StoreError::Key {
        detail: format!(
            "cannot use the store key of {} in the OS keyring: {e}",
            root.display()
        ),
    }
}

fn missing(root: &Path, account: &str) -> StoreError {
    StoreError::Key {
        detail: format!(
            "the store key of {} is not in the OS keyring (no item {account:?} of service \
             {SERVICE}): without it the store cannot be read",
            root.display()
        ),
    }
}

/// The key of the store at `root` from the keyring; with `create`, that
/// of a new store: the one another process made a moment ago, else a new
/// random one stored under a new account and then recorded (under a lock
/// on the store directory, so processes creating it at once agree on one
/// key).
pub fn load(root: &Path, create: bool) -> Result<DataKey, StoreError> {
    let kr = keyring(root)?;
    if !create {
        let Some(found) = recorded(root)? else {
            return Err(StoreError::Key {
                detail: format!(
                    "the store {} does not record a key in the OS keyring",
                    root.display()
                ),
            });
        };
        return existing(&kr, root, &found);
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::io("create directory", parent, e))?;
    }
    dirs::ensure_private_dir(root)?;
    let dir = File::open(root).map_err(|e| StoreError::io("open", root, e))?;
    let _lock = Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, e)| StoreError::io("lock", root, e.into()))?;
    if let Some(found) = recorded(root)? {
        return existing(&kr, root, &found);
    }
    let account = new_account()?;
    let key = DataKey::generate().map_err(|e| StoreError::Key {
        detail: format!("cannot generate a store key: {e}"),
    })?;
    let text: Zeroizing<Vec<u8>> = key.to_text();
    let label = format!("credproxy: store key for {}", absolute(root).display());
    kr.set(SERVICE, &account, &label, &text[..2 * KEY_LEN])
        .map_err(|e| keyring_error(root, &e))?;
    if let Err(e) = atomic::write_atomic(root, KEY_SOURCE_FILE, marker_text(&account).as_bytes()) {
        // Unrecorded, the item would be found by nobody: take it back. (A
        // process killed between the two steps leaves such an item, which
        // holds no data: the store has none under that key yet.)
        let _ = kr.delete(SERVICE, &account);
        return Err(e);
    }
    Ok(key)
}

/// The key of a store that records `found`. An older store's record is
/// rewritten to name its account, so the store can be moved from now on
/// (best effort: a read-only store keeps working where it is; a path that
/// a record cannot hold, with a control character, stays as it is).
fn existing(
    kr: &crate::keyring::Keyring,
    root: &Path,
    found: &Recorded,
) -> Result<DataKey, StoreError> {
    let key = get(kr, root, found.account())?.ok_or_else(|| missing(root, found.account()))?;
    if let Recorded::ByPath(account) = found {
        let text = marker_text(account);
        if parse(text.as_bytes(), root).is_some_and(|r| r.account() == account) {
            let _ = atomic::write_atomic(root, KEY_SOURCE_FILE, text.as_bytes());
        }
    }
    Ok(key)
}

fn get(
    kr: &crate::keyring::Keyring,
    root: &Path,
    account: &str,
) -> Result<Option<DataKey>, StoreError> {
    let Some(text) = kr
        .get_string(SERVICE, account)
        .map_err(|e| keyring_error(root, &e))?
    else {
        return Ok(None);
    };
    DataKey::parse(text.as_bytes())
        .map(Some)
        .ok_or_else(|| StoreError::Key {
            detail: format!(
                "the keyring item {account:?} (service {SERVICE}) does not hold a \
                 credproxy store key (64 hexadecimal digits)"
            ),
        })
}

/// Removes the keyring item `account` of a store that is gone (`store
/// migrate`): `Ok(false)` if there was none.
pub fn forget(account: &str) -> Result<bool, crate::keyring::KeyringError> {
    let kr = crate::keyring::Keyring::open(OPEN_TIMEOUT)?;
    match kr.delete(SERVICE, account) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == crate::keyring::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key kept in the OS keyring for an explicit `encrypted-file` with
/// no key given: that of a store marked so (an error when the keyring is
/// not reachable), else with [`StoreSpec::probe_keyring`] a new one for a
/// new store when the keyring is ready; `None` otherwise.
pub(super) fn for_encrypted_file(
    spec: &StoreSpec,
) -> Result<Option<(DataKey, String)>, StoreError> {
    let root = &spec.root;
    let create = !marked(root)?;
    if create && !(spec.probe_keyring && backend::is_new_store(spec) && backend::keyring_ready()) {
        return Ok(None);
    }
    let key = load(root, create)?;
    Ok(Some((key, WHENCE.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_account_is_recorded_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(recorded(dir.path()).expect("none"), None);
        assert!(!marked(dir.path()).expect("unmarked"));
        let a = new_account().expect("account");
        let b = new_account().expect("account");
        assert_ne!(a, b, "random ids");
        assert_eq!(a.len(), ACCOUNT_PREFIX.len() + 2 * ID_LEN, "{a}");
        assert!(
            a[ACCOUNT_PREFIX.len()..]
                .bytes()
                .all(|c| c.is_ascii_hexdigit())
        );
        atomic::write_atomic(dir.path(), KEY_SOURCE_FILE, marker_text(&a).as_bytes())
            .expect("write");
        assert_eq!(
            recorded(dir.path()).expect("read"),
            Some(Recorded::Named(a.clone()))
        );
        assert_eq!(recorded_account(dir.path()).expect("read"), Some(a));
        assert!(marked(dir.path()).expect("marked"));
    }

    #[test]
    fn an_older_record_names_the_absolute_path() {
        let got = parse(LEGACY_TEXT, Path::new("rel/store")).expect("legacy");
        let Recorded::ByPath(a) = &got else {
            panic!("{got:?}")
        };
        assert!(
            a.starts_with("store-key:/") && a.ends_with("rel/store"),
            "{a}"
        );
        assert_eq!(got.account(), a);
    }

    /// The record an older store is upgraded to holds its path as it is:
    /// long, with spaces and letters beyond ASCII (a path Application
    /// Support or a home directory may have).
    #[test]
    fn an_older_stores_path_account_survives_its_upgraded_record() {
        let root = PathBuf::from(format!("/home/ä user/{}/credproxy store", "d".repeat(80)));
        let Some(Recorded::ByPath(account)) = parse(LEGACY_TEXT, &root) else {
            panic!("legacy")
        };
        let upgraded = parse(marker_text(&account).as_bytes(), &root);
        assert_eq!(upgraded, Some(Recorded::Named(account)));
    }

    #[test]
    fn a_record_credproxy_did_not_write_is_refused() {
        let root = Path::new("/s");
        for bad in [
            &b""[..],
            b"keyring",
            b"keyring \n",
            b"keyring store-key:\n",
            b"keyring store-key:ab\n\n",
            b"keyring other:ab\n",
            b"keyring store-key:a\tb\n",
            b"keyring store-key:a\rb\n",
            b"KEYRING store-key:ab\n",
            b"keyring store-key:\xff\n",
        ] {
            assert_eq!(parse(bad, root), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("keyring store-key:{}\n", "a".repeat(MAX_ID_BYTES + 1));
        assert_eq!(parse(long.as_bytes(), root), None);
        let max = format!("keyring store-key:{}\n", "a".repeat(MAX_ID_BYTES));
        assert!(parse(max.as_bytes(), root).is_some());
        assert_eq!(max.len() as u64, MAX_RECORD_BYTES);
        let dir = tempfile::tempdir().expect("tempdir");
        atomic::write_atomic(dir.path(), KEY_SOURCE_FILE, b"junk\n").expect("write");
        let err = recorded(dir.path()).expect_err("refused").to_string();
        assert!(
            err.contains("not a key-source file credproxy wrote"),
            "{err}"
        );
    }
}
