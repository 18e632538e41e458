//! Replays every checked-in fuzz corpus and regression file through the
//! fuzz target bodies (`credproxy_core::fuzzing`), on stable and without
//! libFuzzer, so `cargo test` keeps every input the fuzzers ever found
//! interesting passing. Typed inputs are decoded exactly as libfuzzer-sys
//! decodes them (`arbitrary_take_rest`).
//!
//! The seed corpora are written by the ignored test at the bottom:
//! `cargo test -p credproxy-core --test it -- --ignored fuzz_corpus::write_seed_corpora`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use credproxy_core::frame;
use credproxy_core::fuzzing::{
    self, Callback, Code, Completion, Cut, EngineOp, Hello, HttpAnswer, KeySel, RawFrame, Req,
    Setup, StoreMode, Tick, TokenSel,
};
use serde_json::{Value, json};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `body` on every input of `target`, reporting every failing file.
fn replay(target: &str, body: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    let mut failed = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).expect("readable corpus file");
        if catch_unwind(AssertUnwindSafe(|| body(&bytes))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "failing inputs of {target}: {failed:#?}");
}

#[test]
fn frame_decoder_corpus_replays() {
    replay("frame_decoder", fuzzing::fuzz_frame_decoder);
}

#[test]
fn handshake_corpus_replays() {
    replay("handshake", fuzzing::fuzz_handshake_and_request);
}

#[test]
fn request_corpus_replays() {
    replay("request", fuzzing::fuzz_request);
}

#[test]
fn engine_corpus_replays() {
    replay("engine", fuzzing::fuzz_engine_bytes);
}

/// 300 pseudo-random inputs per target: a cheap stable smoke of
/// the bodies beyond the corpora (xorshift, fixed seed).
#[test]
fn random_inputs_smoke() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let len = (next() % 600) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        fuzzing::fuzz_frame_decoder(&bytes);
        if round % 3 == 0 {
            fuzzing::fuzz_handshake_and_request(&bytes);
        }
        fuzzing::fuzz_request(&bytes);
        fuzzing::fuzz_engine_bytes(&bytes);
    }
}

/// The seed encoder is the exact inverse of the derived decoder, for every
/// variant (so hand-written seeds mean what they say).
#[test]
fn engine_op_encoding_round_trips() {
    let ops = every_variant();
    let bytes = fuzzing::encode_engine_ops(&ops);
    assert_eq!(fuzzing::decode_engine_ops(&bytes), Some(ops));
    for seed in engine_seeds().into_iter().chain(engine_regressions()) {
        let bytes = fuzzing::encode_engine_ops(&seed.1);
        assert_eq!(fuzzing::decode_engine_ops(&bytes).as_ref(), Some(&seed.1));
    }
}

// ---------------------------------------------------------------------------
// Seed corpora
// ---------------------------------------------------------------------------

/// A key by provider and bucket index (see `KeySel`).
const fn key(provider: u8, bucket: u8) -> KeySel {
    KeySel { provider, bucket }
}

const K_ANTHROPIC: KeySel = key(0, 0);
const K_GEMINI: KeySel = key(1, 0);
const K_QWEN: KeySel = key(2, 0);
const K_QWEN_WORK: KeySel = key(2, 2);
const K_CODEX: KeySel = key(3, 1);
const K_CORP: KeySel = key(4, 0);
const K_UNKNOWN: KeySel = key(5, 0);
const K_INVALID: KeySel = key(6, 3);

