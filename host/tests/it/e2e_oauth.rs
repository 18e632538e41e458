//! End-to-end logins and refreshes against a real OAuth authorization
//! server ([`support::oauth_server`]) on 127.0.0.1, driven through the real
//! `credproxy serve` over its socket with the default capability token (a
//! sandbox connection, as in production), and the client library against
//! the server.
//!
//! The built-in providers are pointed at the test server with the
//! configuration file (`[providers.anthropic]`, `[providers.qwen]`,
//! `[providers.codex]`), and two providers of our own (`corp`, `corpweb`)
//! find their endpoints by OIDC discovery. Timings come from `[limits]` so
//! that every flow finishes in well under a second or two; every wait is a
//! bounded poll of an observable condition.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use credproxy_unix::client::{
    BlockingClient, CONNECTION_LOST_MESSAGE, CapabilitySource, ClientError, ConnectionState,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::http_stub::free_port;
use crate::support::oauth_server::{DEVICE_GRANT, DeviceStep, OAuthServer};
use crate::support::{self, Client, Proxy, Scratch};

/// Device polling when the provider gives no interval.
const POLL_MS: u64 = 100;
/// Added to the device polling interval by each `slow_down`.
const SLOW_DOWN_MS: u64 = 400;
/// Refresh cooldown per provider/bucket.
const COOLDOWN_MS: u64 = 300;
/// Bound on any flow or condition the tests wait for.
const FLOW_LIMIT: Duration = Duration::from_secs(10);
/// Pause between two `oauth_poll`s or refresh attempts: shorter than any
/// poll interval the proxy uses here.
const TICK: Duration = Duration::from_millis(20);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// One test's world: a private tree, the OAuth server and a configuration
/// file pointing every provider at it.
struct World {
    s: Scratch,
    server: OAuthServer,
    /// The loopback redirect port of `codex`.
    redirect_port: u16,
}

impl World {
    fn new() -> World {
        World::with_limits(&format!("refresh_cooldown_ms = {COOLDOWN_MS}"))
    }

    /// A world whose `[limits]` add `extra` lines.
    fn with_limits(extra: &str) -> World {
        let s = Scratch::new();
        let server = OAuthServer::start();
        let redirect_port = free_port();
        let base = server.base_url();
        let text = format!(
            "[limits]\n\
             device_poll_ms = {POLL_MS}\n\
             slow_down_ms = {SLOW_DOWN_MS}\n\
             {extra}\n\
             \n\
             [providers.anthropic]\n\
             authorize_url = \"{base}/authorize\"\n\
             token_url = \"{base}/token\"\n\
             \n\
             [providers.qwen]\n\
             device_url = \"{base}/device\"\n\
             token_url = \"{base}/token\"\n\
             \n\
             [providers.codex]\n\
             authorize_url = \"{base}/authorize\"\n\
             token_url = \"{base}/token\"\n\
             redirect_uri = \"http://localhost:{redirect_port}/auth/callback\"\n\
             \n\
             [providers.corp]\n\
             flow = \"device_code\"\n\
             client_id = \"corp-cli\"\n\
             issuer = \"{base}\"\n\
             \n\
             [providers.corpweb]\n\
             flow = \"pkce_redirect\"\n\
             client_id = \"corp-web\"\n\
             issuer = \"{base}\"\n\
             redirect_uri = \"https://corp.example/oauth/callback\"\n\
             scopes = [\"openid\", \"offline_access\"]\n"
        );
        s.write_default_config(&text);
        World {
            s,
            server,
            redirect_port,
        }
    }

    /// `credproxy serve` with its default capability token.
    fn serve(&self) -> Proxy {
        self.s.serve(&[])
    }

    /// [`World::serve`] and a sandbox connection to it.
    fn serve_conn(&self) -> (Proxy, Conn) {
        let proxy = self.serve();
        let c = Conn::open(&proxy);
        (proxy, c)
    }

    /// How many discovery documents the server has served.
    fn discoveries(&self) -> usize {
        let requests = self.server.requests();
        let discovery = "/.well-known/openid-configuration";
        requests.iter().filter(|r| r.path == discovery).count()
    }

    /// `credproxy status --json`.
    fn status(&self) -> Value {
        let store = self.s.store_arg();
        let ran = self.s.run(&["status", "--json", "--store", &store], b"");
        ran.assert_code(0);
        serde_json::from_str(&ran.stdout).expect("status json")
    }

    /// The status row of `provider`/`bucket`.
    fn status_row(&self, provider: &str, bucket: &str) -> Value {
        let status = self.status();
        status["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .find(|r| r["provider"] == provider && r["bucket"] == bucket)
            .cloned()
            .unwrap_or_else(|| panic!("no {provider}/{bucket} in {status}"))
    }

    /// The refresh token stored for `provider`/`bucket`, read from the
    /// store files (the protocol never reveals it).
    fn stored_refresh_token(&self, provider: &str, bucket: &str) -> String {
        self.s
            .open_store()
            .get_token(provider, bucket, true)
            .expect("read store")
            .expect("a stored token")
            .refresh_token()
            .expect("a stored refresh token")
            .to_owned()
    }
}

/// A sandbox connection with numbered request ids.
struct Conn {
    c: Client,
    n: u32,
}

impl Conn {
    fn open(proxy: &Proxy) -> Conn {
        Conn {
            c: proxy.sandbox_client(),
            n: 0,
        }
    }

