//! [`BlockingClient`]: the client for synchronous code.

use std::path::Path;
use std::time::Duration;

use credproxy_core::Secret;
use serde_json::Value;

use super::{
    BucketStats, CapabilitySource, Client, ClientError, ClientOptions, ConnectionState, JsonMap,
};

/// A blocking wrapper of [`Client`] for synchronous code: every method runs
/// the async one to completion with `smol::block_on`. Do not call it from
/// async code (it would block that executor's thread).
#[derive(Debug, Clone)]
pub struct BlockingClient {
    inner: Client,
}

impl From<Client> for BlockingClient {
    fn from(inner: Client) -> BlockingClient {
        BlockingClient { inner }
    }
}

impl BlockingClient {
    /// See [`Client::connect`].
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
    pub fn connect(
        path: impl AsRef<Path>,
        capability: CapabilitySource,
    ) -> Result<BlockingClient, ClientError> {
        smol::block_on(Client::connect(path, capability)).map(BlockingClient::from)
    }

    /// See [`Client::connect_with_options`].
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
    pub fn connect_with_options(
        path: impl AsRef<Path>,
        capability: CapabilitySource,
        options: ClientOptions,
    ) -> Result<BlockingClient, ClientError> {
        smol::block_on(Client::connect_with_options(path, capability, options))
            .map(BlockingClient::from)
    }

    /// The async client inside.
    #[must_use]
    pub fn as_async(&self) -> &Client {
        &self.inner
    }

    /// Unwraps the async client.
    #[must_use]
    pub fn into_async(self) -> Client {
        self.inner
    }

    /// See [`Client::socket_path`].
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        self.inner.socket_path()
    }

    /// See [`Client::protocol_version`].
    #[must_use]
    pub fn protocol_version(&self) -> u8 {
        self.inner.protocol_version()
    }

    /// See [`Client::connection_state`].
    #[must_use]
    pub fn connection_state(&self) -> ConnectionState {
        self.inner.connection_state()
    }

    /// See [`Client::call`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn call(&self, op: &str, payload: Value) -> Result<JsonMap, ClientError> {
        smol::block_on(self.inner.call(op, payload))
    }

    /// See [`Client::call_with_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn call_with_timeout(
        &self,
        op: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<JsonMap, ClientError> {
        smol::block_on(self.inner.call_with_timeout(op, payload, timeout))
    }

    /// See [`Client::get_token`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn get_token(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<Option<JsonMap>, ClientError> {
        smol::block_on(self.inner.get_token(provider, bucket))
    }

    /// See [`Client::save_token`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn save_token(
        &self,
        provider: &str,
        bucket: Option<&str>,
        token: &JsonMap,
    ) -> Result<(), ClientError> {
        smol::block_on(self.inner.save_token(provider, bucket, token))
    }

    /// See [`Client::remove_token`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn remove_token(&self, provider: &str, bucket: Option<&str>) -> Result<(), ClientError> {
        smol::block_on(self.inner.remove_token(provider, bucket))
    }

    /// See [`Client::list_providers`].
    ///
    /// # Errors
    ///
    /// As [`Client::list_providers`].
    pub fn list_providers(&self) -> Result<Vec<String>, ClientError> {
        smol::block_on(self.inner.list_providers())
    }

    /// See [`Client::list_buckets`].
    ///
    /// # Errors
    ///
    /// As [`Client::list_buckets`].
    pub fn list_buckets(&self, provider: &str) -> Result<Vec<String>, ClientError> {
        smol::block_on(self.inner.list_buckets(provider))
    }

    /// See [`Client::get_bucket_stats`].
    ///
    /// # Errors
    ///
    /// As [`Client::get_bucket_stats`].
    pub fn get_bucket_stats(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<Option<BucketStats>, ClientError> {
        smol::block_on(self.inner.get_bucket_stats(provider, bucket))
    }

    /// See [`Client::get_api_key`].
    ///
    /// # Errors
    ///
    /// As [`Client::get_api_key`].
    pub fn get_api_key(&self, name: &str) -> Result<Option<Secret>, ClientError> {
        smol::block_on(self.inner.get_api_key(name))
    }

    /// See [`Client::list_api_keys`].
    ///
    /// # Errors
    ///
    /// As [`Client::list_api_keys`].
    pub fn list_api_keys(&self) -> Result<Vec<String>, ClientError> {
        smol::block_on(self.inner.list_api_keys())
    }

    /// See [`Client::has_api_key`].
    ///
    /// # Errors
    ///
    /// As [`Client::has_api_key`].
    pub fn has_api_key(&self, name: &str) -> Result<bool, ClientError> {
        smol::block_on(self.inner.has_api_key(name))
    }

    /// See [`Client::oauth_initiate`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn oauth_initiate(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<JsonMap, ClientError> {
        smol::block_on(self.inner.oauth_initiate(provider, bucket))
    }

    /// See [`Client::oauth_exchange`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn oauth_exchange(&self, session_id: &str, code: &str) -> Result<JsonMap, ClientError> {
        smol::block_on(self.inner.oauth_exchange(session_id, code))
    }

    /// See [`Client::oauth_poll`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn oauth_poll(&self, session_id: &str) -> Result<JsonMap, ClientError> {
        smol::block_on(self.inner.oauth_poll(session_id))
    }

    /// See [`Client::oauth_cancel`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn oauth_cancel(&self, session_id: &str) -> Result<(), ClientError> {
        smol::block_on(self.inner.oauth_cancel(session_id))
    }

    /// See [`Client::refresh_token`].
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub fn refresh_token(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<JsonMap, ClientError> {
        smol::block_on(self.inner.refresh_token(provider, bucket))
    }
}
