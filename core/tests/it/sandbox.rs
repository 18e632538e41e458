//! Sandbox connections (SPEC §3.4, §3.5): the answers given before
//! validation, the refusals, `Access denied` for missing gets, and the
//! `strict_sandbox` policy for login and refresh.

use credproxy_core::testkit::Harness;
use credproxy_core::{Config, Policy, Secret};
use serde_json::{Value, json};

use crate::common::{Scenario, err, ok, one, sandbox_config, sandbox_with_policy, token};

fn sandbox() -> Harness {
    let mut h = Harness::with_config(sandbox_config(), 0);
    h.store.put_token(
        "p",
        "default",
        json!({"access_token":"at","expiry":5,"token_type":"Bearer","refresh_token":"rt","scope":"s"}),
    );
    h.store.put_token("p", "work", token("at-work"));
    h.store.keys.insert("k".into(), Secret::new("key-value"));
    h
}

const STRICT_REFUSALS: [(&str, &str); 5] = [
    (
        "oauth_initiate",
        "Sandbox connections cannot initiate OAuth",
    ),
    (
        "oauth_exchange",
        "Sandbox connections cannot exchange OAuth tokens",
    ),
    ("oauth_poll", "Sandbox connections cannot poll OAuth tokens"),
    (
        "oauth_cancel",
        "Sandbox connections cannot cancel OAuth sessions",
    ),
    ("refresh_token", "Sandbox connections cannot refresh tokens"),
];

#[test]
fn lists_are_empty_before_validation() {
    let mut h = sandbox();
    let conn = h.connect();
    for payload in [
        json!({}),
        Value::Null,
        json!({"provider":"p"}),
        json!({"provider":"a/b"}),
        json!([1]),
        json!("x"),
    ] {
        h.expect(
            conn,
            "list_providers",
            payload.clone(),
            ok("1", json!({"providers":[]})),
        );
        h.expect(
            conn,
            "list_buckets",
            payload.clone(),
            ok("2", json!({"buckets":[]})),
        );
        h.expect(
            conn,
            "list_api_keys",
            payload.clone(),
            ok("3", json!({"keys":[]})),
        );
    }
    assert!(h.effects.is_empty());
}

#[test]
fn bucket_stats_are_zero_before_validation() {
    let mut h = sandbox();
    let conn = h.connect();
    // Served get_tokens do not show.
    h.call(conn, "get_token", json!({"provider":"p"}));
    let effects_before = h.effects.len();
    for payload in [
        json!({"provider":"p"}),
        json!({}),
        json!({"provider":"nobody"}),
        json!({"provider":"p","bucket":""}),
        json!({"provider":"p","bucket":null}),
        json!([1]),
    ] {
        assert_eq!(
            one(&mut h, conn, "s", "get_bucket_stats", payload.clone()),
            ok(
                "s",
                json!({"bucket":"default","requestCount":0,"percentage":0})
            ),
            "{payload}"
        );
    }
    h.expect(
        conn,
        "get_bucket_stats",
        json!({"provider":"p","bucket":"work"}),
        ok(
            "s",
            json!({"bucket":"work","requestCount":0,"percentage":0}),
        ),
    );
    assert_eq!(h.effects.len(), effects_before);
}

#[test]
fn writes_and_key_existence_are_forbidden_before_validation() {
    let mut h = sandbox();
    let conn = h.connect();
    for (op, msg) in [
        ("save_token", "Sandbox connections cannot modify tokens"),
        ("remove_token", "Sandbox connections cannot remove tokens"),
        (
            "has_api_key",
            "Sandbox connections cannot check key existence",
        ),
    ] {
        for payload in [
            json!({}),
            json!({"provider":"p","token":token("x")}),
            json!({"provider":"p"}),
            json!({"name":"k"}),
            json!({"provider":"../etc","name":"a/b"}),
            json!([1]),
        ] {
            assert_eq!(
                one(&mut h, conn, "f", op, payload.clone()),
                err("f", "FORBIDDEN", msg),
                "{op} {payload}"
            );
        }
    }
    assert!(h.effects.is_empty());
    assert_eq!(h.store.token("p", "work"), Some(token("at-work")));
}

#[test]
fn get_token_existing_is_served_sanitized() {
    let mut h = sandbox();
    let conn = h.connect();
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p"}),
        ok(
            "g",
            json!({"access_token":"at","expiry":5,"token_type":"Bearer","scope":"s"}),
        ),
    );
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p","bucket":"work"}),
        ok("g", token("at-work")),
    );
}

#[test]
fn get_token_missing_is_access_denied_after_validation() {
    let mut h = sandbox();
    let conn = h.connect();
    for payload in [
        json!({"provider":"q"}),
        json!({"provider":"p","bucket":"nope"}),
    ] {
        h.expect(
            conn,
            "get_token",
            payload,
            err("g", "FORBIDDEN", "Access denied"),
        );
    }
    for (payload, msg) in [
        (json!({}), "Missing provider"),
        (json!({"provider":""}), "Missing provider"),
        (json!({"provider":"a/b"}), "Invalid provider"),
        (json!({"provider":".."}), "Invalid provider"),
        (json!({"provider":"p","bucket":"."}), "Invalid bucket"),
        (json!([1]), "Invalid payload"),
    ] {
        assert_eq!(
            one(&mut h, conn, "g", "get_token", payload.clone()),
            err("g", "INVALID_REQUEST", msg),
            "{payload}"
        );
    }
}

