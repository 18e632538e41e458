//! Allow-lists of providers, buckets and API key names (SPEC §3.5):
//! refusals with `UNAUTHORIZED`, filtered lists, order against validation.

use std::collections::BTreeSet;

use credproxy_core::testkit::Harness;
use credproxy_core::{Config, Policy, Secret};
use serde_json::json;

use crate::common::{Scenario, err, ok, one, sandbox_with_policy, token};

fn set(names: &[&str]) -> Option<BTreeSet<String>> {
    Some(names.iter().map(|s| (*s).to_owned()).collect())
}

fn policy() -> Policy {
    Policy {
        allowed_providers: set(&["p", "r"]),
        allowed_buckets: set(&["default", "work"]),
        allowed_keys: set(&["k"]),
        ..Policy::default()
    }
}

fn seed(h: &mut Harness) {
    for (p, b) in [
        ("p", "default"),
        ("p", "work"),
        ("p", "secret"),
        ("q", "default"),
        ("r", "other"),
    ] {
        h.store.put_token(p, b, token(&format!("at-{p}-{b}")));
    }
    h.store.keys.insert("k".into(), Secret::new("v-k"));
    h.store.keys.insert("other".into(), Secret::new("v-other"));
}

fn host() -> Harness {
    let config = Config {
        policy: policy(),
        ..Config::default()
    };
    let mut h = Harness::with_config(config, 0);
    seed(&mut h);
    h
}

#[test]
fn provider_not_allowed() {
    let mut h = host();
    let conn = h.connect();
    let refused = err("a", "UNAUTHORIZED", "Provider not allowed: q");
    for (op, payload) in [
        ("get_token", json!({"provider":"q"})),
        ("get_token", json!({"provider":"q","bucket":"nope"})),
        ("save_token", json!({"provider":"q","token":token("x")})),
        ("remove_token", json!({"provider":"q"})),
        ("list_buckets", json!({"provider":"q"})),
        ("get_bucket_stats", json!({"provider":"q"})),
        ("oauth_initiate", json!({"provider":"q"})),
        ("refresh_token", json!({"provider":"q"})),
    ] {
        assert_eq!(one(&mut h, conn, "a", op, payload), refused, "{op}");
    }
    assert!(h.effects.is_empty());
    assert_eq!(h.store.token("q", "default"), Some(token("at-q-default")));
}

#[test]
fn bucket_not_allowed() {
    let mut h = host();
    let conn = h.connect();
    let refused = err("b", "UNAUTHORIZED", "Bucket not allowed: secret");
    for (op, payload) in [
        ("get_token", json!({"provider":"p","bucket":"secret"})),
        (
            "save_token",
            json!({"provider":"p","bucket":"secret","token":token("x")}),
        ),
        ("remove_token", json!({"provider":"p","bucket":"secret"})),
        (
            "get_bucket_stats",
            json!({"provider":"p","bucket":"secret"}),
        ),
        ("oauth_initiate", json!({"provider":"p","bucket":"secret"})),
        ("refresh_token", json!({"provider":"p","bucket":"secret"})),
    ] {
        assert_eq!(one(&mut h, conn, "b", op, payload), refused, "{op}");
    }
    assert!(h.effects.is_empty());
}

#[test]
fn default_bucket_is_checked_as_default() {
    let config = Config {
        policy: Policy {
            allowed_buckets: set(&["work"]),
            ..Policy::default()
        },
        ..Config::default()
    };
    let mut h = Harness::with_config(config, 0);
    h.store.put_token("p", "default", token("d"));
    let conn = h.connect();
    for payload in [
        json!({"provider":"p"}),
        json!({"provider":"p","bucket":""}),
        json!({"provider":"p","bucket":"default"}),
    ] {
        h.expect(
            conn,
            "get_token",
            payload,
            err("d", "UNAUTHORIZED", "Bucket not allowed: default"),
        );
    }
}

