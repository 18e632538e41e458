//! The hot-path token cache of the postgres backend.
//!
//! Serving a token must never wait for the network (it runs inline on an
//! I/O thread), so cached entries are served from memory only:
//! `(provider, bucket) → (version, token, when read)`. Another proxy's
//! write drops the entry through LISTEN/NOTIFY ([`super::listener`] calls
//! [`TokenCache::invalidate`] with the notified version); a notification
//! can be lost (the listener's connection dropped), so an entry older than
//! the staleness bound is not served and the caller goes through a read
//! that checks the version. On a listener (re)connect the whole cache is
//! dropped ([`TokenCache::clear`]).
//!
//! An entry only ever moves forward: a put older than the entry it would
//! replace is ignored, so a slow reader cannot reinstate an old token. An
//! invalidation leaves a marker at the notified version (never served) for
//! the same reason: a read that fetched the old row just before another
//! proxy's write, and is slower than that write's notification, would
//! otherwise cache the old token after it was invalidated. Likewise a read
//! or write that started before a [`TokenCache::clear`] (the listener
//! reconnected: notifications may have been lost) is not cached after it:
//! a put carries the [`Epoch`] taken before its database round trip.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use credproxy_core::Token;

use super::lock;

struct Entry {
    version: i64,
    /// `None`: a marker left by [`TokenCache::invalidate`], never served.
    token: Option<Option<Token>>,
    at: Instant,
}

/// How many clears the cache has seen: taken before a database round trip,
/// it tells [`TokenCache::put`] whether the result may predate a clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

struct Inner {
    entries: HashMap<(String, String), Entry>,
    epoch: u64,
}

/// See the module documentation.
pub struct TokenCache {
    inner: Mutex<Inner>,
    max_age: Duration,
}

