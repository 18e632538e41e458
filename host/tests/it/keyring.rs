//! The OS keyring module (`credproxy::keyring`) against a real Secret
//! Service: gnome-keyring on a private bus ([`TestKeyring`]), and the kernel
//! keyring in a fresh session keyring (`keyctl session -`).
//!
//! The module finds its bus through `DBUS_SESSION_BUS_ADDRESS`, and its
//! kernel keyring is the process's session keyring: both process-wide. So
//! every call runs in a child, this test binary re-run with an exact filter
//! ([`client_helper`]), which executes a script of keyring operations given
//! in `SCRIPT_ENV` and writes one JSON result per operation to the file in
//! `RESULT_ENV`. The results carry each call's time, the `Debug` of every
//! handle and error (checked to hold no secret), and secrets as hex.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use credproxy::keyring::{Keyring, KeyringError, PROBE_TIMEOUT, probe};
use serde_json::{Value, json};

use crate::support::TIMEOUT;
use crate::support::keyring::{TestKeyring, fixture_expected, require_tool, run_child_test};

const SCRIPT_ENV: &str = "CREDPROXY_KEYRING_TEST_SCRIPT";
const RESULT_ENV: &str = "CREDPROXY_KEYRING_TEST_RESULT";

/// A service name no real application uses.
const SERVICE: &str = "credproxy-keyring-test";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn error_json(e: &KeyringError) -> Value {
    json!({"kind": e.kind().as_str(), "message": e.to_string(), "debug": format!("{e:?}")})
}

fn str_arg<'a>(op: &'a Value, name: &str) -> &'a str {
    op[name]
        .as_str()
        .unwrap_or_else(|| panic!("op {op} lacks {name}"))
}

fn millis(op: &Value, name: &str, default: Duration) -> Duration {
    op[name]
        .as_u64()
        .map(Duration::from_millis)
        .unwrap_or(default)
}

/// Runs one operation; `keyring` is the handle `open*` ops set.
fn run_op(op: &Value, keyring: &mut Option<Keyring>) -> Value {
    let name = str_arg(op, "op");
    let start = Instant::now();
    let handle = || keyring.clone().expect("an open op comes first");
    let outcome: Result<Value, KeyringError> = match name {
        "open" | "open_for_reading" | "kernel" => {
            let limit = millis(op, "timeout_ms", PROBE_TIMEOUT);
            let opened = match name {
                "open" => Keyring::open(limit),
                "open_for_reading" => Keyring::open_for_reading(limit),
                _ => Keyring::kernel(),
            };
            opened.map(|k| {
                let k = k.with_call_timeout(millis(op, "call_timeout_ms", TIMEOUT));
                let v = json!({"backend": k.backend().as_str(), "debug": format!("{k:?}")});
                *keyring = Some(k);
                v
            })
        }
        "probe" => probe(millis(op, "timeout_ms", PROBE_TIMEOUT)).map(|p| {
            json!({"backend": p.backend.as_str(), "readiness": format!("{:?}", p.readiness),
                       "ready": p.ready(), "debug": format!("{p:?}")})
        }),
        "get" => handle()
            .get(str_arg(op, "service"), str_arg(op, "account"))
            .map(|s| s.map_or(Value::Null, |s| json!(hex(&s)))),
        "get_string" => handle()
            .get_string(str_arg(op, "service"), str_arg(op, "account"))
            .map(|s| s.map_or(Value::Null, |s| json!(hex(s.as_bytes())))),
        "set" => handle()
            .set(
                str_arg(op, "service"),
                str_arg(op, "account"),
                str_arg(op, "label"),
                &unhex(str_arg(op, "secret_hex")),
            )
            .map(|()| Value::Null),
        "delete" => handle()
            .delete(str_arg(op, "service"), str_arg(op, "account"))
            .map(|()| Value::Null),
        "list" => handle().list(str_arg(op, "service")).map(|a| json!(a)),
        // The same read from several threads at once on one handle.
        "get_parallel" => {
            let k = handle();
            let (service, account) = (str_arg(op, "service"), str_arg(op, "account"));
            std::thread::scope(|scope| {
                let reads: Vec<_> = (0..op["threads"].as_u64().unwrap_or(8))
                    .map(|_| scope.spawn(|| k.get(service, account)))
                    .collect();
                reads
                    .into_iter()
                    .map(|r| {
                        let secret = r.join().expect("reader thread")?;
                        Ok(secret.map_or(Value::Null, |s| json!(hex(&s))))
                    })
                    .collect::<Result<Vec<Value>, KeyringError>>()
                    .map(Value::Array)
            })
        }
        other => panic!("unknown op {other}"),
    };
    let elapsed_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    match outcome {
        Ok(v) => json!({"op": name, "ok": v, "elapsed_us": elapsed_us}),
        Err(e) => json!({"op": name, "err": error_json(&e), "elapsed_us": elapsed_us}),
    }
}

