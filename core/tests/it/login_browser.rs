//! browser_redirect logins (Codex, RFC 8252 loopback): the shared listener,
//! routing by `state`, the `iss` check, the pasted-URL fallback, listener
//! lifetime; and the sandbox login rules (SPEC §3.5, §4).

use credproxy_core::testkit::Harness;
use credproxy_core::{Config, ConnId, Secret};
use serde_json::{Value, json};
use url::Url;

const CODEX_TOKEN: &str = "https://auth.openai.com/oauth/token";

fn param(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn codex_session(h: &mut Harness, conn: ConnId) -> (String, String) {
    let r = h.call(conn, "oauth_initiate", json!({"provider":"codex"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let d = &r["data"];
    assert_eq!(d["flow_type"], json!("browser_redirect"));
    let url = d["auth_url"].as_str().unwrap();
    assert!(url.starts_with(
        "https://auth.openai.com/oauth/authorize?client_id=app_EMoamEEZ73f0CkXaXp7hrann"
    ));
    assert_eq!(
        param(url, "redirect_uri").as_deref(),
        Some("http://localhost:1455/auth/callback")
    );
    assert_eq!(
        param(url, "scope").as_deref(),
        Some("openid profile email offline_access")
    );
    assert_eq!(
        param(url, "codex_cli_simplified_flow").as_deref(),
        Some("true")
    );
    (
        d["session_id"].as_str().unwrap().to_owned(),
        param(url, "state").unwrap(),
    )
}

#[test]
fn callback_completes_the_session() {
    let mut h = Harness::new();
    let conn = h.connect();
    let (sid, state) = codex_session(&mut h, conn);
    assert!(h.listening.contains(&1455));
    assert_eq!(
        h.call(conn, "oauth_poll", json!({"session_id": sid}))["data"]["status"],
        json!("pending")
    );
    let (status, page) = h.loopback(1455, &format!("/auth/callback?code=AC&state={state}"));
    assert_eq!(status, 200);
    assert!(page.contains("close this window"));
    assert_eq!(h.http_log.last().unwrap().url, CODEX_TOKEN);
    h.respond(
        200,
        json!({"access_token":"AT","refresh_token":"RT","token_type":"Bearer","expires_in":100}),
    );
    assert!(
        h.listening.is_empty(),
        "listener stopped once no session needs it"
    );
    let r = h.call(conn, "oauth_poll", json!({"session_id": sid}));
    assert_eq!(r["data"]["status"], json!("complete"), "{r}");
    assert_eq!(r["data"]["token"]["access_token"], json!("AT"));
    assert!(!h.observable_text().contains("AC&"));
}

#[test]
fn wrong_path_state_or_missing_code_get_400_and_touch_nothing() {
    let mut h = Harness::new();
    let conn = h.connect();
    let (sid, state) = codex_session(&mut h, conn);
    for target in [
        format!("/other?code=AC&state={state}"),
        "/auth/callback?code=AC&state=forged".to_owned(),
        "/auth/callback?code=AC".to_owned(),
        format!("/auth/callback?state={state}"),
        "garbage".to_owned(),
    ] {
        assert_eq!(h.loopback(1455, &target).0, 400, "{target}");
    }
    assert_eq!(
        h.loopback(9999, &format!("/auth/callback?code=AC&state={state}"))
            .0,
        400
    );
    assert!(h.http_log.is_empty());
    assert_eq!(
        h.call(conn, "oauth_poll", json!({"session_id": sid}))["data"]["status"],
        json!("pending")
    );
}

#[test]
fn error_redirect_fails_the_session() {
    let mut h = Harness::new();
    let conn = h.connect();
    let (sid, state) = codex_session(&mut h, conn);
    let (status, _) = h.loopback(
        1455,
        &format!("/auth/callback?error=access_denied&state={state}"),
    );
    assert_eq!(status, 200);
    let r = h.call(conn, "oauth_poll", json!({"session_id": sid}));
    assert_eq!(
        r["error"],
        json!("Provider rejected the request (access_denied)")
    );
    assert!(h.listening.is_empty());
}

#[test]
fn one_listener_is_shared_and_requests_routed_by_state() {
    let mut h = Harness::new();
    let conn = h.connect();
    let (s1, st1) = codex_session(&mut h, conn);
    let (s2, st2) = codex_session(&mut h, conn);
    let starts = h
        .effects
        .iter()
        .filter(|e| matches!(e, credproxy_core::Effect::StartListener { .. }))
        .count();
    assert_eq!(starts, 1);
    h.loopback(1455, &format!("/auth/callback?code=C2&state={st2}"));
    let body = h.http_log[0].body.as_ref().unwrap().expose().to_owned();
    assert!(body.contains("code=C2"));
    h.respond(200, json!({"access_token":"AT2"}));
    assert!(
        h.listening.contains(&1455),
        "still needed by the first session"
    );
    assert_eq!(
        h.call(conn, "oauth_poll", json!({"session_id": s2}))["data"]["token"]["access_token"],
        json!("AT2")
    );
    h.call(conn, "oauth_cancel", json!({"session_id": s1}));
    assert!(h.listening.is_empty());
    let _ = st1;
}

/// Codex configured with its issuer (so discovery runs first, answered
/// here) and a connection.
fn codex_with_issuer() -> (Harness, ConnId) {
    let mut config = Config::default();
    let mut codex = credproxy_core::provider::codex();
    codex.issuer = Some("https://auth.openai.com".into());
    config.providers.insert("codex".into(), codex);
    let mut h = Harness::with_config(config, 2);
    let conn = h.connect();
    h.script(
        "https://auth.openai.com/.well-known/openid-configuration",
        200,
        json!({"issuer":"https://auth.openai.com","authorization_endpoint":"https://auth.openai.com/oauth/authorize"}),
    );
    (h, conn)
}

#[test]
fn pasted_redirect_url_fallback_with_iss_check() {
    let (mut h, conn) = codex_with_issuer();
    let (sid, state) = codex_session(&mut h, conn);
    let bad = format!(
        "http://localhost:1455/auth/callback?code=AC&state={state}&iss=https%3A%2F%2Fevil.example"
    );
    let r = h.call(
        conn,
        "oauth_exchange",
        json!({"session_id": sid, "code": bad}),
    );
    assert_eq!(
        r["error"],
        json!("Authorization response does not match this session")
    );
    let (sid, state) = codex_session(&mut h, conn);
    let good = format!(
        "http://localhost:1455/auth/callback?code=AC&state={state}&iss=https%3A%2F%2Fauth.openai.com"
    );
    h.request(
        conn,
        "x",
        "oauth_exchange",
        json!({"session_id": sid, "code": good}),
    );
    h.respond(200, json!({"access_token":"AT"}));
    assert_eq!(
        h.take_replies(conn).pop().unwrap()["data"]["access_token"],
        json!("AT")
    );
}

/// The browser's callback on the loopback listener carries `iss` (RFC
/// 9207): the configured issuer is accepted and exchanged, another one
/// fails the session before any provider call.
#[test]
fn loopback_callback_checks_iss_against_the_issuer() {
    let (mut h, conn) = codex_with_issuer();
    let (good_sid, good) = codex_session(&mut h, conn);
    let (bad_sid, bad) = codex_session(&mut h, conn);
    let calls = h.http_log.len();
    let (status, _) = h.loopback(
        1455,
        &format!("/auth/callback?code=BAD&state={bad}&iss=https%3A%2F%2Fevil.example"),
    );
    assert_eq!(status, 400);
    assert_eq!(h.http_log.len(), calls, "no exchange for a foreign issuer");
    let r = h.call(conn, "oauth_poll", json!({"session_id": bad_sid}));
    assert_eq!(
        r["error"],
        json!("Authorization response does not match this session"),
        "{r}"
    );
    let (status, _) = h.loopback(
        1455,
        &format!("/auth/callback?code=GOOD&state={good}&iss=https%3A%2F%2Fauth.openai.com"),
    );
    assert_eq!(status, 200);
    let body = h
        .http_log
        .last()
        .unwrap()
        .body
        .as_ref()
        .unwrap()
        .expose()
        .to_owned();
    assert!(body.contains("code=GOOD"), "{body}");
    h.respond(200, json!({"access_token":"AT-GOOD"}));
    let r = h.call(conn, "oauth_poll", json!({"session_id": good_sid}));
    assert_eq!(r["data"]["token"]["access_token"], json!("AT-GOOD"), "{r}");
}

#[test]
fn listener_failure_fails_initiation() {
    let mut h = Harness::new();
    h.fail_listen = true;
    let conn = h.connect();
    let r = h.call(conn, "oauth_initiate", json!({"provider":"codex"}));
    assert_eq!(r["code"], json!("FLOW_INITIATION_FAILED"));
    assert_eq!(
        r["error"],
        json!("Cannot listen for the browser redirect on port 1455")
    );
    assert_eq!(h.engine.session_count(), 0);
}

fn sandbox(policy_overwrite: bool) -> Harness {
    let mut config = Config {
        capability_token: Some(Secret::new("c".repeat(64))),
        ..Config::default()
    };
    config.policy.sandbox_login_overwrite = policy_overwrite;
    Harness::with_config(config, 9)
}

fn sandbox_login(h: &mut Harness) -> Value {
    let conn = h.connect();
    let r = h.call(conn, "oauth_initiate", json!({"provider":"anthropic"}));
    assert_eq!(
        r["ok"],
        json!(true),
        "sandbox logins are allowed by default: {r}"
    );
    h.request(
        conn,
        "x",
        "oauth_exchange",
        json!({"session_id": r["data"]["session_id"], "code": "c"}),
    );
    h.respond(200, json!({"access_token":"NEW","refresh_token":"NEW-RT"}));
    h.take_replies(conn).pop().unwrap()
}

#[test]
fn sandbox_login_may_not_replace_a_valid_credential() {
    let mut h = sandbox(false);
    let far = h.now.unix_secs() + 3600;
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"OLD","refresh_token":"OLD-RT","expiry":far,"token_type":"Bearer"}),
    );
    let r = sandbox_login(&mut h);
    assert_eq!(r["code"], json!("FORBIDDEN"));
    assert_eq!(
        r["error"],
        json!("Login would replace an existing credential")
    );
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["access_token"],
        json!("OLD")
    );
    let ev = h.audit.iter().find(|e| e.op == "login_complete").unwrap();
    assert_eq!(ev.outcome, "FORBIDDEN");
}

