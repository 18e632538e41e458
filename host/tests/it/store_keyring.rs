//! The `keyring` store backend through the binary (issue 14), on a private
//! session bus with gnome-keyring ([`TestKeyring`]): the secrets go to the
//! Secret Service under service `credproxy` with the accounts and labels a
//! person recognises, the store directory holds only names and stamps, a
//! restart serves them back, a delete removes the item, and a locked
//! keyring fails the one operation clearly while the rest is served.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::keyring::{TestKeyring, require_tool};
use crate::support::{self, Proxy, Ran, Scratch, StdioProc, run_bounded};

const SECRET: &str = "at-KR-SENTINEL-51d2";
const SECRET_KEY: &str = "sk-KR-SENTINEL-0c3f";

/// The binary with `args` in `s`, on `kr`'s bus.
fn command(s: &Scratch, kr: &TestKeyring, args: &[&str]) -> Command {
    let mut cmd = s.command(args);
    kr.apply(&mut cmd);
    cmd
}

fn run(s: &Scratch, kr: &TestKeyring, args: &[&str], stdin: &[u8]) -> Ran {
    let mut cmd = command(s, kr, args);
    cmd.stdin(Stdio::piped());
    run_bounded(cmd, stdin)
}

fn serve(s: &Scratch, kr: &TestKeyring, extra: &[&str]) -> Proxy {
    let store = s.store_arg();
    let mut args = vec!["serve", "--store", store.as_str(), "--audit-log", "off"];
    args.extend_from_slice(extra);
    match Proxy::spawn(command(s, kr, &args), true) {
        Ok(p) => p,
        Err(e) => panic!("serve did not start: {:?}\n{}", e.status, e.stderr),
    }
}

/// Host-class calls over one `credproxy stdio`; returns the replies.
fn host_calls(s: &Scratch, kr: &TestKeyring, calls: &[(&str, Value)]) -> (Vec<Value>, String) {
    host_calls_at(s, kr, &s.store_arg(), calls)
}

/// [`host_calls`] on the store at `store`.
fn host_calls_at(
    s: &Scratch,
    kr: &TestKeyring,
    store: &str,
    calls: &[(&str, Value)],
) -> (Vec<Value>, String) {
    let mut cmd = command(s, kr, &["stdio", "--store", store, "--audit-log", "off"]);
    cmd.stdin(Stdio::piped());
    let mut p = StdioProc::spawn(cmd);
    p.handshake();
    let replies = calls
        .iter()
        .enumerate()
        .map(|(i, (op, payload))| p.call(&i.to_string(), op, payload.clone()))
        .collect();
    p.close_stdin();
    assert_eq!(p.wait().code(), Some(0), "{}", p.stderr());
    (replies, p.stderr())
}

fn save_payload(provider: &str, access: &str) -> Value {
    json!({"provider": provider, "token": support::token_json(access)})
}

/// Makes `backend` the default configuration's store backend and saves
/// the `anthropic` token [`SECRET`] there through `credproxy stdio`.
fn save_anthropic_with(s: &Scratch, kr: &TestKeyring, backend: &str) {
    s.write_default_config(&format!("store_backend = \"{backend}\"\n"));
    let (saved, _) = host_calls(s, kr, &[("save_token", save_payload("anthropic", SECRET))]);
    assert_eq!(saved[0]["ok"], true, "{}", saved[0]);
}

