//! Conformance, part 5: the integration, end-to-end and transport probe
//! checklists (reference notes §10, items 163–195:
//! `integration.test.ts`, `e2e-credential-flow.test.ts`,
//! `platform-uds-probe.test.ts`) against the real binary.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::conformance::Kind::{N, S};
use crate::support::conformance::Seed::{Key, Token};
use crate::support::conformance::{
    self, Conn, Env, Got, encode, login_ok, n_conn, path, providers_toml, seeded, std_stub, tok,
    wait_child, wait_for,
};

const CLOSE: Duration = Duration::from_secs(5);

fn mode(p: &std::path::Path) -> u32 {
    fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777
}

// --- integration.test.ts (163–179) ------------------------------------------

#[test]
fn c164_exec_stops_and_cleans_up_when_the_command_exits() {
    let env = Env::new();
    let mut cmd = env.command(&[
        "exec",
        "--store",
        &env.store(),
        "--",
        "sh",
        "-c",
        "test -S \"$CREDPROXY_SOCKET\" && echo \"$CREDPROXY_SOCKET\" && exit 7",
    ]);
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn exec");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read");
    let st = wait_child(&mut child, Duration::from_secs(10), "exec");
    assert_eq!(st.code(), Some(7));
    let sock = std::path::PathBuf::from(out.trim());
    assert!(sock.is_absolute(), "{out:?}");
    assert!(!sock.exists() && !sock.parent().expect("dir").exists());
}

#[test]
fn c165_token_is_64_lowercase_hex_and_gone_after_stop() {
    let env = Env::new();
    let mut srv = env.serve(&[]);
    let file = srv.token_file().expect("token file");
    let text = fs::read_to_string(&file).expect("read token");
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    assert!(
        text[..64]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    );
    assert_eq!(mode(&file), 0o600);
    assert!(srv.socket.exists());
    assert!(srv.stop().success());
    assert!(!file.exists() && !srv.socket.exists());
}

