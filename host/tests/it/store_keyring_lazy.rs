//! A proxy on a `keyring` store that starts before its Secret Service (a
//! systemd user service started before gnome-keyring on a desktop
//! login): `serve` starts with one warning, what needs a keyring item
//! answers `STORE_UNAVAILABLE` with a `retryAfter` while the rest is
//! served, nothing in the store changes meanwhile, and once the bus and
//! gnome-keyring appear at the address everything works without a
//! restart; a Secret Service that goes away later is found again the same
//! way. One-shot commands keep failing at once (exit 3) without one.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::keyring::TestKeyring;
use crate::support::{self, Client, Proxy, Scratch, StdioProc, run_bounded, wait_for};

const SECRET: &str = "at-LAZY-SENTINEL-7e41";
const SECRET_KEY: &str = "sk-LAZY-SENTINEL-92ab";

/// How long a reconnect may take: the longest back-off pause (5 s) and
/// one connect, with room for a loaded machine.
const RECONNECT_LIMIT: Duration = Duration::from_secs(20);

/// The stamps and names of the store (the lock files, made on first use
/// and never written with content, are left out).
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for sub in ["tokens", "keys", "meta"] {
        for entry in fs::read_dir(root.join(sub)).expect("ls").flatten() {
            let name = format!("{sub}/{}", entry.file_name().to_string_lossy());
            files.push((name, fs::read(entry.path()).expect("read")));
        }
    }
    files.push((
        "keyring.check".into(),
        fs::read(root.join("keyring.check")).expect("check"),
    ));
    files.sort();
    files
}

/// A keyring store with one token and one API key, written while `kr`
/// runs.
fn seeded_store(kr: &TestKeyring) -> Scratch {
    let s = Scratch::new();
    s.write_default_config("store_backend = \"keyring\"\n");
    let store = s.store_arg();
    let mut cmd = s.command(&["stdio", "--store", store.as_str(), "--audit-log", "off"]);
    kr.apply(&mut cmd).stdin(Stdio::piped());
    let mut p = StdioProc::spawn(cmd);
    p.handshake();
    let saved = p.call(
        "1",
        "save_token",
        json!({"provider": "anthropic", "token": support::token_json(SECRET)}),
    );
    assert_eq!(saved["ok"], true, "{saved}");
    p.close_stdin();
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    let mut cmd = s.command(&["key", "set", "OPENAI", "--store", store.as_str()]);
    kr.apply(&mut cmd).stdin(Stdio::piped());
    run_bounded(cmd, format!("{SECRET_KEY}\n").as_bytes()).assert_code(0);
    s
}

fn assert_unavailable(r: &Value, what: &str) {
    assert_eq!(r["ok"], false, "{what}: {r}");
    assert_eq!(r["code"], "STORE_UNAVAILABLE", "{what}: {r}");
    assert!(
        r["retryAfter"]
            .as_u64()
            .is_some_and(|s| (1..=5).contains(&s)),
        "{what}: {r}"
    );
}

/// Polls `get_api_key` until it returns the key.
fn wait_for_key(c: &mut Client, what: &str) {
    wait_for(what, RECONNECT_LIMIT, || {
        let r = c.call("poll", "get_api_key", json!({"name": "OPENAI"}));
        if r["ok"] != true {
            assert_unavailable(&r, "while reconnecting");
        }
        r["ok"] == true
    });
}

