//! Requests after the handshake: envelope checks, `cancel`, and routing
//! (SPEC §3.3).
//!
//! Checks run in this order, each answered with the existing server's
//! message: missing id or op; duplicate in-flight id (also for `cancel`);
//! the in-flight cap (`cancel` exempt); unknown operation; the rate limit for
//! writes and provider calls. Every request that passes them gets exactly
//! one reply.

use std::str::FromStr;

use rand_core::CryptoRng;
use serde_json::{Map, Value};

use crate::engine::audit::{AuditEvent, ConnId, Level};
use crate::engine::engine::{Engine, Output};
use crate::operations::op::Op;
use crate::operations::ops::{self, Start};
use crate::sessions::login::owner_of;
use crate::wire::error::ErrorCode;
use crate::wire::handshake::{Accepted, ConnClass};
use crate::wire::payload;
use crate::wire::reply::{Answer, Failure, encode_reply};
use crate::wire::request::{Field, PayloadField, Request};

impl<R: CryptoRng> Engine<R> {
    /// Handles one request frame on an open connection.
    pub(crate) fn dispatch(&mut self, conn: ConnId, accepted: Accepted, frame: Request<'_>) {
        let id = frame.id.as_ref().and_then(payload::field_id);
        let op_name = match &frame.op {
            Some(Field::Str(s)) if !s.is_empty() => Some(&**s),
            _ => None,
        };
        let (Some(id), Some(op_name)) = (id, op_name) else {
            let echo = frame
                .id
                .as_ref()
                .and_then(payload::field_id)
                .unwrap_or_else(|| "unknown".into());
            let f = Failure::new(ErrorCode::InvalidRequest, "Missing request id or op");
            return self.send_answer(conn, accepted.version, &echo, "invalid", &Err(f));
        };
        let op = Op::from_str(op_name).ok();
        if let Err(f) = self.admit(conn, &id, op) {
            let name = op.map_or("invalid", <&'static str>::from);
            return self.send_answer(conn, accepted.version, &id, name, &Err(f));
        }
        let Some(op) = op else {
            let f = Failure::new(
                ErrorCode::InvalidRequest,
                format!("Unknown operation: {op_name}"),
            );
            return self.send_answer(conn, accepted.version, &id, "unknown_op", &Err(f));
        };
        if op.is_rate_limited()
            && let Some(c) = self.conns.get_mut(conn)
            && let Err(secs) = c.rate.try_take(self.now.mono)
        {
            let f = Failure::rate_limited("Too many requests", secs);
            return self.send_answer(conn, accepted.version, &id, op.into(), &Err(f));
        }
        let payload = frame.payload.as_ref();
        if op == Op::Cancel {
            return self.cancel(conn, accepted.version, &id, payload);
        }
        let sandbox = accepted.class == ConnClass::Sandbox;
        let owner = owner_of(
            self.conns.get(conn).and_then(|c| c.peer.uid),
            accepted.class,
        );
        let version = accepted.version;
        let answer = match ops::start(op, sandbox, &self.config.policy, payload) {
            Start::Answer(answer) => Some(answer),
            Start::Work(work) => {
                let task = self.attach_task(conn, id, op, work);
                return self.begin(task);
            }
            Start::Initiate(key) => self.oauth_initiate(conn, id.clone(), owner, key),
            Start::Exchange { sid, code } => {
                self.oauth_exchange(conn, id.clone(), owner, &sid, &code)
            }
            Start::Poll(sid) => Some(self.oauth_poll(owner, &sid)),
            Start::CancelSession(sid) => Some(self.oauth_cancel(owner, &sid)),
            Start::Refresh(key) => self.refresh_request(conn, id.clone(), key),
        };
        if let Some(answer) = answer {
            self.send_answer(conn, version, &id, op.into(), &answer);
        }
    }

    /// The duplicate-id and in-flight-cap checks.
    fn admit(&self, conn: ConnId, id: &str, op: Option<Op>) -> Result<(), Failure> {
        let Some(c) = self.conns.get(conn) else {
            return Err(Failure::internal());
        };
        if c.in_flight.contains_key(id) {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                "Duplicate request id",
            ));
        }
        if op != Some(Op::Cancel) && c.in_flight.len() >= self.config.limits.max_in_flight {
            return Err(Failure::new(
                ErrorCode::ResourceExhausted,
                "Too many concurrent requests",
            ));
        }
        Ok(())
    }

    /// `cancel {targetId}`: detaches the target, which gets its single
    /// `CANCELLED` reply before the cancel's own reply.
    fn cancel(&mut self, conn: ConnId, version: u8, id: &str, raw: Option<&PayloadField<'_>>) {
        let target = payload::as_object(raw).and_then(payload::target_id);
        let target = match target {
            Ok(t) => t,
            Err(e) => return self.send_answer(conn, version, id, "cancel", &Err(e.into())),
        };
        let found = self
            .conns
            .get_mut(conn)
            .and_then(|c| c.in_flight.remove(&target));
        let cancelled = found.is_some();
        if let Some(task) = found {
            let op = self.tasks.get(task).map_or("cancel", |t| t.op.into());
            self.detach(task);
            let f = Failure::new(ErrorCode::Cancelled, "Operation cancelled");
            self.send_answer(conn, version, &target, op, &Err(f));
        }
        let mut data = Map::new();
        data.insert("cancelled".into(), Value::Bool(cancelled));
        self.send_answer(conn, version, id, "cancel", &Ok(data.into()));
    }

    /// Encodes and queues one reply, with an audit event naming `op`.
    pub(crate) fn send_answer(
        &mut self,
        conn: ConnId,
        version: u8,
        id: &str,
        op: &'static str,
        answer: &Answer,
    ) {
        let event = AuditEvent::new(Level::Info, Some(conn), op, "ok");
        self.send_answer_audited(conn, version, id, answer, event);
    }

    /// Encodes and queues one reply; `event` gets the outcome and is audited.
    pub(crate) fn send_answer_audited(
        &mut self,
        conn: ConnId,
        version: u8,
        id: &str,
        answer: &Answer,
        mut event: AuditEvent,
    ) {
        let (bytes, too_large) = encode_reply(id, answer, version, &self.config.limits);
        self.push(Output::Send { conn, bytes });
        event.outcome = match answer {
            _ if too_large => ErrorCode::ResponseTooLarge.into(),
            Ok(_) => "ok",
            Err(f) => f.code.into(),
        };
        event.level = if answer.is_ok() && !too_large {
            Level::Info
        } else {
            Level::Warn
        };
        self.audit(event);
    }
}
