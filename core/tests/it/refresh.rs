//! `refresh_token` and proactive renewal (SPEC §5.3, §5.4): the exact
//! provider request, single flight, store lock and fresh re-read, cooldown,
//! retries on engine timers, auth failures and the unusable mark, write
//! failures, logout wins, and renewal scheduling.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credproxy_core::http::TransportError;
use credproxy_core::testkit::Harness;
use credproxy_core::{Config, ConnId, Effect};
use serde_json::{Value, json};

const TOKEN_URL: &str = "https://console.anthropic.com/v1/oauth/token";

fn seeded(expires_in_s: i64) -> Harness {
    let mut h = Harness::new();
    let expiry = h.now.unix_secs() as i64 + expires_in_s;
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"AT-0","refresh_token":"RT-0","expiry":expiry,"token_type":"Bearer","account":"kept"}),
    );
    h
}

fn form(h: &Harness, i: usize) -> Vec<(String, String)> {
    url::form_urlencoded::parse(h.http_log[i].body.as_ref().unwrap().expose().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn refresh(h: &mut Harness, conn: ConnId, id: &str) {
    h.request(conn, id, "refresh_token", json!({"provider":"anthropic"}));
}

/// A store whose token expired 10 s ago, a connection, and a
/// `refresh_token` request under `id` already sent.
fn refreshing(id: &str) -> (Harness, ConnId) {
    let mut h = seeded(-10);
    let conn = h.connect();
    refresh(&mut h, conn, id);
    (h, conn)
}

/// Asserts that the reply to `id` carries the access token `want`.
#[track_caller]
fn assert_access(h: &mut Harness, conn: ConnId, id: &str, want: &str) {
    assert_eq!(reply(h, conn, id)["data"]["access_token"], json!(want));
}

fn reply(h: &mut Harness, conn: ConnId, id: &str) -> Value {
    h.take_replies(conn)
        .into_iter()
        .find(|r| r["id"] == json!(id))
        .unwrap_or(Value::Null)
}

/// Answers the renewal's provider call with a new token (`AT-R`), asserts
/// that it was stored and that its own renewal is scheduled, and returns
/// when that renewal fires.
#[track_caller]
fn renewal_succeeds(h: &mut Harness) -> u64 {
    h.respond(
        200,
        json!({"access_token":"AT-R","refresh_token":"RT-R","expires_in":3600}),
    );
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["access_token"],
        json!("AT-R")
    );
    h.engine
        .renewal_scheduled("anthropic", "default")
        .expect("the renewed token's renewal is scheduled")
}

#[test]
fn refresh_sends_the_stored_refresh_token_and_persists_before_replying() {
    let (mut h, conn) = refreshing("r");
    assert_eq!(h.http_log.len(), 1);
    assert_eq!(h.http_log[0].url, TOKEN_URL);
    assert_eq!(h.http_log[0].timeout_ms, 8_000);
    assert_eq!(
        form(&h, 0),
        vec![
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            ("refresh_token".to_owned(), "RT-0".to_owned()),
            (
                "client_id".to_owned(),
                "9d1c250a-e61b-44d9-88ed-5944d1962f5e".to_owned()
            ),
        ]
    );
    assert!(
        h.store
            .locks
            .contains(&("anthropic".into(), "default".into())),
        "store lock held"
    );
    h.respond(200, json!({"access_token":"AT-1","refresh_token":"RT-1","expires_in":"3600","token_type":"BEARER"}));
    let r = reply(&mut h, conn, "r");
    let expiry = h.now.unix_secs() + 3600;
    assert_eq!(
        r["data"],
        json!({"access_token":"AT-1","expiry":expiry,"token_type":"Bearer","account":"kept"})
    );
    let stored = h.store.token("anthropic", "default").unwrap();
    assert_eq!(
        stored["refresh_token"],
        json!("RT-1"),
        "rotated token persisted"
    );
    assert!(h.store.locks.is_empty(), "store lock released");
    assert!(!h.observable_text().contains("RT-1"));
}

/// Codex tokens are labelled with the account of their id_token on a
/// refresh as on a login (llxprt's client reads `account_id`); other
/// providers' tokens are stored as answered.
#[test]
fn a_codex_refresh_labels_the_token_with_its_id_token_account() {
    let claims = json!({"https://api.openai.com/auth":{"chatgpt_account_id":"acc-9"}});
    let id_token = format!("h.{}.s", URL_SAFE_NO_PAD.encode(claims.to_string()));
    for (provider, want) in [("codex", json!("acc-9")), ("anthropic", Value::Null)] {
        let mut h = Harness::new();
        let expired = h.now.unix_secs() as i64 - 10;
        h.store.put_token(
            provider,
            "default",
            json!({"access_token":"AT-0","refresh_token":"RT-0","expiry":expired,"token_type":"Bearer"}),
        );
        let conn = h.connect();
        h.request(conn, "r", "refresh_token", json!({"provider":provider}));
        h.respond(
            200,
            json!({"access_token":"AT-1","refresh_token":"RT-1","expires_in":3600,"id_token":id_token}),
        );
        assert_eq!(
            reply(&mut h, conn, "r")["data"]["access_token"],
            json!("AT-1")
        );
        let stored = h.store.token(provider, "default").unwrap();
        assert_eq!(stored["account_id"], want, "{provider}");
    }
}

#[test]
fn keeps_the_old_refresh_token_when_none_is_returned() {
    let (mut h, _conn) = refreshing("r");
    h.respond(200, json!({"access_token":"AT-1","refresh_token":null}));
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["refresh_token"],
        json!("RT-0")
    );
}

