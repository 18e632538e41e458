//! Waiting for the signals that should stop the proxy and clean up.

use std::fmt;
use std::io;

use async_signal::{Signal, Signals};
use smol::stream::StreamExt as _;

/// A signal that asks the proxy to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShutdownSignal {
    /// `SIGINT` (Ctrl-C).
    Interrupt,
    /// `SIGTERM`.
    Terminate,
    /// `SIGHUP` (the terminal went away).
    Hangup,
}

impl ShutdownSignal {
    /// The conventional name, e.g. `"SIGTERM"`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ShutdownSignal::Interrupt => "SIGINT",
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Hangup => "SIGHUP",
        }
    }

    /// The exit status a shell reports for death by this signal
    /// (128 + signal number), for a host that exits after cleaning up.
    #[must_use]
    pub fn exit_status(self) -> i32 {
        128 + match self {
            ShutdownSignal::Interrupt => nix::libc::SIGINT,
            ShutdownSignal::Terminate => nix::libc::SIGTERM,
            ShutdownSignal::Hangup => nix::libc::SIGHUP,
        }
    }
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A registration for `SIGINT`, `SIGTERM` and `SIGHUP`.
///
/// Register early (before binding), so a signal that arrives during start
/// is not handled by the default action, which would kill the process
/// without cleanup. Keep it for the life of the process: after it is
/// dropped the signals stay caught by the underlying handler and are
/// ignored rather than restored to their default action.
#[derive(Debug)]
pub struct ShutdownSignals {
    inner: Signals,
}

impl ShutdownSignals {
    /// Installs the handlers.
    ///
    /// # Errors
    ///
    /// Registering a handler or creating the notification pipe failed.
    pub fn register() -> io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            inner: Signals::new([Signal::Int, Signal::Term, Signal::Hup])?,
        })
    }

    /// Waits for the next shutdown signal.
    ///
    /// # Errors
    ///
    /// Reading the notification pipe failed.
    pub async fn recv(&mut self) -> io::Result<ShutdownSignal> {
        loop {
            match self.inner.next().await {
                Some(Ok(Signal::Int)) => return Ok(ShutdownSignal::Interrupt),
                Some(Ok(Signal::Term)) => return Ok(ShutdownSignal::Terminate),
                Some(Ok(Signal::Hup)) => return Ok(ShutdownSignal::Hangup),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(io::Error::other("signal stream ended")),
            }
        }
    }
}

/// Registers for `SIGINT`, `SIGTERM` and `SIGHUP` on first poll and returns
/// the first one that arrives.
///
/// A signal that arrives before the first poll gets its default action;
/// use [`ShutdownSignals::register`] to register earlier.
///
/// # Errors
///
/// As [`ShutdownSignals::register`] and [`ShutdownSignals::recv`].
pub async fn wait_for_shutdown_signal() -> io::Result<ShutdownSignal> {
    ShutdownSignals::register()?.recv().await
}
