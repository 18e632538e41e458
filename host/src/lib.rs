//! credproxy host: effect executor, embedded store, HTTP, configuration and CLI.

pub mod store;
