//! The client library against a real engine behind a real Unix socket, and
//! against scripted servers for the replies a correct engine never sends.
//!
//! Nothing here sleeps to wait for something to happen: tests wait for
//! events the server reports, and every wait is bounded by [`LIMIT`].

mod proxy_idle_close;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use credproxy_core::frame::{self, FrameDecoder};
use credproxy_core::testkit::{Harness, MemStore};
use credproxy_core::{Config, ConnId, Effect, Peer, Secret, Transport};
use credproxy_unix::client::{
    BlockingClient, CONNECTION_LOST_MESSAGE, CapabilityError, CapabilitySource, Client,
    ClientError, ClientOptions, ConnectionState, TokenOrigin,
};
use serde_json::{Map, Value, json};
use smol::Timer;
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt as _;

use crate::common::{LIMIT, block_on_bounded, short_tempdir};

/// The capability token of the token-protected servers.
const TOKEN: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
/// Effects for this provider are held until [`Server::release`].
const SLOW: &str = "slow";

// ---------------------------------------------------------------------------
// A test server: the engine of credproxy-core with its in-memory store,
// driven over a real socket by plain threads.
// ---------------------------------------------------------------------------

/// What the server saw or did.
#[derive(Debug, Clone)]
enum Ev {
    /// A connection was accepted.
    Accepted,
    /// The client sent this frame.
    Received(ConnId, Value),
    /// The engine sent this frame.
    Sent(ConnId, Value),
    /// The client closed its side (or the connection reset).
    Eof(ConnId),
}

struct Core {
    h: Harness,
    streams: BTreeMap<ConnId, UnixStream>,
    flushed: BTreeMap<ConnId, usize>,
    sent_decoders: BTreeMap<ConnId, FrameDecoder>,
    shut: BTreeSet<ConnId>,
    /// Hold `get_token` of [`SLOW`] while set.
    holding: bool,
    log: Vec<Ev>,
    events: Sender<Ev>,
}

fn is_slow(effect: &Effect) -> bool {
    matches!(effect, Effect::TokenGet { provider, .. } if provider == SLOW)
}

impl Core {
    fn record(&mut self, ev: Ev) {
        self.log.push(ev.clone());
        let _ = self.events.try_send(ev);
    }

