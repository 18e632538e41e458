//! The configuration file and the layering of options (SPEC §3.5, §4, §7, §8).
//!
//! # Where
//!
//! `$XDG_CONFIG_HOME/credproxy/config.toml`, else
//! `~/.config/credproxy/config.toml`; `--config PATH` names another file. A
//! missing default file is fine (everything has a default); a missing file
//! named with `--config` is an error.
//!
//! # Precedence
//!
//! built-in defaults < `CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS` (sets
//! `limits.session_ttl_ms`, in whole seconds) < the configuration file <
//! command-line flags. A flag overrides only when it is given.
//!
//! # Format
//!
//! Every key is optional. Unknown keys are errors that name the key, the
//! line and the file. Times are in milliseconds and the `[limits]` keys are
//! the field names of [`Limits`]. Relative paths are relative to the
//! directory of the configuration file (`~` is not expanded).
//!
//! ```toml
//! # Store directory (default $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy).
//! store = "/home/me/.local/share/credproxy"
//! # Audit log: a file path, "stderr" (default) or "off".
//! audit_log = "stderr"
//! # Threads doing socket I/O (default: one per core, at most 4; allowed: 4 per core, >= 8).
//! io_threads = 2
//!
//! [policy]
//! strict_sandbox = false           # refuse login and refresh to sandbox connections
//! sandbox_login_overwrite = false  # let a sandbox login replace a valid credential
//! allowed_providers = ["anthropic", "codex"]   # absent: all; [] : none
//! allowed_buckets = ["default", "work"]
//! allowed_keys = ["OPENAI_API_KEY"]
//! allowed_uids = [1001]            # peer uids allowed besides ours and root
//!
//! [limits]                         # defaults shown
//! max_frame_bytes = 1048576        # at most 4194304
//! partial_frame_ms = 5000
//! handshake_ms = 5000
//! max_in_flight = 16
//! rate_per_sec = 60
//! rate_burst = 120
//! max_connections = 256
//! max_pending_handshakes = 64
//! max_connections_per_pid = 32
//! v1_max_frame = 65536
//! v2_max_payload = 4194304
//! session_ttl_ms = 600000
//! sessions_per_peer = 8
//! sessions_total = 256
//! session_sweep_ms = 60000
//! device_poll_ms = 5000
//! slow_down_ms = 5000
//! poll_backoff_cap_ms = 60000
//! provider_call_ms = 8000
//! http_timeout_ms = 15000
//! refresh_cooldown_ms = 30000
//! refresh_retry_ms = [1000, 3000]
//! valid_margin_ms = 60000
//! lock_wait_ms = 10000
//! renewal_lead_ms = 300000
//! renewal_jitter_ms = 30000
//! renewal_backoff_ms = 30000
//! renewal_backoff_cap_ms = 1800000
//! renewal_max_tries = 10
//!
//! # Override a built-in provider field by field (e.g. a local test server).
//! [providers.anthropic]
//! token_url = "http://127.0.0.1:8080/token"
//!
//! # OpenAI's device dialect for Codex instead of the loopback redirect.
//! [providers.codex]
//! flow = "device_code"
//!
//! # Google's installed-app client secret, from the environment.
//! [providers.gemini]
//! client_secret_env = "CREDPROXY_GEMINI_CLIENT_SECRET"
//!
//! # A provider of your own.
//! [providers.corp]
//! flow = "pkce_redirect"        # pkce_redirect | device_code | browser_redirect
//! dialect = "standard"          # standard | anthropic | qwen | codex | codex_device
//! issuer = "https://id.corp.example"   # OIDC discovery fills the missing endpoints
//! # authorize_url / token_url / device_url / device_token_url / verification_url
//! client_id = "credproxy"
//! client_secret_file = "/etc/credproxy/corp-secret"   # or client_secret_env = "VAR"
//! scopes = ["openid", "offline_access"]
//! redirect_uri = "https://id.corp.example/device/callback"
//! exchange_encoding = "form"    # form | json
//! device_encoding = "form"
//! extra_auth_params = { prompt = "consent" }   # or [["prompt", "consent"]]
//! default_device_lifetime_s = 900
//! ```
//!
//! In a provider table an empty string removes a built-in URL (e.g.
//! `device_url = ""`).
//!
//! # Secrets
//!
//! Client secrets never come from the file itself or from flags: a provider
//! table names a file (`client_secret_file`, read and trimmed) or an
//! environment variable (`client_secret_env`). The built-in `gemini` spec
//! ships without Google's installed-app secret; the conventional variable is
//! [`GEMINI_SECRET_ENV`] (`CREDPROXY_GEMINI_CLIENT_SECRET`), enabled with
//! `client_secret_env = "CREDPROXY_GEMINI_CLIENT_SECRET"` in
//! `[providers.gemini]`. A variable that is named but unset is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use clap::Args;
use credproxy_core::Secret;
use credproxy_core::config::{Config, Limits};
use credproxy_core::provider::{self, BodyEncoding, Dialect, FlowType, ProviderSpec};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Environment variable that sets the OAuth session lifetime in seconds.
pub const SESSION_TIMEOUT_ENV: &str = "CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS";