    fn next_id(&mut self) -> String {
        self.n += 1;
        format!("r{}", self.n)
    }

    /// Sends `op` and returns its reply.
    fn call(&mut self, op: &str, payload: Value) -> Value {
        let id = self.next_id();
        self.c.call(&id, op, payload)
    }

    /// Sends `op`, expects success and returns `data`.
    fn ok(&mut self, op: &str, payload: Value) -> Value {
        let reply = self.call(op, payload);
        assert_eq!(reply["ok"], true, "{op}: {reply}");
        reply["data"].clone()
    }

    /// Sends `op`, expects an error and returns `(code, message)`.
    fn err(&mut self, op: &str, payload: Value) -> (String, String) {
        let reply = self.call(op, payload);
        assert_eq!(reply["ok"], false, "{op}: {reply}");
        (
            reply["code"].as_str().expect("code").to_owned(),
            reply["error"].as_str().expect("error").to_owned(),
        )
    }

    /// Sends every request first, then reads all the replies (any order);
    /// returns them in the order sent.
    fn concurrently(&mut self, requests: &[(&str, Value)]) -> Vec<Value> {
        let ids: Vec<String> = requests.iter().map(|_| self.next_id()).collect();
        for (id, (op, payload)) in ids.iter().zip(requests) {
            self.c
                .send(&support::request(id, op, payload.clone()))
                .expect("send");
        }
        let mut by_id = BTreeMap::new();
        while by_id.len() < ids.len() {
            let reply = self.c.recv_frame();
            let id = reply["id"].as_str().expect("id").to_owned();
            assert!(ids.contains(&id), "unexpected reply {reply}");
            assert!(by_id.insert(id, reply).is_none(), "two replies to one id");
        }
        ids.iter().map(|id| by_id[id].clone()).collect()
    }

    /// Polls `session_id` until it is no longer pending; returns the final
    /// reply and the pending replies seen on the way.
    fn poll_until_done(&mut self, session_id: &str) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + FLOW_LIMIT;
        let mut pending = Vec::new();
        loop {
            let reply = self.call("oauth_poll", json!({ "session_id": session_id }));
            if reply["ok"] != true || reply["data"]["status"] != "pending" {
                return (reply, pending);
            }
            assert!(
                Instant::now() < deadline,
                "login still pending after {FLOW_LIMIT:?}"
            );
            pending.push(reply["data"].clone());
            thread::sleep(TICK);
        }
    }
}

/// The query parameters of a URL.
fn query(url: &str) -> BTreeMap<String, String> {
    url::Url::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

/// The URL without its query.
fn without_query(url: &str) -> String {
    url.split('?').next().expect("a URL").to_owned()
}

/// Fields a client must never see in an initiation reply.
fn assert_no_secrets(init: &Value) {
    for k in [
        "code_verifier",
        "verifier",
        "device_code",
        "state",
        "refresh_token",
    ] {
        assert!(init.get(k).is_none(), "{k} in {init}");
    }
}

/// Checks the authorization URL of a code flow and plays the browser and
/// the user: returns `(code, state)` for the redirect.
fn authorize(
    server: &OAuthServer,
    init: &Value,
    client_id: &str,
    redirect: &str,
) -> (String, String) {
    let url = init["auth_url"].as_str().expect("auth_url");
    assert_eq!(without_query(url), server.url("/authorize"), "{url}");
    let q = query(url);
    assert_eq!(q["client_id"], client_id, "{url}");
    assert_eq!(q["redirect_uri"], redirect, "{url}");
    assert_eq!(q["response_type"], "code", "{url}");
    assert_eq!(q["code_challenge_method"], "S256", "{url}");
    let challenge = &q["code_challenge"];
    let state = &q["state"];
    assert_eq!(challenge.len(), 43, "a SHA-256 in base64url: {url}");
    assert!(state.len() >= 22 && state != challenge, "{url}");
    let code = server.approve(client_id, redirect, challenge);
    (code, state.clone())
}

/// A complete anthropic login through `c`: returns the token data of the
/// exchange reply.
fn anthropic_login(w: &World, c: &mut Conn, bucket: &str) -> Value {
    let spec = credproxy_core::provider::anthropic();
    let init = c.ok(
        "oauth_initiate",
        json!({"provider": "anthropic", "bucket": bucket}),
    );
    let redirect = spec.redirect_uri.as_deref().expect("redirect");
    let (code, state) = authorize(&w.server, &init, &spec.client_id, redirect);
    c.ok(
        "oauth_exchange",
        json!({"session_id": init["session_id"], "code": format!("{code}#{state}")}),
    )
}

fn access_token(token: &Value) -> String {
    token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {token}"))
        .to_owned()
}

// ---------------------------------------------------------------------------
// The test server itself.

/// POSTs a form to the test server and returns `(status, body)`.
fn post_form(server: &OAuthServer, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut s = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    s.set_read_timeout(Some(support::TIMEOUT)).expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text[9..12].parse().expect("status");
    let json = text.split("\r\n\r\n").nth(1).expect("body");
    (status, serde_json::from_str(json).expect("json body"))
}

#[test]
fn test_server_rotates_refresh_tokens_and_revokes_the_family_on_reuse() {
    let server = OAuthServer::start();
    let minted = server.mint("cid", now_unix());
    let rt0 = minted["refresh_token"].as_str().expect("rt").to_owned();
    let refresh = |rt: &str| {
        post_form(
            &server,
            "/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("client_id", "cid"),
            ],
        )
    };
    let (status, first) = refresh(&rt0);
    assert_eq!(status, 200, "{first}");
    let rt1 = first["refresh_token"].as_str().expect("rotated").to_owned();
    assert_ne!(rt1, rt0);
    // The old one again: reuse, and the whole family is revoked.
    let (status, body) = refresh(&rt0);
    assert_eq!((status, &body["error"]), (400, &json!("invalid_grant")));
    assert_eq!(server.stats().reuse_detected, 1);
    let (status, body) = refresh(&rt1);
    assert_eq!((status, &body["error"]), (400, &json!("invalid_grant")));
    assert_eq!(server.stats().revoked_rejections, 1);
    assert!(server.any_revoked());
    assert!(server.live_refresh_tokens().is_empty());
    // PKCE: a verifier that does not match its challenge is refused.
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let exchange = |code: &str, v: &str| {
        post_form(
            &server,
            "/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_id", "cid"),
                ("redirect_uri", "https://r.example/cb"),
                ("code_verifier", v),
            ],
        )
    };
    let code = server.approve("cid", "https://r.example/cb", challenge);
    assert_eq!(exchange(&code, "wrong").0, 400);
    let code = server.approve("cid", "https://r.example/cb", challenge);
    assert_eq!(exchange(&code, verifier).0, 200);
    assert_eq!(exchange(&code, verifier).0, 400, "codes are single use");
    assert_eq!(server.stats().pkce_failures, 1);
    assert_eq!(server.stats().codes_redeemed, 1);
}