#[test]
fn serve_starts_before_the_secret_service_and_connects_when_it_appears() {
    let mut kr = TestKeyring::fresh();
    let s = seeded_store(&kr);
    kr.stop_all();
    let before = snapshot(&s.store());

    // One-shot commands fail at once, as before.
    let mut status = s.command(&["status", "--store", &s.store_arg()]);
    kr.apply(&mut status);
    run_bounded(status, b"").assert_stderr(3, &["OS keyring"]);

    let store = s.store_arg();
    let mut cmd = s.command(&["serve", "--store", store.as_str(), "--audit-log", "off"]);
    kr.apply(&mut cmd);
    let mut p = match Proxy::spawn(cmd, true) {
        Ok(p) => p,
        Err(e) => panic!("serve did not start: {:?}\n{}", e.status, e.stderr),
    };
    let warning = p.wait_for_stderr("credproxy: warning:");
    assert_eq!(
        warning.matches("credproxy: warning:").count(),
        1,
        "{warning}"
    );
    assert!(warning.contains("STORE_UNAVAILABLE"), "{warning}");

    let mut c = p.sandbox_client();
    let asked = Instant::now();
    let key = c.call("1", "get_api_key", json!({"name": "OPENAI"}));
    eprintln!(
        "figures: STORE_UNAVAILABLE answered in {:?}",
        asked.elapsed()
    );
    assert_unavailable(&key, "get_api_key");
    let token = c.call("2", "get_token", json!({"provider": "anthropic"}));
    assert_unavailable(&token, "get_token");
    // `stdio` (host class, which may write) opens the same way, `auto`
    // too on a store marked as a keyring store; a write fails before
    // anything reaches the files.
    let mut cmd = s.command(&[
        "stdio",
        "--store",
        store.as_str(),
        "--store-backend",
        "auto",
        "--audit-log",
        "off",
    ]);
    kr.apply(&mut cmd).stdin(Stdio::piped());
    let mut host = StdioProc::spawn(cmd);
    host.handshake();
    let saved = host.call(
        "1",
        "save_token",
        json!({"provider": "gemini", "token": support::token_json("at-LAZY-new")}),
    );
    assert_unavailable(&saved, "save_token");
    let removed = host.call("2", "remove_token", json!({"provider": "anthropic"}));
    assert_unavailable(&removed, "remove_token");
    // What needs no keyring item is served from the files.
    let providers = host.call("3", "list_providers", json!({}));
    assert_eq!(
        providers["data"]["providers"],
        json!(["anthropic"]),
        "{providers}"
    );
    let keys = host.call("4", "list_api_keys", json!({}));
    assert_eq!(keys["data"]["keys"], json!(["OPENAI"]), "{keys}");
    host.close_stdin();
    assert_eq!(host.wait().code(), Some(0), "{}", host.stderr());
    assert_eq!(
        host.stderr().matches("credproxy: warning:").count(),
        1,
        "{}",
        host.stderr()
    );
    assert_eq!(snapshot(&s.store()), before, "nothing written while away");
    // The sandbox's handshake and its other requests are served as usual.
    let listed = c.call("3", "list_providers", json!({}));
    assert_eq!(listed["ok"], true, "{listed}");

    let started = Instant::now();
    kr.restart();
    let up = started.elapsed();
    wait_for_key(&mut c, "the key once the Secret Service runs");
    eprintln!(
        "figures: bus and gnome-keyring up in {up:?}, the key served {:?} after they were",
        started.elapsed() - up
    );
    let key = c.call("6", "get_api_key", json!({"name": "OPENAI"}));
    assert_eq!(key["data"]["key"], SECRET_KEY, "{key}");
    let token = c.call("7", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(token["data"]["access_token"], SECRET, "{token}");

    // It goes away and comes back: the same again, no restart.
    kr.stop_daemon();
    wait_for(
        "STORE_UNAVAILABLE once gnome-keyring is gone",
        RECONNECT_LIMIT,
        || c.call("8", "get_api_key", json!({"name": "OPENAI"}))["code"] == "STORE_UNAVAILABLE",
    );
    kr.restart();
    wait_for_key(&mut c, "the key once gnome-keyring is back");

    // Restarted between two calls: the old session is gone
    // (`NoSession`), which reads as unavailable, and the next call
    // connects anew.
    kr.stop_daemon();
    kr.restart();
    wait_for_key(&mut c, "the key after gnome-keyring restarted");
    // The bus itself goes away and comes back.
    kr.stop_all();
    let r = c.call("9", "get_api_key", json!({"name": "OPENAI"}));
    assert_unavailable(&r, "get_api_key without a bus");
    kr.restart();
    wait_for_key(&mut c, "the key once the bus is back");

    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    let stderr = p.stderr();
    assert_eq!(stderr.matches("credproxy: warning:").count(), 1, "{stderr}");
    assert!(
        !stderr.contains(SECRET) && !stderr.contains(SECRET_KEY),
        "{stderr}"
    );
}

#[test]
fn serve_never_makes_a_new_keyring_store_without_a_secret_service() {
    let bus = TestKeyring::bus_only();
    let s = Scratch::new();
    let store = s.store_arg();
    let mut cmd = s.command(&[
        "serve",
        "--store",
        store.as_str(),
        "--store-backend",
        "keyring",
        "--audit-log",
        "off",
    ]);
    bus.apply(&mut cmd);
    let Err(ran) = Proxy::spawn(cmd, true) else {
        panic!("serve started on a new keyring store without a keyring");
    };
    ran.assert_stderr(3, &["keyring backend needs the OS keyring"]);
    assert!(
        !support::exists(&s.store().join("keyring.check")),
        "not marked as a keyring store"
    );
}