/// The conventional environment variable for Google's installed-app client
/// secret (enable it with `client_secret_env` in `[providers.gemini]`).
pub const GEMINI_SECRET_ENV: &str = "CREDPROXY_GEMINI_CLIENT_SECRET";

/// File name of the configuration under the configuration directory.
pub const FILE_NAME: &str = "config.toml";

/// An environment lookup (the process environment, or a test's).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process environment as an [`Env`].
#[must_use]
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

fn non_empty(env: Env<'_>, name: &str) -> Option<OsString> {
    env(name).filter(|v| !v.is_empty())
}

/// `$XDG_CONFIG_HOME/credproxy/config.toml`, else
/// `$HOME/.config/credproxy/config.toml`; `None` without either variable.
#[must_use]
pub fn default_path(env: Env<'_>) -> Option<PathBuf> {
    let dir = non_empty(env, "XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| non_empty(env, "HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(dir.join("credproxy").join(FILE_NAME))
}

/// A configuration that cannot be used, with a message that says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

// ---------------------------------------------------------------------------
// Limits: one table drives the file keys, the flags and the help defaults.

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
    ($( $(#[doc = $doc:literal])+ $field:ident : $ty:ty, $flag:literal, $value:literal; )*) => {
        /// The `[limits]` table of the configuration file: any field of
        /// [`Limits`], times in milliseconds.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LimitsFile {
            $( $(#[doc = $doc])+ pub $field: Option<$ty>, )*
            /// Delays before the second and third refresh attempt.
            pub refresh_retry_ms: Option<[u64; 2]>,
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

        /// The `[limits]` keys, as in the file (the [`Limits`] field names).
        pub const LIMIT_KEYS: &[&str] = &[$(stringify!($field),)* "refresh_retry_ms"];

        impl LimitsFile {
            /// Sets the fields that are present.
            pub fn apply(&self, l: &mut Limits) {
                $( if let Some(v) = self.$field { l.$field = v; } )*
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
    max_frame_bytes: usize, "max-frame-bytes", "BYTES";
    /// A started frame must complete within this time
    partial_frame_ms: u64, "partial-frame-timeout-ms", "MS";
    /// A connection must complete its handshake within this time
    handshake_ms: u64, "handshake-timeout-ms", "MS";
    /// Requests in flight per connection
    max_in_flight: usize, "max-in-flight", "N";
    /// Rate limit for writes and provider calls, per connection per second
    rate_per_sec: u32, "rate-per-sec", "N";
    /// Rate limit burst
    rate_burst: u32, "rate-burst", "N";
    /// Open connections; more are closed at accept
    max_connections: usize, "max-connections", "N";
    /// Connections still in their handshake; when full the oldest is dropped
    max_pending_handshakes: usize, "max-pending-handshakes", "N";
    /// Connections per peer process (when its pid is known)
    max_connections_per_pid: usize, "max-connections-per-pid", "N";
    /// Largest reply frame to a protocol v1 peer, header included
    v1_max_frame: usize, "v1-max-frame", "BYTES";
    /// Largest reply payload to a protocol v2 peer
    v2_max_payload: usize, "v2-max-payload", "BYTES";
    /// Lifetime of an OAuth login session (also CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS)
    session_ttl_ms: u64, "session-timeout-ms", "MS";
    /// Live login sessions per peer
    sessions_per_peer: usize, "sessions-per-peer", "N";
    /// Live login sessions in all
    sessions_total: usize, "sessions-total", "N";
    /// Interval of the expired-session sweep
    session_sweep_ms: u64, "session-sweep-ms", "MS";
    /// Device polling interval when the provider gives none
    device_poll_ms: u64, "device-poll-ms", "MS";
    /// Added to the device polling interval by each slow_down
    slow_down_ms: u64, "slow-down-ms", "MS";
    /// Cap of the device polling backoff after transport errors
    poll_backoff_cap_ms: u64, "poll-backoff-cap-ms", "MS";
    /// Timeout of code exchange and refresh calls to a provider
    provider_call_ms: u64, "provider-call-timeout-ms", "MS";
    /// Timeout of other provider calls (discovery, device authorization)
    http_timeout_ms: u64, "http-timeout-ms", "MS";
    /// Cooldown per provider/bucket after any refresh attempt
    refresh_cooldown_ms: u64, "refresh-cooldown-ms", "MS";
    /// A token counts as still valid while more than this is left
    valid_margin_ms: u64, "valid-margin-ms", "MS";
    /// Longest wait for a provider/bucket's cross-process lock
    lock_wait_ms: u64, "lock-wait-ms", "MS";
    /// Minimum proactive renewal lead before expiry
    renewal_lead_ms: u64, "renewal-lead-ms", "MS";
    /// Maximum proactive renewal jitter
    renewal_jitter_ms: u64, "renewal-jitter-ms", "MS";
    /// First renewal backoff after a transient failure (doubling)
    renewal_backoff_ms: u64, "renewal-backoff-ms", "MS";
    /// Cap of the renewal backoff
    renewal_backoff_cap_ms: u64, "renewal-backoff-cap-ms", "MS";
    /// Renewal tries before giving up
    renewal_max_tries: u8, "renewal-max-tries", "N";
}

// ---------------------------------------------------------------------------
// Policy.

/// The `[policy]` table of the configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Refuse login and refresh to sandbox connections.
    pub strict_sandbox: Option<bool>,
    /// Let a sandbox login replace a valid stored credential.
    pub sandbox_login_overwrite: Option<bool>,
    /// Providers that may be used (absent: all).
    pub allowed_providers: Option<Vec<String>>,
    /// Buckets that may be used (absent: all).
    pub allowed_buckets: Option<Vec<String>>,
    /// API key names that may be read (absent: all).
    pub allowed_keys: Option<Vec<String>>,
    /// Peer uids allowed on the socket besides ours and root.
    pub allowed_uids: Option<Vec<u32>>,
}

/// Policy flags; each overrides the file only when given.
#[derive(Debug, Default, Clone, Args)]
#[command(next_help_heading = "Policy")]
pub struct PolicyArgs {
    /// Refuse login and refresh to sandbox connections (the old behaviour);
    /// `--strict-sandbox=false` turns it off again [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub strict_sandbox: Option<bool>,
    /// Let a sandbox login replace a valid stored credential;
    /// `--sandbox-login-overwrite=false` turns it off again [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub sandbox_login_overwrite: Option<bool>,
    /// Providers that may be used (repeatable; replaces the file's list) [default: all]
    #[arg(long = "allow-provider", value_name = "NAME")]
    pub allow_providers: Vec<String>,
    /// Buckets that may be used (repeatable; replaces the file's list) [default: all]
    #[arg(long = "allow-bucket", value_name = "NAME")]
    pub allow_buckets: Vec<String>,
    /// API key names that may be read (repeatable; replaces the file's list) [default: all]
    #[arg(long = "allow-key", value_name = "NAME")]
    pub allow_keys: Vec<String>,
    /// Extra peer uids allowed to connect besides ours and root
    /// (repeatable; replaces the file's list)
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,
}

fn name_set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

// ---------------------------------------------------------------------------
// Providers.

/// Accepted values of an enum-valued key, for error messages.
trait Choices: std::str::FromStr {
    const CHOICES: &'static str;
}

impl Choices for FlowType {
    const CHOICES: &'static str = "pkce_redirect, device_code, browser_redirect";
}

impl Choices for Dialect {
    const CHOICES: &'static str = "standard, anthropic, qwen, codex, codex_device";
}

impl Choices for BodyEncoding {
    const CHOICES: &'static str = "form, json";
}

fn opt_choice<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Choices,
{
    let s = String::deserialize(d)?;
    s.parse::<T>().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "unknown value \"{s}\", expected one of: {}",
            T::CHOICES
        ))
    })
}

/// `extra_auth_params`: a table (`{ prompt = "consent" }`) or an array of
/// `[name, value]` pairs; the document's order is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraParams(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for ExtraParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ExtraParams, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ExtraParams;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of strings or an array of [name, value] pairs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExtraParams, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                Ok(ExtraParams(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ExtraParams, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = seq.next_element::<(String, String)>()? {
                    out.push((k, v));
                }
                Ok(ExtraParams(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `[providers.<name>]` table: overrides of a built-in provider, or a new
/// provider (then `flow` and `client_id` are required).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// Login flow. For `codex`, `device_code` selects OpenAI's device dialect.
    #[serde(default, deserialize_with = "opt_choice")]
    pub flow: Option<FlowType>,
    /// Provider quirks.
    #[serde(default, deserialize_with = "opt_choice")]
    pub dialect: Option<Dialect>,
    /// OIDC issuer whose discovery document gives the missing endpoints.
    pub issuer: Option<String>,
    /// Authorization endpoint.
    pub authorize_url: Option<String>,
    /// Token endpoint.
    pub token_url: Option<String>,
    /// Device authorization endpoint.
    pub device_url: Option<String>,
    /// Codex device dialect: the endpoint polled for the authorization code.
    pub device_token_url: Option<String>,
    /// Codex device dialect: the page where the user enters the code.
    pub verification_url: Option<String>,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// A file holding the client secret (trimmed).
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Refused with an explanation: secrets do not belong in the file.
    #[serde(default)]
    pub client_secret: Option<de::IgnoredAny>,
    /// Scopes.
    pub scopes: Option<Vec<String>>,
    /// Redirect URI.
    pub redirect_uri: Option<String>,
    /// Body encoding of the code exchange.
    #[serde(default, deserialize_with = "opt_choice")]
    pub exchange_encoding: Option<BodyEncoding>,
    /// Body encoding of device requests.
    #[serde(default, deserialize_with = "opt_choice")]
    pub device_encoding: Option<BodyEncoding>,
    /// Extra authorization URL parameters.
    pub extra_auth_params: Option<ExtraParams>,
    /// Device-code lifetime assumed when the provider gives none (seconds).
    pub default_device_lifetime_s: Option<u64>,
}

fn valid_provider_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

fn custom_spec(name: &str, flow: FlowType) -> ProviderSpec {
    ProviderSpec {
        name: name.to_owned(),
        flow,
        dialect: Dialect::Standard,
        issuer: None,
        authorize_url: None,
        token_url: None,
        device_url: None,
        device_token_url: None,
        client_id: String::new(),
        client_secret: None,
        scopes: Vec::new(),
        redirect_uri: None,
        exchange_encoding: BodyEncoding::Form,
        device_encoding: BodyEncoding::Form,
        verification_url: None,
        extra_auth_params: Vec::new(),
        default_device_lifetime_s: 900,
    }
}

fn set_url(slot: &mut Option<String>, value: Option<String>) {
    if let Some(v) = value {
        *slot = (!v.is_empty()).then_some(v);
    }
}

impl ProviderFile {
    /// The spec for `name`: the built-in with these overrides, or a new one.
    /// `base` resolves a relative `client_secret_file`.
    fn build(
        self,
        name: &str,
        builtin: Option<ProviderSpec>,
        base: &Path,
        env: Env<'_>,
    ) -> Result<ProviderSpec, String> {
        if !valid_provider_name(name) {
            return Err("provider names are 1 to 64 characters of A-Z a-z 0-9 . _ @ -".into());
        }
        if self.client_secret.is_some() {
            return Err(
                "client_secret must not be written in the configuration file; \
                 use client_secret_file = \"/path\" or client_secret_env = \"VAR\""
                    .into(),
            );
        }
        let mut spec = match (builtin, self.flow) {
            (Some(s), Some(FlowType::DeviceCode)) if s.dialect == Dialect::Codex => {
                provider::codex_device(s)
            }
            (Some(mut s), Some(flow)) => {
                s.flow = flow;
                s
            }
            (Some(s), None) => s,
            (None, Some(flow)) => custom_spec(name, flow),
            (None, None) => {
                return Err(format!(
                    "flow is required for a provider that is not built in \
                     (built-in: {}); one of: {}",
                    provider::builtins()
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    FlowType::CHOICES
                ));
            }
        };
        if let Some(d) = self.dialect {
            spec.dialect = d;
        }
        set_url(&mut spec.issuer, self.issuer);
        set_url(&mut spec.authorize_url, self.authorize_url);
        set_url(&mut spec.token_url, self.token_url);
        set_url(&mut spec.device_url, self.device_url);
        set_url(&mut spec.device_token_url, self.device_token_url);
        set_url(&mut spec.verification_url, self.verification_url);
        set_url(&mut spec.redirect_uri, self.redirect_uri);
        if let Some(id) = self.client_id {
            spec.client_id = id;
        }
        if let Some(s) = self.scopes {
            spec.scopes = s;
        }
        if let Some(e) = self.exchange_encoding {
            spec.exchange_encoding = e;
        }
        if let Some(e) = self.device_encoding {
            spec.device_encoding = e;
        }
        if let Some(p) = self.extra_auth_params {
            spec.extra_auth_params = p.0;
        }
        if let Some(s) = self.default_device_lifetime_s {
            spec.default_device_lifetime_s = s;
        }
        spec.client_secret = match (self.client_secret_file, self.client_secret_env) {
            (Some(_), Some(_)) => {
                return Err("give either client_secret_file or client_secret_env, not both".into());
            }
            (Some(file), None) => Some(secret_from_file(&base.join(file))?),
            (None, Some(var)) => Some(secret_from_env(&var, env)?),
            (None, None) => spec.client_secret,
        };
        Ok(spec)
    }
}

fn secret_from_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read client_secret_file {}: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("client_secret_file {} is empty", path.display()));
    }
    Ok(Secret::new(value))
}

