//! Fuzz target bodies (feature `fuzzing`).
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` are one-line wrappers
//! around the functions here, and `core/tests/fuzz_corpus.rs` replays every
//! checked-in corpus and regression file through the same functions under
//! plain `cargo test`, on stable. Every body is deterministic: the engine
//! runs in a [`Harness`] with a fixed RNG seed and a virtual clock, so a
//! crashing input reproduces byte for byte.
//!
//! - [`fuzz_frame_decoder`]: arbitrary bytes in arbitrary chunkings against
//!   a reference decoder; bounded reservations, oversize refused from the
//!   header alone, `decode(encode(x)) == x`.
//! - [`fuzz_handshake_and_request`]: the input as a JSON payload, through
//!   [`handshake::evaluate`], as the first frame of a connection and as a
//!   request frame on an open one: exactly one reply, or a close.
//! - [`fuzz_engine`]: the whole engine driven by a sequence of
//!   [`EngineOp`]s, with a client-side model checked after every step.
//!
//! Invariant violations are panics, which libFuzzer reports as crashes.

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Arbitrary, Unstructured};
use serde_json::{Map, Value, json};

use crate::audit::ConnId;
use crate::config::{Config, Limits, MAX_FRAME_CEILING};
use crate::effect::{Effect, EffectResult};
use crate::frame::{self, DecodeError, FrameDecoder, HEADER_LEN};
use crate::handshake::{self, ConnClass, Rejection, TokenDigest};
use crate::http::{HttpOutcome, TransportError};
use crate::payload;
use crate::peer::{Peer, Transport};
use crate::provider::{self, BodyEncoding, Dialect, FlowType, ProviderSpec};
use crate::secret::Secret;
use crate::session::{SessionState, Step};
use crate::testkit::{Harness, START_UNIX_MS};
use crate::time::Now;

mod oversize_model;

/// RNG seed of every harness the bodies build.
const SEED: u64 = 0x00f0_2217;

/// The capability token of sandbox configurations. Starts with the secret
/// marker, so any leak of it is caught like the other sentinels.
const CAP_TOKEN: &str = "SECRET-CAP-5e1d7a90c4";

/// Placeholder replaced by [`CAP_TOKEN`] in handshake inputs, so the fuzzer
/// can reach sandbox acceptance without guessing the token.
const CAP_PLACEHOLDER: &[u8] = b"@CAP@";

/// Every secret sentinel (stored and provider refresh tokens, device codes,
/// server verifiers, the capability token) starts with this.
const SECRET_MARK: &str = "SECRET-";

/// Longest op sequence [`fuzz_engine`] runs (longer inputs are truncated).
pub const MAX_OPS: usize = 256;

// ---------------------------------------------------------------------------
// Frame decoder
// ---------------------------------------------------------------------------

/// Frame limits the decoder target picks from (low 3 bits of the first byte).
const DECODER_LIMITS: [usize; 8] = [1, 2, 16, 64, 300, 4096, 65_536, MAX_FRAME_CEILING];

/// One decoder result.
#[derive(Debug, PartialEq)]
enum Item {
    Frame(Map<String, Value>),
    Error(DecodeError),
}

/// Decodes arbitrary bytes in arbitrary chunkings.
///
/// Layout of `data`: the first byte picks the frame limit (low 3 bits) and
/// the number `n` of chunk-plan bytes (high 5 bits); the next `n` bytes are
/// the chunk plan (cycled: `0` delivers an empty chunk, `>= 0xF0` the whole
/// rest, anything else that many bytes); the rest is the byte stream.
///
/// Invariants: no panic; the chunked decoder yields exactly what a
/// whole-stream reference decoder yields; after every call the reserved body
/// memory is at most twice the body bytes received and at most the limit;
/// an oversize length errors as soon as the header is complete, with nothing
/// reserved; `is_partial` tracks the bytes of the current frame; every
/// decoded frame round-trips through `encode`.
pub fn fuzz_frame_decoder(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let limit = DECODER_LIMITS[usize::from(head & 7)];
    let plan_len = usize::from(head >> 3).min(rest.len());
    let (plan, stream) = rest.split_at(plan_len);
    let (expected, expected_partial) = reference_decode(stream, limit);
    let (got, got_partial) = chunked_decode(stream, limit, plan);
    assert_eq!(got, expected, "chunked decoding differs from the reference");
    if !matches!(got.last(), Some(Item::Error(_))) {
        assert_eq!(got_partial, expected_partial, "partial state differs");
    }
    for item in &got {
        if let Item::Frame(f) = item {
            round_trip(f);
        }
    }
}

/// The whole stream decoded by the SPEC's rules, without the decoder.
fn reference_decode(stream: &[u8], limit: usize) -> (Vec<Item>, bool) {
    let mut items = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < HEADER_LEN {
            return (items, !rest.is_empty());
        }
        let announced = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let len = announced as usize;
        if len > limit {
            items.push(Item::Error(DecodeError::Oversize {
                len: announced,
                max: limit,
            }));
            return (items, false);
        }
        if rest.len() - HEADER_LEN < len {
            return (items, true);
        }
        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        let item = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(m)) => Item::Frame(m),
            Ok(_) => Item::Error(DecodeError::NotObject),
            Err(_) => Item::Error(DecodeError::InvalidJson),
        };
        let stop = matches!(item, Item::Error(_));
        items.push(item);
        if stop {
            return (items, false);
        }
        rest = &rest[HEADER_LEN + len..];
    }
}

fn chunk_size(plan: &[u8], turn: usize, remaining: usize) -> usize {
    if plan.is_empty() {
        return remaining;
    }
    match plan[turn % plan.len()] {
        b if b >= 0xF0 => remaining,
        b => usize::from(b).min(remaining),
    }
}

/// Checks the decoder's bookkeeping after a call that returned `Ok(None)`.
fn check_waiting(dec: &FrameDecoder, frame_bytes: usize, limit: usize) {
    let body = frame_bytes.saturating_sub(HEADER_LEN);
    assert!(
        dec.reserved() <= 2 * body,
        "reserved {} bytes for {body} body bytes received",
        dec.reserved()
    );
    assert!(dec.reserved() <= limit, "reserved beyond the limit");
    assert_eq!(
        dec.is_partial(),
        frame_bytes > 0,
        "is_partial after {frame_bytes} bytes of a frame"
    );
}

fn chunked_decode(stream: &[u8], limit: usize, plan: &[u8]) -> (Vec<Item>, bool) {
    let mut dec = FrameDecoder::new(limit);
    let mut items = Vec::new();
    let mut pos = 0;
    let mut frame_start = 0;
    let mut turn = 0;
    while pos < stream.len() {
        let mut size = chunk_size(plan, turn, stream.len() - pos);
        turn += 1;
        if size == 0 {
            // An empty read must change nothing.
            let mut empty: &[u8] = &[];
            assert_eq!(dec.decode(&mut empty), Ok(None), "empty input");
            check_waiting(&dec, pos - frame_start, limit);
            size = 1;
        }
        let chunk = &stream[pos..pos + size];
        let mut input = chunk;
        loop {
            let result = dec.decode(&mut input);
            let consumed = pos + (chunk.len() - input.len());
            match result {
                Ok(Some(f)) => {
                    assert!(consumed - frame_start >= HEADER_LEN);
                    frame_start = consumed;
                    assert!(!dec.is_partial(), "partial right after a frame");
                    assert_eq!(dec.reserved(), 0, "memory kept after a frame");
                    items.push(Item::Frame(f));
                }
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) with input left");
                    check_waiting(&dec, consumed - frame_start, limit);
                    break;
                }
                Err(e) => {
                    if let DecodeError::Oversize { len, max } = e {
                        assert_eq!(dec.reserved(), 0, "reserved for an oversize frame");
                        assert_eq!(max, limit);
                        assert!(len as usize > limit);
                        assert_eq!(
                            consumed - frame_start,
                            HEADER_LEN,
                            "oversize not refused from the header alone"
                        );
                    }
                    items.push(Item::Error(e));
                    return (items, false);
                }
            }
        }
        pos += size;
    }
    (items, dec.is_partial())
}

fn round_trip(f: &Map<String, Value>) {
    let bytes = frame::encode(f);
    let mut dec = FrameDecoder::new(bytes.len());
    let mut input = &bytes[..];
    let back = dec
        .decode(&mut input)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is complete");
    assert!(input.is_empty(), "encode produced trailing bytes");
    assert_eq!(&back, f, "decode(encode(x)) != x");
    assert_eq!(frame::encode(&back), bytes, "encoding is not stable");
}

// ---------------------------------------------------------------------------
// Handshake and request parser
// ---------------------------------------------------------------------------

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
    crate::request::check_against_value(data);
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

fn assert_no_marker(text: &str) {
    assert!(
        !text.contains(SECRET_MARK),
        "a secret sentinel left the host: …{}…",
        excerpt(text, SECRET_MARK)
    );
}

fn excerpt<'a>(text: &'a str, needle: &str) -> &'a str {
    let Some(at) = text.find(needle) else {
        return "";
    };
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(80)
        .map_or(0, |(i, _)| i);
    let end = text[at..]
        .char_indices()
        .nth(120)
        .map_or(text.len(), |(i, _)| at + i);
    &text[start..end]
}

// ---------------------------------------------------------------------------
// Whole engine: inputs
// ---------------------------------------------------------------------------

/// One input to the engine in [`fuzz_engine`].
///
/// Connections, sessions and held effects are referred to by small indices
/// taken modulo what exists, so every op is meaningful in every state.
#[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
pub enum EngineOp {
    /// Selects the configuration; only honoured as the first op (the
    /// default is a host server with default limits).
    Configure(Setup),
    /// A transport accepts a connection; its client sends `hello`.
    Open {
        /// Picks the peer's uid (`None` or one of three) and transport.
        peer: u8,
        /// The client's first frame.
        hello: Hello,
    },
    /// The client writes a request frame, then delivers per `cut`.
    Request {
        /// Connection index.
        conn: u8,
        /// Request id: low 3 bits the number, bit 3 a JSON number instead
        /// of a string (`3` and `"3"` are the same id).
        id: u8,
        /// What is asked.
        req: Req,
        /// How much of the client's unsent bytes to deliver now.
        cut: Cut,
    },
    /// The client delivers more of its unsent bytes.
    Flush {
        /// Connection index.
        conn: u8,
        /// How much.
        cut: Cut,
    },
    /// The client writes something that is not a valid request frame.
    Raw {
        /// Connection index.
        conn: u8,
        /// What.
        raw: RawFrame,
        /// How much of the client's unsent bytes to deliver now.
        cut: Cut,
    },
    /// The connection is gone (reset, or the driver closed it).
    Gone {
        /// Connection index.
        conn: u8,
    },
    /// The client shuts down its write side.
    HalfClose {
        /// Connection index.
        conn: u8,
    },
    /// The driver stops reading the connection (back-pressure).
    Pause {
        /// Connection index.
        conn: u8,
    },
    /// The driver reads the connection again.
    Resume {
        /// Connection index.
        conn: u8,
    },
    /// The host completes one held store effect (any order).
    Complete {
        /// Index into the held effects.
        index: u8,
        /// With what.
        how: Completion,
    },
    /// The host completes every held store effect, oldest first.
    CompleteAll,
    /// The host answers one pending HTTP request (any order).
    Respond {
        /// Index into the pending requests.
        index: u8,
        /// With what.
        answer: HttpAnswer,
    },
    /// Store behaviour from now on.
    Store(StoreMode),
    /// Whether store effects complete inline (as on a cache hit).
    AutoEffects(bool),
    /// Whether starting a loopback listener fails.
    FailListen(bool),
    /// A browser hits the loopback redirect listener.
    Loopback {
        /// Session index.
        session: u8,
        /// What the request carries.
        kind: Callback,
    },
    /// Time passes (or repeats, or goes backwards).
    Tick(Tick),
    /// Another process writes a token into the store, with an odd expiry.
    Plant {
        /// Which key.
        key: KeySel,
        /// Expiry value index (normal, past, huge, negative, fractional,
        /// string, null, …).
        expiry: u8,
        /// With a refresh token.
        refresh: bool,
    },
}

/// The engine configuration of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Arbitrary)]
pub struct Setup {
    /// A capability token is configured: every connection is a sandbox.
    pub sandbox: bool,
    /// `strict_sandbox` policy.
    pub strict: bool,
    /// Allow-lists for providers, buckets and keys.
    pub allow_lists: bool,
    /// Small limits: in-flight cap, rate, connections, sessions, frame and
    /// v1 reply sizes, deadlines.
    pub small_limits: bool,
    /// Codex uses OpenAI's device dialect instead of the browser redirect.
    pub codex_device: bool,
}

/// A client's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Hello {
    /// A v2 range handshake (with the token when one is configured).
    Good,
    /// A v1 handshake (with the token when one is configured).
    V1,
    /// A handshake with this version range.
    Range {
        /// `minVersion`.
        min: i8,
        /// `maxVersion`.
        max: i8,
    },
    /// A handshake without a token.
    NoToken,
    /// A handshake with a wrong token.
    WrongToken,
    /// A request instead of a handshake.
    NotHandshake,
    /// A good handshake, written but not delivered yet.
    Late,
}

/// How much of a client's unsent bytes to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Cut {
    /// Everything, in one read.
    All,
    /// At most this many bytes, in one read (0: an empty read).
    Part(u8),
    /// Nothing yet.
    Hold,
    /// At most this many bytes plus one, one byte per read.
    Trickle(u8),
}

/// Selects a `provider` and `bucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub struct KeySel {
    /// Provider index (built-ins, a discovery provider, unknown, invalid).
    pub provider: u8,
    /// Bucket index (absent, `default`, `work`, invalid).
    pub bucket: u8,
}

