//! The one HTTP/1.1 stub server of the host tests, and the raw client the
//! tests use against the proxy's loopback listener.
//!
//! - [`HttpStub`]: accepts on `127.0.0.1:<ephemeral>` and hands each
//!   connection to the test's handler (serially, or one thread each), at
//!   most a given number of connections; stopped and joined on drop.
//! - [`read_request`]: the one request reader (head by httparse, then a
//!   `Content-Length` or chunked body), bounded in size and, through the
//!   socket timeouts, in time.
//! - [`Server`] with a [`Behavior`]: canned bytes per connection (the effect
//!   tests); the OAuth servers (`oauth_server.rs`, the conformance `Stub`)
//!   and the `login` stub are handlers of their own on [`HttpStub`].
//!
//! Nothing here sleeps to wait for timing: every wait is a blocking call
//! with a bound (socket timeouts, `recv_timeout`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Bound on every socket read and every wait for a recorded request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head or body accepted.
const MAX_REQUEST: usize = 256 * 1024;

/// A request as a stub saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// Headers in order (names as sent, values trimmed).
    pub headers: Vec<(String, String)>,
    /// Body (by Content-Length, or de-chunked).
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

    /// The target without its query.
    #[must_use]
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The query of the target (empty when none).
    #[must_use]
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
}

/// How an [`HttpStub`] runs its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On the accept thread, one connection after the other.
    Serial,
    /// On a thread of its own per connection (a handler may block).
    Threaded,
}

/// A listener on 127.0.0.1 whose connections go to a handler. The handler
/// gets the stream and the stop flag (set when the stub is dropped, so a
/// deliberate delay can be cut short). Dropping the stub stops accepting
/// and joins the accept thread; per-connection threads end with their
/// socket timeouts.
pub struct HttpStub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpStub {
    /// Starts accepting: `connections` at most, then the listener closes.
    pub fn start(
        mode: Mode,
        connections: usize,
        handler: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    ) -> HttpStub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP stub");
        let addr = listener.local_addr().expect("stub address");
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                for _ in 0..connections {
                    let accepted = listener.accept();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_read_timeout(Some(TIMEOUT));
                    let _ = stream.set_write_timeout(Some(TIMEOUT));
                    match mode {
                        Mode::Serial => handler(stream, &stop),
                        Mode::Threaded => {
                            let (handler, stop) = (handler.clone(), stop.clone());
                            thread::spawn(move || handler(stream, &stop));
                        }
                    }
                }
            })
        };
        HttpStub {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept (refused once the listener is gone).
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads one request: the head with httparse, then a `Content-Length` or
/// chunked body. An error when the peer closes early, sends no HTTP or
/// more than the size bound.
pub fn read_request(stream: &mut TcpStream) -> io::Result<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, method, target, headers) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let httparse::Status::Complete(len) =
            req.parse(&buf).map_err(|_| bad("malformed head"))?
        {
            let headers: Vec<(String, String)> = (req.headers.iter())
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).trim().to_owned();
                    (h.name.to_owned(), value)
                })
                .collect();
            let method = req.method.unwrap_or_default().to_owned();
            break (
                len,
                method,
                req.path.unwrap_or_default().to_owned(),
                headers,
            );
        }
        if buf.len() > MAX_REQUEST {
            return Err(bad("head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed before the head ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut request = Recorded {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    let rest = buf[head_len..].to_vec();
    let chunked =
        (request.header("transfer-encoding")).is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    request.body = if chunked {
        read_chunked(stream, rest)?
    } else {
        let length: usize = (request.header("content-length"))
            .map(|l| l.parse().map_err(|_| bad("bad content-length")))
            .transpose()?
            .unwrap_or(0);
        read_exactly(stream, rest, length)?
    };
    Ok(request)
}

/// `buf` topped up from the stream to `length` bytes.
fn read_exactly(stream: &mut TcpStream, mut buf: Vec<u8>, length: usize) -> io::Result<Vec<u8>> {
    if length > MAX_REQUEST {
        return Err(bad("body too large"));
    }
    let mut chunk = [0u8; 4096];
    while buf.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed inside the body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(length);
    Ok(buf)
}

fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut more = |buf: &mut Vec<u8>| -> io::Result<()> {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed inside a chunked body"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return Err(bad("body too large"));
        }
        Ok(())
    };
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            more(&mut buf)?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            return Ok(body);
        }
        while buf.len() < size + 2 {
            more(&mut buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// A response with a body and extra header lines (`status` is the status
/// line's tail, e.g. `200 OK`).
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

/// Writes `bytes` and closes the sending side (the client may have stopped
/// reading, e.g. at an oversize body: errors are ignored).
pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

/// Waits (bounded by the read timeout) for the client to close.
pub fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// What a [`Server`] does with each connection.
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

/// A stub serving `connections` connections with one [`Behavior`], then
/// stopping. Each request is reported on the receiver.
pub struct Server {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests received, in order.
    pub requests: Receiver<Recorded>,
    _stub: HttpStub,
}

impl Server {
    /// Starts the server.
    #[must_use]
    pub fn start(behavior: Behavior, connections: usize) -> Server {
        Server::scripted(vec![behavior; connections])
    }

    /// A server whose n-th connection gets the n-th behaviour.
    #[must_use]
    pub fn scripted(behaviors: Vec<Behavior>) -> Server {
        let (tx, rx) = mpsc::channel();
        let script = std::sync::Mutex::new(behaviors.clone().into_iter());
        let stub = HttpStub::start(Mode::Threaded, behaviors.len(), move |mut stream, _| {
            let next = script.lock().expect("script").next();
            if let Some(behavior) = next {
                serve_one(&mut stream, &behavior, &tx);
            }
        });
        Server {
            addr: stub.addr(),
            requests: rx,
            _stub: stub,
        }
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

fn serve_one(stream: &mut TcpStream, behavior: &Behavior, tx: &mpsc::Sender<Recorded>) {
    if let Behavior::Greet(bytes) = behavior {
        send(stream, bytes);
        drain(stream);
        return;
    }
    let Ok(recorded) = read_request(stream) else {
        return;
    };
    let _ = tx.send(recorded);
    if let Behavior::Respond(bytes) = behavior {
        send(stream, bytes);
    }
    // Returns when the client closes (or after the read timeout).
    drain(stream);
}

/// A port on 127.0.0.1 that was free a moment ago (bind 0, then close).
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
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