/// `secret-tool search --all service credproxy [username ACCOUNT]`: its
/// stdout (libsecret's view, as Seahorse shows it).
fn search(kr: &TestKeyring, account: Option<&str>) -> String {
    let tool = require_tool("secret-tool", "libsecret-tools");
    let mut cmd = Command::new(tool);
    cmd.args(["search", "--all", "service", "credproxy"]);
    if let Some(account) = account {
        cmd.args(["username", account]);
    }
    let out = kr.apply(&mut cmd).output().expect("run secret-tool");
    // Exit 1 with nothing printed: no item.
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many items the service `credproxy` has.
fn item_count(kr: &TestKeyring) -> usize {
    search(kr, None)
        .lines()
        .filter(|l| l.starts_with('['))
        .count()
}

/// The label and secret of the one item of `account`, if any.
fn item(kr: &TestKeyring, account: &str) -> Option<(String, String)> {
    let text = search(kr, Some(account));
    assert!(
        text.lines().filter(|l| l.starts_with('[')).count() <= 1,
        "{text}"
    );
    let label = text
        .lines()
        .find_map(|l| l.strip_prefix("label = "))?
        .to_owned();
    // The secret runs from `secret = ` to the `created = ` line.
    let start = text.find("secret = ")? + "secret = ".len();
    let end = text[start..].find("\ncreated = ")? + start;
    Some((label, text[start..end].to_owned()))
}

#[test]
fn secrets_live_in_the_keyring_and_the_store_holds_only_names_and_stamps() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    // The configuration key for the CLI, the flag for serve.
    save_anthropic_with(&s, &kr, "keyring");
    let set = run(
        &s,
        &kr,
        &["key", "set", "OPENAI", "--store", &s.store_arg()],
        format!("{SECRET_KEY}\n").as_bytes(),
    );
    set.assert_code(0);

    for needle in [SECRET, SECRET_KEY, "access_token"] {
        assert_eq!(
            support::files_containing(&s.store(), needle),
            Vec::<String>::new(),
            "{needle} on disk"
        );
    }
    assert_eq!(item_count(&kr), 2);
    let (label, token) = item(&kr, "anthropic/default").expect("token item");
    assert_eq!(label, "credproxy: anthropic/default token");
    assert!(token.contains(SECRET), "{token}");
    let (label, key) = item(&kr, "key/OPENAI").expect("key item");
    assert_eq!(label, "credproxy: API key OPENAI");
    assert_eq!(key, SECRET_KEY);

    // A new process (a restart) serves them back.
    let mut p = serve(&s, &kr, &["--store-backend", "keyring"]);
    let mut c = p.sandbox_client();
    let got = c.call("1", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["data"]["access_token"], SECRET, "{got}");
    assert!(got["data"].get("refresh_token").is_none(), "{got}");
    let key = c.call("2", "get_api_key", json!({"name": "OPENAI"}));
    assert_eq!(key["data"]["key"], SECRET_KEY, "{key}");
    // A token rewritten by another process is seen (the stamp changed).
    let (saved, _) = host_calls(
        &s,
        &kr,
        &[("save_token", save_payload("anthropic", "at-KR-second"))],
    );
    assert_eq!(saved[0]["ok"], true, "{}", saved[0]);
    let got = c.call("3", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["data"]["access_token"], "at-KR-second", "{got}");
    p.stop(Signal::SIGTERM);
    assert!(!p.stderr().contains(SECRET), "{}", p.stderr());

    let status = run(&s, &kr, &["status", "--store", &s.store_arg()], b"");
    status.assert_code(0);
    status.assert_stdout_has(&["anthropic", "backend: keyring (Secret Service)"]);
    let json: Value = serde_json::from_str(
        &run(
            &s,
            &kr,
            &["status", "--json", "--store", &s.store_arg()],
            b"",
        )
        .stdout,
    )
    .expect("json");
    assert_eq!(json["backend"], "keyring", "{json}");

    // Deleting removes the stamp and the item.
    let (removed, _) = host_calls(
        &s,
        &kr,
        &[("remove_token", json!({"provider": "anthropic"}))],
    );
    assert_eq!(removed[0]["ok"], true, "{}", removed[0]);
    run(
        &s,
        &kr,
        &["key", "rm", "OPENAI", "--store", &s.store_arg()],
        b"",
    )
    .assert_code(0);
    assert_eq!(item_count(&kr), 0);
    let (after, _) = host_calls(
        &s,
        &kr,
        &[
            ("get_token", json!({"provider": "anthropic"})),
            ("list_api_keys", json!({})),
        ],
    );
    assert_eq!(after[0]["code"], "NOT_FOUND", "{}", after[0]);
    assert_eq!(after[1]["data"]["keys"], json!([]), "{}", after[1]);
}