fn every_variant() -> Vec<EngineOp> {
    use EngineOp as E;
    let k = K_ANTHROPIC;
    let mut ops = vec![
        E::Configure(Setup {
            sandbox: true,
            strict: false,
            allow_lists: true,
            small_limits: true,
            codex_device: true,
        }),
        E::Flush {
            conn: 1,
            cut: Cut::Trickle(3),
        },
        E::Gone { conn: 2 },
        E::HalfClose { conn: 3 },
        E::Pause { conn: 4 },
        E::Resume { conn: 5 },
        E::CompleteAll,
        E::Store(StoreMode {
            fail_writes: true,
            fail_all: false,
            foreign_lock: true,
            unusable: false,
            unavailable: false,
        }),
        E::AutoEffects(true),
        E::FailListen(true),
    ];
    for hello in [
        Hello::Good,
        Hello::V1,
        Hello::Range { min: -3, max: 9 },
        Hello::NoToken,
        Hello::WrongToken,
        Hello::NotHandshake,
        Hello::Late,
    ] {
        ops.push(E::Open { peer: 7, hello });
    }
    let reqs = [
        Req::GetToken(k),
        Req::SaveToken(k, TokenSel::Valid),
        Req::SaveToken(k, TokenSel::Expired),
        Req::SaveToken(k, TokenSel::WithRefresh),
        Req::SaveToken(k, TokenSel::Invalid),
        Req::SaveToken(k, TokenSel::OddExpiry(7)),
        Req::RemoveToken(k),
        Req::ListProviders,
        Req::ListBuckets(k),
        Req::BucketStats(k),
        Req::GetApiKey(1),
        Req::ListApiKeys,
        Req::HasApiKey(2),
        Req::Cancel(3),
        Req::Initiate(k),
        Req::Exchange {
            session: 1,
            code: Code::HashState,
        },
        Req::Poll(2),
        Req::OauthCancel(3),
        Req::Refresh(k),
        Req::Unknown,
        Req::Handshake,
        Req::MissingId,
        Req::MissingOp,
        Req::PayloadNotObject,
        Req::BadFields,
        Req::LongField(200),
    ];
    for (i, req) in reqs.into_iter().enumerate() {
        ops.push(E::Request {
            conn: i as u8,
            id: i as u8,
            req,
            cut: [Cut::All, Cut::Part(5), Cut::Hold, Cut::Trickle(2)][i % 4],
        });
    }
    for code in [
        Code::Plain,
        Code::Redirect,
        Code::Forged,
        Code::ErrorUrl,
        Code::Empty,
    ] {
        ops.push(E::Request {
            conn: 0,
            id: 9,
            req: Req::Exchange { session: 0, code },
            cut: Cut::All,
        });
    }
    for raw in [
        RawFrame::Junk {
            len: 5,
            bytes: *b"abcdefgh",
        },
        RawFrame::Oversize(3),
        RawFrame::Empty,
        RawFrame::InvalidJson,
        RawFrame::NotObject(2),
        RawFrame::BadUtf8,
        RawFrame::Trailing,
    ] {
        ops.push(E::Raw {
            conn: 2,
            raw,
            cut: Cut::All,
        });
    }
    for how in [
        Completion::Store,
        Completion::Failed,
        Completion::Missing,
        Completion::Busy,
        Completion::WrongKind(6),
        Completion::Conflict,
        Completion::Unavailable(2_500),
    ] {
        ops.push(E::Complete { index: 1, how });
    }
    for answer in [
        HttpAnswer::Success(2),
        HttpAnswer::NoRefresh,
        HttpAnswer::OauthError(4),
        HttpAnswer::Status(5),
        HttpAnswer::Transport(2),
        HttpAnswer::NotJson,
        HttpAnswer::NotObject,
        HttpAnswer::Odd { field: 2, value: 3 },
    ] {
        ops.push(E::Respond { index: 0, answer });
    }
    ops.push(E::Plant {
        key: K_QWEN,
        expiry: 9,
        refresh: true,
    });
    for kind in [
        Callback::Code,
        Callback::Error,
        Callback::NoCode,
        Callback::WrongState,
        Callback::WrongPath,
        Callback::OtherPort,
        Callback::Junk(*b"%zz&?#\0\xff"),
    ] {
        ops.push(E::Loopback { session: 0, kind });
    }
    for t in [
        Tick::Ms(1234),
        Tick::Secs(7),
        Tick::Minutes(70),
        Tick::Next,
        Tick::Repeat,
        Tick::Back(999),
        Tick::Wall(-300),
    ] {
        ops.push(E::Tick(t));
    }
    ops
}

