//! Private directories: where the base directory is, creating it, and
//! checking that an existing one is ours alone.
//!
//! A directory is *private* when `lstat` says it is a directory (not a
//! symlink), it is owned by our effective uid, and its mode has no group or
//! other bits. An existing directory that fails the check is refused with an
//! error that says how to fix it; it is never chmod-ed or chown-ed silently.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::libc;

use crate::error::{ModeProblem, UnixError};

/// Name of the base directory under `$XDG_RUNTIME_DIR`.
const XDG_SUBDIR: &str = "credproxy";

/// Our effective uid.
pub(crate) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The base directory that holds one subdirectory per running instance.
///
/// `$XDG_RUNTIME_DIR/credproxy` when `XDG_RUNTIME_DIR` is set to an absolute
/// path; otherwise `<tmp>/credproxy-<euid>`, where `<tmp>` is `$TMPDIR` when
/// that is set to an absolute path and `/tmp` otherwise. The directory is not
/// created or checked here: pass it to [`ensure_private_dir`].
///
/// # Errors
///
/// None today; the `Result` leaves room for rejecting unusable environments
/// without an API change.
pub fn base_dir() -> Result<PathBuf, UnixError> {
    Ok(base_dir_from(
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        std::env::var_os("TMPDIR").as_deref(),
        euid(),
    ))
}

/// [`base_dir`] with its inputs passed in (pure, for tests).
fn base_dir_from(xdg_runtime_dir: Option<&OsStr>, tmpdir: Option<&OsStr>, euid: u32) -> PathBuf {
    if let Some(xdg) = xdg_runtime_dir.map(Path::new)
        && xdg.is_absolute()
    {
        return xdg.join(XDG_SUBDIR);
    }
    let tmp = tmpdir
        .map(Path::new)
        .filter(|p| p.is_absolute())
        .unwrap_or(Path::new("/tmp"));
    tmp.join(format!("credproxy-{euid}"))
}

/// Makes sure `path` is a private directory, creating it when absent.
///
/// When `path` does not exist it is created with mode 0700 (only its last
/// component: the parent must exist). When it exists it must pass
/// [`verify_private_dir`]; it is never modified.
///
/// # Errors
///
/// [`UnixError::ParentMissing`] when the parent does not exist; the
/// refusals of [`verify_private_dir`]; [`UnixError::Io`] for other failures.
pub fn ensure_private_dir(path: &Path) -> Result<(), UnixError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => check_private(path, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match create_private_dir(path) {
            Ok(()) => Ok(()),
            // Someone created it between our lstat and mkdir: check theirs.
            Err(UnixError::Io { error, .. }) if error.kind() == io::ErrorKind::AlreadyExists => {
                verify_private_dir(path)
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(UnixError::io("cannot inspect socket directory", path, e)),
    }
}

/// Checks, without changing anything, that `path` is a private directory:
/// not a symlink, a directory, owned by our effective uid, no group or other
/// permission bits.
///
/// # Errors
///
/// [`UnixError::Symlink`], [`UnixError::NotADirectory`],
/// [`UnixError::WrongOwner`], [`UnixError::TooOpen`],
/// [`UnixError::SharedDir`], or [`UnixError::Io`]
/// when `lstat` fails (including when the directory does not exist).
pub fn verify_private_dir(path: &Path) -> Result<(), UnixError> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| UnixError::io("cannot inspect socket directory", path, e))?;
    check_private(path, &meta)
}

/// The checks of [`verify_private_dir`] on metadata from `lstat` or `fstat`.
fn check_private(path: &Path, meta: &Metadata) -> Result<(), UnixError> {
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        return Err(UnixError::Symlink { path: path.into() });
    }
    if !file_type.is_dir() {
        return Err(UnixError::NotADirectory { path: path.into() });
    }
    let expected = euid();
    if meta.uid() != expected {
        return Err(UnixError::WrongOwner {
            path: path.into(),
            owner: meta.uid(),
            expected,
        });
    }
    if let Some(problem) = ModeProblem::of_mode(meta.mode()) {
        let sticky = meta.mode() & 0o1000 != 0;
        if sticky || problem == ModeProblem::WorldWritable {
            return Err(UnixError::SharedDir {
                path: path.into(),
                problem,
                sticky,
            });
        }
        return Err(UnixError::TooOpen {
            path: path.into(),
            problem,
        });
    }
    Ok(())
}

/// Creates `path` (last component only) as a private directory.
///
/// Fails with [`UnixError::Io`] of kind `AlreadyExists` when something is
/// already there. After `mkdir` the new directory is opened without
/// following symlinks, checked through the open descriptor, and its mode set
/// to exactly 0700 (the umask may have removed owner bits); this is the only
/// place we chmod a directory, and only one we just created.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), UnixError> {
    if let Err(e) = DirBuilder::new().mode(0o700).create(path) {
        if e.kind() == io::ErrorKind::NotFound {
            let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            return Err(UnixError::ParentMissing {
                path: path.into(),
                parent,
            });
        }
        return Err(UnixError::io("cannot create socket directory", path, e));
    }
    let dir = open_dir_nofollow(path)
        .map_err(|e| UnixError::io("cannot open new socket directory", path, e))?;
    dir.set_permissions(Permissions::from_mode(0o700))
        .map_err(|e| UnixError::io("cannot set mode 0700 on new socket directory", path, e))?;
    let meta = dir
        .metadata()
        .map_err(|e| UnixError::io("cannot inspect new socket directory", path, e))?;
    check_private(path, &meta)
}

/// Opens a directory for `fstat`/`fchmod`, refusing a symlink in its place.
fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_dir_prefers_an_absolute_xdg_runtime_dir() {
        assert_eq!(
            base_dir_from(
                Some(OsStr::new("/run/user/1000")),
                Some(OsStr::new("/var/tmp")),
                1000
            ),
            PathBuf::from("/run/user/1000/credproxy")
        );
    }

    #[test]
    fn base_dir_falls_back_to_tmpdir_then_tmp() {
        assert_eq!(
            base_dir_from(
                Some(OsStr::new("relative")),
                Some(OsStr::new("/var/tmp")),
                1000
            ),
            PathBuf::from("/var/tmp/credproxy-1000")
        );
        assert_eq!(
            base_dir_from(None, Some(OsStr::new("")), 7),
            PathBuf::from("/tmp/credproxy-7")
        );
        assert_eq!(
            base_dir_from(Some(OsStr::new("")), None, 0),
            PathBuf::from("/tmp/credproxy-0")
        );
    }

    #[test]
    fn base_dir_uses_the_environment() {
        let base = base_dir().expect("base dir");
        assert!(base.is_absolute());
        let name = base.file_name().and_then(OsStr::to_str).unwrap_or_default();
        assert!(name == "credproxy" || name == format!("credproxy-{}", euid()));
    }
}
