//! The handshake and request targets: one input as a JSON payload through
//! `handshake::evaluate`, as the first frame of a connection and as a
//! request frame on an open one; and the borrowed request decoder against
//! `serde_json::Value` parsing.

use serde_json::{Map, Value, json};

use crate::engine::config::Config;
use crate::engine::effect::EffectResult;
use crate::engine::secret::Secret;
use crate::oauth::http::HttpOutcome;
use crate::testkit::Harness;
use crate::wire::frame;
use crate::wire::handshake::{self, ConnClass, Rejection, TokenDigest};

use super::fixtures::{SEED, seed_store};
use super::oversize_model;
use super::sentinel::{CAP_TOKEN, assert_no_marker};

/// Placeholder replaced by [`CAP_TOKEN`] in handshake inputs, so the fuzzer
/// can reach sandbox acceptance without guessing the token.
const CAP_PLACEHOLDER: &[u8] = b"@CAP@";

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A harness for the handshake target: host (no token) or sandbox, with a
/// seeded store.
fn handshake_harness(sandbox: bool) -> Harness {
    let mut config = Config::default();
    if sandbox {
        config.capability_token = Some(Secret::new(CAP_TOKEN));
    }
    let mut h = Harness::with_config(config, SEED);
    seed_store(&mut h);
    h
}

/// The `request` target: the borrowed request decoder (`request::parse`)
/// must accept exactly what parsing into `serde_json::Value` accepts and
/// read the same `id`, `op` and payload fields from it (a differential
/// check: the decoder replaced `Value` parsing on every request).
pub fn fuzz_request(data: &[u8]) {
    crate::wire::request::check_against_value(data);
}

/// Runs `data` as a JSON payload through the handshake and the request path.
///
/// `@CAP@` in the input stands for the capability token when it is used as
/// a handshake (so sandbox acceptance is reachable); as a request it is sent
/// verbatim.
///
/// Invariants: no panic; `evaluate` is consistent between a server with and
/// without a token (version checked first, the token before the op, the
/// class follows the configuration); as the first frame of a connection it
/// gets exactly the reply `evaluate` predicts and the connection closes iff
/// it is refused (or is not a JSON object); as a request frame on an open v2
/// host and v1 sandbox connection it gets exactly one reply, or the
/// connection closes without one, even after every effect completed and time
/// ran out; no secret sentinel is ever sent or audited.
pub fn fuzz_handshake_and_request(data: &[u8]) {
    let digest = TokenDigest::of(&Secret::new(CAP_TOKEN));
    let with_token = replace_all(data, CAP_PLACEHOLDER, CAP_TOKEN.as_bytes());
    for bytes in [data, &with_token[..]] {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) {
            check_evaluate(&map, &digest);
        }
    }
    let check_secrets = !contains(data, b"SECRET");

    let mut host = handshake_harness(false);
    first_frame(&mut host, data, None);
    request_frame(&mut host, data, 2);
    if check_secrets {
        assert_no_marker(&host.observable_text());
    }

    let mut sandbox = handshake_harness(true);
    first_frame(&mut sandbox, &with_token, Some(&digest));
    request_frame(&mut sandbox, data, 1);
    if check_secrets {
        assert_no_marker(&sandbox.observable_text());
    }
}

fn check_evaluate(map: &Map<String, Value>, digest: &TokenDigest) {
    let open = handshake::evaluate(map, None);
    let guarded = handshake::evaluate(map, Some(digest));
    assert_ne!(open, Err(Rejection::Unauthorized), "no token configured");
    if let Ok(a) = open {
        assert_eq!(a.class, ConnClass::Host);
        assert!((1..=handshake::MAX_VERSION).contains(&a.version));
    }
    if let Ok(a) = guarded {
        assert_eq!(a.class, ConnClass::Sandbox);
        assert_eq!(open.map(|o| o.version), Ok(a.version));
    }
    if open == Err(Rejection::UnknownVersion) {
        assert_eq!(guarded, Err(Rejection::UnknownVersion), "version first");
    }
    if guarded == Err(Rejection::HandshakeRequired) {
        assert_eq!(open, Err(Rejection::HandshakeRequired), "token before op");
    }
    for bytes in [
        handshake::reject_json(Rejection::UnknownVersion),
        handshake::reject_json(Rejection::Unauthorized),
        handshake::reject_json(Rejection::HandshakeRequired),
    ] {
        assert!(serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| v.is_object()));
    }
}

