//! Per-connection protocol state.

use std::collections::BTreeMap;

use crate::frame::FrameDecoder;
use crate::handshake::Accepted;
use crate::peer::Peer;
use crate::rate::TokenBucket;
use crate::task::TaskId;
use crate::time::Mono;

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
    pub(crate) phase: Phase,
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
