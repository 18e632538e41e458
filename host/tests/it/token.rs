//! The capability token at the handshake (SPEC §3.2, §3.5): without it or
//! with a wrong one the reply is `UNAUTHORIZED` and the connection closes;
//! with it the connection is a sandbox; `--insecure-no-token` gives host
//! class connections and writes no token file.

use std::fs;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::{self, Scratch, exists, handshake_frame, token_json, unauthorized_reply};

/// A store with a token and an API key, and a proxy on it.
fn seeded() -> (Scratch, support::Proxy) {
    let s = Scratch::seeded("at-seeded", "rt-seeded", "OPENAI", "sk-seeded");
    let p = s.serve(&[]);
    (s, p)
}

#[test]
fn no_token_is_unauthorized_then_closed() {
    let (_s, p) = seeded();
    let mut c = p.connect();
    assert_eq!(c.handshake(None), unauthorized_reply());
    c.assert_closed();
}

#[test]
fn wrong_token_is_unauthorized_then_closed() {
    let (_s, p) = seeded();
    let right = p.token();
    // Same shape, one character off; and a prefix; and an empty string.
    let mut wrong = right.clone().into_bytes();
    wrong[63] = if wrong[63] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).expect("hex");
    for bad in [wrong.as_str(), &right[..32], ""] {
        let mut c = p.connect();
        assert_eq!(
            c.handshake(Some(bad)),
            unauthorized_reply(),
            "token {bad:?}"
        );
        c.assert_closed();
    }
    // The token with its file's newline is not the token either.
    let mut c = p.connect();
    assert_eq!(
        c.handshake(Some(&format!("{right}\n"))),
        unauthorized_reply()
    );
    c.assert_closed();
}

#[test]
fn request_before_handshake_is_refused() {
    let (_s, p) = seeded();
    let token = p.token();
    // A v1 client that sends a request first, without a token.
    let mut c = p.connect();
    c.send(&json!({"v":1,"id":"1","op":"get_token","payload":{"provider":"anthropic"}}))
        .expect("send");
    assert_eq!(c.recv_frame(), unauthorized_reply());
    c.assert_closed();
    // With the token but not a handshake.
    let mut c = p.connect();
    c.send(&json!({"v":2,"id":"1","op":"get_token","payload":{"capabilityToken":token}}))
        .expect("send");
    assert_eq!(
        c.recv_frame(),
        json!({"v":2,"op":"handshake","ok":false,"code":"INVALID_REQUEST","error":"Handshake required"})
    );
    c.assert_closed();
}

#[test]
fn right_token_gives_a_sandbox_connection() {
    let (_s, p) = seeded();
    let mut c = p.connect();
    assert_eq!(
        c.handshake(Some(&p.token())),
        json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}})
    );
    // Sandbox: lists are empty even though a token and a key are stored.
    assert_eq!(
        c.call("1", "list_providers", json!({})),
        json!({"id":"1","ok":true,"data":{"providers":[]}})
    );
    assert_eq!(
        c.call("2", "list_api_keys", json!({})),
        json!({"id":"2","ok":true,"data":{"keys":[]}})
    );
    assert_eq!(
        c.call("3", "list_buckets", json!({"provider":"anthropic"})),
        json!({"id":"3","ok":true,"data":{"buckets":[]}})
    );
    // Writes are forbidden.
    let r = c.call(
        "4",
        "save_token",
        json!({"provider":"anthropic","token":token_json("at-evil")}),
    );
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "FORBIDDEN", "{r}");
    let r = c.call("5", "remove_token", json!({"provider":"anthropic"}));
    assert_eq!(r["code"], "FORBIDDEN", "{r}");
    let r = c.call("6", "has_api_key", json!({"name":"OPENAI"}));
    assert_eq!(r["code"], "FORBIDDEN", "{r}");
    // Reads of existing entries work, without the refresh token.
    let r = c.call("7", "get_token", json!({"provider":"anthropic"}));
    assert_eq!(
        r,
        json!({"id":"7","ok":true,"data":{"access_token":"at-seeded","expiry":4_102_444_800_u64,"token_type":"Bearer"}})
    );
    let r = c.call("8", "get_api_key", json!({"name":"OPENAI"}));
    assert_eq!(r, json!({"id":"8","ok":true,"data":{"key":"sk-seeded"}}));
    // Missing entries are denied, not reported missing.
    let r = c.call("9", "get_token", json!({"provider":"gemini"}));
    assert_eq!(
        r,
        json!({"id":"9","ok":false,"code":"FORBIDDEN","error":"Access denied"})
    );
    let r = c.call("10", "get_api_key", json!({"name":"NOPE"}));
    assert_eq!(r["code"], "FORBIDDEN", "{r}");
    // The token was not overwritten by the refused save.
    let r = c.call("11", "get_token", json!({"provider":"anthropic"}));
    assert_eq!(r["data"]["access_token"], "at-seeded");
}

#[test]
fn v1_handshake_with_token_negotiates_version_1() {
    let (_s, p) = seeded();
    let mut c = p.connect();
    c.send(&json!({"v":1,"op":"handshake","payload":{"capabilityToken":p.token()}}))
        .expect("send");
    assert_eq!(
        c.recv_frame(),
        json!({"v":1,"op":"handshake","ok":true,"data":{"version":1}})
    );
}

#[test]
fn insecure_no_token_gives_host_class() {
    let s = Scratch::new();
    s.seed_token("anthropic", "default", &token_json("at-seeded"));
    let mut p = s.serve(&["--insecure-no-token"]);
    let keys: Vec<&str> = p.lines.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["CREDPROXY_SOCKET", "LLXPRT_CREDENTIAL_SOCKET"]);
    assert!(p.token_file().is_none());
    let entries: Vec<String> = fs::read_dir(p.instance_dir())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["proxy.sock"], "no token file");

    let mut c = p.connect();
    c.send(&handshake_frame(None)).expect("send");
    assert_eq!(
        c.recv_frame(),
        json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}})
    );
    assert_eq!(
        c.call("1", "list_providers", json!({})),
        json!({"id":"1","ok":true,"data":{"providers":["anthropic"]}})
    );
    assert_eq!(
        c.call(
            "2",
            "save_token",
            json!({"provider":"gemini","bucket":"work","token":token_json("at-gemini")})
        ),
        json!({"id":"2","ok":true,"data":{}})
    );
    assert_eq!(
        c.call("3", "list_providers", json!({})),
        json!({"id":"3","ok":true,"data":{"providers":["anthropic","gemini"]}})
    );
    assert_eq!(
        c.call("4", "list_buckets", json!({"provider":"gemini"})),
        json!({"id":"4","ok":true,"data":{"buckets":["work"]}})
    );
    assert_eq!(
        c.call(
            "5",
            "get_token",
            json!({"provider":"gemini","bucket":"work"})
        )["data"]["access_token"],
        "at-gemini"
    );
    // A token sent anyway is not required and does not hurt.
    let mut c2 = p.connect();
    c2.send(&handshake_frame(Some(&"ab".repeat(32))))
        .expect("send");
    assert_eq!(c2.recv_frame()["ok"], true);
    drop((c, c2));

    let dir = p.instance_dir();
    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    assert!(!exists(&dir));
    // Written through the socket, persisted in the store.
    let status = s.run(&["status", "--json", "--store", &s.store_arg()], b"");
    status.assert_code(0);
    status.assert_stdout_has(&["\"gemini\""]);
}
