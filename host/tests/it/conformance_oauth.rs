//! Conformance, part 2: host-side OAuth login (reference notes §10, items
//! 46–90: `oauth-initiate.spec.ts`, `oauth-exchange.spec.ts`,
//! `oauth-poll.spec.ts`), plus what the existing suite never tested (notes
//! §11 B25): session expiry for exchange and poll, codex flows,
//! `FLOW_INITIATION_FAILED` / `POLL_FAILED`, `redirect_uri` from a client.
//!
//! The built-in providers are pointed at a stub OAuth server on 127.0.0.1
//! with the configuration file: `anthropic` is the pkce_redirect provider,
//! `qwen` the device_code provider, `codex` the browser_redirect one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::conformance::Step::Refuses;
use crate::support::conformance::{
    self, Conn, Env, Gate, Resp, Server, Stub, b64url, device_stub, device_token, err_reply,
    free_port, http_get, keys, login, login_ok, n_client, n_conn, n_refuses, n_server, oauth_err,
    ok_json, path, pct, poll_until_done, providers_toml, run_steps, sha256, std_stub, std_token,
    url_query, wait_for,
};

/// The fast device polling used by the poll tests.
const FAST_POLL: &str = "device_poll_ms = 30";

/// A stub, an N-server on its providers with extra `[limits]` lines (kept
/// alive with its tree) and a connection past the handshake.
fn client(stub: Stub, limits: &str) -> (Stub, (Env, Server), Conn) {
    let (env, srv, c) = n_client(&stub, limits);
    (stub, (env, srv), c)
}

/// A qwen login under way on a device stub answering its polls with
/// `script` (fast polling).
struct Device {
    stub: Stub,
    _server: (Env, Server),
    c: Conn,
    sid: String,
}

fn device_session(script: Vec<Resp>) -> Device {
    let (stub, _server, mut c) = client(device_stub(script, None), FAST_POLL);
    let sid = device_login(&mut c, None);
    Device {
        stub,
        _server,
        c,
        sid,
    }
}

fn initiate(c: &mut Conn, payload: Value) -> Value {
    c.ok("oauth_initiate", payload)
}

fn sid_of(init: &Value) -> String {
    init["session_id"].as_str().expect("session_id").to_owned()
}

/// The fields a client must never see in an initiate reply.
fn assert_no_secret_fields(init: &Value) {
    for k in [
        "code_verifier",
        "pkce_verifier",
        "verifier",
        "device_code",
        "flowInstance",
        "pkceState",
        "state",
        "refresh_token",
    ] {
        assert!(init.get(k).is_none(), "{k} in {init}");
    }
}

// --- oauth_initiate (46–59) -------------------------------------------------

#[test]
fn c046_initiate_anthropic_is_pkce_redirect() {
    let (_stub, _server, mut c) = client(std_stub(), "");
    let init = initiate(&mut c, json!({"provider":"anthropic"}));
    assert_eq!(init["flow_type"], "pkce_redirect");
    // SPEC §4, §10: expires_in added (the session lifetime, 600 s default).
    assert_eq!(init["expires_in"], 600);
    assert_eq!(init["pollIntervalMs"], 5000);
}

#[test]
fn c047_initiate_device_provider_is_device_code() {
    let (stub, _server, mut c) = client(
        device_stub(vec![oauth_err(400, "authorization_pending")], None),
        "",
    );
    let init = initiate(&mut c, json!({"provider":"qwen"}));
    assert_eq!(init["flow_type"], "device_code");
    assert_eq!(stub.count(path::QWEN_DEVICE), 1);
}

#[test]
fn c048_initiate_unknown_provider_is_provider_not_configured() {
    n_refuses(
        "oauth_initiate",
        json!({"provider":"nosuch"}),
        "PROVIDER_NOT_CONFIGURED",
        "No OAuth flow factory configured for provider: nosuch",
    );
}