// ---------------------------------------------------------------------------
// pkce_redirect (anthropic).

/// `oauth_initiate` for anthropic on a new connection to `proxy`: the
/// connection, anthropic's client id and redirect URI, and the reply.
fn anthropic_initiated(proxy: &Proxy) -> (Conn, String, String, Value) {
    let spec = credproxy_core::provider::anthropic();
    let redirect = spec.redirect_uri.clone().expect("redirect");
    let mut c = Conn::open(proxy);
    let init = c.ok("oauth_initiate", json!({"provider": "anthropic"}));
    (c, spec.client_id.clone(), redirect, init)
}

#[test]
fn pkce_redirect_login_stores_the_token_and_the_server_verifies_pkce() {
    let w = World::new();
    let proxy = w.serve();
    let (mut c, client_id, redirect, init) = anthropic_initiated(&proxy);
    assert_eq!(init["flow_type"], "pkce_redirect");
    assert!(init["session_id"].as_str().is_some_and(|s| s.len() == 32));
    assert_no_secrets(&init);
    let url = init["auth_url"].as_str().expect("auth_url").to_owned();
    assert_eq!(
        query(&url)["code"],
        "true",
        "anthropic asks for the code page"
    );
    let (code, state) = authorize(&w.server, &init, &client_id, &redirect);

    let token = c.ok(
        "oauth_exchange",
        json!({"session_id": init["session_id"], "code": format!("{code}#{state}")}),
    );
    assert!(token.get("refresh_token").is_none(), "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert!(
        token["expiry"]
            .as_u64()
            .is_some_and(|e| e > now_unix() + 3000)
    );

    // The server saw a correct verifier (it checks S256 itself) and the
    // Anthropic dialect: a JSON body repeating the state.
    let stats = w.server.stats();
    assert_eq!((stats.codes_redeemed, stats.pkce_failures), (1, 0));
    let exchanges = w.server.token_requests("authorization_code");
    assert_eq!(exchanges.len(), 1);
    let ex = &exchanges[0];
    assert!(ex.content_type.contains("json"), "{ex:?}");
    assert_eq!(ex.field("state"), Some(state.as_str()));
    assert_eq!(ex.field("redirect_uri"), Some(redirect.as_str()));
    assert_eq!(ex.field("code_verifier").map(str::len), Some(43));
    assert_eq!(ex.status, 200);

    // Stored, refreshable, and served sanitized.
    let row = w.status_row("anthropic", "default");
    assert_eq!(row["refreshable"], true, "{row}");
    assert_eq!(row["expired"], false, "{row}");
    assert_eq!(row["refresh_unusable"], false, "{row}");
    let got = c.ok("get_token", json!({"provider": "anthropic"}));
    assert_eq!(got, token);
    assert_eq!(
        w.server.live_refresh_tokens(),
        vec![w.stored_refresh_token("anthropic", "default")]
    );

    // The session is used up.
    let (code_, _) = c.err(
        "oauth_exchange",
        json!({"session_id": init["session_id"], "code": format!("{code}#{state}")}),
    );
    assert_eq!(code_, "SESSION_NOT_FOUND");
    assert_eq!(w.server.token_requests("authorization_code").len(), 1);
}

