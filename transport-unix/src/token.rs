//! Capability token files: 32 random bytes as 64 lowercase hex characters
//! and a newline, in a file created exclusively with mode 0600.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use credproxy_core::Secret;
use nix::libc;

use crate::error::UnixError;

/// Random bytes in a capability token.
const TOKEN_BYTES: usize = 32;
/// Length of a token file: 64 hex characters and a newline.
pub(crate) const TOKEN_FILE_LEN: usize = TOKEN_BYTES * 2 + 1;

/// A fresh capability token: 32 bytes from the OS random generator as 64
/// lowercase hex characters.
pub(crate) fn generate() -> Result<Secret, UnixError> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut raw = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut raw).map_err(|error| UnixError::Random { error })?;
    let mut hex = String::with_capacity(TOKEN_BYTES * 2);
    for byte in raw {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    raw.fill(0);
    Ok(Secret::new(hex))
}

/// Whether `bytes` is exactly a token file: 64 lowercase hex and `\n`.
pub(crate) fn is_token_file_contents(bytes: &[u8]) -> bool {
    bytes.len() == TOKEN_FILE_LEN
        && bytes[TOKEN_FILE_LEN - 1] == b'\n'
        && bytes[..TOKEN_FILE_LEN - 1]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Writes `token` and a newline to a new file at `path` with mode 0600.
///
/// The file is created exclusively (`O_CREAT|O_EXCL`, which also refuses a
/// symlink in its place), set to exactly 0600 whatever the umask, written and
/// synced. On failure the partial file is removed.
pub(crate) fn write_token_file(path: &Path, token: &Secret) -> Result<(), UnixError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| UnixError::io("cannot create capability token file", path, e))?;
    let written = file
        .set_permissions(Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(token.expose().as_bytes()))
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(UnixError::io("cannot write capability token file", path, e));
    }
    Ok(())
}

/// Whether the file at `path` looks like a token file that an earlier
/// credproxy run of ours left behind: a regular file (not a symlink) owned
/// by `euid`, no group or other bits, exactly a token file's contents.
pub(crate) fn is_leftover_token_file(path: &Path, euid: u32) -> io::Result<bool> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_file()
        || meta.uid() != euid
        || meta.mode() & 0o077 != 0
        || meta.len() != TOKEN_FILE_LEN as u64
    {
        return Ok(false);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let mut buf = Vec::with_capacity(TOKEN_FILE_LEN + 1);
    file.take(TOKEN_FILE_LEN as u64 + 1).read_to_end(&mut buf)?;
    let ours = is_token_file_contents(&buf);
    buf.fill(0);
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_64_lowercase_hex() {
        let t = generate().expect("token");
        assert_eq!(t.expose().len(), 64);
        assert!(
            t.expose()
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_ne!(generate().expect("token").expose(), t.expose());
        assert_eq!(format!("{t:?}"), "[redacted]");
    }

    #[test]
    fn token_file_contents_are_exact() {
        let good = format!("{}\n", "0123456789abcdef".repeat(4));
        assert!(is_token_file_contents(good.as_bytes()));
        assert!(!is_token_file_contents(good.trim_end().as_bytes()));
        assert!(!is_token_file_contents(format!("{good}\n").as_bytes()));
        assert!(!is_token_file_contents(good.to_uppercase().as_bytes()));
        assert!(!is_token_file_contents(good.replace('\n', "\r").as_bytes()));
        assert!(!is_token_file_contents(b""));
    }
}
