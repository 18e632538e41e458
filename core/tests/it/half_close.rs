//! Read-side EOF and connection loss (SPEC §3.1, §3.3): in-flight requests
//! finish and are answered before the close; a gone connection detaches its
//! requests (writes persist, reads are dropped, nothing is sent).

use credproxy_core::testkit::Harness;
use credproxy_core::{ConnId, frame};
use serde_json::json;

use crate::common::{
    Scenario, connect_held, gone, ok, pause, read_closed, resume, send_req, store_old_with_refresh,
    token,
};

/// A connection with its effects held and `list_api_keys` (id `a`) in
/// flight.
fn listing_in_flight(h: &mut Harness) -> ConnId {
    let conn = connect_held(h);
    send_req(h, conn, "a", "list_api_keys", json!({}));
    conn
}

/// Completes the held effects and asserts that the listing `a` is
/// answered, and then the connection closed.
#[track_caller]
fn listing_answered_then_closed(h: &mut Harness, conn: ConnId) {
    h.complete_all();
    assert_eq!(h.take_replies(conn), vec![ok("a", json!({"keys":[]}))]);
    assert!(h.is_closed(conn));
}

/// Sends `save_token` of `p` with the token `new`, under id `s`.
fn save_new(h: &mut Harness, conn: ConnId) {
    send_req(
        h,
        conn,
        "s",
        "save_token",
        json!({"provider":"p","token":token("new")}),
    );
}

#[test]
fn in_flight_requests_are_answered_before_the_close() {
    let mut h = Harness::new();
    h.store.put_token("p", "default", token("at"));
    let conn = connect_held(&mut h);
    send_req(&mut h, conn, "a", "get_token", json!({"provider":"p"}));
    send_req(&mut h, conn, "b", "list_api_keys", json!({}));
    read_closed(&mut h, conn);
    assert!(!h.is_closed(conn));
    h.complete(1);
    assert_eq!(h.take_replies(conn), vec![ok("b", json!({"keys":[]}))]);
    assert!(!h.is_closed(conn));
    h.complete(0);
    assert_eq!(h.take_replies(conn), vec![ok("a", token("at"))]);
    assert!(h.is_closed(conn));
    assert_eq!(h.engine.connection_count(), 0);
}

#[test]
fn nothing_in_flight_closes_at_once() {
    let mut h = Harness::new();
    let conn = h.connect();
    read_closed(&mut h, conn);
    assert!(h.is_closed(conn));
}

#[test]
fn read_closed_before_the_handshake_closes_at_once() {
    let mut h = Harness::new();
    let conn = h.open();
    h.send(conn, &[0, 0]);
    read_closed(&mut h, conn);
    assert!(h.is_closed(conn));
    assert!(h.sent.get(&conn).is_none_or(Vec::is_empty));
    assert_eq!(h.engine.poll_timeout(), None);
}

#[test]
fn bytes_after_read_closed_are_ignored() {
    let mut h = Harness::new();
    let conn = listing_in_flight(&mut h);
    read_closed(&mut h, conn);
    let effects = h.effects.len();
    h.no_reply_yet(conn, "b", "list_providers", json!({}));
    assert_eq!(h.effects.len(), effects);
    listing_answered_then_closed(&mut h, conn);
}

/// A partial frame behind an in-flight request, then EOF (reading paused
/// around it or not): no partial-frame deadline cuts the in-flight request
/// short, and the connection closes once it is answered.
#[track_caller]
fn partial_frame_at_eof(paused: bool) {
    let mut h = Harness::new();
    let conn = listing_in_flight(&mut h);
    let partial = frame::encode(&json!({"id":"b","op":"list_api_keys"}));
    h.send(conn, &partial[..6]);
    if paused {
        pause(&mut h, conn);
    }
    read_closed(&mut h, conn);
    if paused {
        resume(&mut h, conn);
    }
    h.advance(60_000);
    assert!(!h.is_closed(conn));
    listing_answered_then_closed(&mut h, conn);
}

#[test]
fn a_partial_frame_at_eof_does_not_close_early() {
    partial_frame_at_eof(false);
}

#[test]
fn a_paused_partial_frame_at_eof_does_not_close_early() {
    partial_frame_at_eof(true);
}

#[test]
fn half_close_with_a_cancelled_write_still_persists() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    save_new(&mut h, conn);
    let replies = send_req(&mut h, conn, "c", "cancel", json!({"targetId":"s"}));
    assert_eq!(replies.len(), 2);
    // Nothing is in flight for the client any more: EOF closes at once.
    read_closed(&mut h, conn);
    assert!(h.is_closed(conn));
    h.complete_all();
    assert_eq!(h.store.token("p", "default"), Some(token("new")));
}

