//! The `[limits]` table and the limit flags: one table drives the file
//! keys, the flags and the help defaults.

use std::fmt;

use clap::Args;
use credproxy_core::config::Limits;
use serde::Deserialize;

fn with_default(help: &str, default: impl fmt::Display) -> String {
    format!("{} [default: {default}]", help.trim())
}

fn parse_pair(s: &str) -> Result<[u64; 2], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [a, b] => match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => Ok([a, b]),
            _ => Err("expected two whole numbers of milliseconds, e.g. 1000,3000".into()),
        },
        _ => Err("expected two values separated by a comma, e.g. 1000,3000".into()),
    }
}

macro_rules! limits_table {
    (
        $( $(#[doc = $doc:literal])+ $field:ident => $key:ident : $ty:ty, $flag:literal, $value:literal; )*
        ;
        deprecated { $( $old:ident => $new:ident : $oty:ty; )* }
    ) => {
        /// The `[limits]` table of the configuration file: every limit of
        /// [`Limits`] under its flag's name (`--partial-frame-timeout-ms` is
        /// `partial_frame_timeout_ms`), times in milliseconds.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LimitsFile {
            $( $(#[doc = $doc])+ pub $key: Option<$ty>, )*
            /// Delays before the second and third refresh attempt.
            pub refresh_retry_ms: Option<[u64; 2]>,
            $(
                #[doc = concat!("Deprecated name of `", stringify!($new), "`.")]
                pub $old: Option<$oty>,
            )*
        }

        /// Flags for every field of [`Limits`]; each overrides the file only
        /// when given.
        #[derive(Debug, Default, Clone, Args)]
        #[command(next_help_heading = "Limits and timings (times in milliseconds)")]
        pub struct LimitsArgs {
            $(
                #[arg(
                    long = $flag,
                    value_name = $value,
                    help = with_default(concat!($($doc),+), Limits::default().$field),
                )]
                pub $field: Option<$ty>,
            )*
            #[arg(
                long = "refresh-retry-ms",
                value_name = "MS,MS",
                value_parser = parse_pair,
                help = with_default(
                    "Delays before the second and third refresh attempt",
                    format!(
                        "{},{}",
                        Limits::default().refresh_retry_ms[0],
                        Limits::default().refresh_retry_ms[1]
                    ),
                ),
            )]
            pub refresh_retry_ms: Option<[u64; 2]>,
        }

        /// The `[limits]` keys, as in the file (each its flag's name).
        pub const LIMIT_KEYS: &[&str] = &[$(stringify!($key),)* "refresh_retry_ms"];

        /// Each limit's flag (without `--`) and its file key.
        pub const LIMIT_FLAGS: &[(&str, &str)] = &[
            $(($flag, stringify!($key)),)*
            ("refresh-retry-ms", "refresh_retry_ms"),
        ];

        /// Deprecated `[limits]` keys and the keys that replace them.
        pub const DEPRECATED_LIMIT_KEYS: &[(&str, &str)] =
            &[$((stringify!($old), stringify!($new)),)*];

        impl LimitsFile {
            /// Moves deprecated keys to their new names; one warning per key
            /// moved. Both names at once is an error.
            pub fn upgrade(&mut self) -> Result<Vec<String>, String> {
                let mut warnings = Vec::new();
                $(
                    if let Some(v) = self.$old.take() {
                        if self.$new.is_some() {
                            return Err(format!(
                                "[limits] has both {} and {}; keep only {}",
                                stringify!($old), stringify!($new), stringify!($new)
                            ));
                        }
                        self.$new = Some(v);
                        warnings.push(format!(
                            "[limits] {} is deprecated; rename it to {}",
                            stringify!($old), stringify!($new)
                        ));
                    }
                )*
                Ok(warnings)
            }

            /// Sets the fields that are present (after [`LimitsFile::upgrade`]).
            pub fn apply(&self, l: &mut Limits) {
                $( if let Some(v) = self.$key { l.$field = v; } )*
                if let Some(v) = self.refresh_retry_ms { l.refresh_retry_ms = v; }
            }
        }

        impl LimitsArgs {
            /// Sets the fields whose flags were given.
            pub fn apply(&self, l: &mut Limits) {
                $( if let Some(v) = self.$field { l.$field = v; } )*
                if let Some(v) = self.refresh_retry_ms { l.refresh_retry_ms = v; }
            }
        }
    };
}