#[test]
fn c166_start_fails_when_the_socket_dir_is_beneath_a_file() {
    let env = Env::new();
    let file = env.runtime().join("plain");
    fs::write(&file, b"x").expect("write");
    let sock = file.join("sub").join("s.sock");
    let (st, err) = env.serve_fails(&["--socket", &sock.display().to_string()]);
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(err.starts_with("credproxy: "), "{err}");
    // No token left behind anywhere in the tree.
    let leftovers: Vec<_> = walk(env.root())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "token"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn c167_exec_hands_the_token_to_the_child_on_a_descriptor() {
    let env = Env::new();
    env.save_token("anthropic", "default", &tok("at-167"));
    env.key_set("K", "v167");
    let dir = env.root().join("child");
    fs::create_dir(&dir).expect("mkdir");
    let script = format!(
        "cat /dev/fd/$LLXPRT_CAPABILITY_FD > {d}/tok.tmp && mv {d}/tok.tmp {d}/tok; \
         echo \"$LLXPRT_CREDENTIAL_SOCKET\" > {d}/sock.tmp && mv {d}/sock.tmp {d}/sock; \
         while [ ! -e {d}/done ]; do sleep 0.02; done",
        d = dir.display()
    );
    let mut args = vec!["exec".to_owned(), "--store".into(), env.store()];
    args.extend(env.backend_args());
    args.extend(["--", "sh", "-c", &script].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = env.command(&args);
    cmd.stdout(Stdio::null());
    let mut child = cmd.spawn().expect("spawn exec");
    wait_for("the child to read its token", CLOSE, || {
        dir.join("tok").exists() && dir.join("sock").exists()
    });
    let token = fs::read_to_string(dir.join("tok")).expect("tok");
    assert_eq!(token.len(), 65, "{token:?}");
    assert!(token.ends_with('\n'));
    assert!(
        token[..64]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    );
    let sock = fs::read_to_string(dir.join("sock")).expect("sock");
    let mut c = Conn::connect(std::path::Path::new(sock.trim()));
    assert_eq!(c.handshake(Some(&token[..64]))["ok"], true);
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "at-167"
    );
    assert_eq!(c.ok("get_api_key", json!({"name":"K"}))["key"], "v167");
    fs::write(dir.join("done"), b"").expect("done");
    let st = wait_child(&mut child, Duration::from_secs(10), "exec");
    assert!(st.success());
}

#[test]
fn c168_instance_directory_exists_while_running_gone_after_stop() {
    let env = Env::new();
    let mut srv = env.serve(&[]);
    let dir = srv.socket.parent().expect("dir").to_path_buf();
    assert!(
        fs::symlink_metadata(&srv.socket)
            .expect("sock")
            .file_type()
            .is_socket()
    );
    assert!(srv.stop().success());
    assert!(!dir.exists());
}

#[test]
fn c169_fix_b17_private_instance_directory_holds_proxy_sock() {
    // SPEC §6.1, §10: `<base>/<pid>-<22 base64url>/proxy.sock`, 0700 / 0600
    // (the existing server puts `<pid>-<nonce>.sock` straight into /tmp).
    let env = Env::new();
    let srv = env.serve(&[]);
    assert_eq!(
        srv.socket.file_name().and_then(|n| n.to_str()),
        Some("proxy.sock")
    );
    let dir = srv.socket.parent().expect("dir");
    let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
    let (pid, nonce) = name.split_once('-').expect("pid-nonce");
    assert_eq!(pid, srv.pid().to_string());
    assert_eq!(nonce.len(), 22);
    assert!(
        nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(
        dir.parent(),
        Some(env.runtime().join("credproxy").as_path())
    );
    assert_eq!(mode(dir), 0o700);
    assert_eq!(mode(&env.runtime().join("credproxy")), 0o700);
    assert_eq!(mode(&srv.socket), 0o600);
}

/// An env whose store holds a logged-in `anthropic` token (with a refresh
/// token, via an N-server run on the stub), and the stub.
fn seeded_with_login(code: &str, bucket: Option<&str>) -> (conformance::Stub, Env) {
    let stub = std_stub();
    let env = Env::with_config(&providers_toml(&stub, None));
    {
        let srv = env.serve_n(&[]);
        let mut c = srv.hs();
        login_ok(&mut c, "anthropic", bucket, code);
    }
    (stub, env)
}

#[test]
fn c170_s_server_get_token_has_no_refresh_token() {
    let (_stub, env) = seeded_with_login("c170", None);
    let srv = env.serve(&[]);
    let mut c = srv.hs();
    let r = c.call("get_token", json!({"provider":"anthropic"}));
    assert_eq!(r["data"]["access_token"], "at-c170");
    assert!(r["data"].get("refresh_token").is_none(), "{r}");
    assert!(!r.to_string().contains("rt-c170"));
}

#[test]
fn c171_save_token_keeps_the_host_refresh_token_in_a_bucket() {
    let (stub, env) = seeded_with_login("host", Some("primary"));
    let srv = env.serve_n(&[]);
    let mut c = srv.hs();
    let mut t = tok("at-saved");
    t["refresh_token"] = json!("ref-save");
    c.ok(
        "save_token",
        json!({"provider":"anthropic","bucket":"primary","token":t}),
    );
    assert_eq!(
        c.ok(
            "get_token",
            json!({"provider":"anthropic","bucket":"primary"})
        )["access_token"],
        "at-saved"
    );
    c.ok(
        "refresh_token",
        json!({"provider":"anthropic","bucket":"primary"}),
    );
    let sent = stub.to(path::ANTHROPIC);
    assert_eq!(
        sent.last()
            .and_then(|r| r.field("refresh_token"))
            .as_deref(),
        Some("rt-host")
    );
}

#[test]
fn c172_remove_token_in_bucket_delete_me() {
    let (_env, _srv, mut c) = seeded(N, &[Token("anthropic", "delete-me", "x")]);
    c.ok(
        "remove_token",
        json!({"provider":"anthropic","bucket":"delete-me"}),
    );
    assert_eq!(
        c.err(
            "get_token",
            json!({"provider":"anthropic","bucket":"delete-me"})
        )
        .0,
        "NOT_FOUND"
    );
}

#[test]
fn c173_list_providers_with_tokens_in_non_default_buckets() {
    let (_env, _srv, mut c) = seeded(
        N,
        &[Token("anthropic", "b1", "a"), Token("openai", "b2", "o")],
    );
    assert_eq!(
        c.ok("list_providers", json!({})),
        json!({"providers":["anthropic","openai"]})
    );
}

#[test]
fn c174_list_buckets_bucket_1_and_bucket_2() {
    let (_env, _srv, mut c) = seeded(
        N,
        &[
            Token("anthropic", "bucket-1", "a"),
            Token("anthropic", "bucket-2", "b"),
        ],
    );
    assert_eq!(
        c.ok("list_buckets", json!({"provider":"anthropic"})),
        json!({"buckets":["bucket-1","bucket-2"]})
    );
}

#[test]
fn c175_bucket_stats_without_requests_is_an_object() {
    let (_env, _srv, mut c) = seeded(N, &[Token("anthropic", "default", "a")]);
    let s = c.ok(
        "get_bucket_stats",
        json!({"provider":"anthropic","bucket":"default"}),
    );
    assert_eq!(s["bucket"], "default");
    assert_eq!(s["requestCount"], 0);
    assert_eq!(s["percentage"].as_f64(), Some(0.0));
    assert!(s.get("lastUsed").is_none(), "{s}");
}

#[test]
fn c176_api_key_operations_round_trip() {
    let (_env, _srv, mut c) = seeded(N, &[Key("OPENAI", "sk-o"), Key("ANTHROPIC", "sk-a")]);
    assert_eq!(c.ok("get_api_key", json!({"name":"OPENAI"}))["key"], "sk-o");
    assert_eq!(
        c.ok("list_api_keys", json!({})),
        json!({"keys":["ANTHROPIC","OPENAI"]})
    );
    assert_eq!(
        c.ok("has_api_key", json!({"name":"ANTHROPIC"}))["exists"],
        true
    );
}

#[test]
fn c178_no_provider_restriction() {
    let (_env, _srv, mut c) = seeded(
        S,
        &[
            Token("openai", "default", "o"),
            Token("anthropic", "default", "a"),
        ],
    );
    assert_eq!(
        c.ok("get_token", json!({"provider":"openai"}))["access_token"],
        "o"
    );
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "a"
    );
}

#[test]
fn c179_stop_closes_open_connections_within_2s() {
    let env = Env::new();
    let mut srv = env.serve(&[]);
    let mut c = srv.hs();
    let t0 = Instant::now();
    srv.signal(nix::sys::signal::Signal::SIGTERM);
    match c.get(Duration::from_secs(2)) {
        Got::Closed => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    // A request on it now fails rather than hanging.
    let _ = c.try_send_raw(&encode(&json!({"v":2,"id":"x","op":"list_providers"})));
    assert_eq!(c.get(Duration::from_secs(2)), Got::Closed);
    let _ = srv.stop();
}

// --- e2e-credential-flow.test.ts (180–188) ------------------------------------

#[test]
fn c180_lifecycle_get_save_remove_stop() {
    let (stub, env) = seeded_with_login("c180", None);
    let mut srv = env.serve_n(&[]);
    let mut c = srv.hs();
    let t = c.ok("get_token", json!({"provider":"anthropic"}));
    assert_eq!(t["access_token"], "at-c180");
    assert!(t.get("refresh_token").is_none());
    let mut incoming = tok("at-180-saved");
    incoming["refresh_token"] = json!("injected");
    c.ok(
        "save_token",
        json!({"provider":"anthropic","token":incoming}),
    );
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "at-180-saved"
    );
    c.ok("refresh_token", json!({"provider":"anthropic"}));
    assert_eq!(
        stub.to(path::ANTHROPIC)
            .last()
            .and_then(|r| r.field("refresh_token"))
            .as_deref(),
        Some("rt-c180")
    );
    c.ok("remove_token", json!({"provider":"anthropic"}));
    assert_eq!(c.ok("list_providers", json!({})), json!({"providers":[]}));
    let sock = srv.socket.clone();
    assert!(srv.stop().success());
    assert!(!sock.exists());
}

#[test]
fn c182_anthropic_and_gemini_both_served() {
    let (_env, _srv, mut c) = seeded(
        S,
        &[
            Token("anthropic", "default", "a"),
            Token("gemini", "default", "g"),
        ],
    );
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "a"
    );
    assert_eq!(
        c.ok("get_token", json!({"provider":"gemini"}))["access_token"],
        "g"
    );
}

