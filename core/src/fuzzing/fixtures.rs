//! The engine configurations and store contents the fuzz bodies run
//! against: the providers, buckets and key names the typed ops index into,
//! a discovery provider, and a store seeded with refresh-token sentinels.
//! Shared by the handshake target and the engine world model.

use serde_json::json;

use crate::engine::config::{Config, Limits};
use crate::engine::secret::Secret;
use crate::oauth::provider::{self, Dialect, FlowType, ProviderSpec};
use crate::testkit::{Harness, START_UNIX_MS};

use super::ops::Setup;
use super::sentinel::CAP_TOKEN;

/// RNG seed of every harness the bodies build.
pub(super) const SEED: u64 = 0x00f0_2217;

pub(super) const PROVIDERS: [&str; 7] = [
    "anthropic",
    "gemini",
    "qwen",
    "codex",
    "corp",
    "nope",
    "bad/name",
];

pub(super) const BUCKETS: [Option<&str>; 4] = [None, Some("default"), Some("work"), Some("b@d!")];

pub(super) const KEY_NAMES: [&str; 3] = ["OPENAI", "MISSING", "bad name"];

/// Distinct valid keys the ops can name (providers × buckets), for bounds.
pub(super) const KEY_SPACE: usize = 16;

pub(super) const CODEX_PORT: u16 = 1455;

pub(super) const CORP_ISSUER: &str = "https://id.corp.example";

fn corp_spec() -> ProviderSpec {
    ProviderSpec {
        issuer: Some(CORP_ISSUER.into()),
        client_secret: Some(Secret::new("SECRET-CLIENT-corp")),
        scopes: vec!["openid".into()],
        default_device_lifetime_s: 300,
        ..ProviderSpec::new("corp", FlowType::DeviceCode, Dialect::Standard, "corp-cli")
    }
}

pub(super) fn engine_config(setup: Setup) -> Config {
    let mut config = Config::default();
    config.providers.insert("corp".into(), corp_spec());
    if setup.codex_device {
        config
            .providers
            .insert("codex".into(), provider::codex_device(provider::codex()));
    }
    if setup.sandbox {
        config.capability_token = Some(Secret::new(CAP_TOKEN));
    }
    config.policy.strict_sandbox = setup.strict;
    if setup.allow_lists {
        let set = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
        config.policy.allowed_providers = set(&["anthropic", "qwen", "codex", "corp"]);
        config.policy.allowed_buckets = set(&["default", "work"]);
        config.policy.allowed_keys = set(&["OPENAI"]);
    }
    if setup.small_limits {
        config.limits = Limits {
            max_frame_bytes: 2048,
            partial_frame_ms: 1_000,
            handshake_ms: 1_000,
            max_in_flight: 3,
            rate_per_sec: 1,
            rate_burst: 4,
            max_connections: 4,
            v1_max_frame: 160,
            sessions_per_peer: 2,
            sessions_total: 3,
            session_ttl_ms: 30_000,
            session_sweep_ms: 5_000,
            refresh_cooldown_ms: 2_000,
            ..Limits::default()
        };
    }
    config
}

/// Stored tokens carry `SECRET-RT-…` refresh tokens (expired, valid, soon
/// to expire, none); one API key.
pub(super) fn seed_store(h: &mut Harness) {
    let now_s = START_UNIX_MS / 1000;
    let tokens = [
        (
            "anthropic",
            "default",
            now_s - 10,
            Some("SECRET-RT-anthropic"),
        ),
        ("codex", "default", now_s + 3600, Some("SECRET-RT-codex")),
        ("qwen", "work", now_s + 400, Some("SECRET-RT-qwen")),
        ("corp", "default", now_s + 30, Some("SECRET-RT-corp")),
        ("gemini", "default", now_s + 86_400, None),
    ];
    for (p, b, expiry, rt) in tokens {
        let mut t =
            json!({"access_token": format!("AT-{p}"), "expiry": expiry, "token_type": "Bearer"});
        if let Some(rt) = rt {
            t["refresh_token"] = json!(rt);
        }
        h.store.put_token(p, b, t);
    }
    h.store
        .keys
        .insert("OPENAI".into(), Secret::new("sk-public-test-key"));
}
