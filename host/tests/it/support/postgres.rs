//! A throw-away PostgreSQL cluster for the postgres store tests.
//!
//! `initdb` refuses to run as root, so when the tests run as root the
//! cluster belongs to the `postgres` user (`runuser -u postgres`); its
//! directory is a private temporary directory chowned to that user. The
//! server listens on a Unix socket in that directory, with trust
//! authentication (nobody else can reach the socket directory), and is
//! stopped by the PID in `postmaster.pid` when dropped. `stop` and `start`
//! take the same cluster down and up again (the "database down" tests).
//!
//! [`TestPostgres::start_new_tcp`] also listens on 127.0.0.1 on a free
//! port, with throw-away certificates ([`TestPki`]); with TLS on, its
//! `pg_hba.conf` admits TCP clients only over TLS (`hostssl`), so a
//! connection that succeeds over TCP is a TLS one.
//!
//! PostgreSQL missing is always a failure naming the Debian package
//! (`postgresql`): these tests must never skip silently, and `.ci/run`
//! installs it and sets `CREDPROXY_IT_REQUIRE_POSTGRES`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};

use super::pki::TestPki;

/// The database role created by `initdb -U`.
pub const USER: &str = "credproxy";

/// A running (or stopped) private cluster.
pub struct TestPostgres {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    /// The port: of the TCP listener, and in the socket's name.
    port: u16,
    /// Listening on 127.0.0.1 too, with these certificates.
    tcp: Option<Tcp>,
    /// No timing-sensitive test runs beside a cluster (`None` for the
    /// process-wide shared one, which would otherwise hold them off for
    /// good).
    cpu: Option<super::cpu_class::Guard>,
}

/// The TCP side of a cluster from [`TestPostgres::start_new_tcp`].
struct Tcp {
    pki: TestPki,
    ssl: bool,
}

/// The directory holding `initdb`, `pg_ctl`, `pg_dump`, `psql`.
fn find_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    if let Some(bin) = found.pop() {
        return bin;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").is_file() && d.join("pg_ctl").is_file() {
                return d;
            }
        }
    }
    let why = if std::env::var_os("CI").is_some()
        || std::env::var_os("CREDPROXY_IT_REQUIRE_POSTGRES").is_some()
    {
        "required in CI (CREDPROXY_IT_REQUIRE_POSTGRES)"
    } else {
        "these tests never skip"
    };
    panic!(
        "PostgreSQL not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH); \
         install the Debian package `postgresql` ({why})"
    );
}

impl TestPostgres {
    /// initdb and start a new cluster, on its Unix socket only.
    pub fn start_new() -> TestPostgres {
        let pg = TestPostgres::init(5432);
        pg.start();
        pg
    }

    /// initdb and start a new cluster listening on 127.0.0.1 too, on a
    /// free port, with `ssl = on` (TCP clients admitted over TLS only) or
    /// off.
    pub fn start_new_tcp(ssl: bool) -> TestPostgres {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free loopback port")
            .port();
        let mut pg = TestPostgres::init(port);
        let pki = TestPki::generate(&pg.dir.join("tls"));
        if pg.as_postgres {
            let st = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&pki.server_key)
                .status()
                .expect("chown");
            assert!(st.success(), "chown the server key to postgres");
        }
        // PostgreSQL refuses a key readable by others.
        fs::set_permissions(&pki.server_key, fs::Permissions::from_mode(0o600)).expect("chmod");
        if ssl {
            // Rewritten in place: the file keeps its owner.
            fs::write(
                pg.data().join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf");
        }
        pg.tcp = Some(Tcp { pki, ssl });
        pg.start();
        pg
    }

