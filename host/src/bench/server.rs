//! A `credproxy serve` child for the benchmark modes that need one of
//! their own: the baseline without `--socket`, `--memory` and `--startup`.
//!
//! It runs this very executable (so a release `credproxy bench` measures a
//! release server) in a private scratch directory: the socket, the store,
//! the audit log and an empty `XDG_CONFIG_HOME` (no configuration file, so
//! no OIDC discovery and no user settings).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use credproxy_core::Secret;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::load::connect;
use crate::store::{BackendName, KeySource, Store, StoreSpec};

/// Bound on a child's start (its start lines) and on its exit.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A private directory under the system temp dir, removed on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `$TMPDIR/credproxy-bench-<pid>-<n>` (mode 0700).
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn new() -> Result<Scratch, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("credproxy-bench-{}-{n}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Scratch { path })
    }

    /// `name` inside the directory.
    #[must_use]
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The store directory (`store/`).
    #[must_use]
    pub fn store(&self) -> PathBuf {
        self.join("store")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A token like a real OAuth token of a provider, about 300 bytes of JSON
/// as stored (`get_token` answers it without the `refresh_token`).
#[must_use]
pub fn realistic_token() -> Value {
    let access = format!("sk-ant-oat01-{}", "Ab3dE5gH7jK9mN1pQ3sT5vW7yZ0".repeat(4));
    let refresh = format!("sk-ant-ort01-{}", "Zy8xW6vU4tS2rQ0pO8nM6lK4jI2".repeat(4));
    json!({
        "access_token": access,
        "refresh_token": refresh,
        "expiry": 4_102_444_800_u64,
        "token_type": "Bearer",
        "scope": "user:inference user:profile",
    })
}

/// Prepares `scratch`'s store: creates it with the backend the server
/// will use (`--store-backend` and `--store-key-file` among its `extra`
/// flags, else `auto`: encrypted-file with the key under the scratch
/// `XDG_CONFIG_HOME`) and stores the API key `bench` (there is no protocol
/// operation to set a key).
///
/// # Errors
///
/// Store failures.
pub fn prepare_store(scratch: &Scratch, extra: &[String]) -> Result<(), String> {
    let flag = |name: &str| {
        let eq = format!("{name}=");
        extra.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&eq)
                .map(str::to_owned)
                .or_else(|| (a == name).then(|| extra.get(i + 1).cloned()).flatten())
        })
    };
    let backend = match flag("--store-backend").as_deref() {
        None | Some("auto") => BackendName::Auto,
        Some("file") => BackendName::File,
        Some("encrypted-file") => BackendName::EncryptedFile,
        // The keyring of the session bus in the environment.
        Some("keyring") => BackendName::Keyring,
        // The database of CREDPROXY_POSTGRES_URL, with --store-key-file.
        Some("postgres") => BackendName::Postgres,
        Some(other) => return Err(format!("unknown --store-backend {other}")),
    };
    let spec = StoreSpec {
        root: scratch.store(),
        backend,
        key: KeySource {
            file: flag("--store-key-file").map(PathBuf::from),
            fd: None,
            default_file: Some(scratch.join("config").join("credproxy/store.key")),
        },
        probe_keyring: false,
        postgres: crate::store::PgSpec::default(),
    };
    let (store, _) = Store::open(&spec).map_err(|e| e.to_string())?;
    store
        .set_api_key(
            "bench",
            &Secret::new("sk-bench-0123456789abcdef0123456789abcdef"),
        )
        .map_err(|e| e.to_string())
}

/// Stores [`realistic_token`] as `anthropic`/default through `save_token`.
///
/// # Errors
///
/// Connection failures or an error reply.
pub fn seed_token(socket: &Path, token: Option<&str>) -> Result<(), String> {
    let mut conn = connect(socket, token)?;
    let payload = json!({"provider": "anthropic", "token": realistic_token()});
    let reply = conn.call("save_token", &payload, 1)?;
    match super::frame::reply_head(&reply) {
        Some(h) if h.ok => Ok(()),
        _ => Err(format!(
            "save_token failed: {}",
            super::frame::error_summary(&reply)
        )),
    }
}

/// A running `credproxy serve`; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    child: Child,
    /// The socket it serves.
    pub socket: PathBuf,
    /// The capability token, when it generated one.
    pub token: Option<String>,
    /// The instant just before the process was spawned.
    pub spawned_at: Instant,
    stderr_path: PathBuf,
}

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct ServerSpec {
    /// Require a capability token (the default of `serve`); otherwise
    /// `--insecure-no-token`.
    pub with_token: bool,
    /// Write the audit log to a file in the scratch directory (otherwise
    /// `--audit-log off`).
    pub audit: bool,
    /// More flags (limits).
    pub extra: Vec<String>,
}

impl Server {
    /// Spawns this executable as `credproxy serve` with the socket
    /// `<scratch>/<name>.sock` and waits for its start lines (printed
    /// once the socket is listening).
    ///
    /// # Errors
    ///
    /// When it cannot be spawned or exits before printing them.
    pub fn spawn(scratch: &Scratch, name: &str, spec: &ServerSpec) -> Result<Server, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find credproxy: {e}"))?;
        let socket = scratch.join(&format!("{name}.sock"));
        let stderr_path = scratch.join(&format!("{name}.stderr"));
        let stderr = fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let audit = if spec.audit {
            scratch.join("audit.log").display().to_string()
        } else {
            "off".to_owned()
        };
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--store")
            .arg(scratch.store())
            .args(["--audit-log", &audit])
            .args(&spec.extra)
            .env("XDG_CONFIG_HOME", scratch.join("config"))
            .env_remove("CREDPROXY_OAUTH_SESSION_TIMEOUT_SECONDS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if !spec.with_token {
            cmd.arg("--insecure-no-token");
        }
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start credproxy serve: {e}"))?;
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Server {
            child,
            socket,
            token: None,
            spawned_at,
            stderr_path,
        };
        // The socket path, CREDPROXY_SOCKET, LLXPRT_CREDENTIAL_SOCKET and,
        // with a token, CREDPROXY_CAPABILITY_FILE.
        let want = if spec.with_token { 4 } else { 3 };
        let deadline = Instant::now() + START_LIMIT;
        let mut lines = Vec::new();
        while lines.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => return Err(server.failure("did not start")),
            }
        }
        if let Some(file) = lines
            .iter()
            .find_map(|l| l.strip_prefix("CREDPROXY_CAPABILITY_FILE="))
        {
            let t = fs::read_to_string(file).map_err(|e| format!("capability file: {e}"))?;
            server.token = Some(t.trim().to_owned());
        }
        Ok(server)
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn failure(&mut self, what: &str) -> String {
        self.stop();
        let stderr = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        format!("credproxy serve {what}: {}", stderr.trim())
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL; reaps the child.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Our own child's pid, not reaped yet (try_wait above saw it
        // running), so it is not reused. A failure (it exited meanwhile)
        // is fine: the wait below sees it gone.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