#[test]
fn c049_fix_b9_pkce_auth_url_built_by_host_state_is_not_the_verifier() {
    // SPEC §4 (pkce_redirect), §10: S256 PKCE with a separate random state.
    let (stub, _server, mut c) = client(std_stub(), "");
    let init = initiate(&mut c, json!({"provider":"anthropic"}));
    let url = init["auth_url"].as_str().expect("auth_url");
    assert!(url.starts_with(&stub.url("/anthropic/authorize?")), "{url}");
    let q = url_query(url);
    assert_eq!(q["code"], "true");
    assert_eq!(q["client_id"], "9d1c250a-e61b-44d9-88ed-5944d1962f5e");
    assert_eq!(q["response_type"], "code");
    assert_eq!(
        q["redirect_uri"],
        "https://console.anthropic.com/oauth/code/callback"
    );
    assert_eq!(q["scope"], "org:create_api_key user:profile user:inference");
    assert_eq!(q["code_challenge_method"], "S256");
    let state = q["state"].clone();
    let challenge = q["code_challenge"].clone();
    // Exchange: the host sends the verifier whose S256 is the challenge,
    // and the state, which is not the verifier.
    let r = c.call(
        "oauth_exchange",
        json!({"session_id": sid_of(&init), "code": format!("c49#{state}")}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let ex = &stub.to(path::ANTHROPIC)[0];
    assert!(ex.is_json(), "Anthropic's exchange body is JSON");
    let verifier = ex.field("code_verifier").expect("code_verifier");
    assert_eq!(b64url(&sha256(verifier.as_bytes())), challenge);
    assert_eq!(ex.field("state").as_deref(), Some(state.as_str()));
    assert_ne!(verifier, state);
    assert!(!url.contains(&verifier));
}

#[test]
fn c050_device_auth_url_is_the_verification_uri() {
    let (_stub, _server, mut c) = client(
        device_stub(vec![oauth_err(400, "authorization_pending")], None),
        "",
    );
    let init = initiate(&mut c, json!({"provider":"qwen"}));
    assert_eq!(init["auth_url"], "https://example.com/device");
    assert_eq!(init["verification_uri"], "https://example.com/device");
    assert_eq!(
        init["verification_uri_complete"],
        "https://example.com/device?user_code=UC-0"
    );
}

#[test]
fn c051_device_user_code_is_the_providers() {
    let (_stub, _server, mut c) = client(
        device_stub(vec![oauth_err(400, "authorization_pending")], None),
        "",
    );
    let init = initiate(&mut c, json!({"provider":"qwen"}));
    assert_eq!(init["user_code"], "UC-0");
}

#[test]
fn c052_session_id_is_32_lowercase_hex() {
    let (_stub, _server, mut c) = client(std_stub(), "");
    let sid = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    assert_eq!(sid.len(), 32);
    assert!(
        sid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{sid}"
    );
}

#[test]
fn c053_two_initiates_give_different_sessions() {
    let (_stub, _server, mut c) = client(std_stub(), "");
    let a = initiate(&mut c, json!({"provider":"anthropic"}));
    let b = initiate(&mut c, json!({"provider":"anthropic"}));
    assert_ne!(sid_of(&a), sid_of(&b));
    assert_ne!(
        url_query(a["auth_url"].as_str().unwrap())["state"],
        url_query(b["auth_url"].as_str().unwrap())["state"]
    );
}

#[test]
fn c054_oauth_cancel_then_exchange_is_session_not_found() {
    let (stub, _server, mut c) = client(std_stub(), "");
    let sid = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    assert_eq!(c.ok("oauth_cancel", json!({"session_id": sid})), json!({}));
    assert_eq!(
        c.err("oauth_exchange", json!({"session_id": sid, "code":"x"})),
        ("SESSION_NOT_FOUND".into(), "OAuth session not found".into())
    );
    assert_eq!(stub.count(path::ANTHROPIC), 0);
}

#[test]
fn c055_initiate_reply_has_no_verifier_fields() {
    let (_stub, _server, mut c) = client(
        device_stub(vec![oauth_err(400, "authorization_pending")], None),
        "",
    );
    assert_no_secret_fields(&initiate(&mut c, json!({"provider":"anthropic"})));
    assert_no_secret_fields(&initiate(&mut c, json!({"provider":"qwen"})));
}

#[test]
fn c056_initiate_reply_has_no_flow_internals() {
    let (_stub, _server, mut c) = client(
        device_stub(vec![oauth_err(400, "authorization_pending")], None),
        "",
    );
    for p in ["anthropic", "qwen"] {
        let init = initiate(&mut c, json!({"provider":p}));
        let allowed: BTreeSet<&str> = [
            "flow_type",
            "session_id",
            "pollIntervalMs",
            "expires_in",
            "auth_url",
            "verification_uri",
            "verification_uri_complete",
            "user_code",
        ]
        .into();
        for k in keys(&init) {
            assert!(allowed.contains(k.as_str()), "unexpected {k} in {init}");
        }
        // The device code never leaves the host, not even inside a value.
        assert!(!init.to_string().contains("dc-0"), "{init}");
    }
}

#[test]
fn c057_device_poll_interval_ms_from_the_providers_interval() {
    let stub = device_stub(vec![oauth_err(400, "authorization_pending")], Some(5));
    let (_e, _srv, mut c) = n_client(&stub, "");
    let init = initiate(&mut c, json!({"provider":"qwen"}));
    assert_eq!(init["pollIntervalMs"], 5000);
    // SPEC §4: expires_in is the lesser of the session and device lifetimes.
    assert_eq!(init["expires_in"], 600);
}

#[test]
fn c058_pkce_auth_url_present() {
    let (_stub, _server, mut c) = client(std_stub(), "");
    let init = initiate(&mut c, json!({"provider":"anthropic"}));
    assert!(
        init["auth_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http"))
    );
    assert!(init.get("user_code").is_none());
}

#[test]
fn c059_initiate_without_provider_is_invalid_request() {
    n_refuses(
        "oauth_initiate",
        json!({}),
        "INVALID_REQUEST",
        "Missing provider",
    );
}

// --- oauth_exchange (60–73) -------------------------------------------------

#[test]
fn c060_exchange_stores_the_providers_token() {
    let (_stub, _server, mut c) = client(std_stub(), "");
    login_ok(&mut c, "anthropic", None, "c60");
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "at-c60"
    );
}

#[test]
fn c061_exchange_stores_under_the_initiate_bucket() {
    let (_stub, _server, mut c) = client(std_stub(), "");
    login_ok(&mut c, "anthropic", Some("work"), "c61");
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic","bucket":"work"}))["access_token"],
        "at-c61"
    );
    assert_eq!(
        c.err("get_token", json!({"provider":"anthropic"})).0,
        "NOT_FOUND"
    );
}