#[test]
fn pkce_redirect_exchange_with_a_code_for_another_challenge_fails() {
    let w = World::new();
    let proxy = w.serve();
    let (mut c, client_id, redirect, init) = anthropic_initiated(&proxy);
    let state = query(init["auth_url"].as_str().expect("url"))["state"].clone();
    // A code minted for someone else's challenge: the proxy's verifier
    // cannot match it.
    let foreign = w.server.approve(
        &client_id,
        &redirect,
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    );
    let (code, message) = c.err(
        "oauth_exchange",
        json!({"session_id": init["session_id"], "code": format!("{foreign}#{state}")}),
    );
    assert_eq!(code, "EXCHANGE_FAILED");
    assert_eq!(message, "Provider rejected the request (invalid_grant)");
    assert_eq!(w.server.stats().pkce_failures, 1);
    assert_eq!(w.status(), w.s.empty_auto_status());
}

// ---------------------------------------------------------------------------
// device_code (qwen).

#[test]
fn device_code_login_polls_and_backs_off_after_slow_down() {
    let w = World::new();
    w.server.set_device_interval(None);
    w.server.script_device(&[
        DeviceStep::Pending,
        DeviceStep::SlowDown,
        DeviceStep::Pending,
        DeviceStep::Approve,
    ]);
    let (_proxy, mut c) = w.serve_conn();

    let init = c.ok("oauth_initiate", json!({"provider": "qwen"}));
    assert_eq!(init["flow_type"], "device_code");
    assert_eq!(init["pollIntervalMs"], POLL_MS);
    assert_eq!(init["verification_uri"], w.server.url("/verify"));
    assert_eq!(init["auth_url"], init["verification_uri"]);
    let user_code = init["user_code"].as_str().expect("user_code");
    assert!(user_code.starts_with("USER-"), "{init}");
    assert_no_secrets(&init);
    let sid = init["session_id"].as_str().expect("sid").to_owned();

    let (done, pending) = c.poll_until_done(&sid);
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["data"]["status"], "complete", "{done}");
    let token = &done["data"]["token"];
    assert!(token.get("refresh_token").is_none(), "{token}");
    // After the slow_down the pending replies show the longer interval.
    let slowed = POLL_MS + SLOW_DOWN_MS;
    assert!(
        pending
            .iter()
            .any(|p| p["pollIntervalMs"] == slowed && p["interval"] == 1),
        "no pending reply with the slowed interval: {pending:?}"
    );

    // The server's view: four polls; the proxy waited the interval, then
    // the longer one after slow_down. (Tolerance: the gaps are measured
    // between arrivals, so they can only be longer than the waits, minus
    // clock granularity.)
    let gaps = w.server.latest_poll_gaps();
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    let ms = |d: &Duration| d.as_millis() as u64;
    assert!(ms(&gaps[0]) + 5 >= POLL_MS, "{gaps:?}");
    assert!(ms(&gaps[1]) + 5 >= slowed, "{gaps:?}");
    assert!(ms(&gaps[2]) + 5 >= slowed, "{gaps:?}");
    assert!(gaps[1] > gaps[0], "{gaps:?}");

    // Qwen's PKCE on the device flow, verified by the server.
    let device = w
        .server
        .requests()
        .into_iter()
        .find(|r| r.path == "/device")
        .expect("device authorization");
    assert_eq!(device.field("code_challenge_method"), Some("S256"));
    let polls = w.server.token_requests(DEVICE_GRANT);
    assert_eq!(polls.len(), 4);
    assert!(polls.iter().all(|p| p.field("code_verifier").is_some()));
    let errors: Vec<_> = polls.iter().map(|p| p.error.clone()).collect();
    assert_eq!(
        errors,
        vec![
            Some("authorization_pending".to_owned()),
            Some("slow_down".to_owned()),
            Some("authorization_pending".to_owned()),
            None
        ]
    );
    let stats = w.server.stats();
    assert_eq!((stats.device_approvals, stats.pkce_failures), (1, 0));

    // Reported once; stored; served.
    let (code, _) = c.err("oauth_poll", json!({ "session_id": sid }));
    assert_eq!(code, "SESSION_NOT_FOUND");
    assert_eq!(w.status_row("qwen", "default")["refreshable"], true);
    let got = c.ok("get_token", json!({"provider": "qwen"}));
    assert_eq!(&got, token);
    assert_eq!(
        w.server.live_refresh_tokens(),
        vec![w.stored_refresh_token("qwen", "default")]
    );
}

