//! The `credproxy` command line (SPEC §8).
//!
//! Commands: `serve`, `exec`, `stdio` (run the proxy), `login` (host-side
//! OAuth login), `call` (a debug client), `providers` (the configured
//! providers), `key`, `logout`, `status` and `import` (the store). Options come from
//! the configuration file ([`crate::config`]) and from flags; a flag wins
//! over the file only when it is given.
//!
//! Exit codes: `0` success; `1` an operation failed (the message says why:
//! an error reply, no connection to the proxy, a failed login); `2` bad
//! usage (from the argument parser, or a `call` payload that is not a JSON
//! object); `3` the proxy or the store could not start (configuration file
//! invalid, a directory others could write to, socket in use, path too long, …); `exec`
//! exits with its command's status (128 + signal number when the command
//! was killed). `login` exits `0` when logged in, `1` on any failure
//! (configuration included) and `2` on bad usage. `stdio` exits `1` when
//! its connection ended by a framing fault (the client sent an invalid
//! frame), `0` when stdin reached its end. `status` exits `0` with corrupt
//! token files listed, `1` with `--strict`. `import llxprt` exits `4` when
//! some entry was skipped because of an error (listed with its reason; the
//! others were imported).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use credproxy_unix::ShutdownSignals;

use crate::audit_log::AuditLog;
use crate::config::{self, LimitsArgs, PolicyArgs, Settings, SettingsError};
use crate::harden::harden;
use crate::serve::{self, Placement, ServeOptions, StartError};
use crate::store::{Backend, Store};

mod call;
mod conn;
mod exec;
mod fd3;
mod import;
mod keys;
mod login;
mod migrate;
mod providers;
mod status;
mod store_cmd;

use call::cmd_call;
use exec::cmd_exec;
use import::{ImportCmd, cmd_import};
use keys::{cmd_key, cmd_logout};
use login::cmd_login;
use providers::cmd_providers;
use status::cmd_status;
use store_cmd::{BackendArgs, StoreCmd, cmd_store, store_spec};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_START: u8 = 3;

const EXIT_HELP: &str = "\
Exit status: 0 success; 1 the operation failed (the message says why); 2 bad usage;
3 could not start (invalid configuration file, unusable store or socket directory).";

const EXEC_EXIT_HELP: &str = "\
Usage: credproxy exec [OPTIONS] [--] CMD [ARGS]...; `--` is needed only when CMD starts
with `-`. CMD gets CREDPROXY_SOCKET, LLXPRT_CREDENTIAL_SOCKET, CREDPROXY_CAPABILITY_FILE,
and the capability token on fd 3 with LLXPRT_CAPABILITY_FD=3 (what this process had at fd 3
is passed at the number in CREDPROXY_INHERITED_FD3). SIGTERM, SIGINT and SIGHUP stop the
proxy and are forwarded to CMD.

Exit status: CMD's status (128 + the signal number when CMD was killed); 1 CMD could
not be run; 2 bad usage; 3 the proxy could not start.";

const STDIO_EXIT_HELP: &str = "\
Exit status: 0 stdin reached its end (the replies in flight were written first); 1 the
operation failed, including a framing fault: the client sent an invalid frame, the
connection was closed and the message on stderr says why, e.g. \"credproxy: the client
sent an invalid frame (invalid_json)\"; 3 could not start (invalid configuration file,
unusable store directory).";

const STATUS_EXIT_HELP: &str = "\
Exit status: 0 success, corrupt token files included (they are listed as corrupt); 1 the
store could not be read, or --strict and a token file is corrupt; 2 bad usage; 3 could
not start (invalid configuration file, unusable store directory).";

const LOGIN_EXIT_HELP: &str = "\
Without --socket, CREDPROXY_SOCKET or LLXPRT_CREDENTIAL_SOCKET the login runs in an
in-process proxy (`credproxy stdio` as a child) over this host's store and configuration.
pkce_redirect: open the URL, then paste the code (or the whole redirect URL) on stdin.
device_code: open the URL and enter the code; the host polls the provider.
browser_redirect: open the URL; the browser comes back to a loopback listener (or paste
the redirect URL on stdin if the browser runs on another machine).

Exit status: 0 logged in; 1 the login failed (the message says why); 2 bad usage.";

const CALL_EXIT_HELP: &str = "\
The socket is --socket, else $CREDPROXY_SOCKET, else $LLXPRT_CREDENTIAL_SOCKET; the
capability token comes from --capability-file, else $CREDPROXY_CAPABILITY_FILE, else the
descriptor in $LLXPRT_CAPABILITY_FD (none: only an --insecure-no-token proxy accepts).
Example: credproxy call get_token '{\"provider\":\"anthropic\"}'

