//! OAuth against a real authorization server: the device interval (RFC
//! 8628 §3.2, §3.5), `refresh_token` in the cooldown right after a
//! refresh, token responses without a usable `access_token`, logins that
//! return no refresh token, and the level of `login_complete`.

use credproxy_core::testkit::Harness;
use credproxy_core::token::Token;
use credproxy_core::{Config, ConnId, Effect, EffectResult, Level, Secret};
use serde_json::{Value, json};

const QWEN_DEVICE: &str = "https://chat.qwen.ai/api/v1/oauth2/device/code";
const QWEN_TOKEN: &str = "https://chat.qwen.ai/api/v1/oauth2/token";
const ANTHROPIC_TOKEN: &str = "https://console.anthropic.com/v1/oauth/token";

/// Starts a Qwen device login whose grant carries `interval` (if any);
/// returns the initiate reply's data.
fn device_login(h: &mut Harness, conn: ConnId, interval: Option<u64>) -> Value {
    let mut grant = json!({"device_code":"DEV","user_code":"U-1","verification_uri":"https://chat.qwen.ai/a","expires_in":900});
    if let Some(i) = interval {
        grant["interval"] = json!(i);
    }
    h.script(QWEN_DEVICE, 200, grant);
    let r = h.call(conn, "oauth_initiate", json!({"provider":"qwen"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    r["data"].clone()
}

/// Times (virtual ms) of the device polls made while advancing to `until`,
/// answering each with `answer(n)`.
fn poll_times(h: &mut Harness, until: u64, answer: impl Fn(usize) -> Value) -> Vec<u64> {
    let mut times = Vec::new();
    while h.now.mono.0 < until {
        let moved = h.advance_to_next(until - h.now.mono.0);
        if moved == 0 && h.http_pending.is_empty() {
            break;
        }
        while let Some((_, req)) = h.http_pending.front() {
            assert_eq!(req.url, QWEN_TOKEN);
            times.push(h.now.mono.0);
            h.respond(400, answer(times.len()));
        }
    }
    times
}

fn pending(_: usize) -> Value {
    json!({"error":"authorization_pending"})
}

#[test]
fn device_interval_of_one_second_is_used_and_reported() {
    let mut h = Harness::new();
    let conn = h.connect();
    let d = device_login(&mut h, conn, Some(1));
    assert_eq!(d["pollIntervalMs"], json!(1000));
    let sid = d["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        poll_times(&mut h, 5_000, pending),
        vec![1_000, 2_000, 3_000, 4_000, 5_000]
    );
    let r = h.call(conn, "oauth_poll", json!({ "session_id": sid }));
    assert_eq!(r["data"], json!({"status":"pending","pollIntervalMs":1000}));
}

#[test]
fn device_interval_of_zero_is_the_default_five_seconds() {
    let mut h = Harness::new();
    let conn = h.connect();
    let d = device_login(&mut h, conn, Some(0));
    assert_eq!(d["pollIntervalMs"], json!(5000), "{d}");
    assert_eq!(poll_times(&mut h, 10_000, pending), vec![5_000, 10_000]);
}

#[test]
fn device_interval_absent_defaults_to_five_seconds() {
    let mut h = Harness::new();
    let conn = h.connect();
    let d = device_login(&mut h, conn, None);
    assert_eq!(d["pollIntervalMs"], json!(5000));
    assert_eq!(
        poll_times(&mut h, 15_000, pending),
        vec![5_000, 10_000, 15_000]
    );
}

#[test]
fn slow_down_adds_five_seconds_for_good() {
    let mut h = Harness::new();
    let conn = h.connect();
    let d = device_login(&mut h, conn, Some(1));
    let sid = d["session_id"].as_str().unwrap().to_owned();
    let slow_then_pending = |n: usize| {
        if n == 2 {
            json!({"error":"slow_down"})
        } else {
            json!({"error":"authorization_pending"})
        }
    };
    // 1 s, 2 s (slow_down: 1 + 5 = 6 s from now on), 8 s, 14 s, 20 s.
    assert_eq!(
        poll_times(&mut h, 20_000, slow_then_pending),
        vec![1_000, 2_000, 8_000, 14_000, 20_000]
    );
    let r = h.call(conn, "oauth_poll", json!({ "session_id": sid }));
    assert_eq!(
        r["data"],
        json!({"status":"pending","pollIntervalMs":6000,"interval":6})
    );
}

fn seeded_expired() -> Harness {
    let mut h = Harness::new();
    let expiry = h.now.unix_secs() - 10;
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"AT-0","refresh_token":"RT-0","expiry":expiry,"token_type":"Bearer"}),
    );
    h
}

