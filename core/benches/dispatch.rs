//! Micro-benchmarks of the engine's hot path: decode a `get_token` frame,
//! dispatch it, answer its store effect inline (as a cache hit would be),
//! and encode the reply.

use credproxy_core::frame::{self, FrameDecoder};
use credproxy_core::{Config, ConnId, EffectResult, Engine, Now, Output, Peer, Token, Transport};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;

fn main() {
    divan::main();
}

fn token() -> Token {
    let v = json!({
        "access_token": "sk-ant-oat01-".to_owned() + &"x".repeat(96),
        "refresh_token": "sk-ant-ort01-".to_owned() + &"y".repeat(96),
        "expiry": 1_767_225_600,
        "token_type": "Bearer",
        "scope": "org:create_api_key user:profile user:inference"
    });
    Token::from_map(v.as_object().cloned().unwrap_or_default())
}

fn ready_engine() -> (Engine<ChaCha20Rng>, ConnId) {
    let mut engine = Engine::new(Config::default(), ChaCha20Rng::seed_from_u64(1)).expect("config");
    let now = Now::new(0, 1_700_000_000_000);
    let conn = engine
        .handle_open(Peer::anonymous(Transport::Embedded), now)
        .expect("open");
    let hs =
        frame::encode(&json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}));
    engine.handle_bytes(conn, &hs, now);
    while engine.poll_output().is_some() {}
    (engine, conn)
}

/// One `get_token` round trip through the engine, cache hit answered inline.
#[divan::bench]
fn get_token_round_trip(bencher: divan::Bencher) {
    let (mut engine, conn) = ready_engine();
    let request = frame::encode(
        &json!({"v":2,"id":"6f1c9b1e-5b7a-4d0e-9a39-1c2f3e4d5a6b","op":"get_token","payload":{"provider":"anthropic","bucket":"default"}}),
    );
    let stored = token();
    let now = Now::new(1, 1_700_000_000_001);
    bencher.bench_local(|| {
        engine.handle_bytes(conn, divan::black_box(&request), now);
        let mut sent = 0;
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Effect { id, .. } => {
                    engine.handle_effect_result(id, EffectResult::Token(Some(stored.clone())), now);
                }
                Output::Send { bytes, .. } => sent += divan::black_box(bytes).len(),
                _ => {}
            }
        }
        sent
    });
}

/// Decoding alone: one `get_token` frame.
#[divan::bench]
fn decode_get_token_frame(bencher: divan::Bencher) {
    let request = frame::encode(
        &json!({"v":2,"id":"6f1c9b1e-5b7a-4d0e-9a39-1c2f3e4d5a6b","op":"get_token","payload":{"provider":"anthropic"}}),
    );
    let mut dec = FrameDecoder::new(65_536);
    bencher.bench_local(|| {
        let mut input = divan::black_box(&request[..]);
        dec.decode(&mut input).ok().flatten().map(|m| m.len())
    });
}
