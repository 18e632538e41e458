//! Helpers for the hostile-client suite (the `hostile_*` modules): the
//! real binary under attack, a well-behaved witness client, memory and
//! descriptor readings of the server process, a snapshot of the stored
//! data, a raw byte-level client and a stub OAuth token endpoint that can
//! hold its answers.
//!
//! Every test follows the same shape:
//!
//! 1. [`Target::start`] seeds a store (a canary token whose refresh token
//!    must never leave the host, a canary API key and the witness's key),
//!    snapshots it, starts `credproxy serve` and reads its memory and
//!    descriptor count;
//! 2. [`Witness::start`] opens a well-behaved connection that keeps doing
//!    `get_api_key` round trips on its own thread, timing each one;
//! 3. the test attacks, calling [`Witness::during`] at the height of the
//!    attack (it returns once a round trip has completed after the call);
//! 4. [`Witness::stop`] asserts every round trip was answered correctly
//!    within [`PROMPT`] (or a quarter of the witness's run, for an attack
//!    that lasts longer than 2 s: [`WINDOW_SHARE`]); [`Target::finish`] asserts the server is alive,
//!    its descriptors are back to the baseline once the clients are gone,
//!    its peak memory grew by less than [`RSS_GROWTH_LIMIT`], the stored
//!    data is byte-for-byte what was seeded (except what the test declares
//!    changed), no secret reached stderr, and it shuts down cleanly.
//!
//! Nothing sleeps to wait for the engine's timers: waits poll a condition
//! (every 5–10 ms) up to a bound.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{Client, Proxy, Scratch, euid, request};
pub mod launch;

/// A well-behaved client's round trip must complete within this, whatever
/// the attack on other connections — or, when the attack lasts longer than
/// [`WINDOW_SHARE`] times this, within that share of the witness's whole
/// run (see [`Witness::stop`]).
pub const PROMPT: Duration = Duration::from_millis(500);

/// The witness is starved when one of its round trips takes more than
/// `1 / WINDOW_SHARE` of the time it ran. On a slow or loaded machine an
/// attack that makes the server work (a flood of pipelined requests, a
/// client draining 20 000 replies) takes longer, and every round trip
/// during it with it: the bound scales with the attack, so it measures the
/// server's fairness rather than the machine. A server that serves the
/// witness only after an attacker's backlog holds it for most of the
/// attack and fails either way.
pub const WINDOW_SHARE: u32 = 4;

/// Largest growth of the server's peak resident memory (VmHWM) over its
/// resident memory before the attack.
pub const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// Bound on waits for a condition (descriptors released, requests seen).
pub const LIMIT: Duration = Duration::from_secs(10);

/// The witness's API key.
pub const WITNESS_KEY: &str = "WITNESS_KEY";
/// Its value.
pub const WITNESS_VALUE: &str = "wk-0f3a9c1e-witness-value";
/// An API key nobody may lose.
pub const CANARY_KEY: &str = "CANARY_KEY";
/// Its value.
pub const CANARY_KEY_VALUE: &str = "ck-5b2e8d77-canary-key-value";
/// A stored token nobody may lose; its refresh token must never be sent.
pub const CANARY_PROVIDER: &str = "canary";
/// The canary's access token.
pub const CANARY_ACCESS: &str = "at-canary-7d41";
/// The canary's refresh token (never sent to a client, never logged).
pub const CANARY_REFRESH: &str = "rt-canary-NEVER-LEAVES-91c2";

pub use super::wait_for as poll;

/// Raises this process's soft `RLIMIT_NOFILE` to at least `want` (bounded
/// by the hard limit); children inherit it. Returns the soft limit now in
/// force.
pub fn raise_nofile(want: u64) -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft < want {
        let raised = want.min(hard);
        if setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_ok() {
            return raised;
        }
    }
    soft
}

/// The value in KiB of a `VmXXX:` line of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory of `pid` in KiB.
#[must_use]
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:").expect("VmRSS of the server")
}

/// Peak resident memory of `pid` in KiB.
#[must_use]
pub fn hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:").expect("VmHWM of the server")
}

/// Open descriptors of `pid`.
#[must_use]
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the server's descriptors")
        .count()
}

