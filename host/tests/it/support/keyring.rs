//! A private, real Secret Service for tests: its own `dbus-daemon`
//! (session bus on a socket in a temp dir, no service directories, so
//! nothing is ever D-Bus-activated) and a `gnome-keyring-daemon
//! --foreground --unlock --components=secrets` on it, unlocked with a
//! password on stdin.
//!
//! The daemon runs with an empty environment but for its private `HOME`,
//! `XDG_RUNTIME_DIR` (0700), `XDG_DATA_HOME`, `XDG_CONFIG_HOME`,
//! `XDG_CACHE_HOME` and the bus address: no `GNOME_KEYRING_CONTROL`, so
//! `--unlock` can never hand the password to a desktop's running daemon,
//! and no `DISPLAY`, so no prompt appears on a developer's screen.
//! Readiness is polled (`NameHasOwner("org.freedesktop.secrets")`), never
//! slept for. Both processes are stopped by PID on drop.
//!
//! - [`TestKeyring::fresh`]: a new, empty `login` keyring.
//! - [`TestKeyring::llxprt_fixture`]: a copy of the keyring llxprt-code
//!   wrote (`host/tests/fixtures/llxprt-store/keyring/`), unlocked.
//! - [`TestKeyring::llxprt_fixture_locked`]: the same, "unlocked" with a
//!   wrong password, so it stays locked.
//! - [`TestKeyring::bus_only`]: a session bus with no Secret Service.
//! - [`TestKeyring::activatable`]: a bus on which the first client's call
//!   D-Bus-activates gnome-keyring with no keyring yet (a headless login
//!   where the package is installed but nothing unlocked a keyring).
//!
//! A client (the `credproxy` binary, or this test binary re-run as a
//! child by [`run_child_test`]) needs only [`TestKeyring::apply`]: the bus
//! address, and `GNOME_KEYRING_CONTROL` removed. The library finds its bus
//! only through `DBUS_SESSION_BUS_ADDRESS` (and its kernel keyring is the
//! process's session keyring), both process-wide, so in-process code under
//! test must run in such a child. The tools missing is a test failure
//! naming the Debian package to install, never a skip.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::{POLL_LIMIT, TIMEOUT, chmod, mkdir};

/// The password of [`TestKeyring::fresh`]'s keyring.
pub const TEST_PASSWORD: &str = "credproxy-test-keyring-password";

/// The well-known bus name of the Secret Service.
pub const SECRETS_NAME: &str = "org.freedesktop.secrets";

/// The copied llxprt-code fixtures, in this repository.
pub fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llxprt-store")
}

/// The fixtures' `expected.json`.
pub fn fixture_expected() -> Value {
    let path = fixture_root().join("expected.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("expected.json is JSON")
}

/// The password the fixture keyring was written with.
pub fn fixture_password() -> String {
    fixture_expected()["keyring_fixture"]["keyring_password"]
        .as_str()
        .expect("keyring_fixture.keyring_password")
        .to_owned()
}

/// Panics, naming the package, unless `tool` is on `PATH`.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{tool}` is not installed: the keyring tests need a real Secret Service; \
         install the Debian package `{package}` (apt-get install {package})"
    );
}

/// What the keyring starts with.
enum Contents {
    /// No keyring files: gnome-keyring creates `login` with the password.
    Empty,
    /// A copy of the llxprt fixture's `keyrings/`.
    LlxprtFixture,
}

/// A running private session bus, with or without gnome-keyring on it.
pub struct TestKeyring {
    dir: tempfile::TempDir,
    address: String,
    bus: Option<Child>,
    daemon: Option<Child>,
}

impl TestKeyring {
    /// An empty `login` keyring, unlocked with [`TEST_PASSWORD`].
    pub fn fresh() -> TestKeyring {
        TestKeyring::start(Some((Contents::Empty, TEST_PASSWORD.to_owned())), false)
    }

    /// A copy of the keyring llxprt-code wrote, unlocked with its password.
    pub fn llxprt_fixture() -> TestKeyring {
        TestKeyring::start(Some((Contents::LlxprtFixture, fixture_password())), false)
    }

    /// A copy of the fixture keyring given a wrong password: it stays locked.
    pub fn llxprt_fixture_locked() -> TestKeyring {
        TestKeyring::start(
            Some((
                Contents::LlxprtFixture,
                "not-the-fixture-password".to_owned(),
            )),
            false,
        )
    }

    /// A session bus on which nothing owns `org.freedesktop.secrets` (and
    /// nothing can be activated to).
    pub fn bus_only() -> TestKeyring {
        TestKeyring::start(None, false)
    }

    /// A session bus that starts `gnome-keyring-daemon --start` by D-Bus
    /// activation when a client first calls `org.freedesktop.secrets`; no
    /// keyring files, nothing unlocked.
    pub fn activatable() -> TestKeyring {
        TestKeyring::start(None, true)
    }

