//! Conformance, part 1: the checklist of the existing server's
//! `credential-proxy-server.test.ts` (reference notes §10, items 1–45),
//! against the real binary over its socket. N-server = `serve
//! --insecure-no-token`; S-server = `serve` (generated capability token).
//! Where SPEC deliberately differs, the test asserts our behaviour and its
//! name says which fix. The table is `CONFORMANCE.md`.

use std::fs;
use std::os::unix::fs::FileTypeExt;

use serde_json::json;

use crate::support::conformance::Kind::{N, S};
use crate::support::conformance::Seed::{Key, Token};
use crate::support::conformance::Step::{Answers, Code, Field, Refuses};
use crate::support::conformance::{
    self, Env, check, check_handshake_refused, check_version_999_refused, err_reply, login_ok,
    n_conn, n_refuses, path, providers_toml, run_steps, seeded, std_stub, tok,
};

/// An N-server whose anthropic/gemini/qwen point at a standard stub.
fn n_with_stub() -> (conformance::Stub, Env, conformance::Server) {
    let stub = std_stub();
    let env = Env::with_config(&providers_toml(&stub, None));
    let srv = env.serve_n(&[]);
    (stub, env, srv)
}

// --- [host] socket file lifecycle -----------------------------------------

#[test]
fn c001_serve_creates_socket_file_and_prints_its_path() {
    let env = Env::new();
    let srv = env.serve(&[]);
    let meta = fs::symlink_metadata(&srv.socket).expect("socket exists");
    assert!(meta.file_type().is_socket(), "{:?}", srv.socket);
    assert!(srv.socket.is_absolute());
    assert_eq!(
        srv.socket.extension().and_then(|e| e.to_str()),
        Some("sock")
    );
}

#[test]
fn c002_shutdown_removes_socket_file() {
    let env = Env::new();
    let mut srv = env.serve(&[]);
    let sock = srv.socket.clone();
    assert!(sock.exists());
    assert!(srv.stop().success());
    assert!(fs::symlink_metadata(&sock).is_err(), "socket left behind");
}

#[test]
fn c003_printed_path_is_the_exported_socket_path() {
    let env = Env::new();
    let srv = env.serve(&[]);
    let s = srv.socket.display().to_string();
    assert_eq!(srv.exports().get("CREDPROXY_SOCKET"), Some(&s));
    assert_eq!(srv.exports().get("LLXPRT_CREDENTIAL_SOCKET"), Some(&s));
}

#[test]
fn c004_second_serve_on_the_same_socket_fails() {
    let env = Env::new();
    let sock = env.runtime().join("s.sock").display().to_string();
    let _first = env.serve(&["--socket", &sock]);
    let (st, err) = env.serve_fails(&["--socket", &sock]);
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(!err.is_empty());
}

// --- handshake and basic operations on an N-server -------------------------

#[test]
fn c005_n_server_handshake_then_list_providers() {
    let env = Env::new();
    let srv = env.serve_n(&[]);
    let mut c = srv.conn();
    assert_eq!(
        c.handshake(None),
        json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}})
    );
    run_steps(
        &mut c,
        &[Answers(
            "list_providers",
            json!({}),
            json!({"providers":[]}),
        )],
    );
}

#[test]
fn c006_handshake_version_999_is_refused() {
    check_version_999_refused(N);
}

#[test]
fn c007_get_token_strips_refresh_token() {
    let (_stub, _env, srv) = n_with_stub();
    let mut c = srv.hs();
    let t = login_ok(&mut c, "anthropic", None, "c7");
    let got = c.ok("get_token", json!({"provider":"anthropic"}));
    assert_eq!(got["access_token"], "at-c7");
    assert_eq!(got["expiry"], t["expiry"]);
    assert!(got.get("refresh_token").is_none(), "{got}");
}

#[test]
fn c008_get_token_missing_is_not_found() {
    n_refuses(
        "get_token",
        json!({"provider":"nonexistent"}),
        "NOT_FOUND",
        "No token found for provider: nonexistent",
    );
}

#[test]
fn c009_save_token_is_stored() {
    let (env, srv, mut c) = n_conn();
    assert_eq!(
        c.ok(
            "save_token",
            json!({"provider":"anthropic","token":tok("at-9")})
        ),
        json!({})
    );
    // Seen by another connection, and by another process on the store.
    let mut d = srv.hs();
    assert_eq!(
        d.ok("get_token", json!({"provider":"anthropic"})),
        tok("at-9")
    );
    let mut s = env.stdio(&[]);
    s.handshake();
    let r = s.call("x", "get_token", json!({"provider":"anthropic"}));
    assert_eq!(r["data"]["access_token"], "at-9");
}

