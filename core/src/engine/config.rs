//! Engine configuration: limits, timings and access policy.
//!
//! Every limit and timing constant is a field here (times in milliseconds),
//! so embedders can tune them and tests can shrink them. The defaults are
//! the values of SPEC §3.

use std::collections::BTreeSet;

use std::collections::BTreeMap;

use crate::engine::secret::Secret;
use crate::oauth::provider::{self, ProviderSpec};

/// Hard ceiling for the inbound frame limit (SPEC §3.1).
pub const MAX_FRAME_CEILING: usize = 4 * 1024 * 1024;

/// Sizes, counts and timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest inbound payload accepted (default 1 MiB, at most 4 MiB).
    pub max_frame_bytes: usize,
    /// A started frame must complete within this time while read (5 s).
    pub partial_frame_ms: u64,
    /// A connection must complete its handshake within this time (5 s).
    pub handshake_ms: u64,
    /// Requests in flight per connection (16; `cancel` is exempt).
    pub max_in_flight: usize,
    /// Rate limit refill per second for writes and provider calls (60).
    pub rate_per_sec: u32,
    /// Rate limit burst (120).
    pub rate_burst: u32,
    /// Handshaken connections (256). When a handshake completes with the
    /// table full, the connection idle longest (nothing in flight, no login
    /// session of its own) is closed to admit it; with none evictable the
    /// newcomer is closed (SPEC §3.1).
    pub max_connections: usize,
    /// Connections still in their handshake (64), a budget of their own so
    /// raw connects cannot crowd out served clients; when it is full the
    /// oldest pending connection is closed to admit a new one.
    pub max_pending_handshakes: usize,
    /// Connections (pending and handshaken) per peer process (32), where the
    /// transport knows the peer's pid; more are refused at accept.
    pub max_connections_per_pid: usize,
    /// Largest whole reply frame (header included) to a v1 peer (65 536).
    pub v1_max_frame: usize,
    /// Largest reply payload to a v2 peer (4 MiB).
    pub v2_max_payload: usize,
    /// Lifetime of an OAuth session (10 min; env
    /// `CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS` in the host).
    pub session_ttl_ms: u64,
    /// Live sessions per peer (8).
    pub sessions_per_peer: usize,
    /// Live sessions in all (256).
    pub sessions_total: usize,
    /// Interval of the expired-session sweep (60 s).
    pub session_sweep_ms: u64,
    /// Device polling interval when the provider gives none (5 s).
    pub device_poll_ms: u64,
    /// Added to the interval by each `slow_down` (5 s).
    pub slow_down_ms: u64,
    /// Cap of the device polling backoff after transport errors (60 s).
    pub poll_backoff_cap_ms: u64,
    /// Timeout of exchange and refresh calls (8 s).
    pub provider_call_ms: u64,
    /// Timeout of other provider calls (15 s).
    pub http_timeout_ms: u64,
    /// Cooldown per key after any refresh attempt (30 s).
    pub refresh_cooldown_ms: u64,
    /// Delays before the second and third refresh attempt (1 s, 3 s).
    pub refresh_retry_ms: [u64; 2],
    /// A token is "still valid" while more than this is left (60 s).
    pub valid_margin_ms: u64,
    /// Longest wait for a key's cross-process lock (10 s).
    pub lock_wait_ms: u64,
    /// Minimum proactive renewal lead (300 s).
    pub renewal_lead_ms: u64,
    /// Maximum renewal jitter (30 s).
    pub renewal_jitter_ms: u64,
    /// First renewal backoff after a transient failure (30 s), doubling.
    pub renewal_backoff_ms: u64,
    /// Cap of the renewal backoff (30 min).
    pub renewal_backoff_cap_ms: u64,
    /// Renewal tries before giving up (10).
    pub renewal_max_tries: u8,
}

