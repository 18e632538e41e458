//! The descriptor budget of a socket server (SPEC §3.1: "`max_connections`
//! is clamped to what `RLIMIT_NOFILE` allows").
//!
//! Why: every connection is a descriptor. If the connection limits allow
//! more sockets than the process may open, `accept` fails with `EMFILE`
//! before the engine's own policy (pre-handshake budget, idle eviction)
//! ever sees the newcomer, so a local client could lock everyone out by
//! merely connecting. So at start the soft limit is raised to the hard
//! limit ([`raise_nofile_limit`]) and the limits are lowered, with a
//! warning, until every socket they allow fits beside the process's own
//! descriptors ([`clamp`], a pure function).

use std::num::NonZeroUsize;

use credproxy_core::config::Limits;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for the process's own use whatever the limits, beside
/// [`PER_IO_THREAD`] per I/O thread: stdio (3), the listening socket (1),
/// the async reactor and the signal pipe (about 5), the audit log file
/// (1), store files and refresh lock files open at once (a read or write
/// holds one for its duration, a refresh holds its lock file: 24), HTTP
/// sockets to providers (16), loopback redirect listeners and the
/// browser's connections to them (8), and slack for the libraries'
/// transient descriptors (6). A generous round number: running short
/// means `EMFILE` from the store or HTTP, which is worse than a few
/// connections fewer.
pub const RESERVE: u64 = 64;

/// Descriptors of each I/O thread: its epoll instance and its eventfd.
pub const PER_IO_THREAD: u64 = 2;

/// An unlimited hard limit is taken as the kernel's usual `nr_open`
/// (2^20), the most `setrlimit` accepts by default on Linux.
const UNLIMITED_AS: u64 = 1 << 20;

/// The two limits that decide how many sockets can be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Handshaken connections.
    pub max_connections: usize,
    /// Connections still in their handshake (a separate budget).
    pub max_pending_handshakes: usize,
}

impl SocketLimits {
    /// The engine's limits.
    #[must_use]
    pub fn of(limits: &Limits) -> SocketLimits {
        SocketLimits {
            max_connections: limits.max_connections,
            max_pending_handshakes: limits.max_pending_handshakes,
        }
    }

    /// Writes them back into the engine's limits.
    pub fn apply(self, limits: &mut Limits) {
        limits.max_connections = self.max_connections;
        limits.max_pending_handshakes = self.max_pending_handshakes;
    }

    /// Sockets open at most (the engine's `Limits::max_sockets`).
    #[must_use]
    pub fn sockets(self) -> u64 {
        u64::try_from(
            self.max_connections
                .saturating_add(self.max_pending_handshakes),
        )
        .unwrap_or(u64::MAX)
    }
}

/// The outcome of [`clamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clamped {
    /// The limits to use.
    pub limits: SocketLimits,
    /// What was lowered and why, for stderr; `None` when nothing was.
    pub warning: Option<String>,
}

/// Descriptors the process keeps for itself with `io_threads` I/O threads.
#[must_use]
pub fn reserve(io_threads: NonZeroUsize) -> u64 {
    let threads = u64::try_from(io_threads.get()).unwrap_or(u64::MAX);
    RESERVE.saturating_add(PER_IO_THREAD.saturating_mul(threads))
}

