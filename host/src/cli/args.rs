//! The command line's grammar: every command, flag and help text, as clap
//! derives. What the commands do is in `cli/mod.rs` and its siblings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::import::ImportCmd;
use super::store_cmd::{BackendArgs, StoreCmd};
use crate::config::{LimitsArgs, PolicyArgs};

pub(super) const EXIT_HELP: &str = "\
Exit status: 0 success; 1 the operation failed (the message says why); 2 bad usage;
3 could not start (invalid configuration file, unusable store or socket directory).";

pub(super) const EXEC_EXIT_HELP: &str = "\
Usage: credproxy exec [OPTIONS] [--] CMD [ARGS]...; `--` is needed only when CMD starts
with `-`. CMD gets CREDPROXY_SOCKET, LLXPRT_CREDENTIAL_SOCKET, CREDPROXY_CAPABILITY_FILE,
and the capability token on fd 3 with LLXPRT_CAPABILITY_FD=3 (what this process had at fd 3
is passed at the number in CREDPROXY_INHERITED_FD3). SIGTERM, SIGINT and SIGHUP stop the
proxy and are forwarded to CMD.

Exit status: CMD's status (128 + the signal number when CMD was killed); 1 CMD could
not be run; 2 bad usage; 3 the proxy could not start.";

pub(super) const STDIO_EXIT_HELP: &str = "\
Exit status: 0 stdin reached its end (the replies in flight were written first); 1 the
operation failed, including a framing fault: the client sent an invalid frame, the
connection was closed and the message on stderr says why, e.g. \"credproxy: the client
sent an invalid frame (invalid_json)\"; 3 could not start (invalid configuration file,
unusable store directory).";

pub(super) const STATUS_EXIT_HELP: &str = "\
Exit status: 0 success, corrupt token files included (they are listed as corrupt); 1 the
store could not be read, or --strict and a token file is corrupt; 2 bad usage; 3 could
not start (invalid configuration file, unusable store directory).";

pub(super) const LOGIN_EXIT_HELP: &str = "\
Without --socket, CREDPROXY_SOCKET or LLXPRT_CREDENTIAL_SOCKET the login runs in an
in-process proxy (`credproxy stdio` as a child) over this host's store and configuration.
pkce_redirect: open the URL, then paste the code (or the whole redirect URL) on stdin.
device_code: open the URL and enter the code; the host polls the provider.
browser_redirect: open the URL; the browser comes back to a loopback listener (or paste
the redirect URL on stdin if the browser runs on another machine).

Exit status: 0 logged in; 1 the login failed (the message says why); 2 bad usage.";

pub(super) const CALL_EXIT_HELP: &str = "\
The socket is --socket, else $CREDPROXY_SOCKET, else $LLXPRT_CREDENTIAL_SOCKET; the
capability token comes from --capability-file, else $CREDPROXY_CAPABILITY_FILE, else the
descriptor in $LLXPRT_CAPABILITY_FD (none: only an --insecure-no-token proxy accepts).
Example: credproxy call get_token '{\"provider\":\"anthropic\"}'

Exit status: 0 the proxy answered ok (its data is printed as JSON on stdout); 1 an error
reply (`CODE: message` on stderr) or no connection; 2 bad usage (e.g. the payload is not
a JSON object).";

pub(super) const ABOUT_LONG: &str = "\
A host-side credential proxy for sandboxed processes.

Configuration: $XDG_CONFIG_HOME/credproxy/config.toml (else ~/.config/credproxy/config.toml),
or --config PATH. Precedence: defaults < CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS < the
file < command-line flags. Client secrets come only from files or the environment
(client_secret_file / client_secret_env in a [providers.NAME] table).

Switching from llxprt-code: `credproxy import llxprt --dry-run`, then `credproxy import llxprt`.";

