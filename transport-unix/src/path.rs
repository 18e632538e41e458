//! The `sun_path` length limit of Unix socket addresses.

use std::mem::{offset_of, size_of};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::libc::sockaddr_un;

use crate::error::UnixError;

/// Size in bytes of `sockaddr_un.sun_path` on this platform (108 on Linux,
/// 104 on macOS and the BSDs). A socket path plus its terminating NUL must
/// fit in it.
pub const SUN_PATH_MAX: usize = size_of::<sockaddr_un>() - offset_of!(sockaddr_un, sun_path);

/// Checks that `path` plus its terminating NUL fits [`SUN_PATH_MAX`].
///
/// Call it before creating anything for a socket, so a too-long path fails
/// with a clear message instead of an opaque `bind` error after files were
/// made.
///
/// # Errors
///
/// [`UnixError::SocketPathTooLong`] with the length including the NUL.
pub fn check_socket_path(path: &Path) -> Result<(), UnixError> {
    let len = path.as_os_str().as_bytes().len() + 1;
    if len > SUN_PATH_MAX {
        return Err(UnixError::SocketPathTooLong {
            path: path.into(),
            len,
            max: SUN_PATH_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sun_path_size_matches_the_platform() {
        #[cfg(linux_like)]
        assert_eq!(SUN_PATH_MAX, 108);
        #[cfg(bsd_like)]
        assert_eq!(SUN_PATH_MAX, 104);
    }

    #[test]
    fn the_nul_counts() {
        let fits = format!("/{}", "a".repeat(SUN_PATH_MAX - 2));
        assert_eq!(fits.len() + 1, SUN_PATH_MAX);
        assert!(check_socket_path(Path::new(&fits)).is_ok());

        let long = format!("/{}", "a".repeat(SUN_PATH_MAX - 1));
        match check_socket_path(Path::new(&long)) {
            Err(UnixError::SocketPathTooLong { len, max, .. }) => {
                assert_eq!(len, SUN_PATH_MAX + 1);
                assert_eq!(max, SUN_PATH_MAX);
            }
            other => panic!("expected SocketPathTooLong, got {other:?}"),
        }
    }

    #[test]
    fn the_message_gives_advice() {
        let long = format!("/{}", "a".repeat(SUN_PATH_MAX));
        let msg = check_socket_path(Path::new(&long))
            .expect_err("too long")
            .to_string();
        assert!(msg.contains("set XDG_RUNTIME_DIR"), "{msg}");
        assert!(msg.contains("--socket with a shorter path"), "{msg}");
    }
}
