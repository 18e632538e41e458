//! Token operations (SPEC §3.4, §3.6, §5.2): get (sanitized), save (merge,
//! refresh token kept), remove, lists, bucket stats, validation, write
//! serialization per key and store failures.

use credproxy_core::testkit::{Harness, START_UNIX_MS};
use credproxy_core::{ConnId, Effect, EffectResult};
use serde_json::{Value, json};

use crate::common::{
    Scenario, connect_held, err, ok, one, send_req, store_old_with_refresh, token,
};

fn at_token(access: &str) -> Value {
    token(access)
}

fn save(h: &mut Harness, conn: ConnId, id: &str, payload: Value) -> Value {
    one(h, conn, id, "save_token", payload)
}

/// Asks the stats of `p/work`, asserts that its share of `p`'s requests is
/// the float `percentage`, and returns the reply.
#[track_caller]
fn work_share(h: &mut Harness, conn: ConnId, id: &str, percentage: f64) -> Value {
    let r = one(
        h,
        conn,
        id,
        "get_bucket_stats",
        json!({"provider":"p","bucket":"work"}),
    );
    let pct = r["data"]["percentage"].as_f64().unwrap();
    assert!((pct - percentage).abs() < 1e-9, "{pct}");
    r
}

#[test]
fn get_token_is_sanitized_and_passes_extras_through() {
    let mut h = Harness::new();
    let stored = json!({
        "access_token":"at-1","expiry":1_767_229_200,"token_type":"Bearer",
        "refresh_token":"rt-secret","scope":"a b","resource_url":"https://r.example",
        "account_id":"acc","id_token":"jwt.jwt.jwt","nested":{"x":[1,null]}
    });
    h.store.put_token("codex", "default", stored);
    let conn = h.connect();
    let r = one(&mut h, conn, "1", "get_token", json!({"provider":"codex"}));
    assert_eq!(
        r,
        ok(
            "1",
            json!({
                "access_token":"at-1","expiry":1_767_229_200,"token_type":"Bearer",
                "scope":"a b","resource_url":"https://r.example",
                "account_id":"acc","id_token":"jwt.jwt.jwt","nested":{"x":[1,null]}
            })
        )
    );
    assert!(r["data"].get("refresh_token").is_none());
    assert_eq!(
        h.effects,
        vec![Effect::TokenGet {
            provider: "codex".into(),
            bucket: "default".into(),
            fresh: false
        }]
    );
}

#[test]
fn get_token_not_found() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p"}),
        err("1", "NOT_FOUND", "No token found for provider: p"),
    );
    h.store.put_token("p", "work", at_token("at"));
    // Another bucket does not count.
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p"}),
        err("2", "NOT_FOUND", "No token found for provider: p"),
    );
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p","bucket":"other"}),
        err("3", "NOT_FOUND", "No token found for provider: p"),
    );
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p","bucket":"work"}),
        ok("4", at_token("at")),
    );
}

#[test]
fn default_bucket_spellings_are_one_entry() {
    let mut h = Harness::new();
    let conn = h.connect();
    assert_eq!(
        save(
            &mut h,
            conn,
            "s",
            json!({"provider":"p","bucket":"","token":at_token("one")})
        ),
        ok("s", json!({}))
    );
    assert_eq!(h.store.token("p", "default"), Some(at_token("one")));
    for payload in [
        json!({"provider":"p"}),
        json!({"provider":"p","bucket":""}),
        json!({"provider":"p","bucket":null}),
        json!({"provider":"p","bucket":"default"}),
    ] {
        assert_eq!(
            one(&mut h, conn, "g", "get_token", payload.clone()),
            ok("g", at_token("one")),
            "{payload}"
        );
    }
    save(
        &mut h,
        conn,
        "s",
        json!({"provider":"p","bucket":"default","token":at_token("two")}),
    );
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p"}),
        ok("g", at_token("two")),
    );
    assert_eq!(h.store.tokens.len(), 1);
    h.expect(
        conn,
        "remove_token",
        json!({"provider":"p","bucket":""}),
        ok("r", json!({})),
    );
    assert!(h.store.tokens.is_empty());
}