/// A token a client saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum TokenSel {
    /// Valid for an hour.
    Valid,
    /// Already expired.
    Expired,
    /// With a refresh token (which must be dropped).
    WithRefresh,
    /// Missing `access_token`.
    Invalid,
    /// With an odd `expiry` (index: negative, huge, fractional, string, …).
    OddExpiry(u8),
}

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Req {
    /// `get_token`.
    GetToken(KeySel),
    /// `save_token`.
    SaveToken(KeySel, TokenSel),
    /// `remove_token`.
    RemoveToken(KeySel),
    /// `list_providers`.
    ListProviders,
    /// `list_buckets`.
    ListBuckets(KeySel),
    /// `get_bucket_stats`.
    BucketStats(KeySel),
    /// `get_api_key` (name index).
    GetApiKey(u8),
    /// `list_api_keys`.
    ListApiKeys,
    /// `has_api_key` (name index).
    HasApiKey(u8),
    /// `cancel` of the request with this id.
    Cancel(u8),
    /// `oauth_initiate`.
    Initiate(KeySel),
    /// `oauth_exchange` for a session.
    Exchange {
        /// Session index (one past the end: an unknown session).
        session: u8,
        /// The pasted value.
        code: Code,
    },
    /// `oauth_poll` for a session.
    Poll(u8),
    /// `oauth_cancel` for a session.
    OauthCancel(u8),
    /// `refresh_token`.
    Refresh(KeySel),
    /// An unknown operation.
    Unknown,
    /// A second `handshake`.
    Handshake,
    /// No `id`.
    MissingId,
    /// No `op`.
    MissingOp,
    /// A `payload` that is not an object.
    PayloadNotObject,
    /// Fields of the wrong type.
    BadFields,
    /// A long field (`16 × n` bytes).
    LongField(u8),
}

/// What a client pastes into `oauth_exchange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Code {
    /// `CODE#STATE` with the session's state.
    HashState,
    /// A bare code.
    Plain,
    /// The redirect URL with code and the session's state.
    Redirect,
    /// `CODE#STATE` with a forged state.
    Forged,
    /// A redirect URL carrying an OAuth error.
    ErrorUrl,
    /// An empty string.
    Empty,
}

/// Bytes that are not a valid request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum RawFrame {
    /// Up to 8 arbitrary bytes (the model stops checking the connection).
    Junk {
        /// How many of `bytes`.
        len: u8,
        /// The bytes.
        bytes: [u8; 8],
    },
    /// A length prefix above the limit.
    Oversize(u8),
    /// A frame of length zero.
    Empty,
    /// A payload that is not JSON.
    InvalidJson,
    /// JSON that is not an object.
    NotObject(u8),
    /// A string that is not UTF-8.
    BadUtf8,
    /// Two JSON values in one frame.
    Trailing,
}

/// How the host completes a held store effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Completion {
    /// Against the in-memory store.
    Store,
    /// `EffectResult::Failed`.
    Failed,
    /// Nothing found (token, key or list).
    Missing,
    /// The cross-process lock timed out.
    Busy,
    /// A result of the wrong kind (a host bug the engine must survive);
    /// the index picks which.
    WrongKind(u8),
}

/// How the host answers a pending HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum HttpAnswer {
    /// 200 with what the URL's endpoint returns on success (discovery
    /// document, device grant, Codex device code, token with a refresh
    /// token); the `u8` picks the token lifetime.
    Success(u8),
    /// 200 with a token without a refresh token.
    NoRefresh,
    /// 400 with this OAuth `error` (index).
    OauthError(u8),
    /// This status (index: 401, 403, 404, 429, 500, 503) with `{}`.
    Status(u8),
    /// A transport error (index).
    Transport(u8),
    /// 200 with a body that is not JSON.
    NotJson,
    /// 200 with a JSON array.
    NotObject,
    /// 200 with the success body, a numeric field replaced by an odd value.
    Odd {
        /// Which field: `expires_in`, `interval`, both.
        field: u8,
        /// Odd value index (negative, zero, huge, fractional, string, …).
        value: u8,
    },
}

