//! Secrets never leave the host (SPEC §7, §9): no refresh token in any byte
//! sent or any audit event, no API key value or access token in audit
//! events, redacted `Debug`; and audit events describe what happened.

use credproxy_core::testkit::Harness;
use credproxy_core::{AuditEvent, Config, EffectResult, Level, Secret, Token};
use serde_json::{Value, json};

use crate::common::{self, cap_token, sandbox_config, send_req};

const RT: &str = "RT-SENTINEL-5d1c7a";
const RT_INCOMING: &str = "RT-SENTINEL-INCOMING-93be";
const RT_WORK: &str = "RT-SENTINEL-WORK-11f0";
const AT: &str = "AT-SENTINEL-0a2b";
const AT_NEW: &str = "AT-SENTINEL-NEW-77c4";
const KEY: &str = "AK-SENTINEL-sk-live-4e9f";

fn seeded(config: Config) -> Harness {
    let mut h = Harness::with_config(config, 3);
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":AT,"expiry":1_767_229_200,"token_type":"Bearer","refresh_token":RT,"account_id":"acc"}),
    );
    h.store.put_token(
        "anthropic",
        "work",
        json!({"access_token":AT,"expiry":1,"token_type":"Bearer","refresh_token":RT_WORK}),
    );
    h.store
        .keys
        .insert("OPENAI_API_KEY".into(), Secret::new(KEY));
    h
}

/// A mix of operations, successes and errors, on one connection.
fn exercise(h: &mut Harness, conn: credproxy_core::ConnId) {
    let calls: Vec<(&str, Value)> = vec![
        ("get_token", json!({"provider":"anthropic"})),
        ("get_token", json!({"provider":"anthropic","bucket":"work"})),
        ("get_token", json!({"provider":"missing"})),
        ("get_token", json!({"provider":"a/b"})),
        (
            "save_token",
            json!({"provider":"anthropic","token":{"access_token":AT_NEW,"expiry":2,"token_type":"Bearer","refresh_token":RT_INCOMING}}),
        ),
        (
            "save_token",
            json!({"provider":"fresh","token":{"access_token":AT_NEW,"expiry":2,"token_type":"Bearer","refresh_token":RT_INCOMING}}),
        ),
        (
            "save_token",
            json!({"provider":"anthropic","token":{"access_token":AT_NEW,"refresh_token":RT_INCOMING}}),
        ),
        ("get_token", json!({"provider":"anthropic"})),
        ("get_token", json!({"provider":"fresh"})),
        ("list_providers", json!({})),
        ("list_buckets", json!({"provider":"anthropic"})),
        ("get_bucket_stats", json!({"provider":"anthropic"})),
        ("get_api_key", json!({"name":"OPENAI_API_KEY"})),
        ("get_api_key", json!({"name":"nope"})),
        ("has_api_key", json!({"name":"OPENAI_API_KEY"})),
        ("list_api_keys", json!({})),
        ("refresh_token", json!({"provider":"anthropic"})),
        ("oauth_initiate", json!({"provider":"anthropic"})),
        (
            "oauth_exchange",
            json!({"session_id":"0123456789abcdef0123456789abcdef","code":"CODE#STATE"}),
        ),
        ("oauth_poll", json!({"session_id":"s"})),
        ("oauth_cancel", json!({"session_id":"s"})),
        ("cancel", json!({"targetId":"x"})),
        ("bogus", json!({})),
        (
            "remove_token",
            json!({"provider":"anthropic","bucket":"work"}),
        ),
    ];
    for (op, payload) in calls {
        h.call(conn, op, payload);
    }
    // Store failure paths.
    h.store.fail_all = true;
    h.call(conn, "get_token", json!({"provider":"anthropic"}));
    h.call(conn, "get_api_key", json!({"name":"OPENAI_API_KEY"}));
    h.store.fail_all = false;
    // A cancelled write and a cancelled read.
    h.auto_effects = false;
    send_req(
        h,
        conn,
        "w",
        "save_token",
        json!({"provider":"anthropic","token":{"access_token":AT_NEW,"expiry":3,"token_type":"Bearer","refresh_token":RT_INCOMING}}),
    );
    send_req(h, conn, "c", "cancel", json!({"targetId":"w"}));
    send_req(
        h,
        conn,
        "k",
        "get_api_key",
        json!({"name":"OPENAI_API_KEY"}),
    );
    send_req(h, conn, "c2", "cancel", json!({"targetId":"k"}));
    h.complete_all();
    send_req(
        h,
        conn,
        "k2",
        "get_api_key",
        json!({"name":"OPENAI_API_KEY"}),
    );
    h.complete_with(0, EffectResult::Failed);
    h.auto_effects = true;
}

fn audit_text(audit: &[AuditEvent]) -> String {
    audit
        .iter()
        .map(|e| format!("{}\n{e:?}\n", serde_json::to_string(e).unwrap()))
        .collect()
}

fn assert_no_secret_leaves(h: &Harness) {
    let observable = h.observable_text();
    for rt in [RT, RT_INCOMING, RT_WORK] {
        assert!(!observable.contains(rt), "refresh token {rt} left the host");
    }
    let audit = audit_text(&h.audit);
    for secret in [KEY, AT, AT_NEW, RT, RT_INCOMING, RT_WORK] {
        assert!(!audit.contains(secret), "{secret} in an audit event");
    }
}