/// What the server's descriptors point at (for failure messages).
#[must_use]
pub fn fd_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut targets: Vec<String> = dir
        .filter_map(Result::ok)
        .map(|e| {
            let target =
                fs::read_link(e.path()).map_or_else(|_| "?".into(), |t| t.display().to_string());
            format!("{}={target}", e.file_name().to_string_lossy())
        })
        .collect();
    targets.sort();
    targets
}

/// `hex(s)`, as the store names its files.
#[must_use]
pub fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The store file of token `provider`/`bucket`, relative to the root.
#[must_use]
pub fn token_file(provider: &str, bucket: &str) -> String {
    format!("tokens/{}.{}.json", hex(provider), hex(bucket))
}

/// Every regular file under the store's `tokens`, `meta` and `keys`
/// (temp files excluded), by path relative to the root.
#[must_use]
pub fn store_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["tokens", "meta", "keys"] {
        let Ok(entries) = fs::read_dir(root.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let bytes = fs::read(e.path()).expect("read a store file");
            out.insert(format!("{sub}/{name}"), bytes);
        }
    }
    out
}

/// A token as the store holds it, with a refresh token.
#[must_use]
pub fn stored_token(access: &str, refresh: &str) -> Value {
    json!({
        "access_token": access,
        "refresh_token": refresh,
        "expiry": 4_102_444_800_u64,
        "token_type": "Bearer",
    })
}

/// What the store looked like, and the server before the attack.
struct Baseline {
    files: BTreeMap<String, Vec<u8>>,
    status: Value,
    keys: Value,
    rss_kib: u64,
    fds: usize,
}

/// The store as seeded, before the server starts.
struct Before {
    files: BTreeMap<String, Vec<u8>>,
    status: Value,
    keys: Value,
}

impl Before {
    fn of(scratch: &Scratch) -> Before {
        Before {
            files: store_files(&scratch.store()),
            status: status_json(scratch),
            keys: key_list_json(scratch),
        }
    }
}

/// A private tree with the canary token, the canary key and the witness
/// key stored (and our descriptor limit raised for the attack).
fn seeded_scratch() -> Scratch {
    raise_nofile(4096);
    let scratch = Scratch::new();
    scratch.seed_token(
        CANARY_PROVIDER,
        "default",
        &stored_token(CANARY_ACCESS, CANARY_REFRESH),
    );
    scratch.seed_api_key(WITNESS_KEY, WITNESS_VALUE);
    scratch.seed_api_key(CANARY_KEY, CANARY_KEY_VALUE);
    scratch
}

/// A `credproxy serve` under attack, over a seeded private store.
pub struct Target {
    /// The private tree (store, runtime directory).
    pub scratch: Scratch,
    /// The running server.
    pub proxy: Proxy,
    /// The configuration file passed with `--config`, if any.
    pub config: Option<PathBuf>,
    name: String,
    base: Baseline,
    /// No database cluster runs while a target's witness is timed.
    _cpu: super::cpu_class::Guard,
}

impl Target {
    /// Seeds the store, starts `credproxy serve --store … ARGS…`.
    #[must_use]
    pub fn start(name: &str, args: &[&str]) -> Target {
        Target::start_with(name, None, args, |_| {})
    }

    /// A target whose anthropic provider is `stub`, with a stored
    /// anthropic token (`at-seed`, refresh token `rt-seed`) to refresh.
    #[must_use]
    pub fn refreshable(name: &str, stub: &Stub) -> Target {
        Target::start_with(name, Some(&stub.anthropic_toml()), &[], |s| {
            s.seed_token("anthropic", "default", &stored_token("at-seed", "rt-seed"));
        })
    }

    /// [`Target::start`] with `flags` split at spaces (flags and their
    /// values: none holds a space).
    #[must_use]
    pub fn start_flags(name: &str, flags: &str) -> Target {
        let args: Vec<&str> = flags.split(' ').collect();
        Target::start(name, &args)
    }

