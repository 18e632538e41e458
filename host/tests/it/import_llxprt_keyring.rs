//! The keyring half of `credproxy import llxprt`, against a real Secret
//! Service: a copy of the gnome-keyring llxprt-code itself wrote
//! (host/tests/fixtures/llxprt-store/keyring/), served by gnome-keyring on
//! a private bus ([`TestKeyring`]). The binary finds the bus only through
//! `DBUS_SESSION_BUS_ADDRESS`, so every run is a child with
//! [`TestKeyring::apply`]. gnome-keyring missing fails these tests.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::import_llxprt::{HOST, USER, all_secrets, copy_tree, expected, fixtures, oauth_dir};
use crate::support::keyring::{TestKeyring, require_tool};
use crate::support::{Ran, Scratch, run_bounded};

/// The keyring items of the fixture that are imported (not the machine
/// secret).
fn keyring_items() -> Vec<Value> {
    let items: Vec<Value> = expected()["keyring"]
        .as_array()
        .expect("keyring list")
        .iter()
        .filter(|i| i["kind"] != "machine-secret")
        .cloned()
        .collect();
    assert_eq!(items.len(), 7, "five tokens and two keys");
    items
}

/// Every secret of the fixtures: the files' and the keyring's (tokens,
/// refresh and id tokens, API keys, the keyring's machine secret in base64
/// and hex).
fn every_secret() -> Vec<String> {
    let mut out = all_secrets();
    for item in expected()["keyring"].as_array().expect("keyring list") {
        if item["kind"] == "oauth-token" {
            for field in ["access_token", "refresh_token", "id_token"] {
                if let Some(v) = item["parsed"].get(field).and_then(Value::as_str) {
                    out.push(v.to_owned());
                }
            }
        } else {
            out.push(item["plaintext"].as_str().expect("plaintext").to_owned());
            if let Some(hex) = item["parsed"].as_str() {
                out.push(hex.to_owned());
            }
        }
    }
    out
}

fn assert_no_secret(ran: &Ran) {
    for secret in every_secret() {
        for (name, text) in [("stdout", &ran.stdout), ("stderr", &ran.stderr)] {
            assert!(!text.contains(&secret), "{name} shows {secret}:\n{text}");
        }
    }
}

/// `credproxy import llxprt ARGS --store S` with `prepare` applied to
/// the command (the keyring's bus), bounded; checked for secrets.
fn import_with(s: &Scratch, args: &[&str], prepare: impl FnOnce(&mut Command)) -> Ran {
    let store = s.store_arg();
    let mut all = vec![
        "import",
        "llxprt",
        "--hostname",
        HOST,
        "--user",
        USER,
        "--store",
        &store,
    ];
    all.extend_from_slice(args);
    let mut cmd = s.command(&all);
    // With a key file given, `auto` makes the new store encrypted-file
    // rather than a keyring store in the test's keyring (which the
    // in-process checks below could not open: they have no bus).
    let key = s.default_key_file();
    if !key.exists() {
        let key_arg = key.display().to_string();
        s.run(&["store", "init-key", "--key-file", &key_arg], b"")
            .assert_code(0);
    }
    cmd.env("CREDPROXY_STORE_KEY_FILE", &key);
    prepare(&mut cmd);
    let ran = run_bounded(cmd, b"");
    assert_no_secret(&ran);
    ran
}

fn import(s: &Scratch, keyring: &TestKeyring, args: &[&str]) -> Ran {
    import_with(s, args, |c| {
        keyring.apply(c);
    })
}

/// The store holds each keyring item of `items` as llxprt wrote it: the
/// token object equal to the plaintext JSON (every string byte for byte),
/// the key exactly; and nothing else.
fn assert_store_holds_keyring(s: &Scratch, items: &[Value]) {
    let store = s.open_store();
    for item in items {
        if item["kind"] == "oauth-token" {
            let (p, b) = (
                item["provider"].as_str().expect("provider"),
                item["bucket"].as_str().expect("bucket"),
            );
            let token = store
                .get_token(p, b, true)
                .expect("read token")
                .unwrap_or_else(|| panic!("{p}/{b} missing"));
            let stored = Value::Object(token.as_map().clone());
            let written: Value =
                serde_json::from_str(item["plaintext"].as_str().expect("plaintext"))
                    .expect("plaintext is JSON");
            assert_eq!(stored, written, "{p}/{b}");
            assert_eq!(stored, item["parsed"], "{p}/{b}");
            let access = stored["access_token"].as_str().expect("access_token");
            assert!(access.ends_with("-keyring"), "{p}/{b}: {access}");
        } else {
            let name = item["key_name"].as_str().expect("key_name");
            let key = store
                .get_api_key(name)
                .expect("read key")
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(
                key.expose(),
                item["plaintext"].as_str().expect("key"),
                "{name}"
            );
            assert!(key.expose().ends_with("-keyring"), "{name}");
        }
    }
    let tokens = items.iter().filter(|i| i["kind"] == "oauth-token").count();
    let listed: usize = store
        .list_providers()
        .expect("providers")
        .iter()
        .map(|p| store.list_buckets(p).expect("buckets").len())
        .sum();
    assert_eq!(listed, tokens, "no other token was stored");
}