/// Store behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub struct StoreMode {
    /// Token writes fail.
    pub fail_writes: bool,
    /// Every effect fails.
    pub fail_all: bool,
    /// Another process holds the lock of `anthropic:default`.
    pub foreign_lock: bool,
    /// The stored refresh token of `anthropic:default` is marked unusable.
    pub unusable: bool,
}

/// What a browser's loopback request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Callback {
    /// A code and the session's state.
    Code,
    /// An OAuth error and the session's state.
    Error,
    /// The session's state but no code.
    NoCode,
    /// A code and a forged state.
    WrongState,
    /// The session's state on another path.
    WrongPath,
    /// A code and the session's state, on another port.
    OtherPort,
    /// Arbitrary characters after the callback path.
    Junk([u8; 8]),
}

/// A clock input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Tick {
    /// Forward this many milliseconds.
    Ms(u16),
    /// Forward this many seconds.
    Secs(u8),
    /// Forward this many minutes (modulo 64).
    Minutes(u8),
    /// Forward to the engine's next deadline.
    Next,
    /// The same time again.
    Repeat,
    /// Back this many milliseconds: later inputs carry a smaller monotonic
    /// time until the clock catches up (the engine must clamp).
    Back(u16),
    /// The wall clock jumps by this many seconds (either way).
    Wall(i16),
}

/// Decodes a typed input exactly like libfuzzer-sys's `fuzz_target!` does
/// (`arbitrary_take_rest` on an [`Unstructured`] of all the bytes), so
/// corpus files replay identically under `cargo test`.
#[must_use]
pub fn decode_engine_ops(data: &[u8]) -> Option<Vec<EngineOp>> {
    Vec::<EngineOp>::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// [`decode_engine_ops`] then [`fuzz_engine`]: the engine target on raw bytes.
pub fn fuzz_engine_bytes(data: &[u8]) {
    if let Some(ops) = decode_engine_ops(data) {
        fuzz_engine(&ops);
    }
}

// ---------------------------------------------------------------------------
// Whole engine: encoding inputs (for hand-written seed corpora)
// ---------------------------------------------------------------------------

/// Encodes ops so that [`decode_engine_ops`] returns them: the inverse of
/// the derived `Arbitrary` format (each element prefixed by a continue
/// byte, enum tags as `u32` scaled by the variant count, integers little
/// endian). Used to write seed corpora.
#[must_use]
pub fn encode_engine_ops(ops: &[EngineOp]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        out.push(1);
        op.enc(&mut out);
    }
    out
}

trait Enc {
    fn enc(&self, out: &mut Vec<u8>);
}

fn tag(out: &mut Vec<u8>, index: u64, count: u64) {
    let t = u32::try_from((index << 32).div_ceil(count)).unwrap_or(u32::MAX);
    out.extend_from_slice(&t.to_le_bytes());
}

impl Enc for u8 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}

impl Enc for i8 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Enc for u16 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Enc for i16 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Enc for bool {
    fn enc(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Enc for [u8; 8] {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl Enc for EngineOp {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 18;
        match self {
            EngineOp::Configure(s) => {
                tag(out, 0, N);
                s.enc(out);
            }
            EngineOp::Open { peer, hello } => {
                tag(out, 1, N);
                peer.enc(out);
                hello.enc(out);
            }
            EngineOp::Request { conn, id, req, cut } => {
                tag(out, 2, N);
                conn.enc(out);
                id.enc(out);
                req.enc(out);
                cut.enc(out);
            }
            EngineOp::Flush { conn, cut } => {
                tag(out, 3, N);
                conn.enc(out);
                cut.enc(out);
            }
            EngineOp::Raw { conn, raw, cut } => {
                tag(out, 4, N);
                conn.enc(out);
                raw.enc(out);
                cut.enc(out);
            }
            EngineOp::Gone { conn } => {
                tag(out, 5, N);
                conn.enc(out);
            }
            EngineOp::HalfClose { conn } => {
                tag(out, 6, N);
                conn.enc(out);
            }
            EngineOp::Pause { conn } => {
                tag(out, 7, N);
                conn.enc(out);
            }
            EngineOp::Resume { conn } => {
                tag(out, 8, N);
                conn.enc(out);
            }
            EngineOp::Complete { index, how } => {
                tag(out, 9, N);
                index.enc(out);
                how.enc(out);
            }
            EngineOp::CompleteAll => tag(out, 10, N),
            EngineOp::Respond { index, answer } => {
                tag(out, 11, N);
                index.enc(out);
                answer.enc(out);
            }
            EngineOp::Store(m) => {
                tag(out, 12, N);
                m.enc(out);
            }
            EngineOp::AutoEffects(b) => {
                tag(out, 13, N);
                b.enc(out);
            }
            EngineOp::FailListen(b) => {
                tag(out, 14, N);
                b.enc(out);
            }
            EngineOp::Loopback { session, kind } => {
                tag(out, 15, N);
                session.enc(out);
                kind.enc(out);
            }
            EngineOp::Tick(t) => {
                tag(out, 16, N);
                t.enc(out);
            }
            EngineOp::Plant {
                key,
                expiry,
                refresh,
            } => {
                tag(out, 17, N);
                key.enc(out);
                expiry.enc(out);
                refresh.enc(out);
            }
        }
    }
}

impl Enc for Setup {
    fn enc(&self, out: &mut Vec<u8>) {
        self.sandbox.enc(out);
        self.strict.enc(out);
        self.allow_lists.enc(out);
        self.small_limits.enc(out);
        self.codex_device.enc(out);
    }
}

impl Enc for Hello {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            Hello::Good => tag(out, 0, N),
            Hello::V1 => tag(out, 1, N),
            Hello::Range { min, max } => {
                tag(out, 2, N);
                min.enc(out);
                max.enc(out);
            }
            Hello::NoToken => tag(out, 3, N),
            Hello::WrongToken => tag(out, 4, N),
            Hello::NotHandshake => tag(out, 5, N),
            Hello::Late => tag(out, 6, N),
        }
    }
}

impl Enc for Cut {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 4;
        match self {
            Cut::All => tag(out, 0, N),
            Cut::Part(n) => {
                tag(out, 1, N);
                n.enc(out);
            }
            Cut::Hold => tag(out, 2, N),
            Cut::Trickle(n) => {
                tag(out, 3, N);
                n.enc(out);
            }
        }
    }
}

impl Enc for KeySel {
    fn enc(&self, out: &mut Vec<u8>) {
        self.provider.enc(out);
        self.bucket.enc(out);
    }
}

impl Enc for TokenSel {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 5;
        match self {
            TokenSel::Valid => tag(out, 0, N),
            TokenSel::Expired => tag(out, 1, N),
            TokenSel::WithRefresh => tag(out, 2, N),
            TokenSel::Invalid => tag(out, 3, N),
            TokenSel::OddExpiry(n) => {
                tag(out, 4, N);
                n.enc(out);
            }
        }
    }
}

impl Enc for Req {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 22;
        match self {
            Req::GetToken(k) => {
                tag(out, 0, N);
                k.enc(out);
            }
            Req::SaveToken(k, t) => {
                tag(out, 1, N);
                k.enc(out);
                t.enc(out);
            }
            Req::RemoveToken(k) => {
                tag(out, 2, N);
                k.enc(out);
            }
            Req::ListProviders => tag(out, 3, N),
            Req::ListBuckets(k) => {
                tag(out, 4, N);
                k.enc(out);
            }
            Req::BucketStats(k) => {
                tag(out, 5, N);
                k.enc(out);
            }
            Req::GetApiKey(n) => {
                tag(out, 6, N);
                n.enc(out);
            }
            Req::ListApiKeys => tag(out, 7, N),
            Req::HasApiKey(n) => {
                tag(out, 8, N);
                n.enc(out);
            }
            Req::Cancel(n) => {
                tag(out, 9, N);
                n.enc(out);
            }
            Req::Initiate(k) => {
                tag(out, 10, N);
                k.enc(out);
            }
            Req::Exchange { session, code } => {
                tag(out, 11, N);
                session.enc(out);
                code.enc(out);
            }
            Req::Poll(n) => {
                tag(out, 12, N);
                n.enc(out);
            }
            Req::OauthCancel(n) => {
                tag(out, 13, N);
                n.enc(out);
            }
            Req::Refresh(k) => {
                tag(out, 14, N);
                k.enc(out);
            }
            Req::Unknown => tag(out, 15, N),
            Req::Handshake => tag(out, 16, N),
            Req::MissingId => tag(out, 17, N),
            Req::MissingOp => tag(out, 18, N),
            Req::PayloadNotObject => tag(out, 19, N),
            Req::BadFields => tag(out, 20, N),
            Req::LongField(n) => {
                tag(out, 21, N);
                n.enc(out);
            }
        }
    }
}

impl Enc for Code {
    fn enc(&self, out: &mut Vec<u8>) {
        let i = match self {
            Code::HashState => 0,
            Code::Plain => 1,
            Code::Redirect => 2,
            Code::Forged => 3,
            Code::ErrorUrl => 4,
            Code::Empty => 5,
        };
        tag(out, i, 6);
    }
}

