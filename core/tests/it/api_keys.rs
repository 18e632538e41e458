//! API key operations (SPEC §3.6): get, list, has, validation.

use credproxy_core::testkit::Harness;
use credproxy_core::{Effect, Secret};
use serde_json::json;

use crate::common::{self, Scenario, err, ok, one};

fn harness_with_keys() -> Harness {
    let mut h = Harness::new();
    for (name, value) in [
        ("OPENAI_API_KEY", "sk-openai"),
        ("anthropic.key", "sk-ant"),
        ("a-b_c.9", "v"),
    ] {
        h.store.keys.insert(name.into(), Secret::new(value));
    }
    h
}

#[test]
fn get_api_key() {
    let mut h = harness_with_keys();
    let conn = h.connect();
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"OPENAI_API_KEY"}),
        ok("1", json!({"key":"sk-openai"})),
    );
    assert_eq!(
        h.effects,
        vec![Effect::ApiKeyGet {
            name: "OPENAI_API_KEY".into()
        }]
    );
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"a-b_c.9"}),
        ok("2", json!({"key":"v"})),
    );
}

#[test]
fn get_api_key_not_found() {
    let mut h = harness_with_keys();
    let conn = h.connect();
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"missing"}),
        err("1", "NOT_FOUND", "No API key found for: missing"),
    );
    // Names are case-sensitive.
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"openai_api_key"}),
        err("2", "NOT_FOUND", "No API key found for: openai_api_key"),
    );
}

#[test]
fn list_api_keys_sorted() {
    let mut h = harness_with_keys();
    let conn = h.connect();
    h.expect(
        conn,
        "list_api_keys",
        json!({}),
        ok(
            "1",
            json!({"keys":["OPENAI_API_KEY","a-b_c.9","anthropic.key"]}),
        ),
    );
    h.store.keys.clear();
    h.expect(
        conn,
        "list_api_keys",
        json!({}),
        ok("2", json!({"keys":[]})),
    );
}

#[test]
fn has_api_key() {
    let mut h = harness_with_keys();
    let conn = h.connect();
    h.expect(
        conn,
        "has_api_key",
        json!({"name":"anthropic.key"}),
        ok("1", json!({"exists":true})),
    );
    h.expect(
        conn,
        "has_api_key",
        json!({"name":"nope"}),
        ok("2", json!({"exists":false})),
    );
}

#[test]
fn missing_name() {
    let mut h = harness_with_keys();
    let conn = h.connect();
    for op in ["get_api_key", "has_api_key"] {
        for payload in [
            json!({}),
            json!({"name":null}),
            json!({"name":""}),
            json!({"name":0}),
            json!({"name":false}),
            json!({"key":"OPENAI_API_KEY"}),
        ] {
            assert_eq!(
                one(&mut h, conn, "m", op, payload.clone()),
                err("m", "INVALID_REQUEST", "Missing name"),
                "{op} {payload}"
            );
        }
    }
    assert!(h.effects.is_empty());
}

#[test]
fn invalid_name() {
    let mut h = harness_with_keys();
    let conn = h.connect();
    for op in ["get_api_key", "has_api_key"] {
        for name in [
            json!("a@b"),
            json!("a/b"),
            json!("a b"),
            json!("k".repeat(65)),
            json!("é"),
            json!(7),
            json!(true),
            json!(["OPENAI_API_KEY"]),
            json!({}),
        ] {
            assert_eq!(
                one(&mut h, conn, "i", op, json!({"name":name})),
                err("i", "INVALID_REQUEST", "Invalid name"),
                "{op} {name}"
            );
        }
    }
    assert!(h.effects.is_empty());
    // 64 characters is fine.
    let long = "k".repeat(64);
    h.store.keys.insert(long.clone(), Secret::new("long"));
    h.expect(
        conn,
        "get_api_key",
        json!({"name":long}),
        ok("l", json!({"key":"long"})),
    );
}

#[test]
fn api_key_ops_are_not_rate_limited() {
    let limits = credproxy_core::Limits {
        rate_per_sec: 1,
        rate_burst: 1,
        ..Default::default()
    };
    let mut h = Harness::with_config(common::with_limits(limits), 0);
    h.store.keys.insert("k".into(), Secret::new("v"));
    let conn = h.connect();
    for i in 0..200 {
        let id = format!("{i}");
        let op = ["get_api_key", "has_api_key", "list_api_keys"][i % 3];
        let r = one(&mut h, conn, &id, op, json!({"name":"k"}));
        assert_eq!(r["ok"], json!(true), "{r}");
    }
}