#[test]
fn an_item_removed_outside_credproxy_is_reported_missing_and_a_new_login_replaces_it() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    s.write_default_config("store_backend = \"keyring\"\n");
    let (saved, _) = host_calls(&s, &kr, &[("save_token", save_payload("codex", SECRET))]);
    assert_eq!(saved[0]["ok"], true, "{}", saved[0]);
    let tool = require_tool("secret-tool", "libsecret-tools");
    let mut clear = Command::new(tool);
    clear.args(["clear", "service", "credproxy", "username", "codex/default"]);
    assert!(
        kr.apply(&mut clear)
            .status()
            .expect("secret-tool clear")
            .success()
    );

    let status = run(&s, &kr, &["status", "--store", &s.store_arg()], b"");
    status.assert_code(0);
    status.assert_stdout_has(&["codex/default", "missing in the keyring"]);
    let (again, _) = host_calls(
        &s,
        &kr,
        &[
            ("get_token", json!({"provider": "codex"})),
            ("save_token", save_payload("codex", "at-KR-new")),
            ("get_token", json!({"provider": "codex"})),
        ],
    );
    assert_eq!(again[0]["ok"], false, "{}", again[0]);
    assert_eq!(again[1]["ok"], true, "{}", again[1]);
    assert_eq!(
        again[2]["data"]["access_token"], "at-KR-new",
        "{}",
        again[2]
    );
}

#[test]
fn a_locked_keyring_fails_the_secret_operations_clearly_and_the_rest_is_served() {
    let kr = TestKeyring::llxprt_fixture_locked();
    let s = Scratch::new();
    let mut p = serve(&s, &kr, &["--store-backend", "keyring"]);
    let (replies, stderr) = host_calls(
        &s,
        &kr,
        &[
            ("save_token", save_payload("anthropic", SECRET)),
            ("list_providers", json!({})),
            ("get_token", json!({"provider": "anthropic"})),
        ],
    );
    assert_eq!(replies[0]["ok"], false, "{}", replies[0]);
    assert_eq!(
        replies[1]["data"]["providers"],
        json!([]),
        "served: {}",
        replies[1]
    );
    // No stamp: absent, without asking the keyring.
    assert_eq!(replies[2]["code"], "NOT_FOUND", "{}", replies[2]);
    // The proxy that was serving meanwhile still serves.
    let mut c = p.sandbox_client();
    let listed = c.call("1", "list_api_keys", json!({}));
    assert_eq!(listed["data"]["keys"], json!([]), "{listed}");
    assert!(
        stderr.contains("keyring") && stderr.contains("locked"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert_eq!(
        fs::read_dir(s.store().join("tokens")).expect("ls").count(),
        0,
        "no stamp left"
    );
    p.stop(Signal::SIGTERM);
}

#[test]
fn migrate_moves_a_store_into_the_keyring_and_back_out() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    s.seed_plain_token("anthropic", "work", &support::token_json(SECRET));
    run(
        &s,
        &kr,
        &[
            "key",
            "set",
            "OPENAI",
            "--store",
            &s.store_arg(),
            "--store-backend",
            "file",
        ],
        format!("{SECRET_KEY}\n").as_bytes(),
    )
    .assert_code(0);
    let to = run(
        &s,
        &kr,
        &[
            "store",
            "migrate",
            "--to",
            "keyring",
            "--store",
            &s.store_arg(),
        ],
        b"",
    );
    to.assert_code(0);
    to.assert_stdout_has(&["moved 1 tokens and 1 API keys from file to keyring"]);
    for needle in [SECRET, SECRET_KEY] {
        assert_eq!(
            support::files_containing(&s.store(), needle),
            Vec::<String>::new(),
            "{needle} on disk"
        );
    }
    assert_eq!(item_count(&kr), 2);
    assert!(item(&kr, "anthropic/work").is_some_and(|(_, t)| t.contains(SECRET)));
    assert_eq!(
        item(&kr, "key/OPENAI").map(|(_, k)| k).as_deref(),
        Some(SECRET_KEY)
    );
    // auto opens a keyring store as one.
    let status = run(&s, &kr, &["status", "--store", &s.store_arg()], b"");
    status.assert_stdout_has(&["anthropic/work", "backend: keyring (Secret Service)"]);

    let back = run(
        &s,
        &kr,
        &[
            "store",
            "migrate",
            "--to",
            "file",
            "--store",
            &s.store_arg(),
        ],
        b"",
    );
    back.assert_code(0);
    assert_eq!(item_count(&kr), 0, "the old store's items left with it");
    assert_eq!(
        support::files_containing(&s.store(), SECRET).len(),
        1,
        "plaintext again"
    );
    assert_eq!(
        support::files_containing(&s.store(), SECRET_KEY).len(),
        1,
        "plaintext again"
    );
}

const FIGURES_OUT_ENV: &str = "CREDPROXY_KEYRING_FIGURES_OUT";

/// Figures for BENCHMARKS.md: `cargo test -p credproxy --test it --
/// --ignored --nocapture store_keyring::figures`.
#[test]
#[ignore = "measurement; run by hand with --nocapture"]
fn figures() {
    let kr = TestKeyring::fresh();
    let out = tempfile::tempdir().expect("tempdir");
    let file = out.path().join("figures");
    crate::support::keyring::run_child_test("store_keyring::figures_child", &[], |c| {
        kr.apply(c).env(FIGURES_OUT_ENV, &file)
    });
    eprintln!("{}", fs::read_to_string(&file).expect("figures"));
}

/// [`figures`]' measurement, in a child on the private bus.
#[test]
#[ignore = "helper process for figures"]
fn figures_child() {
    use std::time::Instant;
    const N: usize = 200;
    let Some(out) = std::env::var_os(FIGURES_OUT_ENV) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let keyring =
        credproxy::keyring::Keyring::open(std::time::Duration::from_secs(5)).expect("keyring");
    let store = credproxy::store::FileStore::open_keyring(&tmp.path().join("s"), keyring)
        .expect("open keyring store");
    let Value::Object(map) = support::token_json("at-figures") else {
        unreachable!("object");
    };
    let token = credproxy_core::Token::from_map(map);
    let bucket = |i: usize| format!("b{}", i % 10);
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed()
    };
    let puts: Vec<_> = (0..N)
        .map(|i| {
            time(&mut || {
                store
                    .put_token("anthropic", &bucket(i), &token)
                    .expect("put")
            })
        })
        .collect();
    let cached: Vec<_> = (0..10 * N)
        .map(|i| {
            time(&mut || {
                assert!(store.get_token_cached("anthropic", &bucket(i)).is_some());
            })
        })
        .collect();
    let fresh: Vec<_> = (0..N)
        .map(|i| {
            time(&mut || {
                store
                    .get_token("anthropic", &bucket(i), true)
                    .expect("get")
                    .expect("present");
            })
        })
        .collect();
    let text = format!(
        "keyring store figures (gnome-keyring on a private bus, {N} writes over 10 keys):\n  \
         save_token (put_token): {}\n  get_token cached: {}\n  get_token fresh: {}",
        support::percentiles(puts),
        support::percentiles(cached),
        support::percentiles(fresh),
    );
    fs::write(out, text).expect("write figures");
}