    fn start(keyring: Option<(Contents, String)>, activatable: bool) -> TestKeyring {
        let dir = tempfile::Builder::new()
            .prefix("cpkr")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let root = dir.path();
        for sub in ["run", "home", "data", "config", "cache"] {
            mkdir(&root.join(sub), 0o700);
        }
        let socket = root.join("bus");
        let address = format!("unix:path={}", socket.display());
        let config = root.join("bus.conf");
        let services = if activatable {
            let dir = root.join("services");
            mkdir(&dir, 0o700);
            let daemon = require_tool("gnome-keyring-daemon", "gnome-keyring");
            let unit = format!(
                "[D-BUS Service]\nName={SECRETS_NAME}\nExec={} --start --foreground \
                 --components=secrets\n",
                daemon.display()
            );
            fs::write(dir.join(format!("{SECRETS_NAME}.service")), unit).expect("service file");
            Some(dir)
        } else {
            None
        };
        fs::write(&config, bus_config(&address, services.as_deref())).expect("write bus.conf");
        let mut me = TestKeyring {
            dir,
            address,
            bus: None,
            daemon: None,
        };
        me.start_bus();
        if let Some((contents, password)) = keyring {
            me.start_daemon(contents, &password);
        }
        me
    }

    /// Starts the dbus-daemon on `bus.conf` and waits until it listens.
    fn start_bus(&mut self) {
        let dbus_daemon = require_tool("dbus-daemon", "dbus");
        let root = self.dir.path();
        let bus_log = fs::File::create(root.join("dbus-daemon.log")).expect("bus log");
        let mut bus = Command::new(dbus_daemon);
        bus.arg("--nofork")
            .arg(format!("--config-file={}", root.join("bus.conf").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(bus_log);
        // What an activated daemon inherits.
        private_env(&mut bus, root);
        self.bus = Some(bus.spawn().expect("start dbus-daemon"));
        self.wait_for_bus();
    }

    /// Stops gnome-keyring and the bus (by PID), keeping the keyring files
    /// and the address: a client then finds nothing listening there, as
    /// before a desktop session's bus and keyring start.
    pub fn stop_all(&mut self) {
        self.stop_daemon();
        if let Some(bus) = self.bus.as_mut() {
            stop(bus);
        }
        self.bus = None;
        // Nothing listens there either way; a stale socket file is no bus.
        let _ = fs::remove_file(self.dir.path().join("bus"));
        assert!(
            self.connect().is_err(),
            "nothing listens at {}",
            self.address
        );
    }

    /// Stops gnome-keyring (by PID); the bus stays.
    pub fn stop_daemon(&mut self) {
        if let Some(daemon) = self.daemon.as_mut() {
            stop(daemon);
        }
        self.daemon = None;
    }

    /// Starts what [`TestKeyring::stop_all`] or
    /// [`TestKeyring::stop_daemon`] stopped, at the same address, on the
    /// keyring files kept, unlocked with [`TEST_PASSWORD`].
    pub fn restart(&mut self) {
        if self.bus.is_none() {
            self.start_bus();
        }
        if self.daemon.is_none() {
            self.start_daemon(Contents::Empty, TEST_PASSWORD);
        }
    }

    fn wait_for_bus(&mut self) {
        let deadline = Instant::now() + POLL_LIMIT;
        loop {
            if self.connect().is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.bus.as_mut().map(Child::try_wait) {
                panic!(
                    "dbus-daemon exited ({status}): {}",
                    self.log("dbus-daemon.log")
                );
            }
            assert!(
                Instant::now() < deadline,
                "dbus-daemon did not listen within {POLL_LIMIT:?}: {}",
                self.log("dbus-daemon.log")
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn start_daemon(&mut self, contents: Contents, password: &str) {
        let gnome_keyring = require_tool("gnome-keyring-daemon", "gnome-keyring");
        let root = self.dir.path().to_path_buf();
        let keyrings = root.join("data/keyrings");
        if let Contents::LlxprtFixture = contents {
            mkdir(&keyrings, 0o700);
            let source = fixture_root().join("keyring/keyrings");
            for name in ["login.keyring", "user.keystore"] {
                let to = keyrings.join(name);
                fs::copy(source.join(name), &to)
                    .unwrap_or_else(|e| panic!("copy fixture {name}: {e}"));
                chmod(&to, 0o600);
            }
        }
        let log = fs::File::create(root.join("gnome-keyring.log")).expect("daemon log");
        let mut daemon = Command::new(gnome_keyring);
        daemon.args(["--foreground", "--unlock", "--components=secrets"]);
        private_env(&mut daemon, &root);
        let mut daemon = daemon
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start gnome-keyring-daemon");
        {
            let mut stdin = daemon.stdin.take().expect("daemon stdin");
            stdin
                .write_all(password.as_bytes())
                .expect("password to gnome-keyring-daemon");
        }
        self.daemon = Some(daemon);
        let deadline = Instant::now() + POLL_LIMIT;
        loop {
            if self.name_has_owner(SECRETS_NAME) {
                return;
            }
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(Child::try_wait) {
                panic!(
                    "gnome-keyring-daemon exited ({status}): {}",
                    self.log("gnome-keyring.log")
                );
            }
            assert!(
                Instant::now() < deadline,
                "gnome-keyring-daemon did not own {SECRETS_NAME} within {POLL_LIMIT:?}: {}",
                self.log("gnome-keyring.log")
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn connect(&self) -> zbus::Result<zbus::blocking::Connection> {
        zbus::blocking::connection::Builder::address(self.address.as_str())?.build()
    }

    /// Whether some connection owns `name` on this bus.
    pub fn name_has_owner(&self, name: &str) -> bool {
        let Ok(conn) = self.connect() else {
            return false;
        };
        let proxy = zbus::blocking::fdo::DBusProxy::new(&conn).expect("DBus proxy");
        let name = zbus::names::BusName::try_from(name).expect("a bus name");
        proxy.name_has_owner(name).expect("NameHasOwner")
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// The gnome-keyring data directory (`…/keyrings`).
    pub fn keyrings_dir(&self) -> PathBuf {
        self.dir.path().join("data/keyrings")
    }

    /// The environment a client of this keyring needs.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("DBUS_SESSION_BUS_ADDRESS", OsString::from(&self.address))]
    }

    /// Points `cmd` at this bus: sets [`TestKeyring::env`] and removes
    /// `GNOME_KEYRING_CONTROL` (and the display variables, so nothing
    /// could prompt on a developer's screen).
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.envs(self.env())
            .env_remove("GNOME_KEYRING_CONTROL")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
    }

    /// The PID of the process owning `name` on this bus, if any.
    pub fn owner_pid(&self, name: &str) -> Option<u32> {
        let conn = self.connect().ok()?;
        let proxy = zbus::blocking::fdo::DBusProxy::new(&conn).ok()?;
        let name = zbus::names::BusName::try_from(name).ok()?;
        proxy.get_connection_unix_process_id(name).ok()
    }

    /// The dbus-daemon's PID.
    pub fn bus_pid(&self) -> Pid {
        let bus = self.bus.as_ref().expect("the bus runs");
        Pid::from_raw(i32::try_from(bus.id()).expect("pid fits i32"))
    }

    /// The gnome-keyring daemon's PID (to stop or freeze it in a test).
    pub fn daemon_pid(&self) -> Pid {
        let daemon = self.daemon.as_ref().expect("this bus has a keyring daemon");
        Pid::from_raw(i32::try_from(daemon.id()).expect("pid fits i32"))
    }
}

/// Stops `child` by PID: SIGTERM (SIGCONT first, in case a test froze
/// it), a bounded wait, then SIGKILL.
fn stop(child: &mut Child) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let _ = kill(pid, Signal::SIGCONT);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + POLL_LIMIT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for TestKeyring {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.as_mut() {
            stop(daemon);
        } else if let Some(pid) = self.owner_pid(SECRETS_NAME) {
            // An activated daemon (the bus's child, which reaps it).
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        if let Some(bus) = self.bus.as_mut() {
            stop(bus);
        }
    }
}

/// An empty environment but for the private directories under `root`.
fn private_env(cmd: &mut Command, root: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C")
        .env("HOME", root.join("home"))
        .env("XDG_RUNTIME_DIR", root.join("run"))
        .env("XDG_DATA_HOME", root.join("data"))
        .env("XDG_CONFIG_HOME", root.join("config"))
        .env("XDG_CACHE_HOME", root.join("cache"));
}

/// A session bus that listens only on `address`, allows everything between
/// its own clients, and has no service directory but `services` (if any):
/// nothing else is ever activated (so an unanswered name stays unanswered,
/// and no prompter or second keyring daemon can start).
fn bus_config(address: &str, services: Option<&Path>) -> String {
    let servicedir = services
        .map(|d| format!("  <servicedir>{}</servicedir>\n", d.display()))
        .unwrap_or_default();
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>{address}</listen>
  <auth>EXTERNAL</auth>
{servicedir}  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#
    )
}

/// Re-runs this test binary for the one ignored test `name` (a helper
/// that works only when its environment says so, and returns at once
/// otherwise), with `prepare` applied to its command (environment) and
/// `wrap` in front of it (e.g. `["keyctl", "session", "-"]`). The child
/// starts without `DBUS_SESSION_BUS_ADDRESS` and `GNOME_KEYRING_CONTROL`.
/// Waits up to 3 × [`TIMEOUT`]; panics with its output unless it passed.
pub fn run_child_test(
    name: &str,
    wrap: &[&str],
    prepare: impl FnOnce(&mut Command) -> &mut Command,
) {
    let exe = std::env::current_exe().expect("test binary");
    let logs = tempfile::tempdir().expect("temp dir");
    let (stdout, stderr) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(["--ignored", "--exact", name, "--test-threads=1"])
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("GNOME_KEYRING_CONTROL")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout).expect("stdout file"))
        .stderr(fs::File::create(&stderr).expect("stderr file"));
    prepare(&mut cmd);
    let mut child = cmd.spawn().expect("start the child test");
    let output = || {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        format!("{}\n{}", read(&stdout), read(&stderr))
    };
    let deadline = Instant::now() + TIMEOUT * 3;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child test") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "child test {name} did not finish within {:?}: {}",
                TIMEOUT * 3,
                output()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    assert!(
        status.success(),
        "child test {name} failed ({status}): {}",
        output()
    );
}
