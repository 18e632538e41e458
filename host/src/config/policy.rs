//! The `[policy]` table and the policy flags.

use std::collections::BTreeSet;

use clap::Args;
use serde::Deserialize;

/// The `[policy]` table of the configuration file. Each key is its flag's
/// name (`--allow-provider` is `allow_provider`); a list key takes the
/// values the repeatable flag would.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Refuse login and refresh to sandbox connections.
    pub strict_sandbox: Option<bool>,
    /// Let a sandbox login replace a valid stored credential.
    pub sandbox_login_overwrite: Option<bool>,
    /// Providers that may be used (absent: all).
    pub allow_provider: Option<Vec<String>>,
    /// Buckets that may be used (absent: all).
    pub allow_bucket: Option<Vec<String>>,
    /// API key names that may be read (absent: all).
    pub allow_key: Option<Vec<String>>,
    /// Peer uids allowed on the socket besides ours and root.
    pub allow_uid: Option<Vec<u32>>,
    /// Deprecated name of `allow_provider`.
    pub allowed_providers: Option<Vec<String>>,
    /// Deprecated name of `allow_bucket`.
    pub allowed_buckets: Option<Vec<String>>,
    /// Deprecated name of `allow_key`.
    pub allowed_keys: Option<Vec<String>>,
    /// Deprecated name of `allow_uid`.
    pub allowed_uids: Option<Vec<u32>>,
}

/// The `[policy]` keys, as in the file (each its flag's name).
pub const POLICY_KEYS: &[&str] = &[
    "strict_sandbox",
    "sandbox_login_overwrite",
    "allow_provider",
    "allow_bucket",
    "allow_key",
    "allow_uid",
];

/// Deprecated `[policy]` keys and the keys that replace them.
pub const DEPRECATED_POLICY_KEYS: &[(&str, &str)] = &[
    ("allowed_providers", "allow_provider"),
    ("allowed_buckets", "allow_bucket"),
    ("allowed_keys", "allow_key"),
    ("allowed_uids", "allow_uid"),
];

/// Moves `old` into `new`, with a warning; both given is an error.
fn rename<T>(
    old: &mut Option<T>,
    new: &mut Option<T>,
    (old_name, new_name): (&str, &str),
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let Some(v) = old.take() else {
        return Ok(());
    };
    if new.is_some() {
        return Err(format!(
            "[policy] has both {old_name} and {new_name}; keep only {new_name}"
        ));
    }
    *new = Some(v);
    warnings.push(format!(
        "[policy] {old_name} is deprecated; rename it to {new_name}"
    ));
    Ok(())
}

impl PolicyFile {
    /// Moves deprecated keys to their new names; one warning per key moved.
    /// Both names at once is an error.
    pub fn upgrade(&mut self) -> Result<Vec<String>, String> {
        let mut w = Vec::new();
        let d = DEPRECATED_POLICY_KEYS;
        rename(
            &mut self.allowed_providers,
            &mut self.allow_provider,
            d[0],
            &mut w,
        )?;
        rename(
            &mut self.allowed_buckets,
            &mut self.allow_bucket,
            d[1],
            &mut w,
        )?;
        rename(&mut self.allowed_keys, &mut self.allow_key, d[2], &mut w)?;
        rename(&mut self.allowed_uids, &mut self.allow_uid, d[3], &mut w)?;
        Ok(w)
    }
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

pub(super) fn name_set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}
