//! The `postgres` store module against a real PostgreSQL (issue 15),
//! started by the test ([`TestPostgres`]): schema migration (idempotent,
//! two stores migrating at once), sealed rows (a dump holds no secret; a
//! row swapped, re-versioned or rolled back by hand is refused, never
//! served), compare-and-set writes (a stale version is refused and the
//! newer token kept), the lease (exclusion, takeover after expiry with a
//! new fence, release only by the holder), and reconnecting after the
//! database was stopped and started again.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use credproxy::store::StoreError;
use credproxy::store::key::DataKey;
use credproxy::store::postgres::{Cas, PgOptions, PgStore};
use credproxy_core::Token;

use crate::support::postgres::TestPostgres;

const ACCESS: &str = "at-PG-SENTINEL-7a1c";
const REFRESH: &str = "rt-PG-SENTINEL-93fe";

use crate::support::postgres::{test_key as key, test_token as token};

fn open(pg: &TestPostgres, options: PgOptions) -> PgStore {
    PgStore::connect(&pg.url(), key(), options).expect("connect")
}

fn access_of(t: &Token) -> String {
    t.as_map()["access_token"].as_str().unwrap().to_owned()
}

#[test]
fn schema_is_created_once_even_by_concurrent_stores() {
    let pg = TestPostgres::start_new();
    let url = Arc::new(pg.url());
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (Arc::clone(&url), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&url, key(), PgOptions::default()).map(|s| s.schema_version())
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().expect("connect").expect("version"), 1);
    }
    assert_eq!(
        pg.psql("SELECT count(*) FROM credproxy_schema_version")
            .trim(),
        "1"
    );
    // Opening again applies nothing.
    let s = open(&pg, PgOptions::default());
    assert_eq!(s.schema_version().unwrap(), 1);
    assert_eq!(
        pg.psql("SELECT count(*) FROM credproxy_schema_version")
            .trim(),
        "1"
    );
}

#[test]
fn rows_are_sealed_and_cas_keeps_the_newer_token() {
    let pg = TestPostgres::start_new();
    let a = open(&pg, PgOptions::default());
    let b = open(&pg, PgOptions::default());
    assert!(a.read_token("anthropic", "default").unwrap().is_none());
    assert_eq!(
        a.put_token_cas("anthropic", "default", 0, Some(&token(ACCESS, REFRESH)))
            .unwrap(),
        Cas::Written(1)
    );
    // A second creator lost the race.
    assert_eq!(
        b.put_token_cas("anthropic", "default", 0, Some(&token("x", "y")))
            .unwrap(),
        Cas::Stale { current: 1 }
    );
    let read = b.read_token("anthropic", "default").unwrap().unwrap();
    assert_eq!(read.version, 1);
    assert_eq!(access_of(read.token.as_ref().unwrap()), ACCESS);
    // b writes version 2; a, still at 1, is refused and the newer token kept.
    assert_eq!(
        b.put_token_cas("anthropic", "default", 1, Some(&token("at-new", "rt-new")))
            .unwrap(),
        Cas::Written(2)
    );
    assert_eq!(
        a.put_token_cas(
            "anthropic",
            "default",
            1,
            Some(&token("at-stale", "rt-stale"))
        )
        .unwrap(),
        Cas::Stale { current: 2 }
    );
    let now = a.read_token("anthropic", "default").unwrap().unwrap();
    assert_eq!(
        (now.version, access_of(now.token.as_ref().unwrap())),
        (2, "at-new".to_owned())
    );
    // Delete leaves a tombstone at a higher version.
    assert_eq!(
        a.put_token_cas("anthropic", "default", 2, None).unwrap(),
        Cas::Written(3)
    );
    let gone = b.read_token("anthropic", "default").unwrap().unwrap();
    assert_eq!((gone.version, gone.token.is_none()), (3, true));
    assert_eq!(
        a.put_token_cas("anthropic", "default", 3, Some(&token(ACCESS, REFRESH)))
            .unwrap(),
        Cas::Written(4)
    );
    // The dump has the names but no secret, in any encoding a dump uses.
    let dump = pg.dump();
    let text = String::from_utf8_lossy(&dump);
    assert!(text.contains("credproxy_tokens"), "dump has the table");
    assert!(text.contains("anthropic"), "dump has the provider name");
    for secret in [ACCESS, REFRESH, "at-new", "rt-new"] {
        assert!(!text.contains(secret), "dump contains {secret}");
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex), "dump contains {secret} as hex");
    }
}

