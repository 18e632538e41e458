//! Hostile clients, part 3: access and state — a sandbox trying every
//! forbidden operation, clients without the capability token, session ids
//! tried from another peer, refresh storms for one key (in one process
//! and across two), and store failures in the middle of operations.
//!
//! Every test runs against the real binary (see `support::hostile`): a
//! witness connection keeps being served within 500 ms during the attack,
//! the server's peak memory stays within 64 MiB of its start, and the
//! seeded store is intact afterwards (except what a test changes on
//! purpose, checked on its own).

use std::collections::BTreeSet;
use std::path::Path;
use std::thread;

use serde_json::{Value, json};

use crate::support::hostile::{
    CANARY_ACCESS, CANARY_KEY, CANARY_PROVIDER, LIMIT, Stub, Target, Unwritable, WITNESS_KEY, poll,
    stored_token, token_file,
};
use crate::support::{self, Client, encode, euid, request, skip};

/// `{"id":id,"ok":false,"code":code,"error":error}`.
fn refusal(id: &str, code: &str, error: &str) -> Value {
    json!({"id": id, "ok": false, "code": code, "error": error})
}

#[test]
fn sandbox_tries_every_forbidden_operation() {
    const TEST: &str = "sandbox_forbidden";
    let t = Target::start(TEST, &[]);
    let w = t.witness();

    // Without the capability token, or with a wrong one: refused, closed.
    for token in [
        None,
        Some("0".repeat(64)),
        Some(t.token().expect("token") + "0"),
    ] {
        let mut c = t.raw();
        assert_eq!(c.handshake(token.as_deref()), support::unauthorized_reply());
        c.assert_closed();
    }

    let mut c = t.client();
    let canary = json!({"provider": CANARY_PROVIDER});
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "save_token",
            json!({"provider": CANARY_PROVIDER, "token": support::token_json("evil")}),
            refusal("1", "FORBIDDEN", "Sandbox connections cannot modify tokens"),
        ),
        (
            "remove_token",
            canary.clone(),
            refusal("2", "FORBIDDEN", "Sandbox connections cannot remove tokens"),
        ),
        (
            "has_api_key",
            json!({"name": CANARY_KEY}),
            refusal(
                "3",
                "FORBIDDEN",
                "Sandbox connections cannot check key existence",
            ),
        ),
        (
            "list_providers",
            json!({}),
            json!({"id":"4","ok":true,"data":{"providers":[]}}),
        ),
        (
            "list_buckets",
            canary.clone(),
            json!({"id":"5","ok":true,"data":{"buckets":[]}}),
        ),
        (
            "list_api_keys",
            json!({}),
            json!({"id":"6","ok":true,"data":{"keys":[]}}),
        ),
        (
            "get_bucket_stats",
            canary.clone(),
            json!({"id":"7","ok":true,"data":{"bucket":"default","requestCount":0,"percentage":0}}),
        ),
        (
            "get_token",
            json!({"provider": "missing"}),
            refusal("8", "FORBIDDEN", "Access denied"),
        ),
        (
            "get_api_key",
            json!({"name": "MISSING_KEY"}),
            refusal("9", "FORBIDDEN", "Access denied"),
        ),
        (
            "get_token",
            json!({"provider": "../canary"}),
            refusal("10", "INVALID_REQUEST", "Invalid provider"),
        ),
        (
            "get_token",
            json!({"provider": CANARY_PROVIDER, "bucket": ".."}),
            refusal("11", "INVALID_REQUEST", "Invalid bucket"),
        ),
        (
            "get_api_key",
            json!({"name": "../keys/CANARY_KEY"}),
            refusal("12", "INVALID_REQUEST", "Invalid name"),
        ),
    ];
    for (i, (op, payload, want)) in cases.into_iter().enumerate() {
        let id = (i + 1).to_string();
        assert_eq!(c.call(&id, op, payload), want, "{op}");
    }
    w.during();
    // Pipelined, many times over: still one refusal each, nothing written.
    let mut batch = Vec::new();
    for i in 0..200 {
        let (op, payload) = match i % 3 {
            0 => (
                "save_token",
                json!({"provider": CANARY_PROVIDER, "token": support::token_json("evil")}),
            ),
            1 => ("remove_token", canary.clone()),
            _ => ("has_api_key", json!({"name": CANARY_KEY})),
        };
        batch.extend(encode(&request(&format!("p{i}"), op, payload)));
    }
    c.send_raw(&batch).expect("send");
    let mut ids = BTreeSet::new();
    for _ in 0..200 {
        let r = c.recv_frame();
        assert!(
            matches!(r["code"].as_str(), Some("FORBIDDEN" | "RATE_LIMITED")),
            "{r}"
        );
        assert!(ids.insert(r["id"].as_str().expect("id").to_owned()));
    }
    drop(c);
    w.stop(TEST);
    t.finish(&[]);

    // With --strict-sandbox the login and refresh operations are refused
    // too (before validation: even with garbage payloads).
    const STRICT: &str = "sandbox_forbidden_strict";
    let t = Target::start(STRICT, &["--strict-sandbox"]);
    let w = t.witness();
    let mut c = t.client();
    // Each refusal is "Sandbox connections cannot " and what was refused.
    let strict = [
        ("oauth_initiate", "initiate OAuth"),
        ("oauth_exchange", "exchange OAuth tokens"),
        ("oauth_poll", "poll OAuth tokens"),
        ("oauth_cancel", "cancel OAuth sessions"),
        ("refresh_token", "refresh tokens"),
    ];
    for (i, (op, what)) in strict.into_iter().enumerate() {
        let id = format!("s{i}");
        let msg = format!("Sandbox connections cannot {what}");
        let payload =
            json!({"provider": CANARY_PROVIDER, "session_id": "00".repeat(16), "code": "x"});
        assert_eq!(
            c.call(&id, op, payload),
            refusal(&id, "FORBIDDEN", &msg),
            "{op}"
        );
    }
    // Reads still work.
    let r = c.call("g", "get_token", json!({"provider": CANARY_PROVIDER}));
    assert_eq!(r["data"]["access_token"], CANARY_ACCESS);
    drop(c);
    w.during();
    w.stop(STRICT);
    t.finish(&[]);
}

