//! Shared helpers for the integration tests that run the real `credproxy`
//! binary.
//!
//! - [`Scratch`]: a private temporary directory under `/tmp` (short, because
//!   a socket path must fit `sun_path`) with a runtime directory for
//!   `XDG_RUNTIME_DIR` and a store directory, and a [`Command`] for the
//!   binary whose environment points only there.
//! - [`Proxy`]: a running `credproxy serve`, with the lines it printed and
//!   its stderr; killed and reaped on drop.
//! - [`Client`]: a tiny raw frame client over a Unix socket, independent of
//!   the project's client library (`{len BE u32}{json}`), every read bounded
//!   by a socket timeout.
//! - [`StdioProc`]: a running `credproxy stdio` with piped stdin/stdout, its
//!   frames read by a thread and received with a timeout.
//!
//! - [`matcher::Matcher`]: the clients' handshake and reply matching, on
//!   the client library's sans-IO protocol.
//!
//! Nothing here sleeps to wait for timing: waits poll a condition every
//! 10 ms up to a bounded deadline.
//!
//! The helpers of one suite each are submodules: [`conformance`] (the
//! self-contained black-box checklist), [`effects`] (canned HTTP servers
//! for the effect executor), [`hostile`] (the server under attack and a
//! witness), [`keyring`] (a private gnome-keyring Secret Service),
//! [`oauth_server`] (a real OAuth authorization server), [`postgres`] (a
//! throw-away PostgreSQL cluster) and [`pki`] (its TLS certificates).

pub mod conformance;
pub mod cpu_class;
pub mod effects;
pub mod hostile;
pub mod http_stub;
pub mod keyring;
pub mod matcher;
pub mod oauth_server;
pub mod pki;
pub mod postgres;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use credproxy_core::frame::{DecodeError, FrameDecoder};
use credproxy_unix::client::proto;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_credproxy");

/// Bound on every single read, start and exit wait.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on polling for a condition (a path disappearing, a log line).
pub const POLL_LIMIT: Duration = Duration::from_secs(5);

/// Largest frame the test clients accept.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Polls `cond` every 5 ms until it holds; panics after `limit`. The one
/// wait of the suite: nothing sleeps for a timer instead.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// [`wait_for`] up to [`POLL_LIMIT`].
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_for(what, POLL_LIMIT, cond);
}

/// The entries of `dir` whose file names satisfy `keep` (temp files,
/// kept corrupt files, token files), in directory order.
pub fn files_where(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("list the directory") {
        let path = entry.expect("a directory entry").path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(&keep) {
            out.push(path);
        }
    }
    out
}

/// Files under `dir` (recursively) whose bytes contain `needle`: how the
/// at-rest tests show a secret is not on disk.
#[must_use]
pub fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if fs::read(&p)
                .expect("read")
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

/// Whether anything (even a dangling symlink) is at `path`.
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The permission bits of `path` (not following symlinks).
pub fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Creates `path` as a directory with exactly `mode`.
pub fn mkdir(path: &Path, mode: u32) {
    fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    chmod(path, mode);
}