fn assert_refused(r: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match r {
        Err(e @ StoreError::RowRefused { .. }) => {
            let msg = e.to_string();
            assert!(!msg.contains(ACCESS) && !msg.contains(REFRESH), "{msg}");
        }
        other => panic!("{what}: expected RowRefused, got {other:?}"),
    }
}

#[test]
fn swapped_reversioned_and_rolled_back_rows_are_refused() {
    let pg = TestPostgres::start_new();
    let s = open(&pg, PgOptions::default());
    s.put_token_cas("anthropic", "default", 0, Some(&token(ACCESS, REFRESH)))
        .unwrap();
    s.put_token_cas("anthropic", "other", 0, Some(&token("at-o", "rt-o")))
        .unwrap();
    // Keep version 1 of anthropic/default, then move it on to version 2.
    pg.psql("CREATE TABLE old AS SELECT * FROM credproxy_tokens");
    s.put_token_cas("anthropic", "default", 1, Some(&token("at-2", "rt-2")))
        .unwrap();

    // Swapped: other's ciphertext (also version 1) onto default, at
    // default's version 2 and at version 1.
    pg.psql(
        "UPDATE credproxy_tokens SET ciphertext = (SELECT ciphertext FROM old \
         WHERE bucket = 'other') WHERE bucket = 'default'",
    );
    assert_refused(s.read_token("anthropic", "default"), "swapped row");
    // Re-versioned: version 1's own ciphertext under version 2.
    pg.psql(
        "UPDATE credproxy_tokens SET ciphertext = (SELECT ciphertext FROM old \
         WHERE bucket = 'default') WHERE bucket = 'default'",
    );
    assert_refused(s.read_token("anthropic", "default"), "re-versioned row");
    // Rolled back whole: version 1 with its ciphertext (authentic, but older
    // than the version 2 this store wrote).
    pg.psql(
        "UPDATE credproxy_tokens SET version = 1, ciphertext = (SELECT ciphertext FROM old \
         WHERE bucket = 'default') WHERE bucket = 'default'",
    );
    assert_refused(s.read_token("anthropic", "default"), "rolled-back row");
    // The untouched row still opens; a store with another key refuses it.
    let other = s.read_token("anthropic", "other").unwrap().unwrap();
    assert_eq!(access_of(other.token.as_ref().unwrap()), "at-o");
    let wrong = PgStore::connect(
        &pg.url(),
        DataKey::from_bytes([7; 32]),
        PgOptions::default(),
    )
    .unwrap();
    assert_refused(wrong.read_token("anthropic", "other"), "wrong key");
}

#[test]
fn lease_excludes_expires_and_is_released_only_by_its_holder() {
    let pg = TestPostgres::start_new();
    let short = PgOptions {
        lease: Duration::from_millis(600),
        ..PgOptions::default()
    };
    let a = open(&pg, short);
    let b = open(&pg, short);
    let la = a
        .try_lease("anthropic", "default")
        .unwrap()
        .expect("free lease");
    assert!(a.lease_valid(&la).unwrap());
    assert!(
        b.try_lease("anthropic", "default").unwrap().is_none(),
        "held by a"
    );
    // Another key is independent.
    assert!(b.try_lease("anthropic", "other").unwrap().is_some());
    // b waits; a's lease expires (a "died") and b takes over with a new fence.
    let started = Instant::now();
    let lb = b
        .lease("anthropic", "default", Duration::from_secs(10))
        .unwrap()
        .expect("taken over after expiry");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "took over after {waited:?}"
    );
    assert!(
        lb.fence > la.fence,
        "fence grows: {} then {}",
        la.fence,
        lb.fence
    );
    assert!(!a.lease_valid(&la).unwrap(), "a is deposed");
    assert!(b.lease_valid(&lb).unwrap());
    // The deposed holder's release does not free b's lease.
    assert!(!a.release_lease(&la).unwrap());
    assert!(a.try_lease("anthropic", "default").unwrap().is_none());
    // b's release frees it at once.
    assert!(b.release_lease(&lb).unwrap());
    let again = a
        .try_lease("anthropic", "default")
        .unwrap()
        .expect("released");
    assert!(again.fence > lb.fence);
}

