//! The backend's connections: a small fixed pool with reconnect back-off.
//!
//! `pool_size` connections, each behind its own mutex and made on first
//! use. A caller takes a free one if there is one, else waits for one
//! (a store effect runs on the blocking pool, so waiting is allowed).
//!
//! Why not r2d2: its `get` blocks every caller for the whole connection
//! timeout while the database is down, so a proxy with a dead database
//! would hold its blocking-pool threads for seconds per request. Here a
//! failed connect arms a back-off (100 ms doubling to 5 s) and, until it
//! expires, callers fail at once with [`StoreError::Unavailable`] and the
//! time the next attempt is due (the wire's `retryAfter`). The first
//! caller after it tries again; success clears it.
//!
//! A connection that broke (the database restarted) shows it only when
//! used: the operation fails and the connection is closed. A kept
//! connection that fails that way is replaced and the operation run once
//! more on the new one. That is safe for writes too: every write is a
//! compare-and-set on the row version, so a write whose commit reply was
//! lost is refused the second time ([`StoreError::Stale`]) instead of
//! applied twice, and the engine re-reads. Errors of a fresh connection,
//! and every other error, are returned as they are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use postgres::{Client, Config};

use super::super::backoff::{Backoff, MIN_RETRY_AFTER};
use super::super::error::StoreError;
use super::lock;
use super::tls::{self, Connector};

/// The back-off and why the last connect failed (no parameter value).
#[derive(Debug, Default)]
struct Down {
    backoff: Backoff,
    detail: String,
}

/// See the module documentation.
pub struct Pool {
    config: Config,
    connector: Connector,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
    down: Mutex<Down>,
}

impl Pool {
    /// A pool of `size` (at least 1) connections made from `config`
    /// with `connector`.
    #[must_use]
    pub fn new(config: Config, connector: Connector, size: usize) -> Pool {
        Pool {
            config,
            connector,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            down: Mutex::new(Down::default()),
        }
    }

    /// A free slot that holds a connection, else a free empty one (a
    /// connection is only made when every open one is busy), else the
    /// next slot in turn, waiting for it.
    fn slot(&self) -> MutexGuard<'_, Option<Client>> {
        let mut empty = None;
        for slot in &self.slots {
            if let Ok(guard) = slot.try_lock() {
                if guard.is_some() {
                    return guard;
                }
                if empty.is_none() {
                    empty = Some(guard);
                }
            }
        }
        if let Some(guard) = empty {
            return guard;
        }
        let n = self.slots.len();
        lock(&self.slots[self.next.fetch_add(1, Ordering::Relaxed) % n])
    }

    /// Runs `f` on a connection (see the module documentation for the
    /// reconnect and retry rules).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] while the database cannot be reached,
    /// [`StoreError::Database`] for a statement it refused.
    pub fn with_client<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut guard = self.slot();
        let mut kept = guard.as_ref().is_some_and(|c| !c.is_closed());
        loop {
            if !kept {
                *guard = Some(self.connect()?);
            }
            let Some(client) = guard.as_mut() else {
                unreachable!("a connection was just stored")
            };
            match f(client) {
                Ok(v) => return Ok(v),
                Err(e) if client.is_closed() => {
                    *guard = None;
                    if kept {
                        // Broken while idle: once more on a new connection.
                        kept = false;
                        continue;
                    }
                    return Err(self.unavailable(op, &e));
                }
                Err(e) => return Err(self.classify(op, &e)),
            }
        }
    }

    /// A new connection, unless the back-off says to wait.
    fn connect(&self) -> Result<Client, StoreError> {
        {
            let d = lock(&self.down);
            if let Some(wait) = d.backoff.wait(Instant::now()) {
                return Err(StoreError::Unavailable {
                    op: "connect",
                    detail: format!("{} (next attempt in {wait:?})", d.detail),
                    retry_after: Backoff::retry_after(wait),
                });
            }
        }
        match self.connector.connect(&self.config) {
            Ok(client) => {
                *lock(&self.down) = Down::default();
                Ok(client)
            }
            Err(e) => {
                // A refused certificate is the configuration's fault, and a
                // server that answered and refused (authentication, no such
                // database) will refuse again: neither is a passing state.
                if let Some(refused) = tls::handshake_error(&e) {
                    return Err(refused);
                }
                if e.as_db_error().is_some() {
                    return Err(db_error("connect", &e));
                }
                let mut d = lock(&self.down);
                let delay = d.backoff.fail(Instant::now());
                d.detail = e.to_string();
                Err(StoreError::Unavailable {
                    op: "connect",
                    detail: e.to_string(),
                    retry_after: Backoff::retry_after(delay),
                })
            }
        }
    }

    /// The connection broke during `op`.
    fn unavailable(&self, op: &'static str, e: &postgres::Error) -> StoreError {
        let retry_after = lock(&self.down)
            .backoff
            .wait(Instant::now())
            .map_or(MIN_RETRY_AFTER, Backoff::retry_after);
        StoreError::Unavailable {
            op,
            detail: e.to_string(),
            retry_after,
        }
    }

    /// A statement's error: a passing state of the server (statement
    /// timeout, shutting down, too many connections) is
    /// [`StoreError::Unavailable`], anything else [`StoreError::Database`].
    fn classify(&self, op: &'static str, e: &postgres::Error) -> StoreError {
        match e.as_db_error().map(|db| db.code().code()) {
            Some(code) if is_passing(code) => StoreError::Unavailable {
                op,
                detail: db_detail(e),
                retry_after: MIN_RETRY_AFTER,
            },
            _ => db_error(op, e),
        }
    }
}

/// SQLSTATE classes of a passing state: 08 connection exception, 53
/// insufficient resources, 57 operator intervention (57014 is a statement
/// timeout, 57P01 an administrator's shutdown), 40001/40P01 a
/// serialization failure or deadlock.
fn is_passing(code: &str) -> bool {
    ["08", "53", "57"].iter().any(|c| code.starts_with(c)) || matches!(code, "40001" | "40P01")
}

/// The server's message and SQLSTATE (never its DETAIL, which can quote
/// row values), or the client's error.
fn db_detail(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A client error as a [`StoreError::Database`].
pub(super) fn db_error(op: &'static str, e: &postgres::Error) -> StoreError {
    StoreError::Database {
        op,
        detail: db_detail(e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn passing_states_are_told_from_refusals() {
        for code in ["08006", "53300", "57014", "57P01", "40001", "40P01"] {
            assert!(is_passing(code), "{code}");
        }
        for code in ["23505", "42P01", "28P01", "3D000", "22001"] {
            assert!(!is_passing(code), "{code}");
        }
    }

    #[test]
    fn a_dead_server_arms_the_backoff_and_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new();
        config.host_path(dir.path()).port(5);
        config.connect_timeout(Duration::from_secs(1));
        let pool = Pool::new(config, Connector::Plain, 2);
        let first = pool.with_client("read", |c| c.simple_query("SELECT 1").map(drop));
        let Err(StoreError::Unavailable { retry_after, .. }) = first else {
            panic!("{first:?}")
        };
        assert_eq!(retry_after, MIN_RETRY_AFTER);
        let armed = lock(&pool.down).backoff.clone();
        assert!(armed.wait(Instant::now()).is_some(), "armed");
        let second = pool.with_client("read", |c| c.simple_query("SELECT 1").map(drop));
        let Err(StoreError::Unavailable { detail, .. }) = second else {
            panic!("{second:?}")
        };
        assert!(detail.contains("next attempt in"), "{detail}");
        assert_eq!(lock(&pool.down).backoff, armed, "not retried early");
    }
}
