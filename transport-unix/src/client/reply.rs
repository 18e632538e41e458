//! A checked reply (see [`proto::Reply`](super::proto::Reply)) as the
//! library reports it: the error reply's code and message with the
//! existing client's defaults, `retryAfter` in whole seconds.

use serde_json::{Map, Value};

use super::error::ClientError;
use super::proto::{Reply, UNKNOWN_CODE, UNKNOWN_MESSAGE};

/// `data` (an empty object when absent) for `ok`, else the server error.
pub(crate) fn into_result(reply: Reply) -> Result<Map<String, Value>, ClientError> {
    reply.into_result().map_err(|e| ClientError::Server {
        code: e.code.unwrap_or_else(|| UNKNOWN_CODE.to_owned()),
        message: e.message.unwrap_or_else(|| UNKNOWN_MESSAGE.to_owned()),
        // Whole seconds, rounded up; the server sends integers >= 1.
        retry_after: e
            .retry_after
            .and_then(|n| n.as_f64())
            .map(|s| s.max(0.0).ceil() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(v: Value) -> Reply {
        Reply::parse(v.as_object().cloned().unwrap()).unwrap()
    }

    #[test]
    fn server_errors_and_data() {
        assert_eq!(
            into_result(reply(json!({"id":"1","ok":true}))).unwrap(),
            Map::new()
        );
        let err = reply(
            json!({"id":"1","ok":false,"code":"RATE_LIMITED","error":"Too many requests","retryAfter":2.2}),
        );
        match into_result(err) {
            Err(ClientError::Server {
                code,
                message,
                retry_after,
            }) => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("RATE_LIMITED", "Too many requests")
                );
                assert_eq!(retry_after, Some(3));
            }
            other => panic!("{other:?}"),
        }
        match into_result(reply(json!({"id":"1","ok":false}))) {
            Err(ClientError::Server {
                code,
                message,
                retry_after: None,
            }) => assert_eq!(
                (code.as_str(), message.as_str()),
                (UNKNOWN_CODE, UNKNOWN_MESSAGE)
            ),
            other => panic!("{other:?}"),
        }
    }
}
