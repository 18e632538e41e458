//! Unix socket transport of credproxy: where the socket lives, who may
//! reach it, the async accept loop that reports each peer's identity, and
//! the client library a sandboxed program uses to talk to the proxy.
//!
//! The server side moves no protocol bytes of its own and knows nothing of
//! operations: it hands the host an accepted stream with the peer's
//! credentials, or a refusal to audit. The [`client`] module is the other
//! end of the socket and speaks the protocol.
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
//!   with a message that says how to fix it (`chmod 700 …` for our own
//!   directory, a private directory instead of a shared one like `/tmp` or
//!   one owned by another user, "remove it"); we never chmod an existing
//!   directory.
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
//!
//! # Client
//!
//! [`Client`] (async, on smol) and [`BlockingClient`] (the same calls for
//! synchronous code, via `smol::block_on`) connect to the socket, handshake
//! (offering protocol versions 1..=2 and the capability token) and make
//! typed calls: `get_token`, `save_token`, `remove_token`,
//! `list_providers`, `list_buckets`, `get_bucket_stats`, `get_api_key`,
//! `list_api_keys`, `has_api_key`, the `oauth_*` operations and
//! `refresh_token`, or any operation through [`Client::call`].
//!
//! - **Token.** [`CapabilitySource::from_env`] takes the token from the file
//!   named by `CREDPROXY_CAPABILITY_FILE` (64 lowercase hex characters,
//!   optionally a newline) or else from the inherited descriptor named by
//!   `LLXPRT_CAPABILITY_FD` (exactly 64 lowercase hex characters and a
//!   newline). It is read once per client, kept in a
//!   [`Secret`](credproxy_core::Secret), and never appears in an error or
//!   in `Debug` output. A proxy that refuses it answers `UNAUTHORIZED`,
//!   reported as [`ClientError::Handshake`] with a message saying the token
//!   is missing or wrong.
//! - **Concurrency.** Calls run concurrently on one connection; replies are
//!   matched by request id, and each reply is checked like the existing
//!   TypeScript client checks it (a malformed one breaks the connection).
//! - **Timeouts.** Each call has a timeout ([`ClientOptions`], default
//!   30 s; per call with [`Client::call_with_timeout`]). On timeout the
//!   client sends `cancel` for the request and the call fails with
//!   [`ClientError::Timeout`] ("Request timed out after {ms}ms").
//! - **No reconnect after a failure.** When the connection breaks with
//!   requests pending (the proxy closed it, a reset) or a reply is
//!   malformed, every pending and later call fails at once with
//!   [`ClientError::ConnectionLost`]: "Credential proxy connection lost.
//!   Restart the session."
//! - **Idle close.** After 5 minutes without pending requests the client
//!   closes the connection gracefully; the next call connects and
//!   handshakes again. It never closes while a request is pending. A proxy
//!   that closes an idle connection (it evicts the connection idle longest
//!   when its table is full) is handled the same way.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use credproxy_unix::{CapabilitySource, Client};
//!
//! smol::block_on(async {
//!     let source = CapabilitySource::from_env()?;
//!     let client = Client::connect("/run/credproxy/proxy.sock", source).await?;
//!     if let Some(token) = client.get_token("anthropic", None).await? {
//!         println!("expires at {}", token["expiry"]);
//!     }
//!     match client.get_api_key("OPENAI_API_KEY").await? {
//!         Some(key) => { let _header = format!("Bearer {}", key.expose()); }
//!         None => eprintln!("no OPENAI_API_KEY on the host"),
//!     }
//!     Ok(())
//! })
//! # }
//! ```
//!
//! From synchronous code:
//!
//! ```no_run
//! # fn main() -> Result<(), credproxy_unix::ClientError> {
//! use credproxy_unix::{BlockingClient, CapabilitySource};
//!
//! let client = BlockingClient::connect("/run/credproxy/proxy.sock", CapabilitySource::from_env()?)?;
//! let providers = client.list_providers()?;
//! # drop(providers);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod client;
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

pub use client::{BlockingClient, CapabilitySource, Client, ClientError, ClientOptions};
pub use dirs::{base_dir, ensure_private_dir, verify_private_dir};
pub use error::{ModeProblem, PRIVATE_DIR_HINT, UnixError};
pub use instance::{FIXED_TOKEN_SUFFIX, Instance, SOCKET_FILE_NAME, TOKEN_FILE_NAME, TokenMode};
pub use listener::{Accepted, Listener};
pub use name::is_instance_dir_name;
pub use path::{SUN_PATH_MAX, check_socket_path};
pub use peercred::peer_of;
pub use policy::{PeerPolicy, RefusalReason};
pub use signal::{ShutdownSignal, ShutdownSignals, wait_for_shutdown_signal};
pub use stale::remove_stale_instances;