limits_table! {
    /// Largest inbound frame payload in bytes (at most 4194304)
    max_frame_bytes => max_frame_bytes: usize, "max-frame-bytes", "BYTES";
    /// A started frame must complete within this time
    partial_frame_ms => partial_frame_timeout_ms: u64, "partial-frame-timeout-ms", "MS";
    /// A connection must complete its handshake within this time
    handshake_ms => handshake_timeout_ms: u64, "handshake-timeout-ms", "MS";
    /// Requests in flight per connection
    max_in_flight => max_in_flight: usize, "max-in-flight", "N";
    /// Rate limit for writes and provider calls, per connection per second
    rate_per_sec => rate_per_sec: u32, "rate-per-sec", "N";
    /// Rate limit burst
    rate_burst => rate_burst: u32, "rate-burst", "N";
    /// Handshaken connections; when full, the one idle longest makes room
    max_connections => max_connections: usize, "max-connections", "N";
    /// Connections still in their handshake; when full the oldest is dropped
    max_pending_handshakes => max_pending_handshakes: usize, "max-pending-handshakes", "N";
    /// Connections per peer process (when its pid is known)
    max_connections_per_pid => max_connections_per_pid: usize, "max-connections-per-pid", "N";
    /// Largest reply frame to a protocol v1 peer, header included
    v1_max_frame => v1_max_frame: usize, "v1-max-frame", "BYTES";
    /// Largest reply payload to a protocol v2 peer
    v2_max_payload => v2_max_payload: usize, "v2-max-payload", "BYTES";
    /// Lifetime of an OAuth login session (also CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS)
    session_ttl_ms => session_timeout_ms: u64, "session-timeout-ms", "MS";
    /// Live login sessions per peer
    sessions_per_peer => sessions_per_peer: usize, "sessions-per-peer", "N";
    /// Live login sessions in all
    sessions_total => sessions_total: usize, "sessions-total", "N";
    /// Interval of the expired-session sweep
    session_sweep_ms => session_sweep_ms: u64, "session-sweep-ms", "MS";
    /// Device polling interval when the provider gives none
    device_poll_ms => device_poll_ms: u64, "device-poll-ms", "MS";
    /// Added to the device polling interval by each slow_down
    slow_down_ms => slow_down_ms: u64, "slow-down-ms", "MS";
    /// Cap of the device polling backoff after transport errors
    poll_backoff_cap_ms => poll_backoff_cap_ms: u64, "poll-backoff-cap-ms", "MS";
    /// Timeout of code exchange and refresh calls to a provider
    provider_call_ms => provider_call_timeout_ms: u64, "provider-call-timeout-ms", "MS";
    /// Timeout of other provider calls (discovery, device authorization)
    http_timeout_ms => http_timeout_ms: u64, "http-timeout-ms", "MS";
    /// Cooldown per provider/bucket after any refresh attempt
    refresh_cooldown_ms => refresh_cooldown_ms: u64, "refresh-cooldown-ms", "MS";
    /// A token counts as still valid while more than this is left
    valid_margin_ms => valid_margin_ms: u64, "valid-margin-ms", "MS";
    /// Longest wait for a provider/bucket's cross-process lock
    lock_wait_ms => lock_wait_ms: u64, "lock-wait-ms", "MS";
    /// Minimum proactive renewal lead before expiry
    renewal_lead_ms => renewal_lead_ms: u64, "renewal-lead-ms", "MS";
    /// Maximum proactive renewal jitter
    renewal_jitter_ms => renewal_jitter_ms: u64, "renewal-jitter-ms", "MS";
    /// First renewal backoff after a transient failure (doubling)
    renewal_backoff_ms => renewal_backoff_ms: u64, "renewal-backoff-ms", "MS";
    /// Cap of the renewal backoff
    renewal_backoff_cap_ms => renewal_backoff_cap_ms: u64, "renewal-backoff-cap-ms", "MS";
    /// Renewal tries before giving up
    renewal_max_tries => renewal_max_tries: u8, "renewal-max-tries", "N";
    ;
    // Keys of earlier versions, read with a deprecation warning.
    deprecated {
        partial_frame_ms => partial_frame_timeout_ms: u64;
        handshake_ms => handshake_timeout_ms: u64;
        session_ttl_ms => session_timeout_ms: u64;
        provider_call_ms => provider_call_timeout_ms: u64;
    }
}