#[test]
fn concurrent_callers_share_one_provider_call() {
    let mut h = seeded(-10);
    let a = h.connect();
    let b = h.connect();
    for i in 0..5 {
        refresh(&mut h, if i % 2 == 0 { a } else { b }, &format!("r{i}"));
    }
    assert_eq!(h.http_log.len(), 1);
    h.respond(200, json!({"access_token":"AT-1"}));
    let mut replies = h.take_replies(a);
    replies.extend(h.take_replies(b));
    assert_eq!(replies.len(), 5);
    assert!(
        replies
            .iter()
            .all(|r| r["data"]["access_token"] == json!("AT-1")),
        "{replies:?}"
    );
}

#[test]
fn cooldown_returns_a_valid_token_or_rate_limits() {
    let (mut h, conn) = refreshing("r1");
    h.respond(200, json!({"access_token":"AT-1","expires_in":3600}));
    reply(&mut h, conn, "r1");
    h.advance(5_000);
    refresh(&mut h, conn, "r2");
    let r = reply(&mut h, conn, "r2");
    assert_eq!(
        r["data"]["access_token"],
        json!("AT-1"),
        "valid token during cooldown"
    );
    assert_eq!(h.http_log.len(), 1);
    // An expired token during the cooldown is rate limited.
    let (mut h, conn) = refreshing("r1");
    h.respond(200, json!({"access_token":"AT-1","expires_in":30}));
    reply(&mut h, conn, "r1");
    h.advance(5_000);
    refresh(&mut h, conn, "r2");
    assert_eq!(
        reply(&mut h, conn, "r2"),
        json!({"id":"r2","ok":false,"code":"RATE_LIMITED","error":"Refresh rate limited","retryAfter":25})
    );
    h.advance(25_000);
    refresh(&mut h, conn, "r3");
    assert_eq!(h.http_log.len(), 2, "cooldown over");
}

#[test]
fn cooldown_also_follows_a_failure_and_is_per_normalized_key() {
    let mut h = seeded(-10);
    let conn = h.connect();
    h.store.put_token(
        "anthropic",
        "other",
        json!({"access_token":"x","refresh_token":"y","expiry":1,"token_type":"Bearer"}),
    );
    refresh(&mut h, conn, "r1");
    h.respond(400, json!({"error":"invalid_scope"}));
    assert_eq!(
        reply(&mut h, conn, "r1")["error"],
        json!("Provider rejected the request (invalid_scope)")
    );
    h.request(
        conn,
        "r2",
        "refresh_token",
        json!({"provider":"anthropic","bucket":"default"}),
    );
    assert_eq!(reply(&mut h, conn, "r2")["code"], json!("RATE_LIMITED"));
    h.request(
        conn,
        "r3",
        "refresh_token",
        json!({"provider":"anthropic","bucket":"other"}),
    );
    assert_eq!(h.http_log.len(), 2, "independent key");
}

