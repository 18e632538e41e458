//! Where the client gets its capability token.
//!
//! Two channels reach a sandboxed process: a file (`CREDPROXY_CAPABILITY_FILE`,
//! the `token` file of the proxy's instance directory, mounted into the
//! container) and an inherited file descriptor (`LLXPRT_CAPABILITY_FD`, as
//! the existing llxprt-code entrypoint provides it). The token's content is
//! checked before it is used, and no error ever repeats what was read.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use credproxy_core::Secret;

/// Environment variable naming a capability token file.
pub const CAPABILITY_FILE_ENV: &str = "CREDPROXY_CAPABILITY_FILE";
/// Environment variable naming an inherited file descriptor that holds the
/// capability token.
pub const CAPABILITY_FD_ENV: &str = "LLXPRT_CAPABILITY_FD";

/// Hex characters in a capability token.
const TOKEN_HEX_LEN: usize = 64;
/// Bytes read at most: a token, its newline and one more byte to detect
/// trailing garbage.
const READ_LIMIT: u64 = TOKEN_HEX_LEN as u64 + 2;

/// Where the capability token comes from.
///
/// The `Debug` output never shows a token (a [`Secret`] prints
/// `[redacted]`).
#[derive(Debug, Clone, Default)]
pub enum CapabilitySource {
    /// No token: only a proxy started with `--insecure-no-token` accepts the
    /// connection.
    #[default]
    None,
    /// A token already in hand, used as is.
    Token(Secret),
    /// A file holding exactly 64 lowercase hex characters, optionally
    /// followed by one newline (the proxy's `token` file).
    File(PathBuf),
    /// An inherited file descriptor holding exactly 64 lowercase hex
    /// characters and a newline (`^[0-9a-f]{64}\n$`). It is read to its end
    /// (at most 66 bytes) through a duplicate; the descriptor itself is left
    /// open. The read is synchronous and waits for end of file, so the
    /// writer of a pipe must have closed it. A pipe can be read only once:
    /// resolve this source once and keep the [`Secret`] if you need more
    /// than one client.
    Fd(RawFd),
}

impl CapabilitySource {
    /// The source named by the environment: [`CAPABILITY_FILE_ENV`] if set
    /// and non-empty, else [`CAPABILITY_FD_ENV`] if set and non-empty, else
    /// [`CapabilitySource::None`]. Nothing is read yet.
    ///
    /// # Errors
    ///
    /// [`CapabilityError::InvalidFdVar`] when `LLXPRT_CAPABILITY_FD` is not
    /// a non-negative integer.
    pub fn from_env() -> Result<CapabilitySource, CapabilityError> {
        CapabilitySource::from_lookup(|name| std::env::var_os(name))
    }

    /// Like [`CapabilitySource::from_env`], with variables looked up by
    /// `lookup` (for tests and for embedders with their own environment).
    ///
    /// # Errors
    ///
    /// As [`CapabilitySource::from_env`].
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<CapabilitySource, CapabilityError> {
        if let Some(path) = lookup(CAPABILITY_FILE_ENV).filter(|v| !v.is_empty()) {
            return Ok(CapabilitySource::File(PathBuf::from(path)));
        }
        match lookup(CAPABILITY_FD_ENV).filter(|v| !v.is_empty()) {
            None => Ok(CapabilitySource::None),
            Some(value) => value
                .to_str()
                .and_then(|s| s.parse::<RawFd>().ok())
                .filter(|fd| *fd >= 0)
                .map(CapabilitySource::Fd)
                .ok_or(CapabilityError::InvalidFdVar),
        }
    }

    /// Reads and checks the token.
    ///
    /// [`CapabilitySource::Token`] is returned as is; files and descriptors
    /// are read and their content checked. The buffers that held the token
    /// are zeroed before they are freed.
    ///
    /// # Errors
    ///
    /// [`CapabilityError::ReadFile`] / [`CapabilityError::ReadFd`] when the
    /// source cannot be read, [`CapabilityError::Malformed`] when its content
    /// is not a token (the content is not part of the error).
    pub fn resolve(&self) -> Result<Option<Secret>, CapabilityError> {
        match self {
            CapabilitySource::None => Ok(None),
            CapabilitySource::Token(token) => Ok(Some(token.clone())),
            CapabilitySource::File(path) => read_file(path).map(Some),
            CapabilitySource::Fd(fd) => read_fd(*fd).map(Some),
        }
    }
}

/// Where a malformed token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// A token file.
    File(PathBuf),
    /// An inherited file descriptor.
    Fd(RawFd),
}

impl fmt::Display for TokenOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenOrigin::File(path) => write!(f, "file {}", path.display()),
            TokenOrigin::Fd(fd) => write!(f, "file descriptor {fd}"),
        }
    }
}

