//! Hostile clients, part 1: attacks on the framing and the connection
//! lifecycle — slowloris, 0–3 byte partial headers, an oversize length
//! prefix, invalid JSON, non-object frames, half-close.
//!
//! Every test runs against the real binary (see `support::hostile`): a
//! witness connection keeps being served within 500 ms during the attack,
//! the server's peak memory stays within 64 MiB of its start, and the
//! seeded store is intact afterwards. Deadlines are configured short
//! (300 ms instead of 5 s) so the suite stays fast; the attacks are scaled
//! with them (a byte every 100 ms against a 300 ms deadline is "a byte per
//! second" against the default 5 s).

use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::hostile::{self, PROMPT, Stub, Target, WITNESS_KEY, WITNESS_VALUE};
use crate::support::{self, Client, encode, handshake_frame, request};

/// The configured partial-frame deadline.
const PARTIAL_MS: u64 = 300;

/// Slack allowed past a deadline for the close to be seen (a loaded
/// 2-core machine running the suite in parallel).
const SLACK: Duration = Duration::from_millis(1500);

/// Counts audit events `op` (with `outcome` when given) on the stderr of
/// a stopped server.
fn count_events(stderr: &str, op: &str, outcome: Option<&str>) -> usize {
    support::audit_events(stderr)
        .into_iter()
        .filter(|e| e["op"] == op && outcome.is_none_or(|o| e["outcome"] == o))
        .count()
}

/// Waits on a thread for the server to close `c` (EOF or reset, never a
/// byte of reply); the thread returns when that was seen.
fn watch_close(c: Client) -> thread::JoinHandle<Instant> {
    let mut reader = c.stream;
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        match std::io::Read::read(&mut reader, &mut buf) {
            Ok(0) => Instant::now(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Instant::now(),
            other => panic!("expected a close without reply, got {other:?}"),
        }
    })
}

/// A byte-dribbling client: one byte of `frame` every `every`, from the
/// first byte until the server closes; returns (time from the first byte
/// to the close, bytes sent).
fn dribble(mut c: Client, frame: &[u8], every: Duration) -> (Duration, usize) {
    let closed = watch_close(Client::connect_stream(c.stream.try_clone().expect("clone")));
    let started = Instant::now();
    let mut sent = 0;
    for b in frame {
        if closed.is_finished() || c.send_raw(&[*b]).is_err() {
            break;
        }
        sent += 1;
        // Pacing the attack (not waiting for the server).
        thread::sleep(every);
    }
    let at = closed.join().expect("reader");
    (at.duration_since(started), sent)
}

#[test]
fn slowloris_is_closed_by_its_deadline_not_kept_alive_by_each_byte() {
    const TEST: &str = "slowloris";
    let t = Target::start_flags(
        TEST,
        "--partial-frame-timeout-ms 300 --handshake-timeout-ms 300",
    );
    let w = t.witness();
    let token = t.token();
    // 12 slowloris connections at once: 6 dribbling their handshake, 6
    // past the handshake dribbling a request. A byte every 100 ms, a third
    // of the deadline: a deadline reset by every byte would never fire.
    let mut attackers = Vec::new();
    for i in 0..12 {
        let (c, frame) = if i % 2 == 0 {
            (t.raw(), encode(&handshake_frame(token.as_deref())))
        } else {
            (
                t.client(),
                encode(&request(
                    "slow",
                    "get_api_key",
                    json!({"name": WITNESS_KEY}),
                )),
            )
        };
        attackers.push(thread::spawn(move || {
            dribble(c, &frame, Duration::from_millis(100))
        }));
    }
    w.during();
    for (i, a) in attackers.into_iter().enumerate() {
        let (took, sent) = a.join().expect("attacker");
        println!("{TEST}: connection {i} closed after {took:?}, {sent} bytes");
        assert!(
            took >= Duration::from_millis(PARTIAL_MS - 20),
            "closed before the deadline: {took:?}"
        );
        assert!(
            took <= Duration::from_millis(PARTIAL_MS) + SLACK,
            "a slowloris lived {took:?}"
        );
        assert!(sent >= 2, "the deadline must survive later bytes ({sent})");
    }
    w.stop(TEST);
    let stderr = t.finish_keep(&[]);
    // The six past the handshake were closed by the partial-frame deadline.
    assert!(count_events(&stderr, "partial_frame_timeout", None) >= 6);
}

