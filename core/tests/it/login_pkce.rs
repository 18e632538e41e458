//! pkce_redirect logins (Anthropic, Gemini, configured providers): the auth
//! URL, the exact exchange request, paste forms, state checks, retries after
//! transient failures, single use and sanitized replies (SPEC §4).

use credproxy_core::http::{Method, TransportError};
use credproxy_core::pkce;
use credproxy_core::testkit::Harness;
use credproxy_core::{Config, Secret};
use serde_json::{Value, json};
use url::Url;

const TOKEN_URL: &str = "https://console.anthropic.com/v1/oauth/token";

fn query(url: &str) -> Vec<(String, String)> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(url: &str, name: &str) -> Option<String> {
    query(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn body_json(h: &Harness, i: usize) -> Value {
    serde_json::from_str(h.http_log[i].body.as_ref().unwrap().expose()).unwrap()
}

fn initiate(h: &mut Harness, conn: credproxy_core::ConnId, provider: &str) -> Value {
    let r = h.call(conn, "oauth_initiate", json!({ "provider": provider }));
    assert_eq!(r["ok"], json!(true), "{r}");
    r["data"].clone()
}

/// Starts a login and returns its session id.
fn new_session(h: &mut Harness, conn: credproxy_core::ConnId, provider: &str) -> String {
    let d = initiate(h, conn, provider);
    d["session_id"].as_str().unwrap().to_owned()
}

/// Sends `oauth_exchange` for `sid` with `code` and returns the reply.
fn exchange(h: &mut Harness, conn: credproxy_core::ConnId, sid: &str, code: &str) -> Value {
    h.call(
        conn,
        "oauth_exchange",
        json!({"session_id": sid, "code": code}),
    )
}

#[test]
fn anthropic_auth_url_and_reply_shape() {
    let mut h = Harness::new();
    let conn = h.connect();
    let d = initiate(&mut h, conn, "anthropic");
    assert_eq!(d["flow_type"], json!("pkce_redirect"));
    let sid = d["session_id"].as_str().unwrap();
    assert_eq!(sid.len(), 32);
    assert!(
        sid.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(d["pollIntervalMs"], json!(5000));
    assert_eq!(d["expires_in"], json!(600));
    let url = d["auth_url"].as_str().unwrap();
    assert!(url.starts_with(
        "https://claude.ai/oauth/authorize?code=true&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    ));
    assert_eq!(param(url, "response_type").as_deref(), Some("code"));
    assert_eq!(
        param(url, "redirect_uri").as_deref(),
        Some("https://console.anthropic.com/oauth/code/callback")
    );
    assert_eq!(
        param(url, "scope").as_deref(),
        Some("org:create_api_key user:profile user:inference")
    );
    assert_eq!(param(url, "code_challenge_method").as_deref(), Some("S256"));
    let state = param(url, "state").unwrap();
    let challenge = param(url, "code_challenge").unwrap();
    assert_eq!(challenge.len(), 43);
    assert_ne!(state, challenge);
    // No secret-bearing fields in the reply, and no HTTP call yet.
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "auth_url",
            "expires_in",
            "flow_type",
            "pollIntervalMs",
            "session_id"
        ]
    );
    assert!(h.http_log.is_empty());
}

#[test]
fn anthropic_exchange_with_code_hash_state() {
    let mut h = Harness::new();
    let conn = h.connect();
    let d = initiate(&mut h, conn, "anthropic");
    let sid = d["session_id"].as_str().unwrap().to_owned();
    let url = d["auth_url"].as_str().unwrap().to_owned();
    let state = param(&url, "state").unwrap();
    h.request(
        conn,
        "x",
        "oauth_exchange",
        json!({"session_id": sid, "code": format!("the-code#{state}"), "state": "ignored"}),
    );
    assert_eq!(h.http_pending.len(), 1);
    let req = &h.http_log[0];
    assert_eq!(req.method, Method::Post);
    assert_eq!(req.url, TOKEN_URL);
    assert_eq!(req.timeout_ms, 8_000);
    assert!(
        req.headers
            .contains(&("Content-Type".into(), "application/json".into()))
    );
    let body = body_json(&h, 0);
    assert_eq!(body["grant_type"], json!("authorization_code"));
    assert_eq!(body["code"], json!("the-code"));
    assert_eq!(body["state"], json!(state));
    assert_eq!(
        body["client_id"],
        json!("9d1c250a-e61b-44d9-88ed-5944d1962f5e")
    );
    assert_eq!(
        body["redirect_uri"],
        json!("https://console.anthropic.com/oauth/code/callback")
    );
    let verifier = body["code_verifier"].as_str().unwrap();
    assert_eq!(
        pkce::challenge(&Secret::new(verifier)),
        param(&url, "code_challenge").unwrap()
    );
    // While the exchange runs, a second exchange is refused.
    let r = exchange(&mut h, conn, &sid, "again");
    assert_eq!(r["code"], json!("SESSION_ALREADY_USED"));
    assert_eq!(r["error"], json!("OAuth session already used"));
    h.respond(200, json!({"access_token":"AT-1","refresh_token":"RT-1","expires_in":3600,"token_type":"bearer","scope":"s"}));
    let replies = h.take_replies(conn);
    let reply = replies.iter().find(|r| r["id"] == json!("x")).unwrap();
    assert_eq!(reply["ok"], json!(true), "{reply}");
    let expiry = h.now.unix_secs() + 3600;
    assert_eq!(
        reply["data"],
        json!({"access_token":"AT-1","expiry":expiry,"token_type":"Bearer","scope":"s"})
    );
    let stored = h.store.token("anthropic", "default").unwrap();
    assert_eq!(stored["refresh_token"], json!("RT-1"));
    // Single use.
    let r = exchange(&mut h, conn, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_NOT_FOUND"));
    assert!(!h.observable_text().contains("RT-1"));
    assert!(!h.observable_text().contains(verifier));
}

#[test]
fn a_login_replaces_rather_than_merges_and_uses_the_bucket() {
    let mut h = Harness::new();
    h.store.put_token("anthropic", "work", json!({"access_token":"old","refresh_token":"old-rt","expiry":1,"token_type":"Bearer","extra":"x"}));
    let conn = h.connect();
    let r = h.call(
        conn,
        "oauth_initiate",
        json!({"provider":"anthropic","bucket":"work","redirect_uri":"https://evil.example/cb"}),
    );
    let url = r["data"]["auth_url"].as_str().unwrap().to_owned();
    assert!(!url.contains("evil.example"));
    let sid = r["data"]["session_id"].as_str().unwrap().to_owned();
    h.request(
        conn,
        "x",
        "oauth_exchange",
        json!({"session_id": sid, "code": "c"}),
    );
    h.respond(200, json!({"access_token":"new","expires_in":60}));
    let stored = h.store.token("anthropic", "work").unwrap();
    assert_eq!(stored["access_token"], json!("new"));
    assert!(
        stored.get("refresh_token").is_none(),
        "login replaces: {stored}"
    );
    assert!(stored.get("extra").is_none());
    assert!(h.store.token("anthropic", "default").is_none());
    let ev = h.audit.iter().find(|e| e.op == "login_complete").unwrap();
    // A host-class login is INFO (it was WARN before the change;
    // sandbox logins and failures stay WARN, see tests/it/oauth_edges.rs).
    assert_eq!(ev.level, credproxy_core::Level::Info);
    assert_eq!(ev.bucket.as_deref(), Some("work"));
}

#[test]
fn state_mismatch_ends_the_session() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = new_session(&mut h, conn, "anthropic");
    let r = exchange(&mut h, conn, &sid, "c#wrong-state");
    assert_eq!(r["code"], json!("EXCHANGE_FAILED"));
    assert_eq!(
        r["error"],
        json!("Authorization response does not match this session")
    );
    assert!(h.http_log.is_empty());
    let r = exchange(&mut h, conn, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_NOT_FOUND"));
}

#[test]
fn pasted_redirect_url_is_accepted() {
    let mut h = Harness::new();
    let conn = h.connect();
    let d = initiate(&mut h, conn, "gemini");
    let state = param(d["auth_url"].as_str().unwrap(), "state").unwrap();
    let pasted = format!("https://codeassist.google.com/authcode?code=4%2Fabc&state={state}");
    h.request(
        conn,
        "x",
        "oauth_exchange",
        json!({"session_id": d["session_id"], "code": pasted}),
    );
    let body = h.http_log[0].body.as_ref().unwrap().expose().to_owned();
    assert_eq!(h.http_log[0].url, "https://oauth2.googleapis.com/token");
    assert!(
        body.starts_with("grant_type=authorization_code&code=4%2Fabc&client_id="),
        "{body}"
    );
    assert!(body.contains("redirect_uri=https%3A%2F%2Fcodeassist.google.com%2Fauthcode"));
    assert!(body.contains("code_verifier="));
}

#[test]
fn transient_failures_keep_the_session_for_three_attempts() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = new_session(&mut h, conn, "anthropic");
    for (i, failure) in [Some(TransportError::Timeout), None]
        .into_iter()
        .enumerate()
    {
        h.request(
            conn,
            &format!("e{i}"),
            "oauth_exchange",
            json!({"session_id": sid, "code": "c"}),
        );
        match failure {
            Some(e) => h.respond_failure(e),
            None => h.respond(503, json!({})),
        }
        let r = h.take_replies(conn).pop().unwrap();
        assert_eq!(r["code"], json!("EXCHANGE_FAILED"));
    }
    assert_eq!(
        exchange(&mut h, conn, &sid, "c"),
        Value::Null,
        "third attempt is in flight"
    );
    h.respond(429, json!({}));
    let r = h.take_replies(conn).pop().unwrap();
    assert_eq!(r["error"], json!("Provider unreachable (http 429)"));
    let r = exchange(&mut h, conn, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_NOT_FOUND"), "attempts used up");
}

#[test]
fn provider_rejection_ends_the_session_without_echoing_upstream_text() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = new_session(&mut h, conn, "anthropic");
    h.request(
        conn,
        "x",
        "oauth_exchange",
        json!({"session_id": sid, "code": "c"}),
    );
    h.respond(
        400,
        json!({"error":"invalid_grant","error_description":"secret upstream detail"}),
    );
    let r = h.take_replies(conn).pop().unwrap();
    assert_eq!(
        r,
        json!({"id":"x","ok":false,"code":"EXCHANGE_FAILED","error":"Provider rejected the request (invalid_grant)"})
    );
    assert!(!h.observable_text().contains("secret upstream detail"));
    let r = exchange(&mut h, conn, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_NOT_FOUND"));
}

#[test]
fn poll_on_a_pkce_session_is_a_flow_mismatch() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = new_session(&mut h, conn, "anthropic");
    let r = h.call(conn, "oauth_poll", json!({"session_id": sid}));
    assert_eq!(
        r["error"],
        json!("Operation oauth_poll not valid for flow type pkce_redirect")
    );
    assert_eq!(r["code"], json!("INVALID_REQUEST"));
}

#[test]
fn sessions_are_bound_to_the_peer_and_expire() {
    let mut config = Config::default();
    config.limits.session_ttl_ms = 1_000;
    let mut h = Harness::with_config(config, 1);
    let a = h.connect();
    let b = h
        .open_peer(credproxy_core::Peer {
            uid: Some(4242),
            gid: None,
            pid: None,
            transport: credproxy_core::Transport::Unix,
        })
        .unwrap();
    h.send_json(b, &json!({"v":2,"op":"handshake"}));
    h.take_replies(b);
    let sid = new_session(&mut h, a, "anthropic");
    let r = exchange(&mut h, b, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_NOT_FOUND"), "another peer");
    h.advance(1_000);
    let r = exchange(&mut h, a, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_EXPIRED"));
    assert_eq!(r["error"], json!("OAuth session expired"));
    let r = exchange(&mut h, a, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_NOT_FOUND"));
}

#[test]
fn expired_sessions_are_swept_and_reported_once() {
    let mut config = Config::default();
    config.limits.session_ttl_ms = 1_000;
    config.limits.session_sweep_ms = 500;
    let mut h = Harness::with_config(config, 1);
    let a = h.connect();
    let sid = new_session(&mut h, a, "anthropic");
    h.advance(1_000);
    assert_eq!(h.engine.session_count(), 0, "swept");
    let r = exchange(&mut h, a, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_EXPIRED"));
    let r = h.call(a, "oauth_cancel", json!({"session_id": sid}));
    assert_eq!(r["data"], json!({}));
}

#[test]
fn session_caps() {
    let mut h = Harness::new();
    let a = h.connect();
    for _ in 0..8 {
        initiate(&mut h, a, "anthropic");
    }
    let r = h.call(a, "oauth_initiate", json!({"provider":"anthropic"}));
    assert_eq!(r["code"], json!("RESOURCE_EXHAUSTED"));
    assert_eq!(r["error"], json!("Too many OAuth sessions"));
    // The cap is per peer identity (uid and class), not per connection.
    let b = h.connect();
    let r = h.call(b, "oauth_initiate", json!({"provider":"anthropic"}));
    assert_eq!(r["code"], json!("RESOURCE_EXHAUSTED"));
}

#[test]
fn oauth_cancel_ends_the_session() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = new_session(&mut h, conn, "anthropic");
    assert_eq!(
        h.call(conn, "oauth_cancel", json!({"session_id": sid}))["data"],
        json!({})
    );
    assert_eq!(
        h.call(conn, "oauth_cancel", json!({"session_id": "nope"}))["data"],
        json!({})
    );
    let r = exchange(&mut h, conn, &sid, "c");
    assert_eq!(r["code"], json!("SESSION_NOT_FOUND"));
}

/// A started login is one live session, listed under the id the client got,
/// still under way; `oauth_cancel` removes it from both at once.
#[test]
fn live_sessions_are_counted_and_listed_until_cancelled() {
    let mut h = Harness::new();
    let conn = h.connect();
    let sid = new_session(&mut h, conn, "anthropic");
    assert_eq!(h.engine.session_count(), 1);
    let listed: Vec<(String, u8)> = h
        .engine
        .session_states()
        .map(|(id, state)| (id.to_owned(), state.rank()))
        .collect();
    assert_eq!(listed, vec![(sid.clone(), 0)]);
    h.call(conn, "oauth_cancel", json!({"session_id": sid}));
    assert_eq!(h.engine.session_count(), 0);
    assert_eq!(h.engine.session_states().count(), 0);
}
