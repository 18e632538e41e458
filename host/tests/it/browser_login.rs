//! A browser-redirect login through the real driver and engine: the
//! engine's `StartListener` binds a loopback listener, the browser's
//! redirect (a GET from the test) reaches the engine, the code exchange is
//! an HTTP effect to a canned token server on 127.0.0.1, the token is
//! stored under the store lock (lock, meta and token effects), and the
//! listener stops when no login needs it any more.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use credproxy::audit_log::AuditLog;
use credproxy::driver::{Driver, Event, Lifetime};
use credproxy::store::{FileStore, Store};
use credproxy_core::loopback::{PAGE_BAD_REQUEST, PAGE_RECEIVED};
use credproxy_core::provider::{self, Dialect};
use credproxy_core::{Config, Engine, Peer, Transport};
use credproxy_unix::client::proto::{ClientProto, Event as ProtoEvent, Handshake, IdGen};
use serde_json::{Value, json};
use smol::channel::{Sender, unbounded};
use smol::{Async, LocalExecutor};

use crate::support::http_stub::{
    Behavior, Server, TIMEOUT, free_port, get, json, raw_http, split_answer,
};
use crate::support::wait_for;

/// The driver on its own thread, with one framed connection to it.
struct Running {
    events: Sender<Event>,
    conn: UnixStream,
    thread: Option<JoinHandle<()>>,
    /// The client protocol: handshake, ids and reply matching.
    proto: ClientProto,
}