/// Whether `s` is a capability token: 64 lowercase hex characters.
pub fn is_token(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `s` is an instance directory name: `<pid>-<22 base64url>`.
pub fn is_instance_name(s: &str) -> bool {
    let Some((pid, nonce)) = s.split_once('-') else {
        return false;
    };
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && nonce.len() == 22
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Our effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A private temporary tree for one test:
///
/// ```text
/// /tmp/cpXXXXXX/         0700 (removed on drop)
///   run/                 XDG_RUNTIME_DIR (0700)
///   run/credproxy/       the socket base directory (made by the binary)
///   store/               --store (made by the binary)
/// ```
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Scratch {
    /// A fresh tree.
    #[must_use]
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("cp")
            .tempdir_in("/tmp")
            .expect("temp dir under /tmp");
        let s = Scratch { dir };
        mkdir(&s.runtime(), 0o700);
        s
    }

    /// A fresh tree whose store holds `anthropic`/`default` with `access`
    /// and `refresh` (valid until 2100) and the API key `key` = `value`.
    #[must_use]
    pub fn seeded(access: &str, refresh: &str, key: &str, value: &str) -> Scratch {
        let s = Scratch::new();
        let mut token = token_json(access);
        token["refresh_token"] = json!(refresh);
        s.seed_token("anthropic", "default", &token);
        s.seed_api_key(key, value);
        s
    }

    /// The root of the tree.
    #[must_use]
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `XDG_RUNTIME_DIR` for the binary.
    #[must_use]
    pub fn runtime(&self) -> PathBuf {
        self.root().join("run")
    }

    /// The socket base directory, `$XDG_RUNTIME_DIR/credproxy`.
    #[must_use]
    pub fn base(&self) -> PathBuf {
        self.runtime().join("credproxy")
    }

    /// The store directory passed with `--store`.
    #[must_use]
    pub fn store(&self) -> PathBuf {
        self.root().join("store")
    }

    /// The store directory as a string, for argument lists.
    #[must_use]
    pub fn store_arg(&self) -> String {
        self.store().display().to_string()
    }

    /// The binary with `args`, its environment pointing into this tree and
    /// stripped of anything a client or an outer proxy might have set.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        self.isolate(&mut cmd);
        cmd
    }

    /// [`isolate`]s `cmd` in this tree (`XDG_CONFIG_HOME` is `config/`):
    /// for a wrapper (`sh`, a script) that runs the binary itself.
    pub fn isolate<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        isolate(cmd, self.root(), &self.root().join("config"))
    }

    /// Writes `text` as the default configuration file
    /// (`$XDG_CONFIG_HOME/credproxy/config.toml`); returns its path.
    pub fn write_default_config(&self, text: &str) -> PathBuf {
        let dir = self.root().join("config/credproxy");
        fs::create_dir_all(&dir).expect("mkdir the config directory");
        let path = dir.join("config.toml");
        fs::write(&path, text).expect("write config");
        path
    }

    /// `serve` with `text` as the default configuration file, which it
    /// must refuse: exit 3, stderr naming the file and each of `names`.
    pub fn serve_refuses_config(&self, text: &str, names: &[&str]) {
        let path = self.write_default_config(text).display().to_string();
        let ran = self.run(&["serve", "--store", &self.store_arg()], b"");
        ran.assert_code(3);
        for name in [path.as_str()].iter().chain(names) {
            assert!(ran.stderr.contains(name), "{name}: {}", ran.stderr);
        }
    }

    /// Runs the binary to completion with `stdin` as its input; bounded by
    /// [`TIMEOUT`] (killed and panics when exceeded).
    #[must_use]
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Ran {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped());
        run_bounded(cmd, stdin)
    }

    /// Opens the store with the host library as the binary does by
    /// default (`auto`, the key under this tree's `XDG_CONFIG_HOME`), e.g.
    /// to seed a token whose `refresh_token` the protocol would never let a
    /// client write. A new store is then encrypted, an existing plaintext
    /// one stays plaintext.
    #[must_use]
    pub fn open_store(&self) -> credproxy::store::Store {
        use credproxy::store::{BackendName, KeySource, Store, StoreSpec};
        let spec = StoreSpec {
            root: self.store(),
            backend: BackendName::Auto,
            key: KeySource {
                default_file: Some(self.default_key_file()),
                ..KeySource::default()
            },
            probe_keyring: false,
            postgres: credproxy::store::PgSpec::default(),
        };
        Store::open(&spec).expect("open store").0
    }

    /// Opens the store as the plaintext `file` backend (a store the tests
    /// read files of).
    #[must_use]
    pub fn open_plain_store(&self) -> credproxy::store::FileStore {
        credproxy::store::FileStore::open(&self.store()).expect("open store")
    }

    /// The `auto` backend's key file of this tree.
    #[must_use]
    pub fn default_key_file(&self) -> PathBuf {
        self.root().join("config/credproxy/store.key")
    }

    /// `status --json` of a store without tokens that `auto` created
    /// (encrypted with [`Scratch::default_key_file`]).
    #[must_use]
    pub fn empty_auto_status(&self) -> Value {
        json!({
            "tokens": [],
            "backend": "encrypted-file",
            "key": format!("key file {}", self.default_key_file().display()),
        })
    }

    /// Stores `token` (a JSON object) under `provider`/`bucket`.
    pub fn seed_token(&self, provider: &str, bucket: &str, token: &Value) {
        let Value::Object(map) = token.clone() else {
            panic!("token must be a JSON object");
        };
        self.open_store()
            .put_token(provider, bucket, &credproxy_core::Token::from_map(map))
            .expect("seed token");
    }

    /// Stores `token` under `provider`/`bucket` with the plaintext `file`
    /// backend (so `auto` keeps the store plaintext).
    pub fn seed_plain_token(&self, provider: &str, bucket: &str, token: &Value) {
        let Value::Object(map) = token.clone() else {
            panic!("token must be a JSON object");
        };
        self.open_plain_store()
            .put_token(provider, bucket, &credproxy_core::Token::from_map(map))
            .expect("seed token");
    }

    /// Stores an API key through `credproxy key set NAME`.
    pub fn seed_api_key(&self, name: &str, value: &str) {
        let ran = self.run(
            &["key", "set", name, "--store", &self.store_arg()],
            format!("{value}\n").as_bytes(),
        );
        ran.assert_code(0);
    }

    /// Starts `credproxy serve --store <store> ARGS…` and waits for its
    /// start lines.
    #[must_use]
    pub fn serve(&self, args: &[&str]) -> Proxy {
        match self.try_serve(args) {
            Ok(p) => p,
            Err(e) => panic!(
                "serve did not start: exit {:?}\nstderr:\n{}",
                e.status, e.stderr
            ),
        }
    }

    /// Like [`Scratch::serve`], returning the exit status and stderr when
    /// the process ends before printing its start lines.
    pub fn try_serve(&self, args: &[&str]) -> Result<Proxy, Ran> {
        let store = self.store_arg();
        let mut all = vec!["serve", "--store", store.as_str()];
        all.extend_from_slice(args);
        Proxy::spawn(self.command(&all), !args.contains(&"--insecure-no-token"))
    }

    /// Starts `credproxy stdio --store <store> ARGS…`.
    #[must_use]
    pub fn stdio(&self, args: &[&str]) -> StdioProc {
        self.stdio_with_store(&self.store(), args)
    }

    /// Starts `credproxy stdio --store STORE ARGS…`.
    #[must_use]
    pub fn stdio_with_store(&self, store: &Path, args: &[&str]) -> StdioProc {
        let store = store.display().to_string();
        let mut all = vec!["stdio", "--store", store.as_str()];
        all.extend_from_slice(args);
        let mut cmd = self.command(&all);
        cmd.stdin(Stdio::piped());
        StdioProc::spawn(cmd)
    }
}