Exit status: 0 the proxy answered ok (its data is printed as JSON on stdout); 1 an error
reply (`CODE: message` on stderr) or no connection; 2 bad usage (e.g. the payload is not
a JSON object).";

const ABOUT_LONG: &str = "\
A host-side credential proxy for sandboxed processes.

Configuration: $XDG_CONFIG_HOME/credproxy/config.toml (else ~/.config/credproxy/config.toml),
or --config PATH. Precedence: defaults < CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS < the
file < command-line flags. Client secrets come only from files or the environment
(client_secret_file / client_secret_env in a [providers.NAME] table).

Switching from llxprt-code: `credproxy import llxprt --dry-run`, then `credproxy import llxprt`.";

/// A host-side credential proxy for sandboxed processes.
#[derive(Debug, Parser)]
#[command(name = "credproxy", version, about, long_about = ABOUT_LONG, after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the proxy on a Unix socket. Prints the socket path on the first
    /// line, then KEY=VALUE lines to export to clients.
    #[command(after_help = EXIT_HELP)]
    Serve(ServeArgs),
    /// Start the proxy, run CMD with the socket variables set and the
    /// token on fd 3 (LLXPRT_CAPABILITY_FD=3), stop when it exits and exit
    /// with its status.
    #[command(
        after_help = EXEC_EXIT_HELP,
        override_usage = "credproxy exec [OPTIONS] [--] <CMD>..."
    )]
    Exec(ExecArgs),
    /// Serve one connection on stdin/stdout (for a parent process).
    #[command(after_help = STDIO_EXIT_HELP)]
    Stdio(CommonArgs),
    /// Log in to a provider on the host: prints the URL (and user code),
    /// waits for the authorization and stores the token.
    #[command(after_help = LOGIN_EXIT_HELP)]
    Login(LoginArgs),
    /// Send one request to a running proxy and print the reply's data as
    /// JSON (a debug client).
    #[command(after_help = CALL_EXIT_HELP)]
    Call(CallArgs),
    /// List the configured providers (built-ins after overrides, and
    /// custom ones) with their flow and endpoints; never secrets.
    #[command(after_help = EXIT_HELP)]
    Providers(ProvidersArgs),
    /// Manage API keys in the store (values are read from stdin).
    #[command(subcommand, after_help = EXIT_HELP)]
    Key(KeyCmd),
    /// Remove a stored token.
    #[command(after_help = EXIT_HELP)]
    Logout(LogoutArgs),
    /// Copy logins and API keys from another tool's store: `credproxy
    /// import llxprt` (switching from llxprt-code).
    #[command(subcommand, after_help = import::IMPORT_EXIT_HELP)]
    Import(ImportCmd),
    /// Show stored tokens and their expiry (never secrets), then the
    /// store backend; a token file that does not parse (or authenticate)
    /// is shown as `corrupt: REASON PATH`.
    #[command(after_help = STATUS_EXIT_HELP)]
    Status(StatusArgs),
    /// Manage the store itself: `init-key` creates the key file of an
    /// encrypted store, `migrate` moves it to another backend.
    #[command(subcommand, after_help = EXIT_HELP)]
    Store(StoreCmd),
    /// Load-test a proxy socket (requests/s, p50/p99/p99.9 latency), with
    /// an echo baseline; or measure memory (--memory) or start-up
    /// (--startup). See BENCHMARKS.md.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Clone, Args)]
struct ConfigArg {
    /// Configuration file (a missing default file is fine; a missing file
    /// named here is an error) [default: $XDG_CONFIG_HOME/credproxy/config.toml,
    /// else ~/.config/credproxy/config.toml]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CommonArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Store directory [default: the file's `store`, else
    /// $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Audit log: a file path, "stderr" or "off" [default: the file's
    /// `audit_log`, else stderr]
    #[arg(long, value_name = "PATH")]
    audit_log: Option<String>,
    /// Threads doing socket I/O, at most 4 per core (and at least 8 allowed)
    /// [default: the file's `io_threads`, else one per core, at most 4]
    #[arg(long, value_name = "N")]
    io_threads: Option<crate::thread_count::IoThreadCount>,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    limits: LimitsArgs,
}

