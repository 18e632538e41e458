//! `--memory` and `--startup`: resident memory per idle connection and
//! per live OAuth session, and the time from spawning `credproxy serve` to
//! a completed handshake.

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::frame::{FrameReader, RequestTemplate, error_summary, reply_head};
use super::load::{IO_TIMEOUT, handshake};
use super::server::{Scratch, Server, ServerSpec, prepare_store, seed_token};
use super::stats::median;

/// Time given to the server to settle before each RSS reading.
const SETTLE: Duration = Duration::from_millis(500);

/// `VmRSS` of `pid` in KiB, from `/proc/<pid>/status`.
///
/// # Errors
///
/// When the file cannot be read or has no such line.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    parse_rss_kib(&status).ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit and
/// returns the soft limit now in force.
#[must_use]
pub fn raise_nofile() -> u64 {
    crate::fd_limit::raise_nofile_limit().unwrap_or(0)
}

/// Connects and handshakes with a small buffer: only the stream is kept
/// (10 000 of them).
fn idle_connection(socket: &Path, token: Option<&str>) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    handshake(&mut s, &mut FrameReader::new(256, 1 << 20), token)?;
    Ok(s)
}

/// What `--memory` measured (KiB are the kernel's `VmRSS` figures).
#[derive(Debug, Serialize)]
pub struct MemoryReport {
    /// Idle connections opened (and handshaken).
    pub connections: usize,
    /// OAuth sessions created.
    pub sessions: usize,
    /// The bench's own `RLIMIT_NOFILE` soft limit after raising it.
    pub bench_nofile: u64,
    /// Right after start-up.
    pub rss_start_kib: u64,
    /// With one connection open and one `get_token` served (the base).
    pub rss_base_kib: u64,
    /// With the idle connections open as well.
    pub rss_connections_kib: u64,
    /// With the sessions created as well.
    pub rss_sessions_kib: u64,
    /// `(rss_connections − rss_base) / connections`, bytes.
    pub bytes_per_connection: f64,
    /// `(rss_sessions − rss_connections) / sessions`, bytes.
    pub bytes_per_session: f64,
    /// Flags the server was started with (beyond the socket and store).
    pub server_flags: Vec<String>,
}

