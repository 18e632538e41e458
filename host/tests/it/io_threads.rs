//! The driver's I/O threads (`--io-threads`, `io_threads`): how many the
//! server runs, that connections spread over them are all served (one
//! reply per request, to the right connection), and refusal of a zero
//! count.

use std::fs;

use serde_json::{Value, json};

use crate::support::{Client, Scratch, encode, request};

/// The names of the server's I/O threads.
fn io_threads_of(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the server's threads")
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("credproxy-io-"))
        .collect();
    names.sort();
    names
}

fn seeded() -> Scratch {
    Scratch::seeded("at-1", "rt-1", "k", "key-value")
}

#[test]
fn the_flag_sets_the_thread_count_and_every_request_gets_one_reply() {
    let s = seeded();
    // Five: more than any machine's default (one per core, at most 4).
    let p = s.serve(&["--io-threads", "5"]);
    assert_eq!(
        io_threads_of(p.pid()),
        [
            "credproxy-io-0",
            "credproxy-io-1",
            "credproxy-io-2",
            "credproxy-io-3",
            "credproxy-io-4"
        ]
    );
    // Eleven connections (more than the threads, so each thread has
    // several), each with 40 requests of two kinds written in one go.
    let mut clients: Vec<Client> = (0..11).map(|_| p.sandbox_client()).collect();
    for (c, client) in clients.iter_mut().enumerate() {
        let mut burst = Vec::new();
        for i in 0..40_usize {
            let (op, payload) = if i.is_multiple_of(2) {
                ("get_token", json!({"provider":"anthropic"}))
            } else {
                ("get_api_key", json!({"name":"k"}))
            };
            burst.extend(encode(&request(&format!("c{c}-{i}"), op, payload)));
        }
        client.send_raw(&burst).expect("send the burst");
    }
    for (c, client) in clients.iter_mut().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let reply: Value = client.recv_frame();
            // At most 16 in flight: the rest may be refused (at once, so
            // before earlier requests are answered), but every request
            // gets exactly one reply, on its own connection.
            let id = reply["id"].as_str().expect("an id").to_owned();
            let i: usize = id
                .strip_prefix(&format!("c{c}-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("reply for another connection: {reply}"));
            assert!(seen.insert(i), "two replies for {id}");
            if reply["ok"] == true {
                if i.is_multiple_of(2) {
                    assert_eq!(reply["data"]["access_token"], "at-1", "{reply}");
                    assert!(reply["data"].get("refresh_token").is_none(), "{reply}");
                } else {
                    assert_eq!(reply["data"]["key"], "key-value", "{reply}");
                }
            } else {
                assert_eq!(reply["code"], "RESOURCE_EXHAUSTED", "{reply}");
            }
        }
        assert_eq!(seen.len(), 40);
    }
    // Every connection still works after its burst.
    for (c, client) in clients.iter_mut().enumerate() {
        let r = client.call(
            &format!("after-{c}"),
            "get_token",
            json!({"provider":"anthropic"}),
        );
        assert_eq!(r["data"]["access_token"], "at-1", "{r}");
    }
}

#[test]
fn the_file_sets_the_count_and_the_flag_wins() {
    let s = seeded();
    s.write_default_config("io_threads = 6\n");
    // Six is no machine's default, so only the file can have asked for it.
    let p = s.serve(&[]);
    assert_eq!(io_threads_of(p.pid()).len(), 6);
    let q = s.serve(&["--io-threads", "1"]);
    assert_eq!(io_threads_of(q.pid()), ["credproxy-io-0"]);
    let mut c = q.sandbox_client();
    let r = c.call("1", "get_token", json!({"provider":"anthropic"}));
    assert_eq!(r["data"]["access_token"], "at-1", "{r}");
}

#[test]
fn zero_threads_are_refused_by_flag_and_by_file() {
    let s = Scratch::new();
    let store = s.store_arg();
    let ran = s.run(&["serve", "--store", &store, "--io-threads", "0"], b"");
    ran.assert_stderr(2, &["--io-threads"]);
    s.serve_refuses_config("io_threads = 0\n", &["io_threads"]);
}

#[test]
fn too_many_threads_are_refused_naming_the_bound_by_flag_and_by_file() {
    let s = Scratch::new();
    let store = s.store_arg();
    // 4 per core, at least 8: 100 000 is past it on any machine.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let bound = (4 * cores).max(8);
    let ran = s.run(&["serve", "--store", &store, "--io-threads", "100000"], b"");
    ran.assert_stderr(
        2,
        &["--io-threads", &format!("at most {bound} I/O threads")],
    );
    assert!(
        !ran.stderr.contains("Too many open files"),
        "{}",
        ran.stderr
    );
    // The bound itself is fine.
    let p = s.serve(&["--io-threads", &bound.to_string()]);
    assert_eq!(io_threads_of(p.pid()).len(), bound);
    drop(p);
    let at_most = format!("at most {bound} I/O threads");
    s.serve_refuses_config("io_threads = 100000\n", &["io_threads", &at_most]);
}