/// The child: runs the script in `SCRIPT_ENV`, writes results to
/// `RESULT_ENV`. Does nothing when run without them.
#[test]
#[ignore = "helper process for the keyring tests"]
fn client_helper() {
    let (Ok(script), Some(out)) = (std::env::var(SCRIPT_ENV), std::env::var_os(RESULT_ENV)) else {
        return;
    };
    let ops: Vec<Value> = serde_json::from_str(&script).expect("script is JSON");
    let mut keyring = None;
    let results: Vec<Value> = ops.iter().map(|op| run_op(op, &mut keyring)).collect();
    std::fs::write(out, serde_json::to_vec(&results).expect("results")).expect("write results");
}

/// The results of running `ops` in a child prepared by `prepare` (its
/// environment; `wrap` may put a command such as `keyctl session -` in
/// front of the test binary).
fn run_script_with(
    prepare: impl FnOnce(&mut Command) -> &mut Command,
    wrap: &[&str],
    ops: &[Value],
) -> Vec<Value> {
    let out = tempfile::NamedTempFile::new().expect("result file");
    run_child_test("keyring::client_helper", wrap, |cmd| {
        prepare(
            cmd.env(SCRIPT_ENV, serde_json::to_string(ops).expect("script"))
                .env(RESULT_ENV, out.path()),
        )
    });
    let text = std::fs::read(out.path()).expect("read results");
    let results: Vec<Value> = serde_json::from_slice(&text).expect("results are JSON");
    assert_eq!(results.len(), ops.len(), "one result per op");
    results
}

/// [`run_script_with`] on the bus of `keyring`.
fn run_script(keyring: &TestKeyring, ops: &[Value]) -> Vec<Value> {
    run_script_with(|c| keyring.apply(c), &[], ops)
}

fn ok(result: &Value) -> &Value {
    assert!(result.get("err").is_none(), "expected success: {result}");
    &result["ok"]
}

