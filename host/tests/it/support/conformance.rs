//! Support for the conformance suite (the `conformance_*` modules):
//! black-box tests of the real `credproxy` binary against the existing
//! server's acceptance checklist (reference notes §10; the table is
//! `CONFORMANCE.md`).
//!
//! Self-contained on purpose: nothing here uses the project's client
//! library, its engine types or its store, so the tests do not share the
//! server's assumptions. What they need is written out:
//!
//! - [`Env`]: a private directory under `/tmp` (short: `sun_path` is 108
//!   bytes) with a runtime directory, a store and a configuration file, and
//!   the binary's environment pointing only there.
//! - [`Server`]: a running `credproxy serve` (S-server by default, N-server
//!   with `--insecure-no-token`), killed and reaped on drop.
//! - [`Conn`]: a raw frame client over the Unix socket
//!   (`{u32 big-endian length}{JSON}`), every wait bounded.
//! - [`Stub`]: a stub OAuth provider on 127.0.0.1 (one thread per request,
//!   canned JSON from a handler, every request recorded), and [`Gate`] to
//!   hold its answers.
//! - [`sha256`] and [`b64url`] (the `sha2` and `base64` crates, not the
//!   server's code), to check PKCE challenges from outside.
//!
//! Nothing sleeps to wait for a timer: waits poll a condition every 10 ms
//! up to a bound.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use credproxy_core::frame::FrameDecoder;
use credproxy_unix::client::proto;
use nix::sys::signal::Signal;
use serde_json::{Map, Value, json};

use super::http_stub::{self, HttpStub, Mode, read_request};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_credproxy");

/// Bound on one read of a frame, a process start or an exit.
pub const WAIT: Duration = Duration::from_secs(10);

/// Bound on polling for a condition.
pub const POLL: Duration = Duration::from_secs(5);

/// Set to a store backend (`file`, `encrypted-file`, `keyring`, `postgres`) to run the
/// suite on it: every proxy and `key set` of [`Env`] gets `--store-backend`
/// (and for `encrypted-file` the tree's default key file; for `keyring`
/// every [`Env`] has its own private gnome-keyring, applied to each
/// command; for `postgres` every [`Env`] has its own database in one
/// cluster per test process, `support::postgres::SharedPostgres`). Unset:
/// the default (`auto`, so a new store is encrypted).
/// `backends.rs` runs the suite once more with each of `file`, `keyring`
/// and `postgres`.
pub const BACKEND_ENV: &str = "CREDPROXY_IT_STORE_BACKEND";

/// A far future expiry (2100-01-01) for tokens that must stay valid.
pub const FAR: u64 = 4_102_444_800;

pub use super::wait_for;

