//! Cache coherence across proxies: LISTEN/NOTIFY.
//!
//! Every token write sends a notification on [`CHANNEL`] in the statement
//! that writes the row ([`NOTIFY_WRITTEN`], used by `tokens`), so one is
//! sent exactly when the write committed. Its payload is JSON naming the
//! provider, bucket and new version — never a secret: any session of the
//! database may LISTEN.
//!
//! Each store runs one listener thread with its own connection (a
//! connection waiting for notifications cannot serve the store's
//! operations). Each notification drops the cached entry older than the
//! notified version ([`TokenCache::invalidate`]); the store's own writes
//! are already cached at that version, so they are kept. Notifications
//! sent while the listener is disconnected are lost: on every (re)connect
//! it LISTENs first and then clears the whole cache, so any write it could
//! have missed happened before the clear and is read fresh; the cache's
//! staleness bound covers a connection that died without the listener
//! noticing yet. A failed connect is retried with capped exponential
//! back-off.
//!
//! The thread stops when the store is dropped: the store's [`Listener`]
//! raises a stop flag that the thread checks between bounded waits, and
//! the thread holds the cache only weakly, so a thread that outlives its
//! store never keeps it alive or retries against a database forever. It
//! ends within one [`POLL`] when connected or waiting, within the connect
//! timeout when caught in a connect attempt.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config};
use serde::Deserialize;

use super::super::error::StoreError;
use super::cache::TokenCache;
use super::lock;
use super::tls::Connector;

/// The notification channel of token writes.
pub(super) const CHANNEL: &str = "credproxy_tokens";

/// The tail of a token write: `w` is the data-modifying CTE of the write,
/// `RETURNING provider, bucket, version`. One notification per written row
/// (none when the compare-and-set matched nothing), in the write's own
/// statement and therefore its transaction. `json_build_object` quotes
/// the names, so the payload parses back whatever they hold.
pub(super) const NOTIFY_WRITTEN: &str = "SELECT pg_notify('credproxy_tokens', \
     json_build_object('provider', provider, 'bucket', bucket, 'version', version)::text) \
     FROM w";

/// First wait after a failed connect; doubled per failure up to
/// [`BACKOFF_MAX`], reset once LISTEN succeeded.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long one wait for a notification lasts: how late the thread sees
/// the stop flag while connected.
const POLL: Duration = Duration::from_millis(200);

/// How often a quiet connection is checked with an empty query: a
/// connection cut without a FIN (network partition) shows no error until
/// used, and every notification meanwhile would be lost.
const HEALTH_EVERY: Duration = Duration::from_secs(10);

/// The payload of a token write notification.
#[derive(Debug, Deserialize)]
struct Written {
    provider: String,
    bucket: String,
    version: i64,
}

/// What the listener thread shares with the store and its probes.
#[derive(Default)]
struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    running: AtomicBool,
    subscribed: AtomicU64,
    /// Connection or LISTEN attempts that failed.
    failed: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> bool {
        *lock(&self.stop)
    }

    /// Waits up to `d` or until stopped; true if stopped.
    fn wait(&self, d: Duration) -> bool {
        let guard = lock(&self.stop);
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard
    }
}

/// The store's handle on its listener thread; dropping it stops the thread.
pub(super) struct Listener {
    shared: Arc<Shared>,
}

/// A view of a store's listener thread that outlives the store: whether the
/// thread still runs and how often it subscribed. For `credproxy status`
/// style reporting and for tests (the thread must end with its store).
#[derive(Clone)]
pub struct ListenerProbe {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ListenerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerProbe")
            .field("running", &self.is_running())
            .field("subscriptions", &self.subscriptions())
            .finish()
    }
}

impl ListenerProbe {
    /// The listener thread has not ended yet.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// How many times the listener connected and ran LISTEN (each one
    /// followed by a cache clear): 1 after the first connect, one more per
    /// reconnect.
    #[must_use]
    pub fn subscriptions(&self) -> u64 {
        self.shared.subscribed.load(Ordering::SeqCst)
    }
}

/// Marks the thread ended however it ends (a panic included).
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        let _guard = lock(&self.0.stop);
        self.0.running.store(false, Ordering::SeqCst);
        self.0.wake.notify_all();
    }
}

