//! `credproxy login` (SPEC §8): host-side login, in an in-process proxy
//! (`credproxy stdio` as a child) or through a running proxy's socket.
//!
//! The provider's token endpoint is the tests' HTTP stub
//! ([`crate::support::http_stub::Server`]) on 127.0.0.1, put in place of
//! the built-in anthropic endpoint by the configuration file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;

use serde_json::{Value, json};

use crate::support::http_stub::{self, Behavior, Recorded, Server, free_port};
use crate::support::{self, Ran, Scratch, TIMEOUT};

/// Answers one HTTP request on 127.0.0.1 with `reply` (200, JSON); the
/// server records the request.
fn token_stub(reply: Value) -> Server {
    scripted_stub(vec![reply])
}

/// Answers one HTTP request per entry of `replies`, in order (200, JSON,
/// one connection each); records each request.
fn scripted_stub(replies: Vec<Value>) -> Server {
    Server::scripted(
        (replies.iter())
            .map(|r| Behavior::Respond(http_stub::json("200 OK", &r.to_string())))
            .collect(),
    )
}

/// The request line's method and target, the way they were sent.
fn request_line(seen: &Recorded) -> String {
    format!("{} {}", seen.method, seen.target)
}

fn body(seen: &Recorded) -> String {
    String::from_utf8_lossy(&seen.body).into_owned()
}

/// A token stub answering [`stub_token`], configured as anthropic's token
/// endpoint; what it saw.
fn anthropic_on_a_stub(s: &Scratch) -> Server {
    let seen = token_stub(stub_token());
    let url = seen.url("/token");
    s.write_default_config(&format!("[providers.anthropic]\ntoken_url = \"{url}\"\n"));
    seen
}

fn status_json(s: &Scratch) -> Value {
    let store = s.store_arg();
    let ran = s.run(&["status", "--json", "--store", &store], b"");
    ran.assert_code(0);
    serde_json::from_str(&ran.stdout).expect("status json")
}

fn login(s: &Scratch, args: &[&str], stdin: &[u8]) -> Ran {
    let store = s.store_arg();
    let mut all = vec!["login"];
    all.extend_from_slice(args);
    all.extend(["--store", store.as_str()]);
    s.run(&all, stdin)
}

#[test]
fn unknown_provider_exits_1_with_provider_not_configured() {
    let s = Scratch::new();
    let ran = login(&s, &["nosuchprovider"], b"");
    ran.assert_stderr(1, &["PROVIDER_NOT_CONFIGURED"]);
    assert!(
        ran.stderr
            .contains("No OAuth flow factory configured for provider: nosuchprovider"),
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stdout, "");

    // The same through a running proxy's socket.
    let proxy = s.serve(&["--insecure-no-token", "--audit-log", "off"]);
    let sock = proxy.socket.display().to_string();
    let ran = s.run(&["login", "nosuchprovider", "--socket", &sock], b"");
    ran.assert_code(1);
    assert!(
        ran.stderr.contains(
            "PROVIDER_NOT_CONFIGURED: No OAuth flow factory configured for provider: nosuchprovider"
        ),
        "{}",
        ran.stderr
    );
}

#[test]
fn usage_errors_exit_2_and_a_broken_config_exits_1() {
    let s = Scratch::new();
    let ran = s.run(&["login"], b"");
    ran.assert_code(2);
    let path =
        s.write_default_config("[providers.anthropic]\ntoken_url = \"http://x.example/t\"\n");
    let ran = login(&s, &["anthropic"], b"code\n");
    ran.assert_stderr(1, &[&path.display().to_string(), "must be HTTPS"]);
}

#[test]
fn pkce_login_without_a_code_fails_and_stores_nothing() {
    let s = Scratch::new();
    let ran = login(&s, &["anthropic", "--json"], b"");
    ran.assert_stderr(1, &["no authorization code"]);
    // The URL was shown (stderr for people, a JSON line for scripts).
    ran.assert_stderr_has(&["https://claude.ai/oauth/authorize?"]);
    let first: Value =
        serde_json::from_str(ran.stdout.lines().next().expect("a line")).expect("json line");
    assert_eq!(first["status"], "initiated");
    assert_eq!(first["flow_type"], "pkce_redirect");
    assert!(
        first["auth_url"]
            .as_str()
            .is_some_and(|u| u.contains("code_challenge_method=S256")),
        "{first}"
    );
    assert_eq!(status_json(&s), s.empty_auto_status());
}