#[test]
fn c062_exchange_reply_has_no_refresh_token_store_keeps_it() {
    let (stub, _server, mut c) = client(std_stub(), "");
    let r = login(&mut c, "anthropic", None, "c62");
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["data"].get("refresh_token").is_none(), "{r}");
    assert!(!r.to_string().contains("rt-c62"));
    // The host kept it: a refresh sends it to the provider.
    c.ok("refresh_token", json!({"provider":"anthropic"}));
    assert_eq!(
        stub.to(path::ANTHROPIC)[1]
            .field("refresh_token")
            .as_deref(),
        Some("rt-c62")
    );
}

#[test]
fn c063_exchange_keeps_extra_provider_fields() {
    let (_stub, _server, mut c) = client(std_stub(), "");
    let t = login_ok(&mut c, "anthropic", None, "c63");
    assert_eq!(t["account_id"], "acct-c63");
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["account_id"],
        "acct-c63"
    );
}

#[test]
fn c064_second_exchange_after_success_is_session_not_found() {
    let (stub, _server, mut c) = client(std_stub(), "");
    let sid = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    c.ok("oauth_exchange", json!({"session_id": sid, "code":"a"}));
    assert_eq!(
        c.err("oauth_exchange", json!({"session_id": sid, "code":"b"})),
        ("SESSION_NOT_FOUND".into(), "OAuth session not found".into())
    );
    assert_eq!(stub.count(path::ANTHROPIC), 1);
}

#[test]
fn c065_exchange_unknown_session_is_session_not_found() {
    n_refuses(
        "oauth_exchange",
        json!({"session_id":"f".repeat(32), "code":"x"}),
        "SESSION_NOT_FOUND",
        "OAuth session not found",
    );
}

#[test]
fn c066_exchange_sends_exactly_the_pasted_code_once() {
    let (stub, _server, mut c) = client(std_stub(), "");
    login_ok(&mut c, "anthropic", None, "code-66_x.y");
    let sent = stub.to(path::ANTHROPIC);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].field("code").as_deref(), Some("code-66_x.y"));
    assert_eq!(
        sent[0].field("grant_type").as_deref(),
        Some("authorization_code")
    );
}

#[test]
fn c067_exchange_rejected_by_provider_is_exchange_failed() {
    let stub = Stub::start(|_, _| oauth_err(400, "invalid_grant"));
    let (_e, _srv, mut c) = n_client(&stub, "");
    let r = login(&mut c, "anthropic", None, "bad");
    // SPEC §3.6: the provider's error code, never its raw body (B13).
    assert_eq!(
        r,
        err_reply(
            "r2",
            "EXCHANGE_FAILED",
            "Provider rejected the request (invalid_grant)"
        )
    );
}

#[test]
fn c068_exchange_without_session_id_is_invalid_request() {
    let (_env, _srv, mut c) = n_conn();
    run_steps(
        &mut c,
        &[Refuses(
            "oauth_exchange",
            json!({"code":"x"}),
            "INVALID_REQUEST",
            "Missing session_id",
        )],
    );
    assert_eq!(
        c.err("oauth_exchange", json!({})).1,
        "Missing session_id",
        "session_id is checked first"
    );
}

#[test]
fn c069_exchange_without_code_is_invalid_request() {
    n_refuses(
        "oauth_exchange",
        json!({"session_id":"a".repeat(32)}),
        "INVALID_REQUEST",
        "Missing code",
    );
}

#[test]
fn c070_exchange_reply_has_access_token_bearer_and_expiry() {
    let (_stub, _server, mut c) = client(std_stub(), "");
    let before = conformance::now_secs();
    let t = login_ok(&mut c, "anthropic", None, "c70");
    assert_eq!(t["access_token"], "at-c70");
    assert_eq!(t["token_type"], "Bearer", "provider said \"bearer\"");
    let expiry = t["expiry"].as_u64().expect("expiry seconds");
    assert!((before + 3600..=conformance::now_secs() + 3600).contains(&expiry));
}

#[test]
fn c071_extra_state_field_in_exchange_payload_is_ignored() {
    let (stub, _server, mut c) = client(std_stub(), "");
    let sid = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    let t = c.ok(
        "oauth_exchange",
        json!({"session_id": sid, "code":"c71", "state":"not-the-state"}),
    );
    assert_eq!(t["access_token"], "at-c71");
    assert_eq!(stub.count(path::ANTHROPIC), 1);
}

#[test]
fn c072_exchange_token_is_the_providers_exactly() {
    let nonce = conformance::nonce("n72");
    let n2 = nonce.clone();
    let stub = Stub::start(move |req, nth| {
        if req.field("grant_type").as_deref() == Some("authorization_code") {
            ok_json(
                json!({"access_token": format!("at-{n2}"), "refresh_token": format!("rt-{n2}"), "expires_in": 3600}),
            )
        } else {
            std_token(req, nth)
        }
    });
    let (_e, _srv, mut c) = n_client(&stub, "");
    let t = login_ok(&mut c, "anthropic", None, "c72");
    assert_eq!(t["access_token"], format!("at-{nonce}"));
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        format!("at-{nonce}")
    );
    c.ok("refresh_token", json!({"provider":"anthropic"}));
    assert_eq!(
        stub.to(path::ANTHROPIC)[1].field("refresh_token"),
        Some(format!("rt-{nonce}"))
    );
}