impl Enc for RawFrame {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            RawFrame::Junk { len, bytes } => {
                tag(out, 0, N);
                len.enc(out);
                bytes.enc(out);
            }
            RawFrame::Oversize(n) => {
                tag(out, 1, N);
                n.enc(out);
            }
            RawFrame::Empty => tag(out, 2, N),
            RawFrame::InvalidJson => tag(out, 3, N),
            RawFrame::NotObject(n) => {
                tag(out, 4, N);
                n.enc(out);
            }
            RawFrame::BadUtf8 => tag(out, 5, N),
            RawFrame::Trailing => tag(out, 6, N),
        }
    }
}

impl Enc for Completion {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 5;
        match self {
            Completion::Store => tag(out, 0, N),
            Completion::Failed => tag(out, 1, N),
            Completion::Missing => tag(out, 2, N),
            Completion::Busy => tag(out, 3, N),
            Completion::WrongKind(n) => {
                tag(out, 4, N);
                n.enc(out);
            }
        }
    }
}

impl Enc for HttpAnswer {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 8;
        match self {
            HttpAnswer::Success(n) => {
                tag(out, 0, N);
                n.enc(out);
            }
            HttpAnswer::NoRefresh => tag(out, 1, N),
            HttpAnswer::OauthError(n) => {
                tag(out, 2, N);
                n.enc(out);
            }
            HttpAnswer::Status(n) => {
                tag(out, 3, N);
                n.enc(out);
            }
            HttpAnswer::Transport(n) => {
                tag(out, 4, N);
                n.enc(out);
            }
            HttpAnswer::NotJson => tag(out, 5, N),
            HttpAnswer::NotObject => tag(out, 6, N),
            HttpAnswer::Odd { field, value } => {
                tag(out, 7, N);
                field.enc(out);
                value.enc(out);
            }
        }
    }
}

impl Enc for StoreMode {
    fn enc(&self, out: &mut Vec<u8>) {
        self.fail_writes.enc(out);
        self.fail_all.enc(out);
        self.foreign_lock.enc(out);
        self.unusable.enc(out);
    }
}

impl Enc for Callback {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            Callback::Code => tag(out, 0, N),
            Callback::Error => tag(out, 1, N),
            Callback::NoCode => tag(out, 2, N),
            Callback::WrongState => tag(out, 3, N),
            Callback::WrongPath => tag(out, 4, N),
            Callback::OtherPort => tag(out, 5, N),
            Callback::Junk(b) => {
                tag(out, 6, N);
                b.enc(out);
            }
        }
    }
}

