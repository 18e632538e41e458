//! `credproxy exec -- CMD…` (SPEC §8): the child gets the socket variables,
//! the token file and the same token on an inherited fd; the proxy serves it
//! while it runs, exits with its status and cleans up when it ends.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use serde_json::json;
use support::{Scratch, exists, is_token, python3, skip, write_py};

/// `credproxy exec --store <store> ARGS…`, run to completion.
fn exec(s: &Scratch, args: &[&str]) -> support::Ran {
    let store = s.store_arg();
    let mut all = vec!["exec", "--store", store.as_str(), "--audit-log", "off"];
    all.extend_from_slice(args);
    s.run(&all, b"")
}

/// `KEY=VALUE` lines of `text` as pairs.
fn vars(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn child_gets_the_same_token_in_the_file_and_on_the_fd() {
    let s = Scratch::new();
    let script = r#"
printf 'SOCK=%s\n' "$CREDPROXY_SOCKET"
printf 'LSOCK=%s\n' "$LLXPRT_CREDENTIAL_SOCKET"
printf 'FILE=%s\n' "$CREDPROXY_CAPABILITY_FILE"
printf 'FD=%s\n' "$LLXPRT_CAPABILITY_FD"
printf 'FROMFILE=%s\n' "$(cat "$CREDPROXY_CAPABILITY_FILE")"
printf 'FROMFD=%s\n' "$(cat "/proc/self/fd/$LLXPRT_CAPABILITY_FD")"
printf 'FDBYTES=%s\n' "$(wc -c < "$CREDPROXY_CAPABILITY_FILE")"
test -S "$CREDPROXY_SOCKET" && echo SOCKET_LIVE=yes
"#;
    let ran = exec(&s, &["--", "sh", "-c", script]);
    ran.assert_code(0);
    let v = vars(&ran.stdout);
    assert_eq!(v["SOCK"], v["LSOCK"]);
    let sock = PathBuf::from(&v["SOCK"]);
    let instance = sock.parent().expect("parent").to_path_buf();
    assert_eq!(instance.parent(), Some(s.base().as_path()));
    assert_eq!(PathBuf::from(&v["FILE"]), instance.join("token"));
    assert!(
        v["FD"].parse::<u32>().is_ok_and(|fd| fd > 2),
        "{:?}",
        v["FD"]
    );
    assert!(is_token(&v["FROMFILE"]), "{:?}", v["FROMFILE"]);
    assert_eq!(
        v["FROMFILE"], v["FROMFD"],
        "file and fd hold the same token"
    );
    assert_eq!(v["FDBYTES"].trim(), "65", "64 hex and a newline");
    assert_eq!(v["SOCKET_LIVE"], "yes");
    // The token never appears on our side except through the child.
    assert!(!ran.stderr.contains(&v["FROMFILE"]), "{}", ran.stderr);
    assert!(
        !exists(&instance),
        "instance dir removed after the child exited"
    );
}

#[test]
fn the_fd_holds_exactly_the_token_and_a_newline() {
    let s = Scratch::new();
    let ran = exec(
        &s,
        &[
            "--",
            "sh",
            "-c",
            r#"od -An -c "/proc/self/fd/$LLXPRT_CAPABILITY_FD" | tr -d ' \n'"#,
        ],
    );
    ran.assert_code(0);
    let shown = ran.stdout.trim();
    let hex = shown.strip_suffix("\\n").expect("ends with a newline");
    assert!(is_token(hex), "{shown:?}");
}

#[test]
fn child_inherits_no_descriptor_of_the_proxy_but_the_token_pipe() {
    let s = Scratch::new();
    // `exec`, so the listing is of the process the proxy started (plus the
    // directory ls itself opens, the same in both runs), not of a shell
    // that may hold pipeline descriptors for a moment.
    let list = r#"echo "FD=$LLXPRT_CAPABILITY_FD"; exec ls -1 /proc/self/fd"#;
    // What a child of ours inherits anyway (from the test harness).
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", list])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let base = support::run_bounded(cmd, b"");
    let fds = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
            .collect()
    };
    let baseline = fds(&base.stdout);
    let ran = exec(&s, &["--", "sh", "-c", list]);
    ran.assert_code(0);
    let mut seen = fds(&ran.stdout);
    let token_fd = vars(&ran.stdout)["FD"].clone();
    assert!(seen.remove(&token_fd), "token fd {token_fd} is open");
    assert_eq!(
        seen, baseline,
        "no listener, signal pipe or store descriptor leaks into the child"
    );
}

