//! The loopback listener with a stub in place of the engine: requests are
//! read, handed over and answered; bad requests are refused without the
//! stub; dropping the listener closes the port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;

use credproxy::loopback::{Incoming, Listener};
use credproxy_core::loopback::PAGE_BAD_REQUEST;
use smol::LocalExecutor;
use smol::channel::{Sender, unbounded};

use crate::support::http_stub::{TIMEOUT, free_port, get, raw_http, split_answer};

const PAGE: &str = "stub page\n";

type Ack = mpsc::Sender<std::io::Result<Vec<SocketAddr>>>;

enum Cmd {
    Start(u16, Ack),
    Stop(mpsc::Sender<()>),
    /// Stop and start again on the same port without yielding to the
    /// executor in between (as a drain with `StopListener` then
    /// `StartListener` would).
    Restart(u16, Ack),
}

/// A thread running a LocalExecutor that owns at most one listener; the
/// stub answers every request with (200, PAGE) and reports its target.
struct Harness {
    cmds: Sender<Cmd>,
    targets: mpsc::Receiver<(u16, String)>,
}

impl Harness {
    /// A harness whose listener is started on a free port.
    fn started() -> (Harness, u16) {
        let h = Harness::new();
        let port = free_port();
        h.start(port).unwrap();
        (h, port)
    }

    fn new() -> Harness {
        let (cmds, cmd_rx) = unbounded::<Cmd>();
        let (target_tx, targets) = mpsc::channel();
        thread::spawn(move || {
            let ex = LocalExecutor::new();
            smol::block_on(ex.run(async {
                let mut listener: Option<Listener> = None;
                while let Ok(cmd) = cmd_rx.recv().await {
                    match cmd {
                        Cmd::Start(port, ack) | Cmd::Restart(port, ack) => {
                            drop(listener.take());
                            let target_tx = target_tx.clone();
                            let stub = move |incoming: Incoming| {
                                let _ = target_tx.send((incoming.port, incoming.target));
                                let _ = incoming.reply.try_send((200, PAGE));
                            };
                            let r = Listener::bind(&ex, port, stub).map(|l| {
                                assert_eq!(l.port(), port);
                                let addrs = l.local_addrs().to_vec();
                                listener = Some(l);
                                addrs
                            });
                            let _ = ack.send(r);
                        }
                        Cmd::Stop(ack) => {
                            listener = None;
                            let _ = ack.send(());
                        }
                    }
                }
                drop(listener);
            }));
        });
        Harness { cmds, targets }
    }

    fn start(&self, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let (tx, rx) = mpsc::channel();
        self.cmds.send_blocking(Cmd::Start(port, tx)).unwrap();
        rx.recv_timeout(TIMEOUT).unwrap()
    }

    fn restart(&self, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let (tx, rx) = mpsc::channel();
        self.cmds.send_blocking(Cmd::Restart(port, tx)).unwrap();
        rx.recv_timeout(TIMEOUT).unwrap()
    }

    fn stop(&self) {
        let (tx, rx) = mpsc::channel();
        self.cmds.send_blocking(Cmd::Stop(tx)).unwrap();
        rx.recv_timeout(TIMEOUT).unwrap();
    }

    fn no_target_seen(&self) -> bool {
        self.targets.try_recv().is_err()
    }
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[test]
fn get_is_handed_over_and_answered() {
    let h = Harness::new();
    let port = free_port();
    let addrs = h.start(port).unwrap();
    assert!(addrs.contains(&v4(port)));

    let target = "/auth/callback?code=abc%20d&state=0123456789abcdef";
    let answer = get(v4(port), target);
    assert_eq!(
        h.targets.recv_timeout(TIMEOUT).unwrap(),
        (port, target.to_owned())
    );
    let (status, headers, body) = split_answer(&answer);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        headers,
        vec![
            "Content-Type: text/plain; charset=utf-8".to_owned(),
            format!("Content-Length: {}", PAGE.len()),
            "Connection: close".to_owned(),
            "Cache-Control: no-store".to_owned(),
        ]
    );
    assert_eq!(body, PAGE);

    // HTTP/1.0 and a bare path work too.
    let answer = raw_http(v4(port), b"GET / HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(h.targets.recv_timeout(TIMEOUT).unwrap().1, "/");
    h.stop();
}

#[test]
fn ipv6_loopback_is_served_when_available() {
    let h = Harness::new();
    let port = free_port();
    let addrs = h.start(port).unwrap();
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    if !addrs.contains(&v6) {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let answer = get(v6, "/cb?state=x");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(h.targets.recv_timeout(TIMEOUT).unwrap().1, "/cb?state=x");
}

#[test]
fn non_get_and_malformed_requests_get_400_without_the_engine() {
    let (h, port) = Harness::started();
    let requests: Vec<Vec<u8>> = vec![
        b"POST /auth/callback?code=a&state=b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            .to_vec(),
        b"HEAD /auth/callback HTTP/1.1\r\n\r\n".to_vec(),
        b"this is not http\r\n\r\n".to_vec(),
        b"GET http://127.0.0.1/auth/callback HTTP/1.1\r\n\r\n".to_vec(),
        b"GET * HTTP/1.1\r\n\r\n".to_vec(),
        b"GET /x HTTP/2.0\r\n\r\n".to_vec(),
        // Incomplete head, then EOF.
        b"GET /auth/callback HTTP/1.1\r\nHost: x\r\n".to_vec(),
        // A head over 8 KiB.
        format!(
            "GET /auth/callback HTTP/1.1\r\nX-Long: {}\r\n\r\n",
            "a".repeat(9000)
        )
        .into_bytes(),
    ];
    for request in requests {
        let mut stream = TcpStream::connect(v4(port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(&request).unwrap();
        // Half-close so an incomplete head ends.
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (status, _, body) = split_answer(&answer);
        assert_eq!(
            status,
            "HTTP/1.1 400 Bad Request",
            "{:?}",
            String::from_utf8_lossy(&request[..request.len().min(40)])
        );
        assert_eq!(body, PAGE_BAD_REQUEST);
    }
    assert!(h.no_target_seen());
}

#[test]
fn connection_closed_without_a_request_gets_nothing() {
    let (h, port) = Harness::started();
    let mut stream = TcpStream::connect(v4(port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(answer.is_empty());
    assert!(h.no_target_seen());
}

#[test]
fn stop_closes_the_port_and_it_can_be_started_again() {
    let (h, port) = Harness::started();
    assert!(get(v4(port), "/a").starts_with("HTTP/1.1 200"));
    h.stop();
    let err = TcpStream::connect(v4(port)).expect_err("the port is closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    h.start(port).unwrap();
    assert!(get(v4(port), "/b").starts_with("HTTP/1.1 200"));
    // Closing is immediate: the port can be bound again at once.
    h.restart(port).unwrap();
    assert!(get(v4(port), "/c").starts_with("HTTP/1.1 200"));
}

#[test]
fn busy_port_fails_to_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let h = Harness::new();
    assert!(h.start(port).is_err());
}
