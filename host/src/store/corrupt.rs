//! Keeping a corrupt token file when a write replaces it.
//!
//! A token file that does not parse used to make every write of its key
//! fail (`INTERNAL_ERROR`), so the only way out was deleting it by hand.
//! Now a write replaces it, and the damaged bytes are kept for inspection
//! as `.corrupt-<unix-time>-<name>` next to it: a hard link to the old
//! inode, so it is atomic, costs no copy and keeps the file's 0600 mode.
//! The name starts with a dot (never listed: it does not decode as a key),
//! and not with `.tmp-` (never taken for a temp file and removed).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::StoreError;
use super::read;

/// Prefix of kept corrupt files.
pub const CORRUPT_PREFIX: &str = ".corrupt-";

/// What a token write replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// No file, or a valid one.
    Nothing,
    /// A corrupt file, now kept at this path.
    Corrupt {
        /// The file that was corrupt (now holding the new token).
        path: PathBuf,
        /// Where its old bytes are kept.
        kept: PathBuf,
    },
}

/// If `dir/name` exists and `valid` says its bytes are not a token (a
/// JSON object that does not parse, or for an encrypted store an envelope
/// that does not open), or it is larger than `cap`, links it to a fresh
/// `.corrupt-…` name. Other problems (absent, a symlink, wrong mode) are
/// left to the write itself, as before.
pub fn keep_if_corrupt(
    dir: &Path,
    name: &str,
    cap: u64,
    valid: impl FnOnce(Vec<u8>) -> bool,
) -> Result<Replaced, StoreError> {
    let path = dir.join(name);
    let corrupt = match read::read_private(&path, cap) {
        Ok(Some(contents)) => !valid(contents.bytes),
        Err(StoreError::Corrupt { .. }) => true,
        Ok(None) | Err(_) => false,
    };
    if !corrupt {
        return Ok(Replaced::Nothing);
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for n in 0u32..100 {
        let kept = if n == 0 {
            dir.join(format!("{CORRUPT_PREFIX}{secs}-{name}"))
        } else {
            dir.join(format!("{CORRUPT_PREFIX}{secs}.{n}-{name}"))
        };
        match fs::hard_link(&path, &kept) {
            Ok(()) => return Ok(Replaced::Corrupt { path, kept }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io("keep a copy of", &path, e)),
        }
    }
    Err(StoreError::io(
        "keep a copy of",
        &path,
        io::Error::other("too many kept copies this second"),
    ))
}