    /// Completes the effects that are not held, writes what the engine
    /// sent, and closes what it closed.
    fn pump(&mut self) {
        while let Some(i) = self
            .h
            .held
            .iter()
            .position(|(_, e)| !(self.holding && is_slow(e)))
        {
            self.h.complete(i);
        }
        let conns: Vec<ConnId> = self.h.sent.keys().copied().collect();
        for conn in conns {
            let all = &self.h.sent[&conn];
            let from = self.flushed.get(&conn).copied().unwrap_or(0);
            if from == all.len() {
                continue;
            }
            let fresh = all[from..].to_vec();
            self.flushed.insert(conn, all.len());
            if let Some(stream) = self.streams.get(&conn) {
                let _ = (&*stream).write_all(&fresh);
            }
            let dec = self
                .sent_decoders
                .entry(conn)
                .or_insert_with(|| FrameDecoder::new(1 << 22));
            let mut rest = &fresh[..];
            let mut frames = Vec::new();
            while let Ok(Some(f)) = dec.decode(&mut rest) {
                frames.push(Value::Object(f));
            }
            for f in frames {
                self.record(Ev::Sent(conn, f));
            }
        }
        let closed: Vec<ConnId> = self.h.closed.difference(&self.shut).copied().collect();
        for conn in closed {
            self.shut.insert(conn);
            if let Some(stream) = self.streams.get(&conn) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

struct Server {
    path: PathBuf,
    core: Arc<Mutex<Core>>,
    events: Receiver<Ev>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

fn locked(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Server {
    /// A client of this server without a capability token.
    async fn connect(&self) -> Client {
        Client::connect(&self.path, CapabilitySource::None)
            .await
            .expect("connect")
    }

    /// Like [`Server::connect`], with the default options changed by `f`.
    async fn connect_with(&self, f: impl FnOnce(&mut ClientOptions)) -> Client {
        Client::connect_with_options(&self.path, CapabilitySource::None, options(f))
            .await
            .expect("connect")
    }

    fn start(config: Config) -> Server {
        Server::start_with(config, |_| {})
    }

    fn start_with(config: Config, setup: impl FnOnce(&mut MemStore)) -> Server {
        let dir = short_tempdir();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let mut h = Harness::with_config(config, 1);
        h.auto_effects = false;
        setup(&mut h.store);
        let (tx, events) = smol::channel::unbounded();
        let core = Arc::new(Mutex::new(Core {
            h,
            streams: BTreeMap::new(),
            flushed: BTreeMap::new(),
            sent_decoders: BTreeMap::new(),
            shut: BTreeSet::new(),
            holding: true,
            log: Vec::new(),
            events: tx,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (core2, stop2) = (core.clone(), stop.clone());
        thread::spawn(move || accept_loop(&listener, &core2, &stop2));
        Server {
            path,
            core,
            events,
            stop,
            _dir: dir,
        }
    }

    /// Waits for the next event matching `pred`, dropping the others.
    async fn next(&self, pred: impl Fn(&Ev) -> bool) -> Ev {
        self.within(LIMIT, pred)
            .await
            .expect("the expected server event did not come")
    }

    /// The next event matching `pred` within `window`, if any.
    async fn within(&self, window: Duration, pred: impl Fn(&Ev) -> bool) -> Option<Ev> {
        async {
            while let Ok(ev) = self.events.recv().await {
                if pred(&ev) {
                    return Some(ev);
                }
            }
            None
        }
        .or(async {
            Timer::after(window).await;
            None
        })
        .await
    }

    fn log(&self) -> Vec<Ev> {
        locked(&self.core).log.clone()
    }

    fn accepted(&self) -> usize {
        self.log()
            .iter()
            .filter(|e| matches!(e, Ev::Accepted))
            .count()
    }

    fn handshakes(&self) -> usize {
        self.log()
            .iter()
            .filter(|e| matches!(e, Ev::Received(_, f) if f["op"] == "handshake"))
            .count()
    }

    /// Lets the held effects complete.
    fn release(&self) {
        let mut core = locked(&self.core);
        core.holding = false;
        core.pump();
    }

    /// Shuts every connection down, as a dying server would.
    fn kill_all(&self) {
        for stream in locked(&self.core).streams.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kill_all();
        // Wake the accept loop so its thread ends.
        let _ = UnixStream::connect(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, core: &Arc<Mutex<Core>>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let conn = {
            let mut c = locked(core);
            let Some(conn) = c.h.open_peer(Peer::anonymous(Transport::Unix)) else {
                continue;
            };
            c.streams
                .insert(conn, stream.try_clone().expect("clone stream"));
            c.record(Ev::Accepted);
            c.pump();
            conn
        };
        let core = core.clone();
        thread::spawn(move || read_loop(&stream, conn, &core));
    }
}

fn read_loop(mut stream: &UnixStream, conn: ConnId, core: &Mutex<Core>) {
    let mut buf = [0u8; 8192];
    let mut dec = FrameDecoder::new(1 << 22);
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let mut c = locked(core);
                let now = c.h.now;
                c.h.engine.handle_read_closed(conn, now);
                c.h.drain();
                c.record(Ev::Eof(conn));
                c.pump();
                return;
            }
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        let mut frames = Vec::new();
        while let Ok(Some(f)) = dec.decode(&mut rest) {
            frames.push(Value::Object(f));
        }
        let mut c = locked(core);
        for f in frames {
            c.record(Ev::Received(conn, f));
        }
        c.h.send(conn, &buf[..n]);
        c.pump();
    }
}

fn with_token() -> Config {
    Config {
        capability_token: Some(Secret::new(TOKEN)),
        ..Config::default()
    }
}

fn token_json(access: &str) -> Map<String, Value> {
    json!({"access_token": access, "expiry": 1_767_229_200, "token_type": "Bearer"})
        .as_object()
        .cloned()
        .expect("object")
}

fn store_keys(store: &mut MemStore) {
    for (name, value) in [
        ("OPENAI_API_KEY", "sk-openai-1"),
        ("ANTHROPIC_API_KEY", "sk-ant-2"),
    ] {
        store.keys.insert(name.into(), Secret::new(value));
    }
    for i in 0..8 {
        store
            .keys
            .insert(format!("K{i}"), Secret::new(format!("value-{i}")));
    }
    store.put_token(SLOW, "default", Value::Object(token_json("at-slow")));
}

fn options(f: impl FnOnce(&mut ClientOptions)) -> ClientOptions {
    let mut o = ClientOptions::default();
    f(&mut o);
    o
}

fn is_received(ev: &Ev, op: &str) -> bool {
    matches!(ev, Ev::Received(_, f) if f["op"] == op)
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

#[test]
fn handshake_without_a_token_negotiates_version_2() {
    let server = Server::start(Config::default());
    block_on_bounded(async {
        let client = server.connect().await;
        assert_eq!(client.protocol_version(), 2);
        assert_eq!(
            client.connection_state(),
            ConnectionState::Connected { version: 2 }
        );
        let Ev::Received(_, hello) = server.next(|e| is_received(e, "handshake")).await else {
            unreachable!()
        };
        assert_eq!(
            hello,
            json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}})
        );
    });
}

#[test]
fn handshake_with_the_right_token_is_a_sandbox_connection() {
    let server = Server::start_with(with_token(), store_keys);
    block_on_bounded(async {
        let client = Client::connect(&server.path, CapabilitySource::Token(Secret::new(TOKEN)))
            .await
            .expect("connect");
        let Ev::Received(_, hello) = server.next(|e| is_received(e, "handshake")).await else {
            unreachable!()
        };
        assert_eq!(hello["payload"]["capabilityToken"], TOKEN);
        // Sandbox rules apply: lists are empty, keys can be read.
        assert_eq!(
            client.list_api_keys().await.expect("list"),
            Vec::<String>::new()
        );
        let key = client.get_api_key("OPENAI_API_KEY").await.expect("key");
        assert_eq!(key.expect("present").expose(), "sk-openai-1");
        let debug = format!("{client:?}");
        assert!(!debug.contains(TOKEN), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    });
}

#[test]
fn a_missing_or_wrong_token_is_refused_with_advice() {
    let server = Server::start(with_token());
    let wrong = "0".repeat(64);
    block_on_bounded(async {
        for source in [
            CapabilitySource::None,
            CapabilitySource::Token(Secret::new(wrong.clone())),
        ] {
            let err = Client::connect(&server.path, source)
                .await
                .expect_err("refused");
            let ClientError::Handshake { code, message } = &err else {
                panic!("expected a handshake refusal, got {err:?}");
            };
            assert_eq!(code, "UNAUTHORIZED");
            assert_eq!(message, "Invalid or missing capability token");
            let text = err.to_string();
            assert!(
                text.contains("capability token is missing or wrong"),
                "{text}"
            );
            assert!(text.contains("CREDPROXY_CAPABILITY_FILE"), "{text}");
            for shown in [text, format!("{err:?}")] {
                assert!(!shown.contains(&wrong) && !shown.contains(TOKEN), "{shown}");
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Typed calls
// ---------------------------------------------------------------------------

#[test]
fn typed_calls_round_trip() {
    let server = Server::start_with(Config::default(), store_keys);
    block_on_bounded(async {
        let client = server.connect().await;

        let mut saved = token_json("at-1");
        saved.insert("refresh_token".into(), json!("rt-from-sandbox"));
        saved.insert("scope".into(), json!("user:inference"));
        client
            .save_token("anthropic", None, &saved)
            .await
            .expect("save");
        client
            .save_token("anthropic", Some("work"), &token_json("at-work"))
            .await
            .expect("save work");

        let got = client
            .get_token("anthropic", None)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(got["access_token"], "at-1");
        assert_eq!(got["scope"], "user:inference");
        assert!(!got.contains_key("refresh_token"), "{got:?}");
        let work = client
            .get_token("anthropic", Some("work"))
            .await
            .expect("get");
        assert_eq!(work.expect("stored")["access_token"], "at-work");
        assert_eq!(client.get_token("openai", None).await.expect("get"), None);

        assert_eq!(
            client.list_providers().await.expect("providers"),
            vec!["anthropic".to_owned(), SLOW.to_owned()]
        );
        assert_eq!(
            client.list_buckets("anthropic").await.expect("buckets"),
            vec!["default".to_owned(), "work".to_owned()]
        );
        let stats = client
            .get_bucket_stats("anthropic", None)
            .await
            .expect("stats")
            .expect("stored");
        assert_eq!(stats.bucket, "default");
        assert_eq!(stats.request_count, 1);
        assert_eq!(
            client
                .get_bucket_stats("openai", None)
                .await
                .expect("stats"),
            None
        );

        client
            .remove_token("anthropic", Some("work"))
            .await
            .expect("remove");
        assert_eq!(
            client
                .get_token("anthropic", Some("work"))
                .await
                .expect("get"),
            None
        );

        let key = client.get_api_key("ANTHROPIC_API_KEY").await.expect("key");
        let key = key.expect("present");
        assert_eq!(key.expose(), "sk-ant-2");
        assert_eq!(format!("{key:?}"), "[redacted]");
        assert!(client.get_api_key("MISSING").await.expect("key").is_none());
        let names = client.list_api_keys().await.expect("keys");
        assert!(names.windows(2).all(|w| w[0] <= w[1]), "{names:?}");
        assert!(names.contains(&"OPENAI_API_KEY".to_owned()));
        assert!(client.has_api_key("OPENAI_API_KEY").await.expect("has"));
        assert!(!client.has_api_key("MISSING").await.expect("has"));

        // Errors from the server keep their code and message.
        let err = client.get_token("a/b", None).await.expect_err("invalid");
        assert!(
            matches!(&err, ClientError::Server { code, message, retry_after: None }
                if code == "INVALID_REQUEST" && message == "Invalid provider"),
            "{err:?}"
        );
        let err = client
            .call("nope", json!({}))
            .await
            .expect_err("unknown op");
        assert_eq!(err.code(), Some("INVALID_REQUEST"));
        assert_eq!(err.to_string(), "Unknown operation: nope (INVALID_REQUEST)");

        // The generic call; `null` payload means `{}`.
        let data = client
            .call("list_api_keys", Value::Null)
            .await
            .expect("call");
        assert!(data["keys"].is_array());

        // Every request carried the negotiated version and a unique id.
        let ids: Vec<String> = server
            .log()
            .iter()
            .filter_map(|e| match e {
                Ev::Received(_, f) if f["op"] != "handshake" => {
                    assert_eq!(f["v"], 2);
                    Some(f["id"].as_str().expect("string id").to_owned())
                }
                _ => None,
            })
            .collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert_eq!(server.accepted(), 1);
    });
}

#[test]
fn concurrent_calls_share_one_connection() {
    let server = Server::start_with(Config::default(), store_keys);
    block_on_bounded(async {
        let client = server.connect().await;
        let slow = {
            let c = client.clone();
            smol::spawn(async move { c.get_token(SLOW, None).await })
        };
        server
            .next(|e| matches!(e, Ev::Received(_, f) if f["payload"]["provider"] == SLOW))
            .await;
        let fast: Vec<_> = (0..8)
            .map(|i| {
                let c = client.clone();
                smol::spawn(async move { (i, c.get_api_key(&format!("K{i}")).await) })
            })
            .collect();
        for task in fast {
            let (i, key) = task.await;
            assert_eq!(
                key.expect("key").expect("present").expose(),
                format!("value-{i}")
            );
        }
        // Answered while the slow one is still held.
        assert!(!slow.is_finished());
        server.release();
        let token = slow.await.expect("slow").expect("stored");
        assert_eq!(token["access_token"], "at-slow");
        assert_eq!(server.accepted(), 1);
        assert_eq!(server.handshakes(), 1);
    });
}

#[test]
fn blocking_client_works_from_sync_code() {
    let server = Server::start_with(Config::default(), store_keys);
    let path = server.path.clone();
    let (done, result) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let client = BlockingClient::connect(&path, CapabilitySource::None).expect("connect");
        client
            .save_token("gemini", None, &token_json("at-g"))
            .expect("save");
        let token = client
            .get_token("gemini", None)
            .expect("get")
            .expect("stored");
        let key = client.get_api_key("K3").expect("key").expect("present");
        let _ = done.send((token["access_token"].clone(), key.expose().to_owned()));
    });
    let (access, key) = result.recv_timeout(LIMIT).expect("blocking calls finished");
    assert_eq!(access, "at-g");
    assert_eq!(key, "value-3");
}

// ---------------------------------------------------------------------------
// Timeouts and cancel
// ---------------------------------------------------------------------------

#[test]
fn a_timeout_sends_cancel_and_the_connection_stays_usable() {
    let server = Server::start_with(Config::default(), store_keys);
    block_on_bounded(async {
        let client = server.connect_with(|o| o.request_timeout_ms = 150).await;
        let err = client.get_token(SLOW, None).await.expect_err("times out");
        assert!(matches!(err, ClientError::Timeout { ms: 150 }), "{err:?}");
        assert!(
            err.to_string().contains("Request timed out after 150ms"),
            "{err}"
        );

        let Ev::Received(conn, request) = server.next(|e| is_received(e, "get_token")).await else {
            unreachable!()
        };
        let target = request["id"].clone();
        let Ev::Received(_, cancel) = server.next(|e| is_received(e, "cancel")).await else {
            unreachable!()
        };
        assert_eq!(cancel["payload"]["targetId"], target);
        assert_ne!(cancel["id"], target);
        // The engine answered the target CANCELLED; the client ignored it.
        let Ev::Sent(_, cancelled) = server
            .next(|e| matches!(e, Ev::Sent(c, f) if *c == conn && f["id"] == target))
            .await
        else {
            unreachable!()
        };
        assert_eq!(cancelled["code"], "CANCELLED");
        server
            .next(|e| matches!(e, Ev::Sent(_, f) if f["id"] == cancel["id"]))
            .await;

        // Same connection, still usable.
        let key = client.get_api_key("K1").await.expect("key");
        assert_eq!(key.expect("present").expose(), "value-1");
        // A per-call timeout overrides the default.
        let err = client
            .call_with_timeout(
                "get_token",
                json!({"provider": SLOW}),
                Duration::from_millis(120),
            )
            .await
            .expect_err("times out");
        assert_eq!(err.to_string(), "Request timed out after 120ms");
        server.next(|e| is_received(e, "cancel")).await;
        assert_eq!(server.accepted(), 1);
        assert!(matches!(
            client.connection_state(),
            ConnectionState::Connected { .. }
        ));
    });
}

// ---------------------------------------------------------------------------
// Connection loss: no reconnect
// ---------------------------------------------------------------------------

#[test]
fn server_closing_mid_request_loses_the_connection_for_good() {
    let server = Server::start_with(Config::default(), store_keys);
    block_on_bounded(async {
        // The default 30 s timeout is far beyond the bound of this test: the
        // failure must come from the closed socket, promptly.
        let client = server.connect().await;
        let call = client.get_token(SLOW, None);
        let kill = async {
            server.next(|e| is_received(e, "get_token")).await;
            server.kill_all();
        };
        let (result, ()) = smol::future::zip(call, kill).await;
        let err = result.expect_err("lost");
        assert!(err.is_connection_lost(), "{err:?}");
        assert_eq!(err.to_string(), CONNECTION_LOST_MESSAGE);
        assert_eq!(
            CONNECTION_LOST_MESSAGE,
            "Credential proxy connection lost. Restart the session."
        );

        let again = client.get_api_key("K1").await.expect_err("still lost");
        assert!(again.is_connection_lost(), "{again:?}");
        assert_eq!(client.connection_state(), ConnectionState::Lost);
        assert_eq!(server.accepted(), 1, "the client must not reconnect");
    });
}

// ---------------------------------------------------------------------------
// Idle close: the only reconnect
// ---------------------------------------------------------------------------

#[test]
fn idle_close_then_the_next_call_reconnects_and_handshakes() {
    let server = Server::start_with(Config::default(), store_keys);
    block_on_bounded(async {
        let client = server.connect_with(|o| o.idle_close_ms = 100).await;
        // Nothing is asked: the connection idles out and the server sees a
        // graceful close.
        let Ev::Eof(first) = server.next(|e| matches!(e, Ev::Eof(_))).await else {
            unreachable!()
        };
        assert_eq!(client.connection_state(), ConnectionState::Idle);
        assert_eq!(server.handshakes(), 1);

        let key = client.get_api_key("K1").await.expect("key after reconnect");
        assert_eq!(key.expect("present").expose(), "value-1");
        assert_eq!(server.handshakes(), 2);
        assert_eq!(server.accepted(), 2);
        let Ev::Received(second, _) = server
            .log()
            .into_iter()
            .rfind(|e| is_received(e, "handshake"))
            .expect("second handshake")
        else {
            unreachable!()
        };
        assert_ne!(first, second);
        assert_eq!(client.protocol_version(), 2);
    });
}

#[test]
fn no_idle_close_while_a_request_is_pending() {
    let server = Server::start_with(Config::default(), store_keys);
    block_on_bounded(async {
        let client = server.connect_with(|o| o.idle_close_ms = 50).await;
        let call = client.get_token(SLOW, None);
        let watch = async {
            let Ev::Received(conn, _) = server.next(|e| is_received(e, "get_token")).await else {
                unreachable!()
            };
            // Six idle periods pass with the request pending: its connection
            // stays open. (A window is the only way to observe an absence; a
            // slow machine can only make this pass, never fail, for a
            // correct client.)
            let early = server
                .within(
                    Duration::from_millis(300),
                    |e| matches!(e, Ev::Eof(c) if *c == conn),
                )
                .await;
            assert!(early.is_none(), "closed while a request was pending");
            server.release();
            conn
        };
        let (result, conn) = smol::future::zip(call, watch).await;
        assert_eq!(
            result.expect("answered").expect("stored")["access_token"],
            "at-slow"
        );
        // With nothing pending, the idle close follows.
        server.next(|e| matches!(e, Ev::Eof(c) if *c == conn)).await;
    });
}

#[test]
fn dropping_the_client_closes_the_connection() {
    let server = Server::start(Config::default());
    block_on_bounded(async {
        let client = server.connect().await;
        let other = client.clone();
        drop(client);
        assert!(
            other.list_providers().await.is_ok(),
            "a clone keeps it open"
        );
        drop(other);
        server.next(|e| matches!(e, Ev::Eof(_))).await;
    });
}

// ---------------------------------------------------------------------------
// Scripted servers: replies a correct engine never sends
// ---------------------------------------------------------------------------

fn read_frame(mut stream: &UnixStream, dec: &mut FrameDecoder) -> Option<Value> {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                let mut input = &byte[..];
                if let Some(f) = dec.decode(&mut input).expect("client frame") {
                    return Some(Value::Object(f));
                }
            }
        }
    }
}

fn write_frame(mut stream: &UnixStream, value: &Value) {
    stream.write_all(&frame::encode(value)).expect("write");
}

/// Accepts one connection and runs `script` on it in a thread; the
/// returned receiver gets `true` when the client closed the connection.
fn scripted(
    script: impl FnOnce(&UnixStream, &mut FrameDecoder) + Send + 'static,
) -> (tempfile::TempDir, PathBuf, Receiver<bool>) {
    let dir = short_tempdir();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let (tx, rx) = smol::channel::bounded(1);
    thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(LIMIT)).expect("timeout");
        let mut dec = FrameDecoder::new(1 << 20);
        script(&stream, &mut dec);
        let closed = read_frame(&stream, &mut dec).is_none();
        let _ = tx.try_send(closed);
    });
    (dir, path, rx)
}

#[test]
fn a_malformed_reply_breaks_the_connection() {
    let (_dir, path, closed) = scripted(|s, dec| {
        read_frame(s, dec).expect("handshake");
        write_frame(
            s,
            &json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}}),
        );
        let req = read_frame(s, dec).expect("request");
        // Ignored: an id that is not pending (even malformed), and no id.
        write_frame(s, &json!({"id":"not-pending","ok":"yes"}));
        write_frame(s, &json!({"ok":true,"data":{}}));
        write_frame(s, &json!({"id":req["id"],"ok":true,"data":{"key":"k1"}}));
        let req = read_frame(s, dec).expect("request");
        write_frame(s, &json!({"id":req["id"],"ok":true,"data":[1,2]}));
    });
    block_on_bounded(async {
        let client = Client::connect(&path, CapabilitySource::None)
            .await
            .expect("connect");
        let key = client
            .get_api_key("a")
            .await
            .expect("key")
            .expect("present");
        assert_eq!(key.expose(), "k1");
        let err = client.get_api_key("b").await.expect_err("malformed");
        assert!(err.is_connection_lost(), "{err:?}");
        let err = client.get_api_key("c").await.expect_err("still lost");
        assert!(err.is_connection_lost(), "{err:?}");
        assert!(
            closed.recv().await.expect("script ended"),
            "client closed the socket"
        );
    });
}

