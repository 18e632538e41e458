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
//! - [`listener`]: other proxies' writes invalidate it (LISTEN/NOTIFY).
//! - [`lease`]: the cross-machine refresh lock, a lease row.
//! - [`target`]: whether a connection uses TLS (decided before connecting).
//! - [`tls`]: the connection string read, and the verified TLS connector.
//! - [`sslparams`]: libpq's TLS parameters the client's parser refuses.
//! - [`url`]: where the connection string comes from (never a flag).
//!
//! - [`meta`]: per-key metadata rows (the unusable-refresh mark).
//! - [`ops`]: the store's operations as the effects and the CLI call them.
//! - [`pool`]: the connections, reconnect and back-off.
//! - [`release`]: lease releases, off the caller's thread.
//!
//! The client is the sync `postgres` crate: every call blocks, so the
//! store is only used from the store effects (which run on smol's blocking
//! pool) and the CLI, never on an I/O thread — except
//! [`PgStore::cached_token`], which is memory only. A proxy outlives a
//! database outage: the pool reconnects (see [`pool`]).

mod api_keys;
mod cache;
mod lease;
mod listener;
mod meta;
mod ops;
mod pool;
mod release;
mod schema;
mod sslparams;
pub mod target;
mod tls;
mod tokens;
pub mod url;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use postgres::{Client, Config};

use super::error::StoreError;
use super::key::DataKey;

pub use lease::Lease;
pub use listener::ListenerProbe;
pub use release::LeaseGuard;
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
    /// Connections kept to the database (the store effects of concurrent
    /// requests run in parallel up to this many).
    pub pool_size: usize,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            lease: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            cache_staleness: Duration::from_secs(5),
            pool_size: 4,
        }
    }
}

/// A store in a PostgreSQL database.
pub struct PgStore {
    key: DataKey,
    options: PgOptions,
    /// Who this store is in lease rows: random, so two stores in one
    /// process (or a restarted process) never take each other's lease.
    holder: String,
    pool: Arc<pool::Pool>,
    /// The highest version seen per token row, to refuse a row rolled back
    /// to an older sealed value.
    seen: Mutex<HashMap<(String, String), i64>>,
    /// The version of each key's last fresh read or write: what the next
    /// write expects ([`ops`]). A fresh read happens under the key's lease,
    /// so a write that finds the row moved on was overtaken (a lease taken
    /// over, a writer without a lease) and is refused, never applied.
    fresh: Mutex<HashMap<(String, String), i64>>,
    cache: Arc<cache::TokenCache>,
    /// Invalidates `cache` on other proxies' writes; stops when dropped.
    listener: listener::Listener,
    releaser: release::Releaser,
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
        let (mut config, connector) = client_config(url, options)?;
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
        // A database administrator sees which proxy each connection is
        // (`pg_stat_activity.application_name` is `credproxy <holder>`, the
        // holder of its lease rows).
        config.application_name(&format!("credproxy {holder}"));
        let cache = Arc::new(cache::TokenCache::new(options.cache_staleness));
        let listener = listener::Listener::start(
            config.clone(),
            connector.clone(),
            Arc::downgrade(&cache),
            options.connect_timeout,
        )?;
        let pool = Arc::new(pool::Pool::new(config, connector, options.pool_size));
        let releaser =
            release::Releaser::start(Arc::clone(&pool), holder.clone()).map_err(|e| {
                StoreError::Database {
                    op: "start the lease release thread",
                    detail: e.to_string(),
                }
            })?;
        let store = PgStore {
            key,
            options,
            holder,
            pool,
            seen: Mutex::new(HashMap::new()),
            fresh: Mutex::new(HashMap::new()),
            cache,
            listener,
            releaser,
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

    /// A probe of the notification listener thread (whether it runs, how
    /// often it subscribed), valid after the store is dropped.
    #[must_use]
    pub fn listener(&self) -> ListenerProbe {
        self.listener.probe()
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

    /// Runs `f` on a pooled connection (see [`pool`]).
    fn with_client<T>(
        &self,
        op: &'static str,
        f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.pool.with_client(op, f)
    }
}

/// The schema version this build creates and migrates to.
pub const SCHEMA_LATEST: i32 = schema::LATEST;

/// The schema version of the database at `url` (0: no schema yet), read
/// without migrating anything and without the data key: what
/// `credproxy store migrate --check` reports, so that checking a database
/// never changes it.
///
/// # Errors
///
/// As [`PgStore::connect`] for the connection string and the server.
pub fn peek_schema_version(url: &str, options: PgOptions) -> Result<i32, StoreError> {
    let (config, connector) = client_config(url, options)?;
    let pool = pool::Pool::new(config, connector, 1);
    pool.with_client("read the schema version", schema::peek)
}

/// The client configuration of `url` with the timeouts of `options`, and
/// its connector (refused when it breaks the TLS rules, [`target::decide`]).
fn client_config(url: &str, options: PgOptions) -> Result<(Config, tls::Connector), StoreError> {
    let (mut config, connector) = tls::prepare(url)?;
    config.connect_timeout(options.connect_timeout);
    config.options(&format!(
        "-c statement_timeout={}",
        options.statement_timeout.as_millis()
    ));
    Ok((config, connector))
}

/// A poisoned lock only means another thread panicked while holding it;
/// the data (a connection, a map of versions) stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