#[test]
fn c073_concurrent_exchanges_one_wins_provider_called_once() {
    let gate = Gate::new();
    let g = gate.clone();
    let stub = Stub::start(move |req, nth| {
        g.wait();
        std_token(req, nth)
    });
    let (_e, _srv, mut c) = n_client(&stub, "");
    let sid = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    let mut bytes = conformance::encode(
        &json!({"v":2,"id":"x1","op":"oauth_exchange","payload":{"session_id":sid,"code":"one"}}),
    );
    bytes.extend(conformance::encode(
        &json!({"v":2,"id":"x2","op":"oauth_exchange","payload":{"session_id":sid,"code":"two"}}),
    ));
    c.send_raw(&bytes);
    // The loser is answered while the winner's exchange is held.
    let first = c.recv();
    assert_eq!(
        first,
        err_reply("x2", "SESSION_ALREADY_USED", "OAuth session already used")
    );
    gate.open();
    let second = c.recv();
    assert_eq!(second["id"], "x1");
    assert_eq!(second["data"]["access_token"], "at-one");
    assert_eq!(stub.count(path::ANTHROPIC), 1);
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "at-one"
    );
}

// --- oauth_poll (74–90), device_code via qwen ------------------------------

/// Initiates a qwen login; returns the session id.
fn device_login(c: &mut Conn, bucket: Option<&str>) -> String {
    let mut p = json!({"provider":"qwen"});
    if let Some(b) = bucket {
        p["bucket"] = json!(b);
    }
    sid_of(&initiate(c, p))
}

#[test]
fn c074_poll_pending_has_no_token() {
    let Device {
        stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![oauth_err(400, "authorization_pending")]);
    stub.wait_count(path::QWEN_TOKEN, 1);
    let p = c.ok("oauth_poll", json!({"session_id": sid}));
    assert_eq!(p["status"], "pending");
    assert!(p.get("token").is_none());
    assert_eq!(p["pollIntervalMs"], 30);
}

#[test]
fn c075_slow_down_reports_a_larger_interval() {
    let Device {
        stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![
        oauth_err(400, "slow_down"),
        oauth_err(400, "authorization_pending"),
    ]);
    stub.wait_count(path::QWEN_TOKEN, 1);
    let mut p = Value::Null;
    wait_for("interval after slow_down", Duration::from_secs(5), || {
        p = c.ok("oauth_poll", json!({"session_id": sid}));
        p.get("interval").is_some()
    });
    assert_eq!(p["status"], "pending");
    // 30 ms + the default slow_down of 5 s, in seconds (rounded up).
    assert_eq!(p["interval"], 6);
    assert!(p["interval"].as_u64() > Some(5));
    assert_eq!(p["pollIntervalMs"], 5030);
}

#[test]
fn c076_nothing_stored_while_pending() {
    let Device {
        stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![oauth_err(400, "authorization_pending")]);
    stub.wait_count(path::QWEN_TOKEN, 3);
    assert_eq!(
        c.ok("oauth_poll", json!({"session_id": sid}))["status"],
        "pending"
    );
    assert_eq!(
        c.err("get_token", json!({"provider":"qwen"})).0,
        "NOT_FOUND"
    );
}

#[test]
fn c077_poll_complete_returns_the_token() {
    let Device {
        stub: _stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![device_token("at-77", "rt-77")]);
    let r = poll_until_done(&mut c, &sid);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["data"]["status"], "complete");
    assert_eq!(r["data"]["token"]["access_token"], "at-77");
}

#[test]
fn c078_completion_stores_the_token_under_the_provider() {
    let Device {
        stub: _stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![device_token("at-78", "rt-78")]);
    poll_until_done(&mut c, &sid);
    let t = c.ok("get_token", json!({"provider":"qwen"}));
    assert_eq!(t["access_token"], "at-78");
    assert_eq!(t["resource_url"], "portal.qwen.ai");
}

#[test]
fn c079_fix_b3_host_polls_pending_pending_then_complete() {
    // SPEC §4 (device_code), §10: the host polls on its own timers;
    // oauth_poll only reads the session.
    let Device {
        stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![
        oauth_err(400, "authorization_pending"),
        oauth_err(400, "authorization_pending"),
        device_token("at-79", "rt-79"),
    ]);
    let r = poll_until_done(&mut c, &sid);
    assert_eq!(r["data"]["status"], "complete", "{r}");
    assert_eq!(stub.count(path::QWEN_TOKEN), 3);
    assert_eq!(
        c.ok("get_token", json!({"provider":"qwen"}))["access_token"],
        "at-79"
    );
}

#[test]
fn c080_complete_token_has_no_refresh_token_store_has_it() {
    let Device {
        stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![device_token("at-80", "rt-80")]);
    let r = poll_until_done(&mut c, &sid);
    assert!(r["data"]["token"].get("refresh_token").is_none(), "{r}");
    assert!(!r.to_string().contains("rt-80"));
    c.ok("refresh_token", json!({"provider":"qwen"}));
    let refresh = stub
        .to(path::QWEN_TOKEN)
        .into_iter()
        .find(|r| r.field("grant_type").as_deref() == Some("refresh_token"))
        .expect("a refresh call");
    assert_eq!(refresh.field("refresh_token").as_deref(), Some("rt-80"));
}

#[test]
fn c081_poll_after_completion_is_session_not_found() {
    let Device {
        stub: _stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![device_token("at-81", "rt-81")]);
    poll_until_done(&mut c, &sid);
    assert_eq!(
        c.err("oauth_poll", json!({"session_id": sid})),
        ("SESSION_NOT_FOUND".into(), "OAuth session not found".into())
    );
}