    fn init(port: u16) -> TestPostgres {
        let cpu = super::cpu_class::enter(super::cpu_class::Kind::CpuHeavy);
        let bin = find_bin();
        let as_postgres = geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("cppg")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        assert!(dir.as_os_str().len() < 60, "socket dir too long: {dir:?}");
        if as_postgres {
            let st = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(st.success(), "chown {dir:?} to postgres");
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        let pg = TestPostgres {
            bin,
            dir,
            as_postgres,
            port,
            tcp: None,
            cpu: Some(cpu),
        };
        let data = pg.data();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                USER,
                "--auth=trust",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", stderr(&out));
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A key=value connection string for database `postgres`, through
    /// the Unix socket.
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user={USER} dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// The TCP port (on 127.0.0.1) of a [`TestPostgres::start_new_tcp`]
    /// cluster.
    pub fn port(&self) -> u16 {
        assert!(self.tcp.is_some(), "not a TCP cluster");
        self.port
    }

    /// The certificates of a [`TestPostgres::start_new_tcp`] cluster.
    pub fn pki(&self) -> &TestPki {
        &self.tcp.as_ref().expect("not a TCP cluster").pki
    }

    /// Runs a PostgreSQL tool as the cluster's owner.
    pub fn run(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).current_dir("/tmp").output().expect(tool)
    }

    /// `psql -c sql` against database `postgres`; its stdout.
    pub fn psql(&self, sql: &str) -> String {
        let dir = self.dir.to_str().unwrap().to_owned();
        let port = self.port.to_string();
        let out = self.run(
            "psql",
            &[
                "-h",
                &dir,
                "-p",
                &port,
                "-U",
                USER,
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        assert!(out.status.success(), "psql failed: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_dump` of database `postgres`, as text.
    pub fn dump(&self) -> Vec<u8> {
        let dir = self.dir.to_str().unwrap().to_owned();
        let port = self.port.to_string();
        let out = self.run(
            "pg_dump",
            &["-h", &dir, "-p", &port, "-U", USER, "postgres"],
        );
        assert!(out.status.success(), "pg_dump failed: {}", stderr(&out));
        out.stdout
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub fn start(&self) {
        let mut opts = format!(
            "-c port={} -c unix_socket_directories={} -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        match &self.tcp {
            None => opts.push_str(" -c listen_addresses=''"),
            Some(tcp) => {
                opts.push_str(" -c listen_addresses=127.0.0.1");
                if tcp.ssl {
                    opts.push_str(&format!(
                        " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                        tcp.pki.server_cert.display(),
                        tcp.pki.server_key.display()
                    ));
                }
            }
        }
        let data = self.data();
        let log = self.dir.join("log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}; log: {}",
            stderr(&out),
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The postmaster's PID, if it runs.
    fn pid(&self) -> Option<Pid> {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok().map(Pid::from_raw)
    }

    /// Stops the cluster and waits until the postmaster is gone: a fast
    /// shutdown (SIGINT to its PID), which checkpoints, so what was
    /// committed survives even with `fsync` and `synchronous_commit` off
    /// (an immediate shutdown could lose the last commits).
    pub fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(kill(pid, None).is_err(), "postmaster {pid} did not stop");
        let _ = fs::remove_file(self.data().join("postmaster.pid"));
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(20);
            while kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One cluster for a whole test process, for suites that run on the
/// `postgres` backend test by test (a cluster each would cost an `initdb`
/// per test): each user gets its own database of it
/// ([`SharedPostgres::new_database`]).
///
/// A `static` is never dropped, so the cluster is stopped by a watchdog
/// instead: a shell whose stdin is a pipe this process holds open until it
/// exits (however it exits, a SIGKILL included); at end of file the shell
/// stops the postmaster by its PID (immediate shutdown: nothing in it
/// needs to survive) and removes the cluster's directory.
pub struct SharedPostgres {
    pg: TestPostgres,
    /// The watchdog, its stdin open until this process ends (never waited
    /// for: it outlives the process by design).
    _watchdog: std::process::Child,
    next: std::sync::atomic::AtomicU64,
    /// The data key every process on the cluster uses (outside any store).
    pub key_file: PathBuf,
}

impl SharedPostgres {
    /// The process's cluster, started on first use.
    pub fn get() -> &'static SharedPostgres {
        static SHARED: std::sync::OnceLock<SharedPostgres> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let mut pg = TestPostgres::start_new();
            pg.cpu = None;
            let pid = pg.pid().expect("postmaster pid");
            let keys = tempfile::Builder::new()
                .prefix("cppgkey")
                .tempdir()
                .expect("key dir")
                .keep();
            let key_file = keys.join("fleet.key");
            credproxy::store::key::create_file(&key_file, &keys.join("no-store"))
                .expect("create the key");
            let script = format!(
                "cat >/dev/null; kill -QUIT {pid} 2>/dev/null; \
                 while kill -0 {pid} 2>/dev/null; do sleep 0.05; done; rm -rf '{}' '{}'",
                pg.dir.display(),
                keys.display()
            );
            let watchdog = Command::new("sh")
                .args(["-c", &script])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn the cluster's watchdog");
            SharedPostgres {
                pg,
                _watchdog: watchdog,
                next: std::sync::atomic::AtomicU64::new(0),
                key_file,
            }
        })
    }

    /// A new, empty database of the cluster: its connection string.
    pub fn new_database(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("cp{n}");
        self.pg.psql(&format!("CREATE DATABASE {name}"));
        self.pg
            .url()
            .replace("dbname=postgres", &format!("dbname={name}"))
    }
}

/// The data key of the postgres store tests (a constant: these stores hold
/// only test tokens).
pub fn test_key() -> credproxy::store::key::DataKey {
    credproxy::store::key::DataKey::from_bytes([0x42; 32])
}

/// A token with `access`, `refresh` and a far expiry.
pub fn test_token(access: &str, refresh: &str) -> credproxy_core::Token {
    let serde_json::Value::Object(map) = serde_json::json!({
        "access_token": access,
        "refresh_token": refresh,
        "expiry": 4_000_000_000u64,
    }) else {
        unreachable!()
    };
    credproxy_core::Token::from_map(map)
}
