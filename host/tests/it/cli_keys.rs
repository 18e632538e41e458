//! The store commands of the CLI (SPEC §8): `key set|list|rm`, `status`
//! and `logout`, and that what they manage is what the proxy serves.

use serde_json::{Value, json};

use crate::support::{self, Scratch, token_json};

fn key(s: &Scratch, args: &[&str], stdin: &[u8]) -> support::Ran {
    let store = s.store_arg();
    let mut all = vec!["key"];
    all.extend_from_slice(args);
    all.extend(["--store", store.as_str()]);
    s.run(&all, stdin)
}

/// `get_api_key NAME` over a fresh stdio connection.
fn get_api_key(s: &Scratch, name: &str) -> Value {
    let mut p = s.stdio(&["--audit-log", "off"]);
    p.handshake();
    p.call("k", "get_api_key", json!({"name": name}))
}

#[test]
fn key_set_list_get_rm() {
    let s = Scratch::new();
    let ran = key(&s, &["set", "OPENAI"], b"sk-test\n");
    ran.assert_code(0);
    assert!(!ran.stdout.contains("sk-test"), "{}", ran.stdout);
    assert!(!ran.stderr.contains("sk-test"), "{}", ran.stderr);
    key(&s, &["set", "anthropic.work"], b"sk-other").assert_code(0);

    let listed = key(&s, &["list"], b"");
    listed.assert_code(0);
    assert_eq!(listed.stdout, "OPENAI\nanthropic.work\n");
    assert!(!listed.stdout.contains("sk-"), "names only");
    let json_list = key(&s, &["list", "--json"], b"");
    json_list.assert_code(0);
    assert_eq!(
        serde_json::from_str::<Value>(&json_list.stdout).expect("json"),
        json!({"keys":["OPENAI","anthropic.work"]})
    );

    // The proxy serves the value without its trailing newline.
    assert_eq!(
        get_api_key(&s, "OPENAI"),
        json!({"id":"k","ok":true,"data":{"key":"sk-test"}})
    );
    assert_eq!(get_api_key(&s, "anthropic.work")["data"]["key"], "sk-other");

    // Set again replaces.
    key(&s, &["set", "OPENAI"], b"sk-new\n").assert_code(0);
    assert_eq!(get_api_key(&s, "OPENAI")["data"]["key"], "sk-new");

    key(&s, &["rm", "OPENAI"], b"").assert_code(0);
    let gone = get_api_key(&s, "OPENAI");
    assert_eq!(gone["ok"], false, "{gone}");
    assert_eq!(gone["code"], "NOT_FOUND", "{gone}");
    assert_eq!(key(&s, &["list"], b"").stdout, "anthropic.work\n");

    let again = key(&s, &["rm", "OPENAI"], b"");
    again.assert_stderr(1, &["no API key named OPENAI"]);
}

#[test]
fn key_names_are_checked() {
    let s = Scratch::new();
    for bad in ["../etc", "a/b", "with space", "ключ", ".", ".."] {
        let ran = key(&s, &["set", bad], b"sk-x\n");
        ran.assert_code(1);
        assert!(
            ran.stderr.contains("invalid API key name"),
            "{bad:?}: the message names the problem: {}",
            ran.stderr
        );
        assert!(!ran.stderr.contains("sk-x"), "{}", ran.stderr);
    }
    let long = "k".repeat(65);
    key(&s, &["set", &long], b"sk-x\n").assert_code(1);
    key(&s, &["set", &"k".repeat(64)], b"sk-x\n").assert_code(0);
    key(&s, &["rm", "../etc"], b"").assert_code(1);
    // Nothing escaped the store.
    assert!(!s.root().join("etc").exists());
}

#[test]
fn key_set_needs_a_value_on_stdin() {
    let s = Scratch::new();
    for empty in [&b""[..], b"\n", b"\r\n"] {
        let ran = key(&s, &["set", "OPENAI"], empty);
        ran.assert_stderr(1, &["stdin"]);
    }
    // (Was "": an empty list now says so.)
    assert_eq!(key(&s, &["list"], b"").stdout, "no API keys stored\n");
}