#[test]
fn save_token_drops_incoming_refresh_token_and_keeps_stored() {
    let mut h = Harness::new();
    h.store.put_token(
        "p",
        "default",
        json!({"access_token":"old","expiry":1,"token_type":"Bearer","refresh_token":"rt-stored"}),
    );
    let conn = h.connect();
    let r = save(
        &mut h,
        conn,
        "s",
        json!({"provider":"p","token":{"access_token":"new","expiry":2,"token_type":"bearer","refresh_token":"rt-incoming"}}),
    );
    assert_eq!(r, ok("s", json!({})));
    assert_eq!(
        h.store.token("p", "default"),
        Some(
            json!({"access_token":"new","expiry":2,"token_type":"bearer","refresh_token":"rt-stored"})
        )
    );
    // The write takes the store lock, reads fresh, puts, and unlocks.
    assert!(matches!(h.effects[0], Effect::LockAcquire { .. }));
    assert!(matches!(h.effects.last(), Some(Effect::LockRelease { .. })));
    h.effects
        .retain(|e| !matches!(e, Effect::LockAcquire { .. } | Effect::LockRelease { .. }));
    assert_eq!(
        h.effects[0],
        Effect::TokenGet {
            provider: "p".into(),
            bucket: "default".into(),
            fresh: true
        }
    );
    assert!(matches!(h.effects[1], Effect::TokenPut { .. }));
    assert_eq!(h.effects.len(), 2);
}

#[test]
fn save_token_without_existing_stores_no_refresh_token() {
    let mut h = Harness::new();
    let conn = h.connect();
    save(
        &mut h,
        conn,
        "s",
        json!({"provider":"p","bucket":"b","token":{"access_token":"a","expiry":0,"token_type":"BEARER","refresh_token":"rt","scope":null,"x":1}}),
    );
    assert_eq!(
        h.store.token("p", "b"),
        Some(json!({"access_token":"a","expiry":0,"token_type":"BEARER","x":1}))
    );
}

#[test]
fn save_token_merge_rules() {
    let mut h = Harness::new();
    h.store.put_token(
        "p",
        "default",
        json!({
            "access_token":"old","expiry":1,"token_type":"Bearer","refresh_token":"rt",
            "scope":"s-old","resource_url":"https://old","account_id":"acc"
        }),
    );
    let conn = h.connect();
    save(
        &mut h,
        conn,
        "s",
        json!({"provider":"p","token":{
            "access_token":"new","expiry":2.5,"token_type":"Bearer",
            "scope":null,"id_token":"jwt","refresh_token":""
        }}),
    );
    assert_eq!(
        h.store.token("p", "default"),
        Some(json!({
            "access_token":"new","expiry":2.5,"token_type":"Bearer","refresh_token":"rt",
            "scope":"s-old","resource_url":"https://old","account_id":"acc","id_token":"jwt"
        }))
    );
    // A present, non-null field wins.
    save(
        &mut h,
        conn,
        "s",
        json!({"provider":"p","token":{"access_token":"newer","expiry":3,"token_type":"Bearer","scope":"s-new","account_id":null}}),
    );
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p"}),
        ok(
            "g",
            json!({
                "access_token":"newer","expiry":3,"token_type":"Bearer",
                "scope":"s-new","resource_url":"https://old","account_id":"acc","id_token":"jwt"
            }),
        ),
    );
}

#[test]
fn save_token_missing() {
    let mut h = Harness::new();
    let conn = h.connect();
    for payload in [
        json!({}),
        json!({"provider":"p"}),
        json!({"token":at_token("a")}),
        json!({"provider":"","token":at_token("a")}),
        json!({"provider":"p","token":null}),
        json!({"provider":"p","token":false}),
        json!({"provider":"p","token":0}),
        json!({"provider":"p","token":""}),
        json!({"provider":0,"token":at_token("a")}),
    ] {
        assert_eq!(
            save(&mut h, conn, "s", payload.clone()),
            err("s", "INVALID_REQUEST", "Missing provider or token"),
            "{payload}"
        );
    }
    assert!(h.effects.is_empty());
}

