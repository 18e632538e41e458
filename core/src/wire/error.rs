//! Wire error codes.
//!
//! Every error reply carries one of these codes, spelled exactly as the
//! existing llxprt-code credential proxy spells them, so its clients keep
//! matching on them.

use strum::{Display, EnumIter, EnumString, IntoStaticStr};

/// The `code` of an error reply (`{"id":…,"ok":false,"code":…,"error":…}`).
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
    EnumIter,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Handshake: no common protocol version.
    UnknownVersion,
    /// Handshake: capability token missing or wrong; allow-list refusal.
    Unauthorized,
    /// Envelope or payload is malformed.
    InvalidRequest,
    /// Too many requests in flight on the connection, or too many sessions.
    ResourceExhausted,
    /// The request was cancelled by a `cancel` from the same connection.
    Cancelled,
    /// The host failed (store error, …); the message is generic.
    InternalError,
    /// The reply would exceed the negotiated maximum frame size.
    ResponseTooLarge,
    /// No such token, key or stats entry.
    NotFound,
    /// Not allowed for a sandbox connection.
    Forbidden,
    /// Per-connection or refresh rate limit; the reply carries `retryAfter`.
    RateLimited,
    /// `oauth_initiate` for a provider without a login flow.
    ProviderNotConfigured,
    /// A provider step of `oauth_initiate` failed.
    FlowInitiationFailed,
    /// Unknown, finished, cancelled or foreign OAuth session.
    SessionNotFound,
    /// An exchange is already running on the session.
    SessionAlreadyUsed,
    /// The session (or the device code) expired.
    SessionExpired,
    /// The code exchange failed.
    ExchangeFailed,
    /// The user denied the device authorization.
    AccessDenied,
    /// Device polling failed.
    PollFailed,
    /// `refresh_token` for a provider without a refresh flow.
    ProviderNotFound,
    /// The stored token has no refresh token.
    RefreshNotAvailable,
    /// The refresh token was rejected; a new login is needed.
    ReauthRequired,
    /// The refresh failed.
    RefreshFailed,
    /// The credential store is temporarily unreachable (a database store
    /// that is down or cut off); the reply carries `retryAfter`, and the
    /// request may be sent again after it.
    StoreUnavailable,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use strum::IntoEnumIterator;

    #[test]
    fn wire_spellings() {
        assert_eq!(ErrorCode::UnknownVersion.to_string(), "UNKNOWN_VERSION");
        assert_eq!(
            ErrorCode::ResponseTooLarge.to_string(),
            "RESPONSE_TOO_LARGE"
        );
        assert_eq!(
            ErrorCode::ProviderNotConfigured.to_string(),
            "PROVIDER_NOT_CONFIGURED"
        );
        assert_eq!(ErrorCode::StoreUnavailable.to_string(), "STORE_UNAVAILABLE");
        for code in ErrorCode::iter() {
            assert_eq!(ErrorCode::from_str(&code.to_string()), Ok(code));
        }
    }
}
