//! Audit events: what happened, never a secret.
//!
//! Events are outputs of the engine; the host writes them as JSON lines with
//! a timestamp. Every free-text field is a `&'static str` chosen by the
//! engine, and the only runtime strings are provider, bucket and key names
//! that already passed validation, so no token, key, code, verifier or
//! client-supplied text can reach the audit log.

use serde::Serialize;
use strum::{Display, IntoStaticStr};

use crate::wire::handshake::ConnClass;

/// Identifies a connection for its lifetime in one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Severity of an audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Display, IntoStaticStr, Serialize)]
#[strum(serialize_all = "UPPERCASE")]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Normal operation.
    Info,
    /// Refusals, disconnects for protocol faults, login completions.
    Warn,
    /// Host failures.
    Error,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// Severity.
    pub level: Level,
    /// The connection, when the event belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<ConnId>,
    /// What happened: an operation name or a connection event
    /// (`connect`, `handshake_ok`, `frame_decode_error`, …).
    pub op: &'static str,
    /// Result: `ok`, an error code, or a short reason.
    pub outcome: &'static str,
    /// Provider, when the request named a valid one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Bucket, when the request named a valid one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// API key name, when the request named a valid one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Connection class, for handshake events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<ConnClass>,
    /// A size in bytes the event is about (an oversize frame's announced
    /// length). Numeric, so no peer text reaches the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The limit the event refers to (the frame limit, a connection
    /// budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl AuditEvent {
    /// An event with only the required fields.
    #[must_use]
    pub fn new(
        level: Level,
        conn: Option<ConnId>,
        op: &'static str,
        outcome: &'static str,
    ) -> AuditEvent {
        AuditEvent {
            level,
            conn,
            op,
            outcome,
            provider: None,
            bucket: None,
            name: None,
            class: None,
            size: None,
            limit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnId;

    /// Audit lines and log messages name a connection by its number.
    #[test]
    fn a_connection_id_displays_as_its_number() {
        assert_eq!(ConnId(42).to_string(), "42");
        assert_eq!(format!("conn {}", ConnId(7)), "conn 7");
    }
}