#[test]
fn refresh_right_after_a_refresh_returns_the_fresh_token() {
    let mut h = seeded_expired();
    let conn = h.connect();
    let stale = Token::from_map(
        h.store
            .token("anthropic", "default")
            .unwrap()
            .as_object()
            .cloned()
            .unwrap(),
    );
    let r = h.call(conn, "refresh_token", json!({"provider":"anthropic"}));
    assert_eq!(r, Value::Null, "waits for the provider");
    h.respond(200, json!({"access_token":"AT-1","expires_in":3600}));
    let first = h.take_replies(conn);
    assert_eq!(first[0]["data"]["access_token"], json!("AT-1"));
    // The next read is served from a cache that predates the refresh (the
    // host's store cache): it sees the expired token.
    h.auto_effects = false;
    h.request(conn, "r2", "refresh_token", json!({"provider":"anthropic"}));
    let mut stale_served = false;
    while let Some(i) = h.held.iter().position(|_| true) {
        match &h.held[i].1 {
            Effect::TokenGet { fresh: false, .. } if !stale_served => {
                stale_served = true;
                h.complete_with(i, EffectResult::Token(Some(stale.clone())));
            }
            _ => h.complete(i),
        }
    }
    assert!(stale_served);
    let r = h.take_replies(conn);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["ok"], json!(true), "not RATE_LIMITED: {r:?}");
    assert_eq!(r[0]["data"]["access_token"], json!("AT-1"));
    assert_eq!(h.http_log.len(), 1, "no second provider call");
    assert!(
        h.effects
            .iter()
            .any(|e| matches!(e, Effect::TokenGet { fresh: true, .. })),
        "re-read fresh"
    );
}

/// Two `refresh_token` sent together, the second's reads slow (a remote
/// store): the first's refresh finishes before the second's checks do.
/// The second then sees the cooldown with the token it read before the
/// refresh, still valid but replaced (and, with rotation, perhaps revoked):
/// it must be answered with what is stored now, not with that token.
#[test]
fn a_request_whose_reads_outlast_a_refresh_gets_the_new_token() {
    let mut h = Harness::new();
    let expiry = h.now.unix_secs() + 3600;
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"AT-0","refresh_token":"RT-0","expiry":expiry,"token_type":"Bearer"}),
    );
    let conn = h.connect();
    h.auto_effects = false;
    h.request(conn, "r1", "refresh_token", json!({"provider":"anthropic"}));
    h.request(conn, "r2", "refresh_token", json!({"provider":"anthropic"}));
    // Both token reads answered (AT-0); r2's metadata read is held back.
    h.complete(0);
    h.complete(0);
    let metas: Vec<usize> = (0..h.held.len())
        .filter(|&i| matches!(h.held[i].1, Effect::MetaGet { .. }))
        .collect();
    assert_eq!(metas.len(), 2, "{:?}", h.held);
    let parked = h.held.remove(metas[1]).expect("r2's metadata read");
    h.complete_all();
    h.respond(
        200,
        json!({"access_token":"AT-1","refresh_token":"RT-1","expires_in":3600}),
    );
    h.complete_all();
    let first = h.take_replies(conn);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["id"], json!("r1"));
    assert_eq!(first[0]["data"]["access_token"], json!("AT-1"));
    // Now r2's metadata read returns: the key is in its cooldown.
    h.held.push_back(parked);
    h.complete_all();
    let second = h.take_replies(conn);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0]["id"], json!("r2"));
    assert_eq!(
        second[0]["data"]["access_token"],
        json!("AT-1"),
        "not the token the refresh replaced: {second:?}"
    );
    assert_eq!(h.http_log.len(), 1, "one provider call");
}