/// A host-side credential proxy for sandboxed processes.
#[derive(Debug, Parser)]
#[command(name = "credproxy", version, about, long_about = ABOUT_LONG, after_help = EXIT_HELP)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(super) enum Cmd {
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
    #[command(subcommand, after_help = super::import::IMPORT_EXIT_HELP)]
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
pub(super) struct ConfigArg {
    /// Configuration file (a missing default file is fine; a missing file
    /// named here is an error) [default: $XDG_CONFIG_HOME/credproxy/config.toml,
    /// else ~/.config/credproxy/config.toml]
    #[arg(long, value_name = "PATH")]
    pub(super) config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct CommonArgs {
    #[command(flatten)]
    pub(super) config: ConfigArg,
    /// Store directory [default: the file's `store`, else
    /// $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy]
    #[arg(long, value_name = "DIR")]
    pub(super) store: Option<PathBuf>,
    #[command(flatten)]
    pub(super) backend: BackendArgs,
    /// Audit log: a file path, "stderr" or "off" [default: the file's
    /// `audit_log`, else stderr]
    #[arg(long, value_name = "PATH")]
    pub(super) audit_log: Option<String>,
    /// Threads doing socket I/O, at most 4 per core (and at least 8 allowed)
    /// [default: the file's `io_threads`, else one per core, at most 4]
    #[arg(long, value_name = "N")]
    pub(super) io_threads: Option<crate::thread_count::IoThreadCount>,
    #[command(flatten)]
    pub(super) policy: PolicyArgs,
    #[command(flatten)]
    pub(super) limits: LimitsArgs,
}

#[derive(Debug, Args)]
pub(super) struct SocketArgs {
    /// Use this socket path instead of a fresh private instance directory.
    #[arg(long, value_name = "PATH")]
    pub(super) socket: Option<PathBuf>,
    /// Do not require a capability token. UNSAFE whenever a sandbox can
    /// reach the socket (e.g. a same-uid container): every connection then
    /// has full host access, including writes and API key listing.
    #[arg(long)]
    pub(super) insecure_no_token: bool,
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    pub(super) socket: SocketArgs,
    #[command(flatten)]
    pub(super) common: CommonArgs,
}

#[derive(Debug, Args)]
pub(super) struct ExecArgs {
    // The proxy it starts: what `serve` takes.
    #[command(flatten)]
    pub(super) serve: ServeArgs,
    /// The command to run and its arguments (its own flags pass through:
    /// `credproxy exec ls -la`). A command starting with `-` needs `--`
    /// before it.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub(super) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(super) struct LoginArgs {
    /// Provider name (see `credproxy providers`).
    pub(super) provider: String,
    /// Bucket [default: default]
    #[arg(long, value_name = "NAME")]
    pub(super) bucket: Option<String>,
    /// Log in through the running proxy at this socket [default:
    /// $CREDPROXY_SOCKET, else $LLXPRT_CREDENTIAL_SOCKET, else an in-process
    /// proxy]
    #[arg(long, value_name = "PATH", conflicts_with = "local")]
    pub(super) socket: Option<PathBuf>,
    /// Ignore CREDPROXY_SOCKET / LLXPRT_CREDENTIAL_SOCKET and log in with an
    /// in-process proxy.
    #[arg(long)]
    pub(super) local: bool,
    /// Capability token file for --socket [default: $CREDPROXY_CAPABILITY_FILE,
    /// else $LLXPRT_CAPABILITY_FD]
    #[arg(long, value_name = "PATH")]
    pub(super) capability_file: Option<PathBuf>,
    #[command(flatten)]
    pub(super) config: ConfigArg,
    /// Store directory of the in-process proxy [default: the file's `store`,
    /// else $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy]
    #[arg(long, value_name = "DIR")]
    pub(super) store: Option<PathBuf>,
    #[command(flatten)]
    pub(super) backend: BackendArgs,
    /// Audit log of the in-process proxy: a file path, "stderr" or "off"
    /// [default: the file's `audit_log`, else off]
    #[arg(long, value_name = "PATH")]
    pub(super) audit_log: Option<String>,
    /// Print JSON lines on stdout (the login's URL fields, then the result).
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct CallArgs {
    /// Operation, e.g. get_token, save_token, list_providers, oauth_initiate.
    pub(super) op: String,
    /// Payload: a JSON object [default: {}]
    #[arg(value_name = "JSON")]
    pub(super) payload: Option<String>,
    /// Socket of the proxy [default: $CREDPROXY_SOCKET, else $LLXPRT_CREDENTIAL_SOCKET]
    #[arg(long, value_name = "PATH")]
    pub(super) socket: Option<PathBuf>,
    /// Capability token file [default: $CREDPROXY_CAPABILITY_FILE, else
    /// $LLXPRT_CAPABILITY_FD]
    #[arg(long, value_name = "PATH")]
    pub(super) capability_file: Option<PathBuf>,
    /// Time to wait for the connection and for the reply, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub(super) timeout_ms: u64,
    /// Compact JSON; an error reply is printed on stdout too, as
    /// {"ok":false,"code":…,"error":…}.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct ProvidersArgs {
    #[command(flatten)]
    pub(super) config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Subcommand)]
pub(super) enum KeyCmd {
    /// Store an API key; the value is read from stdin (one trailing newline is removed).
    Set(KeyName),
    /// List API key names.
    List(StoreOnly),
    /// Remove an API key.
    Rm(KeyName),
}

#[derive(Debug, Args)]
pub(super) struct StoreOnly {
    /// Store directory [default: the configuration file's `store`, else
    /// $XDG_DATA_HOME/credproxy or ~/.local/share/credproxy]
    #[arg(long, value_name = "DIR")]
    pub(super) store: Option<PathBuf>,
    #[command(flatten)]
    pub(super) backend: BackendArgs,
    #[command(flatten)]
    pub(super) config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub(super) struct KeyName {
    /// Key name ([A-Za-z0-9._-], at most 64 characters).
    pub(super) name: String,
    #[command(flatten)]
    pub(super) store: StoreOnly,
}

#[derive(Debug, Args)]
pub(super) struct LogoutArgs {
    /// Provider name.
    pub(super) provider: String,
    /// Bucket.
    #[arg(long, default_value = "default")]
    pub(super) bucket: String,
    #[command(flatten)]
    pub(super) store: StoreOnly,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) store: StoreOnly,
    /// Exit 1 (after printing everything) when a stored token is corrupt.
    #[arg(long)]
    pub(super) strict: bool,
}