impl Listener {
    /// Starts the listener thread on a connection of `config`, invalidating
    /// `cache` while it lives, and waits up to `first` for its first
    /// subscription: a store that serves from its cache before it listens
    /// would miss the writes made meanwhile (and the clear on subscribing
    /// would race its first reads). If the first attempt fails, or the
    /// listener cannot subscribe in time, the store still opens (its own
    /// connection then reports what is wrong, without waiting out `first`
    /// behind a refused certificate or a database that is down); the
    /// thread keeps trying, and its clear on subscribing covers the gap.
    ///
    /// # Errors
    ///
    /// The thread could not be spawned.
    pub(super) fn start(
        config: Config,
        connector: Connector,
        cache: Weak<TokenCache>,
        first: Duration,
    ) -> Result<Listener, StoreError> {
        let shared = Arc::new(Shared::default());
        shared.running.store(true, Ordering::SeqCst);
        let running = Running(Arc::clone(&shared));
        thread::Builder::new()
            .name("credproxy-pg-listen".to_owned())
            .spawn(move || {
                let running = running;
                run(&config, &connector, &cache, &running.0);
            })
            .map_err(|e| StoreError::Database {
                op: "start the notification listener",
                detail: e.to_string(),
            })?;
        let guard = lock(&shared.stop);
        let _ = shared
            .wake
            .wait_timeout_while(guard, first, |_| {
                shared.subscribed.load(Ordering::SeqCst) == 0
                    && shared.failed.load(Ordering::SeqCst) == 0
                    && shared.running.load(Ordering::SeqCst)
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Listener { shared })
    }

    /// A probe of the thread.
    pub(super) fn probe(&self) -> ListenerProbe {
        ListenerProbe {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
    }
}

/// Connects, subscribes and listens until stopped, reconnecting with
/// back-off.
fn run(config: &Config, connector: &Connector, cache: &Weak<TokenCache>, shared: &Shared) {
    let mut backoff = BACKOFF_START;
    while !shared.stopped() {
        match subscribe(config, connector) {
            Some(mut client) => {
                let Some(c) = cache.upgrade() else { return };
                c.clear();
                drop(c);
                {
                    let _guard = lock(&shared.stop);
                    shared.subscribed.fetch_add(1, Ordering::SeqCst);
                    shared.wake.notify_all();
                }
                backoff = BACKOFF_START;
                listen(&mut client, cache, shared);
            }
            None => {
                {
                    let _guard = lock(&shared.stop);
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                    shared.wake.notify_all();
                }
                if shared.wait(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A connection that LISTENs on [`CHANNEL`]; `None` if the database cannot
/// be reached (why is not kept: the thread has nobody to tell, and the
/// store's own operations report the outage).
fn subscribe(config: &Config, connector: &Connector) -> Option<Client> {
    let mut client = connector.connect(config).ok()?;
    client.batch_execute(&format!("LISTEN {CHANNEL}")).ok()?;
    Some(client)
}

/// Applies notifications until the connection breaks, the store is gone or
/// the thread is stopped.
fn listen(client: &mut Client, cache: &Weak<TokenCache>, shared: &Shared) {
    let mut checked = Instant::now();
    while !shared.stopped() {
        let next = client.notifications().timeout_iter(POLL).next();
        match next {
            Ok(Some(n)) => {
                let Some(c) = cache.upgrade() else { return };
                apply(&c, n.payload());
            }
            Ok(None) if client.is_closed() => return,
            Ok(None) => {
                if checked.elapsed() >= HEALTH_EVERY {
                    if client.is_valid(POLL * 10).is_err() {
                        return;
                    }
                    checked = Instant::now();
                }
            }
            Err(_) => return,
        }
    }
}

/// One notification: drop what it makes stale. A payload that does not
/// parse (another writer's format) clears everything, since what it
/// changed is unknown.
fn apply(cache: &TokenCache, payload: &str) {
    match serde_json::from_str::<Written>(payload) {
        Ok(w) => cache.invalidate(&w.provider, &w.bucket, w.version),
        Err(_) => cache.clear(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_invalidate_their_row_and_unknown_ones_clear_everything() {
        let cache = TokenCache::new(Duration::from_secs(3600));
        cache.put(cache.epoch(), "p", "b", 1, None);
        cache.put(cache.epoch(), "p", "c", 1, None);
        apply(&cache, r#"{"provider":"p","bucket":"b","version":2}"#);
        assert!(cache.get("p", "b").is_none());
        assert!(cache.get("p", "c").is_some());
        apply(&cache, "p/c/2");
        assert!(cache.get("p", "c").is_none());
    }

    /// `start` returns after the first failed attempt instead of waiting
    /// out `first` (an hour here: a regression hangs the test).
    #[test]
    fn start_returns_after_a_failed_first_attempt() {
        // A loopback port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (config, connector) =
            super::super::tls::prepare(&format!("host=127.0.0.1 port={port} user=u dbname=d"))
                .unwrap();
        let cache = Arc::new(TokenCache::new(Duration::from_secs(60)));
        let listener = Listener::start(
            config,
            connector,
            Arc::downgrade(&cache),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert!(listener.shared.failed.load(Ordering::SeqCst) >= 1);
        assert_eq!(listener.probe().subscriptions(), 0);
    }

    #[test]
    fn writes_notify_on_the_channel_listened_to() {
        assert!(NOTIFY_WRITTEN.contains(&format!("pg_notify('{CHANNEL}'")));
    }
}