fn stub_token() -> Value {
    json!({"access_token":"at-from-login","refresh_token":"rt-from-login",
        "expires_in":3600,"token_type":"Bearer"})
}

fn assert_exchange(seen: &Server) {
    let seen = (seen.requests)
        .recv_timeout(TIMEOUT)
        .expect("the stub saw the exchange");
    assert_eq!(request_line(&seen), "POST /token", "{seen:?}");
    assert!(
        seen.header("content-type")
            .is_some_and(|t| t.contains("json")),
        "anthropic: JSON body {seen:?}"
    );
    let body: Value = serde_json::from_slice(&seen.body).expect("json body");
    assert_eq!(body["code"], "pasted-code");
    assert_eq!(body["grant_type"], "authorization_code");
    assert!(body["code_verifier"].is_string(), "{body}");
}

fn assert_stored(s: &Scratch, bucket: &str) {
    let status = status_json(s);
    let tokens = status["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 1, "{status}");
    assert_eq!(tokens[0]["provider"], "anthropic");
    assert_eq!(tokens[0]["bucket"], bucket);
    assert_eq!(tokens[0]["refreshable"], true, "{status}");
    assert_eq!(tokens[0]["expired"], false, "{status}");
}

#[test]
fn pkce_login_in_process_stores_the_token() {
    let s = Scratch::new();
    let seen = anthropic_on_a_stub(&s);
    let ran = login(&s, &["anthropic"], b"pasted-code\n");
    ran.assert_code(0);
    assert!(
        ran.stdout.starts_with("Logged in to anthropic/default"),
        "{}",
        ran.stdout
    );
    assert!(!ran.stdout.contains("at-from-login") && !ran.stderr.contains("rt-from-login"));
    assert_exchange(&seen);
    assert_stored(&s, "default");
}

#[test]
fn pkce_login_through_a_running_proxy() {
    let s = Scratch::new();
    let seen = anthropic_on_a_stub(&s);
    // With a capability token: a sandbox-class login, allowed by default.
    let proxy = s.serve(&["--audit-log", "off"]);
    let mut cmd = s.command(&["login", "anthropic", "--bucket", "work", "--json"]);
    cmd.env("CREDPROXY_SOCKET", &proxy.socket).env(
        "CREDPROXY_CAPABILITY_FILE",
        proxy.token_file().expect("token file"),
    );
    cmd.stdin(std::process::Stdio::piped());
    let ran = support::run_bounded(cmd, b"pasted-code\n");
    ran.assert_code(0);
    let last: Value = serde_json::from_str(ran.stdout.lines().last().expect("line")).expect("json");
    assert_eq!(last["status"], "complete");
    assert_eq!(last["bucket"], "work");
    assert_exchange(&seen);
    assert_stored(&s, "work");
}

#[test]
fn device_code_login_polls_until_complete() {
    let s = Scratch::new();
    let seen = scripted_stub(vec![
        json!({"device_code":"dc-secret","user_code":"ABCD-EFGH",
            "verification_uri":"https://verify.example/device","expires_in":600}),
        json!({"access_token":"at-device","refresh_token":"rt-device",
            "expires_in":3600,"token_type":"bearer"}),
    ]);
    // Built-in qwen pointed at the stub; the host polls every 50 ms (the
    // stub gives no interval).
    s.write_default_config(&format!(
        "[limits]\ndevice_poll_ms = 50\n\n[providers.qwen]\n\
             device_url = \"{}\"\n\
             token_url = \"{}\"\n",
        seen.url("/device"),
        seen.url("/token")
    ));
    let ran = login(&s, &["qwen", "--json"], b"");
    ran.assert_code(0);
    let lines: Vec<Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", ran.stdout);
    assert_eq!(lines[0]["flow_type"], "device_code");
    assert_eq!(lines[0]["user_code"], "ABCD-EFGH");
    assert_eq!(lines[0]["auth_url"], "https://verify.example/device");
    assert_eq!(lines[1]["status"], "complete");
    ran.assert_stderr_has(&["ABCD-EFGH"]);
    assert!(!ran.stdout.contains("dc-secret") && !ran.stderr.contains("dc-secret"));
    let device = seen.requests.recv_timeout(TIMEOUT).expect("device request");
    assert_eq!(request_line(&device), "POST /device", "{device:?}");
    let poll = seen.requests.recv_timeout(TIMEOUT).expect("token poll");
    assert_eq!(request_line(&poll), "POST /token", "{poll:?}");
    assert!(body(&poll).contains("dc-secret"), "{poll:?}");
    let status = status_json(&s);
    assert_eq!(status["tokens"][0]["provider"], "qwen", "{status}");
    assert_eq!(status["tokens"][0]["refreshable"], true, "{status}");
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').expect("query").1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .to_owned()
}

/// `login codex --json` running, with its first stdout line (the
/// initiation) already read.
struct Interactive {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    first: Value,
    rest: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

impl Interactive {
    fn start(s: &Scratch, args: &[&str]) -> Interactive {
        let store = s.store_arg();
        let mut all = vec!["login"];
        all.extend_from_slice(args);
        all.extend(["--store", store.as_str(), "--json"]);
        let mut cmd = s.command(&all);
        cmd.stdin(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn login");
        let stdin = child.stdin.take();
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = mpsc::channel();
        let rest = thread::spawn(move || {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = tx.send(line);
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
            rest
        });
        let line = rx.recv_timeout(TIMEOUT).expect("the initiation line");
        let first =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("first line {line:?}: {e}"));
        Interactive {
            child,
            stdin,
            first,
            rest,
            stderr,
        }
    }

    fn finish(mut self) -> (std::process::ExitStatus, Value, String) {
        let status = support::wait_bounded(&mut self.child, TIMEOUT, "login");
        drop(self.stdin.take());
        let rest = self.rest.join().expect("stdout");
        let stderr = self.stderr.join().expect("stderr");
        let last = serde_json::from_str(rest.trim())
            .unwrap_or_else(|e| panic!("result {rest:?} ({e}); stderr:\n{stderr}"));
        (status, last, stderr)
    }
}

fn codex_config(s: &Scratch) -> (u16, u16, Server) {
    let seen = token_stub(json!({"access_token":"at-codex",
        "refresh_token":"rt-codex","expires_in":3600,"token_type":"Bearer"}));
    let (token_port, redirect_port) = (seen.addr.port(), free_port());
    s.write_default_config(&format!(
        "[limits]\ndevice_poll_ms = 100\n\n[providers.codex]\n\
             token_url = \"http://127.0.0.1:{token_port}/token\"\n\
             redirect_uri = \"http://127.0.0.1:{redirect_port}/auth/callback\"\n"
    ));
    (token_port, redirect_port, seen)
}

#[test]
fn browser_redirect_login_completes_when_the_browser_comes_back() {
    let s = Scratch::new();
    let (_, redirect_port, seen) = codex_config(&s);
    let login = Interactive::start(&s, &["codex"]);
    assert_eq!(login.first["flow_type"], "browser_redirect");
    let url = login.first["auth_url"]
        .as_str()
        .expect("auth_url")
        .to_owned();
    let state = query_param(&url, "state");
    // The browser's redirect, to the proxy's loopback listener.
    let mut browser =
        TcpStream::connect(("127.0.0.1", redirect_port)).expect("loopback listener is up");
    browser.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    write!(
        browser,
        "GET /auth/callback?code=browser-code&state={state} HTTP/1.1\r\n\
         Host: 127.0.0.1:{redirect_port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send redirect");
    let mut page = String::new();
    let _ = browser.read_to_string(&mut page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let (status, last, stderr) = login.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(last["status"], "complete");
    let exchange = seen.requests.recv_timeout(TIMEOUT).expect("exchange");
    assert!(body(&exchange).contains("browser-code"), "{exchange:?}");
    assert_eq!(status_json(&s)["tokens"][0]["provider"], "codex");
}

#[test]
fn browser_redirect_login_accepts_the_pasted_redirect_url() {
    let s = Scratch::new();
    let (_, redirect_port, seen) = codex_config(&s);
    let mut login = Interactive::start(&s, &["codex"]);
    let url = login.first["auth_url"]
        .as_str()
        .expect("auth_url")
        .to_owned();
    let state = query_param(&url, "state");
    // The browser ran elsewhere: the user pastes where it was sent.
    let pasted =
        format!("http://127.0.0.1:{redirect_port}/auth/callback?code=pasted-code&state={state}\n");
    let stdin = login.stdin.as_mut().expect("stdin");
    stdin.write_all(pasted.as_bytes()).expect("paste");
    stdin.flush().expect("flush");
    let (status, last, stderr) = login.finish();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(last["status"], "complete");
    let exchange = seen.requests.recv_timeout(TIMEOUT).expect("exchange");
    assert!(body(&exchange).contains("pasted-code"), "{exchange:?}");
    assert_eq!(status_json(&s)["tokens"][0]["provider"], "codex");
}
