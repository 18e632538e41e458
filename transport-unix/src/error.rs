//! The error type of the placement, permission and binding steps.
//!
//! Every refusal says what is wrong and how a person fixes it, because these
//! errors end up on the terminal of whoever ran `credproxy serve`.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why an existing directory's mode is too wide to hold a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeProblem {
    /// Others may create or delete entries (`o+w`).
    WorldWritable,
    /// The group may create or delete entries (`g+w`).
    GroupWritable,
    /// Group or others have read or search access (the mode is carried for
    /// the message).
    Accessible {
        /// The permission bits of the directory (`mode & 0o7777`).
        mode: u32,
    },
}

impl ModeProblem {
    /// Classifies permission bits; `None` when no group or other bit is set.
    #[must_use]
    pub fn of_mode(mode: u32) -> Option<ModeProblem> {
        if mode & 0o002 != 0 {
            Some(ModeProblem::WorldWritable)
        } else if mode & 0o020 != 0 {
            Some(ModeProblem::GroupWritable)
        } else if mode & 0o077 != 0 {
            Some(ModeProblem::Accessible {
                mode: mode & 0o7777,
            })
        } else {
            None
        }
    }
}

impl fmt::Display for ModeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeProblem::WorldWritable => f.write_str("world-writable"),
            ModeProblem::GroupWritable => f.write_str("group-writable"),
            ModeProblem::Accessible { mode } => {
                write!(f, "accessible to group or others (mode {mode:04o})")
            }
        }
    }
}

/// The fix for a socket directory that is not ours to change.
pub const PRIVATE_DIR_HINT: &str = "put the socket in a private directory instead, e.g. \
    `mkdir -m 700 ~/.credproxy` and --socket ~/.credproxy/proxy.sock, or leave out --socket \
    to use $XDG_RUNTIME_DIR/credproxy";

/// Errors of socket placement, directory checks, token files and binding.
///
/// The `Display` text of each variant is meant for a person: it names the
/// path and, where there is one, the command that fixes the problem. No
/// variant ever carries a capability token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixError {
    /// The directory path is a symbolic link; we never follow one.
    #[error("socket directory {} is a symlink; remove it", path.display())]
    Symlink {
        /// The offending path.
        path: PathBuf,
    },

    /// Something other than a directory is in the directory's place.
    #[error(
        "socket directory {} exists but is not a directory; remove it or choose another location",
        path.display()
    )]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },

    /// The directory belongs to another user. Its mode and owner are not
    /// ours to change (think `/tmp`, `/var/run`), so the fix offered is a
    /// private directory, never `chmod` or `chown`.
    #[error(
        "socket directory {} is owned by uid {owner}, not {expected}; {PRIVATE_DIR_HINT}",
        path.display()
    )]
    WrongOwner {
        /// The offending path.
        path: PathBuf,
        /// The directory's owner.
        owner: u32,
        /// Our effective uid.
        expected: u32,
    },

    /// Our own directory grants group or other permissions (but is not
    /// shared: see [`UnixError::SharedDir`]); `chmod 700` fixes it.
    #[error("socket directory {} is {problem}; fix with chmod 700 {}", path.display(), path.display())]
    TooOpen {
        /// The offending path.
        path: PathBuf,
        /// Which bits are wrong.
        problem: ModeProblem,
    },

    /// The directory is shared with other users: world-writable, or
    /// sticky with group or other bits (like `/tmp`). Changing its mode
    /// would break whoever shares it, so the fix offered is a private
    /// directory, never `chmod`.
    #[error(
        "socket directory {} is {problem}{}, a directory shared with other users; {PRIVATE_DIR_HINT}",
        path.display(),
        if *sticky { " and sticky" } else { "" }
    )]
    SharedDir {
        /// The offending path.
        path: PathBuf,
        /// Which bits are wrong.
        problem: ModeProblem,
        /// Whether the sticky bit is set.
        sticky: bool,
    },

    /// The directory to create has no parent directory; only the last
    /// component is ever created.
    #[error(
        "cannot create socket directory {}: its parent {} does not exist; create it, set XDG_RUNTIME_DIR, or use --socket with a path in an existing directory",
        path.display(),
        parent.display()
    )]
    ParentMissing {
        /// The directory we wanted to create.
        path: PathBuf,
        /// Its missing parent.
        parent: PathBuf,
    },

    /// The socket path does not fit `sun_path` (checked before anything is
    /// created or bound).
    #[error(
        "socket path {} is too long: it needs {len} bytes with its terminating NUL, but a Unix socket address holds at most {max}; set XDG_RUNTIME_DIR to a shorter directory or use --socket with a shorter path",
        path.display()
    )]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes including the terminating NUL.
        len: usize,
        /// The size of `sun_path` on this platform.
        max: usize,
    },

    /// A fixed socket path is held by a live listener.
    #[error("socket {} is in use by a running instance", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },

    /// Something other than a socket is at the fixed socket path; it is
    /// never deleted.
    #[error(
        "{} exists and is not a socket; refusing to replace it: move it away or choose another --socket path",
        path.display()
    )]
    NotASocket {
        /// The offending path.
        path: PathBuf,
    },

    /// A file is where the capability token would go and it does not look
    /// like a token file left by an earlier credproxy run; it is kept.
    #[error(
        "{} already exists and is not a credproxy token file; move it away or choose another --socket path",
        path.display()
    )]
    TokenFileExists {
        /// The offending path.
        path: PathBuf,
    },

    /// The operating system's random number generator failed.
    #[error("cannot read random bytes from the operating system: {error}")]
    Random {
        /// The underlying error.
        error: getrandom::Error,
    },

    /// Any other I/O failure, with what we were doing and on which path.
    #[error("{action} {}: {error}", path.display())]
    Io {
        /// What failed, e.g. "cannot create socket directory".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error (its text is part of this error's message).
        error: io::Error,
    },
}

