//! Envelope checks and routing after the handshake (SPEC §3.3): ids, ops,
//! duplicates, the in-flight cap, unknown operations, payload shapes and
//! out-of-order replies.

use credproxy_core::testkit::Harness;
use credproxy_core::{Effect, Limits};
use serde_json::{Value, json};

use crate::common::{
    Scenario, connect_held, err, harness_with, ok, one, send_frame, send_req, token,
};

fn missing(id: &str) -> Value {
    err(id, "INVALID_REQUEST", "Missing request id or op")
}

#[test]
fn missing_id_or_op() {
    let mut h = Harness::new();
    let conn = h.connect();
    for frame in [
        json!({"v":2,"op":"list_providers"}),
        json!({"v":2,"id":"","op":"list_providers"}),
        json!({"v":2,"id":0,"op":"list_providers"}),
        json!({"v":2,"id":null,"op":"list_providers"}),
        json!({"v":2,"id":false,"op":"list_providers"}),
        json!({"v":2,"id":[],"op":"list_providers"}),
        json!({"v":2,"id":{},"op":"list_providers"}),
        json!({"v":2}),
        json!({}),
    ] {
        assert_eq!(
            send_frame(&mut h, conn, &frame),
            vec![missing("unknown")],
            "{frame}"
        );
    }
    // A valid id with a missing, empty or non-string op is echoed.
    for frame in [
        json!({"v":2,"id":"a"}),
        json!({"v":2,"id":"a","op":""}),
        json!({"v":2,"id":"a","op":null}),
        json!({"v":2,"id":"a","op":7}),
        json!({"v":2,"id":"a","op":["get_token"]}),
    ] {
        assert_eq!(
            send_frame(&mut h, conn, &frame),
            vec![missing("a")],
            "{frame}"
        );
    }
    assert!(!h.is_closed(conn));
    assert!(h.effects.is_empty());
}

#[test]
fn numeric_ids_are_echoed_as_strings() {
    let mut h = Harness::new();
    let conn = h.connect();
    for (id, echo) in [
        (json!(7), "7"),
        (json!(-3), "-3"),
        (json!(7.0), "7"),
        (json!(2.5), "2.5"),
    ] {
        let replies = send_frame(
            &mut h,
            conn,
            &json!({"v":2,"id":id,"op":"list_api_keys","payload":{}}),
        );
        assert_eq!(replies, vec![ok(echo, json!({"keys":[]}))]);
    }
}

#[test]
fn v_is_ignored_after_the_handshake() {
    let mut h = Harness::new();
    let conn = h.connect();
    for v in [json!(1), json!(99), json!("x"), Value::Null] {
        let replies = send_frame(&mut h, conn, &json!({"v":v,"id":"1","op":"list_api_keys"}));
        assert_eq!(replies, vec![ok("1", json!({"keys":[]}))]);
    }
    let replies = send_frame(&mut h, conn, &json!({"id":"2","op":"list_api_keys"}));
    assert_eq!(replies, vec![ok("2", json!({"keys":[]}))]);
}

#[test]
fn duplicate_id_while_in_flight() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", token("at"));
    let conn = connect_held(&mut h);
    h.no_reply_yet(conn, "a", "get_token", json!({"provider":"p"}));
    assert_eq!(
        send_req(&mut h, conn, "a", "list_providers", json!({})),
        vec![err("a", "INVALID_REQUEST", "Duplicate request id")]
    );
    // Numeric 7 and "7" are the same id.
    assert!(send_frame(&mut h, conn, &json!({"id":7,"op":"list_api_keys"})).is_empty());
    assert_eq!(
        send_req(&mut h, conn, "7", "list_api_keys", json!({})),
        vec![err("7", "INVALID_REQUEST", "Duplicate request id")]
    );
    assert_eq!(h.held.len(), 2);
    h.complete_all();
    let replies = h.take_replies(conn);
    assert_eq!(
        replies,
        vec![
            ok(
                "a",
                json!({"access_token":"at","expiry":1_767_229_200,"token_type":"Bearer"})
            ),
            ok("7", json!({"keys":[]})),
        ]
    );
    // Answered once: nothing more ever comes for "a".
    assert!(h.held.is_empty());
    assert!(h.take_replies(conn).is_empty());
}

#[test]
fn id_is_reusable_after_completion() {
    let mut h = Harness::new();
    let conn = h.connect();
    for _ in 0..3 {
        h.expect(
            conn,
            "get_token",
            json!({"provider":"p"}),
            err("same", "NOT_FOUND", "No token found for provider: p"),
        );
    }
    // Also after an error answered without an effect.
    h.expect(
        conn,
        "get_token",
        json!({}),
        err("same", "INVALID_REQUEST", "Missing provider"),
    );
    h.expect(
        conn,
        "list_api_keys",
        json!({}),
        ok("same", json!({"keys":[]})),
    );
}

