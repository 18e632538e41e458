//! A small OAuth 2.0 authorization server for integration tests: real
//! HTTP/1.1 on `127.0.0.1:<ephemeral>` (a [`HttpStub`]), one thread, one request per
//! connection (every response says `Connection: close`), stopped and joined
//! on drop. Every request is recorded.
//!
//! Endpoints:
//!
//! - `GET /.well-known/openid-configuration`: the discovery document; its
//!   `issuer` is the server's base URL unless [`OAuthServer::set_discovery_issuer`]
//!   says otherwise.
//! - `POST /device`: RFC 8628 device authorization (`device_code`,
//!   `user_code`, `verification_uri`, `verification_uri_complete`,
//!   `expires_in`, and `interval` when configured). A `code_challenge` in
//!   the request (Qwen's dialect) binds the device code to a PKCE verifier.
//! - `POST /token` (form or JSON body):
//!   - `authorization_code`: the code must have been minted by
//!     [`OAuthServer::approve`] (the test plays the browser and the user),
//!     single use, for the same `client_id` and `redirect_uri`, and
//!     `base64url(SHA-256(code_verifier))` must equal its challenge;
//!   - `refresh_token`: rotating. Each refresh issues a new refresh token and
//!     retires the old one; presenting a retired one is reuse: `400
//!     invalid_grant` and the whole family is revoked, as real providers do;
//!   - `urn:ietf:params:oauth:grant-type:device_code`: answers from the
//!     device code's script ([`DeviceStep`]), recording when each poll
//!     arrived.
//!
//! There is no `/authorize` endpoint: the test reads the authorization URL
//! the proxy built, checks it, and calls [`OAuthServer::approve`] for the
//! code a browser redirect would carry.
//!
//! Nothing here sleeps except [`OAuthServer::set_refresh_latency`], which
//! makes the token endpoint answer refreshes slowly (a slow provider widens
//! a race window on purpose, or keeps a request pending); dropping the
//! server cuts that wait short.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credproxy_core::Secret;
use serde_json::{Map, Value, json};

use super::http_stub::{HttpStub, Mode, Recorded as Request, read_request};

/// The device-code grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// One answer of the token endpoint to a device-code poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStep {
    /// `400 {"error":"authorization_pending"}`.
    Pending,
    /// `400 {"error":"slow_down"}`.
    SlowDown,
    /// `400 {"error":"access_denied"}`; the device code is finished.
    Denied,
    /// `400 {"error":"expired_token"}`; the device code is finished.
    Expired,
    /// The user approved: tokens (PKCE checked when the code has a
    /// challenge); the device code is finished.
    Approve,
}

impl DeviceStep {
    fn error(self) -> Option<&'static str> {
        match self {
            DeviceStep::Pending => Some("authorization_pending"),
            DeviceStep::SlowDown => Some("slow_down"),
            DeviceStep::Denied => Some("access_denied"),
            DeviceStep::Expired => Some("expired_token"),
            DeviceStep::Approve => None,
        }
    }
}

/// One request as the server saw it, with its answer.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it arrived (head complete).
    #[expect(
        dead_code,
        reason = "no test reads it yet; it completes the record's Debug output"
    )]
    pub at: Instant,
    /// `GET`, `POST`, …
    #[expect(
        dead_code,
        reason = "no test reads it yet; it completes the record's Debug output"
    )]
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The `Content-Type` header (empty when absent).
    pub content_type: String,
    /// The raw body.
    #[expect(
        dead_code,
        reason = "no test reads it yet; it completes the record's Debug output"
    )]
    pub body: String,
    /// The body's fields (JSON object of strings, or form fields).
    pub fields: BTreeMap<String, String>,
    /// The response status.
    pub status: u16,
    /// The OAuth `error` of the response, if any.
    pub error: Option<String>,
}

impl Recorded {
    /// A field of the body.
    #[must_use]
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The `grant_type` of a token request.
    #[must_use]
    pub fn grant(&self) -> Option<&str> {
        self.field("grant_type")
    }
}

/// Counters of what the server did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Authorization codes redeemed with a correct PKCE verifier.
    pub codes_redeemed: u32,
    /// Exchanges refused because the verifier did not match.
    pub pkce_failures: u32,
    /// Successful refreshes (each one rotated the refresh token).
    pub refreshes: u32,
    /// Retired refresh tokens presented again (each revoked its family).
    pub reuse_detected: u32,
    /// Refreshes refused because the family was revoked.
    pub revoked_rejections: u32,
    /// Device codes that ended with tokens.
    pub device_approvals: u32,
}

