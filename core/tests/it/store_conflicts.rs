//! Writes the store refuses because another process wrote the key since
//! the fresh read (`EffectResult::Conflict`, a compare-and-set store): the
//! key is read fresh again under the same locks and the write decided anew
//! (SPEC §5.2–5.3) — merged again for `save_token`, deleted again for
//! `remove_token`, written again for a login; for a refresh, a token
//! refreshed meanwhile is the answer and ours is neither written over it
//! nor kept in memory. Three refusals in a row fail the request, locks
//! released.

use credproxy_core::Effect;
use credproxy_core::testkit::Harness;

use crate::common::seeded_refreshable as seeded;
use serde_json::{Value, json};

use crate::common::store_old_with_refresh;

const TOKEN_URL: &str = "https://console.anthropic.com/v1/oauth/token";
const CHANGED: &str = "Credential store changed during the write";

/// The tokens this engine asked the store to write, in order.
fn puts(h: &Harness) -> Vec<Value> {
    h.effects
        .iter()
        .filter_map(|e| match e {
            Effect::TokenPut { token, .. } => Some(Value::Object(token.as_map().clone())),
            _ => None,
        })
        .collect()
}

/// How many fresh token reads the engine asked for.
fn fresh_reads(h: &Harness) -> usize {
    h.effects
        .iter()
        .filter(|e| matches!(e, Effect::TokenGet { fresh: true, .. }))
        .count()
}

fn expiry_in(h: &Harness, s: u64) -> u64 {
    h.now.unix_secs() + s
}

/// The provider's answer to the first refresh: `AT-1`, rotated to `RT-1`.
fn provider_rotates(h: &mut Harness) {
    h.respond(
        200,
        json!({"access_token":"AT-1","refresh_token":"RT-1","expires_in":3600}),
    );
}

fn reply(h: &mut Harness, conn: credproxy_core::ConnId, id: &str) -> Value {
    h.take_replies(conn)
        .into_iter()
        .find(|r| r["id"] == json!(id))
        .unwrap_or(Value::Null)
}

fn stored(h: &Harness) -> Value {
    h.store.token("anthropic", "default").unwrap_or(Value::Null)
}

#[test]
fn save_token_conflict_then_success_writes_the_remerged_token() {
    let mut h = Harness::new();
    store_old_with_refresh(&mut h);
    // Another process rotates the refresh token and adds a field between
    // this save's fresh read and its write.
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"sibling","expiry":5,"token_type":"Bearer",
        "refresh_token":"rt-sibling","account":"from-sibling"
    })));
    let conn = h.connect();
    let r = h.call(
        conn,
        "save_token",
        json!({"provider":"p","token":{"access_token":"new","expiry":7,"token_type":"Bearer"}}),
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    let puts = puts(&h);
    assert_eq!(puts.len(), 2, "refused once, written again: {puts:?}");
    assert_eq!(puts[0]["refresh_token"], json!("rt"), "first merge: old");
    let want = json!({
        "access_token":"new","expiry":7,"token_type":"Bearer",
        "refresh_token":"rt-sibling","account":"from-sibling"
    });
    assert_eq!(puts[1], want, "merged over the token stored now");
    assert_eq!(h.store.token("p", "default").unwrap(), want);
    assert_eq!(fresh_reads(&h), 2);
    assert!(h.store.locks.is_empty());
    assert_eq!(h.engine.pending_tasks(), 0);
}

#[test]
fn three_conflicts_in_a_row_fail_the_save_and_release_the_locks() {
    let mut h = Harness::new();
    store_old_with_refresh(&mut h);
    for n in 0..3 {
        let t = json!({"access_token":format!("sibling-{n}"),"expiry":5,"token_type":"Bearer"});
        h.store.sibling_writes.push_back(Some(t));
    }
    let conn = h.connect();
    let save =
        json!({"provider":"p","token":{"access_token":"new","expiry":7,"token_type":"Bearer"}});
    let r = h.call(conn, "save_token", save.clone());
    assert_eq!(r["code"], json!("INTERNAL_ERROR"), "{r}");
    assert_eq!(r["error"], json!(CHANGED));
    assert_eq!(puts(&h).len(), 3);
    assert_eq!(fresh_reads(&h), 3);
    assert_eq!(
        h.store.token("p", "default").unwrap()["access_token"],
        json!("sibling-2"),
        "the last sibling's write stands"
    );
    assert!(h.store.locks.is_empty(), "store lock released");
    assert_eq!(h.engine.pending_tasks(), 0);
    // The engine lock was given back too: the next write of the key runs.
    let r = h.call(conn, "save_token", save);
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(
        h.store.token("p", "default").unwrap()["access_token"],
        json!("new")
    );
}