#[test]
fn ids_are_per_connection() {
    let mut h = Harness::new();
    let a = h.connect();
    let b = connect_held(&mut h);
    h.no_reply_yet(a, "x", "list_api_keys", json!({}));
    h.no_reply_yet(b, "x", "list_api_keys", json!({}));
    h.complete_all();
    assert_eq!(h.take_replies(a), vec![ok("x", json!({"keys":[]}))]);
    assert_eq!(h.take_replies(b), vec![ok("x", json!({"keys":[]}))]);
}

fn fill_in_flight(h: &mut Harness, conn: credproxy_core::ConnId, n: usize) {
    h.auto_effects = false;
    for i in 0..n {
        assert!(
            send_req(
                h,
                conn,
                &format!("f{i}"),
                "get_token",
                json!({"provider":"p"})
            )
            .is_empty()
        );
    }
    assert_eq!(h.held.len(), n);
}

#[test]
fn in_flight_cap() {
    let mut h = Harness::new();
    let conn = h.connect();
    fill_in_flight(&mut h, conn, 16);
    let exhausted = |id: &str| err(id, "RESOURCE_EXHAUSTED", "Too many concurrent requests");
    assert_eq!(
        send_req(&mut h, conn, "17", "get_token", json!({"provider":"p"})),
        vec![exhausted("17")]
    );
    // Effect-free operations count too, and the cap comes before the
    // unknown-op check.
    assert_eq!(
        send_req(
            &mut h,
            conn,
            "18",
            "oauth_cancel",
            json!({"session_id":"s"})
        ),
        vec![exhausted("18")]
    );
    assert_eq!(
        send_req(&mut h, conn, "19", "totally_bogus_op", json!({})),
        vec![exhausted("19")]
    );
    // The duplicate check comes before the cap.
    assert_eq!(
        send_req(&mut h, conn, "f3", "get_token", json!({"provider":"p"})),
        vec![err("f3", "INVALID_REQUEST", "Duplicate request id")]
    );
    // The refused requests emitted nothing.
    assert_eq!(h.held.len(), 16);
    // Completing one frees a slot.
    h.complete(0);
    assert_eq!(
        h.take_replies(conn),
        vec![err("f0", "NOT_FOUND", "No token found for provider: p")]
    );
    h.no_reply_yet(conn, "17", "get_token", json!({"provider":"p"}));
    assert_eq!(h.held.len(), 16);
    h.complete_all();
    assert_eq!(h.take_replies(conn).len(), 16);
}

#[test]
fn cancel_is_exempt_from_the_cap() {
    let mut h = Harness::new();
    let conn = h.connect();
    fill_in_flight(&mut h, conn, 16);
    assert_eq!(
        send_req(&mut h, conn, "c1", "cancel", json!({"targetId":"nope"})),
        vec![ok("c1", json!({"cancelled":false}))]
    );
    assert_eq!(
        send_req(&mut h, conn, "c2", "cancel", json!({"targetId":"f5"})),
        vec![
            err("f5", "CANCELLED", "Operation cancelled"),
            ok("c2", json!({"cancelled":true})),
        ]
    );
}

#[test]
fn in_flight_cap_is_configurable() {
    let mut h = harness_with(Limits {
        max_in_flight: 2,
        ..Default::default()
    });
    let conn = h.connect();
    fill_in_flight(&mut h, conn, 2);
    assert_eq!(
        send_req(&mut h, conn, "x", "list_providers", json!({})),
        vec![err(
            "x",
            "RESOURCE_EXHAUSTED",
            "Too many concurrent requests"
        )]
    );
}

#[test]
fn unknown_operation() {
    let mut h = Harness::new();
    let conn = h.connect();
    for op in [
        "totally_bogus_op",
        "github",
        "toString",
        "constructor",
        "GET_TOKEN",
        "get_token ",
        "handshake",
    ] {
        h.expect(
            conn,
            op,
            json!({}),
            err("u", "INVALID_REQUEST", &format!("Unknown operation: {op}")),
        );
    }
    assert!(h.effects.is_empty());
}

#[test]
fn non_object_payload_is_invalid() {
    let mut h = Harness::new();
    let conn = h.connect();
    for payload in [json!([]), json!([1]), json!("p"), json!(3), json!(true)] {
        for op in [
            "get_token",
            "save_token",
            "remove_token",
            "list_providers",
            "list_buckets",
            "get_bucket_stats",
            "get_api_key",
            "list_api_keys",
            "has_api_key",
            "cancel",
            "oauth_initiate",
            "oauth_exchange",
            "oauth_poll",
            "oauth_cancel",
            "refresh_token",
        ] {
            assert_eq!(
                one(&mut h, conn, "i", op, payload.clone()),
                err("i", "INVALID_REQUEST", "Invalid payload"),
                "{op} {payload}"
            );
        }
    }
    assert!(h.effects.is_empty());
}