#[test]
fn auto_makes_a_new_store_a_keyring_store_when_the_keyring_is_unlocked() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    let (saved, _) = host_calls(
        &s,
        &kr,
        &[("save_token", save_payload("anthropic", SECRET))],
    );
    assert_eq!(saved[0]["ok"], true, "{}", saved[0]);
    assert_eq!(
        support::files_containing(&s.store(), SECRET),
        Vec::<String>::new()
    );
    assert_eq!(item_count(&kr), 1);
    assert!(!support::exists(&s.default_key_file()), "no key file made");
    let status = run(&s, &kr, &["status", "--store", &s.store_arg()], b"");
    status.assert_stdout_has(&["anthropic", "backend: keyring (Secret Service)"]);
    // Without the keyring it stays a keyring store, and says why it fails.
    let without = s.run(&["status", "--store", &s.store_arg()], b"");
    without.assert_stderr(3, &["keyring backend needs the OS keyring"]);
    assert!(!support::exists(&s.default_key_file()), "still no key file");
}

#[test]
fn auto_keeps_encrypted_file_without_an_unlocked_keyring_and_for_existing_stores() {
    for kr in [
        TestKeyring::llxprt_fixture_locked(),
        TestKeyring::bus_only(),
    ] {
        let s = Scratch::new();
        let status = run(&s, &kr, &["status", "--store", &s.store_arg()], b"");
        status.assert_code(0);
        status.assert_stdout_has(&["backend: encrypted-file (key file"]);
        assert!(support::exists(&s.default_key_file()));
    }
    // A store made encrypted before the keyring was there stays so.
    let s = Scratch::new();
    s.run(&["status", "--store", &s.store_arg()], b"")
        .assert_code(0);
    let kr = TestKeyring::fresh();
    let status = run(&s, &kr, &["status", "--store", &s.store_arg()], b"");
    status.assert_stdout_has(&["backend: encrypted-file (key file"]);
    // So does a plaintext one, and a key given names encrypted-file.
    let plain = Scratch::new();
    plain.seed_plain_token("codex", "default", &support::token_json("at-plain"));
    run(&plain, &kr, &["status", "--store", &plain.store_arg()], b"")
        .assert_stdout_has(&["backend: file (plaintext)"]);
    let keyed = Scratch::new();
    let key = keyed.root().join("k").display().to_string();
    keyed
        .run(&["store", "init-key", "--key-file", &key], b"")
        .assert_code(0);
    run(
        &keyed,
        &kr,
        &[
            "status",
            "--store",
            &keyed.store_arg(),
            "--store-key-file",
            &key,
        ],
        b"",
    )
    .assert_stdout_has(&["backend: encrypted-file (key file"]);
    assert_eq!(item_count(&kr), 0);
}

