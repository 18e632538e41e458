//! Shutdown signals (in their own test binary: it raises signals at itself).

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