#[test]
fn every_envelope_check_breaks_the_connection() {
    for bad in [
        json!({"ok":"true"}),
        json!({"ok":false,"code":1,"error":"x"}),
        json!({"ok":false,"code":"X","error":["x"]}),
        json!({"ok":false,"code":"RATE_LIMITED","error":"x","retryAfter":"1"}),
        json!({"ok":true,"data":null}),
        json!({"ok":true,"data":"x"}),
    ] {
        let reply = bad.clone();
        let (_dir, path, _closed) = scripted(move |s, dec| {
            read_frame(s, dec).expect("handshake");
            write_frame(
                s,
                &json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}}),
            );
            let req = read_frame(s, dec).expect("request");
            let mut reply = reply;
            reply["id"] = req["id"].clone();
            write_frame(s, &reply);
        });
        block_on_bounded(async {
            let client = Client::connect(&path, CapabilitySource::None)
                .await
                .expect("connect");
            let err = client.call("x", json!({})).await.expect_err("malformed");
            assert!(err.is_connection_lost(), "{bad}: {err:?}");
        });
    }
}

#[test]
fn a_handshake_reply_without_a_version_means_version_1() {
    let (_dir, path, _closed) = scripted(|s, dec| {
        read_frame(s, dec).expect("handshake");
        write_frame(s, &json!({"v":1,"op":"handshake","ok":true}));
        let req = read_frame(s, dec).expect("request");
        assert_eq!(req["v"], 1);
        let reply = json!({"id":req["id"],"ok":false,"code":"RATE_LIMITED","error":"Too many requests","retryAfter":3});
        write_frame(s, &reply);
    });
    block_on_bounded(async {
        let client = Client::connect(&path, CapabilitySource::None)
            .await
            .expect("connect");
        assert_eq!(client.protocol_version(), 1);
        let err = client
            .call("save_token", json!({}))
            .await
            .expect_err("limited");
        assert!(
            matches!(
                &err,
                ClientError::Server {
                    retry_after: Some(3),
                    ..
                }
            ),
            "{err:?}"
        );
    });
}

