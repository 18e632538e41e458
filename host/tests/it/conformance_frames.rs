//! Conformance, part 4: frames, cancel and concurrent dispatch (reference
//! notes §10, items 143–162: `frame-and-cancel.test.ts`,
//! `concurrent-dispatch.test.ts`), and what the existing suite never tested
//! (notes §11 B25): partial frames at the server, oversize and invalid-JSON
//! disconnects, a burst of 200 frames in one write, `RESPONSE_TOO_LARGE`,
//! one reply per cancelled id; plus the wire differences of SPEC §10.
//!
//! A "blocked" request is a `refresh_token` whose provider call the stub
//! holds behind a [`Gate`]: `get_token` is answered from the store and
//! cannot be blocked from outside.

use std::time::{Duration, Instant};

use credproxy_unix::client::{CapabilitySource, Client, ClientError, ClientOptions};
use serde_json::{Value, json};

use crate::support::conformance::Kind::{N, S};
use crate::support::conformance::Seed::{Key, Token};
use crate::support::conformance::{
    self, Conn, Env, Gate, Got, Server, Stub, encode, err_reply, frame_bytes, login_ok, n_conn,
    path, providers_toml, seeded, std_token, tok, wait_for,
};

const QUIET: Duration = Duration::from_millis(300);
const CLOSE: Duration = Duration::from_secs(5);

/// An N-server whose anthropic refreshes are held by `gate`; a token with
/// a refresh token is stored (login) and an API key `K` = `v-k`.
struct Blocked {
    gate: Gate,
    stub: Stub,
    /// Keeps the temporary tree alive.
    _env: Env,
    srv: Server,
}

fn blocked(extra: &[&str]) -> Blocked {
    let gate = Gate::new();
    let g = gate.clone();
    let stub = Stub::start(move |req, nth| {
        if req.field("grant_type").as_deref() == Some("refresh_token") {
            g.wait();
        }
        std_token(req, nth)
    });
    let env = Env::with_config(&providers_toml(&stub, None));
    env.key_set("K", "v-k");
    let srv = env.serve_n(extra);
    let mut c = srv.hs();
    login_ok(&mut c, "anthropic", None, "blk");
    Blocked {
        gate,
        stub,
        _env: env,
        srv,
    }
}

impl Blocked {
    /// Sends a refresh with `id` on `c` and waits until the stub holds it.
    fn hold(&self, c: &mut Conn, id: &str) {
        let before = self.stub.count(path::ANTHROPIC);
        c.req(id, "refresh_token", json!({"provider":"anthropic"}));
        self.stub.wait_count(path::ANTHROPIC, before + 1);
    }
}

fn refresh_frame(id: &str) -> Vec<u8> {
    encode(&json!({"v":2,"id":id,"op":"refresh_token","payload":{"provider":"anthropic"}}))
}

fn api_key_frame(id: &str, name: &str) -> Vec<u8> {
    encode(&json!({"v":2,"id":id,"op":"get_api_key","payload":{"name":name}}))
}

// --- frame-and-cancel.test.ts (143–154) -------------------------------------

#[test]
fn c143_large_api_keys_round_trip_in_v2() {
    let env = Env::new();
    let a = "a".repeat(50_000);
    let b: String = "0123456789abcdef".repeat(31_250);
    env.key_set("K50", &a);
    env.key_set("K500", &b);
    let srv = env.serve_n(&[]);
    let mut c = srv.hs();
    assert_eq!(c.ok("get_api_key", json!({"name":"K50"}))["key"], a);
    assert_eq!(c.ok("get_api_key", json!({"name":"K500"}))["key"], b);
}

#[test]
fn c144_blocked_request_stays_pending_then_completes() {
    let b = blocked(&[]);
    let mut c = b.srv.hs();
    b.hold(&mut c, "slow");
    // The server imposes no deadline of its own on a request.
    c.assert_silent(Duration::from_millis(100));
    b.gate.open();
    let r = c.recv();
    assert_eq!(r["id"], "slow");
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn c145_client_pending_request_is_not_idle_closed() {
    let b = blocked(&[]);
    let opts = ClientOptions {
        idle_close_ms: 150,
        ..ClientOptions::default()
    };
    let client = smol::block_on(Client::connect_with_options(
        &b.srv.socket,
        CapabilitySource::None,
        opts,
    ))
    .expect("client");
    let gate = b.gate.clone();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        gate.open();
    });
    let t = smol::block_on(client.refresh_token("anthropic", None)).expect("refresh");
    assert_eq!(t["access_token"], "at-rt-blk-1");
    let _ = opener.join();
}

