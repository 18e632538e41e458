//! credproxy-core (under construction).
pub mod peer;
pub mod secret;
pub mod time;
pub mod token;
pub use peer::{Peer, Transport};
pub use secret::Secret;
pub use time::{Mono, Now};
pub use token::Token;