/// A qwen login whose device code the server scripts as one pending poll
/// and then `last`: the final `oauth_poll` reply is the error `code` with
/// `error`, reported once (a second poll finds no session), after exactly
/// two polls (none after `last`), and nothing is stored.
fn device_login_fails_with(last: DeviceStep, code: &str, error: &str) {
    let w = World::new();
    w.server.set_device_interval(None);
    w.server.script_device(&[DeviceStep::Pending, last]);
    let (proxy, mut c) = w.serve_conn();
    let init = c.ok("oauth_initiate", json!({"provider": "qwen"}));
    let sid = init["session_id"].as_str().expect("sid").to_owned();
    let (done, _) = c.poll_until_done(&sid);
    let (again, _) = c.err("oauth_poll", json!({ "session_id": sid }));
    assert_eq!(again, "SESSION_NOT_FOUND");
    drop(proxy);
    assert_eq!(done["ok"], false, "{done}");
    assert_eq!(
        (&done["code"], &done["error"]),
        (&json!(code), &json!(error))
    );
    assert_eq!(w.server.token_requests(DEVICE_GRANT).len(), 2);
    assert_eq!(w.status(), w.s.empty_auto_status());
}

#[test]
fn device_code_access_denied_is_reported_as_access_denied() {
    let error = "User denied authorization";
    device_login_fails_with(DeviceStep::Denied, "ACCESS_DENIED", error);
}

#[test]
fn device_code_expired_token_is_reported_as_session_expired() {
    // The proxy stops polling: no poll after the expired_token.
    device_login_fails_with(
        DeviceStep::Expired,
        "SESSION_EXPIRED",
        "Device code expired",
    );
}

// ---------------------------------------------------------------------------
// browser_redirect (codex).

#[test]
fn browser_redirect_login_completes_through_the_loopback_callback() {
    let w = World::new();
    w.server.set_id_token_claims(Some(json!({
        "https://api.openai.com/auth": {"chatgpt_account_id": "acct-42"}
    })));
    let (_proxy, mut c) = w.serve_conn();
    let spec = credproxy_core::provider::codex();
    let redirect = format!("http://localhost:{}/auth/callback", w.redirect_port);

    let init = c.ok("oauth_initiate", json!({"provider": "codex"}));
    assert_eq!(init["flow_type"], "browser_redirect");
    assert_no_secrets(&init);
    let (code, state) = authorize(&w.server, &init, &spec.client_id, &redirect);
    let sid = init["session_id"].as_str().expect("sid").to_owned();
    let pending = c.call("oauth_poll", json!({ "session_id": sid }));
    assert_eq!(pending["data"]["status"], "pending", "{pending}");

    // The browser follows the provider's redirect to the proxy's listener.
    let mut browser =
        TcpStream::connect(("127.0.0.1", w.redirect_port)).expect("the loopback listener is up");
    browser
        .set_read_timeout(Some(support::TIMEOUT))
        .expect("timeout");
    write!(
        browser,
        "GET /auth/callback?code={code}&state={state} HTTP/1.1\r\n\
         Host: localhost:{}\r\nConnection: close\r\n\r\n",
        w.redirect_port
    )
    .expect("send the redirect");
    let mut page = String::new();
    let _ = browser.read_to_string(&mut page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");

    let (done, _) = c.poll_until_done(&sid);
    assert_eq!(done["data"]["status"], "complete", "{done}");
    let token = &done["data"]["token"];
    assert!(token.get("refresh_token").is_none(), "{token}");
    assert_eq!(token["account_id"], "acct-42", "{token}");
    let ex = w.server.token_requests("authorization_code");
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].field("redirect_uri"), Some(redirect.as_str()));
    assert!(!ex[0].content_type.contains("json"), "codex: a form body");
    assert_eq!(w.server.stats().codes_redeemed, 1);
    assert_eq!(w.status_row("codex", "default")["refreshable"], true);
    assert_eq!(
        access_token(&c.ok("get_token", json!({"provider": "codex"}))),
        access_token(token)
    );
}

// ---------------------------------------------------------------------------
// Refresh with rotation.

/// Calls `refresh_token` until the access token differs from `old` (the
/// cooldown answers the still-valid token as is); bounded.
fn refresh_until_new(c: &mut Conn, payload: &Value, old: &str) -> Value {
    let deadline = Instant::now() + FLOW_LIMIT;
    loop {
        let token = c.ok("refresh_token", payload.clone());
        if access_token(&token) != old {
            return token;
        }
        assert!(
            Instant::now() < deadline,
            "no new access token after {FLOW_LIMIT:?}"
        );
        thread::sleep(TICK * 2);
    }
}

