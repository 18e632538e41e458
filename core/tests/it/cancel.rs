//! `cancel {targetId}` (SPEC §3.3): exactly one reply per request, the
//! `CANCELLED` reply before the cancel's own, detaching (reads dropped,
//! writes persist), per-connection scope and the duplicate check.

use credproxy_core::EffectResult;
use credproxy_core::testkit::Harness;
use serde_json::json;

use crate::common::{
    self, Scenario, connect_held, err, ok, one, send_frame, send_req, store_old_with_refresh, token,
};

fn cancelled(id: &str) -> serde_json::Value {
    err(id, "CANCELLED", "Operation cancelled")
}

#[test]
fn in_flight_target_gets_cancelled_before_the_cancel_reply() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", token("at"));
    let conn = connect_held(&mut h);
    h.no_reply_yet(conn, "t", "get_token", json!({"provider":"p"}));
    assert_eq!(h.engine.pending_tasks(), 1, "the read waits for its effect");
    assert_eq!(
        send_req(&mut h, conn, "c", "cancel", json!({"targetId":"t"})),
        vec![cancelled("t"), ok("c", json!({"cancelled":true}))]
    );
    // Completing the target's effect afterwards sends nothing.
    assert_eq!(h.held.len(), 1);
    h.complete_all();
    assert!(h.take_replies(conn).is_empty());
    assert_eq!(h.engine.pending_tasks(), 0);
    // A second cancel finds nothing.
    h.expect(
        conn,
        "cancel",
        json!({"targetId":"t"}),
        ok("c2", json!({"cancelled":false})),
    );
}

#[test]
fn cancelled_read_is_dropped_even_when_its_result_is_an_error() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    h.no_reply_yet(conn, "t", "list_api_keys", json!({}));
    let replies = send_req(&mut h, conn, "c", "cancel", json!({"targetId":"t"}));
    assert_eq!(replies.len(), 2);
    h.complete_with(0, EffectResult::Failed);
    assert!(h.take_replies(conn).is_empty());
}

#[test]
fn unknown_or_finished_target() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.expect(
        conn,
        "cancel",
        json!({"targetId":"never"}),
        ok("c", json!({"cancelled":false})),
    );
    h.expect(
        conn,
        "list_api_keys",
        json!({}),
        ok("done", json!({"keys":[]})),
    );
    h.expect(
        conn,
        "cancel",
        json!({"targetId":"done"}),
        ok("c", json!({"cancelled":false})),
    );
    // A cancel can not target itself: it is never in flight.
    h.expect(
        conn,
        "cancel",
        json!({"targetId":"self"}),
        ok("self", json!({"cancelled":false})),
    );
}

#[test]
fn missing_or_invalid_target_id() {
    let mut h = Harness::new();
    let conn = h.connect();
    for payload in [
        json!({}),
        json!({"targetId":null}),
        json!({"targetId":""}),
        json!({"targetId":0}),
        json!({"targetId":false}),
        json!({"target":"x"}),
    ] {
        assert_eq!(
            one(&mut h, conn, "c", "cancel", payload.clone()),
            err("c", "INVALID_REQUEST", "Missing targetId"),
            "{payload}"
        );
    }
    for payload in [
        json!({"targetId":true}),
        json!({"targetId":[1]}),
        json!({"targetId":{}}),
    ] {
        assert_eq!(
            one(&mut h, conn, "c", "cancel", payload.clone()),
            err("c", "INVALID_REQUEST", "Invalid targetId"),
            "{payload}"
        );
    }
}

#[test]
fn cancel_is_subject_to_the_duplicate_check() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    h.no_reply_yet(conn, "t", "list_api_keys", json!({}));
    // The cancel's own id equals the in-flight id.
    assert_eq!(
        send_req(&mut h, conn, "t", "cancel", json!({"targetId":"t"})),
        vec![err("t", "INVALID_REQUEST", "Duplicate request id")]
    );
    // The original is unaffected and answered once.
    h.complete_all();
    assert_eq!(h.take_replies(conn), vec![ok("t", json!({"keys":[]}))]);
}

#[test]
fn cancel_from_another_connection_finds_nothing() {
    let mut h = Harness::new();
    let a = h.connect();
    let b = connect_held(&mut h);
    h.no_reply_yet(a, "t", "list_api_keys", json!({}));
    assert_eq!(
        send_req(&mut h, b, "c", "cancel", json!({"targetId":"t"})),
        vec![ok("c", json!({"cancelled":false}))]
    );
    assert!(h.take_replies(a).is_empty());
    h.complete_all();
    assert_eq!(h.take_replies(a), vec![ok("t", json!({"keys":[]}))]);
    assert!(h.take_replies(b).is_empty());
}