/// Points `cmd`'s runtime, data, config and home directories into `root`
/// (`root/run` is `XDG_RUNTIME_DIR`), strips what a client, an outer proxy
/// or the user's shell might have set, and pipes stdout and stderr with
/// stdin null: every test process sees only its own tree.
pub fn isolate<'c>(cmd: &'c mut Command, root: &Path, config_home: &Path) -> &'c mut Command {
    cmd.env("XDG_RUNTIME_DIR", root.join("run"))
        .env("TMPDIR", root)
        .env("XDG_DATA_HOME", root.join("data"))
        .env("XDG_CONFIG_HOME", config_home)
        .env("HOME", root)
        // No session bus (a test that wants one applies a TestKeyring after
        // this): `auto` must not find a developer's own keyring.
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("CREDPROXY_SOCKET")
        .env_remove("CREDPROXY_CAPABILITY_FILE")
        .env_remove("CREDPROXY_STORE_KEY_FILE")
        .env_remove("CREDPROXY_POSTGRES_URL")
        .env_remove("CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS")
        .env_remove("LLXPRT_CREDENTIAL_SOCKET")
        .env_remove("LLXPRT_CAPABILITY_FD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
}

/// The outcome of a finished process.
#[derive(Debug)]
pub struct Ran {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Ran {
    /// The exit code (`None` when killed by a signal).
    #[must_use]
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing the output, unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Ran {
        assert_eq!(
            self.status.code(),
            Some(code),
            "exit status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics, showing the output, unless the exit code is `code` and
    /// stderr contains each of `needles`.
    pub fn assert_stderr(&self, code: i32, needles: &[&str]) -> &Ran {
        self.assert_code(code).assert_stderr_has(needles)
    }

    /// Panics unless stderr contains each of `needles`.
    pub fn assert_stderr_has(&self, needles: &[&str]) -> &Ran {
        assert_all_in("stderr", &self.stderr, needles);
        self
    }

    /// Panics unless stdout contains each of `needles`.
    pub fn assert_stdout_has(&self, needles: &[&str]) -> &Ran {
        assert_all_in("stdout", &self.stdout, needles);
        self
    }
}

/// Panics, showing `text`, unless it contains each of `needles`.
fn assert_all_in(what: &str, text: &str, needles: &[&str]) {
    if let Some(missing) = needles.iter().find(|n| !text.contains(**n)) {
        panic!("{missing:?} not on {what}:\n{text}");
    }
}

/// Reads everything from `r` on a thread.
fn collect<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Appends everything from `r` to a shared buffer on a thread.
fn collect_shared<R: Read + Send + 'static>(mut r: R, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().expect("stderr buffer").extend(&chunk[..n]),
            }
        }
    })
}

