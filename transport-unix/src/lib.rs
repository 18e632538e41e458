//! Unix socket transport of credproxy: where the socket lives, who may
//! reach it, and the async accept loop that reports each peer's identity.
//!
//! This crate moves no protocol bytes of its own and knows nothing of
//! operations: it hands the host an accepted stream with the peer's
//! credentials, or a refusal to audit.
//!
//! # Placement
//!
//! - The **base directory** ([`base_dir`]) is `$XDG_RUNTIME_DIR/credproxy`
//!   when `XDG_RUNTIME_DIR` is an absolute path, else
//!   `<$TMPDIR or /tmp>/credproxy-<euid>`.
//! - [`ensure_private_dir`] creates it with mode 0700 (only the last path
//!   component; its parent must exist) or, when it exists, verifies that it
//!   is a real directory (not a symlink), owned by our effective uid, with
//!   no group or other permission bits. A directory that fails is refused
//!   with a message that says how to fix it (`chmod 700 …`,
//!   `chown <uid> …`, "remove it"); we never chmod an existing directory.
//! - Each running proxy gets an [`Instance`]: its own directory
//!   `<base>/<pid>-<nonce>/` (0700; the nonce is 16 bytes from the OS random
//!   generator as 22 base64url characters) holding `proxy.sock` and, with
//!   [`TokenMode::Generate`], `token` — mode 0600, created exclusively,
//!   exactly 64 lowercase hex characters and a newline. A container mounts
//!   exactly that one directory and sees neither other instances nor the
//!   base directory.
//! - `serve --socket PATH` uses [`Instance::fixed`]: `PATH`'s directory
//!   gets the same checks, a stale socket at `PATH` is replaced, a live one
//!   is refused ("socket PATH is in use by a running instance") and any
//!   other file is refused and kept. The token goes to `PATH.token`.
//! - The socket path plus its NUL must fit `sun_path` ([`SUN_PATH_MAX`]: 108
//!   bytes on Linux, 104 on macOS and the BSDs); otherwise
//!   [`UnixError::SocketPathTooLong`] is returned before anything is
//!   created.
//! - At start, [`remove_stale_instances`] removes instance directories
//!   whose socket refuses connections (`ECONNREFUSED`): their socket, token
//!   and then the empty directory. Only our own real directories with the
//!   instance name shape are considered; symlinks are never followed.
//! - [`Instance::cleanup`] (also on drop) removes the socket, the token
//!   file and the instance directory. The host registers
//!   [`ShutdownSignals`] early and calls `cleanup` on `SIGINT`, `SIGTERM`
//!   or `SIGHUP`.
//!
//! A typical start:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use credproxy_unix::{
//!     base_dir, remove_stale_instances, Instance, Listener, PeerPolicy, TokenMode,
//! };
//! let base = base_dir()?;
//! let _removed = remove_stale_instances(&base)?;
//! let instance = Instance::create(&base, TokenMode::Generate)?;
//! let listener = Listener::bind(&instance, PeerPolicy::default())?;
//! println!("{}", instance.socket_path().display());
//! # drop(listener);
//! # Ok(())
//! # }
//! ```
//!
//! # Security model
//!
//! - **Filesystem permissions are the first gate.** The socket is bound
//!   inside a 0700 directory owned by us and set to 0600 before the first
//!   accept, so only our uid and root can connect — unless the instance
//!   directory is deliberately mounted into a sandbox, which is the point.
//! - **Peer uid is the second gate.** At accept the kernel's view of the
//!   peer (`SO_PEERCRED` on Linux, `getpeereid` on macOS/BSD; see
//!   [`peer_of`]) is checked against a [`PeerPolicy`]: our effective uid,
//!   root, or uids listed in configuration. Anyone else — or a peer whose
//!   credentials cannot be read — is closed at once and reported as
//!   [`Accepted::Refused`] for the audit log.
//! - **The capability token is the third gate**, enforced by the engine at
//!   the handshake, not here: a same-uid sandbox (e.g. a rootless
//!   container) passes both checks above, so the token file is what marks
//!   a connection as an authorised sandbox. The token lives only in its
//!   0600 file and in a [`Secret`](credproxy_core::Secret), whose `Debug`
//!   and `Display` print `[redacted]`; no error of this crate contains it.
//! - **Stale cleanup never widens access:** it touches only entries of our
//!   own private base directory, by name shape, owner and `lstat` type,
//!   and removes only `proxy.sock`, `token` and the then-empty directory.
//!
//! Known limits: between `bind` and `listen` (inside one std call) a
//! concurrently starting instance could see our new socket refuse a
//! connection and remove it; the window is a few microseconds and needs
//! two instances of the same user starting at once. On macOS a listener
//! with a full backlog refuses connections, so it could be taken for stale.

#![warn(missing_docs)]

mod dirs;
mod error;
mod instance;
mod listener;
mod name;
mod path;
mod peercred;
mod policy;
mod signal;
mod stale;
mod token;

pub use dirs::{base_dir, ensure_private_dir, verify_private_dir};
pub use error::{ModeProblem, UnixError};
pub use instance::{FIXED_TOKEN_SUFFIX, Instance, SOCKET_FILE_NAME, TOKEN_FILE_NAME, TokenMode};
pub use listener::{Accepted, Listener};
pub use name::is_instance_dir_name;
pub use path::{SUN_PATH_MAX, check_socket_path};
pub use peercred::peer_of;
pub use policy::{PeerPolicy, RefusalReason};
pub use signal::{ShutdownSignal, ShutdownSignals, wait_for_shutdown_signal};
pub use stale::remove_stale_instances;
