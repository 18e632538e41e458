//! TEMPORARY (issue 13's benchmark): the two other concurrency models for
//! Unix socket connections, selected with `CREDPROXY_PROTO_MODEL` in the
//! environment of `credproxy serve`, so that `credproxy bench` measures
//! all three through the same engine, store and audit code:
//!
//! - `smol-local`: the connection is a task on the loop's `LocalExecutor`
//!   over async-net (`async_conn.rs`), all on one thread;
//! - `smol-mt`: the same task on a multi-threaded `smol::Executor`
//!   (one thread per `--io-threads`);
//! - `threads`: a thread per connection, blocking reads; the thread writes
//!   the replies it produced itself; replies produced elsewhere (effects,
//!   timers) are written by one flusher thread. A per-connection lock
//!   keeps the outbox's order.
//!
//! Anything else (or unset): the I/O threads on mio (the product).
//! Removed once the benchmark has chosen.

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use credproxy_core::ConnId;
use rand_core::CryptoRng;
use smol::channel::{Receiver, Sender};

use super::socket_conn::{READ_CHUNK, READ_FIRST};
use super::state::{Caller, Flow, Outgoing, Shared, drive, written};

/// Which model serves socket connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Model {
    Mio,
    SmolLocal,
    SmolMt,
    Threads,
}

pub(super) fn model() -> Model {
    static M: OnceLock<Model> = OnceLock::new();
    *M.get_or_init(|| match std::env::var("CREDPROXY_PROTO_MODEL").as_deref() {
        Ok("smol-local") => Model::SmolLocal,
        Ok("smol-mt") => Model::SmolMt,
        Ok("threads") => Model::Threads,
        _ => Model::Mio,
    })
}

/// The multi-threaded executor of `smol-mt`.
pub(super) fn mt_executor(threads: usize) -> &'static smol::Executor<'static> {
    static EX: OnceLock<&'static smol::Executor<'static>> = OnceLock::new();
    EX.get_or_init(|| {
        let ex: &'static smol::Executor<'static> = Box::leak(Box::new(smol::Executor::new()));
        for i in 0..threads {
            std::thread::Builder::new()
                .name(format!("credproxy-smol-{i}"))
                .spawn(move || smol::block_on(ex.run(smol::future::pending::<()>())))
                .expect("spawn");
        }
        ex
    })
}

thread_local! {
    /// The connection whose thread runs here (`u64::MAX` elsewhere).
    static CURRENT: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// The writing side of a thread-per-connection connection.
pub(super) struct ThreadConn {
    id: ConnId,
    stream: Mutex<UnixStream>,
    outbox: Receiver<Outgoing>,
    flow: Arc<Flow>,
}

/// The flusher thread's queue.
pub(super) type Flusher = Sender<Arc<ThreadConn>>;

/// Starts the flusher thread (writes replies produced on other threads).
pub(super) fn start_flusher<R: CryptoRng + Send + 'static>(shared: Arc<Shared<R>>) -> Flusher {
    let (tx, rx) = smol::channel::unbounded::<Arc<ThreadConn>>();
    std::thread::Builder::new()
        .name("credproxy-flusher".into())
        .spawn(move || {
            while let Ok(conn) = rx.recv_blocking() {
                conn.write_pending(&shared);
                shared.audit.flush();
            }
        })
        .expect("spawn");
    tx
}

impl ThreadConn {
    /// Called under the engine lock when `conn` got output.
    pub fn pushed(self: &Arc<Self>, flusher: &Flusher) {
        if CURRENT.get() != self.id.0 {
            let _ = flusher.try_send(self.clone());
        }
    }

    /// Writes everything in the outbox, in order; closes after a close.
    fn write_pending<R: CryptoRng>(&self, shared: &Shared<R>) {
        let mut stream = self.stream.lock().unwrap_or_else(PoisonError::into_inner);
        while let Ok(item) = self.outbox.try_recv() {
            match item {
                Outgoing::Bytes(bytes) => {
                    if stream.write_all(&bytes).is_err() {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    written(shared, self.id, &self.flow, bytes.len());
                }
                Outgoing::Close => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// Makes the connection's parts; the thread starts with [`spawn`].
pub(super) fn thread_conn(
    id: ConnId,
    stream: &UnixStream,
    outbox: Receiver<Outgoing>,
    flow: Arc<Flow>,
) -> std::io::Result<Arc<ThreadConn>> {
    // Accepted non-blocking: this model blocks.
    stream.set_nonblocking(false)?;
    Ok(Arc::new(ThreadConn {
        id,
        stream: Mutex::new(stream.try_clone()?),
        outbox,
        flow,
    }))
}

/// Starts the connection's thread: blocking reads, the engine driven with
/// each, its own replies written at once.
pub(super) fn spawn<R: CryptoRng + Send + 'static>(
    conn: Arc<ThreadConn>,
    mut stream: UnixStream,
    shared: Arc<Shared<R>>,
    alive: Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            CURRENT.set(conn.id.0);
            let id = conn.id;
            let mut buf = vec![0u8; READ_FIRST];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        drive(&shared, Caller::Connection, |s, now| {
                            s.engine.handle_read_closed(id, now);
                        });
                        conn.write_pending(&shared);
                        shared.audit.flush();
                        break;
                    }
                    Ok(n) => {
                        drive(&shared, Caller::Connection, |s, now| {
                            s.engine.handle_bytes(id, &buf[..n], now);
                        });
                        conn.write_pending(&shared);
                        shared.audit.flush();
                        if n == buf.len() && n < READ_CHUNK {
                            buf.resize((n * 2).min(READ_CHUNK), 0);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        drive(&shared, Caller::Connection, |s, now| {
                            s.connection_gone(id, now);
                        });
                        break;
                    }
                }
            }
            CURRENT.set(u64::MAX);
            // After the read side ended, replies still come through the
            // flusher until the engine closes the connection; this
            // prototype keeps `alive` only until here.
            drop(alive);
        })?;
    Ok(())
}