#[test]
fn null_or_absent_payload_is_an_empty_object() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", token("at"));
    h.store
        .keys
        .insert("k".into(), credproxy_core::Secret::new("v"));
    let conn = h.connect();
    for frame in [
        json!({"id":"1","op":"list_providers"}),
        json!({"id":"1","op":"list_providers","payload":null}),
    ] {
        assert_eq!(
            send_frame(&mut h, conn, &frame),
            vec![ok("1", json!({"providers":["p"]}))]
        );
    }
    for frame in [
        json!({"id":"2","op":"list_api_keys"}),
        json!({"id":"2","op":"list_api_keys","payload":null}),
    ] {
        assert_eq!(
            send_frame(&mut h, conn, &frame),
            vec![ok("2", json!({"keys":["k"]}))]
        );
    }
    for (op, msg) in [
        ("get_token", "Missing provider"),
        ("save_token", "Missing provider or token"),
        ("remove_token", "Missing provider"),
        ("list_buckets", "Missing provider"),
        ("get_bucket_stats", "Missing provider"),
        ("get_api_key", "Missing name"),
        ("has_api_key", "Missing name"),
        ("cancel", "Missing targetId"),
        ("oauth_initiate", "Missing provider"),
        ("oauth_exchange", "Missing session_id"),
        ("oauth_poll", "Missing session_id"),
        ("oauth_cancel", "Missing session_id"),
        ("refresh_token", "Missing provider"),
    ] {
        for frame in [
            json!({"id":"3","op":op}),
            json!({"id":"3","op":op,"payload":null}),
            json!({"id":"3","op":op,"payload":{}}),
        ] {
            assert_eq!(
                send_frame(&mut h, conn, &frame),
                vec![err("3", "INVALID_REQUEST", msg)],
                "{frame}"
            );
        }
    }
}

#[test]
fn unknown_payload_fields_are_ignored() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", token("at"));
    let conn = h.connect();
    h.expect(
        conn,
        "get_token",
        json!({"provider":"p","extra":{"deep":[1,2]},"redirect_uri":"x"}),
        ok(
            "1",
            json!({"access_token":"at","expiry":1_767_229_200,"token_type":"Bearer"}),
        ),
    );
}

#[test]
fn replies_follow_effect_completion_order() {
    let mut h = Harness::new();
    h.store.put_token("a", "default", token("at-a"));
    h.store.put_token("b", "default", token("at-b"));
    h.store.put_token("c", "default", token("at-c"));
    let conn = connect_held(&mut h);
    for p in ["a", "b", "c"] {
        h.no_reply_yet(conn, p, "get_token", json!({"provider":p}));
    }
    assert_eq!(h.held.len(), 3);
    for i in (0..3).rev() {
        h.complete(i);
    }
    let ids: Vec<_> = h
        .take_replies(conn)
        .into_iter()
        .map(|r| {
            assert_eq!(r["ok"], json!(true));
            assert_eq!(
                r["data"]["access_token"],
                json!(format!("at-{}", r["id"].as_str().unwrap()))
            );
            r["id"].clone()
        })
        .collect();
    assert_eq!(ids, vec![json!("c"), json!("b"), json!("a")]);
}

#[test]
fn requests_start_in_arrival_order() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    let mut chunk = Vec::new();
    for (i, p) in ["x", "y", "z"].iter().enumerate() {
        chunk.extend(credproxy_core::frame::encode(
            &json!({"id":i,"op":"list_buckets","payload":{"provider":p}}),
        ));
    }
    // Id 0 is falsy: answered at once; the others start in order.
    h.send(conn, &chunk);
    assert_eq!(h.take_replies(conn), vec![missing("unknown")]);
    assert_eq!(
        h.effects,
        vec![
            Effect::ListBuckets {
                provider: "y".into()
            },
            Effect::ListBuckets {
                provider: "z".into()
            },
        ]
    );
}

#[test]
fn every_reply_has_no_v_and_an_object_data() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", token("at"));
    let conn = h.connect();
    let calls = [
        ("get_token", json!({"provider":"p"})),
        ("list_providers", json!({})),
        ("list_buckets", json!({"provider":"p"})),
        ("get_bucket_stats", json!({"provider":"p"})),
        ("list_api_keys", json!({})),
        ("has_api_key", json!({"name":"n"})),
        ("cancel", json!({"targetId":"t"})),
        ("oauth_cancel", json!({"session_id":"s"})),
        ("remove_token", json!({"provider":"q"})),
    ];
    for (op, payload) in calls {
        let r = h.call(conn, op, payload);
        assert!(r.get("v").is_none(), "{op}: {r}");
        assert_eq!(r["ok"], json!(true), "{op}: {r}");
        assert!(r["data"].is_object(), "{op}: {r}");
    }
}
