//! Crash safety through the binary (SPEC §7): `credproxy stdio` streaming
//! `save_token` writes for three providers is SIGKILLed at a random point;
//! every token file left must parse, hold one of the values written for
//! its provider (never a mix of two), and be no older than the last write
//! the proxy acknowledged. Run on each file backend: `file` (the files
//! are read as JSON) and `encrypted-file` (each file is opened by the
//! library with the key: an envelope that opens is whole).

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::BuildHasher;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Scratch, request};

const PROVIDERS: [&str; 3] = ["alpha", "beta", "gamma"];
const ROUNDS: u64 = 4;
/// Requests kept in flight (below the engine's cap of 16).
const WINDOW: usize = 8;
/// Padding per token, derived from its value, so a torn or mixed file shows.
const PAD_LEN: usize = 16 * 1024;

fn value(round: u64, n: u64) -> String {
    format!("r{round}-n{n:06}")
}

fn pad_of(access: &str) -> String {
    access.repeat(PAD_LEN / access.len())
}

/// `n` of a value written in `round`.
fn n_of(round: u64, access: &str) -> u64 {
    access
        .strip_prefix(&format!("r{round}-n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{access:?} is not a value of round {round}"))
}

/// A pseudo-random number from the std hasher's per-process keys.
fn random_below(limit: u64, salt: u64) -> u64 {
    RandomState::new().hash_one(salt) % limit
}

/// Reads every token file in the store directly: `{file name: token}`.
/// With a key, each file must be an envelope that opens (through the
/// library) and holds no plaintext.
fn token_files(store: &Path, key: Option<&Path>) -> BTreeMap<String, Value> {
    let opened = key.map(|k| {
        let key = credproxy::store::key::load_file(k).expect("key");
        credproxy::store::FileStore::open_encrypted(store, key).expect("open encrypted")
    });
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(store.join("tokens")).expect("list tokens") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // a temp file of a write the kill interrupted
        }
        let bytes = fs::read(entry.path()).expect("read token file");
        let v: Value = match &opened {
            None => {
                let text = String::from_utf8(bytes).expect("utf-8");
                serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("token file {name} does not parse ({e}): {text:.200}")
                })
            }
            Some(enc) => {
                assert!(
                    !bytes.windows(3).any(|w| w == b"-n0"),
                    "{name}: no plaintext value on disk"
                );
                let provider = PROVIDERS
                    .iter()
                    .find(|p| name.starts_with(&hex(p)))
                    .expect("a provider's file");
                let token = enc
                    .get_token(provider, "default", true)
                    .unwrap_or_else(|e| panic!("{name} does not open: {e}"))
                    .expect("present");
                Value::Object(token.as_map().clone())
            }
        };
        out.insert(name, v);
    }
    out
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn sigkill_during_writes_leaves_whole_tokens_file() {
    sigkill_during_writes_leaves_whole_tokens(&["--store-backend", "file"], None);
}

#[test]
fn sigkill_during_writes_leaves_whole_tokens_encrypted_file() {
    let s = Scratch::new();
    let key = s.root().join("keys/store.key");
    let key_arg = key.display().to_string();
    s.run(&["store", "init-key", "--key-file", &key_arg], b"")
        .assert_code(0);
    sigkill_during_writes_leaves_whole_tokens(
        &[
            "--store-backend",
            "encrypted-file",
            "--store-key-file",
            &key_arg,
        ],
        Some(&key),
    );
}

