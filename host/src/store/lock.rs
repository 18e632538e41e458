//! Cross-process refresh locks: [`KeyLock`], an `flock` for the stores in
//! a directory, a lease row for the `postgres` backend (see
//! `postgres::lease`).
//!
//! Two proxies (or a proxy and the CLI) must not refresh the same key at
//! once, or one of them would spend a rotated refresh token. Each key has a
//! lock file that is never deleted (deleting it would let two processes lock
//! different inodes under the same name), locked with `flock(LOCK_EX)`.
//! `flock` locks belong to the open file description, so two `FileStore`s in
//! one process exclude each other too, and the kernel releases the lock when
//! a process dies.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::dirs::{self, FILE_MODE};
use super::error::StoreError;

/// First pause between lock attempts; doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(1);
/// Longest pause between lock attempts.
const MAX_POLL: Duration = Duration::from_millis(25);

/// An exclusive lock on one key; released when dropped, without waiting.
///
/// `Flock`: dropping the [`Flock`] unlocks (`LOCK_UN`) before the descriptor is
/// closed: closing releases the lock anyway, unlocking first makes the
/// release immediate even if the fd were duplicated. (nix's `Drop` panics
/// if that unlock fails; on a descriptor we hold open it cannot: no
/// `EBADF`, and an unlock never blocks, so no `EINTR`.)
/// `Lease`: dropping the guard queues the delete of the lease row on the
/// store's release thread (a lease outlives a dead holder only until its
/// deadline).
#[derive(Debug)]
pub enum KeyLock {
    /// An `flock` on the key's lock file.
    Flock(Flock<File>),
    /// A lease row in the database.
    Lease(super::postgres::LeaseGuard),
}

/// Locks the file at `path` (created 0600 if missing), waiting at most
/// `wait`. `Ok(None)` if another holder kept it for the whole wait.
pub fn acquire(path: &Path, wait: Duration) -> Result<Option<KeyLock>, StoreError> {
    let mut file = open_lock_file(path)?;
    let deadline = Instant::now() + wait;
    let mut pause = FIRST_POLL;
    loop {
        // `flock(2)` through nix's owning wrapper (std's `File::lock` needs
        // Rust 1.89; the workspace MSRV is 1.88). A failed attempt hands the
        // file back for the next one.
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(KeyLock::Flock(lock))),
            Err((back, Errno::EWOULDBLOCK)) => file = back,
            Err((back, Errno::EINTR)) => {
                file = back;
                continue;
            }
            Err((_, errno)) => return Err(StoreError::io("lock", path, errno.into())),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    let opened = dirs::open_private(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE),
        path,
        |e| StoreError::io("open lock file", path, e),
    )?;
    // Created if absent: only a directory that vanished meanwhile leaves
    // nothing to open.
    opened.map(|(file, _)| file).ok_or_else(|| {
        StoreError::io(
            "open lock file",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}
