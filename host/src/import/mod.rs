//! `credproxy import llxprt`: llxprt-code's stored logins and API keys into
//! credproxy's store (issue 14, the encrypted-file half).
//!
//! llxprt keeps credentials in the OS keyring and, when that is off or
//! fails, in AES-256-GCM envelope files under its data directory. This
//! version reads the files only:
//!
//! - [`paths`]: where `<data>` is, and the files in it;
//! - [`names`]: file name ↔ account (`anthropic%3Adefault.enc`);
//! - [`envelope`]: the `.enc` format, scrypt and AES-256-GCM;
//! - [`kdf`]: the KDF input (host name, user name, machine secret);
//! - [`convert`]: plaintext → credproxy token or API key;
//! - [`write`]: the one function that writes to credproxy's store;
//! - [`report`]: what happened to each entry, as text or JSON.

pub mod convert;
pub mod envelope;
pub mod kdf;
pub mod names;
pub mod paths;
pub mod report;
pub mod write;

use std::cell::OnceCell;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::store::Store;
use envelope::{Envelope, EnvelopeError};
use kdf::{MachineSecret, SecretError};
use names::FileKind;
use paths::{KEYS_SERVICE, Layout, OAUTH_SERVICE};
use report::{Outcome, Report, Row};
use write::{Target, Value, Written};

/// Largest `.enc` file read (llxprt's are a few hundred bytes).
const MAX_ENC_BYTES: u64 = 1024 * 1024;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// llxprt's data directory (or a copy of it).
    pub data: PathBuf,
    /// List what would be imported; write nothing.
    pub dry_run: bool,
    /// Only entries whose provider, `provider:bucket` account or key name
    /// is listed; `None` for all.
    pub only: Option<Vec<String>>,
    /// Replace entries credproxy already has.
    pub overwrite: bool,
    /// The host name of the KDF input.
    pub hostname: String,
    /// User names to try in the KDF input, in order (at least one).
    pub users: Vec<String>,
}

/// An envelope file found in the data directory.
#[derive(Debug, Clone)]
struct Source {
    service: &'static str,
    account: String,
    path: PathBuf,
    target: Target,
}

/// Imports from `opts.data` into `store`; every entry ends up in the report.
/// Fails only when the data directory itself cannot be read. `store` is
/// `None` only for a dry run against a store that does not exist yet
/// (which a dry run must not create): then nothing counts as present.
pub fn run(opts: &Options, store: Option<&Store>) -> Result<Report, String> {
    let layout = Layout::new(opts.data.clone());
    match fs::metadata(&layout.data) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", layout.data.display())),
        Err(e) => {
            return Err(format!(
                "no llxprt data directory at {}: {e}; name another with --from DIR",
                layout.data.display()
            ));
        }
    }
    let mut report = Report::new(layout.data.clone(), opts.dry_run);
    let mut sources = Vec::new();
    scan(
        &layout.oauth_dir(),
        OAUTH_SERVICE,
        &mut sources,
        &mut report,
    );
    scan(&layout.keys_dir(), KEYS_SERVICE, &mut sources, &mut report);
    if let Some(only) = &opts.only {
        report.unmatched_only = only
            .iter()
            .filter(|o| {
                !sources
                    .iter()
                    .any(|s| matches_only(s, std::slice::from_ref(o)))
                    && !report.rows.iter().any(|r| r.matches(o))
            })
            .cloned()
            .collect();
        sources.retain(|s| matches_only(s, only));
        report.rows.retain(|r| only.iter().any(|o| r.matches(o)));
    }
    let keys = Keys::new(opts, &layout);
    for source in sources {
        let outcome = import_one(opts, store, &keys, &source);
        report.rows.push(Row::new(
            source.service,
            &source.account,
            &source.path,
            Some(source.target),
            outcome,
        ));
    }
    report
        .rows
        .sort_by(|a, b| (a.service, &a.account).cmp(&(b.service, &b.account)));
    Ok(report)
}

fn matches_only(s: &Source, only: &[String]) -> bool {
    only.iter().any(|o| match &s.target {
        Target::Token { provider, .. } => o == provider || *o == s.account,
        Target::ApiKey { name } => o == name,
    })
}