#[test]
fn c010_remove_token_deletes_the_entry() {
    check(
        N,
        &[Token("anthropic", "default", "at-10")],
        &[
            Answers("remove_token", json!({"provider":"anthropic"}), json!({})),
            Code("get_token", json!({"provider":"anthropic"}), "NOT_FOUND"),
        ],
    );
}

#[test]
fn c011_list_providers_lists_every_provider_with_a_token() {
    let seeds = [
        ("anthropic", "default", "a"),
        ("openai", "work", "b"),
        ("gemini", "default", "c"),
    ];
    let seeds = seeds.map(|(p, b, a)| Token(p, b, a));
    check(
        N,
        &seeds,
        &[Answers(
            "list_providers",
            json!({}),
            json!({"providers":["anthropic","gemini","openai"]}),
        )],
    );
}

#[test]
fn c012_list_buckets_lists_default_and_work() {
    check(
        N,
        &[
            Token("anthropic", "default", "a"),
            Token("anthropic", "work", "b"),
        ],
        &[Answers(
            "list_buckets",
            json!({"provider":"anthropic"}),
            json!({"buckets":["default","work"]}),
        )],
    );
}

#[test]
fn c013_get_api_key_returns_the_stored_value() {
    check(
        N,
        &[Key("OPENAI_API_KEY", "sk-13")],
        &[Answers(
            "get_api_key",
            json!({"name":"OPENAI_API_KEY"}),
            json!({"key":"sk-13"}),
        )],
    );
}

#[test]
fn c014_get_api_key_missing_is_not_found() {
    n_refuses(
        "get_api_key",
        json!({"name":"nonexistent"}),
        "NOT_FOUND",
        "No API key found for: nonexistent",
    );
}

#[test]
fn c015_list_api_keys_lists_every_name() {
    check(
        N,
        &[Key("B_KEY", "b"), Key("A_KEY", "a")],
        &[Answers(
            "list_api_keys",
            json!({}),
            json!({"keys":["A_KEY","B_KEY"]}),
        )],
    );
}

#[test]
fn c016_has_api_key_true_and_false() {
    check(
        N,
        &[Key("PRESENT", "v")],
        &[
            Answers(
                "has_api_key",
                json!({"name":"PRESENT"}),
                json!({"exists":true}),
            ),
            Answers(
                "has_api_key",
                json!({"name":"ABSENT"}),
                json!({"exists":false}),
            ),
        ],
    );
}

#[test]
fn c017_n_server_without_allow_list_serves_any_provider_and_name() {
    let seeds = [
        Token("openai", "default", "o"),
        Key("anthropic", "ka"),
        Key("openai", "ko"),
    ];
    let (_env, _srv, mut c) = seeded(N, &seeds);
    for p in ["anthropic", "openai"] {
        c.ok("list_buckets", json!({"provider":p}));
        run_steps(
            &mut c,
            &[
                Field(
                    "get_api_key",
                    json!({"name":p}),
                    "key",
                    json!(format!("k{}", &p[..1])),
                ),
                Answers("has_api_key", json!({"name":p}), json!({"exists":true})),
            ],
        );
    }
    run_steps(
        &mut c,
        &[Answers(
            "list_api_keys",
            json!({}),
            json!({"keys":["anthropic","openai"]}),
        )],
    );
}

#[test]
fn c018_list_buckets_is_unfiltered() {
    let seeds = ["default", "a@b.c", "x-1", "Z_2"].map(|b| Token("anthropic", b, b));
    check(
        N,
        &seeds,
        &[Answers(
            "list_buckets",
            json!({"provider":"anthropic"}),
            json!({"buckets":["Z_2","a@b.c","default","x-1"]}),
        )],
    );
}

#[test]
fn c019_get_token_reply_has_no_refresh_token_key() {
    let (_stub, _env, srv) = n_with_stub();
    let mut c = srv.hs();
    login_ok(&mut c, "anthropic", None, "c19");
    let r = c.call("get_token", json!({"provider":"anthropic"}));
    let data = r["data"].as_object().expect("data object");
    assert!(!data.contains_key("refresh_token"), "{r}");
    let raw = serde_json::to_string(&r).expect("json");
    assert!(!raw.contains("rt-c19"), "{raw}");
}

