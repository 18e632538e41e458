//! `credproxy exec`: run a command next to a proxy of its own.
//!
//! The child gets the socket variables, the token file and the same token
//! on **fd 3** with `LLXPRT_CAPABILITY_FD=3`: llxprt's sandbox client reads
//! the token only from fd 3 and refuses any other number. What the child
//! would have inherited at fd 3 from us is passed on at another number
//! instead (see [`super::fd3`]). SIGTERM, SIGINT and SIGHUP stop the proxy
//! and are then forwarded to the child, whose status becomes ours.

use std::sync::mpsc as std_mpsc;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::fd3::{self, INHERITED_FD3_VAR};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, ExitCode};

use credproxy_core::Secret;

use super::{EXIT_FAILED, ExecArgs, Failure, failed, start_socket};

/// The descriptor the child reads the capability token from.
const TOKEN_FD: i32 = 3;

pub(super) fn cmd_exec(a: ExecArgs) -> Result<ExitCode, Failure> {
    // First, before this process opens anything: whatever sits at fd 3 now
    // was inherited from our parent.
    // (Only when fd 3 will hold the token; otherwise fd 3 passes as is.)
    let inherited = if a.serve.socket.insecure_no_token {
        None
    } else {
        fd3::take_inherited()
    };
    let start = start_socket(&a.serve.socket, &a.serve.common)?;
    let bound = &start.bound;
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    for (k, v) in bound.exports() {
        cmd.env(k, v);
    }
    let mut mappings = Vec::new();
    if let Some(token) = bound.instance.token() {
        mappings.push(FdMapping {
            parent_fd: token_pipe(token)?,
            child_fd: TOKEN_FD,
        });
        cmd.env("LLXPRT_CAPABILITY_FD", TOKEN_FD.to_string());
    }
    if let Some(moved) = inherited {
        // Kept at the (fresh, so otherwise unused) number it has here.
        let at = moved.as_raw_fd();
        mappings.push(FdMapping {
            parent_fd: moved,
            child_fd: at,
        });
        cmd.env(INHERITED_FD3_VAR, at.to_string());
    }
    cmd.fd_mappings(mappings)
        .map_err(|_| failed("two descriptors for the same number in the child"))?;
    let child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", a.command[0])))?;
    // The command owns the mapped descriptors: close ours now, so the
    // child is the only holder of the token pipe.
    drop(cmd);
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let (status_tx, status_rx) = std_mpsc::channel();
    let (done_tx, done_rx) = smol::channel::bounded::<()>(1);
    // A plain thread (not the executor's blocking pool): the status must
    // survive the executor, which ends when a signal stops the proxy.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = status_tx.send(child.wait());
        let _ = done_tx.send_blocking(());
    });
    let wait = async move {
        let _ = done_rx.recv().await;
    };
    let signal = start.run(|_| {}, wait)?;
    if let Some(sig) = signal
        && matches!(status_rx.try_recv(), Err(std_mpsc::TryRecvError::Empty))
    {
        // The child is still running: pass the signal on and take its status.
        let _ = kill(pid, nix_signal(sig));
    }
    match status_rx.recv() {
        Ok(Ok(st)) => Ok(exit_code_of(st)),
        Ok(Err(e)) => Err(failed(format!("waiting for {}: {e}", a.command[0]))),
        Err(_) => Err(failed("the command's status is unknown")),
    }
}

fn nix_signal(sig: credproxy_unix::ShutdownSignal) -> Signal {
    match sig {
        credproxy_unix::ShutdownSignal::Interrupt => Signal::SIGINT,
        credproxy_unix::ShutdownSignal::Terminate => Signal::SIGTERM,
        credproxy_unix::ShutdownSignal::Hangup => Signal::SIGHUP,
    }
}

/// The child's exit status as ours: its code, or 128 + the signal number.
pub(super) fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(i32::from(EXIT_FAILED));
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(EXIT_FAILED))
}

/// A pipe whose read end holds the token and a newline (65 bytes, far
/// below the pipe buffer, so the write never blocks); the write end is
/// closed before returning. The read end is close-on-exec here (no other
/// child may inherit it): the fd mapping gives the child its copy at fd 3.
pub(super) fn token_pipe(token: &Secret) -> Result<OwnedFd, Failure> {
    let (read, write) = nix::unistd::pipe().map_err(failed)?;
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(failed)?;
    let mut w = std::fs::File::from(write);
    w.write_all(format!("{}\n", token.expose()).as_bytes())
        .map_err(failed)?;
    drop(w);
    Ok(read)
}
