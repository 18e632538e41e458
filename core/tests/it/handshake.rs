//! The first frame of a connection (SPEC §3.2): exact reply bytes, the order
//! of the checks, close-after-refusal and the handshake deadline.

use credproxy_core::frame;
use credproxy_core::testkit::Harness;
use serde_json::{Value, json};

use crate::common::{self, Scenario, cap_token, err, raw_frame, sandbox_config, send_req};

const OK_V2: &[u8] = br#"{"v":2,"op":"handshake","ok":true,"data":{"version":2}}"#;
const OK_V1: &[u8] = br#"{"v":1,"op":"handshake","ok":true,"data":{"version":1}}"#;
const UNKNOWN_VERSION: &[u8] = br#"{"v":2,"op":"handshake","ok":false,"code":"UNKNOWN_VERSION","error":"Unsupported protocol version"}"#;
const UNAUTHORIZED: &[u8] = br#"{"v":2,"op":"handshake","ok":false,"code":"UNAUTHORIZED","error":"Invalid or missing capability token"}"#;
const HANDSHAKE_REQUIRED: &[u8] =
    br#"{"v":2,"op":"handshake","ok":false,"code":"INVALID_REQUEST","error":"Handshake required"}"#;

/// Opens a connection, sends `first` as its first frame and returns the raw
/// bytes sent back.
fn first_frame(h: &mut Harness, first: &Value) -> (credproxy_core::ConnId, Vec<u8>) {
    let conn = h.open();
    h.send_json(conn, first);
    let sent = h.sent.get(&conn).cloned().unwrap_or_default();
    // Consume the decoded replies so later `take_replies` see only new ones.
    let _ = h.take_replies(conn);
    (conn, sent)
}

#[test]
fn success_v2_exact_bytes() {
    let mut h = Harness::new();
    let (conn, sent) = first_frame(
        &mut h,
        &json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}),
    );
    assert_eq!(sent, raw_frame(OK_V2));
    assert!(!h.is_closed(conn));
}

#[test]
fn success_v1_exact_bytes() {
    let mut h = Harness::new();
    let (conn, sent) = first_frame(&mut h, &json!({"v":1,"op":"handshake"}));
    assert_eq!(sent, raw_frame(OK_V1));
    assert!(!h.is_closed(conn));
    // A v1 range also negotiates v1.
    let (_, sent) = first_frame(
        &mut h,
        &json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":1}}),
    );
    assert_eq!(sent, raw_frame(OK_V1));
}

#[test]
fn negotiated_version_is_min_of_two_and_max() {
    let mut h = Harness::new();
    let (_, sent) = first_frame(
        &mut h,
        &json!({"v":1,"op":"handshake","payload":{"minVersion":1,"maxVersion":9}}),
    );
    assert_eq!(sent, raw_frame(OK_V2));
    // Non-numeric bounds fall back to `v`.
    let (_, sent) = first_frame(
        &mut h,
        &json!({"v":1,"op":"handshake","payload":{"minVersion":"1","maxVersion":2}}),
    );
    assert_eq!(sent, raw_frame(OK_V1));
}

#[test]
fn version_mismatch_exact_bytes_then_close() {
    for first in [
        json!({"v":3,"op":"handshake"}),
        json!({"op":"handshake"}),
        json!({"v":"2","op":"handshake"}),
        json!({"v":2,"op":"handshake","payload":{"minVersion":3,"maxVersion":4}}),
        json!({"v":2,"op":"handshake","payload":{"minVersion":2,"maxVersion":1}}),
        json!({"v":2,"op":"handshake","payload":{"minVersion":0,"maxVersion":0}}),
        json!({"v":2,"op":"handshake","payload":{"minVersion":1.5,"maxVersion":2}}),
    ] {
        let mut h = Harness::new();
        let (conn, sent) = first_frame(&mut h, &first);
        assert_eq!(sent, raw_frame(UNKNOWN_VERSION), "{first}");
        assert!(h.is_closed(conn), "{first}");
        assert_eq!(h.engine.connection_count(), 0);
    }
}

#[test]
fn missing_or_wrong_token_exact_bytes_then_close() {
    for payload in [
        json!({"minVersion":1,"maxVersion":2}),
        json!({"minVersion":1,"maxVersion":2,"capabilityToken":"wrong"}),
        json!({"minVersion":1,"maxVersion":2,"capabilityToken":"T".repeat(64)}),
        json!({"minVersion":1,"maxVersion":2,"capabilityToken":7}),
        json!({"minVersion":1,"maxVersion":2,"capabilityToken":null}),
    ] {
        let mut h = Harness::with_config(sandbox_config(), 0);
        let (conn, sent) = first_frame(
            &mut h,
            &json!({"v":2,"op":"handshake","payload":payload.clone()}),
        );
        assert_eq!(sent, raw_frame(UNAUTHORIZED), "{payload}");
        assert!(h.is_closed(conn));
    }
}

