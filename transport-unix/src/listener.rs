//! The async accept loop: bind inside the verified directory, tighten the
//! socket's mode, and admit or refuse each peer by uid.

use std::fs::{self, Permissions};
use std::io;
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_net::unix::{UnixListener, UnixStream};
use credproxy_core::Peer;

use crate::error::UnixError;
use crate::instance::Instance;
use crate::path::check_socket_path;
use crate::peercred::peer_of;
use crate::policy::{PeerPolicy, RefusalReason};

/// The outcome of one accepted connection.
#[derive(Debug)]
pub enum Accepted {
    /// The peer passed the [`PeerPolicy`]; the stream is the caller's.
    Allowed(UnixStream, Peer),
    /// The peer was refused and its stream already closed (the client sees
    /// EOF). The caller should audit the refusal.
    Refused {
        /// The peer identity, when it could be read.
        peer: Option<Peer>,
        /// Why the peer was refused.
        reason: RefusalReason,
    },
}

/// An async Unix socket listener that checks each peer's uid at accept.
///
/// Uses the smol reactor (`async-io`); any executor can drive it.
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    path: Option<PathBuf>,
    policy: PeerPolicy,
}

impl Listener {
    /// Binds the socket of `instance` and sets it to mode 0600 before the
    /// first accept.
    ///
    /// The socket path is checked against `sun_path` again, then bound (in
    /// the instance's private directory, whose 0700 mode keeps others from
    /// reaching the socket in the moment before the chmod), chmod-ed to 0600
    /// and checked with `lstat`. If the chmod or check fails the socket file
    /// is removed and nothing is returned.
    ///
    /// # Errors
    ///
    /// [`UnixError::SocketPathTooLong`], or [`UnixError::Io`] from bind,
    /// chmod or registering with the reactor.
    pub fn bind(instance: &Instance, policy: PeerPolicy) -> Result<Listener, UnixError> {
        let path = instance.socket_path();
        check_socket_path(path)?;
        let std_listener = std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| UnixError::io("cannot bind socket", path, e))?;
        if let Err(e) = restrict_socket_mode(path) {
            drop(std_listener);
            let _ = fs::remove_file(path);
            return Err(e);
        }
        let inner = UnixListener::try_from(std_listener)
            .map_err(|e| UnixError::io("cannot register socket with the reactor", path, e))?;
        Ok(Listener {
            inner,
            path: Some(path.to_path_buf()),
            policy,
        })
    }

    /// Wraps a listening socket bound elsewhere (e.g. inherited or bound by
    /// the caller with other permissions). The caller is responsible for its
    /// placement and mode; peers are still checked against `policy`.
    ///
    /// # Errors
    ///
    /// Setting non-blocking mode or registering with the reactor failed.
    pub fn from_std(
        listener: std::os::unix::net::UnixListener,
        policy: PeerPolicy,
    ) -> io::Result<Listener> {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        Ok(Listener {
            inner: UnixListener::try_from(listener)?,
            path,
            policy,
        })
    }

    /// The path the listener is bound to, when it has one.
    #[must_use]
    pub fn socket_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The peer policy applied at accept.
    #[must_use]
    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// Waits for the next connection and admits or refuses its peer.
    ///
    /// A refused connection (peer uid not admitted, uid unknown, or
    /// credentials unreadable) is shut down and closed before this returns,
    /// and reported as [`Accepted::Refused`]. Transient accept errors
    /// (`ECONNABORTED`, `EINTR`) are retried here.
    ///
    /// # Errors
    ///
    /// Other accept errors, e.g. `EMFILE` when out of file descriptors;
    /// the listener stays usable and the caller may back off and retry.
    pub async fn accept(&self) -> io::Result<Accepted> {
        loop {
            match self.inner.accept().await {
                Ok((stream, _addr)) => return Ok(self.admit(stream)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies the policy to a freshly accepted stream.
    fn admit(&self, stream: UnixStream) -> Accepted {
        let outcome = match peer_of(&stream) {
            Ok(peer) => self
                .policy
                .check(&peer)
                .map(|()| peer)
                .map_err(|r| (Some(peer), r)),
            Err(e) => Err((None, RefusalReason::PeerLookupFailed(e))),
        };
        match outcome {
            Ok(peer) => Accepted::Allowed(stream, peer),
            Err((peer, reason)) => {
                // Close at once: the peer sees EOF, no byte is read.
                let _ = stream.shutdown(Shutdown::Both);
                drop(stream);
                Accepted::Refused { peer, reason }
            }
        }
    }
}

/// Sets the socket file to 0600 and checks the result with `lstat`.
fn restrict_socket_mode(path: &Path) -> Result<(), UnixError> {
    // fchmod on a socket descriptor does not change the file, so chmod the
    // path; it was just bound inside our private directory.
    fs::set_permissions(path, Permissions::from_mode(0o600))
        .map_err(|e| UnixError::io("cannot set mode 0600 on socket", path, e))?;
    let meta =
        fs::symlink_metadata(path).map_err(|e| UnixError::io("cannot inspect socket", path, e))?;
    if !meta.file_type().is_socket() || meta.permissions().mode() & 0o777 != 0o600 {
        return Err(UnixError::io(
            "socket did not keep mode 0600",
            path,
            io::Error::from(io::ErrorKind::PermissionDenied),
        ));
    }
    Ok(())
}
