//! The loopback redirect listener of browser logins (RFC 8252; SPEC §2.1,
//! §4 `browser_redirect`).
//!
//! [`Listener::bind`] listens on `127.0.0.1:port` and, when IPv6 loopback is
//! available, on `[::1]:port` (failing to bind `::1` alone is fine). Each
//! connection may carry one HTTP/1.x request; its head (request line and
//! headers, at most [`MAX_HEAD`] bytes) is parsed with `httparse`. A `GET`
//! with an origin-form target is handed to the `submit` callback as an
//! [`Incoming`] (the target is path and query, e.g.
//! `/auth/callback?code=…&state=…`); whatever `(status, body)` comes back on
//! its reply channel is written as a short plain-text page, then the
//! connection is closed. Any other method, or a head that does not parse or
//! is too long, gets a 400 without involving the callback. Each connection
//! gets [`CONNECTION_DEADLINE`] in all, and at most [`MAX_CONNECTIONS`] are
//! served at once per listener (more are closed at accept).
//!
//! Everything runs on the caller's [`LocalExecutor`] (no thread). Dropping
//! the [`Listener`] closes its listening sockets at once (so the port can be
//! bound again right away, e.g. by a `StartListener` that follows a
//! `StopListener` in the same drain) and every connection in progress soon
//! after (when the executor next runs).
//!
//! The request target carries the authorization code and `state`: it is
//! never logged, and [`Incoming`]'s `Debug` does not print it.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use credproxy_core::loopback::PAGE_BAD_REQUEST;
use smol::channel::{Sender, bounded};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use smol::{Async, LocalExecutor, Task, Timer};

/// Largest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// Time allowed for one connection, from accept to close.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// Connections served at once per listener.
pub const MAX_CONNECTIONS: usize = 32;

/// Most headers accepted in a request head.
const MAX_HEADERS: usize = 64;

/// Most bytes discarded after the reply while waiting for the client to
/// close (so unread request bytes do not turn our close into a reset that
/// could destroy the reply).
const MAX_LINGER_BYTES: usize = 64 * 1024;

/// Pause after a failed accept (e.g. out of descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The page when the engine is gone (shutting down).
pub const PAGE_UNAVAILABLE: &str = "The login service is not available.\n";

