//! Which peer uids may connect, and why one was refused.

use std::io;

use credproxy_core::Peer;

use crate::dirs::euid;

/// Which peer uids the listener admits.
///
/// The usual policy ([`PeerPolicy::new`], also the `Default`) admits our
/// own effective uid, root (uid 0, which can reach the socket anyway) and
/// the uids listed in configuration. [`PeerPolicy::explicit`] admits only
/// the listed uids — for tests and for deployments that want to be exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Extra uids admitted (e.g. a container's mapped uid).
    pub allowed_uids: Vec<u32>,
    /// Whether our own effective uid and root are admitted without being
    /// listed.
    pub allow_owner_and_root: bool,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy::new(Vec::new())
    }
}

impl PeerPolicy {
    /// Our effective uid, root, and `allowed_uids`.
    #[must_use]
    pub fn new(allowed_uids: Vec<u32>) -> PeerPolicy {
        PeerPolicy {
            allowed_uids,
            allow_owner_and_root: true,
        }
    }

    /// Exactly `allowed_uids`: neither our own uid nor root is implied.
    #[must_use]
    pub fn explicit(allowed_uids: Vec<u32>) -> PeerPolicy {
        PeerPolicy {
            allowed_uids,
            allow_owner_and_root: false,
        }
    }

    /// Whether a peer with `uid` may connect.
    #[must_use]
    pub fn allows(&self, uid: u32) -> bool {
        self.allows_with_owner(uid, euid())
    }

    /// [`PeerPolicy::allows`] with our effective uid passed in.
    fn allows_with_owner(&self, uid: u32, owner: u32) -> bool {
        (self.allow_owner_and_root && (uid == owner || uid == 0))
            || self.allowed_uids.contains(&uid)
    }

    /// Admits or refuses `peer`; a peer whose uid is unknown is refused.
    ///
    /// # Errors
    ///
    /// The [`RefusalReason`] when the peer is not admitted.
    pub fn check(&self, peer: &Peer) -> Result<(), RefusalReason> {
        match peer.uid {
            None => Err(RefusalReason::UidUnknown),
            Some(uid) if self.allows(uid) => Ok(()),
            Some(uid) => Err(RefusalReason::UidNotAllowed { uid }),
        }
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The peer's uid is not admitted by the [`PeerPolicy`].
    #[error("peer uid {uid} is not allowed to connect")]
    UidNotAllowed {
        /// The refused uid.
        uid: u32,
    },
    /// The operating system reported no uid for the peer.
    #[error("the operating system did not report the peer's uid")]
    UidUnknown,
    /// Reading the peer's credentials failed.
    #[error("cannot read the peer's credentials: {0}")]
    PeerLookupFailed(io::Error),
}

impl RefusalReason {
    /// A short stable code for audit events: `uid_not_allowed`,
    /// `uid_unknown` or `peer_lookup_failed`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            RefusalReason::UidNotAllowed { .. } => "uid_not_allowed",
            RefusalReason::UidUnknown => "uid_unknown",
            RefusalReason::PeerLookupFailed(_) => "peer_lookup_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credproxy_core::Transport;

    fn peer(uid: Option<u32>) -> Peer {
        Peer {
            uid,
            gid: None,
            pid: None,
            transport: Transport::Unix,
        }
    }

    #[test]
    fn default_admits_owner_root_and_listed() {
        let p = PeerPolicy::new(vec![1234]);
        assert!(p.allows_with_owner(1000, 1000));
        assert!(p.allows_with_owner(0, 1000));
        assert!(p.allows_with_owner(1234, 1000));
        assert!(!p.allows_with_owner(65534, 1000));
        assert!(!p.allows_with_owner(1001, 1000));
        assert_eq!(PeerPolicy::default(), PeerPolicy::new(vec![]));
        assert!(PeerPolicy::default().allows(euid()));
        assert!(PeerPolicy::default().allows(0));
    }

    #[test]
    fn explicit_admits_only_listed() {
        let p = PeerPolicy::explicit(vec![1234]);
        assert!(!p.allows_with_owner(1000, 1000));
        assert!(!p.allows_with_owner(0, 1000));
        assert!(p.allows_with_owner(1234, 1000));
        assert!(!PeerPolicy::explicit(vec![]).allows(euid()));
    }

    #[test]
    fn check_refuses_unknown_and_unlisted() {
        let p = PeerPolicy::explicit(vec![5]);
        assert!(p.check(&peer(Some(5))).is_ok());
        let e = p.check(&peer(Some(6))).expect_err("refused");
        assert!(matches!(e, RefusalReason::UidNotAllowed { uid: 6 }));
        assert_eq!(e.code(), "uid_not_allowed");
        assert_eq!(e.to_string(), "peer uid 6 is not allowed to connect");
        let e = PeerPolicy::default()
            .check(&peer(None))
            .expect_err("refused");
        assert!(matches!(e, RefusalReason::UidUnknown));
        assert_eq!(e.code(), "uid_unknown");
    }
}
