//! Per-key metadata rows: `(provider, bucket, version, ciphertext)`, the
//! sealed JSON of a [`KeyMeta`] (associated data: kind `meta`, provider,
//! bucket, version), kept beside the token row as the file store keeps it
//! beside the token file. Writes are last-writer-wins (they happen under
//! the key's lease) but still seal under the version they land at, so a
//! row copied onto another key fails to open.
//!
//! A metadata row rolled back whole is not detected: it holds no secret,
//! and the worst it can do is let one refresh try a refresh token that
//! was already rejected, which the provider rejects again.

use postgres::Client;

use super::super::KeyMeta;
use super::super::envelope::{self, Kind};
use super::super::error::StoreError;
use super::PgStore;
use super::tokens::check_names;

/// Attempts of a write that keeps losing to other writers.
const MAX_ATTEMPTS: usize = 16;

impl PgStore {
    fn meta_row(&self, provider: &str, bucket: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let row = self.with_client("read key metadata", |c: &mut Client| {
            c.query_opt(
                "SELECT version, ciphertext FROM credproxy_meta \
                 WHERE provider = $1 AND bucket = $2",
                &[&provider, &bucket],
            )
        })?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// The metadata of `provider`/`bucket` (the default when none is
    /// stored).
    ///
    /// # Errors
    ///
    /// The database cannot be reached, or the row fails to open
    /// ([`StoreError::RowRefused`]).
    pub fn read_meta(&self, provider: &str, bucket: &str) -> Result<KeyMeta, StoreError> {
        check_names(provider, bucket)?;
        let Some((version, sealed)) = self.meta_row(provider, bucket)? else {
            return Ok(KeyMeta::default());
        };
        let refused = |detail: String| StoreError::RowRefused {
            what: "metadata",
            provider: provider.to_owned(),
            bucket: bucket.to_owned(),
            detail,
        };
        let v = version.to_string();
        let plain = envelope::open(&self.key, Kind::Meta, &[provider, bucket, &v], &sealed)
            .map_err(|e| refused(e.to_string()))?;
        serde_json::from_slice(&plain).map_err(|e| {
            refused(format!(
                "sealed JSON invalid at line {} column {}",
                e.line(),
                e.column()
            ))
        })
    }

    /// Stores the metadata of `provider`/`bucket`.
    ///
    /// # Errors
    ///
    /// The database cannot be reached, or sealing failed.
    pub fn write_meta(
        &self,
        provider: &str,
        bucket: &str,
        meta: &KeyMeta,
    ) -> Result<(), StoreError> {
        check_names(provider, bucket)?;
        let plain = serde_json::to_vec(meta).map_err(|_| StoreError::Database {
            op: "serialize key metadata",
            detail: "cannot serialize value".to_owned(),
        })?;
        for _ in 0..MAX_ATTEMPTS {
            let expected = self.meta_row(provider, bucket)?.map_or(0, |(v, _)| v);
            let next = expected + 1;
            let v = next.to_string();
            let sealed = envelope::seal(&self.key, Kind::Meta, &[provider, bucket, &v], &plain)
                .map_err(|e| StoreError::Database {
                    op: "seal key metadata",
                    detail: e.to_string(),
                })?;
            let n = self.with_client("write key metadata", |c: &mut Client| {
                if expected == 0 {
                    c.execute(
                        "INSERT INTO credproxy_meta (provider, bucket, version, ciphertext) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (provider, bucket) DO NOTHING",
                        &[&provider, &bucket, &next, &sealed],
                    )
                } else {
                    c.execute(
                        "UPDATE credproxy_meta SET version = $3, ciphertext = $4, \
                         updated_at = now() WHERE provider = $1 AND bucket = $2 AND version = $5",
                        &[&provider, &bucket, &next, &sealed, &expected],
                    )
                }
            })?;
            if n == 1 {
                return Ok(());
            }
        }
        Err(StoreError::Database {
            op: "write key metadata",
            detail: format!("lost {MAX_ATTEMPTS} races with other writers in a row"),
        })
    }
}
