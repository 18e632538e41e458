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
//!   connection is evictable, the newcomer's handshake is refused with
//!   `RESOURCE_EXHAUSTED "Too many connections"` and the connection closed
//!   (`connection_refused`, outcome `connection_limit`), so its client can
//!   say why instead of reporting a lost connection.
//! - **per-process cap**: where the transport knows the peer's pid, that pid
//!   may hold `max_connections_per_pid` connections (pending and
//!   handshaken); more are refused at accept (`connection_refused`,
//!   outcome `per_pid_limit`). An unknown pid has no cap.
//!
//! Live connections are therefore at most [`Limits::max_sockets`]. The
//! bookkeeping is kept incrementally by `connection::Connections` (pending
//! ids in open order, counts by
//! pid) so accepting costs O(log n); only the eviction of an idle
//! connection, which happens when the table is full, scans the table (and
//! the live sessions once) — at most `max_connections` entries.
//!
//! [`Limits::max_sockets`]: crate::engine::config::Limits::max_sockets

use std::collections::BTreeSet;

use rand_core::CryptoRng;

use crate::conn::connection::Phase;
use crate::engine::audit::{AuditEvent, ConnId, Level};
use crate::engine::engine::Engine;

/// Why a new connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer process holds `max_connections_per_pid` already.
    PerPid,
}

impl<R: CryptoRng> Engine<R> {
    /// Admission at accept: the per-process cap, then room in the pending
    /// budget (made by closing the oldest pending connection).
    pub(crate) fn admit_open(&mut self, pid: Option<u32>) -> Result<(), Refusal> {
        let limits = &self.config.limits;
        if let Some(pid) = pid
            && self.conns.held_by(pid) >= limits.max_connections_per_pid
        {
            let mut ev = AuditEvent::new(Level::Warn, None, "connection_refused", "per_pid_limit");
            ev.limit = Some(limits.max_connections_per_pid as u64);
            self.audit(ev);
            return Err(Refusal::PerPid);
        }
        while self.conns.pending() >= self.config.limits.max_pending_handshakes {
            let Some(oldest) = self.conns.oldest_pending() else {
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

    /// A handshake of `conn` succeeded: makes room in the handshaken table
    /// if needed. False when there is none (the caller closes `conn`); on
    /// true the caller accepts `conn` (`Connections::accept`).
    pub(crate) fn admit_handshaken(&mut self, conn: ConnId) -> bool {
        if self.conns.handshaken() < self.config.limits.max_connections {
            return true;
        }
        match self.idle_longest(conn) {
            Some(victim) => {
                let mut ev =
                    AuditEvent::new(Level::Warn, Some(victim), "connection_evicted", "idle");
                ev.limit = Some(self.config.limits.max_connections as u64);
                self.audit(ev);
                self.close(victim);
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
                *id != except
                    && matches!(c.phase(), Phase::Open(_))
                    && c.in_flight.is_empty()
                    && !with_sessions.contains(id)
            })
            .min_by_key(|(id, c)| (c.last_active, *id))
            .map(|(id, _)| id)
    }
}
