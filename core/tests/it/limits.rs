//! Connection limit and the outbound size guard (SPEC §3.1, §3.5).

use credproxy_core::testkit::Harness;
use credproxy_core::{ConnId, Limits, Peer, Secret, Transport};
use serde_json::{Value, json};

use crate::common::{Scenario, connect_held, err, harness_with, ok, one, read_closed};

/// The connections past their handshake.
fn handshaken(h: &Harness) -> usize {
    h.engine.connection_count() - h.engine.pending_handshakes()
}

/// How many idle connections were evicted to admit a newcomer.
fn idle_evictions(h: &Harness) -> usize {
    h.audit
        .iter()
        .filter(|e| e.op == "connection_evicted" && e.outcome == "idle")
        .count()
}

#[test]
fn connection_limit_bounds_handshaken_connections() {
    // Was `connection_limit_refuses_at_accept`: the limit no longer refuses
    // at accept (SPEC §3.1); it bounds handshaken connections, and a
    // newcomer displaces an idle one. With work in flight everywhere, the
    // newcomer is the one closed.
    let mut h = harness_with(Limits {
        max_connections: 2,
        ..Default::default()
    });
    let a = h.connect();
    let b = connect_held(&mut h);
    h.request(a, "ka", "get_api_key", json!({"name":"K"}));
    h.request(b, "kb", "get_api_key", json!({"name":"K"}));
    let peer = Peer::anonymous(Transport::Unix);
    let c = h.open_peer(peer).expect("accepted while pending");
    h.send_json(
        c,
        &json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}),
    );
    assert_eq!(
        h.take_replies(c),
        vec![
            json!({"v":2,"op":"handshake","ok":false,"code":"RESOURCE_EXHAUSTED",
                    "error":"Too many connections"})
        ]
    );
    assert!(h.is_closed(c));
    assert!(
        h.audit
            .iter()
            .any(|e| e.op == "connection_refused" && e.outcome == "connection_limit")
    );
    assert_eq!(h.engine.connection_count(), 2);
    // The open ones still work.
    h.complete_all();
    assert_eq!(h.take_replies(a).len(), 1);
    h.auto_effects = true;
    h.expect(a, "list_api_keys", json!({}), ok("1", json!({"keys":[]})));
    // Once one closes, a new connection is served.
    read_closed(&mut h, b);
    assert!(h.is_closed(b));
    let d = h.connect();
    assert_ne!(d, a);
    assert_eq!(h.engine.connection_count(), 2);
}

#[test]
fn default_connection_limits_are_256_and_64_pending() {
    // Was `default_connection_limit_is_256` (256 raw opens, the 257th
    // refused): raw opens now share a pending budget of 64, oldest first.
    let mut h = Harness::new();
    let first = h.open();
    for _ in 0..300 {
        h.open();
    }
    assert_eq!(h.engine.connection_count(), 64);
    assert!(h.is_closed(first));
    for _ in 0..256 {
        h.connect();
    }
    assert_eq!(handshaken(&h), 256);
    assert_eq!(idle_evictions(&h), 0);
    h.connect();
    assert_eq!(handshaken(&h), 256);
    assert_ne!(idle_evictions(&h), 0, "a newcomer displaces an idle one");
}

/// The reply to a response too large for protocol `version`.
fn too_large(id: &str, version: u8) -> Value {
    err(
        id,
        "RESPONSE_TOO_LARGE",
        &format!("Response exceeds maximum frame size for protocol version {version}"),
    )
}

/// Stores the API keys `fits`, whose reply `{"id":"x","ok":true,"data":
/// {"key":"…"}}` is exactly `bound` bytes, and `over`, one byte longer;
/// returns the value of `fits`.
fn keys_around(h: &mut Harness, bound: usize) -> String {
    let overhead = br#"{"id":"x","ok":true,"data":{"key":""}}"#.len();
    let fits = "a".repeat(bound - overhead);
    h.store
        .keys
        .insert("fits".into(), Secret::new(fits.clone()));
    h.store
        .keys
        .insert("over".into(), Secret::new("a".repeat(bound - overhead + 1)));
    fits
}

