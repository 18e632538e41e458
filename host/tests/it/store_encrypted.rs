//! The store backends through the binary (issue 14): a new store is
//! encrypted by default and nothing saved through the protocol is readable
//! on disk; the key file's rules (`store init-key`); a wrong key, a
//! swapped entry and an existing plaintext store.

use std::fs;
use std::process::Command;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{self, BIN, Scratch, run_bounded};

const SECRET: &str = "at-ENC-SENTINEL-93ab";
const SECRET_KEY: &str = "sk-ENC-SENTINEL-7c10";

/// `save_token` over a host-class `credproxy stdio` with `args`.
fn save(s: &Scratch, args: &[&str], provider: &str, access: &str) -> Value {
    let mut all = vec!["--audit-log", "off"];
    all.extend_from_slice(args);
    let mut p = s.stdio(&all);
    p.handshake();
    let r = p.call(
        "1",
        "save_token",
        json!({"provider": provider, "token": support::token_json(access)}),
    );
    p.close_stdin();
    assert_eq!(p.wait().code(), Some(0));
    r
}

#[test]
fn serve_on_a_new_store_encrypts_and_says_where_the_key_is() {
    let s = Scratch::new();
    let mut p = s.serve(&["--audit-log", "off"]);
    let saved = save(&s, &[], "anthropic", SECRET);
    assert_eq!(saved["ok"], true, "{saved}");
    let mut c = p.sandbox_client();
    let got = c.call("2", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["data"]["access_token"], SECRET, "{got}");
    p.stop(Signal::SIGTERM);
    let stderr = p.stderr();
    let key = s.default_key_file();
    assert!(
        stderr.contains(&format!("created the store key {}", key.display())),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("created the store key").count(),
        1,
        "{stderr}"
    );
    assert_eq!(support::mode_of(&key), 0o600);
    assert!(!key.starts_with(s.store()));
    assert_eq!(
        support::files_containing(&s.store(), SECRET),
        Vec::<String>::new(),
        "no plaintext token on disk"
    );
    assert_eq!(
        support::files_containing(&s.store(), "access_token"),
        Vec::<String>::new()
    );

    // API keys too.
    s.seed_api_key("OPENAI", SECRET_KEY);
    assert_eq!(
        support::files_containing(&s.store(), SECRET_KEY),
        Vec::<String>::new()
    );

    // Later starts find the key: no second notice, the token still there.
    let mut again = s.serve(&["--audit-log", "off"]);
    let mut c = again.sandbox_client();
    let got = c.call("3", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["data"]["access_token"], SECRET, "{got}");
    again.stop(Signal::SIGTERM);
    assert!(
        !again.stderr().contains("created the store key"),
        "{}",
        again.stderr()
    );

    let status = s.run(&["status", "--store", &s.store_arg()], b"");
    status.assert_code(0);
    status.assert_stdout_has(&[&format!(
        "backend: encrypted-file (key file {})",
        key.display()
    )]);
    assert!(!status.stdout.contains(SECRET));
    let json: Value = serde_json::from_str(
        &s.run(&["status", "--json", "--store", &s.store_arg()], b"")
            .stdout,
    )
    .expect("json");
    assert_eq!(json["backend"], "encrypted-file");
}

#[test]
fn an_existing_plaintext_store_keeps_working_and_status_says_how_to_migrate() {
    let s = Scratch::new();
    s.seed_plain_token("anthropic", "default", &support::token_json("at-plain"));
    let mut p = s.serve(&["--audit-log", "off"]);
    let mut c = p.sandbox_client();
    let got = c.call("1", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["data"]["access_token"], "at-plain", "{got}");
    assert_eq!(save(&s, &[], "codex", "at-plain-2")["ok"], true);
    p.stop(Signal::SIGTERM);
    assert!(
        !support::exists(&s.default_key_file()),
        "no key made for it"
    );
    assert_eq!(
        support::files_containing(&s.store(), "at-plain-2").len(),
        1,
        "still plaintext"
    );
    let status = s.run(&["status", "--store", &s.store_arg()], b"");
    status.assert_code(0);
    status.assert_stdout_has(&["backend: file (plaintext)"]);
    status.assert_stderr_has(&["credproxy store migrate --to encrypted-file"]);
    // Asking for encrypted-file on it is refused with the way out.
    let key = s.root().join("k");
    s.run(
        &[
            "store",
            "init-key",
            "--key-file",
            &key.display().to_string(),
        ],
        b"",
    )
    .assert_code(0);
    let refused = s.run(
        &[
            "status",
            "--store",
            &s.store_arg(),
            "--store-backend",
            "encrypted-file",
            "--store-key-file",
            &key.display().to_string(),
        ],
        b"",
    );
    refused.assert_stderr(3, &["plaintext entries", "credproxy store migrate"]);
}

