//! `credproxy bench` end to end: the load generator against a real
//! `credproxy serve`, its echo baseline, and the memory and start-up
//! modes. Only the shape of the reports and the absence of errors are
//! checked, never a speed: every run is a fraction of a second and bounded
//! by the helpers' timeouts.

use serde_json::Value;

use crate::support::{Scratch, token_json};

/// Runs `credproxy bench ARGS… --json` (`args` split at spaces: no
/// argument here holds one), asserts exit 0 and returns the report.
fn bench_json(s: &Scratch, args: &str) -> Value {
    let mut all = vec!["bench"];
    all.extend(args.split(' '));
    all.push("--json");
    let ran = s.run(&all, b"");
    ran.assert_code(0);
    let out = ran.stdout.trim();
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The checks every aggregate (server or baseline) must pass.
fn check_aggregate(agg: &Value, runs: usize) {
    let requests = agg["requests"].as_u64().expect("requests");
    assert!(requests > 0, "no requests: {agg}");
    assert_eq!(agg["errors"], 0, "errors: {agg}");
    let list = agg["runs"].as_array().expect("runs");
    assert_eq!(list.len(), runs);
    for run in list {
        assert!(run["requests"].as_u64().unwrap() > 0);
        assert!(run["rps"].as_f64().unwrap() > 0.0);
        assert!(run["elapsed_s"].as_f64().unwrap() > 0.0);
    }
    let lat = &agg["median"]["latency_us"];
    let (p50, p99, p999, max) = (
        lat["p50"].as_u64().expect("p50"),
        lat["p99"].as_u64().expect("p99"),
        lat["p999"].as_u64().expect("p999"),
        lat["max"].as_u64().expect("max"),
    );
    // Percentiles of one histogram are ordered (a median of several runs
    // is too, figure by figure, for one run).
    if runs == 1 {
        assert!(p50 <= p99 && p99 <= p999 && p999 <= max, "{lat}");
    }
    assert!(agg["median"]["rps"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_json_against_serve() {
    let s = Scratch::new();
    s.seed_token("anthropic", "default", &token_json("tok-bench"));
    let proxy = s.serve(&["--insecure-no-token", "--audit-log", "off"]);
    let sock = proxy.socket.display().to_string();
    let args = format!("--socket {sock} --duration 300ms --warmup 0 --connections 2");
    let v = bench_json(&s, &args);
    assert_eq!(v["mode"], "load");
    assert_eq!(v["connections"], 2);
    assert_eq!(v["depth"], 1);
    assert_eq!(v["runs"], 1);
    assert_eq!(v["spawned_server"], false);
    assert_eq!(v["mix"][0]["op"], "get_token");
    assert_eq!(v["mix"][0]["payload"]["provider"], "anthropic");
    assert_eq!(v["load_average"]["before"].as_array().unwrap().len(), 3);
    check_aggregate(&v["server"], 1);
    assert!(v.get("baseline").is_none());
}

#[test]
fn bench_baseline_with_a_mix_and_depth() {
    let s = Scratch::new();
    s.seed_token("anthropic", "default", &token_json("tok-bench"));
    s.seed_api_key("bench", "sk-bench");
    let proxy = s.serve(&["--insecure-no-token", "--audit-log", "off"]);
    let sock = proxy.socket.display().to_string();
    let mix = "--mix get_token:3,get_api_key:1";
    let args = format!("--socket {sock} --duration 200ms --warmup 50ms --depth 4 --runs 2 {mix}");
    let v = bench_json(&s, &format!("{args} --baseline"));
    assert_eq!(v["mix"].as_array().unwrap().len(), 2);
    assert_eq!(v["mix"][1]["payload"]["name"], "bench");
    check_aggregate(&v["server"], 2);
    check_aggregate(&v["baseline"], 2);
    assert!(v["ratio"]["rps"].as_f64().unwrap() > 0.0);
    assert!(v["ratio"]["p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_table_with_its_own_server_and_a_token_file() {
    let s = Scratch::new();
    s.seed_token("anthropic", "default", &token_json("tok-bench"));
    // A server with a capability token: the bench presents it.
    let proxy = s.serve(&["--audit-log", "off"]);
    let file = proxy.exports()["CREDPROXY_CAPABILITY_FILE"].clone();
    let sock = proxy.socket.display().to_string();
    let ran = s.run(
        &[
            "bench",
            "--socket",
            &sock,
            "--capability-file",
            &file,
            "--duration",
            "100ms",
            "--warmup",
            "0",
        ],
        b"",
    );
    ran.assert_code(0);
    ran.assert_stdout_has(&["req/s"]);
    assert!(ran.stdout.lines().any(|l| l.starts_with("server ")));
    // Without --socket: the bench starts and seeds a server of its own.
    let v = bench_json(&s, "--duration 100ms --warmup 0");
    assert_eq!(v["spawned_server"], true);
    check_aggregate(&v["server"], 1);
    // A missing token is a handshake refusal, reported as a failure.
    let ran = s.run(&["bench", "--socket", &sock, "--duration", "100ms"], b"");
    ran.assert_stderr(1, &["UNAUTHORIZED"]);
}

#[test]
fn bench_memory_and_startup_modes() {
    let s = Scratch::new();
    let v = bench_json(&s, "--memory --idle-connections 50 --sessions 5");
    assert_eq!(v["mode"], "memory");
    assert_eq!(v["connections"], 50);
    assert_eq!(v["sessions"], 5);
    for k in [
        "rss_start_kib",
        "rss_base_kib",
        "rss_connections_kib",
        "rss_sessions_kib",
    ] {
        assert!(v[k].as_u64().unwrap() > 0, "{k}: {v}");
    }
    assert!(v["bytes_per_connection"].is_number());
    assert!(v["bytes_per_session"].is_number());

    let v = bench_json(&s, "--startup --runs 2");
    assert_eq!(v["mode"], "startup");
    assert_eq!(v["runs_ms"].as_array().unwrap().len(), 2);
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
}
