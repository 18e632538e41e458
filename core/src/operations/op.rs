//! Operation names.
//!
//! Dispatch is a `match` on [`Op`]; parsing goes through strum so that only
//! the names listed here resolve (a second `handshake`, `github` or
//! `toString` is an unknown operation).

use strum::{Display, EnumIter, EnumString, IntoStaticStr};

/// A request operation, with its wire spelling.
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
#[strum(serialize_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// Read a stored token, sanitized.
    GetToken,
    /// Store a token (merged; the incoming refresh token is dropped).
    SaveToken,
    /// Delete a stored token.
    RemoveToken,
    /// Providers with a stored token.
    ListProviders,
    /// Buckets of a provider.
    ListBuckets,
    /// `get_token` counts served by this process.
    GetBucketStats,
    /// Read a named API key.
    GetApiKey,
    /// Names of the stored API keys.
    ListApiKeys,
    /// Whether a named API key exists.
    HasApiKey,
    /// Detach an in-flight request of the same connection.
    Cancel,
    /// Start a host-side login.
    OauthInitiate,
    /// Finish a login with a pasted code or redirect URL.
    OauthExchange,
    /// Read the state of a login.
    OauthPoll,
    /// End a login.
    OauthCancel,
    /// Refresh a stored token through its provider.
    RefreshToken,
}

impl Op {
    /// Operations covered by the per-connection rate limit: those that write
    /// or reach a provider (SPEC §3.5).
    #[must_use]
    pub fn is_rate_limited(self) -> bool {
        matches!(
            self,
            Op::SaveToken
                | Op::RemoveToken
                | Op::OauthInitiate
                | Op::OauthExchange
                | Op::RefreshToken
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use strum::IntoEnumIterator;

    #[test]
    fn wire_names_round_trip() {
        assert_eq!(Op::GetBucketStats.to_string(), "get_bucket_stats");
        assert_eq!(Op::OauthInitiate.to_string(), "oauth_initiate");
        for op in Op::iter() {
            assert_eq!(Op::from_str(&op.to_string()), Ok(op));
        }
    }

    #[test]
    fn unknown_names_do_not_resolve() {
        for name in [
            "handshake",
            "github",
            "toString",
            "GET_TOKEN",
            "",
            "get_token ",
        ] {
            assert!(Op::from_str(name).is_err(), "{name}");
        }
    }
}