#[test]
fn a_refused_delete_rereads_and_deletes_again() {
    let mut h = Harness::new();
    store_old_with_refresh(&mut h);
    h.store.sibling_writes.push_back(Some(
        json!({"access_token":"sibling","expiry":5,"token_type":"Bearer"}),
    ));
    let conn = h.connect();
    let r = h.call(conn, "remove_token", json!({"provider":"p"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(h.store.token("p", "default"), None, "a remove wins");
    let deletes = h
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::TokenDelete { .. }))
        .count();
    assert_eq!(deletes, 2);
    assert_eq!(fresh_reads(&h), 1, "re-read before deleting again");
    assert!(h.store.locks.is_empty());
}

#[test]
fn refresh_conflict_with_a_valid_reread_returns_the_other_token() {
    let (mut h, conn) = seeded(-10);
    let theirs = expiry_in(&h, 3600);
    // Another proxy refreshed meanwhile (its lease took over ours).
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-S","refresh_token":"RT-S","expiry":theirs,"token_type":"Bearer"
    })));
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    provider_rotates(&mut h);
    let r = reply(&mut h, conn, "r");
    assert_eq!(r["data"]["access_token"], json!("AT-S"), "{r}");
    assert_eq!(h.http_log.len(), 1, "exactly one refresh call");
    assert_eq!(puts(&h).len(), 1, "ours refused, not written again");
    assert_eq!(
        stored(&h)["refresh_token"],
        json!("RT-S"),
        "not overwritten"
    );
    assert!(h.store.locks.is_empty());
    // No in-memory override: reads are the store's, and no write-back of
    // our token follows.
    h.store.put_token(
        "anthropic",
        "default",
        json!({"access_token":"AT-T","refresh_token":"RT-T","expiry":theirs,"token_type":"Bearer"}),
    );
    let g = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert_eq!(g["data"]["access_token"], json!("AT-T"));
    h.advance(10_000);
    assert_eq!(stored(&h)["refresh_token"], json!("RT-T"));
    assert_eq!(puts(&h).len(), 1, "nothing written back");
}

#[test]
fn refresh_conflict_with_an_expired_reread_of_the_same_grant_writes_ours_merged() {
    // The sibling changed the key but not its grant (the refresh token
    // this job spent is still the stored one, and the token is still
    // expired): ours is the live grant, merged over what is stored now.
    let (mut h, conn) = seeded(-10);
    let expired = expiry_in(&h, 0) - 10;
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-0","refresh_token":"RT-0","expiry":expired,
        "token_type":"Bearer","note":"sibling"
    })));
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    provider_rotates(&mut h);
    let r = reply(&mut h, conn, "r");
    assert_eq!(r["data"]["access_token"], json!("AT-1"), "{r}");
    assert_eq!(h.http_log.len(), 1, "no second provider call");
    assert_eq!(puts(&h).len(), 2);
    let s = stored(&h);
    assert_eq!(s["refresh_token"], json!("RT-1"), "rotated token persisted");
    assert_eq!(s["note"], json!("sibling"), "the sibling's field kept");
    assert!(h.store.locks.is_empty());
}

#[test]
fn refresh_conflict_with_an_expired_reread_of_another_grant_refreshes_that_grant() {
    // A login elsewhere stored a new grant that is already expired: ours
    // is not written over it; that grant is refreshed with its own
    // refresh token.
    let (mut h, conn) = seeded(-10);
    let expired = expiry_in(&h, 0) - 10;
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-L","refresh_token":"RT-L","expiry":expired,"token_type":"Bearer"
    })));
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    provider_rotates(&mut h);
    assert_eq!(reply(&mut h, conn, "r"), Value::Null, "not answered yet");
    assert_eq!(h.http_log.len(), 2);
    assert_eq!(h.http_log[1].url, TOKEN_URL);
    let body = h.http_log[1].body.as_ref().unwrap().expose().to_owned();
    assert!(body.contains("refresh_token=RT-L"), "{body}");
    h.respond(
        200,
        json!({"access_token":"AT-2","refresh_token":"RT-2","expires_in":3600}),
    );
    let r = reply(&mut h, conn, "r");
    assert_eq!(r["data"]["access_token"], json!("AT-2"), "{r}");
    assert_eq!(stored(&h)["refresh_token"], json!("RT-2"));
    let refreshed: Vec<_> = puts(&h)
        .iter()
        .map(|t| t["refresh_token"].clone())
        .collect();
    assert_eq!(refreshed, [json!("RT-1"), json!("RT-2")]);
}

