//! Connection admission under pressure (SPEC §3.1, §3.5 "Connection limit").
//!
//! A local process of the peer's uid may open connections without a token,
//! so a plain "refuse beyond N" table lets it lock everyone out with idle
//! connections or raw connects. The policy instead:
//!
//! - **pending budget**: connections still in their handshake have their
//!   own budget (`max_pending_handshakes`); when it is full, a new
//!   connection is admitted by closing the oldest pending one
//!   (`connection_evicted`, outcome `pending_oldest`). A flood of raw
//!   connects thus only ever displaces other unauthenticated connects.
//! - **handshaken table**: `max_connections` bounds handshaken connections.
//!   When a handshake completes with the table full, the connection idle
//!   longest — nothing in flight and no live login session created on it —
//!   is closed to admit the newcomer (`connection_evicted`, outcome `idle`;
//!   the llxprt client reconnects and handshakes on its next call). When no
//!   connection is evictable, the newcomer is closed without a handshake
//!   reply (`connection_refused`, outcome `connection_limit`): a reply
//!   would claim a success it cannot have, and a close is what an
//!   over-limit accept always looked like to a client.
//! - **per-process cap**: where the transport knows the peer's pid, that pid
//!   may hold `max_connections_per_pid` connections (pending and
//!   handshaken); more are refused at accept (`connection_refused`,
//!   outcome `per_pid_limit`). An unknown pid has no cap.
//!
//! Live connections are therefore at most [`Limits::max_sockets`]. The
//! bookkeeping is kept incrementally (pending ids in open order, counts by
//! pid) so accepting costs O(log n); only the eviction of an idle
//! connection, which happens when the table is full, scans the table (and
//! the live sessions once) — at most `max_connections` entries.
//!
//! [`Limits::max_sockets`]: crate::config::Limits::max_sockets

use std::collections::{BTreeMap, BTreeSet};

use rand_core::CryptoRng;

use crate::audit::{AuditEvent, ConnId, Level};
use crate::connection::{Connection, Phase};
use crate::engine::Engine;

/// Which connections are pending and how many each peer process holds.
///
/// Invariants: `pending` is exactly the set of connections in
/// `Phase::AwaitingHandshake`; `per_pid[p]` is the number of live
/// connections whose peer pid is `p` (entries are never zero).
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Pending connections; ids grow with open order, so the first is the
    /// oldest.
    pending: BTreeSet<ConnId>,
    per_pid: BTreeMap<u32, usize>,
}

/// Why a new connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer process holds `max_connections_per_pid` already.
    PerPid,
}

impl Admission {
    /// Number of connections still in their handshake.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A connection was admitted (pending).
    fn opened(&mut self, conn: ConnId, pid: Option<u32>) {
        self.pending.insert(conn);
        if let Some(pid) = pid {
            *self.per_pid.entry(pid).or_default() += 1;
        }
    }

    /// A connection left the engine.
    pub(crate) fn forgot(&mut self, conn: ConnId, c: &Connection) {
        self.pending.remove(&conn);
        if let Some(pid) = c.peer.pid
            && let Some(n) = self.per_pid.get_mut(&pid)
        {
            *n -= 1;
            if *n == 0 {
                self.per_pid.remove(&pid);
            }
        }
    }
}

impl<R: CryptoRng> Engine<R> {
    /// Admission at accept: the per-process cap, then room in the pending
    /// budget (made by closing the oldest pending connection).
    pub(crate) fn admit_open(&mut self, pid: Option<u32>) -> Result<(), Refusal> {
        let limits = &self.config.limits;
        if let Some(pid) = pid
            && self.admission.per_pid.get(&pid).copied().unwrap_or(0)
                >= limits.max_connections_per_pid
        {
            let mut ev = AuditEvent::new(Level::Warn, None, "connection_refused", "per_pid_limit");
            ev.limit = Some(limits.max_connections_per_pid as u64);
            self.audit(ev);
            return Err(Refusal::PerPid);
        }
        while self.admission.pending.len() >= self.config.limits.max_pending_handshakes {
            let Some(&oldest) = self.admission.pending.first() else {
                break;
            };
            let mut ev = AuditEvent::new(
                Level::Warn,
                Some(oldest),
                "connection_evicted",
                "pending_oldest",
            );
            ev.limit = Some(self.config.limits.max_pending_handshakes as u64);
            self.audit(ev);
            self.close(oldest);
        }
        Ok(())
    }

    /// Records an admitted connection.
    pub(crate) fn admitted(&mut self, conn: ConnId, pid: Option<u32>) {
        self.admission.opened(conn, pid);
    }

    /// A handshake of `conn` succeeded: makes room in the handshaken table
    /// if needed. False when there is none (the caller closes `conn`).
    pub(crate) fn admit_handshaken(&mut self, conn: ConnId) -> bool {
        let open = self.conns.len() - self.admission.pending.len();
        if open < self.config.limits.max_connections {
            self.admission.pending.remove(&conn);
            return true;
        }
        match self.idle_longest(conn) {
            Some(victim) => {
                let mut ev =
                    AuditEvent::new(Level::Warn, Some(victim), "connection_evicted", "idle");
                ev.limit = Some(self.config.limits.max_connections as u64);
                self.audit(ev);
                self.close(victim);
                self.admission.pending.remove(&conn);
                true
            }
            None => {
                let mut ev = AuditEvent::new(
                    Level::Warn,
                    Some(conn),
                    "connection_refused",
                    "connection_limit",
                );
                ev.limit = Some(self.config.limits.max_connections as u64);
                self.audit(ev);
                false
            }
        }
    }

    /// The evictable handshaken connection idle longest (ties: lowest id),
    /// other than `except`. Evictable: open, nothing in flight, and no live
    /// login session created on it (sessions are bound to the peer, not the
    /// connection, but the client that started a login on a connection is
    /// likely polling it there).
    fn idle_longest(&self, except: ConnId) -> Option<ConnId> {
        let with_sessions: BTreeSet<ConnId> = self.sessions.values().map(|s| s.origin).collect();
        self.conns
            .iter()
            .filter(|(id, c)| {
                **id != except
                    && matches!(c.phase, Phase::Open(_))
                    && c.in_flight.is_empty()
                    && !with_sessions.contains(id)
            })
            .min_by_key(|(id, c)| (c.last_active, **id))
            .map(|(id, _)| *id)
    }
}
