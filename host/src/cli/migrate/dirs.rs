//! Between the directory backends (`file`, `encrypted-file`, `keyring`),
//! in place.
//!
//! The entries are copied into a new store beside the old one
//! (`<store>.migrate-new`), each read back and compared; then the old
//! store is renamed to `<store>.migrate-old`, the new one to `<store>`,
//! and the old one removed (kept with `--keep`). Interrupted, it can be
//! run again: copying again overwrites the partial new store, and a
//! rename half done is finished first. An old `keyring` store's items
//! leave the OS keyring with it (unless `--keep`).

use std::fs;
use std::process::ExitCode;

use crate::store::{BackendName, StoreSpec};

use super::super::{Failure, emit_line, failed};
use super::plan::Plan;
use super::{
    MigrateArgs, copy_to_staging, key_note, open_dir_source, remove_dir_store, sibling, sync_parent,
};

pub(super) fn run(
    a: &MigrateArgs,
    spec: &StoreSpec,
    from: Option<BackendName>,
    to: BackendName,
) -> Result<ExitCode, Failure> {
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
    let (source, about) = open_dir_source(spec, from)?;
    if about.name == to {
        if old.is_dir() && !a.keep && !a.dry_run {
            remove_dir_store(&old, spec)?;
            emit_line(format_args!("removed the old store {}", old.display()));
        }
        emit_line(format_args!(
            "the store {} is already {to}: nothing to move",
            root.display(),
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let plan = Plan::of(&source)?;
    if a.dry_run {
        plan.list(about.name, to);
        return Ok(ExitCode::SUCCESS);
    }
    let (dest, dest_about) = copy_to_staging(&plan, &source, spec, &staging, to)?;
    drop((source, dest));
    fs::rename(&root, &old).map_err(failed)?;
    fs::rename(&staging, &root).map_err(failed)?;
    sync_parent(&root);
    if a.keep {
        emit_line(format_args!("the old store is kept at {}", old.display()));
    } else {
        remove_dir_store(&old, spec)?;
    }
    emit_line(format_args!(
        "{}{}",
        plan.summary(about.name, to),
        key_note(&dest_about)
    ));
    Ok(ExitCode::SUCCESS)
}