/// As uid 65534, with the capability token: tries `sid` with every
/// session operation and prints the replies as one JSON array.
fn replies_as_nobody(py: &str, socket: &Path, token: &str, sid: &str) -> Value {
    let body = r#"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
send(s, {"v": 2, "op": "handshake", "payload": {"minVersion": 1, "maxVersion": 2, "capabilityToken": sys.argv[2]}})
out = [recv(s)]
sid = sys.argv[3]
for i, (op, payload) in enumerate([
    ("oauth_poll", {"session_id": sid}),
    ("oauth_exchange", {"session_id": sid, "code": "stolen"}),
    ("oauth_cancel", {"session_id": sid}),
]):
    send(s, {"v": 2, "id": "n%d" % i, "op": op, "payload": payload})
    out.append(recv(s))
print(json.dumps(out))
"#;
    let socket = socket.display().to_string();
    support::py_as_nobody(py, body, &[&socket, token, sid])
}

#[test]
fn session_ids_tried_from_another_peer_are_not_found() {
    const TEST: &str = "foreign_session";
    let stub = Stub::start();
    let t = Target::start_with(
        TEST,
        Some(&stub.anthropic_toml()),
        &["--allow-uid", "65534"],
        |_| {},
    );
    let w = t.witness();
    let mut owner = t.client();
    let r = owner.call(
        "i",
        "oauth_initiate",
        json!({"provider":"anthropic","bucket":"victim"}),
    );
    let sid = r["data"]["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();

    // Guessed ids, pipelined: never found.
    let mut guesser = t.client();
    let mut batch = Vec::new();
    for i in 0..1000u32 {
        let guess = format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
        batch.extend(encode(&request(
            &format!("g{i}"),
            "oauth_poll",
            json!({"session_id": guess}),
        )));
    }
    guesser.send_raw(&batch).expect("send");
    for _ in 0..1000 {
        let r = guesser.recv_frame();
        assert_eq!(r["code"], "SESSION_NOT_FOUND", "{r}");
    }
    drop(guesser);
    w.during();

    // The real id from a peer of another uid (a sandbox admitted with
    // --allow-uid, holding the capability token): not found, and its
    // cancel is a no-op.
    if euid() != 0 {
        skip(TEST, "cross-uid part needs root (setpriv to uid 65534)");
    } else if let Some(py) = support::nobody_python(&["/usr/bin/python3", "/usr/local/bin/python3"])
    {
        support::open_up(&t.scratch, &t.proxy);
        let token = t.token().expect("token");
        let seen = replies_as_nobody(&py, &t.proxy.socket, &token, &sid);
        assert_eq!(
            seen,
            json!([
                {"v":2,"op":"handshake","ok":true,"data":{"version":2}},
                refusal("n0", "SESSION_NOT_FOUND", "OAuth session not found"),
                refusal("n1", "SESSION_NOT_FOUND", "OAuth session not found"),
                {"id":"n2","ok":true,"data":{}},
            ])
        );
        assert_eq!(
            stub.exchanges(),
            0,
            "the stolen code never reached the provider"
        );
    } else {
        skip(TEST, "no python3 usable by uid 65534");
    }

    // The owner's session is intact: the login completes, once.
    let r = owner.call(
        "x",
        "oauth_exchange",
        json!({"session_id": sid, "code": "good"}),
    );
    assert_eq!(r["data"]["access_token"], "at-login-good", "{r}");
    assert!(r["data"].get("refresh_token").is_none(), "{r}");
    assert_eq!(stub.exchanges(), 1);
    let r = owner.call(
        "y",
        "oauth_exchange",
        json!({"session_id": sid, "code": "again"}),
    );
    assert_eq!(r["ok"], false, "{r}");
    drop(owner);
    w.stop(TEST);
    t.finish(&[]);
}

/// Sends `n` refresh_token requests for anthropic on `c`, then a probe
/// (`get_api_key`) and waits for the probe's reply: requests on one
/// connection are dispatched in order, so every refresh has joined the
/// refresh by then (their replies are held with the provider's answer).
fn refreshes_then_probe(c: &mut Client, tag: &str, n: usize) {
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend(encode(&request(
            &format!("{tag}-{i}"),
            "refresh_token",
            json!({"provider":"anthropic"}),
        )));
    }
    batch.extend(encode(&request(
        &format!("{tag}-probe"),
        "get_api_key",
        json!({"name": WITNESS_KEY}),
    )));
    c.send_raw(&batch).expect("send");
    let r = c.recv_frame();
    assert_eq!(r["id"], format!("{tag}-probe"), "{r}");
}