#[test]
fn refresh_conflict_after_a_remove_elsewhere_is_not_found() {
    let (mut h, conn) = seeded(-10);
    h.store.sibling_writes.push_back(None);
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    provider_rotates(&mut h);
    let r = reply(&mut h, conn, "r");
    assert_eq!(r["code"], json!("NOT_FOUND"), "{r}");
    assert_eq!(stored(&h), Value::Null, "the remove wins");
    let g = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert_eq!(g["code"], json!("NOT_FOUND"), "no override: {g}");
}

#[test]
fn three_refresh_conflicts_in_a_row_fail_with_refresh_failed() {
    let (mut h, conn) = seeded(-10);
    let expired = expiry_in(&h, 0) - 10;
    for n in 0..3 {
        h.store.sibling_writes.push_back(Some(json!({
            "access_token":"AT-0","refresh_token":"RT-0","expiry":expired,
            "token_type":"Bearer","n":n
        })));
    }
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    provider_rotates(&mut h);
    let r = reply(&mut h, conn, "r");
    assert_eq!(
        r,
        json!({"id":"r","ok":false,"code":"REFRESH_FAILED","error":CHANGED})
    );
    assert_eq!(h.http_log.len(), 1);
    assert_eq!(puts(&h).len(), 3);
    assert!(h.store.locks.is_empty());
    assert_eq!(h.engine.pending_tasks(), 0);
    let g = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert_eq!(g["data"]["access_token"], json!("AT-0"), "no override: {g}");
}

#[test]
fn a_refused_unusable_mark_rereads_and_uses_a_rotated_token() {
    // The provider refuses RT-0; the re-read shows nothing new, so the job
    // marks it unusable — but a sibling rotated it just before the mark.
    let (mut h, conn) = seeded(-10);
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    let theirs = expiry_in(&h, 3600);
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-S","refresh_token":"RT-S","expiry":theirs,"token_type":"Bearer"
    })));
    h.respond(400, json!({"error":"invalid_grant"}));
    let r = reply(&mut h, conn, "r");
    assert_eq!(r["data"]["access_token"], json!("AT-S"), "{r}");
    assert!(
        h.store.unusable.is_empty(),
        "the rotated token is not marked"
    );
    assert_eq!(h.http_log.len(), 1);
}

#[test]
fn a_login_whose_write_is_refused_is_written_again() {
    let mut h = Harness::new();
    let conn = h.connect();
    let r = h.call(conn, "oauth_initiate", json!({"provider":"anthropic"}));
    let sid = r["data"]["session_id"].as_str().unwrap().to_owned();
    // Even a valid credential written meanwhile: a host login replaces it.
    let far = expiry_in(&h, 3600);
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-S","refresh_token":"RT-S","expiry":far,"token_type":"Bearer"
    })));
    h.script(
        TOKEN_URL,
        200,
        json!({"access_token":"AT-L","refresh_token":"RT-L","expires_in":3600}),
    );
    let r = h.call(
        conn,
        "oauth_exchange",
        json!({"session_id": sid, "code": "c"}),
    );
    assert_eq!(r["data"]["access_token"], json!("AT-L"), "{r}");
    assert_eq!(puts(&h).len(), 2, "refused once, then replaced");
    assert_eq!(
        stored(&h)["refresh_token"],
        json!("RT-L"),
        "a login replaces"
    );
    assert!(h.store.locks.is_empty());
}

/// Starts an anthropic login on `conn` and sends its exchange under id
/// `x`, the provider's answer scripted.
fn login(h: &mut Harness, conn: credproxy_core::ConnId) {
    let r = h.call(conn, "oauth_initiate", json!({"provider":"anthropic"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    h.script(
        TOKEN_URL,
        200,
        json!({"access_token":"AT-L","refresh_token":"RT-L","expires_in":3600}),
    );
    h.request(
        conn,
        "x",
        "oauth_exchange",
        json!({"session_id": r["data"]["session_id"], "code": "c"}),
    );
}

#[test]
fn a_sandbox_login_is_checked_again_against_what_another_process_stored() {
    let config = credproxy_core::Config {
        capability_token: Some(credproxy_core::Secret::new("c".repeat(64))),
        ..credproxy_core::Config::default()
    };
    let mut h = Harness::with_config(config, 9);
    let far = h.now.unix_secs() + 3600;
    // Nothing stored at the check; a valid credential lands before the
    // write, which is refused.
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-S","refresh_token":"RT-S","expiry":far,"token_type":"Bearer"
    })));
    let conn = h.connect();
    login(&mut h, conn);
    let r = reply(&mut h, conn, "x");
    assert_eq!(
        r,
        json!({"id":"x","ok":false,"code":"FORBIDDEN","error":"Login would replace an existing credential"})
    );
    assert_eq!(stored(&h)["access_token"], json!("AT-S"), "not replaced");
    assert_eq!(puts(&h).len(), 1);
    assert!(h.store.locks.is_empty());
}