/// Waits for `child` to exit, polling every 10 ms up to `limit`; kills it
/// and panics when the limit passes.
pub fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Spawns `cmd` (stdout and stderr piped), writes `stdin` and closes it,
/// and waits up to [`TIMEOUT`].
pub fn run_bounded(mut cmd: Command, stdin: &[u8]) -> Ran {
    let mut child = cmd.spawn().expect("spawn");
    if let Some(mut w) = child.stdin.take() {
        // A process that exits without reading gives EPIPE: not our concern.
        let _ = w.write_all(stdin);
    }
    let out = collect(child.stdout.take().expect("stdout piped"));
    let err = collect(child.stderr.take().expect("stderr piped"));
    let status = wait_bounded(&mut child, TIMEOUT, "the command");
    Ran {
        status,
        stdout: String::from_utf8_lossy(&out.join().expect("stdout thread")).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().expect("stderr thread")).into_owned(),
    }
}

/// A running `credproxy serve`. Killed (SIGKILL) and reaped on drop if it
/// is still running.
pub struct Proxy {
    child: Child,
    /// The first line of stdout: the socket path.
    pub socket: PathBuf,
    /// The `KEY=VALUE` lines after it, in order.
    pub lines: Vec<(String, String)>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proxy {
    /// Spawns `cmd` and reads its start lines: the socket path, then two
    /// variables, or three when `with_token`.
    pub fn spawn(mut cmd: Command, with_token: bool) -> Result<Proxy, Ran> {
        let mut child = cmd.spawn().expect("spawn serve");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread =
            collect_shared(child.stderr.take().expect("stderr piped"), stderr.clone());
        let deadline = Instant::now() + TIMEOUT;
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        // Forwards stdout's lines until EOF, a read error or no receiver.
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let _ = lines.try_for_each(|l| tx.send(l));
        });
        // The socket path, then two variables (three with a token).
        let want = if with_token { 4 } else { 3 };
        let mut got = Vec::with_capacity(want);
        while got.len() < want {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => got.push(line),
                Err(RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is ending.
                    let status = wait_bounded(&mut child, TIMEOUT, "serve");
                    let _ = stderr_thread.join();
                    let stderr =
                        String::from_utf8_lossy(&stderr.lock().expect("stderr")).into_owned();
                    return Err(Ran {
                        status,
                        stdout: got.join("\n"),
                        stderr,
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("serve printed only {got:?} within {TIMEOUT:?}");
                }
            }
        }
        let socket = PathBuf::from(&got[0]);
        let lines = got[1..]
            .iter()
            .map(|l| {
                let (k, v) = l
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not a KEY=VALUE line: {l:?}"));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        Ok(Proxy {
            child,
            socket,
            lines,
            stderr,
            stderr_thread: Some(stderr_thread),
            status: None,
        })
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exported variables as a map.
    #[must_use]
    pub fn exports(&self) -> BTreeMap<String, String> {
        self.lines.iter().cloned().collect()
    }

    /// The directory holding the socket (the instance directory).
    #[must_use]
    pub fn instance_dir(&self) -> PathBuf {
        self.socket
            .parent()
            .expect("socket has a parent")
            .to_path_buf()
    }

    /// The capability token file, when one was exported.
    #[must_use]
    pub fn token_file(&self) -> Option<PathBuf> {
        self.exports()
            .get("CREDPROXY_CAPABILITY_FILE")
            .map(PathBuf::from)
    }

    /// The capability token (without its newline); panics without one.
    #[must_use]
    pub fn token(&self) -> String {
        let path = self.token_file().expect("a capability token file");
        let text = fs::read_to_string(&path).expect("read token file");
        text.trim_end_matches('\n').to_owned()
    }

    /// A fresh client connection to the socket.
    #[must_use]
    pub fn connect(&self) -> Client {
        Client::connect(&self.socket).expect("connect to the proxy")
    }

    /// A connection that passed the handshake with the capability token
    /// (or without one, for `--insecure-no-token`).
    #[must_use]
    pub fn sandbox_client(&self) -> Client {
        let mut c = self.connect();
        let token = self.token_file().map(|_| self.token());
        let reply = c.handshake(token.as_deref());
        assert_eq!(reply["ok"], true, "handshake: {reply}");
        c
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        let pid = i32::try_from(self.pid()).expect("pid fits i32");
        kill(Pid::from_raw(pid), sig).expect("kill");
    }

    /// Waits (bounded) for the process to exit and for its stderr to close.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(st) = self.status {
            return st;
        }
        let st = wait_bounded(&mut self.child, TIMEOUT, "serve");
        self.status = Some(st);
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        st
    }

    /// Sends `sig`, then waits for the exit.
    pub fn stop(&mut self, sig: Signal) -> ExitStatus {
        self.signal(sig);
        self.wait()
    }

    /// Everything written to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr")).into_owned()
    }

    /// Polls stderr until it contains `needle`; returns it.
    pub fn wait_for_stderr(&self, needle: &str) -> String {
        wait_until(&format!("{needle:?} on stderr"), || {
            self.stderr().contains(needle)
        });
        self.stderr()
    }

    /// The stderr lines that parse as JSON objects (audit events).
    #[must_use]
    pub fn audit_events(&self) -> Vec<Value> {
        audit_events(&self.stderr())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The lines of `text` that parse as JSON objects.
#[must_use]
pub fn audit_events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// One frame: a 4-byte big-endian length, then the JSON (core's codec).
#[must_use]
pub fn encode(v: &Value) -> Vec<u8> {
    credproxy_core::frame::encode(v)
}

/// Reads one frame from `r`, decoded by core's [`FrameDecoder`]: exactly
/// the frame's bytes are read (the length prefix says how many), so the
/// stream holds nothing this reader took. `Ok(None)` on EOF before the
/// first byte of a frame; an error on EOF inside a frame, an oversize
/// length, a non-object, or invalid JSON.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Value>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let bad = |e: DecodeError| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}"));
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    // The header alone: an oversize length is refused before its body.
    if let Some(frame) = decoder.decode(&mut &header[..]).map_err(bad)? {
        return Ok(Some(Value::Object(frame)));
    }
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    r.read_exact(&mut body)?;
    match decoder.decode(&mut &body[..]).map_err(bad)? {
        Some(frame) => Ok(Some(Value::Object(frame))),
        None => unreachable!("the whole body completes the frame"),
    }
}