#[derive(Debug, Args)]
struct SocketArgs {
    /// Use this socket path instead of a fresh private instance directory.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Do not require a capability token. UNSAFE whenever a sandbox can
    /// reach the socket (e.g. a same-uid container): every connection then
    /// has full host access, including writes and API key listing.
    #[arg(long)]
    insecure_no_token: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    socket: SocketArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[command(flatten)]
    socket: SocketArgs,
    #[command(flatten)]
    common: CommonArgs,
    /// The command to run and its arguments (its own flags pass through:
    /// `credproxy exec ls -la`). A command starting with `-` needs `--`
    /// before it.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// Provider name (see `credproxy providers`).
    provider: String,
    /// Bucket [default: default]
    #[arg(long, value_name = "NAME")]
    bucket: Option<String>,
    /// Log in through the running proxy at this socket [default:
    /// $CREDPROXY_SOCKET, else $LLXPRT_CREDENTIAL_SOCKET, else an in-process
    /// proxy]
    #[arg(long, value_name = "PATH", conflicts_with = "local")]
    socket: Option<PathBuf>,
    /// Ignore CREDPROXY_SOCKET / LLXPRT_CREDENTIAL_SOCKET and log in with an
    /// in-process proxy.
    #[arg(long)]
    local: bool,
    /// Capability token file for --socket [default: $CREDPROXY_CAPABILITY_FILE,
    /// else $LLXPRT_CAPABILITY_FD]
    #[arg(long, value_name = "PATH")]
    capability_file: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArg,
    /// Store directory of the in-process proxy [default: the file's `store`,
    /// else $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Audit log of the in-process proxy: a file path, "stderr" or "off"
    /// [default: the file's `audit_log`, else off]
    #[arg(long, value_name = "PATH")]
    audit_log: Option<String>,
    /// Print JSON lines on stdout (the login's URL fields, then the result).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CallArgs {
    /// Operation, e.g. get_token, save_token, list_providers, oauth_initiate.
    op: String,
    /// Payload: a JSON object [default: {}]
    #[arg(value_name = "JSON")]
    payload: Option<String>,
    /// Socket of the proxy [default: $CREDPROXY_SOCKET, else $LLXPRT_CREDENTIAL_SOCKET]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Capability token file [default: $CREDPROXY_CAPABILITY_FILE, else
    /// $LLXPRT_CAPABILITY_FD]
    #[arg(long, value_name = "PATH")]
    capability_file: Option<PathBuf>,
    /// Time to wait for the connection and for the reply, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
    /// Compact JSON; an error reply is printed on stdout too, as
    /// {"ok":false,"code":…,"error":…}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ProvidersArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Store an API key; the value is read from stdin (one trailing newline is removed).
    Set(KeyName),
    /// List API key names.
    List(StoreOnly),
    /// Remove an API key.
    Rm(KeyName),
}

#[derive(Debug, Args)]
struct StoreOnly {
    /// Store directory [default: the configuration file's `store`, else
    /// $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy]
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct KeyName {
    /// Key name ([A-Za-z0-9._-], at most 64 characters).
    name: String,
    #[command(flatten)]
    store: StoreOnly,
}

#[derive(Debug, Args)]
struct LogoutArgs {
    /// Provider name.
    provider: String,
    /// Bucket.
    #[arg(long, default_value = "default")]
    bucket: String,
    #[command(flatten)]
    store: StoreOnly,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    store: StoreOnly,
    /// Exit 1 (after printing everything) when a stored token is corrupt.
    #[arg(long)]
    strict: bool,
}

/// Entry point of the binary.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(a) => cmd_serve(a),
        Cmd::Exec(a) => cmd_exec(a),
        Cmd::Stdio(a) => cmd_stdio(a),
        Cmd::Login(a) => cmd_login(&a),
        Cmd::Call(a) => cmd_call(&a),
        Cmd::Providers(a) => cmd_providers(&a),
        Cmd::Key(k) => cmd_key(k),
        Cmd::Logout(a) => cmd_logout(a),
        Cmd::Import(a) => cmd_import(a),
        Cmd::Status(a) => cmd_status(a),
        Cmd::Store(c) => cmd_store(c),
        Cmd::Bench(a) => crate::bench::run(&a)
            .map(|()| ExitCode::SUCCESS)
            .map_err(failed),
    };
    match result {
        Ok(code) => code,
        Err(Failure(code, msg)) => {
            let _ = writeln!(std::io::stderr(), "credproxy: {msg}");
            ExitCode::from(code)
        }
    }
}

/// An error and its exit code.
struct Failure(u8, String);

impl From<StartError> for Failure {
    fn from(e: StartError) -> Failure {
        Failure(EXIT_START, e.0)
    }
}

impl From<SettingsError> for Failure {
    fn from(e: SettingsError) -> Failure {
        Failure(EXIT_START, e.0)
    }
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure(EXIT_FAILED, e.to_string())
}

/// Defaults < environment < configuration file < the flags that were given;
/// validated.
fn settings(c: &CommonArgs) -> Result<Settings, Failure> {
    let mut s = Settings::load(c.config.config.as_deref())?;
    for w in &s.warnings {
        let _ = writeln!(std::io::stderr(), "credproxy: warning: {w}");
    }
    s.apply_limits(&c.limits);
    s.apply_policy(&c.policy);
    if let Some(audit) = &c.audit_log {
        s.audit_log = Some(audit.clone());
    }
    if let Some(n) = c.io_threads {
        s.io_threads = Some(n.get());
    }
    s.validate()?;
    Ok(s)
}

