//! What the import did with each entry, for people (text) and scripts
//! (JSON). Names, paths, expiry and reasons only: never a secret.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::names::split_account;
use super::paths::OAUTH_SERVICE;
use super::write::Target;

/// The fate of one llxprt entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Written to credproxy's store.
    Imported {
        /// Envelope version.
        version: u8,
        /// Token expiry (Unix seconds); `None` for API keys.
        expiry: Option<f64>,
        /// Whether the token has a refresh token; `None` for API keys.
        refresh: Option<bool>,
        /// An existing entry was replaced (`--overwrite`).
        replaced: bool,
    },
    /// `--dry-run`: would be written.
    WouldImport {
        /// Envelope version.
        version: u8,
        /// Token expiry (Unix seconds); `None` for API keys.
        expiry: Option<f64>,
        /// Whether the token has a refresh token; `None` for API keys.
        refresh: Option<bool>,
        /// Would replace an existing entry (`--overwrite`).
        replace: bool,
    },
    /// credproxy already has it; kept (no `--overwrite`).
    Exists,
    /// A second file for the same account that llxprt never reads (the
    /// legacy unescaped name beside the escaped one).
    Shadowed(PathBuf),
    /// Could not be read, decrypted, converted or stored: the reason.
    Failed(String),
}

/// One entry of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// `llxprt-code-oauth` or `llxprt-code-provider-keys`.
    pub service: &'static str,
    /// llxprt's account (`provider:bucket`, or the key name).
    pub account: String,
    /// The envelope file.
    pub path: PathBuf,
    /// Where it goes in credproxy, when known.
    pub target: Option<Target>,
    /// What happened.
    pub outcome: Outcome,
}

impl Row {
    /// A row.
    #[must_use]
    pub fn new(
        service: &'static str,
        account: &str,
        path: &Path,
        target: Option<Target>,
        outcome: Outcome,
    ) -> Row {
        Row {
            service,
            account: account.to_owned(),
            path: path.to_path_buf(),
            target,
            outcome,
        }
    }

    /// Whether an `--only` value names this row.
    #[must_use]
    pub fn matches(&self, only: &str) -> bool {
        only == self.account
            || (self.service == OAUTH_SERVICE && split_account(&self.account).0 == only)
    }

    /// "token anthropic/default" or "API key openai".
    fn what(&self) -> String {
        if self.service == OAUTH_SERVICE {
            let (p, b) = split_account(&self.account);
            format!("token {p}/{b}")
        } else {
            format!("API key {}", self.account)
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": if self.service == OAUTH_SERVICE { "token" } else { "api_key" },
            "account": self.account,
            "file": self.path.display().to_string(),
        });
        match &self.target {
            Some(Target::Token { provider, bucket }) => {
                v["provider"] = json!(provider);
                v["bucket"] = json!(bucket);
            }
            Some(Target::ApiKey { name }) => v["key_name"] = json!(name),
            None => {}
        }
        let (result, extra) = match &self.outcome {
            Outcome::Imported {
                version,
                expiry,
                refresh,
                replaced,
            } => (
                if *replaced { "replaced" } else { "imported" },
                json!({"version": version, "expiry": expiry, "has_refresh_token": refresh}),
            ),
            Outcome::WouldImport {
                version,
                expiry,
                refresh,
                replace,
            } => (
                if *replace {
                    "would_replace"
                } else {
                    "would_import"
                },
                json!({"version": version, "expiry": expiry, "has_refresh_token": refresh}),
            ),
            Outcome::Exists => ("exists", json!({})),
            Outcome::Shadowed(by) => ("shadowed", json!({"shadowed_by": by.display().to_string()})),
            Outcome::Failed(reason) => ("failed", json!({"reason": reason})),
        };
        v["result"] = json!(result);
        if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
            v.extend(extra);
        }
        v
    }
}

/// The whole import.
#[derive(Debug, Clone)]
pub struct Report {
    /// The data directory read.
    pub data_dir: PathBuf,
    /// Nothing was written.
    pub dry_run: bool,
    /// Every entry, sorted by service and account.
    pub rows: Vec<Row>,
    /// `--only` values that named nothing found.
    pub unmatched_only: Vec<String>,
}