#[test]
fn save_token_invalid_token() {
    let mut h = Harness::new();
    let conn = h.connect();
    for t in [
        json!("str"),
        json!(7),
        json!(true),
        json!([at_token("a")]),
        json!({}),
        json!({"expiry":1,"token_type":"Bearer"}),
        json!({"access_token":7,"expiry":1,"token_type":"Bearer"}),
        json!({"access_token":null,"expiry":1,"token_type":"Bearer"}),
        json!({"access_token":"a","token_type":"Bearer"}),
        json!({"access_token":"a","expiry":-1,"token_type":"Bearer"}),
        json!({"access_token":"a","expiry":"1","token_type":"Bearer"}),
        json!({"access_token":"a","expiry":null,"token_type":"Bearer"}),
        json!({"access_token":"a","expiry":1}),
        json!({"access_token":"a","expiry":1,"token_type":"mac"}),
        json!({"access_token":"a","expiry":1,"token_type":"Bearer "}),
        json!({"access_token":"a","expiry":1,"token_type":1}),
    ] {
        assert_eq!(
            save(&mut h, conn, "s", json!({"provider":"p","token":t.clone()})),
            err("s", "INVALID_REQUEST", "Invalid token"),
            "{t}"
        );
    }
    assert!(h.effects.is_empty());
    assert!(h.store.tokens.is_empty());
}

#[test]
fn invalid_provider_and_bucket_names() {
    let mut h = Harness::new();
    let conn = h.connect();
    let bad = [
        json!(".."),
        json!("."),
        json!("a/b"),
        json!("../x"),
        json!("a b"),
        json!("é"),
        json!("a\u{0}"),
        json!("x".repeat(65)),
        json!(7),
        json!(true),
        json!([]),
        json!({}),
    ];
    let ops = [
        "get_token",
        "remove_token",
        "get_bucket_stats",
        "list_buckets",
        "oauth_initiate",
        "refresh_token",
    ];
    for name in &bad {
        for op in ops {
            assert_eq!(
                one(&mut h, conn, "i", op, json!({"provider":name})),
                err("i", "INVALID_REQUEST", "Invalid provider"),
                "{op} {name}"
            );
        }
        assert_eq!(
            save(
                &mut h,
                conn,
                "i",
                json!({"provider":name,"token":at_token("a")})
            ),
            err("i", "INVALID_REQUEST", "Invalid provider"),
            "{name}"
        );
        for op in ops.iter().filter(|op| **op != "list_buckets") {
            assert_eq!(
                one(&mut h, conn, "i", op, json!({"provider":"p","bucket":name})),
                err("i", "INVALID_REQUEST", "Invalid bucket"),
                "{op} {name}"
            );
        }
        assert_eq!(
            save(
                &mut h,
                conn,
                "i",
                json!({"provider":"p","bucket":name,"token":at_token("a")})
            ),
            err("i", "INVALID_REQUEST", "Invalid bucket"),
            "{name}"
        );
    }
    assert!(h.effects.is_empty());
    // The longest valid name and every allowed character pass.
    let longest = "a".repeat(64);
    assert_eq!(
        save(
            &mut h,
            conn,
            "v",
            json!({"provider":longest,"bucket":"A-z_0.9@x","token":at_token("a")})
        ),
        ok("v", json!({}))
    );
    assert_eq!(h.store.token(&longest, "A-z_0.9@x"), Some(at_token("a")));
}

#[test]
fn missing_provider_for_every_token_op() {
    let mut h = Harness::new();
    let conn = h.connect();
    for op in [
        "get_token",
        "remove_token",
        "list_buckets",
        "get_bucket_stats",
        "oauth_initiate",
        "refresh_token",
    ] {
        for p in [json!(null), json!(""), json!(0), json!(false)] {
            assert_eq!(
                one(&mut h, conn, "m", op, json!({"provider":p,"bucket":"b"})),
                err("m", "INVALID_REQUEST", "Missing provider"),
                "{op} {p}"
            );
        }
    }
}