#[test]
fn get_api_key_sandbox_rules() {
    let mut h = sandbox();
    let conn = h.connect();
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"k"}),
        ok("k", json!({"key":"key-value"})),
    );
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"other"}),
        err("k", "FORBIDDEN", "Access denied"),
    );
    for (payload, msg) in [
        (json!({}), "Missing name"),
        (json!({"name":false}), "Missing name"),
        (json!({"name":"a@b"}), "Invalid name"),
        (json!({"name":1}), "Invalid name"),
        (json!("k"), "Invalid payload"),
    ] {
        assert_eq!(
            one(&mut h, conn, "k", "get_api_key", payload.clone()),
            err("k", "INVALID_REQUEST", msg),
            "{payload}"
        );
    }
}

#[test]
fn strict_sandbox_refuses_login_and_refresh_before_validation() {
    let policy = Policy {
        strict_sandbox: true,
        ..Policy::default()
    };
    let mut h = Harness::with_config(sandbox_with_policy(policy), 0);
    let conn = h.connect();
    for (op, msg) in STRICT_REFUSALS {
        for payload in [
            json!({}),
            json!({"provider":"anthropic","session_id":"s","code":"c"}),
            json!([1]),
        ] {
            assert_eq!(
                one(&mut h, conn, "o", op, payload.clone()),
                err("o", "FORBIDDEN", msg),
                "{op} {payload}"
            );
        }
    }
}

#[test]
fn strict_sandbox_does_not_affect_host_connections() {
    let config = Config {
        policy: Policy {
            strict_sandbox: true,
            ..Policy::default()
        },
        ..Config::default()
    };
    let mut h = Harness::with_config(config, 0);
    let conn = h.connect();
    h.expect(
        conn,
        "oauth_initiate",
        json!({"provider":"p"}),
        err(
            "o",
            "PROVIDER_NOT_CONFIGURED",
            "No OAuth flow factory configured for provider: p",
        ),
    );
    h.expect(
        conn,
        "oauth_cancel",
        json!({"session_id":"s"}),
        ok("o", json!({})),
    );
}

#[test]
fn login_and_refresh_are_allowed_for_a_sandbox_by_default() {
    let mut h = sandbox();
    let conn = h.connect();
    let cases = [
        (
            "oauth_initiate",
            json!({}),
            err("o", "INVALID_REQUEST", "Missing provider"),
        ),
        (
            "oauth_initiate",
            json!({"provider":"p","bucket":"b","redirect_uri":"http://evil"}),
            err(
                "o",
                "PROVIDER_NOT_CONFIGURED",
                "No OAuth flow factory configured for provider: p",
            ),
        ),
        (
            "refresh_token",
            json!({"provider":"p"}),
            err(
                "o",
                "PROVIDER_NOT_FOUND",
                "No OAuth provider configured for: p",
            ),
        ),
        (
            "refresh_token",
            json!({}),
            err("o", "INVALID_REQUEST", "Missing provider"),
        ),
        (
            "oauth_exchange",
            json!({}),
            err("o", "INVALID_REQUEST", "Missing session_id"),
        ),
        (
            "oauth_exchange",
            json!({"session_id":"s"}),
            err("o", "INVALID_REQUEST", "Missing code"),
        ),
        (
            "oauth_exchange",
            json!({"session_id":"s","code":"c"}),
            err("o", "SESSION_NOT_FOUND", "OAuth session not found"),
        ),
        (
            "oauth_poll",
            json!({}),
            err("o", "INVALID_REQUEST", "Missing session_id"),
        ),
        (
            "oauth_poll",
            json!({"session_id":"s"}),
            err("o", "SESSION_NOT_FOUND", "OAuth session not found"),
        ),
        (
            "oauth_cancel",
            json!({}),
            err("o", "INVALID_REQUEST", "Missing session_id"),
        ),
        (
            "oauth_cancel",
            json!({"session_id":"s"}),
            ok("o", json!({})),
        ),
    ];
    for (op, payload, want) in cases {
        assert_eq!(
            one(&mut h, conn, "o", op, payload.clone()),
            want,
            "{op} {payload}"
        );
    }
}

#[test]
fn sandbox_writes_are_rate_limited_before_the_refusal() {
    let mut config = sandbox_config();
    config.limits.rate_burst = 1;
    config.limits.rate_per_sec = 1;
    let mut h = Harness::with_config(config, 0);
    let conn = h.connect();
    h.expect(
        conn,
        "save_token",
        json!({}),
        err("1", "FORBIDDEN", "Sandbox connections cannot modify tokens"),
    );
    h.expect(conn, "save_token", json!({}), json!({"id":"2","ok":false,"code":"RATE_LIMITED","error":"Too many requests","retryAfter":1}));
}

#[test]
fn every_sandbox_connection_is_a_sandbox() {
    let mut h = sandbox();
    let a = h.connect();
    let b = h.connect();
    for conn in [a, b] {
        h.expect(
            conn,
            "list_providers",
            json!({}),
            ok("l", json!({"providers":[]})),
        );
    }
}