#[test]
fn connection_gone_detaches_writes_that_still_persist() {
    let mut h = Harness::new();
    store_old_with_refresh(&mut h);
    let conn = connect_held(&mut h);
    save_new(&mut h, conn);
    send_req(&mut h, conn, "r", "remove_token", json!({"provider":"q"}));
    send_req(&mut h, conn, "g", "get_token", json!({"provider":"p"}));
    let sent_before = h.sent[&conn].len();
    gone(&mut h, conn);
    assert_eq!(h.engine.connection_count(), 0);
    h.complete_all();
    // The save persisted, merged with the stored refresh token.
    assert_eq!(
        h.store.token("p", "default"),
        Some(
            json!({"access_token":"new","expiry":1_767_229_200,"token_type":"Bearer","refresh_token":"rt"})
        )
    );
    // Nothing was sent afterwards, and no close was requested: the driver
    // already knows.
    assert_eq!(h.sent[&conn].len(), sent_before);
    assert!(!h.is_closed(conn));
    assert_eq!(h.engine.pending_tasks(), 0);
    assert!(
        h.audit
            .iter()
            .any(|e| e.op == "disconnect" && e.outcome == "peer_gone")
    );
}

#[test]
fn connection_gone_drops_reads() {
    let mut h = Harness::new();
    let conn = connect_held(&mut h);
    for i in 0..5 {
        send_req(&mut h, conn, &format!("g{i}"), "list_providers", json!({}));
    }
    gone(&mut h, conn);
    // The dropped reads no longer exist; their late results are ignored.
    assert_eq!(h.engine.pending_tasks(), 0);
    let before = h.sent[&conn].len();
    h.complete_all();
    assert_eq!(h.sent[&conn].len(), before);
}

#[test]
fn bytes_and_events_for_a_gone_connection_are_ignored() {
    let mut h = Harness::new();
    let conn = h.connect();
    gone(&mut h, conn);
    let before = h.sent[&conn].len();
    h.request(conn, "x", "list_api_keys", json!({}));
    read_closed(&mut h, conn);
    pause(&mut h, conn);
    resume(&mut h, conn);
    gone(&mut h, conn);
    assert_eq!(h.sent[&conn].len(), before);
    assert!(h.effects.is_empty());
    assert_eq!(
        h.audit
            .iter()
            .filter(|e| e.op == "disconnect" && e.conn == Some(conn))
            .count(),
        1
    );
}

#[test]
fn other_connections_are_unaffected() {
    let mut h = Harness::new();
    let a = h.connect();
    let b = connect_held(&mut h);
    send_req(&mut h, a, "x", "list_api_keys", json!({}));
    send_req(&mut h, b, "x", "list_api_keys", json!({}));
    gone(&mut h, a);
    h.complete_all();
    assert_eq!(h.take_replies(b), vec![ok("x", json!({"keys":[]}))]);
    assert!(!h.is_closed(b));
}

#[test]
fn the_last_reply_is_sent_before_the_close() {
    use credproxy_core::{Effect, EffectResult, Engine, Now, Output, Peer, Transport};
    use rand_core::SeedableRng;
    let mut engine = Engine::new(
        credproxy_core::Config::default(),
        rand_chacha::ChaCha20Rng::seed_from_u64(0),
    )
    .unwrap();
    let now = Now::new(0, 0);
    let conn = engine
        .handle_open(Peer::anonymous(Transport::Stdio), now)
        .unwrap();
    let mut chunk = frame::encode(&json!({"v":2,"op":"handshake"}));
    chunk.extend(frame::encode(&json!({"id":"1","op":"list_api_keys"})));
    engine.handle_bytes(conn, &chunk, now);
    let effect = std::iter::from_fn(|| engine.poll_output())
        .find_map(|o| match o {
            Output::Effect { id, effect } => Some((id, effect)),
            _ => None,
        })
        .expect("an effect");
    assert_eq!(effect.1, Effect::ApiKeyList);
    engine.handle_read_closed(conn, now);
    let early: Vec<_> = std::iter::from_fn(|| engine.poll_output())
        .filter(|o| !matches!(o, Output::Audit(_)))
        .collect();
    assert!(early.is_empty(), "{early:?}");
    engine.handle_effect_result(effect.0, EffectResult::Names(vec![]), now);
    let out: Vec<_> = std::iter::from_fn(|| engine.poll_output())
        .filter(|o| !matches!(o, Output::Audit(_)))
        .collect();
    let mut want = u32::try_from(br#"{"id":"1","ok":true,"data":{"keys":[]}}"#.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    want.extend_from_slice(br#"{"id":"1","ok":true,"data":{"keys":[]}}"#);
    assert_eq!(
        out,
        vec![Output::Send { conn, bytes: want }, Output::Close { conn }]
    );
}