#[test]
fn status_shows_tokens_but_never_secrets() {
    let s = Scratch::new();
    let empty = s.run(&["status", "--store", &s.store_arg()], b"");
    empty.assert_code(0);
    empty.assert_stdout_has(&["no tokens"]);

    s.seed_token(
        "anthropic",
        "default",
        &json!({"access_token":"AT-SENTINEL-1","refresh_token":"RT-SENTINEL-1","expiry":4_102_444_800_u64,"token_type":"Bearer"}),
    );
    s.seed_token(
        "gemini",
        "work",
        &json!({"access_token":"AT-SENTINEL-2","expiry":1_000_000_000_u64,"token_type":"Bearer"}),
    );
    let ran = s.run(&["status", "--json", "--store", &s.store_arg()], b"");
    ran.assert_code(0);
    for secret in ["AT-SENTINEL", "RT-SENTINEL"] {
        assert!(!ran.stdout.contains(secret), "{}", ran.stdout);
        assert!(!ran.stderr.contains(secret), "{}", ran.stderr);
    }
    let v: Value = serde_json::from_str(&ran.stdout).expect("json");
    let rows = v["tokens"].as_array().expect("tokens");
    assert_eq!(rows.len(), 2, "{v}");
    let a = &rows[0];
    assert_eq!(a["provider"], "anthropic");
    assert_eq!(a["bucket"], "default");
    assert_eq!(a["expiry"].as_f64(), Some(4_102_444_800.0));
    assert_eq!(a["expired"], false);
    assert_eq!(a["refreshable"], true);
    let g = &rows[1];
    assert_eq!(g["provider"], "gemini");
    assert_eq!(g["bucket"], "work");
    assert_eq!(g["expired"], true);
    assert_eq!(g["refreshable"], false);

    let human = s.run(&["status", "--store", &s.store_arg()], b"");
    human.assert_code(0);
    human.assert_stdout_has(&["anthropic/default", "gemini/work"]);
    assert!(!human.stdout.contains("SENTINEL"), "{}", human.stdout);
}

#[test]
fn logout_removes_a_token() {
    let s = Scratch::new();
    s.seed_token("anthropic", "default", &token_json("at-1"));
    s.seed_token("anthropic", "work", &token_json("at-2"));
    let store = s.store_arg();
    s.run(
        &["logout", "anthropic", "--bucket", "work", "--store", &store],
        b"",
    )
    .assert_code(0);
    let v: Value =
        serde_json::from_str(&s.run(&["status", "--json", "--store", &store], b"").stdout)
            .expect("json");
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["tokens"][0]["bucket"], "default");

    s.run(&["logout", "anthropic", "--store", &store], b"")
        .assert_code(0);
    let again = s.run(&["logout", "anthropic", "--store", &store], b"");
    again.assert_stderr(1, &["anthropic"]);
    let v: Value =
        serde_json::from_str(&s.run(&["status", "--json", "--store", &store], b"").stdout)
            .expect("json");
    assert_eq!(v, s.empty_auto_status());

    // The proxy no longer serves it.
    let mut p = s.stdio(&["--audit-log", "off"]);
    p.handshake();
    assert_eq!(
        p.call("1", "get_token", json!({"provider":"anthropic"}))["code"],
        "NOT_FOUND"
    );
}

#[test]
fn logout_rejects_bad_names() {
    let s = Scratch::new();
    let ran = s.run(&["logout", "../x", "--store", &s.store_arg()], b"");
    ran.assert_stderr(1, &["invalid provider name"]);
}

#[test]
fn key_list_says_when_there_are_no_keys() {
    let s = Scratch::new();
    let ran = key(&s, &["list"], b"");
    ran.assert_code(0);
    assert_eq!(ran.stdout, "no API keys stored\n");
    let json_list = key(&s, &["list", "--json"], b"");
    json_list.assert_code(0);
    assert_eq!(json_list.stdout, "{\"keys\":[]}\n", "JSON unchanged");
}