fn secret_from_env(var: &str, env: Env<'_>) -> Result<Secret, String> {
    let value = env(var)
        .ok_or_else(|| format!("client_secret_env names {var}, which is not set"))?
        .into_string()
        .map_err(|_| format!("the value of {var} (client_secret_env) is not UTF-8"))?;
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{var} (client_secret_env) is empty"));
    }
    Ok(Secret::new(value))
}

// ---------------------------------------------------------------------------
// The file.

/// The whole configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Store directory.
    pub store: Option<PathBuf>,
    /// Audit log: a file path, `stderr` or `off`.
    pub audit_log: Option<String>,
    /// Threads doing socket I/O (bounded: [`crate::thread_count`]).
    pub io_threads: Option<crate::thread_count::IoThreadCount>,
    /// Limits and timings.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Access policy.
    #[serde(default)]
    pub policy: PolicyFile,
    /// Provider overrides and new providers.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFile>,
}

impl FileConfig {
    /// Parses the text of a configuration file; errors name the key and
    /// line, and start with `path`.
    ///
    /// # Errors
    ///
    /// Invalid TOML, an unknown key or a value of the wrong type.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, SettingsError> {
        toml::from_str(text).map_err(|e| {
            SettingsError(format!(
                "invalid configuration file {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })
    }
}

/// Reads and parses the configuration file: `explicit`, else the default
/// location. `Ok(None)` when no file was named and the default one does not
/// exist.
///
/// # Errors
///
/// A file that cannot be read (a missing explicit one included) or parsed.
pub fn read_file(
    explicit: Option<&Path>,
    env: Env<'_>,
) -> Result<Option<(PathBuf, FileConfig)>, SettingsError> {
    let cannot_read = |p: &Path, e: std::io::Error| {
        SettingsError(format!(
            "cannot read the configuration file {}: {e}",
            p.display()
        ))
    };
    let (path, text) = match explicit {
        Some(p) => (
            p.to_path_buf(),
            std::fs::read_to_string(p).map_err(|e| cannot_read(p, e))?,
        ),
        None => {
            let Some(p) = default_path(env) else {
                return Ok(None);
            };
            match std::fs::read_to_string(&p) {
                Ok(text) => (p, text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(cannot_read(&p, e)),
            }
        }
    };
    let file = FileConfig::parse(&text, &path)?;
    Ok(Some((path, file)))
}

/// The store directory named by the configuration file, if any, without
/// building the rest (for the commands that only open the store).
///
/// # Errors
///
/// As [`read_file`].
pub fn configured_store(explicit: Option<&Path>) -> Result<Option<PathBuf>, SettingsError> {
    Ok(read_file(explicit, &process_env)?.and_then(|(path, file)| {
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        file.store.map(|s| base.join(s))
    }))
}

// ---------------------------------------------------------------------------
// The layered result.

/// Everything configurable, after layering defaults, environment, file and
/// flags.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Engine configuration (limits, policy, providers; no capability token).
    pub config: Config,
    /// Store directory, when configured (else the store's default).
    pub store: Option<PathBuf>,
    /// Audit log, when configured (else `stderr`).
    pub audit_log: Option<String>,
    /// Threads doing socket I/O, when configured (else one per core, at
    /// most 4).
    pub io_threads: Option<NonZeroUsize>,
    /// Peer uids allowed on the socket besides ours and root.
    pub allowed_uids: Vec<u32>,
    /// The configuration file that was read, if any.
    pub source: Option<PathBuf>,
    /// Providers that have a table in the file.
    pub configured_providers: BTreeSet<String>,
}

impl Settings {
    /// Defaults, the environment and the configuration file (`explicit`, or
    /// the default location) from the process environment. Flags are applied
    /// after, then [`Settings::validate`].
    ///
    /// # Errors
    ///
    /// As [`Settings::load_with`].
    pub fn load(explicit: Option<&Path>) -> Result<Settings, SettingsError> {
        Settings::load_with(explicit, &process_env)
    }

    /// Like [`Settings::load`] with the environment looked up by `env`.
    ///
    /// # Errors
    ///
    /// A bad `CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS`, an explicit file that
    /// cannot be read, any file that cannot be parsed, or a provider table
    /// that cannot be used (its secret file unreadable, its variable unset,
    /// …). Every message names the file.
    pub fn load_with(explicit: Option<&Path>, env: Env<'_>) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        if let Some(v) = env(SESSION_TIMEOUT_ENV).filter(|v| !v.is_empty()) {
            let secs = v
                .to_str()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    SettingsError(format!(
                        "{SESSION_TIMEOUT_ENV} must be a positive whole number of seconds"
                    ))
                })?;
            s.config.limits.session_ttl_ms = secs.saturating_mul(1000);
        }
        if let Some((path, file)) = read_file(explicit, env)? {
            s.apply_file(file, &path, env)?;
        }
        Ok(s)
    }

