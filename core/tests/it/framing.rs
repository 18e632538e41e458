//! Framing as the engine applies it (SPEC §3.1): size limit, malformed
//! frames, the partial-frame deadline and its suspension by back-pressure,
//! and bursts.

use credproxy_core::frame;
use credproxy_core::testkit::Harness;
use credproxy_core::{Config, Engine, Limits};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;

use crate::common::{self, Scenario, harness_with, ok, pause, raw_frame, resume};

fn sent_len(h: &Harness, conn: credproxy_core::ConnId) -> usize {
    h.sent.get(&conn).map_or(0, Vec::len)
}

#[test]
fn oversize_length_closes_without_reply() {
    let mut h = Harness::new();
    let conn = h.connect();
    let before = sent_len(&h, conn);
    // Only the header of a 1 MiB + 1 frame: refused before the body, and
    // with no body bytes there is no id to answer.
    h.send(conn, &(1_048_577u32).to_be_bytes());
    assert!(h.is_closed(conn));
    assert_eq!(sent_len(&h, conn), before);
    assert!(h.audit.iter().any(|e| e.op == "frame_decode_error"
        && e.outcome == "oversize"
        && e.size == Some(1_048_577)
        && e.limit == Some(1_048_576)));
}

#[test]
fn oversize_before_the_handshake_closes_without_reply() {
    let mut h = Harness::new();
    let conn = h.open();
    h.send(conn, &u32::MAX.to_be_bytes());
    assert!(h.is_closed(conn));
    assert_eq!(sent_len(&h, conn), 0);
}

#[test]
fn exactly_the_limit_is_accepted() {
    // The default limit is 1 MiB (SPEC §3.1).
    let mut h = Harness::new();
    let conn = h.connect();
    let base = json!({"v":2,"id":"1","op":"list_api_keys","payload":{"pad":""}});
    let overhead = serde_json::to_vec(&base).unwrap().len();
    let padded = json!({"v":2,"id":"1","op":"list_api_keys","payload":{"pad":"x".repeat(1_048_576 - overhead)}});
    let bytes = frame::encode(&padded);
    assert_eq!(bytes.len(), 4 + 1_048_576);
    h.send(conn, &bytes);
    assert_eq!(h.take_replies(conn), vec![ok("1", json!({"keys":[]}))]);
    assert!(!h.is_closed(conn));
}

#[test]
fn malformed_frames_close_the_connection() {
    for payload in [
        &b"{not json"[..],
        b"",
        b"[1,2,3]",
        b"null",
        b"42",
        b"\"string\"",
        b"{\"id\":\"1\",\"op\":\"\xff\xfe\"}",
        b"{\"id\":\"1\"} trailing",
    ] {
        let mut h = Harness::new();
        let conn = h.connect();
        let before = sent_len(&h, conn);
        h.send(conn, &raw_frame(payload));
        assert!(h.is_closed(conn), "{payload:?}");
        assert_eq!(sent_len(&h, conn), before, "{payload:?}");
        assert!(h.audit.iter().any(|e| e.op == "frame_decode_error"));
    }
}

#[test]
fn malformed_first_frame_closes_without_reply() {
    for payload in [&b"[]"[..], b"nope", b"\xff"] {
        let mut h = Harness::new();
        let conn = h.open();
        h.send(conn, &raw_frame(payload));
        assert!(h.is_closed(conn));
        assert_eq!(sent_len(&h, conn), 0);
    }
}

#[test]
fn frames_before_a_malformed_one_are_handled() {
    let mut h = Harness::new();
    let conn = h.connect();
    // An immediate answer is queued before the close and so is flushed; a
    // store read still in flight dies with the connection (it is gone first).
    let mut chunk = frame::encode(&json!({"id":"1","op":"cancel","payload":{"targetId":"x"}}));
    chunk.extend(frame::encode(&json!({"id":"2","op":"list_api_keys"})));
    chunk.extend(raw_frame(b"[]"));
    chunk.extend(frame::encode(&json!({"id":"3","op":"list_api_keys"})));
    h.send(conn, &chunk);
    assert_eq!(
        h.take_replies(conn),
        vec![ok("1", json!({"cancelled":false}))]
    );
    assert!(h.is_closed(conn));
    assert_eq!(h.engine.pending_tasks(), 0);
}

#[test]
fn partial_frame_deadline_from_the_first_header_byte() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.advance(10_000);
    let bytes = frame::encode(&json!({"id":"1","op":"list_api_keys"}));
    h.send(conn, &bytes[..1]);
    h.advance(4_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
    assert!(h.audit.iter().any(|e| e.op == "partial_frame_timeout"));
}

