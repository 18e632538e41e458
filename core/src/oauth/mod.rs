//! OAuth providers (SPEC §2.1 "provider behaviour is data", §4): what a provider
//! is, where its endpoints are, and how the engine talks to it.
//!
//! - `provider`: `ProviderSpec`, the built-in providers and their overrides;
//! - `discovery`: OIDC discovery, single-flight per issuer;
//! - `endpoints`: discovery documents and loopback listeners with their
//!   waiters (the `OauthEndpoints` part of the engine);
//! - `http`: provider calls as data, and reading their responses;
//! - `oauth_reply`: what users paste and what providers answer.

pub(crate) mod discovery;
pub(crate) mod endpoints;
pub mod http;
pub mod oauth_reply;
pub mod provider;