#[test]
fn c020_save_token_keeps_the_stored_refresh_token() {
    let (stub, _env, srv) = n_with_stub();
    let mut c = srv.hs();
    login_ok(&mut c, "anthropic", None, "c20");
    let mut incoming = tok("at-new");
    incoming["refresh_token"] = json!("malicious-rt");
    assert_eq!(
        c.ok(
            "save_token",
            json!({"provider":"anthropic","token":incoming})
        ),
        json!({})
    );
    assert_eq!(
        c.ok("get_token", json!({"provider":"anthropic"}))["access_token"],
        "at-new"
    );
    // The refresh token the host still holds is the one it logged in with.
    c.ok("refresh_token", json!({"provider":"anthropic"}));
    let sent = stub.to(path::ANTHROPIC);
    let last = sent.last().expect("a refresh call");
    assert_eq!(last.field("grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(last.field("refresh_token").as_deref(), Some("rt-c20"));
}

#[test]
fn c021_unknown_op_is_invalid_request() {
    n_refuses(
        "totally_bogus_op",
        json!({}),
        "INVALID_REQUEST",
        "Unknown operation: totally_bogus_op",
    );
}

#[test]
fn c022_invalid_get_token_then_the_connection_still_serves() {
    check(
        N,
        &[Token("anthropic", "default", "at-22")],
        &[
            Refuses(
                "get_token",
                json!({}),
                "INVALID_REQUEST",
                "Missing provider",
            ),
            Field(
                "get_token",
                json!({"provider":"anthropic"}),
                "access_token",
                json!("at-22"),
            ),
        ],
    );
}

#[test]
fn c023_two_connections_one_after_the_other() {
    let (_env, srv, c) = seeded(N, &[Key("K", "v")]);
    let get = [Field("get_api_key", json!({"name":"K"}), "key", json!("v"))];
    {
        let mut c = c;
        run_steps(&mut c, &get);
    }
    run_steps(&mut srv.hs(), &get);
}

// --- S-server -------------------------------------------------------------

#[test]
fn c024_s_server_get_token_missing_is_forbidden() {
    check(
        S,
        &[],
        &[Refuses(
            "get_token",
            json!({"provider":"anthropic"}),
            "FORBIDDEN",
            "Access denied",
        )],
    );
}

#[test]
fn c025_s_server_wrong_token_is_unauthorized() {
    check_handshake_refused(
        S,
        Some(&"0".repeat(64)),
        "UNAUTHORIZED",
        "Invalid or missing capability token",
    );
}

#[test]
fn c026_s_server_no_token_is_unauthorized() {
    check_handshake_refused(
        S,
        None,
        "UNAUTHORIZED",
        "Invalid or missing capability token",
    );
}

#[test]
fn c027_n_server_accepts_a_client_without_token_and_ignores_one() {
    let (_env, srv, mut c) = seeded(N, &[Key("K", "v")]);
    run_steps(
        &mut c,
        &[Field("get_api_key", json!({"name":"K"}), "key", json!("v"))],
    );
    // A token presented to an N-server is ignored: still host class.
    let mut d = srv.conn();
    assert_eq!(d.handshake(Some(&"a".repeat(64)))["ok"], true);
    run_steps(
        &mut d,
        &[Answers("list_api_keys", json!({}), json!({"keys":["K"]}))],
    );
}

#[test]
fn c028_s_server_list_api_keys_is_empty() {
    check(
        S,
        &[Key("K", "v")],
        &[Answers("list_api_keys", json!({}), json!({"keys":[]}))],
    );
}

#[test]
fn c029_s_server_list_providers_is_empty() {
    check(
        S,
        &[Token("anthropic", "default", "a")],
        &[Answers(
            "list_providers",
            json!({}),
            json!({"providers":[]}),
        )],
    );
}

#[test]
fn c030_s_server_list_buckets_is_empty_even_without_provider() {
    check(
        S,
        &[Token("anthropic", "work", "a")],
        &[
            Answers(
                "list_buckets",
                json!({"provider":"anthropic"}),
                json!({"buckets":[]}),
            ),
            Answers("list_buckets", json!({}), json!({"buckets":[]})),
        ],
    );
}

#[test]
fn c031_s_server_get_token_existing_is_ok() {
    check(
        S,
        &[Token("anthropic", "default", "at-31")],
        &[Answers(
            "get_token",
            json!({"provider":"anthropic"}),
            tok("at-31"),
        )],
    );
}

#[test]
fn c032_s_server_get_api_key_existing_is_ok() {
    check(
        S,
        &[Key("K", "v32")],
        &[Answers(
            "get_api_key",
            json!({"name":"K"}),
            json!({"key":"v32"}),
        )],
    );
}

#[test]
fn c033_s_server_has_api_key_is_forbidden() {
    check(
        S,
        &[Key("K", "v")],
        &[
            Refuses(
                "has_api_key",
                json!({"name":"K"}),
                "FORBIDDEN",
                "Sandbox connections cannot check key existence",
            ),
            // Before validation: even without a name.
            Code("has_api_key", json!({}), "FORBIDDEN"),
        ],
    );
}

#[test]
fn c034_s_server_get_token_missing_is_forbidden_not_not_found() {
    check(
        S,
        &[Token("anthropic", "default", "a")],
        &[
            Refuses(
                "get_token",
                json!({"provider":"anthropic","bucket":"other"}),
                "FORBIDDEN",
                "Access denied",
            ),
            // Validation still comes first.
            Refuses(
                "get_token",
                json!({}),
                "INVALID_REQUEST",
                "Missing provider",
            ),
        ],
    );
}

#[test]
fn c035_s_server_get_api_key_missing_is_forbidden() {
    check(
        S,
        &[],
        &[Refuses(
            "get_api_key",
            json!({"name":"nonexistent"}),
            "FORBIDDEN",
            "Access denied",
        )],
    );
}

#[test]
fn c036_fix_bucket_stats_counted_by_the_proxy() {
    // SPEC §3.6, §10 ("get_bucket_stats works"): the counts are the
    // get_token requests this process served, not values from a store.
    let (_env, _srv, mut c) = seeded(
        N,
        &[
            Token("gemini", "default", "a"),
            Token("gemini", "work", "b"),
        ],
    );
    for _ in 0..3 {
        c.ok("get_token", json!({"provider":"gemini"}));
    }
    c.ok("get_token", json!({"provider":"gemini","bucket":"work"}));
    let s = c.ok(
        "get_bucket_stats",
        json!({"provider":"gemini","bucket":"default"}),
    );
    assert_eq!(s["bucket"], "default");
    assert_eq!(s["requestCount"], 3);
    assert_eq!(s["percentage"].as_f64(), Some(75.0));
    assert!(
        s["lastUsed"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{s}"
    );
}

#[test]
fn c037_s_server_save_token_is_forbidden_and_store_unchanged() {
    check(
        S,
        &[Token("anthropic", "default", "at-37")],
        &[
            Refuses(
                "save_token",
                json!({"provider":"anthropic","token":tok("evil")}),
                "FORBIDDEN",
                "Sandbox connections cannot modify tokens",
            ),
            Field(
                "get_token",
                json!({"provider":"anthropic"}),
                "access_token",
                json!("at-37"),
            ),
        ],
    );
}

#[test]
fn c038_s_server_remove_token_is_forbidden_and_token_kept() {
    check(
        S,
        &[Token("anthropic", "default", "at-38")],
        &[
            Refuses(
                "remove_token",
                json!({"provider":"anthropic"}),
                "FORBIDDEN",
                "Sandbox connections cannot remove tokens",
            ),
            Field(
                "get_token",
                json!({"provider":"anthropic"}),
                "access_token",
                json!("at-38"),
            ),
        ],
    );
}

#[test]
fn c039_s_server_bucket_stats_are_exactly_zero() {
    let zero = json!({"bucket":"default","requestCount":0,"percentage":0});
    check(
        S,
        &[Token("anthropic", "default", "a")],
        &[
            Field(
                "get_token",
                json!({"provider":"anthropic"}),
                "access_token",
                json!("a"),
            ),
            Answers(
                "get_bucket_stats",
                json!({"provider":"anthropic","bucket":"default"}),
                zero.clone(),
            ),
            // Before validation, and the bucket defaults to "default".
            Answers("get_bucket_stats", json!({}), zero),
        ],
    );
}

#[test]
fn c040_n_server_bucket_stats_without_token_is_not_found() {
    n_refuses(
        "get_bucket_stats",
        json!({"provider":"anthropic","bucket":"default"}),
        "NOT_FOUND",
        "No stats found for anthropic/default",
    );
}

#[test]
fn c041_n_server_save_token_with_refresh_token_on_empty_store() {
    let mut t = tok("at-41");
    t["refresh_token"] = json!("rt-41");
    check(
        N,
        &[],
        &[
            Answers(
                "save_token",
                json!({"provider":"anthropic","token":t}),
                json!({}),
            ),
            Answers("get_token", json!({"provider":"anthropic"}), tok("at-41")),
            // The incoming refresh token was dropped: nothing to refresh with.
            Refuses(
                "refresh_token",
                json!({"provider":"anthropic"}),
                "REFRESH_NOT_AVAILABLE",
                "Token for anthropic does not have a refresh_token",
            ),
        ],
    );
}

#[test]
fn c042_n_server_remove_token_in_a_bucket() {
    check(
        N,
        &[
            Token("anthropic", "default", "keep"),
            Token("anthropic", "gone", "drop"),
        ],
        &[
            Answers(
                "remove_token",
                json!({"provider":"anthropic","bucket":"gone"}),
                json!({}),
            ),
            Answers(
                "list_buckets",
                json!({"provider":"anthropic"}),
                json!({"buckets":["default"]}),
            ),
        ],
    );
}

#[test]
fn c044_s_server_version_mismatch_wins_over_missing_token() {
    check_version_999_refused(S);
}

/// The five login/refresh requests of item 45, sent in one write.
fn five_oauth_requests(c: &mut conformance::Conn) {
    let frames: Vec<u8> = [
        ("i", "oauth_initiate", json!({"provider":"anthropic"})),
        (
            "e",
            "oauth_exchange",
            json!({"session_id":"0".repeat(32),"code":"x"}),
        ),
        ("p", "oauth_poll", json!({"session_id":"0".repeat(32)})),
        ("c", "oauth_cancel", json!({"session_id":"0".repeat(32)})),
        ("r", "refresh_token", json!({"provider":"anthropic"})),
    ]
    .iter()
    .flat_map(|(id, op, p)| conformance::encode(&json!({"v":2,"id":id,"op":op,"payload":p})))
    .collect();
    c.send_raw(&frames);
}

#[test]
fn c045_fix_b1_sandbox_login_allowed_strict_sandbox_forbids() {
    // SPEC §3.5, §10 (B1): with --strict-sandbox the existing server's
    // refusal, message for message.
    let env = Env::new();
    let srv = env.serve(&["--strict-sandbox"]);
    let mut c = srv.hs();
    five_oauth_requests(&mut c);
    let got = c.recv_by_id(5);
    for (id, msg) in [
        ("i", "Sandbox connections cannot initiate OAuth"),
        ("e", "Sandbox connections cannot exchange OAuth tokens"),
        ("p", "Sandbox connections cannot poll OAuth tokens"),
        ("c", "Sandbox connections cannot cancel OAuth sessions"),
        ("r", "Sandbox connections cannot refresh tokens"),
    ] {
        assert_eq!(got[id], err_reply(id, "FORBIDDEN", msg));
    }
    // By default the same requests reach the login and refresh handlers.
    let (_env, _srv, mut c) = seeded(S, &[]);
    five_oauth_requests(&mut c);
    let got = c.recv_by_id(5);
    assert_eq!(got["i"]["ok"], true, "{}", got["i"]);
    assert_eq!(got["i"]["data"]["flow_type"], "pkce_redirect");
    assert_eq!(
        got["e"],
        err_reply("e", "SESSION_NOT_FOUND", "OAuth session not found")
    );
    assert_eq!(
        got["p"],
        err_reply("p", "SESSION_NOT_FOUND", "OAuth session not found")
    );
    assert_eq!(got["c"], json!({"id":"c","ok":true,"data":{}}));
    assert_ne!(got["r"]["code"], "FORBIDDEN", "{}", got["r"]);
    assert_eq!(got["r"]["ok"], false);
}

#[test]
fn c045_sandbox_refresh_of_a_stored_token_without_refresh_token() {
    // The sandbox reaches the refresh handler (not FORBIDDEN) and gets its
    // answer for a token saved without a refresh token.
    check(
        S,
        &[Token("anthropic", "default", "a")],
        &[Code(
            "refresh_token",
            json!({"provider":"anthropic"}),
            "REFRESH_NOT_AVAILABLE",
        )],
    );
}