/// The envelope files of one directory, one per account: the escaped name
/// when present, else the legacy unescaped one (llxprt's read order).
fn scan(dir: &Path, service: &'static str, out: &mut Vec<Source>, report: &mut Report) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            report.rows.push(Row::new(
                service,
                "*",
                dir,
                None,
                Outcome::Failed(format!("cannot list {}: {e}", dir.display())),
            ));
            return;
        }
    };
    let mut found: Vec<(String, bool, PathBuf)> = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match names::classify(&name) {
            FileKind::Ignored => {}
            FileKind::Undecodable => report.rows.push(Row::new(
                service,
                &name,
                &path,
                None,
                Outcome::Failed("the file name does not decode to an account".to_owned()),
            )),
            FileKind::Entry { account, legacy } => found.push((account, legacy, path)),
        }
    }
    // Escaped names first, so the first file seen for an account is the one
    // llxprt reads; later ones are shadowed.
    found.sort_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2)));
    let mut last: Option<(String, PathBuf)> = None;
    for (account, _legacy, path) in found {
        if let Some((prev, by)) = &last
            && *prev == account
        {
            report.rows.push(Row::new(
                service,
                &account,
                &path,
                None,
                Outcome::Shadowed(by.clone()),
            ));
            continue;
        }
        last = Some((account.clone(), path.clone()));
        let target = if service == OAUTH_SERVICE {
            let (provider, bucket) = names::split_account(&account);
            Target::Token {
                provider: provider.to_owned(),
                bucket: bucket.to_owned(),
            }
        } else {
            Target::ApiKey {
                name: account.clone(),
            }
        };
        out.push(Source {
            service,
            account,
            path,
            target,
        });
    }
}

fn import_one(opts: &Options, store: Option<&Store>, keys: &Keys, s: &Source) -> Outcome {
    let present = match write::exists(store, &s.target) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("credproxy cannot store it: {e}")),
    };
    if present && !opts.overwrite {
        return Outcome::Exists;
    }
    let (value, version) = match decrypt(keys, s) {
        Ok(v) => v,
        Err(reason) => return Outcome::Failed(reason),
    };
    let (expiry, refresh) = match &value {
        Value::Token(t) => (t.expiry_secs(), Some(t.refresh_token().is_some())),
        Value::ApiKey(_) => (None, None),
    };
    let Some(store) = store.filter(|_| !opts.dry_run) else {
        return Outcome::WouldImport {
            version,
            expiry,
            refresh,
            replace: present,
        };
    };
    match write::store_entry(store, &s.target, &value, opts.overwrite) {
        Ok(Written::Kept) => Outcome::Exists,
        Ok(w) => Outcome::Imported {
            version,
            expiry,
            refresh,
            replaced: w == Written::Replaced,
        },
        Err(e) => Outcome::Failed(format!("cannot store it: {e}")),
    }
}

fn decrypt(keys: &Keys, s: &Source) -> Result<(Value, u8), String> {
    let bytes = read_limited(&s.path)?;
    let envelope = Envelope::parse(&bytes).map_err(|e| e.to_string())?;
    let plaintext = keys.open(&envelope, s.service)?;
    let value = if s.service == OAUTH_SERVICE {
        Value::Token(convert::token(&plaintext).map_err(|e| e.to_string())?)
    } else {
        Value::ApiKey(convert::api_key(&plaintext).map_err(|e| e.to_string())?)
    };
    Ok((value, envelope.version().number()))
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let file = fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_ENC_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > MAX_ENC_BYTES {
        return Err(format!("the file is larger than {MAX_ENC_BYTES} bytes"));
    }
    Ok(bytes)
}

/// The identity candidates and the machine secret (read once, when a v2
/// envelope first needs it). The user name that opened the last envelope
/// is tried first: one scrypt per file in the usual case.
struct Keys {
    hostname: String,
    users: Vec<String>,
    first: std::cell::Cell<usize>,
    secret_path: PathBuf,
    secret: OnceCell<Result<MachineSecret, SecretError>>,
}

impl Keys {
    fn new(opts: &Options, layout: &Layout) -> Keys {
        Keys {
            hostname: opts.hostname.clone(),
            users: opts.users.clone(),
            first: std::cell::Cell::new(0),
            secret_path: layout.machine_secret(),
            secret: OnceCell::new(),
        }
    }

    fn open(&self, envelope: &Envelope, service: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let secret = match envelope.version() {
            envelope::Version::V1 => None,
            envelope::Version::V2 => Some(
                self.secret
                    .get_or_init(|| MachineSecret::load(&self.secret_path))
                    .as_ref()
                    .map_err(ToString::to_string)?,
            ),
        };
        let n = self.users.len();
        for i in 0..n {
            let idx = (self.first.get() + i) % n;
            let machine_id = kdf::machine_id(&self.hostname, &self.users[idx]);
            let Some(input) = kdf::kdf_input(envelope.version(), service, &machine_id, secret)
            else {
                continue;
            };
            match envelope.open(input.as_bytes()) {
                Ok(plain) => {
                    self.first.set(idx);
                    return Ok(plain);
                }
                Err(EnvelopeError::TagMismatch) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let users: Vec<String> = self.users.iter().map(|u| format!("{u:?}")).collect();
        Err(format!(
            "{} with host name {:?} and user name {}{}: written on another machine or by \
             another user (try --hostname/--user), {}or the file is damaged",
            EnvelopeError::TagMismatch,
            self.hostname,
            users.join(", "),
            if n > 1 { " (each tried)" } else { "" },
            if secret.is_some() {
                "another machine secret, "
            } else {
                ""
            }
        ))
    }
}