#[test]
fn c183_after_stop_connecting_fails() {
    let env = Env::new();
    let mut srv = env.serve(&[]);
    let sock = srv.socket.clone();
    assert!(srv.stop().success());
    let t0 = Instant::now();
    assert!(Conn::try_connect(&sock).is_err());
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn c184_five_concurrent_get_token_for_different_providers() {
    let env = Env::new();
    let providers = ["anthropic", "gemini", "qwen", "codex", "openai"];
    for p in providers {
        env.save_token(p, "default", &tok(&format!("at-{p}")));
    }
    let srv = env.serve(&[]);
    let mut c = srv.hs();
    let bytes: Vec<u8> = providers
        .iter()
        .flat_map(|p| encode(&json!({"v":2,"id":p,"op":"get_token","payload":{"provider":p}})))
        .collect();
    c.send_raw(&bytes);
    let got = c.recv_by_id(5);
    for p in providers {
        assert_eq!(got[p]["data"]["access_token"], format!("at-{p}"));
    }
}

#[test]
fn c185_concurrent_mix_of_operations() {
    let (_env, _srv, mut c) = seeded(
        N,
        &[
            Token("anthropic", "default", "a"),
            Token("gemini", "work", "g"),
        ],
    );
    let frames = [
        ("t1", "get_token", json!({"provider":"anthropic"})),
        ("lp", "list_providers", json!({})),
        (
            "sv",
            "save_token",
            json!({"provider":"openai","token":tok("o")}),
        ),
        ("lb", "list_buckets", json!({"provider":"gemini"})),
        (
            "t2",
            "get_token",
            json!({"provider":"gemini","bucket":"work"}),
        ),
    ];
    let bytes: Vec<u8> = frames
        .iter()
        .flat_map(|(id, op, p)| encode(&json!({"v":2,"id":id,"op":op,"payload":p})))
        .collect();
    c.send_raw(&bytes);
    let got = c.recv_by_id(5);
    assert_eq!(got["t1"]["data"]["access_token"], "a");
    assert!(got["lp"]["data"]["providers"].is_array());
    assert_eq!(got["sv"]["data"], json!({}));
    assert_eq!(got["lb"]["data"], json!({"buckets":["work"]}));
    assert_eq!(got["t2"]["data"]["access_token"], "g");
}

#[test]
fn c187_key_operations_from_a_sandbox() {
    let env = Env::new();
    env.key_set("ONE", "1");
    env.key_set("TWO", "2");
    // N-server: every key operation.
    let srv = env.serve_n(&[]);
    let mut c = srv.hs();
    assert_eq!(c.ok("get_api_key", json!({"name":"ONE"}))["key"], "1");
    assert_eq!(
        c.ok("list_api_keys", json!({})),
        json!({"keys":["ONE","TWO"]})
    );
    assert_eq!(c.ok("has_api_key", json!({"name":"TWO"}))["exists"], true);
    assert_eq!(
        c.ok("has_api_key", json!({"name":"THREE"}))["exists"],
        false
    );
    drop(c);
    drop(srv);
    // S-server: reads only.
    let srv = env.serve(&[]);
    let mut c = srv.hs();
    assert_eq!(c.ok("get_api_key", json!({"name":"TWO"}))["key"], "2");
}

#[test]
fn c188_default_and_staging_buckets_have_their_own_tokens() {
    let (_env, _srv, mut c) = seeded(
        S,
        &[
            Token("anthropic", "default", "at-default"),
            Token("anthropic", "staging", "at-staging"),
        ],
    );
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "at-default"
    );
    assert_eq!(
        c.ok(
            "get_token",
            json!({"provider":"anthropic","bucket":"staging"})
        )["access_token"],
        "at-staging"
    );
}

