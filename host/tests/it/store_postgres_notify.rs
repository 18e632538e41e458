//! Cache coherence of the `postgres` store across proxies (issue 15):
//! another store's write (or delete) reaches this store's cache through
//! LISTEN/NOTIFY, also after the database restarted; the payload names the
//! row and holds no secret; the listener thread ends with its store.
//!
//! Every store here serves cached entries for an hour, so an entry that
//! stops being served was dropped by a notification (or the listener's
//! clear on reconnecting), never by the staleness bound.

use std::time::{Duration, Instant};

use credproxy::store::postgres::{Cas, PgOptions, PgStore};
use credproxy_core::Token;
use postgres::fallible_iterator::FallibleIterator;
use serde_json::json;

use crate::support::postgres::TestPostgres;

const ACCESS: &str = "at-PG-NOTIFY-SENTINEL-51d0";
const REFRESH: &str = "rt-PG-NOTIFY-SENTINEL-c3a8";
const P: &str = "anthropic";
const B: &str = "default";

/// How long a notification may take to arrive: generous for a loaded CI
/// machine, far below the hour the cache would otherwise serve.
const DELIVERY: Duration = Duration::from_secs(5);

use crate::support::postgres::{test_key as key, test_token as token};

/// A store whose cache entries never go stale within a test.
fn open(pg: &TestPostgres) -> PgStore {
    let s = PgStore::connect(
        &pg.url(),
        key(),
        PgOptions {
            cache_staleness: Duration::from_secs(3600),
            ..PgOptions::default()
        },
    )
    .expect("connect");
    assert_eq!(
        s.listener().subscriptions(),
        1,
        "connect returns once the listener is subscribed"
    );
    s
}

fn cached_access(s: &PgStore) -> Option<Option<String>> {
    s.cached_token(P, B)
        .map(|t| t.map(|t| t.as_map()["access_token"].as_str().unwrap().to_owned()))
}

/// Polls `cond` until it holds or `within` passed.
fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        // Not timing: only spares the CPU between checks.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `a` reads (and caches) the row, then `b` moves it to version
/// `expected + 1` with `next`; `a`'s cache must drop the old entry.
fn assert_write_invalidates(a: &PgStore, b: &PgStore, expected: i64, next: Option<&Token>) {
    let read = a.read_token(P, B).unwrap().expect("row");
    assert_eq!(read.version, expected);
    let before = cached_access(a);
    assert!(before.is_some(), "a serves from its cache");
    assert_eq!(
        b.put_token_cas(P, B, expected, next).unwrap(),
        Cas::Written(expected + 1)
    );
    let written = next.map(|t| t.as_map()["access_token"].as_str().unwrap().to_owned());
    assert_eq!(
        cached_access(b),
        Some(written),
        "the writer caches its own write"
    );
    eventually(DELIVERY, "a's cache drops the old entry", || {
        cached_access(a).is_none()
    });
    let fresh = a.read_token(P, B).unwrap().expect("row");
    assert_eq!(fresh.version, expected + 1);
}

#[test]
fn another_stores_write_drops_the_cached_token() {
    let pg = TestPostgres::start_new();
    let (a, b) = (open(&pg), open(&pg));
    b.put_token_cas(P, B, 0, Some(&token("v1", REFRESH)))
        .unwrap();
    assert_write_invalidates(&a, &b, 1, Some(&token("v2", REFRESH)));
    assert_eq!(cached_access(&a), Some(Some("v2".to_owned())));

    // A store's own write is cached at its version; its own notification,
    // delivered later, keeps it. Notifications arrive in commit order, so
    // once a later write of b's (another row) reached a, a's own had too.
    b.put_token_cas(P, "other", 0, Some(&token("o1", REFRESH)))
        .unwrap();
    assert!(a.read_token(P, "other").unwrap().is_some());
    assert_eq!(
        a.put_token_cas(P, B, 2, Some(&token("v3", REFRESH)))
            .unwrap(),
        Cas::Written(3)
    );
    b.put_token_cas(P, "other", 1, Some(&token("o2", REFRESH)))
        .unwrap();
    eventually(DELIVERY, "a's cache drops the other row", || {
        a.cached_token(P, "other").is_none()
    });
    assert_eq!(cached_access(&a), Some(Some("v3".to_owned())));
}

