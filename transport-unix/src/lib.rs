//! Unix socket transport (filled by the transport issue).