#[test]
fn partial_frame_deadline_is_not_reset_by_further_bytes() {
    let mut h = Harness::new();
    let conn = h.connect();
    let bytes = frame::encode(&json!({"id":"1","op":"list_api_keys"}));
    h.send(conn, &bytes[..2]);
    h.advance(3_000);
    h.send(conn, &bytes[2..8]);
    h.advance(1_000);
    h.send(conn, &bytes[8..bytes.len() - 1]);
    h.advance(999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
    assert!(h.take_replies(conn).is_empty());
}

#[test]
fn a_completed_frame_clears_the_deadline() {
    let mut h = Harness::new();
    let conn = h.connect();
    let bytes = frame::encode(&json!({"id":"1","op":"list_api_keys"}));
    h.send(conn, &bytes[..5]);
    h.advance(4_000);
    h.send(conn, &bytes[5..]);
    assert_eq!(h.take_replies(conn), vec![ok("1", json!({"keys":[]}))]);
    assert_eq!(h.engine.poll_timeout(), None);
    h.advance(60_000);
    assert!(!h.is_closed(conn));
}

#[test]
fn a_new_frame_started_in_the_same_chunk_gets_a_fresh_deadline() {
    let mut h = Harness::new();
    let conn = h.connect();
    let a = frame::encode(&json!({"id":"1","op":"list_api_keys"}));
    let b = frame::encode(&json!({"id":"2","op":"list_api_keys"}));
    h.send(conn, &a[..3]);
    h.advance(4_000);
    let mut chunk = a[3..].to_vec();
    chunk.extend_from_slice(&b[..3]);
    h.send(conn, &chunk);
    assert_eq!(h.take_replies(conn), vec![ok("1", json!({"keys":[]}))]);
    h.advance(4_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
}

#[test]
fn pause_suspends_the_partial_deadline_and_resume_restores_the_rest() {
    let mut h = Harness::new();
    let conn = h.connect();
    let bytes = frame::encode(&json!({"id":"1","op":"list_api_keys"}));
    h.send(conn, &bytes[..4]);
    h.advance(2_000);
    pause(&mut h, conn);
    assert_eq!(h.engine.poll_timeout(), None);
    h.advance(60_000);
    assert!(!h.is_closed(conn));
    resume(&mut h, conn);
    h.advance(2_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
}

#[test]
fn pause_and_resume_without_a_partial_frame() {
    let mut h = Harness::new();
    let conn = h.connect();
    pause(&mut h, conn);
    pause(&mut h, conn);
    resume(&mut h, conn);
    resume(&mut h, conn);
    assert_eq!(h.engine.poll_timeout(), None);
    h.advance(60_000);
    assert!(!h.is_closed(conn));
    h.expect(
        conn,
        "list_api_keys",
        json!({}),
        ok("1", json!({"keys":[]})),
    );
}

#[test]
fn a_frame_completed_while_paused_leaves_no_stale_deadline() {
    // Bytes already read when the driver paused may still be delivered.
    let mut h = Harness::new();
    let conn = h.connect();
    let bytes = frame::encode(&json!({"id":"1","op":"list_api_keys"}));
    h.send(conn, &bytes[..4]);
    h.advance(1_000);
    pause(&mut h, conn);
    h.send(conn, &bytes[4..]);
    assert_eq!(h.take_replies(conn), vec![ok("1", json!({"keys":[]}))]);
    resume(&mut h, conn);
    assert_eq!(h.engine.poll_timeout(), None);
    h.advance(60_000);
    assert!(
        !h.is_closed(conn),
        "idle connection closed by a stale deadline"
    );
}

#[test]
fn a_frame_started_while_paused_times_out_after_resume() {
    let mut h = Harness::new();
    let conn = h.connect();
    pause(&mut h, conn);
    let bytes = frame::encode(&json!({"id":"1","op":"list_api_keys"}));
    h.send(conn, &bytes[..2]);
    h.advance(60_000);
    assert!(!h.is_closed(conn));
    resume(&mut h, conn);
    h.advance(4_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn), "partial frame left without a deadline");
}

#[test]
fn a_frame_started_while_paused_after_another_completed() {
    let mut h = Harness::new();
    let conn = h.connect();
    let a = frame::encode(&json!({"id":"1","op":"list_api_keys"}));
    let b = frame::encode(&json!({"id":"2","op":"list_api_keys"}));
    h.send(conn, &a[..4]);
    h.advance(4_500);
    pause(&mut h, conn);
    let mut chunk = a[4..].to_vec();
    chunk.extend_from_slice(&b[..4]);
    h.send(conn, &chunk);
    assert_eq!(h.take_replies(conn), vec![ok("1", json!({"keys":[]}))]);
    resume(&mut h, conn);
    // The new frame has its own full deadline, not the 500 ms left of the old one.
    h.advance(4_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
}

#[test]
fn burst_of_200_frames_in_one_send() {
    // Operations answered without an effect: every frame gets its reply and
    // no flood guard closes the connection.
    let mut h = Harness::new();
    let conn = h.connect();
    let mut chunk = Vec::new();
    for i in 0..200 {
        chunk.extend(frame::encode(
            &json!({"v":2,"id":format!("c{i}"),"op":"cancel","payload":{"targetId":"none"}}),
        ));
    }
    h.send(conn, &chunk);
    let replies = h.take_replies(conn);
    assert_eq!(replies.len(), 200);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r, &ok(&format!("c{i}"), json!({"cancelled":false})));
    }
    assert!(!h.is_closed(conn));
}

#[test]
fn burst_of_200_store_reads_in_one_send() {
    // Every frame of one chunk is dispatched before the driver can execute
    // an effect, so the in-flight cap applies to a pipelined burst: the first
    // 16 are served and the rest are refused, each with exactly one reply.
    let mut h = Harness::new();
    h.store.put_token("p", "default", common::token("at"));
    let conn = h.connect();
    let mut chunk = Vec::new();
    for i in 0..200 {
        chunk.extend(frame::encode(
            &json!({"v":2,"id":format!("g{i}"),"op":"get_token","payload":{"provider":"p"}}),
        ));
    }
    h.send(conn, &chunk);
    let replies = h.take_replies(conn);
    assert_eq!(replies.len(), 200);
    let served: Vec<_> = replies.iter().filter(|r| r["ok"] == json!(true)).collect();
    assert_eq!(served.len(), 16);
    for r in &replies {
        if r["ok"] == json!(false) {
            assert_eq!(
                r,
                &common::err(
                    r["id"].as_str().unwrap(),
                    "RESOURCE_EXHAUSTED",
                    "Too many concurrent requests"
                )
            );
        }
    }
    let mut ids: Vec<_> = replies.iter().map(|r| r["id"].clone()).collect();
    ids.sort_by_key(ToString::to_string);
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert!(!h.is_closed(conn));
}

#[test]
fn byte_by_byte_delivery() {
    let mut h = Harness::new();
    let conn = h.open();
    let mut wire = frame::encode(&json!({"v":2,"op":"handshake"}));
    wire.extend(frame::encode(&json!({"id":"é1","op":"list_api_keys"})));
    for b in &wire {
        h.send(conn, std::slice::from_ref(b));
    }
    let replies = h.take_replies(conn);
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[1], ok("é1", json!({"keys":[]})));
}

