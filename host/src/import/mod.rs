//! `credproxy import llxprt`: llxprt-code's stored logins and API keys into
//! credproxy's store (issue 14).
//!
//! llxprt keeps credentials in the OS keyring and, when that is off or
//! fails, in AES-256-GCM envelope files under its data directory. Both are
//! read, in llxprt's order (keyring first; a keyring entry shadows a file
//! of the same account):
//!
//! - [`from_keyring`]: the keyring entries (Secret Service, or the kernel
//!   keyring where no Secret Service answers);
//! - [`paths`]: where `<data>` is, and the files in it;
//! - [`names`]: file name ↔ account (`anthropic%3Adefault.enc`);
//! - [`envelope`]: the `.enc` format, scrypt and AES-256-GCM;
//! - [`kdf`]: the KDF input (host name, user name, machine secret — the
//!   keyring's first, then `<data>/machine_secret`);
//! - [`convert`]: plaintext → credproxy token or API key;
//! - [`write`]: the one function that writes to credproxy's store;
//! - [`report`]: what happened to each entry, as text or JSON.

pub mod convert;
pub mod envelope;
pub mod from_keyring;
pub mod kdf;
pub mod names;
pub mod paths;
pub mod report;
pub mod write;

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeSet;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::keyring::KeyringError;
use crate::store::Store;
use envelope::{Envelope, EnvelopeError};
use from_keyring::{KeyringSource, KeyringState};
use kdf::{MachineSecret, SecretError};
use names::FileKind;
use paths::{KEYS_SERVICE, Layout, MACHINE_SECRET_SERVICE, OAUTH_SERVICE};
use report::{Origin, Outcome, Report, Row};
use write::{Target, Value, Written};

/// Largest `.enc` file read (llxprt's are a few hundred bytes).
const MAX_ENC_BYTES: u64 = 1024 * 1024;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// llxprt's data directory (or a copy of it); `None` reads no files
    /// (`--keyring-only`).
    pub data: Option<PathBuf>,
    /// The keyring was asked for explicitly (`--keyring-only`).
    pub keyring_explicit: bool,
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

/// The keyring as the caller could open it.
pub enum KeyringInput<'a> {
    /// Not to be read (`--files-only`).
    NotAsked,
    /// Connected.
    Open(&'a dyn KeyringSource),
    /// No keyring could be reached: why.
    Unreachable(KeyringError),
}

/// An envelope file found in the data directory.
#[derive(Debug, Clone)]
struct Source {
    service: &'static str,
    account: String,
    path: PathBuf,
    target: Target,
}

