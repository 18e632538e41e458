//! device_code logins (Qwen, OpenAI's Codex device dialect, configured RFC
//! 8628 providers): the device request, background polling on engine
//! timers, `slow_down`, transport backoff, terminal errors, and `oauth_poll`
//! that only reads state (SPEC §4).

use credproxy_core::http::TransportError;
use credproxy_core::provider::{self, Dialect, FlowType, ProviderSpec};
use credproxy_core::testkit::Harness;
use credproxy_core::{Config, ConnId};
use serde_json::{Value, json};

const QWEN_DEVICE: &str = "https://chat.qwen.ai/api/v1/oauth2/device/code";
const QWEN_TOKEN: &str = "https://chat.qwen.ai/api/v1/oauth2/token";

fn form(h: &Harness, i: usize) -> Vec<(String, String)> {
    url::form_urlencoded::parse(h.http_log[i].body.as_ref().unwrap().expose().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field(h: &Harness, i: usize, name: &str) -> Option<String> {
    form(h, i)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn qwen_session(h: &mut Harness, conn: ConnId) -> String {
    h.script(
        QWEN_DEVICE,
        200,
        json!({"device_code":"DEV-1","user_code":"ABCD-EFGH","verification_uri":"https://chat.qwen.ai/authorize","verification_uri_complete":"https://chat.qwen.ai/authorize?user_code=ABCD-EFGH","expires_in":"900","interval":5}),
    );
    let r = h.call(conn, "oauth_initiate", json!({"provider":"qwen"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let d = &r["data"];
    assert_eq!(d["flow_type"], json!("device_code"));
    assert_eq!(d["auth_url"], json!("https://chat.qwen.ai/authorize"));
    assert_eq!(
        d["verification_uri"],
        json!("https://chat.qwen.ai/authorize")
    );
    assert_eq!(
        d["verification_uri_complete"],
        json!("https://chat.qwen.ai/authorize?user_code=ABCD-EFGH")
    );
    assert_eq!(d["user_code"], json!("ABCD-EFGH"));
    assert_eq!(d["pollIntervalMs"], json!(5000));
    assert_eq!(
        d["expires_in"],
        json!(600),
        "the lesser of the session lifetime and the device code's"
    );
    assert!(d.get("device_code").is_none());
    d["session_id"].as_str().unwrap().to_owned()
}

fn poll(h: &mut Harness, conn: ConnId, sid: &str) -> Value {
    h.call(conn, "oauth_poll", json!({ "session_id": sid }))
}

#[test]
fn qwen_device_request_uses_pkce_and_form_encoding() {
    let mut h = Harness::new();
    let conn = h.connect();
    qwen_session(&mut h, conn);
    assert_eq!(h.http_log[0].url, QWEN_DEVICE);
    assert_eq!(
        field(&h, 0, "client_id").as_deref(),
        Some("f0304373b74a44d2b584a3fb70ca9e56")
    );
    assert_eq!(
        field(&h, 0, "scope").as_deref(),
        Some("openid profile email model.completion")
    );
    assert_eq!(
        field(&h, 0, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(field(&h, 0, "code_challenge").map(|c| c.len()), Some(43));
}

#[test]
fn background_polling_pending_slow_down_then_complete() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = qwen_session(&mut h, conn);
    // Polling only reads state: no HTTP request.
    assert_eq!(
        poll(&mut h, conn, &sid)["data"],
        json!({"status":"pending","pollIntervalMs":5000})
    );
    assert_eq!(h.http_log.len(), 1);
    // The host polls at the interval.
    assert_eq!(h.engine.poll_timeout().map(|m| m.0), Some(5_000));
    h.advance(4_999);
    assert_eq!(h.http_log.len(), 1);
    h.advance(1);
    assert_eq!(h.http_log.len(), 2);
    assert_eq!(h.http_log[1].url, QWEN_TOKEN);
    assert_eq!(
        field(&h, 1, "grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:device_code")
    );
    assert_eq!(field(&h, 1, "device_code").as_deref(), Some("DEV-1"));
    assert!(field(&h, 1, "code_verifier").is_some());
    h.respond(400, json!({"error":"authorization_pending"}));
    h.advance(5_000);
    h.respond(400, json!({"error":"slow_down"}));
    assert_eq!(
        poll(&mut h, conn, &sid)["data"],
        json!({"status":"pending","pollIntervalMs":10000,"interval":10})
    );
    h.advance(9_999);
    assert_eq!(h.http_pending.len(), 0);
    h.advance(1);
    h.respond(400, json!({"error":"slow_down"}));
    h.advance(15_000);
    // A transport error backs off without lowering the interval.
    h.respond_failure(TransportError::Connect);
    assert_eq!(
        poll(&mut h, conn, &sid)["data"]["pollIntervalMs"],
        json!(15000)
    );
    h.advance(29_999);
    assert!(h.http_pending.is_empty());
    h.advance(1);
    h.respond(200, json!({"access_token":"QAT","refresh_token":"QRT","expires_in":7200,"resource_url":"portal.qwen.ai"}));
    let r = poll(&mut h, conn, &sid);
    assert_eq!(r["data"]["status"], json!("complete"));
    assert_eq!(r["data"]["token"]["access_token"], json!("QAT"));
    assert_eq!(r["data"]["token"]["resource_url"], json!("portal.qwen.ai"));
    assert!(r["data"]["token"].get("refresh_token").is_none());
    assert_eq!(
        h.store.token("qwen", "default").unwrap()["refresh_token"],
        json!("QRT")
    );
    assert_eq!(poll(&mut h, conn, &sid)["code"], json!("SESSION_NOT_FOUND"));
    assert!(!h.observable_text().contains("DEV-1"));
    assert!(!h.observable_text().contains("QRT"));
}

#[test]
fn terminal_device_errors_are_reported_once() {
    for (error, code, message) in [
        (
            "access_denied",
            "ACCESS_DENIED",
            "User denied authorization",
        ),
        ("expired_token", "SESSION_EXPIRED", "Device code expired"),
        (
            "unsupported_grant_type",
            "POLL_FAILED",
            "Provider rejected the request (unsupported_grant_type)",
        ),
    ] {
        let mut h = Harness::new();
        let conn = h.connect();
        let sid = qwen_session(&mut h, conn);
        h.advance(5_000);
        h.respond(400, json!({ "error": error }));
        assert!(
            h.engine.poll_timeout().is_none_or(|t| t.0 >= 60_000),
            "polling stopped"
        );
        let r = poll(&mut h, conn, &sid);
        assert_eq!(
            (r["code"].clone(), r["error"].clone()),
            (json!(code), json!(message))
        );
        assert_eq!(poll(&mut h, conn, &sid)["code"], json!("SESSION_NOT_FOUND"));
    }
}

#[test]
fn exchange_on_a_device_session_is_a_flow_mismatch() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = qwen_session(&mut h, conn);
    let r = h.call(
        conn,
        "oauth_exchange",
        json!({"session_id": sid, "code": "x"}),
    );
    assert_eq!(
        r["error"],
        json!("Operation oauth_exchange not valid for flow type device_code")
    );
}

#[test]
fn cancel_stops_polling() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = qwen_session(&mut h, conn);
    h.call(conn, "oauth_cancel", json!({ "session_id": sid }));
    h.advance(60_000);
    assert_eq!(h.http_log.len(), 1, "no poll after cancel");
}

#[test]
fn device_initiation_failure() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.script_failure(QWEN_DEVICE, TransportError::Tls);
    let r = h.call(conn, "oauth_initiate", json!({"provider":"qwen"}));
    assert_eq!(r["code"], json!("FLOW_INITIATION_FAILED"));
    assert_eq!(r["error"], json!("Provider unreachable (tls)"));
    assert_eq!(h.engine.session_count(), 0);
}

/// A harness with OpenAI's Codex device dialect as `codex`, a connection
/// and the reply to its `oauth_initiate` (a 5 s poll interval).
fn codex_device_initiated() -> (Harness, ConnId, Value) {
    let mut config = Config::default();
    let codex = provider::codex_device(provider::codex());
    config.providers.insert("codex".into(), codex);
    let mut h = Harness::with_config(config, 3);
    let conn = h.connect();
    h.script(
        "https://auth.openai.com/api/accounts/deviceauth/usercode",
        200,
        json!({"device_auth_id":"DA-1","user_code":"XY12-Z","interval":"5"}),
    );
    let r = h.call(conn, "oauth_initiate", json!({"provider":"codex"}));
    (h, conn, r)
}

#[test]
fn codex_device_dialect() {
    let (mut h, conn, r) = codex_device_initiated();
    let d = &r["data"];
    assert_eq!(d["flow_type"], json!("device_code"), "{r}");
    assert_eq!(d["user_code"], json!("XY12-Z"));
    assert_eq!(
        d["verification_uri_complete"],
        json!("https://auth.openai.com/codex/device?user_code=XY12-Z")
    );
    let body: Value = serde_json::from_str(h.http_log[0].body.as_ref().unwrap().expose()).unwrap();
    assert_eq!(body, json!({"client_id":"app_EMoamEEZ73f0CkXaXp7hrann"}));
    let sid = d["session_id"].as_str().unwrap().to_owned();
    h.advance(5_000);
    assert_eq!(
        h.http_log[1].url,
        "https://auth.openai.com/api/accounts/deviceauth/token"
    );
    let body: Value = serde_json::from_str(h.http_log[1].body.as_ref().unwrap().expose()).unwrap();
    assert_eq!(body, json!({"device_auth_id":"DA-1","user_code":"XY12-Z"}));
    h.respond(403, json!({"error":"pending"}));
    h.advance(5_000);
    h.respond(
        200,
        json!({"authorization_code":"AC-1","code_verifier":"SERVER-VERIFIER","code_challenge":"x"}),
    );
    assert_eq!(h.http_log[3].url, "https://auth.openai.com/oauth/token");
    assert_eq!(field(&h, 3, "code").as_deref(), Some("AC-1"));
    assert_eq!(
        field(&h, 3, "code_verifier").as_deref(),
        Some("SERVER-VERIFIER")
    );
    assert_eq!(
        field(&h, 3, "redirect_uri").as_deref(),
        Some("https://auth.openai.com/deviceauth/callback")
    );
    use base64::Engine as _;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"https://api.openai.com/auth":{"chatgpt_account_id":"acct-9"}}).to_string());
    h.respond(200, json!({"access_token":"CAT","refresh_token":"CRT","id_token":format!("h.{claims}.s"),"token_type":"bearer"}));
    let r = poll(&mut h, conn, &sid);
    assert_eq!(r["data"]["token"]["account_id"], json!("acct-9"), "{r}");
    assert!(!h.observable_text().contains("SERVER-VERIFIER"));
    assert!(!h.observable_text().contains("DA-1"));
}

/// A standard device provider without scopes sends no `scope` field.
#[test]
fn a_standard_device_request_without_scopes_has_no_scope_field() {
    let mut config = Config::default();
    config.providers.insert(
        "corp".into(),
        ProviderSpec {
            issuer: Some("https://id.corp.example".into()),
            ..ProviderSpec::new("corp", FlowType::DeviceCode, Dialect::Standard, "corp-cli")
        },
    );
    let mut h = Harness::with_config(config, 5);
    let a = h.connect();
    h.request(a, "1", "oauth_initiate", json!({"provider":"corp"}));
    h.respond(200, json!({"issuer":"https://id.corp.example","token_endpoint":"https://id.corp.example/token","device_authorization_endpoint":"https://id.corp.example/device"}));
    assert_eq!(h.http_log[1].url, "https://id.corp.example/device");
    assert_eq!(
        form(&h, 1),
        vec![("client_id".to_owned(), "corp-cli".to_owned())]
    );
}

/// A Codex device poll that cannot reach the provider waits twice the
/// interval before the next (then four times, up to the cap).
#[test]
fn codex_device_poll_backs_off_on_transport_errors() {
    let (mut h, _conn, r) = codex_device_initiated();
    assert_eq!(r["data"]["flow_type"], json!("device_code"), "{r}");
    h.advance(5_000);
    assert_eq!(h.http_log.len(), 2, "the first poll");
    h.respond_failure(TransportError::Connect);
    h.advance(9_999);
    assert_eq!(h.http_log.len(), 2, "no poll before twice the interval");
    h.advance(1);
    assert_eq!(h.http_log.len(), 3, "the second poll at 10 s");
    h.respond_failure(TransportError::Connect);
    h.advance(19_999);
    assert_eq!(h.http_log.len(), 3);
    h.advance(1);
    assert_eq!(h.http_log.len(), 4, "the third poll 20 s later");
}

#[test]
fn configured_provider_with_oidc_discovery() {
    let mut config = Config::default();
    config.providers.insert(
        "corp".into(),
        ProviderSpec {
            issuer: Some("https://id.corp.example".into()),
            scopes: vec!["openid".into()],
            default_device_lifetime_s: 300,
            ..ProviderSpec::new("corp", FlowType::DeviceCode, Dialect::Standard, "corp-cli")
        },
    );
    let mut h = Harness::with_config(config, 5);
    let a = h.connect();
    let b = h.connect();
    // Two initiations share one discovery request.
    h.request(a, "1", "oauth_initiate", json!({"provider":"corp"}));
    h.request(b, "2", "oauth_initiate", json!({"provider":"corp"}));
    assert_eq!(h.http_pending.len(), 1);
    assert_eq!(
        h.http_log[0].url,
        "https://id.corp.example/.well-known/openid-configuration"
    );
    h.respond(200, json!({"issuer":"https://id.corp.example","token_endpoint":"https://id.corp.example/token","device_authorization_endpoint":"https://id.corp.example/device"}));
    assert_eq!(h.http_pending.len(), 2);
    assert!(
        h.http_log[1..]
            .iter()
            .all(|r| r.url == "https://id.corp.example/device")
    );
    // The standard dialect sends the configured scopes.
    assert!(
        form(&h, 1).contains(&("scope".to_owned(), "openid".to_owned())),
        "{:?}",
        form(&h, 1)
    );
    for _ in 0..2 {
        h.respond(200, json!({"device_code":"d","user_code":"u","verification_uri":"https://id.corp.example/activate"}));
    }
    let ra = h.take_replies(a);
    assert_eq!(ra[0]["data"]["expires_in"], json!(300), "{ra:?}");
    assert_eq!(h.take_replies(b)[0]["ok"], json!(true));
}

/// A harness whose `corp` provider (the qwen device flow) has only an
/// issuer, a connection, and an `oauth_initiate` of it (id `1`) waiting on
/// the discovery request.
fn initiating_corp() -> (Harness, ConnId) {
    let mut config = Config::default();
    let mut spec = provider::qwen();
    spec.name = "corp".into();
    spec.issuer = Some("https://id.corp.example".into());
    spec.device_url = None;
    spec.token_url = None;
    config.providers.insert("corp".into(), spec);
    let mut h = Harness::with_config(config, 5);
    let a = h.connect();
    h.request(a, "1", "oauth_initiate", json!({"provider":"corp"}));
    (h, a)
}

#[test]
fn discovery_issuer_mismatch_fails_initiation() {
    let (mut h, a) = initiating_corp();
    h.respond(200, json!({"issuer":"https://evil.example","device_authorization_endpoint":"https://evil.example/d"}));
    let r = h.take_replies(a).pop().unwrap();
    assert_eq!(r["code"], json!("FLOW_INITIATION_FAILED"));
    // The message names both issuers (it used to say only "issuer
    // mismatch").
    assert_eq!(
        r["error"],
        json!(
            "OIDC discovery failed (issuer mismatch: configured \"https://id.corp.example\", discovered \"https://evil.example\")"
        )
    );
}

#[test]
fn discovery_issuer_trailing_slash_is_named_in_the_error() {
    let (mut h, a) = initiating_corp();
    h.respond(200, json!({"issuer":"https://id.corp.example/","device_authorization_endpoint":"https://id.corp.example/d"}));
    let r = h.take_replies(a).pop().unwrap();
    assert_eq!(r["code"], json!("FLOW_INITIATION_FAILED"));
    let msg = r["error"].as_str().unwrap();
    assert!(
        msg.contains("configured \"https://id.corp.example\""),
        "{msg}"
    );
    assert!(
        msg.contains("discovered \"https://id.corp.example/\""),
        "{msg}"
    );
}