    /// Applies a parsed file read from `path`.
    ///
    /// # Errors
    ///
    /// A provider table that cannot be used.
    pub fn apply_file(
        &mut self,
        file: FileConfig,
        path: &Path,
        env: Env<'_>,
    ) -> Result<(), SettingsError> {
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.source = Some(path.to_path_buf());
        if let Some(store) = file.store {
            self.store = Some(base.join(store));
        }
        if let Some(audit) = file.audit_log {
            self.audit_log = Some(match audit.as_str() {
                "stderr" | "off" => audit,
                other => base.join(other).display().to_string(),
            });
        }
        if let Some(n) = file.io_threads {
            self.io_threads = Some(n.get());
        }
        file.limits.apply(&mut self.config.limits);
        let p = file.policy;
        let policy = &mut self.config.policy;
        if let Some(v) = p.strict_sandbox {
            policy.strict_sandbox = v;
        }
        if let Some(v) = p.sandbox_login_overwrite {
            policy.sandbox_login_overwrite = v;
        }
        if let Some(v) = p.allowed_providers {
            policy.allowed_providers = Some(name_set(&v));
        }
        if let Some(v) = p.allowed_buckets {
            policy.allowed_buckets = Some(name_set(&v));
        }
        if let Some(v) = p.allowed_keys {
            policy.allowed_keys = Some(name_set(&v));
        }
        if let Some(v) = p.allowed_uids {
            self.allowed_uids = v;
        }
        for (name, table) in file.providers {
            let builtin = self.config.providers.get(&name).cloned();
            let spec = table.build(&name, builtin, &base, env).map_err(|m| {
                SettingsError(format!(
                    "invalid configuration file {}: [providers.{name}] {m}",
                    path.display()
                ))
            })?;
            self.config.providers.insert(name.clone(), spec);
            self.configured_providers.insert(name);
        }
        Ok(())
    }

