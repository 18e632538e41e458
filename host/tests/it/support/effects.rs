//! The request reader under its older path, for the hostile suite's stub
//! provider (`support/hostile/`), which reads bodies through it. Everything
//! else lives in [`super::http_stub`].

use std::net::TcpStream;

use super::http_stub::{self, Recorded};

/// One request, or `None` when the peer closes or sends no HTTP.
pub fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    http_stub::read_request(stream).ok()
}