#[test]
fn keyring_only_imports_every_entry_llxprt_wrote_byte_for_byte() {
    let keyring = TestKeyring::llxprt_fixture();
    let s = Scratch::new();
    let start = Instant::now();
    let ran = import(&s, &keyring, &["--keyring-only"]);
    let took = start.elapsed();
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "llxprt keyring: Secret Service, 7 entries",
        "imported token anthropic/default (Secret Service, expires 2027-01-01T00:00:00Z, refresh token: yes)",
        "imported token anthropic/work (Secret Service, expires 2026-01-01T00:00:00Z (expired), refresh token: yes)",
        "imported token codex/default (Secret Service",
        "imported token gemini/default (Secret Service",
        "imported token qwen/default (Secret Service, expires 2027-01-01T03:00:00Z, refresh token: no)",
        "imported API key openai (Secret Service)",
        "imported API key my-key (Secret Service)",
        "summary: 7 imported, 0 replaced, 0 already in credproxy (kept), 0 skipped because of errors\n",
    ]);
    assert!(
        !ran.stdout.contains("llxprt data directory"),
        "{}",
        ran.stdout
    );
    assert_store_holds_keyring(&s, &keyring_items());
    eprintln!("figure: import of the llxprt fixture keyring (7 entries, --keyring-only): {took:?}");

    // Idempotent: a second run imports nothing and changes nothing.
    let again = import(&s, &keyring, &["--keyring-only"]);
    again.assert_code(0);
    again.assert_stdout_has(&[
        "kept token anthropic/default: already in credproxy",
        "summary: 0 imported, 0 replaced, 7 already in credproxy (kept), 0 skipped",
    ]);
    assert_store_holds_keyring(&s, &keyring_items());
}

#[test]
fn keyring_dry_run_lists_without_secrets_and_writes_nothing() {
    let keyring = TestKeyring::llxprt_fixture();
    let s = Scratch::new();
    let ran = import(&s, &keyring, &["--keyring-only", "--dry-run"]);
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "would import token anthropic/default (Secret Service, expires 2027-01-01T00:00:00Z, refresh token: yes)",
        "would import token qwen/default (Secret Service, expires 2027-01-01T03:00:00Z, refresh token: no)",
        "would import API key my-key (Secret Service)",
        "dry run: 7 would be imported",
        "nothing written",
    ]);
    assert!(!s.store().exists(), "a dry run created the store");
    let json = import(&s, &keyring, &["--keyring-only", "--dry-run", "--json"]);
    json.assert_code(0);
    let v: Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["keyring"]["status"], "read", "{v}");
    assert_eq!(v["keyring"]["backend"], "Secret Service", "{v}");
    assert_eq!(v["data_dir"], Value::Null, "{v}");
    let entries = v["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 7, "{v}");
    for e in entries {
        assert_eq!(e["source"], "keyring", "{e}");
        assert_eq!(e["keyring"], "Secret Service", "{e}");
        assert_eq!(e["result"], "would_import", "{e}");
    }
    let qwen = entries
        .iter()
        .find(|e| e["account"] == "qwen:default")
        .expect("qwen");
    assert_eq!(qwen["provider"], "qwen");
    assert_eq!(qwen["bucket"], "default");
    assert_eq!(qwen["has_refresh_token"], false);
    assert_eq!(qwen["expiry"].as_f64(), Some(1_798_772_400.0));
    assert!(!s.store().exists(), "a dry run created the store");
}

