//! The accept loop of a socket server (SPEC §3.1, "accept failing with
//! `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` backs off instead of spinning;
//! signals are always served").
//!
//! Why this is its own module: the listener is level-triggered, so an
//! `accept` that fails for want of a descriptor fails again at once for as
//! long as a peer waits in the backlog. Retrying in a loop spins a core and,
//! because `accept` never returns `Pending` then, starves every other task
//! on the [`LocalExecutor`](smol::LocalExecutor) — the driver's loop and the
//! signal task included, so even SIGTERM went unanswered. Here:
//!
//! - an out-of-resources error waits on an async timer ([`Backoff`]:
//!   10 ms, doubling to 250 ms, back to 10 ms after a success), so the
//!   connections already open keep being served and accepting resumes
//!   within 250 ms of descriptors freeing up;
//! - it is reported once per [`WARN_EVERY`] at most ([`WarnLimiter`]),
//!   with the number of connections open;
//! - every turn of the loop yields to the executor, also after a
//!   successful accept (a flood of connects is otherwise served without
//!   ever returning `Pending`, with the same starvation);
//! - other errors are retried after a yield, and back off too if they keep
//!   coming ([`OTHER_ERRORS_BEFORE_BACKOFF`] in a row), so no error can
//!   make the loop spin.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use credproxy_unix::{Accepted, Listener};
use smol::channel::Sender;

use crate::driver::Event;

/// First wait after an out-of-resources error.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// Longest wait: well under a second, so a freed descriptor is used soon.
pub const BACKOFF_CAP: Duration = Duration::from_millis(250);
/// At most one warning per this interval.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// Consecutive errors of other kinds retried at once before backing off.
pub const OTHER_ERRORS_BEFORE_BACKOFF: u32 = 16;

/// Something that accepts connections (the Unix listener; a fake in tests).
pub trait Accept {
    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<Accepted>>;
}

impl Accept for Listener {
    fn accept(&self) -> impl Future<Output = io::Result<Accepted>> {
        Listener::accept(self)
    }
}

/// Whether `e` means the process or the system ran out of descriptors,
/// buffers or memory: retrying at once fails again.
#[must_use]
pub fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The doubling wait after failed accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The wait after one more failure (and doubles the next, up to the cap).
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(BACKOFF_CAP);
        wait
    }

    /// After a success: the next failure waits [`BACKOFF_FIRST`] again.
    pub fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// Lets one warning through per [`WARN_EVERY`].
#[derive(Debug, Clone, Default)]
pub struct WarnLimiter {
    last: Option<Instant>,
}