#[test]
fn key_not_allowed() {
    let mut h = host();
    let conn = h.connect();
    for op in ["get_api_key", "has_api_key"] {
        assert_eq!(
            one(&mut h, conn, "k", op, json!({"name":"other"})),
            err("k", "UNAUTHORIZED", "Key not allowed: other"),
            "{op}"
        );
    }
    assert!(h.effects.is_empty());
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"k"}),
        ok("k", json!({"key":"v-k"})),
    );
    h.expect(
        conn,
        "has_api_key",
        json!({"name":"k"}),
        ok("k", json!({"exists":true})),
    );
}

#[test]
fn allowed_requests_are_served() {
    let mut h = host();
    let conn = h.connect();
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p","bucket":"work"}),
        ok("g", token("at-p-work")),
    );
    h.expect(
        conn,
        "save_token",
        json!({"provider":"r","token":token("new")}),
        ok("s", json!({})),
    );
}

#[test]
fn lists_are_filtered() {
    let mut h = host();
    let conn = h.connect();
    h.expect(
        conn,
        "list_providers",
        json!({}),
        ok("1", json!({"providers":["p","r"]})),
    );
    h.expect(
        conn,
        "list_buckets",
        json!({"provider":"p"}),
        ok("2", json!({"buckets":["default","work"]})),
    );
    h.expect(
        conn,
        "list_buckets",
        json!({"provider":"r"}),
        ok("3", json!({"buckets":[]})),
    );
    h.expect(
        conn,
        "list_api_keys",
        json!({}),
        ok("4", json!({"keys":["k"]})),
    );
}

#[test]
fn validation_comes_before_the_allow_lists() {
    let mut h = host();
    let conn = h.connect();
    h.expect(
        conn,
        "get_token",
        json!({"provider":"a/b"}),
        err("v", "INVALID_REQUEST", "Invalid provider"),
    );
    h.expect(
        conn,
        "get_token",
        json!({"provider":"q","bucket":".."}),
        err("v", "INVALID_REQUEST", "Invalid bucket"),
    );
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"a@b"}),
        err("v", "INVALID_REQUEST", "Invalid name"),
    );
    h.expect(
        conn,
        "save_token",
        json!({"provider":"q","token":{}}),
        err("v", "INVALID_REQUEST", "Invalid token"),
    );
    // Provider before bucket.
    h.expect(
        conn,
        "get_token",
        json!({"provider":"q","bucket":"secret"}),
        err("v", "UNAUTHORIZED", "Provider not allowed: q"),
    );
}

#[test]
fn sandbox_reads_are_allow_listed() {
    let mut h = Harness::with_config(sandbox_with_policy(policy()), 0);
    seed(&mut h);
    let conn = h.connect();
    h.expect(
        conn,
        "get_token",
        json!({"provider":"q"}),
        err("g", "UNAUTHORIZED", "Provider not allowed: q"),
    );
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p","bucket":"secret"}),
        err("g", "UNAUTHORIZED", "Bucket not allowed: secret"),
    );
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p"}),
        ok("g", token("at-p-default")),
    );
    // Allowed but missing: the sandbox rule still applies.
    h.expect(
        conn,
        "get_token",
        json!({"provider":"r"}),
        err("g", "FORBIDDEN", "Access denied"),
    );
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"other"}),
        err("k", "UNAUTHORIZED", "Key not allowed: other"),
    );
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"k"}),
        ok("k", json!({"key":"v-k"})),
    );
    // Sandbox answers that come before validation are unchanged.
    h.expect(
        conn,
        "list_providers",
        json!({}),
        ok("l", json!({"providers":[]})),
    );
    h.expect(
        conn,
        "save_token",
        json!({"provider":"q"}),
        err("s", "FORBIDDEN", "Sandbox connections cannot modify tokens"),
    );
    h.expect(
        conn,
        "oauth_initiate",
        json!({"provider":"q"}),
        err("o", "UNAUTHORIZED", "Provider not allowed: q"),
    );
}
