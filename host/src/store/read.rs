//! Reading a store file safely.
//!
//! Files are opened with `O_NOFOLLOW` (a symlink planted in the store is an
//! error, never followed) and checked on the open descriptor (fstat), so the
//! checks and the read concern the same inode. Sizes are capped: store files
//! are small, and a huge one is damage, not data.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::dirs::{symlink_file, verify_file};
use super::error::StoreError;

/// A store file's bytes and the metadata of the inode they came from.
pub struct Contents {
    /// The whole file.
    pub bytes: Vec<u8>,
    /// fstat of the descriptor the bytes were read from.
    pub meta: Metadata,
}

/// Reads `path` if it exists: `Ok(None)` when absent; an error when it is a
/// symlink, not private, or larger than `cap` bytes.
pub fn read_private(path: &Path, cap: u64) -> Result<Option<Contents>, StoreError> {
    let Some(mut file) = open_private(path)? else {
        return Ok(None);
    };
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("inspect", path, e))?;
    verify_file(path, &meta)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::io("read", path, e))?;
    if bytes.len() as u64 > cap {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("larger than {cap} bytes"),
        });
    }
    Ok(Some(Contents { bytes, meta }))
}

/// Opens `path` read-only without following a symlink; `Ok(None)` if absent.
fn open_private(path: &Path) -> Result<Option<File>, StoreError> {
    // O_NONBLOCK: a FIFO planted in the store must not hang the open; it is
    // then refused as "not a regular file". No effect on regular files.
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(symlink_file(path)),
        Err(e) => Err(StoreError::io("open", path, e)),
    }
}
