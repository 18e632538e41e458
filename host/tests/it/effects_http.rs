//! The HTTP effect against canned servers on 127.0.0.1 (no other host is
//! ever contacted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use credproxy::effects::Executor;
use credproxy::http_client::HttpClient;
use credproxy::store::{FileStore, Store};
use credproxy_core::http::{self, HttpOutcome, HttpRequest, MAX_BODY, Method, TransportError};
use credproxy_core::{Effect, EffectResult, Secret};

use crate::support::http_stub::{Behavior, Server, free_port, json, response};

fn client() -> HttpClient {
    HttpClient::new()
}

fn status_and_body(outcome: HttpOutcome) -> (u16, Vec<u8>) {
    match outcome {
        HttpOutcome::Response { status, body } => (status, body),
        HttpOutcome::Failed(e) => panic!("expected a response, got {e:?}"),
    }
}

#[test]
fn ok_with_json_body() {
    let server = Server::start(Behavior::Respond(json("200 OK", r#"{"a":1}"#)), 1);
    let out = client().execute(&http::get(&server.url("/doc"), 5_000));
    assert_eq!(status_and_body(out), (200, br#"{"a":1}"#.to_vec()));
    let req = server.next_request();
    assert_eq!(req.method, "GET");
    assert_eq!(req.target, "/doc");
}

#[test]
fn error_status_is_a_response_not_a_failure() {
    let body = r#"{"error":"invalid_grant","error_description":"nope"}"#;
    let server = Server::start(Behavior::Respond(json("400 Bad Request", body)), 1);
    let out = client().execute(&http::get(&server.url("/t"), 5_000));
    assert_eq!(status_and_body(out), (400, body.as_bytes().to_vec()));
    let server = Server::start(Behavior::Respond(json("503 Service Unavailable", "{}")), 1);
    let out = client().execute(&http::get(&server.url("/t"), 5_000));
    assert_eq!(status_and_body(out).0, 503);
}

#[test]
fn redirect_is_not_followed() {
    // Following it would hit a closed port (a Connect failure).
    let elsewhere = format!("Location: http://127.0.0.1:{}/elsewhere", free_port());
    let server = Server::start(
        Behavior::Respond(response("302 Found", &[&elsewhere], b"")),
        1,
    );
    let out = client().execute(&http::get(&server.url("/start"), 5_000));
    assert_eq!(status_and_body(out), (302, Vec::new()));
}

#[test]
fn body_of_exactly_the_cap_is_returned() {
    let body = vec![b'x'; MAX_BODY];
    let server = Server::start(Behavior::Respond(response("200 OK", &[], &body)), 1);
    let out = client().execute(&http::get(&server.url("/big"), 10_000));
    let (status, got) = status_and_body(out);
    assert_eq!(status, 200);
    assert_eq!(got.len(), MAX_BODY);
}

#[test]
fn body_over_the_cap_is_other() {
    let body = vec![b'x'; MAX_BODY + 1];
    let server = Server::start(Behavior::Respond(response("200 OK", &[], &body)), 1);
    let out = client().execute(&http::get(&server.url("/big"), 10_000));
    assert_eq!(out, HttpOutcome::Failed(TransportError::Other));
}

#[test]
fn body_over_the_cap_without_length_is_other() {
    // No Content-Length: the body runs until the server closes.
    let mut bytes = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'y', MAX_BODY + 10));
    let server = Server::start(Behavior::Respond(bytes), 1);
    let out = client().execute(&http::get(&server.url("/big"), 10_000));
    assert_eq!(out, HttpOutcome::Failed(TransportError::Other));
}

#[test]
fn silent_server_times_out() {
    let server = Server::start(Behavior::Hang, 1);
    let start = Instant::now();
    let out = client().execute(&http::get(&server.url("/slow"), 200));
    assert_eq!(out, HttpOutcome::Failed(TransportError::Timeout));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    // It did get the request before going quiet.
    assert_eq!(server.next_request().target, "/slow");
}

#[test]
fn closed_port_is_connect() {
    let url = format!("http://127.0.0.1:{}/token", free_port());
    let out = client().execute(&http::get(&url, 5_000));
    assert_eq!(out, HttpOutcome::Failed(TransportError::Connect));
}

#[test]
fn tls_failure_is_tls() {
    // A plain-text server where TLS is expected: rustls rejects the reply.
    let server = Server::start(Behavior::Greet(json("200 OK", "{}")), 1);
    let url = format!("https://{}/token", server.addr);
    let out = client().execute(&http::get(&url, 5_000));
    assert_eq!(out, HttpOutcome::Failed(TransportError::Tls));
}

#[test]
fn plain_http_to_a_remote_host_is_refused_without_io() {
    let start = Instant::now();
    for url in ["http://example.com/token", "http://example.com:80/"] {
        let out = client().execute(&http::get(url, 30_000));
        assert_eq!(out, HttpOutcome::Failed(TransportError::Other), "{url}");
    }
    // No DNS lookup, no connect: immediate.
    assert!(start.elapsed() < Duration::from_millis(500));
}

#[test]
fn headers_and_body_arrive_as_sent() {
    let server = Server::start(Behavior::Respond(json("200 OK", "{}")), 1);
    let request = HttpRequest {
        method: Method::Post,
        url: server.url("/oauth/token?x=1"),
        headers: vec![
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("Accept".into(), "application/json".into()),
            ("X-Custom".into(), "v a l".into()),
        ],
        body: Some(Secret::new("grant_type=authorization_code&code=c%20d")),
        timeout_ms: 5_000,
    };
    let out = client().execute(&request);
    assert_eq!(status_and_body(out).0, 200);
    let req = server.next_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/oauth/token?x=1");
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.header("x-custom"), Some("v a l"));
    assert_eq!(req.body, b"grant_type=authorization_code&code=c%20d");
    // One Accept only (ours), and our User-Agent.
    let accepts = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("accept"))
        .count();
    assert_eq!(accepts, 1);
    assert!(req.header("user-agent").unwrap().starts_with("credproxy/"));
}

#[test]
fn json_post_helper_through_the_executor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::from(
        FileStore::open(&dir.path().join("store")).unwrap(),
    ));
    let executor = Executor::new(store);
    let server = Server::start(
        Behavior::Respond(json("200 OK", r#"{"access_token":"t"}"#)),
        1,
    );
    let request = http::post(
        &server.url("/token"),
        credproxy_core::provider::BodyEncoding::Json,
        &[("grant_type", "refresh_token"), ("refresh_token", "R")],
        5_000,
    );
    let effect = Effect::Http(request);
    assert_eq!(executor.try_inline(&effect), None);
    let result = executor.execute(effect);
    assert_eq!(
        result,
        EffectResult::Http(HttpOutcome::Response {
            status: 200,
            body: br#"{"access_token":"t"}"#.to_vec()
        })
    );
    let req = server.next_request();
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.body,
        br#"{"grant_type":"refresh_token","refresh_token":"R"}"#
    );
}

#[test]
fn post_without_body() {
    let server = Server::start(Behavior::Respond(json("200 OK", "{}")), 1);
    // A GET turned POST, without its Accept header: nothing but the line.
    let mut request = http::get(&server.url("/empty"), 5_000);
    (request.method, request.headers) = (Method::Post, Vec::new());
    assert_eq!(status_and_body(client().execute(&request)).0, 200);
    let req = server.next_request();
    assert_eq!(req.method, "POST");
    assert!(req.body.is_empty());
}