impl UnixError {
    /// Shorthand for [`UnixError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        error: io::Error,
    ) -> UnixError {
        UnixError::Io {
            action,
            path: path.into(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_problems_are_classified_worst_first() {
        assert_eq!(ModeProblem::of_mode(0o700), None);
        assert_eq!(ModeProblem::of_mode(0o40700), None);
        assert_eq!(
            ModeProblem::of_mode(0o777),
            Some(ModeProblem::WorldWritable)
        );
        assert_eq!(
            ModeProblem::of_mode(0o702),
            Some(ModeProblem::WorldWritable)
        );
        assert_eq!(
            ModeProblem::of_mode(0o770),
            Some(ModeProblem::GroupWritable)
        );
        assert_eq!(
            ModeProblem::of_mode(0o40750),
            Some(ModeProblem::Accessible { mode: 0o750 })
        );
        assert_eq!(
            ModeProblem::Accessible { mode: 0o711 }.to_string(),
            "accessible to group or others (mode 0711)"
        );
    }

    #[test]
    fn messages_carry_the_fix() {
        let path = PathBuf::from("/run/user/1000/credproxy");
        let e = UnixError::TooOpen {
            path: path.clone(),
            problem: ModeProblem::GroupWritable,
        };
        assert_eq!(
            e.to_string(),
            "socket directory /run/user/1000/credproxy is group-writable; fix with chmod 700 /run/user/1000/credproxy"
        );
        let e = UnixError::WrongOwner {
            path: path.clone(),
            owner: 0,
            expected: 1000,
        };
        // (Was "fix with chown 1000 …": not a fix one can make, or should.)
        assert_eq!(
            e.to_string(),
            format!(
                "socket directory /run/user/1000/credproxy is owned by uid 0, not 1000; {PRIVATE_DIR_HINT}"
            )
        );
        let e = UnixError::SharedDir {
            path: PathBuf::from("/tmp"),
            problem: ModeProblem::WorldWritable,
            sticky: true,
        };
        assert_eq!(
            e.to_string(),
            format!(
                "socket directory /tmp is world-writable and sticky, a directory shared with other users; {PRIVATE_DIR_HINT}"
            )
        );
        assert!(!e.to_string().contains("chmod 7"), "{e}");
        let e = UnixError::Symlink { path };
        assert_eq!(
            e.to_string(),
            "socket directory /run/user/1000/credproxy is a symlink; remove it"
        );
    }
}
