//! Per-connection protocol state, and the connection table.
//!
//! [`Connections`] owns every live connection together with the admission
//! bookkeeping (which connections are pending, how many each peer process
//! holds) and the connection deadlines. Opening, accepting a handshake and
//! removing go through it, so the counts and the deadlines cannot drift from
//! the table. The admission *policy* (which connection to refuse or evict)
//! lives in `admission`.

use std::collections::{BTreeMap, BTreeSet};

use crate::conn::peer::Peer;
use crate::conn::rate::TokenBucket;
use crate::engine::audit::ConnId;
use crate::engine::config::Limits;
use crate::engine::time::Mono;
use crate::engine::timer::{TimerKey, Timers};
use crate::operations::task::TaskId;
use crate::wire::frame::FrameDecoder;
use crate::wire::handshake::Accepted;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the first frame.
    AwaitingHandshake,
    /// Handshake accepted; requests are served.
    Open(Accepted),
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) peer: Peer,
    /// Private: it moves only through [`Connections::accept`], which keeps
    /// the pending set in step.
    phase: Phase,
    pub(crate) decoder: FrameDecoder,
    /// Requests in flight, by client id.
    pub(crate) in_flight: BTreeMap<String, TaskId>,
    pub(crate) rate: TokenBucket,
    /// The peer closed its write side: finish in-flight work, then close.
    pub(crate) read_closed: bool,
    /// The driver stopped reading (back-pressure).
    pub(crate) paused: bool,
    /// Time left on the partial-frame deadline, saved while paused.
    pub(crate) partial_left_ms: Option<u64>,
    /// Last activity: the open, the last complete frame received or the
    /// last reply queued, whichever is latest (engine clock, so it never
    /// decreases). Eviction of an idle connection picks the least.
    pub(crate) last_active: Mono,
}

impl Connection {
    /// Where the connection is in its life.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }
}

/// The live connections, which of them are pending, and how many each peer
/// process holds.
///
/// Invariants, kept by every method: `pending` is exactly the set of
/// connections in `Phase::AwaitingHandshake`; `per_pid[p]` is the number of
/// live connections whose peer pid is `p` (entries are never zero); a
/// connection's handshake and partial-frame deadlines are cancelled when it
/// is removed.
#[derive(Debug)]
pub(crate) struct Connections {
    conns: BTreeMap<ConnId, Connection>,
    next: u64,
    /// Pending connections; ids grow with open order, so the first is the
    /// oldest.
    pending: BTreeSet<ConnId>,
    per_pid: BTreeMap<u32, usize>,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            conns: BTreeMap::new(),
            next: 1,
            pending: BTreeSet::new(),
            per_pid: BTreeMap::new(),
        }
    }
}

impl Connections {
    /// Number of live connections (pending and handshaken).
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Number of connections still in their handshake.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Number of handshaken connections.
    pub(crate) fn handshaken(&self) -> usize {
        self.conns.len() - self.pending.len()
    }

    /// The pending connection opened first.
    pub(crate) fn oldest_pending(&self) -> Option<ConnId> {
        self.pending.first().copied()
    }

    /// Number of live connections of the peer process `pid`.
    pub(crate) fn held_by(&self, pid: u32) -> usize {
        self.per_pid.get(&pid).copied().unwrap_or(0)
    }

    /// Opens a pending connection and arms its handshake deadline.
    pub(crate) fn open(
        &mut self,
        peer: Peer,
        limits: &Limits,
        now: Mono,
        timers: &mut Timers,
    ) -> ConnId {
        let conn = ConnId(self.next);
        self.next += 1;
        self.conns.insert(
            conn,
            Connection {
                peer,
                phase: Phase::AwaitingHandshake,
                decoder: FrameDecoder::new(limits.max_frame_bytes),
                in_flight: BTreeMap::new(),
                rate: TokenBucket::new(limits.rate_per_sec, limits.rate_burst, now),
                read_closed: false,
                paused: false,
                partial_left_ms: None,
                last_active: now,
            },
        );
        self.pending.insert(conn);
        if let Some(pid) = peer.pid {
            *self.per_pid.entry(pid).or_default() += 1;
        }
        timers.set(TimerKey::Handshake(conn), now.plus(limits.handshake_ms));
        conn
    }

    /// The handshake of `conn` was accepted: it is no longer pending.
    pub(crate) fn accept(&mut self, conn: ConnId, accepted: Accepted) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Open(accepted);
            self.pending.remove(&conn);
        }
    }

    /// A live connection.
    pub(crate) fn get(&self, conn: ConnId) -> Option<&Connection> {
        self.conns.get(&conn)
    }

    /// A live connection, to update.
    pub(crate) fn get_mut(&mut self, conn: ConnId) -> Option<&mut Connection> {
        self.conns.get_mut(&conn)
    }

    /// Every live connection, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ConnId, &Connection)> {
        self.conns.iter().map(|(id, c)| (*id, c))
    }

    /// Removes a connection, its counts and its deadlines.
    pub(crate) fn remove(&mut self, conn: ConnId, timers: &mut Timers) -> Option<Connection> {
        let c = self.conns.remove(&conn)?;
        self.pending.remove(&conn);
        if let Some(pid) = c.peer.pid
            && let Some(n) = self.per_pid.get_mut(&pid)
        {
            *n -= 1;
            if *n == 0 {
                self.per_pid.remove(&pid);
            }
        }
        timers.cancel(TimerKey::Handshake(conn));
        timers.cancel(TimerKey::PartialFrame(conn));
        Some(c)
    }
}
