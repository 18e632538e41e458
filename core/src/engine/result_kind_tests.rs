//! A result of the wrong kind for its effect is a host fault: the engine
//! handles it exactly as `EffectResult::Failed` (same replies, same audit
//! events, same further effects), and a result of the right kind is not
//! affected.

use serde_json::{Value, json};

use crate::engine::effect::{Effect, EffectResult, ResultKind};
use crate::testkit::Harness;

/// What a harness saw: replies, audit events, effects, tasks left.
type Seen = (Vec<Value>, String, String, usize);

/// A harness holding every effect, with `op` sent and the first `step`
/// effects answered from the store.
fn start(op: &str, payload: &Value, step: usize) -> (Harness, crate::engine::audit::ConnId) {
    let mut h = Harness::new();
    let token = json!({"access_token":"at","expiry":4_000_000_000u64,"token_type":"Bearer"});
    h.store.put_token("anthropic", "default", token);
    let conn = h.connect();
    h.auto_effects = false;
    h.hold_locks = true;
    h.request(conn, "1", op, payload.clone());
    for _ in 0..step {
        h.complete(0);
    }
    (h, conn)
}

/// Answers the effect held after `step` store answers with `result`, then
/// completes the rest from the store.
fn run(op: &str, payload: &Value, step: usize, result: &EffectResult) -> Seen {
    let (mut h, conn) = start(op, payload, step);
    h.complete_with(0, result.clone());
    h.complete_all();
    let replies = h.take_replies(conn);
    (
        replies,
        format!("{:?}", h.audit),
        format!("{:?}", h.effects),
        h.engine.pending_tasks(),
    )
}

fn wrong_kinds() -> Vec<EffectResult> {
    vec![
        EffectResult::Token(None),
        EffectResult::Done,
        EffectResult::Names(vec!["x".into()]),
        EffectResult::ApiKey(None),
        EffectResult::Exists(true),
        EffectResult::Meta {
            refresh_unusable: true,
        },
        EffectResult::Locked(true),
        EffectResult::Listening(true),
    ]
}

#[test]
fn a_wrong_kind_is_handled_as_failed_at_every_step() {
    let save = json!({"provider":"anthropic","token":{"access_token":"new","expiry":1,"token_type":"Bearer"}});
    let cases = [
        // (op, payload, number of effects answered)
        ("get_token", json!({"provider":"anthropic"}), 1),
        ("list_providers", json!({}), 1),
        ("has_api_key", json!({"name":"k"}), 1),
        ("get_api_key", json!({"name":"k"}), 1),
        // Lock, fresh read, write.
        ("save_token", save, 3),
        // Lock, delete.
        ("remove_token", json!({"provider":"anthropic"}), 2),
    ];
    let mut mismatches = 0;
    for (op, payload, steps) in cases {
        for step in 0..steps {
            let failed = run(op, &payload, step, &EffectResult::Failed);
            for wrong in wrong_kinds() {
                // Only results of another kind than the effect's.
                let effect = start(op, &payload, step).0.held[0].1.clone();
                if ResultKind::of(&effect).accepts(&wrong) {
                    continue;
                }
                mismatches += 1;
                assert_eq!(
                    run(op, &payload, step, &wrong),
                    failed,
                    "{op} step {step}: {wrong:?} for {effect:?}"
                );
            }
        }
    }
    assert!(mismatches > 50, "{mismatches} mismatches tried");
}

#[test]
fn the_right_kind_still_counts() {
    let mut h = Harness::new();
    let conn = h.connect();
    h.auto_effects = false;
    h.request(conn, "1", "list_providers", json!({}));
    h.complete_with(0, EffectResult::Names(vec!["anthropic".into()]));
    let reply = h.take_replies(conn);
    assert_eq!(reply[0]["ok"], json!(true), "{reply:?}");
    assert_eq!(reply[0]["data"]["providers"], json!(["anthropic"]));
}

#[test]
fn failed_answers_every_kind_and_each_kind_one_variant() {
    let key = crate::writes::keylock::Key::new("p", "default");
    let effects = [
        Effect::token_get(&key, false),
        Effect::token_put(&key, crate::tokens::token::Token::default()),
        Effect::token_delete(&key),
        Effect::ListProviders,
        Effect::ListBuckets {
            provider: "p".into(),
        },
        Effect::ApiKeyGet { name: "k".into() },
        Effect::ApiKeyList,
        Effect::ApiKeyHas { name: "k".into() },
        Effect::meta_get(&key),
        Effect::meta_put(&key, false),
        Effect::lock_acquire(&key, 1),
        Effect::lock_release(&key),
        Effect::Http(crate::oauth::http::get("https://x.example/", 1)),
        Effect::StartListener {
            port: 1,
            path: "/".into(),
        },
        Effect::StopListener { port: 1 },
    ];
    let mut results = wrong_kinds();
    results.push(EffectResult::Http(crate::oauth::http::HttpOutcome::Failed(
        crate::oauth::http::TransportError::Timeout,
    )));
    for effect in &effects {
        let kind = ResultKind::of(effect);
        assert!(kind.accepts(&EffectResult::Failed), "{effect:?}");
        let accepted = results.iter().filter(|r| kind.accepts(r)).count();
        let want = if kind == ResultKind::Ignored {
            results.len()
        } else {
            1
        };
        assert_eq!(accepted, want, "{effect:?}");
    }
}

#[test]
fn conflict_answers_writes_and_unavailable_answers_store_effects() {
    let key = crate::writes::keylock::Key::new("p", "default");
    let token = crate::tokens::token::Token::default();
    // (effect, accepts Conflict, accepts Unavailable)
    let cases = [
        (Effect::token_get(&key, true), false, true),
        (Effect::token_put(&key, token), true, true),
        (Effect::token_delete(&key), true, true),
        (Effect::ListProviders, false, true),
        (Effect::ApiKeyGet { name: "k".into() }, false, true),
        (Effect::ApiKeyHas { name: "k".into() }, false, true),
        (Effect::meta_get(&key), false, true),
        (Effect::meta_put(&key, true), true, true),
        (Effect::lock_acquire(&key, 1), false, true),
        (
            Effect::Http(crate::oauth::http::get("https://x.example/", 1)),
            false,
            false,
        ),
        (
            Effect::StartListener {
                port: 1,
                path: "/".into(),
            },
            false,
            false,
        ),
    ];
    let unavailable = EffectResult::Unavailable {
        retry_after_ms: 1_500,
    };
    for (effect, conflict, down) in cases {
        let kind = ResultKind::of(&effect);
        assert_eq!(
            kind.accepts(&EffectResult::Conflict),
            conflict,
            "{effect:?}"
        );
        assert_eq!(kind.accepts(&unavailable), down, "{effect:?}");
    }
}

#[test]
fn a_conflict_for_a_read_is_handled_as_failed() {
    let payload = json!({"provider":"anthropic"});
    assert_eq!(
        run("get_token", &payload, 0, &EffectResult::Conflict),
        run("get_token", &payload, 0, &EffectResult::Failed)
    );
}