#[test]
fn c146_client_idle_closes_then_reconnects_and_is_served() {
    let env = Env::new();
    env.key_set("K", "v146");
    let srv = env.serve_n(&[]);
    let opts = ClientOptions {
        idle_close_ms: 100,
        ..ClientOptions::default()
    };
    let client = smol::block_on(Client::connect_with_options(
        &srv.socket,
        CapabilitySource::None,
        opts,
    ))
    .expect("client");
    let key = smol::block_on(client.get_api_key("K")).expect("first call");
    assert_eq!(key.map(|k| k.expose().to_owned()).as_deref(), Some("v146"));
    wait_for("the idle close", CLOSE, || {
        client.connection_state() == credproxy_unix::client::ConnectionState::Idle
    });
    let key = smol::block_on(client.get_api_key("K")).expect("after reconnect");
    assert_eq!(key.map(|k| k.expose().to_owned()).as_deref(), Some("v146"));
    // Two connections, each handshaken (audit log).
    wait_for("two handshakes in the audit log", CLOSE, || {
        srv.stderr().matches("handshake_ok").count() == 2
    });
}

#[test]
fn c147_fix_b4_cancel_gives_one_cancelled_reply_then_the_connection_serves() {
    // SPEC §3.3, §10: the target's single reply is CANCELLED (before the
    // cancel's own reply); no second reply when its work finishes; the
    // detached refresh still persists its result.
    let b = blocked(&[]);
    let mut c = b.srv.hs();
    b.hold(&mut c, "target");
    c.req("k", "cancel", json!({"targetId":"target"}));
    assert_eq!(
        c.recv(),
        err_reply("target", "CANCELLED", "Operation cancelled")
    );
    assert_eq!(
        c.recv(),
        json!({"id":"k","ok":true,"data":{"cancelled":true}})
    );
    assert_eq!(c.ok("get_api_key", json!({"name":"K"}))["key"], "v-k");
    b.gate.open();
    c.assert_silent(QUIET);
    wait_for("the detached refresh to persist", CLOSE, || {
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"] == "at-rt-blk-1"
    });
}

#[test]
fn c148_cancel_from_another_connection_does_not_cancel() {
    let b = blocked(&[]);
    let mut a = b.srv.hs();
    b.hold(&mut a, "conn-a-op-id-123");
    let mut other = b.srv.hs();
    assert_eq!(
        other.ok("cancel", json!({"targetId":"conn-a-op-id-123"})),
        json!({"cancelled":false})
    );
    b.gate.open();
    let r = a.recv();
    assert_eq!(r["id"], "conn-a-op-id-123");
    assert_eq!(r["ok"], true);
}

#[test]
fn c149_cancel_of_an_unknown_id_is_not_cancelled() {
    let (_env, _srv, mut c) = n_conn();
    assert_eq!(
        c.ok("cancel", json!({"targetId":"never-sent"})),
        json!({"cancelled":false})
    );
    assert_eq!(
        c.call("cancel", json!({})),
        err_reply("r2", "INVALID_REQUEST", "Missing targetId")
    );
}

#[test]
fn c150_v1_response_too_large_then_the_connection_serves() {
    let env = Env::new();
    env.key_set("BIG", &"x".repeat(100_000));
    env.key_set("SMALL", "s");
    let srv = env.serve_n(&[]);
    let mut c = srv.hs_v1();
    assert_eq!(
        c.call("get_api_key", json!({"name":"BIG"})),
        err_reply(
            "r1",
            "RESPONSE_TOO_LARGE",
            "Response exceeds maximum frame size for protocol version 1"
        )
    );
    assert_eq!(c.ok("get_api_key", json!({"name":"SMALL"}))["key"], "s");
}

#[test]
fn c151_s_server_without_token_runs_nothing_not_even_cancel() {
    let env = Env::new();
    let srv = env.serve(&[]);
    let mut c = srv.conn();
    let mut bytes =
        encode(&json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}));
    bytes.extend(encode(
        &json!({"v":2,"id":"c","op":"cancel","payload":{"targetId":"x"}}),
    ));
    c.send_raw(&bytes);
    assert_eq!(c.recv()["code"], "UNAUTHORIZED");
    c.assert_closed_within(CLOSE);
}

