//! Login and refresh operations for providers that are not configured and
//! sessions that do not exist (SPEC §3.6, §4, §5.3): validation order and
//! the exact answers.

use credproxy_core::testkit::Harness;
use serde_json::json;

use crate::common::{self, Scenario, err, ok, one};

#[test]
fn oauth_initiate() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.expect(
        conn,
        "oauth_initiate",
        json!({"provider":"nobody"}),
        err(
            "i",
            "PROVIDER_NOT_CONFIGURED",
            "No OAuth flow factory configured for provider: nobody",
        ),
    );
    h.expect(
        conn,
        "oauth_initiate",
        json!({"provider":"p","bucket":"b","redirect_uri":"https://evil.example"}),
        err(
            "i",
            "PROVIDER_NOT_CONFIGURED",
            "No OAuth flow factory configured for provider: p",
        ),
    );
    h.expect(
        conn,
        "oauth_initiate",
        json!({"provider":"p","bucket":"a/b"}),
        err("i", "INVALID_REQUEST", "Invalid bucket"),
    );
    assert!(h.effects.is_empty());
}

#[test]
fn refresh_token() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", common::token("at"));
    let conn = h.connect();
    h.expect(
        conn,
        "refresh_token",
        json!({"provider":"p"}),
        err(
            "r",
            "PROVIDER_NOT_FOUND",
            "No OAuth provider configured for: p",
        ),
    );
    // The provider check comes before the token lookup.
    h.expect(
        conn,
        "refresh_token",
        json!({"provider":"none","bucket":"b"}),
        err(
            "r",
            "PROVIDER_NOT_FOUND",
            "No OAuth provider configured for: none",
        ),
    );
    assert!(h.effects.is_empty());
}

#[test]
fn oauth_exchange_validation_order() {
    let mut h = Harness::new();
    let conn = h.connect();
    for (payload, want) in [
        (json!({}), err("e", "INVALID_REQUEST", "Missing session_id")),
        (
            json!({"code":"c"}),
            err("e", "INVALID_REQUEST", "Missing session_id"),
        ),
        (
            json!({"session_id":"","code":"c"}),
            err("e", "INVALID_REQUEST", "Missing session_id"),
        ),
        (
            json!({"session_id":7,"code":"c"}),
            err("e", "INVALID_REQUEST", "Invalid session_id"),
        ),
        (
            json!({"session_id":"s"}),
            err("e", "INVALID_REQUEST", "Missing code"),
        ),
        (
            json!({"session_id":"s","code":false}),
            err("e", "INVALID_REQUEST", "Missing code"),
        ),
        (
            json!({"session_id":"s","code":["c"]}),
            err("e", "INVALID_REQUEST", "Invalid code"),
        ),
        (
            json!({"session_id":"s","code":"c","state":"ignored"}),
            err("e", "SESSION_NOT_FOUND", "OAuth session not found"),
        ),
    ] {
        assert_eq!(
            one(&mut h, conn, "e", "oauth_exchange", payload.clone()),
            want,
            "{payload}"
        );
    }
}

#[test]
fn oauth_poll_and_cancel() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.expect(
        conn,
        "oauth_poll",
        json!({}),
        err("p", "INVALID_REQUEST", "Missing session_id"),
    );
    h.expect(
        conn,
        "oauth_poll",
        json!({"session_id":{}}),
        err("p", "INVALID_REQUEST", "Invalid session_id"),
    );
    h.expect(
        conn,
        "oauth_poll",
        json!({"session_id":"0123456789abcdef0123456789abcdef"}),
        err("p", "SESSION_NOT_FOUND", "OAuth session not found"),
    );
    h.expect(
        conn,
        "oauth_cancel",
        json!({"session_id":null}),
        err("c", "INVALID_REQUEST", "Missing session_id"),
    );
    h.expect(
        conn,
        "oauth_cancel",
        json!({"session_id":true}),
        err("c", "INVALID_REQUEST", "Invalid session_id"),
    );
    h.expect(
        conn,
        "oauth_cancel",
        json!({"session_id":"unknown"}),
        ok("c", json!({})),
    );
}