fn sigkill_during_writes_leaves_whole_tokens(backend: &[&str], key: Option<&Path>) {
    let s = Scratch::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let store = s.root().join(format!("store{round}"));
        let mut args = vec![
            "--audit-log",
            "off",
            "--rate-per-sec",
            "1000000",
            "--rate-burst",
            "1000000",
        ];
        args.extend_from_slice(backend);
        let mut p = s.stdio_with_store(&store, &args);
        p.handshake();

        // Keep WINDOW saves in flight, recording what was sent and what
        // was acknowledged, until the kill.
        let kill_after = Duration::from_millis(30 + random_below(200, round));
        let mut sent: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut acked: BTreeMap<&str, u64> = BTreeMap::new();
        let mut id_to = BTreeMap::new();
        let mut n = 0u64;
        let mut outstanding = 0usize;
        let deadline = Instant::now() + kill_after;
        loop {
            while outstanding < WINDOW {
                let provider = PROVIDERS[(n % 3) as usize];
                let access = value(round, n);
                let token = json!({
                    "access_token": access,
                    "expiry": 4_102_444_800_u64,
                    "token_type": "Bearer",
                    "pad": pad_of(&access),
                });
                let id = format!("{n}");
                if p.send(&request(
                    &id,
                    "save_token",
                    json!({"provider":provider,"token":token}),
                ))
                .is_err()
                {
                    break;
                }
                sent.entry(provider).or_default().push(n);
                id_to.insert(id, (provider, n));
                outstanding += 1;
                n += 1;
            }
            if Instant::now() >= deadline {
                break;
            }
            let reply = p.recv_frame();
            let id = reply["id"].as_str().expect("id").to_owned();
            assert_eq!(reply["ok"], true, "{reply}");
            let (provider, k) = id_to.remove(&id).expect("a reply to a sent id");
            let last = acked.entry(provider).or_insert(k);
            *last = (*last).max(k);
            outstanding -= 1;
        }
        p.kill();

        // Every file parses and is exactly one version.
        let files = token_files(&store, key);
        let mut stored: BTreeMap<String, u64> = BTreeMap::new();
        for (name, token) in &files {
            let access = token["access_token"].as_str().expect("access_token");
            assert_eq!(token["pad"], pad_of(access), "{name}: torn or mixed");
            assert_eq!(token["token_type"], "Bearer");
            stored.insert(name.clone(), n_of(round, access));
        }
        // Read back through a fresh proxy: the store opens despite the
        // crash, and each provider's token is one of its written values and
        // not older than its last acknowledged write.
        let mut q_args = vec!["--audit-log", "off"];
        q_args.extend_from_slice(backend);
        let mut q = s.stdio_with_store(&store, &q_args);
        q.handshake();
        let listed = q.call("l", "list_providers", json!({}));
        let listed: Vec<&str> = listed["data"]["providers"]
            .as_array()
            .expect("providers")
            .iter()
            .map(|v| v.as_str().expect("name"))
            .collect();
        for provider in PROVIDERS {
            let r = q.call(provider, "get_token", json!({"provider":provider}));
            let Some(written) = sent.get(provider) else {
                assert_eq!(r["ok"], false, "{r}");
                continue;
            };
            if r["ok"] != true {
                assert_eq!(r["code"], "NOT_FOUND", "{r}");
                assert!(
                    !acked.contains_key(provider),
                    "{provider}: an acknowledged write was lost"
                );
                assert!(!listed.contains(&provider));
                continue;
            }
            assert!(listed.contains(&provider));
            let access = r["data"]["access_token"].as_str().expect("access_token");
            assert_eq!(r["data"]["pad"], pad_of(access), "{provider}: whole token");
            let k = n_of(round, access);
            assert!(
                written.contains(&k),
                "{provider}: {access} was written for it"
            );
            if let Some(&last) = acked.get(provider) {
                assert!(
                    k >= last,
                    "{provider}: holds n={k}, but n={last} was acknowledged"
                );
            }
        }
        q.close_stdin();
        assert_eq!(q.next(), None);
        assert_eq!(q.wait().code(), Some(0));
        // The store stays usable for the CLI too.
        let store_arg = store.display().to_string();
        let mut status_args = vec!["status", "--json", "--store", &store_arg];
        status_args.extend_from_slice(backend);
        let status = s.run(&status_args, b"");
        status.assert_code(0);
        assert!(
            !status.stdout.contains(&format!("r{round}-n")),
            "status shows no token values: {}",
            status.stdout
        );
        eprintln!(
            "round {round}: killed after {kill_after:?}, {n} sent, files {stored:?}, acked {acked:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