#[test]
fn host_connection_leaks_no_secret() {
    let mut h = seeded(Config::default());
    let conn = h.connect();
    exercise(&mut h, conn);
    assert_no_secret_leaves(&h);
    // The exercise did serve the access token and the key to the client, and
    // kept the stored refresh token.
    let sent = String::from_utf8_lossy(&h.sent[&conn]).into_owned();
    assert!(sent.contains(AT) && sent.contains(AT_NEW) && sent.contains(KEY));
    assert_eq!(
        h.store.token("anthropic", "default").unwrap()["refresh_token"],
        json!(RT)
    );
    assert_eq!(
        h.store
            .token("fresh", "default")
            .unwrap()
            .get("refresh_token"),
        None
    );
}

#[test]
fn sandbox_connection_leaks_no_secret() {
    let mut h = seeded(sandbox_config());
    let conn = h.connect();
    exercise(&mut h, conn);
    assert_no_secret_leaves(&h);
    let observable = h.observable_text();
    assert!(
        !observable.contains(&cap_token()),
        "capability token leaked"
    );
}

#[test]
fn v1_peer_leaks_no_secret() {
    let mut h = seeded(Config::default());
    let conn = h.open();
    h.send_json(conn, &json!({"v":1,"op":"handshake"}));
    exercise(&mut h, conn);
    assert_no_secret_leaves(&h);
}

#[test]
fn debug_output_is_redacted() {
    let mut h = seeded(sandbox_config());
    let conn = h.connect();
    exercise(&mut h, conn);
    let token = Token::from_map(
        json!({"access_token":AT,"refresh_token":RT})
            .as_object()
            .unwrap()
            .clone(),
    );
    let dbg = format!("{token:?}");
    assert!(!dbg.contains(AT) && !dbg.contains(RT), "{dbg}");
    for text in [
        format!("{:?}", h.store),
        format!("{:?}", h.effects),
        format!("{:?}", h.engine),
        format!("{:?}", h.engine.config()),
        format!("{:?}", EffectResult::ApiKey(Some(Secret::new(KEY)))),
        format!("{}", Secret::new(KEY)),
    ] {
        for secret in [KEY, AT, AT_NEW, RT, RT_INCOMING, RT_WORK, &cap_token()] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

/// The engine's `Debug` is redacted but not empty: it names the live
/// counts an operator's diagnostic dump needs.
#[test]
fn engine_debug_names_its_counts() {
    let mut h = Harness::new();
    let _ = h.connect();
    let dbg = format!("{:?}", h.engine);
    assert!(
        dbg.starts_with("Engine {") && dbg.contains("connections: 1"),
        "{dbg}"
    );
}

#[test]
fn request_events_name_op_outcome_and_subject() {
    let mut h = seeded(Config::default());
    let conn = h.connect();
    h.audit.clear();
    h.call(
        conn,
        "get_token",
        json!({"provider":"anthropic","bucket":"work"}),
    );
    h.call(conn, "get_token", json!({"provider":"nobody"}));
    h.call(conn, "get_api_key", json!({"name":"OPENAI_API_KEY"}));
    h.call(conn, "save_token", json!({}));
    h.call(conn, "bogus", json!({}));
    let events: Vec<_> = h
        .audit
        .iter()
        .map(|e| {
            (
                e.op,
                e.outcome,
                e.level,
                e.provider.clone(),
                e.bucket.clone(),
                e.name.clone(),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            (
                "get_token",
                "ok",
                Level::Info,
                Some("anthropic".into()),
                Some("work".into()),
                None
            ),
            (
                "get_token",
                "NOT_FOUND",
                Level::Warn,
                Some("nobody".into()),
                Some("default".into()),
                None
            ),
            (
                "get_api_key",
                "ok",
                Level::Info,
                None,
                None,
                Some("OPENAI_API_KEY".into())
            ),
            (
                "save_token",
                "INVALID_REQUEST",
                Level::Warn,
                None,
                None,
                None
            ),
            (
                "unknown_op",
                "INVALID_REQUEST",
                Level::Warn,
                None,
                None,
                None
            ),
        ]
    );
    assert!(h.audit.iter().all(|e| e.conn == Some(conn)));
}

#[test]
fn connection_lifecycle_events() {
    let mut h = Harness::new();
    let conn = h.connect();
    let ops: Vec<_> = h.audit.iter().map(|e| (e.op, e.outcome)).collect();
    assert_eq!(ops, vec![("connect", "ok"), ("handshake_ok", "ok")]);
    common::read_closed(&mut h, conn);
    assert_eq!(
        h.audit.last().map(|e| (e.op, e.outcome)),
        Some(("disconnect", "closed"))
    );
}

#[test]
fn client_supplied_text_never_reaches_the_audit_log() {
    let mut h = Harness::new();
    let conn = h.connect();
    let marker = "CLIENT-TEXT-SENTINEL";
    h.call(conn, marker, json!({}));
    h.call(conn, "get_token", json!({"provider":format!("{marker}/x")}));
    h.call(conn, "get_api_key", json!({"name":format!("{marker}@")}));
    h.call(conn, "cancel", json!({"targetId":marker}));
    h.call(
        conn,
        "oauth_exchange",
        json!({"session_id":marker,"code":marker}),
    );
    h.request(conn, marker, "list_api_keys", json!({}));
    assert!(!audit_text(&h.audit).contains(marker));
}
