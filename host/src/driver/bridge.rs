//! Streams that are not Unix sockets (stdio, embedders' boxed
//! `AsyncRead`/`AsyncWrite` halves) are served by the same connection
//! driver as sockets: each is bridged onto one end of a
//! `UnixStream::pair()`, whose other end goes to an I/O thread exactly like
//! an accepted socket (`socket_conn.rs`), with the peer the transport
//! names. Two tasks on the loop's executor copy between the halves and
//! the bridge's end:
//!
//! - *in*: the reading half into the socket; at its end of stream (stdin's
//!   EOF) the socket's writing side is shut down, which the connection
//!   reads as the peer's half-close (the engine finishes the requests in
//!   flight);
//! - *out*: the socket into the writing half, each chunk written and
//!   flushed (stdout is line-buffered: a frame must not wait for a
//!   newline), until the connection has closed its end; then the half is
//!   closed, the transport's `on_close` runs and the loop is told. The
//!   out task counts as a connection still flushing for the driver's final
//!   flush, so replies in flight at EOF reach the writing half before the
//!   process exits. A failed write shuts the bridge down, which the
//!   connection then sees as a failed write of its own.
//!
//! Back-pressure carries over: when the connection stops reading (more
//! than [`MAX_UNSENT`](super::MAX_UNSENT) unsent) the socket pair's buffer
//! fills and the in task waits, so the reading half is not read either.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use smol::channel::Sender;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, LocalExecutor};

use super::socket_conn::READ_CHUNK;
use super::{Event, OnClose, Reader, Writer};

/// Starts the copy tasks between `reader`/`writer` and `outer`, one end of
/// a socket pair whose other end is served as a connection. `alive` is
/// held until the out task has written everything.
pub(super) fn spawn(
    ex: &LocalExecutor<'_>,
    outer: UnixStream,
    (reader, writer): (Reader, Writer),
    on_close: OnClose,
    alive: Sender<()>,
    events: Sender<Event>,
) -> std::io::Result<()> {
    let mut to_conn = Async::new(outer.try_clone()?)?;
    let mut from_conn = Async::new(outer)?;
    ex.spawn(async move {
        let mut reader = reader;
        let _ = smol::io::copy(&mut reader, &mut to_conn).await;
        let _ = to_conn.get_ref().shutdown(Shutdown::Write);
    })
    .detach();
    ex.spawn(async move {
        let mut writer = writer;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match from_conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if writer.write_all(&buf[..n]).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
        // The connection sees a failed write if it was still writing.
        let _ = from_conn.get_ref().shutdown(Shutdown::Both);
        let _ = writer.close().await;
        on_close();
        drop(alive);
        let _ = events.try_send(Event::ConnectionEnded);
    })
    .detach();
    Ok(())
}
