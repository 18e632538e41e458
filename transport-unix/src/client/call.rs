//! One request on the connection and its reply: registering the id
//! (connecting again after an idle close), waiting with a timeout, and
//! sending `cancel` when the caller gives up first.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use smol::Timer;
use smol::channel::{Receiver, TryRecvError};
use smol::future::FutureExt as _;

use super::conn::{Closer, Conn, State, Status, lock};
use super::proto::{Reply, RequestId};
use super::reply::into_result;
use super::{Client, ClientError, JsonMap};

/// A request registered on a connection. Dropping it before the reply (a
/// timeout, or the caller dropping the future) forgets the id and sends
/// `cancel` for it.
struct Pending {
    conn: Arc<Conn>,
    id: RequestId,
    settled: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.settled {
            self.conn.cancel(&self.id);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// Registers a request on the connection and queues its frame,
    /// connecting first after an idle close.
    async fn begin(
        &self,
        op: &str,
        payload: &Value,
    ) -> Result<(Arc<Conn>, RequestId, Receiver<Reply>), ClientError> {
        loop {
            {
                let mut state = lock(&self.shared.state);
                let attempt = match &*state {
                    State::Lost => return Err(ClientError::ConnectionLost),
                    State::Idle(_) => None,
                    State::Open(conn) => Some((conn.clone(), conn.start(op, payload))),
                };
                match attempt {
                    None => {}
                    Some((conn, Ok((id, replies)))) => return Ok((conn, id, replies)),
                    Some((_, Err(Status::Closing))) => *state = State::Idle(Closer::Client),
                    Some((_, Err(_))) => {
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
        let (conn, id, replies) = self.begin(op, &payload).await?;
        let mut pending = Pending {
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
            Ok(reply) => into_result(reply),
            // The connection broke: the reader dropped our reply channel.
            Err(()) => Err(ClientError::ConnectionLost),
        }
    }
}
