//! One running proxy's place on disk: its socket path, its capability token
//! file, and their removal.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use credproxy_core::Secret;

use crate::dirs::{create_private_dir, ensure_private_dir, euid};
use crate::error::UnixError;
use crate::name::new_instance_name;
use crate::path::check_socket_path;
use crate::stale::{Probe, probe_socket};
use crate::token::{generate, is_leftover_token_file, write_token_file};

/// File name of the socket inside an instance directory.
pub const SOCKET_FILE_NAME: &str = "proxy.sock";
/// File name of the capability token inside an instance directory.
pub const TOKEN_FILE_NAME: &str = "token";
/// Suffix appended to a fixed socket path to name its token file.
pub const FIXED_TOKEN_SUFFIX: &str = ".token";

/// Whether an [`Instance`] gets a capability token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// Generate a fresh token (32 random bytes, 64 lowercase hex) and write
    /// it to a 0600 file next to the socket. The default of `serve`/`exec`.
    Generate,
    /// No token file (`--insecure-no-token`).
    Disabled,
}

/// Where an instance lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// `<base>/<pid>-<nonce>/`: the directory is ours and removed on cleanup.
    InstanceDir,
    /// `--socket PATH`: the directory is the user's and is kept.
    Fixed,
}

/// The on-disk place of one running proxy: its socket path and, when
/// wanted, its capability token file.
///
/// Two placements exist:
///
/// - [`Instance::create`]: a fresh directory `<base>/<pid>-<nonce>/`
///   (mode 0700) holding `proxy.sock` and, with [`TokenMode::Generate`],
///   `token` (0600). A container mounts exactly this directory.
/// - [`Instance::fixed`] (`serve --socket PATH`): the socket at `PATH`, whose
///   directory must pass the same private-directory checks, and the token
///   in `PATH.token` beside it. A stale socket at `PATH` is replaced, a live
///   one or any other file is refused and kept.
///
/// Creating an instance does not bind: pass it to
/// [`Listener::bind`](crate::Listener::bind). [`Instance::cleanup`] (also
/// run on drop) removes what the instance created.
#[derive(Debug)]
pub struct Instance {
    placement: Placement,
    dir: PathBuf,
    socket: PathBuf,
    token_path: Option<PathBuf>,
    token: Option<Secret>,
    cleaned: AtomicBool,
}

impl Instance {
    /// Creates a new instance directory under `base`.
    ///
    /// Order: the socket path length is checked first (so nothing is
    /// created when it cannot fit); then `base` is created or verified by
    /// [`ensure_private_dir`]; then `<base>/<pid>-<nonce>` is created with
    /// mode 0700 (the nonce is 16 bytes from the OS random generator as 22
    /// base64url characters); then, with [`TokenMode::Generate`], the token
    /// file is written exclusively with mode 0600. If a later step fails,
    /// what earlier steps created in the instance directory is removed.
    ///
    /// # Errors
    ///
    /// [`UnixError::SocketPathTooLong`] before anything is created, the
    /// refusals of [`ensure_private_dir`] for `base`, [`UnixError::Random`],
    /// or [`UnixError::Io`].
    pub fn create(base: &Path, token: TokenMode) -> Result<Instance, UnixError> {
        let dir = base.join(new_instance_name(std::process::id())?);
        let socket = dir.join(SOCKET_FILE_NAME);
        check_socket_path(&socket)?;
        ensure_private_dir(base)?;
        create_private_dir(&dir)?;
        let mut instance = Instance {
            placement: Placement::InstanceDir,
            token_path: None,
            token: None,
            cleaned: AtomicBool::new(false),
            socket,
            dir,
        };
        if token == TokenMode::Generate {
            // On error `instance` is dropped and its directory removed.
            instance.write_token(instance.dir.join(TOKEN_FILE_NAME))?;
        }
        Ok(instance)
    }

    /// Prepares a fixed socket path (`serve --socket PATH`).
    ///
    /// `path` is made absolute (without resolving symlinks) and its length
    /// checked first. Its parent directory must exist or be creatable as a
    /// private directory ([`ensure_private_dir`]). What is already at `path`
    /// decides the rest: nothing → fine; a socket that refuses connections
    /// → removed as stale; a socket with a live listener →
    /// [`UnixError::SocketInUse`]; anything else (regular file, symlink,
    /// directory, …) → [`UnixError::NotASocket`], and it is never deleted.
    ///
    /// With [`TokenMode::Generate`] the token goes to `PATH.token` (the
    /// socket path with `.token` appended), so it sits in the same
    /// directory and its name ties it to its socket. A file already there
    /// is replaced only when it looks like a token file an earlier run of
    /// ours left (regular file, ours, 0600 or narrower, exactly 64 lowercase
    /// hex and a newline); anything else is refused
    /// ([`UnixError::TokenFileExists`]) and kept.
    ///
    /// Cleanup removes the socket and the token file but not the directory.
    ///
    /// # Errors
    ///
    /// As described above, plus [`UnixError::Random`] and [`UnixError::Io`].
    pub fn fixed(path: &Path, token: TokenMode) -> Result<Instance, UnixError> {
        let socket = std::path::absolute(path)
            .map_err(|e| UnixError::io("cannot make socket path absolute", path, e))?;
        check_socket_path(&socket)?;
        let (Some(dir), Some(file_name)) = (socket.parent(), socket.file_name()) else {
            return Err(UnixError::NotASocket { path: socket });
        };
        let dir = dir.to_path_buf();
        ensure_private_dir(&dir)?;
        clear_fixed_socket_path(&socket)?;
        let mut token_name = OsString::from(file_name);
        token_name.push(FIXED_TOKEN_SUFFIX);
        let token_path = dir.join(token_name);
        let mut instance = Instance {
            placement: Placement::Fixed,
            dir,
            socket,
            token_path: None,
            token: None,
            cleaned: AtomicBool::new(false),
        };
        if token == TokenMode::Generate {
            clear_leftover_token(&token_path)?;
            instance.write_token(token_path)?;
        }
        Ok(instance)
    }

