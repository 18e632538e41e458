//! A fixed loop of `get_token` round trips through the engine, for
//! profilers (`valgrind --tool=callgrind`, `perf record`): the same work as
//! the `get_token_round_trip` benchmark, without the benchmark harness.
//!
//! `cargo run --release -p credproxy-core --example get_token_loop -- 100000`

use credproxy_core::frame;
use credproxy_core::{Config, EffectResult, Output};
use serde_json::json;

#[path = "../benches/shared/mod.rs"]
mod shared;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let (mut engine, conn) = shared::handshaken(Config::default(), 1);
    let now = shared::start();
    let token = shared::token();
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