/// A value unique in this test run (for nonces, ids, names).
pub fn nonce(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{t:x}", std::process::id())
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------
// Environment and processes.

/// A private tree for one test:
///
/// ```text
/// /tmp/cpXXXXXX/   (removed on drop)
///   run/           XDG_RUNTIME_DIR (0700)
///   store/         --store
///   config.toml    --config (when written)
/// ```
///
/// The tree is a [`super::Scratch`] (which `Env` derefs to, for `root`
/// and `runtime`) plus the configuration file.
pub struct Env {
    scratch: super::Scratch,
    config: Option<PathBuf>,
    /// The tree's own keyring, when [`BACKEND_ENV`] is `keyring`.
    keyring: Option<super::keyring::TestKeyring>,
    /// The database every process of this tree uses, for the `postgres`
    /// backend.
    pg: Option<PgTarget>,
}

/// A `postgres` store for an [`Env`]: the connection string (given to each
/// process as `CREDPROXY_POSTGRES_URL`) and the data key file the fleet
/// shares.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// The connection string.
    pub url: String,
    /// The key file (`--store-key-file`).
    pub key_file: PathBuf,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl std::ops::Deref for Env {
    type Target = super::Scratch;
    fn deref(&self) -> &super::Scratch {
        &self.scratch
    }
}

impl Env {
    /// A fresh tree.
    #[must_use]
    pub fn new() -> Env {
        let backend = std::env::var(BACKEND_ENV);
        let keyring =
            (backend.as_deref() == Ok("keyring")).then(super::keyring::TestKeyring::fresh);
        // `postgres`: a database of its own in the process's one cluster.
        let pg = (backend.as_deref() == Ok("postgres")).then(|| {
            let shared = super::postgres::SharedPostgres::get();
            PgTarget {
                url: shared.new_database(),
                key_file: shared.key_file.clone(),
            }
        });
        Env {
            scratch: super::Scratch::new(),
            config: None,
            keyring,
            pg,
        }
    }

    /// A fresh tree whose processes use the `postgres` store `pg` (several
    /// trees on one target are the proxies of one fleet).
    #[must_use]
    pub fn on_postgres(pg: &PgTarget) -> Env {
        Env {
            scratch: super::Scratch::new(),
            config: None,
            keyring: None,
            pg: Some(pg.clone()),
        }
    }

    /// A fresh tree with `toml` as its configuration file.
    #[must_use]
    pub fn with_config(toml: &str) -> Env {
        let mut e = Env::new();
        e.write_config(toml);
        e
    }

    /// Writes the configuration file; later processes get `--config`.
    pub fn write_config(&mut self, toml: &str) {
        let path = self.root().join("config.toml");
        fs::write(&path, toml).expect("write config");
        self.config = Some(path);
    }

    /// The store directory, as an argument.
    #[must_use]
    pub fn store(&self) -> String {
        self.store_arg()
    }

    /// The binary with `args` and an environment pointing into this tree
    /// (`XDG_CONFIG_HOME` apart from `config.toml`, which only `--config`
    /// names).
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        super::isolate(&mut cmd, self.root(), &self.root().join("xdgconfig"));
        if let Some(keyring) = &self.keyring {
            keyring.apply(&mut cmd);
        }
        if let Some(pg) = &self.pg {
            cmd.env("CREDPROXY_POSTGRES_URL", &pg.url);
        }
        cmd
    }

    /// `--store-backend NAME [--store-key-file K]` for [`BACKEND_ENV`] (or
    /// this tree's postgres store), for a command a test writes out itself.
    pub fn backend_args(&self) -> Vec<String> {
        if let Some(pg) = &self.pg {
            return vec![
                "--store-backend".to_owned(),
                "postgres".to_owned(),
                "--store-key-file".to_owned(),
                pg.key_file.display().to_string(),
            ];
        }
        let Some(name) = std::env::var(BACKEND_ENV).ok().filter(|n| !n.is_empty()) else {
            return Vec::new();
        };
        let mut v = vec!["--store-backend".to_owned(), name.clone()];
        if name == "encrypted-file" {
            // The default key file of this tree, so that the commands a
            // test writes out itself (with the default backend) find it.
            let key = self.root().join("xdgconfig/credproxy/store.key");
            if !key.exists() {
                let arg = key.display().to_string();
                let ran = super::run_bounded(
                    self.command(&["store", "init-key", "--key-file", &arg]),
                    b"",
                );
                assert!(ran.status.success(), "init-key: {ran:?}");
            }
            v.extend(["--store-key-file".to_owned(), key.display().to_string()]);
        }
        v
    }

    /// `[sub] --store S [--config C] [backend] extra…`
    fn proxy_args(&self, sub: &str, extra: &[&str]) -> Vec<String> {
        let mut v = vec![sub.to_owned(), "--store".into(), self.store()];
        v.extend(self.backend_args());
        if let Some(c) = &self.config {
            v.push("--config".into());
            v.push(c.display().to_string());
        }
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    }

    /// Stores an API key with `credproxy key set NAME` (value on stdin).
    pub fn key_set(&self, name: &str, value: &str) {
        let store = self.store();
        let mut args = vec![
            "key".to_owned(),
            "set".into(),
            name.into(),
            "--store".into(),
            store,
        ];
        args.extend(self.backend_args());
        let mut cmd = self.command_of(&args);
        cmd.stdin(Stdio::piped());
        let ran = super::run_bounded(cmd, format!("{value}\n").as_bytes());
        assert!(ran.status.success(), "key set {name}: {ran:?}");
    }

    /// An S-server: `serve` with its generated capability token.
    #[must_use]
    pub fn serve(&self, extra: &[&str]) -> Server {
        Server::spawn_command(self.command_of(&self.proxy_args("serve", extra)), true)
    }

    /// An N-server: `serve --insecure-no-token`.
    #[must_use]
    pub fn serve_n(&self, extra: &[&str]) -> Server {
        let mut all = vec!["--insecure-no-token"];
        all.extend_from_slice(extra);
        Server::spawn_command(self.command_of(&self.proxy_args("serve", &all)), false)
    }

    /// An N- or S-server on this tree, without extra flags.
    pub fn serve_as(&self, kind: Kind) -> Server {
        match kind {
            Kind::N => self.serve_n(&[]),
            Kind::S => self.serve(&[]),
        }
    }

    /// `serve` that is expected to fail before printing its start lines:
    /// the exit status and stderr.
    #[must_use]
    pub fn serve_fails(&self, extra: &[&str]) -> (ExitStatus, String) {
        let mut cmd = self.command_of(&self.proxy_args("serve", extra));
        cmd.stdout(Stdio::null());
        let mut child = cmd.spawn().expect("spawn serve");
        let err = super::collect(child.stderr.take().expect("stderr"));
        let st = wait_child(&mut child, WAIT, "failing serve");
        let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
        (st, err)
    }

    /// `credproxy stdio` (a host-class connection on its pipes).
    #[must_use]
    pub fn stdio(&self, extra: &[&str]) -> StdioProc {
        let mut cmd = self.command_of(&self.proxy_args("stdio", extra));
        cmd.stdin(Stdio::piped());
        StdioProc::spawn(cmd)
    }

    fn command_of(&self, args: &[String]) -> Command {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&refs)
    }

    /// Saves `token` under `provider`/`bucket` over a host-class `stdio`
    /// connection (`save_token` keeps no refresh token).
    pub fn save_token(&self, provider: &str, bucket: &str, token: &Value) {
        let mut s = self.stdio(&[]);
        s.handshake();
        let r = s.call(
            "seed",
            "save_token",
            json!({"provider": provider, "bucket": bucket, "token": token}),
        );
        assert_eq!(
            r,
            json!({"id":"seed","ok":true,"data":{}}),
            "seed {provider}"
        );
    }
}

