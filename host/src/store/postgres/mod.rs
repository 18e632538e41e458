//! The `postgres` store backend (issue 15): many proxies on many machines
//! share one set of logins through one PostgreSQL database.
//!
//! - [`schema`]: the tables, created and migrated by the proxy itself under
//!   a transaction-scoped advisory lock (two proxies starting together
//!   apply each migration once).
//! - [`tokens`]: token rows sealed with the store envelope (AES-256-GCM,
//!   the store's data key) before they reach the database, the associated
//!   data binding provider, bucket and row version; writes are
//!   compare-and-set on that version.
//! - [`api_keys`]: API key rows, sealed the same way.
//! - [`cache`]: the hot-path token cache (memory only, bounded staleness).
//! - [`lease`]: the cross-machine refresh lock, a lease row.
//! - [`target`]: whether a connection uses TLS (decided before connecting).
//! - [`tls`]: the connection string read, and the verified TLS connector.
//! - [`sslparams`]: libpq's TLS parameters the client's parser refuses.
//! - [`url`]: where the connection string comes from (never a flag).
//!
//! The client is the sync `postgres` crate: every call blocks, so the
//! store is only used from the store effects (which run on smol's blocking
//! pool) and the CLI, never on an I/O thread. One connection is kept
//! behind a mutex and reconnected on the next operation after it broke
//! (the database restarted), so a proxy outlives a database outage.

mod api_keys;
mod cache;
mod lease;
mod schema;
mod sslparams;
pub mod target;
mod tls;
mod tokens;
pub mod url;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use postgres::{Client, Config};

use super::error::StoreError;
use super::key::DataKey;

pub use lease::Lease;
pub use tokens::{Cas, Versioned};

/// Tunables of the backend, with the defaults [`PgOptions::default`].
#[derive(Debug, Clone, Copy)]
pub struct PgOptions {
    /// How long a refresh lease lasts. It must outlast one refresh (provider
    /// HTTP calls are bounded at 8 s), so that a live holder is never
    /// deposed; a dead one is taken over after it.
    pub lease: Duration,
    /// `statement_timeout` of the connection: a slow database fails the
    /// one operation instead of holding a blocking-pool thread.
    pub statement_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// How long a cached token is served without a database read: bounds
    /// how long a lost invalidation can go unnoticed.
    pub cache_staleness: Duration,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            lease: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            cache_staleness: Duration::from_secs(5),
        }
    }
}

/// A store in a PostgreSQL database.
pub struct PgStore {
    config: Config,
    connector: tls::Connector,
    key: DataKey,
    options: PgOptions,
    /// Who this store is in lease rows: random, so two stores in one
    /// process (or a restarted process) never take each other's lease.
    holder: String,
    client: Mutex<Option<Client>>,
    /// The highest version seen per token row, to refuse a row rolled back
    /// to an older sealed value.
    seen: Mutex<std::collections::HashMap<(String, String), i64>>,
    cache: cache::TokenCache,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may hold a password: never shown.
        f.debug_struct("PgStore")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database of `url` (libpq URL or key=value form),
    /// creates or migrates the schema, and returns the store.
    ///
    /// # Errors
    ///
    /// The URL does not parse, breaks the TLS rules ([`target::decide`]),
    /// its TLS roots cannot be loaded, or the database cannot be reached
    /// (or its certificate is refused) or migrated.
    pub fn connect(url: &str, key: DataKey, options: PgOptions) -> Result<PgStore, StoreError> {
        let (mut config, connector) = tls::prepare(url)?;
        config.connect_timeout(options.connect_timeout);
        config.options(&format!(
            "-c statement_timeout={}",
            options.statement_timeout.as_millis()
        ));
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).map_err(|e| StoreError::Database {
            op: "make a lease holder id",
            detail: e.to_string(),
        })?;
        let holder = format!(
            "{}-{}",
            std::process::id(),
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let store = PgStore {
            config,
            connector,
            key,
            options,
            holder,
            client: Mutex::new(None),
            seen: Mutex::new(std::collections::HashMap::new()),
            cache: cache::TokenCache::new(options.cache_staleness),
        };
        store.with_client("migrate the schema", schema::migrate)?;
        let have = store.schema_version()?;
        if have > schema::LATEST {
            return Err(StoreError::Database {
                op: "open the schema",
                detail: format!(
                    "the database schema is at version {have}, newer than this build's {}; \
                     upgrade credproxy",
                    schema::LATEST
                ),
            });
        }
        Ok(store)
    }

    /// This store's lease holder id.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The cached token of `provider`/`bucket` if one is young enough
    /// (`Some(None)`: known deleted); never touches the network, so it may
    /// run on an I/O thread. `None`: read it with [`PgStore::read_token`].
    #[must_use]
    pub fn cached_token(
        &self,
        provider: &str,
        bucket: &str,
    ) -> Option<Option<credproxy_core::Token>> {
        self.cache.get(provider, bucket)
    }

    /// Drops the cached token if older than `version` (another proxy
    /// wrote it).
    pub fn invalidate_cached(&self, provider: &str, bucket: &str, version: i64) {
        self.cache.invalidate(provider, bucket, version);
    }

    /// Drops every cached token.
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// The schema version of the database.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        self.with_client("read the schema version", schema::current)
    }

    /// Runs `f` on the connection, (re)connecting first if there is none or
    /// it broke. A failure of `f` that closed the connection drops it, so
    /// the next call reconnects.
    ///
    /// A kept connection is checked first with an empty query
    /// (`is_valid`, bounded by the connect timeout): a connection to a
    /// database that restarted only shows it is dead when used, and
    /// retrying `f` after it failed is not safe in general (a write may
    /// have committed before the reply was lost). The check costs one
    /// round trip per operation; only operations that need the database
    /// pay it, never the cached hot path.
    fn with_client<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut guard = lock(&self.client);
        if let Some(client) = guard.as_mut()
            && (client.is_closed() || client.is_valid(self.options.connect_timeout).is_err())
        {
            *guard = None;
        }
        let client = match guard.as_mut() {
            Some(client) => client,
            None => guard.insert(self.connector.connect(&self.config).map_err(|e| {
                tls::handshake_error(&e).unwrap_or_else(|| db_error("connect", &e))
            })?),
        };
        let result = f(client);
        if result.is_err() && client.is_closed() {
            *guard = None;
        }
        result.map_err(|e| db_error(op, &e))
    }
}

/// A poisoned lock only means another thread panicked while holding it;
/// the data (a connection, a map of versions) stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client error as a [`StoreError::Database`]: the server's message and
/// SQLSTATE (never its DETAIL, which can quote row values), or the
/// connection error.
fn db_error(op: &'static str, e: &postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    StoreError::Database { op, detail }
}