fn req(conn: u8, id: u8, req: Req) -> EngineOp {
    EngineOp::Request {
        conn,
        id,
        req,
        cut: Cut::All,
    }
}

fn ok(answer: u8) -> EngineOp {
    EngineOp::Respond {
        index: 0,
        answer: HttpAnswer::Success(answer),
    }
}

fn open() -> EngineOp {
    EngineOp::Open {
        peer: 1,
        hello: Hello::Good,
    }
}

/// Hand-written engine seeds: (name, ops).
fn engine_seeds() -> Vec<(&'static str, Vec<EngineOp>)> {
    use EngineOp as E;
    let all = E::CompleteAll;
    vec![
        (
            "store-ops",
            vec![
                open(),
                req(0, 0, Req::GetToken(K_ANTHROPIC)),
                req(0, 1, Req::SaveToken(K_QWEN, TokenSel::WithRefresh)),
                req(0, 2, Req::ListProviders),
                req(0, 3, Req::GetApiKey(0)),
                E::Complete {
                    index: 2,
                    how: Completion::Store,
                },
                all.clone(),
                req(0, 4, Req::RemoveToken(K_QWEN)),
                req(0, 5, Req::ListBuckets(K_CODEX)),
                req(0, 6, Req::BucketStats(K_ANTHROPIC)),
                req(0, 7, Req::HasApiKey(1)),
                all.clone(),
                req(0, 8, Req::ListApiKeys),
                req(0, 9, Req::GetToken(K_GEMINI)),
                all.clone(),
            ],
        ),
        (
            "anthropic-login",
            vec![
                open(),
                req(0, 0, Req::Initiate(K_ANTHROPIC)),
                req(
                    0,
                    1,
                    Req::Exchange {
                        session: 0,
                        code: Code::HashState,
                    },
                ),
                ok(2),
                all.clone(),
                all.clone(),
                req(0, 2, Req::Poll(0)),
                req(0, 3, Req::GetToken(K_ANTHROPIC)),
                all.clone(),
            ],
        ),
        (
            "qwen-device-login",
            vec![
                open(),
                req(0, 0, Req::Initiate(K_QWEN)),
                ok(0),
                req(0, 1, Req::Poll(0)),
                E::Tick(Tick::Secs(1)),
                E::Respond {
                    index: 0,
                    answer: HttpAnswer::OauthError(0),
                },
                E::Tick(Tick::Secs(1)),
                E::Respond {
                    index: 0,
                    answer: HttpAnswer::OauthError(1),
                },
                E::Tick(Tick::Next),
                E::Respond {
                    index: 0,
                    answer: HttpAnswer::Transport(0),
                },
                E::Tick(Tick::Next),
                ok(3),
                all.clone(),
                all.clone(),
                req(0, 2, Req::Poll(0)),
            ],
        ),
        (
            "codex-browser-login",
            vec![
                open(),
                req(0, 0, Req::Initiate(K_CODEX)),
                E::Loopback {
                    session: 0,
                    kind: Callback::WrongState,
                },
                E::Loopback {
                    session: 0,
                    kind: Callback::Code,
                },
                ok(2),
                all.clone(),
                all.clone(),
                req(0, 1, Req::Poll(0)),
                req(0, 2, Req::Initiate(K_CODEX)),
                req(
                    0,
                    3,
                    Req::Exchange {
                        session: 1,
                        code: Code::Redirect,
                    },
                ),
                E::Respond {
                    index: 0,
                    answer: HttpAnswer::Status(5),
                },
                req(0, 4, Req::OauthCancel(1)),
            ],
        ),
        (
            "codex-device-and-corp-discovery",
            vec![
                E::Configure(Setup {
                    codex_device: true,
                    ..Setup::default()
                }),
                open(),
                req(0, 0, Req::Initiate(K_CODEX)),
                ok(0),
                E::Tick(Tick::Secs(1)),
                ok(0),
                ok(0),
                all.clone(),
                req(0, 1, Req::Poll(0)),
                req(0, 2, Req::Initiate(K_CORP)),
                req(0, 3, Req::Refresh(K_CORP)),
                ok(0),
                all.clone(),
                ok(0),
                ok(2),
                all.clone(),
            ],
        ),
        (
            "refresh",
            vec![
                open(),
                E::Open {
                    peer: 2,
                    hello: Hello::V1,
                },
                req(0, 0, Req::Refresh(K_ANTHROPIC)),
                req(1, 0, Req::Refresh(K_ANTHROPIC)),
                all.clone(),
                E::Respond {
                    index: 0,
                    answer: HttpAnswer::Status(4),
                },
                E::Tick(Tick::Secs(1)),
                all.clone(),
                ok(2),
                all.clone(),
                req(0, 1, Req::Refresh(K_ANTHROPIC)),
                all.clone(),
                req(1, 2, Req::Refresh(K_QWEN_WORK)),
                E::Store(StoreMode {
                    fail_writes: true,
                    fail_all: false,
                    foreign_lock: false,
                    unusable: false,
                    unavailable: false,
                }),
                all.clone(),
                ok(1),
                all.clone(),
                E::Tick(Tick::Minutes(10)),
                all.clone(),
                ok(2),
                all.clone(),
            ],
        ),
        (
            "sandbox",
            vec![
                E::Configure(Setup {
                    sandbox: true,
                    allow_lists: true,
                    ..Setup::default()
                }),
                open(),
                E::Open {
                    peer: 3,
                    hello: Hello::WrongToken,
                },
                E::Open {
                    peer: 3,
                    hello: Hello::NoToken,
                },
                req(0, 0, Req::GetToken(K_CODEX)),
                req(0, 1, Req::SaveToken(K_CODEX, TokenSel::Valid)),
                req(0, 2, Req::RemoveToken(K_CODEX)),
                req(0, 3, Req::HasApiKey(0)),
                req(0, 4, Req::ListProviders),
                req(0, 5, Req::GetApiKey(0)),
                req(0, 6, Req::Initiate(K_GEMINI)),
                req(0, 7, Req::Refresh(K_UNKNOWN)),
                all.clone(),
            ],
        ),
        (
            "limits-cancel-duplicates",
            vec![
                E::Configure(Setup {
                    small_limits: true,
                    ..Setup::default()
                }),
                open(),
                req(0, 1, Req::GetToken(K_ANTHROPIC)),
                req(0, 1, Req::GetToken(K_ANTHROPIC)),
                req(0, 9, Req::GetToken(K_ANTHROPIC)),
                req(0, 2, Req::SaveToken(K_ANTHROPIC, TokenSel::Valid)),
                req(0, 3, Req::SaveToken(K_ANTHROPIC, TokenSel::Valid)),
                req(0, 4, Req::Cancel(1)),
                req(0, 5, Req::Cancel(7)),
                req(0, 6, Req::SaveToken(K_ANTHROPIC, TokenSel::Valid)),
                req(0, 7, Req::SaveToken(K_ANTHROPIC, TokenSel::Valid)),
                req(0, 0, Req::LongField(200)),
                open(),
                open(),
                open(),
                open(),
                all.clone(),
                E::Gone { conn: 1 },
                req(2, 0, Req::Unknown),
                req(2, 1, Req::MissingId),
                req(2, 2, Req::MissingOp),
                req(2, 3, Req::PayloadNotObject),
                req(2, 4, Req::BadFields),
                req(2, 5, Req::Handshake),
                req(2, 6, Req::GetToken(K_INVALID)),
            ],
        ),
        (
            "framing-and-time",
            vec![
                E::Open {
                    peer: 0,
                    hello: Hello::Late,
                },
                E::Flush {
                    conn: 0,
                    cut: Cut::Part(3),
                },
                E::Tick(Tick::Ms(900)),
                E::Flush {
                    conn: 0,
                    cut: Cut::Trickle(20),
                },
                E::Request {
                    conn: 0,
                    id: 1,
                    req: Req::GetToken(K_CODEX),
                    cut: Cut::Part(6),
                },
                E::Pause { conn: 0 },
                E::Tick(Tick::Secs(30)),
                E::Resume { conn: 0 },
                E::Tick(Tick::Back(5000)),
                E::Flush {
                    conn: 0,
                    cut: Cut::All,
                },
                E::Tick(Tick::Repeat),
                E::Tick(Tick::Wall(-3600)),
                E::Complete {
                    index: 0,
                    how: Completion::Store,
                },
                E::Request {
                    conn: 0,
                    id: 2,
                    req: Req::GetToken(K_CODEX),
                    cut: Cut::Part(2),
                },
                E::Tick(Tick::Secs(6)),
                open(),
                E::Request {
                    conn: 1,
                    id: 3,
                    req: Req::SaveToken(K_QWEN, TokenSel::Expired),
                    cut: Cut::All,
                },
                E::HalfClose { conn: 1 },
                E::Complete {
                    index: 0,
                    how: Completion::Store,
                },
                all.clone(),
                open(),
                E::Raw {
                    conn: 2,
                    raw: RawFrame::Oversize(0),
                    cut: Cut::All,
                },
                open(),
                E::Raw {
                    conn: 3,
                    raw: RawFrame::InvalidJson,
                    cut: Cut::Trickle(255),
                },
                E::Open {
                    peer: 2,
                    hello: Hello::NotHandshake,
                },
                E::Open {
                    peer: 2,
                    hello: Hello::Range { min: 3, max: 4 },
                },
            ],
        ),
        (
            "odd-values",
            vec![
                open(),
                req(0, 0, Req::Initiate(K_QWEN)),
                E::Respond {
                    index: 0,
                    answer: HttpAnswer::Odd { field: 1, value: 3 },
                },
                E::Tick(Tick::Next),
                E::Plant {
                    key: K_ANTHROPIC,
                    expiry: 10,
                    refresh: true,
                },
                req(0, 1, Req::GetToken(K_ANTHROPIC)),
                req(0, 2, Req::Refresh(K_ANTHROPIC)),
                all.clone(),
                E::Respond {
                    index: 0,
                    answer: HttpAnswer::Odd { field: 0, value: 2 },
                },
                all.clone(),
                req(0, 3, Req::Initiate(K_CODEX)),
                E::Loopback {
                    session: 1,
                    kind: Callback::Code,
                },
                ok(7),
                all.clone(),
                all.clone(),
                req(0, 4, Req::Poll(1)),
            ],
        ),
        (
            "store-failures",
            vec![
                open(),
                E::Store(StoreMode {
                    fail_writes: false,
                    fail_all: false,
                    foreign_lock: true,
                    unusable: true,
                    unavailable: false,
                }),
                req(0, 0, Req::Refresh(K_ANTHROPIC)),
                all.clone(),
                E::Store(StoreMode {
                    fail_writes: false,
                    fail_all: false,
                    foreign_lock: true,
                    unusable: false,
                    unavailable: false,
                }),
                req(0, 1, Req::Refresh(K_ANTHROPIC)),
                all.clone(),
                E::Store(StoreMode {
                    fail_writes: false,
                    fail_all: true,
                    foreign_lock: false,
                    unusable: false,
                    unavailable: false,
                }),
                req(0, 2, Req::SaveToken(K_GEMINI, TokenSel::Valid)),
                req(0, 3, Req::ListProviders),
                all.clone(),
                E::Complete {
                    index: 0,
                    how: Completion::WrongKind(0),
                },
                E::FailListen(true),
                req(0, 4, Req::Initiate(K_CODEX)),
                all.clone(),
            ],
        ),
        (
            // Compare-and-set writes refused (another process wrote the
            // key) and a store that cannot be reached.
            "store-conflicts",
            vec![
                open(),
                E::AutoEffects(false),
                req(0, 0, Req::SaveToken(K_GEMINI, TokenSel::Valid)),
                E::Complete {
                    index: 0,
                    how: Completion::Store,
                },
                E::Complete {
                    index: 0,
                    how: Completion::Conflict,
                },
                E::Complete {
                    index: 0,
                    how: Completion::Store,
                },
                E::Complete {
                    index: 0,
                    how: Completion::Conflict,
                },
                all.clone(),
                E::Plant {
                    key: K_ANTHROPIC,
                    expiry: 1,
                    refresh: true,
                },
                req(0, 1, Req::Refresh(K_ANTHROPIC)),
                all.clone(),
                ok(2),
                E::Complete {
                    index: 0,
                    how: Completion::Conflict,
                },
                all.clone(),
                req(0, 2, Req::GetToken(K_ANTHROPIC)),
                E::Complete {
                    index: 0,
                    how: Completion::Unavailable(1_200),
                },
                E::AutoEffects(true),
                E::Store(StoreMode {
                    fail_writes: false,
                    fail_all: false,
                    foreign_lock: false,
                    unusable: false,
                    unavailable: true,
                }),
                req(0, 3, Req::ListProviders),
                req(0, 4, Req::Refresh(K_ANTHROPIC)),
                E::Tick(Tick::Secs(5)),
            ],
        ),
    ]
}