/// A version-2 handshake frame, with the token when given: the one the
/// client library sends.
#[must_use]
pub fn handshake_frame(token: Option<&str>) -> Value {
    proto::handshake_request(token)
}

/// A version-2 request frame, as the client library builds it.
#[must_use]
pub fn request(id: &str, op: &str, payload: Value) -> Value {
    proto::request(2, id, op, &payload)
}

/// A token object as `save_token` accepts it.
#[must_use]
pub fn token_json(access: &str) -> Value {
    json!({"access_token": access, "expiry": 4_102_444_800_u64, "token_type": "Bearer"})
}

/// The reply the server sends for a missing or wrong capability token.
#[must_use]
pub fn unauthorized_reply() -> Value {
    json!({"v":2,"op":"handshake","ok":false,"code":"UNAUTHORIZED","error":"Invalid or missing capability token"})
}

/// A raw frame client over a Unix socket; every read and write is bounded
/// by [`TIMEOUT`].
pub struct Client {
    /// The socket, for byte-level attacks (half-closes, clones, timeouts).
    pub stream: UnixStream,
    matcher: matcher::Matcher,
}

impl Client {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Client::connect_stream(stream))
    }

    /// A client on an already connected `stream` (a clone, to watch the
    /// same connection from another thread).
    #[must_use]
    pub fn connect_stream(stream: UnixStream) -> Client {
        Client {
            stream,
            matcher: matcher::Matcher::default(),
        }
    }

    /// Sends one frame.
    pub fn send(&mut self, v: &Value) -> io::Result<()> {
        self.stream.write_all(&encode(v))
    }

    /// Sends bytes as they are (e.g. several frames in one write).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one frame (`Ok(None)` at EOF).
    pub fn recv(&mut self) -> io::Result<Option<Value>> {
        read_frame(&mut self.stream)
    }

    /// Reads one frame; panics at EOF or on an error.
    pub fn recv_frame(&mut self) -> Value {
        match self.recv() {
            Ok(Some(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Sends a handshake (with `token` when given) and returns the reply;
    /// an accepted one readies the [`matcher::Matcher`].
    pub fn handshake(&mut self, token: Option<&str>) -> Value {
        self.matcher.handshake_on(&mut self.stream, token)
    }

    /// Sends a request and returns its reply (the only one outstanding),
    /// which must answer it.
    pub fn call(&mut self, id: &str, op: &str, payload: Value) -> Value {
        self.matcher.call_on(&mut self.stream, id, op, &payload)
    }

    /// Asserts that the server closes the connection within `limit`
    /// without sending a single byte; returns how long it took.
    pub fn closed_without_reply(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        self.stream
            .set_read_timeout(Some(limit))
            .expect("read timeout");
        let mut buf = [0u8; 256];
        let outcome = self.stream.read(&mut buf);
        let took = started.elapsed();
        self.stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        match outcome {
            Ok(0) => took,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => took,
            Ok(n) => panic!("expected a close without reply, got {n} bytes"),
            Err(e) => panic!("not closed within {limit:?}: {e}"),
        }
    }

    /// Asserts that the server closes the connection: the next read sees
    /// EOF (or a reset) rather than a frame or a timeout.
    pub fn assert_closed(&mut self) {
        match self.recv() {
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection to be closed, got {other:?}"),
        }
    }
}

/// A running `credproxy stdio`; killed and reaped on drop.
pub struct StdioProc {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<io::Result<Option<Value>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    eof: bool,
    matcher: matcher::Matcher,
}

impl StdioProc {
    /// Spawns `cmd` (stdin, stdout and stderr piped), a `credproxy stdio`.
    pub fn spawn(mut cmd: Command) -> StdioProc {
        let mut child = cmd.spawn().expect("spawn stdio");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread =
            collect_shared(child.stderr.take().expect("stderr piped"), stderr.clone());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            loop {
                let r = read_frame(&mut stdout);
                let last = !matches!(r, Ok(Some(_)));
                if tx.send(r).is_err() || last {
                    return;
                }
            }
        });
        StdioProc {
            child,
            stdin,
            frames: rx,
            stderr,
            stderr_thread: Some(stderr_thread),
            eof: false,
            matcher: matcher::Matcher::default(),
        }
    }

    /// Writes one frame to stdin.
    pub fn send(&mut self, v: &Value) -> io::Result<()> {
        self.send_raw(&encode(v))
    }

    /// Writes raw bytes to stdin.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let w = self.stdin.as_mut().expect("stdin still open");
        w.write_all(bytes)?;
        w.flush()
    }

    /// Closes stdin (EOF for the proxy).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next frame from stdout, `None` at EOF; panics on a malformed
    /// frame (stdout must carry only frames) or after [`TIMEOUT`].
    pub fn next(&mut self) -> Option<Value> {
        if self.eof {
            return None;
        }
        match self.frames.recv_timeout(TIMEOUT) {
            Ok(Ok(Some(v))) => Some(v),
            Ok(Ok(None)) => {
                self.eof = true;
                None
            }
            Ok(Err(e)) => panic!("stdout is not a clean frame stream: {e}"),
            Err(e) => panic!("no frame from stdio within {TIMEOUT:?}: {e}"),
        }
    }

    /// The next frame; panics at EOF.
    pub fn recv_frame(&mut self) -> Value {
        self.next().expect("a frame before EOF")
    }

    /// Handshakes without a token (host class) and checks the reply.
    pub fn handshake(&mut self) {
        let mut matcher = std::mem::take(&mut self.matcher);
        let reply = matcher.handshake_on(self, None);
        self.matcher = matcher;
        assert_eq!(
            reply,
            json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}})
        );
    }

    /// Sends a request and returns its reply (the only one outstanding),
    /// which must answer it.
    pub fn call(&mut self, id: &str, op: &str, payload: Value) -> Value {
        let mut matcher = std::mem::take(&mut self.matcher);
        let reply = matcher.call_on(self, id, op, &payload);
        self.matcher = matcher;
        reply
    }

    /// Waits (bounded) for the exit and for stderr to close.
    pub fn wait(&mut self) -> ExitStatus {
        let st = wait_bounded(&mut self.child, TIMEOUT, "stdio");
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        st
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything written to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr")).into_owned()
    }
}