fn audit_log(spec: &str) -> Result<AuditLog, Failure> {
    match spec {
        "stderr" => Ok(AuditLog::Stderr),
        "off" => Ok(AuditLog::Off),
        path => AuditLog::file(Path::new(path))
            .map_err(|e| Failure(EXIT_START, format!("cannot open audit log {path}: {e}"))),
    }
}

fn options(c: &CommonArgs) -> Result<ServeOptions, Failure> {
    let s = settings(c)?;
    let audit = audit_log(s.audit_log.as_deref().unwrap_or("stderr"))?;
    Ok(ServeOptions {
        config: s.config,
        store: store_spec(&s.store, c.store.as_ref(), &c.backend)?,
        audit,
        allowed_uids: s.allowed_uids,
        io_threads: s.io_threads.unwrap_or_else(crate::driver::default_threads),
    })
}

fn warn_if_not_hardened() {
    if let Err(e) = harden() {
        let _ = writeln!(
            std::io::stderr(),
            "credproxy: warning: could not disable core dumps: {e}"
        );
    }
}

fn placement(s: &SocketArgs) -> Placement {
    s.socket
        .clone()
        .map_or(Placement::Instance, Placement::Fixed)
}

/// What `serve` and `exec` set up before serving: hardening, the signal
/// handlers (first, so no signal is missed), the options, the store and
/// the bound socket.
struct SocketStart {
    signals: ShutdownSignals,
    opts: ServeOptions,
    store: std::sync::Arc<Store>,
    bound: serve::Bound,
}

fn start_socket(socket: &SocketArgs, common: &CommonArgs) -> Result<SocketStart, Failure> {
    warn_if_not_hardened();
    let signals = ShutdownSignals::register().map_err(failed)?;
    let opts = options(common)?;
    let (store, _) = serve::open_store(&opts.store)?;
    let bound = serve::bind(
        &placement(socket),
        !socket.insecure_no_token,
        opts.allowed_uids.clone(),
    )?;
    Ok(SocketStart {
        signals,
        opts,
        store,
        bound,
    })
}

fn cmd_serve(a: ServeArgs) -> Result<ExitCode, Failure> {
    let SocketStart {
        signals,
        opts,
        store,
        bound,
    } = start_socket(&a.socket, &a.common)?;
    let announce = |bound: &serve::Bound| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", bound.instance.socket_path().display());
        for (k, v) in bound.exports() {
            let _ = writeln!(out, "{k}={v}");
        }
        let _ = out.flush();
    };
    let signal = serve::run_socket(
        opts,
        store,
        bound,
        signals,
        announce,
        std::future::pending(),
    )?;
    Ok(match signal {
        Some(_) | None => ExitCode::SUCCESS,
    })
}

fn cmd_stdio(a: CommonArgs) -> Result<ExitCode, Failure> {
    warn_if_not_hardened();
    let mut opts = options(&a)?;
    let (store, _) = serve::open_store(&opts.store)?;
    // The engine reports a framing fault as an audit event, then closes
    // the connection: watch for it, so the parent learns from our status
    // that the connection did not end normally.
    let watch = crate::audit_log::FaultWatch::default();
    opts.audit = AuditLog::Watched(Box::new(opts.audit), watch.clone());
    serve::run_stdio(opts, store)?;
    match watch.fault() {
        Some(reason) => Err(failed(format!(
            "the client sent an invalid frame ({reason})"
        ))),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The store directory of the store-only commands (`--store`, else the
/// configuration file's `store`, else the default), without opening it.
fn store_root_cli(s: &StoreOnly) -> Result<PathBuf, Failure> {
    let settings = config::configured_store(s.config.config.as_deref())?;
    Ok(store_spec(&settings, s.store.as_ref(), &s.backend)?.root)
}

fn open_store_cli(s: &StoreOnly) -> Result<(Store, Backend), Failure> {
    let settings = config::configured_store(s.config.config.as_deref())?;
    let spec = store_spec(&settings, s.store.as_ref(), &s.backend)?;
    let (store, backend) = Store::open(&spec).map_err(|e| Failure(EXIT_START, e.to_string()))?;
    if let Some(notice) = &backend.notice {
        let _ = writeln!(std::io::stderr(), "credproxy: notice: {notice}");
    }
    Ok((store, backend))
}

// ---------------------------------------------------------------------------
// Output of the commands below: a closed stdout (e.g. `| head`) is not an
// error worth a panic.

fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn emit_line(text: std::fmt::Arguments<'_>) {
    emit(&format!("{text}\n"));
}
