//! The audit log (SPEC §7): one JSON line per event, and never a secret —
//! not the access token, the refresh token, an API key value, the
//! capability token, or a wrong token a client tried.

use std::fs;
use std::os::unix::fs::MetadataExt;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{self, Scratch, mode_of};

const ACCESS: &str = "AT-SENTINEL-7f3a";
const REFRESH: &str = "RT-SENTINEL-91bc";
const API_KEY: &str = "SK-SENTINEL-44de";
const WRONG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn seed(s: &Scratch) {
    s.seed_token(
        "anthropic",
        "default",
        &json!({"access_token":ACCESS,"refresh_token":REFRESH,"expiry":4_102_444_800_u64,"token_type":"Bearer"}),
    );
    s.seed_api_key("OPENAI", API_KEY);
}

/// A session over the socket that touches every secret.
fn session(p: &support::Proxy) {
    let mut c = p.sandbox_client();
    let r = c.call("1", "get_token", json!({"provider":"anthropic"}));
    assert_eq!(r["data"]["access_token"], ACCESS, "{r}");
    assert!(r["data"].get("refresh_token").is_none(), "{r}");
    let r = c.call("2", "get_api_key", json!({"name":"OPENAI"}));
    assert_eq!(r["data"]["key"], API_KEY, "{r}");
    let r = c.call("3", "get_token", json!({"provider":"missing"}));
    assert_eq!(r["code"], "FORBIDDEN", "{r}");
    drop(c);
    // A client with a wrong token.
    let mut bad = p.connect();
    assert_eq!(bad.handshake(Some(WRONG)), support::unauthorized_reply());
    bad.assert_closed();
}

fn assert_clean(log: &str, capability: &str) {
    for secret in [ACCESS, REFRESH, API_KEY, WRONG, capability] {
        assert!(!log.contains(secret), "audit log contains a secret:\n{log}");
    }
    // Not even a prefix of the capability token.
    assert!(!log.contains(&capability[..16]), "{log}");
}

#[test]
fn stderr_audit_lines_carry_no_secrets() {
    let s = Scratch::new();
    seed(&s);
    let mut p = s.serve(&[]);
    let capability = p.token();
    session(&p);
    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    let log = p.stderr();
    assert_clean(&log, &capability);

    // Every line is one JSON object with a timestamp and an op.
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["ts"].is_string(), "{line}");
        assert!(v["op"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
    }
    let events = p.audit_events();
    let ops: Vec<&str> = events.iter().filter_map(|e| e["op"].as_str()).collect();
    assert!(ops.contains(&"get_token"), "{ops:?}");
    assert!(ops.contains(&"get_api_key"), "{ops:?}");
    assert!(
        events.iter().any(|e| e["op"] == "get_token"
            && e["provider"] == "anthropic"
            && e["bucket"] == "default"),
        "{log}"
    );
    // The refused handshake is audited too.
    assert!(
        events
            .iter()
            .any(|e| e["op"] == "handshake_rejected" && e["level"] == "WARN"),
        "{log}"
    );
}

#[test]
fn audit_log_file() {
    let s = Scratch::new();
    seed(&s);
    let path = s.root().join("audit.jsonl");
    let mut p = s.serve(&["--audit-log", &path.display().to_string()]);
    let capability = p.token();
    session(&p);
    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(p.stderr(), "", "events go to the file, not stderr");
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(fs::metadata(&path).expect("stat").uid(), support::euid());
    let log = fs::read_to_string(&path).expect("read audit file");
    assert_clean(&log, &capability);
    assert!(
        support::audit_events(&log)
            .iter()
            .any(|e| e["op"] == "get_api_key"),
        "{log}"
    );
}

#[test]
fn audit_off_writes_nothing() {
    let s = Scratch::new();
    seed(&s);
    let mut p = s.serve(&["--audit-log", "off"]);
    session(&p);
    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(p.stderr(), "");
}