#[test]
fn transient_failures_retry_after_one_and_three_seconds() {
    let (mut h, conn) = refreshing("r");
    h.respond_failure(TransportError::Timeout);
    h.advance(999);
    assert!(h.http_pending.is_empty());
    h.advance(1);
    h.respond(502, json!({}));
    h.advance(2_999);
    assert!(h.http_pending.is_empty());
    h.advance(1);
    h.respond(503, json!({}));
    assert_eq!(
        reply(&mut h, conn, "r"),
        json!({"id":"r","ok":false,"code":"REFRESH_FAILED","error":"Provider unreachable (http 503)"})
    );
    assert_eq!(h.http_log.len(), 3);
    // Transient then success.
    let (mut h, conn) = refreshing("r");
    h.respond(500, json!({}));
    h.advance(1_000);
    h.respond(200, json!({"access_token":"AT-1"}));
    assert_access(&mut h, conn, "r", "AT-1");
}

#[test]
fn auth_failure_marks_the_refresh_token_unusable() {
    let (mut h, conn) = refreshing("r");
    h.respond(
        400,
        json!({"error":"invalid_grant","error_description":"revoked"}),
    );
    // Fresh re-read found the same refresh token: no retry.
    assert_eq!(h.http_log.len(), 1);
    assert_eq!(
        reply(&mut h, conn, "r"),
        json!({"id":"r","ok":false,"code":"REAUTH_REQUIRED","error":"Provider rejected the request (invalid_grant)"})
    );
    assert!(
        h.store
            .unusable
            .contains(&("anthropic".into(), "default".into()))
    );
    h.advance(60_000);
    refresh(&mut h, conn, "r2");
    assert_eq!(
        reply(&mut h, conn, "r2"),
        json!({"id":"r2","ok":false,"code":"REAUTH_REQUIRED","error":"Login required for anthropic/default"})
    );
    assert_eq!(h.http_log.len(), 1, "no provider call while unusable");
    let t = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert!(
        t["data"].get("refresh_unusable").is_none(),
        "the mark never shows in get_token"
    );
}

#[test]
fn auth_failure_after_a_sibling_rotated_uses_the_new_refresh_token() {
    let mut h = seeded(-10);
    h.auto_effects = true;
    let conn = h.connect();
    refresh(&mut h, conn, "r");
    // Another process rotates the refresh token while our call is out.
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"AT-S","refresh_token":"RT-S","expiry":1,"token_type":"Bearer"}),
    );
    h.respond(401, json!({}));
    assert_eq!(
        h.http_log.len(),
        2,
        "retried with the sibling's refresh token"
    );
    assert!(form(&h, 1).contains(&("refresh_token".to_owned(), "RT-S".to_owned())));
    h.respond(200, json!({"access_token":"AT-2","refresh_token":"RT-2"}));
    assert_access(&mut h, conn, "r", "AT-2");
}

#[test]
fn a_token_refreshed_meanwhile_is_returned_without_a_provider_call() {
    let mut h = seeded(-10);
    h.auto_effects = false;
    let conn = h.connect();
    refresh(&mut h, conn, "r");
    // The check read (held) sees the old token; another process refreshes
    // before the job's fresh re-read.
    h.complete(0);
    let far = h.now.unix_secs() + 3600;
    h.store.put_token("anthropic", "default", json!({"access_token":"AT-OTHER","refresh_token":"RT-X","expiry":far,"token_type":"Bearer"}));
    h.complete_all();
    assert!(h.http_log.is_empty());
    assert_access(&mut h, conn, "r", "AT-OTHER");
}

