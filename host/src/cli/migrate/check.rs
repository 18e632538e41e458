//! `credproxy store migrate --check`: the postgres database's schema
//! version against this build's, read without migrating anything (a
//! check must not change the database it checks) and without the data
//! key (the schema holds no secret). Exit 0 when they are the same; 1
//! when the database is behind (this build applies the migrations when it
//! next opens the store) or ahead (a newer credproxy migrated it: this
//! build refuses to use it).

use std::cmp::Ordering;
use std::process::ExitCode;

use crate::store::postgres::{self, SCHEMA_LATEST};
use crate::store::{BackendName, StoreSpec};

use super::super::{EXIT_START, EXIT_USAGE, Failure, emit_line, failed};

pub(super) fn run(spec: &StoreSpec, from: Option<BackendName>) -> Result<ExitCode, Failure> {
    let backend = from.unwrap_or(spec.backend);
    if backend != BackendName::Postgres {
        return Err(Failure(
            EXIT_USAGE,
            format!(
                "--check reports the schema of the postgres backend's database; this \
                 store's backend is {backend} (pass --store-backend postgres)"
            ),
        ));
    }
    let url = postgres::url::resolve(&|n| std::env::var_os(n), spec.postgres.url_file.as_deref())
        .map_err(|e| Failure(EXIT_START, e.to_string()))?;
    let have = postgres::peek_schema_version(&url, spec.postgres.options).map_err(failed)?;
    emit_line(format_args!("database schema version: {have}"));
    emit_line(format_args!("this build's schema version: {SCHEMA_LATEST}"));
    match have.cmp(&SCHEMA_LATEST) {
        Ordering::Equal => {
            emit_line(format_args!("the schema is current"));
            Ok(ExitCode::SUCCESS)
        }
        Ordering::Less => Err(failed(format!(
            "the database schema is behind this build's ({} migration(s) to apply); \
             credproxy applies them when it next opens the store (e.g. `credproxy status`)",
            SCHEMA_LATEST - have
        ))),
        Ordering::Greater => Err(failed(format!(
            "the database schema (version {have}) is newer than this build's \
             ({SCHEMA_LATEST}): a newer credproxy migrated it, and this one refuses to \
             use it; upgrade credproxy on this machine"
        ))),
    }
}
