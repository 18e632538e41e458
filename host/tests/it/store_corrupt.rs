//! A corrupt stored token over the socket: `save_token` replaces it
//! (it used to fail with INTERNAL_ERROR), keeps the old bytes as a
//! `.corrupt-…` file, and says so once on the audit stream.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::{self, Scratch};

/// A store whose one token (`anthropic`/`default`) holds `garbage`: the
/// tokens directory and the token file.
fn corrupt_store(s: &Scratch, garbage: &[u8]) -> (PathBuf, PathBuf) {
    s.seed_token("anthropic", "default", &json!({"access_token": "old"}));
    let tokens = s.store().join("tokens");
    let files = support::files_where(&tokens, |n| n.ends_with(".json"));
    let path = files.first().expect("the token file").clone();
    fs::write(&path, garbage).expect("corrupt it");
    (tokens, path)
}

/// The `corrupt_replaced` events among the audit lines in `text`.
fn corrupt_reports(text: &str) -> Vec<Value> {
    let mut events = support::audit_events(text);
    events.retain(|e| e["outcome"] == "corrupt_replaced");
    events
}

#[test]
fn save_token_over_a_corrupt_file_replaces_it_and_reports_once() {
    let s = Scratch::new();
    let garbage = b"{\"access_token\": \"TORN-SENTINEL";
    let (tokens, path) = corrupt_store(&s, garbage);

    // No token: connections are host class, which may write tokens.
    let proxy = s.serve(&["--insecure-no-token"]);
    let mut c = proxy.sandbox_client();
    let get = c.call("1", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(
        get["code"], "INTERNAL_ERROR",
        "a corrupt token is not served: {get}"
    );
    let save = json!({"provider": "anthropic", "token": support::token_json("fresh")});
    let reply = c.call("2", "save_token", save.clone());
    assert_eq!(reply["ok"], true, "{reply}");
    let got = c.call("3", "get_token", json!({"provider": "anthropic"}));
    assert_eq!(got["data"]["access_token"], "fresh", "{got}");

    let kept = support::files_where(&tokens, |n| n.starts_with(".corrupt-"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fs::read(&kept[0]).expect("kept"), garbage);
    assert_eq!(fs::metadata(&kept[0]).expect("stat").mode() & 0o777, 0o600);

    // Another save over the now valid file: no second report.
    let reply = c.call("4", "save_token", save);
    assert_eq!(reply["ok"], true, "{reply}");
    let list = c.call("5", "list_buckets", json!({"provider": "anthropic"}));
    assert_eq!(list["data"]["buckets"], json!(["default"]), "{list}");
    // Everything the proxy wrote, once it has exited.
    drop(c);
    let mut proxy = proxy;
    proxy.stop(nix::sys::signal::Signal::SIGTERM);
    let stderr = proxy.stderr();
    let reports = corrupt_reports(&stderr);
    assert_eq!(reports.len(), 1, "reported once: {stderr}");
    assert_eq!(reports[0]["path"], path.display().to_string());
    assert_eq!(reports[0]["kept"], kept[0].display().to_string());
    assert!(!stderr.contains("SENTINEL"), "never the content: {stderr}");
}

/// With `--audit-log FILE` the report is in that file (the audit log the
/// operator reads), not on stderr.
#[test]
fn the_corrupt_report_goes_to_the_configured_audit_log() {
    let s = Scratch::new();
    corrupt_store(&s, b"{\"access_token\": \"TORN");
    let log = s.root().join("audit.jsonl");
    let log_arg = log.display().to_string();
    let mut proxy = s.serve(&["--insecure-no-token", "--audit-log", &log_arg]);
    let mut c = proxy.sandbox_client();
    let save = json!({"provider": "anthropic", "token": support::token_json("fresh")});
    assert_eq!(c.call("1", "save_token", save)["ok"], true);
    drop(c);
    proxy.stop(nix::sys::signal::Signal::SIGTERM);
    let text = fs::read_to_string(&log).expect("audit log");
    assert_eq!(corrupt_reports(&text).len(), 1, "{text}");
    assert!(
        !proxy.stderr().contains("corrupt_replaced"),
        "{}",
        proxy.stderr()
    );
}