    /// Applies the limit flags that were given.
    pub fn apply_limits(&mut self, flags: &LimitsArgs) {
        flags.apply(&mut self.config.limits);
    }

    /// Applies the policy flags that were given.
    pub fn apply_policy(&mut self, flags: &PolicyArgs) {
        let policy = &mut self.config.policy;
        if let Some(v) = flags.strict_sandbox {
            policy.strict_sandbox = v;
        }
        if let Some(v) = flags.sandbox_login_overwrite {
            policy.sandbox_login_overwrite = v;
        }
        if !flags.allow_providers.is_empty() {
            policy.allowed_providers = Some(name_set(&flags.allow_providers));
        }
        if !flags.allow_buckets.is_empty() {
            policy.allowed_buckets = Some(name_set(&flags.allow_buckets));
        }
        if !flags.allow_keys.is_empty() {
            policy.allowed_keys = Some(name_set(&flags.allow_keys));
        }
        if !flags.allow_uids.is_empty() {
            self.allowed_uids.clone_from(&flags.allow_uids);
        }
    }

    /// Checks the result: [`Config::validate`] and every provider spec
    /// (required endpoints; HTTPS except loopback).
    ///
    /// # Errors
    ///
    /// The first problem found, naming the configuration file when one was
    /// read.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let whence = |m: String| match &self.source {
            Some(p) => SettingsError(format!(
                "invalid configuration (file {} and command-line flags): {m}",
                p.display()
            )),
            None => SettingsError(format!("invalid configuration: {m}")),
        };
        self.config.validate().map_err(|e| whence(e.to_string()))?;
        for (name, spec) in &self.config.providers {
            let in_file = |m: String| match &self.source {
                Some(p) if self.configured_providers.contains(name) => SettingsError(format!(
                    "invalid configuration file {}: [providers.{name}] {m}",
                    p.display()
                )),
                _ => whence(m),
            };
            if spec.name != *name {
                return Err(in_file(format!("spec is named {}", spec.name)));
            }
            spec.validate().map_err(|e| in_file(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn every_limits_field_has_a_key_and_a_flag() {
        // `Limits { a: 1, b: [1, 2], … }`: the field names from Debug.
        let debug = format!("{:?}", Limits::default());
        let body = debug
            .trim_start_matches("Limits {")
            .trim_end_matches('}')
            .to_owned();
        let mut depth = 0;
        let mut fields = Vec::new();
        let mut current = String::new();
        for c in body.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' if depth == 0 => {
                    fields.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        fields.push(current);
        let names: Vec<String> = fields
            .iter()
            .filter_map(|f| f.split(':').next())
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        assert!(names.len() > 20, "{names:?}");
        for n in &names {
            assert!(LIMIT_KEYS.contains(&n.as_str()), "no key/flag for {n}");
        }
        assert_eq!(names.len(), LIMIT_KEYS.len());
    }

    /// The example in the module docs parses, and its `[limits]` are the
    /// defaults.
    #[test]
    fn documented_example_is_valid() {
        let source = include_str!("config.rs");
        let start = source.find("//! ```toml\n").expect("example start") + 12;
        let len = source[start..].find("//! ```\n").expect("example end");
        let text: String = source[start..start + len]
            .lines()
            .map(|l| {
                l.strip_prefix("//! ")
                    .unwrap_or(l.trim_start_matches("//!"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let file = FileConfig::parse(&text, Path::new("example.toml")).expect("example parses");
        let mut limits = Limits {
            max_frame_bytes: 1,
            refresh_retry_ms: [0, 0],
            renewal_max_tries: 0,
            ..Limits::default()
        };
        file.limits.apply(&mut limits);
        assert_eq!(limits, Limits::default(), "documented defaults");
        for key in LIMIT_KEYS {
            assert!(
                text.contains(&format!("\n{key} = ")),
                "{key} is not in the example"
            );
        }
        assert_eq!(file.providers.len(), 4);
    }

    #[test]
    fn extra_params_in_both_shapes_keep_order() {
        let f: FileConfig = toml::from_str(
            "[providers.a]\nflow=\"device_code\"\nextra_auth_params = { z = \"1\", a = \"2\" }\n\
             [providers.b]\nflow=\"device_code\"\nextra_auth_params = [[\"z\", \"1\"], [\"a\", \"2\"]]\n",
        )
        .unwrap();
        let want = vec![
            ("z".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ];
        assert_eq!(f.providers["b"].extra_auth_params.clone().unwrap().0, want);
        assert_eq!(f.providers["a"].extra_auth_params.clone().unwrap().0, want);
    }

    #[test]
    fn bad_enum_value_lists_the_choices() {
        let e = FileConfig::parse("[providers.x]\nflow = \"implicit\"\n", Path::new("/c.toml"))
            .unwrap_err();
        assert!(e.0.contains("/c.toml"), "{e}");
        assert!(
            e.0.contains("pkce_redirect, device_code, browser_redirect"),
            "{e}"
        );
    }

    #[test]
    fn env_session_timeout() {
        let env = |n: &str| (n == SESSION_TIMEOUT_ENV).then(|| OsString::from("42"));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let s = Settings::load_with(None, &|n| {
            if n == "XDG_CONFIG_HOME" {
                Some(missing.clone().into_os_string())
            } else {
                env(n)
            }
        })
        .unwrap();
        assert_eq!(s.config.limits.session_ttl_ms, 42_000);
        let bad = |n: &str| (n == SESSION_TIMEOUT_ENV).then(|| OsString::from("soon"));
        assert!(Settings::load_with(Some(&missing), &bad).is_err());
        assert!(Settings::load_with(None, &no_env).is_ok());
    }
}