#[derive(Debug)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    used: bool,
}

#[derive(Debug)]
struct Family {
    client_id: String,
    current: String,
    retired: Vec<String>,
    revoked: bool,
}

#[derive(Debug)]
struct Device {
    client_id: String,
    #[expect(dead_code, reason = "kept with its device code for the Debug output")]
    user_code: String,
    challenge: Option<String>,
    script: VecDeque<DeviceStep>,
    polls: Vec<Instant>,
    finished: bool,
}

#[derive(Debug, Default)]
struct State {
    base: String,
    next: u64,
    codes: HashMap<String, Code>,
    families: Vec<Family>,
    /// Refresh token → family index (current and retired tokens).
    refresh_index: HashMap<String, usize>,
    devices: BTreeMap<String, Device>,
    device_order: Vec<String>,
    next_scripts: VecDeque<Vec<DeviceStep>>,
    device_interval_s: Option<u64>,
    device_expires_in: u64,
    expires_in: u64,
    discovery_issuer: Option<String>,
    id_token_claims: Option<Value>,
    refresh_latency: Duration,
    requests: Vec<Recorded>,
    stats: Stats,
}

impl State {
    fn serial(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// A new token pair in a new family.
    fn issue(&mut self, client_id: &str) -> Map<String, Value> {
        let n = self.serial();
        let refresh = format!("rt-{n}-0");
        self.families.push(Family {
            client_id: client_id.to_owned(),
            current: refresh.clone(),
            retired: Vec::new(),
            revoked: false,
        });
        self.refresh_index
            .insert(refresh.clone(), self.families.len() - 1);
        self.token_body(&format!("at-{n}-0"), &refresh)
    }

    fn token_body(&self, access: &str, refresh: &str) -> Map<String, Value> {
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": refresh,
            "scope": "openid offline_access",
        });
        if let Some(claims) = &self.id_token_claims {
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            body["id_token"] = Value::from(format!("eyJhbGciOiJub25lIn0.{payload}.sig"));
        }
        match body {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }
}

/// The running server. Stopped (and its thread joined) on drop.
pub struct OAuthServer {
    stub: HttpStub,
    state: Arc<Mutex<State>>,
}

/// An HTTP response: status and JSON body.
type Response = (u16, Value);

fn oauth_error(error: &str) -> Response {
    (
        400,
        json!({"error": error, "error_description": "refused by the test server"}),
    )
}

impl OAuthServer {
    /// Starts a server on `127.0.0.1:0`: access tokens live 3600 s, device
    /// codes 600 s with `interval` 1 s, and every device code approves on
    /// its first poll unless a script says otherwise.
    #[must_use]
    pub fn start() -> OAuthServer {
        let state = Arc::new(Mutex::new(State {
            device_interval_s: Some(1),
            device_expires_in: 600,
            expires_in: 3600,
            ..State::default()
        }));
        let stub = {
            let state = state.clone();
            HttpStub::start(Mode::Serial, usize::MAX, move |stream, stop| {
                serve_one(stream, &state, stop);
            })
        };
        lock(&state).base = stub.url("");
        OAuthServer { stub, state }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.stub.port()
    }