fn handshake_seeds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "hs-v2-range",
            json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}),
        ),
        ("hs-v1", json!({"v":1,"op":"handshake"})),
        (
            "hs-token",
            json!({"v":2,"op":"handshake","payload":{"capabilityToken":"@CAP@","minVersion":1,"maxVersion":7}}),
        ),
        (
            "hs-bad-range",
            json!({"v":2,"op":"handshake","payload":{"minVersion":3,"maxVersion":2.0}}),
        ),
        (
            "req-get-token",
            json!({"v":2,"id":"1","op":"get_token","payload":{"provider":"anthropic","bucket":"default"}}),
        ),
        (
            "req-save-token",
            json!({"v":2,"id":7,"op":"save_token","payload":{"provider":"qwen","token":{"access_token":"a","expiry":1,"token_type":"bearer","refresh_token":"r"}}}),
        ),
        (
            "req-refresh",
            json!({"v":2,"id":"r","op":"refresh_token","payload":{"provider":"anthropic"}}),
        ),
        (
            "req-initiate",
            json!({"v":2,"id":"i","op":"oauth_initiate","payload":{"provider":"qwen","bucket":"work"}}),
        ),
        (
            "req-exchange",
            json!({"v":2,"id":"e","op":"oauth_exchange","payload":{"session_id":"x","code":"c#s"}}),
        ),
        (
            "req-cancel",
            json!({"v":2,"id":"c","op":"cancel","payload":{"targetId":"c"}}),
        ),
        (
            "req-api-key",
            json!({"v":2,"id":1.0,"op":"get_api_key","payload":{"name":"OPENAI"}}),
        ),
        ("req-no-id", json!({"op":"list_providers"})),
        ("req-unknown", json!({"id":"u","op":"toString"})),
    ]
}

