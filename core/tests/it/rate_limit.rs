//! The per-connection rate limit on writes and provider calls (SPEC §3.5).

use credproxy_core::Limits;
use credproxy_core::testkit::Harness;
use serde_json::{Value, json};

use crate::common::{self, Scenario, connect_held, err, harness_with, ok, one, token};

fn limited(id: &str, retry_after: u64) -> Value {
    json!({"id":id,"ok":false,"code":"RATE_LIMITED","error":"Too many requests","retryAfter":retry_after})
}

fn save_payload(i: usize) -> Value {
    json!({"provider":"p","token":token(&format!("at-{i}"))})
}

#[test]
fn burst_of_120_then_rate_limited() {
    let mut h = Harness::new();
    let conn = h.connect();
    for i in 0..120 {
        assert_eq!(
            one(
                &mut h,
                conn,
                &format!("s{i}"),
                "save_token",
                save_payload(i)
            ),
            ok(&format!("s{i}"), json!({})),
            "save {i}"
        );
    }
    let r = one(&mut h, conn, "s120", "save_token", save_payload(120));
    assert_eq!(r, limited("s120", 1));
    let retry = r["retryAfter"].as_u64().unwrap();
    assert!(retry >= 1);
    assert!(r["retryAfter"].is_u64(), "retryAfter is an integer");
    // The refused save did not run.
    assert_eq!(h.store.token("p", "default"), Some(token("at-119")));
    assert!(!h.is_closed(conn));
}

#[test]
fn reads_are_never_rate_limited() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", token("at"));
    let conn = h.connect();
    for i in 0..120 {
        one(
            &mut h,
            conn,
            &format!("s{i}"),
            "save_token",
            save_payload(i),
        );
    }
    assert_eq!(
        one(&mut h, conn, "x", "save_token", save_payload(0))["code"],
        json!("RATE_LIMITED")
    );
    for i in 0..500 {
        let op = [
            "get_token",
            "list_providers",
            "list_buckets",
            "get_bucket_stats",
            "list_api_keys",
            "has_api_key",
            "get_api_key",
            "oauth_poll",
            "oauth_cancel",
            "cancel",
        ][i % 10];
        let r = one(
            &mut h,
            conn,
            &format!("r{i}"),
            op,
            json!({"provider":"p","name":"n","session_id":"s","targetId":"t"}),
        );
        assert_ne!(r["code"], json!("RATE_LIMITED"), "{op}: {r}");
    }
}

#[test]
fn every_covered_operation_consumes_and_is_refused() {
    let mut h = harness_with(Limits {
        rate_per_sec: 1,
        rate_burst: 5,
        ..Default::default()
    });
    let conn = h.connect();
    let covered = [
        ("save_token", save_payload(0)),
        ("remove_token", json!({"provider":"p"})),
        ("oauth_initiate", json!({"provider":"p"})),
        ("oauth_exchange", json!({"session_id":"s","code":"c"})),
        ("refresh_token", json!({"provider":"p"})),
    ];
    for (op, payload) in &covered {
        let r = one(&mut h, conn, "a", op, payload.clone());
        assert_ne!(r["code"], json!("RATE_LIMITED"), "{op}");
    }
    for (op, payload) in &covered {
        assert_eq!(
            one(&mut h, conn, "b", op, payload.clone()),
            limited("b", 1),
            "{op}"
        );
    }
    // Even an invalid request is counted before validation.
    h.advance(1_000);
    h.expect(
        conn,
        "save_token",
        json!({}),
        err("c", "INVALID_REQUEST", "Missing provider or token"),
    );
    h.expect(conn, "save_token", save_payload(1), limited("d", 1));
}

#[test]
fn the_clock_refills_the_bucket() {
    let mut h = Harness::new();
    let conn = h.connect();
    for i in 0..120 {
        one(&mut h, conn, "s", "save_token", save_payload(i));
    }
    h.expect(conn, "save_token", save_payload(0), limited("s", 1));
    // 60 per second: one token every 16.7 ms.
    h.advance(16);
    h.expect(conn, "save_token", save_payload(0), limited("s", 1));
    h.advance(1);
    h.expect(conn, "save_token", save_payload(0), ok("s", json!({})));
    h.expect(conn, "save_token", save_payload(0), limited("s", 1));
    // A long pause refills to the burst, not beyond.
    h.advance(60_000);
    for i in 0..120 {
        assert_eq!(
            one(&mut h, conn, "s", "save_token", save_payload(i)),
            ok("s", json!({})),
            "{i}"
        );
    }
    h.expect(conn, "save_token", save_payload(0), limited("s", 1));
}

#[test]
fn the_limit_is_per_connection() {
    let mut h = Harness::new();
    let a = h.connect();
    let b = h.connect();
    for i in 0..120 {
        one(&mut h, a, "s", "save_token", save_payload(i));
    }
    h.expect(a, "save_token", save_payload(0), limited("s", 1));
    h.expect(b, "save_token", save_payload(0), ok("s", json!({})));
}

#[test]
fn rate_is_configurable() {
    let mut h = harness_with(Limits {
        rate_per_sec: 1,
        rate_burst: 2,
        ..Default::default()
    });
    let conn = h.connect();
    for _ in 0..2 {
        h.expect(
            conn,
            "remove_token",
            json!({"provider":"p"}),
            ok("s", json!({})),
        );
    }
    h.expect(
        conn,
        "remove_token",
        json!({"provider":"p"}),
        limited("s", 1),
    );
    h.advance(999);
    h.expect(
        conn,
        "remove_token",
        json!({"provider":"p"}),
        limited("s", 1),
    );
    h.advance(1);
    h.expect(
        conn,
        "remove_token",
        json!({"provider":"p"}),
        ok("s", json!({})),
    );
}

#[test]
fn rate_limit_comes_after_the_envelope_checks() {
    let mut h = harness_with(Limits {
        rate_per_sec: 1,
        rate_burst: 1,
        ..Default::default()
    });
    let conn = connect_held(&mut h);
    assert!(common::send_req(&mut h, conn, "a", "save_token", save_payload(0)).is_empty());
    // Duplicate id: answered as a duplicate, not as rate limited.
    h.expect(
        conn,
        "save_token",
        save_payload(1),
        err("a", "INVALID_REQUEST", "Duplicate request id"),
    );
    // Missing id or op first too.
    assert_eq!(
        common::send_frame(&mut h, conn, &json!({"op":"save_token"})),
        vec![err(
            "unknown",
            "INVALID_REQUEST",
            "Missing request id or op"
        )]
    );
    h.expect(conn, "save_token", save_payload(1), limited("b", 1));
    h.complete_all();
    assert_eq!(h.take_replies(conn), vec![ok("a", json!({}))]);
}
