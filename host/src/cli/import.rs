//! `credproxy import llxprt`: llxprt-code's logins and API keys into the
//! store (see [`crate::import`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use crate::import::{self, KeyringInput, Options, kdf, paths};
use crate::keyring::{Keyring, KeyringError};

use super::{EXIT_FAILED, Failure, StoreOnly, emit, emit_line, open_store_cli, store_root_cli};

/// Exit status when at least one entry (or the keyring) was skipped.
const EXIT_SKIPPED: u8 = 4;

/// How long to wait for the OS keyring to answer when connecting (no
/// Secret Service is then looked for any longer; the kernel keyring is
/// tried). Each later call has the keyring module's own limit.
const KEYRING_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exit statuses of `import` (one text for both help pages).
macro_rules! import_exit_help {
    () => {
        "\
Exit status: 0 every entry found was imported or is already in credproxy; 1 the llxprt
data directory could not be read (a missing default one is only a note when a keyring
answers); 2 bad usage; 3 could not start (invalid configuration
file, unusable store directory); 4 some entry was skipped because of an error (each is
listed with its reason; the others were imported), or the OS keyring answered but could
not be read (locked, stalled), or --keyring-only found no keyring at all. With the
default sources, no reachable keyring (a headless machine) is only a note: exit 0."
    };
}

pub(super) const IMPORT_EXIT_HELP: &str = import_exit_help!();

const LLXPRT_HELP: &str = concat!(
    "\
Reads what llxprt-code stored, in llxprt's own order: first its OS keyring entries (the
Secret Service on the session bus, or the kernel keyring where no Secret Service answers;
services llxprt-code-oauth and llxprt-code-provider-keys), then its encrypted files
(<data>/secure-store/llxprt-code-oauth/*.enc and <data>/provider-keys/*.enc, envelope
versions 1 and 2). Each OAuth token is stored under its provider and bucket, each API key
under its name. A file whose account the keyring holds too is ignored (llxprt reads the
keyring one), and the report says so. <data> is --from, else $LLXPRT_DATA_HOME, else
$LLXPRT_CONFIG_HOME, else $XDG_DATA_HOME/llxprt-code or ~/.local/share/llxprt-code. The
files are keyed to the host name and user name that wrote them (and, for v2, to llxprt's
machine secret: the keyring's llxprt-code-machine-secret entry is tried first, then
<data>/machine_secret): for a directory copied from another machine give --hostname and
--user. Keyring calls are bounded in time: a Secret Service that does not answer within
5 s counts as none (the kernel keyring is read instead, with a note), and a locked
keyring is reported, not waited for.
Entries credproxy already has are kept unless --overwrite; a second run imports nothing.

",
    import_exit_help!()
);

#[derive(Debug, Subcommand)]
pub(super) enum ImportCmd {
    /// Import llxprt-code's stored OAuth logins and API keys (its OS
    /// keyring entries and its encrypted files). Prints no secret.
    #[command(after_help = LLXPRT_HELP)]
    Llxprt(LlxprtArgs),
}

#[derive(Debug, Args)]
pub(super) struct LlxprtArgs {
    /// llxprt's data directory, or a copy of it [default: $LLXPRT_DATA_HOME,
    /// else $LLXPRT_CONFIG_HOME, else $XDG_DATA_HOME/llxprt-code or
    /// ~/.local/share/llxprt-code]
    #[arg(long, value_name = "DIR", conflicts_with = "keyring_only")]
    from: Option<PathBuf>,
    /// Read only llxprt's OS keyring entries, no files; a keyring that
    /// cannot be read is then exit status 4.
    #[arg(long, conflicts_with = "files_only")]
    keyring_only: bool,
    /// Read only llxprt's encrypted files; the OS keyring (and the session
    /// bus) is not touched.
    #[arg(long)]
    files_only: bool,
    /// List what would be imported (provider and bucket or key name,
    /// expiry, whether a refresh token is there, and where it was found:
    /// the keyring or a file's envelope version); write nothing.
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

/// The keyring llxprt's library would have written to: the Secret Service
/// if it answers within [`KEYRING_CONNECT_TIMEOUT`], else (Linux) the
/// kernel keyring, with a note saying why no Secret Service was read.
fn open_keyring() -> (Result<Keyring, KeyringError>, Option<String>) {
    #[cfg(target_os = "linux")]
    {
        match Keyring::open(KEYRING_CONNECT_TIMEOUT) {
            Err(KeyringError::Unavailable(why)) => match Keyring::kernel() {
                Ok(k) => (
                    Ok(k),
                    Some(format!(
                        "no Secret Service was read ({why}); the kernel keyring was read instead"
                    )),
                ),
                Err(e) => (
                    Err(KeyringError::Unavailable(format!(
                        "{why}; and the kernel keyring: {e}"
                    ))),
                    None,
                ),
            },
            other => (other, None),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        (Keyring::open_for_reading(KEYRING_CONNECT_TIMEOUT), None)
    }
}

pub(super) fn cmd_import(c: ImportCmd) -> Result<ExitCode, Failure> {
    match c {
        ImportCmd::Llxprt(a) => cmd_llxprt(&a),
    }
}

fn cmd_llxprt(a: &LlxprtArgs) -> Result<ExitCode, Failure> {
    let data = match (&a.from, a.keyring_only) {
        (_, true) => None,
        (Some(dir), false) => Some(dir.clone()),
        (None, false) => Some(
            paths::data_dir(&paths::DataEnv::from_process())
                .map_err(|e| Failure(EXIT_FAILED, e.to_string()))?,
        ),
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
        keyring_explicit: a.keyring_only,
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
    // The data directory is checked before the keyring is touched. The
    // default one may be missing where llxprt keeps everything in the
    // keyring: then the keyring alone is read, if there is one.
    let mut opts = opts;
    let mut missing_default = None;
    if let Some(dir) = &opts.data
        && let Err(e) = import::check_data_dir(dir)
    {
        let absent =
            matches!(std::fs::metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        if a.from.is_some() || a.files_only || !absent {
            return Err(Failure(EXIT_FAILED, e));
        }
        missing_default = Some((dir.clone(), e));
        opts.data = None;
    }
    let (keyring, note) = if a.files_only {
        (None, None)
    } else {
        let (k, note) = open_keyring();
        (Some(k), note)
    };
    if let (Some((_, missing)), Some(Err(why))) = (&missing_default, &keyring) {
        return Err(Failure(EXIT_FAILED, format!("{missing}; and {why}")));
    }
    let note = note.into_iter().chain(missing_default.map(|(dir, _)| {
        format!(
            "no llxprt data directory at {} (name one with --from DIR): only the keyring was read",
            dir.display()
        )
    }));
    let input = match &keyring {
        None => KeyringInput::NotAsked,
        Some(Ok(k)) => KeyringInput::Open(k),
        Some(Err(e)) => KeyringInput::Unreachable(e.clone()),
    };
    let mut report =
        import::run(&opts, store.as_ref(), input).map_err(|e| Failure(EXIT_FAILED, e))?;
    report.notes.splice(0..0, note);
    if a.store.json {
        emit_line(format_args!("{}", report.to_json()));
    } else {
        emit(&report.to_text(SystemTime::now()));
    }
    Ok(if report.anything_skipped() {
        ExitCode::from(EXIT_SKIPPED)
    } else {
        ExitCode::SUCCESS
    })
}
