//! The `[postgres]` table: how the `postgres` store backend uses its
//! database. The connection string itself is never here (it may hold a
//! password): it is `CREDPROXY_POSTGRES_URL`, or the file the top-level
//! `postgres_url_file` names.

use std::time::Duration;

use serde::Deserialize;

use crate::store::postgres::PgOptions;

/// Largest `pool_size` accepted (a proxy needs a few; a database has a
/// connection limit shared by the whole fleet).
pub const MAX_POOL_SIZE: u32 = 64;

/// The `[postgres]` table of the configuration file. Times in
/// milliseconds; absent keys keep [`PgOptions::default`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFile {
    /// Connections kept to the database.
    pub pool_size: Option<u32>,
    /// Statement timeout.
    pub statement_timeout_ms: Option<u64>,
    /// Connect timeout.
    pub connect_timeout_ms: Option<u64>,
    /// How long a refresh lease lasts (a dead holder's reign).
    pub lease_ms: Option<u64>,
    /// How long a cached token is served without a version check.
    pub cache_staleness_ms: Option<u64>,
}

/// The `[postgres]` keys, as in the file.
pub const POSTGRES_KEYS: &[&str] = &[
    "pool_size",
    "statement_timeout_ms",
    "connect_timeout_ms",
    "lease_ms",
    "cache_staleness_ms",
];

impl PostgresFile {
    /// `base` with the keys given here.
    ///
    /// # Errors
    ///
    /// A value out of range, naming its key.
    pub fn apply(&self, base: PgOptions) -> Result<PgOptions, String> {
        let mut o = base;
        if let Some(n) = self.pool_size {
            if !(1..=MAX_POOL_SIZE).contains(&n) {
                return Err(format!(
                    "postgres.pool_size must be 1 to {MAX_POOL_SIZE}, not {n}"
                ));
            }
            o.pool_size = n as usize;
        }
        let ms = |key: &str, v: Option<u64>, min: u64| match v {
            Some(v) if v < min => Err(format!("postgres.{key} must be at least {min}, not {v}")),
            Some(v) => Ok(Some(Duration::from_millis(v))),
            None => Ok(None),
        };
        if let Some(d) = ms("statement_timeout_ms", self.statement_timeout_ms, 1)? {
            o.statement_timeout = d;
        }
        if let Some(d) = ms("connect_timeout_ms", self.connect_timeout_ms, 1)? {
            o.connect_timeout = d;
        }
        // A lease shorter than a second would be taken over from a live
        // holder in the middle of its refresh.
        if let Some(d) = ms("lease_ms", self.lease_ms, 1000)? {
            o.lease = d;
        }
        if let Some(d) = ms("cache_staleness_ms", self.cache_staleness_ms, 0)? {
            o.cache_staleness = d;
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_set_their_option_and_bad_values_name_the_key() {
        let f: PostgresFile = toml::from_str(
            "pool_size = 2\nstatement_timeout_ms = 750\nconnect_timeout_ms = 900\n\
             lease_ms = 4000\ncache_staleness_ms = 0\n",
        )
        .unwrap();
        let o = f.apply(PgOptions::default()).unwrap();
        assert_eq!(o.pool_size, 2);
        assert_eq!(o.statement_timeout, Duration::from_millis(750));
        assert_eq!(o.connect_timeout, Duration::from_millis(900));
        assert_eq!(o.lease, Duration::from_secs(4));
        assert_eq!(o.cache_staleness, Duration::ZERO);
        let d = PostgresFile::default().apply(PgOptions::default()).unwrap();
        assert_eq!(d.pool_size, PgOptions::default().pool_size);

        for (text, key) in [
            ("pool_size = 0", "pool_size"),
            ("pool_size = 65", "pool_size"),
            ("lease_ms = 999", "lease_ms"),
            ("statement_timeout_ms = 0", "statement_timeout_ms"),
        ] {
            let f: PostgresFile = toml::from_str(text).unwrap();
            let e = f.apply(PgOptions::default()).unwrap_err();
            assert!(e.contains(&format!("postgres.{key}")), "{e}");
        }
        assert!(toml::from_str::<PostgresFile>("pool = 3").is_err());
    }
}