#[test]
fn refresh_rotates_and_persists_the_new_refresh_token() {
    let w = World::new();
    let (proxy, mut c) = w.serve_conn();
    let login = anthropic_login(&w, &mut c, "default");
    let rt0 = w.stored_refresh_token("anthropic", "default");

    // Two concurrent callers on two connections: one refresh at the server.
    let mut other = Conn::open(&proxy);
    other
        .c
        .send(&support::request(
            "x1",
            "refresh_token",
            json!({"provider": "anthropic"}),
        ))
        .expect("send");
    let mut replies = c.concurrently(&[
        ("refresh_token", json!({"provider": "anthropic"})),
        ("refresh_token", json!({"provider": "anthropic"})),
    ]);
    replies.push(other.c.recv_frame());
    for r in &replies {
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["data"].get("refresh_token").is_none(), "{r}");
    }
    let t1 = access_token(&replies[0]["data"]);
    assert!(
        replies.iter().all(|r| access_token(&r["data"]) == t1),
        "{replies:?}"
    );
    assert_ne!(t1, access_token(&login));
    assert_eq!(w.server.stats().refreshes, 1, "exactly one refresh");
    let sent = w.server.token_requests("refresh_token");
    assert_eq!(sent[0].field("refresh_token"), Some(rt0.as_str()));

    // Rotated, and the new refresh token was persisted.
    let rt1 = w.stored_refresh_token("anthropic", "default");
    assert_ne!(rt1, rt0);
    assert_eq!(w.server.live_refresh_tokens(), vec![rt1.clone()]);
    assert_eq!(
        access_token(&c.ok("get_token", json!({"provider": "anthropic"}))),
        t1
    );

    // After the cooldown, refresh again: it works only because the proxy
    // sends rt1 (rt0 would be reuse and revoke the family).
    let t2 = access_token(&refresh_until_new(
        &mut c,
        &json!({"provider": "anthropic"}),
        &t1,
    ));
    assert_ne!(t2, t1);
    let stats = w.server.stats();
    assert_eq!((stats.refreshes, stats.reuse_detected), (2, 0));
    let sent = w.server.token_requests("refresh_token");
    assert_eq!(sent.len(), 2, "the cooldown answered without the provider");
    assert_eq!(sent[1].field("refresh_token"), Some(rt1.as_str()));
    assert!(!w.server.any_revoked());
    assert_eq!(
        w.server.live_refresh_tokens(),
        vec![w.stored_refresh_token("anthropic", "default")]
    );
    assert_eq!(
        w.status_row("anthropic", "default")["refresh_unusable"],
        false
    );
}

#[test]
fn two_processes_refreshing_one_rotating_token_never_reuse_it() {
    // No cooldown: every round reaches the refresh path in both processes.
    let w = World::with_limits("refresh_cooldown_ms = 0");
    let a = w.serve();
    let mut ca = Conn::open(&a);
    anthropic_login(&w, &mut ca, "default");
    let b = w.serve();
    let mut cb = Conn::open(&b);
    // A slow provider: the first process holds the key's lock for a while,
    // so the second one's refresh overlaps it.
    w.server.set_refresh_latency(Duration::from_millis(200));
    let payload = json!({"provider": "anthropic"});
    // Rounds where the second process returned the token the first one
    // had just obtained, without calling the provider.
    let mut shared = 0;
    for round in 0..4 {
        let before = w.server.stats().refreshes;
        let (first, second) = if round % 2 == 0 {
            (&mut ca, &mut cb)
        } else {
            (&mut cb, &mut ca)
        };
        first
            .c
            .send(&support::request("race", "refresh_token", payload.clone()))
            .expect("send");
        second
            .c
            .send(&support::request("race", "refresh_token", payload.clone()))
            .expect("send");
        let ra = first.c.recv_frame();
        let rb = second.c.recv_frame();
        assert_eq!(ra["ok"], true, "round {round}: {ra}\n{}", a.stderr());
        assert_eq!(rb["ok"], true, "round {round}: {rb}\n{}", b.stderr());
        let stats = w.server.stats();
        assert_eq!(
            stats.reuse_detected, 0,
            "round {round}: a refresh token was reused"
        );
        let made = stats.refreshes - before;
        assert!((1..=2).contains(&made), "round {round}: {made} refreshes");
        if access_token(&ra["data"]) == access_token(&rb["data"]) {
            shared += 1;
            assert_eq!(
                made, 1,
                "round {round}: one refresh, shared through the store"
            );
        }
        assert!(!w.server.any_revoked());
        assert_eq!(
            w.server.live_refresh_tokens(),
            vec![w.stored_refresh_token("anthropic", "default")],
            "round {round}: the store holds the live refresh token"
        );
    }
    assert!(
        shared > 0,
        "no round was answered from the sibling's refresh (fresh re-read under the lock)"
    );
    w.server.set_refresh_latency(Duration::ZERO);
    // Still usable from either process.
    let last = ca.ok("refresh_token", json!({"provider": "anthropic"}));
    let again = cb.ok("refresh_token", json!({"provider": "anthropic"}));
    assert_ne!(access_token(&last), access_token(&again));
    assert_eq!(w.server.stats().reuse_detected, 0);
    assert_eq!(
        w.status_row("anthropic", "default")["refresh_unusable"],
        false
    );
}

