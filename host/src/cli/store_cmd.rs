//! The store's backend flags, the one place that turns flags and settings
//! into a [`StoreSpec`], and `credproxy store …` (init-key, migrate).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::{self, StoreSettings};
use crate::store::{BackendName, FileStore, KeySource, StoreSpec, key};

use super::args::ConfigArg;
use super::{EXIT_START, Failure, emit_line, failed};

/// The backend flags every command that opens the store takes.
#[derive(Debug, Clone, Default, Args)]
pub(super) struct BackendArgs {
    /// Store backend: auto (a new store is keyring when the OS keyring is
    /// unlocked, else encrypted-file with the key file below; an existing
    /// store keeps its backend), file (plaintext
    /// files), encrypted-file, keyring (the secrets in the OS keyring), or
    /// postgres (sealed rows in the database of $CREDPROXY_POSTGRES_URL or
    /// the file's `postgres_url_file`; needs the key below, given
    /// explicitly) [default: the file's `store_backend`, else auto]
    #[arg(long, value_name = "NAME")]
    pub store_backend: Option<BackendName>,
    /// Key file of an encrypted or postgres store (64 hex digits, mode
    /// 0600, outside the store; create one with `credproxy store init-key`) [default:
    /// the file's `store_key_file`, else $CREDPROXY_STORE_KEY_FILE, else for
    /// auto $XDG_CONFIG_HOME/credproxy/store.key]
    #[arg(long, value_name = "PATH")]
    pub store_key_file: Option<PathBuf>,
    /// Read the store key from this inherited descriptor instead of a
    /// file (the key file's text, e.g. `--store-key-fd 4 4<key`).
    #[arg(long, value_name = "N", conflicts_with = "store_key_file")]
    pub store_key_fd: Option<u32>,
}

impl BackendArgs {
    /// The flags as arguments again, for a child `credproxy stdio`.
    pub(super) fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(b) = self.store_backend {
            args.extend(["--store-backend".to_owned(), b.to_string()]);
        }
        if let Some(k) = &self.store_key_file {
            args.extend(["--store-key-file".to_owned(), k.display().to_string()]);
        }
        if let Some(fd) = self.store_key_fd {
            args.extend(["--store-key-fd".to_owned(), fd.to_string()]);
        }
        args
    }
}

/// Flags over settings (environment and file): the store to open.
pub(super) fn store_spec(
    settings: &StoreSettings,
    store_flag: Option<&PathBuf>,
    flags: &BackendArgs,
) -> Result<StoreSpec, Failure> {
    let root = match store_flag.or(settings.store.as_ref()) {
        Some(p) => p.clone(),
        None => FileStore::default_root().map_err(|e| Failure(EXIT_START, e.to_string()))?,
    };
    Ok(StoreSpec {
        root,
        backend: flags
            .store_backend
            .or(settings.store_backend)
            .unwrap_or_default(),
        key: KeySource {
            file: flags
                .store_key_file
                .clone()
                .or_else(|| settings.store_key_file.clone()),
            fd: flags.store_key_fd,
            default_file: key::default_key_file(&|n| config::process_env(n)),
        },
        probe_keyring: true,
        postgres: settings.postgres.clone(),
    })
}

#[derive(Debug, Subcommand)]
pub(super) enum StoreCmd {
    /// Create a new store key file (mode 0600) for the encrypted-file
    /// backend; never overwrites, refuses a place inside the store.
    InitKey(InitKeyArgs),
    /// Move every token, API key and metadata entry to another backend
    /// (file, encrypted-file, keyring or postgres), verifying each; stop the
    /// proxies using the store first. Rerun it if it was interrupted.
    /// `--check`: the postgres database's schema version.
    Migrate(super::migrate::MigrateArgs),
}

#[derive(Debug, Args)]
pub(super) struct InitKeyArgs {
    /// Where to create the key [default: --store-key-file's default:
    /// the file's `store_key_file`, else $CREDPROXY_STORE_KEY_FILE, else
    /// $XDG_CONFIG_HOME/credproxy/store.key]
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The store the key is for (the key file must be outside it)
    /// [default: the file's `store`, else $XDG_DATA_HOME/credproxy]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArg,
}

pub(super) fn cmd_store(c: StoreCmd) -> Result<ExitCode, Failure> {
    match c {
        StoreCmd::Migrate(a) => super::migrate::cmd_migrate(&a),
        StoreCmd::InitKey(a) => {
            let settings = config::configured_store(a.config.config.as_deref())?;
            let flags = BackendArgs {
                store_key_file: a.key_file.clone(),
                ..BackendArgs::default()
            };
            let spec = store_spec(&settings, a.store.as_ref(), &flags)?;
            let Some(path) = spec.key.file.or(spec.key.default_file) else {
                return Err(failed(
                    "no place for the key: pass --key-file PATH (neither XDG_CONFIG_HOME nor \
                     HOME is an absolute path)",
                ));
            };
            key::create_file(&path, &spec.root).map_err(failed)?;
            emit_line(format_args!(
                "created store key {} (mode 0600); keep a copy apart from the store: \
                 without it an encrypted store cannot be read",
                path.display()
            ));
            Ok(ExitCode::SUCCESS)
        }
    }
}
