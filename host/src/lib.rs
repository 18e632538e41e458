//! # credproxy (host)
//!
//! The host side of credproxy: it runs the pure engine of `credproxy-core`
//! behind one lock, with socket I/O on a few I/O threads and timers,
//! effects and listeners on smol ([`driver`]), executes its effects against the embedded file
//! store ([`store`], [`effects`], [`locks`]), over HTTP ([`http_client`])
//! and with a loopback redirect listener ([`loopback`]), writes the audit
//! log ([`audit_log`]), reaches the OS keyring ([`keyring`]), hardens the process ([`harden`]), reads the
//! configuration file ([`config`]) and provides the `credproxy` command
//! line ([`cli`]) with its load generator ([`bench`]).

#![forbid(unsafe_code)]

pub mod accept;
pub mod audit_log;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod driver;
pub mod effects;
pub mod fd_limit;
pub mod harden;
pub mod http_client;
pub mod import;
pub mod keyring;
pub mod locks;
pub mod loopback;
pub mod serve;
pub mod store;
pub mod thread_count;