/// In the cooldown, a token removed by another process between the cached
/// read and the fresh re-read is answered as not found, not as a fault.
#[test]
fn refresh_in_the_cooldown_of_a_token_removed_meanwhile_is_not_found() {
    let mut h = seeded_expired();
    let conn = h.connect();
    let stale = h.store.token("anthropic", "default").unwrap();
    let stale = Token::from_map(stale.as_object().cloned().unwrap());
    h.call(conn, "refresh_token", json!({"provider":"anthropic"}));
    h.respond(200, json!({"access_token":"AT-1","expires_in":3600}));
    h.take_replies(conn);
    h.auto_effects = false;
    h.request(conn, "r2", "refresh_token", json!({"provider":"anthropic"}));
    let mut reread = false;
    while let Some(i) = h.held.iter().position(|_| true) {
        let result = match &h.held[i].1 {
            Effect::TokenGet { fresh: false, .. } => EffectResult::Token(Some(stale.clone())),
            Effect::TokenGet { fresh: true, .. } => {
                reread = true;
                EffectResult::Token(None)
            }
            _ => {
                h.complete(i);
                continue;
            }
        };
        h.complete_with(i, result);
    }
    assert!(reread, "re-read fresh");
    let r = h.take_replies(conn);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["code"], json!("NOT_FOUND"), "{r:?}");
    assert_eq!(
        r[0]["error"],
        json!("No token found for provider: anthropic")
    );
    assert_eq!(h.http_log.len(), 1, "no second provider call");
}

#[test]
fn refresh_in_the_cooldown_without_a_valid_token_is_rate_limited() {
    let mut h = seeded_expired();
    let conn = h.connect();
    h.call(conn, "refresh_token", json!({"provider":"anthropic"}));
    h.respond(400, json!({"error":"invalid_scope"}));
    h.take_replies(conn);
    let r = h.call(conn, "refresh_token", json!({"provider":"anthropic"}));
    assert_eq!(r["code"], json!("RATE_LIMITED"));
    assert_eq!(r["retryAfter"], json!(30));
    assert_eq!(h.http_log.len(), 1);
}

/// Initiates an Anthropic login and exchanges a code; the provider answers
/// with `body`. Returns the exchange reply.
fn pkce_login(h: &mut Harness, body: Value) -> Value {
    let conn = h.connect();
    let r = h.call(
        conn,
        "oauth_initiate",
        json!({"provider":"anthropic","bucket":"work"}),
    );
    let sid = r["data"]["session_id"].as_str().unwrap().to_owned();
    h.script(ANTHROPIC_TOKEN, 200, body);
    h.call(
        conn,
        "oauth_exchange",
        json!({"session_id": sid, "code": "the-code"}),
    )
}

#[test]
fn exchange_without_a_string_access_token_fails_and_stores_nothing() {
    for body in [
        json!({"refresh_token":"RT","expires_in":3600}),
        json!({"access_token":42,"refresh_token":"RT"}),
        json!({"access_token":null}),
        json!({"access_token":{"a":1}}),
    ] {
        let mut h = Harness::new();
        let r = pkce_login(&mut h, body.clone());
        assert_eq!(r["code"], json!("EXCHANGE_FAILED"), "{body}: {r}");
        assert!(h.store.token("anthropic", "work").is_none(), "{body}");
        assert!(
            !h.effects
                .iter()
                .any(|e| matches!(e, Effect::TokenPut { .. }))
        );
    }
}

#[test]
fn device_poll_without_an_access_token_fails_and_stores_nothing() {
    let mut h = Harness::new();
    let conn = h.connect();
    let d = device_login(&mut h, conn, Some(1));
    let sid = d["session_id"].as_str().unwrap().to_owned();
    h.advance(1_000);
    h.respond(200, json!({"refresh_token":"QRT","expires_in":7200}));
    let r = h.call(conn, "oauth_poll", json!({ "session_id": sid }));
    assert_eq!(r["code"], json!("POLL_FAILED"), "{r}");
    assert!(h.store.token("qwen", "default").is_none());
    assert!(
        !h.effects
            .iter()
            .any(|e| matches!(e, Effect::TokenPut { .. }))
    );
}

