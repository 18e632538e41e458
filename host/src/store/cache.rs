//! The in-memory token cache.
//!
//! Serving a token must not cost a file read and a JSON parse each time, but
//! another process (the CLI, a second proxy) may rewrite the file at any
//! moment. So each entry remembers the identity of the file it came from
//! (device, inode, size, mtime in ns) and is only trusted after one lstat
//! shows the same identity. Writes go through temp file + rename, which gives
//! the file a new inode, so even a rewrite within the mtime granularity is
//! seen.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, MutexGuard};

use credproxy_core::Token;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// What we last saw for a key.
enum Entry {
    /// The file held `Token` when it had identity `FileId`.
    Present(Token, FileId),
    /// The file did not exist.
    Absent,
}

/// Per-(provider, bucket) cache, shared by all threads of one `FileStore`.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl TokenCache {
    /// The cached answer for `key` if it is still valid for `current` (the
    /// file's identity now, `None` if the file is absent); `None` when the
    /// file must be read.
    pub fn lookup(&self, key: &(String, String), current: Option<FileId>) -> Option<Option<Token>> {
        match (self.lock().get(key)?, current) {
            (Entry::Present(token, id), Some(now)) if *id == now => Some(Some(token.clone())),
            (Entry::Absent, None) => Some(None),
            _ => None,
        }
    }

    /// Records that `key`'s file with identity `id` holds `token`.
    pub fn set_present(&self, key: (String, String), token: Token, id: FileId) {
        self.lock().insert(key, Entry::Present(token, id));
    }

    /// Records that `key` has no file.
    pub fn set_absent(&self, key: (String, String)) {
        self.lock().insert(key, Entry::Absent);
    }

    /// Forgets `key` (the next read goes to the file).
    pub fn forget(&self, key: &(String, String)) {
        self.lock().remove(key);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Entry>> {
        // A panic while holding the lock cannot leave an entry half-written
        // (inserts are single calls), and every entry is revalidated anyway.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
