//! `credproxy bench`: a load generator for any server of the wire
//! protocol, its echo baseline, and the memory and start-up measurements.
//!
//! - Load (the default): N connections ([`load`]), each a thread with a
//!   blocking socket and D requests in flight, for a warm-up and then a
//!   measured duration; requests/s and p50/p99/p99.9 latency (µs, from an
//!   HDR histogram, [`stats`]) per run and the median of the runs.
//! - `--baseline` (`--echo`): the same load, run by run, against an
//!   in-process echo server that answers with the real server's reply bytes
//!   ([`echo`]), and the ratio ours / baseline.
//! - `--memory`: `VmRSS` per idle connection and per OAuth session
//!   ([`measure`]).
//! - `--startup`: spawn of `credproxy serve` to a completed handshake.
//!
//! Without `--socket` the load runs against a `credproxy serve
//! --insecure-no-token` started from this executable on a temporary store
//! seeded with a realistic token ([`server`]). See BENCHMARKS.md for the
//! method and the numbers.

mod echo;
mod frame;
mod load;
mod measure;
mod server;
mod stats;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use load::{MixEntry, Workload, default_payload};
use stats::Aggregate;

/// `credproxy bench` options.
#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct BenchArgs {
    /// Socket of the server under test (any implementation of the
    /// protocol) [default: start `credproxy serve --insecure-no-token`
    /// from this executable on a temporary store seeded with a token for
    /// `anthropic` and an API key `bench`, and stop it afterwards]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Capability token file for --socket [default: no token]
    #[arg(long, value_name = "PATH", requires = "socket")]
    pub capability_file: Option<PathBuf>,
    /// Connections, one thread each.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, value_name = "D", default_value_t = 1)]
    pub depth: usize,
    /// Measured time per run (e.g. 5s, 300ms).
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up before each measured run (not counted).
    #[arg(long, value_name = "TIME", default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// The operation to send.
    #[arg(
        long,
        value_name = "OP",
        default_value = "get_token",
        conflicts_with = "mix"
    )]
    pub op: String,
    /// Payload of --op, a JSON object [default: {"provider":"anthropic"}
    /// for provider operations, {"name":"bench"} for key operations, else {}]
    #[arg(long, value_name = "JSON", conflicts_with = "mix")]
    pub payload: Option<String>,
    /// An operation mix with weights, each with its default payload, e.g.
    /// get_token:8,get_api_key:2
    #[arg(long, value_name = "OP:WEIGHT,…")]
    pub mix: Option<String>,
    /// Repeat the measurement and report each run and the median
    /// [default: 1; 20 with --startup]
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    /// Also run the same load, run by run, against an in-process raw echo
    /// server answering with the real server's reply bytes, and report the
    /// ratio ours / baseline.
    #[arg(long, visible_alias = "echo")]
    pub baseline: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure resident memory per idle connection and per OAuth session
    /// on a server of its own (raises RLIMIT_NOFILE, --max-connections and
    /// the session caps for it).
    #[arg(long, conflicts_with_all = ["baseline", "startup", "socket"])]
    pub memory: bool,
    /// Idle connections opened by --memory.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub idle_connections: usize,
    /// OAuth sessions (oauth_initiate for anthropic) created by --memory.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub sessions: usize,
    /// Measure start-up: spawning `credproxy serve` to its first completed
    /// handshake, --runs times (default 20).
    #[arg(long, conflicts_with_all = ["baseline", "socket"])]
    pub startup: bool,
    /// Start the bench's own server with `--audit-log off` [default: the
    /// audit log is on, written to a file in the temporary directory].
    #[arg(long)]
    pub no_audit: bool,
    /// One more flag for the bench's own server, e.g. --server-arg=--io-threads=1
    /// (repeatable).
    #[arg(
        long,
        value_name = "FLAG",
        allow_hyphen_values = true,
        conflicts_with = "socket"
    )]
    pub server_arg: Vec<String>,
}

/// Runs `credproxy bench`.
///
/// # Errors
///
/// A message for the user (bad options, a server that cannot be reached
/// or started, a failed request during setup).
pub fn run(a: &BenchArgs) -> Result<(), String> {
    if a.memory {
        let before = load_average();
        let r = measure::memory(a.idle_connections, a.sessions, !a.no_audit)?;
        let after = load_average();
        return print_memory(a.json, &r, before, after);
    }
    if a.startup {
        let before = load_average();
        let r = measure::startup(a.runs.unwrap_or(20).max(1), !a.no_audit)?;
        let after = load_average();
        return print_startup(a.json, &r, before, after);
    }
    run_load(a)
}