#[test]
fn partial_headers_of_0_to_3_bytes_hit_the_handshake_or_partial_deadline() {
    const TEST: &str = "partial_headers";
    // Distinct deadlines: a silent connection is closed by the handshake
    // deadline (600 ms), one that started a frame by the partial one.
    let t = Target::start_flags(
        TEST,
        "--partial-frame-timeout-ms 300 --handshake-timeout-ms 600",
    );
    let w = t.witness();
    let header = 80u32.to_be_bytes();
    let start = Instant::now();
    let mut watched = Vec::new();
    for k in 0..=3 {
        let mut c = t.raw();
        c.send_raw(&header[..k]).expect("send");
        watched.push(("before the handshake", k, watch_close(c), Instant::now()));
    }
    for k in 1..=3 {
        let mut c = t.client();
        c.send_raw(&header[..k]).expect("send");
        watched.push(("after the handshake", k, watch_close(c), Instant::now()));
    }
    // A handshaken connection that sent nothing more: no idle timeout.
    let mut idle = t.client();
    w.during();
    for (when, k, closed, sent) in watched {
        let took = closed.join().expect("watcher").duration_since(sent);
        println!("{TEST}: {k} header bytes {when}: closed after {took:?}");
        let floor = if k == 0 { 600 } else { PARTIAL_MS };
        assert!(took >= Duration::from_millis(floor - 20), "{k}: {took:?}");
    }
    assert!(
        start.elapsed() <= Duration::from_millis(600) + SLACK,
        "the partial headers lived {:?}",
        start.elapsed()
    );
    // Every deadline has fired by now; the idle connection is still served.
    let r = idle.call("idle", "get_api_key", json!({"name": WITNESS_KEY}));
    assert_eq!(r["data"]["key"], WITNESS_VALUE);
    drop(idle);
    w.stop(TEST);
    let stderr = t.finish_keep(&[]);
    assert_eq!(count_events(&stderr, "handshake_timeout", None), 1);
    assert_eq!(count_events(&stderr, "partial_frame_timeout", None), 6);
}

#[test]
fn oversize_length_prefix_is_refused_before_any_body() {
    const TEST: &str = "oversize_prefix";
    let t = Target::start(TEST, &[]);
    let w = t.witness();
    let max = 1_048_576u32;
    // Only the 4-byte header is sent: the server must close at once (far
    // sooner than the 5 s partial-frame deadline), without a reply and
    // without allocating the announced length.
    let cases: [(bool, u32); 4] = [
        (false, u32::MAX),
        (false, max + 1),
        (true, u32::MAX),
        (true, max + 1),
    ];
    for (handshaken, len) in cases {
        let mut c = if handshaken { t.client() } else { t.raw() };
        c.send_raw(&len.to_be_bytes()).expect("send");
        let took = c.closed_without_reply(Duration::from_secs(3));
        assert!(took < PROMPT, "{len}: closed only after {took:?}");
    }
    // With the request id in the first body bytes, the frame is answered
    // (INVALID_REQUEST), then closed; the body is never read.
    let mut c = t.client();
    let mut head = (max + 1).to_be_bytes().to_vec();
    head.extend_from_slice(br#"{"v":2,"id":"big","op":"save_token","payload":{"#);
    c.send_raw(&head).expect("send");
    assert_eq!(
        c.recv_frame(),
        json!({"id":"big","ok":false,"code":"INVALID_REQUEST","error":"Frame exceeds maximum size (1048576 bytes)"})
    );
    c.assert_closed();
    w.during();
    // A frame of exactly the limit is accepted.
    let mut c = t.client();
    let mut frame =
        json!({"v":2,"id":"big","op":"get_api_key","payload":{"name":WITNESS_KEY},"pad":""});
    let base = serde_json::to_vec(&frame).expect("json").len();
    frame["pad"] = json!("p".repeat(max as usize - base));
    let bytes = encode(&frame);
    assert_eq!(bytes.len(), 4 + max as usize);
    c.send_raw(&bytes).expect("send");
    assert_eq!(c.recv_frame()["data"]["key"], WITNESS_VALUE);
    drop(c);
    w.stop(TEST);
    let stderr = t.finish_keep(&[]);
    assert_eq!(
        count_events(&stderr, "frame_decode_error", Some("oversize")),
        4
    );
    assert_eq!(
        count_events(&stderr, "frame_decode_error", Some("oversize_answered")),
        1
    );
}

/// A frame with these body bytes.
fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(body);
    out
}

