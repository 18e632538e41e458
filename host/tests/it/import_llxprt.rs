//! `credproxy import llxprt` on the files llxprt-code itself wrote
//! (host/tests/fixtures/llxprt-store, copied from the shared fixtures): every
//! expected entry lands in the store field for field, the proxy serves it,
//! no secret is printed, reruns import nothing, and damaged input is
//! reported entry by entry with exit status 4. These runs read the files
//! only (`--files-only`), so whatever keyring the machine running the
//! tests has is never read; the keyring half is in
//! [`super::import_llxprt_keyring`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{Ran, Scratch};

/// The KDF identity the fixtures were written with.
pub(super) const HOST: &str = "fixture-host";
pub(super) const USER: &str = "fixture-user";

pub(super) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llxprt-store")
}

pub(super) fn expected() -> Value {
    let text = fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// The expected entries of `tree` that llxprt reads back.
pub(super) fn expected_ok(tree: &str) -> Vec<Value> {
    expected()["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter(|f| f["tree"] == tree && f["expect"] == "ok")
        .cloned()
        .collect()
}

/// Every secret value in the fixtures (tokens, refresh tokens, id tokens,
/// API keys, the machine secret, damaged files' plaintext included).
pub(super) fn all_secrets() -> Vec<String> {
    let e = expected();
    let mut out = vec![
        e["kdf"]["machine_secret_base64"]
            .as_str()
            .unwrap()
            .to_owned(),
        e["kdf"]["machine_secret_hex"].as_str().unwrap().to_owned(),
    ];
    for f in e["files"].as_array().unwrap() {
        let parsed = f
            .get("plaintext_before_damage")
            .and_then(Value::as_str)
            .map(|p| serde_json::from_str::<Value>(p).unwrap())
            .unwrap_or_else(|| f["plaintext_json"].clone());
        if f["kind"] == "api-key"
            && let Some(p) = f["plaintext"].as_str()
        {
            out.push(p.to_owned());
        }
        for field in ["access_token", "refresh_token", "id_token"] {
            if let Some(v) = parsed.get(field).and_then(Value::as_str) {
                out.push(v.to_owned());
            }
        }
    }
    assert!(out.len() >= 28, "{out:?}");
    out
}

fn assert_no_secret(ran: &Ran) {
    for secret in all_secrets() {
        assert!(
            !ran.stdout.contains(&secret),
            "stdout shows {secret}:\n{}",
            ran.stdout
        );
        assert!(
            !ran.stderr.contains(&secret),
            "stderr shows {secret}:\n{}",
            ran.stderr
        );
    }
}

/// `credproxy import llxprt` for host [`HOST`] into `s`'s store, reading
/// `from` (none: where llxprt's environment says) as `user` (none: `$USER`
/// decides), with `extra` flags.
fn import_command(s: &Scratch, from: Option<&Path>, user: Option<&str>, extra: &[&str]) -> Command {
    let store = s.store_arg();
    // --files-only: never the keyring of the machine running the tests
    // (import_llxprt_keyring.rs brings up its own).
    let mut args = vec![
        "import",
        "llxprt",
        "--hostname",
        HOST,
        "--store",
        &store,
        "--files-only",
    ];
    let from = from.map(|f| f.display().to_string());
    if let Some(from) = &from {
        args.extend(["--from", from]);
    }
    if let Some(user) = user {
        args.extend(["--user", user]);
    }
    args.extend_from_slice(extra);
    s.command(&args)
}

/// Imports `from` as [`USER`]; no secret in the output.
fn import(s: &Scratch, from: &Path, extra: &[&str]) -> Ran {
    import_as(s, from, USER, extra)
}

/// Imports `from` as `user`; no secret in the output.
fn import_as(s: &Scratch, from: &Path, user: &str, extra: &[&str]) -> Ran {
    let mut cmd = import_command(s, Some(from), Some(user), extra);
    cmd.stdin(Stdio::piped());
    let ran = crate::support::run_bounded(cmd, b"");
    assert_no_secret(&ran);
    ran
}

/// A private copy of a fixture tree, for tests that damage or rename files.
pub(super) fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
}

pub(super) fn oauth_dir(data: &Path) -> PathBuf {
    data.join("secure-store/llxprt-code-oauth")
}

/// The stored value of every expected entry of `tree` equals llxprt's
/// plaintext: tokens field for field (every string byte for byte), API
/// keys exactly.
pub(super) fn assert_store_holds(s: &Scratch, tree: &str) {
    let store = s.open_store();
    let entries = expected_ok(tree);
    assert!(!entries.is_empty());
    for f in &entries {
        if f["kind"] == "oauth-token" {
            let (p, b) = (
                f["provider"].as_str().unwrap(),
                f["bucket"].as_str().unwrap(),
            );
            let token = store
                .get_token(p, b, true)
                .unwrap()
                .unwrap_or_else(|| panic!("{p}/{b}"));
            let stored = Value::Object(token.as_map().clone());
            // The plaintext as llxprt wrote it, parsed: same fields, same values.
            let written: Value = serde_json::from_str(f["plaintext"].as_str().unwrap()).unwrap();
            assert_eq!(stored, written, "{p}/{b}");
            assert_eq!(stored, f["plaintext_json"], "{p}/{b}");
        } else {
            let name = f["key_name"].as_str().unwrap();
            let key = store
                .get_api_key(name)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(key.expose(), f["plaintext"].as_str().unwrap(), "{name}");
        }
    }
    let tokens = entries
        .iter()
        .filter(|f| f["kind"] == "oauth-token")
        .count();
    let listed: usize = store
        .list_providers()
        .unwrap()
        .iter()
        .map(|p| store.list_buckets(p).unwrap().len())
        .sum();
    assert_eq!(listed, tokens, "nothing else was stored");
}

/// What the proxy serves: each unexpired token without its refresh token,
/// each API key as stored.
fn assert_proxy_serves(s: &Scratch, tree: &str) {
    let mut p = s.stdio(&["--audit-log", "off"]);
    p.handshake();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (i, f) in expected_ok(tree).iter().enumerate() {
        let id = format!("r{i}");
        if f["kind"] == "oauth-token" {
            if f["plaintext_json"]["expiry"].as_u64().unwrap() <= now {
                continue; // serving it would start a refresh against the provider
            }
            let reply = p.call(
                &id,
                "get_token",
                json!({"provider": f["provider"], "bucket": f["bucket"]}),
            );
            let mut want = f["plaintext_json"].clone();
            want.as_object_mut().unwrap().remove("refresh_token");
            assert_eq!(reply["ok"], true, "{reply}");
            assert_eq!(reply["data"], want, "{reply}");
        } else {
            let reply = p.call(&id, "get_api_key", json!({"name": f["key_name"]}));
            assert_eq!(reply["data"]["key"], f["plaintext"], "{reply}");
        }
    }
}

#[test]
fn imports_every_v1_and_v2_entry_as_llxprt_wrote_it() {
    for tree in ["v1", "v2"] {
        let s = Scratch::new();
        let ran = import(&s, &fixtures().join(tree), &[]);
        ran.assert_code(0);
        ran.assert_stdout_has(&[
            "imported token anthropic/default",
            "imported token anthropic/work",
            "imported token codex/default",
            "imported token gemini/default",
            "imported token qwen/default",
            "imported API key openai",
            "imported API key my-key",
            "summary: 7 imported, 0 replaced, 0 already in credproxy (kept), 0 skipped",
        ]);
        ran.assert_stdout_has(&["llxprt keyring: not read (--files-only)"]);
        assert_store_holds(&s, tree);
        assert_proxy_serves(&s, tree);
    }
}

#[test]
fn a_second_run_imports_nothing_and_changes_nothing() {
    let s = Scratch::new();
    import(&s, &fixtures().join("v2"), &[]).assert_code(0);
    let tokens = s.store().join("tokens");
    let snapshot = |dir: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = (snapshot(&tokens), snapshot(&s.store().join("keys")));
    let again = import(&s, &fixtures().join("v2"), &[]);
    again.assert_code(0);
    again.assert_stdout_has(&[
        "kept token anthropic/default: already in credproxy",
        "summary: 0 imported, 0 replaced, 7 already in credproxy (kept), 0 skipped",
    ]);
    assert_eq!(
        (snapshot(&tokens), snapshot(&s.store().join("keys"))),
        before
    );
}

#[test]
fn dry_run_lists_without_secrets_and_writes_nothing() {
    let s = Scratch::new();
    let ran = import(&s, &fixtures().join("v2"), &["--dry-run"]);
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "would import token anthropic/default (v2, expires 2027-01-01T00:00:00Z, refresh token: yes)",
        "would import token anthropic/work (v2, expires 2026-01-01T00:00:00Z (expired), refresh token: yes)",
        "would import token qwen/default (v2, expires 2027-01-01T03:00:00Z, refresh token: no)",
        "would import API key openai (v2)",
        "nothing written",
    ]);
    assert!(!s.store().exists(), "a dry run created the store");

    let json = import(&s, &fixtures().join("v1"), &["--dry-run", "--json"]);
    json.assert_code(0);
    let v: Value = serde_json::from_str(&json.stdout).expect("json");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 7, "{v}");
    let qwen = entries
        .iter()
        .find(|e| e["account"] == "qwen:default")
        .unwrap();
    assert_eq!(qwen["result"], "would_import");
    assert_eq!(qwen["has_refresh_token"], false);
    assert_eq!(qwen["expiry"].as_f64(), Some(1_798_772_400.0));
    assert_eq!(qwen["version"], 1);
    assert!(!s.store().exists(), "a dry run created the store");

    // On an existing store a dry run says what it would keep and writes nothing.
    import(&s, &fixtures().join("v1"), &["--only", "qwen"]).assert_code(0);
    let tokens_before = fs::read_dir(s.store().join("tokens")).unwrap().count();
    let dry = import(&s, &fixtures().join("v2"), &["--dry-run", "--overwrite"]);
    dry.assert_code(0);
    dry.assert_stdout_has(&[
        "would replace token qwen/default",
        "would import token anthropic/default",
    ]);
    assert_eq!(
        fs::read_dir(s.store().join("tokens")).unwrap().count(),
        tokens_before
    );
    let token = s
        .open_store()
        .get_token("qwen", "default", true)
        .unwrap()
        .unwrap();
    assert_eq!(
        token.as_map()["access_token"],
        "fixture-access-qwen-default-v1"
    );
}