#[test]
fn c082_three_polls_while_pending_are_pending() {
    let Device {
        stub: _stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![oauth_err(400, "authorization_pending")]);
    for _ in 0..3 {
        assert_eq!(
            c.ok("oauth_poll", json!({"session_id": sid}))["status"],
            "pending"
        );
    }
}

#[test]
fn c083_poll_unknown_session_is_session_not_found() {
    n_refuses(
        "oauth_poll",
        json!({"session_id":"e".repeat(32)}),
        "SESSION_NOT_FOUND",
        "OAuth session not found",
    );
}

#[test]
fn c084_fix_b3_host_polls_with_the_issued_device_code() {
    let Device {
        stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![oauth_err(400, "authorization_pending")]);
    // A device code in the request is ignored.
    c.ok(
        "oauth_poll",
        json!({"session_id": sid, "device_code":"evil"}),
    );
    stub.wait_count(path::QWEN_TOKEN, 2);
    for r in stub.to(path::QWEN_TOKEN) {
        assert_eq!(r.field("device_code").as_deref(), Some("dc-0"));
        assert_eq!(
            r.field("grant_type").as_deref(),
            Some("urn:ietf:params:oauth:grant-type:device_code")
        );
        // Qwen's dialect: PKCE on the poll.
        assert!(r.field("code_verifier").is_some_and(|v| v.len() >= 43));
    }
}

#[test]
fn c085_access_denied_is_access_denied() {
    let Device {
        stub: _stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![oauth_err(400, "access_denied")]);
    let r = poll_until_done(&mut c, &sid);
    assert_eq!(
        code_and_msg(&r),
        ("ACCESS_DENIED", "User denied authorization")
    );
    // Reported once, then the session is gone.
    assert_eq!(
        c.err("oauth_poll", json!({"session_id": sid})).0,
        "SESSION_NOT_FOUND"
    );
}

#[test]
fn c086_expired_token_is_session_expired() {
    let Device {
        stub: _stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![oauth_err(400, "expired_token")]);
    let r = poll_until_done(&mut c, &sid);
    assert_eq!(code_and_msg(&r), ("SESSION_EXPIRED", "Device code expired"));
}

fn code_and_msg(r: &Value) -> (&str, &str) {
    assert_eq!(r["ok"], false, "{r}");
    (
        r["code"].as_str().unwrap_or_default(),
        r["error"].as_str().unwrap_or_default(),
    )
}

#[test]
fn c087_poll_without_session_id_is_invalid_request() {
    n_refuses(
        "oauth_poll",
        json!({}),
        "INVALID_REQUEST",
        "Missing session_id",
    );
}

#[test]
fn c088_complete_token_has_bearer_and_expiry() {
    let Device {
        stub: _stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![device_token("at-88", "rt-88")]);
    let r = poll_until_done(&mut c, &sid);
    let t = &r["data"]["token"];
    assert_eq!(t["token_type"], "Bearer");
    assert!(
        t["expiry"]
            .as_u64()
            .is_some_and(|e| e > conformance::now_secs() + 3000)
    );
}

#[test]
fn c089_completed_token_stored_under_the_initiate_bucket_only() {
    let (_stub, _server, mut c) = client(
        device_stub(vec![device_token("at-89", "rt-89")], None),
        FAST_POLL,
    );
    let sid = device_login(&mut c, Some("team"));
    poll_until_done(&mut c, &sid);
    assert_eq!(
        c.ok("get_token", json!({"provider":"qwen","bucket":"team"}))["access_token"],
        "at-89"
    );
    assert_eq!(
        c.err("get_token", json!({"provider":"qwen"})).0,
        "NOT_FOUND"
    );
    assert_eq!(
        c.ok("list_buckets", json!({"provider":"qwen"})),
        json!({"buckets":["team"]})
    );
}

#[test]
fn c090_completed_token_is_the_providers_exactly() {
    let n = conformance::nonce("n90");
    let Device {
        stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![device_token(&format!("at-{n}"), &format!("rt-{n}"))]);
    let r = poll_until_done(&mut c, &sid);
    assert_eq!(r["data"]["token"]["access_token"], format!("at-{n}"));
    assert_eq!(
        c.ok("get_token", json!({"provider":"qwen"}))["access_token"],
        format!("at-{n}")
    );
    c.ok("refresh_token", json!({"provider":"qwen"}));
    let refresh = stub
        .to(path::QWEN_TOKEN)
        .into_iter()
        .find(|r| r.field("grant_type").as_deref() == Some("refresh_token"))
        .expect("a refresh call");
    assert_eq!(refresh.field("refresh_token"), Some(format!("rt-{n}")));
}

// --- B25: what the existing suite never tested -------------------------------

/// Waits out a configured session lifetime (the only way to observe an
/// expiry from outside is to let it pass; bounded by the configured value).
fn outlive(start: Instant, ttl: Duration) {
    wait_for(
        "the session lifetime to pass",
        ttl + Duration::from_secs(2),
        || start.elapsed() > ttl + Duration::from_millis(50),
    );
}