/// Writes `bytes` as the token file of `provider`/`bucket` (0600).
fn plant_token_file(s: &Scratch, provider: &str, bucket: &str, bytes: &[u8]) -> std::path::PathBuf {
    let hex = |t: &str| t.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let path = s
        .store()
        .join("tokens")
        .join(format!("{}.{}.json", hex(provider), hex(bucket)));
    std::fs::write(&path, bytes).expect("write token file");
    support::chmod(&path, 0o600);
    path
}

#[test]
fn status_lists_the_other_tokens_and_marks_a_corrupt_one() {
    // A plaintext store: the torn file is torn JSON (an encrypted store's
    // own case is in store_encrypted.rs).
    let s = Scratch::new();
    s.seed_plain_token(
        "anthropic",
        "default",
        &json!({"access_token":"AT-SENTINEL-1","refresh_token":"RT-1","expiry":4_070_908_800_u64}),
    );
    s.seed_plain_token(
        "qwen",
        "default",
        &json!({"access_token":"AT-SENTINEL-3","expiry":4_070_908_800_u64}),
    );
    let path = plant_token_file(&s, "gemini", "work", b"{\"access_token\": \"TORN-SENTINEL");
    let store = s.store_arg();
    let ran = s.run(&["status", "--store", &store], b"");
    ran.assert_code(0);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", ran.stdout);
    assert_eq!(lines[3], "backend: file (plaintext)", "the backend last");
    assert!(
        lines[0].starts_with("anthropic/default\texpires 2099-01-01\trefreshable"),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        "qwen/default\texpires 2099-01-01\tno refresh token: will need a new login at expiry"
    );
    assert!(
        lines[2].starts_with("gemini/work\tcorrupt: "),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].ends_with(&path.display().to_string()),
        "{}",
        lines[2]
    );
    for out in [&ran.stdout, &ran.stderr] {
        assert!(!out.contains("SENTINEL"), "no content shown: {out}");
    }
    // --strict: the same output, then exit 1.
    let strict = s.run(&["status", "--strict", "--store", &store], b"");
    strict.assert_code(1);
    assert_eq!(strict.stdout, ran.stdout);
    // JSON: the tokens, and a `corrupt` entry.
    let ran = s.run(&["status", "--json", "--store", &store], b"");
    ran.assert_code(0);
    let v: Value = serde_json::from_str(&ran.stdout).expect("json");
    assert_eq!(v["tokens"].as_array().expect("tokens").len(), 2, "{v}");
    let corrupt = v["corrupt"].as_array().expect("corrupt");
    assert_eq!(corrupt.len(), 1, "{v}");
    assert_eq!(corrupt[0]["provider"], "gemini");
    assert_eq!(corrupt[0]["bucket"], "work");
    assert_eq!(corrupt[0]["path"], path.display().to_string());
    assert!(
        corrupt[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("JSON")),
        "{v}"
    );
    assert!(!ran.stdout.contains("SENTINEL"));
    s.run(&["status", "--json", "--strict", "--store", &store], b"")
        .assert_code(1);
}

#[test]
fn status_shows_near_expiries_as_durations() {
    let s = Scratch::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    s.seed_token(
        "anthropic",
        "default",
        &json!({"access_token":"a","refresh_token":"r","expiry": now + 2 * 86_400 + 600}),
    );
    let ran = s.run(&["status", "--store", &s.store_arg()], b"");
    ran.assert_code(0);
    // A humantime duration (seconds may have passed), not a date.
    assert!(
        ran.stdout
            .starts_with("anthropic/default\texpires in 2days "),
        "{}",
        ran.stdout
    );
    // The token's line (the backend line after it names a path).
    let row = ran.stdout.lines().next().expect("a line");
    assert!(!row.contains("-"), "{}", ran.stdout);
}