    /// `http://127.0.0.1:<port>` (also the issuer).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// The base URL followed by `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The user approves an authorization request: a single-use code bound
    /// to the client, its redirect URI and the PKCE challenge.
    pub fn approve(&self, client_id: &str, redirect_uri: &str, code_challenge: &str) -> String {
        let mut st = self.state();
        let code = format!("code-{}", st.serial());
        st.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                challenge: code_challenge.to_owned(),
                used: false,
            },
        );
        code
    }

    /// A token pair issued outside any login (to seed a store): the token
    /// as a proxy would store it (`expiry` instead of `expires_in`).
    #[must_use]
    pub fn mint(&self, client_id: &str, now_unix_s: u64) -> Value {
        let mut st = self.state();
        let mut body = st.issue(client_id);
        let expires_in = st.expires_in;
        body.remove("expires_in");
        body.insert("expiry".into(), Value::from(now_unix_s + expires_in));
        Value::Object(body)
    }

    /// The script of the next device authorization (queued in order).
    pub fn script_device(&self, steps: &[DeviceStep]) {
        self.state().next_scripts.push_back(steps.to_vec());
    }

    /// The `interval` of device authorization responses (`None`: omitted).
    pub fn set_device_interval(&self, seconds: Option<u64>) {
        self.state().device_interval_s = seconds;
    }

    /// The `issuer` of the discovery document (`None`: the base URL).
    pub fn set_discovery_issuer(&self, issuer: Option<&str>) {
        self.state().discovery_issuer = issuer.map(str::to_owned);
    }

    /// Claims of an (unsigned) `id_token` added to token responses.
    pub fn set_id_token_claims(&self, claims: Option<Value>) {
        self.state().id_token_claims = claims;
    }

    /// How long the token endpoint takes to answer a refresh.
    pub fn set_refresh_latency(&self, latency: Duration) {
        self.state().refresh_latency = latency;
    }

    /// Revokes every refresh-token family (the user signed out everywhere).
    pub fn revoke_all(&self) {
        for f in &mut self.state().families {
            f.revoked = true;
        }
    }

    /// The current refresh token of every family that is not revoked.
    #[must_use]
    pub fn live_refresh_tokens(&self) -> Vec<String> {
        self.state()
            .families
            .iter()
            .filter(|f| !f.revoked)
            .map(|f| f.current.clone())
            .collect()
    }

    /// Whether any family was revoked (by reuse or [`OAuthServer::revoke_all`]).
    #[must_use]
    pub fn any_revoked(&self) -> bool {
        self.state().families.iter().any(|f| f.revoked)
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.state().stats
    }

    /// Every request so far.
    #[must_use]
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// The token requests of one grant type.
    #[must_use]
    pub fn token_requests(&self, grant: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/token" && r.grant() == Some(grant))
            .collect()
    }

    /// The device codes issued, oldest first.
    #[must_use]
    pub fn device_codes(&self) -> Vec<String> {
        self.state().device_order.clone()
    }

    /// When each poll of `device_code` arrived.
    #[must_use]
    pub fn device_polls(&self, device_code: &str) -> Vec<Instant> {
        self.state()
            .devices
            .get(device_code)
            .map(|d| d.polls.clone())
            .unwrap_or_default()
    }

    /// The gaps between consecutive polls of the latest device code.
    #[must_use]
    pub fn latest_poll_gaps(&self) -> Vec<Duration> {
        let Some(code) = self.device_codes().pop() else {
            return Vec::new();
        };
        self.device_polls(&code)
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The fields of a JSON object body (string values; numbers as text) or a
/// form body.
fn fields_of(content_type: &str, body: &[u8]) -> BTreeMap<String, String> {
    if content_type.contains("json") {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return BTreeMap::new();
        };
        return map
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
    }
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn serve_one(mut stream: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let Ok(req) = read_request(&mut stream) else {
        return;
    };
    let content_type = req.header("content-type").unwrap_or_default().to_owned();
    let at = Instant::now();
    let fields = fields_of(&content_type, &req.body);
    let (status, body, latency) = {
        let mut st = lock(state);
        let ((status, body), latency) = route(&mut st, &req, &fields, at);
        st.requests.push(Recorded {
            at,
            method: req.method.clone(),
            path: req.path().to_owned(),
            content_type,
            body: String::from_utf8_lossy(&req.body).into_owned(),
            fields,
            status,
            error: body.get("error").and_then(Value::as_str).map(str::to_owned),
        });
        (status, body, latency)
    };
    // A slow provider; cut short when the server stops.
    let until = Instant::now() + latency;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(5));
    }
    let text = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Status",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Cache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Answers one request; also returns how long to wait before sending it.
fn route(
    st: &mut State,
    req: &Request,
    f: &BTreeMap<String, String>,
    at: Instant,
) -> (Response, Duration) {
    let none = Duration::ZERO;
    match (req.method.as_str(), req.path()) {
        ("GET", "/.well-known/openid-configuration") => {
            let base = st.base.clone();
            let issuer = st.discovery_issuer.clone().unwrap_or_else(|| base.clone());
            let doc = json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "device_authorization_endpoint": format!("{base}/device"),
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
                "code_challenge_methods_supported": ["S256"],
            });
            ((200, doc), none)
        }
        ("POST", "/device") => (device_authorization(st, f), none),
        ("POST", "/token") => match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => (exchange(st, f), none),
            Some("refresh_token") => (refresh(st, f), st.refresh_latency),
            Some(DEVICE_GRANT) => (device_poll(st, f, at), none),
            _ => (oauth_error("unsupported_grant_type"), none),
        },
        _ => ((404, json!({"error": "not_found"})), none),
    }
}