    /// Generates a token and writes it to `path`, recording both.
    fn write_token(&mut self, path: PathBuf) -> Result<(), UnixError> {
        let token = generate()?;
        write_token_file(&path, &token)?;
        self.token_path = Some(path);
        self.token = Some(token);
        Ok(())
    }

    /// Path of the socket (`<instance dir>/proxy.sock`, or the fixed path).
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The directory holding the socket: the instance directory, or the
    /// fixed path's parent directory. This is what a container mounts.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the capability token file, when one was written.
    #[must_use]
    pub fn token_path(&self) -> Option<&Path> {
        self.token_path.as_deref()
    }

    /// The capability token, when one was generated. Its `Debug` and
    /// `Display` print `[redacted]`.
    #[must_use]
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// Removes the socket, the token file and (for an instance directory)
    /// the directory itself. Idempotent: missing files are fine, and after
    /// one successful call later calls do nothing. Also run on drop.
    ///
    /// In fixed-path mode the path is removed only while it is still a
    /// socket, and the directory is kept.
    ///
    /// # Errors
    ///
    /// [`UnixError::Io`] when a file or the directory cannot be removed
    /// (e.g. someone put other files in the instance directory); a later
    /// call tries again.
    pub fn cleanup(&self) -> Result<(), UnixError> {
        if self.cleaned.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.placement {
            Placement::InstanceDir => remove_instance_files(&self.dir)?,
            Placement::Fixed => {
                if let Ok(meta) = fs::symlink_metadata(&self.socket)
                    && meta.file_type().is_socket()
                {
                    remove_if_present(&self.socket)
                        .map_err(|e| UnixError::io("cannot remove socket", &self.socket, e))?;
                }
                if let Some(token) = &self.token_path {
                    remove_if_present(token).map_err(|e| {
                        UnixError::io("cannot remove capability token file", token, e)
                    })?;
                }
            }
        }
        self.cleaned.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; callers who care call
        // `cleanup` themselves first.
        let _ = self.cleanup();
    }
}

/// Removes `proxy.sock` and `token` from an instance directory, then the
/// directory. `unlink` never follows symlinks; `rmdir` fails (and the
/// directory stays) when anything else is inside.
pub(crate) fn remove_instance_files(dir: &Path) -> Result<(), UnixError> {
    let socket = dir.join(SOCKET_FILE_NAME);
    remove_if_present(&socket).map_err(|e| UnixError::io("cannot remove socket", &socket, e))?;
    let token = dir.join(TOKEN_FILE_NAME);
    remove_if_present(&token)
        .map_err(|e| UnixError::io("cannot remove capability token file", &token, e))?;
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(UnixError::io("cannot remove instance directory", dir, e))
        }
        _ => Ok(()),
    }
}

/// `unlink`, with a missing file counting as success.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes way for binding at a fixed `path`: removes a dead socket, refuses
/// a live one and anything that is not a socket.
fn clear_fixed_socket_path(path: &Path) -> Result<(), UnixError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(UnixError::io("cannot inspect socket path", path, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(UnixError::NotASocket { path: path.into() });
    }
    match probe_socket(path) {
        Probe::Live => Err(UnixError::SocketInUse { path: path.into() }),
        Probe::Refused | Probe::Missing => remove_if_present(path)
            .map_err(|e| UnixError::io("cannot remove stale socket", path, e)),
        Probe::Unknown(e) => Err(UnixError::io("cannot probe existing socket", path, e)),
    }
}

/// Removes a token file an earlier run left at `path`; refuses any other
/// file there.
fn clear_leftover_token(path: &Path) -> Result<(), UnixError> {
    match is_leftover_token_file(path, euid()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UnixError::io(
            "cannot inspect capability token file",
            path,
            e,
        )),
        Ok(false) => Err(UnixError::TokenFileExists { path: path.into() }),
        Ok(true) => remove_if_present(path)
            .map_err(|e| UnixError::io("cannot remove old capability token file", path, e)),
    }
}