fn decoder_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // First byte: limit index (low 3 bits) | plan length << 3.
    let mut session =
        frame::encode(&json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}));
    session.extend(frame::encode(
        &json!({"v":2,"id":"1","op":"get_token","payload":{"provider":"日本語"}}),
    ));
    session.extend(frame::encode(
        &json!({"a":[1,2.5,-3e-7,null,true,{"b":"\u{1}"}]}),
    ));
    let with = |head: u8, plan: &[u8], stream: &[u8]| {
        let mut v = vec![head];
        v.extend_from_slice(plan);
        v.extend_from_slice(stream);
        v
    };
    let mut oversize = 65_537u32.to_be_bytes().to_vec();
    oversize.extend_from_slice(b"{}");
    let mut partial = 60_000u32.to_be_bytes().to_vec();
    partial.extend_from_slice(b"{\"k\":\"");
    partial.extend(std::iter::repeat_n(b'x', 700));
    vec![
        ("frames-whole", with(6, &[], &session)),
        ("frames-byte-by-byte", with(6 | (1 << 3), &[1], &session)),
        (
            "frames-mixed-chunks",
            with(6 | (4 << 3), &[3, 0, 200, 0xF0], &session),
        ),
        ("oversize-header", with(6 | (1 << 3), &[2], &oversize)),
        ("partial-body", with(6 | (2 << 3), &[5, 100], &partial)),
        ("small-limit", with(3, &[], &session)),
        ("empty-frame", with(5, &[], &frame::encode_payload(b""))),
        (
            "not-object",
            with(5, &[], &frame::encode_payload(b"[1,{\"a\":2}]")),
        ),
        (
            "invalid-json",
            with(
                5 | (1 << 3),
                &[7],
                &frame::encode_payload(b"{\"a\":\"\xff\"}"),
            ),
        ),
        (
            "trailing",
            with(5, &[], &frame::encode_payload(b"{\"a\":1} {}")),
        ),
        (
            "floats",
            with(
                5,
                &[],
                &frame::encode_payload(
                    b"{\"f\":1e308,\"g\":-0.0,\"h\":123456789012345678901234567890,\"i\":1e-400}",
                ),
            ),
        ),
    ]
}

