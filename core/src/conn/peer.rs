//! Who is on the other end of a connection.
//!
//! Transports report a [`Peer`] when they open a connection; the engine uses
//! it to bind OAuth sessions to the initiating peer and to label audit events.
//! Access control by uid happens in the transport at accept time; the engine
//! decides the connection class (host or sandbox) at the handshake.

use serde::Serialize;
use strum::{Display, EnumString, IntoStaticStr};

/// The transport a connection arrived on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Display,
    EnumString,
    IntoStaticStr,
    Serialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A Unix domain stream socket.
    Unix,
    /// The stdin/stdout pair of a parent process.
    Stdio,
    /// An embedder's own channel (tests, in-process use).
    Embedded,
}

/// Identity of a connected peer as far as the transport could establish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Peer {
    /// Effective uid of the peer process, where the OS reports it.
    pub uid: Option<u32>,
    /// Effective gid of the peer process, where the OS reports it.
    pub gid: Option<u32>,
    /// Process id of the peer, where the OS reports it.
    pub pid: Option<u32>,
    /// Which transport carried the connection.
    pub transport: Transport,
}

impl Peer {
    /// A peer with no OS identity on the given transport.
    #[must_use]
    pub fn anonymous(transport: Transport) -> Peer {
        Peer {
            uid: None,
            gid: None,
            pid: None,
            transport,
        }
    }
}
