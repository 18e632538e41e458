//! Serialization of writes per token key inside the engine (SPEC §5.3).
//!
//! Every write to a `provider:bucket` key (save, remove, and later refresh
//! and login completion) holds the key while it reads, merges and writes, so
//! two concurrent `save_token`s cannot lose each other's fields. Waiters are
//! served in arrival order.

use std::collections::{BTreeMap, VecDeque};

/// A store key: provider and normalized bucket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Provider name.
    pub provider: String,
    /// Bucket name, `default` when the request named none.
    pub bucket: String,
}

impl Key {
    /// A key from validated names.
    #[must_use]
    pub fn new(provider: impl Into<String>, bucket: impl Into<String>) -> Key {
        Key {
            provider: provider.into(),
            bucket: bucket.into(),
        }
    }
}

/// FIFO write locks per key, holding opaque waiter ids.
#[derive(Debug)]
pub struct KeyLocks<T> {
    queues: BTreeMap<Key, VecDeque<T>>,
}

impl<T> Default for KeyLocks<T> {
    fn default() -> KeyLocks<T> {
        KeyLocks {
            queues: BTreeMap::new(),
        }
    }
}

impl<T: Copy + PartialEq> KeyLocks<T> {
    /// Queues `waiter` on `key`; true when it holds the key at once.
    pub fn acquire(&mut self, key: &Key, waiter: T) -> bool {
        let queue = self.queues.entry(key.clone()).or_default();
        queue.push_back(waiter);
        queue.len() == 1
    }

    /// Releases the key held by `holder`; returns the next holder, if any.
    pub fn release(&mut self, key: &Key, holder: T) -> Option<T> {
        let queue = self.queues.get_mut(key)?;
        if queue.front() != Some(&holder) {
            queue.retain(|w| *w != holder);
            return None;
        }
        queue.pop_front();
        let next = queue.front().copied();
        if queue.is_empty() {
            self.queues.remove(key);
        }
        next
    }

    /// Number of keys with a holder.
    #[must_use]
    pub fn held(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_handover() {
        let k = Key::new("p", "default");
        let mut l = KeyLocks::default();
        assert!(l.acquire(&k, 1));
        assert!(!l.acquire(&k, 2));
        assert!(!l.acquire(&k, 3));
        assert!(l.acquire(&Key::new("p", "other"), 9));
        assert_eq!(l.release(&k, 1), Some(2));
        assert_eq!(l.release(&k, 2), Some(3));
        assert_eq!(l.release(&k, 3), None);
        assert_eq!(l.held(), 1);
    }
}