/// Reads `n` replies on `c`; each must be the refreshed token.
fn all_refreshed(c: &mut Client, n: usize, access: &str) {
    for _ in 0..n {
        let r = c.recv_frame();
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["data"]["access_token"], access, "{r}");
        assert!(!r.to_string().contains("rt-"), "a refresh token left: {r}");
    }
}

#[test]
fn refresh_storm_for_one_key_makes_one_provider_call() {
    const TEST: &str = "refresh_storm";
    let stub = Stub::start();
    let t = Target::refreshable(TEST, &stub);
    let w = t.witness();
    stub.hold();
    // 100 concurrent refreshes: 10 connections × 10.
    let mut conns: Vec<Client> = (0..10).map(|_| t.client()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        refreshes_then_probe(c, &format!("c{i}"), 10);
    }
    poll("the refresh at the stub", LIMIT, || stub.refreshes() >= 1);
    w.during();
    stub.release();
    for c in &mut conns {
        all_refreshed(c, 10, "at-refreshed-1");
    }
    // A second wave during the cooldown: the still-valid token, no call.
    for (i, c) in conns.iter_mut().enumerate() {
        let mut batch = Vec::new();
        for k in 0..10 {
            batch.extend(encode(&request(
                &format!("d{i}-{k}"),
                "refresh_token",
                json!({"provider":"anthropic"}),
            )));
        }
        c.send_raw(&batch).expect("send");
        all_refreshed(c, 10, "at-refreshed-1");
    }
    assert_eq!(stub.refreshes(), 1, "exactly one provider call");
    drop(conns);
    t.finish_rotated(w, TEST);
}

#[test]
fn refresh_storm_across_two_processes_makes_one_provider_call() {
    const TEST: &str = "refresh_storm_2proc";
    let stub = Stub::start();
    let t = Target::refreshable(TEST, &stub);
    // A second proxy on the same store.
    let config = t.config.clone().expect("config").display().to_string();
    let second = t.scratch.serve(&["--config", &config]);
    let w = t.witness();
    stub.hold();
    let mut first_conns: Vec<Client> = (0..5).map(|_| t.client()).collect();
    let mut second_conns: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = Client::connect(&second.socket).expect("connect");
            let r = c.handshake(Some(&second.token()));
            assert_eq!(r["ok"], true, "{r}");
            c
        })
        .collect();
    for (i, c) in first_conns.iter_mut().enumerate() {
        refreshes_then_probe(c, &format!("a{i}"), 10);
    }
    for (i, c) in second_conns.iter_mut().enumerate() {
        refreshes_then_probe(c, &format!("b{i}"), 10);
    }
    // One process calls the provider; the other waits on the store lock
    // and then re-reads the token instead of calling.
    poll("the refresh at the stub", LIMIT, || stub.refreshes() >= 1);
    w.during();
    stub.release();
    let readers: Vec<_> = first_conns
        .into_iter()
        .chain(second_conns)
        .map(|mut c| thread::spawn(move || all_refreshed(&mut c, 10, "at-refreshed-1")))
        .collect();
    for r in readers {
        r.join().expect("replies");
    }
    assert_eq!(stub.refreshes(), 1, "exactly one provider call");
    drop(second);
    t.finish_rotated(w, TEST);
}