impl Enc for Tick {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 7;
        match self {
            Tick::Ms(n) => {
                tag(out, 0, N);
                n.enc(out);
            }
            Tick::Secs(n) => {
                tag(out, 1, N);
                n.enc(out);
            }
            Tick::Minutes(n) => {
                tag(out, 2, N);
                n.enc(out);
            }
            Tick::Next => tag(out, 3, N),
            Tick::Repeat => tag(out, 4, N),
            Tick::Back(n) => {
                tag(out, 5, N);
                n.enc(out);
            }
            Tick::Wall(n) => {
                tag(out, 6, N);
                n.enc(out);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Whole engine: configuration and fixtures
// ---------------------------------------------------------------------------

const PROVIDERS: [&str; 7] = [
    "anthropic",
    "gemini",
    "qwen",
    "codex",
    "corp",
    "nope",
    "bad/name",
];
const BUCKETS: [Option<&str>; 4] = [None, Some("default"), Some("work"), Some("b@d!")];
const KEY_NAMES: [&str; 3] = ["OPENAI", "MISSING", "bad name"];
/// Distinct valid keys the ops can name (providers × buckets), for bounds.
const KEY_SPACE: usize = 16;
const CODEX_PORT: u16 = 1455;
const CORP_ISSUER: &str = "https://id.corp.example";

fn corp_spec() -> ProviderSpec {
    ProviderSpec {
        name: "corp".into(),
        flow: FlowType::DeviceCode,
        dialect: Dialect::Standard,
        issuer: Some(CORP_ISSUER.into()),
        authorize_url: None,
        token_url: None,
        device_url: None,
        device_token_url: None,
        client_id: "corp-cli".into(),
        client_secret: Some(Secret::new("SECRET-CLIENT-corp")),
        scopes: vec!["openid".into()],
        redirect_uri: None,
        exchange_encoding: BodyEncoding::Form,
        device_encoding: BodyEncoding::Form,
        verification_url: None,
        extra_auth_params: vec![],
        default_device_lifetime_s: 300,
    }
}

fn engine_config(setup: Setup) -> Config {
    let mut config = Config::default();
    config.providers.insert("corp".into(), corp_spec());
    if setup.codex_device {
        config
            .providers
            .insert("codex".into(), provider::codex_device(provider::codex()));
    }
    if setup.sandbox {
        config.capability_token = Some(Secret::new(CAP_TOKEN));
    }
    config.policy.strict_sandbox = setup.strict;
    if setup.allow_lists {
        let set = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
        config.policy.allowed_providers = set(&["anthropic", "qwen", "codex", "corp"]);
        config.policy.allowed_buckets = set(&["default", "work"]);
        config.policy.allowed_keys = set(&["OPENAI"]);
    }
    if setup.small_limits {
        config.limits = Limits {
            max_frame_bytes: 2048,
            partial_frame_ms: 1_000,
            handshake_ms: 1_000,
            max_in_flight: 3,
            rate_per_sec: 1,
            rate_burst: 4,
            max_connections: 4,
            v1_max_frame: 160,
            sessions_per_peer: 2,
            sessions_total: 3,
            session_ttl_ms: 30_000,
            session_sweep_ms: 5_000,
            refresh_cooldown_ms: 2_000,
            ..Limits::default()
        };
    }
    config
}

/// Stored tokens carry `SECRET-RT-…` refresh tokens (expired, valid, soon
/// to expire, none); one API key.
fn seed_store(h: &mut Harness) {
    let now_s = START_UNIX_MS / 1000;
    let tokens = [
        (
            "anthropic",
            "default",
            now_s - 10,
            Some("SECRET-RT-anthropic"),
        ),
        ("codex", "default", now_s + 3600, Some("SECRET-RT-codex")),
        ("qwen", "work", now_s + 400, Some("SECRET-RT-qwen")),
        ("corp", "default", now_s + 30, Some("SECRET-RT-corp")),
        ("gemini", "default", now_s + 86_400, None),
    ];
    for (p, b, expiry, rt) in tokens {
        let mut t =
            json!({"access_token": format!("AT-{p}"), "expiry": expiry, "token_type": "Bearer"});
        if let Some(rt) = rt {
            t["refresh_token"] = json!(rt);
        }
        h.store.put_token(p, b, t);
    }
    h.store
        .keys
        .insert("OPENAI".into(), Secret::new("sk-public-test-key"));
}

// ---------------------------------------------------------------------------
// Whole engine: the client-side model
// ---------------------------------------------------------------------------

/// Where a connection's handshake is, as its client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hs {
    NotSent,
    Sent,
    Open,
    Rejected,
}

/// A frame the client wrote, by what it should cause.
#[derive(Debug, Clone)]
enum Written {
    /// A JSON object frame within the limit: the reply key (`id` as the
    /// server renders it, or `unknown`) and the op name.
    Json { key: String, op: String },
    /// Must close the connection (decode error).
    Bad,
    /// Oversize: must close; may first answer `key` with the oversize
    /// `INVALID_REQUEST` (when the id was in the chunk with the header).
    Oversize { key: Option<String> },
    /// Arbitrary bytes: the model stops checking this connection.
    Opaque,
}

struct Client {
    conn: ConnId,
    /// Written but not delivered.
    outbox: Vec<u8>,
    /// Frames in `outbox`, by end offset.
    frames: Vec<(usize, Written)>,
    hs: Hs,
    /// Replies owed, by key (a multiset: duplicates owe a refusal each).
    owed: BTreeMap<String, u32>,
    /// Gone, or closed by the engine.
    closed: bool,
    closed_len: usize,
    read_closed: bool,
    tainted: bool,
    expect_close: bool,
    /// The id an oversize frame may be answered under, once.
    oversize_key: Option<String>,
}

impl Client {
    fn new(conn: ConnId) -> Client {
        Client {
            conn,
            outbox: Vec::new(),
            frames: Vec::new(),
            hs: Hs::NotSent,
            owed: BTreeMap::new(),
            closed: false,
            closed_len: 0,
            read_closed: false,
            tainted: false,
            expect_close: false,
            oversize_key: None,
        }
    }

    fn write(&mut self, bytes: &[u8], what: Written) {
        self.outbox.extend_from_slice(bytes);
        self.frames.push((self.outbox.len(), what));
    }

    fn owed_total(&self) -> u32 {
        self.owed.values().sum()
    }

    fn on_reply(&mut self, r: &Value) {
        match self.hs {
            Hs::Sent => {
                assert_eq!(r["op"], json!("handshake"), "first reply: {r}");
                assert!(r.get("id").is_none(), "handshake reply with an id: {r}");
                self.hs = if r["ok"] == json!(true) {
                    Hs::Open
                } else {
                    Hs::Rejected
                };
            }
            Hs::Open => {
                let id = r["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("reply without a string id: {r}"));
                assert!(r["ok"].is_boolean(), "reply without ok: {r}");
                if oversize_model::take_answer(&mut self.oversize_key, id, r) {
                    return;
                }
                match self.owed.get_mut(id) {
                    Some(n) => {
                        *n -= 1;
                        if *n == 0 {
                            self.owed.remove(id);
                        }
                    }
                    None => panic!("reply for {id}, which is not in flight: {r}"),
                }
            }
            Hs::NotSent | Hs::Rejected => panic!("unexpected frame: {r}"),
        }
    }
}

/// The fuzzed world: the harness, the clients and what was seen.
struct World {
    h: Harness,
    clients: Vec<Client>,
    /// (session id, state) from replies, oldest first.
    sessions: Vec<(String, String)>,
    /// Highest (rank, attempts) seen per live session.
    seen: BTreeMap<String, (u8, u8)>,
    /// Last polling interval seen per session.
    intervals: BTreeMap<String, u64>,
    ended: BTreeSet<String>,
    /// Upper bound of tasks that may outlive their request (detached
    /// writes, logins, callbacks).
    detach_budget: usize,
    /// Verifiers seen in provider calls.
    verifiers: BTreeSet<String>,
    http_seen: usize,
    audit_seen: usize,
    sent_seen: BTreeMap<ConnId, usize>,
    counter: u64,
}

fn key_payload(k: KeySel) -> Value {
    let mut p = json!({"provider": PROVIDERS[usize::from(k.provider) % PROVIDERS.len()]});
    if let Some(b) = BUCKETS[usize::from(k.bucket) % BUCKETS.len()] {
        p["bucket"] = json!(b);
    }
    p
}

fn id_value(id: u8) -> Value {
    let n = id & 7;
    if id & 8 == 0 {
        json!(n.to_string())
    } else {
        json!(n)
    }
}

/// Junk bytes, with `S` lowered so junk can never spell a secret marker.
fn junk(len: u8, bytes: [u8; 8]) -> Vec<u8> {
    bytes[..usize::from(len) % 9]
        .iter()
        .map(|&b| if b == b'S' { b's' } else { b })
        .collect()
}

impl World {
    fn new(setup: Setup) -> World {
        let mut h = Harness::with_config(engine_config(setup), SEED);
        h.auto_effects = false;
        seed_store(&mut h);
        World {
            h,
            clients: Vec::new(),
            sessions: Vec::new(),
            seen: BTreeMap::new(),
            intervals: BTreeMap::new(),
            ended: BTreeSet::new(),
            detach_budget: 0,
            verifiers: BTreeSet::new(),
            http_seen: 0,
            audit_seen: 0,
            sent_seen: BTreeMap::new(),
            counter: 0,
        }
    }

    fn limits(&self) -> &Limits {
        &self.h.engine.config().limits
    }

    fn sandbox(&self) -> bool {
        self.h.engine.config().capability_token.is_some()
    }

    fn client(&self, conn: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(conn) % self.clients.len())
    }

    fn session(&self, i: u8) -> (String, String) {
        let i = usize::from(i) % (self.sessions.len() + 1);
        self.sessions
            .get(i)
            .cloned()
            .unwrap_or_else(|| ("no-such-session".into(), "no-state".into()))
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn apply(&mut self, op: &EngineOp) {
        match *op {
            EngineOp::Configure(_) => {}
            EngineOp::Open { peer, hello } => self.open(peer, hello),
            EngineOp::Request { conn, id, req, cut } => {
                if let Some(ci) = self.client(conn) {
                    let value = self.request_value(id, req);
                    self.write_json(ci, &value);
                    self.deliver(ci, cut);
                }
            }
            EngineOp::Flush { conn, cut } => {
                if let Some(ci) = self.client(conn) {
                    self.deliver(ci, cut);
                }
            }
            EngineOp::Raw { conn, raw, cut } => {
                if let Some(ci) = self.client(conn) {
                    self.write_raw(ci, raw);
                    self.deliver(ci, cut);
                }
            }
            EngineOp::Gone { conn } => {
                if let Some(ci) = self.client(conn) {
                    let c = self.clients[ci].conn;
                    self.h.engine.handle_connection_gone(c, self.h.now);
                    self.h.drain();
                    self.mark_closed(ci);
                }
            }
            EngineOp::HalfClose { conn } => {
                if let Some(ci) = self.client(conn) {
                    let c = self.clients[ci].conn;
                    self.clients[ci].read_closed = true;
                    self.h.engine.handle_read_closed(c, self.h.now);
                    self.h.drain();
                }
            }
            EngineOp::Pause { conn } => {
                if let Some(ci) = self.client(conn) {
                    let c = self.clients[ci].conn;
                    self.h.engine.handle_pause_reading(c, self.h.now);
                    self.h.drain();
                }
            }
            EngineOp::Resume { conn } => {
                if let Some(ci) = self.client(conn) {
                    let c = self.clients[ci].conn;
                    self.h.engine.handle_resume_reading(c, self.h.now);
                    self.h.drain();
                }
            }
            EngineOp::Complete { index, how } => self.complete(index, how),
            EngineOp::CompleteAll => self.h.complete_all(),
            EngineOp::Respond { index, answer } => self.respond(index, answer),
            EngineOp::Store(m) => {
                self.h.store.fail_writes = m.fail_writes;
                self.h.store.fail_all = m.fail_all;
                let key = ("anthropic".to_owned(), "default".to_owned());
                if m.foreign_lock {
                    self.h.store.foreign_locks.insert(key.clone());
                } else {
                    self.h.store.foreign_locks.remove(&key);
                }
                if m.unusable {
                    self.h.store.unusable.insert(key);
                } else {
                    self.h.store.unusable.remove(&key);
                }
            }
            EngineOp::AutoEffects(on) => self.h.auto_effects = on,
            EngineOp::FailListen(on) => self.h.fail_listen = on,
            EngineOp::Loopback { session, kind } => self.loopback(session, kind),
            EngineOp::Tick(t) => self.tick(t),
            EngineOp::Plant {
                key,
                expiry,
                refresh,
            } => self.plant(key, expiry, refresh),
        }
    }

    fn open(&mut self, peer: u8, hello: Hello) {
        let p = Peer {
            uid: match peer % 4 {
                0 => None,
                n => Some(1000 + u32::from(n)),
            },
            gid: None,
            pid: None,
            transport: [Transport::Unix, Transport::Stdio, Transport::Embedded]
                [usize::from(peer / 4) % 3],
        };
        let Some(conn) = self.h.open_peer(p) else {
            return;
        };
        self.clients.push(Client::new(conn));
        let ci = self.clients.len() - 1;
        let token = |v: &mut Value| {
            if self.sandbox() {
                v["payload"]["capabilityToken"] = json!(CAP_TOKEN);
            }
        };
        let mut value = match hello {
            Hello::Good | Hello::Late => {
                json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}})
            }
            Hello::V1 => json!({"v":1,"op":"handshake","payload":{}}),
            Hello::Range { min, max } => {
                json!({"v":2,"op":"handshake","payload":{"minVersion":min,"maxVersion":max}})
            }
            Hello::NoToken => json!({"v":2,"op":"handshake","payload":{}}),
            Hello::WrongToken => {
                json!({"v":2,"op":"handshake","payload":{"capabilityToken":"not-the-token"}})
            }
            Hello::NotHandshake => {
                json!({"v":2,"id":"0","op":"get_token","payload":{"provider":"anthropic"}})
            }
        };
        if !matches!(hello, Hello::NoToken | Hello::WrongToken) {
            token(&mut value);
        }
        self.write_json(ci, &value);
        let cut = if hello == Hello::Late {
            Cut::Hold
        } else {
            Cut::All
        };
        self.deliver(ci, cut);
    }