#[test]
fn only_imports_the_named_providers_and_keys() {
    let s = Scratch::new();
    let ran = import(
        &s,
        &fixtures().join("v2"),
        &["--only", "anthropic,openai,codex:default,nosuch"],
    );
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "imported token anthropic/default",
        "imported token anthropic/work",
        "imported token codex/default",
        "imported API key openai",
        "--only nosuch: no such llxprt entry",
        "summary: 4 imported",
    ]);
    let store = s.open_store();
    assert_eq!(store.list_providers().unwrap(), ["anthropic", "codex"]);
    assert_eq!(store.list_api_keys().unwrap(), ["openai"]);
}

#[test]
fn existing_entries_are_kept_unless_overwrite() {
    let s = Scratch::new();
    import(&s, &fixtures().join("v1"), &[]).assert_code(0);
    let kept = import(&s, &fixtures().join("v2"), &[]);
    kept.assert_code(0);
    kept.assert_stdout_has(&["kept API key openai", "7 already in credproxy (kept)"]);
    assert_store_holds(&s, "v1");

    let replaced = import(
        &s,
        &fixtures().join("v2"),
        &["--overwrite", "--only", "anthropic,my-key"],
    );
    replaced.assert_code(0);
    replaced.assert_stdout_has(&[
        "replaced token anthropic/default",
        "replaced API key my-key",
        "summary: 0 imported, 3 replaced",
    ]);
    let store = s.open_store();
    let t = store.get_token("anthropic", "work", true).unwrap().unwrap();
    assert_eq!(t.as_map()["access_token"], "fixture-access-anthropic-work");
    let t = store.get_token("gemini", "default", true).unwrap().unwrap();
    assert_eq!(
        t.as_map()["access_token"],
        "fixture-access-gemini-default-v1"
    );
    assert_eq!(
        store.get_api_key("my-key").unwrap().unwrap().expose(),
        "fixture-my-key-value-v2"
    );
}