#[test]
fn remove_during_refresh_wins() {
    let (mut h, conn) = refreshing("r");
    h.request(conn, "rm", "remove_token", json!({"provider":"anthropic"}));
    assert!(
        reply(&mut h, conn, "rm").is_null(),
        "remove waits for the key"
    );
    h.respond(200, json!({"access_token":"AT-1","refresh_token":"RT-1"}));
    assert!(h.store.token("anthropic", "default").is_none());
    let replies = h.take_replies(conn);
    assert_eq!(
        replies.iter().find(|r| r["id"] == json!("r")).unwrap()["code"],
        json!("NOT_FOUND")
    );
    assert_eq!(
        replies.iter().find(|r| r["id"] == json!("rm")).unwrap()["data"],
        json!({})
    );
}

#[test]
fn write_failure_keeps_the_merged_token_authoritative() {
    let (mut h, conn) = refreshing("r");
    h.store.fail_writes = true;
    h.respond(
        200,
        json!({"access_token":"AT-1","refresh_token":"RT-1","expires_in":3600}),
    );
    assert_access(&mut h, conn, "r", "AT-1");
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["refresh_token"],
        json!("RT-0")
    );
    assert_eq!(
        h.call(conn, "get_token", json!({"provider":"anthropic"}))["data"]["access_token"],
        json!("AT-1")
    );
    h.store.fail_writes = false;
    h.advance(1_000);
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["refresh_token"],
        json!("RT-1"),
        "write retried"
    );
}

#[test]
fn store_lock_timeout() {
    let mut h = seeded(-10);
    h.store
        .foreign_locks
        .insert(("anthropic".into(), "default".into()));
    let conn = h.connect();
    refresh(&mut h, conn, "r");
    assert_eq!(
        reply(&mut h, conn, "r"),
        json!({"id":"r","ok":false,"code":"REFRESH_FAILED","error":"Credential store is busy"})
    );
    assert!(h.http_log.is_empty());
}

#[test]
fn error_paths_before_the_provider() {
    let mut h = Harness::new();
    let conn = h.connect();
    let r = h.call(conn, "refresh_token", json!({"provider":"anthropic"}));
    assert_eq!(r["error"], json!("No token found for provider: anthropic"));
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"a","expiry":1,"token_type":"Bearer"}),
    );
    h.effects.clear();
    let r = h.call(conn, "refresh_token", json!({"provider":"anthropic"}));
    assert_eq!(r["code"], json!("REFRESH_NOT_AVAILABLE"));
    assert_eq!(
        r["error"],
        json!("Token for anthropic does not have a refresh_token")
    );
    // Refused on the first read: no metadata read, no store lock, no job.
    assert_eq!(
        h.effects,
        vec![Effect::TokenGet {
            provider: "anthropic".into(),
            bucket: "default".into(),
            fresh: false,
        }]
    );
    h.store.put_token(
        "nobody",
        "default",
        json!({"access_token":"a","refresh_token":"r","expiry":1,"token_type":"Bearer"}),
    );
    let r = h.call(conn, "refresh_token", json!({"provider":"nobody"}));
    assert_eq!(r["code"], json!("PROVIDER_NOT_FOUND"));
}

#[test]
fn renewal_fires_before_expiry_and_refreshes() {
    let mut h = seeded(3_600);
    let conn = h.connect();
    let got = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert_eq!(got["data"]["access_token"], json!("AT-0"));
    let at = h
        .engine
        .renewal_scheduled("anthropic", "default")
        .expect("scheduled");
    // lead = 360 s for a one-hour token, jitter below 30 s.
    assert!(
        (3_600_000 - 360_000 - 30_000..=3_600_000 - 360_000).contains(&at),
        "{at}"
    );
    h.advance(at - 1);
    assert!(h.http_log.is_empty());
    h.advance(1);
    assert_eq!(h.http_log.len(), 1);
    let next = renewal_succeeds(&mut h);
    assert!(next > at);
}

