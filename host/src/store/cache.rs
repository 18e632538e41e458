//! The in-memory token cache.
//!
//! Serving a token must not cost a file read and a JSON parse each time, but
//! another process (the CLI, a second proxy) may rewrite the file at any
//! moment. So each entry remembers the identity of the file it came from
//! (device, inode, size, mtime in ns) and is only trusted after one lstat
//! shows the same identity. Writes go through temp file + rename, which gives
//! the file a new inode, so even a rewrite within the mtime granularity is
//! seen.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

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

/// A key's entry and its file's path (kept so that a cache hit does not
/// build the name again: hex-encoding, formatting and joining cost more
/// than the rest of the hit).
struct Slot {
    path: Arc<Path>,
    entry: Entry,
}

/// Per-(provider, bucket) cache, shared by all threads of one `FileStore`.
/// Indexed provider first, so a lookup borrows the names instead of
/// building a key; ordered maps, because comparing a few short names costs
/// less than hashing them.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<BTreeMap<String, BTreeMap<String, Slot>>>,
}

impl TokenCache {
    /// The path of a key with an entry: only keys that were read or written
    /// (so already validated) have one.
    pub fn path(&self, provider: &str, bucket: &str) -> Option<Arc<Path>> {
        let entries = self.lock();
        Some(entries.get(provider)?.get(bucket)?.path.clone())
    }

    /// The cached answer for the key if it is still valid for `current`
    /// (the file's identity now, `None` if the file is absent); `None` when
    /// the file must be read.
    pub fn lookup(
        &self,
        provider: &str,
        bucket: &str,
        current: Option<FileId>,
    ) -> Option<Option<Token>> {
        let entries = self.lock();
        match (&entries.get(provider)?.get(bucket)?.entry, current) {
            (Entry::Present(token, id), Some(now)) if *id == now => Some(Some(token.clone())),
            (Entry::Absent, None) => Some(None),
            _ => None,
        }
    }

    /// Records that the key's file at `path`, with identity `id`, holds
    /// `token`.
    pub fn set_present(&self, provider: &str, bucket: &str, path: &Path, token: Token, id: FileId) {
        self.set(provider, bucket, path, Entry::Present(token, id));
    }

    /// Records that the key has no file at `path`.
    pub fn set_absent(&self, provider: &str, bucket: &str, path: &Path) {
        self.set(provider, bucket, path, Entry::Absent);
    }

    /// Forgets the key (the next read goes to the file).
    pub fn forget(&self, provider: &str, bucket: &str) {
        let mut entries = self.lock();
        if let Some(buckets) = entries.get_mut(provider) {
            buckets.remove(bucket);
            if buckets.is_empty() {
                entries.remove(provider);
            }
        }
    }

    fn set(&self, provider: &str, bucket: &str, path: &Path, entry: Entry) {
        let mut entries = self.lock();
        let buckets = entries.entry(provider.to_owned()).or_default();
        match buckets.get_mut(bucket) {
            Some(slot) if *slot.path == *path => slot.entry = entry,
            _ => {
                buckets.insert(
                    bucket.to_owned(),
                    Slot {
                        path: Arc::from(path),
                        entry,
                    },
                );
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<String, Slot>>> {
        // A panic while holding the lock cannot leave an entry half-written
        // (inserts are single calls), and every entry is revalidated anyway.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