/// Parses `--op/--payload` or `--mix` into mix entries.
fn parse_mix(a: &BenchArgs) -> Result<Vec<MixEntry>, String> {
    let Some(mix) = &a.mix else {
        let payload = match &a.payload {
            Some(p) => serde_json::from_str(p).map_err(|e| format!("--payload: {e}"))?,
            None => default_payload(&a.op),
        };
        return Ok(vec![MixEntry::new(&a.op, payload, 1)?]);
    };
    let mut out: Vec<MixEntry> = Vec::new();
    for part in mix.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (op, weight) = match part.split_once(':') {
            Some((op, w)) => (
                op.trim(),
                w.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("--mix: bad weight in {part:?}"))?,
            ),
            None => (part, 1),
        };
        if op.is_empty() || weight == 0 {
            return Err(format!("--mix: {part:?} needs an op and a weight ≥ 1"));
        }
        if out.iter().any(|m| m.template.op == op) {
            return Err(format!("--mix: {op} is listed twice"));
        }
        out.push(MixEntry::new(op, default_payload(op), weight)?);
    }
    if out.is_empty() {
        return Err("--mix: no operations".into());
    }
    Ok(out)
}

fn read_token(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(t.to_owned())
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
#[must_use]
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(f64::NAN));
    [
        v.next().unwrap_or(f64::NAN),
        v.next().unwrap_or(f64::NAN),
        v.next().unwrap_or(f64::NAN),
    ]
}

/// The JSON report of a load run.
#[derive(Debug, Serialize)]
struct LoadReport {
    mode: &'static str,
    socket: String,
    spawned_server: bool,
    connections: usize,
    depth: usize,
    duration_s: f64,
    warmup_s: f64,
    runs: usize,
    mix: Vec<Value>,
    load_average: Value,
    server: Aggregate,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<Aggregate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<Value>,
}

