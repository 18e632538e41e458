//! Oversize inbound frames (SPEC §3.1): answered with `INVALID_REQUEST`
//! when the id is in the first bytes of the same chunk, else closed with an
//! audit event naming the announced size and the limit.

use credproxy_core::frame::{DecodeError, FrameDecoder};
use credproxy_core::testkit::Harness;
use credproxy_core::{ConnId, Limits};
use serde_json::json;

use crate::common::{harness_with, ok, raw_frame};

const LIMIT: usize = 1_048_576;

fn header(len: u32) -> Vec<u8> {
    len.to_be_bytes().to_vec()
}

fn oversize_event(h: &Harness, conn: ConnId) -> (&'static str, Option<u64>, Option<u64>) {
    let e = h
        .audit
        .iter()
        .find(|e| e.conn == Some(conn) && e.op == "frame_decode_error")
        .expect("an oversize audit event");
    (e.outcome, e.size, e.limit)
}

#[test]
fn id_in_the_same_chunk_is_answered_then_closed() {
    let mut h = Harness::new();
    let conn = h.connect();
    let mut bytes = header(LIMIT as u32 + 1);
    bytes.extend_from_slice(br#"{"v":2,"id":"abc","op":"save_token","payload":{"token":"#);
    h.send(conn, &bytes);
    assert_eq!(
        h.take_replies(conn),
        vec![
            json!({"id":"abc","ok":false,"code":"INVALID_REQUEST","error":"Frame exceeds maximum size (1048576 bytes)"})
        ]
    );
    assert!(h.is_closed(conn));
    assert_eq!(
        oversize_event(&h, conn),
        (
            "oversize_answered",
            Some(LIMIT as u64 + 1),
            Some(LIMIT as u64)
        )
    );
    // Later bytes of the body are ignored: the connection is gone.
    h.send(conn, &[b'x'; 1000]);
    assert!(h.take_replies(conn).is_empty());
}

#[test]
fn numeric_id_is_echoed_as_a_string() {
    let mut h = Harness::new();
    let conn = h.connect();
    let mut bytes = header(u32::MAX);
    bytes.extend_from_slice(br#"{"id":17,"op":"get_token","#);
    h.send(conn, &bytes);
    let replies = h.take_replies(conn);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["id"], json!("17"));
    assert!(h.is_closed(conn));
}

#[test]
fn id_split_off_or_absent_closes_with_the_size_audited() {
    for body in [
        &b""[..],                          // header alone
        br#"{"v":2,"id":"ab"#,             // id cut by the chunk end
        br#"{"v":2,"op":"x","payload":{"#, // no id before the payload
        br#"{"payload":{},"id":"late","#,  // id after a non-scalar member
    ] {
        let mut h = Harness::new();
        let conn = h.connect();
        let before = h.sent[&conn].len();
        let mut bytes = header(2_000_000);
        bytes.extend_from_slice(body);
        h.send(conn, &bytes);
        assert_eq!(h.sent[&conn].len(), before, "{body:?}");
        assert!(h.is_closed(conn));
        assert_eq!(
            oversize_event(&h, conn),
            ("oversize", Some(2_000_000), Some(LIMIT as u64))
        );
        // The rest of the id in a later read changes nothing.
        h.send(conn, br#"c","op":"get_token"}"#);
        assert_eq!(h.sent[&conn].len(), before);
    }
}

#[test]
fn the_id_is_looked_for_only_in_the_first_512_bytes() {
    let mut h = Harness::new();
    let conn = h.connect();
    let before = h.sent[&conn].len();
    let mut bytes = header(2_000_000);
    bytes.extend_from_slice(format!(r#"{{"pad":"{}","id":"x","#, "p".repeat(600)).as_bytes());
    h.send(conn, &bytes);
    assert_eq!(h.sent[&conn].len(), before);
    assert!(h.is_closed(conn));
}

#[test]
fn before_the_handshake_an_id_is_not_answered() {
    let mut h = Harness::new();
    let conn = h.open();
    let mut bytes = header(LIMIT as u32 + 1);
    bytes.extend_from_slice(br#"{"id":"abc","op":"handshake","#);
    h.send(conn, &bytes);
    assert!(h.sent.get(&conn).is_none_or(Vec::is_empty));
    assert!(h.is_closed(conn));
    assert_eq!(
        oversize_event(&h, conn),
        ("oversize", Some(LIMIT as u64 + 1), Some(LIMIT as u64))
    );
}

#[test]
fn exactly_the_limit_still_works_and_one_more_is_answered() {
    let mut h = harness_with(Limits {
        max_frame_bytes: 300,
        ..Limits::default()
    });
    let conn = h.connect();
    let head = br#"{"id":"1","op":"list_api_keys","payload":{"pad":""#;
    let tail = br#""}}"#;
    let mut json = head.to_vec();
    json.resize(300 - tail.len(), b'x');
    json.extend_from_slice(tail);
    assert_eq!(json.len(), 300);
    h.send(conn, &raw_frame(&json));
    assert_eq!(h.take_replies(conn), vec![ok("1", json!({"keys":[]}))]);
    json.insert(head.len(), b'x');
    json[7] = b'2';
    h.send(conn, &raw_frame(&json));
    assert_eq!(
        h.take_replies(conn),
        vec![
            json!({"id":"2","ok":false,"code":"INVALID_REQUEST","error":"Frame exceeds maximum size (300 bytes)"})
        ]
    );
    assert!(h.is_closed(conn));
}

#[test]
fn nothing_is_reserved_and_the_input_stops_at_the_body() {
    // The engine relies on this: after the error, the input starts at the
    // body bytes of the chunk and the decoder holds nothing.
    let mut dec = FrameDecoder::new(LIMIT);
    let mut bytes = header(LIMIT as u32 + 1);
    bytes.extend_from_slice(br#"{"id":"a"}"#);
    let mut input: &[u8] = &bytes;
    assert_eq!(
        dec.decode_payload(&mut input).map(|_| ()),
        Err(DecodeError::Oversize {
            len: LIMIT as u32 + 1,
            max: LIMIT
        })
    );
    assert_eq!(input, br#"{"id":"a"}"#);
    assert_eq!(dec.reserved(), 0);
}