#[test]
fn a_lease_waiter_gives_up_after_its_wait() {
    let pg = TestPostgres::start_new();
    let a = open(&pg, PgOptions::default());
    let b = open(&pg, PgOptions::default());
    let _held = a.try_lease("anthropic", "default").unwrap().unwrap();
    let started = Instant::now();
    assert!(
        b.lease("anthropic", "default", Duration::from_millis(300))
            .unwrap()
            .is_none()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn database_down_is_a_clear_error_and_the_store_reconnects() {
    let pg = TestPostgres::start_new();
    let s = open(&pg, PgOptions::default());
    s.put_token_cas("anthropic", "default", 0, Some(&token(ACCESS, REFRESH)))
        .unwrap();
    pg.stop();
    let err = s.read_token("anthropic", "default").unwrap_err();
    let StoreError::Unavailable { retry_after, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(*retry_after >= Duration::from_secs(1), "{retry_after:?}");
    assert!(
        err.to_string()
            .starts_with("PostgreSQL store unavailable: cannot"),
        "{err}"
    );
    // Still down: the reconnect fails clearly too, at once (back-off).
    let err = s.read_token("anthropic", "default").unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("connect"), "{err}");
    pg.start();
    let back = read_when_back(&s);
    assert_eq!(access_of(back.token.as_ref().unwrap()), ACCESS);
}

/// Reads the token until the database answers again (the store's
/// reconnect back-off can still be running just after a restart); every
/// failure before must be `Unavailable`.
fn read_when_back(s: &PgStore) -> credproxy::store::postgres::Versioned {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match s.read_token("anthropic", "default") {
            Ok(v) => return v.expect("token row"),
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// A remote host is only ever reached with verified TLS; a string asking
/// for clear text to one is refused before anything is sent (no name is
/// even resolved: the refusal comes from the string alone).
#[test]
fn a_remote_host_in_clear_text_is_refused_before_connecting() {
    for url in [
        "postgresql://u:pw-PG-SENTINEL@db.example.com/credproxy?sslmode=disable",
        "host=db.example.com user=u password=pw-PG-SENTINEL sslmode=prefer",
    ] {
        let err = PgStore::connect(url, key(), PgOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("TLS") && err.contains("verify-full"), "{err}");
        assert!(!err.contains("SENTINEL"), "{err}");
    }
}

const API_KEY: &str = "sk-PG-SENTINEL-4d0b";

#[test]
fn api_keys_are_sealed_listed_replaced_and_removed() {
    use credproxy_core::Secret;
    let pg = TestPostgres::start_new();
    let a = open(&pg, PgOptions::default());
    let b = open(&pg, PgOptions::default());
    assert!(a.read_api_key("openai").unwrap().is_none());
    assert!(a.api_key_names().unwrap().is_empty());
    a.store_api_key("openai", &Secret::new(API_KEY)).unwrap();
    a.store_api_key("gemini", &Secret::new("sk-other")).unwrap();
    assert_eq!(b.api_key_names().unwrap(), ["gemini", "openai"]);
    assert_eq!(b.read_api_key("openai").unwrap().unwrap().expose(), API_KEY);
    b.store_api_key("openai", &Secret::new("sk-replaced"))
        .unwrap();
    assert_eq!(
        a.read_api_key("openai").unwrap().unwrap().expose(),
        "sk-replaced"
    );
    // The dump shows the names, not the values.
    let dump = String::from_utf8_lossy(&pg.dump()).into_owned();
    assert!(dump.contains("gemini"));
    assert!(!dump.contains(API_KEY) && !dump.contains("sk-replaced") && !dump.contains("sk-other"));
    // A value moved onto another name is refused.
    pg.psql(
        "UPDATE credproxy_api_keys SET ciphertext = (SELECT ciphertext FROM credproxy_api_keys \
         WHERE name = 'gemini'), version = 1 WHERE name = 'openai'",
    );
    let fresh = open(&pg, PgOptions::default());
    assert_refused(fresh.read_api_key("openai"), "swapped API key");
    assert!(a.delete_api_key("gemini").unwrap());
    assert!(!a.delete_api_key("gemini").unwrap());
    assert!(b.read_api_key("gemini").unwrap().is_none());
    assert_eq!(b.api_key_names().unwrap(), ["openai"]);
}

#[test]
fn invalid_names_are_refused_as_in_the_file_store() {
    let pg = TestPostgres::start_new();
    let s = open(&pg, PgOptions::default());
    for (p, b) in [
        ("", "default"),
        ("anthropic", "a/b"),
        ("an\0thropic", "default"),
    ] {
        let err = s.read_token(p, b).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidName { .. }),
            "{p:?} {b:?}: {err:?}"
        );
        let err = s.try_lease(p, b).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidName { .. }),
            "{p:?} {b:?}: {err:?}"
        );
    }
    let err = s.read_api_key("../x").unwrap_err();
    assert!(matches!(err, StoreError::InvalidName { .. }), "{err:?}");
}