#[test]
fn b25_session_expiry_for_exchange() {
    let stub = std_stub();
    let (_e, srv) = n_server(&stub, "session_timeout_ms = 300");
    let mut c = srv.hs();
    let t0 = Instant::now();
    let init = initiate(&mut c, json!({"provider":"anthropic"}));
    assert_eq!(init["expires_in"], 1, "300 ms rounded up to seconds");
    outlive(t0, Duration::from_millis(300));
    let sid = sid_of(&init);
    assert_eq!(
        c.err("oauth_exchange", json!({"session_id": sid, "code":"late"})),
        ("SESSION_EXPIRED".into(), "OAuth session expired".into())
    );
    assert_eq!(
        c.err("oauth_exchange", json!({"session_id": sid, "code":"late"}))
            .0,
        "SESSION_NOT_FOUND"
    );
    assert_eq!(stub.count(path::ANTHROPIC), 0);
}

#[test]
fn b25_session_expiry_for_poll() {
    let stub = device_stub(vec![oauth_err(400, "authorization_pending")], None);
    let (_e, srv) = n_server(&stub, "session_timeout_ms = 300\ndevice_poll_ms = 50");
    let mut c = srv.hs();
    let sid = device_login(&mut c, None);
    // Pending until the lifetime passes, then expired once, then gone.
    let r = poll_until_done(&mut c, &sid);
    assert_eq!(
        code_and_msg(&r),
        ("SESSION_EXPIRED", "OAuth session expired")
    );
    assert_eq!(
        c.err("oauth_poll", json!({"session_id": sid})).0,
        "SESSION_NOT_FOUND"
    );
    // Background polling stopped with the session.
    let n = stub.count(path::QWEN_TOKEN);
    let t0 = Instant::now();
    wait_for("a few poll intervals", Duration::from_secs(2), || {
        t0.elapsed() > Duration::from_millis(300)
    });
    assert!(stub.count(path::QWEN_TOKEN) <= n + 1);
}

#[test]
fn c140_fix_session_timeout_from_credproxy_env() {
    // Notes item 140 (PKCESessionStore's env timeout): ours is
    // CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS (SPEC §4).
    let stub = std_stub();
    let env = Env::with_config(&providers_toml(&stub, None));
    let mut cmd = env.command(&[
        "serve",
        "--insecure-no-token",
        "--store",
        &env.store(),
        "--config",
        &env.root().join("config.toml").display().to_string(),
    ]);
    cmd.env("CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS", "1");
    let srv = Server::spawn_command(cmd, false);
    let mut c = srv.hs();
    let t0 = Instant::now();
    let init = initiate(&mut c, json!({"provider":"anthropic"}));
    assert_eq!(init["expires_in"], 1);
    outlive(t0, Duration::from_secs(1));
    assert_eq!(
        c.err(
            "oauth_exchange",
            json!({"session_id": sid_of(&init), "code":"x"})
        )
        .0,
        "SESSION_EXPIRED"
    );
}

#[test]
fn b25_fix_failed_exchange_ends_the_session() {
    // SPEC §10: EXCHANGE_FAILED, then SESSION_NOT_FOUND (the existing
    // server answers SESSION_ALREADY_USED forever).
    let stub = Stub::start(|_, _| oauth_err(400, "invalid_grant"));
    let (_e, _srv, mut c) = n_client(&stub, "");
    let sid = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    assert_eq!(
        c.err("oauth_exchange", json!({"session_id": sid, "code":"a"}))
            .0,
        "EXCHANGE_FAILED"
    );
    assert_eq!(
        c.err("oauth_exchange", json!({"session_id": sid, "code":"a"}))
            .0,
        "SESSION_NOT_FOUND"
    );
}

#[test]
fn b25_fix_transient_exchange_failure_keeps_the_session() {
    // SPEC §4, §10: a 5xx returns the session to awaiting a code.
    let stub = Stub::start(|req, nth| {
        if nth == 0 {
            conformance::Resp {
                status: 503,
                body: json!({}),
            }
        } else {
            std_token(req, nth)
        }
    });
    let (_e, _srv, mut c) = n_client(&stub, "");
    let sid = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    assert_eq!(
        c.err("oauth_exchange", json!({"session_id": sid, "code":"t1"})),
        (
            "EXCHANGE_FAILED".into(),
            "Provider unreachable (http 503)".into()
        )
    );
    let t = c.ok("oauth_exchange", json!({"session_id": sid, "code":"t2"}));
    assert_eq!(t["access_token"], "at-t2");
}

#[test]
fn b25_fix_state_mismatch_ends_the_session() {
    let (stub, _server, mut c) = client(std_stub(), "");
    let sid = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    assert_eq!(
        c.err(
            "oauth_exchange",
            json!({"session_id": sid, "code":"c#wrongstate"})
        ),
        (
            "EXCHANGE_FAILED".into(),
            "Authorization response does not match this session".into()
        )
    );
    assert_eq!(stub.count(path::ANTHROPIC), 0);
}

#[test]
fn b25_fix_op_must_fit_the_flow_type() {
    let (_stub, _server, mut c) = client(
        device_stub(vec![oauth_err(400, "authorization_pending")], None),
        "",
    );
    let pkce = sid_of(&initiate(&mut c, json!({"provider":"anthropic"})));
    assert_eq!(
        c.err("oauth_poll", json!({"session_id": pkce})),
        (
            "INVALID_REQUEST".into(),
            "Operation oauth_poll not valid for flow type pkce_redirect".into()
        )
    );
    let dev = device_login(&mut c, None);
    assert_eq!(
        c.err("oauth_exchange", json!({"session_id": dev, "code":"x"})),
        (
            "INVALID_REQUEST".into(),
            "Operation oauth_exchange not valid for flow type device_code".into()
        )
    );
}

