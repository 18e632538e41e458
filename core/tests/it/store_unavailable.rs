//! A store that cannot be reached (`EffectResult::Unavailable`, a database
//! store that is down): requests that need it answer `STORE_UNAVAILABLE
//! "Credential store unavailable"` with `retryAfter` (whole seconds, at
//! least 1); a refreshed token whose write cannot reach the store is still
//! served, kept in memory as authoritative and written once the store is
//! due back.

use credproxy_core::testkit::Harness;

use crate::common::seeded_refreshable as seeded;
use serde_json::{Value, json};

fn down(id: &str, retry_after: u64) -> Value {
    json!({"id":id,"ok":false,"code":"STORE_UNAVAILABLE","error":"Credential store unavailable","retryAfter":retry_after})
}

fn reply(h: &mut Harness, conn: credproxy_core::ConnId, id: &str) -> Value {
    h.take_replies(conn)
        .into_iter()
        .find(|r| r["id"] == json!(id))
        .unwrap_or(Value::Null)
}

#[test]
fn get_token_miss_answers_store_unavailable_with_retry_after() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.store.unavailable = Some(2_001);
    let before = h.sent.get(&conn).map_or(0, Vec::len);
    h.request(conn, "g", "get_token", json!({"provider":"anthropic"}));
    let bytes = &h.sent[&conn][before..];
    let json = br#"{"id":"g","ok":false,"code":"STORE_UNAVAILABLE","error":"Credential store unavailable","retryAfter":3}"#;
    assert_eq!(&bytes[4..], json, "{}", String::from_utf8_lossy(bytes));
    assert_eq!(&bytes[..4], &(json.len() as u32).to_be_bytes());
    // Under a second still says at least one.
    h.store.unavailable = Some(0);
    let r = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert_eq!(r["retryAfter"], json!(1), "{r}");
    // The connection goes on once the store is back.
    h.store.unavailable = None;
    let r = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert_eq!(r["code"], json!("NOT_FOUND"), "{r}");
}

#[test]
fn reads_and_writes_that_need_the_store_answer_store_unavailable() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.store.unavailable = Some(4_500);
    let token = json!({"access_token":"a","expiry":1,"token_type":"Bearer"});
    let cases = [
        ("list_providers", json!({})),
        ("list_buckets", json!({"provider":"p"})),
        ("get_api_key", json!({"name":"k"})),
        ("list_api_keys", json!({})),
        ("has_api_key", json!({"name":"k"})),
        ("get_bucket_stats", json!({"provider":"p"})),
        ("save_token", json!({"provider":"p","token":token})),
        ("remove_token", json!({"provider":"p"})),
        ("refresh_token", json!({"provider":"anthropic"})),
    ];
    for (n, (op, payload)) in cases.into_iter().enumerate() {
        let id = format!("c{n}");
        h.request(conn, &id, op, payload);
        assert_eq!(reply(&mut h, conn, &id), down(&id, 5), "{op}");
    }
    assert!(h.store.locks.is_empty());
    assert_eq!(h.engine.pending_tasks(), 0);
}

#[test]
fn an_unreachable_store_lock_fails_a_refresh_before_the_provider() {
    let (mut h, conn) = seeded(-10);
    h.auto_effects = false;
    h.hold_locks = true;
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    // The token and metadata reads come from the store; the lock does not.
    h.complete(0);
    h.complete(0);
    assert!(matches!(
        h.held[0].1,
        credproxy_core::Effect::LockAcquire { .. }
    ));
    h.complete_with(
        0,
        credproxy_core::EffectResult::Unavailable {
            retry_after_ms: 10_000,
        },
    );
    assert_eq!(reply(&mut h, conn, "r"), down("r", 10));
    assert!(h.http_log.is_empty());
    assert_eq!(h.engine.pending_tasks(), 0);
}

#[test]
fn a_refreshed_token_whose_write_is_unavailable_is_served_and_written_later() {
    let (mut h, conn) = seeded(-10);
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    h.store.unavailable = Some(4_000);
    h.respond(
        200,
        json!({"access_token":"AT-1","refresh_token":"RT-1","expires_in":3600}),
    );
    let r = reply(&mut h, conn, "r");
    assert_eq!(r["ok"], json!(true), "the new token is the answer: {r}");
    assert_eq!(r["data"]["access_token"], json!("AT-1"));
    // Served from memory while the store is down.
    let g = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert_eq!(g["data"]["access_token"], json!("AT-1"));
    h.store.unavailable = None;
    h.advance(1_000);
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["refresh_token"],
        json!("RT-0"),
        "not retried before the store is due back"
    );
    h.advance(3_000);
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["refresh_token"],
        json!("RT-1"),
        "written once the store is back"
    );
}

#[test]
fn an_unreachable_reread_after_a_refusal_marks_nothing() {
    let (mut h, conn) = seeded(-10);
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    h.store.unavailable = Some(1_000);
    h.respond(400, json!({"error":"invalid_grant"}));
    assert_eq!(reply(&mut h, conn, "r"), down("r", 1));
    h.store.unavailable = None;
    assert!(h.store.unusable.is_empty(), "a sibling may have rotated it");
}