#[test]
fn a_delete_drops_the_cached_token() {
    let pg = TestPostgres::start_new();
    let (a, b) = (open(&pg), open(&pg));
    b.put_token_cas(P, B, 0, Some(&token(ACCESS, REFRESH)))
        .unwrap();
    assert_write_invalidates(&a, &b, 1, None);
    assert_eq!(cached_access(&a), Some(None), "the tombstone is cached");
}

#[test]
fn the_listener_resubscribes_after_a_database_restart() {
    let pg = TestPostgres::start_new();
    let (a, b) = (open(&pg), open(&pg));
    b.put_token_cas(P, B, 0, Some(&token("v1", REFRESH)))
        .unwrap();
    a.read_token(P, B).unwrap();
    assert!(cached_access(&a).is_some());

    pg.stop();
    // Down: the cache keeps serving.
    assert_eq!(cached_access(&a), Some(Some("v1".to_owned())));
    pg.start();
    // Back: the listener subscribes again and clears what it may have
    // missed while disconnected.
    eventually(
        Duration::from_secs(20),
        "a's listener subscribes again",
        || a.listener().subscriptions() >= 2,
    );
    assert!(cached_access(&a).is_none(), "cleared on resubscribing");
    // The new subscription delivers.
    assert_write_invalidates(&a, &b, 1, Some(&token("v2", REFRESH)));
}

#[test]
fn payloads_name_the_row_and_version_and_hold_no_secret() {
    let pg = TestPostgres::start_new();
    let b = open(&pg);
    let mut raw = postgres::Client::connect(&pg.url(), postgres::NoTls).expect("raw connect");
    raw.batch_execute("LISTEN credproxy_tokens").unwrap();

    let t = token(ACCESS, REFRESH);
    assert_eq!(b.put_token_cas(P, B, 0, Some(&t)).unwrap(), Cas::Written(1));
    assert_eq!(b.put_token_cas(P, B, 1, Some(&t)).unwrap(), Cas::Written(2));
    // A refused write commits nothing and notifies nothing.
    assert_eq!(
        b.put_token_cas(P, B, 1, Some(&t)).unwrap(),
        Cas::Stale { current: 2 }
    );
    assert_eq!(b.put_token_cas(P, B, 2, None).unwrap(), Cas::Written(3));

    let mut payloads = Vec::new();
    let deadline = Instant::now() + DELIVERY;
    while payloads.len() < 3 && Instant::now() < deadline {
        let mut n = raw.notifications();
        if let Some(n) = n.timeout_iter(Duration::from_millis(100)).next().unwrap() {
            assert_eq!(n.channel(), "credproxy_tokens");
            payloads.push(n.payload().to_owned());
        }
    }
    // Nothing else is pending (the refused write sent nothing).
    assert!(
        raw.notifications().iter().next().unwrap().is_none(),
        "{payloads:?}"
    );
    let parsed: Vec<serde_json::Value> = payloads
        .iter()
        .map(|p| serde_json::from_str(p).expect("JSON payload"))
        .collect();
    assert_eq!(
        parsed,
        (1..=3)
            .map(|v| json!({ "provider": P, "bucket": B, "version": v }))
            .collect::<Vec<_>>()
    );
    for p in &payloads {
        assert!(!p.contains(ACCESS) && !p.contains(REFRESH), "{p}");
    }
}

#[test]
fn the_listener_thread_ends_with_its_store() {
    let pg = TestPostgres::start_new();
    let a = open(&pg);
    let probe = a.listener();
    assert!(probe.is_running());
    drop(a);
    eventually(DELIVERY, "the listener of a dropped store ends", || {
        !probe.is_running()
    });

    // Also while it is retrying against a database that is down.
    let c = open(&pg);
    let probe = c.listener();
    pg.stop();
    drop(c);
    eventually(
        DELIVERY,
        "the listener of a store dropped while the database is down ends",
        || !probe.is_running(),
    );
}