#[test]
fn remove_token() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", at_token("a"));
    h.store.put_token("p", "work", at_token("b"));
    let conn = h.connect();
    h.expect(
        conn,
        "remove_token",
        json!({"provider":"p"}),
        ok("r", json!({})),
    );
    assert_eq!(h.store.token("p", "default"), None);
    assert_eq!(h.store.token("p", "work"), Some(at_token("b")));
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p"}),
        err("g", "NOT_FOUND", "No token found for provider: p"),
    );
    // Removing what is absent is success.
    h.expect(
        conn,
        "remove_token",
        json!({"provider":"p"}),
        ok("r", json!({})),
    );
    h.expect(
        conn,
        "remove_token",
        json!({"provider":"p","bucket":"work"}),
        ok("r", json!({})),
    );
    assert!(h.store.tokens.is_empty());
    assert!(h.effects.contains(&Effect::TokenDelete {
        provider: "p".into(),
        bucket: "work".into()
    }));
}

#[test]
fn list_providers_and_buckets_sorted() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.expect(
        conn,
        "list_providers",
        json!({}),
        ok("1", json!({"providers":[]})),
    );
    for (p, b) in [
        ("zeta", "default"),
        ("alpha", "work"),
        ("alpha", "default"),
        ("Beta", "x"),
        ("alpha", "Zed"),
        ("alpha", "home"),
    ] {
        h.store.put_token(p, b, at_token("a"));
    }
    h.expect(
        conn,
        "list_providers",
        json!({}),
        ok("2", json!({"providers":["Beta","alpha","zeta"]})),
    );
    h.expect(
        conn,
        "list_buckets",
        json!({"provider":"alpha"}),
        ok("3", json!({"buckets":["Zed","default","home","work"]})),
    );
    h.expect(
        conn,
        "list_buckets",
        json!({"provider":"nobody"}),
        ok("4", json!({"buckets":[]})),
    );
    // The host's list order does not matter: the engine sorts and dedups.
    h.auto_effects = false;
    h.no_reply_yet(conn, "5", "list_providers", json!({}));
    h.complete_with(
        0,
        EffectResult::Names(vec!["b".into(), "a".into(), "b".into(), "C".into()]),
    );
    assert_eq!(
        h.take_replies(conn),
        vec![ok("5", json!({"providers":["C","a","b"]}))]
    );
}

#[test]
fn bucket_stats_not_found_without_a_token() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.expect(
        conn,
        "get_bucket_stats",
        json!({"provider":"p"}),
        err("1", "NOT_FOUND", "No stats found for p/default"),
    );
    h.expect(
        conn,
        "get_bucket_stats",
        json!({"provider":"p","bucket":"work"}),
        err("2", "NOT_FOUND", "No stats found for p/work"),
    );
}

#[test]
fn bucket_stats_count_served_get_tokens() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", at_token("a"));
    h.store.put_token("p", "work", at_token("b"));
    h.store.put_token("q", "default", at_token("c"));
    let conn = h.connect();
    // A stored token never served: zero stats without lastUsed.
    h.expect(
        conn,
        "get_bucket_stats",
        json!({"provider":"p"}),
        ok(
            "s0",
            json!({"bucket":"default","requestCount":0,"percentage":0}),
        ),
    );
    for _ in 0..3 {
        h.call(conn, "get_token", json!({"provider":"p"}));
    }
    h.advance(1_234);
    let t1 = START_UNIX_MS + 1_234;
    h.call(conn, "get_token", json!({"provider":"p","bucket":"work"}));
    h.call(conn, "get_token", json!({"provider":"q"}));
    // Failed get_tokens are not counted.
    h.call(conn, "get_token", json!({"provider":"p","bucket":"none"}));
    h.call(conn, "get_token", json!({"provider":"p","bucket":"a/b"}));
    for (id, payload, stats) in [
        (
            "s1",
            json!({"provider":"p"}),
            json!({"bucket":"default","requestCount":3,"percentage":75,"lastUsed":START_UNIX_MS}),
        ),
        (
            "s2",
            json!({"provider":"p","bucket":"work"}),
            json!({"bucket":"work","requestCount":1,"percentage":25,"lastUsed":t1}),
        ),
        (
            "s3",
            json!({"provider":"q","bucket":""}),
            json!({"bucket":"default","requestCount":1,"percentage":100,"lastUsed":t1}),
        ),
    ] {
        h.expect(conn, "get_bucket_stats", payload, ok(id, stats));
    }
    // get_bucket_stats itself is not counted, and a non-integral share is a float.
    h.call(conn, "get_token", json!({"provider":"p","bucket":"work"}));
    let r = work_share(&mut h, conn, "s4", 40.0);
    assert_eq!(r["data"]["requestCount"], json!(2));
    h.call(conn, "get_token", json!({"provider":"p"}));
    work_share(&mut h, conn, "s5", 100.0 / 3.0);
}