#[test]
fn only_and_overwrite_work_on_keyring_entries() {
    let keyring = TestKeyring::llxprt_fixture();
    let s = Scratch::new();
    // The files first (different values), then the keyring over them.
    import_with(
        &s,
        &[
            "--files-only",
            "--from",
            &fixtures().join("v2").display().to_string(),
        ],
        |_| {},
    )
    .assert_code(0);
    let kept = import(
        &s,
        &keyring,
        &["--keyring-only", "--only", "anthropic,openai,nosuch"],
    );
    kept.assert_code(0);
    kept.assert_stdout_has(&[
        "kept token anthropic/default: already in credproxy",
        "kept token anthropic/work",
        "kept API key openai",
        "--only nosuch: no such llxprt entry",
        "summary: 0 imported, 0 replaced, 3 already in credproxy (kept)",
    ]);
    assert!(!kept.stdout.contains("codex"), "{}", kept.stdout);
    let store = s.open_store();
    let t = store
        .get_token("anthropic", "default", true)
        .expect("read")
        .expect("token");
    assert_eq!(
        t.as_map()["access_token"],
        "fixture-access-anthropic-default"
    );
    drop(store);

    let replaced = import(
        &s,
        &keyring,
        &[
            "--keyring-only",
            "--only",
            "anthropic:default,my-key",
            "--overwrite",
        ],
    );
    replaced.assert_code(0);
    replaced.assert_stdout_has(&[
        "replaced token anthropic/default (Secret Service",
        "replaced API key my-key (Secret Service)",
        "summary: 0 imported, 2 replaced",
    ]);
    let items = keyring_items();
    let picked: Vec<Value> = items
        .iter()
        .filter(|i| i["account"] == "anthropic:default" || i["account"] == "my-key")
        .cloned()
        .collect();
    let store = s.open_store();
    for item in &picked {
        if item["kind"] == "oauth-token" {
            let t = store
                .get_token("anthropic", "default", true)
                .expect("read")
                .expect("token");
            assert_eq!(Value::Object(t.as_map().clone()), item["parsed"]);
        } else {
            let k = store.get_api_key("my-key").expect("read").expect("key");
            assert_eq!(k.expose(), item["plaintext"].as_str().expect("key"));
        }
    }
    // The others are still the files' values.
    let t = store
        .get_token("anthropic", "work", true)
        .expect("read")
        .expect("token");
    assert_eq!(t.as_map()["access_token"], "fixture-access-anthropic-work");
}

/// A copy of the v2 tree where two files hold accounts the keyring does
/// not have (`gemini:extra`, key `extra-key`): only they are read from
/// files.
fn v2_with_extra_accounts(s: &Scratch) -> std::path::PathBuf {
    let data = s.root().join("llxprt");
    copy_tree(&fixtures().join("v2"), &data);
    let oauth = oauth_dir(&data);
    std::fs::rename(
        oauth.join("gemini%3Adefault.enc"),
        oauth.join("gemini%3Aextra.enc"),
    )
    .expect("rename");
    let keys = data.join("provider-keys");
    std::fs::rename(keys.join("my-key.enc"), keys.join("extra-key.enc")).expect("rename");
    data
}

fn v2_plaintext(account: &str) -> Value {
    let files = expected()["files"].as_array().expect("files").clone();
    let f = files
        .iter()
        .find(|f| f["tree"] == "v2" && f["account"] == account)
        .unwrap_or_else(|| panic!("{account}"));
    if f["kind"] == "oauth-token" {
        f["plaintext_json"].clone()
    } else {
        f["plaintext"].clone()
    }
}