#[test]
fn broken_tree_imports_the_good_entry_and_reports_the_others() {
    let s = Scratch::new();
    let ran = import(&s, &fixtures().join("broken"), &[]);
    ran.assert_code(4);
    ran.assert_stdout_has(&[
        "imported token anthropic/ok",
        "skipped token anthropic/corrupt",
        "not an llxprt envelope (not JSON)",
        "skipped token anthropic/wrongtag",
        "authentication tag mismatch",
        "summary: 1 imported, 0 replaced, 0 already in credproxy (kept), 2 skipped because of errors",
    ]);
    assert_store_holds(&s, "broken");
    // The next run still says that something is wrong.
    import(&s, &fixtures().join("broken"), &[]).assert_code(4);
}

#[test]
fn user_name_candidates_come_from_user_and_the_tag_picks_the_right_one() {
    let s = Scratch::new();
    let from = fixtures().join("v1");
    // $USER is Bun's user name: found without --user.
    let mut cmd = import_command(&s, Some(&from), None, &[]);
    cmd.env("USER", USER);
    let ran = crate::support::run_bounded(cmd, b"");
    ran.assert_code(0);
    ran.assert_stdout_has(&["summary: 7 imported"]);
    // A wrong --user is the only candidate: nothing decrypts.
    let s = Scratch::new();
    let ran = import_as(&s, &from, "someone", &[]);
    ran.assert_code(4);
    ran.assert_stdout_has(&["user name \"someone\"", "7 skipped because of errors"]);
    assert_no_secret(&ran);
}