#[test]
fn a_refresh_token_revoked_at_the_server_requires_a_new_login() {
    let w = World::new();
    let (_proxy, mut c) = w.serve_conn();
    let login = anthropic_login(&w, &mut c, "work");
    w.server.revoke_all();

    let payload = json!({"provider": "anthropic", "bucket": "work"});
    let (code, message) = c.err("refresh_token", payload.clone());
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "REAUTH_REQUIRED",
            "Provider rejected the request (invalid_grant)"
        )
    );
    assert_eq!(w.server.stats().revoked_rejections, 1);
    let row = w.status_row("anthropic", "work");
    assert_eq!(row["refresh_unusable"], true, "{row}");
    // The access token is still served; the refresh token never is.
    let got = c.ok("get_token", payload.clone());
    assert_eq!(got, login);

    // Later refreshes answer without calling the provider, also once the
    // cooldown is over (checked for twice its length).
    let calls = w.server.token_requests("refresh_token").len();
    let until = Instant::now() + Duration::from_millis(COOLDOWN_MS * 2);
    loop {
        let (code, message) = c.err("refresh_token", payload.clone());
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("REAUTH_REQUIRED", "Login required for anthropic/work")
        );
        if Instant::now() >= until {
            break;
        }
        thread::sleep(TICK * 2);
    }
    assert_eq!(w.server.token_requests("refresh_token").len(), calls);

    // A sandbox login may replace a credential whose refresh token was
    // rejected; the mark goes away and refresh works again.
    anthropic_login(&w, &mut c, "work");
    assert_eq!(w.status_row("anthropic", "work")["refresh_unusable"], false);
    let relogin = c.ok("get_token", payload.clone());
    let refreshed = refresh_until_new(&mut c, &payload, &access_token(&relogin));
    assert!(refreshed.get("refresh_token").is_none());
    assert_eq!(w.server.stats().reuse_detected, 0);
}

// ---------------------------------------------------------------------------
// OIDC discovery.

#[test]
fn discovery_providers_log_in_and_refresh_through_discovered_endpoints() {
    let w = World::new();
    // The provider's own interval (1 s) governs the device polls.
    w.server
        .script_device(&[DeviceStep::Pending, DeviceStep::Approve]);
    let (_proxy, mut c) = w.serve_conn();

    let init = c.ok("oauth_initiate", json!({"provider": "corp"}));
    assert_eq!(init["flow_type"], "device_code");
    assert_eq!(init["pollIntervalMs"], 1000);
    assert_eq!(init["verification_uri"], w.server.url("/verify"));
    let sid = init["session_id"].as_str().expect("sid").to_owned();
    let (done, _) = c.poll_until_done(&sid);
    assert_eq!(done["data"]["status"], "complete", "{done}");
    let gaps = w.server.latest_poll_gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(995), "{gaps:?}");
    let polls = w.server.token_requests(DEVICE_GRANT);
    assert!(
        polls
            .iter()
            .all(|p| p.field("client_id") == Some("corp-cli"))
    );
    assert!(
        polls.iter().all(|p| p.field("code_verifier").is_none()),
        "standard dialect: no PKCE on the device flow"
    );

    // A pkce_redirect provider on the same issuer.
    let init = c.ok("oauth_initiate", json!({"provider": "corpweb"}));
    let (code, state) = authorize(
        &w.server,
        &init,
        "corp-web",
        "https://corp.example/oauth/callback",
    );
    assert_eq!(
        query(init["auth_url"].as_str().expect("url"))["scope"],
        "openid offline_access"
    );
    // The whole redirect URL pasted, with RFC 9207 `iss`.
    let pasted = format!(
        "https://corp.example/oauth/callback?code={code}&state={state}&iss={}",
        w.server.base_url()
    );
    let token = c.ok(
        "oauth_exchange",
        json!({"session_id": init["session_id"], "code": pasted}),
    );
    assert!(token.get("refresh_token").is_none());
    assert_eq!(w.server.stats().codes_redeemed, 1);

    // Discovery once per provider; refresh uses the discovered token URL.
    let refreshed = c.ok("refresh_token", json!({"provider": "corp"}));
    assert_ne!(
        access_token(&refreshed),
        access_token(&done["data"]["token"])
    );
    assert_eq!(w.discoveries(), 2, "one per provider");
    assert_eq!(w.status_row("corp", "default")["refreshable"], true);
    assert_eq!(w.status_row("corpweb", "default")["refreshable"], true);

    // A fresh process discovers on its first refresh.
    let fresh = w.serve();
    let mut cf = Conn::open(&fresh);
    let again = cf.ok("refresh_token", json!({"provider": "corpweb"}));
    assert_ne!(access_token(&again), access_token(&token));
    assert_eq!(w.discoveries(), 3);
    let stats = w.server.stats();
    assert_eq!((stats.refreshes, stats.reuse_detected), (2, 0));
}

#[test]
fn a_discovery_document_for_another_issuer_fails_the_initiation() {
    let w = World::new();
    w.server
        .set_discovery_issuer(Some("https://impostor.example"));
    let (_proxy, mut c) = w.serve_conn();
    for provider in ["corp", "corpweb"] {
        let (code, message) = c.err("oauth_initiate", json!({ "provider": provider }));
        assert_eq!(code, "FLOW_INITIATION_FAILED", "{provider}");
        // Both issuers are named (the message used to say only "issuer
        // mismatch").
        assert!(
            message.starts_with("OIDC discovery failed (issuer mismatch: configured \"")
                && message.ends_with(", discovered \"https://impostor.example\")"),
            "{message}"
        );
    }
    assert!(w.server.requests().iter().all(|r| r.path != "/device"));
    // Failures are not cached: with the right document the login starts.
    w.server.set_discovery_issuer(None);
    let init = c.ok("oauth_initiate", json!({"provider": "corp"}));
    assert_eq!(init["flow_type"], "device_code");
}

