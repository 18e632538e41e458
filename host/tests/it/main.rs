//! The host's integration tests, one binary.
//!
//! Each module is a former test binary (`cargo test -p credproxy --test it
//! MODULE::` runs one of them); [`support`] holds every shared helper,
//! compiled once. One binary instead of thirty links once and lets the
//! test harness schedule all the tests together.
//!
//! Everything here shares one process, so no test changes process-wide
//! state that another could see: environment variables, limits and
//! signal dispositions are set on the children they are meant for. The
//! one exception is [`support::hostile::raise_nofile`], which only ever
//! raises this process's soft descriptor limit (never lowers it), so the
//! attacking clients have descriptors to spare. [`store_crash`] re-runs
//! this binary with an exact filter (`store_crash::crash_writer_helper`)
//! for its writer child, and [`backends`] with the filter `conformance_`
//! (the suite once per store backend).

mod support;

mod audit;
mod backends;
mod bench;
mod bridge;
mod browser_login;
mod cli_call;
mod cli_keys;
mod cli_login;
mod config;
mod conformance_frames;
mod conformance_host;
mod conformance_oauth;
mod conformance_refresh;
mod conformance_server;
mod crash;
mod docs;
mod e2e_oauth;
mod effects_http;
mod effects_store;
mod exec;
mod fleet;
mod hostile_access;
mod hostile_frames;
mod hostile_load;
mod import_llxprt;
mod import_llxprt_keyring;
mod io_threads;
mod keyring;
mod loopback_listener;
mod peer;
mod socket;
mod stdio;
mod store_corrupt;
mod store_crash;
mod store_encrypted;
mod store_keyring;
mod store_keyring_lazy;
mod store_postgres;
mod store_postgres_cli;
mod store_postgres_notify;
mod store_postgres_tls;
mod token;
