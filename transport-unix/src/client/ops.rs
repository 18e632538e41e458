//! The typed method of each protocol operation: its payload, and how the
//! reply's `data` is read (`NOT_FOUND` as `None`, lists and stats checked
//! for shape).

use credproxy_core::Secret;
use serde_json::{Value, json};

use super::{Client, ClientError, JsonMap};

/// The result of `get_bucket_stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketStats {
    /// The bucket.
    pub bucket: String,
    /// `get_token` requests for this bucket served by the proxy process.
    pub request_count: u64,
    /// This bucket's share of the provider's served requests, in percent.
    pub percentage: f64,
    /// When it was last served, in unix milliseconds.
    pub last_used: Option<u64>,
}

fn provider_payload(provider: &str, bucket: Option<&str>) -> Value {
    let mut payload = json!({ "provider": provider });
    if let Some(bucket) = bucket {
        payload["bucket"] = Value::from(bucket);
    }
    payload
}

/// `NOT_FOUND` becomes `None`.
fn found<T>(result: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn string_list(data: &JsonMap, field: &str, op: &'static str) -> Result<Vec<String>, ClientError> {
    let unexpected = ClientError::UnexpectedReply {
        op,
        reason: "expected a list of strings",
    };
    let Some(Value::Array(items)) = data.get(field) else {
        return Err(unexpected);
    };
    items
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or(unexpected)
}

pub(super) fn bucket_stats(data: &JsonMap) -> Result<BucketStats, ClientError> {
    let unexpected = |reason| ClientError::UnexpectedReply {
        op: "get_bucket_stats",
        reason,
    };
    let whole = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    };
    let bucket = data
        .get("bucket")
        .and_then(Value::as_str)
        .ok_or_else(|| unexpected("missing bucket"))?;
    let request_count = data
        .get("requestCount")
        .and_then(whole)
        .ok_or_else(|| unexpected("missing requestCount"))?;
    let percentage = data
        .get("percentage")
        .and_then(Value::as_f64)
        .ok_or_else(|| unexpected("missing percentage"))?;
    let last_used = match data.get("lastUsed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(whole(v).ok_or_else(|| unexpected("lastUsed is not a number"))?),
    };
    Ok(BucketStats {
        bucket: bucket.to_owned(),
        request_count,
        percentage,
        last_used,
    })
}