#[test]
fn init_key_refuses_overwrite_the_store_directory_and_loose_permissions() {
    let s = Scratch::new();
    let key = s.root().join("keys/store.key");
    let key_arg = key.display().to_string();
    let made = s.run(&["store", "init-key", "--key-file", &key_arg], b"");
    made.assert_code(0);
    made.assert_stdout_has(&["created store key", &key_arg]);
    assert_eq!(support::mode_of(&key), 0o600);
    let text = fs::read_to_string(&key).expect("key");
    assert_eq!(text.len(), 65);
    assert!(
        !made.stdout.contains(text.trim()),
        "the key is never printed"
    );

    let again = s.run(&["store", "init-key", "--key-file", &key_arg], b"");
    again.assert_stderr(1, &["already exists", "refusing to overwrite"]);
    assert_eq!(fs::read_to_string(&key).expect("key"), text, "unchanged");

    let inside = s.store().join("store.key").display().to_string();
    let ran = s.run(
        &[
            "store",
            "init-key",
            "--key-file",
            &inside,
            "--store",
            &s.store_arg(),
        ],
        b"",
    );
    ran.assert_stderr(1, &["inside the store directory"]);
    assert!(!support::exists(&s.store().join("store.key")));

    // Default place: $XDG_CONFIG_HOME/credproxy/store.key.
    s.run(&["store", "init-key"], b"").assert_code(0);
    assert_eq!(support::mode_of(&s.default_key_file()), 0o600);

    support::chmod(&key, 0o640);
    let loose = s.run(
        &[
            "status",
            "--store",
            &s.store_arg(),
            "--store-backend",
            "encrypted-file",
            "--store-key-file",
            &key_arg,
        ],
        b"",
    );
    loose.assert_stderr(3, &["group or others", "chmod 600"]);
    for out in [&loose.stdout, &loose.stderr] {
        assert!(!out.contains(text.trim()));
    }
    let none = s.run(
        &[
            "status",
            "--store",
            &s.store_arg(),
            "--store-backend",
            "encrypted-file",
        ],
        b"",
    );
    none.assert_stderr(3, &["needs a key", "init-key"]);
}