#[test]
fn a_refused_clear_of_the_unusable_mark_is_read_fresh_and_cleared_again() {
    let mut h = Harness::new();
    let key = ("anthropic".to_owned(), "default".to_owned());
    h.store.unusable.insert(key.clone());
    let conn = h.connect();
    h.auto_effects = false;
    login(&mut h, conn);
    assert!(matches!(h.held[0].1, Effect::TokenPut { .. }));
    h.complete(0);
    assert!(matches!(h.held[0].1, Effect::MetaPut { .. }));
    h.complete_with(0, credproxy_core::EffectResult::Conflict);
    assert!(matches!(h.held[0].1, Effect::TokenGet { fresh: true, .. }));
    h.complete(0);
    assert!(matches!(
        h.held[0].1,
        Effect::MetaPut {
            refresh_unusable: false,
            ..
        }
    ));
    h.complete(0);
    let r = reply(&mut h, conn, "x");
    assert_eq!(r["data"]["access_token"], json!("AT-L"), "{r}");
    assert!(!h.store.unusable.contains(&key), "the mark is cleared");
    assert!(h.store.locks.is_empty());
}

#[test]
fn a_login_whose_mark_clear_keeps_being_refused_still_succeeds() {
    // The token is stored; only the mark's clear lost its races.
    let mut h = Harness::new();
    let conn = h.connect();
    h.auto_effects = false;
    login(&mut h, conn);
    h.complete(0);
    for _ in 0..2 {
        h.complete_with(0, credproxy_core::EffectResult::Conflict);
        h.complete(0);
    }
    h.complete_with(0, credproxy_core::EffectResult::Conflict);
    let r = reply(&mut h, conn, "x");
    assert_eq!(r["data"]["access_token"], json!("AT-L"), "{r}");
    assert_eq!(stored(&h)["refresh_token"], json!("RT-L"));
    assert!(h.held.is_empty());
    assert!(h.store.locks.is_empty());
    assert_eq!(h.engine.pending_tasks(), 0);
}

#[test]
fn a_refused_write_back_ends_the_override() {
    let (mut h, conn) = seeded(-10);
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    h.store.fail_writes = true;
    provider_rotates(&mut h);
    assert_eq!(
        reply(&mut h, conn, "r")["data"]["access_token"],
        json!("AT-1")
    );
    h.store.fail_writes = false;
    let theirs = expiry_in(&h, 3600);
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-S","refresh_token":"RT-S","expiry":theirs,"token_type":"Bearer"
    })));
    h.advance(1_000);
    assert_eq!(puts(&h).len(), 2, "the write-back ran and was refused");
    assert_eq!(
        stored(&h)["access_token"],
        json!("AT-S"),
        "not written over"
    );
    let g = h.call(conn, "get_token", json!({"provider":"anthropic"}));
    assert_eq!(g["data"]["access_token"], json!("AT-S"), "no override: {g}");
    h.advance(60_000);
    assert_eq!(puts(&h).len(), 2, "no further write-back");
}

#[test]
fn refresh_conflict_with_a_sibling_refresh_that_kept_the_refresh_token_returns_theirs() {
    // A provider that does not rotate: the sibling's token carries the
    // refresh token this job spent, but its access token is new and valid.
    let (mut h, conn) = seeded(-10);
    let theirs = expiry_in(&h, 3600);
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-S","refresh_token":"RT-0","expiry":theirs,"token_type":"Bearer"
    })));
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    provider_rotates(&mut h);
    let r = reply(&mut h, conn, "r");
    assert_eq!(r["data"]["access_token"], json!("AT-S"), "{r}");
    assert_eq!(puts(&h).len(), 1, "ours not written over theirs");
    assert_eq!(stored(&h)["access_token"], json!("AT-S"));
    assert_eq!(h.http_log.len(), 1);
}

#[test]
fn refresh_conflict_with_an_expired_reread_without_a_refresh_token_is_not_available() {
    // A login elsewhere stored a token that cannot be refreshed: ours is
    // not written over it, and nothing more can be done.
    let (mut h, conn) = seeded(-10);
    let expired = expiry_in(&h, 0) - 10;
    h.store.sibling_writes.push_back(Some(json!({
        "access_token":"AT-L","expiry":expired,"token_type":"Bearer"
    })));
    h.request(conn, "r", "refresh_token", json!({"provider":"anthropic"}));
    provider_rotates(&mut h);
    let r = reply(&mut h, conn, "r");
    assert_eq!(r["code"], json!("REFRESH_NOT_AVAILABLE"), "{r}");
    assert_eq!(h.http_log.len(), 1);
    assert_eq!(stored(&h)["access_token"], json!("AT-L"));
    assert!(h.store.locks.is_empty());
}