/// Why no capability token could be obtained. No variant carries what was
/// read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CapabilityError {
    /// The token file could not be opened or read.
    #[error("cannot read the capability token file {}: {error}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// The descriptor is not open or could not be read.
    #[error(
        "cannot read the capability token from file descriptor {fd} ({CAPABILITY_FD_ENV}): {error}"
    )]
    ReadFd {
        /// The descriptor number.
        fd: RawFd,
        /// The underlying error.
        error: io::Error,
    },
    /// `LLXPRT_CAPABILITY_FD` is not a descriptor number.
    #[error("{CAPABILITY_FD_ENV} must be a non-negative file descriptor number")]
    InvalidFdVar,
    /// The content is not a capability token.
    #[error(
        "the capability token in {origin} is malformed: expected exactly 64 lowercase hexadecimal characters {}",
        expected_suffix(origin)
    )]
    Malformed {
        /// Where it was read.
        origin: TokenOrigin,
    },
}

fn expected_suffix(origin: &TokenOrigin) -> &'static str {
    match origin {
        TokenOrigin::File(_) => "and an optional newline",
        TokenOrigin::Fd(_) => "and a newline",
    }
}

fn is_token_hex(bytes: &[u8]) -> bool {
    bytes.len() == TOKEN_HEX_LEN && bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks `buf` (zeroed afterwards in every case) and returns the token.
fn check(
    mut buf: Vec<u8>,
    newline_required: bool,
    origin: TokenOrigin,
) -> Result<Secret, CapabilityError> {
    let hex = match buf.split_last() {
        Some((b'\n', hex)) => Some(hex),
        Some(_) if !newline_required => Some(&buf[..]),
        _ => None,
    };
    let token = hex
        .filter(|hex| is_token_hex(hex))
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .map(Secret::new);
    buf.fill(0);
    token.ok_or(CapabilityError::Malformed { origin })
}

fn read_limited(source: impl Read) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(READ_LIMIT as usize);
    let result = source.take(READ_LIMIT).read_to_end(&mut buf);
    match result {
        Ok(_) => Ok(buf),
        Err(e) => {
            buf.fill(0);
            Err(e)
        }
    }
}

fn read_file(path: &Path) -> Result<Secret, CapabilityError> {
    let error = |error| CapabilityError::ReadFile {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(error)?;
    let buf = read_limited(file).map_err(error)?;
    check(buf, false, TokenOrigin::File(path.to_path_buf()))
}

fn read_fd(fd: RawFd) -> Result<Secret, CapabilityError> {
    let error = |error| CapabilityError::ReadFd { fd, error };
    if fd < 0 {
        return Err(error(io::Error::from_raw_os_error(nix::libc::EBADF)));
    }
    // SAFETY: `fcntl(F_GETFD)` only queries descriptor flags; it touches no
    // memory and fails with EBADF for a descriptor that is not open.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
        return Err(error(io::Error::last_os_error()));
    }
    // SAFETY: the descriptor was just checked to be open, and it was handed
    // to this process (by `LLXPRT_CAPABILITY_FD` or the caller) to read the
    // token from. It is only borrowed for the `dup` below; the duplicate is
    // what we read and close, the original stays open and untouched.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().map_err(error)?;
    let buf = read_limited(File::from(owned)).map_err(error)?;
    check(buf, true, TokenOrigin::Fd(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn origin() -> TokenOrigin {
        TokenOrigin::Fd(3)
    }

    #[test]
    fn content_rules() {
        let with_nl = format!("{HEX}\n").into_bytes();
        assert_eq!(
            check(with_nl.clone(), true, origin()).unwrap().expose(),
            HEX
        );
        assert_eq!(check(with_nl, false, origin()).unwrap().expose(), HEX);
        assert_eq!(
            check(HEX.as_bytes().to_vec(), false, origin())
                .unwrap()
                .expose(),
            HEX
        );
        assert!(check(HEX.as_bytes().to_vec(), true, origin()).is_err());
        for bad in [
            format!("{HEX}\n\n"),
            format!("{HEX}\r\n"),
            HEX.to_uppercase(),
            HEX[1..].to_owned(),
            format!("{HEX}0"),
            format!(" {HEX}"),
            String::new(),
            "\n".to_owned(),
        ] {
            assert!(
                check(bad.clone().into_bytes(), false, origin()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lookup_precedence() {
        let vars = |file: Option<&str>, fd: Option<&str>| {
            let (file, fd) = (file.map(OsString::from), fd.map(OsString::from));
            move |name: &str| match name {
                CAPABILITY_FILE_ENV => file.clone(),
                CAPABILITY_FD_ENV => fd.clone(),
                _ => None,
            }
        };
        assert!(matches!(
            CapabilitySource::from_lookup(vars(Some("/t"), Some("3"))),
            Ok(CapabilitySource::File(p)) if p == Path::new("/t")
        ));
        assert!(matches!(
            CapabilitySource::from_lookup(vars(Some(""), Some("3"))),
            Ok(CapabilitySource::Fd(3))
        ));
        assert!(matches!(
            CapabilitySource::from_lookup(vars(None, Some(""))),
            Ok(CapabilitySource::None)
        ));
        for bad in ["x", "-1", "3.0", " 3"] {
            assert!(matches!(
                CapabilitySource::from_lookup(vars(None, Some(bad))),
                Err(CapabilityError::InvalidFdVar)
            ));
        }
    }
}
