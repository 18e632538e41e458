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
//! `limits.session_timeout_ms`, in whole seconds) < the configuration file <
//! command-line flags. A flag overrides only when it is given.
//!
//! # Format
//!
//! Every key is optional. Unknown keys are errors that name the key, the
//! line and the file. Every key that has a flag is named like its flag, with
//! `_` for `-` (`--partial-frame-timeout-ms` is `partial_frame_timeout_ms`
//! in `[limits]`, `--allow-provider` is `allow_provider` in `[policy]`, a
//! list of what the repeated flag takes). Keys of earlier versions
//! (`partial_frame_ms`, `handshake_ms`, `session_ttl_ms`, `provider_call_ms`,
//! `allowed_providers`, `allowed_buckets`, `allowed_keys`, `allowed_uids`)
//! are still read, with a warning naming the new key. Times are in
//! milliseconds. Relative paths are relative to the directory of the
//! configuration file (`~` is not expanded).
//!
//! ```toml
//! # Store directory (default $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy).
//! store = "/home/me/.local/share/credproxy"
//! # Store backend: "auto" (default: a new store is keyring when the OS keyring is
//! # unlocked, else encrypted-file; an existing store keeps its backend), "file"
//! # (plaintext), "encrypted-file" or "keyring".
//! store_backend = "auto"
//! # Key file of an encrypted store (default for auto: $XDG_CONFIG_HOME/credproxy/store.key).
//! store_key_file = "/home/me/.config/credproxy/store.key"
//! # The postgres backend's connection string, in a file of mode 0600
//! # (CREDPROXY_POSTGRES_URL wins when set; never a flag).
//! postgres_url_file = "/home/me/.config/credproxy/postgres.url"
//! # Audit log: a file path, "stderr" (default) or "off".
//! audit_log = "stderr"
//! # Threads doing socket I/O (default: one per core, at most 4; allowed: 4 per core, >= 8).
//! io_threads = 2
//!
//! [policy]
//! strict_sandbox = false           # refuse login and refresh to sandbox connections
//! sandbox_login_overwrite = false  # let a sandbox login replace a valid credential
//! allow_provider = ["anthropic", "codex"]   # absent: all; [] : none
//! allow_bucket = ["default", "work"]
//! allow_key = ["OPENAI_API_KEY"]
//! allow_uid = [1001]               # peer uids allowed besides ours and root
//!
//! [limits]                         # defaults shown
//! max_frame_bytes = 1048576        # at most 4194304
//! partial_frame_timeout_ms = 5000
//! handshake_timeout_ms = 5000
//! max_in_flight = 16
//! rate_per_sec = 60
//! rate_burst = 120
//! max_connections = 256
//! max_pending_handshakes = 64
//! max_connections_per_pid = 32
//! v1_max_frame = 65536
//! v2_max_payload = 4194304
//! session_timeout_ms = 600000
//! sessions_per_peer = 8
//! sessions_total = 256
//! session_sweep_ms = 60000
//! device_poll_ms = 5000
//! slow_down_ms = 5000
//! poll_backoff_cap_ms = 60000
//! provider_call_timeout_ms = 8000
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
//! [postgres]                       # the postgres backend; defaults shown
//! pool_size = 4                    # connections kept, 1 to 64
//! statement_timeout_ms = 5000
//! connect_timeout_ms = 5000
//! lease_ms = 30000                 # refresh lease: a dead holder's reign, >= 1000
//! cache_staleness_ms = 5000        # a cached token is re-checked after this
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

use credproxy_core::config::Config;
use serde::Deserialize;

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

mod limits;
mod policy;
mod postgres;
mod providers;
#[cfg(test)]
mod tests;

pub use limits::{DEPRECATED_LIMIT_KEYS, LIMIT_FLAGS, LIMIT_KEYS, LimitsArgs, LimitsFile};
use policy::name_set;
pub use policy::{DEPRECATED_POLICY_KEYS, POLICY_KEYS, PolicyArgs, PolicyFile};
pub use postgres::{POSTGRES_KEYS, PostgresFile};
pub use providers::{ExtraParams, ProviderFile};

// ---------------------------------------------------------------------------
// The file.