fn err_kind(result: &Value) -> &str {
    result["err"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error: {result}"))
}

fn elapsed(result: &Value) -> Duration {
    Duration::from_micros(result["elapsed_us"].as_u64().expect("elapsed_us"))
}

/// Every result but the secrets `get` returned: no secret may appear in a
/// message, a `Debug` or a list.
fn assert_no_secret(results: &[Value], secrets: &[&str]) {
    for r in results {
        let read = matches!(
            r["op"].as_str(),
            Some("get" | "get_string" | "get_parallel")
        );
        if read && r.get("ok").is_some() {
            continue;
        }
        let text = r.to_string();
        for s in secrets {
            assert!(!text.contains(s), "a secret appears in {text}");
            assert!(
                !text.contains(&hex(s.as_bytes())),
                "a secret (hex) in {text}"
            );
        }
    }
}

fn op(name: &str, service: &str, account: &str) -> Value {
    json!({"op": name, "service": service, "account": account})
}

fn set(account: &str, label: &str, secret: &[u8]) -> Value {
    json!({"op": "set", "service": SERVICE, "account": account, "label": label,
           "secret_hex": hex(secret)})
}

/// `secret-tool search --all service SERVICE username ACCOUNT`: the one
/// matching item's label and attributes (libsecret's own view, as Seahorse
/// shows it).
fn item_by_secret_tool(keyring: &TestKeyring, account: &str) -> (String, BTreeMap<String, String>) {
    let tool = require_tool("secret-tool", "libsecret-tools");
    let mut cmd = Command::new(tool);
    cmd.args(["search", "--all", "service", SERVICE, "username", account]);
    let out = keyring.apply(&mut cmd).output().expect("run secret-tool");
    assert!(
        out.status.success(),
        "secret-tool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // secret-tool prints the label, secret and dates on stdout and the
    // attributes on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut labels = Vec::new();
    let mut attrs = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(" = ") {
            if k == "label" {
                labels.push(v.to_owned());
            } else if let Some(a) = k.strip_prefix("attribute.") {
                attrs.insert(a.to_owned(), v.to_owned());
            }
        }
    }
    assert_eq!(labels.len(), 1, "one item for {account}: {text}");
    (labels.remove(0), attrs)
}

#[test]
#[should_panic(expected = "install the Debian package `credproxy-test-package`")]
fn a_missing_tool_fails_naming_its_package() {
    require_tool("credproxy-no-such-tool", "credproxy-test-package");
}

#[test]
fn the_harness_stops_both_daemons_on_drop() {
    let keyring = TestKeyring::fresh();
    let pids = [keyring.bus_pid(), keyring.daemon_pid()];
    // A frozen daemon too: the drop resumes it to stop it.
    nix::sys::signal::kill(pids[1], nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    drop(keyring);
    for pid in pids {
        // Stopped and reaped: the PID no longer names a process of ours.
        assert_eq!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH),
            "{pid}"
        );
    }
}

#[test]
fn set_get_delete_list_round_trip() {
    let keyring = TestKeyring::fresh();
    let binary: &[u8] = &[0, 1, 2, 0xff, 0xfe, b'\n', 0x80];
    let secrets = ["rt-secret-one", "rt-secret-two", "rt-secret-three"];
    let mut results = run_script(
        &keyring,
        &[
            json!({"op": "open"}),
            json!({"op": "list", "service": SERVICE}),
            op("get", SERVICE, "anthropic/default"),
            json!({"op": "probe"}),
            set(
                "anthropic/default",
                "credproxy: anthropic/default",
                secrets[0].as_bytes(),
            ),
            set(
                "key/openai",
                "credproxy: API key openai",
                secrets[1].as_bytes(),
            ),
            set("binary", "credproxy: binary", binary),
            op("get", SERVICE, "anthropic/default"),
            json!({"op": "get_parallel", "service": SERVICE, "account": "key/openai",
                   "threads": 8}),
            op("get_string", SERVICE, "key/openai"),
            op("get", SERVICE, "binary"),
            op("get_string", SERVICE, "binary"),
            set(
                "anthropic/default",
                "a label not used",
                secrets[2].as_bytes(),
            ),
            op("get", SERVICE, "anthropic/default"),
            json!({"op": "list", "service": SERVICE}),
            op("delete", SERVICE, "anthropic/default"),
            op("get", SERVICE, "anthropic/default"),
            op("delete", SERVICE, "anthropic/default"),
            json!({"op": "list", "service": SERVICE}),
            op("get", "another-service", "key/openai"),
        ],
    );
    assert_eq!(ok(&results[0])["backend"], "Secret Service");
    assert_eq!(ok(&results[1]), &json!([]));
    assert_eq!(ok(&results[2]), &Value::Null, "absent entry reads as None");
    let probed = results.remove(3);
    assert_eq!(ok(&probed)["readiness"], "Unlocked");
    assert_eq!(ok(&probed)["ready"], true);
    for r in &results[3..6] {
        ok(r);
    }
    assert_eq!(ok(&results[6]), &json!(hex(secrets[0].as_bytes())));
    let parallel = results.remove(7);
    assert_eq!(
        ok(&parallel),
        &json!(vec![hex(secrets[1].as_bytes()); 8]),
        "8 threads, one handle"
    );
    assert_eq!(ok(&results[7]), &json!(hex(secrets[1].as_bytes())));
    assert_eq!(
        ok(&results[8]),
        &json!(hex(binary)),
        "bytes round-trip exactly"
    );
    assert_eq!(err_kind(&results[9]), "other", "not UTF-8: {}", results[9]);
    ok(&results[10]);
    assert_eq!(
        ok(&results[11]),
        &json!(hex(secrets[2].as_bytes())),
        "replaced"
    );
    assert_eq!(
        ok(&results[12]),
        &json!(["anthropic/default", "binary", "key/openai"]),
        "one item per account, sorted"
    );
    ok(&results[13]);
    assert_eq!(ok(&results[14]), &Value::Null, "deleted");
    assert_eq!(err_kind(&results[15]), "not-found");
    let message = results[15]["err"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(SERVICE) && message.contains("anthropic/default"),
        "{message}"
    );
    assert_eq!(ok(&results[16]), &json!(["binary", "key/openai"]));
    assert_eq!(
        ok(&results[17]),
        &Value::Null,
        "the service is part of the key"
    );
    assert!(
        keyring.keyrings_dir().join("login.keyring").is_file(),
        "the items are in the daemon's login keyring on disk"
    );
    assert_no_secret(&results, &secrets);

    // What Seahorse shows: the label given at creation, attributes
    // `service` and `username` only.
    let (label, attrs) = item_by_secret_tool(&keyring, "key/openai");
    assert_eq!(label, "credproxy: API key openai");
    assert_eq!(
        attrs,
        BTreeMap::from([
            ("service".to_owned(), SERVICE.to_owned()),
            ("username".to_owned(), "key/openai".to_owned())
        ])
    );
}

