//! Token rows: sealed before they reach the database, compare-and-set on
//! the row version.
//!
//! A row is `(provider, bucket, version, ciphertext)`. The ciphertext is a
//! store envelope ([`envelope`]) whose associated data binds the kind
//! (`token`), the provider, the bucket and the version, so a ciphertext
//! copied onto another row, or onto the same row under another version,
//! fails authentication. A row rolled back whole (an old version with its
//! old ciphertext, which authenticates) is refused when its version is
//! below one this store has already seen for it.
//!
//! Every write notifies the other proxies in its own statement
//! ([`super::listener`]), so their caches drop the older token.
//!
//! Versions only grow: a delete leaves a tombstone (no ciphertext, next
//! version) instead of removing the row, so a re-created token never
//! reuses a version an older ciphertext was sealed under.

use credproxy_core::Token;
use postgres::Client;
use zeroize::Zeroizing;

use super::super::envelope::{self, Kind};
use super::super::error::{NameKind, StoreError};
use super::super::names::check_key_part;
use super::listener::NOTIFY_WRITTEN;
use super::{PgStore, lock};

/// A token and the row version it was read at.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The row version (the `expected` of the next [`PgStore::put_token_cas`]).
    pub version: i64,
    /// The token; `None` for a deleted (tombstone) row.
    pub token: Option<Token>,
}

/// The outcome of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Written at this new version.
    Written(i64),
    /// Refused: the row is not at the expected version (another writer won;
    /// re-read, merge, retry). `current` is its version, 0 if no row.
    Stale {
        /// The row's version now.
        current: i64,
    },
}

fn parts<'a>(provider: &'a str, bucket: &'a str, version: &'a str) -> [&'a str; 3] {
    [provider, bucket, version]
}

impl PgStore {
    /// Reads the token row of `provider`/`bucket`; `None` if there is none.
    ///
    /// # Errors
    ///
    /// The database cannot be reached ([`StoreError::Database`]), or the row
    /// fails authentication or is older than a version already seen
    /// ([`StoreError::RowRefused`]; never served).
    pub fn read_token(
        &self,
        provider: &str,
        bucket: &str,
    ) -> Result<Option<Versioned>, StoreError> {
        check_names(provider, bucket)?;
        let epoch = self.cache.epoch();
        let row = self.with_client("read a token", |c: &mut Client| {
            c.query_opt(
                "SELECT version, ciphertext FROM credproxy_tokens \
                 WHERE provider = $1 AND bucket = $2",
                &[&provider, &bucket],
            )
        })?;
        let Some(row) = row else {
            self.cache.put(epoch, provider, bucket, 0, None);
            return Ok(None);
        };
        let version: i64 = row.get(0);
        let sealed: Option<Vec<u8>> = row.get(1);
        let refused = |detail: String| StoreError::RowRefused {
            what: "token",
            provider: provider.to_owned(),
            bucket: bucket.to_owned(),
            detail,
        };
        let seen = lock(&self.seen)
            .get(&(provider.to_owned(), bucket.to_owned()))
            .copied();
        if let Some(seen) = seen
            && version < seen
        {
            return Err(refused(format!(
                "its version {version} is older than version {seen} already read \
                 (rolled back?)"
            )));
        }
        let token = match sealed {
            None => None,
            Some(sealed) => {
                let v = version.to_string();
                let plain = envelope::open(
                    &self.key,
                    Kind::Token,
                    &parts(provider, bucket, &v),
                    &sealed,
                )
                .map_err(|e| refused(e.to_string()))?;
                let token: Token = serde_json::from_slice(&plain).map_err(|e| {
                    refused(format!(
                        "sealed JSON invalid at line {} column {}",
                        e.line(),
                        e.column()
                    ))
                })?;
                Some(token)
            }
        };
        self.saw(provider, bucket, version);
        self.cache
            .put(epoch, provider, bucket, version, token.clone());
        Ok(Some(Versioned { version, token }))
    }

    /// Writes `token` if the row is at version `expected` (0: no row yet).
    /// `None` writes a tombstone (a delete). Never overwrites a newer row.
    ///
    /// # Errors
    ///
    /// The database cannot be reached, or sealing failed.
    pub fn put_token_cas(
        &self,
        provider: &str,
        bucket: &str,
        expected: i64,
        token: Option<&Token>,
    ) -> Result<Cas, StoreError> {
        check_names(provider, bucket)?;
        let next = expected + 1;
        let sealed = match token {
            None => None,
            Some(t) => {
                let plain =
                    Zeroizing::new(serde_json::to_vec(t).map_err(|_| StoreError::Database {
                        op: "serialize a token",
                        detail: "cannot serialize value".to_owned(),
                    })?);
                let v = next.to_string();
                Some(
                    envelope::seal(&self.key, Kind::Token, &parts(provider, bucket, &v), &plain)
                        .map_err(|e| db_error_io("seal a token", &e))?,
                )
            }
        };
        // The write and its notification are one statement, hence one
        // transaction: other proxies are told exactly when it committed.
        let epoch = self.cache.epoch();
        let written = self.with_client("write a token", |c: &mut Client| {
            let rows = if expected == 0 {
                c.query(
                    &format!(
                        "WITH w AS (INSERT INTO credproxy_tokens \
                         (provider, bucket, version, ciphertext) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (provider, bucket) DO NOTHING \
                         RETURNING provider, bucket, version) {NOTIFY_WRITTEN}"
                    ),
                    &[&provider, &bucket, &next, &sealed],
                )
            } else {
                c.query(
                    &format!(
                        "WITH w AS (UPDATE credproxy_tokens \
                         SET version = $3, ciphertext = $4, updated_at = now() \
                         WHERE provider = $1 AND bucket = $2 AND version = $5 \
                         RETURNING provider, bucket, version) {NOTIFY_WRITTEN}"
                    ),
                    &[&provider, &bucket, &next, &sealed, &expected],
                )
            }?;
            Ok(rows.len())
        })?;
        if written == 1 {
            self.saw(provider, bucket, next);
            self.cache
                .put(epoch, provider, bucket, next, token.cloned());
            return Ok(Cas::Written(next));
        }
        let current = self.with_client("read a token version", |c: &mut Client| {
            c.query_opt(
                "SELECT version FROM credproxy_tokens WHERE provider = $1 AND bucket = $2",
                &[&provider, &bucket],
            )
        })?;
        Ok(Cas::Stale {
            current: current.map_or(0, |r| r.get(0)),
        })
    }

    fn saw(&self, provider: &str, bucket: &str, version: i64) {
        let mut seen = lock(&self.seen);
        let v = seen
            .entry((provider.to_owned(), bucket.to_owned()))
            .or_insert(version);
        *v = (*v).max(version);
    }
}

fn db_error_io(op: &'static str, e: &std::io::Error) -> StoreError {
    StoreError::Database {
        op,
        detail: e.to_string(),
    }
}

/// The file store's name rules, so a store migrates both ways.
pub(super) fn check_names(provider: &str, bucket: &str) -> Result<(), StoreError> {
    check_key_part(NameKind::Provider, provider)?;
    check_key_part(NameKind::Bucket, bucket)
}