/// The whole configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Store directory.
    pub store: Option<PathBuf>,
    /// Store backend.
    pub store_backend: Option<crate::store::BackendName>,
    /// Key file of an encrypted store.
    pub store_key_file: Option<PathBuf>,
    /// The postgres backend's connection string file (mode 0600).
    pub postgres_url_file: Option<PathBuf>,
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
    /// The postgres backend's tunables.
    #[serde(default)]
    pub postgres: PostgresFile,
    /// Provider overrides and new providers.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFile>,
    /// Deprecated keys that were read under their old names, one line each
    /// (printed as warnings by the commands).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The top-level keys, as in the file (each its flag's name).
pub const TOP_KEYS: &[&str] = &[
    "store",
    "store_backend",
    "store_key_file",
    "postgres_url_file",
    "audit_log",
    "io_threads",
];

impl FileConfig {
    /// Parses the text of a configuration file; errors name the key and
    /// line, and start with `path`.
    ///
    /// # Errors
    ///
    /// Invalid TOML, an unknown key or a value of the wrong type.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, SettingsError> {
        let invalid = |m: &str| {
            SettingsError(format!(
                "invalid configuration file {}: {}",
                path.display(),
                m.trim_end()
            ))
        };
        let mut file: FileConfig = toml::from_str(text).map_err(|e| invalid(&e.to_string()))?;
        file.postgres
            .apply(crate::store::postgres::PgOptions::default())
            .map_err(|m| invalid(&m))?;
        let mut warnings = file.limits.upgrade().map_err(|m| invalid(&m))?;
        warnings.extend(file.policy.upgrade().map_err(|m| invalid(&m))?);
        file.warnings = warnings
            .into_iter()
            .map(|w| format!("configuration file {}: {w}", path.display()))
            .collect();
        Ok(file)
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

/// The store settings of the environment and the configuration file
/// (directory, backend, key file), without building the rest (for the
/// commands that only open the store).
///
/// # Errors
///
/// As [`read_file`].
pub fn configured_store(explicit: Option<&Path>) -> Result<StoreSettings, SettingsError> {
    let mut s = StoreSettings::from_env(&process_env);
    if let Some((path, file)) = read_file(explicit, &process_env)? {
        s.apply_file(&file, &path);
    }
    Ok(s)
}

/// The store's settings before flags.
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    /// Store directory, when configured (else the store's default).
    pub store: Option<PathBuf>,
    /// Store backend, when configured (else `auto`).
    pub store_backend: Option<crate::store::BackendName>,
    /// Key file, when configured (the file's `store_key_file` over
    /// `CREDPROXY_STORE_KEY_FILE`, as for every variable: env < file < flags).
    pub store_key_file: Option<PathBuf>,
    /// The postgres backend: its connection string file and tunables.
    pub postgres: crate::store::PgSpec,
}

impl StoreSettings {
    fn from_env(env: Env<'_>) -> StoreSettings {
        StoreSettings {
            store_key_file: env(crate::store::key::KEY_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ..StoreSettings::default()
        }
    }

    fn apply_file(&mut self, file: &FileConfig, path: &Path) {
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(store) = &file.store {
            self.store = Some(base.join(store));
        }
        if let Some(b) = file.store_backend {
            self.store_backend = Some(b);
        }
        if let Some(k) = &file.store_key_file {
            self.store_key_file = Some(base.join(k));
        }
        if let Some(u) = &file.postgres_url_file {
            self.postgres.url_file = Some(base.join(u));
        }
        // Checked by `FileConfig::parse`.
        let pg = self.postgres.options;
        self.postgres.options = file.postgres.apply(pg).unwrap_or(pg);
    }
}

// ---------------------------------------------------------------------------
// The layered result.

/// Everything configurable, after layering defaults, environment, file and
/// flags.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Engine configuration (limits, policy, providers; no capability token).
    pub config: Config,
    /// Store directory, backend and key file, when configured.
    pub store: StoreSettings,
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
    /// Warnings about the file (deprecated keys), for the commands to print.
    pub warnings: Vec<String>,
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
        let mut s = Settings {
            store: StoreSettings::from_env(env),
            ..Settings::default()
        };
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
        self.warnings.extend(file.warnings.iter().cloned());
        self.store.apply_file(&file, path);
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
        if let Some(v) = p.allow_provider {
            policy.allowed_providers = Some(name_set(&v));
        }
        if let Some(v) = p.allow_bucket {
            policy.allowed_buckets = Some(name_set(&v));
        }
        if let Some(v) = p.allow_key {
            policy.allowed_keys = Some(name_set(&v));
        }
        if let Some(v) = p.allow_uid {
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
