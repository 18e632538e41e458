//! The client library: what a program inside the sandbox uses to talk to the
//! proxy. See the crate docs ("Client") for an overview and an example.
//!
//! [`Client`] is async on smol: its connection's reader and writer run as
//! tasks on smol's global executor, so a `Client` works under any executor
//! and from plain threads through [`BlockingClient`].
//!
//! This file holds the [`Client`] handle, its options and connection state;
//! `call.rs` sends a request and matches its reply (timeout, `cancel`),
//! `ops.rs` the typed method of each operation. The protocol under all of
//! them — framing, handshake, matching replies by id — is the sans-IO
//! [`proto`] module, shared with the CLI, `credproxy bench` and the tests.

mod blocking;
mod call;
mod capability;
mod conn;
mod error;
mod ops;
pub mod proto;
mod reply;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credproxy_core::Secret;
use serde_json::{Map, Value};

pub use blocking::BlockingClient;
pub use capability::{
    CAPABILITY_FD_ENV, CAPABILITY_FILE_ENV, CapabilityError, CapabilitySource, TokenOrigin,
};
pub use error::{CONNECTION_LOST_MESSAGE, ClientError};
pub use ops::BucketStats;

use conn::{Closer, Conn, Shared, State, lock, new_ids};

/// Default request timeout: 30 s.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default idle time after which the client closes its connection: 5 min.
pub const DEFAULT_IDLE_CLOSE_MS: u64 = 300_000;
/// Default time allowed for connecting and handshaking: 30 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 30_000;

/// A JSON object: the `data` of a reply.
pub type JsonMap = Map<String, Value>;

/// Timings of a [`Client`], in milliseconds. Zero disables a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Time a request may wait for its reply before the client sends
    /// `cancel` and fails it with [`ClientError::Timeout`] (30 000).
    pub request_timeout_ms: u64,
    /// Time without pending requests after which the connection is closed
    /// gracefully (300 000); the next call connects and handshakes again.
    pub idle_close_ms: u64,
    /// Time allowed to connect and complete the handshake (30 000).
    pub handshake_timeout_ms: u64,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            idle_close_ms: DEFAULT_IDLE_CLOSE_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
        }
    }
}

fn nonzero_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl ClientOptions {
    fn request_timeout(&self) -> Option<Duration> {
        nonzero_ms(self.request_timeout_ms)
    }

    fn idle_close(&self) -> Option<Duration> {
        nonzero_ms(self.idle_close_ms)
    }

    fn handshake_timeout(&self) -> Option<Duration> {
        nonzero_ms(self.handshake_timeout_ms)
    }
}

/// The state of a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connected and handshaken with this protocol version.
    Connected {
        /// The negotiated version (1 or 2).
        version: u8,
    },
    /// Closed while idle (by us or the proxy); the next call connects again.
    Idle,
    /// The connection broke; every call fails with
    /// [`ClientError::ConnectionLost`].
    Lost,
}

/// An async client of the credential proxy over its Unix socket.
///
/// One connection carries any number of concurrent requests, matched to
/// their replies by id. Each request has a timeout (default 30 s, see
/// [`ClientOptions`] and [`Client::call_with_timeout`]); on timeout the
/// client sends `cancel` and the call fails with [`ClientError::Timeout`].
/// After 5 minutes without pending requests the connection is closed
/// gracefully and the next call connects and handshakes again. The same
/// happens when the proxy closes an idle connection (nothing pending; it
/// evicts the connection idle longest when its table is full), unless the
/// proxy is gone. Those are the only reconnects: a connection that breaks
/// with requests pending or sends a malformed reply fails every pending
/// and later call with [`ClientError::ConnectionLost`].
///
/// Cloning gives another handle on the same connection; the connection is
/// closed when the last handle is dropped. `Debug` never shows the
/// capability token.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.shared.path)
            .field("capability_token", &self.shared.token)
            .field("state", &self.connection_state())
            .field("options", &self.shared.options)
            .finish()
    }
}

impl Client {
    /// Connects to the proxy at `path` and handshakes with the token from
    /// `capability`, with default [`ClientOptions`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Capability`] when the token cannot be read,
    /// [`ClientError::Connect`], [`ClientError::Handshake`] when the proxy
    /// refuses (`UNAUTHORIZED`: the token is missing or wrong),
    /// [`ClientError::HandshakeTimeout`] or [`ClientError::Protocol`].
    pub async fn connect(
        path: impl AsRef<Path>,
        capability: CapabilitySource,
    ) -> Result<Client, ClientError> {
        Client::connect_with_options(path, capability, ClientOptions::default()).await
    }

    /// Like [`Client::connect`], with the given options. The capability
    /// token is read once, here, and kept for the reconnect after an idle
    /// close.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
    pub async fn connect_with_options(
        path: impl AsRef<Path>,
        capability: CapabilitySource,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let token: Option<Secret> = capability.resolve()?;
        let shared = Arc::new(Shared {
            path: path.as_ref().to_path_buf(),
            token,
            options,
            state: Mutex::new(State::Idle(Closer::Client)),
            connect_lock: smol::lock::Mutex::new(()),
            ids: new_ids(),
            version: AtomicU8::new(0),
        });
        Conn::open(&shared).await?;
        Ok(Client { shared })
    }

    /// The socket path.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.shared.path
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> ClientOptions {
        self.shared.options
    }

    /// The protocol version negotiated by the latest handshake (1 or 2).
    #[must_use]
    pub fn protocol_version(&self) -> u8 {
        self.shared.version.load(Ordering::Relaxed)
    }

    /// The state of the connection.
    #[must_use]
    pub fn connection_state(&self) -> ConnectionState {
        match &*lock(&self.shared.state) {
            State::Open(conn) => ConnectionState::Connected {
                version: conn.version(),
            },
            State::Idle(_) => ConnectionState::Idle,
            State::Lost => ConnectionState::Lost,
        }
    }
}

#[cfg(test)]
mod tests;