// --- platform-uds-probe.test.ts (189–195) ------------------------------------

#[test]
fn c189_a_frame_round_trips() {
    let (_env, _srv, mut c) = n_conn();
    assert_eq!(
        c.call("list_providers", json!({})),
        json!({"id":"r1","ok":true,"data":{"providers":[]}})
    );
}

#[test]
fn c190_three_frames_back_to_back_are_all_answered() {
    // Replies may come in any order (SPEC §3.3); each id gets one.
    let (_env, _srv, mut c) = seeded(N, &[Key("K", "v")]);
    let mut bytes = encode(&json!({"v":2,"id":"1","op":"list_providers"}));
    bytes.extend(encode(
        &json!({"v":2,"id":"2","op":"get_api_key","payload":{"name":"K"}}),
    ));
    bytes.extend(encode(&json!({"v":2,"id":"3","op":"list_api_keys"})));
    c.send_raw(&bytes);
    let got = c.recv_by_id(3);
    assert_eq!(got["1"]["data"], json!({"providers":[]}));
    assert_eq!(got["2"]["data"], json!({"key":"v"}));
    assert_eq!(got["3"]["data"], json!({"keys":["K"]}));
}

#[test]
fn c191_a_separate_process_connects() {
    // The socket is created by the server process; this test process
    // connects to it (and so does every other test here).
    let env = Env::new();
    let srv = env.serve_n(&[]);
    assert_ne!(srv.pid(), std::process::id());
    let mut c = srv.hs();
    c.ok("list_providers", json!({}));
}

