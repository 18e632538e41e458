//! `credproxy store migrate`: moves a store between backends, or with
//! `--check` reports the postgres database's schema version.
//!
//! - [`dirs`]: between the directory backends (`file`, `encrypted-file`,
//!   `keyring`), in place through `<store>.migrate-new`.
//! - [`postgres`]: from a directory store into the `postgres` database and
//!   back out of it into a new directory store.
//! - [`plan`]: the entries of a source store, copied and verified one by
//!   one whatever the two backends are.
//! - [`check`]: `--check`, the schema version of the database against this
//!   build's, read without changing anything.
//!
//! Every move copies first, reads each entry back from the target and
//! compares, and only then removes the source (unless `--keep`); an
//! interrupted run can be run again: copying again overwrites, and nothing
//! was removed before everything was verified. Proxies using the store
//! must be stopped first.

mod check;
mod dirs;
mod plan;
mod postgres;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::config;
use crate::store::{Backend, BackendName, Store, StoreSpec, keyring_key};

use super::args::ConfigArg;
use super::store_cmd::{BackendArgs, store_spec};
use super::{EXIT_START, EXIT_USAGE, Failure, failed};

#[derive(Debug, Args)]
pub(super) struct MigrateArgs {
    /// The backend the store is in now [default: what --store-backend
    /// (or the file's `store_backend`, else auto) finds]
    #[arg(long, value_name = "NAME")]
    from: Option<BackendName>,
    /// The backend to move it to: file, keyring, encrypted-file (its key:
    /// the --store-key-file/--store-key-fd given, else
    /// $XDG_CONFIG_HOME/credproxy/store.key, created when missing) or
    /// postgres (the database of CREDPROXY_POSTGRES_URL or
    /// postgres_url_file, sealed with the key given).
    #[arg(long, value_name = "NAME", required_unless_present = "check")]
    to: Option<BackendName>,
    /// Keep the old store: a directory store renamed to
    /// <store>.migrate-old, the database's rows left in place.
    #[arg(long, conflicts_with = "check")]
    keep: bool,
    /// Only list what would be moved (names, never values).
    #[arg(long, conflicts_with = "check")]
    dry_run: bool,
    /// Move nothing: print the postgres database's schema version and this
    /// build's; exit 0 when they are the same, 1 otherwise.
    #[arg(long, conflicts_with = "to")]
    check: bool,
    /// Store directory [default: the configuration file's `store`, else
    /// $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    config: ConfigArg,
}

pub(super) fn cmd_migrate(a: &MigrateArgs) -> Result<ExitCode, Failure> {
    let settings = config::configured_store(a.config.config.as_deref())?;
    let spec = store_spec(&settings, a.store.as_ref(), &a.backend)?;
    let from = a.from.filter(|f| *f != BackendName::Auto);
    if a.check {
        return check::run(&spec, from);
    }
    let to = match a.to {
        Some(BackendName::Auto) | None => {
            return Err(Failure(
                EXIT_USAGE,
                "--to takes file, encrypted-file, keyring or postgres".to_owned(),
            ));
        }
        Some(to) => to,
    };
    let from_postgres = from.unwrap_or(spec.backend) == BackendName::Postgres;
    match (from_postgres, to) {
        (true, BackendName::Postgres) => {
            super::emit_line(format_args!(
                "the store is already postgres: nothing to move (to move a directory \
                 store into the database, pass --from file, encrypted-file or keyring)"
            ));
            Ok(ExitCode::SUCCESS)
        }
        (true, to) => postgres::out_of_database(a, &spec, to),
        (false, BackendName::Postgres) => postgres::into_database(a, &spec, from),
        (false, to) => dirs::run(a, &dirs_spec(&spec), from, to),
    }
}

/// `spec` for opening its directory store: a configured `postgres` backend
/// (the move's other side) becomes `auto`, which finds what the directory
/// holds.
fn dirs_spec(spec: &StoreSpec) -> StoreSpec {
    let mut dirs = spec.clone();
    if dirs.backend == BackendName::Postgres {
        dirs.backend = BackendName::Auto;
    }
    dirs
}

/// `spec` for opening the database.
fn postgres_spec(spec: &StoreSpec) -> StoreSpec {
    StoreSpec {
        backend: BackendName::Postgres,
        ..spec.clone()
    }
}