#[test]
fn sandbox_login_replaces_missing_expired_or_unusable_credentials() {
    let mut h = sandbox(false);
    assert_eq!(sandbox_login(&mut h)["ok"], json!(true), "missing");
    let mut h = sandbox(false);
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"OLD","expiry":1,"token_type":"Bearer"}),
    );
    assert_eq!(sandbox_login(&mut h)["ok"], json!(true), "expired");
    let mut h = sandbox(false);
    let far = h.now.unix_secs() + 3600;
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"OLD","refresh_token":"DEAD","expiry":far,"token_type":"Bearer"}),
    );
    h.store
        .unusable
        .insert(("anthropic".into(), "default".into()));
    assert_eq!(
        sandbox_login(&mut h)["ok"],
        json!(true),
        "unusable refresh token"
    );
    assert!(h.store.unusable.is_empty(), "a login clears the mark");
    let mut h = sandbox(true);
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"OLD","expiry":far,"token_type":"Bearer"}),
    );
    assert_eq!(
        sandbox_login(&mut h)["ok"],
        json!(true),
        "policy allows overwrite"
    );
}

#[test]
fn strict_sandbox_refuses_logins() {
    let mut config = Config {
        capability_token: Some(Secret::new("c".repeat(64))),
        ..Config::default()
    };
    config.policy.strict_sandbox = true;
    let mut h = Harness::with_config(config, 1);
    let conn = h.connect();
    let r = h.call(conn, "oauth_initiate", json!({"provider":"anthropic"}));
    assert_eq!(
        r["error"],
        json!("Sandbox connections cannot initiate OAuth")
    );
}

#[test]
fn a_cancelled_exchange_still_stores_its_token() {
    let mut h = Harness::new();
    let conn = h.connect();
    let r = h.call(conn, "oauth_initiate", json!({"provider":"anthropic"}));
    h.request(
        conn,
        "x",
        "oauth_exchange",
        json!({"session_id": r["data"]["session_id"], "code": "c"}),
    );
    assert_eq!(
        h.call(conn, "cancel", json!({"targetId":"x"}))["data"],
        json!({"cancelled":true})
    );
    h.respond(200, json!({"access_token":"AT","refresh_token":"RT"}));
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["access_token"],
        json!("AT")
    );
    let replies = h.take_replies(conn);
    assert!(
        replies.iter().all(|r| r["id"] != json!("x")),
        "no second reply: {replies:?}"
    );
}
