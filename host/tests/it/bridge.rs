//! Streams that are not sockets (stdio, embedders' halves) reach the one
//! connection driver through a socket pair (`host/src/driver/bridge.rs`).
//! What the bridge must not change: a single-connection driver (stdio)
//! ends once its connection is gone, however it went.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use std::thread;

use credproxy::audit_log::AuditLog;
use credproxy::driver::{Driver, Event, Lifetime};
use credproxy::store::{FileStore, Store};
use credproxy_core::{Config, Engine, Peer, Transport};
use credproxy_unix::client::proto::{ClientProto, IdGen};
use smol::io::AsyncWrite;
use smol::{Async, LocalExecutor};

use crate::support::TIMEOUT;

/// A writing half whose reader went away (stdout with the parent's end
/// closed): every write fails.
struct BrokenWriter;

impl AsyncWrite for BrokenWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn a_writer_that_fails_ends_a_single_connection_driver() {
    let root = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::from(
        FileStore::open(&root.path().join("store")).unwrap(),
    ));
    let (events, rx) = smol::channel::unbounded();
    // `ours` stays open (no end of stream): only the failed write can end
    // the connection.
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let (closed_tx, closed_rx) = mpsc::channel();
    events
        .send_blocking(Event::Open {
            reader: Box::pin(Async::new(theirs).unwrap()),
            writer: Box::pin(BrokenWriter),
            on_close: Box::new(move || {
                let _ = closed_tx.send(());
            }),
            peer: Peer::anonymous(Transport::Embedded),
        })
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel::<bool>();
    let driver = thread::spawn(move || {
        let engine =
            Engine::new(Config::default(), rand_core::UnwrapErr(getrandom::SysRng)).unwrap();
        let driver = Driver::new(engine, store, Arc::new(AuditLog::Off), events);
        let ex = LocalExecutor::new();
        let served = smol::block_on(ex.run(driver.run(&ex, rx, Lifetime::SingleConnection)));
        let _ = done_tx.send(served.is_ok());
    });
    // The handshake's reply cannot be written.
    let hello = ClientProto::<()>::new(IdGen::new(""), 1 << 22).handshake(None);
    ours.write_all(&hello).unwrap();
    closed_rx
        .recv_timeout(TIMEOUT)
        .expect("the transport's on_close ran");
    assert_eq!(
        done_rx.recv_timeout(TIMEOUT),
        Ok(true),
        "the driver ended once its only connection was gone"
    );
    driver.join().unwrap();
    drop(ours);
}
