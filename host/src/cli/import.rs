//! `credproxy import llxprt`: llxprt-code's logins and API keys into the
//! store (see [`crate::import`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use crate::import::{self, Options, kdf, paths};

use super::{EXIT_FAILED, Failure, StoreOnly, emit, emit_line, open_store_cli, store_root_cli};

/// Exit status when at least one entry could not be imported.
const EXIT_SKIPPED: u8 = 4;

/// The exit statuses of `import` (one text for both help pages).
macro_rules! import_exit_help {
    () => {
        "\
Exit status: 0 every entry found was imported or is already in credproxy; 1 the llxprt
data directory could not be read; 2 bad usage; 3 could not start (invalid configuration
file, unusable store directory); 4 some entry was skipped because of an error (each is
listed with its reason; the others were imported)."
    };
}

pub(super) const IMPORT_EXIT_HELP: &str = import_exit_help!();

const LLXPRT_HELP: &str = concat!(
    "\
Reads llxprt-code's encrypted credential files (<data>/secure-store/llxprt-code-oauth/*.enc
and <data>/provider-keys/*.enc, envelope versions 1 and 2) and stores each OAuth token under
its provider and bucket and each API key under its name. <data> is --from, else
$LLXPRT_DATA_HOME, else $LLXPRT_CONFIG_HOME, else $XDG_DATA_HOME/llxprt-code or
~/.local/share/llxprt-code. The files are keyed to the host name and user name that wrote
them (and, for v2, to <data>/machine_secret): for a directory copied from another machine
give --hostname and --user. Entries credproxy already has are kept unless --overwrite; a
second run imports nothing. llxprt's OS keyring entries are not read by this version.

",
    import_exit_help!()
);

#[derive(Debug, Subcommand)]
pub(super) enum ImportCmd {
    /// Import llxprt-code's stored OAuth logins and API keys (its encrypted
    /// files; not its OS keyring entries). Prints no secret.
    #[command(after_help = LLXPRT_HELP)]
    Llxprt(LlxprtArgs),
}

#[derive(Debug, Args)]
pub(super) struct LlxprtArgs {
    /// llxprt's data directory, or a copy of it [default: $LLXPRT_DATA_HOME,
    /// else $LLXPRT_CONFIG_HOME, else $XDG_DATA_HOME/llxprt-code or
    /// ~/.local/share/llxprt-code]
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// List what would be imported (provider and bucket or key name,
    /// expiry, whether a refresh token is there); write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Import only these providers, provider:bucket accounts or API key
    /// names (comma-separated).
    #[arg(long, value_name = "NAME,…", value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Replace tokens and keys credproxy already has.
    #[arg(long)]
    overwrite: bool,
    /// Host name the files were written on [default: this system's]
    #[arg(long, value_name = "H")]
    hostname: Option<String>,
    /// User name the files were written by [default: try $USER, the
    /// account name of this user and `unknown`]
    #[arg(long, value_name = "U")]
    user: Option<String>,
    #[command(flatten)]
    store: StoreOnly,
}

pub(super) fn cmd_import(c: ImportCmd) -> Result<ExitCode, Failure> {
    match c {
        ImportCmd::Llxprt(a) => cmd_llxprt(&a),
    }
}

fn cmd_llxprt(a: &LlxprtArgs) -> Result<ExitCode, Failure> {
    let data = match &a.from {
        Some(dir) => dir.clone(),
        None => paths::data_dir(&paths::DataEnv::from_process())
            .map_err(|e| Failure(EXIT_FAILED, e.to_string()))?,
    };
    let hostname = match &a.hostname {
        Some(h) => h.clone(),
        None => kdf::system_hostname().map_err(|e| Failure(EXIT_FAILED, e))?,
    };
    let env_user = std::env::var("USER").ok();
    let passwd = kdf::passwd_name();
    let users = kdf::user_candidates(a.user.as_deref(), env_user.as_deref(), passwd.as_deref());
    let opts = Options {
        data,
        dry_run: a.dry_run,
        only: a.only.clone(),
        overwrite: a.overwrite,
        hostname,
        users,
    };
    let root = store_root_cli(&a.store)?;
    // A dry run writes nothing, not even a new empty store.
    let store = if a.dry_run && std::fs::symlink_metadata(&root).is_err() {
        None
    } else {
        Some(open_store_cli(&a.store)?.0)
    };
    let report = import::run(&opts, store.as_ref()).map_err(|e| Failure(EXIT_FAILED, e))?;
    if a.store.json {
        emit_line(format_args!("{}", report.to_json()));
    } else {
        emit(&report.to_text(SystemTime::now()));
    }
    eprintln!(
        "credproxy: note: llxprt's OS keyring entries (services {}, {} and {}) are not read \
         by this version; only the encrypted files under {} were looked at. A login llxprt \
         keeps only in the keyring needs `credproxy login PROVIDER` (or `credproxy key set`).",
        paths::OAUTH_SERVICE,
        paths::KEYS_SERVICE,
        paths::MACHINE_SECRET_SERVICE,
        opts.data.display()
    );
    Ok(if report.failures() > 0 {
        ExitCode::from(EXIT_SKIPPED)
    } else {
        ExitCode::SUCCESS
    })
}