/// Waits (polling) for `child` to exit; kills it and panics after `limit`.
pub use super::wait_bounded as wait_child;

/// `credproxy stdio`: the suite's one stdio process (frames read by a
/// thread, every wait bounded).
pub use super::StdioProc;

/// A running `credproxy serve` (the suite's one process launcher,
/// [`super::Proxy`], which it derefs to), with connections of this
/// suite's [`Conn`]; SIGKILLed and reaped on drop.
pub struct Server {
    proxy: super::Proxy,
}

impl std::ops::Deref for Server {
    type Target = super::Proxy;
    fn deref(&self) -> &super::Proxy {
        &self.proxy
    }
}

impl Server {
    /// Spawns a prepared `serve` command (e.g. with an extra variable);
    /// panics, with its stderr, when it exits before its start lines.
    #[must_use]
    pub fn spawn_command(cmd: Command, with_token: bool) -> Server {
        match super::Proxy::spawn(cmd, with_token) {
            Ok(proxy) => Server { proxy },
            Err(e) => panic!(
                "serve did not start: exit {:?}; stdout {:?}; stderr:\n{}",
                e.status, e.stdout, e.stderr
            ),
        }
    }

    /// A new, unhandshaken connection.
    #[must_use]
    pub fn conn(&self) -> Conn {
        Conn::connect(&self.socket)
    }

    /// A connection that passed a v2 handshake (with the token on an
    /// S-server).
    #[must_use]
    pub fn hs(&self) -> Conn {
        let token = self.token_file().map(|_| self.token());
        let mut c = self.conn();
        let r = c.handshake(token.as_deref());
        assert_eq!(
            r,
            json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}})
        );
        c
    }

    /// A connection that negotiated version 1 (`min = max = 1`).
    #[must_use]
    pub fn hs_v1(&self) -> Conn {
        let mut payload = json!({"minVersion":1,"maxVersion":1});
        if self.token_file().is_some() {
            payload["capabilityToken"] = json!(self.token());
        }
        let mut c = self.conn();
        c.send(&json!({"v":1,"op":"handshake","payload":payload}));
        let r = c.recv();
        assert_eq!(
            r,
            json!({"v":1,"op":"handshake","ok":true,"data":{"version":1}})
        );
        c
    }

    /// SIGTERM, then a bounded wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.proxy.stop(Signal::SIGTERM)
    }

    /// SIGKILL (a crash: nothing is cleaned up), then the reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.proxy.stop(Signal::SIGKILL)
    }
}

// ---------------------------------------------------------------------------
// Frames.

/// A frame: 4-byte big-endian length, then the JSON (core's codec).
#[must_use]
pub fn encode(v: &Value) -> Vec<u8> {
    credproxy_core::frame::encode(v)
}

/// A frame around raw payload bytes (core's codec).
#[must_use]
pub fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    credproxy_core::frame::encode_payload(payload)
}

