//! Who is on the other end of a Unix stream socket, as the kernel says.

use std::io;
use std::os::fd::AsFd;

use credproxy_core::{Peer, Transport};

/// The peer identity of a connected Unix stream socket.
///
/// Linux and Android: `SO_PEERCRED`, giving uid, gid and pid (the
/// credentials the peer had when it connected; a pid of 0, reported for a
/// peer outside our pid namespace, becomes `None`). macOS and the BSDs:
/// `getpeereid`, giving uid and gid; the pid is `None`. Works with any
/// socket type that exposes its descriptor, e.g.
/// `async_net::unix::UnixStream` or `std::os::unix::net::UnixStream`.
///
/// # Errors
///
/// The `getsockopt`/`getpeereid` error, or `Unsupported` on other
/// platforms.
pub fn peer_of<S: AsFd>(stream: &S) -> io::Result<Peer> {
    imp::peer_of(stream.as_fd())
}

#[cfg(linux_like)]
mod imp {
    use super::{Peer, Transport, io};
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    use std::os::fd::BorrowedFd;

    pub(super) fn peer_of(fd: BorrowedFd<'_>) -> io::Result<Peer> {
        let cred = getsockopt(&fd, PeerCredentials)?;
        Ok(Peer {
            uid: Some(cred.uid()),
            gid: Some(cred.gid()),
            pid: u32::try_from(cred.pid()).ok().filter(|&pid| pid != 0),
            transport: Transport::Unix,
        })
    }
}

#[cfg(bsd_like)]
mod imp {
    use super::{Peer, Transport, io};
    use std::os::fd::BorrowedFd;

    pub(super) fn peer_of(fd: BorrowedFd<'_>) -> io::Result<Peer> {
        let (uid, gid) = nix::unistd::getpeereid(fd)?;
        Ok(Peer {
            uid: Some(uid.as_raw()),
            gid: Some(gid.as_raw()),
            pid: None,
            transport: Transport::Unix,
        })
    }
}

#[cfg(not(any(linux_like, bsd_like)))]
mod imp {
    use super::{Peer, io};
    use std::os::fd::BorrowedFd;

    pub(super) fn peer_of(_fd: BorrowedFd<'_>) -> io::Result<Peer> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "peer credentials are not supported on this platform",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socketpair_peer_is_ourselves() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let peer = peer_of(&a).expect("peer");
        assert_eq!(peer.uid, Some(nix::unistd::geteuid().as_raw()));
        assert_eq!(peer.gid, Some(nix::unistd::getegid().as_raw()));
        #[cfg(linux_like)]
        assert_eq!(peer.pid, Some(std::process::id()));
        assert_eq!(peer.transport, Transport::Unix);
    }
}
