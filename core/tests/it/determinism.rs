//! Same inputs and seed give the same outputs, byte for byte (SPEC §2.1, §9).

use credproxy_core::frame;
use credproxy_core::testkit::Harness;
use credproxy_core::{Config, EffectResult, Secret};
use serde_json::json;

use crate::common::{pause, read_closed, resume, sandbox_config, send_req, token};

/// A scripted session touching every kind of input.
fn script(config: Config, seed: u64) -> Harness {
    let mut h = Harness::with_config(config, seed);
    h.store.put_token(
        "p",
        "default",
        json!({"access_token":"at","expiry":9,"token_type":"Bearer","refresh_token":"rt"}),
    );
    h.store.keys.insert("k".into(), Secret::new("v"));
    let a = h.connect();
    let b = h.connect();
    h.call(a, "get_token", json!({"provider":"p"}));
    h.call(a, "save_token", json!({"provider":"p","token":token("n")}));
    h.call(b, "list_providers", json!({}));
    h.call(b, "get_api_key", json!({"name":"k"}));
    h.call(b, "bogus", json!([1]));
    h.advance(1_500);
    h.auto_effects = false;
    for i in 0..5 {
        send_req(
            &mut h,
            a,
            &format!("q{i}"),
            "get_token",
            json!({"provider":"p"}),
        );
    }
    send_req(
        &mut h,
        b,
        "w",
        "save_token",
        json!({"provider":"p","token":token("w")}),
    );
    send_req(&mut h, a, "c", "cancel", json!({"targetId":"q2"}));
    h.complete(4);
    h.complete_with(0, EffectResult::Failed);
    h.complete_all();
    h.auto_effects = true;
    let partial = frame::encode(&json!({"id":"z","op":"list_api_keys"}));
    h.send(b, &partial[..3]);
    pause(&mut h, b);
    h.advance(10_000);
    resume(&mut h, b);
    h.send(b, &partial[3..]);
    h.call(a, "get_bucket_stats", json!({"provider":"p"}));
    let c = h.open();
    h.send(c, &[0, 0, 1]);
    h.advance(5_000);
    read_closed(&mut h, a);
    h.call(b, "remove_token", json!({"provider":"p"}));
    h
}

#[test]
fn same_seed_same_outputs() {
    for config in [Config::default(), sandbox_config()] {
        let x = script(config.clone(), 42);
        let y = script(config, 42);
        assert_eq!(x.sent, y.sent);
        assert_eq!(x.audit, y.audit);
        assert_eq!(x.effects, y.effects);
        assert_eq!(x.closed, y.closed);
        assert!(!x.sent.is_empty() && !x.audit.is_empty());
    }
}

#[test]
fn the_script_exercises_what_it_claims() {
    let h = script(Config::default(), 7);
    // Three connections: two handshaken, one closed at its deadline, one
    // closed after EOF.
    assert_eq!(h.closed.len(), 2);
    assert_eq!(h.engine.connection_count(), 1);
    assert!(h.audit.iter().any(|e| e.op == "handshake_timeout"));
    assert!(h.audit.iter().any(|e| e.outcome == "CANCELLED"));
    assert!(h.audit.iter().any(|e| e.outcome == "INTERNAL_ERROR"));
    assert_eq!(h.engine.pending_tasks(), 0);
}