#[test]
fn right_token_succeeds() {
    let mut h = Harness::with_config(sandbox_config(), 0);
    let (conn, sent) = first_frame(
        &mut h,
        &json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2,"capabilityToken":cap_token()}}),
    );
    assert_eq!(sent, raw_frame(OK_V2));
    assert!(!h.is_closed(conn));
}

#[test]
fn token_presented_to_a_server_without_one_is_ignored() {
    let mut h = Harness::new();
    let (conn, sent) = first_frame(
        &mut h,
        &json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2,"capabilityToken":"anything"}}),
    );
    assert_eq!(sent, raw_frame(OK_V2));
    // Host class: list operations reach the store.
    h.store.put_token("p", "default", common::token("at"));
    h.expect(
        conn,
        "list_providers",
        json!({}),
        json!({"id":"1","ok":true,"data":{"providers":["p"]}}),
    );
}

#[test]
fn non_handshake_first_frame_is_refused() {
    let mut h = Harness::new();
    let (conn, sent) = first_frame(
        &mut h,
        &json!({"v":1,"id":"x","op":"get_api_key","payload":{"name":"k"}}),
    );
    assert_eq!(sent, raw_frame(HANDSHAKE_REQUIRED));
    assert!(h.is_closed(conn));
    // The request was never dispatched.
    assert!(h.effects.is_empty());
}

#[test]
fn non_handshake_first_frame_with_token_configured() {
    // Without the token: UNAUTHORIZED (the token check comes first).
    let mut h = Harness::with_config(sandbox_config(), 0);
    let (conn, sent) = first_frame(&mut h, &json!({"v":2,"id":"x","op":"get_api_key"}));
    assert_eq!(sent, raw_frame(UNAUTHORIZED));
    assert!(h.is_closed(conn));
    // With the right token but the wrong op: Handshake required.
    let (conn, sent) = first_frame(
        &mut h,
        &json!({"v":2,"id":"x","op":"get_api_key","payload":{"name":"k","capabilityToken":cap_token()}}),
    );
    assert_eq!(sent, raw_frame(HANDSHAKE_REQUIRED));
    assert!(h.is_closed(conn));
    assert!(h.effects.is_empty());
}

#[test]
fn version_mismatch_wins_over_unauthorized() {
    let mut h = Harness::with_config(sandbox_config(), 0);
    let (conn, sent) = first_frame(&mut h, &json!({"v":9,"op":"get_token"}));
    assert_eq!(sent, raw_frame(UNKNOWN_VERSION));
    assert!(h.is_closed(conn));
    let (_, sent) = first_frame(
        &mut h,
        &json!({"v":2,"op":"handshake","payload":{"minVersion":5,"maxVersion":6,"capabilityToken":"bad"}}),
    );
    assert_eq!(sent, raw_frame(UNKNOWN_VERSION));
}

#[test]
fn frames_after_a_rejected_handshake_in_the_same_chunk_are_ignored() {
    let mut h = Harness::with_config(sandbox_config(), 0);
    h.store.put_token("p", "default", common::token("at"));
    let conn = h.open();
    let mut chunk = frame::encode(&json!({"v":2,"op":"handshake"}));
    chunk.extend(frame::encode(
        &json!({"v":2,"id":"1","op":"get_token","payload":{"provider":"p"}}),
    ));
    chunk.extend(frame::encode(
        &json!({"v":2,"op":"handshake","payload":{"capabilityToken":cap_token()}}),
    ));
    h.send(conn, &chunk);
    assert_eq!(h.sent[&conn], raw_frame(UNAUTHORIZED));
    assert!(h.is_closed(conn));
    assert!(h.effects.is_empty());
    // Later bytes are ignored too.
    h.send(
        conn,
        &frame::encode(&json!({"v":2,"id":"2","op":"list_providers"})),
    );
    assert_eq!(h.sent[&conn], raw_frame(UNAUTHORIZED));
}

#[test]
fn handshake_and_requests_in_one_chunk() {
    let mut h = Harness::new();
    let conn = h.open();
    let mut chunk = frame::encode(&json!({"v":2,"op":"handshake"}));
    chunk.extend(frame::encode(
        &json!({"v":2,"id":"1","op":"get_token","payload":{"provider":"p"}}),
    ));
    h.send(conn, &chunk);
    assert_eq!(
        h.take_replies(conn),
        vec![
            json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}}),
            err("1", "NOT_FOUND", "No token found for provider: p"),
        ]
    );
}

