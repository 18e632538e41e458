//! Crash-safe writes and removals.
//!
//! A write goes to a fresh temp file in the target's directory, created
//! exclusively (`O_CREAT|O_EXCL`) without following symlinks and with mode
//! 0600, then is fsynced, renamed over the target and the directory fsynced.
//! A crash therefore leaves the old file or the new one, never a torn one.
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use super::dirs::FILE_MODE;
use super::error::StoreError;

/// Prefix of temp files; the leading dot keeps them out of every listing.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes retried when a cleaner removed our temp file in the instant
/// between its creation and our lock (see [`remove_abandoned_temp`]).
const WRITE_ATTEMPTS: u32 = 3;

/// Distinguishes temp files of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replaces `dir/file_name` with `bytes` and returns the metadata
/// of the new file (its identity for the cache).
pub fn write_atomic(dir: &Path, file_name: &str, bytes: &[u8]) -> Result<Metadata, StoreError> {
    let target = dir.join(file_name);
    let mut attempt = 1;
    let meta = loop {
        let (tmp_path, file) = create_temp(dir, file_name)?;
        match fill_and_rename(&file, &tmp_path, &target, bytes) {
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
            Err(e) => {
                // Best effort: the temp file was never renamed and is garbage.
                let _ = fs::remove_file(&tmp_path);
                return Err(e);
            }
        }
        // The lock (and descriptor) of a failed attempt is released here.
        drop(file);
    };
    sync_dir(dir)?;
    Ok(meta)
}

/// Writes the temp file fully and durably, then renames it over `target`.
fn fill_and_rename(
    mut file: &File,
    tmp_path: &Path,
    target: &Path,
    bytes: &[u8],
) -> Result<Metadata, StoreError> {
    // Exact mode regardless of umask (fchmod on our own descriptor).
    file.set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(|e| StoreError::io("set permissions of", tmp_path, e))?;
    file.write_all(bytes)
        .map_err(|e| StoreError::io("write", tmp_path, e))?;
    file.sync_all()
        .map_err(|e| StoreError::io("fsync", tmp_path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("inspect", tmp_path, e))?;
    fs::rename(tmp_path, target).map_err(|e| StoreError::io("rename into", target, e))?;
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

/// Attempts at finding an unused temp name before giving up (collisions
/// need a leftover from an earlier process with our pid, so one retry is
/// nearly always enough).
const TEMP_ATTEMPTS: u32 = 64;

/// Creates a new temp file next to the target, retrying on name
/// collisions, and takes its exclusive lock (held until the file is
/// dropped: after the rename, or when the write failed).
fn create_temp(dir: &Path, file_name: &str) -> Result<(PathBuf, Flock<File>), StoreError> {
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last_err = None;
    for _ in 0..TEMP_ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp_path = dir.join(format!("{TEMP_PREFIX}{file_name}.{pid}.{nanos:x}.{n}"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp_path)
        {
            Ok(file) => {
                let locked = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
                    StoreError::io("lock", &tmp_path, io::Error::from(errno))
                })?;
                return Ok((tmp_path, locked));
            }
            // A leftover (or a planted symlink) has this name: take another.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                last_err = Some(StoreError::io("create", &tmp_path, e));
            }
            Err(e) => return Err(StoreError::io("create", &tmp_path, e)),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        StoreError::io(
            "create a temp file in",
            dir,
            io::Error::other("no attempt made"),
        )
    }))
}