#[test]
fn a_wrong_key_is_refused_and_a_swapped_entry_is_not_served() {
    let s = Scratch::new();
    let key = s.root().join("a.key").display().to_string();
    let other = s.root().join("b.key").display().to_string();
    for k in [&key, &other] {
        s.run(&["store", "init-key", "--key-file", k], b"")
            .assert_code(0);
    }
    let flags = [
        "--store-backend",
        "encrypted-file",
        "--store-key-file",
        key.as_str(),
    ];
    let mut args = vec!["--audit-log", "off"];
    args.extend(flags);
    let saved = save(&s, &flags, "anthropic", SECRET);
    assert_eq!(saved["ok"], true, "{saved}");
    assert_eq!(save(&s, &flags, "codex", "at-codex")["ok"], true);

    let wrong = s
        .try_serve(&[
            "--store-backend",
            "encrypted-file",
            "--store-key-file",
            &other,
        ])
        .err()
        .expect("refused");
    assert_eq!(wrong.code(), Some(3), "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("does not open the store"),
        "{}",
        wrong.stderr
    );
    // The variable names the key file too (a flag would win).
    let mut by_env = s.command(&[
        "status",
        "--json",
        "--store",
        &s.store_arg(),
        "--store-backend",
        "encrypted-file",
    ]);
    by_env.env("CREDPROXY_STORE_KEY_FILE", &key);
    let by_env = run_bounded(by_env, b"");
    by_env.assert_code(0);
    let v: Value = serde_json::from_str(&by_env.stdout).expect("json");
    assert_eq!(v["key"], format!("key file {key}"));
    let mut flag_wins = s.command(&[
        "status",
        "--store",
        &s.store_arg(),
        "--store-backend",
        "encrypted-file",
        "--store-key-file",
        &other,
    ]);
    flag_wins.env("CREDPROXY_STORE_KEY_FILE", &key);
    run_bounded(flag_wins, b"").assert_stderr(3, &["does not open the store"]);
    // The key fd works like the file.
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        &format!(
            "exec {BIN} status --json --store {} --store-backend encrypted-file --store-key-fd 4 4<{key}",
            s.store_arg()
        ),
    ]);
    s.isolate(&mut sh);
    let by_fd = run_bounded(sh, b"");
    by_fd.assert_code(0);
    let v: Value = serde_json::from_str(&by_fd.stdout).expect("json");
    assert_eq!(v["key"], "key on fd 4");
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(2), "{v}");

    // codex's file copied over anthropic's.
    let tokens = s.store().join("tokens");
    let hex = |t: &str| t.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let file = |p: &str| tokens.join(format!("{}.{}.json", hex(p), hex("default")));
    fs::copy(file("codex"), file("anthropic")).expect("swap");
    let mut p = s.serve(&args);
    let mut c = p.sandbox_client();
    let got = c.call("1", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["ok"], false, "{got}");
    assert_eq!(got["code"], "INTERNAL_ERROR", "{got}");
    assert!(!got.to_string().contains("at-codex"), "{got}");
    // The reason is on the host's stderr, never the content.
    let stderr = p.wait_for_stderr("failed authentication");
    assert!(!stderr.contains("at-codex"), "{stderr}");
    let got = c.call("2", "get_token", json!({"provider": "codex"}));
    assert_eq!(got["data"]["access_token"], "at-codex", "{got}");
    p.stop(Signal::SIGTERM);
    let store = s.store_arg();
    let mut status_args = vec!["status", "--store", &store];
    status_args.extend(flags);
    let status = s.run(&status_args, b"");
    status
        .assert_stdout_has(&["anthropic/default\tcorrupt: encrypted entry failed authentication"]);
}

fn plain_store_with_entries(s: &Scratch) {
    let mut token = support::token_json(SECRET);
    token["refresh_token"] = json!("rt-ENC-SENTINEL");
    s.seed_plain_token("anthropic", "default", &token);
    s.seed_plain_token("codex", "work", &support::token_json("at-codex"));
    let store = s.open_plain_store();
    store
        .put_meta(
            "codex",
            "work",
            &credproxy::store::KeyMeta {
                refresh_unusable: true,
            },
        )
        .expect("meta");
    store
        .set_api_key("OPENAI", &credproxy_core::Secret::new(SECRET_KEY))
        .expect("key");
}

