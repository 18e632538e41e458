//! The conformance suite on every store backend, from `cargo test`.
//!
//! The suite's tests (`conformance_*` modules) run on the default backend
//! in this process; here each other backend gets a run of its own: this
//! binary again, with the filter `conformance_` and
//! [`BACKEND_ENV`](crate::support::conformance::BACKEND_ENV) set, so the
//! README's one test command covers every backend (parametrised, not
//! copied). A run counts as a CPU-heavy test (its child runs the suite two
//! tests at a time, with a keyring or a database cluster per test tree):
//! the hostile-client tests, which bound a witness's latency, never run
//! beside it.
//!
//! The names here must not contain the filter, or a run would start
//! itself.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::conformance::BACKEND_ENV;
use crate::support::cpu_class::{self, Kind};

/// The filter that selects the suite.
const SUITE: &str = "conformance_";

/// Bound on one backend's run (the suite takes 20–90 s here).
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The names of the suite's tests in this binary.
fn suite() -> Vec<String> {
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(exe)
        .args([SUITE, "--list"])
        .output()
        .expect("list the tests");
    assert!(out.status.success(), "--list failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect()
}

/// Runs the suite with `CREDPROXY_IT_STORE_BACKEND=backend` and asserts
/// every one of its tests passed.
fn run_on(backend: &str) {
    let _heavy = cpu_class::enter(Kind::CpuHeavy);
    let tests = suite();
    assert!(
        tests.len() > 200,
        "the filter {SUITE:?} found {} tests",
        tests.len()
    );
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args([SUITE, "--test-threads=2"])
        .env(BACKEND_ENV, backend)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the suite");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the suite") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(150)..].join("\n")
    };
    let Some(status) = status else {
        panic!(
            "{backend}: the suite did not finish within {RUN_LIMIT:?}\n{}\n{}",
            tail(&out),
            tail(&err)
        );
    };
    assert!(
        status.success(),
        "{backend}: the suite failed ({status})\n{}\n{}",
        tail(&out),
        tail(&err)
    );
    let passed = out
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .find_map(|l| l.split(' ').next()?.parse::<usize>().ok());
    assert_eq!(
        passed,
        Some(tests.len()),
        "{backend}: not every test of the suite passed\n{}",
        tail(&out)
    );
    println!("{backend}: {} conformance tests passed", tests.len());
}

#[test]
fn the_protocol_suite_passes_on_the_plaintext_file_backend() {
    run_on("file");
}

#[test]
fn the_protocol_suite_passes_on_the_keyring_backend() {
    run_on("keyring");
}

#[test]
fn the_protocol_suite_passes_on_the_postgres_backend() {
    run_on("postgres");
}
