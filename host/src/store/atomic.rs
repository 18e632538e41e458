//! Crash-safe writes and removals.
//!
//! A write goes to a fresh temp file in the target's directory, created by
//! `tempfile` (`O_CREAT|O_EXCL`, so a planted symlink is never followed,
//! with a random name and mode 0600), then is fsynced, renamed over the
//! target (`persist`) and the directory fsynced. A crash therefore leaves
//! the old file or the new one, never a torn one.
//!
//! A crash can leave the temp file, holding (part of) a secret. The writer
//! holds an exclusive `flock` on its temp file for the file's whole life, so
//! "no process holds the lock" means "abandoned": [`remove_abandoned_temp`]
//! (run when a store is opened) removes exactly those, at once, and leaves a
//! live writer's file alone. Listing ignores temp files (their names start
//! with `.`).

use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use tempfile::NamedTempFile;

use super::dirs::FILE_MODE;
use super::error::StoreError;

/// Prefix of temp files; the leading dot keeps them out of every listing.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes retried when a cleaner removed our temp file in the instant
/// between its creation and our lock (see [`remove_abandoned_temp`]).
const WRITE_ATTEMPTS: u32 = 3;

/// Atomically replaces `dir/file_name` with `bytes` and returns the metadata
/// of the new file (its identity for the cache).
pub fn write_atomic(dir: &Path, file_name: &str, bytes: &[u8]) -> Result<Metadata, StoreError> {
    let target = dir.join(file_name);
    let mut attempt = 1;
    let meta = loop {
        let (tmp, lock) = create_temp(dir, file_name)?;
        match fill_and_persist(tmp, &target, bytes) {
            Ok(meta) => break meta,
            // Our temp file vanished before the rename: another process's
            // open took it for abandoned before we had locked it. Retry.
            Err(StoreError::Io {
                op: "rename into",
                cause,
                ..
            }) if cause.kind() == io::ErrorKind::NotFound && attempt < WRITE_ATTEMPTS => {
                attempt += 1;
            }
            // The temp file of a failed write was removed when `tmp` was
            // dropped (tempfile's cleanup).
            Err(e) => return Err(e),
        }
        // The lock of a failed attempt is released here.
        drop(lock);
    };
    sync_dir(dir)?;
    Ok(meta)
}

/// Writes the temp file fully and durably, then renames it over `target`.
/// On failure the temp file is removed (dropping a `NamedTempFile` does).
fn fill_and_persist(
    mut tmp: NamedTempFile,
    target: &Path,
    bytes: &[u8],
) -> Result<Metadata, StoreError> {
    let tmp_path = tmp.path().to_owned();
    // Exact mode regardless of umask (fchmod on our own descriptor).
    tmp.as_file()
        .set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(|e| StoreError::io("set permissions of", &tmp_path, e))?;
    tmp.write_all(bytes)
        .map_err(|e| StoreError::io("write", &tmp_path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| StoreError::io("fsync", &tmp_path, e))?;
    let meta = tmp
        .as_file()
        .metadata()
        .map_err(|e| StoreError::io("inspect", &tmp_path, e))?;
    tmp.persist(target)
        .map_err(|e| StoreError::io("rename into", target, e.error))?;
    Ok(meta)
}

/// Removes `dir/file_name` durably. `Ok(false)` if it did not exist.
pub fn remove_durably(dir: &Path, file_name: &str) -> Result<bool, StoreError> {
    let path = dir.join(file_name);
    match fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("remove", &path, e)),
    }
}

/// Fsyncs a directory so a rename or unlink in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| StoreError::io("open directory", dir, e))?;
    d.sync_all()
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

/// Whether `file_name` is one of our temp files.
pub fn is_temp_name(file_name: &str) -> bool {
    file_name.starts_with(TEMP_PREFIX)
}

/// Removes `path` if it is an abandoned temp file: a regular file whose
/// exclusive lock no process holds (every writer holds it until its file
/// is renamed or removed). A locked one is a write in progress and stays.
/// Best effort: a leftover temp file is only retried at the next open.
pub fn remove_abandoned_temp(path: &Path, meta: &Metadata) {
    if !meta.file_type().is_file() {
        return;
    }
    // O_NONBLOCK: never hang on a FIFO someone put there; O_NOFOLLOW: a
    // symlink swapped in meanwhile is not followed.
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    if let Ok(locked) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Nobody writes it: its writer died (or finished and renamed it
        // away, then this unlink finds nothing).
        let _ = fs::remove_file(path);
        drop(locked);
    }
}

/// Creates a new temp file next to the target (tempfile picks a random
/// name and retries on collisions) and takes its exclusive lock, held by
/// the returned guard: on a duplicate of the descriptor, which shares the
/// open file description and so the lock, until the guard is dropped
/// (after the rename, or when the write failed).
fn create_temp(dir: &Path, file_name: &str) -> Result<(NamedTempFile, Flock<File>), StoreError> {
    let prefix = format!("{TEMP_PREFIX}{file_name}.");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)
        .map_err(|e| StoreError::io("create a temp file in", dir, e))?;
    let dup = tmp
        .as_file()
        .try_clone()
        .map_err(|e| StoreError::io("duplicate", tmp.path(), e))?;
    let lock = Flock::lock(dup, FlockArg::LockExclusive)
        .map_err(|(_, errno)| StoreError::io("lock", tmp.path(), io::Error::from(errno)))?;
    Ok((tmp, lock))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;

    #[test]
    fn the_temp_file_is_0600_in_the_target_directory_locked_and_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A symlink planted under a temp-like name is never followed: the
        // temp file is a new regular file beside it, mode 0600.
        let outside = dir.path().join("outside");
        fs::write(&outside, b"untouched").expect("write");
        symlink(
            &outside,
            dir.path().join(format!("{TEMP_PREFIX}t.json.planted")),
        )
        .expect("ln");
        let (tmp, lock) = create_temp(dir.path(), "t.json").expect("create");
        let path = tmp.path().to_owned();
        assert_eq!(path.parent(), Some(dir.path()));
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.starts_with(".tmp-t.json."), "{name}");
        assert!(is_temp_name(name));
        let meta = fs::symlink_metadata(&path).expect("lstat");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o7777, FILE_MODE);
        assert_eq!(meta.len(), 0);
        // The writer's lock is held: a second exclusive lock cannot be had.
        let other = File::open(&path).expect("open");
        assert!(Flock::lock(other, FlockArg::LockExclusiveNonblock).is_err());
        drop(lock);
        drop(tmp);
        assert!(!path.exists(), "an unused temp file is removed");
        assert_eq!(fs::read(&outside).expect("read"), b"untouched");
    }

    #[test]
    fn a_write_leaves_no_temp_file_and_the_target_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), "t.json", b"{}").expect("write");
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["t.json"]);
        let meta = fs::symlink_metadata(dir.path().join("t.json")).expect("lstat");
        assert_eq!(meta.mode() & 0o7777, FILE_MODE);
    }
}