impl Limits {
    /// The most connections the engine holds at once: handshaken plus
    /// pending. A host clamps both limits so this fits its descriptor
    /// limit (`RLIMIT_NOFILE`).
    #[must_use]
    pub fn max_sockets(&self) -> usize {
        self.max_connections
            .saturating_add(self.max_pending_handshakes)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 1024 * 1024,
            partial_frame_ms: 5_000,
            handshake_ms: 5_000,
            max_in_flight: 16,
            rate_per_sec: 60,
            rate_burst: 120,
            max_connections: 256,
            max_pending_handshakes: 64,
            max_connections_per_pid: 32,
            v1_max_frame: 65_536,
            v2_max_payload: MAX_FRAME_CEILING,
            session_ttl_ms: 600_000,
            sessions_per_peer: 8,
            sessions_total: 256,
            session_sweep_ms: 60_000,
            device_poll_ms: 5_000,
            slow_down_ms: 5_000,
            poll_backoff_cap_ms: 60_000,
            provider_call_ms: 8_000,
            http_timeout_ms: 15_000,
            refresh_cooldown_ms: 30_000,
            refresh_retry_ms: [1_000, 3_000],
            valid_margin_ms: 60_000,
            lock_wait_ms: 10_000,
            renewal_lead_ms: 300_000,
            renewal_jitter_ms: 30_000,
            renewal_backoff_ms: 30_000,
            renewal_backoff_cap_ms: 1_800_000,
            renewal_max_tries: 10,
        }
    }
}

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Restore the existing server's refusal of OAuth and refresh operations
    /// for sandbox connections.
    pub strict_sandbox: bool,
    /// Let a sandbox login replace a stored, still-valid credential.
    pub sandbox_login_overwrite: bool,
    /// Providers that may be used; `None` allows all.
    pub allowed_providers: Option<BTreeSet<String>>,
    /// Buckets that may be used; `None` allows all.
    pub allowed_buckets: Option<BTreeSet<String>>,
    /// API key names that may be read; `None` allows all.
    pub allowed_keys: Option<BTreeSet<String>>,
}

/// Everything the engine needs to know up front.
#[derive(Debug, Clone)]
pub struct Config {
    /// Limits and timings.
    pub limits: Limits,
    /// Access policy.
    pub policy: Policy,
    /// The capability token. When set, every connection must present it in
    /// its handshake and is then a sandbox connection.
    pub capability_token: Option<Secret>,
    /// Login and refresh providers by name (the built-ins by default).
    pub providers: BTreeMap<String, ProviderSpec>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            limits: Limits::default(),
            policy: Policy::default(),
            capability_token: None,
            providers: provider::builtins(),
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks ranges that would otherwise make the engine misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_frame_bytes == 0 || l.max_frame_bytes > MAX_FRAME_CEILING {
            return Err(ConfigError(format!(
                "max_frame_bytes must be between 1 and {MAX_FRAME_CEILING}"
            )));
        }
        if l.max_in_flight == 0 || l.max_connections == 0 {
            return Err(ConfigError(
                "max_in_flight and max_connections must be at least 1".into(),
            ));
        }
        if l.max_pending_handshakes == 0 || l.max_connections_per_pid == 0 {
            return Err(ConfigError(
                "max_pending_handshakes and max_connections_per_pid must be at least 1".into(),
            ));
        }
        if l.rate_per_sec == 0 || l.rate_burst == 0 {
            return Err(ConfigError(
                "rate_per_sec and rate_burst must be at least 1".into(),
            ));
        }
        if self
            .capability_token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            return Err(ConfigError(
                "capability token must be a non-empty string".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec_values() {
        let l = Limits::default();
        assert_eq!(l.max_frame_bytes, 1_048_576);
        assert_eq!((l.partial_frame_ms, l.handshake_ms), (5_000, 5_000));
        assert_eq!(
            (l.max_in_flight, l.rate_per_sec, l.rate_burst),
            (16, 60, 120)
        );
        assert_eq!(l.max_connections, 256);
        assert_eq!(
            (l.max_pending_handshakes, l.max_connections_per_pid),
            (64, 32)
        );
        assert_eq!(l.max_sockets(), 320);
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn rejects_bad_values() {
        let mut c = Config::default();
        c.limits.max_frame_bytes = MAX_FRAME_CEILING + 1;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.limits.max_pending_handshakes = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.limits.max_connections_per_pid = 0;
        assert!(c.validate().is_err());
        let c = Config {
            capability_token: Some(Secret::new("")),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("non-empty string"));
    }

    /// Each of a pair of limits checked together is refused alone, with
    /// the message naming both; the error displays as its message.
    #[test]
    fn each_zero_limit_is_refused_on_its_own() {
        type Case = (&'static str, fn(&mut Limits));
        let cases: [Case; 4] = [
            ("max_in_flight", |l| l.max_in_flight = 0),
            ("max_connections", |l| l.max_connections = 0),
            ("rate_per_sec", |l| l.rate_per_sec = 0),
            ("rate_burst", |l| l.rate_burst = 0),
        ];
        for (name, zero) in cases {
            let mut c = Config::default();
            zero(&mut c.limits);
            let err = c.validate().expect_err(name);
            assert!(err.0.contains(name), "{name}: {err:?}");
            assert_eq!(err.to_string(), err.0, "{name}");
        }
    }
}