#[test]
fn invalid_json_and_non_object_frames_close_without_reply() {
    const TEST: &str = "bad_frames";
    let t = Target::start(TEST, &[]);
    let w = t.witness();
    let bad: [(&[u8], &str); 9] = [
        (br#"{"v":2,"op":"handshake""#, "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"{\"v\":2,\"op\":\"h\xc3\"}", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1,2,3]", "not_object"),
        (br#""handshake""#, "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (b"true", "not_object"),
    ];
    // Before and after the handshake, each closes the connection without a
    // reply (no error frame for framing faults).
    for handshaken in [false, true] {
        for (body, _) in &bad {
            let mut c = if handshaken { t.client() } else { t.raw() };
            c.send_raw(&raw_frame(body)).expect("send");
            let took = c.closed_without_reply(Duration::from_secs(3));
            assert!(took < PROMPT, "{body:?}: closed only after {took:?}");
        }
        w.during();
    }
    // A well-formed object that is not a handshake, first: refused with a
    // reply, then closed (without the token: the token check comes first).
    let mut c = t.raw();
    c.send(&request("1", "get_api_key", json!({"name": WITNESS_KEY})))
        .expect("send");
    assert_eq!(c.recv_frame(), support::unauthorized_reply());
    c.assert_closed();
    let mut c = t.raw();
    c.send(&request(
        "1",
        "get_api_key",
        json!({"name": WITNESS_KEY, "capabilityToken": t.token()}),
    ))
    .expect("send");
    assert_eq!(
        c.recv_frame(),
        json!({"v":2,"op":"handshake","ok":false,"code":"INVALID_REQUEST","error":"Handshake required"})
    );
    c.assert_closed();
    drop(c);
    w.stop(TEST);
    let stderr = t.finish_keep(&[]);
    for reason in ["invalid_json", "not_object"] {
        let want = 2 * bad.iter().filter(|(_, r)| *r == reason).count();
        assert_eq!(
            count_events(&stderr, "frame_decode_error", Some(reason)),
            want,
            "{reason}"
        );
    }
}

#[test]
fn half_close_after_requests_still_gets_every_reply_then_eof() {
    const TEST: &str = "half_close";
    let stub = Stub::start();
    let t = Target::refreshable(TEST, &stub);
    let w = t.witness();

    // Pipelined requests, then shutdown(Write): every reply, then EOF.
    let mut c = t.client();
    for i in 0..5 {
        c.send(&request(
            &format!("h{i}"),
            "get_api_key",
            json!({"name": WITNESS_KEY}),
        ))
        .expect("send");
    }
    c.stream.shutdown(Shutdown::Write).expect("half-close");
    let mut ids: Vec<String> = (0..5)
        .map(|_| {
            let r = c.recv_frame();
            assert_eq!(r["data"]["key"], WITNESS_VALUE, "{r}");
            r["id"].as_str().expect("id").to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["h0", "h1", "h2", "h3", "h4"]);
    c.assert_closed();

    // A request that is still running (its provider call held) when the
    // client half-closes: the reply comes when it finishes, then EOF.
    stub.hold();
    let mut c = t.client();
    c.send(&request(
        "held",
        "refresh_token",
        json!({"provider":"anthropic"}),
    ))
    .expect("send");
    c.stream.shutdown(Shutdown::Write).expect("half-close");
    hostile::poll("the held refresh at the stub", hostile::LIMIT, || {
        stub.refreshes() == 1
    });
    w.during();
    stub.release();
    let r = c.recv_frame();
    assert_eq!(r["id"], "held");
    assert_eq!(r["data"]["access_token"], "at-refreshed-1", "{r}");
    assert!(r["data"].get("refresh_token").is_none(), "{r}");
    c.assert_closed();

    // Half-close in the middle of a frame: the fragment is dropped, EOF.
    let mut c = t.client();
    let frame = encode(&request("cut", "get_api_key", json!({"name": WITNESS_KEY})));
    c.send_raw(&frame[..frame.len() / 2]).expect("send");
    c.stream.shutdown(Shutdown::Write).expect("half-close");
    let took = c.closed_without_reply(Duration::from_secs(3));
    assert!(took < PROMPT, "closed only after {took:?}");

    // Half-close before the handshake: EOF.
    let mut c = t.raw();
    c.stream.shutdown(Shutdown::Write).expect("half-close");
    let took = c.closed_without_reply(Duration::from_secs(3));
    assert!(took < PROMPT, "closed only after {took:?}");
    drop(c);

    w.stop(TEST);
    let anthropic = hostile::token_file("anthropic", "default");
    t.finish(&[anthropic]);
}