    /// Like [`Target::start`], with a configuration file (`config`, TOML)
    /// and extra seeding done by `seed` before the snapshot.
    #[must_use]
    pub fn start_with(
        name: &str,
        config: Option<&str>,
        args: &[&str],
        seed: impl FnOnce(&Scratch),
    ) -> Target {
        let cpu = super::cpu_class::enter(super::cpu_class::Kind::TimingSensitive);
        let scratch = seeded_scratch();
        seed(&scratch);
        let config = config.map(|text| {
            let path = scratch.root().join("hostile.toml");
            fs::write(&path, text).expect("write the configuration file");
            path
        });
        let before = Before::of(&scratch);
        let mut all: Vec<&str> = Vec::new();
        let config_arg = config.as_ref().map(|p| p.display().to_string());
        if let Some(c) = &config_arg {
            all.extend(["--config", c.as_str()]);
        }
        all.extend_from_slice(args);
        let proxy = scratch.serve(&all);
        Target::assemble(name, scratch, proxy, config, before, cpu)
    }

    /// The target around a started `proxy`, with the store as it was
    /// `before` and the server's own figures now.
    fn assemble(
        name: &str,
        scratch: Scratch,
        proxy: Proxy,
        config: Option<PathBuf>,
        before: Before,
        cpu: super::cpu_class::Guard,
    ) -> Target {
        let pid = proxy.pid();
        let base = Baseline {
            files: before.files,
            status: before.status,
            keys: before.keys,
            rss_kib: rss_kib(pid),
            fds: fd_count(pid),
        };
        Target {
            scratch,
            proxy,
            config,
            name: name.to_owned(),
            base,
            _cpu: cpu,
        }
    }