impl Client {
    /// `get_token`: the stored token without its refresh token, or `None`
    /// when none is stored (`NOT_FOUND`). A sandbox connection gets
    /// `FORBIDDEN "Access denied"` instead of `NOT_FOUND`.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn get_token(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<Option<JsonMap>, ClientError> {
        found(
            self.call("get_token", provider_payload(provider, bucket))
                .await,
        )
    }

    /// `save_token`: stores `token` (an object with `access_token`,
    /// `expiry` and `token_type`). A refresh token in it is ignored by the
    /// proxy, which keeps the one it has.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn save_token(
        &self,
        provider: &str,
        bucket: Option<&str>,
        token: &JsonMap,
    ) -> Result<(), ClientError> {
        let mut payload = provider_payload(provider, bucket);
        payload["token"] = Value::Object(token.clone());
        self.call("save_token", payload).await.map(drop)
    }

    /// `remove_token`.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn remove_token(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<(), ClientError> {
        self.call("remove_token", provider_payload(provider, bucket))
            .await
            .map(drop)
    }

    /// `list_providers`: providers with a stored token, sorted.
    ///
    /// # Errors
    ///
    /// As [`Client::call`], or [`ClientError::UnexpectedReply`].
    pub async fn list_providers(&self) -> Result<Vec<String>, ClientError> {
        let data = self.call("list_providers", json!({})).await?;
        string_list(&data, "providers", "list_providers")
    }

    /// `list_buckets`: the buckets of `provider`, sorted.
    ///
    /// # Errors
    ///
    /// As [`Client::call`], or [`ClientError::UnexpectedReply`].
    pub async fn list_buckets(&self, provider: &str) -> Result<Vec<String>, ClientError> {
        let data = self
            .call("list_buckets", json!({ "provider": provider }))
            .await?;
        string_list(&data, "buckets", "list_buckets")
    }

    /// `get_bucket_stats`, or `None` when no token is stored there
    /// (`NOT_FOUND`).
    ///
    /// # Errors
    ///
    /// As [`Client::call`], or [`ClientError::UnexpectedReply`].
    pub async fn get_bucket_stats(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<Option<BucketStats>, ClientError> {
        let data = found(
            self.call("get_bucket_stats", provider_payload(provider, bucket))
                .await,
        )?;
        data.as_ref().map(bucket_stats).transpose()
    }

    /// `get_api_key`: the key, or `None` when there is none (`NOT_FOUND`).
    ///
    /// # Errors
    ///
    /// As [`Client::call`], or [`ClientError::UnexpectedReply`].
    pub async fn get_api_key(&self, name: &str) -> Result<Option<Secret>, ClientError> {
        let Some(mut data) = found(self.call("get_api_key", json!({ "name": name })).await)? else {
            return Ok(None);
        };
        match data.remove("key") {
            Some(Value::String(key)) => Ok(Some(Secret::new(key))),
            _ => Err(ClientError::UnexpectedReply {
                op: "get_api_key",
                reason: "missing key",
            }),
        }
    }

    /// `list_api_keys`: the names of the stored API keys, sorted.
    ///
    /// # Errors
    ///
    /// As [`Client::call`], or [`ClientError::UnexpectedReply`].
    pub async fn list_api_keys(&self) -> Result<Vec<String>, ClientError> {
        let data = self.call("list_api_keys", json!({})).await?;
        string_list(&data, "keys", "list_api_keys")
    }

    /// `has_api_key`.
    ///
    /// # Errors
    ///
    /// As [`Client::call`], or [`ClientError::UnexpectedReply`].
    pub async fn has_api_key(&self, name: &str) -> Result<bool, ClientError> {
        let data = self.call("has_api_key", json!({ "name": name })).await?;
        data.get("exists")
            .and_then(Value::as_bool)
            .ok_or(ClientError::UnexpectedReply {
                op: "has_api_key",
                reason: "missing exists",
            })
    }

    /// `oauth_initiate`: starts a login on the host; the reply carries
    /// `flow_type`, `session_id`, `pollIntervalMs`, `expires_in` and the
    /// flow's URL fields.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn oauth_initiate(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<JsonMap, ClientError> {
        self.call("oauth_initiate", provider_payload(provider, bucket))
            .await
    }

    /// `oauth_exchange`: finishes a login with the pasted code (or redirect
    /// URL); returns the sanitized token.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn oauth_exchange(
        &self,
        session_id: &str,
        code: &str,
    ) -> Result<JsonMap, ClientError> {
        self.call(
            "oauth_exchange",
            json!({ "session_id": session_id, "code": code }),
        )
        .await
    }

    /// `oauth_poll`: `{"status":"pending",…}` or
    /// `{"status":"complete","token":…}`.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn oauth_poll(&self, session_id: &str) -> Result<JsonMap, ClientError> {
        self.call("oauth_poll", json!({ "session_id": session_id }))
            .await
    }

    /// `oauth_cancel`.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn oauth_cancel(&self, session_id: &str) -> Result<(), ClientError> {
        self.call("oauth_cancel", json!({ "session_id": session_id }))
            .await
            .map(drop)
    }

    /// `refresh_token`: refreshes on the host; returns the sanitized token.
    ///
    /// # Errors
    ///
    /// As [`Client::call`].
    pub async fn refresh_token(
        &self,
        provider: &str,
        bucket: Option<&str>,
    ) -> Result<JsonMap, ClientError> {
        self.call("refresh_token", provider_payload(provider, bucket))
            .await
    }
}