impl WarnLimiter {
    /// Whether to warn now; if so, the next warning waits [`WARN_EVERY`].
    pub fn should_warn(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < WARN_EVERY => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// What the loop needs from its surroundings.
pub struct Hooks<S, W> {
    /// Waits the given time (an async timer in production).
    pub sleep: S,
    /// Reports an out-of-resources error (already rate-limited).
    pub warn: W,
}

/// Accepts connections until the driver is gone, forwarding them as
/// events; see the module docs for the error handling.
pub async fn run<L, S, F, W>(listener: L, events: Sender<Event>, mut hooks: Hooks<S, W>)
where
    L: Accept,
    S: FnMut(Duration) -> F,
    F: Future<Output = ()>,
    W: FnMut(&io::Error),
{
    let mut backoff = Backoff::default();
    let mut limiter = WarnLimiter::default();
    let mut other_errors = 0u32;
    loop {
        let event = match listener.accept().await {
            Ok(accepted) => {
                backoff.reset();
                other_errors = 0;
                match accepted {
                    Accepted::Allowed(stream, peer) => match into_std(stream) {
                        Ok(stream) => Some(Event::OpenSocket { stream, peer }),
                        Err(_) => None,
                    },
                    Accepted::Refused { reason, .. } => Some(Event::Refused {
                        reason: reason.code(),
                    }),
                }
            }
            Err(e) if out_of_resources(&e) => {
                if limiter.should_warn(Instant::now()) {
                    (hooks.warn)(&e);
                }
                (hooks.sleep)(backoff.failed()).await;
                continue;
            }
            Err(_) => {
                other_errors = other_errors.saturating_add(1);
                if other_errors > OTHER_ERRORS_BEFORE_BACKOFF {
                    (hooks.sleep)(backoff.failed()).await;
                }
                None
            }
        };
        if let Some(event) = event
            && events.send(event).await.is_err()
        {
            return;
        }
        // Let the driver and the signal task run between two accepts.
        smol::future::yield_now().await;
    }
}

/// Takes an accepted stream off the async reactor: the driver's I/O
/// threads poll it themselves.
fn into_std(stream: async_net::unix::UnixStream) -> io::Result<std::os::unix::net::UnixStream> {
    let shared: std::sync::Arc<smol::Async<std::os::unix::net::UnixStream>> = stream.into();
    match std::sync::Arc::try_unwrap(shared) {
        Ok(stream) => stream.into_inner(),
        Err(_) => Err(io::Error::other("the accepted stream is shared")),
    }
}

/// The warning line for an out-of-resources accept error: what was hit,
/// how many connections are open, and what happens now.
#[must_use]
pub fn warning_text(e: &io::Error, open: usize, nofile: Option<u64>) -> String {
    let limit = nofile.map_or_else(String::new, |n| format!(" (RLIMIT_NOFILE is {n})"));
    let what = match e.raw_os_error() {
        Some(libc::EMFILE) => "the process's file descriptor limit was hit",
        Some(libc::ENFILE) => "the system's file descriptor limit was hit",
        _ => "the system is out of memory or buffers",
    };
    format!(
        "credproxy: warning: cannot accept connections: {what}{limit}; connections open: \
         {open}; new connections wait until descriptors free up (retrying every {} ms at most; \
         this warning at most once per {} s)",
        BACKOFF_CAP.as_millis(),
        WARN_EVERY.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use smol::LocalExecutor;
    use smol::channel::unbounded;

    use super::*;

    /// Fails every accept with `errno`, counting the calls; after `limit`
    /// calls it waits forever.
    struct Failing {
        errno: i32,
        calls: Rc<Cell<usize>>,
        limit: usize,
    }

    impl Accept for Failing {
        async fn accept(&self) -> io::Result<Accepted> {
            self.calls.set(self.calls.get() + 1);
            if self.calls.get() > self.limit {
                std::future::pending::<()>().await;
            }
            Err(io::Error::from_raw_os_error(self.errno))
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..7).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 250, 250]);
        b.reset();
        assert_eq!(b.failed(), BACKOFF_FIRST);
    }

    #[test]
    fn one_warning_per_interval() {
        let mut w = WarnLimiter::default();
        let t0 = Instant::now();
        assert!(w.should_warn(t0));
        assert!(!w.should_warn(t0 + Duration::from_secs(1)));
        assert!(!w.should_warn(t0 + Duration::from_millis(9_999)));
        assert!(w.should_warn(t0 + WARN_EVERY));
        assert!(!w.should_warn(t0 + WARN_EVERY + Duration::from_secs(5)));
    }

    #[test]
    fn only_descriptor_and_memory_errors_count_as_out_of_resources() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EPROTO, libc::EINVAL] {
            assert!(!out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
    }

    /// Runs the loop over `listener` on a local executor next to a task
    /// that counts its own turns, until the listener has been called
    /// `listener.limit` times; returns the waits asked for, the warnings
    /// and the other task's turns.
    fn run_failing(listener: Failing) -> (Vec<Duration>, usize, usize) {
        let calls = listener.calls.clone();
        let limit = listener.limit;
        let ex = LocalExecutor::new();
        let (tx, _rx) = unbounded();
        let waits = Rc::new(RefCell::new(Vec::new()));
        let warnings = Rc::new(Cell::new(0));
        let turns = Rc::new(Cell::new(0));
        let (w, n) = (waits.clone(), warnings.clone());
        let hooks = Hooks {
            // The "timer" only yields: the test sees every wait asked for
            // without waiting for it.
            sleep: move |d| {
                w.borrow_mut().push(d);
                smol::future::yield_now()
            },
            warn: move |_: &io::Error| n.set(n.get() + 1),
        };
        ex.spawn(run(listener, tx, hooks)).detach();
        let t = turns.clone();
        let c = calls.clone();
        ex.spawn(async move {
            while c.get() <= limit {
                t.set(t.get() + 1);
                smol::future::yield_now().await;
            }
        })
        .detach();
        smol::block_on(ex.run(async {
            while calls.get() <= limit {
                smol::future::yield_now().await;
            }
        }));
        let waits = waits.borrow().clone();
        (waits, warnings.get(), turns.get())
    }

    #[test]
    fn emfile_backs_off_warns_once_and_never_starves_the_executor() {
        let (waits, warnings, turns) = run_failing(Failing {
            errno: libc::EMFILE,
            calls: Rc::new(Cell::new(0)),
            limit: 50,
        });
        // Every failure waited on the timer, doubling to the cap.
        assert_eq!(waits.len(), 50, "{waits:?}");
        assert_eq!(
            waits[..6],
            [10, 20, 40, 80, 160, 250].map(Duration::from_millis)
        );
        assert!(waits[6..].iter().all(|d| *d == BACKOFF_CAP), "{waits:?}");
        // One warning for the whole burst (well within 10 s).
        assert_eq!(warnings, 1);
        // The other task ran between the failures.
        assert!(turns >= 50, "the other task ran {turns} times");
    }

    #[test]
    fn other_errors_yield_and_back_off_only_when_they_persist() {
        let (waits, warnings, turns) = run_failing(Failing {
            errno: libc::EPROTO,
            calls: Rc::new(Cell::new(0)),
            limit: 40,
        });
        assert_eq!(warnings, 0);
        let first_wait = usize::try_from(OTHER_ERRORS_BEFORE_BACKOFF).unwrap_or(usize::MAX);
        assert_eq!(waits.len(), 40 - first_wait, "{waits:?}");
        assert!(turns >= 40, "the other task ran {turns} times");
    }

    #[test]
    fn the_warning_names_the_limit_and_the_open_connections() {
        let text = warning_text(&io::Error::from_raw_os_error(libc::EMFILE), 190, Some(256));
        assert!(text.starts_with("credproxy: warning: "), "{text}");
        assert!(text.contains("file descriptor limit"), "{text}");
        assert!(text.contains("RLIMIT_NOFILE is 256"), "{text}");
        assert!(text.contains("connections open: 190"), "{text}");
    }
}