/// Opens the store `spec` names; a notice (a key file was created) goes to
/// stderr.
fn open(spec: &StoreSpec) -> Result<(Store, Backend), Failure> {
    let (store, about) = Store::open(spec).map_err(|e| Failure(EXIT_START, e.to_string()))?;
    if let Some(notice) = &about.notice {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "credproxy: notice: {notice}");
    }
    Ok((store, about))
}

/// Opens the existing directory store at `spec.root` as the source,
/// refusing one that is not `from` (when given).
fn open_dir_source(
    spec: &StoreSpec,
    from: Option<BackendName>,
) -> Result<(Store, Backend), Failure> {
    let root = &spec.root;
    if fs::symlink_metadata(root).is_err() {
        let old = sibling(root, ".migrate-old");
        let kept = if old.is_dir() {
            format!(
                " ({} holds a store an earlier migration kept)",
                old.display()
            )
        } else {
            String::new()
        };
        return Err(failed(format!("no store at {}{kept}", root.display())));
    }
    let (source, about) = open(spec)?;
    if let Some(from) = from.filter(|f| *f != about.name) {
        return Err(failed(format!(
            "the store {} is {}, not {from}",
            root.display(),
            about.name
        )));
    }
    Ok((source, about))
}

/// The spec of a new directory store at `root` of backend `to`: for
/// `encrypted-file` the key given, else the default one (made if missing),
/// as `auto` does for a new store.
fn dir_target(spec: &StoreSpec, root: PathBuf, to: BackendName) -> StoreSpec {
    StoreSpec {
        root,
        backend: match to {
            BackendName::File => BackendName::File,
            BackendName::Keyring => BackendName::Keyring,
            _ => BackendName::Auto,
        },
        key: spec.key.clone(),
        probe_keyring: false,
        postgres: spec.postgres.clone(),
    }
}

/// `<store>` with `suffix` appended to its last component.
/// Opens a new directory store of backend `to` at `staging` and copies
/// `plan`'s entries from `source` into it, each read back.
fn copy_to_staging(
    plan: &plan::Plan,
    source: &Store,
    spec: &StoreSpec,
    staging: &Path,
    to: BackendName,
) -> Result<(Store, Backend), Failure> {
    let (dest, dest_about) = open(&dir_target(spec, staging.to_owned(), to))?;
    if dest_about.name != to {
        return Err(failed(format!(
            "{} holds a store that is not {to}; remove it and run again",
            staging.display(),
        )));
    }
    plan.copy(source, &dest)?;
    Ok((dest, dest_about))
}

fn sibling(root: &Path, suffix: &str) -> PathBuf {
    let mut name = root.file_name().map(OsString::from).unwrap_or_default();
    name.push(suffix);
    root.with_file_name(name)
}

/// Makes the renames in `root`'s parent durable.
fn sync_parent(root: &Path) {
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
}

/// Removes the directory store `old`; first, for a keyring store, its
/// items in the OS keyring (each stamp, then its item, so a rerun after an
/// interruption finds what is left); last, the keyring item of an
/// encrypted-file store's key.
fn remove_dir_store(old: &Path, spec: &StoreSpec) -> Result<(), Failure> {
    if fs::symlink_metadata(old.join("keyring.check")).is_ok() {
        let spec = StoreSpec {
            root: old.to_owned(),
            backend: BackendName::Keyring,
            ..spec.clone()
        };
        let (store, _) = open(&spec)?;
        plan::Plan::of(&store)?.remove_from(&store)?;
    }
    // An encrypted-file store's key kept in the keyring goes with it
    // (after the files: a rerun still opens what is left).
    let key_item = keyring_key::recorded_account(old).map_err(failed)?;
    fs::remove_dir_all(old).map_err(failed)?;
    if let Some(account) = key_item
        && let Err(e) = keyring_key::forget(&account)
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "credproxy: notice: the old store is removed, but not its key in the OS \
             keyring (service credproxy, account {account}): {e}"
        );
    }
    Ok(())
}

/// ` (key file …)` after a backend's name in the summary, if it has one.
fn key_note(about: &Backend) -> String {
    about
        .key
        .as_ref()
        .map(|k| format!(" ({k})"))
        .unwrap_or_default()
}
