//! `credproxy login`: host-side OAuth login.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use credproxy_core::FlowType;
use serde_json::{Map, Value, json};

use crate::config::Settings;

use super::conn::{CallError, ChildProxy, Conn, client_socket, connect};
use super::{EXIT_FAILED, Failure, LoginArgs, emit_line, failed};

/// Time allowed for one request to the in-process proxy.
pub(super) const CHILD_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Slack on top of the session's `expires_in` before `login` gives up on
/// its own (the proxy normally reports the expiry first).
pub(super) const EXPIRY_SLACK: Duration = Duration::from_secs(10);

pub(super) fn cmd_login(a: &LoginArgs) -> Result<ExitCode, Failure> {
    // Every failure of `login` exits 1.
    let as_failed = |Failure(_, m): Failure| Failure(EXIT_FAILED, m);
    let socket = if a.local {
        None
    } else {
        client_socket(a.socket.as_deref())
    };
    if let Some(socket) = socket {
        let mut client = connect(
            &socket,
            a.capability_file.as_deref(),
            credproxy_unix::client::DEFAULT_REQUEST_TIMEOUT_MS,
        )
        .map_err(as_failed)?;
        return run_login(&mut client, a).map_err(as_failed);
    }
    // The in-process proxy reads the same configuration; load it here too
    // so that a broken file is reported before anything starts.
    let settings = Settings::load(a.config.config.as_deref()).map_err(|e| failed(e.0))?;
    settings.validate().map_err(|e| failed(e.0))?;
    let mut args = Vec::new();
    if let Some(c) = &a.config.config {
        args.extend(["--config".to_owned(), c.display().to_string()]);
    }
    if let Some(s) = &a.store {
        args.extend(["--store".to_owned(), s.display().to_string()]);
    }
    args.extend(a.backend.to_args());
    let audit = a
        .audit_log
        .clone()
        .or(settings.audit_log)
        .unwrap_or_else(|| "off".to_owned());
    args.extend(["--audit-log".to_owned(), audit]);
    let mut proxy = ChildProxy::start(&args, CHILD_CALL_TIMEOUT).map_err(as_failed)?;
    let result = run_login(&mut proxy, a);
    proxy.finish();
    result.map_err(as_failed)
}

pub(super) fn field<'a>(data: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    data.get(key).and_then(Value::as_str)
}