/// Reads one frame with core's [`FrameDecoder`], keeping input past it in
/// `buf` across calls. `Ok(None)`: EOF (or a reset) at a frame boundary. A
/// timeout is an error of kind `WouldBlock`/`TimedOut`.
fn read_frame(
    r: &mut impl Read,
    decoder: &mut FrameDecoder,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Value>> {
    loop {
        let mut input = &buf[..];
        let decoded = decoder.decode(&mut input);
        let used = buf.len() - input.len();
        buf.drain(..used);
        match decoded {
            Ok(Some(frame)) => return Ok(Some(Value::Object(frame))),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, format!("{e:?}"))),
        }
        let mut chunk = [0u8; 65536];
        match r.read(&mut chunk) {
            Ok(0) if !decoder.is_partial() => return Ok(None),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !decoder.is_partial() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a bounded read saw.
#[derive(Debug, PartialEq)]
pub enum Got {
    /// A frame.
    Frame(Value),
    /// The server closed the connection.
    Closed,
    /// Nothing within the bound.
    Nothing,
}

/// A raw frame client over the proxy's Unix socket.
pub struct Conn {
    stream: UnixStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    next_id: u64,
    matcher: super::matcher::Matcher,
}

impl Conn {
    /// Connects (panics on failure).
    #[must_use]
    pub fn connect(path: &Path) -> Conn {
        Conn::try_connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()))
    }

    /// Connects.
    pub fn try_connect(path: &Path) -> io::Result<Conn> {
        let stream = UnixStream::connect(path)?;
        stream.set_write_timeout(Some(WAIT))?;
        Ok(Conn {
            stream,
            decoder: FrameDecoder::new(super::MAX_FRAME),
            buf: Vec::new(),
            next_id: 0,
            matcher: super::matcher::Matcher::default(),
        })
    }

    /// Writes raw bytes (panics on failure).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the proxy");
    }

    /// Writes raw bytes, reporting failure.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes one frame.
    pub fn send(&mut self, v: &Value) {
        self.send_raw(&encode(v));
    }

    /// Half-closes the write side (EOF for the server).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// The next frame, EOF, or nothing within `limit`.
    pub fn get(&mut self, limit: Duration) -> Got {
        self.stream
            .set_read_timeout(Some(limit.max(Duration::from_millis(1))))
            .expect("set timeout");
        match read_frame(&mut self.stream, &mut self.decoder, &mut self.buf) {
            Ok(Some(v)) => Got::Frame(v),
            Ok(None) => Got::Closed,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Got::Nothing
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Got::Closed,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Got::Closed,
            Err(e) => panic!("reading a frame: {e}"),
        }
    }

    /// The next frame; panics on EOF or after [`WAIT`].
    pub fn recv(&mut self) -> Value {
        match self.get(WAIT) {
            Got::Frame(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// `n` frames, keyed by `id` (panics on a duplicate id).
    pub fn recv_by_id(&mut self, n: usize) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let v = self.recv();
            let id = v["id"].as_str().expect("a string id").to_owned();
            assert!(out.insert(id.clone(), v).is_none(), "two replies for {id}");
        }
        out
    }

    /// Asserts that nothing arrives for `limit` (and the connection stays
    /// open).
    pub fn assert_silent(&mut self, limit: Duration) {
        match self.get(limit) {
            Got::Nothing => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Asserts that the server closes the connection within `limit`,
    /// sending no frame first.
    pub fn assert_closed_within(&mut self, limit: Duration) {
        match self.get(limit) {
            Got::Closed => {}
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }

    /// Sends a handshake frame `{v:2, op:"handshake", payload:{1..2, token}}`
    /// (the client library's) and returns the reply.
    pub fn handshake(&mut self, token: Option<&str>) -> Value {
        let mut matcher = std::mem::take(&mut self.matcher);
        let reply = matcher.handshake_on(self, token);
        self.matcher = matcher;
        reply
    }

    /// A fresh request id.
    pub fn id(&mut self) -> String {
        self.next_id += 1;
        format!("r{}", self.next_id)
    }

    /// Sends a version-2 request with id `id` (whatever the connection
    /// negotiated: tests of v1 connections send v2 frames on purpose).
    pub fn req(&mut self, id: &str, op: &str, payload: Value) {
        self.send(&proto::request(2, id, op, &payload));
    }

    /// One request and its reply (the only one outstanding), which must
    /// answer it (matched by the client protocol after [`Conn::handshake`],
    /// by id after a raw or v1 one); the whole frame is returned.
    pub fn call(&mut self, op: &str, payload: Value) -> Value {
        let id = self.id();
        let mut matcher = std::mem::take(&mut self.matcher);
        let reply = matcher.call_on(self, &id, op, &payload);
        self.matcher = matcher;
        reply
    }

    /// Like [`Conn::call`], asserting `ok:true`; returns `data`.
    pub fn ok(&mut self, op: &str, payload: Value) -> Value {
        let r = self.call(op, payload);
        assert_eq!(r["ok"], true, "{op}: {r}");
        assert!(r.get("code").is_none(), "{r}");
        r["data"].clone()
    }

    /// Like [`Conn::call`], asserting `ok:false`; returns `(code, error)`.
    pub fn err(&mut self, op: &str, payload: Value) -> (String, String) {
        let r = self.call(op, payload);
        assert_eq!(r["ok"], false, "{op}: {r}");
        code_of(&r)
    }
}

/// The bounded reads of a [`Conn`], for the matcher.
impl super::matcher::Wire for Conn {
    fn put(&mut self, bytes: &[u8]) {
        self.send_raw(bytes);
    }

    fn next_frame(&mut self) -> Value {
        self.recv()
    }
}

/// `(code, error)` of an error reply, checking the envelope's shape.
pub fn code_of(r: &Value) -> (String, String) {
    assert_eq!(r["ok"], false, "{r}");
    assert!(r.get("data").is_none(), "{r}");
    assert!(
        r.get("v").is_none(),
        "post-handshake replies carry no v: {r}"
    );
    (
        r["code"].as_str().expect("a string code").to_owned(),
        r["error"].as_str().expect("a string error").to_owned(),
    )
}

/// An error reply, exactly.
#[must_use]
pub fn err_reply(id: &str, code: &str, error: &str) -> Value {
    json!({"id":id,"ok":false,"code":code,"error":error})
}

/// A `save_token` token object.
#[must_use]
pub fn tok(access: &str) -> Value {
    json!({"access_token": access, "expiry": FAR, "token_type": "Bearer"})
}

// ---------------------------------------------------------------------------
// Stub OAuth provider.

/// One HTTP request the stub received.
#[derive(Debug, Clone)]
pub struct Req {
    /// Method.
    #[expect(
        dead_code,
        reason = "no test reads it yet; it completes the record's Debug output"
    )]
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query parameters.
    #[expect(
        dead_code,
        reason = "no test reads it yet; it completes the record's Debug output"
    )]
    pub query: BTreeMap<String, String>,
    /// Headers (names lower-cased).
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
}