/// A renewal is scheduled once per (key, expiry): serving the same token
/// again keeps the schedule (no new jitter drawn), a token with another
/// expiry moves it.
#[test]
fn renewal_is_scheduled_once_per_expiry() {
    let mut h = seeded(3_600);
    let conn = h.connect();
    let scheduled = |h: &mut Harness| {
        h.call(conn, "get_token", json!({"provider":"anthropic"}));
        h.engine.renewal_scheduled("anthropic", "default").unwrap()
    };
    let first = scheduled(&mut h);
    for _ in 0..5 {
        assert_eq!(scheduled(&mut h), first, "same expiry, same schedule");
    }
    let expiry = h.now.unix_secs() + 7_200;
    let r = h.call(
        conn,
        "save_token",
        json!({"provider":"anthropic","token":{"access_token":"AT-2","refresh_token":"RT-2","expiry":expiry,"token_type":"Bearer"}}),
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    let moved = scheduled(&mut h);
    // lead = 720 s for a two-hour token, jitter below 30 s.
    assert!(
        (7_200_000 - 720_000 - 30_000..=7_200_000 - 720_000).contains(&moved),
        "{moved}"
    );
}

/// A refresh that returns a short-lived token: its renewal would fall
/// inside the refresh cooldown, so it waits for the cooldown's end (30 s
/// after the attempt), and a token that expires before then gets none.
#[test]
fn renewal_never_fires_inside_the_refresh_cooldown() {
    for (expires_in, want) in [(50, Some(30_000)), (20, None)] {
        let mut h = seeded(3_600);
        let conn = h.connect();
        let start = h.now.mono.0;
        h.call(conn, "refresh_token", json!({"provider":"anthropic"}));
        h.respond(
            200,
            json!({"access_token":"AT-S","refresh_token":"RT-S","expires_in":expires_in}),
        );
        let at = h.engine.renewal_scheduled("anthropic", "default");
        assert_eq!(
            at.map(|at| at - start),
            want,
            "a token of {expires_in} s renews at the cooldown's end or not at all"
        );
    }
}

#[test]
fn renewal_backs_off_on_transient_failures_and_stops_on_auth_failure() {
    let mut config = Config::default();
    config.limits.renewal_backoff_ms = 30_000;
    let mut h = Harness::with_config(config, 4);
    let expiry = h.now.unix_secs() + 3_600;
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"A","refresh_token":"R","expiry":expiry,"token_type":"Bearer"}),
    );
    let conn = h.connect();
    h.call(conn, "get_token", json!({"provider":"anthropic"}));
    let at = h.engine.renewal_scheduled("anthropic", "default").unwrap();
    h.advance(at);
    // One renewal try is one refresh: three attempts 1 s and 3 s apart.
    for _ in 0..2 {
        h.respond_failure(TransportError::Connect);
        h.advance_to_next(10_000);
    }
    h.respond(503, json!({}));
    assert_eq!(h.http_log.len(), 3);
    let again = h.engine.renewal_scheduled("anthropic", "default").unwrap();
    assert!(again >= h.now.mono.0 + 30_000, "backs off at least 30 s");
    h.advance(again - h.now.mono.0);
    h.respond(400, json!({"error":"invalid_grant"}));
    assert_eq!(
        h.engine.renewal_scheduled("anthropic", "default"),
        None,
        "auth failure stops renewal"
    );
}

/// A renewal harness: `config` and a token of `anthropic` expiring in an
/// hour whose renewal is scheduled; returns it with the connection, the
/// renewal's monotonic time and the expiry in unix ms.
fn scheduled_renewal(config: Config) -> (Harness, ConnId, u64, u64) {
    let mut h = Harness::with_config(config, 4);
    let expiry_ms = (h.now.unix_secs() + 3_600) * 1000;
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"A","refresh_token":"R","expiry":expiry_ms / 1000,"token_type":"Bearer"}),
    );
    let conn = h.connect();
    h.call(conn, "get_token", json!({"provider":"anthropic"}));
    let at = h.engine.renewal_scheduled("anthropic", "default").unwrap();
    (h, conn, at, expiry_ms)
}

/// One refresh that fails transiently on all three of its attempts (1 s
/// and 3 s apart).
fn fail_three_attempts(h: &mut Harness) {
    for _ in 0..2 {
        h.respond_failure(TransportError::Connect);
        h.advance_to_next(10_000);
    }
    h.respond(503, json!({}));
}

