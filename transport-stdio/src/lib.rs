//! stdio transport of credproxy (SPEC §6.2).
//!
//! One connection over the process's stdin and stdout, for a parent process
//! that runs `credproxy stdio` as a child and speaks frames over its pipes.
//! stdout carries only frames; every log line goes to stderr. The peer is
//! the parent process: its pid and our own uid and gid (a parent that can
//! write our stdin runs with our credentials or is root).
//!
//! EOF on stdin is a half-close: the engine finishes the requests in flight,
//! writes their replies, and the host then exits 0.

#![forbid(unsafe_code)]

use credproxy_core::{Peer, Transport};
use smol::Unblock;

/// The reading half: stdin, as an async stream.
pub type StdinReader = Unblock<std::io::Stdin>;
/// The writing half: stdout, as an async stream.
pub type StdoutWriter = Unblock<std::io::Stdout>;

/// stdin and stdout as async streams.
#[must_use]
pub fn streams() -> (StdinReader, StdoutWriter) {
    (
        Unblock::new(std::io::stdin()),
        Unblock::new(std::io::stdout()),
    )
}

/// The identity of the parent process on the other end of the pipes.
#[must_use]
pub fn parent_peer() -> Peer {
    Peer {
        uid: Some(current_uid()),
        gid: Some(current_gid()),
        pid: Some(std::os::unix::process::parent_id()),
        transport: Transport::Stdio,
    }
}

fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn current_gid() -> u32 {
    nix::unistd::getegid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_is_our_parent_process() {
        let p = parent_peer();
        assert_eq!(p.transport, Transport::Stdio);
        assert_eq!(p.pid, Some(std::os::unix::process::parent_id()));
    }
}