#[test]
fn default_sources_keyring_wins_and_v2_files_open_with_the_file_secret() {
    let keyring = TestKeyring::llxprt_fixture();
    let s = Scratch::new();
    let data = v2_with_extra_accounts(&s);
    let from = data.display().to_string();
    let ran = import(&s, &keyring, &["--from", &from]);
    ran.assert_code(0);
    let shadowed = |file: &str, what: &str| {
        format!(
            "ignored {}: llxprt reads the Secret Service entry for {what}",
            data.join(file).display()
        )
    };
    ran.assert_stdout_has(&[
        &format!("llxprt data directory: {from}"),
        "llxprt keyring: Secret Service, 7 entries",
        "imported token anthropic/default (Secret Service",
        "imported token gemini/default (Secret Service",
        "imported API key my-key (Secret Service)",
        // Only in files: v2, opened with <data>/machine_secret after the
        // keyring's (another) secret failed.
        "imported token gemini/extra (v2",
        "imported API key extra-key (v2)",
        &shadowed("secure-store/llxprt-code-oauth/anthropic%3Adefault.enc", "token anthropic/default"),
        &shadowed("secure-store/llxprt-code-oauth/qwen%3Adefault.enc", "token qwen/default"),
        &shadowed("provider-keys/openai.enc", "API key openai"),
        "summary: 9 imported, 0 replaced, 0 already in credproxy (kept), 0 skipped because of errors\n",
    ]);
    assert_eq!(
        ran.stdout.matches("\nignored ").count(),
        5,
        "{}",
        ran.stdout
    );
    let store = s.open_store();
    let extra = store
        .get_token("gemini", "extra", true)
        .expect("read")
        .expect("token");
    assert_eq!(
        Value::Object(extra.as_map().clone()),
        v2_plaintext("gemini:default")
    );
    let key = store.get_api_key("extra-key").expect("read").expect("key");
    assert_eq!(key.expose(), v2_plaintext("my-key").as_str().expect("key"));
    drop(store);
    // The keyring's values won for the accounts in both places.
    let mut items = keyring_items();
    items.push(serde_json::json!({
        "kind": "oauth-token", "provider": "gemini", "bucket": "extra",
        "plaintext": v2_plaintext("gemini:default").to_string(),
        "parsed": v2_plaintext("gemini:default"),
    }));
    // (gemini:extra's access token does not end in -keyring.)
    let store = s.open_store();
    for item in &items[..7] {
        if item["kind"] == "oauth-token" {
            let t = store
                .get_token(
                    item["provider"].as_str().expect("p"),
                    item["bucket"].as_str().expect("b"),
                    true,
                )
                .expect("read")
                .expect("token");
            assert_eq!(Value::Object(t.as_map().clone()), item["parsed"]);
        } else {
            let k = store
                .get_api_key(item["key_name"].as_str().expect("n"))
                .expect("read")
                .expect("key");
            assert_eq!(k.expose(), item["plaintext"].as_str().expect("key"));
        }
    }
}

#[test]
fn a_locked_keyring_is_reported_and_the_files_still_imported() {
    let keyring = TestKeyring::llxprt_fixture_locked();
    let s = Scratch::new();
    let from = fixtures().join("v2").display().to_string();
    let start = Instant::now();
    let ran = import(&s, &keyring, &["--from", &from]);
    let took = start.elapsed();
    ran.assert_code(4);
    ran.assert_stdout_has(&[
        "llxprt keyring: skipped Secret Service after 0 entries: the OS keyring is locked",
        "the files were still read",
        "imported token anthropic/default (v2",
        "imported API key my-key (v2)",
        "summary: 7 imported, 0 replaced, 0 already in credproxy (kept), 0 skipped because of errors; the keyring was skipped",
    ]);
    super::import_llxprt::assert_store_holds(&s, "v2");
    // No prompt is waited for: far below the keyring module's call limit.
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let only = import(&s, &keyring, &["--keyring-only"]);
    only.assert_code(4);
    only.assert_stdout_has(&["llxprt keyring: skipped Secret Service", "locked"]);
    let json = import(&s, &keyring, &["--keyring-only", "--json"]);
    json.assert_code(4);
    let v: Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["keyring"]["status"], "failed", "{v}");
    assert_eq!(v["keyring"]["skipped"], true, "{v}");
}

#[test]
fn files_only_never_touches_the_bus() {
    let s = Scratch::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = format!("unix:path={}", dir.path().join("no-such-bus").display());
    let from = fixtures().join("v2").display().to_string();
    let ran = import_with(&s, &["--files-only", "--from", &from], |c| {
        c.env("DBUS_SESSION_BUS_ADDRESS", &bogus);
    });
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "llxprt keyring: not read (--files-only)",
        "summary: 7 imported",
    ]);
    // With a keyring that holds every account, --files-only still takes
    // the files' values.
    let keyring = TestKeyring::llxprt_fixture();
    let s = Scratch::new();
    let ran = import(&s, &keyring, &["--files-only", "--from", &from]);
    ran.assert_code(0);
    assert!(!ran.stdout.contains("Secret Service"), "{}", ran.stdout);
    super::import_llxprt::assert_store_holds(&s, "v2");
}

#[test]
fn keyring_flags_conflict() {
    let s = Scratch::new();
    let ran = import_with(&s, &["--keyring-only", "--files-only"], |_| {});
    ran.assert_code(2);
    let ran = import_with(&s, &["--keyring-only", "--from", "/nonexistent"], |_| {});
    ran.assert_code(2);
}