#[test]
fn bad_input_is_reported_per_entry_with_a_reason() {
    let s = Scratch::new();
    let data = s.root().join("llxprt");
    copy_tree(&fixtures().join("v2"), &data);
    let oauth = oauth_dir(&data);
    // An unknown envelope version.
    let gemini = oauth.join("gemini%3Adefault.enc");
    let text = fs::read_to_string(&gemini)
        .unwrap()
        .replacen("\"v\":2", "\"v\":3", 1);
    fs::write(&gemini, text).unwrap();
    // A file that cannot be read (a directory where a file should be).
    fs::create_dir(oauth.join("anthropic%3Aunreadable.enc")).unwrap();
    // A name credproxy cannot store.
    fs::copy(
        oauth.join("qwen%3Adefault.enc"),
        oauth.join("bad%20name%3Adefault.enc"),
    )
    .unwrap();
    // Leftovers llxprt ignores: a temporary file and a probe account.
    fs::write(oauth.join("codex%3Adefault.enc.tmp.0a1b2c3d"), "garbage").unwrap();
    fs::write(oauth.join("__securestore_probe__1.enc"), "garbage").unwrap();
    // The legacy unescaped name of an account that has no escaped file.
    fs::rename(
        oauth.join("anthropic%3Awork.enc"),
        oauth.join("anthropic:work.enc"),
    )
    .unwrap();
    // A legacy name beside the escaped one: llxprt reads the escaped one.
    fs::copy(
        oauth.join("anthropic%3Adefault.enc"),
        oauth.join("anthropic:default.enc"),
    )
    .unwrap();

    let ran = import(&s, &data, &[]);
    ran.assert_code(4);
    ran.assert_stdout_has(&[
        "skipped token gemini/default",
        "unknown envelope version 3",
        "skipped token anthropic/unreadable",
        "cannot read the file",
        "skipped token bad name/default",
        "invalid provider name",
        "imported token anthropic/work",
        "imported token anthropic/default",
        "anthropic:default.enc: llxprt reads",
        "imported token codex/default",
        "summary: 6 imported, 0 replaced, 0 already in credproxy (kept), 3 skipped because of errors",
    ]);
    assert!(!ran.stdout.contains("probe"), "{}", ran.stdout);
    // Permissions refused by the OS (root reads everything: there the
    // directory above stands in for an unreadable file).
    if !nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt as _;
        let key = data.join("provider-keys/openai.enc");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o000)).unwrap();
        let s2 = Scratch::new();
        let denied = import(&s2, &data, &["--only", "openai"]);
        denied.assert_code(4);
        denied.assert_stdout_has(&["skipped API key openai", "Permission denied"]);
    }
    assert!(!ran.stdout.contains(".tmp."), "{}", ran.stdout);
    let t = s
        .open_store()
        .get_token("anthropic", "work", true)
        .unwrap()
        .unwrap();
    assert_eq!(t.as_map()["access_token"], "fixture-access-anthropic-work");
}

