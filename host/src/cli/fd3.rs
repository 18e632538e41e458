//! What `credproxy exec` itself inherited at fd 3.
//!
//! `exec` puts the capability token at fd 3 in its child. A descriptor
//! its own caller passed at fd 3 (open and inheritable) would reach the
//! child there too and be overwritten, so it is moved: the child finds it
//! at the number in `CREDPROXY_INHERITED_FD3` instead.
//!
//! Rust offers no safe way to own a descriptor by number, and the host
//! is safe code only. So the descriptor is re-opened through `/proc/self/fd/3`
//! (Linux), which yields the same pipe, FIFO, terminal or file. Limits,
//! documented in the README: a regular file comes back with its own offset
//! (from the start); a socket cannot be re-opened this way and is dropped
//! with a warning. On other systems nothing is moved.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

/// The variable naming the child's copy of our fd 3.
pub(super) const INHERITED_FD3_VAR: &str = "CREDPROXY_INHERITED_FD3";

/// A new descriptor for what is open at fd 3 when it would be inherited
/// by a child (not close-on-exec); `None` when fd 3 is closed or
/// close-on-exec. Call before this process opens anything: later, fd 3
/// may be one of our own descriptors (those are all close-on-exec, so
/// they are recognised, but only the first call sees the inherited one).
pub(super) fn take_inherited() -> Option<OwnedFd> {
    let info = std::fs::read_to_string("/proc/self/fdinfo/3").ok()?;
    // When fd 3 was closed, the read above opened fdinfo as fd 3 itself,
    // close-on-exec: correctly reported as nothing to move.
    let flags = parse_flags(&info)?;
    if flags & libc::O_CLOEXEC != 0 {
        return None;
    }
    match reopen(flags) {
        Ok(file) => Some(OwnedFd::from(file)),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "credproxy: warning: fd 3 (inherited) cannot be passed on to the command \
                 ({e}); the command gets the capability token there"
            );
            None
        }
    }
}

/// The `flags:` field of an fdinfo file (octal).
fn parse_flags(info: &str) -> Option<i32> {
    let field = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    i32::from_str_radix(field.trim(), 8).ok()
}

/// Opens `/proc/self/fd/3` with the access mode of the original.
/// `O_NONBLOCK` for the open only: a pipe or FIFO must not wait for a peer.
fn reopen(flags: i32) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => options.write(true),
        libc::O_RDWR => options.read(true).write(true),
        _ => options.read(true),
    };
    options.append(flags & libc::O_APPEND != 0);
    options.custom_flags(libc::O_NONBLOCK);
    let file = options.open("/proc/self/fd/3")?;
    if flags & libc::O_NONBLOCK == 0 {
        let keep = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
        let without = nix::fcntl::OFlag::from_bits_truncate(keep) - nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(without))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::parse_flags;

    #[test]
    fn fdinfo_flags_are_octal() {
        let info = "pos:\t0\nflags:\t02100002\nmnt_id:\t15\n";
        assert_eq!(parse_flags(info), Some(0o2_100_002));
        assert_eq!(parse_flags("pos:\t0\n"), None);
    }
}