#[test]
fn bucket_stats_counts_survive_removal_but_need_a_token() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", at_token("a"));
    let conn = h.connect();
    h.call(conn, "get_token", json!({"provider":"p"}));
    h.call(conn, "remove_token", json!({"provider":"p"}));
    h.expect(
        conn,
        "get_bucket_stats",
        json!({"provider":"p"}),
        err("s", "NOT_FOUND", "No stats found for p/default"),
    );
}

#[test]
fn cancelled_get_token_is_not_counted() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", at_token("a"));
    let conn = connect_held(&mut h);
    send_req(&mut h, conn, "g", "get_token", json!({"provider":"p"}));
    send_req(&mut h, conn, "c", "cancel", json!({"targetId":"g"}));
    h.complete_all();
    h.auto_effects = true;
    h.expect(
        conn,
        "get_bucket_stats",
        json!({"provider":"p"}),
        ok(
            "s",
            json!({"bucket":"default","requestCount":0,"percentage":0}),
        ),
    );
}

#[test]
fn concurrent_saves_to_one_key_are_serialized() {
    let mut h = Harness::new();
    store_old_with_refresh(&mut h);
    let conn = connect_held(&mut h);
    h.no_reply_yet(conn, "s1", "save_token", json!({"provider":"p","token":{"access_token":"one","expiry":2,"token_type":"Bearer","scope":"s1"}}));
    h.no_reply_yet(conn, "s2", "save_token", json!({"provider":"p","bucket":"default","token":{"access_token":"two","expiry":3,"token_type":"Bearer","account_id":"acc"}}));
    // Only the first write reads; the second waits for the key.
    assert_eq!(h.held.len(), 1);
    // A write to another key is not blocked.
    h.no_reply_yet(
        conn,
        "o",
        "save_token",
        json!({"provider":"p","bucket":"other","token":at_token("x")}),
    );
    assert_eq!(h.held.len(), 2);
    h.complete(1);
    h.complete(1);
    assert_eq!(h.take_replies(conn), vec![ok("o", json!({}))]);
    // First write: read, then put; the second still emits nothing.
    h.complete(0);
    assert_eq!(h.held.len(), 1);
    assert!(matches!(h.held[0].1, Effect::TokenPut { .. }));
    h.complete(0);
    assert_eq!(h.take_replies(conn), vec![ok("s1", json!({}))]);
    // Now the second reads fresh, and sees the first's write.
    assert_eq!(h.held.len(), 1);
    assert_eq!(
        h.held[0].1,
        Effect::TokenGet {
            provider: "p".into(),
            bucket: "default".into(),
            fresh: true
        }
    );
    h.complete_all();
    assert_eq!(h.take_replies(conn), vec![ok("s2", json!({}))]);
    assert_eq!(
        h.store.token("p", "default"),
        Some(json!({
            "access_token":"two","expiry":3,"token_type":"Bearer","refresh_token":"rt",
            "scope":"s1","account_id":"acc"
        }))
    );
}