#[test]
fn cancelled_save_token_still_persists() {
    let mut h = Harness::new();
    store_old_with_refresh(&mut h);
    let conn = connect_held(&mut h);
    h.no_reply_yet(
        conn,
        "s",
        "save_token",
        json!({"provider":"p","token":{"access_token":"new","expiry":2,"token_type":"Bearer"}}),
    );
    assert_eq!(
        send_req(&mut h, conn, "c", "cancel", json!({"targetId":"s"})),
        vec![cancelled("s"), ok("c", json!({"cancelled":true}))]
    );
    // The write runs to completion: fresh read, then the merged put.
    h.complete_all();
    assert!(h.take_replies(conn).is_empty());
    assert_eq!(
        h.store.token("p", "default"),
        Some(json!({"access_token":"new","expiry":2,"token_type":"Bearer","refresh_token":"rt"}))
    );
    assert_eq!(h.engine.pending_tasks(), 0);
    // The key is released: another save goes through.
    h.auto_effects = true;
    h.expect(
        conn,
        "save_token",
        json!({"provider":"p","token":{"access_token":"newer","expiry":3,"token_type":"Bearer"}}),
        ok("s", json!({})),
    );
    assert_eq!(
        h.store.token("p", "default").unwrap()["access_token"],
        json!("newer")
    );
}

#[test]
fn cancelled_save_waiting_for_the_key_still_persists_in_order() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    let save = |at: &str, extra: &str| json!({"provider":"p","token":{"access_token":at,"expiry":1,"token_type":"Bearer", extra: true}});
    h.no_reply_yet(conn, "s1", "save_token", save("one", "x1"));
    h.no_reply_yet(conn, "s2", "save_token", save("two", "x2"));
    assert_eq!(h.held.len(), 1);
    assert_eq!(
        send_req(&mut h, conn, "c", "cancel", json!({"targetId":"s2"})),
        vec![cancelled("s2"), ok("c", json!({"cancelled":true}))]
    );
    h.complete_all();
    assert_eq!(h.take_replies(conn), vec![ok("s1", json!({}))]);
    assert_eq!(
        h.store.token("p", "default"),
        Some(json!({"access_token":"two","expiry":1,"token_type":"Bearer","x1":true,"x2":true}))
    );
}

#[test]
fn cancelled_remove_token_still_removes() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", token("at"));
    let conn = connect_held(&mut h);
    h.no_reply_yet(conn, "r", "remove_token", json!({"provider":"p"}));
    assert_eq!(
        send_req(&mut h, conn, "c", "cancel", json!({"targetId":"r"})),
        vec![cancelled("r"), ok("c", json!({"cancelled":true}))]
    );
    h.complete_all();
    assert!(h.take_replies(conn).is_empty());
    assert_eq!(h.store.token("p", "default"), None);
}

#[test]
fn cancel_with_numeric_target_id() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    assert!(send_frame(&mut h, conn, &json!({"id":7,"op":"list_api_keys"})).is_empty());
    assert_eq!(
        send_req(&mut h, conn, "c", "cancel", json!({"targetId":7})),
        vec![cancelled("7"), ok("c", json!({"cancelled":true}))]
    );
    // A string id is found by a numeric targetId and vice versa.
    h.no_reply_yet(conn, "8", "list_api_keys", json!({}));
    assert_eq!(
        send_req(&mut h, conn, "c", "cancel", json!({"targetId":8})),
        vec![cancelled("8"), ok("c", json!({"cancelled":true}))]
    );
    assert!(send_frame(&mut h, conn, &json!({"id":9,"op":"list_api_keys"})).is_empty());
    assert_eq!(
        send_req(&mut h, conn, "c", "cancel", json!({"targetId":"9"})),
        vec![cancelled("9"), ok("c", json!({"cancelled":true}))]
    );
    h.complete_all();
    assert!(h.take_replies(conn).is_empty());
}

#[test]
fn cancel_frees_the_in_flight_slot_and_the_id() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    for i in 0..16 {
        h.no_reply_yet(conn, &format!("f{i}"), "list_api_keys", json!({}));
    }
    let replies = send_req(&mut h, conn, "c", "cancel", json!({"targetId":"f0"}));
    assert_eq!(replies.len(), 2);
    // The slot and the id are free again.
    h.no_reply_yet(conn, "f0", "list_api_keys", json!({}));
    h.complete_all();
    let replies = h.take_replies(conn);
    assert_eq!(replies.len(), 16);
    assert_eq!(
        replies
            .iter()
            .filter(|r| r["id"] == json!("f0"))
            .collect::<Vec<_>>(),
        vec![&ok("f0", json!({"keys":[]}))]
    );
}

#[test]
fn cancel_is_not_rate_limited() {
    let limits = credproxy_core::Limits {
        rate_per_sec: 1,
        rate_burst: 1,
        ..Default::default()
    };
    let mut h = Harness::with_config(common::with_limits(limits), 0);
    let conn = h.connect();
    for i in 0..50 {
        h.expect(
            conn,
            "cancel",
            json!({"targetId":"x"}),
            ok(&format!("c{i}"), json!({"cancelled":false})),
        );
    }
}
