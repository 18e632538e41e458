//! `credproxy store migrate`: moves a store between the `file`,
//! `encrypted-file` and `keyring` backends in place.
//!
//! The entries are copied into a new store beside the old one
//! (`<store>.migrate-new`), each read back and compared; then the old
//! store is renamed to `<store>.migrate-old`, the new one to `<store>`,
//! and the old one removed (kept with `--keep`). Interrupted, it can be
//! run again: copying again overwrites the partial new store, and a
//! rename half done is finished first. Nothing is removed before every
//! entry was verified. Proxies using the store must be stopped first.
//! An old `keyring` store's items leave the OS keyring with it (unless
//! `--keep`).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::config;
use crate::store::{BackendName, Store, StoreSpec};

use super::args::ConfigArg;
use super::store_cmd::{BackendArgs, store_spec};
use super::{EXIT_START, Failure, emit_line, failed};

#[derive(Debug, Args)]
pub(super) struct MigrateArgs {
    /// The backend the store is in now [default: what --store-backend
    /// (or the file's `store_backend`, else auto) finds]
    #[arg(long, value_name = "NAME")]
    from: Option<BackendName>,
    /// The backend to move it to: file, keyring or encrypted-file (its key: the
    /// --store-key-file/--store-key-fd given, else
    /// $XDG_CONFIG_HOME/credproxy/store.key, created when missing).
    #[arg(long, value_name = "NAME")]
    to: BackendName,
    /// Keep the old store, renamed to <store>.migrate-old.
    #[arg(long)]
    keep: bool,
    /// Only list what would be moved (names, never values).
    #[arg(long)]
    dry_run: bool,
    /// Store directory [default: the configuration file's `store`, else
    /// $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    config: ConfigArg,
}

/// `<store>` with `suffix` appended to its last component.
fn sibling(root: &Path, suffix: &str) -> PathBuf {
    let mut name = root.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    root.with_file_name(name)
}

