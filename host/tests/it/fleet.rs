//! The fleet (issue 15) through the binary: several `credproxy serve`
//! processes on one PostgreSQL database, as proxies on several machines
//! would be, against a stub OAuth server and a real, throw-away
//! PostgreSQL (support/postgres.rs).
//!
//! - 3 proxies × 8 clients refresh one expired token at once: the provider
//!   sees exactly one refresh, every client gets its access token, the
//!   rotated refresh token is stored once;
//! - the proxy holding the refresh lease is killed (SIGKILL) while the
//!   provider holds its refresh: another proxy takes the lease over (its
//!   holder has no connection left, so well before the lease's deadline)
//!   and completes the refresh;
//! - the database stops under a running proxy: a cached token is still
//!   served, what needs the database fails with `STORE_UNAVAILABLE` and a
//!   `retryAfter`, and after the restart everything works without
//!   restarting the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use credproxy::store::key;
use credproxy::store::postgres::{PgOptions, PgStore};
use credproxy_core::Token;
use serde_json::{Value, json};

use crate::support::conformance::{
    Env, FAR, Gate, PgTarget, Req, Resp, Server, Stub, ok_json, path, providers_toml, std_token,
    tok, wait_for,
};
use crate::support::postgres::TestPostgres;

const SEED_ACCESS: &str = "at-FLEET-SEED-5d1e";
const SEED_REFRESH: &str = "rt-FLEET-SEED-77b2";

/// A database, the key file its proxies share, and the key's place apart
/// from every store.
struct Fleet {
    pg: TestPostgres,
    target: PgTarget,
    _keys: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let pg = TestPostgres::start_new();
        let keys = tempfile::tempdir().expect("key dir");
        let key_file = keys.path().join("fleet.key");
        key::create_file(&key_file, &keys.path().join("no-store")).expect("create the key");
        let target = PgTarget {
            url: pg.url(),
            key_file,
        };
        Fleet {
            pg,
            target,
            _keys: keys,
        }
    }

    /// The database through the library, with the fleet's key.
    fn store(&self) -> PgStore {
        let key = key::load_file(&self.target.key_file).expect("load the key");
        PgStore::connect(&self.target.url, key, PgOptions::default()).expect("connect")
    }

    /// A proxy of the fleet: its own tree and `config`, the shared store.
    fn proxy(&self, config: &str) -> (Env, Server) {
        let mut env = Env::on_postgres(&self.target);
        env.write_config(config);
        let srv = env.serve_n(&[]);
        (env, srv)
    }

    /// Stores an expired `anthropic` token with a refresh token (version 1).
    fn seed_expired(&self) {
        self.store()
            .put_token_cas(
                "anthropic",
                "default",
                0,
                Some(&token(SEED_ACCESS, Some(SEED_REFRESH), 1_000_000)),
            )
            .expect("seed an expired token");
    }

    /// `SELECT` one number.
    fn number(&self, sql: &str) -> i64 {
        self.pg.psql(sql).trim().parse().expect("a number")
    }
}

fn token(access: &str, refresh: Option<&str>, expiry: u64) -> Token {
    let mut v = json!({"access_token": access, "token_type": "Bearer", "expiry": expiry});
    if let Some(r) = refresh {
        v["refresh_token"] = json!(r);
    }
    let Value::Object(map) = v else {
        unreachable!()
    };
    Token::from_map(map)
}

/// A token endpoint whose refreshes are answered by `f` (with the index of
/// the refresh); logins as [`std_token`].
fn refresh_stub(f: impl Fn(usize) -> Resp + Send + Sync + 'static) -> Stub {
    let n = Arc::new(AtomicUsize::new(0));
    Stub::start(move |req: &Req, nth| {
        if req.field("grant_type").as_deref() == Some("refresh_token") {
            f(n.fetch_add(1, Ordering::SeqCst))
        } else {
            std_token(req, nth)
        }
    })
}