fn write_dir(target: &str, files: Vec<(String, Vec<u8>)>) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (name, bytes) in files {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

/// Minimal reproducers of bugs found while writing the targets (kept in
/// `fuzz/regressions/engine/`): (file name, ops).
fn engine_regressions() -> Vec<(&'static str, Vec<EngineOp>)> {
    vec![(
        // A device grant whose `interval` is huge overflowed `interval * 1000`.
        "device-interval-overflow",
        vec![
            open(),
            req(0, 0, Req::Initiate(K_QWEN)),
            EngineOp::Respond {
                index: 0,
                answer: HttpAnswer::Odd { field: 1, value: 3 },
            },
        ],
    )]
}

/// Writes the hand-written seed corpora into `fuzz/corpus/<target>/` and
/// the hand-made regressions into `fuzz/regressions/engine/`.
#[test]
#[ignore = "writes files; run by hand to regenerate the seed corpora"]
fn write_seed_corpora() {
    write_dir(
        "frame_decoder",
        decoder_seeds()
            .into_iter()
            .map(|(n, b)| (n.to_owned(), b))
            .collect(),
    );
    let mut hs: Vec<(String, Vec<u8>)> = handshake_seeds()
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_string().into_bytes()))
        .collect();
    hs.push(("not-json".into(), b"{\"v\":2,".to_vec()));
    hs.push(("array".into(), b"[{\"v\":2}]".to_vec()));
    write_dir("handshake", hs);
    write_dir(
        "engine",
        engine_seeds()
            .into_iter()
            .map(|(n, ops)| (n.to_owned(), fuzzing::encode_engine_ops(&ops)))
            .collect(),
    );
    let dir = fuzz_dir().join("regressions/engine");
    std::fs::create_dir_all(&dir).expect("create regressions dir");
    for (name, ops) in engine_regressions() {
        std::fs::write(dir.join(name), fuzzing::encode_engine_ops(&ops)).expect("write");
    }
}
