//! Into and out of the `postgres` database.
//!
//! In (`--to postgres`): every token, its metadata and every API key of
//! the directory store is written to the database, sealed with the key
//! given, and read back from it; then the directory store is removed
//! (with a `keyring` store, its items in the OS keyring), or with `--keep`
//! renamed to `<store>.migrate-old`. Rerun after an interruption, it
//! copies again over what the database already holds.
//!
//! Out (`--from postgres`): the rows are copied into a new directory store
//! `<store>.migrate-new` and read back; then the rows are deleted from the
//! database (tombstones: versions only grow) unless `--keep`, and only
//! then is the new store renamed to `<store>`. The rename comes last so
//! that a rerun after an interruption finds the partial copy where it
//! left it: rows deleted by the first run are already in it, the rest are
//! copied again. `<store>` must not hold a store already: the database is
//! copied into a new one, never merged into an old one.

use std::fs;
use std::process::ExitCode;

use crate::store::{BackendName, StoreSpec};

use super::super::{Failure, emit_line, failed};
use super::plan::Plan;
use super::{
    MigrateArgs, copy_to_staging, dirs_spec, key_note, open, open_dir_source, postgres_spec,
    remove_dir_store, sibling, sync_parent,
};

/// `--to postgres` from the directory store at `spec.root`.
pub(super) fn into_database(
    a: &MigrateArgs,
    spec: &StoreSpec,
    from: Option<BackendName>,
) -> Result<ExitCode, Failure> {
    let root = &spec.root;
    let (source, about) = open_dir_source(&dirs_spec(spec), from)?;
    let plan = Plan::of(&source)?;
    if a.dry_run {
        plan.list(about.name, BackendName::Postgres);
        return Ok(ExitCode::SUCCESS);
    }
    let old = sibling(root, ".migrate-old");
    if a.keep && fs::symlink_metadata(&old).is_ok() {
        return Err(failed(format!(
            "{} exists, so the old store cannot be kept there; move it away and run again \
             (nothing was written)",
            old.display()
        )));
    }
    let (dest, dest_about) = open(&postgres_spec(spec))?;
    plan.copy(&source, &dest)?;
    drop((source, dest));
    if a.keep {
        fs::rename(root, &old).map_err(failed)?;
        sync_parent(root);
        emit_line(format_args!("the old store is kept at {}", old.display()));
    } else {
        remove_dir_store(root, spec)?;
    }
    emit_line(format_args!(
        "{}{}",
        plan.summary(about.name, BackendName::Postgres),
        key_note(&dest_about)
    ));
    Ok(ExitCode::SUCCESS)
}

/// `--from postgres` into a new directory store of backend `to` at
/// `spec.root`.
pub(super) fn out_of_database(
    a: &MigrateArgs,
    spec: &StoreSpec,
    to: BackendName,
) -> Result<ExitCode, Failure> {
    let root = &spec.root;
    let staging = sibling(root, ".migrate-new");
    if holds_anything(root) {
        return Err(failed(format!(
            "{} already holds a store: the database is copied into a new one, never \
             merged into an old one; move it away (or pass another --store) first",
            root.display()
        )));
    }
    let (source, _) = open(&postgres_spec(spec))?;
    let plan = Plan::of(&source)?;
    if a.dry_run {
        plan.list(BackendName::Postgres, to);
        return Ok(ExitCode::SUCCESS);
    }
    let (dest, dest_about) = copy_to_staging(&plan, &source, spec, &staging, to)?;
    drop(dest);
    if a.keep {
        emit_line(format_args!("the rows are kept in the database"));
    } else {
        plan.remove_from(&source)?;
    }
    fs::rename(&staging, root).map_err(failed)?;
    sync_parent(root);
    emit_line(format_args!(
        "{} at {}{}",
        plan.summary(BackendName::Postgres, to),
        root.display(),
        key_note(&dest_about)
    ));
    Ok(ExitCode::SUCCESS)
}

/// Whether anything but an empty directory is at `path` (an empty one is
/// replaced by the rename).
fn holds_anything(path: &std::path::Path) -> bool {
    match fs::symlink_metadata(path) {
        Err(_) => false,
        Ok(m) if m.is_dir() => fs::read_dir(path).map_or(true, |mut d| d.next().is_some()),
        Ok(_) => true,
    }
}