#[test]
fn a_server_that_closes_during_the_handshake_is_reported() {
    let (_dir, path, _closed) = scripted(|s, dec| {
        read_frame(s, dec).expect("handshake");
        let _ = s.shutdown(Shutdown::Both);
    });
    block_on_bounded(async {
        let err = Client::connect(&path, CapabilitySource::None)
            .await
            .expect_err("closed");
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
    });
    let dir = short_tempdir();
    let err = block_on_bounded(Client::connect(
        dir.path().join("none.sock"),
        CapabilitySource::None,
    ))
    .expect_err("no socket");
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("none.sock"), "{err}");
}

// ---------------------------------------------------------------------------
// Capability token sources
// ---------------------------------------------------------------------------

fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

#[test]
fn a_token_file_with_or_without_newline_is_accepted() {
    let server = Server::start(with_token());
    let dir = short_tempdir();
    for content in [format!("{TOKEN}\n"), TOKEN.to_owned()] {
        let file = write_file(dir.path(), "token", content.as_bytes());
        let source = CapabilitySource::from_lookup(|name| {
            (name == "CREDPROXY_CAPABILITY_FILE").then(|| file.clone().into_os_string())
        })
        .expect("source");
        assert!(matches!(&source, CapabilitySource::File(p) if *p == file));
        block_on_bounded(async {
            let client = Client::connect(&server.path, source)
                .await
                .expect("connect with the token file");
            assert!(client.list_providers().await.is_ok());
        });
    }
}