impl Req {
    /// The body's fields: form-urlencoded or a JSON object of strings.
    #[must_use]
    pub fn fields(&self) -> BTreeMap<String, String> {
        let ct = self
            .headers
            .get("content-type")
            .cloned()
            .unwrap_or_default();
        if ct.contains("json") {
            let v: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            parse_query(&self.body)
        }
    }

    /// One body field.
    #[must_use]
    pub fn field(&self, name: &str) -> Option<String> {
        self.fields().get(name).cloned()
    }

    /// Whether the body is JSON (by content type).
    #[must_use]
    pub fn is_json(&self) -> bool {
        self.headers
            .get("content-type")
            .is_some_and(|c| c.contains("json"))
    }
}

/// An answer of the stub.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code; 0 hangs up without answering.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

/// `200` with `body`.
#[must_use]
pub fn ok_json(body: Value) -> Resp {
    Resp { status: 200, body }
}

/// `status` with an empty JSON object (e.g. a 503); 0 hangs up.
#[must_use]
pub fn status(status: u16) -> Resp {
    Resp {
        status,
        body: json!({}),
    }
}

/// `status` with `{"error": error}`.
#[must_use]
pub fn oauth_err(status: u16, error: &str) -> Resp {
    Resp {
        status,
        body: json!({"error": error, "error_description": "stub says no <b>raw</b>"}),
    }
}

type Handler = dyn Fn(&Req, usize) -> Resp + Send + Sync;

/// A stub OAuth provider on 127.0.0.1. The handler gets each request and
/// its index among the requests to the same path (0-based); each request is
/// served on its own thread, so a handler may block (see [`Gate`]).
pub struct Stub {
    stub: HttpStub,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Stub {
    /// Starts a stub answering with `handler`.
    pub fn start(handler: impl Fn(&Req, usize) -> Resp + Send + Sync + 'static) -> Stub {
        let log: Arc<Mutex<Vec<Req>>> = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let stub = HttpStub::start(Mode::Threaded, usize::MAX, move |stream, _| {
            serve_one(stream, &log2, &handler);
        });
        Stub { stub, log }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        self.stub.url(path)
    }

    /// Every request so far.
    #[must_use]
    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().expect("log").clone()
    }

    /// The requests to `path`.
    #[must_use]
    pub fn to(&self, path: &str) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// How many requests reached `path`.
    #[must_use]
    pub fn count(&self, path: &str) -> usize {
        self.to(path).len()
    }

    /// Polls until `path` has seen `n` requests.
    pub fn wait_count(&self, path: &str, n: usize) {
        wait_for(&format!("{n} requests to {path}"), POLL, || {
            self.count(path) >= n
        });
    }
}