#[test]
fn no_secret_service_falls_back_to_the_kernel_keyring() {
    let keyctl = require_tool("keyctl", "keyutils");
    let keyctl = keyctl.to_str().expect("utf-8 path");
    let s = Scratch::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = format!("unix:path={}", dir.path().join("no-such-bus").display());
    let token = r#"{"access_token":"kernel-access-secret","refresh_token":"kernel-refresh-secret","expiry":1798761600,"token_type":"Bearer"}"#;
    // A fresh anonymous session keyring holding what llxprt's library
    // stores there without a Secret Service, then the binary in it.
    let script = r#"printf %s "$1" | keyctl padd user "keyring:anthropic:kernel@llxprt-code-oauth" @s >/dev/null &&
printf %s "$2" | keyctl padd user "keyring:kernel-key@llxprt-code-provider-keys" @s >/dev/null &&
shift 2 && exec "$@""#;
    let store = s.store_arg();
    let bin = crate::support::BIN;
    let mut cmd = Command::new(keyctl);
    cmd.args([
        "session",
        "-",
        "sh",
        "-c",
        script,
        "sh",
        token,
        "kernel-key-secret",
        bin,
    ])
    .args(["import", "llxprt", "--keyring-only", "--store", &store]);
    s.isolate(&mut cmd).env("DBUS_SESSION_BUS_ADDRESS", &bogus);
    let ran = run_bounded(cmd, b"");
    for secret in [
        "kernel-access-secret",
        "kernel-refresh-secret",
        "kernel-key-secret",
    ] {
        assert!(
            !ran.stdout.contains(secret) && !ran.stderr.contains(secret),
            "{ran:?}"
        );
    }
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "llxprt keyring: kernel keyring",
        "imported token anthropic/kernel (kernel keyring",
        "imported API key kernel-key (kernel keyring)",
    ]);
    let store = s.open_store();
    let t = store
        .get_token("anthropic", "kernel", true)
        .expect("read")
        .expect("token");
    assert_eq!(t.as_map()["refresh_token"], "kernel-refresh-secret");
    assert_eq!(
        store
            .get_api_key("kernel-key")
            .expect("read")
            .expect("key")
            .expose(),
        "kernel-key-secret"
    );
}

#[test]
fn a_stalled_secret_service_costs_the_connect_limit_and_the_files_still_import() {
    let keyctl = require_tool("keyctl", "keyutils");
    let keyring = TestKeyring::llxprt_fixture();
    // Frozen, the daemon keeps its bus name but never answers.
    nix::sys::signal::kill(keyring.daemon_pid(), nix::sys::signal::Signal::SIGSTOP)
        .expect("SIGSTOP the daemon");
    let s = Scratch::new();
    let store = s.store_arg();
    let from = fixtures().join("v2").display().to_string();
    // In a fresh session keyring, so the kernel fallback finds nothing.
    let mut cmd = Command::new(keyctl);
    cmd.args(["session", "-", crate::support::BIN])
        .args(["import", "llxprt", "--hostname", HOST, "--user", USER])
        .args(["--store", &store, "--from", &from]);
    s.isolate(&mut cmd);
    keyring.apply(&mut cmd);
    let start = Instant::now();
    let ran = run_bounded(cmd, b"");
    let took = start.elapsed();
    assert_no_secret(&ran);
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "llxprt keyring: kernel keyring, 0 entries",
        "note: no Secret Service was read",
        "no answer within 5000 ms",
        "summary: 7 imported, 0 replaced, 0 already in credproxy (kept), 0 skipped because of errors\n",
    ]);
    super::import_llxprt::assert_store_holds(&s, "v2");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn a_missing_default_data_directory_leaves_the_keyring() {
    let keyring = TestKeyring::llxprt_fixture();
    let s = Scratch::new();
    let ran = import_with(&s, &[], |c| {
        keyring.apply(
            c.env_remove("LLXPRT_DATA_HOME")
                .env_remove("LLXPRT_CONFIG_HOME"),
        );
    });
    ran.assert_code(0);
    let want = s.root().join("data/llxprt-code");
    ran.assert_stdout_has(&[
        &format!(
            "note: no llxprt data directory at {} (name one with --from DIR): only the keyring was read",
            want.display()
        ),
        "llxprt keyring: Secret Service, 7 entries",
        "summary: 7 imported",
    ]);
    assert_store_holds_keyring(&s, &keyring_items());
    // A --from that does not exist is still an error.
    let missing = s.root().join("nope").display().to_string();
    let ran = import(&s, &keyring, &["--from", &missing]);
    ran.assert_code(1);
    assert!(ran.stderr.contains(&missing), "{}", ran.stderr);
}