#[test]
fn a_damaged_stamp_is_reported_and_kept_aside_by_the_next_write() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    s.write_default_config("store_backend = \"keyring\"\n");
    let (saved, _) = host_calls(&s, &kr, &[("save_token", save_payload("codex", SECRET))]);
    assert_eq!(saved[0]["ok"], true, "{}", saved[0]);
    let tokens = s.store().join("tokens");
    let stamp = fs::read_dir(&tokens)
        .expect("ls")
        .next()
        .expect("one stamp")
        .expect("entry")
        .path();
    assert!(
        fs::read_to_string(&stamp)
            .expect("stamp")
            .starts_with("credproxy-keyring 1 "),
        "a stamp, not a secret"
    );
    fs::write(&stamp, b"{\"access_token\": tor").expect("damage");
    let status = run(&s, &kr, &["status", "--store", &s.store_arg()], b"");
    status.assert_stdout_has(&["codex/default", "not a keyring stamp"]);
    let (again, _) = host_calls(&s, &kr, &[("save_token", save_payload("codex", "at-KR-3"))]);
    assert_eq!(again[0]["ok"], true, "{}", again[0]);
    let kept: Vec<_> = fs::read_dir(&tokens)
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let (got, _) = host_calls(&s, &kr, &[("get_token", json!({"provider": "codex"}))]);
    assert_eq!(got[0]["data"]["access_token"], "at-KR-3", "{}", got[0]);
}

