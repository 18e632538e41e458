//! `credproxy call` (SPEC §8): a debug client of a running proxy that
//! prints the reply's data as JSON, or `CODE: message` with exit 1.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{self, Ran, Scratch};

fn call(s: &Scratch, socket: &Path, args: &[&str]) -> Ran {
    let sock = socket.display().to_string();
    let mut all = vec!["call", "--socket", sock.as_str()];
    all.extend_from_slice(args);
    s.run(&all, b"")
}

fn stdout_json(ran: &Ran) -> Value {
    serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", ran.stdout))
}

#[test]
fn save_then_get_against_an_insecure_no_token_proxy() {
    let s = Scratch::new();
    let proxy = s.serve(&["--insecure-no-token", "--audit-log", "off"]);
    let token = json!({"access_token":"at-call","expiry":4_102_444_800_u64,
        "token_type":"Bearer","refresh_token":"rt-never-shown"});
    let payload = json!({"provider":"anthropic","bucket":"work","token":token}).to_string();
    let ran = call(&s, &proxy.socket, &["save_token", &payload]);
    ran.assert_code(0);
    assert_eq!(stdout_json(&ran), json!({}));

    let ran = call(
        &s,
        &proxy.socket,
        &["get_token", r#"{"provider":"anthropic","bucket":"work"}"#],
    );
    ran.assert_code(0);
    assert_eq!(
        stdout_json(&ran),
        json!({"access_token":"at-call","expiry":4_102_444_800_u64,"token_type":"Bearer"})
    );
    assert!(!ran.stdout.contains("rt-never-shown"));

    // --json: one compact line.
    let ran = call(&s, &proxy.socket, &["list_providers", "--json"]);
    ran.assert_code(0);
    assert_eq!(ran.stdout, "{\"providers\":[\"anthropic\"]}\n");

    // The socket from the environment, in order CREDPROXY_SOCKET,
    // LLXPRT_CREDENTIAL_SOCKET.
    let mut cmd = s.command(&["call", "list_buckets", r#"{"provider":"anthropic"}"#]);
    cmd.env("LLXPRT_CREDENTIAL_SOCKET", &proxy.socket);
    let ran = support::run_bounded(cmd, b"");
    ran.assert_code(0);
    assert_eq!(stdout_json(&ran), json!({"buckets":["work"]}));
    let mut cmd = s.command(&["call", "list_providers"]);
    cmd.env("CREDPROXY_SOCKET", &proxy.socket)
        .env("LLXPRT_CREDENTIAL_SOCKET", "/nonexistent/llxprt.sock");
    support::run_bounded(cmd, b"").assert_code(0);
}

#[test]
fn error_reply_is_code_and_message_on_stderr_exit_1() {
    let s = Scratch::new();
    let proxy = s.serve(&["--insecure-no-token", "--audit-log", "off"]);
    let ran = call(
        &s,
        &proxy.socket,
        &["get_token", r#"{"provider":"nobody"}"#],
    );
    ran.assert_code(1);
    assert_eq!(ran.stdout, "");
    assert!(
        ran.stderr
            .contains("NOT_FOUND: No token found for provider: nobody"),
        "{}",
        ran.stderr
    );
    // --json: the error on stdout as well.
    let ran = call(
        &s,
        &proxy.socket,
        &["get_token", r#"{"provider":"nobody"}"#, "--json"],
    );
    ran.assert_code(1);
    assert_eq!(
        stdout_json(&ran),
        json!({"ok":false,"code":"NOT_FOUND","error":"No token found for provider: nobody"})
    );
    let ran = call(&s, &proxy.socket, &["no_such_op"]);
    ran.assert_code(1);
    assert!(
        ran.stderr
            .contains("INVALID_REQUEST: Unknown operation: no_such_op"),
        "{}",
        ran.stderr
    );
}

#[test]
fn capability_token_from_the_environment() {
    let s = Scratch::new();
    let proxy = s.serve(&["--audit-log", "off"]);
    s.seed_token(
        "anthropic",
        "default",
        &json!({"access_token":"at-seeded","expiry":4_102_444_800_u64,"token_type":"Bearer"}),
    );
    let token_file = proxy.token_file().expect("token file");
    // Without the token the proxy refuses, and the message says what to do.
    let ran = call(
        &s,
        &proxy.socket,
        &["get_token", r#"{"provider":"anthropic"}"#],
    );
    ran.assert_stderr(1, &["CREDPROXY_CAPABILITY_FILE"]);
    // With it: a sandbox connection that may read the token.
    let mut cmd = s.command(&["call", "get_token", r#"{"provider":"anthropic"}"#]);
    cmd.env("CREDPROXY_SOCKET", &proxy.socket)
        .env("CREDPROXY_CAPABILITY_FILE", &token_file);
    let ran = support::run_bounded(cmd, b"");
    ran.assert_code(0);
    assert_eq!(stdout_json(&ran)["access_token"], "at-seeded");
    // --capability-file works the same.
    let file = token_file.display().to_string();
    let ran = call(
        &s,
        &proxy.socket,
        &["list_providers", "--capability-file", &file],
    );
    ran.assert_code(0);
    assert_eq!(
        stdout_json(&ran),
        json!({"providers":[]}),
        "sandbox: empty list"
    );
}

#[test]
fn wrong_socket_exits_1_with_an_actionable_message() {
    let s = Scratch::new();
    let missing = s.root().join("no-such.sock");
    let ran = call(&s, &missing, &["list_providers"]);
    ran.assert_stderr(
        1,
        &[
            "cannot connect",
            &missing.display().to_string(),
            "credproxy serve",
        ],
    );

    // No socket at all.
    let ran = s.run(&["call", "list_providers"], b"");
    ran.assert_stderr(1, &["--socket", "CREDPROXY_SOCKET"]);
}

#[test]
fn payload_must_be_a_json_object() {
    let s = Scratch::new();
    let sock = s.root().join("x.sock");
    for bad in ["[1,2]", "not json", "\"s\""] {
        let ran = call(&s, &sock, &["get_token", bad]);
        ran.assert_stderr(2, &["JSON"]);
    }
}