/// An HTTP status and a plain-text page.
pub type Reply = (u16, &'static str);

/// A `GET` that reached a listener.
pub struct Incoming {
    /// The listener's port.
    pub port: u16,
    /// The request target: path and query (holds the code and `state`).
    pub target: String,
    /// Where the answer goes; dropping it answers 503.
    pub reply: Sender<Reply>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("port", &self.port)
            .field("target", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// The listening sockets, shared by the [`Listener`] (which empties it on
/// drop, closing them at once) and its accept loop (which borrows them only
/// inside each poll, never across an await).
type Sockets = Rc<RefCell<Vec<Async<std::net::TcpListener>>>>;

/// A running loopback listener; dropping it stops it.
pub struct Listener {
    port: u16,
    addrs: Vec<SocketAddr>,
    sockets: Sockets,
    _task: Task<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Close the listening sockets now; the task (and the connections it
        // serves) is cancelled when the field drops.
        self.sockets.borrow_mut().clear();
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("port", &self.port)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds `127.0.0.1:port` (an error if that fails) and `[::1]:port`
    /// (skipped if that fails), and serves them on `ex`, passing each
    /// well-formed `GET` to `submit`. With port 0 the system picks a port
    /// for IPv4 and the same one is tried on IPv6.
    pub fn bind(
        ex: &LocalExecutor<'_>,
        port: u16,
        submit: impl Fn(Incoming) + 'static,
    ) -> io::Result<Listener> {
        let v4 = Async::new(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?)?;
        let v4_addr = v4.get_ref().local_addr()?;
        let port = v4_addr.port();
        let mut addrs = vec![v4_addr];
        let mut sockets = vec![v4];
        let v6 = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port)).and_then(Async::new);
        if let Ok(v6) = v6 {
            addrs.extend(v6.get_ref().local_addr());
            sockets.push(v6);
        }
        let sockets = Rc::new(RefCell::new(sockets));
        let submit: Rc<dyn Fn(Incoming)> = Rc::new(submit);
        let task = ex.spawn(serve(sockets.clone(), port, submit));
        Ok(Listener {
            port,
            addrs,
            sockets,
            _task: task,
        })
    }

    /// The port listened on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The addresses bound (127.0.0.1, and ::1 when available).
    #[must_use]
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// Accepts on the sockets until they are closed; each connection runs on
/// an executor owned by this future, so dropping it ends them all.
async fn serve(sockets: Sockets, port: u16, submit: Rc<dyn Fn(Incoming)>) {
    let connections = LocalExecutor::new();
    let active = Rc::new(Cell::new(0usize));
    connections
        .run(async {
            loop {
                let accepted = std::future::poll_fn(|cx| poll_accept(&sockets, cx)).await;
                let stream = match accepted.map(|r| r.and_then(TcpStream::try_from)) {
                    // Closed: the listener was dropped.
                    None => return,
                    Some(Ok(stream)) => stream,
                    Some(Err(_)) => {
                        Timer::after(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                if active.get() >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                active.set(active.get() + 1);
                let slot = ActiveSlot(active.clone());
                let submit = submit.clone();
                connections
                    .spawn(async move {
                        let _slot = slot;
                        smol::future::or(connection(stream, port, submit), async {
                            Timer::after(CONNECTION_DEADLINE).await;
                        })
                        .await;
                    })
                    .detach();
            }
        })
        .await;
}

/// Accepts a connection from any of `sockets`; `None` once they are closed.
fn poll_accept(
    sockets: &Sockets,
    cx: &mut Context<'_>,
) -> Poll<Option<io::Result<std::net::TcpStream>>> {
    let sockets = sockets.borrow();
    if sockets.is_empty() {
        return Poll::Ready(None);
    }
    for socket in sockets.iter() {
        loop {
            match socket.get_ref().accept() {
                Ok((stream, _)) => return Poll::Ready(Some(Ok(stream))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match socket.poll_readable(cx) {
                    // Readable since we last looked: try again.
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    // Registered for a wake-up: look at the next socket.
                    Poll::Pending => break,
                },
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
    Poll::Pending
}

/// Counts a connection in progress until dropped.
struct ActiveSlot(Rc<Cell<usize>>);

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// What the head of a request says.
enum Head {
    /// A `GET` with this origin-form target.
    Get(String),
    /// Anything else that arrived: answered 400.
    Bad,
    /// Nothing arrived (closed or failed before a byte): no answer.
    Nothing,
}

async fn connection(mut stream: TcpStream, port: u16, submit: Rc<dyn Fn(Incoming)>) {
    let reply = match read_head(&mut stream).await {
        Head::Nothing => return,
        Head::Bad => (400, PAGE_BAD_REQUEST),
        Head::Get(target) => {
            let (tx, rx) = bounded(1);
            submit(Incoming {
                port,
                target,
                reply: tx,
            });
            rx.recv().await.unwrap_or((503, PAGE_UNAVAILABLE))
        }
    };
    if stream.write_all(&response(reply)).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    // Half-close, then wait (bounded) for the client to close: closing with
    // unread request bytes would send a reset that can discard the reply.
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Reads until the head parses (or fails to), at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> Head {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = MAX_HEAD - buf.len();
        let n = match stream.read(&mut chunk[..room.min(1024)]).await {
            Ok(0) | Err(_) if buf.is_empty() => return Head::Nothing,
            Ok(0) | Err(_) => return Head::Bad,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return match (request.method, request.path) {
                    (Some("GET"), Some(target)) if target.starts_with('/') => {
                        Head::Get(target.to_owned())
                    }
                    _ => Head::Bad,
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(_) => return Head::Bad,
        }
    }
}

/// The whole response: status line, fixed headers, body.
fn response((status, body): Reply) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         Cache-Control: no-store\r\n\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_format() {
        let r = String::from_utf8(response((200, "hi\n"))).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 3\r\nConnection: close\r\nCache-Control: no-store\r\n\r\nhi\n"
        );
    }

    #[test]
    fn incoming_debug_hides_the_target() {
        let (tx, _rx) = bounded(1);
        let i = Incoming {
            port: 1,
            target: "/cb?code=SECRET&state=S".into(),
            reply: tx,
        };
        assert!(!format!("{i:?}").contains("SECRET"));
    }
}