/// Imports from the keyring and `opts.data` into `store`; every entry ends
/// up in the report. Fails only when the data directory itself cannot be
/// read. `store` is `None` only for a dry run against a store that does
/// not exist yet (which a dry run must not create): then nothing counts as
/// present.
pub fn run(
    opts: &Options,
    store: Option<&Store>,
    keyring: KeyringInput<'_>,
) -> Result<Report, String> {
    let layout = opts.data.clone().map(Layout::new);
    if let Some(layout) = &layout {
        check_data_dir(&layout.data)?;
    }
    let mut report = Report::new(opts.data.clone(), opts.dry_run);
    report.keyring_explicit = opts.keyring_explicit;
    let wanted = |service: &'static str, account: &str| match &opts.only {
        None => true,
        Some(only) => only_names(only, service, account),
    };
    let (source, found) = match keyring {
        KeyringInput::NotAsked => (None, None),
        KeyringInput::Unreachable(e) => {
            report.keyring = KeyringState::Unreachable(e.to_string());
            (None, None)
        }
        KeyringInput::Open(k) => {
            let found = from_keyring::read(k, &wanted);
            report.keyring = found.state.clone();
            let usable = matches!(found.state, KeyringState::Read { .. });
            (usable.then_some(k), Some(found))
        }
    };
    let mut sources = Vec::new();
    if let Some(layout) = &layout {
        scan(
            &layout.oauth_dir(),
            OAUTH_SERVICE,
            &mut sources,
            &mut report,
        );
        scan(&layout.keys_dir(), KEYS_SERVICE, &mut sources, &mut report);
    }
    if let Some(only) = &opts.only {
        let listed = found.as_ref().map(|f| f.listed.as_slice()).unwrap_or(&[]);
        report.unmatched_only = only
            .iter()
            .filter(|o| {
                let one = std::slice::from_ref(*o);
                !sources
                    .iter()
                    .any(|s| only_names(one, s.service, &s.account))
                    && !listed.iter().any(|(s, a)| only_names(one, s, a))
                    && !report.rows.iter().any(|r| r.matches(o))
            })
            .cloned()
            .collect();
        sources.retain(|s| wanted(s.service, &s.account));
        report.rows.retain(|r| only.iter().any(|o| r.matches(o)));
    }
    let keyring_backend = found.as_ref().map(|_| match &report.keyring {
        KeyringState::Read { backend, .. } | KeyringState::Failed { backend, .. } => *backend,
        _ => "OS keyring",
    });
    if let (Some(found), Some(backend)) = (found, keyring_backend) {
        let in_keyring: BTreeSet<(&str, String)> = found
            .items
            .iter()
            .map(|i| (i.service, i.account.clone()))
            .collect();
        sources.retain(|s| {
            if !in_keyring.contains(&(s.service, s.account.clone())) {
                return true;
            }
            report.rows.push(Row::new(
                s.service,
                &s.account,
                Origin::File(s.path.clone()),
                Some(s.target.clone()),
                Outcome::Shadowed(Origin::Keyring(backend)),
            ));
            false
        });
        for item in found.items {
            let outcome = import_entry(opts, store, &item.target, || {
                let plain = item.value.as_ref().map_err(Clone::clone)?;
                Ok((to_value(item.service, plain)?, None))
            });
            report.rows.push(Row::new(
                item.service,
                &item.account,
                Origin::Keyring(backend),
                Some(item.target.clone()),
                outcome,
            ));
        }
    }
    if let Some(layout) = &layout {
        let keys = Keys::new(opts, layout, source);
        for source in sources {
            let outcome = import_entry(opts, store, &source.target, || decrypt(&keys, &source));
            report.rows.push(Row::new(
                source.service,
                &source.account,
                Origin::File(source.path),
                Some(source.target),
                outcome,
            ));
        }
        report.notes.extend(keys.note.into_inner());
    }
    report.rows.sort_by(|a, b| {
        let rank = |r: &Row| matches!(r.origin, Origin::File(_));
        (a.service, &a.account, rank(a)).cmp(&(b.service, &b.account, rank(b)))
    });
    Ok(report)
}

/// Fails unless `dir` is a directory that can be looked at.
pub fn check_data_dir(dir: &Path) -> Result<(), String> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!(
            "no llxprt data directory at {}: {e}; name another with --from DIR (or read only \
             the OS keyring with --keyring-only)",
            dir.display()
        )),
    }
}

/// Whether one of `only` names (`service`, `account`): the provider or the
/// whole account of a token, the name of a key.
fn only_names(only: &[String], service: &str, account: &str) -> bool {
    only.iter().any(|o| {
        *o == account || (service == OAUTH_SERVICE && names::split_account(account).0 == o)
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
                Origin::File(dir.to_path_buf()),
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
                Origin::File(path),
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
                Origin::File(path),
                None,
                Outcome::Shadowed(Origin::File(by.clone())),
            ));
            continue;
        }
        last = Some((account.clone(), path.clone()));
        let target = from_keyring::target_of(service, &account);
        out.push(Source {
            service,
            account,
            path,
            target,
        });
    }
}