fn serve_one(mut stream: TcpStream, log: &Mutex<Vec<Req>>, handler: &Handler) {
    let Ok(got) = read_request(&mut stream) else {
        return;
    };
    let req = Req {
        path: got.path().to_owned(),
        query: parse_query(got.query()),
        headers: (got.headers.iter())
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        body: String::from_utf8_lossy(&got.body).into_owned(),
        method: got.method,
    };
    let nth = {
        let mut log = log.lock().expect("log");
        let nth = log.iter().filter(|r| r.path == req.path).count();
        log.push(req.clone());
        nth
    };
    let resp = handler(&req, nth);
    if resp.status == 0 {
        // Hang up without an answer (a transport failure for the caller).
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let out = http_stub::json(&format!("{} Stub", resp.status), &resp.body.to_string());
    let _ = stream.write_all(&out);
    let _ = stream.flush();
}

/// Decodes `a=b&c=d` (form encoding: `+` is a space), with the `url`
/// crate's form parser.
#[must_use]
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

/// The query parameters of a URL.
#[must_use]
pub fn url_query(url: &str) -> BTreeMap<String, String> {
    url.split_once('?')
        .map(|(_, q)| parse_query(q))
        .unwrap_or_default()
}

/// A gate that holds stub answers until opened.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Gate {
    /// A closed gate.
    #[must_use]
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens it for good.
    pub fn open(&self) {
        let (m, c) = &*self.inner;
        *m.lock().expect("gate") = true;
        c.notify_all();
    }

    /// Blocks until opened (at most [`WAIT`]).
    pub fn wait(&self) {
        let (m, c) = &*self.inner;
        let g = m.lock().expect("gate");
        let _ = c
            .wait_timeout_while(g, WAIT, |open| !*open)
            .expect("gate wait");
    }
}

pub use super::http_stub::free_port;

/// A minimal HTTP GET to 127.0.0.1 (the "browser" of a loopback redirect):
/// the status and body.
pub fn http_get(port: u16, target: &str) -> (u16, String) {
    let answer = http_stub::get(([127, 0, 0, 1], port).into(), target);
    let (status_line, _, body) = http_stub::split_answer(&answer);
    let status = (status_line.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body)
}

/// Form-encodes a query value (the `url` crate's serializer).
#[must_use]
pub fn pct(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------------------------------------------------------------------------
// PKCE helpers.

/// SHA-256 (the `sha2` crate), for checking `code_challenge = S256(verifier)`.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// Base64url without padding (the `base64` crate).
#[must_use]
pub fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A JSON object's keys.
#[must_use]
pub fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m: &Map<String, Value>| m.keys().cloned().collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// A standard stub provider and logins through it.

/// Stub paths of the built-in providers pointed at the stub.
pub mod path {
    /// Anthropic token endpoint (exchange and refresh).
    pub const ANTHROPIC: &str = "/anthropic/token";
    /// Gemini token endpoint.
    pub const GEMINI: &str = "/gemini/token";
    /// Qwen device authorization endpoint.
    pub const QWEN_DEVICE: &str = "/qwen/device";
    /// Qwen token endpoint (device polling and refresh).
    pub const QWEN_TOKEN: &str = "/qwen/token";
    /// Codex token endpoint.
    pub const CODEX: &str = "/codex/token";
}

/// `[providers.*]` tables pointing `anthropic`, `gemini` and `qwen` at the
/// stub (and `codex` too, with its loopback redirect on `codex_port`).
#[must_use]
pub fn providers_toml(stub: &Stub, codex_port: Option<u16>) -> String {
    let mut t = format!(
        "[providers.anthropic]\nauthorize_url = \"{a}\"\ntoken_url = \"{at}\"\n\n\
         [providers.gemini]\nauthorize_url = \"{g}\"\ntoken_url = \"{gt}\"\n\n\
         [providers.qwen]\ndevice_url = \"{qd}\"\ntoken_url = \"{qt}\"\n\n",
        a = stub.url("/anthropic/authorize"),
        at = stub.url(path::ANTHROPIC),
        g = stub.url("/gemini/authorize"),
        gt = stub.url(path::GEMINI),
        qd = stub.url(path::QWEN_DEVICE),
        qt = stub.url(path::QWEN_TOKEN),
    );
    if let Some(port) = codex_port {
        t.push_str(&format!(
            "[providers.codex]\nauthorize_url = \"{}\"\ntoken_url = \"{}\"\n\
             redirect_uri = \"http://localhost:{port}/auth/callback\"\n\n",
            stub.url("/codex/authorize"),
            stub.url(path::CODEX),
        ));
    }
    t
}

/// The standard answers of a token endpoint:
/// - `authorization_code` with code `C` → `at-C`, `rt-C`, `expires_in`
///   3600, `token_type` `bearer`, `account_id` `acct-C`;
/// - `refresh_token` with `R` → `at-R-<n>` (n = index of the request to
///   this path), no new refresh token, `expires_in` 3600.
#[must_use]
pub fn std_token(req: &Req, nth: usize) -> Resp {
    let f = req.fields();
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = f.get("code").cloned().unwrap_or_default();
            ok_json(json!({
                "access_token": format!("at-{code}"),
                "refresh_token": format!("rt-{code}"),
                "expires_in": 3600,
                "token_type": "bearer",
                "account_id": format!("acct-{code}"),
            }))
        }
        Some("refresh_token") => {
            let rt = f.get("refresh_token").cloned().unwrap_or_default();
            ok_json(json!({
                "access_token": format!("at-{rt}-{nth}"),
                "expires_in": 3600,
                "token_type": "Bearer",
            }))
        }
        _ => oauth_err(400, "unsupported_grant_type"),
    }
}

