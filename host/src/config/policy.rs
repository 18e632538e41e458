//! The `[policy]` table and the policy flags.

use std::collections::BTreeSet;

use clap::Args;
use serde::Deserialize;

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

pub(super) fn name_set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}