/// Lowers `limits` so their sockets fit in `nofile` descriptors beside
/// [`reserve`]. When they do not fit, the pre-handshake budget gets at
/// most a quarter of the room (it only needs to outlast a burst of raw
/// connects: the oldest are dropped first) and the handshaken connections
/// the rest; each keeps at least 1. Limits that fit are left alone.
#[must_use]
pub fn clamp(nofile: u64, io_threads: NonZeroUsize, limits: SocketLimits) -> Clamped {
    let kept = reserve(io_threads);
    let room = nofile.saturating_sub(kept);
    if limits.sockets() <= room {
        return Clamped {
            limits,
            warning: None,
        };
    }
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let pending = limits.max_pending_handshakes.min(to_usize(room / 4)).max(1);
    let open = limits
        .max_connections
        .min(to_usize(room).saturating_sub(pending))
        .max(1);
    let clamped = SocketLimits {
        max_connections: open,
        max_pending_handshakes: pending,
    };
    let mut changes = Vec::new();
    if open != limits.max_connections {
        changes.push(format!(
            "max_connections lowered from {} to {open}",
            limits.max_connections
        ));
    }
    if pending != limits.max_pending_handshakes {
        changes.push(format!(
            "max_pending_handshakes lowered from {} to {pending}",
            limits.max_pending_handshakes
        ));
    }
    let short = if clamped.sockets() > room {
        " (too low to serve well: raise it with `ulimit -n`)"
    } else {
        ""
    };
    let warning = format!(
        "credproxy: warning: RLIMIT_NOFILE is {nofile}{short}: {}, so that every socket fits \
         beside the {kept} descriptors kept for the store, HTTP, the listener and {} I/O \
         thread(s)",
        changes.join(" and "),
        io_threads.get(),
    );
    Clamped {
        limits: clamped,
        warning: Some(warning),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (best effort) and
/// returns the soft limit now in force (`None` when it cannot be read).
/// The I/O threads use epoll, so descriptors above 1024 are fine.
#[must_use]
pub fn raise_nofile_limit() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let target = if hard == nix::libc::RLIM_INFINITY {
        UNLIMITED_AS
    } else {
        hard
    };
    if soft >= target {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => Some(target),
        Err(_) => Some(soft),
    }
}

/// The soft `RLIMIT_NOFILE` in force.
#[must_use]
pub fn current_nofile() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises the limit, then clamps `limits` to it for `io_threads`; prints
/// the warning, if any, on stderr.
pub fn fit(limits: &mut Limits, io_threads: NonZeroUsize) {
    let Some(nofile) = raise_nofile_limit() else {
        return;
    };
    let out = clamp(nofile, io_threads, SocketLimits::of(limits));
    out.limits.apply(limits);
    if let Some(w) = out.warning {
        eprintln!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("nonzero")
    }

    const DEFAULTS: SocketLimits = SocketLimits {
        max_connections: 256,
        max_pending_handshakes: 64,
    };

    #[test]
    fn limits_that_fit_are_left_alone() {
        let out = clamp(4096, threads(4), DEFAULTS);
        assert_eq!(out.limits, DEFAULTS);
        assert_eq!(out.warning, None);
        // Exactly fitting: 256 + 64 + 64 + 2 * 4 = 392.
        let out = clamp(392, threads(4), DEFAULTS);
        assert_eq!(out.limits, DEFAULTS);
        assert_eq!(out.warning, None);
    }

    #[test]
    fn a_low_limit_lowers_both_pending_to_a_quarter_of_the_room() {
        // 256 - (64 + 2 * 2) = 188 of room: pending 47, open 141.
        let out = clamp(256, threads(2), DEFAULTS);
        assert_eq!(
            out.limits,
            SocketLimits {
                max_connections: 141,
                max_pending_handshakes: 47
            }
        );
        assert_eq!(out.limits.sockets() + reserve(threads(2)), 256);
        let w = out.warning.expect("a warning");
        assert!(
            w.starts_with("credproxy: warning: RLIMIT_NOFILE is 256: "),
            "{w}"
        );
        assert!(w.contains("max_connections lowered from 256 to 141"), "{w}");
        assert!(
            w.contains("max_pending_handshakes lowered from 64 to 47"),
            "{w}"
        );
        assert!(w.contains("68 descriptors kept"), "{w}");
    }

    #[test]
    fn a_small_pending_budget_is_kept_and_open_gets_the_rest() {
        let limits = SocketLimits {
            max_connections: 1000,
            max_pending_handshakes: 8,
        };
        let out = clamp(1024, threads(1), limits);
        // Room 1024 - 66 = 958: pending 8 fits its quarter, open 950.
        assert_eq!(out.limits.max_pending_handshakes, 8);
        assert_eq!(out.limits.max_connections, 950);
        let w = out.warning.expect("a warning");
        assert!(
            w.contains("max_connections lowered from 1000 to 950"),
            "{w}"
        );
        assert!(!w.contains("max_pending_handshakes"), "{w}");
    }

    #[test]
    fn the_engine_limits_round_trip_and_agree_on_the_socket_count() {
        let mut l = Limits::default();
        let s = SocketLimits::of(&l);
        assert_eq!(s, DEFAULTS);
        assert_eq!(s.sockets(), l.max_sockets() as u64);
        clamp(256, threads(2), s).limits.apply(&mut l);
        assert_eq!((l.max_connections, l.max_pending_handshakes), (141, 47));
    }

    #[test]
    fn a_limit_below_the_reserve_keeps_one_of_each_and_says_so() {
        let out = clamp(50, threads(2), DEFAULTS);
        assert_eq!(
            out.limits,
            SocketLimits {
                max_connections: 1,
                max_pending_handshakes: 1
            }
        );
        let w = out.warning.expect("a warning");
        assert!(w.contains("ulimit -n"), "{w}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        let want = if hard == nix::libc::RLIM_INFINITY {
            UNLIMITED_AS
        } else {
            hard
        };
        // Lower the soft limit first, so that the raise has work to do
        // (a process often starts with soft = hard).
        let low = want.min(64);
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).expect("lower the soft limit");
        assert_eq!(current_nofile(), Some(low));
        let now = raise_nofile_limit().expect("the limit");
        assert_eq!(now, want);
        assert_eq!(current_nofile(), Some(want));
    }
}
