//! Setup shared by the `dispatch` benchmarks and the `get_token_loop`
//! example (which includes this file by path), so the profiled loop runs
//! exactly the engine and stored token the benchmark measures.

use credproxy_core::frame;
use credproxy_core::{Config, ConnId, Engine, Now, Peer, Token, Transport};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;

/// The clock both start from.
pub fn start() -> Now {
    Now::new(0, 1_700_000_000_000)
}

/// A large Anthropic-shaped stored token (long access and refresh tokens).
pub fn token() -> Token {
    let v = json!({
        "access_token": "sk-ant-oat01-".to_owned() + &"x".repeat(96),
        "refresh_token": "sk-ant-ort01-".to_owned() + &"y".repeat(96),
        "expiry": 1_767_225_600,
        "token_type": "Bearer",
        "scope": "org:create_api_key user:profile user:inference"
    });
    Token::from_map(v.as_object().cloned().unwrap_or_default())
}

/// An engine with `config` and RNG `seed`, and one embedded connection
/// that completed a v2 handshake at [`start`] (its outputs drained).
pub fn handshaken(config: Config, seed: u64) -> (Engine<ChaCha20Rng>, ConnId) {
    let mut engine = Engine::new(config, ChaCha20Rng::seed_from_u64(seed)).expect("config");
    let now = start();
    let conn = engine
        .handle_open(Peer::anonymous(Transport::Embedded), now)
        .expect("open");
    let hs =
        frame::encode(&json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}));
    engine.handle_bytes(conn, &hs, now);
    while engine.poll_output().is_some() {}
    (engine, conn)
}