#[test]
fn renewal_backoff_doubles_per_failed_try_up_to_its_cap() {
    let mut config = Config::default();
    config.limits.renewal_backoff_ms = 30_000;
    config.limits.renewal_backoff_cap_ms = 100_000;
    let (mut h, _conn, at, _) = scheduled_renewal(config);
    h.advance(at - h.now.mono.0);
    let mut waits = Vec::new();
    for _ in 0..3 {
        fail_three_attempts(&mut h);
        let next = h.engine.renewal_scheduled("anthropic", "default").unwrap();
        waits.push(next - h.now.mono.0);
        h.advance(next - h.now.mono.0);
    }
    assert_eq!(waits, [30_000, 60_000, 100_000]);
    assert_eq!(h.http_log.len(), 4 * 3 - 2, "the fourth try is under way");
}

#[test]
fn a_renewal_whose_refresh_is_rejected_otherwise_than_by_auth_stops() {
    let (mut h, _conn, at, _) = scheduled_renewal(Config::default());
    h.advance(at - h.now.mono.0);
    // 200 without an access token: REFRESH_FAILED, but not "unreachable".
    h.respond(200, json!({"token_type":"Bearer"}));
    assert_eq!(h.http_log.len(), 1);
    assert_eq!(h.engine.renewal_scheduled("anthropic", "default"), None);
}

/// A renewal that fires while a failed `refresh_token` request's cooldown
/// runs waits for the cooldown's end, or is dropped when that end is past
/// the token's expiry (a refresh after it would be too late).
#[test]
fn a_renewal_in_a_cooldown_waits_for_its_end_or_stops_past_the_expiry() {
    for longer_than_the_lead in [false, true] {
        let (probe, _, at, expiry_ms) = scheduled_renewal(Config::default());
        let lead = expiry_ms - (probe.now.unix_ms + (at - probe.now.mono.0));
        let mut config = Config::default();
        config.limits.refresh_cooldown_ms = if longer_than_the_lead {
            lead * 2
        } else {
            lead / 2
        };
        let (mut h, conn, at2, _) = scheduled_renewal(config.clone());
        assert_eq!(at2, at, "the same seed schedules the same renewal");
        h.advance(at - 10_000 - h.now.mono.0);
        h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
        fail_three_attempts(&mut h);
        let last = h.now.mono.0;
        assert!(last < at, "the request's refresh ended before the renewal");
        h.advance(at - last);
        let got = h.engine.renewal_scheduled("anthropic", "default");
        if longer_than_the_lead {
            assert_eq!(got, None, "cooldown ends past the expiry");
        } else {
            assert_eq!(got, Some(last + config.limits.refresh_cooldown_ms));
        }
        assert_eq!(h.http_log.len(), 3, "no renewal refresh in the cooldown");
    }
}

#[test]
fn remove_token_cancels_renewal() {
    let mut h = seeded(3_600);
    let conn = h.connect();
    h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert!(h.engine.renewal_scheduled("anthropic", "default").is_some());
    h.call(conn, "remove_token", json!({"provider":"anthropic"}));
    assert_eq!(h.engine.renewal_scheduled("anthropic", "default"), None);
    h.advance(3_600_000);
    assert!(h.http_log.is_empty());
}