#[test]
fn b25_fix_b10_redirect_uri_from_the_client_is_ignored() {
    let (stub, _server, mut c) = client(std_stub(), "");
    let init = initiate(
        &mut c,
        json!({"provider":"anthropic","redirect_uri":"http://evil.example/cb"}),
    );
    let url = init["auth_url"].as_str().unwrap();
    assert!(!url.contains("evil"), "{url}");
    assert_eq!(
        url_query(url)["redirect_uri"],
        "https://console.anthropic.com/oauth/code/callback"
    );
    c.ok(
        "oauth_exchange",
        json!({"session_id": sid_of(&init), "code":"c"}),
    );
    assert_eq!(
        stub.to(path::ANTHROPIC)[0].field("redirect_uri").as_deref(),
        Some("https://console.anthropic.com/oauth/code/callback")
    );
}

#[test]
fn b25_flow_initiation_failed() {
    let stub = Stub::start(|_, _| conformance::Resp {
        status: 500,
        body: json!({"error":"server_error","detail":"secret upstream text"}),
    });
    let (_e, _srv, mut c) = n_client(&stub, "");
    let r = c.call("oauth_initiate", json!({"provider":"qwen"}));
    assert_eq!(
        r,
        err_reply(
            "r1",
            "FLOW_INITIATION_FAILED",
            "Provider unreachable (http 500)"
        )
    );
}

#[test]
fn b25_poll_failed() {
    let Device {
        stub: _stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![oauth_err(400, "invalid_request")]);
    let r = poll_until_done(&mut c, &sid);
    assert_eq!(
        code_and_msg(&r),
        (
            "POLL_FAILED",
            "Provider rejected the request (invalid_request)"
        )
    );
    assert!(
        !r.to_string().contains("stub says no"),
        "raw body leaked: {r}"
    );
}

#[test]
fn b25_fix_b6_oauth_cancel_stops_background_polling() {
    let Device {
        stub,
        _server,
        mut c,
        sid,
    } = device_session(vec![oauth_err(400, "authorization_pending")]);
    stub.wait_count(path::QWEN_TOKEN, 1);
    assert_eq!(c.ok("oauth_cancel", json!({"session_id": sid})), json!({}));
    let n = stub.count(path::QWEN_TOKEN);
    let t0 = Instant::now();
    wait_for("several poll intervals", Duration::from_secs(2), || {
        t0.elapsed() > Duration::from_millis(300)
    });
    assert!(stub.count(path::QWEN_TOKEN) <= n + 1, "polling went on");
    assert_eq!(
        c.err("oauth_poll", json!({"session_id": sid})).0,
        "SESSION_NOT_FOUND"
    );
    // Unknown ids are fine too.
    assert_eq!(
        c.ok("oauth_cancel", json!({"session_id":"0".repeat(32)})),
        json!({})
    );
}

// --- B25 / B2: codex flows ---------------------------------------------------

/// An N-server with codex's loopback redirect on a free port.
fn codex_server(stub: &Stub) -> (Env, Server, u16) {
    let port = free_port();
    let env = Env::with_config(&providers_toml(stub, Some(port)));
    let srv = env.serve_n(&[]);
    (env, srv, port)
}