    /// The server's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.proxy.pid()
    }

    /// The capability token, when the server has one.
    #[must_use]
    pub fn token(&self) -> Option<String> {
        self.proxy.token_file().map(|_| self.proxy.token())
    }

    /// A raw connection (no handshake yet).
    #[must_use]
    pub fn raw(&self) -> Client {
        Client::connect(&self.proxy.socket).expect("connect to the proxy")
    }

    /// A connection past the handshake (with the token when there is one).
    #[must_use]
    pub fn client(&self) -> Client {
        let mut c = self.raw();
        let reply = c.handshake(self.token().as_deref());
        assert_eq!(reply["ok"], true, "handshake: {reply}");
        c
    }

    /// Starts a witness on a new connection.
    #[must_use]
    pub fn witness(&self) -> Witness {
        Witness::start(self.client())
    }

    /// The server's descriptor count before the attack.
    #[must_use]
    pub fn baseline_fds(&self) -> usize {
        self.base.fds
    }

    /// Waits until the server holds no more descriptors than before the
    /// attack (every attack connection released).
    pub fn wait_fds_released(&self) {
        let pid = self.pid();
        let base = self.base.fds;
        let deadline = Instant::now() + LIMIT;
        loop {
            let last = fd_count(pid);
            if last <= base {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the server still holds {last} descriptors {LIMIT:?} after the \
                 clients left (baseline {base}): {:?}",
                self.name,
                fd_targets(pid)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of every test: `changed` lists the store files (relative
    /// paths, see [`token_file`]) the test itself changed on purpose; every
    /// other seeded file must be byte-for-byte intact.
    pub fn finish(self, changed: &[String]) {
        self.finish_keep(changed);
    }

    /// Like [`Target::finish`], returning the stderr of the stopped server.
    pub fn finish_keep(mut self, changed: &[String]) -> String {
        let pid = self.pid();
        // 1. Alive and serving.
        assert!(
            proc_status_kib(pid, "VmRSS:").is_some(),
            "{}: the server died\n{}",
            self.name,
            self.proxy.stderr()
        );
        // 2. Every descriptor of the attack released.
        self.wait_fds_released();
        // 3. Memory bounded.
        let peak = hwm_kib(pid);
        let end = rss_kib(pid);
        let growth = peak.saturating_sub(self.base.rss_kib);
        println!(
            "{}: server RSS before {} KiB, peak {} KiB (+{} KiB), end {} KiB; fds {}",
            self.name,
            self.base.rss_kib,
            peak,
            growth,
            end,
            fd_count(pid)
        );
        assert!(
            growth < RSS_GROWTH_LIMIT_KIB,
            "{}: peak RSS grew by {growth} KiB (limit {RSS_GROWTH_LIMIT_KIB} KiB)",
            self.name
        );
        // 4. Still served promptly, and the stored data as seeded.
        let mut c = self.client();
        let started = Instant::now();
        let r = c.call("fin-1", "get_api_key", json!({"name": WITNESS_KEY}));
        assert!(
            started.elapsed() < PROMPT,
            "{}: final round trip slow",
            self.name
        );
        assert_eq!(r["data"]["key"], WITNESS_VALUE, "{r}");
        let r = c.call("fin-2", "get_api_key", json!({"name": CANARY_KEY}));
        assert_eq!(r["data"]["key"], CANARY_KEY_VALUE, "{r}");
        let r = c.call("fin-3", "get_token", json!({"provider": CANARY_PROVIDER}));
        assert_eq!(r["data"]["access_token"], CANARY_ACCESS, "{r}");
        assert!(r["data"].get("refresh_token").is_none(), "{r}");
        drop(c);
        let files = store_files(&self.scratch.store());
        for (path, bytes) in &self.base.files {
            if changed.contains(path) {
                continue;
            }
            let now = files.get(path);
            assert!(
                now == Some(bytes),
                "{}: store file {path} lost or changed",
                self.name
            );
        }
        let status = status_json(&self.scratch);
        let changed_keys: Vec<(String, String)> = changed
            .iter()
            .filter_map(|p| p.strip_prefix("tokens/"))
            .filter_map(|f| f.strip_suffix(".json"))
            .filter_map(|f| f.split_once('.'))
            .map(|(p, b)| (unhex(p), unhex(b)))
            .collect();
        for row in self.base.status["tokens"].as_array().expect("rows") {
            let key = (
                row["provider"].as_str().unwrap_or("").to_owned(),
                row["bucket"].as_str().unwrap_or("").to_owned(),
            );
            if changed_keys.contains(&key) {
                continue;
            }
            assert!(
                status["tokens"]
                    .as_array()
                    .expect("rows")
                    .iter()
                    .any(|r| r == row),
                "{}: status row {row} changed: {status}",
                self.name
            );
        }
        assert_eq!(
            key_list_json(&self.scratch),
            self.base.keys,
            "{}: API keys",
            self.name
        );
        // 5. A clean stop, and no secret in the audit log.
        let token = self.token();
        let st = self.proxy.stop(Signal::SIGTERM);
        assert_eq!(st.code(), Some(0), "{}: exit {st:?}", self.name);
        let stderr = self.proxy.stderr();
        self.assert_no_secret_in(&stderr, token.as_deref());
        stderr
    }

    /// Asserts that none of the seeded secrets, nor the capability
    /// `token`, is in `stderr` (the audit stream of the stopped server).
    fn assert_no_secret_in(&self, stderr: &str, token: Option<&str>) {
        let seeded = [CANARY_REFRESH, CANARY_KEY_VALUE, WITNESS_VALUE];
        for secret in seeded.into_iter().chain(token) {
            assert!(
                !stderr.contains(secret),
                "{}: a secret reached stderr",
                self.name
            );
        }
    }

    /// The end of a refresh storm: stops the witness `w`, asserts that the
    /// stored `anthropic`/`default` token holds the provider's first
    /// rotated refresh token, then [`Target::finish`]es with that token
    /// file changed.
    pub fn finish_rotated(self, w: Witness, test: &str) {
        w.stop(test);
        let refresh = self.stored_refresh("anthropic");
        assert_eq!(refresh.as_deref(), Some("rt-rotated-1"));
        self.finish(&[token_file("anthropic", "default")]);
    }

    /// The refresh token stored for `provider`/`default`, read from the
    /// store (the protocol never shows it); panics when nothing is stored.
    #[must_use]
    pub fn stored_refresh(&self, provider: &str) -> Option<String> {
        let store = self.scratch.open_store();
        let token = store.get_token(provider, "default", true).expect("read");
        token.expect("stored").refresh_token().map(str::to_owned)
    }
}

fn unhex(s: &str) -> String {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `credproxy status --json` over the store.
#[must_use]
pub fn status_json(s: &Scratch) -> Value {
    let ran = s.run(&["status", "--json", "--store", &s.store_arg()], b"");
    ran.assert_code(0);
    serde_json::from_str(ran.stdout.trim()).expect("status --json")
}

/// `credproxy key list --json` over the store.
#[must_use]
pub fn key_list_json(s: &Scratch) -> Value {
    let ran = s.run(&["key", "list", "--json", "--store", &s.store_arg()], b"");
    ran.assert_code(0);
    serde_json::from_str(ran.stdout.trim()).expect("key list --json")
}

/// What a witness saw.
#[derive(Debug, Clone, Copy)]
#[expect(
    dead_code,
    reason = "no test reads the figures yet: `Witness::stop` asserts and prints them"
)]
pub struct WitnessStats {
    /// Round trips completed.
    pub count: usize,
    /// The slowest one.
    pub max: Duration,
}

/// The slowest round trip allowed to a witness that ran for `window`.
#[must_use]
pub fn witness_limit(window: Duration) -> Duration {
    PROMPT.max(window / WINDOW_SHARE)
}

#[test]
fn the_witness_limit_is_prompt_until_the_attack_outlasts_four_times_it() {
    assert_eq!(witness_limit(Duration::from_millis(300)), PROMPT);
    assert_eq!(witness_limit(Duration::from_secs(2)), PROMPT);
    assert_eq!(
        witness_limit(Duration::from_secs(6)),
        Duration::from_millis(1500)
    );
}

/// A well-behaved client on its own connection doing `get_api_key` round
/// trips back to back (5 ms apart) on a thread, timing each.
pub struct Witness {
    started: Instant,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    thread: Option<JoinHandle<Result<Duration, String>>>,
}

impl Witness {
    /// Starts round trips on `client` (already past its handshake).
    #[must_use]
    pub fn start(mut client: Client) -> Witness {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let (stop2, count2) = (stop.clone(), count.clone());
        let thread = thread::spawn(move || {
            let mut max = Duration::ZERO;
            let mut n = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("w{n}");
                let started = Instant::now();
                client
                    .send(&request(&id, "get_api_key", json!({"name": WITNESS_KEY})))
                    .map_err(|e| format!("witness send: {e}"))?;
                let reply = client
                    .recv()
                    .map_err(|e| format!("witness recv: {e}"))?
                    .ok_or("the witness's connection was closed")?;
                let took = started.elapsed();
                if reply != json!({"id": id, "ok": true, "data": {"key": WITNESS_VALUE}}) {
                    return Err(format!("witness got {reply}"));
                }
                max = max.max(took);
                count2.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(5));
            }
            Ok(max)
        });
        Witness {
            started: Instant::now(),
            stop,
            count,
            thread: Some(thread),
        }
    }

    /// Returns once a round trip that started after this call completed
    /// (bounded): the attack in progress did not stall the witness.
    pub fn during(&self) {
        let seen = self.count.load(Ordering::SeqCst);
        poll("a witness round trip", LIMIT, || {
            self.count.load(Ordering::SeqCst) >= seen + 2
        });
    }

    /// Stops the witness, asserts every round trip was answered correctly
    /// within [`PROMPT`] (or `1 / WINDOW_SHARE` of a longer run, see
    /// [`WINDOW_SHARE`]), and closes its connection.
    pub fn stop(mut self, test: &str) -> WitnessStats {
        let window = self.started.elapsed();
        self.stop.store(true, Ordering::SeqCst);
        let result = self
            .thread
            .take()
            .expect("running")
            .join()
            .expect("witness thread");
        let max = match result {
            Ok(max) => max,
            Err(e) => panic!("{test}: witness failed: {e}"),
        };
        let count = self.count.load(Ordering::SeqCst);
        let limit = witness_limit(window);
        println!("{test}: witness {count} round trips in {window:?}, slowest {max:?}");
        assert!(count > 0, "{test}: the witness made no round trip");
        assert!(
            max < limit,
            "{test}: a witness round trip took {max:?} of its {window:?} (limit {limit:?})"
        );
        WitnessStats { count, max }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Skips a test (prints why) unless we can make a directory unwritable
/// for the server: as root `chattr +i` (root ignores permission bits), else
/// mode 0500. The guard undoes it.
pub struct Unwritable {
    path: PathBuf,
    how: &'static str,
}

impl Unwritable {
    /// Makes `dir` refuse new entries; `None` when that is impossible here.
    #[must_use]
    pub fn make(dir: &Path) -> Option<Unwritable> {
        if euid() == 0 {
            let ok = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then(|| Unwritable {
                path: dir.to_owned(),
                how: "chattr",
            })
        } else {
            crate::support::chmod(dir, 0o500);
            Some(Unwritable {
                path: dir.to_owned(),
                how: "chmod",
            })
        }
    }

    /// Undoes it.
    pub fn undo(&mut self) {
        match self.how {
            "chattr" => {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.path)
                    .status();
            }
            "chmod" => crate::support::chmod(&self.path, 0o700),
            _ => {}
        }
        self.how = "";
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        self.undo();
    }
}

// ---------------------------------------------------------------------------
// A stub OAuth token endpoint.

/// State shared with the stub's threads.
struct StubState {
    /// Refresh requests received.
    refreshes: AtomicUsize,
    /// Code exchanges received.
    exchanges: AtomicUsize,
    /// While true, answers wait (bounded by [`LIMIT`]).
    held: Mutex<bool>,
    released: Condvar,
}

/// A token endpoint on 127.0.0.1:
/// - `grant_type=authorization_code` with code `C` → `at-login-C`,
///   refresh token `rt-login-C`;
/// - `grant_type=refresh_token` → `at-refreshed-N`, rotated refresh token
///   `rt-rotated-N` (N counts refreshes from 1);
///
/// each with `expires_in` 3600. While held, answers wait for
/// [`Stub::release`].
pub struct Stub {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<StubState>,
}

impl Stub {
    /// Starts the stub (answers immediately until [`Stub::hold`]).
    #[must_use]
    pub fn start() -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stub");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(StubState {
            refreshes: AtomicUsize::new(0),
            exchanges: AtomicUsize::new(0),
            held: Mutex::new(false),
            released: Condvar::new(),
        });
        let st = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let st = st.clone();
                thread::spawn(move || serve_stub(stream, &st));
            }
        });
        Stub { base, state }
    }

    /// The configuration pointing `anthropic` at this stub.
    #[must_use]
    pub fn anthropic_toml(&self) -> String {
        format!(
            "[providers.anthropic]\nauthorize_url = \"{b}/authorize\"\ntoken_url = \"{b}/token\"\n",
            b = self.base
        )
    }

    /// Answers wait from now on.
    pub fn hold(&self) {
        *self.state.held.lock().expect("stub") = true;
    }

    /// Answers go out again (the waiting ones at once).
    pub fn release(&self) {
        *self.state.held.lock().expect("stub") = false;
        self.state.released.notify_all();
    }

    /// Refresh requests received so far.
    #[must_use]
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Code exchanges received so far.
    #[must_use]
    pub fn exchanges(&self) -> usize {
        self.state.exchanges.load(Ordering::SeqCst)
    }
}