/// A token endpoint whose refresh number `n` waits for `gate` when
/// `hold(n)`, then answers `at-<tag>-<n>` with the rotated refresh token
/// `rt-<tag>-<n>`.
fn held_refreshes(gate: &Gate, tag: &'static str, hold: fn(usize) -> bool) -> Stub {
    let held = gate.clone();
    refresh_stub(move |n| {
        if hold(n) {
            held.wait();
        }
        ok_json(json!({
            "access_token": format!("at-{tag}-{n}"),
            "refresh_token": format!("rt-{tag}-{n}"),
            "expires_in": 3600,
            "token_type": "Bearer",
        }))
    })
}

fn refreshes(stub: &Stub) -> usize {
    stub.to(path::ANTHROPIC)
        .iter()
        .filter(|r| r.field("grant_type").as_deref() == Some("refresh_token"))
        .count()
}

/// How many proxies other than the lease holder are waiting for the key's
/// lease: their connections (named `credproxy <holder>`) last ran the
/// lease statement. A proxy's refresh job waits there only after its first
/// request passed its checks (read the token and its metadata).
fn lease_waiters(f: &Fleet) -> i64 {
    f.number(
        "SELECT count(DISTINCT application_name) FROM pg_stat_activity \
         WHERE application_name LIKE 'credproxy %' \
         AND query LIKE 'INSERT INTO credproxy_leases%' \
         AND substr(application_name, 11) NOT IN (SELECT holder FROM credproxy_leases)",
    )
}

#[test]
fn three_proxies_and_24_clients_share_exactly_one_refresh() {
    let fleet = Fleet::new();
    fleet.seed_expired();
    let gate = Gate::new();
    let stub = held_refreshes(&gate, "FLEET", |_| true);
    let config = providers_toml(&stub, None);
    let proxies: Vec<(Env, Server)> = (0..3).map(|_| fleet.proxy(&config)).collect();
    // Every request is on its socket before anything is awaited.
    let mut conns: Vec<_> = (0..24).map(|i| proxies[i % 3].1.hs()).collect();
    for c in &mut conns {
        c.req("r", "refresh_token", json!({"provider": "anthropic"}));
    }
    let replies: Vec<Value> = std::thread::scope(|s| {
        let clients: Vec<_> = conns
            .into_iter()
            .map(|mut c| s.spawn(move || c.recv()))
            .collect();
        // One proxy holds the lease and the provider holds its refresh;
        // the two others wait for the lease, so each has read the expired
        // token before anything was written.
        wait_for("the held refresh", Duration::from_secs(10), || {
            refreshes(&stub) >= 1
        });
        wait_for(
            "two proxies waiting for the lease",
            Duration::from_secs(10),
            || lease_waiters(&fleet) == 2,
        );
        gate.open();
        clients
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });

    for r in &replies {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["data"]["access_token"], "at-FLEET-0", "{r}");
        assert!(r["data"].get("refresh_token").is_none(), "{r}");
    }
    assert_eq!(refreshes(&stub), 1, "exactly one refresh for the fleet");
    // Stored once: the seed was version 1, the refresh wrote version 2.
    assert_eq!(
        fleet.number("SELECT version FROM credproxy_tokens WHERE provider = 'anthropic'"),
        2
    );
    let stored = fleet
        .store()
        .read_token("anthropic", "default")
        .expect("read")
        .expect("row");
    let t = stored.token.expect("token");
    assert_eq!(t.refresh_token(), Some("rt-FLEET-0"));
    // Every lease was given back.
    wait_for("leases released", Duration::from_secs(10), || {
        fleet.number("SELECT count(*) FROM credproxy_leases") == 0
    });
    // A dump of the database shows none of the secrets.
    let dump = String::from_utf8_lossy(&fleet.pg.dump()).into_owned();
    assert!(dump.contains("credproxy_tokens"), "a real dump");
    for secret in [
        SEED_ACCESS,
        SEED_REFRESH,
        "at-FLEET-0",
        "rt-FLEET-0",
        "FLEET",
    ] {
        assert!(!dump.contains(secret), "{secret} in pg_dump");
    }
}

