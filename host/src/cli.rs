//! The `credproxy` command line (SPEC §8).
//!
//! Exit codes: `0` success; `1` an operation failed (the message says why);
//! `2` bad usage (from the argument parser); `3` the proxy could not start
//! (unsafe directory, socket in use, path too long, …); `exec` exits with
//! its command's status (128 + signal number when the command was killed).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand};
use credproxy_core::{Config, Limits, Policy, Secret};
use credproxy_unix::ShutdownSignals;

use crate::audit_log::AuditLog;
use crate::harden::harden;
use crate::serve::{self, Placement, ServeOptions, StartError};
use crate::store::FileStore;

const EXIT_FAILED: u8 = 1;
const EXIT_START: u8 = 3;

/// A host-side credential proxy for sandboxed processes.
#[derive(Debug, Parser)]
#[command(name = "credproxy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the proxy on a Unix socket. Prints the socket path on the first
    /// line, then KEY=VALUE lines to export to clients.
    Serve(ServeArgs),
    /// Start the proxy, run CMD with the socket variables set, stop when it
    /// exits and exit with its status.
    Exec(ExecArgs),
    /// Serve one connection on stdin/stdout (for a parent process).
    Stdio(CommonArgs),
    /// Manage API keys in the store (values are read from stdin).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Remove a stored token.
    Logout(LogoutArgs),
    /// Show stored tokens and their expiry (never secrets).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Store directory [default: $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Audit log: a file path, "stderr" or "off".
    #[arg(long, value_name = "PATH", default_value = "stderr")]
    audit_log: String,
    /// Largest inbound frame payload in bytes (at most 4194304).
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Partial-frame deadline in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().partial_frame_ms)]
    partial_frame_timeout_ms: u64,
    /// Handshake deadline in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().handshake_ms)]
    handshake_timeout_ms: u64,
    /// Requests in flight per connection.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_in_flight)]
    max_in_flight: usize,
    /// Open connections.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Rate limit for writes and provider calls, per connection per second.
    #[arg(long, value_name = "N", default_value_t = Limits::default().rate_per_sec)]
    rate_per_sec: u32,
    /// Rate limit burst.
    #[arg(long, value_name = "N", default_value_t = Limits::default().rate_burst)]
    rate_burst: u32,
    /// Refuse login and refresh to sandbox connections (the old behaviour).
    #[arg(long)]
    strict_sandbox: bool,
    /// Let a sandbox login replace a valid stored credential.
    #[arg(long)]
    sandbox_login_overwrite: bool,
    /// Providers that may be used (repeatable); default all.
    #[arg(long = "allow-provider", value_name = "NAME")]
    allow_providers: Vec<String>,
    /// Buckets that may be used (repeatable); default all.
    #[arg(long = "allow-bucket", value_name = "NAME")]
    allow_buckets: Vec<String>,
    /// API key names that may be read (repeatable); default all.
    #[arg(long = "allow-key", value_name = "NAME")]
    allow_keys: Vec<String>,
    /// Extra peer uids allowed to connect besides ours and root (repeatable).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,
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
    /// Store directory.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
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
        Cmd::Key(k) => cmd_key(k),
        Cmd::Logout(a) => cmd_logout(a),
        Cmd::Status(a) => cmd_status(a),
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

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure(EXIT_FAILED, e.to_string())
}

fn store_root(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    match given {
        Some(p) => Ok(p),
        None => FileStore::default_root().map_err(|e| Failure(EXIT_START, e.to_string())),
    }
}

fn options(c: CommonArgs) -> Result<ServeOptions, Failure> {
    let audit = match c.audit_log.as_str() {
        "stderr" => AuditLog::Stderr,
        "off" => AuditLog::Off,
        path => AuditLog::file(std::path::Path::new(path))
            .map_err(|e| Failure(EXIT_START, format!("cannot open audit log {path}: {e}")))?,
    };
    let limits = Limits {
        max_frame_bytes: c.max_frame_bytes,
        partial_frame_ms: c.partial_frame_timeout_ms,
        handshake_ms: c.handshake_timeout_ms,
        max_in_flight: c.max_in_flight,
        max_connections: c.max_connections,
        rate_per_sec: c.rate_per_sec,
        rate_burst: c.rate_burst,
        ..Limits::default()
    };
    let policy = Policy {
        strict_sandbox: c.strict_sandbox,
        sandbox_login_overwrite: c.sandbox_login_overwrite,
        allowed_providers: serve::allow_list(&c.allow_providers),
        allowed_buckets: serve::allow_list(&c.allow_buckets),
        allowed_keys: serve::allow_list(&c.allow_keys),
    };
    let config = Config {
        limits,
        policy,
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| Failure(EXIT_START, e.to_string()))?;
    Ok(ServeOptions {
        config,
        store_root: store_root(c.store)?,
        audit,
        allowed_uids: c.allow_uids,
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
    let opts = options(a.common)?;
    let store = serve::open_store(&opts.store_root)?;
    let bound = serve::bind(
        &placement(&a.socket),
        !a.socket.insecure_no_token,
        opts.allowed_uids.clone(),
    )?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", bound.instance.socket_path().display());
    for (k, v) in bound.exports() {
        let _ = writeln!(out, "{k}={v}");
    }
    let _ = out.flush();
    drop(out);
    let signal = serve::run_socket(opts, store, bound, signals, std::future::pending())?;
    Ok(match signal {
        Some(_) | None => ExitCode::SUCCESS,
    })
}

fn cmd_exec(a: ExecArgs) -> Result<ExitCode, Failure> {
    warn_if_not_hardened();
    let signals = ShutdownSignals::register().map_err(failed)?;
    let opts = options(a.common)?;
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
    let signal = serve::run_socket(opts, store, bound, signals, wait)?;
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
    let opts = options(a)?;
    let store = serve::open_store(&opts.store_root)?;
    serve::run_stdio(opts, store)?;
    Ok(ExitCode::SUCCESS)
}

fn open_store_cli(s: &StoreOnly) -> Result<FileStore, Failure> {
    let root = store_root(s.store.clone())?;
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
