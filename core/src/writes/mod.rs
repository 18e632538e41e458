//! Writes under a key's locks (SPEC §5.3 "all writes to a key are serialized").
//!
//! - `keylock`: the engine write lock of each `provider:bucket` key;
//! - `keys`: the per-key state (write locks, refresh jobs, cooldowns,
//!   authoritative tokens, renewals; the `Keys` part of the engine);
//! - `locked_write`: the one state machine of every write under a key's
//!   locks — engine lock, store lock, fresh read, the caller's stage,
//!   release;
//! - `write_lock`: that machine's lock state, as data.

pub mod keylock;
pub(crate) mod keys;
pub(crate) mod locked_write;
pub(crate) mod write_lock;