/// Opens `connections` idle connections and then `sessions` sessions
/// (`oauth_initiate` for `anthropic`) on one fresh server, reading its
/// `VmRSS` before and after each step.
///
/// # Errors
///
/// When the server cannot start, a limit is too low, or a request fails.
pub fn memory(connections: usize, sessions: usize, audit: bool) -> Result<MemoryReport, String> {
    let nofile = raise_nofile();
    // The server clamps its limits to fit beside its own descriptors
    // (`fd_limit`): room for the connections, the default pending
    // budget and that reserve.
    let threads = crate::driver::default_threads();
    let pending = credproxy_core::config::Limits::default().max_pending_handshakes as u64;
    let need = connections as u64 + 1 + pending + crate::fd_limit::reserve(threads);
    if nofile < need {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}; {connections} connections need at least {need} \
             (raise the hard limit, e.g. `ulimit -Hn {need}` as root, or use fewer --idle-connections)"
        ));
    }
    let scratch = Scratch::new()?;
    prepare_store(&scratch, &[])?;
    let server_flags = vec![
        "--max-connections".to_owned(),
        (connections + 1).to_string(),
        // The bench is one process holding every connection.
        "--max-connections-per-pid".to_owned(),
        (connections + 1).to_string(),
        "--sessions-per-peer".to_owned(),
        sessions.max(1).to_string(),
        "--sessions-total".to_owned(),
        sessions.max(1).to_string(),
    ];
    let spec = ServerSpec {
        with_token: false,
        audit,
        extra: server_flags.clone(),
    };
    let mut server = Server::spawn(&scratch, "memory", &spec)?;
    let pid = server.pid();
    seed_token(&server.socket, None)?;
    thread::sleep(SETTLE);
    let rss_start_kib = rss_kib(pid)?;

    // The base: one connection that has served a get_token.
    let mut first = super::load::connect(&server.socket, None)?;
    first.call("get_token", &json!({"provider": "anthropic"}), 1)?;
    thread::sleep(SETTLE);
    let rss_base_kib = rss_kib(pid)?;

    let mut idle = Vec::with_capacity(connections);
    for i in 0..connections {
        idle.push(
            idle_connection(&server.socket, None)
                .map_err(|e| format!("connection {}: {e}", i + 1))?,
        );
    }
    thread::sleep(SETTLE);
    let rss_connections_kib = rss_kib(pid)?;

    // Sessions, spread over the connections (the per-connection rate limit
    // on login operations is 60/s, burst 120).
    let initiate = RequestTemplate::new("oauth_initiate", &json!({"provider": "anthropic"}))?;
    let mut frame = Vec::new();
    let n_idle = idle.len();
    for i in 0..sessions {
        let s = if n_idle == 0 {
            &mut first.stream
        } else {
            &mut idle[i % n_idle]
        };
        frame.clear();
        initiate.append(&mut frame, i as u64 + 10);
        s.write_all(&frame)
            .map_err(|e| format!("oauth_initiate: {e}"))?;
        let reply = FrameReader::new(4096, 1 << 20)
            .read_one(s)
            .map_err(|e| format!("oauth_initiate: {e}"))?;
        if reply_head(&reply).is_none_or(|h| !h.ok) {
            return Err(format!(
                "oauth_initiate {} failed: {}",
                i + 1,
                error_summary(&reply)
            ));
        }
    }
    thread::sleep(SETTLE);
    let rss_sessions_kib = rss_kib(pid)?;
    drop(idle);
    drop(first);
    server.stop();

    #[allow(clippy::cast_precision_loss)]
    let per = |after: u64, before: u64, n: usize| {
        if n == 0 {
            0.0
        } else {
            (after as f64 - before as f64) * 1024.0 / n as f64
        }
    };
    Ok(MemoryReport {
        connections,
        sessions,
        bench_nofile: nofile,
        rss_start_kib,
        rss_base_kib,
        rss_connections_kib,
        rss_sessions_kib,
        bytes_per_connection: per(rss_connections_kib, rss_base_kib, connections),
        bytes_per_session: per(rss_sessions_kib, rss_connections_kib, sessions),
        server_flags,
    })
}

/// What `--startup` measured.
#[derive(Debug, Serialize)]
pub struct StartupReport {
    /// Each start, in milliseconds, in order.
    pub runs_ms: Vec<f64>,
    /// Median.
    pub median_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Starts `credproxy serve` (default mode: it generates a capability
/// token and writes its file) `runs` times on a seeded store and times
/// each from just before the spawn to the end of a successful handshake.
///
/// # Errors
///
/// When a start or a handshake fails.
pub fn startup(runs: usize, audit: bool) -> Result<StartupReport, String> {
    let scratch = Scratch::new()?;
    prepare_store(&scratch, &[])?;
    {
        // Seed the token once, through the protocol.
        let server = Server::spawn(
            &scratch,
            "seed",
            &ServerSpec {
                with_token: false,
                audit,
                extra: Vec::new(),
            },
        )?;
        seed_token(&server.socket, None)?;
    }
    let spec = ServerSpec {
        with_token: true,
        audit,
        extra: Vec::new(),
    };
    let mut runs_ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut server = Server::spawn(&scratch, "startup", &spec)?;
        let conn = super::load::connect(&server.socket, server.token.as_deref())?;
        let took = server.spawned_at.elapsed();
        drop(conn);
        server.stop();
        runs_ms.push(took.as_secs_f64() * 1000.0);
    }
    Ok(StartupReport {
        median_ms: median(&runs_ms),
        min_ms: runs_ms.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: runs_ms.iter().copied().fold(0.0, f64::max),
        runs_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vmrss() {
        let status = "Name:\tcredproxy\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_rss_kib(status), Some(12_345));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