/// Single flight is per key, not global: a device login's token (Qwen)
/// is renewed while a `refresh_token` of another key (Anthropic) is still
/// waiting for its provider, so two refresh requests are in flight, one per
/// key. Each key still has one: later callers of either key join its job.
/// (The sequence the model test's regression seed `ef9cc8c7…` replays,
/// where the model counted refresh requests across keys.)
#[test]
fn refreshes_of_two_keys_run_side_by_side_each_single_flight() {
    const QWEN_DEVICE: &str = "https://chat.qwen.ai/api/v1/oauth2/device/code";
    const QWEN_TOKEN: &str = "https://chat.qwen.ai/api/v1/oauth2/token";
    let mut h = seeded(-10);
    h.script(
        QWEN_DEVICE,
        200,
        json!({"device_code":"DEV","user_code":"U-1","verification_uri":"https://chat.qwen.ai/a","interval":1}),
    );
    let conn = h.connect();
    let r = h.call(conn, "oauth_initiate", json!({"provider":"qwen"}));
    assert_eq!(r["data"]["flow_type"], json!("device_code"), "{r}");
    // The background poll gets a two-minute token: its renewal is scheduled
    // 30-60 s ahead (lead = half the lifetime, jitter below 30 s).
    h.advance_to_next(10_000);
    assert_eq!(h.http_pending.len(), 1);
    assert_eq!(h.http_pending[0].1.url, QWEN_TOKEN);
    h.respond(
        200,
        json!({"access_token":"Q-1","refresh_token":"QRT-1","expires_in":120}),
    );
    let renew_at = h
        .engine
        .renewal_scheduled("qwen", "default")
        .expect("login schedules renewal");
    // Anthropic's refresh goes out and is held by the provider...
    refresh(&mut h, conn, "a1");
    assert_eq!(h.http_pending.len(), 1);
    assert_eq!(h.http_pending[0].1.url, TOKEN_URL);
    // ... when Qwen's renewal fires.
    h.advance(renew_at - h.now.mono.0);
    let urls: Vec<&str> = h.http_pending.iter().map(|(_, r)| r.url.as_str()).collect();
    assert_eq!(urls, [TOKEN_URL, QWEN_TOKEN]);
    // More callers of either key join the running job: no new request.
    refresh(&mut h, conn, "a2");
    h.request(conn, "q1", "refresh_token", json!({"provider":"qwen"}));
    assert_eq!(h.http_pending.len(), 2);
    let refreshes = h
        .http_log
        .iter()
        .filter(|r| {
            r.body
                .as_ref()
                .unwrap()
                .expose()
                .contains("grant_type=refresh_token")
        })
        .count();
    assert_eq!(refreshes, 2, "one refresh per key");
    h.respond(200, json!({"access_token":"AT-1"}));
    h.respond(200, json!({"access_token":"Q-2","expires_in":3600}));
    let replies = h.take_replies(conn);
    let token = |id: &str| {
        replies
            .iter()
            .find(|r| r["id"] == json!(id))
            .map(|r| r["data"]["access_token"].clone())
    };
    assert_eq!(token("a1"), Some(json!("AT-1")), "{replies:?}");
    assert_eq!(token("a2"), Some(json!("AT-1")), "{replies:?}");
    assert_eq!(token("q1"), Some(json!("Q-2")), "{replies:?}");
    assert_eq!(
        h.store.token("qwen", "default").unwrap()["refresh_token"],
        json!("QRT-1")
    );
}

/// A renewal that falls due while a `refresh_token` of the same key is at
/// the provider does not start a second refresh; it rides on the running
/// one, so when that one fails transiently the renewal backs off and tries
/// again (before, the fired timer was spent and the key, its expiry
/// unchanged, was never renewed).
#[test]
fn a_renewal_due_during_a_refresh_joins_it_and_backs_off_when_it_fails() {
    let mut h = seeded(120);
    let conn = h.connect();
    h.call(conn, "get_token", json!({"provider":"anthropic"}));
    let at = h.engine.renewal_scheduled("anthropic", "default").unwrap();
    h.advance(at - 1);
    refresh(&mut h, conn, "r");
    assert_eq!(h.http_pending.len(), 1);
    h.advance(1);
    assert_eq!(h.http_pending.len(), 1, "single flight: the renewal joins");
    for _ in 0..2 {
        h.respond_failure(TransportError::Connect);
        h.advance_to_next(10_000);
    }
    h.respond(503, json!({}));
    assert_eq!(reply(&mut h, conn, "r")["code"], json!("REFRESH_FAILED"));
    assert_eq!(h.http_log.len(), 3);
    let again = h
        .engine
        .renewal_scheduled("anthropic", "default")
        .expect("the renewal backs off instead of being lost");
    assert!(again >= h.now.mono.0 + 30_000, "backs off at least 30 s");
    let expiry_mono = 120_000;
    assert!(again < expiry_mono, "{again}");
    h.advance(again - h.now.mono.0);
    assert_eq!(h.http_log.len(), 4, "the renewal tries again");
    renewal_succeeds(&mut h);
}