#[test]
fn c193_socket_reachable_through_a_symlinked_directory() {
    let env = Env::new();
    let srv = env.serve_n(&[]);
    let link = env.root().join("l");
    std::os::unix::fs::symlink(srv.socket.parent().expect("dir"), &link).expect("symlink");
    let mut c = Conn::connect(&link.join("proxy.sock"));
    assert_eq!(c.handshake(None)["ok"], true);
    c.ok("list_providers", json!({}));
}

#[test]
fn c194_unicode_nested_and_html_survive_byte_exact() {
    let (_env, _srv, mut c) = seeded(N, &[Key("U", "日本語テスト🔑")]);
    let mut t = tok("at-194");
    t["nested"] = json!({"a":[1,{"b":"日本語テスト"}],"c":null,"d":1.5});
    t["html"] = json!("<script>alert('x')</script>&amp;\"quoted\"\\");
    c.ok("save_token", json!({"provider":"anthropic","token":t}));
    assert_eq!(c.ok("get_token", json!({"provider":"anthropic"})), t);
    assert_eq!(
        c.ok("get_api_key", json!({"name":"U"}))["key"],
        "日本語テスト🔑"
    );
    // The length prefix counts UTF-8 bytes: a raw frame built by hand.
    let body = "{\"v\":2,\"id\":\"ü\",\"op\":\"get_api_key\",\"payload\":{\"name\":\"U\"}}";
    c.send_raw(&conformance::frame_bytes(body.as_bytes()));
    assert_eq!(
        c.recv(),
        json!({"id":"ü","ok":true,"data":{"key":"日本語テスト🔑"}})
    );
}

#[test]
fn c195_a_32_kib_string_round_trips() {
    let (_env, _srv, mut c) = n_conn();
    let big: String = (0..32 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut t = tok("at-195");
    t["blob"] = json!(big);
    c.ok("save_token", json!({"provider":"anthropic","token":t}));
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["blob"],
        big
    );
}