#[test]
fn exit_status_is_propagated() {
    let s = Scratch::new();
    exec(&s, &["--", "sh", "-c", "exit 7"]).assert_code(7);
    exec(&s, &["--", "sh", "-c", "exit 0"]).assert_code(0);
    exec(&s, &["--", "false"]).assert_code(1);
    // Killed by a signal: 128 + the signal number.
    exec(&s, &["--", "sh", "-c", "kill -9 $$"]).assert_code(137);
    assert_eq!(
        fs::read_dir(s.base()).expect("base").count(),
        0,
        "all cleaned"
    );
}

#[test]
fn unknown_command_fails_and_cleans_up() {
    let s = Scratch::new();
    let ran = exec(&s, &["--", "/nonexistent/credproxy-test-cmd"]);
    ran.assert_code(1);
    assert!(
        ran.stderr.contains("/nonexistent/credproxy-test-cmd"),
        "{}",
        ran.stderr
    );
    assert_eq!(fs::read_dir(s.base()).expect("base").count(), 0);
}

#[test]
fn insecure_no_token_exports_no_token() {
    let s = Scratch::new();
    let ran = exec(
        &s,
        &[
            "--insecure-no-token",
            "--",
            "sh",
            "-c",
            r#"echo "FILE=${CREDPROXY_CAPABILITY_FILE-unset}"; echo "FD=${LLXPRT_CAPABILITY_FD-unset}"; echo "SOCK=$CREDPROXY_SOCKET""#,
        ],
    );
    ran.assert_code(0);
    let v = vars(&ran.stdout);
    assert_eq!(v["FILE"], "unset");
    assert_eq!(v["FD"], "unset");
    assert!(v["SOCK"].ends_with("/proxy.sock"), "{:?}", v["SOCK"]);
}

#[test]
fn child_reads_a_token_through_the_socket() {
    let Some(py) = python3() else {
        skip("child_reads_a_token_through_the_socket", "python3 missing");
        return;
    };
    let s = Scratch::new();
    s.seed_token(
        "anthropic",
        "default",
        &json!({"access_token":"at-for-child","refresh_token":"rt-never-leaves","expiry":4_102_444_800_u64,"token_type":"Bearer"}),
    );
    s.seed_api_key("OPENAI", "sk-for-child");
    let script = write_py(
        s.root(),
        "child.py",
        r#"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(os.environ["CREDPROXY_SOCKET"])
with open(os.environ["CREDPROXY_CAPABILITY_FILE"]) as f:
    token = f.read().strip()
send(s, {"v": 2, "op": "handshake", "payload": {"minVersion": 1, "maxVersion": 2, "capabilityToken": token}})
r = recv(s)
assert r == {"v": 2, "op": "handshake", "ok": True, "data": {"version": 2}}, r
send(s, {"v": 2, "id": "1", "op": "get_token", "payload": {"provider": "anthropic"}})
r = recv(s)
assert r["id"] == "1" and r["ok"], r
assert "refresh_token" not in r["data"], r
print(r["data"]["access_token"])
send(s, {"v": 2, "id": "2", "op": "get_api_key", "payload": {"name": "OPENAI"}})
r = recv(s)
assert r["ok"], r
print(r["data"]["key"])
send(s, {"v": 2, "id": "3", "op": "list_providers"})
print(json.dumps(recv(s)))
sys.exit(int(sys.argv[1]))
"#,
    );
    let script = script.display().to_string();
    let ran = exec(&s, &["--", &py, &script, "5"]);
    ran.assert_code(5);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "at-for-child",
            "sk-for-child",
            r#"{"id": "3", "ok": true, "data": {"providers": []}}"#
        ],
        "stderr: {}",
        ran.stderr
    );
    assert_eq!(fs::read_dir(s.base()).expect("base").count(), 0, "cleaned");
    // The same child succeeding exits 0.
    exec(&s, &["--", &py, &script, "0"]).assert_code(0);
}