impl Report {
    /// An empty report.
    #[must_use]
    pub fn new(data_dir: PathBuf, dry_run: bool) -> Report {
        Report {
            data_dir,
            dry_run,
            rows: Vec::new(),
            unmatched_only: Vec::new(),
        }
    }

    /// Entries that could not be imported because of an error.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.rows.iter().filter(|r| f(&r.outcome)).count()
    }

    /// The report for people, one line per entry and a summary.
    #[must_use]
    pub fn to_text(&self, now: SystemTime) -> String {
        let mut out = format!("llxprt data directory: {}\n", self.data_dir.display());
        for r in &self.rows {
            let what = r.what();
            let _ = match &r.outcome {
                Outcome::Imported {
                    version,
                    expiry,
                    refresh,
                    replaced,
                } => writeln!(
                    out,
                    "{} {what} ({})",
                    if *replaced { "replaced" } else { "imported" },
                    details(*version, *expiry, *refresh, now)
                ),
                Outcome::WouldImport {
                    version,
                    expiry,
                    refresh,
                    replace,
                } => writeln!(
                    out,
                    "would {} {what} ({})",
                    if *replace { "replace" } else { "import" },
                    details(*version, *expiry, *refresh, now)
                ),
                Outcome::Exists => writeln!(
                    out,
                    "kept {what}: already in credproxy (--overwrite replaces it)"
                ),
                Outcome::Shadowed(by) => writeln!(
                    out,
                    "ignored {}: llxprt reads {} for {what}",
                    r.path.display(),
                    by.display()
                ),
                Outcome::Failed(reason) => {
                    writeln!(out, "skipped {what} ({}): {reason}", r.path.display())
                }
            };
        }
        if self.rows.is_empty() && self.unmatched_only.is_empty() {
            let _ = writeln!(
                out,
                "no llxprt credential files found (looked in {} and {})",
                self.data_dir
                    .join("secure-store/llxprt-code-oauth")
                    .display(),
                self.data_dir.join("provider-keys").display()
            );
        }
        for o in &self.unmatched_only {
            let _ = writeln!(out, "--only {o}: no such llxprt entry");
        }
        let imported = self.count(|o| {
            matches!(
                o,
                Outcome::Imported {
                    replaced: false,
                    ..
                }
            )
        });
        let replaced = self.count(|o| matches!(o, Outcome::Imported { replaced: true, .. }));
        let would = self.count(|o| matches!(o, Outcome::WouldImport { replace: false, .. }));
        let would_replace = self.count(|o| matches!(o, Outcome::WouldImport { replace: true, .. }));
        let exists = self.count(|o| matches!(o, Outcome::Exists));
        let failed = self.failures();
        let _ = if self.dry_run {
            writeln!(
                out,
                "dry run: {would} would be imported, {would_replace} would be replaced, \
                 {exists} already in credproxy, {failed} skipped because of errors; nothing written"
            )
        } else {
            writeln!(
                out,
                "summary: {imported} imported, {replaced} replaced, {exists} already in \
                 credproxy (kept), {failed} skipped because of errors"
            )
        };
        out
    }

    /// The report for scripts.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "data_dir": self.data_dir.display().to_string(),
            "dry_run": self.dry_run,
            "entries": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "unmatched_only": self.unmatched_only,
            "failed": self.failures(),
        })
    }
}

fn details(version: u8, expiry: Option<f64>, refresh: Option<bool>, now: SystemTime) -> String {
    let mut out = format!("v{version}");
    if let Some(e) = expiry {
        let at = UNIX_EPOCH + Duration::from_secs_f64(e.max(0.0));
        let _ = write!(out, ", expires {}", humantime::format_rfc3339_seconds(at));
        if at <= now {
            out.push_str(" (expired)");
        }
    }
    if let Some(r) = refresh {
        out.push_str(if r {
            ", refresh token: yes"
        } else {
            ", refresh token: no"
        });
    }
    out
}
