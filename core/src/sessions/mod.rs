//! OAuth login sessions (SPEC §4): the session state machine, the table of
//! live sessions, the flows that drive them and the token they store.
//!
//! - `session`: the three-state session machine (§2.1);
//! - `session_table`: live sessions, their serials and device-poll deadlines,
//!   the tombstones of expired ones (the `Sessions` part of the engine);
//! - `login/`: `oauth_initiate`, `oauth_exchange`, `oauth_poll`,
//!   `oauth_cancel`, device polling and the browser callback;
//! - `pkce`: PKCE verifiers, OAuth `state` and session ids;
//! - `loopback`: the shared loopback listener of browser logins;
//! - `persist`: storing the token of a completed login.

pub(crate) mod login;
pub mod loopback;
pub(crate) mod persist;
pub mod pkce;
pub mod session;
pub(crate) mod session_table;