#[test]
fn c152_s_server_list_api_keys_empty_has_api_key_forbidden() {
    let (_env, _srv, mut c) = seeded(S, &[Key("K", "v")]);
    assert_eq!(c.ok("list_api_keys", json!({})), json!({"keys":[]}));
    assert_eq!(c.err("has_api_key", json!({"name":"K"})).0, "FORBIDDEN");
}

#[test]
fn c153_client_per_call_timeout_names_its_milliseconds() {
    let b = blocked(&[]);
    let client =
        smol::block_on(Client::connect(&b.srv.socket, CapabilitySource::None)).expect("client");
    let e = smol::block_on(client.call_with_timeout(
        "refresh_token",
        json!({"provider":"anthropic"}),
        Duration::from_millis(150),
    ))
    .expect_err("timed out");
    assert!(matches!(e, ClientError::Timeout { ms: 150 }), "{e:?}");
    assert!(e.to_string().contains("150ms"), "{e}");
    // The cancel it sent left the connection usable.
    let k = smol::block_on(client.get_api_key("K")).expect("next call");
    assert_eq!(k.map(|k| k.expose().to_owned()).as_deref(), Some("v-k"));
    b.gate.open();
}

// --- concurrent-dispatch.test.ts (155–162) ----------------------------------

#[test]
fn c155_reply_to_a_later_request_overtakes_a_blocked_one() {
    let b = blocked(&[]);
    let mut c = b.srv.hs();
    b.hold(&mut c, "blocked");
    c.req("fast", "get_api_key", json!({"name":"K"}));
    assert_eq!(
        c.recv(),
        json!({"id":"fast","ok":true,"data":{"key":"v-k"}})
    );
    b.gate.open();
    let r = c.recv();
    assert_eq!(
        (r["id"].as_str(), r["ok"].as_bool()),
        (Some("blocked"), Some(true))
    );
}

#[test]
fn c156_get_api_key_answered_at_once_while_a_request_is_blocked() {
    let b = blocked(&[]);
    let mut c = b.srv.hs();
    b.hold(&mut c, "blocked");
    let t0 = Instant::now();
    assert_eq!(c.ok("get_api_key", json!({"name":"K"}))["key"], "v-k");
    assert!(t0.elapsed() < Duration::from_secs(2));
    b.gate.open();
}

#[test]
fn c157_two_hundred_get_api_key_in_waves_of_16() {
    let env = Env::new();
    for i in 0..4 {
        env.key_set(
            &format!("K{i}"),
            &format!("value-{i}-{}", "z".repeat(i * 100)),
        );
    }
    let srv = env.serve_n(&[]);
    let mut c = srv.hs();
    let mut n = 0;
    while n < 200 {
        let wave: Vec<usize> = (n..(n + 16).min(200)).collect();
        let bytes: Vec<u8> = wave
            .iter()
            .flat_map(|i| api_key_frame(&format!("w{i}"), &format!("K{}", i % 4)))
            .collect();
        c.send_raw(&bytes);
        let got = c.recv_by_id(wave.len());
        for i in &wave {
            let r = &got[&format!("w{i}")];
            assert_eq!(
                r["data"]["key"],
                format!("value-{}-{}", i % 4, "z".repeat((i % 4) * 100))
            );
        }
        n += wave.len();
    }
    assert_eq!(n, 200);
}

#[test]
fn c158_fix_b23_request_as_first_frame_is_never_dispatched() {
    let env = Env::new();
    env.key_set("K", "secret-158");
    let srv = env.serve(&[]);
    let mut c = srv.conn();
    c.send(&json!({"v":1,"id":"req-before-handshake","op":"get_api_key","payload":{"name":"K"}}));
    let r = c.recv();
    assert_eq!(
        r,
        json!({"v":2,"op":"handshake","ok":false,"code":"UNAUTHORIZED","error":"Invalid or missing capability token"})
    );
    c.assert_closed_within(CLOSE);
    // On an N-server it is refused too (SPEC §3.2, §10: not swallowed).
    let srv = env.serve_n(&[]);
    let mut c = srv.conn();
    c.send(&json!({"v":1,"id":"req-before-handshake","op":"get_api_key","payload":{"name":"K"}}));
    assert_eq!(
        c.recv(),
        json!({"v":2,"op":"handshake","ok":false,"code":"INVALID_REQUEST","error":"Handshake required"})
    );
    c.assert_closed_within(CLOSE);
}