/// Frames over the pipes, for the [`matcher::Matcher`].
impl matcher::Wire for StdioProc {
    fn put(&mut self, bytes: &[u8]) {
        self.send_raw(bytes).expect("write to stdio");
    }

    fn next_frame(&mut self) -> Value {
        self.recv_frame()
    }
}

impl Drop for StdioProc {
    fn drop(&mut self) {
        self.stdin = None;
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The other peer of the cross-uid tests: `nobody` (uid and gid).
pub const NOBODY: &str = "65534";

/// `setpriv` running `program` as [`NOBODY`], without supplementary
/// groups (the tests that use it need root).
#[must_use]
pub fn as_nobody(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(program);
    cmd
}

/// The first of `candidates` that runs as [`NOBODY`] and really is that
/// uid, or `None` (the caller skips).
#[must_use]
pub fn nobody_python(candidates: &[&str]) -> Option<String> {
    let check = "import os, sys; sys.exit(0 if os.getuid() == 65534 else 1)";
    candidates.iter().map(|py| (*py).to_owned()).find(|py| {
        as_nobody(py)
            .args(["-c", check])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs `body` (after [`PY_FRAMES`]) with `py` as [`NOBODY`], `args` as
/// its `sys.argv[1..]`; asserts exit 0 and returns the JSON it printed.
pub fn py_as_nobody(py: &str, body: &str, args: &[&str]) -> Value {
    let mut cmd = as_nobody(py);
    cmd.arg("-c")
        .arg(format!("{PY_FRAMES}\n{body}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ran = run_bounded(cmd, b"");
    ran.assert_code(0);
    serde_json::from_str(ran.stdout.trim())
        .unwrap_or_else(|e| panic!("client output {:?}: {e}", ran.stdout))
}

/// Makes `p`'s socket reachable for other uids, as only a deliberate
/// operator (`--allow-uid`) would: every directory from `s`'s root down
/// to the socket 0711, the socket 0666.
pub fn open_up(s: &Scratch, p: &Proxy) {
    let mut dir = p.instance_dir();
    loop {
        chmod(&dir, 0o711);
        if dir == s.root() {
            break;
        }
        dir = dir.parent().expect("under the scratch root").to_path_buf();
    }
    chmod(&p.socket, 0o666);
}

/// Finds a Python 3 interpreter, or `None` (the caller skips).
#[must_use]
pub fn python3() -> Option<String> {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import sys; sys.exit(0 if sys.version_info[0] == 3 else 1)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| "python3".to_owned())
}

/// Prints why a test did nothing.
pub fn skip(test: &str, why: &str) {
    eprintln!("{test}: skipped: {why}");
    println!("{test}: skipped: {why}");
}

/// A small Python module speaking the wire protocol, for child processes
/// (prepended to the scripts the tests write).
pub const PY_FRAMES: &str = r#"
import json, os, socket, struct, sys

def send(s, obj):
    b = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(b)) + b)

def recv(s):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf
    head = exact(4)
    if head is None:
        return None
    body = exact(struct.unpack(">I", head)[0])
    if body is None:
        return None
    return json.loads(body)
"#;

/// Writes `body` after [`PY_FRAMES`] to `dir/name` and returns the path.
pub fn write_py(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("{PY_FRAMES}\n{body}")).expect("write script");
    chmod(&path, 0o644);
    path
}

/// The p50 and p99 of `v`, for the figures tests' output.
pub fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    format!("p50 {:?}, p99 {:?}", at(50), at(99))
}

/// Asserts that `store migrate --dry-run` succeeded and listed the seed of
/// the migrate tests (tokens anthropic/default and codex/work, API key
/// OPENAI) by name, with no secret (the seeds' values hold `SENTINEL`).
pub fn assert_dry_run_lists_the_seed(dry: &Ran) {
    dry.assert_code(0);
    dry.assert_stdout_has(&[
        "token anthropic/default",
        "token codex/work",
        "API key OPENAI",
        "dry run",
    ]);
    assert!(!dry.stdout.contains("SENTINEL"), "{}", dry.stdout);
}
