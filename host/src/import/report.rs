//! What the import did with each entry, for people (text) and scripts
//! (JSON). Names, paths, expiry and reasons only: never a secret.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::from_keyring::KeyringState;
use super::names::split_account;
use super::paths::OAUTH_SERVICE;
use super::write::Target;

/// Where an entry was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An envelope file (or the directory that could not be listed).
    File(PathBuf),
    /// The OS keyring (its backend's name).
    Keyring(&'static str),
}

impl Origin {
    /// "the Secret Service entry" or the file's path.
    fn describe(&self) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Keyring(b) => format!("the {b} entry"),
        }
    }
}

/// The fate of one llxprt entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Written to credproxy's store.
    Imported {
        /// Envelope version (`None`: from the keyring).
        version: Option<u8>,
        /// Token expiry (Unix seconds); `None` for API keys.
        expiry: Option<f64>,
        /// Whether the token has a refresh token; `None` for API keys.
        refresh: Option<bool>,
        /// An existing entry was replaced (`--overwrite`).
        replaced: bool,
    },
    /// `--dry-run`: would be written.
    WouldImport {
        /// Envelope version (`None`: from the keyring).
        version: Option<u8>,
        /// Token expiry (Unix seconds); `None` for API keys.
        expiry: Option<f64>,
        /// Whether the token has a refresh token; `None` for API keys.
        refresh: Option<bool>,
        /// Would replace an existing entry (`--overwrite`).
        replace: bool,
    },
    /// credproxy already has it; kept (no `--overwrite`).
    Exists,
    /// A copy llxprt never reads: a file whose account the keyring holds
    /// too (llxprt reads the keyring first), or the legacy unescaped file
    /// name beside the escaped one. Holds the copy llxprt reads.
    Shadowed(Origin),
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
    /// Where it was found.
    pub origin: Origin,
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
        origin: Origin,
        target: Option<Target>,
        outcome: Outcome,
    ) -> Row {
        Row {
            service,
            account: account.to_owned(),
            origin,
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
        });
        match &self.origin {
            Origin::File(p) => {
                v["source"] = json!("file");
                v["file"] = json!(p.display().to_string());
            }
            Origin::Keyring(b) => {
                v["source"] = json!("keyring");
                v["keyring"] = json!(b);
            }
        }
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
            Outcome::Shadowed(by) => ("shadowed", json!({"shadowed_by": by.describe()})),
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
    /// The data directory read (`None`: `--keyring-only`).
    pub data_dir: Option<PathBuf>,
    /// What became of the keyring.
    pub keyring: KeyringState,
    /// The keyring was asked for explicitly (`--keyring-only`): not
    /// reaching it counts as a skipped source.
    pub keyring_explicit: bool,
    /// Remarks that concern no one entry (never a secret).
    pub notes: Vec<String>,
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
    pub fn new(data_dir: Option<PathBuf>, dry_run: bool) -> Report {
        Report {
            data_dir,
            keyring: KeyringState::NotAsked,
            keyring_explicit: false,
            notes: Vec::new(),
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

    /// Whether the keyring is a source that was skipped because of an
    /// error: it answered and failed, or `--keyring-only` could not reach
    /// one. (No keyring at all with the default sources is only a note.)
    #[must_use]
    pub fn keyring_skipped(&self) -> bool {
        match &self.keyring {
            KeyringState::Failed { .. } => true,
            KeyringState::Unreachable(_) => self.keyring_explicit,
            KeyringState::NotAsked | KeyringState::Read { .. } => false,
        }
    }

    /// Whether the exit status should say that something was skipped.
    #[must_use]
    pub fn anything_skipped(&self) -> bool {
        self.failures() > 0 || self.keyring_skipped()
    }

    fn keyring_line(&self) -> String {
        match &self.keyring {
            KeyringState::NotAsked => "llxprt keyring: not read (--files-only)".to_owned(),
            KeyringState::Read { backend, entries } => {
                format!("llxprt keyring: {backend}, {entries} entries")
            }
            KeyringState::Unreachable(why) if self.keyring_explicit => {
                format!("llxprt keyring: skipped: {why}")
            }
            KeyringState::Unreachable(why) => {
                format!("llxprt keyring: none reachable, nothing read (note: {why}; files only)")
            }
            KeyringState::Failed {
                backend,
                reason,
                entries,
            } => format!(
                "llxprt keyring: skipped {backend} after {entries} entries: {reason}; the \
                 files were still read"
            ),
        }
    }

    fn keyring_json(&self) -> Value {
        match &self.keyring {
            KeyringState::NotAsked => json!({"status": "not_asked"}),
            KeyringState::Read { backend, entries } => {
                json!({"status": "read", "backend": backend, "entries": entries})
            }
            KeyringState::Unreachable(why) => json!({"status": "unreachable", "reason": why,
                "skipped": self.keyring_explicit}),
            KeyringState::Failed {
                backend,
                reason,
                entries,
            } => json!({"status": "failed", "backend": backend, "reason": reason,
                "entries": entries, "skipped": true}),
        }
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.rows.iter().filter(|r| f(&r.outcome)).count()
    }

    /// The report for people, one line per entry and a summary.
    #[must_use]
    pub fn to_text(&self, now: SystemTime) -> String {
        let mut out = String::new();
        if let Some(dir) = &self.data_dir {
            let _ = writeln!(out, "llxprt data directory: {}", dir.display());
        }
        let _ = writeln!(out, "{}", self.keyring_line());
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        for r in &self.rows {
            let from = match &r.origin {
                Origin::Keyring(b) => Some(*b),
                Origin::File(_) => None,
            };
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
                    details(*version, from, *expiry, *refresh, now)
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
                    details(*version, from, *expiry, *refresh, now)
                ),
                Outcome::Exists => writeln!(
                    out,
                    "kept {what}: already in credproxy (--overwrite replaces it)"
                ),
                Outcome::Shadowed(by) => writeln!(
                    out,
                    "ignored {}: llxprt reads {} for {what}",
                    r.origin.describe(),
                    by.describe()
                ),
                Outcome::Failed(reason) => {
                    writeln!(out, "skipped {what} ({}): {reason}", r.origin.describe())
                }
            };
        }
        if self.rows.is_empty()
            && self.unmatched_only.is_empty()
            && let Some(dir) = &self.data_dir
        {
            let _ = writeln!(
                out,
                "no llxprt credential files found (looked in {} and {})",
                dir.join("secure-store/llxprt-code-oauth").display(),
                dir.join("provider-keys").display()
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
                 {exists} already in credproxy, {failed} skipped because of errors{}; nothing written",
                self.keyring_summary()
            )
        } else {
            writeln!(
                out,
                "summary: {imported} imported, {replaced} replaced, {exists} already in \
                 credproxy (kept), {failed} skipped because of errors{}",
                self.keyring_summary()
            )
        };
        out
    }

    fn keyring_summary(&self) -> &'static str {
        if self.keyring_skipped() {
            "; the keyring was skipped"
        } else {
            ""
        }
    }

    /// The report for scripts.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "data_dir": self.data_dir.as_ref().map(|d| d.display().to_string()),
            "keyring": self.keyring_json(),
            "notes": self.notes,
            "dry_run": self.dry_run,
            "entries": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "unmatched_only": self.unmatched_only,
            "failed": self.failures(),
        })
    }
}

fn details(
    version: Option<u8>,
    keyring: Option<&str>,
    expiry: Option<f64>,
    refresh: Option<bool>,
    now: SystemTime,
) -> String {
    let mut out = match (version, keyring) {
        (Some(v), _) => format!("v{v}"),
        (None, Some(k)) => k.to_owned(),
        (None, None) => String::new(),
    };
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