fn device_authorization(st: &mut State, f: &BTreeMap<String, String>) -> Response {
    let Some(client_id) = f.get("client_id").filter(|c| !c.is_empty()) else {
        return oauth_error("invalid_client");
    };
    let challenge = match (f.get("code_challenge"), f.get("code_challenge_method")) {
        (Some(c), Some(m)) if m == "S256" => Some(c.clone()),
        (Some(_), _) => return oauth_error("invalid_request"),
        (None, _) => None,
    };
    let n = st.serial();
    let device_code = format!("dc-{n}");
    let user_code = format!("USER-{n:04}");
    let script = st
        .next_scripts
        .pop_front()
        .unwrap_or_else(|| vec![DeviceStep::Approve]);
    st.devices.insert(
        device_code.clone(),
        Device {
            client_id: client_id.clone(),
            user_code: user_code.clone(),
            challenge,
            script: script.into(),
            polls: Vec::new(),
            finished: false,
        },
    );
    st.device_order.push(device_code.clone());
    let base = st.base.clone();
    let mut body = json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{base}/verify"),
        "verification_uri_complete": format!("{base}/verify?user_code={user_code}"),
        "expires_in": st.device_expires_in,
    });
    if let Some(i) = st.device_interval_s {
        body["interval"] = Value::from(i);
    }
    (200, body)
}

fn pkce_matches(verifier: Option<&String>, challenge: &str) -> bool {
    verifier.is_some_and(|v| credproxy_core::pkce::challenge(&Secret::new(v.clone())) == challenge)
}

fn exchange(st: &mut State, f: &BTreeMap<String, String>) -> Response {
    let Some(code) = f.get("code").and_then(|c| st.codes.get_mut(c)) else {
        return oauth_error("invalid_grant");
    };
    if code.used {
        return oauth_error("invalid_grant");
    }
    code.used = true;
    if f.get("client_id") != Some(&code.client_id) {
        return oauth_error("invalid_client");
    }
    if f.get("redirect_uri") != Some(&code.redirect_uri) {
        return oauth_error("invalid_grant");
    }
    if !pkce_matches(f.get("code_verifier"), &code.challenge) {
        st.stats.pkce_failures += 1;
        return oauth_error("invalid_grant");
    }
    let client = code.client_id.clone();
    st.stats.codes_redeemed += 1;
    (200, Value::Object(st.issue(&client)))
}

fn refresh(st: &mut State, f: &BTreeMap<String, String>) -> Response {
    let Some(presented) = f.get("refresh_token") else {
        return oauth_error("invalid_request");
    };
    let Some(&index) = st.refresh_index.get(presented) else {
        return oauth_error("invalid_grant");
    };
    let n = st.serial();
    let family = &mut st.families[index];
    if f.get("client_id") != Some(&family.client_id) {
        return oauth_error("invalid_client");
    }
    if family.revoked {
        st.stats.revoked_rejections += 1;
        return oauth_error("invalid_grant");
    }
    if family.current != *presented {
        // A retired refresh token: someone replayed it. Revoke everything
        // issued from this grant (RFC 9700 §4.14.2).
        family.revoked = true;
        st.stats.reuse_detected += 1;
        return oauth_error("invalid_grant");
    }
    let next = format!("rt-{n}-{}", family.retired.len() + 1);
    let old = std::mem::replace(&mut family.current, next.clone());
    family.retired.push(old);
    st.refresh_index.insert(next.clone(), index);
    st.stats.refreshes += 1;
    (
        200,
        Value::Object(st.token_body(&format!("at-{n}-r"), &next)),
    )
}

fn device_poll(st: &mut State, f: &BTreeMap<String, String>, at: Instant) -> Response {
    let Some(device) = f.get("device_code").and_then(|d| st.devices.get_mut(d)) else {
        return oauth_error("invalid_grant");
    };
    device.polls.push(at);
    if f.get("client_id") != Some(&device.client_id) {
        return oauth_error("invalid_client");
    }
    if device.finished {
        return oauth_error("invalid_grant");
    }
    let step = device.script.pop_front().unwrap_or(DeviceStep::Pending);
    if let Some(error) = step.error() {
        if matches!(step, DeviceStep::Denied | DeviceStep::Expired) {
            device.finished = true;
        }
        return oauth_error(error);
    }
    device.finished = true;
    if let Some(challenge) = device.challenge.clone()
        && !pkce_matches(f.get("code_verifier"), &challenge)
    {
        st.stats.pkce_failures += 1;
        return oauth_error("invalid_grant");
    }
    let client = device.client_id.clone();
    st.stats.device_approvals += 1;
    (200, Value::Object(st.issue(&client)))
}
