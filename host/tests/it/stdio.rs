//! `credproxy stdio` from a parent process (SPEC §6.2): one host-class
//! connection on the pipes, stdout carries only frames, and EOF on stdin
//! finishes the requests in flight, writes their replies, then exits 0.

use serde_json::json;

use crate::support::{self, Scratch, handshake_frame, request, token_json};

#[test]
fn round_trip_then_eof_exits_0() {
    let s = Scratch::new();
    // The default store, made before: its first use would print the
    // one-time notice of the key file it creates.
    drop(s.open_store());
    let mut p = s.stdio(&["--audit-log", "off"]);
    p.handshake();
    let token = json!({
        "access_token": "at-stdio",
        "refresh_token": "rt-dropped-by-save",
        "expiry": 4_102_444_800_u64,
        "token_type": "bearer",
        "account_id": "acct-1"
    });
    assert_eq!(
        p.call(
            "1",
            "save_token",
            json!({"provider":"codex","bucket":"work","token":token})
        ),
        json!({"id":"1","ok":true,"data":{}})
    );
    // Sanitized: no refresh_token; other fields pass through.
    assert_eq!(
        p.call(
            "2",
            "get_token",
            json!({"provider":"codex","bucket":"work"})
        ),
        json!({"id":"2","ok":true,"data":{"access_token":"at-stdio","expiry":4_102_444_800_u64,"token_type":"bearer","account_id":"acct-1"}})
    );
    assert_eq!(
        p.call("3", "list_providers", json!({})),
        json!({"id":"3","ok":true,"data":{"providers":["codex"]}})
    );
    assert_eq!(
        p.call("4", "list_buckets", json!({"provider":"codex"})),
        json!({"id":"4","ok":true,"data":{"buckets":["work"]}})
    );
    let r = p.call("5", "get_token", json!({"provider":"codex"}));
    assert_eq!(
        r,
        json!({"id":"5","ok":false,"code":"NOT_FOUND","error":"No token found for provider: codex"}),
        "host class: a missing token is NOT_FOUND, not FORBIDDEN"
    );
    // Numeric ids are echoed as strings.
    p.send(&json!({"v":2,"id":6,"op":"list_api_keys"}))
        .expect("send");
    assert_eq!(
        p.recv_frame(),
        json!({"id":"6","ok":true,"data":{"keys":[]}})
    );
    assert_eq!(
        p.call(
            "7",
            "remove_token",
            json!({"provider":"codex","bucket":"work"})
        ),
        json!({"id":"7","ok":true,"data":{}})
    );

    p.close_stdin();
    assert_eq!(p.next(), None, "EOF after the last reply");
    assert_eq!(p.wait().code(), Some(0));
    assert_eq!(p.stderr(), "", "--audit-log off: nothing on stderr");
}

#[test]
fn replies_in_flight_at_eof_are_written_before_exit() {
    let s = Scratch::new();
    s.seed_token("anthropic", "default", &token_json("at-seeded"));
    // Repeated: the last replies used to be lost when the process exited
    // before its writer had flushed them.
    for round in 0..20 {
        let mut p = s.stdio(&["--audit-log", "off"]);
        let mut wire = support::encode(&handshake_frame(None));
        wire.extend(support::encode(&request(
            "a",
            "get_token",
            json!({"provider":"anthropic"}),
        )));
        wire.extend(support::encode(&request(
            "b",
            "save_token",
            json!({"provider":"gemini","token":token_json(&format!("at-{round}"))}),
        )));
        wire.extend(support::encode(&request("c", "list_providers", json!({}))));
        // Everything in one write, then EOF at once.
        p.send_raw(&wire).expect("send");
        p.close_stdin();
        let mut frames = Vec::new();
        while let Some(f) = p.next() {
            frames.push(f);
        }
        assert_eq!(p.wait().code(), Some(0), "round {round}");
        assert_eq!(frames.len(), 4, "round {round}: {frames:?}");
        assert_eq!(frames[0]["op"], "handshake");
        let mut by_id: Vec<(String, bool)> = frames[1..]
            .iter()
            .map(|f| (f["id"].as_str().expect("id").to_owned(), f["ok"] == true))
            .collect();
        by_id.sort();
        assert_eq!(
            by_id,
            [("a".into(), true), ("b".into(), true), ("c".into(), true)],
            "round {round}: {frames:?}"
        );
    }
    // The save that was in flight at EOF was persisted.
    let mut p = s.stdio(&["--audit-log", "off"]);
    p.handshake();
    assert_eq!(
        p.call("1", "get_token", json!({"provider":"gemini"}))["data"]["access_token"],
        "at-19"
    );
}

#[test]
fn eof_before_handshake_exits_0() {
    let s = Scratch::new();
    let mut p = s.stdio(&["--audit-log", "off"]);
    p.close_stdin();
    assert_eq!(p.next(), None);
    assert_eq!(p.wait().code(), Some(0));
}

#[test]
fn malformed_frame_closes_the_connection_and_exits_1() {
    // Was: exit 0, as if the parent had closed stdin normally.
    let s = Scratch::new();
    let mut p = s.stdio(&["--audit-log", "off"]);
    p.handshake();
    // A non-object JSON frame after the handshake closes the connection.
    p.send_raw(&[0, 0, 0, 2, b'[', b']']).expect("send");
    assert_eq!(p.next(), None, "closed without a reply");
    assert_eq!(p.wait().code(), Some(1), "a framing fault is a failure");
    assert!(
        p.stderr()
            .contains("credproxy: the client sent an invalid frame ("),
        "{}",
        p.stderr()
    );
}

#[test]
fn invalid_json_frame_exits_1_and_says_why() {
    for audit in [&["--audit-log", "off"][..], &[]] {
        let s = Scratch::new();
        let mut p = s.stdio(audit);
        p.handshake();
        assert_eq!(p.call("1", "list_providers", json!({}))["ok"], true);
        p.send_raw(&[0, 0, 0, 3, b'{', b'x', b'}']).expect("send");
        assert_eq!(p.next(), None, "closed without a reply");
        assert_eq!(p.wait().code(), Some(1));
        let stderr = p.stderr();
        assert!(
            stderr.contains("credproxy: the client sent an invalid frame (invalid_json)\n"),
            "{stderr}"
        );
    }
}

#[test]
fn eof_after_normal_traffic_still_exits_0() {
    let s = Scratch::new();
    let mut p = s.stdio(&[]);
    p.handshake();
    assert_eq!(p.call("1", "list_providers", json!({}))["ok"], true);
    p.close_stdin();
    assert_eq!(p.next(), None);
    assert_eq!(p.wait().code(), Some(0));
    assert!(!p.stderr().contains("invalid frame"), "{}", p.stderr());
}

#[test]
fn audit_goes_to_stderr_never_stdout() {
    let s = Scratch::new();
    let mut p = s.stdio(&[]);
    p.handshake();
    assert_eq!(
        p.call(
            "1",
            "save_token",
            json!({"provider":"qwen","token":token_json("at-audit")})
        )["ok"],
        true
    );
    p.close_stdin();
    // `next` panics on anything on stdout that is not a frame.
    assert_eq!(p.next(), None);
    assert_eq!(p.wait().code(), Some(0));
    let events = support::audit_events(&p.stderr());
    assert!(
        events
            .iter()
            .any(|e| e["op"] == "save_token" && e["provider"] == "qwen"),
        "{}",
        p.stderr()
    );
    assert!(events.iter().all(|e| e["ts"].is_string()), "{}", p.stderr());
    assert!(!p.stderr().contains("at-audit"), "{}", p.stderr());
}