#[test]
fn c159_client_closing_during_a_blocked_request_leaves_the_server_healthy() {
    let b = blocked(&[]);
    {
        let mut c = b.srv.hs();
        b.hold(&mut c, "abandoned");
    }
    b.gate.open();
    let mut c = b.srv.hs();
    assert_eq!(c.ok("get_api_key", json!({"name":"K"}))["key"], "v-k");
    // The detached refresh still stored its result.
    wait_for("the refreshed token", CLOSE, || {
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"] == "at-rt-blk-1"
    });
}

#[test]
fn c160_sixteen_in_flight_then_resource_exhausted() {
    let b = blocked(&[]);
    let mut c = b.srv.hs();
    let bytes: Vec<u8> = (0..16)
        .flat_map(|i| refresh_frame(&format!("b{i}")))
        .collect();
    c.send_raw(&bytes);
    b.stub.wait_count(path::ANTHROPIC, 2);
    c.req("17th", "get_api_key", json!({"name":"K"}));
    assert_eq!(
        c.recv(),
        err_reply("17th", "RESOURCE_EXHAUSTED", "Too many concurrent requests")
    );
    // cancel is exempt from the cap.
    assert_eq!(
        c.ok("cancel", json!({"targetId":"none"})),
        json!({"cancelled":false})
    );
    b.gate.open();
    let got = c.recv_by_id(16);
    assert!(got.values().all(|r| r["ok"] == true), "{got:?}");
    assert_eq!(c.ok("get_api_key", json!({"name":"K"}))["key"], "v-k");
}

#[test]
fn c161_v1_duplicate_id_back_to_back_gets_two_replies() {
    let env = Env::new();
    env.key_set("K", "v161");
    let srv = env.serve_n(&[]);
    let mut c = srv.hs_v1();
    let f = encode(&json!({"v":1,"id":"dup","op":"get_api_key","payload":{"name":"K"}}));
    let mut both = f.clone();
    both.extend(f);
    c.send_raw(&both);
    let mut replies = [c.recv(), c.recv()];
    replies.sort_by_key(|r| r["ok"].as_bool());
    assert_eq!(
        replies[0],
        err_reply("dup", "INVALID_REQUEST", "Duplicate request id")
    );
    assert_eq!(
        replies[1],
        json!({"id":"dup","ok":true,"data":{"key":"v161"}})
    );
    c.assert_silent(QUIET);
}

#[test]
fn c162_one_request_gets_exactly_one_reply() {
    let (_env, _srv, mut c) = seeded(N, &[Key("K", "v162")]);
    assert_eq!(
        c.call("get_api_key", json!({"name":"K"})),
        json!({"id":"r1","ok":true,"data":{"key":"v162"}})
    );
    c.assert_silent(QUIET);
}

// --- B25: partial frames, oversize, invalid JSON, bursts --------------------

/// An N-server with a 300 ms partial-frame and handshake deadline.
fn short_deadlines() -> (Env, Server) {
    let env = Env::new();
    let srv = env.serve_n(&[
        "--partial-frame-timeout-ms",
        "300",
        "--handshake-timeout-ms",
        "300",
    ]);
    (env, srv)
}

fn assert_closed_after_deadline(c: &mut Conn, t0: Instant) {
    c.assert_closed_within(CLOSE);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "closed before the deadline: {:?}",
        t0.elapsed()
    );
}

#[test]
fn b25_fix_b16_partial_header_closed_at_the_deadline() {
    let (_e, srv) = short_deadlines();
    let mut c = srv.hs();
    let t0 = Instant::now();
    c.send_raw(&[0, 0]);
    assert_closed_after_deadline(&mut c, t0);
}

#[test]
fn b25_partial_payload_closed_at_the_deadline() {
    let (_e, srv) = short_deadlines();
    let mut c = srv.hs();
    let f = encode(&json!({"v":2,"id":"p","op":"list_providers"}));
    let t0 = Instant::now();
    c.send_raw(&f[..f.len() - 3]);
    assert_closed_after_deadline(&mut c, t0);
}