#[test]
fn malformed_token_files_are_refused_without_showing_the_content() {
    let dir = short_tempdir();
    let upper = TOKEN.to_uppercase();
    let short = "d".repeat(63);
    for content in [
        format!("{upper}\n"),
        format!("{short}\n"),
        format!("{TOKEN}\r\n"),
        format!("{TOKEN}\n\n"),
        format!("{TOKEN}\nextra-secret-looking-stuff"),
        String::new(),
    ] {
        let file = write_file(dir.path(), "token", content.as_bytes());
        let err = CapabilitySource::File(file.clone())
            .resolve()
            .expect_err("malformed");
        assert!(
            matches!(&err, CapabilityError::Malformed { origin: TokenOrigin::File(p) } if *p == file),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("64 lowercase hexadecimal"),
            "{err}"
        );
        for shown in [err.to_string(), format!("{err:?}")] {
            for secretish in [TOKEN, &upper, &short, "extra-secret"] {
                assert!(!shown.contains(secretish), "{shown}");
            }
        }
        // Connecting fails the same way, before any socket is touched.
        let err = block_on_bounded(Client::connect(
            dir.path().join("unused.sock"),
            CapabilitySource::File(file),
        ))
        .expect_err("malformed");
        assert!(matches!(err, ClientError::Capability(_)), "{err:?}");
    }
    let err = CapabilitySource::File(dir.path().join("missing"))
        .resolve()
        .expect_err("missing");
    assert!(matches!(err, CapabilityError::ReadFile { .. }), "{err:?}");
}