#[test]
fn max_frame_bytes_is_configurable() {
    let mut h = harness_with(Limits {
        max_frame_bytes: 200,
        ..Default::default()
    });
    let conn = h.connect();
    let base = json!({"id":"1","op":"list_api_keys","payload":{"pad":""}});
    let overhead = serde_json::to_vec(&base).unwrap().len();
    let at_limit =
        json!({"id":"1","op":"list_api_keys","payload":{"pad":"x".repeat(200 - overhead)}});
    h.send_json(conn, &at_limit);
    assert_eq!(h.take_replies(conn), vec![ok("1", json!({"keys":[]}))]);
    let over = json!({"id":"2","op":"list_api_keys","payload":{"pad":"x".repeat(201 - overhead)}});
    h.send_json(conn, &over);
    // The id precedes the payload in the same chunk: answered, then closed.
    assert_eq!(
        h.take_replies(conn),
        vec![
            json!({"id":"2","ok":false,"code":"INVALID_REQUEST","error":"Frame exceeds maximum size (200 bytes)"})
        ]
    );
    assert!(h.is_closed(conn));
}

#[test]
fn max_frame_bytes_above_the_ceiling_is_refused() {
    let config = Config {
        limits: Limits {
            max_frame_bytes: 4 * 1024 * 1024 + 1,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(Engine::new(config, ChaCha20Rng::seed_from_u64(0)).is_err());
    let config = Config {
        limits: Limits {
            max_frame_bytes: 4 * 1024 * 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(Engine::new(config, ChaCha20Rng::seed_from_u64(0)).is_ok());
}

#[test]
fn partial_frame_ms_is_configurable() {
    let mut h = harness_with(Limits {
        partial_frame_ms: 100,
        ..Default::default()
    });
    let conn = h.connect();
    h.send(conn, &[0]);
    h.advance(99);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
}