#[test]
fn items_of_other_programs_match_on_service_and_username_only() {
    let keyring = TestKeyring::fresh();
    // An item with more attributes than ours, stored by libsecret.
    let tool = require_tool("secret-tool", "libsecret-tools");
    let mut cmd = Command::new(tool);
    cmd.args([
        "store",
        "--label=stored by secret-tool",
        "service",
        SERVICE,
        "username",
        "acct",
        "target",
        "default",
        "extra",
        "x",
    ])
    .stdin(Stdio::piped());
    let mut child = keyring.apply(&mut cmd).spawn().expect("secret-tool store");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"from-secret-tool")
            .expect("secret to secret-tool");
    }
    assert!(
        child.wait().expect("secret-tool").success(),
        "secret-tool store"
    );
    let results = run_script(
        &keyring,
        &[
            json!({"op": "open"}),
            op("get", SERVICE, "acct"),
            json!({"op": "list", "service": SERVICE}),
        ],
    );
    assert_eq!(ok(&results[1]), &json!(hex(b"from-secret-tool")));
    assert_eq!(ok(&results[2]), &json!(["acct"]));
}

#[test]
fn reads_every_item_llxprt_wrote_byte_for_byte() {
    let expected = fixture_expected();
    let items = expected["keyring"].as_array().expect("keyring list");
    assert_eq!(items.len(), 8, "the fixture holds 8 items");
    let keyring = TestKeyring::llxprt_fixture();
    let mut ops = vec![json!({"op": "open"})];
    for item in items {
        ops.push(op(
            "get",
            str_arg(item, "service"),
            str_arg(item, "account"),
        ));
    }
    let mut services: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for item in items {
        services
            .entry(str_arg(item, "service"))
            .or_default()
            .push(str_arg(item, "account"));
    }
    for service in services.keys() {
        ops.push(json!({"op": "list", "service": service}));
    }
    let results = run_script(&keyring, &ops);
    ok(&results[0]);
    for (item, result) in items.iter().zip(&results[1..]) {
        assert_eq!(
            unhex(ok(result).as_str().expect("a secret")),
            str_arg(item, "plaintext").as_bytes(),
            "{} / {}",
            item["service"],
            item["account"]
        );
    }
    for ((service, accounts), result) in services.iter_mut().zip(&results[1 + items.len()..]) {
        accounts.sort_unstable();
        assert_eq!(ok(result), &json!(accounts), "accounts of {service}");
    }
    let plaintexts: Vec<&str> = items.iter().map(|i| str_arg(i, "plaintext")).collect();
    assert_no_secret(&results, &plaintexts);
}