impl TokenCache {
    /// An empty cache serving entries younger than `max_age`.
    #[must_use]
    pub fn new(max_age: Duration) -> TokenCache {
        TokenCache {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                epoch: 0,
            }),
            max_age,
        }
    }

    /// The current epoch; take it before reading or writing the row whose
    /// result is then [`TokenCache::put`].
    pub fn epoch(&self) -> Epoch {
        Epoch(lock(&self.inner).epoch)
    }

    /// The cached token: `Some(None)` for a known deleted row, `None` when
    /// there is no entry young enough (read from the database then).
    /// Memory only; the lock is held for a map lookup and a clone.
    pub fn get(&self, provider: &str, bucket: &str) -> Option<Option<Token>> {
        let inner = lock(&self.inner);
        let e = inner
            .entries
            .get(&(provider.to_owned(), bucket.to_owned()))?;
        let token = e.token.as_ref()?;
        (e.at.elapsed() < self.max_age).then(|| token.clone())
    }

    /// The cached token whatever its age (never a marker): what is served
    /// while the database cannot be reached. Nobody can write then, so
    /// the last value read is still the current one, unless a write landed
    /// just before the outage and its notification was lost — the risk the
    /// staleness bound normally limits, taken only to keep serving.
    pub fn get_during_outage(&self, provider: &str, bucket: &str) -> Option<Option<Token>> {
        let inner = lock(&self.inner);
        let e = inner
            .entries
            .get(&(provider.to_owned(), bucket.to_owned()))?;
        e.token.clone()
    }

    /// Records `token` read or written at `version` by an operation that
    /// started at `since`, unless the entry is already newer or the cache
    /// was cleared meanwhile.
    pub fn put(
        &self,
        since: Epoch,
        provider: &str,
        bucket: &str,
        version: i64,
        token: Option<Token>,
    ) {
        let mut inner = lock(&self.inner);
        if inner.epoch != since.0 {
            return;
        }
        let key = (provider.to_owned(), bucket.to_owned());
        if inner.entries.get(&key).is_some_and(|e| e.version > version) {
            return;
        }
        inner.entries.insert(
            key,
            Entry {
                version,
                token: Some(token),
                at: Instant::now(),
            },
        );
    }

    /// Drops the entry unless it is at `version` or newer (a notification
    /// of another proxy's write; our own writes are already cached at their
    /// version), leaving a marker so that a put older than `version` is
    /// ignored.
    pub fn invalidate(&self, provider: &str, bucket: &str, version: i64) {
        let mut inner = lock(&self.inner);
        let key = (provider.to_owned(), bucket.to_owned());
        if inner
            .entries
            .get(&key)
            .is_some_and(|e| e.version >= version)
        {
            return;
        }
        inner.entries.insert(
            key,
            Entry {
                version,
                token: None,
                at: Instant::now(),
            },
        );
    }

    /// Drops every entry, and makes puts of operations that started before
    /// it no-ops.
    pub fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.entries.clear();
        inner.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(a: &str) -> Token {
        let serde_json::Value::Object(m) = serde_json::json!({ "access_token": a }) else {
            unreachable!()
        };
        Token::from_map(m)
    }

    fn access(c: &TokenCache) -> Option<Option<String>> {
        c.get("p", "b")
            .map(|t| t.map(|t| t.as_map()["access_token"].as_str().unwrap().to_owned()))
    }

    #[test]
    fn serves_moves_forward_and_invalidates_older_entries() {
        let c = TokenCache::new(Duration::from_secs(3600));
        assert_eq!(access(&c), None);
        c.put(c.epoch(), "p", "b", 2, Some(token("v2")));
        assert_eq!(access(&c), Some(Some("v2".to_owned())));
        c.put(c.epoch(), "p", "b", 1, Some(token("v1")));
        assert_eq!(access(&c), Some(Some("v2".to_owned())), "older put ignored");
        c.invalidate("p", "b", 2);
        assert_eq!(access(&c), Some(Some("v2".to_owned())), "same version kept");
        c.invalidate("p", "b", 3);
        assert_eq!(access(&c), None);
        c.put(c.epoch(), "p", "b", 4, None);
        assert_eq!(access(&c), Some(None), "tombstone cached");
        c.put(c.epoch(), "p", "b", 3, Some(token("v3")));
        assert_eq!(access(&c), Some(None), "older than the tombstone");
        c.clear();
        assert_eq!(access(&c), None);
    }

    #[test]
    fn a_read_older_than_an_invalidation_is_not_cached() {
        let c = TokenCache::new(Duration::from_secs(3600));
        // The notification of version 5 overtook a read of version 4.
        c.invalidate("p", "b", 5);
        c.put(c.epoch(), "p", "b", 4, Some(token("v4")));
        assert_eq!(access(&c), None);
        c.put(c.epoch(), "p", "b", 5, Some(token("v5")));
        assert_eq!(access(&c), Some(Some("v5".to_owned())));
        c.invalidate("p", "b", 4);
        assert_eq!(
            access(&c),
            Some(Some("v5".to_owned())),
            "older notice ignored"
        );
    }

    #[test]
    fn a_result_from_before_a_clear_is_not_cached() {
        let c = TokenCache::new(Duration::from_secs(3600));
        let before = c.epoch();
        c.clear();
        c.put(before, "p", "b", 1, Some(token("v1")));
        assert_eq!(access(&c), None);
        c.put(c.epoch(), "p", "b", 1, Some(token("v1")));
        assert_eq!(access(&c), Some(Some("v1".to_owned())));
    }

    #[test]
    fn stale_entries_are_not_served_except_during_an_outage() {
        let c = TokenCache::new(Duration::ZERO);
        c.put(c.epoch(), "p", "b", 1, Some(token("v1")));
        assert_eq!(access(&c), None);
        let outage = c.get_during_outage("p", "b").map(|t| t.is_some());
        assert_eq!(outage, Some(true));
        c.invalidate("p", "b", 2);
        assert!(
            c.get_during_outage("p", "b").is_none(),
            "a marker is never served"
        );
    }
}
