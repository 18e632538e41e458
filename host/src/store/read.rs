//! Reading a store file safely.
//!
//! Files are opened with `O_NOFOLLOW` (a symlink planted in the store is an
//! error, never followed) and checked on the open descriptor (fstat), so the
//! checks and the read concern the same inode. Sizes are capped: store files
//! are small, and a huge one is damage, not data.

use std::fs::{Metadata, OpenOptions};
use std::io::Read;
use std::path::Path;

use super::dirs;
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
    let opened = dirs::open_private(OpenOptions::new().read(true), path, |e| {
        StoreError::io("open", path, e)
    })?;
    let Some((mut file, meta)) = opened else {
        return Ok(None);
    };
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
