//! The error type of the client.

use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use credproxy_core::ErrorCode;

use super::capability::{CAPABILITY_FD_ENV, CAPABILITY_FILE_ENV, CapabilityError};

/// The message of [`ClientError::ConnectionLost`], as the existing client
/// words it.
pub const CONNECTION_LOST_MESSAGE: &str = "Credential proxy connection lost. Restart the session.";

/// Why a client call failed. No variant carries a capability token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The capability token could not be read or is malformed.
    #[error(transparent)]
    Capability(#[from] CapabilityError),

    /// Connecting to the socket, or writing or reading the handshake, failed.
    #[error("cannot connect to the credential proxy at {}: {error}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },

    /// The proxy refused the handshake.
    #[error("{}", handshake_message(code, message))]
    Handshake {
        /// The wire code (`UNAUTHORIZED`, `UNKNOWN_VERSION`, …).
        code: String,
        /// The wire message.
        message: String,
    },

    /// The proxy did not answer the handshake in time.
    #[error("Credential proxy handshake timed out after {ms}ms")]
    HandshakeTimeout {
        /// The handshake timeout in milliseconds.
        ms: u64,
    },

    /// The handshake reply broke the protocol, or the proxy closed the
    /// connection before answering it.
    #[error("credential proxy protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: &'static str,
    },

    /// No reply within the request timeout; a `cancel` was sent for the
    /// request. The connection stays usable.
    #[error("Request timed out after {ms}ms")]
    Timeout {
        /// The timeout in milliseconds.
        ms: u64,
    },

    /// The connection broke while requests were pending (closed by the
    /// proxy, reset), or a reply was malformed. The client does not
    /// reconnect: this call and every later one fail with this error. (A
    /// proxy closing an idle connection is not this: the next call
    /// reconnects.)
    #[error("Credential proxy connection lost. Restart the session.")]
    ConnectionLost,

    /// The proxy answered with an error reply.
    #[error("{message} ({code}){}", retry_suffix(*retry_after))]
    Server {
        /// The wire code, e.g. `NOT_FOUND`.
        code: String,
        /// The wire message.
        message: String,
        /// Seconds to wait before retrying (`RATE_LIMITED`).
        retry_after: Option<u64>,
    },

    /// A success reply whose `data` does not have the shape of the
    /// operation's result.
    #[error("unexpected reply to {op}: {reason}")]
    UnexpectedReply {
        /// The operation.
        op: &'static str,
        /// What was missing or of the wrong type.
        reason: &'static str,
    },
}

fn handshake_message(code: &str, message: &str) -> String {
    match ErrorCode::from_str(code) {
        Ok(ErrorCode::Unauthorized) => format!(
            "the credential proxy refused the connection because the capability token is missing or wrong; \
             point {CAPABILITY_FILE_ENV} at the proxy's token file (or {CAPABILITY_FD_ENV} at a descriptor holding it) \
             [{code}: {message}]"
        ),
        Ok(ErrorCode::UnknownVersion) => format!(
            "the credential proxy supports neither protocol version 1 nor 2 [{code}: {message}]"
        ),
        _ => format!("the credential proxy refused the handshake [{code}: {message}]"),
    }
}

fn retry_suffix(retry_after: Option<u64>) -> String {
    retry_after.map_or_else(String::new, |s| format!("; retry after {s}s"))
}

impl ClientError {
    /// The wire code of a [`ClientError::Server`] or
    /// [`ClientError::Handshake`] error.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } | ClientError::Handshake { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The wire code as an [`ErrorCode`], when it is one this crate knows.
    #[must_use]
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code().and_then(|c| ErrorCode::from_str(c).ok())
    }

    /// Whether the proxy answered `NOT_FOUND`.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.error_code() == Some(ErrorCode::NotFound)
    }

    /// Whether the connection is gone for good.
    #[must_use]
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, ClientError::ConnectionLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            ClientError::ConnectionLost.to_string(),
            CONNECTION_LOST_MESSAGE
        );
        assert_eq!(
            ClientError::Timeout { ms: 150 }.to_string(),
            "Request timed out after 150ms"
        );
        let e = ClientError::Server {
            code: "RATE_LIMITED".into(),
            message: "Too many requests".into(),
            retry_after: Some(2),
        };
        assert_eq!(
            e.to_string(),
            "Too many requests (RATE_LIMITED); retry after 2s"
        );
        assert_eq!(e.error_code(), Some(ErrorCode::RateLimited));
        let e = ClientError::Handshake {
            code: "UNAUTHORIZED".into(),
            message: "Invalid or missing capability token".into(),
        };
        assert!(
            e.to_string()
                .contains("capability token is missing or wrong")
        );
        assert!(e.to_string().contains(CAPABILITY_FILE_ENV));
    }
}