#[test]
fn a_token_on_an_inherited_fd_is_read_once() {
    let server = Server::start_with(with_token(), store_keys);
    let (reader, mut writer) = std::io::pipe().expect("pipe");
    writer
        .write_all(format!("{TOKEN}\n").as_bytes())
        .expect("write token");
    drop(writer);
    let fd = reader.as_raw_fd();
    let fd_text = fd.to_string();
    let source = CapabilitySource::from_lookup(|name| {
        (name == "LLXPRT_CAPABILITY_FD").then(|| fd_text.clone().into())
    })
    .expect("source");
    assert!(matches!(source, CapabilitySource::Fd(n) if n == fd));
    let opts = options(|o| o.idle_close_ms = 50);
    block_on_bounded(async {
        let client = Client::connect_with_options(&server.path, source.clone(), opts)
            .await
            .expect("connect with the fd token");
        // The token was read once and kept: after the idle close the client
        // handshakes again although the pipe is now empty.
        server.next(|e| matches!(e, Ev::Eof(_))).await;
        assert!(client.get_api_key("K3").await.expect("key").is_some());
        assert_eq!(server.handshakes(), 2);
        let tokens: Vec<Value> = server
            .log()
            .iter()
            .filter_map(|e| match e {
                Ev::Received(_, f) if f["op"] == "handshake" => {
                    Some(f["payload"]["capabilityToken"].clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(tokens, vec![json!(TOKEN), json!(TOKEN)]);
    });
    // The pipe was consumed; the descriptor itself stays open and ours.
    let err = source.resolve().expect_err("drained pipe");
    assert!(
        matches!(err, CapabilityError::Malformed { origin: TokenOrigin::Fd(n) } if n == fd),
        "{err:?}"
    );
    drop(reader);
}

#[test]
fn fd_tokens_need_the_exact_content() {
    for content in [
        TOKEN.to_owned(),
        format!("{}\n", TOKEN.to_uppercase()),
        format!("{TOKEN}\n "),
    ] {
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        writer.write_all(content.as_bytes()).expect("write");
        drop(writer);
        let err = CapabilitySource::Fd(reader.as_raw_fd())
            .resolve()
            .expect_err("malformed");
        let shown = err.to_string();
        assert!(shown.contains("and a newline"), "{shown}");
        assert!(!shown.to_lowercase().contains(TOKEN), "{shown}");
    }
    let err = CapabilitySource::Fd(999_999_999)
        .resolve()
        .expect_err("not open");
    assert!(matches!(err, CapabilityError::ReadFd { .. }), "{err:?}");
    let err = CapabilitySource::from_lookup(|name| {
        (name == "LLXPRT_CAPABILITY_FD").then(|| TOKEN.into())
    })
    .expect_err("not a number");
    assert!(matches!(err, CapabilityError::InvalidFdVar), "{err:?}");
    assert!(!err.to_string().contains(TOKEN));
}