/// A progress indicator on stderr, only when stderr is a terminal: a
/// spinner with the time left, or (while the user may be typing a pasted
/// URL on the same terminal) dots that never erase the line.
pub(super) struct Progress {
    on: bool,
    dots: bool,
    frame: usize,
    shown: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(dots: bool) -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
            dots,
            frame: 0,
            shown: false,
            last: None,
        }
    }

    fn tick(&mut self, deadline: Instant) {
        if !self.on {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.dots {
            // One dot a second.
            if self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            self.last = Some(Instant::now());
            let _ = write!(err, ".");
        } else {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            let _ = write!(
                err,
                "\r{} waiting for the authorization ({}:{:02} left) ",
                FRAMES[self.frame % FRAMES.len()],
                left / 60,
                left % 60
            );
            self.frame += 1;
        }
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            if self.dots {
                let _ = writeln!(err);
            } else {
                let _ = write!(err, "\r{:60}\r", "");
            }
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// Reads lines from stdin on a thread (stdin blocks; the login must keep
/// polling meanwhile).
pub(super) fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

pub(super) fn run_login(conn: &mut dyn Conn, a: &LoginArgs) -> Result<ExitCode, Failure> {
    let bucket = a.bucket.as_deref().unwrap_or("default");
    let mut payload = json!({"provider": a.provider});
    if let Some(b) = &a.bucket {
        payload["bucket"] = Value::from(b.as_str());
    }
    let init = conn.call("oauth_initiate", payload).map_err(|e| {
        let hint = match &e {
            CallError::Reply { code, .. } if code == "PROVIDER_NOT_CONFIGURED" => {
                "; `credproxy providers` lists the configured providers"
            }
            _ => "",
        };
        failed(format!("login failed: {e}{hint}"))
    })?;
    let session = field(&init, "session_id")
        .ok_or_else(|| failed("login failed: the proxy sent no session_id"))?
        .to_owned();
    let flow = field(&init, "flow_type").unwrap_or_default().to_owned();
    let flow: FlowType = flow
        .parse()
        .map_err(|_| failed(format!("login failed: unknown flow type {flow:?}")))?;
    let expires_in = init
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(600);
    let deadline = Instant::now() + Duration::from_secs(expires_in) + EXPIRY_SLACK;
    let mut interval = init
        .get("pollIntervalMs")
        .and_then(Value::as_u64)
        .unwrap_or(5_000);
    if a.json {
        let mut info = json!({"status": "initiated", "provider": a.provider,
            "bucket": bucket, "flow_type": flow.to_string(), "expires_in": expires_in});
        for k in [
            "auth_url",
            "verification_uri",
            "verification_uri_complete",
            "user_code",
        ] {
            if let Some(v) = field(&init, k) {
                info[k] = Value::from(v);
            }
        }
        emit_line(format_args!("{info}"));
        let _ = std::io::stdout().flush();
    }
    let mut err = std::io::stderr();
    let url = field(&init, "verification_uri_complete")
        .or_else(|| field(&init, "auth_url"))
        .unwrap_or_default();
    let _ = writeln!(
        err,
        "To log in to {} (bucket {bucket}), open this URL in a browser:\n\n  {url}\n",
        a.provider
    );
    if let Some(code) = field(&init, "user_code") {
        let _ = writeln!(err, "and enter the code: {code}\n");
    }
    let cancel = |conn: &mut dyn Conn| {
        let _ = conn.call("oauth_cancel", json!({"session_id": session}));
    };
    let token = match flow {
        FlowType::PkceRedirect => {
            let _ = write!(
                err,
                "Paste the authorization code (or the whole redirect URL) and press Enter: "
            );
            let _ = err.flush();
            let mut line = String::new();
            let read = std::io::stdin().lock().read_line(&mut line);
            let code = line.trim();
            if read.is_err() || code.is_empty() {
                cancel(conn);
                return Err(failed("login failed: no authorization code was given"));
            }
            conn.call(
                "oauth_exchange",
                json!({"session_id": session, "code": code}),
            )
            .map_err(|e| failed(format!("login failed: {e}")))?
        }
        FlowType::DeviceCode | FlowType::BrowserRedirect => {
            let pasted = (flow == FlowType::BrowserRedirect).then(|| {
                let _ = writeln!(
                    err,
                    "Waiting for the browser. If it runs on another machine, paste the address \
                     it was redirected to here and press Enter."
                );
                stdin_lines()
            });
            let mut progress = Progress::new(pasted.is_some());
            let result = poll_login(
                conn,
                &session,
                &mut interval,
                deadline,
                pasted.as_ref(),
                &mut progress,
            );
            progress.clear();
            match result {
                Ok(t) => t,
                Err(e) => {
                    if matches!(e, CallError::Transport(_)) {
                        cancel(conn);
                    }
                    return Err(failed(format!("login failed: {e}")));
                }
            }
        }
    };
    let expiry = token.get("expiry").and_then(Value::as_f64);
    if a.json {
        emit_line(format_args!(
            "{}",
            json!({"status": "complete", "provider": a.provider, "bucket": bucket,
                "expiry": expiry})
        ));
    } else {
        let when = expiry.map_or_else(String::new, |e| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let left = Duration::from_secs((e - now).max(0.0) as u64);
            format!(
                "; the token expires in {}",
                humantime::format_duration(left)
            )
        });
        emit_line(format_args!("Logged in to {}/{bucket}{when}", a.provider));
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the session until it completes, fails or expires. A line on
/// `pasted` (browser_redirect) is exchanged as the redirect URL.
pub(super) fn poll_login(
    conn: &mut dyn Conn,
    session: &str,
    interval: &mut u64,
    deadline: Instant,
    pasted: Option<&mpsc::Receiver<String>>,
    progress: &mut Progress,
) -> Result<Map<String, Value>, CallError> {
    // `oauth_poll` only reads the session on the host (the proxy polls the
    // provider itself), so a browser redirect is noticed within 2 s.
    let cap = if pasted.is_some() { 2_000 } else { 60_000 };
    loop {
        let next = Instant::now() + Duration::from_millis((*interval).clamp(100, cap));
        while Instant::now() < next {
            progress.tick(deadline);
            let slice = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            match pasted {
                Some(lines) => match lines.recv_timeout(slice) {
                    Ok(line) if !line.trim().is_empty() => {
                        progress.clear();
                        return conn.call(
                            "oauth_exchange",
                            json!({"session_id": session, "code": line.trim()}),
                        );
                    }
                    Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // stdin is at its end: nothing will be pasted.
                    Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(slice),
                },
                None => std::thread::sleep(slice),
            }
        }
        if Instant::now() >= deadline {
            return Err(CallError::Transport(
                "the login session expired before the authorization arrived".into(),
            ));
        }
        let mut reply = conn.call("oauth_poll", json!({"session_id": session}))?;
        match field(&reply, "status") {
            Some("complete") => {
                return match reply.remove("token") {
                    Some(Value::Object(t)) => Ok(t),
                    _ => Ok(Map::new()),
                };
            }
            _ => {
                if let Some(ms) = reply.get("pollIntervalMs").and_then(Value::as_u64) {
                    *interval = ms;
                }
            }
        }
    }
}
