//! The store locks the engine holds (effects `LockAcquire` / `LockRelease`).
//!
//! The engine serializes writes to a key in memory and, across processes,
//! takes the key's store lock (an `flock` on the key's lock file, see
//! [`Store::lock_key`]). Between the `Locked(true)` result and the
//! matching `LockRelease` the [`KeyLock`] guard has to live somewhere: here,
//! in a map keyed by (provider, bucket) shared by the driver and the
//! blocking pool.
//!
//! Ordering: an acquire waits on the blocking pool, but a release only drops
//! a guard (`flock(LOCK_UN)` and `close`, which never wait), so the driver
//! performs it inline, in the order the engine emitted it. A release can
//! therefore never overtake the acquire it belongs to, nor be overtaken by
//! the next acquire of the same key.
//!
//! [`Locks::shutdown`] drops every guard and makes acquisitions that finish
//! afterwards release their lock at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use credproxy_core::EffectResult;

use crate::effects::store_error_result;
use crate::store::{KeyLock, Store, StoreError};

#[derive(Debug, Default)]
struct Held {
    guards: BTreeMap<(String, String), KeyLock>,
    closed: bool,
}

/// The held store locks. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Locks {
    inner: Arc<Mutex<Held>>,
}

impl Locks {
    /// No lock held.
    #[must_use]
    pub fn new() -> Locks {
        Locks::default()
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // A panic while holding the mutex cannot leave the map inconsistent
        // (single insert/remove): keep going with it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the store lock of `provider`/`bucket`, waiting at most `wait`
    /// (blocks: run it on the blocking pool). `Locked(true)` keeps the
    /// guard until [`Locks::release`]; `Locked(false)` when another holder
    /// kept it for the whole wait; `Unavailable` (logged) when the store
    /// cannot be reached (the PostgreSQL lease), so the request answers
    /// `STORE_UNAVAILABLE` with when to retry; `Failed` (logged) on any
    /// other store error.
    #[must_use]
    pub fn acquire(
        &self,
        store: &Store,
        provider: &str,
        bucket: &str,
        wait: Duration,
    ) -> EffectResult {
        let guard = match store.lock_key(provider, bucket, wait) {
            Ok(Some(guard)) => guard,
            Ok(None) => return EffectResult::Locked(false),
            Err(e) => return lock_error_result(&e),
        };
        let mut held = self.held();
        if held.closed {
            // Shutting down: nobody will release it.
            return EffectResult::Locked(false);
        }
        // A guard already there would mean two holders of one key; the
        // engine never asks for that. The old guard is dropped (unlocked)
        // only after the new flock succeeded, so nothing is lost.
        held.guards
            .insert((provider.to_owned(), bucket.to_owned()), guard);
        EffectResult::Locked(true)
    }

    /// Releases the lock of `provider`/`bucket` if held (never blocks).
    pub fn release(&self, provider: &str, bucket: &str) {
        let guard = self
            .held()
            .guards
            .remove(&(provider.to_owned(), bucket.to_owned()));
        drop(guard);
    }

    /// Whether the lock of `provider`/`bucket` is held.
    #[must_use]
    pub fn is_held(&self, provider: &str, bucket: &str) -> bool {
        self.held()
            .guards
            .contains_key(&(provider.to_owned(), bucket.to_owned()))
    }

    /// Number of locks held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.held().guards.len()
    }

    /// Whether no lock is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Releases every lock; later acquisitions release theirs at once.
    pub fn shutdown(&self) {
        let guards = {
            let mut held = self.held();
            held.closed = true;
            std::mem::take(&mut held.guards)
        };
        drop(guards);
    }
}

/// The result of an acquisition that failed with `error` (logged): only
/// an unreachable store is told apart (the lease of the PostgreSQL store);
/// a lock has no write to refuse, so anything else is `Failed`.
fn lock_error_result(error: &StoreError) -> EffectResult {
    match store_error_result(error) {
        unavailable @ EffectResult::Unavailable { .. } => unavailable,
        _ => EffectResult::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::FileStore;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::from(FileStore::open(&dir.path().join("store")).unwrap());
        (dir, store)
    }

    #[test]
    fn acquire_release_and_shutdown() {
        let (dir, store) = store();
        let other = FileStore::open(&dir.path().join("store")).unwrap();
        let locks = Locks::new();
        assert_eq!(
            locks.acquire(&store, "p", "default", Duration::ZERO),
            EffectResult::Locked(true)
        );
        assert!(locks.is_held("p", "default"));
        // Another open file description (as another process would have)
        // cannot take it while held.
        assert!(
            other
                .lock_key("p", "default", Duration::from_millis(20))
                .unwrap()
                .is_none()
        );
        locks.release("p", "default");
        assert!(locks.is_empty());
        assert!(
            other
                .lock_key("p", "default", Duration::ZERO)
                .unwrap()
                .is_some()
        );

        assert_eq!(
            locks.acquire(&store, "p", "b", Duration::ZERO),
            EffectResult::Locked(true)
        );
        locks.shutdown();
        assert!(locks.is_empty());
        assert!(other.lock_key("p", "b", Duration::ZERO).unwrap().is_some());
        // After shutdown nothing is kept.
        assert_eq!(
            locks.acquire(&store, "p", "c", Duration::ZERO),
            EffectResult::Locked(false)
        );
        assert!(other.lock_key("p", "c", Duration::ZERO).unwrap().is_some());
    }

    #[test]
    fn an_unreachable_lease_is_unavailable() {
        let down = StoreError::Unavailable {
            op: "take the refresh lease",
            detail: "connection refused".into(),
            retry_after: Duration::from_millis(1_500),
        };
        assert_eq!(
            lock_error_result(&down),
            EffectResult::Unavailable {
                retry_after_ms: 1_500
            }
        );
        let stale = StoreError::Stale {
            provider: "p".into(),
            bucket: "default".into(),
        };
        assert_eq!(lock_error_result(&stale), EffectResult::Failed);
    }

    #[test]
    fn bad_names_fail() {
        let (_dir, store) = store();
        assert_eq!(
            Locks::new().acquire(&store, "..", "default", Duration::ZERO),
            EffectResult::Failed
        );
    }
}