// ---------------------------------------------------------------------------
// The client library against the server.

fn capability(proxy: &Proxy) -> CapabilitySource {
    CapabilitySource::File(proxy.token_file().expect("a token file"))
}

/// Seeds an anthropic token the server knows and an API key.
fn seeded_world() -> (World, Value) {
    let w = World::new();
    let spec = credproxy_core::provider::anthropic();
    let token = w.server.mint(&spec.client_id, now_unix());
    w.s.seed_token("anthropic", "default", &token);
    w.s.seed_api_key("OPENAI_API_KEY", "sk-test-123");
    (w, token)
}

fn assert_connection_lost<T: std::fmt::Debug>(r: Result<T, ClientError>) {
    match r {
        Err(e @ ClientError::ConnectionLost) => {
            assert_eq!(e.to_string(), CONNECTION_LOST_MESSAGE);
            assert_eq!(
                e.to_string(),
                "Credential proxy connection lost. Restart the session."
            );
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
}

#[test]
fn client_library_round_trip_then_connection_lost_while_a_refresh_is_pending() {
    let (w, seeded) = seeded_world();
    let mut proxy = w.serve();
    let client = BlockingClient::connect(&proxy.socket, capability(&proxy)).expect("connect");
    assert_eq!(client.protocol_version(), 2);

    // Typed round trips.
    let token = client
        .get_token("anthropic", None)
        .expect("get_token")
        .expect("a token");
    assert_eq!(token["access_token"], seeded["access_token"]);
    assert!(!token.contains_key("refresh_token"));
    let key = client
        .get_api_key("OPENAI_API_KEY")
        .expect("get_api_key")
        .expect("a key");
    assert_eq!(key.expose(), "sk-test-123");
    match client.get_api_key("MISSING_KEY") {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "FORBIDDEN"),
        other => panic!("a sandbox gets FORBIDDEN for a missing key: {other:?}"),
    }
    let refreshed = client
        .refresh_token("anthropic", None)
        .expect("refresh_token");
    assert_ne!(refreshed["access_token"], seeded["access_token"]);
    assert!(!refreshed.contains_key("refresh_token"));
    assert_eq!(w.server.stats().refreshes, 1);

    // A refresh the provider takes far longer than the bound below to
    // answer is pending when the proxy stops: the client must not wait for
    // it (nor for its 30 s request timeout).
    w.server.set_refresh_latency(Duration::from_secs(60));
    let pending = {
        let client = client.clone();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // Past the cooldown: poll until the proxy calls the provider.
            let deadline = Instant::now() + FLOW_LIMIT;
            loop {
                let r = client.refresh_token("anthropic", None);
                let again = matches!(&r, Ok(t) if t["access_token"] == refreshed["access_token"]);
                if !again || Instant::now() >= deadline {
                    let _ = tx.send((r, Instant::now()));
                    return;
                }
                thread::sleep(TICK * 2);
            }
        });
        rx
    };
    support::wait_until("the pending refresh at the provider", || {
        w.server.token_requests("refresh_token").len() == 2
    });
    let stopped = Instant::now();
    proxy.signal(Signal::SIGTERM);
    let (result, at) = pending
        .recv_timeout(Duration::from_secs(10))
        .expect("the pending call returned");
    assert_connection_lost(result);
    eprintln!(
        "connection lost {:?} after SIGTERM",
        at.duration_since(stopped)
    );
    assert!(
        at.duration_since(stopped) < Duration::from_secs(5),
        "took {:?}",
        at.duration_since(stopped)
    );
    // Every later call fails at once; no reconnect.
    let t = Instant::now();
    assert_connection_lost(client.get_token("anthropic", None));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(client.connection_state(), ConnectionState::Lost);
    let status = proxy.wait();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
}

#[test]
fn client_library_reports_connection_lost_after_the_server_stops() {
    let (w, seeded) = seeded_world();
    let mut proxy = w.serve();
    let client = BlockingClient::connect(&proxy.socket, capability(&proxy)).expect("connect");
    let token = client
        .get_token("anthropic", None)
        .expect("get_token")
        .expect("a token");
    assert_eq!(token["access_token"], seeded["access_token"]);
    let capability_token = credproxy_core::Secret::new(proxy.token());

    let status = proxy.stop(Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(!support::exists(&proxy.socket), "socket removed");
    let t = Instant::now();
    assert_connection_lost(client.get_token("anthropic", None));
    assert_connection_lost(client.get_api_key("OPENAI_API_KEY"));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(client.connection_state(), ConnectionState::Lost);
    // A new client cannot connect to a stopped proxy.
    let again = BlockingClient::connect(&proxy.socket, CapabilitySource::Token(capability_token));
    assert!(
        matches!(again, Err(ClientError::Connect { .. })),
        "{again:?}"
    );
}