#[test]
fn migrate_moves_everything_verified_and_can_go_back() {
    let s = Scratch::new();
    plain_store_with_entries(&s);
    let store = s.store_arg();
    let before = s.run(&["status", "--json", "--store", &store], b"");

    let dry = s.run(
        &[
            "store",
            "migrate",
            "--to",
            "encrypted-file",
            "--dry-run",
            "--store",
            &store,
        ],
        b"",
    );
    support::assert_dry_run_lists_the_seed(&dry);
    assert_eq!(
        support::files_containing(&s.store(), SECRET).len(),
        1,
        "dry run wrote nothing"
    );

    let ran = s.run(
        &[
            "store",
            "migrate",
            "--to",
            "encrypted-file",
            "--store",
            &store,
        ],
        b"",
    );
    ran.assert_code(0);
    ran.assert_stdout_has(&["moved 2 tokens and 1 API keys from file to encrypted-file"]);
    assert!(!ran.stdout.contains("SENTINEL") && !ran.stderr.contains("SENTINEL"));
    for secret in [SECRET, SECRET_KEY, "rt-ENC-SENTINEL", "refresh_unusable"] {
        assert_eq!(
            support::files_containing(&s.store(), secret),
            Vec::<String>::new(),
            "{secret}"
        );
    }
    assert!(
        !support::exists(&s.root().join("store.migrate-old")),
        "source removed"
    );
    assert!(!support::exists(&s.root().join("store.migrate-new")));
    let after = s.run(&["status", "--json", "--store", &store], b"");
    let (mut b, mut a): (Value, Value) = (
        serde_json::from_str(&before.stdout).expect("json"),
        serde_json::from_str(&after.stdout).expect("json"),
    );
    assert_eq!(a["backend"], "encrypted-file");
    assert_eq!(b["backend"], "file");
    for v in [&mut a, &mut b] {
        v.as_object_mut()
            .expect("object")
            .retain(|k, _| k == "tokens");
    }
    assert_eq!(a, b, "the same tokens, expiries and unusable marks");
    let mut p = s.stdio(&["--audit-log", "off"]);
    p.handshake();
    let key = p.call("1", "get_api_key", json!({"name": "OPENAI"}));
    assert_eq!(key["data"]["key"], SECRET_KEY, "{key}");
    p.close_stdin();
    p.wait();

    // Again: nothing to do.
    s.run(
        &[
            "store",
            "migrate",
            "--to",
            "encrypted-file",
            "--store",
            &store,
        ],
        b"",
    )
    .assert_stdout_has(&["already encrypted-file"]);

    // And back, keeping the encrypted one.
    let back = s.run(
        &[
            "store",
            "migrate",
            "--from",
            "encrypted-file",
            "--to",
            "file",
            "--keep",
            "--store",
            &store,
        ],
        b"",
    );
    back.assert_code(0);
    back.assert_stdout_has(&["kept at", "from encrypted-file to file"]);
    assert_eq!(
        support::files_containing(&s.store(), SECRET).len(),
        1,
        "plaintext again"
    );
    assert!(support::exists(
        &s.root().join("store.migrate-old/encrypted.check")
    ));
}

#[test]
fn an_interrupted_migration_is_finished_by_running_it_again() {
    let s = Scratch::new();
    plain_store_with_entries(&s);
    let store = s.store_arg();
    // Interrupted while copying: a partial new store beside the old one.
    let staging = s.root().join("store.migrate-new");
    let key = s.default_key_file();
    s.run(&["store", "init-key"], b"").assert_code(0);
    let partial = credproxy::store::FileStore::open_encrypted(
        &staging,
        credproxy::store::key::load_file(&key).expect("key"),
    )
    .expect("staging");
    partial
        .put_token(
            "anthropic",
            "default",
            &credproxy_core::Token::from_map(serde_json::Map::new()),
        )
        .expect("partial");
    drop(partial);
    s.run(
        &[
            "store",
            "migrate",
            "--to",
            "encrypted-file",
            "--store",
            &store,
        ],
        b"",
    )
    .assert_code(0);
    let v: Value =
        serde_json::from_str(&s.run(&["status", "--json", "--store", &store], b"").stdout)
            .expect("json");
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["backend"], "encrypted-file");

    // Interrupted between the renames: the old store moved away, the new
    // one not yet in place.
    s.run(
        &[
            "store", "migrate", "--to", "file", "--keep", "--store", &store,
        ],
        b"",
    )
    .assert_code(0);
    fs::rename(s.store(), s.root().join("store.migrate-new")).expect("undo the last rename");
    let ran = s.run(
        &["store", "migrate", "--to", "file", "--store", &store],
        b"",
    );
    ran.assert_code(0);
    ran.assert_stdout_has(&["finished an interrupted migration", "already file"]);
    let v: Value =
        serde_json::from_str(&s.run(&["status", "--json", "--store", &store], b"").stdout)
            .expect("json");
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["backend"], "file");
    assert!(
        !support::exists(&s.root().join("store.migrate-old")),
        "old removed"
    );
}