/// Opens a connection and handshakes as a version 1 client.
#[track_caller]
fn v1_peer(h: &mut Harness) -> ConnId {
    let v1 = h.open();
    h.send_json(v1, &json!({"v":1,"op":"handshake"}));
    assert_eq!(h.take_replies(v1)[0]["data"]["version"], json!(1));
    v1
}

#[test]
fn v1_peer_gets_response_too_large_for_a_big_api_key() {
    let mut h = Harness::new();
    let big = "K".repeat(100 * 1024);
    h.store.keys.insert("big".into(), Secret::new(big.clone()));
    h.store.keys.insert("small".into(), Secret::new("s"));
    let v1 = v1_peer(&mut h);
    h.expect(v1, "get_api_key", json!({"name":"big"}), too_large("b", 1));
    // The connection survives and serves the next request.
    assert!(!h.is_closed(v1));
    h.expect(
        v1,
        "get_api_key",
        json!({"name":"small"}),
        ok("s", json!({"key":"s"})),
    );
    assert!(
        h.audit
            .iter()
            .any(|e| e.op == "get_api_key" && e.outcome == "RESPONSE_TOO_LARGE")
    );
    // A v2 peer gets it intact.
    let v2 = h.connect();
    h.expect(
        v2,
        "get_api_key",
        json!({"name":"big"}),
        ok("b", json!({"key":big})),
    );
}

#[test]
fn v1_bound_is_the_whole_frame_of_65536_bytes() {
    let mut h = Harness::new();
    // The whole frame: its 4-byte header and the reply.
    let fits = keys_around(&mut h, 65_536 - 4);
    let v1 = v1_peer(&mut h);
    let before = h.sent[&v1].len();
    h.expect(
        v1,
        "get_api_key",
        json!({"name":"fits"}),
        ok("x", json!({"key":fits})),
    );
    assert_eq!(h.sent[&v1].len() - before, 65_536);
    h.expect(v1, "get_api_key", json!({"name":"over"}), too_large("x", 1));
}

#[test]
fn v1_guard_applies_to_token_replies() {
    let mut h = Harness::new();
    h.store.put_token(
        "p",
        "default",
        json!({"access_token":"a".repeat(70_000),"expiry":1,"token_type":"Bearer"}),
    );
    let v1 = h.open();
    h.send_json(
        v1,
        &json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":1}}),
    );
    let _ = h.take_replies(v1);
    h.expect(v1, "get_token", json!({"provider":"p"}), too_large("g", 1));
    assert!(!h.is_closed(v1));
}

#[test]
fn v2_bound_with_a_small_configured_maximum() {
    let mut h = harness_with(Limits {
        v2_max_payload: 1_000,
        ..Default::default()
    });
    let fits = keys_around(&mut h, 1_000);
    let conn = h.connect();
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"fits"}),
        ok("x", json!({"key":fits})),
    );
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"over"}),
        too_large("x", 2),
    );
    assert!(!h.is_closed(conn));
    h.expect(
        conn,
        "list_api_keys",
        json!({}),
        ok("y", json!({"keys":["fits","over"]})),
    );
}

#[test]
fn v2_default_bound_is_4_mib() {
    let mut h = Harness::new();
    let fits = keys_around(&mut h, 4 * 1024 * 1024);
    let conn = h.connect();
    let r = one(&mut h, conn, "x", "get_api_key", json!({"name":"fits"}));
    assert_eq!(r["ok"], json!(true));
    assert_eq!(r["data"]["key"].as_str().map(str::len), Some(fits.len()));
    h.expect(
        conn,
        "get_api_key",
        json!({"name":"over"}),
        too_large("x", 2),
    );
}