impl Running {
    fn start(config: Config, store_root: &Path) -> Running {
        let store = Arc::new(Store::from(FileStore::open(store_root).unwrap()));
        let (events, rx) = unbounded();
        let tx = events.clone();
        let thread = thread::spawn(move || {
            let engine = Engine::new(config, rand_core::UnwrapErr(getrandom::SysRng)).unwrap();
            let driver = Driver::new(engine, store, Arc::new(AuditLog::Off), tx);
            let ex = LocalExecutor::new();
            smol::block_on(ex.run(driver.run(&ex, rx, Lifetime::UntilShutdown))).unwrap();
        });
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(TIMEOUT)).unwrap();
        let writer = theirs.try_clone().unwrap();
        let open = Event::Open {
            reader: Box::pin(Async::new(theirs).unwrap()),
            writer: Box::pin(Async::new(writer).unwrap()),
            on_close: Box::new(|| {}),
            peer: Peer::anonymous(Transport::Embedded),
        };
        events.send_blocking(open).unwrap();
        let mut running = Running {
            events,
            conn: ours,
            thread: Some(thread),
            proto: ClientProto::new(IdGen::new(""), 1 << 22),
        };
        let hello = running.proto.handshake(None);
        running.conn.write_all(&hello).unwrap();
        let hs = running.read_frame();
        match running.next_event(hs) {
            ProtoEvent::Handshake {
                outcome: Handshake::Accepted { .. },
                ..
            } => {}
            other => panic!("handshake: {other:?}"),
        }
        running
    }

    fn read_frame(&mut self) -> Value {
        let mut len = [0u8; 4];
        self.conn.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.conn.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Feeds one frame to the protocol and returns what it made of it.
    fn next_event(&mut self, frame: Value) -> ProtoEvent {
        let Value::Object(frame) = frame else {
            panic!("a frame that is not an object: {frame}");
        };
        self.proto.handle_frame(frame);
        self.proto.poll_event().expect("one event per frame")
    }

    fn call(&mut self, op: &str, payload: Value) -> Value {
        let (id, bytes) = self.proto.request(op, &payload, ()).expect("handshaken");
        self.conn.write_all(&bytes).unwrap();
        let frame = self.read_frame();
        match self.next_event(frame) {
            ProtoEvent::Reply {
                id: answered,
                reply,
                ..
            } if answered == id => Value::Object(reply.into_frame()),
            other => panic!("not the reply to {id}: {other:?}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.events.send_blocking(Event::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn provider_config(token_url: &str, port: u16) -> Config {
    let mut spec = provider::codex();
    spec.name = "local".into();
    spec.dialect = Dialect::Standard;
    spec.client_id = "client-1".into();
    spec.authorize_url = Some("https://auth.invalid/authorize".into());
    spec.token_url = Some(token_url.to_owned());
    spec.redirect_uri = Some(format!("http://localhost:{port}/auth/callback"));
    spec.extra_auth_params = Vec::new();
    let mut config = Config::default();
    config.providers.insert("local".into(), spec);
    config
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} in {url}"))
        .to_owned()
}

/// [`wait_for`] for at most 10 s.
fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_for(what, TIMEOUT, cond);
}

#[test]
fn browser_login_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let token_server = Server::start(
        Behavior::Respond(json(
            "200 OK",
            r#"{"access_token":"AT-1","refresh_token":"RT-1","expires_in":3600,"token_type":"bearer"}"#,
        )),
        1,
    );
    let port = free_port();
    let listener = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut proxy = Running::start(provider_config(&token_server.url("/token"), port), &root);

    let init = proxy.call("oauth_initiate", json!({"provider":"local"}));
    assert_eq!(init["ok"], json!(true), "{init}");
    assert_eq!(init["data"]["flow_type"], json!("browser_redirect"));
    let auth_url = init["data"]["auth_url"].as_str().unwrap().to_owned();
    let state = query_param(&auth_url, "state");
    let sid = init["data"]["session_id"].as_str().unwrap().to_owned();

    // The listener is up once the initiate reply is out. A wrong state and
    // a non-GET get 400 and leave the session alone.
    let answer = get(listener, "/auth/callback?code=nope&state=0000");
    let (status, _, body) = split_answer(&answer);
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert_eq!(body, PAGE_BAD_REQUEST);
    let answer = raw_http(
        listener,
        format!("POST /auth/callback?code=x&state={state} HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    let pending = proxy.call("oauth_poll", json!({"session_id": sid}));
    assert_eq!(pending["data"]["status"], json!("pending"), "{pending}");

    // The browser's redirect.
    let answer = get(
        listener,
        &format!("/auth/callback?code=CODE-1&state={state}"),
    );
    let (status, headers, body) = split_answer(&answer);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains(&"Cache-Control: no-store".to_owned()));
    assert_eq!(body, PAGE_RECEIVED);

    // The exchange reached the token server with the code and a verifier.
    let exchange = token_server.next_request();
    assert_eq!(exchange.method, "POST");
    assert_eq!(exchange.target, "/token");
    let form = String::from_utf8(exchange.body.clone()).unwrap();
    assert!(form.contains("code=CODE-1"), "{form}");
    assert!(form.contains("code_verifier="), "{form}");
    assert!(form.contains("grant_type=authorization_code"), "{form}");

    // The session completes with the sanitized token.
    let mut done = Value::Null;
    wait_until("the login to complete", || {
        let r = proxy.call("oauth_poll", json!({"session_id": sid}));
        let complete = r["data"]["status"] == json!("complete");
        done = r;
        complete
    });
    assert_eq!(done["data"]["token"]["access_token"], json!("AT-1"));
    assert!(done["data"]["token"].get("refresh_token").is_none());

    // Stored, refresh token included, and the store lock was released.
    let store = FileStore::open(&root).unwrap();
    let stored = store.get_token("local", "default", true).unwrap().unwrap();
    assert_eq!(stored.refresh_token(), Some("RT-1"));
    assert!(
        store
            .lock_key("local", "default", Duration::ZERO)
            .unwrap()
            .is_some()
    );

    // No login needs the listener any more: the port closes.
    wait_until("the listener to stop", || {
        TcpStream::connect(listener)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
}

#[test]
fn busy_redirect_port_fails_the_initiation() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut proxy = Running::start(
        provider_config("http://127.0.0.1:9/token", port),
        &dir.path().join("store"),
    );
    let init = proxy.call("oauth_initiate", json!({"provider":"local"}));
    assert_eq!(init["ok"], json!(false), "{init}");
    assert_eq!(init["code"], json!("FLOW_INITIATION_FAILED"));
}

#[test]
fn shutdown_closes_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listener = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut proxy = Running::start(
        provider_config("http://127.0.0.1:9/token", port),
        &dir.path().join("store"),
    );
    let init = proxy.call("oauth_initiate", json!({"provider":"local"}));
    assert_eq!(init["ok"], json!(true), "{init}");
    assert!(TcpStream::connect(listener).is_ok());
    drop(proxy);
    let err = TcpStream::connect(listener).expect_err("closed after shutdown");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}