#[test]
fn handshake_deadline_with_no_bytes() {
    let mut h = Harness::new();
    let conn = h.open();
    assert_eq!(h.engine.poll_timeout(), Some(credproxy_core::Mono(5_000)));
    h.advance(4_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
    assert!(h.sent.get(&conn).is_none_or(Vec::is_empty));
    assert!(h.audit.iter().any(|e| e.op == "handshake_timeout"));
}

#[test]
fn handshake_deadline_with_one_to_three_bytes() {
    for n in 1..=3 {
        let mut h = Harness::new();
        let conn = h.open();
        let hs = frame::encode(&json!({"v":2,"op":"handshake"}));
        h.send(conn, &hs[..n]);
        h.advance(4_999);
        assert!(!h.is_closed(conn), "{n} bytes");
        h.advance(1);
        assert!(h.is_closed(conn), "{n} bytes");
        assert!(h.sent.get(&conn).is_none_or(Vec::is_empty));
    }
}

#[test]
fn handshake_deadline_is_not_reset_by_a_partial_handshake() {
    let mut h = Harness::new();
    let conn = h.open();
    h.advance(3_000);
    let hs = frame::encode(&json!({"v":2,"op":"handshake"}));
    h.send(conn, &hs[..6]);
    h.advance(1_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
}

#[test]
fn handshake_completed_in_time_cancels_the_deadline() {
    let mut h = Harness::new();
    let conn = h.open();
    h.advance(4_000);
    let hs = frame::encode(&json!({"v":2,"op":"handshake"}));
    h.send(conn, &hs[..3]);
    h.advance(999);
    h.send(conn, &hs[3..]);
    assert_eq!(h.sent[&conn], raw_frame(OK_V2));
    let _ = h.take_replies(conn);
    assert_eq!(h.engine.poll_timeout(), None);
    // No idle timeout on a handshaken connection.
    h.advance(3_600_000);
    assert!(!h.is_closed(conn));
    h.expect(
        conn,
        "list_api_keys",
        json!({}),
        json!({"id":"1","ok":true,"data":{"keys":[]}}),
    );
}

#[test]
fn second_handshake_is_an_unknown_operation() {
    let mut h = Harness::new();
    let conn = h.connect();
    let replies = common::send_frame(
        &mut h,
        conn,
        &json!({"v":2,"id":"h2","op":"handshake","payload":{"minVersion":1,"maxVersion":2}}),
    );
    assert_eq!(
        replies,
        vec![err("h2", "INVALID_REQUEST", "Unknown operation: handshake")]
    );
    // Without an id it fails the envelope check first.
    let replies = common::send_frame(&mut h, conn, &json!({"v":2,"op":"handshake"}));
    assert_eq!(
        replies,
        vec![err(
            "unknown",
            "INVALID_REQUEST",
            "Missing request id or op"
        )]
    );
    assert!(!h.is_closed(conn));
    // Still v2 and still open.
    assert_eq!(
        send_req(&mut h, conn, "x", "list_buckets", json!({"provider":"p"})),
        vec![json!({"id":"x","ok":true,"data":{"buckets":[]}})]
    );
}

#[test]
fn handshake_audit_events() {
    let mut h = Harness::with_config(sandbox_config(), 0);
    let conn = h.connect();
    let ev = h
        .audit
        .iter()
        .find(|e| e.op == "handshake_ok")
        .expect("handshake_ok");
    assert_eq!(ev.conn, Some(conn));
    assert_eq!(ev.class, Some(credproxy_core::ConnClass::Sandbox));
    let bad = h.open();
    h.send_json(bad, &json!({"v":2,"op":"handshake"}));
    assert!(
        h.audit
            .iter()
            .any(|e| e.op == "handshake_rejected" && e.outcome == "invalid_capability_token")
    );
}

/// Drives a bare engine and returns the outputs of one input, in order.
fn outputs_of(
    engine: &mut credproxy_core::Engine<rand_chacha::ChaCha20Rng>,
) -> Vec<credproxy_core::Output> {
    std::iter::from_fn(|| engine.poll_output()).collect()
}

#[test]
fn refusal_is_sent_before_the_close() {
    use credproxy_core::{Engine, Now, Output, Peer, Transport};
    use rand_core::SeedableRng;
    let mut engine =
        Engine::new(sandbox_config(), rand_chacha::ChaCha20Rng::seed_from_u64(0)).unwrap();
    let now = Now::new(0, 0);
    let conn = engine
        .handle_open(Peer::anonymous(Transport::Unix), now)
        .unwrap();
    let _ = outputs_of(&mut engine);
    let mut chunk = frame::encode(&json!({"v":2,"op":"handshake"}));
    chunk.extend(frame::encode(
        &json!({"v":2,"id":"1","op":"list_providers"}),
    ));
    engine.handle_bytes(conn, &chunk, now);
    let out: Vec<_> = outputs_of(&mut engine)
        .into_iter()
        .filter(|o| !matches!(o, Output::Audit(_)))
        .collect();
    assert_eq!(
        out,
        vec![
            Output::Send {
                conn,
                bytes: raw_frame(UNAUTHORIZED)
            },
            Output::Close { conn },
        ]
    );
    assert_eq!(engine.connection_count(), 0);
    assert_eq!(engine.poll_timeout(), None);
}