/// `bytes` as the first frame of a fresh connection.
fn first_frame(h: &mut Harness, bytes: &[u8], digest: Option<&TokenDigest>) {
    let conn = h.open();
    h.send(conn, &frame::encode_payload(bytes));
    let replies = h.take_replies(conn);
    let parsed = (bytes.len() <= h.engine.config().limits.max_frame_bytes)
        .then(|| serde_json::from_slice::<Value>(bytes).ok())
        .flatten();
    let Some(Value::Object(map)) = parsed else {
        assert!(replies.is_empty(), "reply to an undecodable first frame");
        assert!(h.is_closed(conn), "undecodable first frame left open");
        return;
    };
    assert_eq!(replies.len(), 1, "one handshake reply: {replies:?}");
    let (want, closed) = match handshake::evaluate(&map, digest) {
        Ok(a) => (handshake::accept_json(a.version), false),
        Err(r) => (handshake::reject_json(r), true),
    };
    let want: Value = serde_json::from_slice(&want).unwrap_or_default();
    assert_eq!(replies[0], want, "handshake reply differs from evaluate");
    assert_eq!(h.is_closed(conn), closed, "close iff refused");
}

/// `bytes` as a request frame on an open connection of version `version`.
fn request_frame(h: &mut Harness, bytes: &[u8], version: u8) {
    let conn = h.open();
    let mut hello = json!({"v": version, "op": "handshake"});
    if version >= 2 {
        hello["payload"] = json!({"minVersion": 1, "maxVersion": 2});
    }
    if h.engine.config().capability_token.is_some() {
        hello["payload"] = json!({"capabilityToken": CAP_TOKEN});
    }
    h.send_json(conn, &hello);
    let hs = h.take_replies(conn);
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0]["ok"], json!(true), "{hs:?}");
    assert_eq!(hs[0]["data"]["version"], json!(version));

    h.send(conn, &frame::encode_payload(bytes));
    let mut replies = h.take_replies(conn);
    // Complete everything the request started, refusing every provider call
    // (a terminal answer, so device polling and retries end quickly).
    for _ in 0..256 {
        while let Some((id, _)) = h.http_pending.pop_front() {
            let outcome = HttpOutcome::Response {
                status: 400,
                body: br#"{"error":"access_denied"}"#.to_vec(),
            };
            h.engine
                .handle_effect_result(id, EffectResult::Http(outcome), h.now);
            h.drain();
        }
        replies.extend(h.take_replies(conn));
        if h.engine.poll_timeout().is_none() {
            break;
        }
        h.advance_to_next(u64::MAX);
        replies.extend(h.take_replies(conn));
    }
    if h.is_closed(conn) {
        let limit = h.engine.config().limits.max_frame_bytes;
        let want = oversize_model::expected_replies(bytes, limit);
        assert_eq!(replies, want, "a closed request got a reply: {replies:?}");
        let decodes = bytes.len() <= limit
            && serde_json::from_slice::<Value>(bytes).is_ok_and(|v| v.is_object());
        assert!(!decodes, "a decodable request closed the connection");
    } else {
        assert_eq!(replies.len(), 1, "exactly one reply: {replies:?}");
        let r = &replies[0];
        assert!(r["id"].is_string(), "reply without id: {r}");
        assert!(r["ok"].is_boolean(), "reply without ok: {r}");
        if r["ok"] == json!(true) {
            assert!(r["data"].is_object(), "data is always an object: {r}");
        } else {
            assert!(r["code"].is_string() && r["error"].is_string(), "{r}");
        }
    }
}
