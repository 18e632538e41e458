//! `credproxy call`: a debug client for one request.

use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::conn::{CallError, Conn, client_socket, connect};
use super::{CallArgs, EXIT_USAGE, Failure, emit_line, failed};

pub(super) fn cmd_call(a: &CallArgs) -> Result<ExitCode, Failure> {
    let payload = match a.payload.as_deref() {
        None => Value::Object(Map::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(v @ (Value::Object(_) | Value::Null)) => v,
            Ok(_) => {
                return Err(Failure(
                    EXIT_USAGE,
                    "the payload must be a JSON object, e.g. '{\"provider\":\"anthropic\"}'".into(),
                ));
            }
            Err(e) => {
                return Err(Failure(
                    EXIT_USAGE,
                    format!("the payload is not valid JSON: {e}"),
                ));
            }
        },
    };
    let socket = client_socket(a.socket.as_deref()).ok_or_else(|| {
        failed(
            "no proxy socket: pass --socket PATH or set CREDPROXY_SOCKET \
             (`credproxy serve` prints it)",
        )
    })?;
    let mut client = connect(&socket, a.capability_file.as_deref(), a.timeout_ms)?;
    match Conn::call(&mut client, &a.op, payload) {
        Ok(data) => {
            let data = Value::Object(data);
            if a.json {
                emit_line(format_args!("{data}"));
            } else {
                emit_line(format_args!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if a.json {
                let mut v = json!({"ok": false, "error": e.to_string()});
                if let CallError::Reply {
                    code,
                    message,
                    retry_after,
                } = &e
                {
                    v = json!({"ok": false, "code": code, "error": message});
                    if let Some(s) = retry_after {
                        v["retryAfter"] = Value::from(*s);
                    }
                }
                emit_line(format_args!("{v}"));
            }
            Err(failed(e))
        }
    }
}
