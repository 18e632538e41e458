//! Where the store lives, and the ownership/permission checks on its
//! directories and files.
//!
//! The store holds refresh tokens and API keys, so everything in it must be
//! private to the user running credproxy: directories 0700, files 0600, owned
//! by our effective uid, never symlinks. Anything else is refused with a
//! message that gives the exact command to fix it, rather than silently
//! repaired (a wrong mode may mean someone else already had access).

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::StoreError;

/// Mode of every store directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every store file.
pub const FILE_MODE: u32 = 0o600;

const DIR_WHAT: &str = "store directory";
const FILE_WHAT: &str = "store file";

/// Name of the store directory under the data home.
const APP_DIR: &str = "credproxy";

/// The default store root from the environment (SPEC §7).
pub fn default_root() -> Result<PathBuf, StoreError> {
    root_from(
        std::env::var_os("XDG_DATA_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// `$XDG_DATA_HOME/credproxy`, else `$HOME/.local/share/credproxy`. As the
/// XDG spec asks, a relative `XDG_DATA_HOME` is ignored; a relative or empty
/// `HOME` is an error rather than a store in the working directory.
pub fn root_from(
    xdg_data_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> Result<PathBuf, StoreError> {
    if let Some(xdg) = xdg_data_home.map(Path::new).filter(|p| p.is_absolute()) {
        return Ok(xdg.join(APP_DIR));
    }
    match home.map(Path::new).filter(|p| p.is_absolute()) {
        Some(home) => Ok(home.join(".local").join("share").join(APP_DIR)),
        None => Err(StoreError::NoDataDir),
    }
}

/// Our effective uid: the owner every store path must have.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Creates `path` as a 0700 directory if it is missing, then verifies it
/// (see [`verify_dir`]). The parent must exist.
pub fn ensure_private_dir(path: &Path) -> Result<(), StoreError> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        // The umask may have narrowed the mode; make it exact. We created the
        // directory, so it is ours and a plain chmod is enough.
        Ok(()) => fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
            .map_err(|e| StoreError::io("set permissions of", path, e))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::io("create directory", path, e)),
    }
    verify_dir(path)
}

/// Refuses `path` unless it is a real directory (not a symlink, checked with
/// lstat) owned by our euid without group/other permission bits.
pub fn verify_dir(path: &Path) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(path).map_err(|e| StoreError::io("inspect", path, e))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(insecure(
            DIR_WHAT,
            path,
            "is a symlink".to_owned(),
            format!("rm {0} && mkdir -m 700 {0}", path.display()),
        ));
    }
    if !ft.is_dir() {
        return Err(insecure(
            DIR_WHAT,
            path,
            "is not a directory".to_owned(),
            format!("mv {0} {0}.bak", path.display()),
        ));
    }
    verify_owner_and_mode(DIR_WHAT, path, &meta, "700")
}

/// Refuses a store file unless `meta` (from lstat, or fstat of a descriptor
/// opened with `O_NOFOLLOW`) shows a regular file owned by our euid without
/// group/other permission bits.
pub fn verify_file(path: &Path, meta: &Metadata) -> Result<(), StoreError> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(symlink_file(path));
    }
    if !ft.is_file() {
        return Err(insecure(
            FILE_WHAT,
            path,
            "is not a regular file".to_owned(),
            format!("mv {0} {0}.bak", path.display()),
        ));
    }
    verify_owner_and_mode(FILE_WHAT, path, meta, "600")
}

/// Opens the private file `path` with `options`: never through a symlink
/// (`O_NOFOLLOW`, so one planted there is refused, not followed), never
/// hanging on a FIFO put in its place (`O_NONBLOCK`; no effect on regular
/// files), and checked with [`verify_file`] on the open descriptor, so the
/// checks and the caller's reads and writes concern the same inode.
/// Returns the file with that descriptor's metadata; `Ok(None)` when it
/// does not exist; `other` maps any other failure to open it.
pub fn open_private(
    options: &mut OpenOptions,
    path: &Path,
    other: impl FnOnce(io::Error) -> StoreError,
) -> Result<Option<(File, Metadata)>, StoreError> {
    let file = match options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(symlink_file(path)),
        Err(e) => return Err(other(e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("inspect", path, e))?;
    verify_file(path, &meta)?;
    Ok(Some((file, meta)))
}

/// The error for a store file that turned out to be a symlink (lstat, or
/// `ELOOP` from an `O_NOFOLLOW` open).
pub fn symlink_file(path: &Path) -> StoreError {
    insecure(
        FILE_WHAT,
        path,
        "is a symlink".to_owned(),
        format!("rm {}", path.display()),
    )
}

fn verify_owner_and_mode(
    what: &'static str,
    path: &Path,
    meta: &Metadata,
    good_mode: &str,
) -> Result<(), StoreError> {
    let me = euid();
    if meta.uid() != me {
        return Err(insecure(
            what,
            path,
            format!("is owned by uid {}, not {me}", meta.uid()),
            format!("chown {me} {} (as root), or remove it", path.display()),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(insecure(
            what,
            path,
            format!("is {} (mode {mode:04o})", describe_wide_mode(mode)),
            format!("chmod {good_mode} {}", path.display()),
        ));
    }
    Ok(())
}

/// The most serious group/other permission in `mode`, in words.
fn describe_wide_mode(mode: u32) -> &'static str {
    if mode & 0o002 != 0 {
        "world-writable"
    } else if mode & 0o020 != 0 {
        "group-writable"
    } else if mode & 0o004 != 0 {
        "world-readable"
    } else if mode & 0o040 != 0 {
        "group-readable"
    } else if mode & 0o001 != 0 {
        "accessible by others"
    } else {
        "accessible by its group"
    }
}

fn insecure(what: &'static str, path: &Path, problem: String, fix: String) -> StoreError {
    StoreError::Insecure {
        what,
        path: path.to_owned(),
        problem,
        fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_prefers_absolute_xdg_data_home() {
        let r = root_from(Some(OsStr::new("/d")), Some(OsStr::new("/h")));
        assert_eq!(r.ok(), Some(PathBuf::from("/d/credproxy")));
    }

    #[test]
    fn root_falls_back_to_home() {
        for xdg in [None, Some(OsStr::new("")), Some(OsStr::new("rel/dir"))] {
            let r = root_from(xdg, Some(OsStr::new("/h")));
            assert_eq!(r.ok(), Some(PathBuf::from("/h/.local/share/credproxy")));
        }
    }

    #[test]
    fn root_needs_an_absolute_home() {
        for home in [None, Some(OsStr::new("")), Some(OsStr::new("h"))] {
            assert!(matches!(root_from(None, home), Err(StoreError::NoDataDir)));
        }
    }

    #[test]
    fn mode_words() {
        assert_eq!(describe_wide_mode(0o777), "world-writable");
        assert_eq!(describe_wide_mode(0o770), "group-writable");
        assert_eq!(describe_wide_mode(0o755), "world-readable");
        assert_eq!(describe_wide_mode(0o750), "group-readable");
        assert_eq!(describe_wide_mode(0o701), "accessible by others");
        assert_eq!(describe_wide_mode(0o710), "accessible by its group");
    }
}