/// A renewal whose refresh ends with the expiry it was scheduled for is
/// scheduled again: its timer has fired, so the once-per-(key, expiry) rule
/// must not keep the spent schedule. Twice here: another process swaps the
/// access token but not the expiry (the renewal's fresh re-read returns it
/// without a provider call), then the provider answers with that same
/// expiry. Before, either left the key with no renewal at all.
#[test]
fn a_renewal_that_ends_with_the_same_expiry_is_scheduled_again() {
    let mut h = seeded(3_600);
    let expiry_s = h.now.unix_secs() + 3_600;
    let expiry_mono = 3_600_000;
    let conn = h.connect();
    h.call(conn, "get_token", json!({"provider":"anthropic"}));
    let at = h.engine.renewal_scheduled("anthropic", "default").unwrap();
    // Another process swaps the access token, keeping the expiry.
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"AT-OTHER","refresh_token":"RT-0","expiry":expiry_s,"token_type":"Bearer"}),
    );
    h.advance(at);
    assert!(h.http_log.is_empty(), "the re-read found a new token");
    let next = h
        .engine
        .renewal_scheduled("anthropic", "default")
        .expect("renewal scheduled again after the re-read");
    assert!(h.now.mono.0 < next && next < expiry_mono, "{next}");
    // It fires, finds the token it saw, and asks the provider, which
    // answers with the same expiry.
    h.advance(next - h.now.mono.0);
    assert_eq!(h.http_log.len(), 1, "the renewal refreshes");
    let same = expiry_s - h.now.unix_secs();
    h.respond(
        200,
        json!({"access_token":"AT-SAME","refresh_token":"RT-1","expires_in":same}),
    );
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["expiry"],
        json!(expiry_s)
    );
    let again = h
        .engine
        .renewal_scheduled("anthropic", "default")
        .expect("renewal scheduled again after a same-expiry answer");
    assert!(again >= h.now.mono.0 + 30_000, "not before the cooldown");
    assert!(again < expiry_mono, "{again}");
    h.advance(again - h.now.mono.0 - 1);
    assert_eq!(h.http_log.len(), 1);
    h.advance(1);
    assert_eq!(h.http_log.len(), 2, "the renewal tries again");
    assert_eq!(
        form(&h, 1)
            .iter()
            .find(|(k, _)| k == "refresh_token")
            .unwrap()
            .1,
        "RT-1"
    );
    renewal_succeeds(&mut h);
}

mod short_lived {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Tick(u64),
        GetToken,
        Refresh,
        /// Answer a held refresh: success with this lifetime, or a refusal.
        Answer(Option<u64>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..20_000).prop_map(Step::Tick),
            Just(Step::GetToken),
            Just(Step::Refresh),
            prop_oneof![(1u64..120).prop_map(Some), Just(None)].prop_map(Step::Answer),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// However requests, renewals and short lifetimes interleave, the
        /// provider sees at most one refresh per key per cooldown (without
        /// transient failures, each request is one refresh attempt).
        #[test]
        fn a_short_lived_token_is_refreshed_at_most_once_per_cooldown(
            life in 1i64..120,
            steps in prop::collection::vec(step(), 1..80),
        ) {
            let mut h = seeded(life);
            let conn = h.connect();
            let mut times: Vec<u64> = Vec::new();
            for (i, s) in steps.into_iter().enumerate() {
                match s {
                    Step::Tick(ms) => h.advance(ms),
                    Step::GetToken => h.request(conn, &format!("g{i}"), "get_token", json!({"provider":"anthropic"})),
                    Step::Refresh => h.request(conn, &format!("r{i}"), "refresh_token", json!({"provider":"anthropic"})),
                    Step::Answer(Some(s)) if !h.http_pending.is_empty() => {
                        h.respond(200, json!({"access_token":format!("AT-{i}"),"refresh_token":format!("RT-{i}"),"expires_in":s}));
                    }
                    Step::Answer(None) if !h.http_pending.is_empty() => h.respond(400, json!({"error":"invalid_scope"})),
                    Step::Answer(_) => {}
                }
                while times.len() < h.http_log.len() {
                    times.push(h.now.mono.0);
                }
                h.take_replies(conn);
            }
            for pair in times.windows(2) {
                prop_assert!(pair[1] - pair[0] >= 30_000, "refreshes at {} and {} ms", pair[0], pair[1]);
            }
        }
    }
}
