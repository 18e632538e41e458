//! Finding and removing instances whose process is gone.
//!
//! A socket file outlives its listener when a process dies without cleaning
//! up. We tell a dead socket from a live one by connecting to it: a live
//! listener accepts (or, with a full backlog, answers `EAGAIN`), a dead one
//! refuses with `ECONNREFUSED`.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

use crate::dirs::{euid, verify_private_dir};
use crate::error::UnixError;
use crate::instance::{SOCKET_FILE_NAME, remove_instance_files};
use crate::name::is_instance_dir_name;

/// What a connection attempt says about a socket path.
#[derive(Debug)]
pub(crate) enum Probe {
    /// A listener is there (it accepted, or its backlog is full).
    Live,
    /// Nobody listens: the socket file is left over from a dead process.
    Refused,
    /// Nothing is at the path (any more).
    Missing,
    /// We could not tell (permission denied, path too long, …); treat the
    /// socket as not ours to remove.
    Unknown(io::Error),
}

/// Connects to the socket at `path` without blocking and reports what
/// happened. The probe connection is closed at once.
pub(crate) fn probe_socket(path: &Path) -> Probe {
    match try_connect(path) {
        // Linux answers EAGAIN when the listener's backlog is full.
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Probe::Live,
        Err(Errno::ECONNREFUSED) => Probe::Refused,
        Err(Errno::ENOENT) => Probe::Missing,
        Err(e) => Probe::Unknown(e.into()),
    }
}

/// One non-blocking `connect` to `path`.
fn try_connect(path: &Path) -> Result<(), Errno> {
    #[cfg(linux_like)]
    let flags = SockFlag::SOCK_CLOEXEC;
    #[cfg(not(linux_like))]
    let flags = SockFlag::empty();
    let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
    #[cfg(not(linux_like))]
    fcntl(&fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    // Non-blocking, so a live listener with a full backlog cannot stall us.
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)
}

/// Removes the instances under `base` whose socket refuses connections and
/// returns how many instance directories were removed.
///
/// Only subdirectories named `<digits>-<22 base64url chars>`, that are real
/// directories (never a symlink), owned by our effective uid, and that hold
/// a socket file named `proxy.sock` are considered. For each whose socket
/// refuses the connection (or vanished meanwhile), the socket, the `token`
/// file and then the empty directory are removed; a directory that also
/// holds other files keeps them and is left in place (not counted). Live
/// instances, unreadable entries and anything else are left alone. A base
/// directory that does not exist yields `Ok(0)`.
///
/// Call it at start, before creating the new [`Instance`](crate::Instance).
///
/// # Errors
///
/// The refusals of [`verify_private_dir`] for `base`, and
/// [`UnixError::Io`] when `base` cannot be listed. Problems with single
/// entries are skipped, not reported.
pub fn remove_stale_instances(base: &Path) -> Result<usize, UnixError> {
    match fs::symlink_metadata(base) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        _ => verify_private_dir(base)?,
    }
    let entries =
        fs::read_dir(base).map_err(|e| UnixError::io("cannot list socket directory", base, e))?;
    let uid = euid();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_instance_dir_name) {
            continue;
        }
        let dir = entry.path();
        if is_dead_instance(&dir, uid) && remove_instance_files(&dir).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `dir` is an instance directory of ours whose socket is dead.
fn is_dead_instance(dir: &Path, uid: u32) -> bool {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return false;
    };
    if !meta.file_type().is_dir() || meta.uid() != uid {
        return false;
    }
    let socket = dir.join(SOCKET_FILE_NAME);
    let Ok(meta) = fs::symlink_metadata(&socket) else {
        return false;
    };
    if !meta.file_type().is_socket() {
        return false;
    }
    matches!(probe_socket(&socket), Probe::Refused | Probe::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn probe_tells_live_from_dead_from_missing() {
        let dir = tempfile::Builder::new()
            .prefix("cps")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let path = dir.path().join("s");
        assert!(matches!(probe_socket(&path), Probe::Missing));
        let listener = UnixListener::bind(&path).expect("bind");
        assert!(matches!(probe_socket(&path), Probe::Live));
        drop(listener);
        assert!(matches!(probe_socket(&path), Probe::Refused));
    }
}