#[test]
fn a_locked_keyring_answers_locked_without_hanging() {
    let expected = fixture_expected();
    let first = &expected["keyring"][0];
    let (service, account) = (str_arg(first, "service"), str_arg(first, "account"));
    let keyring = TestKeyring::llxprt_fixture_locked();
    let results = run_script(
        &keyring,
        &[
            json!({"op": "probe"}),
            // A call limit well above the time a prompt takes to fail, so
            // `locked` (not a timeout's `unavailable`) is the daemon's answer.
            json!({"op": "open", "call_timeout_ms": 20_000}),
            op("get", service, account),
            json!({"op": "list", "service": service}),
            set("new", "credproxy: new", b"locked-write-secret"),
            op("delete", service, account),
        ],
    );
    assert_eq!(
        ok(&results[0])["backend"],
        "Secret Service",
        "a locked keyring answers"
    );
    ok(&results[1]);
    for r in &results[2..] {
        assert_eq!(err_kind(r), "locked", "{r}");
        let message = r["err"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("locked") && message.contains("unlock"),
            "{message}"
        );
    }
    assert_no_secret(
        &results,
        &[str_arg(first, "plaintext"), "locked-write-secret"],
    );
}

#[test]
fn no_secret_service_is_unavailable_within_the_probe_timeout() {
    let bus = TestKeyring::bus_only();
    let dir = tempfile::tempdir().expect("tempdir");
    let no_bus = format!("unix:path={}", dir.path().join("no-bus").display());
    let script = [
        json!({"op": "probe"}),
        json!({"op": "open"}),
        json!({"op": "open", "timeout_ms": 200}),
    ];
    let on_bus = run_script(&bus, &script);
    let without_bus = run_script_with(|c| c.env("DBUS_SESSION_BUS_ADDRESS", &no_bus), &[], &script);
    for r in on_bus.iter().chain(&without_bus) {
        assert_eq!(err_kind(r), "unavailable", "{r}");
        assert!(
            elapsed(r) <= PROBE_TIMEOUT,
            "answered within the limit: {r}"
        );
    }
}

