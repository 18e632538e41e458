//! Names for the platform families the transport tells apart, so that each
//! list of `target_os` values is written once (peer credentials and the
//! `sun_path` size depend on the same families).

use cfg_aliases::cfg_aliases;

fn main() {
    cfg_aliases! {
        // SO_PEERCRED; a 108-byte sun_path.
        linux_like: { any(target_os = "linux", target_os = "android") },
        // getpeereid(2); a 104-byte sun_path.
        bsd_like: { any(
            target_os = "macos",
            target_os = "ios",
            target_os = "freebsd",
            target_os = "openbsd",
            target_os = "netbsd",
            target_os = "dragonfly"
        ) },
    }
}