#[test]
fn a_killed_lease_holders_lease_is_taken_over_without_waiting_out_its_deadline() {
    let fleet = Fleet::new();
    fleet.seed_expired();
    let gate = Gate::new();
    // The first refresh never gets an answer in time: its proxy is killed
    // while the provider holds it.
    let stub = held_refreshes(&gate, "TAKEOVER", |n| n == 0);
    // The default lease (30 s) outlasts the lock wait (10 s): only the
    // holder's vanished connections let b in before it gives up.
    let config = providers_toml(&stub, None);
    let (_ea, mut a) = fleet.proxy(&config);
    let (_eb, b) = fleet.proxy(&config);
    let mut ca = a.hs();
    ca.req("r1", "refresh_token", json!({"provider": "anthropic"}));
    wait_for(
        "a's refresh at the provider",
        Duration::from_secs(10),
        || refreshes(&stub) == 1,
    );
    assert_eq!(
        fleet.number("SELECT count(*) FROM credproxy_leases"),
        1,
        "a holds the lease"
    );
    a.kill();

    let mut cb = b.hs();
    let r = cb.call("refresh_token", json!({"provider": "anthropic"}));
    gate.open();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["data"]["access_token"], "at-TAKEOVER-1", "{r}");
    assert_eq!(refreshes(&stub), 2);
    let t = fleet
        .store()
        .read_token("anthropic", "default")
        .expect("read")
        .expect("row");
    assert_eq!(t.version, 2, "written once, by the proxy that took over");
    assert_eq!(
        t.token.expect("token").refresh_token(),
        Some("rt-TAKEOVER-1")
    );
}
#[test]
fn a_stopped_database_keeps_cached_tokens_served_and_the_proxy_recovers() {
    let fleet = Fleet::new();
    let seed = fleet.store();
    for (provider, access) in [("anthropic", "at-CACHED-1"), ("gemini", "at-UNCACHED-2")] {
        seed.put_token_cas(provider, "default", 0, Some(&token(access, None, FAR)))
            .expect("seed");
    }
    drop(seed);
    let stub = refresh_stub(|_| ok_json(json!({})));
    let config = format!(
        "[postgres]\ncache_staleness_ms = 0\n\n{}",
        providers_toml(&stub, None)
    );
    let (_env, srv) = fleet.proxy(&config);
    let mut c = srv.hs();
    let got = c.ok("get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["access_token"], "at-CACHED-1");

    fleet.pg.stop();
    let got = c.ok("get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["access_token"], "at-CACHED-1", "served from the cache");
    for (op, payload) in [
        ("get_token", json!({"provider": "gemini"})),
        (
            "save_token",
            json!({"provider": "qwen", "token": tok("at-NEW-3")}),
        ),
        ("list_providers", json!({})),
    ] {
        let r = c.call(op, payload);
        assert_eq!(r["ok"], false, "{op}: {r}");
        assert_eq!(r["code"], "STORE_UNAVAILABLE", "{op}: {r}");
        assert!(
            r["retryAfter"].as_u64().is_some_and(|s| s >= 1),
            "{op}: {r}"
        );
    }

    fleet.pg.start();
    wait_for("the store back", Duration::from_secs(20), || {
        c.call("get_token", json!({"provider": "gemini"}))["ok"] == true
    });
    let got = c.ok("get_token", json!({"provider": "gemini"}));
    assert_eq!(got["access_token"], "at-UNCACHED-2");
    c.ok(
        "save_token",
        json!({"provider": "qwen", "token": tok("at-NEW-3")}),
    );
    let got = c.ok("get_token", json!({"provider": "qwen"}));
    assert_eq!(got["access_token"], "at-NEW-3");
    // Nothing was written twice or lost: one version per write.
    assert_eq!(
        fleet.number("SELECT version FROM credproxy_tokens WHERE provider = 'qwen'"),
        1
    );
    assert_eq!(
        c.ok("get_token", json!({"provider": "anthropic"}))["access_token"],
        "at-CACHED-1"
    );
}
