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

use clap::Parser;
use credproxy_unix::ShutdownSignals;

use crate::audit_log::AuditLog;
use crate::config::{self, Settings, SettingsError};
use crate::harden::harden;
use crate::serve::{self, Placement, ServeOptions, StartError};
use crate::store::{Backend, Store};

mod args;
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

use args::{
    CallArgs, Cli, Cmd, CommonArgs, ExecArgs, KeyCmd, LoginArgs, LogoutArgs, ProvidersArgs,
    ServeArgs, SocketArgs, StatusArgs, StoreOnly,
};
use call::cmd_call;
use exec::cmd_exec;
use import::cmd_import;
use keys::{cmd_key, cmd_logout};
use login::cmd_login;
use providers::cmd_providers;
use status::cmd_status;
use store_cmd::{cmd_store, store_spec};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_START: u8 = 3;

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

impl SocketStart {
    /// Serves until a shutdown signal or `until`; `ready` sees the bound
    /// socket first.
    fn run(
        self,
        ready: impl FnOnce(&serve::Bound),
        until: impl std::future::Future<Output = ()> + 'static,
    ) -> Result<Option<credproxy_unix::ShutdownSignal>, StartError> {
        serve::run_socket(
            self.opts,
            self.store,
            self.bound,
            self.signals,
            ready,
            until,
        )
    }
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
    let announce = |bound: &serve::Bound| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", bound.instance.socket_path().display());
        for (k, v) in bound.exports() {
            let _ = writeln!(out, "{k}={v}");
        }
        let _ = out.flush();
    };
    let signal = start_socket(&a.socket, &a.common)?.run(announce, std::future::pending())?;
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
