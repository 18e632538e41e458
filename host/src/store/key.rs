//! The data key of the `encrypted-file` backend and where it comes from.
//!
//! A key file holds 64 hexadecimal digits (32 bytes) and a newline. It is
//! created by `credproxy store init-key` (or, for the `auto` backend, on
//! first use) with mode 0600, never over an existing file and never inside
//! the store directory: a stolen data directory or backup of it must not
//! carry its own key. Loading refuses a key file that is a symlink, not a
//! regular file, not ours or readable by group or others. The same text
//! can come on an inherited descriptor (`--store-key-fd N`).
//!
//! The key lives in a [`Zeroizing`] buffer, wiped when dropped; `Debug`
//! shows nothing of it, and no error message contains it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::error::StoreError;

/// Key length in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// The file name of the `auto` backend's key in `$XDG_CONFIG_HOME/credproxy/`.
pub const DEFAULT_KEY_FILE: &str = "store.key";
/// Environment variable naming the key file (the flag wins).
pub const KEY_FILE_ENV: &str = "CREDPROXY_STORE_KEY_FILE";

/// A 256-bit data key, zeroized on drop.
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// A key from its bytes (tests, and the parsers below).
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    /// A new random key from the OS generator.
    ///
    /// # Errors
    ///
    /// The generator failed.
    pub fn generate() -> io::Result<DataKey> {
        let mut key = DataKey::from_bytes([0; KEY_LEN]);
        getrandom::fill(&mut key.0[..]).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(key)
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the key text: 64 hex digits, optionally one trailing newline.
    pub(super) fn parse(text: &[u8]) -> Option<DataKey> {
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        if text.len() != 2 * KEY_LEN {
            return None;
        }
        let mut key = DataKey::from_bytes([0; KEY_LEN]);
        for (i, pair) in text.chunks_exact(2).enumerate() {
            key.0[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(key)
    }

    /// The key text as written to a key file, in a zeroizing buffer.
    pub(super) fn to_text(&self) -> Zeroizing<Vec<u8>> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = Zeroizing::new(Vec::with_capacity(2 * KEY_LEN + 1));
        for b in self.0.iter() {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        out.push(b'\n');
        out
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn key_error(detail: String) -> StoreError {
    StoreError::Key { detail }
}

/// Reads at most a little more than a key's text from `r`.
fn read_key_text(r: &mut impl Read, what: &str) -> Result<DataKey, StoreError> {
    let mut text = Zeroizing::new(Vec::with_capacity(2 * KEY_LEN + 2));
    r.take(2 * KEY_LEN as u64 + 2)
        .read_to_end(&mut text)
        .map_err(|e| key_error(format!("cannot read the store key from {what}: {e}")))?;
    DataKey::parse(&text).ok_or_else(|| {
        key_error(format!(
            "{what} does not hold a credproxy store key (64 hexadecimal digits; \
             create one with `credproxy store init-key`)"
        ))
    })
}

/// Loads the key file at `path`: a private regular file of ours.
///
/// # Errors
///
/// [`StoreError::Key`]: missing, a symlink, not ours, readable or writable
/// by group or others, or not a key.
pub fn load_file(path: &Path) -> Result<DataKey, StoreError> {
    let shown = path.display();
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => key_error(format!("store key file {shown} is a symlink")),
            _ if e.kind() == io::ErrorKind::NotFound => key_error(format!(
                "store key file {shown} does not exist (create it with \
                 `credproxy store init-key --key-file {shown}`)"
            )),
            _ => key_error(format!("cannot open the store key file {shown}: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| key_error(format!("cannot inspect the store key file {shown}: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(key_error(format!(
            "store key file {shown} is not a regular file"
        )));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(key_error(format!(
            "store key file {shown} is owned by uid {}, not by us",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(key_error(format!(
            "store key file {shown} is accessible to group or others (mode {mode:04o}); \
             fix with chmod 600 {shown}"
        )));
    }
    read_key_text(&mut file, &format!("store key file {shown}"))
}

/// Loads the key from the inherited descriptor `fd` (re-opened through
/// `/proc/self/fd`: std offers no safe way to take ownership of a raw
/// descriptor number, and the host forbids that escape hatch).
///
/// # Errors
///
/// [`StoreError::Key`]: the descriptor is not open or holds no key.
pub fn load_fd(fd: u32) -> Result<DataKey, StoreError> {
    let mut file = File::open(format!("/proc/self/fd/{fd}"))
        .map_err(|e| key_error(format!("cannot read the store key from fd {fd}: {e}")))?;
    read_key_text(&mut file, &format!("fd {fd}"))
}

/// Creates a new key file at `path` (mode 0600, never over an existing
/// file), refusing a place inside `store_root`. Its parent directory is
/// created (0700) when missing.
///
/// # Errors
///
/// [`StoreError::Key`]: the file exists, the place is inside the store, or
/// the file cannot be written.
pub fn create_file(path: &Path, store_root: &Path) -> Result<DataKey, StoreError> {
    let shown = path.display();
    if inside(path, store_root) {
        return Err(key_error(format!(
            "refusing to put the store key {shown} inside the store directory {}: \
             a copy of the store would carry its key; choose a path elsewhere",
            store_root.display()
        )));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| key_error(format!("cannot create directory {}: {e}", parent.display())))?;
    }
    let key =
        DataKey::generate().map_err(|e| key_error(format!("cannot generate a store key: {e}")))?;
    // Written whole to a temp file (0600) beside it, then linked into
    // place only if nothing is there (`persist_noclobber`, which never
    // follows a planted symlink): a crash leaves no partial key, and of
    // two processes creating it at once one wins and the other is told
    // it exists.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let cannot = |e: io::Error| key_error(format!("cannot create the store key file {shown}: {e}"));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-key-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(cannot)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| tmp.write_all(&key.to_text()))
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(cannot)?;
    tmp.persist_noclobber(path)
        .map_err(|e| match e.error.kind() {
            io::ErrorKind::AlreadyExists => key_error(format!(
                "store key file {shown} already exists; refusing to overwrite it \
             (the store it opens would be lost)"
            )),
            _ => cannot(e.error),
        })?;
    // Best effort: the key file's name survives a crash.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(key)
}

/// Whether `path` is `root` or inside it, comparing canonical forms of the
/// nearest existing ancestors (so `..` and symlinked parents do not hide
/// it).
fn inside(path: &Path, root: &Path) -> bool {
    let canon = |p: &Path| -> PathBuf {
        let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        let mut existing = absolute.as_path();
        let mut rest = Vec::new();
        loop {
            if let Ok(c) = existing.canonicalize() {
                let mut out = c;
                out.extend(rest.iter().rev());
                return out;
            }
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => return absolute,
            }
        }
    };
    canon(path).starts_with(canon(root))
}

/// The `auto` backend's key file: `$XDG_CONFIG_HOME/credproxy/store.key`,
/// else `$HOME/.config/credproxy/store.key` (absolute paths only).
#[must_use]
pub fn default_key_file(env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let absolute = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
    let config =
        absolute("XDG_CONFIG_HOME").or_else(|| absolute("HOME").map(|h| h.join(".config")))?;
    Some(config.join("credproxy").join(DEFAULT_KEY_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trip_and_redacted_debug() {
        let key = DataKey::from_bytes([0xab; KEY_LEN]);
        let text = key.to_text();
        assert_eq!(text.len(), 65);
        let back = DataKey::parse(&text).unwrap();
        assert_eq!(back.bytes(), key.bytes());
        assert_eq!(format!("{key:?}"), "DataKey(<redacted>)");
        assert!(DataKey::parse(b"abc").is_none());
        assert!(DataKey::parse(&[b'g'; 64]).is_none());
    }

    #[test]
    fn create_refuses_overwrite_and_the_store_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let path = dir.path().join("keys").join("store.key");
        let key = create_file(&path, &store).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_file(&path).unwrap().bytes(), key.bytes());
        let again = create_file(&path, &store).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
        assert_eq!(load_file(&path).unwrap().bytes(), key.bytes(), "kept");
        for inner in [
            store.join("k"),
            store.join("sub/../k"),
            dir.path().join("store/x/y"),
        ] {
            let e = create_file(&inner, &store).unwrap_err().to_string();
            assert!(e.contains("inside the store directory"), "{e}");
        }
    }

    #[test]
    fn load_refuses_loose_permissions_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create_file(&path, &dir.path().join("store")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("group or others") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(
            load_file(&link)
                .unwrap_err()
                .to_string()
                .contains("symlink")
        );
        let missing = load_file(&dir.path().join("none")).unwrap_err().to_string();
        assert!(missing.contains("init-key"), "{missing}");
    }

    #[test]
    fn errors_never_show_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = create_file(&path, &dir.path().join("store")).unwrap();
        let text = String::from_utf8(key.to_text().to_vec()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(!e.contains(text.trim()), "{e}");
        let e = create_file(&path, &dir.path().join("store")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(text.trim()));
    }
}