fn sync_parent(root: &Path) {
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

pub(super) fn cmd_migrate(a: &MigrateArgs) -> Result<ExitCode, Failure> {
    if a.to == BackendName::Auto {
        return Err(Failure(
            super::EXIT_USAGE,
            "--to takes file, encrypted-file or keyring".to_owned(),
        ));
    }
    let settings = config::configured_store(a.config.config.as_deref())?;
    let spec = store_spec(&settings, a.store.as_ref(), &a.backend)?;
    let root = spec.root.clone();
    let staging = sibling(&root, ".migrate-new");
    let old = sibling(&root, ".migrate-old");
    // A run interrupted between its two renames: finish it.
    if fs::symlink_metadata(&root).is_err() && staging.is_dir() && old.is_dir() {
        fs::rename(&staging, &root).map_err(failed)?;
        sync_parent(&root);
        emit_line(format_args!(
            "finished an interrupted migration: {} is the new store",
            root.display()
        ));
    }
    if fs::symlink_metadata(&root).is_err() {
        return Err(failed(format!("no store at {}", root.display())));
    }
    let (source, about) = Store::open(&spec).map_err(|e| Failure(EXIT_START, e.to_string()))?;
    if let Some(from) = a
        .from
        .filter(|f| *f != BackendName::Auto && *f != about.name)
    {
        return Err(failed(format!(
            "the store {} is {}, not {from}",
            root.display(),
            about.name
        )));
    }
    if about.name == a.to {
        if old.is_dir() && !a.keep && !a.dry_run {
            remove_old(&old, &spec)?;
            emit_line(format_args!("removed the old store {}", old.display()));
        }
        emit_line(format_args!(
            "the store {} is already {}: nothing to move",
            root.display(),
            a.to
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let plan = Plan::of(&source)?;
    if a.dry_run {
        for (p, b) in &plan.tokens {
            emit_line(format_args!("token {p}/{b}"));
        }
        for k in &plan.keys {
            emit_line(format_args!("API key {k}"));
        }
        emit_line(format_args!(
            "would move {} tokens and {} API keys from {} to {} (dry run: nothing written)",
            plan.tokens.len(),
            plan.keys.len(),
            about.name,
            a.to
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let target = StoreSpec {
        root: staging.clone(),
        // encrypted-file: the key given, else the default one (made if
        // missing), as `auto` does for a new store.
        backend: match a.to {
            BackendName::File => BackendName::File,
            BackendName::Keyring => BackendName::Keyring,
            _ => BackendName::Auto,
        },
        key: spec.key.clone(),
        probe_keyring: false,
        postgres: spec.postgres.clone(),
    };
    let (dest, dest_about) =
        Store::open(&target).map_err(|e| Failure(EXIT_START, e.to_string()))?;
    if let Some(notice) = &dest_about.notice {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "credproxy: notice: {notice}");
    }
    if dest_about.name != a.to {
        return Err(failed(format!(
            "{} holds a store that is not {}; remove it and run again",
            staging.display(),
            a.to
        )));
    }
    plan.copy(&source, &dest)?;
    drop((source, dest));
    fs::rename(&root, &old).map_err(failed)?;
    fs::rename(&staging, &root).map_err(failed)?;
    sync_parent(&root);
    if a.keep {
        emit_line(format_args!("the old store is kept at {}", old.display()));
    } else {
        remove_old(&old, &spec)?;
    }
    emit_line(format_args!(
        "moved {} tokens and {} API keys from {} to {}{}",
        plan.tokens.len(),
        plan.keys.len(),
        about.name,
        a.to,
        dest_about
            .key
            .map(|k| format!(" ({k})"))
            .unwrap_or_default()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Removes the old store `old`; first, for a keyring store, its items in
/// the OS keyring (each stamp, then its item, so a rerun after an
/// interruption finds what is left).
fn remove_old(old: &Path, spec: &StoreSpec) -> Result<(), Failure> {
    if fs::symlink_metadata(old.join("keyring.check")).is_ok() {
        let spec = StoreSpec {
            root: old.to_owned(),
            backend: BackendName::Keyring,
            key: spec.key.clone(),
            probe_keyring: false,
            postgres: spec.postgres.clone(),
        };
        let (store, _) = Store::open(&spec).map_err(|e| Failure(EXIT_START, e.to_string()))?;
        let plan = Plan::of(&store)?;
        for (p, b) in &plan.tokens {
            store.delete_token(p, b).map_err(failed)?;
        }
        for k in &plan.keys {
            store.remove_api_key(k).map_err(failed)?;
        }
    }
    fs::remove_dir_all(old).map_err(failed)
}

/// Every entry of the source store.
struct Plan {
    tokens: Vec<(String, String)>,
    keys: Vec<String>,
}

impl Plan {
    fn of(store: &Store) -> Result<Plan, Failure> {
        let mut tokens = Vec::new();
        for p in store.list_providers().map_err(failed)? {
            for b in store.list_buckets(&p).map_err(failed)? {
                tokens.push((p.clone(), b));
            }
        }
        let keys = store.list_api_keys().map_err(failed)?;
        Ok(Plan { tokens, keys })
    }

    /// Copies every entry, reading each back from `dest` and comparing.
    /// The first entry that cannot be read, written or verified stops the
    /// migration (the source untouched).
    fn copy(&self, source: &Store, dest: &Store) -> Result<(), Failure> {
        let mismatch = |what: String| failed(format!("{what} read back differently; stopped"));
        for (p, b) in &self.tokens {
            let Some(token) = source.get_token(p, b, true).map_err(failed)? else {
                continue;
            };
            let meta = source.get_meta(p, b).map_err(failed)?;
            dest.put_token(p, b, &token).map_err(failed)?;
            dest.put_meta(p, b, &meta).map_err(failed)?;
            if dest.get_token(p, b, true).map_err(failed)?.as_ref() != Some(&token)
                || dest.get_meta(p, b).map_err(failed)? != meta
            {
                return Err(mismatch(format!("token {p}/{b}")));
            }
        }
        for k in &self.keys {
            let Some(value) = source.get_api_key(k).map_err(failed)? else {
                continue;
            };
            dest.set_api_key(k, &value).map_err(failed)?;
            let back = dest.get_api_key(k).map_err(failed)?;
            if back.as_ref().map(credproxy_core::Secret::expose) != Some(value.expose()) {
                return Err(mismatch(format!("API key {k}")));
            }
        }
        Ok(())
    }
}
