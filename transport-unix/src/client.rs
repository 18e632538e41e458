//! The client library: what a program inside the sandbox uses to talk to the
//! proxy. See the crate docs ("Client") for an overview and an example.
//!
//! [`Client`] is async on smol: its connection's reader and writer run as
//! tasks on smol's global executor, so a `Client` works under any executor
//! and from plain threads through [`BlockingClient`].

mod blocking;
mod capability;
mod conn;
mod error;
mod reply;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credproxy_core::Secret;
use serde_json::{Map, Value, json};
use smol::Timer;
use smol::channel::{Receiver, TryRecvError};
use smol::future::FutureExt as _;

pub use blocking::BlockingClient;
pub use capability::{
    CAPABILITY_FD_ENV, CAPABILITY_FILE_ENV, CapabilityError, CapabilitySource, TokenOrigin,
};
pub use error::{CONNECTION_LOST_MESSAGE, ClientError};

use conn::{Closer, Conn, IdGen, Shared, State, Status, lock};
use reply::Reply;

/// Default request timeout: 30 s.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default idle time after which the client closes its connection: 5 min.
pub const DEFAULT_IDLE_CLOSE_MS: u64 = 300_000;
/// Default time allowed for connecting and handshaking: 30 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 30_000;

/// A JSON object: the `data` of a reply.
pub type JsonMap = Map<String, Value>;

/// Timings of a [`Client`], in milliseconds. Zero disables a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Time a request may wait for its reply before the client sends
    /// `cancel` and fails it with [`ClientError::Timeout`] (30 000).
    pub request_timeout_ms: u64,
    /// Time without pending requests after which the connection is closed
    /// gracefully (300 000); the next call connects and handshakes again.
    pub idle_close_ms: u64,
    /// Time allowed to connect and complete the handshake (30 000).
    pub handshake_timeout_ms: u64,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            idle_close_ms: DEFAULT_IDLE_CLOSE_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
        }
    }
}

fn nonzero_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl ClientOptions {
    fn request_timeout(&self) -> Option<Duration> {
        nonzero_ms(self.request_timeout_ms)
    }

    fn idle_close(&self) -> Option<Duration> {
        nonzero_ms(self.idle_close_ms)
    }

    fn handshake_timeout(&self) -> Option<Duration> {
        nonzero_ms(self.handshake_timeout_ms)
    }
}

/// The state of a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connected and handshaken with this protocol version.
    Connected {
        /// The negotiated version (1 or 2).
        version: u8,
    },
    /// Closed while idle (by us or the proxy); the next call connects again.
    Idle,
    /// The connection broke; every call fails with
    /// [`ClientError::ConnectionLost`].
    Lost,
}

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

/// An async client of the credential proxy over its Unix socket.
///
/// One connection carries any number of concurrent requests, matched to
/// their replies by id. Each request has a timeout (default 30 s, see
/// [`ClientOptions`] and [`Client::call_with_timeout`]); on timeout the
/// client sends `cancel` and the call fails with [`ClientError::Timeout`].
/// After 5 minutes without pending requests the connection is closed
/// gracefully and the next call connects and handshakes again. The same
/// happens when the proxy closes an idle connection (nothing pending; it
/// evicts the connection idle longest when its table is full), unless the
/// proxy is gone. Those are the only reconnects: a connection that breaks
/// with requests pending or sends a malformed reply fails every pending
/// and later call with [`ClientError::ConnectionLost`].
///
/// Cloning gives another handle on the same connection; the connection is
/// closed when the last handle is dropped. `Debug` never shows the
/// capability token.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.shared.path)
            .field("capability_token", &self.shared.token)
            .field("state", &self.connection_state())
            .field("options", &self.shared.options)
            .finish()
    }
}

