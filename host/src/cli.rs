//! The `credproxy` command line (SPEC §8).
//!
//! Commands: `serve`, `exec`, `stdio` (run the proxy), `login` (host-side
//! OAuth login), `call` (a debug client), `providers` (the configured
//! providers), `key`, `logout` and `status` (the store). Options come from
//! the configuration file ([`crate::config`]) and from flags; a flag wins
//! over the file only when it is given.
//!
//! Exit codes: `0` success; `1` an operation failed (the message says why:
//! an error reply, no connection to the proxy, a failed login); `2` bad
//! usage (from the argument parser, or a `call` payload that is not a JSON
//! object); `3` the proxy or the store could not start (configuration file
//! invalid, unsafe directory, socket in use, path too long, …); `exec`
//! exits with its command's status (128 + signal number when the command
//! was killed). `login` exits `0` when logged in, `1` on any failure
//! (configuration included) and `2` on bad usage.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use credproxy_core::frame::FrameDecoder;
use credproxy_core::provider::{self, ProviderSpec};
use credproxy_core::{FlowType, Secret};
use credproxy_unix::ShutdownSignals;
use credproxy_unix::client::{BlockingClient, CapabilitySource, ClientError, ClientOptions};
use serde_json::{Map, Value, json};

use crate::audit_log::AuditLog;
use crate::config::{self, LimitsArgs, PolicyArgs, Settings, SettingsError};
use crate::harden::harden;
use crate::serve::{self, Placement, ServeOptions, StartError};
use crate::store::FileStore;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_START: u8 = 3;

const EXIT_HELP: &str = "\
Exit status: 0 success; 1 the operation failed (the message says why); 2 bad usage;
3 could not start (invalid configuration file, unusable store or socket directory).";

const EXEC_EXIT_HELP: &str = "\
Exit status: CMD's status (128 + the signal number when CMD was killed); 1 CMD could
not be run; 2 bad usage; 3 the proxy could not start.";

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
(client_secret_file / client_secret_env in a [providers.NAME] table).";

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
    /// Start the proxy, run CMD with the socket variables set, stop when it
    /// exits and exit with its status.
    #[command(after_help = EXEC_EXIT_HELP)]
    Exec(ExecArgs),
    /// Serve one connection on stdin/stdout (for a parent process).
    #[command(after_help = EXIT_HELP)]
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
    /// Show stored tokens and their expiry (never secrets).
    #[command(after_help = EXIT_HELP)]
    Status(StatusArgs),
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
    /// The command to run, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
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
        Cmd::Status(a) => cmd_status(a),
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

fn store_root(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    match given {
        Some(p) => Ok(p),
        None => FileStore::default_root().map_err(|e| Failure(EXIT_START, e.to_string())),
    }
}