#[test]
fn v2_without_machine_secret_is_reported_and_v1_still_imports() {
    let s = Scratch::new();
    let data = s.root().join("llxprt");
    copy_tree(&fixtures().join("v2"), &data);
    fs::remove_file(data.join("machine_secret")).unwrap();
    // One v1 file among them needs no secret.
    fs::copy(
        fixtures().join("v1/provider-keys/openai.enc"),
        data.join("provider-keys/openai.enc"),
    )
    .unwrap();
    let ran = import(&s, &data, &[]);
    ran.assert_code(4);
    ran.assert_stdout_has(&[
        "imported API key openai (v1)",
        "skipped token anthropic/default",
        "needs llxprt's machine secret",
        "summary: 1 imported, 0 replaced, 0 already in credproxy (kept), 6 skipped",
    ]);

    fs::write(data.join("machine_secret"), "c2hvcnQ=").unwrap();
    let ran = import(&s, &data, &[]);
    ran.assert_code(4);
    ran.assert_stdout_has(&["is not base64 of exactly 32 bytes"]);
}

#[test]
fn a_missing_data_directory_fails_with_the_path() {
    let s = Scratch::new();
    let missing = s.root().join("nope");
    let ran = import(&s, &missing, &[]);
    ran.assert_code(1);
    assert!(
        ran.stderr.contains(&missing.display().to_string()),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("--from"), "{}", ran.stderr);
}

#[test]
fn an_empty_data_directory_says_what_was_looked_at() {
    let s = Scratch::new();
    let data = s.root().join("llxprt");
    fs::create_dir(&data).unwrap();
    let ran = import(&s, &data, &[]);
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "no llxprt credential files found",
        "secure-store/llxprt-code-oauth",
        "provider-keys",
        "summary: 0 imported",
        "llxprt keyring: not read (--files-only)",
    ]);
}

#[test]
fn the_data_directory_follows_llxprt_data_home() {
    let s = Scratch::new();
    let mut cmd = import_command(&s, None, Some(USER), &["--dry-run"]);
    cmd.env("LLXPRT_DATA_HOME", fixtures().join("v1"))
        .env_remove("LLXPRT_CONFIG_HOME");
    let ran = crate::support::run_bounded(cmd, b"");
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        &format!("llxprt data directory: {}", fixtures().join("v1").display()),
        "7 would be imported",
    ]);
    // Without overrides: $XDG_DATA_HOME/llxprt-code (here: none there yet).
    let mut cmd = import_command(&s, None, None, &[]);
    cmd.env_remove("LLXPRT_DATA_HOME")
        .env_remove("LLXPRT_CONFIG_HOME");
    let ran = crate::support::run_bounded(cmd, b"");
    ran.assert_code(1);
    let want = s.root().join("data/llxprt-code");
    assert!(
        ran.stderr.contains(&want.display().to_string()),
        "{}",
        ran.stderr
    );
}
