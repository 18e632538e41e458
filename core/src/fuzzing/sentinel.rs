//! The secret sentinels the fuzz bodies plant, and the check that none of
//! them ever leaves the host (in a reply or an audit event). Shared by the
//! handshake target and the engine world model, so both watch for the same
//! marker.

/// The capability token of sandbox configurations. Starts with the secret
/// marker, so any leak of it is caught like the other sentinels.
pub(super) const CAP_TOKEN: &str = "SECRET-CAP-5e1d7a90c4";

/// Every secret sentinel (stored and provider refresh tokens, device codes,
/// server verifiers, the capability token) starts with this.
const SECRET_MARK: &str = "SECRET-";

pub(super) fn assert_no_marker(text: &str) {
    assert!(
        !text.contains(SECRET_MARK),
        "a secret sentinel left the host: …{}…",
        excerpt(text, SECRET_MARK)
    );
}

fn excerpt<'a>(text: &'a str, needle: &str) -> &'a str {
    let Some(at) = text.find(needle) else {
        return "";
    };
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(80)
        .map_or(0, |(i, _)| i);
    let end = text[at..]
        .char_indices()
        .nth(120)
        .map_or(text.len(), |(i, _)| at + i);
    &text[start..end]
}
