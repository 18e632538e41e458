//! A fixed loop of `get_token` round trips through the engine, for
//! profilers (`valgrind --tool=callgrind`, `perf record`): the same work as
//! the `get_token_round_trip` benchmark, without the benchmark harness.
//!
//! `cargo run --release -p credproxy-core --example get_token_loop -- 100000`

use credproxy_core::frame;
use credproxy_core::{Config, EffectResult, Engine, Now, Output, Peer, Token, Transport};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut engine = Engine::new(Config::default(), ChaCha20Rng::seed_from_u64(1)).expect("config");
    let now = Now::new(0, 1_700_000_000_000);
    let conn = engine
        .handle_open(Peer::anonymous(Transport::Embedded), now)
        .expect("open");
    let hs =
        frame::encode(&json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}));
    engine.handle_bytes(conn, &hs, now);
    while engine.poll_output().is_some() {}
    let token = Token::from_map(
        json!({
            "access_token": "sk-ant-oat01-".to_owned() + &"x".repeat(96),
            "refresh_token": "sk-ant-ort01-".to_owned() + &"y".repeat(96),
            "expiry": 1_767_225_600,
            "token_type": "Bearer",
            "scope": "org:create_api_key user:profile user:inference"
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    let request = frame::encode(
        &json!({"v":2,"id":"6f1c9b1e-5b7a-4d0e-9a39-1c2f3e4d5a6b","op":"get_token","payload":{"provider":"anthropic","bucket":"default"}}),
    );
    let start = std::time::Instant::now();
    let mut bytes = 0usize;
    for _ in 0..n {
        engine.handle_bytes(conn, &request, now);
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Effect { id, .. } => {
                    engine.handle_effect_result(id, EffectResult::Token(Some(token.clone())), now)
                }
                Output::Send { bytes: b, .. } => bytes += b.len(),
                _ => {}
            }
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{n} get_token in {elapsed:?}: {:.0} per second, {} reply bytes",
        n as f64 / elapsed.as_secs_f64(),
        bytes
    );
}