/// Every file under `dir` with its bytes, sorted (to see nothing changed).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p.clone());
                out.push((p.display().to_string(), Vec::new()));
            } else {
                out.push((p.display().to_string(), fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn encrypted_file_without_a_key_file_keeps_its_key_in_the_keyring() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    save_anthropic_with(&s, &kr, "encrypted-file");
    assert_eq!(
        support::files_containing(&s.store(), SECRET),
        Vec::<String>::new()
    );
    let tokens: Vec<_> = snapshot(&s.store().join("tokens"))
        .into_iter()
        .filter(|(_, bytes)| !bytes.is_empty())
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert!(tokens[0].1.starts_with(b"CPXE"), "an envelope on disk");
    assert!(!support::exists(&s.default_key_file()), "no key file made");
    let root = fs::canonicalize(s.store()).expect("root");
    let account = recorded_account(&s.store());
    let id = account.strip_prefix("store-key:").expect("the account");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a random id: {account}"
    );
    // `secret-tool search service credproxy username ACCOUNT` finds it.
    let (label, key) = item(&kr, &account).expect("the key item");
    assert_eq!(
        label,
        format!("credproxy: store key for {}", root.display())
    );
    assert_eq!(key.len(), 64, "hex of 32 bytes");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(item_count(&kr), 1, "only the key is in the keyring");

    // A restart serves the token back; status names the key's source.
    let mut p = serve(&s, &kr, &["--store-backend", "encrypted-file"]);
    let mut c = p.sandbox_client();
    let got = c.call("1", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["data"]["access_token"], SECRET, "{got}");
    p.stop(Signal::SIGTERM);
    assert!(!p.stderr().contains(&key), "{}", p.stderr());
    let status = run(&s, &kr, &["status", "--store", &s.store_arg()], b"");
    status.assert_code(0);
    status.assert_stdout_has(&[
        "anthropic",
        "backend: encrypted-file (key in the OS keyring)",
    ]);
    assert!(!status.stdout.contains(&key) && !status.stderr.contains(&key));
    // So does auto, for the store marked so.
    let auto = run(
        &s,
        &kr,
        &[
            "status",
            "--store",
            &s.store_arg(),
            "--store-backend",
            "auto",
        ],
        b"",
    );
    auto.assert_stdout_has(&["backend: encrypted-file (key in the OS keyring)"]);

    // Without a reachable keyring: a clear error, and nothing written.
    let before = snapshot(&s.store());
    for backend in ["encrypted-file", "auto"] {
        let without = s.run(
            &[
                "status",
                "--store",
                &s.store_arg(),
                "--store-backend",
                backend,
            ],
            b"",
        );
        without.assert_stderr(
            3,
            &[
                "the store key of",
                "is in the OS keyring, which is not reachable",
            ],
        );
        assert!(!without.stderr.contains(&key), "{}", without.stderr);
    }
    let without = s.run(
        &[
            "serve",
            "--store",
            &s.store_arg(),
            "--audit-log",
            "off",
            "--store-backend",
            "encrypted-file",
        ],
        b"",
    );
    without.assert_stderr(3, &["is in the OS keyring, which is not reachable"]);
    assert_eq!(snapshot(&s.store()), before, "nothing written");
    assert!(!support::exists(&s.default_key_file()), "still no key file");
    // A wrong explicit key is caught by the check file.
    let other = s.root().join("other.key").display().to_string();
    s.run(&["store", "init-key", "--key-file", &other], b"")
        .assert_code(0);
    run(
        &s,
        &kr,
        &[
            "status",
            "--store",
            &s.store_arg(),
            "--store-key-file",
            &other,
        ],
        b"",
    )
    .assert_stderr(3, &["does not open the store"]);
    assert_eq!(snapshot(&s.store()), before, "still nothing written");
}

#[test]
fn encrypted_file_with_a_key_file_makes_no_keyring_item() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    let key = s.root().join("k").display().to_string();
    s.run(&["store", "init-key", "--key-file", &key], b"")
        .assert_code(0);
    let store = s.store_arg();
    run(
        &s,
        &kr,
        &[
            "key",
            "set",
            "OPENAI",
            "--store",
            &store,
            "--store-backend",
            "encrypted-file",
            "--store-key-file",
            &key,
        ],
        format!("{SECRET_KEY}\n").as_bytes(),
    )
    .assert_code(0);
    assert_eq!(item_count(&kr), 0, "no keyring item");
    assert!(!support::exists(&s.store().join("key-source")));
    assert_eq!(
        support::files_containing(&s.store(), SECRET_KEY),
        Vec::<String>::new()
    );
    run(
        &s,
        &kr,
        &[
            "status",
            "--store",
            &store,
            "--store-backend",
            "encrypted-file",
            "--store-key-file",
            &key,
        ],
        b"",
    )
    .assert_stdout_has(&["backend: encrypted-file (key file"]);
}