    fn request_value(&mut self, id: u8, req: Req) -> Value {
        let rq =
            |op: &str, payload: Value| json!({"v":2,"id":id_value(id),"op":op,"payload":payload});
        match req {
            Req::GetToken(k) => rq("get_token", key_payload(k)),
            Req::SaveToken(k, t) => {
                let n = self.next();
                let expiry = START_UNIX_MS / 1000 + 3600;
                let token = match t {
                    TokenSel::Valid => {
                        json!({"access_token":format!("AT-saved-{n}"),"expiry":expiry,"token_type":"Bearer"})
                    }
                    TokenSel::Expired => {
                        json!({"access_token":format!("AT-saved-{n}"),"expiry":1,"token_type":"Bearer"})
                    }
                    TokenSel::WithRefresh => {
                        json!({"access_token":format!("AT-saved-{n}"),"expiry":expiry,"token_type":"bearer","refresh_token":format!("SECRET-RT-client-{n}")})
                    }
                    TokenSel::Invalid => json!({"expiry":"soon"}),
                    TokenSel::OddExpiry(i) => {
                        json!({"access_token":format!("AT-saved-{n}"),"expiry":odd_number(i),"token_type":"Bearer"})
                    }
                };
                let mut p = key_payload(k);
                p["token"] = token;
                rq("save_token", p)
            }
            Req::RemoveToken(k) => rq("remove_token", key_payload(k)),
            Req::ListProviders => rq("list_providers", json!({})),
            Req::ListBuckets(k) => rq("list_buckets", key_payload(k)),
            Req::BucketStats(k) => rq("get_bucket_stats", key_payload(k)),
            Req::GetApiKey(n) => rq(
                "get_api_key",
                json!({"name": KEY_NAMES[usize::from(n) % KEY_NAMES.len()]}),
            ),
            Req::ListApiKeys => rq("list_api_keys", json!({})),
            Req::HasApiKey(n) => rq(
                "has_api_key",
                json!({"name": KEY_NAMES[usize::from(n) % KEY_NAMES.len()]}),
            ),
            Req::Cancel(t) => rq("cancel", json!({"targetId": id_value(t)})),
            Req::Initiate(k) => rq("oauth_initiate", key_payload(k)),
            Req::Exchange { session, code } => {
                let (sid, state) = self.session(session);
                let n = self.next();
                let redirect = format!("http://localhost:{CODEX_PORT}/auth/callback");
                let code = match code {
                    Code::HashState => format!("AC-{n}#{state}"),
                    Code::Plain => format!("AC-{n}"),
                    Code::Redirect => format!("{redirect}?code=AC-{n}&state={state}"),
                    Code::Forged => format!("AC-{n}#forged-state"),
                    Code::ErrorUrl => format!("{redirect}?error=access_denied&state={state}"),
                    Code::Empty => String::new(),
                };
                rq("oauth_exchange", json!({"session_id": sid, "code": code}))
            }
            Req::Poll(s) => rq("oauth_poll", json!({"session_id": self.session(s).0})),
            Req::OauthCancel(s) => rq("oauth_cancel", json!({"session_id": self.session(s).0})),
            Req::Refresh(k) => rq("refresh_token", key_payload(k)),
            Req::Unknown => rq("bogus_op", json!({})),
            Req::Handshake => rq("handshake", json!({"minVersion":1,"maxVersion":2})),
            Req::MissingId => json!({"v":2,"op":"get_token","payload":{"provider":"anthropic"}}),
            Req::MissingOp => json!({"v":2,"id":id_value(id),"payload":{}}),
            Req::PayloadNotObject => rq("get_token", json!([1, 2])),
            Req::BadFields => rq(
                "save_token",
                json!({"provider": 7, "bucket": [], "token": "x"}),
            ),
            Req::LongField(n) => rq(
                "get_api_key",
                json!({"name": "K".repeat(16 * usize::from(n))}),
            ),
        }
    }

    fn write_json(&mut self, ci: usize, value: &Value) {
        let bytes = frame::encode(value);
        let what = if bytes.len() - HEADER_LEN > self.limits().max_frame_bytes {
            // Whether the id is seen depends on how the bytes are cut into
            // reads, so the model allows (not demands) the one answer.
            Written::Oversize {
                key: value.get("id").and_then(payload::id_string),
            }
        } else {
            let key = value
                .get("id")
                .and_then(payload::id_string)
                .unwrap_or_else(|| "unknown".into());
            let op = value
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            Written::Json { key, op }
        };
        self.clients[ci].write(&bytes, what);
    }

    fn write_raw(&mut self, ci: usize, raw: RawFrame) {
        let limit = self.limits().max_frame_bytes;
        let (bytes, what) = match raw {
            RawFrame::Junk { len, bytes } => (junk(len, bytes), Written::Opaque),
            RawFrame::Oversize(n) => {
                let len = match n % 4 {
                    0 => limit as u64 + 1,
                    1 => u64::from(u32::MAX),
                    2 => 0x8000_0000,
                    _ => limit as u64 * 2 + u64::from(n),
                };
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                let mut b = len.to_be_bytes().to_vec();
                b.extend_from_slice(b"{\"v\":2}");
                (b, Written::Bad)
            }
            RawFrame::Empty => (frame::encode_payload(b""), Written::Bad),
            RawFrame::InvalidJson => (frame::encode_payload(b"{nope"), Written::Bad),
            RawFrame::NotObject(n) => {
                let p: &[u8] = [&b"[1,2]"[..], b"null", b"\"s\"", b"7"][usize::from(n) % 4];
                (frame::encode_payload(p), Written::Bad)
            }
            RawFrame::BadUtf8 => (frame::encode_payload(b"{\"a\":\"\xff\xfe\"}"), Written::Bad),
            RawFrame::Trailing => (frame::encode_payload(b"{} {}"), Written::Bad),
        };
        self.clients[ci].write(&bytes, what);
    }

    /// Delivers unsent bytes of client `ci`, registering each frame that
    /// completes with the model before the engine sees it.
    fn deliver(&mut self, ci: usize, cut: Cut) {
        let pending = self.clients[ci].outbox.len();
        let (n, per_read) = match cut {
            Cut::All => (pending, pending.max(1)),
            Cut::Part(n) => (usize::from(n).min(pending), usize::from(n).max(1)),
            Cut::Hold => return,
            Cut::Trickle(n) => ((usize::from(n) + 1).min(pending), 1),
        };
        let mut budget = 0;
        let c = &mut self.clients[ci];
        let conn = c.conn;
        let bytes: Vec<u8> = c.outbox.drain(..n).collect();
        // A frame is delivered once its last byte is; an oversize one as
        // soon as its header is, since the engine answers and closes then
        // without waiting for (or reading) the body.
        let mut done = 0;
        let mut start = 0;
        for (end, what) in &c.frames {
            let seen =
                *end <= n || (matches!(what, Written::Oversize { .. }) && start + HEADER_LEN <= n);
            if !seen {
                break;
            }
            done += 1;
            start = *end;
        }
        let delivered: Vec<Written> = c.frames.drain(..done).map(|(_, w)| w).collect();
        for (end, _) in &mut c.frames {
            *end -= n;
        }
        let live = !c.closed && !c.read_closed;
        if live && !c.tainted {
            for w in delivered {
                match w {
                    Written::Opaque => c.tainted = true,
                    Written::Bad => c.expect_close = true,
                    Written::Oversize { key } => {
                        c.expect_close = true;
                        c.oversize_key = key.filter(|_| matches!(c.hs, Hs::Sent | Hs::Open));
                    }
                    Written::Json { key, op } => match c.hs {
                        Hs::NotSent => c.hs = Hs::Sent,
                        Hs::Sent | Hs::Open => {
                            *c.owed.entry(key).or_default() += 1;
                            if matches!(
                                op.as_str(),
                                "cancel" | "oauth_cancel" | "oauth_initiate" | "oauth_exchange"
                            ) {
                                budget += 1;
                            }
                        }
                        Hs::Rejected => {}
                    },
                }
                if c.tainted || c.expect_close {
                    break;
                }
            }
        }
        self.detach_budget += budget;
        if bytes.is_empty() {
            self.h.send(conn, &[]);
        }
        for chunk in bytes.chunks(per_read) {
            self.h.send(conn, chunk);
        }
    }

    fn mark_closed(&mut self, ci: usize) {
        let c = &mut self.clients[ci];
        if c.closed {
            return;
        }
        c.closed = true;
        c.closed_len = self.h.sent.get(&c.conn).map_or(0, Vec::len);
        self.detach_budget += self.h.engine.config().limits.max_in_flight;
    }

    fn complete(&mut self, index: u8, how: Completion) {
        if self.h.held.is_empty() {
            return;
        }
        let i = usize::from(index) % self.h.held.len();
        let Some((id, effect)) = self.h.held.remove(i) else {
            return;
        };
        let result = match how {
            Completion::Store => self.h.store.execute(&effect),
            Completion::Failed => EffectResult::Failed,
            Completion::Missing => match effect {
                Effect::TokenGet { .. } => EffectResult::Token(None),
                Effect::ApiKeyGet { .. } => EffectResult::ApiKey(None),
                Effect::ApiKeyHas { .. } => EffectResult::Exists(false),
                Effect::ListProviders | Effect::ListBuckets { .. } | Effect::ApiKeyList => {
                    EffectResult::Names(Vec::new())
                }
                _ => self.h.store.execute(&effect),
            },
            Completion::Busy => match effect {
                Effect::LockAcquire { .. } => EffectResult::Locked(false),
                _ => self.h.store.execute(&effect),
            },
            Completion::WrongKind(k) => match k % 8 {
                0 => EffectResult::Done,
                1 => EffectResult::Exists(true),
                2 => EffectResult::Names(vec!["x".into()]),
                3 => EffectResult::Token(None),
                4 => EffectResult::Locked(true),
                5 => EffectResult::Meta {
                    refresh_unusable: true,
                },
                6 => EffectResult::Listening(true),
                _ => EffectResult::Http(HttpOutcome::Failed(TransportError::Other)),
            },
        };
        self.h.engine.handle_effect_result(id, result, self.h.now);
        self.h.drain();
    }