#[test]
fn the_cache_serves_without_the_database_within_its_staleness_bound() {
    let pg = TestPostgres::start_new();
    let a = open(&pg, PgOptions::default());
    let b = open(&pg, PgOptions::default());
    assert!(
        a.cached_token("anthropic", "default").is_none(),
        "nothing read yet"
    );
    assert!(a.read_token("anthropic", "default").unwrap().is_none());
    assert!(
        matches!(a.cached_token("anthropic", "default"), Some(None)),
        "known absent"
    );
    b.put_token_cas("anthropic", "default", 0, Some(&token(ACCESS, REFRESH)))
        .unwrap();
    // b's write reaches a through an invalidation (what NOTIFY delivers).
    a.invalidate_cached("anthropic", "default", 1);
    assert!(a.cached_token("anthropic", "default").is_none());
    a.read_token("anthropic", "default").unwrap();

    // A store with a short bound stops serving an entry once it is older.
    let short = open(
        &pg,
        PgOptions {
            cache_staleness: Duration::from_millis(200),
            ..PgOptions::default()
        },
    );
    short.read_token("anthropic", "default").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while short.cached_token("anthropic", "default").is_some() {
        assert!(Instant::now() < deadline, "cache entry never went stale");
        thread::sleep(Duration::from_millis(10));
    }

    // The database goes down: the cached token is still served, a read
    // fails clearly; after the restart reads work again. (Read just
    // before, so that only the stop runs within `a`'s 5 s bound.)
    a.read_token("anthropic", "default").unwrap();
    pg.stop();
    let cached = a.cached_token("anthropic", "default").unwrap().unwrap();
    assert_eq!(access_of(&cached), ACCESS);
    assert!(matches!(
        a.read_token("anthropic", "default"),
        Err(StoreError::Unavailable { .. })
    ));
    pg.start();
    let back = read_when_back(&short);
    assert_eq!(back.version, 1);
    // The read after the restart fills the cache again (checked on the
    // store with the default 5 s bound: `short`'s 200 ms can pass between
    // two statements on a loaded machine).
    assert_eq!(read_when_back(&a).version, 1);
    assert!(a.cached_token("anthropic", "default").is_some());
}

#[test]
fn concurrent_writers_of_one_version_have_exactly_one_winner() {
    let pg = TestPostgres::start_new();
    let first = open(&pg, PgOptions::default());
    first
        .put_token_cas("anthropic", "default", 0, Some(&token(ACCESS, REFRESH)))
        .unwrap();
    let stores: Vec<Arc<PgStore>> = (0..8)
        .map(|_| Arc::new(open(&pg, PgOptions::default())))
        .collect();
    let barrier = Arc::new(Barrier::new(stores.len()));
    let threads: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (s, barrier) = (Arc::clone(s), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let t = token(&format!("at-{i}"), &format!("rt-{i}"));
                (
                    i,
                    s.put_token_cas("anthropic", "default", 1, Some(&t))
                        .unwrap(),
                )
            })
        })
        .collect();
    let results: Vec<(usize, Cas)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, r)| *r == Cas::Written(2))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(_, r)| *r == Cas::Written(2) || *r == Cas::Stale { current: 2 }),
        "{results:?}"
    );
    let now = first.read_token("anthropic", "default").unwrap().unwrap();
    assert_eq!(
        access_of(now.token.as_ref().unwrap()),
        format!("at-{}", winners[0])
    );
}

