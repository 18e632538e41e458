//! The store's operations, named as [`crate::store::Store`] dispatches
//! them, on top of the versioned rows.
//!
//! The engine writes a key only under its store lock (here a lease), after
//! a fresh read (SPEC §5.3). That read records the row's version; the write
//! is a compare-and-set on it. A write that finds the row moved on was
//! overtaken — this store's lease expired and another proxy took over and
//! wrote — and is refused with [`StoreError::Stale`]: the engine re-reads
//! and merges, and the newer token is never overwritten. A write with no
//! fresh read before it (the CLI's `store migrate`, tests) expects the
//! version it reads just before writing.

use std::time::Duration;

use credproxy_core::{Secret, Token};
use postgres::Client;

use super::super::error::StoreError;
use super::super::{KeyLock, KeyMeta};
use super::tokens::{Cas, check_names};
use super::{PgStore, lock};

fn key_of(provider: &str, bucket: &str) -> (String, String) {
    (provider.to_owned(), bucket.to_owned())
}

impl PgStore {
    /// The token of `provider`/`bucket`: from the cache unless `fresh` (or
    /// no young entry), else from the database; while the database cannot
    /// be reached, a non-fresh read is answered from the cache whatever the
    /// entry's age. A fresh read records the
    /// version the next write of the key expects.
    ///
    /// # Errors
    ///
    /// As [`PgStore::read_token`].
    pub fn get_token(
        &self,
        provider: &str,
        bucket: &str,
        fresh: bool,
    ) -> Result<Option<Token>, StoreError> {
        check_names(provider, bucket)?;
        if !fresh && let Some(hit) = self.cached_token(provider, bucket) {
            return Ok(hit);
        }
        let read = match self.read_token(provider, bucket) {
            // The database is down: what was read last is served (a
            // fresh read, before a write, is never answered from memory).
            Err(StoreError::Unavailable { .. })
                if !fresh && let Some(hit) = self.cache.get_during_outage(provider, bucket) =>
            {
                return Ok(hit);
            }
            other => other?,
        };
        let version = read.as_ref().map_or(0, |r| r.version);
        if fresh {
            lock(&self.fresh).insert(key_of(provider, bucket), version);
        }
        Ok(read.and_then(|r| r.token))
    }

    /// Writes `token` (`None`: deletes it) as a compare-and-set on the
    /// version of the key's last fresh read.
    fn write_token(
        &self,
        provider: &str,
        bucket: &str,
        token: Option<&Token>,
    ) -> Result<(), StoreError> {
        check_names(provider, bucket)?;
        let key = key_of(provider, bucket);
        let recorded = lock(&self.fresh).get(&key).copied();
        let expected = match recorded {
            Some(v) => v,
            None => self.read_token(provider, bucket)?.map_or(0, |r| r.version),
        };
        match self.put_token_cas(provider, bucket, expected, token)? {
            Cas::Written(v) => {
                lock(&self.fresh).insert(key, v);
                Ok(())
            }
            Cas::Stale { .. } => {
                // Overtaken: the next write must follow a new read.
                lock(&self.fresh).remove(&key);
                self.cache.invalidate(provider, bucket, i64::MAX);
                Err(StoreError::Stale {
                    provider: provider.to_owned(),
                    bucket: bucket.to_owned(),
                })
            }
        }
    }

    /// Stores `token` (see [`PgStore::get_token`] for the version rule).
    ///
    /// # Errors
    ///
    /// [`StoreError::Stale`] when the row changed since the fresh read, or
    /// the database cannot be reached.
    pub fn put_token(&self, provider: &str, bucket: &str, token: &Token) -> Result<(), StoreError> {
        self.write_token(provider, bucket, Some(token))
    }

    /// Deletes the token (a tombstone row).
    ///
    /// # Errors
    ///
    /// As [`PgStore::put_token`].
    pub fn delete_token(&self, provider: &str, bucket: &str) -> Result<(), StoreError> {
        self.write_token(provider, bucket, None)
    }

    /// The providers with at least one stored token, sorted.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub fn list_providers(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.with_client("list providers", |c: &mut Client| {
            c.query(
                "SELECT DISTINCT provider FROM credproxy_tokens \
                 WHERE ciphertext IS NOT NULL ORDER BY provider",
                &[],
            )
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The buckets of `provider` with a stored token, sorted.
    ///
    /// # Errors
    ///
    /// An invalid provider name, or the database cannot be reached.
    pub fn list_buckets(&self, provider: &str) -> Result<Vec<String>, StoreError> {
        check_names(provider, "default")?;
        let rows = self.with_client("list buckets", |c: &mut Client| {
            c.query(
                "SELECT bucket FROM credproxy_tokens \
                 WHERE provider = $1 AND ciphertext IS NOT NULL ORDER BY bucket",
                &[&provider],
            )
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Whether the API key `name` is stored (its row is opened, so a
    /// tampered row is reported here too).
    ///
    /// # Errors
    ///
    /// As [`PgStore::read_api_key`].
    pub fn has_api_key(&self, name: &str) -> Result<bool, StoreError> {
        self.read_api_key(name).map(|k| k.is_some())
    }

    /// Takes the key's refresh lease, waiting at most `wait`; `Ok(None)`
    /// if another proxy kept it all that time. The guard releases it when
    /// dropped, without blocking.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub fn lock_key(
        &self,
        provider: &str,
        bucket: &str,
        wait: Duration,
    ) -> Result<Option<KeyLock>, StoreError> {
        Ok(self
            .lease(provider, bucket, wait)?
            .map(|lease| KeyLock::Lease(self.releaser.guard(lease))))
    }

    /// Waits (at most `wait`) until the lease releases queued so far are
    /// done (see `release`).
    pub fn flush_releases(&self, wait: Duration) {
        self.releaser.flush(wait);
    }

    /// See [`PgStore::read_meta`].
    ///
    /// # Errors
    ///
    /// As [`PgStore::read_meta`].
    pub fn get_meta(&self, provider: &str, bucket: &str) -> Result<KeyMeta, StoreError> {
        self.read_meta(provider, bucket)
    }

    /// See [`PgStore::write_meta`].
    ///
    /// # Errors
    ///
    /// As [`PgStore::write_meta`].
    pub fn put_meta(&self, provider: &str, bucket: &str, meta: &KeyMeta) -> Result<(), StoreError> {
        self.write_meta(provider, bucket, meta)
    }

    /// See [`PgStore::read_api_key`].
    ///
    /// # Errors
    ///
    /// As [`PgStore::read_api_key`].
    pub fn get_api_key(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.read_api_key(name)
    }
}