#[test]
fn an_activated_keyring_without_a_login_keyring_is_not_ready_and_refuses_writes() {
    let bus = TestKeyring::activatable();
    let results = run_script(
        &bus,
        &[
            json!({"op": "probe"}),
            json!({"op": "open", "call_timeout_ms": 20_000}),
            op("get", SERVICE, "acct"),
            json!({"op": "list", "service": SERVICE}),
            set("acct", "credproxy: acct", b"activated-write-secret"),
        ],
    );
    assert!(
        bus.name_has_owner(crate::support::keyring::SECRETS_NAME),
        "activated"
    );
    let probed = ok(&results[0]);
    assert_eq!(probed["readiness"], "NoDefaultCollection", "{probed}");
    assert_eq!(probed["ready"], false);
    ok(&results[1]);
    assert_eq!(ok(&results[2]), &Value::Null, "nothing stored");
    assert_eq!(ok(&results[3]), &json!([]));
    assert_eq!(err_kind(&results[4]), "unavailable", "{}", results[4]);
    let message = results[4]["err"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no default collection"), "{message}");
    assert_no_secret(&results, &["activated-write-secret"]);
}

#[test]
fn a_hung_secret_service_is_unavailable_after_the_probe_timeout() {
    let keyring = TestKeyring::fresh();
    // Frozen, the daemon keeps its bus name but never answers.
    nix::sys::signal::kill(keyring.daemon_pid(), nix::sys::signal::Signal::SIGSTOP)
        .expect("SIGSTOP the daemon");
    let results = run_script(&keyring, &[json!({"op": "probe", "timeout_ms": 300})]);
    assert_eq!(err_kind(&results[0]), "unavailable", "{}", results[0]);
    let took = elapsed(&results[0]);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "gave up at the limit: {took:?}"
    );
    let message = results[0]["err"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no answer within 300 ms"), "{message}");
}

#[test]
fn kernel_keyring_fallback_reads_what_llxprt_stored_there() {
    let keyctl = require_tool("keyctl", "keyutils");
    let secret = "kernel-fallback-secret";
    let other = "kernel-other-secret";
    let service = "llxprt-code-oauth-credproxy-test";
    let dir = tempfile::tempdir().expect("tempdir");
    let no_bus = format!("unix:path={}", dir.path().join("no-bus").display());
    // In a new anonymous session keyring (gone with the child), add `user`
    // keys named as llxprt's library names them, then run the client.
    let script = r#"printf %s "$1" | keyctl padd user "keyring:anthropic:default@$3" @s >/dev/null &&
printf %s "$2" | keyctl padd user "keyring:gemini:work@x.y@$3" @s >/dev/null &&
shift 3 && exec "$@""#;
    let keyctl = keyctl.to_str().expect("utf-8 path");
    let results = run_script_with(
        |c| c.env("DBUS_SESSION_BUS_ADDRESS", &no_bus),
        &[
            keyctl, "session", "-", "sh", "-c", script, "sh", secret, other, service,
        ],
        &[
            json!({"op": "open_for_reading", "timeout_ms": 500}),
            op("get", service, "anthropic:default"),
            op("get", service, "gemini:work@x.y"),
            op("get", service, "absent"),
            json!({"op": "list", "service": service}),
            set("anthropic:default", "x", b"write-attempt-secret"),
            op("delete", service, "anthropic:default"),
            json!({"op": "kernel"}),
            op("get_string", service, "anthropic:default"),
        ],
    );
    assert_eq!(ok(&results[0])["backend"], "kernel keyring");
    assert_eq!(ok(&results[1]), &json!(hex(secret.as_bytes())));
    assert_eq!(ok(&results[2]), &json!(hex(other.as_bytes())));
    assert_eq!(ok(&results[3]), &Value::Null);
    assert_eq!(
        ok(&results[4]),
        &json!(["anthropic:default", "gemini:work@x.y"])
    );
    for r in &results[5..7] {
        assert_eq!(err_kind(r), "other", "{r}");
        assert!(
            r["err"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("read"),
            "{r}"
        );
    }
    ok(&results[7]);
    assert_eq!(ok(&results[8]), &json!(hex(secret.as_bytes())));
    assert_no_secret(&results, &[secret, other, "write-attempt-secret"]);
}

fn timings(results: &[Value], name: &str) -> Vec<Duration> {
    results
        .iter()
        .filter(|r| r["op"] == name)
        .map(|r| {
            ok(r);
            elapsed(r)
        })
        .collect()
}

/// Figures for BENCHMARKS.md: `cargo test -p credproxy --test it --
/// --ignored --nocapture keyring::figures`.
#[test]
#[ignore = "measurement; run by hand with --nocapture"]
fn figures() {
    const N: usize = 200;
    let keyring = TestKeyring::fresh();
    let mut ops: Vec<Value> = (0..20).map(|_| json!({"op": "probe"})).collect();
    ops.push(json!({"op": "open"}));
    for i in 0..N {
        ops.push(set(
            &format!("acct{}", i % 10),
            "credproxy: figures",
            b"figures-secret",
        ));
    }
    for i in 0..N {
        ops.push(op("get", SERVICE, &format!("acct{}", i % 10)));
    }
    ops.push(json!({"op": "list", "service": SERVICE}));
    let results = run_script(&keyring, &ops);
    let bus = TestKeyring::bus_only();
    let none: Vec<Value> = (0..20).map(|_| json!({"op": "probe"})).collect();
    let absent = run_script(&bus, &none);
    let absent: Vec<Duration> = absent.iter().map(elapsed).collect();
    eprintln!(
        "keyring figures (gnome-keyring on a private bus; 20 probes, {N} sets and gets):\n  \
         probe, daemon running: {}\n  probe, no Secret Service: {}\n  \
         set: {}\n  get: {}\n  list (10 items): {:?}",
        crate::support::percentiles(timings(&results, "probe")),
        crate::support::percentiles(absent),
        crate::support::percentiles(timings(&results, "set")),
        crate::support::percentiles(timings(&results, "get")),
        elapsed(results.last().expect("list")),
    );
}
