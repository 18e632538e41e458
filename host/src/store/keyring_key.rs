//! The `encrypted-file` backend's data key kept in the OS keyring.
//!
//! When `encrypted-file` is chosen with no key file or descriptor and the
//! OS keyring is ready, a new store's 32-byte key is made at random and
//! stored as hex under service `credproxy`, account
//! `store-key:<absolute store root>`. The file [`KEY_SOURCE_FILE`] beside
//! `encrypted.check` (no secret) says so, so a later open looks there and
//! says clearly when the keyring cannot be reached. An explicit key still
//! wins; a wrong one is caught by the check file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use zeroize::Zeroizing;

use super::backend::{self, StoreSpec};
use super::error::StoreError;
use super::key::{DataKey, KEY_LEN};
use super::{atomic, dirs, read};

/// The file that records where the data key is (`keyring`).
pub const KEY_SOURCE_FILE: &str = "key-source";
const KEY_SOURCE_TEXT: &[u8] = b"keyring\n";
/// How `status` names the source.
pub const WHENCE: &str = "key in the OS keyring";
const SERVICE: &str = "credproxy";
/// How long opening waits for the OS keyring to answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

fn absolute(root: &Path) -> PathBuf {
    std::path::absolute(root).unwrap_or_else(|_| root.to_owned())
}

/// The keyring account of the store at `root`.
#[must_use]
pub fn account(root: &Path) -> String {
    format!("store-key:{}", absolute(root).display())
}

/// Whether the store at `root` records that its key is in the keyring.
pub fn marked(root: &Path) -> Result<bool, StoreError> {
    Ok(read::read_private(&root.join(KEY_SOURCE_FILE), 64)?
        .is_some_and(|f| f.bytes == KEY_SOURCE_TEXT))
}

/// Records that the key of the store at `root` is in the keyring.
pub fn mark(root: &Path) -> Result<(), StoreError> {
    if marked(root)? {
        return Ok(());
    }
    atomic::write_atomic(root, KEY_SOURCE_FILE, KEY_SOURCE_TEXT).map(drop)
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

/// The key of the store at `root` from the keyring; with `create`, that
/// of a new store: the one found, else a new random one stored there, and
/// the store marked (under a lock on the store directory, so processes
/// creating it at once agree on one key).
pub fn load(root: &Path, create: bool) -> Result<DataKey, StoreError> {
    let kr = keyring(root)?;
    if !create {
        return get(&kr, root)?.ok_or_else(|| StoreError::Key {
            detail: format!(
                "the store key of {} is not in the OS keyring (no item {:?} of service \
                 {SERVICE}): without it the store cannot be read",
                root.display(),
                account(root)
            ),
        });
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::io("create directory", parent, e))?;
    }
    dirs::ensure_private_dir(root)?;
    let dir = File::open(root).map_err(|e| StoreError::io("open", root, e))?;
    let _lock = Flock::lock(dir, FlockArg::LockExclusive)
        .map_err(|(_, e)| StoreError::io("lock", root, e.into()))?;
    // Found: made by a process that ran a moment ago (or one that stopped
    // before marking the store, which then has no entry yet).
    let key = match get(&kr, root)? {
        Some(key) => key,
        None => {
            let key = DataKey::generate().map_err(|e| StoreError::Key {
                detail: format!("cannot generate a store key: {e}"),
            })?;
            let text: Zeroizing<Vec<u8>> = key.to_text();
            let label = format!("credproxy: store key for {}", absolute(root).display());
            kr.set(SERVICE, &account(root), &label, &text[..2 * KEY_LEN])
                .map_err(|e| keyring_error(root, &e))?;
            key
        }
    };
    mark(root)?;
    Ok(key)
}

fn get(kr: &crate::keyring::Keyring, root: &Path) -> Result<Option<DataKey>, StoreError> {
    let account = account(root);
    let Some(text) = kr
        .get_string(SERVICE, &account)
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
    fn the_marker_round_trips_and_the_account_is_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!marked(dir.path()).expect("unmarked"));
        mark(dir.path()).expect("mark");
        mark(dir.path()).expect("again");
        assert!(marked(dir.path()).expect("marked"));
        let a = account(Path::new("rel/store"));
        assert!(
            a.starts_with("store-key:/") && a.ends_with("rel/store"),
            "{a}"
        );
    }
}
