//! Two kinds of test that must not run at the same time on a small
//! machine: the hostile-client tests, which assert that a witness is
//! answered promptly while the proxy is under attack (a timing bound), and
//! the tests that run a PostgreSQL cluster (`initdb`, the server's own
//! processes), which take whole cores for seconds. Tests of one kind run
//! side by side as before; a test of the other kind waits until none of
//! the first is left. Everything else is not held back.

use std::sync::{Condvar, Mutex};

/// Which kind a test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Asserts a latency bound (the hostile-client suite).
    TimingSensitive,
    /// Runs a database cluster.
    CpuHeavy,
}

#[derive(Default)]
struct Running {
    sensitive: usize,
    heavy: usize,
}

static RUNNING: Mutex<Running> = Mutex::new(Running {
    sensitive: 0,
    heavy: 0,
});
static CHANGED: Condvar = Condvar::new();

/// Held while a test of its kind runs.
#[derive(Debug)]
pub struct Guard(Kind);

/// Waits until no test of the other kind runs, then counts this one.
pub fn enter(kind: Kind) -> Guard {
    let mut r = RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let other = match kind {
            Kind::TimingSensitive => r.heavy,
            Kind::CpuHeavy => r.sensitive,
        };
        if other == 0 {
            break;
        }
        r = CHANGED
            .wait(r)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    match kind {
        Kind::TimingSensitive => r.sensitive += 1,
        Kind::CpuHeavy => r.heavy += 1,
    }
    Guard(kind)
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut r = RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.0 {
            Kind::TimingSensitive => r.sensitive -= 1,
            Kind::CpuHeavy => r.heavy -= 1,
        }
        CHANGED.notify_all();
    }
}
