//! The typed input of the engine target: what a sequence of [`EngineOp`]s
//! can do to the engine, and how libFuzzer's bytes decode into one (the
//! derived `Arbitrary` format, which the checked-in corpora are written in:
//! changing a type here changes what every corpus file means).

use arbitrary::{Arbitrary, Unstructured};

/// One input to the engine in [`fuzz_engine`](super::fuzz_engine).
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
    /// `EffectResult::Conflict`: a compare-and-set write refused because
    /// another process wrote the key (for a read: a wrong kind).
    Conflict,
    /// `EffectResult::Unavailable` with this many milliseconds to wait.
    Unavailable(u16),
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
    /// The store cannot be reached: every store effect answers
    /// `Unavailable`.
    pub unavailable: bool,
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