#[test]
fn remove_and_save_to_one_key_are_serialized() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", at_token("a"));
    let conn = connect_held(&mut h);
    send_req(&mut h, conn, "r", "remove_token", json!({"provider":"p"}));
    send_req(
        &mut h,
        conn,
        "s",
        "save_token",
        json!({"provider":"p","token":at_token("b")}),
    );
    assert_eq!(h.held.len(), 1);
    assert!(matches!(h.held[0].1, Effect::TokenDelete { .. }));
    h.complete_all();
    assert_eq!(
        h.take_replies(conn),
        vec![ok("r", json!({})), ok("s", json!({}))]
    );
    assert_eq!(h.store.token("p", "default"), Some(at_token("b")));
}

#[test]
fn store_failure_is_internal_error_and_the_connection_survives() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", at_token("a"));
    h.store
        .keys
        .insert("k".into(), credproxy_core::Secret::new("v"));
    let conn = h.connect();
    h.store.fail_all = true;
    for (op, payload) in [
        ("get_token", json!({"provider":"p"})),
        ("save_token", json!({"provider":"p","token":at_token("b")})),
        ("remove_token", json!({"provider":"p"})),
        ("list_providers", json!({})),
        ("list_buckets", json!({"provider":"p"})),
        ("get_bucket_stats", json!({"provider":"p"})),
        ("get_api_key", json!({"name":"k"})),
        ("list_api_keys", json!({})),
        ("has_api_key", json!({"name":"k"})),
    ] {
        assert_eq!(
            one(&mut h, conn, "f", op, payload),
            err("f", "INTERNAL_ERROR", "Internal error"),
            "{op}"
        );
    }
    assert!(!h.is_closed(conn));
    h.store.fail_all = false;
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p"}),
        ok("g", at_token("a")),
    );
    // The failed save released its key.
    assert_eq!(
        save(
            &mut h,
            conn,
            "s",
            json!({"provider":"p","token":at_token("c")})
        ),
        ok("s", json!({}))
    );
    assert!(h.audit.iter().any(|e| e.outcome == "INTERNAL_ERROR"));
}

#[test]
fn failed_effect_results_at_each_write_step() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    // Fails at the fresh read.
    send_req(
        &mut h,
        conn,
        "s1",
        "save_token",
        json!({"provider":"p","token":at_token("a")}),
    );
    h.complete_with(0, EffectResult::Failed);
    assert_eq!(
        h.take_replies(conn),
        vec![err("s1", "INTERNAL_ERROR", "Internal error")]
    );
    // Fails at the put.
    send_req(
        &mut h,
        conn,
        "s2",
        "save_token",
        json!({"provider":"p","token":at_token("a")}),
    );
    h.complete(0);
    h.complete_with(0, EffectResult::Failed);
    assert_eq!(
        h.take_replies(conn),
        vec![err("s2", "INTERNAL_ERROR", "Internal error")]
    );
    assert!(h.store.tokens.is_empty());
    // A mismatched result is an internal error too.
    send_req(&mut h, conn, "g", "get_token", json!({"provider":"p"}));
    h.complete_with(0, EffectResult::Exists(true));
    assert_eq!(
        h.take_replies(conn),
        vec![err("g", "INTERNAL_ERROR", "Internal error")]
    );
    // Remove fails.
    send_req(&mut h, conn, "r", "remove_token", json!({"provider":"p"}));
    h.complete_with(0, EffectResult::Failed);
    assert_eq!(
        h.take_replies(conn),
        vec![err("r", "INTERNAL_ERROR", "Internal error")]
    );
    // Nothing is left holding a key.
    h.auto_effects = true;
    assert_eq!(
        save(
            &mut h,
            conn,
            "s3",
            json!({"provider":"p","token":at_token("z")})
        ),
        ok("s3", json!({}))
    );
    assert_eq!(h.engine.pending_tasks(), 0);
}

#[test]
fn late_result_for_an_unknown_effect_is_ignored() {
    let mut h = Harness::new();
    let conn = h.connect();
    let now = h.now;
    h.engine
        .handle_effect_result(credproxy_core::EffectId(9_999), EffectResult::Done, now);
    h.drain();
    assert!(h.take_replies(conn).is_empty());
    assert!(!h.is_closed(conn));
}