#[test]
fn a_deposed_lease_holders_late_write_is_rejected() {
    let pg = TestPostgres::start_new();
    let short = PgOptions {
        lease: Duration::from_millis(300),
        ..PgOptions::default()
    };
    let a = open(&pg, short);
    let b = open(&pg, short);
    a.put_token_cas("anthropic", "default", 0, Some(&token(ACCESS, REFRESH)))
        .unwrap();
    // a takes the lease and reads version 1, then stalls past its lease.
    let la = a.try_lease("anthropic", "default").unwrap().unwrap();
    let seen = a.read_token("anthropic", "default").unwrap().unwrap();
    let lb = b
        .lease("anthropic", "default", Duration::from_secs(10))
        .unwrap()
        .expect("taken over");
    assert!(!a.lease_valid(&la).unwrap());
    let fresh = b.read_token("anthropic", "default").unwrap().unwrap();
    assert_eq!(
        b.put_token_cas(
            "anthropic",
            "default",
            fresh.version,
            Some(&token("at-b", "rt-b"))
        )
        .unwrap(),
        Cas::Written(2)
    );
    b.release_lease(&lb).unwrap();
    // a's late write at the version it read is refused; b's token stays.
    assert_eq!(
        a.put_token_cas(
            "anthropic",
            "default",
            seen.version,
            Some(&token("at-a-late", "rt-a-late"))
        )
        .unwrap(),
        Cas::Stale { current: 2 }
    );
    let now = b.read_token("anthropic", "default").unwrap().unwrap();
    assert_eq!(access_of(now.token.as_ref().unwrap()), "at-b");
}

/// Figures for BENCHMARKS.md: what the postgres backend adds to a refresh
/// (the lease, the fresh read, the compare-and-set write) next to the
/// plaintext file store (flock, read, fsynced write), in process:
/// `cargo test -p credproxy --test it -- --ignored --nocapture
/// store_postgres::figures`.
#[test]
#[ignore = "measurement; run by hand with --nocapture"]
fn figures() {
    const N: usize = 500;
    let pg = TestPostgres::start_new();
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = [
        (
            "postgres",
            credproxy::store::Store::Postgres(Box::new(open(&pg, PgOptions::default()))),
        ),
        (
            "file",
            credproxy::store::Store::from(
                credproxy::store::FileStore::open(&dir.path().join("s")).expect("file store"),
            ),
        ),
    ];
    let t = token(ACCESS, REFRESH);
    for (name, store) in &stores {
        let time = |f: &mut dyn FnMut()| {
            let at = Instant::now();
            f();
            at.elapsed()
        };
        let (mut lease, mut fresh, mut put, mut cached) = (vec![], vec![], vec![], vec![]);
        for i in 0..N {
            let bucket = format!("b{}", i % 10);
            let mut guard = None;
            lease.push(time(&mut || {
                guard = store
                    .lock_key("anthropic", &bucket, Duration::from_secs(5))
                    .expect("lock");
            }));
            assert!(guard.is_some());
            fresh.push(time(&mut || {
                store.get_token("anthropic", &bucket, true).expect("read");
            }));
            put.push(time(&mut || {
                store.put_token("anthropic", &bucket, &t).expect("write");
            }));
            drop(guard);
            cached.push(time(&mut || {
                assert!(store.get_token_cached("anthropic", &bucket).is_some());
            }));
        }
        eprintln!(
            "{name}: lock {}; fresh read {}; write {}; cached read {}",
            crate::support::percentiles(lease),
            crate::support::percentiles(fresh),
            crate::support::percentiles(put),
            crate::support::percentiles(cached)
        );
    }
}

#[test]
fn while_the_database_is_down_the_last_read_token_is_served_whatever_its_age() {
    let pg = TestPostgres::start_new();
    let s = credproxy::store::Store::Postgres(Box::new(open(
        &pg,
        PgOptions {
            cache_staleness: Duration::ZERO,
            ..PgOptions::default()
        },
    )));
    s.put_token("anthropic", "default", &token(ACCESS, REFRESH))
        .unwrap();
    s.get_token("anthropic", "default", false).unwrap().unwrap();
    assert!(
        s.get_token_cached("anthropic", "default").is_none(),
        "no entry is young enough"
    );
    pg.stop();
    let served = s.get_token("anthropic", "default", false).unwrap().unwrap();
    assert_eq!(access_of(&served), ACCESS);
    for fresh in [
        s.get_token("anthropic", "default", true).map(drop),
        s.get_token("anthropic", "other", false).map(drop),
    ] {
        assert!(
            matches!(fresh, Err(StoreError::Unavailable { .. })),
            "{fresh:?}"
        );
    }
}
