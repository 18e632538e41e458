//! API key rows: `(name, version, ciphertext)`, sealed like token rows
//! (associated data: kind `key`, the name and the version), a delete a
//! tombstone. Setting a key is last-writer-wins, as in the file store, but
//! still a compare-and-set on the version, so every write seals under the
//! version it lands at.

use credproxy_core::Secret;
use postgres::Client;
use zeroize::Zeroizing;

use super::super::envelope::{self, Kind};
use super::super::error::StoreError;
use super::super::names::check_api_key_name;
use super::{PgStore, lock};

/// Attempts of a set or remove that keeps losing to other writers.
const MAX_ATTEMPTS: usize = 16;

/// A row as read: its version and its sealed value (`None`: a tombstone).
type Row = (i64, Option<Vec<u8>>);

/// The `seen` map's key of an API key row: provider and bucket never
/// contain a NUL, so no token row has this first part.
fn seen_key(name: &str) -> (String, String) {
    ("\0key".to_owned(), name.to_owned())
}

impl PgStore {
    fn read_api_row(&self, name: &str) -> Result<Option<Row>, StoreError> {
        check_api_key_name(name)?;
        let row = self.with_client("read an API key", |c: &mut Client| {
            c.query_opt(
                "SELECT version, ciphertext FROM credproxy_api_keys WHERE name = $1",
                &[&name],
            )
        })?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    fn refused(name: &str, detail: String) -> StoreError {
        StoreError::RowRefused {
            what: "API key",
            provider: "key".to_owned(),
            bucket: name.to_owned(),
            detail,
        }
    }

    /// The API key `name`, if stored.
    ///
    /// # Errors
    ///
    /// The database cannot be reached, or the row is refused (modified,
    /// swapped, rolled back): never served.
    pub fn read_api_key(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let Some((version, sealed)) = self.read_api_row(name)? else {
            return Ok(None);
        };
        if let Some(seen) = lock(&self.seen).get(&seen_key(name)).copied()
            && version < seen
        {
            return Err(Self::refused(
                name,
                format!("its version {version} is older than version {seen} already read"),
            ));
        }
        let secret = match sealed {
            None => None,
            Some(sealed) => {
                let v = version.to_string();
                let plain = envelope::open(&self.key, Kind::ApiKey, &[name, &v], &sealed)
                    .map_err(|e| Self::refused(name, e.to_string()))?;
                let text = std::str::from_utf8(&plain)
                    .map_err(|_| Self::refused(name, "sealed value is not UTF-8".to_owned()))?;
                Some(Secret::new(text))
            }
        };
        self.saw_key(name, version);
        Ok(secret)
    }

    /// Stores `value` (`None`: removes) under `name`. `Ok(true)` if a key
    /// was there before.
    fn write_api_key(&self, name: &str, value: Option<&Secret>) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.read_api_row(name)?;
            let existed = current.as_ref().is_some_and(|(_, c)| c.is_some());
            let expected = current.map_or(0, |(v, _)| v);
            if value.is_none() && !existed {
                return Ok(false);
            }
            let next = expected + 1;
            let sealed = match value {
                None => None,
                Some(secret) => {
                    let plain = Zeroizing::new(secret.expose().as_bytes().to_vec());
                    let v = next.to_string();
                    Some(
                        envelope::seal(&self.key, Kind::ApiKey, &[name, &v], &plain).map_err(
                            |e| StoreError::Database {
                                op: "seal an API key",
                                detail: e.to_string(),
                            },
                        )?,
                    )
                }
            };
            let n = self.with_client("write an API key", |c: &mut Client| {
                if expected == 0 {
                    c.execute(
                        "INSERT INTO credproxy_api_keys (name, version, ciphertext) \
                         VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                        &[&name, &next, &sealed],
                    )
                } else {
                    c.execute(
                        "UPDATE credproxy_api_keys SET version = $2, ciphertext = $3, \
                         updated_at = now() WHERE name = $1 AND version = $4",
                        &[&name, &next, &sealed, &expected],
                    )
                }
            })?;
            if n == 1 {
                self.saw_key(name, next);
                return Ok(existed);
            }
        }
        Err(StoreError::Database {
            op: "write an API key",
            detail: format!("lost {MAX_ATTEMPTS} races with other writers in a row"),
        })
    }

    /// Stores the API key `name`, replacing any.
    ///
    /// # Errors
    ///
    /// The database cannot be reached, or sealing failed.
    pub fn store_api_key(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        self.write_api_key(name, Some(value)).map(drop)
    }

    /// Removes the API key `name`; `Ok(true)` if it was stored.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub fn delete_api_key(&self, name: &str) -> Result<bool, StoreError> {
        self.write_api_key(name, None)
    }

    /// The names of the stored API keys, sorted.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub fn api_key_names(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.with_client("list API keys", |c: &mut Client| {
            c.query(
                "SELECT name FROM credproxy_api_keys WHERE ciphertext IS NOT NULL \
                 ORDER BY name",
                &[],
            )
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn saw_key(&self, name: &str, version: i64) {
        let mut seen = lock(&self.seen);
        let v = seen.entry(seen_key(name)).or_insert(version);
        *v = (*v).max(version);
    }
}