fn run_load(a: &BenchArgs) -> Result<(), String> {
    let mix = parse_mix(a)?;
    let runs = a.runs.unwrap_or(1).max(1);
    let scratch = server::Scratch::new()?;
    let (socket, token, own) = match &a.socket {
        Some(s) => {
            let token = a.capability_file.as_deref().map(read_token).transpose()?;
            (s.clone(), token, None)
        }
        None => {
            server::prepare_store(&scratch, &a.server_arg)?;
            let mut extra = a.server_arg.clone();
            // Every connection comes from this one process: lift the
            // per-pid cap unless the caller set it.
            if !extra
                .iter()
                .any(|s| s.starts_with("--max-connections-per-pid"))
            {
                let cap = (a.connections + 1).max(32);
                extra.extend(["--max-connections-per-pid".to_owned(), cap.to_string()]);
            }
            let spec = server::ServerSpec {
                with_token: false,
                audit: !a.no_audit,
                extra,
            };
            let srv = server::Server::spawn(&scratch, "serve", &spec)?;
            server::seed_token(&srv.socket, None)?;
            (srv.socket.clone(), None, Some(srv))
        }
    };
    let workload = Workload {
        socket: socket.clone(),
        token: token.clone(),
        connections: a.connections,
        depth: a.depth,
        duration: a.duration,
        warmup: a.warmup,
        mix: mix.clone(),
    };
    let echo = if a.baseline {
        let replies = echo::capture(&socket, token.as_deref(), &mix)?;
        for e in &replies.errors {
            eprintln!("credproxy bench: warning: the server answers {e}; the baseline echoes it");
        }
        Some(echo::EchoServer::start(
            &scratch.join("echo.sock"),
            replies,
        )?)
    } else {
        None
    };
    let before = load_average();
    let mut ours = Vec::with_capacity(runs);
    let mut base = Vec::with_capacity(runs);
    for i in 0..runs {
        let r = load::run_once(&workload)?;
        eprintln!(
            "run {}/{runs}: server   {:>9.0} req/s  p50 {} µs  p99 {} µs  errors {}",
            i + 1,
            r.rps,
            r.latency_us.p50,
            r.latency_us.p99,
            r.errors
        );
        ours.push(r);
        if let Some(echo) = &echo {
            let w = Workload {
                socket: echo.path().to_path_buf(),
                token: None,
                ..workload.clone()
            };
            let r = load::run_once(&w)?;
            eprintln!(
                "run {}/{runs}: baseline {:>9.0} req/s  p50 {} µs  p99 {} µs  errors {}",
                i + 1,
                r.rps,
                r.latency_us.p50,
                r.latency_us.p99,
                r.errors
            );
            base.push(r);
        }
    }
    let after = load_average();
    drop(echo);
    drop(own);
    let server = Aggregate::of(ours);
    let baseline = a.baseline.then(|| Aggregate::of(base));
    let ratio = baseline.as_ref().map(|b| {
        json!({
            "rps": ratio(server.median.rps, b.median.rps),
            "p99": ratio(lossy(server.median.latency_us.p99), lossy(b.median.latency_us.p99)),
        })
    });
    let report = LoadReport {
        mode: "load",
        socket: socket.display().to_string(),
        spawned_server: a.socket.is_none(),
        connections: a.connections,
        depth: a.depth,
        duration_s: a.duration.as_secs_f64(),
        warmup_s: a.warmup.as_secs_f64(),
        runs,
        mix: mix
            .iter()
            .map(|m| json!({"op": m.template.op, "weight": m.weight, "payload": m.payload}))
            .collect(),
        load_average: json!({"before": before, "after": after}),
        server,
        baseline,
        ratio,
    };
    if report.server.errors > 0 {
        eprintln!(
            "credproxy bench: warning: {} errors, first: {}",
            report.server.errors,
            report
                .server
                .runs
                .iter()
                .find_map(|r| r.first_error.as_deref())
                .unwrap_or("?")
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", load_table(&report));
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)]
fn lossy(v: u64) -> f64 {
    v as f64
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn fmt_load(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

fn load_table(r: &LoadReport) -> String {
    let mut t = String::new();
    let mix: Vec<String> = r
        .mix
        .iter()
        .map(|m| format!("{}:{}", m["op"].as_str().unwrap_or("?"), m["weight"]))
        .collect();
    let _ = writeln!(
        t,
        "credproxy bench: {}{}\n{} connection(s), depth {}, mix {}, {}s measured after {}s warm-up, {} run(s)\nload average {} before, {} after\n",
        r.socket,
        if r.spawned_server {
            " (credproxy serve started by the bench)"
        } else {
            ""
        },
        r.connections,
        r.depth,
        mix.join(","),
        r.duration_s,
        r.warmup_s,
        r.runs,
        fmt_load(serde_json::from_value(r.load_average["before"].clone()).unwrap_or([f64::NAN; 3])),
        fmt_load(serde_json::from_value(r.load_average["after"].clone()).unwrap_or([f64::NAN; 3])),
    );
    let _ = writeln!(
        t,
        "{:<18} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "errors"
    );
    let row = |t: &mut String, name: &str, rps: f64, s: &stats::Summary, errors: Option<u64>| {
        let _ = writeln!(
            t,
            "{name:<18} {rps:>11.0} {:>9} {:>9} {:>9} {:>9} {:>8}",
            s.p50,
            s.p99,
            s.p999,
            s.max,
            errors.map_or_else(String::new, |e| e.to_string())
        );
    };
    let mut aggregates = vec![("server", &r.server)];
    if let Some(b) = &r.baseline {
        aggregates.push(("baseline", b));
    }
    for (name, agg) in &aggregates {
        if agg.runs.len() > 1 {
            for (i, run) in agg.runs.iter().enumerate() {
                row(
                    &mut t,
                    &format!("{name} run {}", i + 1),
                    run.rps,
                    &run.latency_us,
                    Some(run.errors),
                );
            }
        }
    }
    for (name, agg) in &aggregates {
        let label = if agg.runs.len() > 1 {
            format!("{name} median")
        } else {
            (*name).to_owned()
        };
        row(
            &mut t,
            &label,
            agg.median.rps,
            &agg.median.latency_us,
            Some(agg.errors),
        );
    }
    if let Some(ratio) = &r.ratio {
        let _ = writeln!(
            t,
            "\nours / baseline: req/s {:.2}, p99 {:.2}",
            ratio["rps"].as_f64().unwrap_or(f64::NAN),
            ratio["p99"].as_f64().unwrap_or(f64::NAN)
        );
    }
    t
}

fn print_memory(
    json: bool,
    r: &measure::MemoryReport,
    before: [f64; 3],
    after: [f64; 3],
) -> Result<(), String> {
    if json {
        let mut v = serde_json::to_value(r).map_err(|e| e.to_string())?;
        v["mode"] = json!("memory");
        v["load_average"] = json!({"before": before, "after": after});
        println!("{v}");
        return Ok(());
    }
    #[allow(clippy::cast_precision_loss)]
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "credproxy bench --memory: credproxy serve {}\nload average {} before, {} after\n",
        r.server_flags.join(" "),
        fmt_load(before),
        fmt_load(after)
    );
    println!(
        "VmRSS after start-up            {:>9.1} MiB",
        mib(r.rss_start_kib)
    );
    println!(
        "  + 1 connection, 1 get_token   {:>9.1} MiB",
        mib(r.rss_base_kib)
    );
    println!(
        "  + {} idle connections     {:>9.1} MiB   {:.0} bytes per connection",
        r.connections,
        mib(r.rss_connections_kib),
        r.bytes_per_connection
    );
    println!(
        "  + {} OAuth sessions         {:>9.1} MiB   {:.0} bytes per session",
        r.sessions,
        mib(r.rss_sessions_kib),
        r.bytes_per_session
    );
    Ok(())
}

fn print_startup(
    json: bool,
    r: &measure::StartupReport,
    before: [f64; 3],
    after: [f64; 3],
) -> Result<(), String> {
    if json {
        let mut v = serde_json::to_value(r).map_err(|e| e.to_string())?;
        v["mode"] = json!("startup");
        v["load_average"] = json!({"before": before, "after": after});
        println!("{v}");
        return Ok(());
    }
    println!(
        "credproxy bench --startup: spawn of `credproxy serve` to a completed handshake, {} runs\nload average {} before, {} after\n",
        r.runs_ms.len(),
        fmt_load(before),
        fmt_load(after)
    );
    println!(
        "median {:.2} ms   min {:.2} ms   max {:.2} ms",
        r.median_ms, r.min_ms, r.max_ms
    );
    let all: Vec<String> = r.runs_ms.iter().map(|m| format!("{m:.2}")).collect();
    println!("runs (ms): {}", all.join(" "));
    Ok(())
}