/// A fresh tree, an N-server on it and a connection past the handshake:
/// what most checklist items start from.
#[must_use]
pub fn n_conn() -> (Env, Server, Conn) {
    let env = Env::new();
    let srv = env.serve_n(&[]);
    let c = srv.hs();
    (env, srv, c)
}

/// The two servers of the checklist: N (`--insecure-no-token`, host
/// class) and S (generated capability token, sandbox class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `serve --insecure-no-token`.
    N,
    /// `serve`.
    S,
}

/// What a checklist item puts in the store before its server starts.
#[derive(Debug, Clone, Copy)]
pub enum Seed<'a> {
    /// An API key and its value.
    Key(&'a str, &'a str),
    /// `tok(access)` for a provider and bucket: `(provider, bucket, access)`.
    Token(&'a str, &'a str, &'a str),
}

/// One request of a checklist item and what must answer it.
#[derive(Debug, Clone)]
pub enum Step<'a> {
    /// `op` answers `ok:true` with exactly this `data`.
    Answers(&'a str, Value, Value),
    /// `op` answers `ok:true`; `data[field]` is exactly this.
    Field(&'a str, Value, &'a str, Value),
    /// `op` is refused with exactly this code and message (the whole reply).
    Refuses(&'a str, Value, &'a str, &'a str),
    /// `op` is refused with this code.
    Code(&'a str, Value, &'a str),
}

/// A fresh tree seeded with `seeds`, a server of `kind` on it and a
/// connection past the handshake.
#[must_use]
pub fn seeded(kind: Kind, seeds: &[Seed]) -> (Env, Server, Conn) {
    let env = Env::new();
    for seed in seeds {
        match *seed {
            Seed::Key(name, value) => env.key_set(name, value),
            Seed::Token(provider, bucket, access) => env.save_token(provider, bucket, &tok(access)),
        }
    }
    let srv = env.serve_as(kind);
    let c = srv.hs();
    (env, srv, c)
}

/// Runs `steps` in order on one connection.
#[track_caller]
pub fn run_steps(c: &mut Conn, steps: &[Step]) {
    for step in steps {
        match step.clone() {
            Step::Answers(op, payload, want) => assert_eq!(c.ok(op, payload), want, "{op}"),
            Step::Field(op, payload, field, want) => {
                assert_eq!(c.ok(op, payload)[field], want, "{op}");
            }
            Step::Refuses(op, payload, code, error) => {
                let got = c.call(op, payload);
                let id = format!("r{}", c.next_id);
                assert_eq!(got, err_reply(&id, code, error), "{op}");
            }
            Step::Code(op, payload, code) => assert_eq!(c.err(op, payload).0, code, "{op}"),
        }
    }
}

/// A checklist item: a server of `kind` over a store seeded with `seeds`,
/// one connection past the handshake, `steps` on it.
#[track_caller]
pub fn check(kind: Kind, seeds: &[Seed], steps: &[Step]) {
    let (_env, _srv, mut c) = seeded(kind, seeds);
    run_steps(&mut c, steps);
}

/// A checklist item on a fresh N-server: `op` is refused with exactly
/// `code` and `error`.
#[track_caller]
pub fn n_refuses(op: &str, payload: Value, code: &str, error: &str) {
    check(Kind::N, &[], &[Step::Refuses(op, payload, code, error)]);
}

/// The exact handshake reply refusing a connection.
#[must_use]
pub fn handshake_refusal(code: &str, error: &str) -> Value {
    json!({"v":2,"op":"handshake","ok":false,"code":code,"error":error})
}

/// On a fresh server of `kind`: a handshake presenting `token` is refused
/// with exactly `code`/`error`, and the connection closes.
#[track_caller]
pub fn check_handshake_refused(kind: Kind, token: Option<&str>, code: &str, error: &str) {
    let env = Env::new();
    let srv = env.serve_as(kind);
    let mut c = srv.conn();
    assert_eq!(c.handshake(token), handshake_refusal(code, error));
    c.assert_closed_within(Duration::from_secs(5));
}

/// On a fresh server of `kind`: a handshake for version 999 only is
/// refused as `UNKNOWN_VERSION`, and the connection closes.
#[track_caller]
pub fn check_version_999_refused(kind: Kind) {
    let env = Env::new();
    let srv = env.serve_as(kind);
    let mut c = srv.conn();
    c.send(&json!({"v":999,"op":"handshake","payload":{"minVersion":999,"maxVersion":999}}));
    assert_eq!(
        c.recv(),
        handshake_refusal("UNKNOWN_VERSION", "Unsupported protocol version")
    );
    c.assert_closed_within(Duration::from_secs(5));
}

/// An N-server on `stub`'s providers with extra `[limits]` lines (the
/// tree is returned to keep it alive).
pub fn n_server(stub: &Stub, limits: &str) -> (Env, Server) {
    let env = Env::with_config(&format!(
        "[limits]\n{limits}\n\n{}",
        providers_toml(stub, None)
    ));
    let srv = env.serve_n(&[]);
    (env, srv)
}

/// [`n_server`] and a connection to it past the handshake.
#[must_use]
pub fn n_client(stub: &Stub, limits: &str) -> (Env, Server, Conn) {
    let (env, srv) = n_server(stub, limits);
    let c = srv.hs();
    (env, srv, c)
}

/// A stub where every token endpoint answers [`std_token`].
#[must_use]
pub fn std_stub() -> Stub {
    Stub::start(std_token)
}

/// Logs in through a pkce_redirect provider on `c`: initiate (with
/// `bucket` when given), then exchange `code`. Returns the exchange reply.
pub fn login(c: &mut Conn, provider: &str, bucket: Option<&str>, code: &str) -> Value {
    let mut p = json!({"provider": provider});
    if let Some(b) = bucket {
        p["bucket"] = json!(b);
    }
    let init = c.ok("oauth_initiate", p);
    let sid = init["session_id"].as_str().expect("session_id").to_owned();
    c.call("oauth_exchange", json!({"session_id": sid, "code": code}))
}

/// Like [`login`], asserting success; returns the token data.
pub fn login_ok(c: &mut Conn, provider: &str, bucket: Option<&str>, code: &str) -> Value {
    let r = login(c, provider, bucket, code);
    assert_eq!(r["ok"], true, "login {provider}: {r}");
    r["data"].clone()
}

/// A stub for device flows (`qwen` at [`path::QWEN_DEVICE`] /
/// [`path::QWEN_TOKEN`]): the device endpoint answers `dc-<n>` / `UC-<n>`
/// (with `interval` when given); device-code polls get `script[i]` for the
/// i-th poll (the last entry repeats); refreshes get [`std_token`].
#[must_use]
pub fn device_stub(script: Vec<Resp>, interval: Option<u64>) -> Stub {
    let polls = Arc::new(AtomicU64::new(0));
    Stub::start(move |req, nth| match req.path.as_str() {
        path::QWEN_DEVICE => {
            let mut body = json!({
                "device_code": format!("dc-{nth}"),
                "user_code": format!("UC-{nth}"),
                "verification_uri": "https://example.com/device",
                "verification_uri_complete": format!("https://example.com/device?user_code=UC-{nth}"),
                "expires_in": 600,
            });
            if let Some(i) = interval {
                body["interval"] = json!(i);
            }
            ok_json(body)
        }
        path::QWEN_TOKEN if req.field("grant_type").as_deref() == Some("refresh_token") => {
            std_token(req, nth)
        }
        path::QWEN_TOKEN => {
            let i = usize::try_from(polls.fetch_add(1, Ordering::SeqCst)).unwrap_or(usize::MAX);
            script[i.min(script.len() - 1)].clone()
        }
        _ => std_token(req, nth),
    })
}

/// A device-flow token answer carrying `access` and `refresh`.
#[must_use]
pub fn device_token(access: &str, refresh: &str) -> Resp {
    ok_json(json!({
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": 3600,
        "token_type": "bearer",
        "resource_url": "portal.qwen.ai",
    }))
}

/// Polls `oauth_poll` until it is no longer pending; returns that reply.
pub fn poll_until_done(c: &mut Conn, sid: &str) -> Value {
    let mut last = Value::Null;
    wait_for("the login to leave pending", POLL, || {
        last = c.call("oauth_poll", json!({"session_id": sid}));
        !(last["ok"] == true && last["data"]["status"] == "pending")
    });
    last
}