#[test]
fn b25_partial_deadline_not_restarted_by_trickling_bytes() {
    let (_e, srv) = short_deadlines();
    let mut c = srv.hs();
    let f = encode(&json!({"v":2,"id":"p","op":"list_providers","payload":{"pad":"x".repeat(40)}}));
    let t0 = Instant::now();
    let mut closed = false;
    for chunk in f[..f.len() - 1].chunks(4) {
        if c.try_send_raw(chunk).is_err() {
            closed = true;
            break;
        }
        if let Got::Closed = c.get(Duration::from_millis(60)) {
            closed = true;
            break;
        }
    }
    if !closed {
        c.assert_closed_within(CLOSE);
    }
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn b25_fix_b16_silent_connection_closed_at_the_handshake_deadline() {
    let (_e, srv) = short_deadlines();
    let mut c = srv.conn();
    let t0 = Instant::now();
    assert_closed_after_deadline(&mut c, t0);
}

#[test]
fn b25_no_idle_timeout_after_the_handshake() {
    let (_e, srv) = short_deadlines();
    let mut c = srv.hs();
    c.assert_silent(Duration::from_millis(800));
    assert_eq!(c.ok("list_providers", json!({})), json!({"providers":[]}));
}

#[test]
fn b25_complete_frames_in_pieces_are_served() {
    let (_env, _srv, mut c) = n_conn();
    let f = encode(&json!({"v":2,"id":"s","op":"list_providers"}));
    for b in &f {
        c.send_raw(&[*b]);
    }
    assert_eq!(
        c.recv(),
        json!({"id":"s","ok":true,"data":{"providers":[]}})
    );
}

#[test]
fn b25_oversize_frame_closes_without_reply() {
    let env = Env::new();
    let srv = env.serve_n(&["--max-frame-bytes", "1024"]);
    // Exactly the limit is accepted (JSON padded with spaces).
    let mut c = srv.hs();
    let body = serde_json::to_vec(&json!({"v":2,"id":"at","op":"list_providers"})).unwrap();
    let mut padded = body.clone();
    padded.resize(1024, b' ');
    c.send_raw(&frame_bytes(&padded));
    assert_eq!(c.recv()["id"], "at");
    // One byte more is refused as soon as the header is read.
    c.send_raw(&1025u32.to_be_bytes());
    c.assert_closed_within(CLOSE);
}

#[test]
fn b25_fix_inbound_frames_capped_at_1mib_by_default() {
    // SPEC §3.1, §10: 1 MiB by default (the existing server allows 4 MiB).
    let (_env, srv, mut c) = n_conn();
    c.send_raw(&(1_048_577u32).to_be_bytes());
    c.assert_closed_within(CLOSE);
    let mut c = srv.hs();
    c.send_raw(&(4_194_305u32).to_be_bytes());
    c.assert_closed_within(CLOSE);
    // With the id in the first bytes of the body, the oversize frame is
    // answered before the close.
    let mut c = srv.hs();
    let mut bytes = (1_048_577u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(br#"{"v":2,"id":"big","op":"save_token","payload":{"#);
    c.send_raw(&bytes);
    assert_eq!(
        c.recv(),
        json!({"id":"big","ok":false,"code":"INVALID_REQUEST","error":"Frame exceeds maximum size (1048576 bytes)"})
    );
    c.assert_closed_within(CLOSE);
}

#[test]
fn b25_invalid_json_closes_without_reply() {
    let (_env, srv, mut c) = n_conn();
    c.send_raw(&frame_bytes(b"{\"v\":2,\"id\":\"x\",\"op\":"));
    c.assert_closed_within(CLOSE);
    // Before the handshake too.
    let mut c = srv.conn();
    c.send_raw(&frame_bytes(b"not json"));
    c.assert_closed_within(CLOSE);
}

#[test]
fn b25_invalid_utf8_closes_without_reply() {
    let (_env, _srv, mut c) = n_conn();
    c.send_raw(&frame_bytes(
        b"{\"v\":2,\"id\":\"\xff\",\"op\":\"list_providers\"}",
    ));
    c.assert_closed_within(CLOSE);
}

#[test]
fn b25_fix_non_object_frame_after_handshake_closes() {
    // SPEC §3.1, §10: the existing server replies INVALID_REQUEST with id
    // "unknown" to numbers, strings and arrays, and drops on null.
    for frame in ["[1,2]", "42", "\"str\"", "null", "true"] {
        let env = Env::new();
        let srv = env.serve_n(&[]);
        let mut c = srv.hs();
        c.send_raw(&frame_bytes(frame.as_bytes()));
        c.assert_closed_within(CLOSE);
    }
}

#[test]
fn b25_fix_non_object_handshake_closes() {
    // The existing server answers UNKNOWN_VERSION to a non-object first
    // frame; ours closes (SPEC §3.1).
    let env = Env::new();
    let srv = env.serve_n(&[]);
    let mut c = srv.conn();
    c.send_raw(&frame_bytes(b"[]"));
    c.assert_closed_within(CLOSE);
}

#[test]
fn b25_fix_b16_burst_of_200_cancels_in_one_write_is_served() {
    // SPEC §10: no per-read frame-count flood guard (the existing server
    // drops a connection that sends more than 100 frames in one chunk).
    let (_env, _srv, mut c) = n_conn();
    let bytes: Vec<u8> = (0..200)
        .flat_map(|i| {
            encode(&json!({"v":2,"id":format!("c{i}"),"op":"cancel","payload":{"targetId":"none"}}))
        })
        .collect();
    c.send_raw(&bytes);
    let got = c.recv_by_id(200);
    for (id, r) in &got {
        assert_eq!(r, &json!({"id":id,"ok":true,"data":{"cancelled":false}}));
    }
    c.assert_silent(QUIET);
    assert_eq!(c.ok("list_providers", json!({})), json!({"providers":[]}));
}

#[test]
fn b25_fix_b16_burst_of_200_reads_in_one_write_one_reply_each() {
    let (_env, _srv, mut c) = seeded(N, &[Key("K", "burst")]);
    let bytes: Vec<u8> = (0..200)
        .flat_map(|i| api_key_frame(&format!("g{i}"), "K"))
        .collect();
    c.send_raw(&bytes);
    let got = c.recv_by_id(200);
    let mut ok = 0;
    for (id, r) in &got {
        if r["ok"] == true {
            assert_eq!(r, &json!({"id":id,"ok":true,"data":{"key":"burst"}}));
            ok += 1;
        } else {
            assert_eq!(
                r,
                &err_reply(id, "RESOURCE_EXHAUSTED", "Too many concurrent requests")
            );
        }
    }
    assert!(ok >= 16, "only {ok} served");
    c.assert_silent(QUIET);
    assert_eq!(c.ok("get_api_key", json!({"name":"K"}))["key"], "burst");
}

#[test]
fn b25_v1_response_size_boundary_is_the_whole_frame() {
    // Reply `{"id":"r1","ok":true,"data":{"key":"…"}}` is 39 + n bytes,
    // plus the 4-byte header: n = 65 493 is exactly 65 536.
    let env = Env::new();
    env.key_set("FITS", &"a".repeat(65_493));
    env.key_set("OVER", &"a".repeat(65_494));
    let srv = env.serve_n(&[]);
    let mut c = srv.hs_v1();
    let r = c.call("get_api_key", json!({"name":"FITS"}));
    assert_eq!(r["ok"], true, "{}", r["code"]);
    assert_eq!(encode(&r).len(), 65_536);
    let mut c = srv.hs_v1();
    c.req("r1", "get_api_key", json!({"name":"OVER"}));
    assert_eq!(c.recv()["code"], "RESPONSE_TOO_LARGE");
    // v2 has no such limit at this size.
    let mut c = srv.hs();
    assert_eq!(
        c.ok("get_api_key", json!({"name":"OVER"}))["key"]
            .as_str()
            .map(str::len),
        Some(65_494)
    );
}

#[test]
fn b25_fix_b11_response_too_large_applies_to_refresh_replies() {
    // SPEC §3.1, §10: RESPONSE_TOO_LARGE for every reply (the existing
    // server writes OAuth and refresh replies around its guard).
    let stub = Stub::start(|req, nth| {
        if req.field("grant_type").as_deref() == Some("refresh_token") {
            conformance::ok_json(
                json!({"access_token":"at-big","expires_in":3600,"blob":"b".repeat(70_000)}),
            )
        } else {
            std_token(req, nth)
        }
    });
    let env = Env::with_config(&providers_toml(&stub, None));
    let srv = env.serve_n(&[]);
    let mut c = srv.hs();
    login_ok(&mut c, "anthropic", None, "big");
    let mut v1 = srv.hs_v1();
    assert_eq!(
        v1.call("refresh_token", json!({"provider":"anthropic"}))["code"],
        "RESPONSE_TOO_LARGE"
    );
    // The refresh itself happened and was stored.
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "at-big"
    );
}

// --- other wire differences of SPEC §10 --------------------------------------

#[test]
fn b25_fix_cancel_is_subject_to_the_duplicate_id_check() {
    let b = blocked(&[]);
    let mut c = b.srv.hs();
    b.hold(&mut c, "same");
    // A cancel reusing an in-flight id is a duplicate; the original
    // request is unaffected.
    c.req("same", "cancel", json!({"targetId":"same"}));
    assert_eq!(
        c.recv(),
        err_reply("same", "INVALID_REQUEST", "Duplicate request id")
    );
    b.gate.open();
    let r = c.recv();
    assert_eq!(
        (r["id"].as_str(), r["ok"].as_bool()),
        (Some("same"), Some(true))
    );
    c.assert_silent(QUIET);
}

#[test]
fn b25_fix_non_object_payload_is_invalid_request() {
    let (_env, _srv, mut c) = seeded(N, &[Token("anthropic", "default", "a")]);
    for p in [json!([1]), json!("s"), json!(5)] {
        assert_eq!(
            c.err("get_token", p),
            ("INVALID_REQUEST".into(), "Invalid payload".into())
        );
    }
    // Absent or null means {}.
    c.req("n", "list_providers", Value::Null);
    assert_eq!(c.recv()["ok"], true);
    c.send(&json!({"v":2,"id":"m","op":"list_providers"}));
    assert_eq!(c.recv()["ok"], true);
}

#[test]
fn b25_fix_typed_validation_and_dot_names() {
    let (_env, _srv, mut c) = n_conn();
    for (p, msg) in [
        (json!({"provider":5}), "Invalid provider"),
        (json!({"provider":"."}), "Invalid provider"),
        (json!({"provider":".."}), "Invalid provider"),
        (json!({"provider":"a/b"}), "Invalid provider"),
        (
            json!({"provider":"anthropic","bucket":".."}),
            "Invalid bucket",
        ),
        (json!({"provider":"anthropic","bucket":7}), "Invalid bucket"),
    ] {
        assert_eq!(
            c.err("get_token", p.clone()),
            ("INVALID_REQUEST".into(), msg.into()),
            "{p}"
        );
    }
    assert_eq!(
        c.err("get_api_key", json!({"name":"a b"})),
        ("INVALID_REQUEST".into(), "Invalid name".into())
    );
    assert_eq!(
        c.err(
            "save_token",
            json!({"provider":"p","token":{"access_token":"a","expiry":1,"token_type":"mac"}})
        )
        .0,
        "INVALID_REQUEST"
    );
    assert_eq!(
        c.err("save_token", json!({"provider":"p"})),
        ("INVALID_REQUEST".into(), "Missing provider or token".into())
    );
}

#[test]
fn b25_envelope_ids() {
    let (_env, _srv, mut c) = n_conn();
    // A numeric id is echoed as a string.
    c.send(&json!({"v":2,"id":7,"op":"list_providers"}));
    assert_eq!(
        c.recv(),
        json!({"id":"7","ok":true,"data":{"providers":[]}})
    );
    // Missing id: echoed as "unknown".
    c.send(&json!({"v":2,"op":"list_providers"}));
    assert_eq!(
        c.recv(),
        err_reply("unknown", "INVALID_REQUEST", "Missing request id or op")
    );
    for id in [json!(""), json!(null), json!(false), json!(0)] {
        c.send(&json!({"v":2,"id":id,"op":"list_providers"}));
        let r = c.recv();
        assert_eq!(r["code"], "INVALID_REQUEST", "{id}: {r}");
        assert_eq!(r["error"], "Missing request id or op");
    }
    c.send(&json!({"v":2,"id":"x","op":""}));
    assert_eq!(
        c.recv(),
        err_reply("x", "INVALID_REQUEST", "Missing request id or op")
    );
    c.send(&json!({"v":2,"id":"y","op":5}));
    assert_eq!(
        c.recv(),
        err_reply("y", "INVALID_REQUEST", "Missing request id or op")
    );
    // A second handshake is an unknown operation; names of Object.prototype
    // are not operations.
    c.send(&json!({"v":2,"id":"h","op":"handshake","payload":{"minVersion":1,"maxVersion":2}}));
    assert_eq!(
        c.recv(),
        err_reply("h", "INVALID_REQUEST", "Unknown operation: handshake")
    );
    for op in ["toString", "constructor", "github"] {
        assert_eq!(
            c.err(op, json!({})),
            ("INVALID_REQUEST".into(), format!("Unknown operation: {op}"))
        );
    }
}

#[test]
fn b25_version_negotiation() {
    let env = Env::new();
    let srv = env.serve_n(&[]);
    let hs = |frame: Value| {
        let mut c = srv.conn();
        c.send(&frame);
        c.recv()
    };
    let ok = |v: u64| json!({"v":v,"op":"handshake","ok":true,"data":{"version":v}});
    let bad = json!({"v":2,"op":"handshake","ok":false,"code":"UNKNOWN_VERSION","error":"Unsupported protocol version"});
    assert_eq!(hs(json!({"v":1,"op":"handshake"})), ok(1));
    assert_eq!(hs(json!({"v":2,"op":"handshake"})), ok(2));
    assert_eq!(
        hs(json!({"v":9,"op":"handshake","payload":{"minVersion":1,"maxVersion":5}})),
        ok(2)
    );
    assert_eq!(
        hs(json!({"op":"handshake","payload":{"minVersion":1,"maxVersion":1}})),
        ok(1)
    );
    assert_eq!(hs(json!({"v":3,"op":"handshake"})), bad);
    assert_eq!(hs(json!({"v":"2","op":"handshake"})), bad);
    assert_eq!(
        hs(json!({"op":"handshake","payload":{"minVersion":2,"maxVersion":1}})),
        bad
    );
    assert_eq!(
        hs(json!({"op":"handshake","payload":{"minVersion":3,"maxVersion":4}})),
        bad
    );
    assert_eq!(
        hs(json!({"op":"handshake","payload":{"minVersion":1.5,"maxVersion":2}})),
        bad
    );
    // A bound that is not a number falls back to frame.v.
    assert_eq!(
        hs(json!({"v":1,"op":"handshake","payload":{"minVersion":"1","maxVersion":2}})),
        ok(1)
    );
}

#[test]
fn b25_fix_rate_limit_on_writes() {
    // SPEC §3.5, §10: a per-connection token bucket on writes and provider
    // calls (reads are not limited).
    let env = Env::new();
    let srv = env.serve_n(&["--rate-per-sec", "1", "--rate-burst", "3"]);
    let mut c = srv.hs();
    for i in 0..3 {
        c.ok(
            "save_token",
            json!({"provider":"p","token":tok(&format!("t{i}"))}),
        );
    }
    let r = c.call("save_token", json!({"provider":"p","token":tok("t3")}));
    assert_eq!(r["code"], "RATE_LIMITED", "{r}");
    assert_eq!(r["error"], "Too many requests");
    assert!(r["retryAfter"].as_u64().is_some_and(|s| s >= 1), "{r}");
    for _ in 0..10 {
        c.ok("list_providers", json!({}));
    }
}

#[test]
fn b25_fix_connection_limit() {
    // SPEC §3.1: the limit bounds handshaken connections; a newcomer's
    // handshake displaces the connection idle longest, never one with work
    // in flight (the engine tests cover the newcomer being refused when
    // nothing is evictable). It used to close the newcomer at accept.
    let b = blocked(&["--max-connections", "2"]);
    let mut busy = b.srv.hs();
    b.hold(&mut busy, "inflight");
    let mut idle = b.srv.hs();
    let mut third = b.srv.hs();
    idle.assert_closed_within(CLOSE);
    assert_eq!(
        third.ok("list_providers", json!({})),
        json!({"providers":["anthropic"]})
    );
    b.gate.open();
    let r = busy.recv();
    assert_eq!(
        (r["id"].as_str(), r["ok"].as_bool()),
        (Some("inflight"), Some(true))
    );
}

#[test]
fn b25_half_close_finishes_requests_in_flight() {
    // SPEC §3.1: read-side EOF finishes what is in flight, then closes.
    let b = blocked(&[]);
    let mut c = b.srv.hs();
    b.hold(&mut c, "inflight");
    c.shutdown_write();
    b.gate.open();
    let r = c.recv();
    assert_eq!(
        (r["id"].as_str(), r["ok"].as_bool()),
        (Some("inflight"), Some(true))
    );
    c.assert_closed_within(CLOSE);
}