    fn respond(&mut self, index: u8, answer: HttpAnswer) {
        if self.h.http_pending.is_empty() {
            return;
        }
        let i = usize::from(index) % self.h.http_pending.len();
        let Some((id, request)) = self.h.http_pending.remove(i) else {
            return;
        };
        let n = self.next();
        let outcome = match answer {
            HttpAnswer::Success(ttl) => HttpOutcome::Response {
                status: 200,
                body: success_body(&request.url, n, ttl).to_string().into_bytes(),
            },
            HttpAnswer::NoRefresh => response(
                200,
                &json!({"access_token": format!("AT-p{n}"), "expires_in": 3600}),
            ),
            HttpAnswer::OauthError(e) => {
                let errors = [
                    "authorization_pending",
                    "slow_down",
                    "access_denied",
                    "expired_token",
                    "invalid_grant",
                    "invalid_client",
                    "Not A Safe Code!",
                    "pending",
                ];
                response(
                    400,
                    &json!({"error": errors[usize::from(e) % errors.len()], "error_description": "SECRET-upstream-detail"}),
                )
            }
            HttpAnswer::Status(s) => {
                let statuses = [401, 403, 404, 429, 500, 503];
                response(statuses[usize::from(s) % statuses.len()], &json!({}))
            }
            HttpAnswer::Transport(e) => HttpOutcome::Failed(
                [
                    TransportError::Timeout,
                    TransportError::Connect,
                    TransportError::Tls,
                    TransportError::Other,
                ][usize::from(e) % 4],
            ),
            HttpAnswer::NotJson => HttpOutcome::Response {
                status: 200,
                body: b"<html>SECRET-not-json</html>".to_vec(),
            },
            HttpAnswer::NotObject => response(200, &json!(["SECRET-array"])),
            HttpAnswer::Odd { field, value } => {
                let mut body = success_body(&request.url, n, 2);
                let odd = odd_number(value);
                if field % 3 != 1 {
                    body["expires_in"] = odd.clone();
                }
                if field % 3 != 0 {
                    body["interval"] = odd;
                }
                response(200, &body)
            }
        };
        self.h
            .engine
            .handle_effect_result(id, EffectResult::Http(outcome), self.h.now);
        self.h.drain();
    }

    fn plant(&mut self, key: KeySel, expiry: u8, refresh: bool) {
        let p = PROVIDERS[usize::from(key.provider) % 5];
        let b = BUCKETS[usize::from(key.bucket) % 3].unwrap_or("default");
        let now_s = self.h.now.unix_ms / 1000;
        let expiry = match expiry % 4 {
            0 => json!(now_s + 90),
            1 => json!(now_s.saturating_sub(90)),
            _ => odd_number(expiry / 4),
        };
        let n = self.next();
        let mut t = json!({"access_token": format!("AT-planted-{n}"), "expiry": expiry, "token_type": "Bearer"});
        if refresh {
            t["refresh_token"] = json!(format!("SECRET-RT-planted-{n}"));
        }
        self.h.store.put_token(p, b, t);
    }

    fn loopback(&mut self, session: u8, kind: Callback) {
        let (_, state) = self.session(session);
        let n = self.next();
        let (port, target) = match kind {
            Callback::Code => (
                CODEX_PORT,
                format!("/auth/callback?code=AC-{n}&state={state}"),
            ),
            Callback::Error => (
                CODEX_PORT,
                format!("/auth/callback?error=access_denied&state={state}"),
            ),
            Callback::NoCode => (CODEX_PORT, format!("/auth/callback?state={state}")),
            Callback::WrongState => (
                CODEX_PORT,
                format!("/auth/callback?code=AC-{n}&state=forged"),
            ),
            Callback::WrongPath => (CODEX_PORT, format!("/elsewhere?code=AC-{n}&state={state}")),
            Callback::OtherPort => (
                CODEX_PORT + 1,
                format!("/auth/callback?code=AC-{n}&state={state}"),
            ),
            Callback::Junk(b) => (
                CODEX_PORT,
                format!("/auth/callback?{}", String::from_utf8_lossy(&junk(8, b))),
            ),
        };
        self.detach_budget += 1;
        let (status, _) = self.h.loopback(port, &target);
        assert!(
            matches!(status, 200 | 400),
            "loopback answered with status {status}"
        );
    }

    fn tick(&mut self, t: Tick) {
        match t {
            Tick::Ms(ms) => self.h.advance(u64::from(ms)),
            Tick::Secs(s) => self.h.advance(u64::from(s) * 1000),
            Tick::Minutes(m) => self.h.advance(u64::from(m % 64) * 60_000),
            Tick::Next => {
                self.h.advance_to_next(u64::MAX);
            }
            Tick::Repeat => {
                self.h.engine.handle_timeout(self.h.now);
                self.h.drain();
            }
            Tick::Back(ms) => {
                let ms = u64::from(ms);
                self.h.now = Now::new(
                    self.h.now.mono.0.saturating_sub(ms),
                    self.h.now.unix_ms.saturating_sub(ms),
                );
                self.h.engine.handle_timeout(self.h.now);
                self.h.drain();
            }
            Tick::Wall(s) => {
                let delta = i64::from(s) * 1000;
                let unix = self.h.now.unix_ms.saturating_add_signed(delta);
                self.h.now = Now::new(self.h.now.mono.0, unix);
                self.h.engine.handle_timeout(self.h.now);
                self.h.drain();
            }
        }
    }

    // -- invariants --------------------------------------------------------

    /// Reads every reply, updates the model and checks every invariant.
    fn check(&mut self) {
        let mut replies_seen = Vec::new();
        for ci in 0..self.clients.len() {
            let conn = self.clients[ci].conn;
            let replies = self.h.take_replies(conn);
            let len = self.h.sent.get(&conn).map_or(0, Vec::len);
            let engine_closed = self.h.is_closed(conn);
            let c = &mut self.clients[ci];
            if c.closed {
                assert_eq!(len, c.closed_len, "bytes sent to a closed connection");
                continue;
            }
            if !c.tainted {
                for r in &replies {
                    c.on_reply(r);
                }
            }
            replies_seen.extend(replies);
            if !engine_closed {
                assert!(
                    !c.expect_close || c.tainted,
                    "a frame that cannot decode left the connection open"
                );
                assert!(
                    c.hs != Hs::Rejected,
                    "a refused handshake left the connection open"
                );
                continue;
            }
            if c.read_closed && !c.tainted && c.hs == Hs::Open {
                assert_eq!(
                    c.owed_total(),
                    0,
                    "a half-closed connection closed with requests unanswered: {:?}",
                    c.owed
                );
            }
            self.mark_closed(ci);
        }
        for r in &replies_seen {
            self.remember_session(r);
        }
        self.check_sessions();
        self.check_bounds();
        self.check_refresh_calls();
        self.check_secrets();
    }