#[test]
fn refresh_without_an_access_token_fails_and_stores_nothing() {
    for body in [
        json!({"refresh_token":"RT-1","expires_in":3600}),
        json!({"access_token":7}),
    ] {
        let mut h = seeded_expired();
        let before = h.store.token("anthropic", "default");
        let conn = h.connect();
        h.call(conn, "refresh_token", json!({"provider":"anthropic"}));
        h.respond(200, body.clone());
        let r = h.take_replies(conn);
        assert_eq!(r[0]["code"], json!("REFRESH_FAILED"), "{body}: {r:?}");
        assert_eq!(h.store.token("anthropic", "default"), before, "{body}");
        assert!(
            !h.effects
                .iter()
                .any(|e| matches!(e, Effect::TokenPut { .. }))
        );
    }
}

#[test]
fn login_without_a_refresh_token_is_audited_with_a_hint() {
    let mut h = Harness::new();
    let r = pkce_login(&mut h, json!({"access_token":"AT","expires_in":3600}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let ev = h
        .audit
        .iter()
        .find(|e| e.op == "login_no_refresh_token")
        .expect("hint event");
    assert_eq!(ev.level, Level::Warn);
    assert_eq!(ev.provider.as_deref(), Some("anthropic"));
    assert_eq!(ev.bucket.as_deref(), Some("work"));
    assert_eq!(
        ev.outcome,
        "no refresh token: add offline_access / prompt=consent"
    );
    // With a refresh token there is no such event.
    let mut h = Harness::new();
    let r = pkce_login(&mut h, json!({"access_token":"AT","refresh_token":"RT"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(!h.audit.iter().any(|e| e.op == "login_no_refresh_token"));
}

#[test]
fn login_complete_is_info_for_the_host_and_warn_for_a_sandbox_or_a_failure() {
    let level = |h: &Harness| {
        h.audit
            .iter()
            .find(|e| e.op == "login_complete")
            .map(|e| (e.level, e.outcome))
    };
    let mut h = Harness::new();
    pkce_login(&mut h, json!({"access_token":"AT","refresh_token":"RT"}));
    assert_eq!(level(&h), Some((Level::Info, "ok")));

    let config = Config {
        capability_token: Some(Secret::new("c".repeat(64))),
        ..Config::default()
    };
    let mut h = Harness::with_config(config, 3);
    pkce_login(&mut h, json!({"access_token":"AT","refresh_token":"RT"}));
    assert_eq!(level(&h), Some((Level::Warn, "ok")));

    // A sandbox login refused over a valid credential is a WARN failure.
    let config = Config {
        capability_token: Some(Secret::new("c".repeat(64))),
        ..Config::default()
    };
    let mut h = Harness::with_config(config, 3);
    let expiry = h.now.unix_secs() + 3600;
    h.store.put_token(
        "anthropic",
        "work",
        json!({"access_token":"OLD","refresh_token":"R","expiry":expiry,"token_type":"Bearer"}),
    );
    pkce_login(&mut h, json!({"access_token":"AT","refresh_token":"RT"}));
    assert_eq!(level(&h), Some((Level::Warn, "FORBIDDEN")));
}

/// A provider without an issuer must name every endpoint its flow uses:
/// each missing one is refused with its own message (and displays as it).
#[test]
fn a_spec_without_issuer_needs_the_endpoints_of_its_flow() {
    use credproxy_core::provider::{self, ProviderSpec};
    type Case = (ProviderSpec, fn(&mut ProviderSpec), &'static str);
    let cases: [Case; 3] = [
        (
            provider::codex_device(provider::codex()),
            |s| s.device_token_url = None,
            "provider codex: device_token_url is required for the codex device dialect",
        ),
        (
            provider::qwen(),
            |s| s.device_url = None,
            "provider qwen: device_url (or issuer) is required",
        ),
        (
            provider::codex(),
            |s| s.authorize_url = None,
            "provider codex: authorize_url (or issuer) is required",
        ),
    ];
    for (whole, drop, message) in cases {
        assert_eq!(
            whole.validate(),
            Ok(()),
            "{message}: the whole spec is valid"
        );
        let mut spec = whole.clone();
        drop(&mut spec);
        let err = spec.validate().expect_err(message);
        assert_eq!(err.to_string(), message);
        let mut with_issuer = spec;
        with_issuer.issuer = Some("https://auth.example".into());
        assert_eq!(
            with_issuer.validate(),
            Ok(()),
            "{message}: an issuer discovers it"
        );
    }
}
