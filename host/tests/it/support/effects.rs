//! Helpers for the effect tests: a canned HTTP/1.1 server on 127.0.0.1 that
//! records what it received, a free-port finder and a raw HTTP client.
//!
//! Nothing here sleeps to wait for timing: every wait is a blocking call
//! with a bound (socket timeouts, `recv_timeout`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

/// Bound on every socket read and every wait for a recorded request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A request as the test server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target.
    pub target: String,
    /// Headers in order (names as sent).
    pub headers: Vec<(String, String)>,
    /// Body (by Content-Length).
    pub body: Vec<u8>,
}

impl Recorded {
    /// The value of header `name` (any case).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with each connection.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answer these exact bytes, then close.
    Respond(Vec<u8>),
    /// Read the request, then answer nothing until the client goes away.
    Hang,
    /// Write these bytes as soon as the connection is accepted, without
    /// reading anything (e.g. plain text to a TLS client), then close.
    Greet(Vec<u8>),
}

/// A response with a body and extra header lines.
#[must_use]
pub fn response(status: &str, extra_headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for h in extra_headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON response.
#[must_use]
pub fn json(status: &str, body: &str) -> Vec<u8> {
    response(status, &["Content-Type: application/json"], body.as_bytes())
}

/// A server on 127.0.0.1 serving `connections` connections with
/// `behavior`, then stopping. Each request is reported on the receiver.
pub struct Server {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests received, in order.
    pub requests: Receiver<Recorded>,
}

impl Server {
    /// Starts the server.
    #[must_use]
    pub fn start(behavior: Behavior, connections: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for _ in 0..connections {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let tx = tx.clone();
                let behavior = behavior.clone();
                thread::spawn(move || serve_one(stream, &behavior, &tx));
            }
        });
        Server { addr, requests: rx }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request (bounded wait).
    #[must_use]
    pub fn next_request(&self) -> Recorded {
        self.requests
            .recv_timeout(TIMEOUT)
            .expect("the test server received no request")
    }
}

fn serve_one(mut stream: TcpStream, behavior: &Behavior, tx: &mpsc::Sender<Recorded>) {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    if let Behavior::Greet(bytes) = behavior {
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(Shutdown::Write);
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        return;
    }
    let Some(recorded) = read_request(&mut stream) else {
        return;
    };
    let _ = tx.send(recorded);
    match behavior {
        Behavior::Respond(bytes) => {
            // The client may stop reading (oversize body): ignore errors.
            let _ = stream.write_all(bytes);
            let _ = stream.flush();
            let _ = stream.shutdown(Shutdown::Write);
            // Wait (bounded) for the client to close before dropping.
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
        Behavior::Hang | Behavior::Greet(_) => {
            // Returns when the client closes (or after the read timeout).
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}

/// Reads one request head and its Content-Length body: the one HTTP
/// request reader of the test servers (this one, the conformance and the
/// hostile stub providers). `None` when the peer closes or sends no HTTP.
pub fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, method, target, headers) = loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let httparse::Status::Complete(len) = req.parse(&buf).ok()? {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (len, req.method?.to_owned(), req.path?.to_owned(), headers);
        }
    };
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_len..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method,
        target,
        headers,
        body,
    })
}

/// A port on 127.0.0.1 that was free a moment ago (bind 0, then close).
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `request` as is to `addr` and reads the whole answer (until the
/// server closes).
#[must_use]
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    String::from_utf8(answer).expect("utf-8 answer")
}

/// A GET for `target` with a Host header.
#[must_use]
pub fn get(addr: SocketAddr, target: &str) -> String {
    raw_http(
        addr,
        format!(
            "GET {target} HTTP/1.1\r\nHost: localhost:{}\r\nUser-Agent: test\r\n\r\n",
            addr.port()
        )
        .as_bytes(),
    )
}

/// Splits an answer into status line, header lines and body.
#[must_use]
pub fn split_answer(answer: &str) -> (String, Vec<String>, String) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n").map(str::to_owned);
    let status = lines.next().unwrap();
    (status, lines.collect(), body.to_owned())
}