fn serve_stub(mut stream: TcpStream, st: &StubState) {
    let _ = stream.set_read_timeout(Some(LIMIT));
    let _ = stream.set_write_timeout(Some(LIMIT));
    let Some(body) = read_http_body(&mut stream) else {
        return;
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let answer = if text.contains("authorization_code") {
        st.exchanges.fetch_add(1, Ordering::SeqCst);
        let code = form_or_json_field(&text, "code").unwrap_or_default();
        json!({
            "access_token": format!("at-login-{code}"),
            "refresh_token": format!("rt-login-{code}"),
            "expires_in": 3600,
            "token_type": "bearer",
        })
    } else if text.contains("refresh_token") {
        let n = st.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
        json!({
            "access_token": format!("at-refreshed-{n}"),
            "refresh_token": format!("rt-rotated-{n}"),
            "expires_in": 3600,
            "token_type": "bearer",
        })
    } else {
        json!({"error": "unsupported_grant_type"})
    };
    {
        let deadline = Instant::now() + LIMIT;
        let mut held = st.held.lock().expect("stub");
        while *held && Instant::now() < deadline {
            held = st
                .released
                .wait_timeout(held, Duration::from_millis(50))
                .expect("stub")
                .0;
        }
    }
    let body = answer.to_string();
    let status = if answer.get("error").is_some() {
        "400 Bad Request"
    } else {
        "200 OK"
    };
    let out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// The body of one HTTP/1.1 request (by Content-Length).
fn read_http_body(stream: &mut TcpStream) -> Option<Vec<u8>> {
    super::effects::read_request(stream).map(|r| r.body)
}

/// A field of a form-encoded or JSON body (values here are plain).
fn form_or_json_field(body: &str, name: &str) -> Option<String> {
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(body) {
        return m.get(name).and_then(Value::as_str).map(str::to_owned);
    }
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}