#[test]
fn first_uses_at_once_of_a_keyring_keyed_store_agree_on_one_key() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    let store = s.store_arg();
    let args = [
        "status",
        "--store",
        store.as_str(),
        "--store-backend",
        "encrypted-file",
    ];
    let children: Vec<_> = (0..4)
        .map(|_| {
            let mut cmd = command(&s, &kr, &args);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(item_count(&kr), 1, "one key item");
    let (saved, _) = {
        s.write_default_config("store_backend = \"encrypted-file\"\n");
        host_calls(
            &s,
            &kr,
            &[("save_token", save_payload("anthropic", SECRET))],
        )
    };
    assert_eq!(saved[0]["ok"], true, "{}", saved[0]);
    run(&s, &kr, &args, b"").assert_stdout_has(&["anthropic", "key in the OS keyring"]);
}

/// The keyring account the store at `store` records in its `key-source`.
fn recorded_account(store: &Path) -> String {
    let text = fs::read_to_string(store.join("key-source")).expect("key-source");
    text.strip_prefix("keyring ")
        .and_then(|a| a.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{text:?}"))
        .to_owned()
}

/// `secret-tool ARGS` on `kr`'s bus with `stdin`; asserts success.
fn secret_tool(kr: &TestKeyring, args: &[&str], stdin: &[u8]) {
    let mut cmd = Command::new(require_tool("secret-tool", "libsecret-tools"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    kr.apply(&mut cmd);
    let ran = run_bounded(cmd, stdin);
    ran.assert_code(0);
}

fn get_token_at(s: &Scratch, kr: &TestKeyring, store: &Path) -> Value {
    let (got, _) = host_calls_at(
        s,
        kr,
        &store.display().to_string(),
        &[("get_token", json!({"provider": "anthropic"}))],
    );
    got[0]["data"]["access_token"].clone()
}

#[test]
fn a_keyring_keyed_store_finds_its_key_after_a_move_and_from_an_older_version() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    save_anthropic_with(&s, &kr, "encrypted-file");
    let account = recorded_account(&s.store());
    let (label, key) = item(&kr, &account).expect("the key item");

    // Moved: the recorded account still names its key.
    let moved = s.root().join("moved");
    fs::rename(s.store(), &moved).expect("move");
    assert_eq!(get_token_at(&s, &kr, &moved), SECRET);
    assert_eq!(recorded_account(&moved), account, "the record is kept");

    // A store of an older version records only `keyring`, its key under
    // an account named after its path: it opens, and its record is
    // rewritten to name that account, so it can be moved from then on.
    // Here at a long path with spaces and a letter beyond ASCII, as a
    // home directory may have.
    let old_home = s
        .root()
        .join(format!("an older store ä {}", "d".repeat(80)));
    fs::rename(&moved, &old_home).expect("move to the old home");
    let root = fs::canonicalize(&old_home).expect("root");
    let by_path = format!("store-key:{}", root.display());
    secret_tool(
        &kr,
        &[
            "store",
            "--label",
            &label,
            "service",
            "credproxy",
            "username",
            &by_path,
        ],
        key.as_bytes(),
    );
    secret_tool(
        &kr,
        &["clear", "service", "credproxy", "username", &account],
        b"",
    );
    assert_eq!(item_count(&kr), 1, "only the path-named item");
    let source = old_home.join("key-source");
    fs::write(&source, b"keyring\n").expect("legacy record");
    fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    assert_eq!(get_token_at(&s, &kr, &old_home), SECRET);
    assert_eq!(recorded_account(&old_home), by_path, "now recorded");
    assert_eq!(get_token_at(&s, &kr, &old_home), SECRET, "and read back");
    fs::rename(&old_home, &moved).expect("move");
    assert_eq!(get_token_at(&s, &kr, &moved), SECRET);

    // A record credproxy did not write: a clear error, nothing changed.
    fs::write(moved.join("key-source"), b"keyring elsewhere\n").expect("junk");
    let before = snapshot(&moved);
    let status = run(
        &s,
        &kr,
        &[
            "status",
            "--store",
            &moved.display().to_string(),
            "--store-backend",
            "encrypted-file",
        ],
        b"",
    );
    status.assert_stderr(3, &["is not a key-source file credproxy wrote"]);
    assert!(!status.stderr.contains(&key), "{}", status.stderr);
    assert_eq!(snapshot(&moved), before, "nothing written");
}

#[test]
fn migrating_a_keyring_keyed_store_keeps_the_key_with_keep_and_removes_it_otherwise() {
    let kr = TestKeyring::fresh();
    let s = Scratch::new();
    save_anthropic_with(&s, &kr, "encrypted-file");
    let store = s.store_arg();
    let migrate = |keep: bool| {
        let mut args = vec![
            "store",
            "migrate",
            "--from",
            "encrypted-file",
            "--to",
            "file",
            "--store",
            store.as_str(),
        ];
        if keep {
            args.push("--keep");
        }
        let ran = run(&s, &kr, &args, b"");
        ran.assert_code(0);
        ran
    };
    // --keep: the old store is renamed, and it still opens with its key.
    migrate(true);
    assert_eq!(item_count(&kr), 1, "the key is kept with the old store");
    let old = s.root().join("store.migrate-old");
    assert_eq!(get_token_at(&s, &kr, &old), SECRET);

    // Without --keep the key item leaves with the store.
    fs::remove_dir_all(s.store()).expect("remove the file store");
    fs::rename(&old, s.store()).expect("the old store back");
    let ran = migrate(false);
    assert!(!ran.stderr.contains("notice"), "{}", ran.stderr);
    assert_eq!(item_count(&kr), 0, "the key item removed with the store");
    assert!(!support::exists(&old));
    assert_eq!(
        support::files_containing(&s.store(), SECRET).len(),
        1,
        "plaintext in the file store"
    );
}