/// Imports one entry whose value `get` produces (with its envelope
/// version, `None` from the keyring), unless credproxy has it already.
fn import_entry(
    opts: &Options,
    store: Option<&Store>,
    target: &Target,
    get: impl FnOnce() -> Result<(Value, Option<u8>), String>,
) -> Outcome {
    let present = match write::exists(store, target) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("credproxy cannot store it: {e}")),
    };
    if present && !opts.overwrite {
        return Outcome::Exists;
    }
    let (value, version) = match get() {
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
    match write::store_entry(store, target, &value, opts.overwrite) {
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

/// llxprt's plaintext of `service` as what credproxy stores.
fn to_value(service: &str, plaintext: &[u8]) -> Result<Value, String> {
    if service == OAUTH_SERVICE {
        Ok(Value::Token(
            convert::token(plaintext).map_err(|e| e.to_string())?,
        ))
    } else {
        Ok(Value::ApiKey(
            convert::api_key(plaintext).map_err(|e| e.to_string())?,
        ))
    }
}

fn decrypt(keys: &Keys<'_>, s: &Source) -> Result<(Value, Option<u8>), String> {
    let bytes = read_limited(&s.path)?;
    let envelope = Envelope::parse(&bytes).map_err(|e| e.to_string())?;
    let plaintext = keys.open(&envelope, s.service)?;
    let value = to_value(s.service, &plaintext)?;
    Ok((value, Some(envelope.version().number())))
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

/// Where the machine secret in the keyring is, as shown in messages.
const KEYRING_SECRET_NAME: &str = "the keyring entry llxprt-code-machine-secret/default";

/// The identity candidates and the machine secrets (each read once, when a
/// v2 envelope first needs it): the keyring's first, then
/// `<data>/machine_secret`, as llxprt looks them up. The user name and
/// secret that opened the last envelope are tried first: one scrypt per
/// file in the usual case.
struct Keys<'k> {
    hostname: String,
    users: Vec<String>,
    first: Cell<usize>,
    secret_path: PathBuf,
    secret: OnceCell<Result<MachineSecret, SecretError>>,
    keyring: Option<&'k dyn KeyringSource>,
    keyring_secret: OnceCell<Option<MachineSecret>>,
    /// Index into the candidate secrets that worked last.
    first_secret: Cell<usize>,
    /// Why the keyring's secret could not be used, when it exists but fails.
    note: RefCell<Option<String>>,
}

impl<'k> Keys<'k> {
    fn new(opts: &Options, layout: &Layout, keyring: Option<&'k dyn KeyringSource>) -> Keys<'k> {
        Keys {
            hostname: opts.hostname.clone(),
            users: opts.users.clone(),
            first: Cell::new(0),
            secret_path: layout.machine_secret(),
            secret: OnceCell::new(),
            keyring,
            keyring_secret: OnceCell::new(),
            first_secret: Cell::new(0),
            note: RefCell::new(None),
        }
    }

    fn keyring_secret(&self) -> Option<&MachineSecret> {
        self.keyring_secret
            .get_or_init(|| {
                let keyring = self.keyring?;
                let failed = |why: String| {
                    *self.note.borrow_mut() = Some(format!(
                        "{KEYRING_SECRET_NAME} could not be used ({why}); v2 files were \
                         opened with {} only",
                        self.secret_path.display()
                    ));
                    None
                };
                match keyring.get(MACHINE_SECRET_SERVICE, "default") {
                    Ok(Some(text)) => {
                        match MachineSecret::from_base64(&text, KEYRING_SECRET_NAME) {
                            Ok(secret) => Some(secret),
                            Err(e) => failed(e.to_string()),
                        }
                    }
                    Ok(None) | Err(KeyringError::NotFound { .. }) => None,
                    Err(e) => failed(e.to_string()),
                }
            })
            .as_ref()
    }

    /// The machine secrets to try for a v2 envelope, in llxprt's order.
    fn secrets(&self) -> Result<Vec<(&'static str, &MachineSecret)>, String> {
        let mut out = Vec::new();
        if let Some(s) = self.keyring_secret() {
            out.push((KEYRING_SECRET_NAME, s));
        }
        match self
            .secret
            .get_or_init(|| MachineSecret::load(&self.secret_path))
        {
            Ok(s) => out.push(("<data>/machine_secret", s)),
            Err(e) if out.is_empty() => return Err(e.to_string()),
            Err(_) => {}
        }
        Ok(out)
    }

    fn open(&self, envelope: &Envelope, service: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let secrets: Vec<(&str, Option<&MachineSecret>)> = match envelope.version() {
            envelope::Version::V1 => vec![("", None)],
            envelope::Version::V2 => self
                .secrets()?
                .into_iter()
                .map(|(name, s)| (name, Some(s)))
                .collect(),
        };
        let n = self.users.len();
        let m = secrets.len();
        for j in 0..m {
            let sidx = (self.first_secret.get() + j) % m;
            let secret = secrets[sidx].1;
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
                        self.first_secret.set(sidx);
                        return Ok(plain);
                    }
                    Err(EnvelopeError::TagMismatch) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        let users: Vec<String> = self.users.iter().map(|u| format!("{u:?}")).collect();
        let tried_secrets = match envelope.version() {
            envelope::Version::V1 => String::new(),
            envelope::Version::V2 => {
                let names: Vec<&str> = secrets.iter().map(|(n, _)| *n).collect();
                format!("another machine secret (tried {}), ", names.join(" and "))
            }
        };
        Err(format!(
            "{} with host name {:?} and user name {}{}: written on another machine or by \
             another user (try --hostname/--user), {tried_secrets}or the file is damaged",
            EnvelopeError::TagMismatch,
            self.hostname,
            users.join(", "),
            if n > 1 { " (each tried)" } else { "" },
        ))
    }
}

#[cfg(test)]
mod tests;