#[test]
fn store_failures_mid_operation_answer_internal_error_and_lose_nothing() {
    const TEST: &str = "store_failure";
    let stub = Stub::start();
    // Host class (no token) so writes are allowed at all.
    let t = Target::start_with(
        TEST,
        Some(&stub.anthropic_toml()),
        &["--insecure-no-token"],
        |s| {
            s.seed_token("anthropic", "default", &stored_token("at-seed", "rt-seed"));
            s.seed_token("victim", "default", &stored_token("at-victim", "rt-victim"));
        },
    );
    let w = t.witness();
    let tokens = t.scratch.store().join("tokens");
    let victim_path = t.scratch.store().join(token_file("victim", "default"));
    let anthropic_path = t.scratch.store().join(token_file("anthropic", "default"));
    let victim_before = std::fs::read(&victim_path).expect("victim");
    let anthropic_before = std::fs::read(&anthropic_path).expect("anthropic");
    let Some(mut unwritable) = Unwritable::make(&tokens) else {
        skip(TEST, "cannot make the tokens directory unwritable here");
        drop(w);
        return;
    };
    let mut c = t.client();
    // Writes fail: a generic INTERNAL_ERROR (no path, no OS text).
    let r = c.call(
        "s",
        "save_token",
        json!({"provider":"victim","token": support::token_json("at-new")}),
    );
    assert_eq!(r, refusal("s", "INTERNAL_ERROR", "Internal error"));
    let r = c.call("r", "remove_token", json!({"provider":"victim"}));
    // Removing needs the directory too.
    assert_eq!(r, refusal("r", "INTERNAL_ERROR", "Internal error"));
    // The connection is healthy and the old token is served.
    let r = c.call("g", "get_token", json!({"provider":"victim"}));
    assert_eq!(r["data"]["access_token"], "at-victim", "{r}");
    assert_eq!(std::fs::read(&victim_path).expect("victim"), victim_before);
    w.during();

    // A refresh whose rotated token cannot be written: the token is
    // answered and kept in memory (the provider has rotated the refresh
    // token; dropping it would lose the login) and written back once the
    // store works again. Until then the file is the old one, intact.
    let r = c.call("f", "refresh_token", json!({"provider":"anthropic"}));
    assert_eq!(r["data"]["access_token"], "at-refreshed-1", "{r}");
    let r = c.call("g2", "get_token", json!({"provider":"anthropic"}));
    assert_eq!(r["data"]["access_token"], "at-refreshed-1", "{r}");
    assert_eq!(
        std::fs::read(&anthropic_path).expect("anthropic"),
        anthropic_before
    );
    let errors = t.proxy.stderr();
    assert!(
        errors.contains("\"op\":\"store\""),
        "store errors are logged on the host: {errors}"
    );

    // The store works again: the write-back lands, and writes succeed.
    unwritable.undo();
    poll("the refreshed token written back", LIMIT, || {
        t.scratch
            .open_store()
            .get_token("anthropic", "default", true)
            .ok()
            .flatten()
            .is_some_and(|tok| tok.refresh_token() == Some("rt-rotated-1"))
    });
    let r = c.call(
        "s2",
        "save_token",
        json!({"provider":"victim","token": support::token_json("at-new")}),
    );
    assert_eq!(r["ok"], true, "{r}");
    // save_token keeps the stored refresh token.
    assert_eq!(t.stored_refresh("victim").as_deref(), Some("rt-victim"));
    assert_eq!(stub.refreshes(), 1);
    drop(c);
    w.stop(TEST);
    t.finish(&[
        token_file("anthropic", "default"),
        token_file("victim", "default"),
    ]);
}
