//! `credproxy exec`: run a command next to a proxy of its own.

use super::*;

pub(super) fn cmd_exec(a: ExecArgs) -> Result<ExitCode, Failure> {
    warn_if_not_hardened();
    let signals = ShutdownSignals::register().map_err(failed)?;
    let opts = options(&a.common)?;
    let store = serve::open_store(&opts.store_root)?;
    let bound = serve::bind(
        &placement(&a.socket),
        !a.socket.insecure_no_token,
        opts.allowed_uids.clone(),
    )?;
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    for (k, v) in bound.exports() {
        cmd.env(k, v);
    }
    let fd_pipe = match bound.instance.token() {
        Some(token) => Some(token_pipe(token)?),
        None => None,
    };
    if let Some(fd) = &fd_pipe {
        cmd.env("LLXPRT_CAPABILITY_FD", fd.as_raw_fd().to_string());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", a.command[0])))?;
    drop(fd_pipe);
    let status = std::rc::Rc::new(std::cell::Cell::new(None));
    let slot = status.clone();
    let wait = async move {
        let st = smol::unblock(move || child.wait()).await;
        slot.set(Some(st));
    };
    let signal = serve::run_socket(opts, store, bound, signals, |_| {}, wait)?;
    if let Some(sig) = signal {
        return Ok(ExitCode::from(
            u8::try_from(sig.exit_status()).unwrap_or(EXIT_FAILED),
        ));
    }
    match status.take() {
        Some(Ok(st)) => Ok(exit_code_of(st)),
        Some(Err(e)) => Err(failed(format!("waiting for {}: {e}", a.command[0]))),
        None => Err(failed("the command's status is unknown")),
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

/// A pipe whose read end (inherited by the child, not close-on-exec) holds
/// the token and a newline; the write end is closed before returning.
pub(super) fn token_pipe(token: &Secret) -> Result<OwnedFd, Failure> {
    let (read, write) = nix::unistd::pipe().map_err(failed)?;
    let mut w = std::fs::File::from(write);
    w.write_all(format!("{}\n", token.expose()).as_bytes())
        .map_err(failed)?;
    drop(w);
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(failed)?;
    Ok(read)
}
