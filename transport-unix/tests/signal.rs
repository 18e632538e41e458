//! Shutdown signals.
//!
//! A test binary of its own, not a module of `it/`: it raises SIGHUP,
//! SIGINT and SIGTERM at its own process. Sharing a process, those would
//! reach every other test's threads, and any moment without a handler
//! registered (between two registrations) would end the whole run with the
//! default action.

// The helpers of `it/`, once; this binary needs only `block_on_bounded`.
#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;

use std::pin::pin;

use common::block_on_bounded;
use credproxy_unix::{ShutdownSignal, ShutdownSignals, wait_for_shutdown_signal};
use nix::sys::signal::{Signal, raise};

// One test function, so no other test in this process registers or raises
// signals concurrently.
#[test]
fn shutdown_signals_are_reported() {
    // Registered before raising: the handler, not the default action, runs.
    let mut signals = ShutdownSignals::register().expect("register");
    raise(Signal::SIGHUP).expect("raise SIGHUP");
    assert_eq!(
        block_on_bounded(signals.recv()).expect("recv"),
        ShutdownSignal::Hangup
    );
    raise(Signal::SIGINT).expect("raise SIGINT");
    assert_eq!(
        block_on_bounded(signals.recv()).expect("recv"),
        ShutdownSignal::Interrupt
    );
    drop(signals);

    // The convenience future registers on its first poll.
    block_on_bounded(async {
        let mut wait = pin!(wait_for_shutdown_signal());
        assert!(smol::future::poll_once(&mut wait).await.is_none());
        raise(Signal::SIGTERM).expect("raise SIGTERM");
        let got = wait.await.expect("signal");
        assert_eq!(got, ShutdownSignal::Terminate);
        assert_eq!(got.name(), "SIGTERM");
        assert_eq!(got.exit_status(), 143);
    });
}