    fn remember_session(&mut self, r: &Value) {
        let Some(sid) = r["data"]["session_id"].as_str() else {
            return;
        };
        if self.sessions.iter().any(|(s, _)| s == sid) {
            return;
        }
        let state = r["data"]["auth_url"]
            .as_str()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "state")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        if self.sessions.len() < 16 {
            self.sessions.push((sid.to_owned(), state));
        }
    }

    fn check_sessions(&mut self) {
        let live: BTreeMap<String, (u8, u8)> = self
            .h
            .engine
            .session_states()
            .map(|(id, s)| {
                let v = match s {
                    SessionState::Initiated(step) => (0, step.attempts()),
                    SessionState::Complete(_) => (1, u8::MAX),
                    SessionState::Used => (2, u8::MAX),
                };
                (id.to_owned(), v)
            })
            .collect();
        for (id, state) in self.h.engine.session_states() {
            if let SessionState::Initiated(Step::Polling { interval_ms, .. }) = state {
                let prev = self.intervals.insert(id.to_owned(), *interval_ms);
                assert!(
                    prev.is_none_or(|p| *interval_ms >= p),
                    "session {id}: polling interval lowered from {prev:?} to {interval_ms}"
                );
            }
        }
        for (id, (rank, attempts)) in &live {
            assert!(!self.ended.contains(id), "ended session {id} came back");
            if let Some((r0, a0)) = self.seen.get(id) {
                assert!(rank >= r0, "session {id} moved backwards");
                if *rank == 0 && *r0 == 0 {
                    assert!(attempts >= a0, "session {id}: attempts decreased");
                }
            }
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|id| !live.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.seen.remove(&id);
            self.ended.insert(id);
        }
        for (id, v) in live {
            let e = self.seen.entry(id).or_insert(v);
            *e = (*e).max(v);
        }
    }

    fn check_bounds(&self) {
        let e = &self.h.engine;
        let l = self.limits();
        assert!(
            e.connection_count() <= l.max_sockets()
                && e.connection_count() - e.pending_handshakes() <= l.max_connections
                && e.pending_handshakes() <= l.max_pending_handshakes,
            "connection limits"
        );
        assert!(e.session_count() <= l.sessions_total, "session limit");
        let bound = e.connection_count() * l.max_in_flight
            + self.detach_budget
            + 2 * e.session_count()
            + 2 * KEY_SPACE
            + 4;
        assert!(
            e.pending_tasks() <= bound,
            "{} tasks pending, bound {bound}",
            e.pending_tasks()
        );
    }

    /// One refresh job per key: no two provider calls in flight carry the
    /// same refresh token (every seeded and issued refresh token is unique).
    fn check_refresh_calls(&self) {
        let mut seen = BTreeSet::new();
        for (_, request) in &self.h.http_pending {
            let Some(body) = &request.body else { continue };
            let body = body.expose();
            let mut rt: Option<String> = url::form_urlencoded::parse(body.as_bytes())
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v.into_owned());
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(body)
                && let Some(v) = m.get("refresh_token").and_then(Value::as_str)
            {
                rt = Some(v.to_owned());
            }
            if let Some(rt) = rt {
                assert!(seen.insert(rt), "two refresh calls for one key in flight");
            }
        }
    }

    /// Scans what was sent and audited since the last step for a secret
    /// marker or a verifier used in a provider call.
    fn check_secrets(&mut self) {
        let mut fresh = Vec::new();
        for request in &self.h.http_log[self.http_seen..] {
            let Some(body) = &request.body else { continue };
            let body = body.expose();
            for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
                if k == "code_verifier" {
                    fresh.push(v.into_owned());
                }
            }
            if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(body)
                && let Some(v) = m.get("code_verifier").and_then(Value::as_str)
            {
                fresh.push(v.to_owned());
            }
        }
        self.http_seen = self.h.http_log.len();
        let mut new_verifier = false;
        for v in fresh {
            if v.len() >= 8 && self.verifiers.insert(v) {
                new_verifier = true;
            }
        }
        if new_verifier {
            let all = self.h.observable_text();
            for v in &self.verifiers {
                assert!(!all.contains(v.as_str()), "a PKCE verifier left the host");
            }
        }
        let mut text = String::new();
        for (conn, bytes) in &self.h.sent {
            let from = self.sent_seen.get(conn).copied().unwrap_or(0);
            text.push_str(&String::from_utf8_lossy(&bytes[from..]));
            self.sent_seen.insert(*conn, bytes.len());
        }
        for ev in &self.h.audit[self.audit_seen..] {
            text.push_str(&serde_json::to_string(ev).unwrap_or_default());
            text.push_str(&format!("{ev:?}"));
        }
        self.audit_seen = self.h.audit.len();
        assert_no_marker(&text);
        for v in &self.verifiers {
            assert!(!text.contains(v.as_str()), "a PKCE verifier left the host");
        }
    }

    /// Completes everything, refusing provider calls, and runs the clock
    /// until nothing is left; then nothing may be owed to an open client.
    fn settle(&mut self) {
        self.h.store.fail_all = false;
        self.h.store.fail_writes = false;
        self.h.store.foreign_locks.clear();
        self.h.auto_effects = true;
        let mut quiet = false;
        for _ in 0..512 {
            while let Some((id, effect)) = self.h.held.pop_front() {
                let result = self.h.store.execute(&effect);
                self.h.engine.handle_effect_result(id, result, self.h.now);
                self.h.drain();
            }
            while let Some((id, _)) = self.h.http_pending.pop_front() {
                let outcome = response(400, &json!({"error": "access_denied"}));
                self.h
                    .engine
                    .handle_effect_result(id, EffectResult::Http(outcome), self.h.now);
                self.h.drain();
            }
            self.check();
            if !self.h.held.is_empty() || !self.h.http_pending.is_empty() {
                continue;
            }
            if self.h.engine.poll_timeout().is_none() {
                quiet = true;
                break;
            }
            self.h.advance_to_next(u64::MAX);
            self.check();
        }
        for c in &self.clients {
            if c.closed || c.tainted {
                continue;
            }
            if c.hs == Hs::Open {
                assert_eq!(
                    c.owed_total(),
                    0,
                    "requests never answered on {:?}: {:?}",
                    c.conn,
                    c.owed
                );
            }
            if quiet && c.hs == Hs::NotSent {
                panic!("{:?} never handshook and was never closed", c.conn);
            }
        }
        if quiet {
            assert_eq!(
                self.h.engine.pending_tasks(),
                0,
                "tasks left with no effect, timer or input to wake them"
            );
        }
    }
}

/// Numbers (and non-numbers) a provider or another process might write
/// where a lifetime, interval or expiry belongs.
fn odd_number(i: u8) -> Value {
    let values = [
        json!(-1),
        json!(0),
        json!(1e30),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(3.7),
        json!(" 42 "),
        json!("1e400"),
        Value::Null,
        json!("x"),
        json!(1e-300),
        json!(f64::MAX),
        json!(-1e308),
        json!(18_446_744_073_709_551.0),
        json!(true),
        json!([1]),
        json!("-5"),
        json!(4_000_000_000_u64),
        json!(0.0005),
    ];
    values[usize::from(i) % values.len()].clone()
}

fn response(status: u16, body: &Value) -> HttpOutcome {
    HttpOutcome::Response {
        status,
        body: body.to_string().into_bytes(),
    }
}

/// What a provider endpoint returns on success, by URL.
fn success_body(url: &str, n: u64, ttl: u8) -> Value {
    if url.ends_with("/.well-known/openid-configuration") {
        return json!({
            "issuer": CORP_ISSUER,
            "token_endpoint": format!("{CORP_ISSUER}/token"),
            "device_authorization_endpoint": format!("{CORP_ISSUER}/device"),
            "authorization_endpoint": format!("{CORP_ISSUER}/authorize"),
        });
    }
    if url.ends_with("/device/code") || url.ends_with("/device") {
        return json!({
            "device_code": format!("SECRET-DEV-{n}"),
            "user_code": format!("UC-{n}"),
            "verification_uri": "https://login.example/activate",
            "expires_in": 900,
            "interval": 1,
        });
    }
    if url.ends_with("deviceauth/usercode") {
        return json!({"device_auth_id": format!("SECRET-DEV-{n}"), "user_code": format!("UC-{n}"), "interval": "1"});
    }
    if url.ends_with("deviceauth/token") {
        return json!({
            "authorization_code": format!("AC-{n}"),
            "code_verifier": format!("SECRET-VER-{n}"),
            "code_challenge": "x",
        });
    }
    let expires_in = match ttl % 4 {
        0 => json!(60),
        1 => json!(400),
        2 => json!(3600),
        _ => json!("7200"),
    };
    let mut body = json!({
        "access_token": format!("AT-p{n}"),
        "refresh_token": format!("SECRET-RT-p{n}"),
        "expires_in": expires_in,
        "token_type": "bearer",
    });
    // Codex reads the account id from the id_token's claims.
    let claims = r#"{"https://api.openai.com/auth":{"chatgpt_account_id":"acct-1"}}"#;
    let id_token = match (ttl / 4) % 5 {
        0 => None,
        1 => Some(format!("h.{}.s", base64url(claims.as_bytes()))),
        2 => Some("a.b.c".to_owned()),
        3 => Some(format!("h.{}.s", base64url(b"[1,2]"))),
        _ => Some("..".to_owned()),
    };
    if let Some(t) = id_token {
        body["id_token"] = json!(t);
    }
    body
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Drives the whole engine with `ops` (at most [`MAX_OPS`]), checking after
/// every step:
///
/// - no panic, and every byte sent to a client decodes as frames;
/// - exactly one reply per accepted request: each reply answers an id the
///   client has in flight (a client-side multiset, as in the property
///   tests' `Model`), the first reply of a connection is its handshake
///   reply, nothing is sent after a close, a frame that cannot decode and a
///   refused handshake close the connection, and a half-closed connection
///   closes only once everything was answered;
/// - no refresh token, device code, server verifier, capability token
///   (`SECRET-…` sentinels) or PKCE verifier (collected from the provider
///   calls) in any byte sent to a client or any audit event;
/// - bounded buffers: connections and sessions within their limits, pending
///   tasks within open connections × in-flight cap plus detached work,
///   sessions and per-key background jobs;
/// - sessions never move backwards and an ended session never returns.
///
/// At the end every held effect is completed, every provider call refused
/// and the clock run until no deadline is left: then nothing is owed to an
/// open connection, every connection that never handshook is closed, and no
/// task is left.
pub fn fuzz_engine(ops: &[EngineOp]) {
    let ops = &ops[..ops.len().min(MAX_OPS)];
    let setup = match ops.first() {
        Some(EngineOp::Configure(s)) => *s,
        _ => Setup::default(),
    };
    let mut world = World::new(setup);
    for op in ops {
        world.apply(op);
        world.check();
    }
    world.settle();
}