fn codex_id_token(account: &str) -> String {
    let claims = json!({"https://api.openai.com/auth": {"chatgpt_account_id": account}});
    format!(
        "{}.{}.sig",
        b64url(br#"{"alg":"none"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

fn codex_stub() -> Stub {
    Stub::start(|req, nth| {
        if req.path == path::CODEX
            && req.field("grant_type").as_deref() == Some("authorization_code")
        {
            let code = req.field("code").unwrap_or_default();
            ok_json(json!({
                "access_token": format!("at-{code}"),
                "refresh_token": format!("rt-{code}"),
                "id_token": codex_id_token(&format!("acct-{code}")),
                "expires_in": 3600,
                "token_type": "bearer",
            }))
        } else {
            std_token(req, nth)
        }
    })
}

#[test]
fn b25_fix_b2_codex_browser_callback_completes_the_login() {
    let stub = codex_stub();
    let (_e, srv, port) = codex_server(&stub);
    let mut c = srv.hs();
    let init = initiate(&mut c, json!({"provider":"codex"}));
    assert_eq!(init["flow_type"], "browser_redirect");
    let url = init["auth_url"].as_str().unwrap();
    let q = url_query(url);
    assert_eq!(
        q["redirect_uri"],
        format!("http://localhost:{port}/auth/callback")
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["originator"], "codex_cli_rs");
    let state = q["state"].clone();
    let sid = sid_of(&init);
    assert_eq!(
        c.ok("oauth_poll", json!({"session_id": sid}))["status"],
        "pending"
    );
    // A wrong state is refused and leaves the session alone.
    let (st, _) = http_get(port, "/auth/callback?code=bad&state=nope");
    assert_eq!(st, 400);
    let (st, _) = http_get(port, &format!("/elsewhere?code=bad&state={}", pct(&state)));
    assert_eq!(st, 400);
    assert_eq!(
        c.ok("oauth_poll", json!({"session_id": sid}))["status"],
        "pending"
    );
    // The browser comes back with the code.
    let (st, page) = http_get(
        port,
        &format!("/auth/callback?code=cx&state={}", pct(&state)),
    );
    assert_eq!(st, 200, "{page}");
    assert!(!page.contains("cx") && !page.contains(&state), "{page}");
    let r = poll_until_done(&mut c, &sid);
    assert_eq!(r["data"]["status"], "complete", "{r}");
    let t = &r["data"]["token"];
    assert_eq!(t["access_token"], "at-cx");
    assert_eq!(t["account_id"], "acct-cx");
    assert!(t.get("refresh_token").is_none());
    let ex = &stub.to(path::CODEX)[0];
    assert!(!ex.is_json(), "Codex's exchange body is a form");
    assert_eq!(
        ex.field("redirect_uri"),
        Some(format!("http://localhost:{port}/auth/callback"))
    );
    assert_eq!(
        b64url(&sha256(
            ex.field("code_verifier").unwrap_or_default().as_bytes()
        )),
        q["code_challenge"]
    );
}

#[test]
fn b25_fix_b2_codex_pasted_redirect_url_exchanges() {
    let stub = codex_stub();
    let (_e, srv, port) = codex_server(&stub);
    let mut c = srv.hs();
    let init = initiate(&mut c, json!({"provider":"codex"}));
    let state = url_query(init["auth_url"].as_str().unwrap())["state"].clone();
    let pasted = format!(
        "http://localhost:{port}/auth/callback?code=cp&state={}",
        pct(&state)
    );
    let t = c.ok(
        "oauth_exchange",
        json!({"session_id": sid_of(&init), "code": pasted}),
    );
    assert_eq!(t["access_token"], "at-cp");
    assert_eq!(t["account_id"], "acct-cp");
}

#[test]
fn b25_fix_b2_codex_device_dialect() {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let stub = Stub::start(move |req, nth| match req.path.as_str() {
        "/codex/usercode" => {
            ok_json(json!({"device_auth_id":"dai-1","user_code":"CODE-1","interval":"0"}))
        }
        "/codex/devicetoken" => {
            if h.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                conformance::Resp {
                    status: 403,
                    body: json!({}),
                }
            } else {
                ok_json(
                    json!({"authorization_code":"ac-1","code_verifier":"server-verifier","code_challenge":"x"}),
                )
            }
        }
        _ => {
            if req.path == path::CODEX
                && req.field("grant_type").as_deref() == Some("authorization_code")
            {
                ok_json(
                    json!({"access_token":"at-dev","refresh_token":"rt-dev","id_token":codex_id_token("acct-dev"),"expires_in":3600}),
                )
            } else {
                std_token(req, nth)
            }
        }
    });
    let env = Env::with_config(&format!(
        "[limits]\n{FAST_POLL}\n\n[providers.codex]\nflow = \"device_code\"\n\
         device_url = \"{}\"\ndevice_token_url = \"{}\"\ntoken_url = \"{}\"\n",
        stub.url("/codex/usercode"),
        stub.url("/codex/devicetoken"),
        stub.url(path::CODEX),
    ));
    let srv = env.serve_n(&[]);
    let mut c = srv.hs();
    let init = initiate(&mut c, json!({"provider":"codex"}));
    assert_eq!(init["flow_type"], "device_code");
    assert_eq!(init["user_code"], "CODE-1");
    assert!(!init.to_string().contains("dai-1"), "{init}");
    let r = poll_until_done(&mut c, &sid_of(&init));
    assert_eq!(r["data"]["token"]["access_token"], "at-dev", "{r}");
    assert_eq!(r["data"]["token"]["account_id"], "acct-dev");
    let polls = stub.to("/codex/devicetoken");
    assert!(polls.iter().all(|p| p.is_json()
        && p.field("device_auth_id").as_deref() == Some("dai-1")
        && p.field("user_code").as_deref() == Some("CODE-1")));
    let ex = &stub.to(path::CODEX)[0];
    assert_eq!(ex.field("code").as_deref(), Some("ac-1"));
    assert_eq!(
        ex.field("code_verifier").as_deref(),
        Some("server-verifier")
    );
}

#[test]
fn b25_fix_sandbox_login_may_not_replace_a_valid_credential() {
    // SPEC §3.5: a sandbox login completes only over a missing, expired or
    // unusable credential unless --sandbox-login-overwrite.
    let stub = std_stub();
    let env = Env::with_config(&providers_toml(&stub, None));
    env.save_token("anthropic", "default", &conformance::tok("valid"));
    let srv = env.serve(&[]);
    let mut c = srv.hs();
    let r = login(&mut c, "anthropic", None, "sb1");
    assert_eq!(
        code_and_msg(&r),
        ("FORBIDDEN", "Login would replace an existing credential")
    );
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "valid"
    );
    // Into an empty bucket it works, and the audit log has a WARN line.
    let t = login_ok(&mut c, "anthropic", Some("new"), "sb2");
    assert_eq!(t["access_token"], "at-sb2");
    wait_for("login audit", Duration::from_secs(5), || {
        srv.stderr()
            .lines()
            .any(|l| l.contains("login_complete") && l.contains("WARN"))
    });
    drop(srv);
    let srv = env.serve(&["--sandbox-login-overwrite"]);
    let mut c = srv.hs();
    assert_eq!(
        login_ok(&mut c, "anthropic", None, "sb3")["access_token"],
        "at-sb3"
    );
}
