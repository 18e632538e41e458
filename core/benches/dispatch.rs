//! Micro-benchmarks of the engine's hot path: decode a `get_token` frame,
//! dispatch it, answer its store effect inline (as a cache hit would be),
//! and encode the reply.

use credproxy_core::frame::{self, FrameDecoder};
use credproxy_core::request;
use credproxy_core::{Config, ConnId, Effect, EffectResult, Engine, Now, Output};
use rand_chacha::ChaCha20Rng;
use serde_json::json;

mod shared;

use shared::token;

fn main() {
    divan::main();
}

fn ready_engine() -> (Engine<ChaCha20Rng>, ConnId) {
    // The per-connection rate limit would refuse a benchmark's thousands of
    // logins per (virtual) second; it is not what is measured here.
    let mut config = Config::default();
    config.limits.rate_per_sec = u32::MAX;
    config.limits.rate_burst = u32::MAX;
    shared::handshaken(config, 1)
}

/// Feeds every output of the request just delivered: effects are answered
/// by `answer`, and the reply bytes (which must be a success) are counted.
fn run(
    engine: &mut Engine<ChaCha20Rng>,
    now: Now,
    mut answer: impl FnMut(Effect) -> EffectResult,
) -> usize {
    let mut sent = 0;
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Effect { id, effect } => {
                let result = answer(effect);
                engine.handle_effect_result(id, result, now);
            }
            Output::Send { bytes, .. } => {
                assert!(
                    bytes.windows(9).any(|w| w == b"\"ok\":true"),
                    "the request failed"
                );
                sent += divan::black_box(bytes).len();
            }
            _ => {}
        }
    }
    sent
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

/// Decoding alone: one `get_token` frame, parsed into a `serde_json` map
/// (what clients do with replies).
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

/// What the engine does with the same frame: the payload bytes, decoded
/// borrowed into a `Request` (no `serde_json::Value`).
#[divan::bench]
fn parse_get_token_request(bencher: divan::Bencher) {
    let request = frame::encode(
        &json!({"v":2,"id":"6f1c9b1e-5b7a-4d0e-9a39-1c2f3e4d5a6b","op":"get_token","payload":{"provider":"anthropic"}}),
    );
    let mut dec = FrameDecoder::new(65_536);
    bencher.bench_local(|| {
        let mut input = divan::black_box(&request[..]);
        let payload = dec.decode_payload(&mut input).ok().flatten()?;
        request::parse(&payload).ok().map(|r| r.id.is_some())
    });
}

/// A whole pkce_redirect login through the engine: `oauth_initiate`, then
/// `oauth_exchange`, with the token endpoint, locks and store answered by
/// canned effect results.
#[divan::bench]
fn oauth_initiate_then_exchange(bencher: divan::Bencher) {
    use credproxy_core::http::HttpOutcome;
    let (mut engine, conn) = ready_engine();
    let now = Now::new(1, 1_700_000_000_001);
    let token_body = json!({"access_token":"sk-ant-oat01-".to_owned() + &"x".repeat(96),
        "refresh_token":"sk-ant-ort01-".to_owned() + &"y".repeat(96),"expires_in":28800,"token_type":"Bearer"})
    .to_string()
    .into_bytes();
    let mut n = 0u64;
    bencher.bench_local(|| {
        n += 1;
        let initiate = frame::encode(&json!({"v":2,"id":format!("i{n}"),"op":"oauth_initiate","payload":{"provider":"anthropic"}}));
        engine.handle_bytes(conn, &initiate, now);
        let mut sid = String::new();
        while let Some(out) = engine.poll_output() {
            if let Output::Send { bytes, .. } = out {
                let reply: serde_json::Value = serde_json::from_slice(&bytes[4..]).unwrap_or_default();
                sid = reply["data"]["session_id"].as_str().unwrap_or_default().to_owned();
            }
        }
        let exchange = frame::encode(&json!({"v":2,"id":format!("e{n}"),"op":"oauth_exchange","payload":{"session_id":sid,"code":"c"}}));
        engine.handle_bytes(conn, &exchange, now);
        run(&mut engine, now, |effect| match effect {
            Effect::Http(_) => EffectResult::Http(HttpOutcome::Response {
                status: 200,
                body: token_body.clone(),
            }),
            Effect::LockAcquire { .. } => EffectResult::Locked(true),
            Effect::MetaGet { .. } => EffectResult::Meta { refresh_unusable: false },
            _ => EffectResult::Done,
        })
    });
}

/// A `refresh_token` request through the coordinator with a canned provider
/// answer: checks, store lock, fresh re-read, the HTTP call, the merge and
/// the write. The cooldown is set to zero so every iteration refreshes.
#[divan::bench]
fn refresh_with_canned_http(bencher: divan::Bencher) {
    use credproxy_core::http::HttpOutcome;
    let mut config = Config::default();
    config.limits.refresh_cooldown_ms = 0;
    config.limits.rate_per_sec = u32::MAX;
    config.limits.rate_burst = u32::MAX;
    let (mut engine, conn) = shared::handshaken(config, 2);
    let stored = token();
    let body =
        json!({"access_token":"sk-ant-oat01-".to_owned() + &"z".repeat(96),"expires_in":28800})
            .to_string()
            .into_bytes();
    let mut n = 0u64;
    bencher.bench_local(|| {
        n += 1;
        let request = frame::encode(&json!({"v":2,"id":format!("r{n}"),"op":"refresh_token","payload":{"provider":"anthropic"}}));
        let now = Now::new(n * 10, 1_700_000_000_000 + n * 10);
        engine.handle_bytes(conn, &request, now);
        run(&mut engine, now, |effect| match effect {
            Effect::TokenGet { .. } => EffectResult::Token(Some(stored.clone())),
            Effect::MetaGet { .. } => EffectResult::Meta { refresh_unusable: false },
            Effect::LockAcquire { .. } => EffectResult::Locked(true),
            Effect::Http(_) => EffectResult::Http(HttpOutcome::Response { status: 200, body: body.clone() }),
            _ => EffectResult::Done,
        })
    });
}