/// A request registered on a connection. Dropping it before the reply (a
/// timeout, or the caller dropping the future) forgets the id and sends
/// `cancel` for it.
struct Pending<'a> {
    shared: &'a Shared,
    conn: Arc<Conn>,
    id: String,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled && self.conn.forget(&self.id) {
            self.conn.send_cancel(&self.shared.ids.next(), &self.id);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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

fn bucket_stats(data: &JsonMap) -> Result<BucketStats, ClientError> {
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
    /// Connects to the proxy at `path` and handshakes with the token from
    /// `capability`, with default [`ClientOptions`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Capability`] when the token cannot be read,
    /// [`ClientError::Connect`], [`ClientError::Handshake`] when the proxy
    /// refuses (`UNAUTHORIZED`: the token is missing or wrong),
    /// [`ClientError::HandshakeTimeout`] or [`ClientError::Protocol`].
    pub async fn connect(
        path: impl AsRef<Path>,
        capability: CapabilitySource,
    ) -> Result<Client, ClientError> {
        Client::connect_with_options(path, capability, ClientOptions::default()).await
    }

    /// Like [`Client::connect`], with the given options. The capability
    /// token is read once, here, and kept for the reconnect after an idle
    /// close.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
    pub async fn connect_with_options(
        path: impl AsRef<Path>,
        capability: CapabilitySource,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let token: Option<Secret> = capability.resolve()?;
        let shared = Arc::new(Shared {
            path: path.as_ref().to_path_buf(),
            token,
            options,
            state: Mutex::new(State::Idle(Closer::Client)),
            connect_lock: smol::lock::Mutex::new(()),
            ids: IdGen::new(),
            version: AtomicU8::new(0),
        });
        Conn::open(&shared).await?;
        Ok(Client { shared })
    }

    /// The socket path.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.shared.path
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> ClientOptions {
        self.shared.options
    }

    /// The protocol version negotiated by the latest handshake (1 or 2).
    #[must_use]
    pub fn protocol_version(&self) -> u8 {
        self.shared.version.load(Ordering::Relaxed)
    }

    /// The state of the connection.
    #[must_use]
    pub fn connection_state(&self) -> ConnectionState {
        match &*lock(&self.shared.state) {
            State::Open(conn) => ConnectionState::Connected {
                version: conn.version(),
            },
            State::Idle(_) => ConnectionState::Idle,
            State::Lost => ConnectionState::Lost,
        }
    }

    /// Registers a request on the connection, connecting first after an
    /// idle close.
    async fn begin(&self) -> Result<(Arc<Conn>, String, Receiver<Reply>), ClientError> {
        loop {
            {
                let mut state = lock(&self.shared.state);
                let attempt = match &*state {
                    State::Lost => return Err(ClientError::ConnectionLost),
                    State::Idle(_) => None,
                    State::Open(conn) => {
                        let id = self.shared.ids.next();
                        Some((conn.clone(), conn.register(&id), id))
                    }
                };
                match attempt {
                    None => {}
                    Some((conn, Ok(replies), id)) => return Ok((conn, id, replies)),
                    Some((_, Err(Status::Closing), _)) => *state = State::Idle(Closer::Client),
                    Some((_, Err(_), _)) => {
                        *state = State::Lost;
                        return Err(ClientError::ConnectionLost);
                    }
                }
            }
            let _one_connect_at_a_time = self.shared.connect_lock.lock().await;
            Conn::reopen(&self.shared).await?;
        }
    }

    /// Sends `op` with `payload` (an object; `null` means `{}`) and returns
    /// the reply's `data`, with the default request timeout.
    ///
    /// # Errors
    ///
    /// [`ClientError::Server`] for an error reply, [`ClientError::Timeout`],
    /// [`ClientError::ConnectionLost`], or a connect error when the client
    /// reconnects after an idle close.
    pub async fn call(&self, op: &str, payload: Value) -> Result<JsonMap, ClientError> {
        let timeout = self.shared.options.request_timeout();
        self.call_inner(op, payload, timeout).await
    }

    /// Like [`Client::call`], with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`Client::call`]; the timeout error reads "Request timed out
    /// after {ms}ms".
    pub async fn call_with_timeout(
        &self,
        op: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<JsonMap, ClientError> {
        self.call_inner(op, payload, Some(timeout)).await
    }

    async fn call_inner(
        &self,
        op: &str,
        payload: Value,
        timeout: Option<Duration>,
    ) -> Result<JsonMap, ClientError> {
        let payload = match payload {
            Value::Null => Value::Object(Map::new()),
            other => other,
        };
        let (conn, id, replies) = self.begin().await?;
        conn.send(&json!({"v": conn.version(), "id": id, "op": op, "payload": payload}));
        let mut pending = Pending {
            shared: &self.shared,
            conn,
            id,
            settled: false,
        };
        let waited = match timeout {
            None => Some(replies.recv().await),
            Some(t) => {
                async { Some(replies.recv().await) }
                    .or(async {
                        Timer::after(t).await;
                        None
                    })
                    .await
            }
        };
        let received = match waited {
            Some(received) => received.map_err(|_| ()),
            // The reply may have landed as the timer fired.
            None => match replies.try_recv() {
                Ok(reply) => Ok(reply),
                Err(TryRecvError::Closed) => Err(()),
                Err(TryRecvError::Empty) => {
                    // Forgets the id and sends `cancel`.
                    drop(pending);
                    let ms = timeout.map_or(0, millis);
                    return Err(ClientError::Timeout { ms });
                }
            },
        };
        pending.settled = true;
        match received {
            Ok(reply) => reply.into_result(),
            // The connection broke: the reader dropped our reply channel.
            Err(()) => Err(ClientError::ConnectionLost),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let o = ClientOptions::default();
        assert_eq!(o.request_timeout(), Some(Duration::from_secs(30)));
        assert_eq!(o.idle_close(), Some(Duration::from_secs(300)));
        let off = ClientOptions {
            idle_close_ms: 0,
            ..o
        };
        assert_eq!(off.idle_close(), None);
    }

    #[test]
    fn stats_shape() {
        let data = json!({"bucket":"b","requestCount":3,"percentage":75,"lastUsed":10});
        let stats = bucket_stats(data.as_object().unwrap()).unwrap();
        assert_eq!(
            stats,
            BucketStats {
                bucket: "b".into(),
                request_count: 3,
                percentage: 75.0,
                last_used: Some(10)
            }
        );
        let data = json!({"bucket":"b","requestCount":0,"percentage":0});
        assert_eq!(
            bucket_stats(data.as_object().unwrap()).unwrap().last_used,
            None
        );
        assert!(bucket_stats(json!({"bucket":"b"}).as_object().unwrap()).is_err());
    }

    #[test]
    fn ids_are_unique_and_prefixed() {
        let ids = IdGen::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.split('-').next(), b.split('-').next());
        assert_eq!(a.split('-').next().unwrap().len(), 12);
    }
}