/// Defaults < environment < configuration file < the flags that were given;
/// validated.
fn settings(c: &CommonArgs) -> Result<Settings, Failure> {
    let mut s = Settings::load(c.config.config.as_deref())?;
    s.apply_limits(&c.limits);
    s.apply_policy(&c.policy);
    if let Some(store) = &c.store {
        s.store = Some(store.clone());
    }
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
        store_root: store_root(s.store)?,
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

fn cmd_serve(a: ServeArgs) -> Result<ExitCode, Failure> {
    warn_if_not_hardened();
    let signals = ShutdownSignals::register().map_err(failed)?;
    let opts = options(&a.common)?;
    let store = serve::open_store(&opts.store_root)?;
    let bound = serve::bind(
        &placement(&a.socket),
        !a.socket.insecure_no_token,
        opts.allowed_uids.clone(),
    )?;
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

fn cmd_exec(a: ExecArgs) -> Result<ExitCode, Failure> {
    warn_if_not_hardened();
    let signals = ShutdownSignals::register().map_err(failed)?;
    let opts = options(&a.common)?;
    let store = serve::open_store(&opts.store_root)?;
    let bound = serve::bind(
        &placement(&a.socket),
        !a.socket.insecure_no_token,
        opts.allowed_uids.clone(),
    )?;
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    for (k, v) in bound.exports() {
        cmd.env(k, v);
    }
    let fd_pipe = match bound.instance.token() {
        Some(token) => Some(token_pipe(token)?),
        None => None,
    };
    if let Some(fd) = &fd_pipe {
        cmd.env("LLXPRT_CAPABILITY_FD", fd.as_raw_fd().to_string());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", a.command[0])))?;
    drop(fd_pipe);
    let status = std::rc::Rc::new(std::cell::Cell::new(None));
    let slot = status.clone();
    let wait = async move {
        let st = smol::unblock(move || child.wait()).await;
        slot.set(Some(st));
    };
    let signal = serve::run_socket(opts, store, bound, signals, |_| {}, wait)?;
    if let Some(sig) = signal {
        return Ok(ExitCode::from(
            u8::try_from(sig.exit_status()).unwrap_or(EXIT_FAILED),
        ));
    }
    match status.take() {
        Some(Ok(st)) => Ok(exit_code_of(st)),
        Some(Err(e)) => Err(failed(format!("waiting for {}: {e}", a.command[0]))),
        None => Err(failed("the command's status is unknown")),
    }
}

/// The child's exit status as ours: its code, or 128 + the signal number.
fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(i32::from(EXIT_FAILED));
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(EXIT_FAILED))
}

/// A pipe whose read end (inherited by the child, not close-on-exec) holds
/// the token and a newline; the write end is closed before returning.
fn token_pipe(token: &Secret) -> Result<OwnedFd, Failure> {
    let (read, write) = nix::unistd::pipe().map_err(failed)?;
    let mut w = std::fs::File::from(write);
    w.write_all(format!("{}\n", token.expose()).as_bytes())
        .map_err(failed)?;
    drop(w);
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(failed)?;
    Ok(read)
}

fn cmd_stdio(a: CommonArgs) -> Result<ExitCode, Failure> {
    warn_if_not_hardened();
    let opts = options(&a)?;
    let store = serve::open_store(&opts.store_root)?;
    serve::run_stdio(opts, store)?;
    Ok(ExitCode::SUCCESS)
}

fn open_store_cli(s: &StoreOnly) -> Result<FileStore, Failure> {
    let configured = match &s.store {
        Some(dir) => Some(dir.clone()),
        None => config::configured_store(s.config.config.as_deref())?,
    };
    let root = store_root(configured)?;
    FileStore::open(&root).map_err(|e| Failure(EXIT_START, e.to_string()))
}

fn cmd_key(k: KeyCmd) -> Result<ExitCode, Failure> {
    match k {
        KeyCmd::Set(a) => {
            let store = open_store_cli(&a.store)?;
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(failed)?;
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                return Err(failed(
                    "no key value on stdin; pipe it in, e.g. `credproxy key set NAME < file`",
                ));
            }
            store
                .set_api_key(&a.name, &Secret::new(value))
                .map_err(failed)?;
            println!("stored API key {}", a.name);
        }
        KeyCmd::List(s) => {
            let store = open_store_cli(&s)?;
            let keys = store.list_api_keys().map_err(failed)?;
            if s.json {
                println!("{}", serde_json::json!({ "keys": keys }));
            } else {
                for k in keys {
                    println!("{k}");
                }
            }
        }
        KeyCmd::Rm(a) => {
            let store = open_store_cli(&a.store)?;
            if !store.remove_api_key(&a.name).map_err(failed)? {
                return Err(failed(format!("no API key named {}", a.name)));
            }
            println!("removed API key {}", a.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_logout(a: LogoutArgs) -> Result<ExitCode, Failure> {
    let store = open_store_cli(&a.store)?;
    // Take the key's cross-process lock, as every write does: a refresh
    // running in a proxy finishes (and persists) first, then this removal
    // wins.
    let _lock = store
        .lock_key(&a.provider, &a.bucket, std::time::Duration::from_secs(10))
        .map_err(failed)?
        .ok_or_else(|| failed("the credential store is busy (a refresh is running); try again"))?;
    if store
        .get_token(&a.provider, &a.bucket, true)
        .map_err(failed)?
        .is_none()
    {
        return Err(failed(format!(
            "no token stored for {}/{}",
            a.provider, a.bucket
        )));
    }
    store.delete_token(&a.provider, &a.bucket).map_err(failed)?;
    println!("removed the token of {}/{}", a.provider, a.bucket);
    Ok(ExitCode::SUCCESS)
}

fn cmd_status(a: StatusArgs) -> Result<ExitCode, Failure> {
    let store = open_store_cli(&a.store)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut rows = Vec::new();
    for provider in store.list_providers().map_err(failed)? {
        for bucket in store.list_buckets(&provider).map_err(failed)? {
            let Some(token) = store.get_token(&provider, &bucket, true).map_err(failed)? else {
                continue;
            };
            let expiry = token.expiry_secs();
            rows.push(serde_json::json!({
                "provider": provider,
                "bucket": bucket,
                "expiry": expiry,
                "expired": expiry.is_some_and(|e| e <= now),
                "refreshable": token.refresh_token().is_some(),
                "refresh_unusable": store.get_meta(&provider, &bucket).map(|m| m.refresh_unusable).unwrap_or(false),
            }));
        }
    }
    if a.store.json {
        println!("{}", serde_json::json!({ "tokens": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no tokens stored");
    }
    for r in rows {
        let when = r["expiry"].as_f64().map_or_else(
            || "no expiry".to_owned(),
            |e| {
                let left = e - now;
                if left <= 0.0 {
                    format!(
                        "expired {} ago",
                        humantime::format_duration(std::time::Duration::from_secs((-left) as u64))
                    )
                } else {
                    format!(
                        "expires in {}",
                        humantime::format_duration(std::time::Duration::from_secs(left as u64))
                    )
                }
            },
        );
        let refresh = if r["refresh_unusable"] == true {
            "refresh token rejected: log in again"
        } else if r["refreshable"] == true {
            "refreshable"
        } else {
            "no refresh token"
        };
        println!(
            "{}/{}\t{when}\t{refresh}",
            r["provider"].as_str().unwrap_or(""),
            r["bucket"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
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

// ---------------------------------------------------------------------------
// providers

fn provider_json(spec: &ProviderSpec, builtin: bool, configured: bool) -> Value {
    let mut v = json!({
        "name": spec.name,
        "flow": spec.flow.to_string(),
        "dialect": spec.dialect.to_string(),
        "builtin": builtin,
        "configured": configured,
        "client_id": spec.client_id,
        "client_secret": spec.client_secret.is_some(),
        "scopes": spec.scopes,
        "exchange_encoding": spec.exchange_encoding.to_string(),
        "device_encoding": spec.device_encoding.to_string(),
        "extra_auth_params": spec.extra_auth_params,
        "default_device_lifetime_s": spec.default_device_lifetime_s,
    });
    for (key, value) in endpoints(spec) {
        v[key] = Value::from(value);
    }
    v
}

fn endpoints(spec: &ProviderSpec) -> Vec<(&'static str, &str)> {
    [
        ("issuer", &spec.issuer),
        ("authorize_url", &spec.authorize_url),
        ("token_url", &spec.token_url),
        ("device_url", &spec.device_url),
        ("device_token_url", &spec.device_token_url),
        ("verification_url", &spec.verification_url),
        ("redirect_uri", &spec.redirect_uri),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    .collect()
}

fn cmd_providers(a: &ProvidersArgs) -> Result<ExitCode, Failure> {
    let s = Settings::load(a.config.config.as_deref())?;
    s.validate()?;
    let builtins = provider::builtins();
    let rows: Vec<(&ProviderSpec, bool, bool)> = s
        .config
        .providers
        .values()
        .map(|spec| {
            (
                spec,
                builtins.contains_key(&spec.name),
                s.configured_providers.contains(&spec.name),
            )
        })
        .collect();
    if a.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(spec, b, c)| provider_json(spec, *b, *c))
            .collect();
        emit_line(format_args!(
            "{}",
            json!({
                "config_file": s.source.as_ref().map(|p| p.display().to_string()),
                "providers": list,
            })
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    match &s.source {
        Some(p) => out.push_str(&format!("configuration file: {}\n", p.display())),
        None => out.push_str("configuration file: none (built-in providers only)\n"),
    }
    for (spec, builtin, configured) in rows {
        let origin = match (builtin, configured) {
            (true, false) => "built-in",
            (true, true) => "built-in, overridden in the configuration file",
            _ => "from the configuration file",
        };
        out.push_str(&format!("\n{}  {} ({})\n", spec.name, spec.flow, origin));
        out.push_str(&format!("  dialect: {}\n", spec.dialect));
        for (k, v) in endpoints(spec) {
            out.push_str(&format!("  {k}: {v}\n"));
        }
        out.push_str(&format!("  client_id: {}\n", spec.client_id));
        if !spec.scopes.is_empty() {
            out.push_str(&format!("  scopes: {}\n", spec.scope()));
        }
        out.push_str(&format!(
            "  encodings: exchange {}, device {}\n",
            spec.exchange_encoding, spec.device_encoding
        ));
        if !spec.extra_auth_params.is_empty() {
            let params: Vec<String> = spec
                .extra_auth_params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("  extra_auth_params: {}\n", params.join(" ")));
        }
        if spec.client_secret.is_some() {
            out.push_str("  client secret: configured\n");
        } else if spec.name == "gemini" {
            out.push_str(&format!(
                "  client secret: not configured (Google requires one: set \
                 client_secret_env = \"{}\" in [providers.gemini])\n",
                config::GEMINI_SECRET_ENV
            ));
        }
    }
    emit(&out);
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// A request/reply connection: a running proxy's socket, or an in-process
// proxy (`credproxy stdio` as a child).

/// Why a call failed.
enum CallError {
    /// The proxy answered with an error.
    Reply {
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// No answer: connection, timeout, protocol.
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Reply {
                code,
                message,
                retry_after,
            } => {
                write!(f, "{code}: {message}")?;
                if let Some(s) = retry_after {
                    write!(f, " (retry after {s}s)")?;
                }
                Ok(())
            }
            CallError::Transport(m) => f.write_str(m),
        }
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> CallError {
        match e {
            ClientError::Server {
                code,
                message,
                retry_after,
            } => CallError::Reply {
                code,
                message,
                retry_after,
            },
            other => CallError::Transport(connect_message(&other)),
        }
    }
}

trait Conn {
    fn call(&mut self, op: &str, payload: Value) -> Result<Map<String, Value>, CallError>;
}

impl Conn for BlockingClient {
    fn call(&mut self, op: &str, payload: Value) -> Result<Map<String, Value>, CallError> {
        BlockingClient::call(self, op, payload).map_err(CallError::from)
    }
}

/// The socket named by `flag`, else `CREDPROXY_SOCKET`, else
/// `LLXPRT_CREDENTIAL_SOCKET`.
fn client_socket(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        ["CREDPROXY_SOCKET", "LLXPRT_CREDENTIAL_SOCKET"]
            .into_iter()
            .find_map(|v| std::env::var_os(v).filter(|s| !s.is_empty()))
            .map(PathBuf::from)
    })
}

fn connect_message(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => format!(
            "{e}; is the proxy running? Start one with `credproxy serve` and pass its \
             socket with --socket PATH or CREDPROXY_SOCKET"
        ),
        other => other.to_string(),
    }
}

fn connect(
    socket: &Path,
    capability_file: Option<&Path>,
    timeout_ms: u64,
) -> Result<BlockingClient, Failure> {
    let capability = match capability_file {
        Some(p) => CapabilitySource::File(p.to_path_buf()),
        None => CapabilitySource::from_env().map_err(failed)?,
    };
    let options = ClientOptions {
        request_timeout_ms: timeout_ms,
        handshake_timeout_ms: timeout_ms,
        idle_close_ms: 0,
    };
    BlockingClient::connect_with_options(socket, capability, options)
        .map_err(|e| failed(connect_message(&e)))
}

/// `credproxy stdio` as a child process, spoken to over its pipes (a
/// host-class connection).
struct ChildProxy {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Map<String, Value>>,
    next_id: u64,
    timeout: Duration,
}

/// Largest reply frame read from the child.
const CHILD_MAX_FRAME: usize = 8 * 1024 * 1024;

impl ChildProxy {
    fn start(args: &[String], timeout: Duration) -> Result<ChildProxy, Failure> {
        let exe = std::env::current_exe()
            .map_err(|e| failed(format!("cannot find the credproxy executable: {e}")))?;
        let mut child = Command::new(&exe)
            .arg("stdio")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| failed(format!("cannot start {} stdio: {e}", exe.display())))?;
        let stdin = child.stdin.take();
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed("the in-process proxy has no stdout"))?;
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let mut decoder = FrameDecoder::new(CHILD_MAX_FRAME);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut input = &buf[..n];
                while !input.is_empty() {
                    match decoder.decode(&mut input) {
                        Ok(Some(frame)) => {
                            if tx.send(frame).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        let mut proxy = ChildProxy {
            child,
            stdin,
            frames,
            next_id: 1,
            timeout,
        };
        proxy.send(&json!({"v": 2, "op": "handshake",
            "payload": {"minVersion": 1, "maxVersion": 2}}))?;
        let reply = proxy.recv(|_| true).map_err(|e| failed(e.to_string()))?;
        if reply.get("ok") != Some(&Value::Bool(true)) {
            return Err(failed(format!(
                "the in-process proxy refused the handshake: {}",
                Value::Object(reply)
            )));
        }
        Ok(proxy)
    }

    fn send(&mut self, frame: &Value) -> Result<(), Failure> {
        let bytes = credproxy_core::frame::encode(frame);
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| failed("the in-process proxy is closed"))?;
        w.write_all(&bytes)
            .and_then(|()| w.flush())
            .map_err(|_| failed(self.gone_message()))
    }

    fn recv(
        &mut self,
        wanted: impl Fn(&Map<String, Value>) -> bool,
    ) -> Result<Map<String, Value>, CallError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(frame) if wanted(&frame) => return Ok(frame),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(CallError::Transport(format!(
                        "the in-process proxy did not answer within {}s",
                        self.timeout.as_secs()
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(CallError::Transport(self.gone_message()));
                }
            }
        }
    }

    fn gone_message(&mut self) -> String {
        // Its stdin closed, a child that is still running ends too.
        drop(self.stdin.take());
        let status = self.child.wait().ok().and_then(|s| s.code());
        match status {
            Some(code) => format!(
                "the in-process proxy (credproxy stdio) exited with status {code}; see its message above"
            ),
            None => "the in-process proxy (credproxy stdio) ended unexpectedly".to_owned(),
        }
    }

    /// Closes stdin (the child finishes and exits) and reaps the child.
    fn finish(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Conn for ChildProxy {
    fn call(&mut self, op: &str, payload: Value) -> Result<Map<String, Value>, CallError> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send(&json!({"v": 2, "id": id, "op": op, "payload": payload}))
            .map_err(|Failure(_, m)| CallError::Transport(m))?;
        let mut reply = self.recv(|f| f.get("id").and_then(Value::as_str) == Some(id.as_str()))?;
        if reply.get("ok") == Some(&Value::Bool(true)) {
            return match reply.remove("data") {
                Some(Value::Object(data)) => Ok(data),
                _ => Ok(Map::new()),
            };
        }
        let text = |k: &str| {
            reply
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Err(CallError::Reply {
            code: text("code"),
            message: text("error"),
            retry_after: reply.get("retryAfter").and_then(Value::as_u64),
        })
    }
}

// ---------------------------------------------------------------------------
// call

fn cmd_call(a: &CallArgs) -> Result<ExitCode, Failure> {
    let payload = match a.payload.as_deref() {
        None => Value::Object(Map::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(v @ (Value::Object(_) | Value::Null)) => v,
            Ok(_) => {
                return Err(Failure(
                    EXIT_USAGE,
                    "the payload must be a JSON object, e.g. '{\"provider\":\"anthropic\"}'".into(),
                ));
            }
            Err(e) => {
                return Err(Failure(
                    EXIT_USAGE,
                    format!("the payload is not valid JSON: {e}"),
                ));
            }
        },
    };
    let socket = client_socket(a.socket.as_deref()).ok_or_else(|| {
        failed(
            "no proxy socket: pass --socket PATH or set CREDPROXY_SOCKET \
             (`credproxy serve` prints it)",
        )
    })?;
    let mut client = connect(&socket, a.capability_file.as_deref(), a.timeout_ms)?;
    match Conn::call(&mut client, &a.op, payload) {
        Ok(data) => {
            let data = Value::Object(data);
            if a.json {
                emit_line(format_args!("{data}"));
            } else {
                emit_line(format_args!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if a.json {
                let mut v = json!({"ok": false, "error": e.to_string()});
                if let CallError::Reply {
                    code,
                    message,
                    retry_after,
                } = &e
                {
                    v = json!({"ok": false, "code": code, "error": message});
                    if let Some(s) = retry_after {
                        v["retryAfter"] = Value::from(*s);
                    }
                }
                emit_line(format_args!("{v}"));
            }
            Err(failed(e))
        }
    }
}

// ---------------------------------------------------------------------------
// login

/// Time allowed for one request to the in-process proxy.
const CHILD_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Slack on top of the session's `expires_in` before `login` gives up on
/// its own (the proxy normally reports the expiry first).
const EXPIRY_SLACK: Duration = Duration::from_secs(10);

fn cmd_login(a: &LoginArgs) -> Result<ExitCode, Failure> {
    // Every failure of `login` exits 1.
    let as_failed = |Failure(_, m): Failure| Failure(EXIT_FAILED, m);
    let socket = if a.local {
        None
    } else {
        client_socket(a.socket.as_deref())
    };
    if let Some(socket) = socket {
        let mut client = connect(
            &socket,
            a.capability_file.as_deref(),
            credproxy_unix::client::DEFAULT_REQUEST_TIMEOUT_MS,
        )
        .map_err(as_failed)?;
        return run_login(&mut client, a).map_err(as_failed);
    }
    // The in-process proxy reads the same configuration; load it here too
    // so that a broken file is reported before anything starts.
    let settings = Settings::load(a.config.config.as_deref()).map_err(|e| failed(e.0))?;
    settings.validate().map_err(|e| failed(e.0))?;
    let mut args = Vec::new();
    if let Some(c) = &a.config.config {
        args.extend(["--config".to_owned(), c.display().to_string()]);
    }
    if let Some(s) = &a.store {
        args.extend(["--store".to_owned(), s.display().to_string()]);
    }
    let audit = a
        .audit_log
        .clone()
        .or(settings.audit_log)
        .unwrap_or_else(|| "off".to_owned());
    args.extend(["--audit-log".to_owned(), audit]);
    let mut proxy = ChildProxy::start(&args, CHILD_CALL_TIMEOUT).map_err(as_failed)?;
    let result = run_login(&mut proxy, a);
    proxy.finish();
    result.map_err(as_failed)
}

fn field<'a>(data: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    data.get(key).and_then(Value::as_str)
}

/// A progress indicator on stderr, only when stderr is a terminal: a
/// spinner with the time left, or (while the user may be typing a pasted
/// URL on the same terminal) dots that never erase the line.
struct Progress {
    on: bool,
    dots: bool,
    frame: usize,
    shown: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(dots: bool) -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            dots,
            frame: 0,
            shown: false,
            last: None,
        }
    }

    fn tick(&mut self, deadline: Instant) {
        if !self.on {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.dots {
            // One dot a second.
            if self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            self.last = Some(Instant::now());
            let _ = write!(err, ".");
        } else {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            let _ = write!(
                err,
                "\r{} waiting for the authorization ({}:{:02} left) ",
                FRAMES[self.frame % FRAMES.len()],
                left / 60,
                left % 60
            );
            self.frame += 1;
        }
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            if self.dots {
                let _ = writeln!(err);
            } else {
                let _ = write!(err, "\r{:60}\r", "");
            }
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// Reads lines from stdin on a thread (stdin blocks; the login must keep
/// polling meanwhile).
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn run_login(conn: &mut dyn Conn, a: &LoginArgs) -> Result<ExitCode, Failure> {
    let bucket = a.bucket.as_deref().unwrap_or("default");
    let mut payload = json!({"provider": a.provider});
    if let Some(b) = &a.bucket {
        payload["bucket"] = Value::from(b.as_str());
    }
    let init = conn.call("oauth_initiate", payload).map_err(|e| {
        let hint = match &e {
            CallError::Reply { code, .. } if code == "PROVIDER_NOT_CONFIGURED" => {
                "; `credproxy providers` lists the configured providers"
            }
            _ => "",
        };
        failed(format!("login failed: {e}{hint}"))
    })?;
    let session = field(&init, "session_id")
        .ok_or_else(|| failed("login failed: the proxy sent no session_id"))?
        .to_owned();
    let flow = field(&init, "flow_type").unwrap_or_default().to_owned();
    let flow: FlowType = flow
        .parse()
        .map_err(|_| failed(format!("login failed: unknown flow type {flow:?}")))?;
    let expires_in = init
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(600);
    let deadline = Instant::now() + Duration::from_secs(expires_in) + EXPIRY_SLACK;
    let mut interval = init
        .get("pollIntervalMs")
        .and_then(Value::as_u64)
        .unwrap_or(5_000);
    if a.json {
        let mut info = json!({"status": "initiated", "provider": a.provider,
            "bucket": bucket, "flow_type": flow.to_string(), "expires_in": expires_in});
        for k in [
            "auth_url",
            "verification_uri",
            "verification_uri_complete",
            "user_code",
        ] {
            if let Some(v) = field(&init, k) {
                info[k] = Value::from(v);
            }
        }
        emit_line(format_args!("{info}"));
        let _ = std::io::stdout().flush();
    }
    let mut err = std::io::stderr();
    let url = field(&init, "verification_uri_complete")
        .or_else(|| field(&init, "auth_url"))
        .unwrap_or_default();
    let _ = writeln!(
        err,
        "To log in to {} (bucket {bucket}), open this URL in a browser:\n\n  {url}\n",
        a.provider
    );
    if let Some(code) = field(&init, "user_code") {
        let _ = writeln!(err, "and enter the code: {code}\n");
    }
    let cancel = |conn: &mut dyn Conn| {
        let _ = conn.call("oauth_cancel", json!({"session_id": session}));
    };
    let token = match flow {
        FlowType::PkceRedirect => {
            let _ = write!(
                err,
                "Paste the authorization code (or the whole redirect URL) and press Enter: "
            );
            let _ = err.flush();
            let mut line = String::new();
            let read = std::io::stdin().lock().read_line(&mut line);
            let code = line.trim();
            if read.is_err() || code.is_empty() {
                cancel(conn);
                return Err(failed("login failed: no authorization code was given"));
            }
            conn.call(
                "oauth_exchange",
                json!({"session_id": session, "code": code}),
            )
            .map_err(|e| failed(format!("login failed: {e}")))?
        }
        FlowType::DeviceCode | FlowType::BrowserRedirect => {
            let pasted = (flow == FlowType::BrowserRedirect).then(|| {
                let _ = writeln!(
                    err,
                    "Waiting for the browser. If it runs on another machine, paste the address \
                     it was redirected to here and press Enter."
                );
                stdin_lines()
            });
            let mut progress = Progress::new(pasted.is_some());
            let result = poll_login(
                conn,
                &session,
                &mut interval,
                deadline,
                pasted.as_ref(),
                &mut progress,
            );
            progress.clear();
            match result {
                Ok(t) => t,
                Err(e) => {
                    if matches!(e, CallError::Transport(_)) {
                        cancel(conn);
                    }
                    return Err(failed(format!("login failed: {e}")));
                }
            }
        }
    };
    let expiry = token.get("expiry").and_then(Value::as_f64);
    if a.json {
        emit_line(format_args!(
            "{}",
            json!({"status": "complete", "provider": a.provider, "bucket": bucket,
                "expiry": expiry})
        ));
    } else {
        let when = expiry.map_or_else(String::new, |e| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let left = Duration::from_secs((e - now).max(0.0) as u64);
            format!(
                "; the token expires in {}",
                humantime::format_duration(left)
            )
        });
        emit_line(format_args!("Logged in to {}/{bucket}{when}", a.provider));
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the session until it completes, fails or expires. A line on
/// `pasted` (browser_redirect) is exchanged as the redirect URL.
fn poll_login(
    conn: &mut dyn Conn,
    session: &str,
    interval: &mut u64,
    deadline: Instant,
    pasted: Option<&mpsc::Receiver<String>>,
    progress: &mut Progress,
) -> Result<Map<String, Value>, CallError> {
    // `oauth_poll` only reads the session on the host (the proxy polls the
    // provider itself), so a browser redirect is noticed within 2 s.
    let cap = if pasted.is_some() { 2_000 } else { 60_000 };
    loop {
        let next = Instant::now() + Duration::from_millis((*interval).clamp(100, cap));
        while Instant::now() < next {
            progress.tick(deadline);
            let slice = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            match pasted {
                Some(lines) => match lines.recv_timeout(slice) {
                    Ok(line) if !line.trim().is_empty() => {
                        progress.clear();
                        return conn.call(
                            "oauth_exchange",
                            json!({"session_id": session, "code": line.trim()}),
                        );
                    }
                    Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // stdin is at its end: nothing will be pasted.
                    Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(slice),
                },
                None => std::thread::sleep(slice),
            }
        }
        if Instant::now() >= deadline {
            return Err(CallError::Transport(
                "the login session expired before the authorization arrived".into(),
            ));
        }
        let mut reply = conn.call("oauth_poll", json!({"session_id": session}))?;
        match field(&reply, "status") {
            Some("complete") => {
                return match reply.remove("token") {
                    Some(Value::Object(t)) => Ok(t),
                    _ => Ok(Map::new()),
                };
            }
            _ => {
                if let Some(ms) = reply.get("pollIntervalMs").and_then(Value::as_u64) {
                    *interval = ms;
                }
            }
        }
    }
}
