//! The request frames the world's clients send, built from typed [`Req`]s
//! against the fixtures' providers, buckets, key names and the sessions
//! seen so far.

use serde_json::{Value, json};

use crate::testkit::START_UNIX_MS;

use super::super::fixtures::{BUCKETS, CODEX_PORT, KEY_NAMES, PROVIDERS};
use super::super::ops::{Code, KeySel, Req, TokenSel};
use super::World;
use super::http::odd_number;

impl World {
    pub(super) fn request_value(&mut self, id: u8, req: Req) -> Value {
        let rq =
            |op: &str, payload: Value| json!({"v":2,"id":id_value(id),"op":op,"payload":payload});
        match req {
            Req::GetToken(k) => rq("get_token", key_payload(k)),
            Req::SaveToken(k, t) => {
                let n = self.next();
                let expiry = START_UNIX_MS / 1000 + 3600;
                let token = match t {
                    TokenSel::Valid => {
                        json!({"access_token":format!("AT-saved-{n}"),"expiry":expiry,"token_type":"Bearer"})
                    }
                    TokenSel::Expired => {
                        json!({"access_token":format!("AT-saved-{n}"),"expiry":1,"token_type":"Bearer"})
                    }
                    TokenSel::WithRefresh => {
                        json!({"access_token":format!("AT-saved-{n}"),"expiry":expiry,"token_type":"bearer","refresh_token":format!("SECRET-RT-client-{n}")})
                    }
                    TokenSel::Invalid => json!({"expiry":"soon"}),
                    TokenSel::OddExpiry(i) => {
                        json!({"access_token":format!("AT-saved-{n}"),"expiry":odd_number(i),"token_type":"Bearer"})
                    }
                };
                let mut p = key_payload(k);
                p["token"] = token;
                rq("save_token", p)
            }
            Req::RemoveToken(k) => rq("remove_token", key_payload(k)),
            Req::ListProviders => rq("list_providers", json!({})),
            Req::ListBuckets(k) => rq("list_buckets", key_payload(k)),
            Req::BucketStats(k) => rq("get_bucket_stats", key_payload(k)),
            Req::GetApiKey(n) => rq(
                "get_api_key",
                json!({"name": KEY_NAMES[usize::from(n) % KEY_NAMES.len()]}),
            ),
            Req::ListApiKeys => rq("list_api_keys", json!({})),
            Req::HasApiKey(n) => rq(
                "has_api_key",
                json!({"name": KEY_NAMES[usize::from(n) % KEY_NAMES.len()]}),
            ),
            Req::Cancel(t) => rq("cancel", json!({"targetId": id_value(t)})),
            Req::Initiate(k) => rq("oauth_initiate", key_payload(k)),
            Req::Exchange { session, code } => {
                let (sid, state) = self.session(session);
                let n = self.next();
                let redirect = format!("http://localhost:{CODEX_PORT}/auth/callback");
                let code = match code {
                    Code::HashState => format!("AC-{n}#{state}"),
                    Code::Plain => format!("AC-{n}"),
                    Code::Redirect => format!("{redirect}?code=AC-{n}&state={state}"),
                    Code::Forged => format!("AC-{n}#forged-state"),
                    Code::ErrorUrl => format!("{redirect}?error=access_denied&state={state}"),
                    Code::Empty => String::new(),
                };
                rq("oauth_exchange", json!({"session_id": sid, "code": code}))
            }
            Req::Poll(s) => rq("oauth_poll", json!({"session_id": self.session(s).0})),
            Req::OauthCancel(s) => rq("oauth_cancel", json!({"session_id": self.session(s).0})),
            Req::Refresh(k) => rq("refresh_token", key_payload(k)),
            Req::Unknown => rq("bogus_op", json!({})),
            Req::Handshake => rq("handshake", json!({"minVersion":1,"maxVersion":2})),
            Req::MissingId => json!({"v":2,"op":"get_token","payload":{"provider":"anthropic"}}),
            Req::MissingOp => json!({"v":2,"id":id_value(id),"payload":{}}),
            Req::PayloadNotObject => rq("get_token", json!([1, 2])),
            Req::BadFields => rq(
                "save_token",
                json!({"provider": 7, "bucket": [], "token": "x"}),
            ),
            Req::LongField(n) => rq(
                "get_api_key",
                json!({"name": "K".repeat(16 * usize::from(n))}),
            ),
        }
    }
}

fn key_payload(k: KeySel) -> Value {
    let mut p = json!({"provider": PROVIDERS[usize::from(k.provider) % PROVIDERS.len()]});
    if let Some(b) = BUCKETS[usize::from(k.bucket) % BUCKETS.len()] {
        p["bucket"] = json!(b);
    }
    p
}

fn id_value(id: u8) -> Value {
    let n = id & 7;
    if id & 8 == 0 {
        json!(n.to_string())
    } else {
        json!(n)
    }
}
