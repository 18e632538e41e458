//! The fuzz models' expectation for oversize frames (SPEC §3.1): closed,
//! after one `INVALID_REQUEST` answer when the request id was among the
//! first bytes that came with the length. Its own file because two models
//! check it: the handshake target (`request.rs`) and the engine world's
//! client model (`world/client.rs`).

use serde_json::{Value, json};

use crate::wire::frame_peek::{PEEK_LIMIT, peek_id};

/// The replies a request frame of `bytes`, delivered whole in one chunk to
/// a handshaken connection that then closed, may have got: the oversize
/// answer when the frame is over `limit` and its id is in the first bytes,
/// else none.
pub(super) fn expected_replies(bytes: &[u8], limit: usize) -> Vec<Value> {
    let peeked = (bytes.len() > limit)
        .then(|| peek_id(&bytes[..bytes.len().min(PEEK_LIMIT)]))
        .flatten();
    peeked
        .map(|id| {
            json!({"id": id, "ok": false, "code": "INVALID_REQUEST",
                "error": format!("Frame exceeds maximum size ({limit} bytes)")})
        })
        .into_iter()
        .collect()
}

/// Whether reply `r` (for `id`) is an oversize answer. If it is, it must be
/// for the one id `allowed` (taken, so a second answer fails) and be
/// `INVALID_REQUEST`.
pub(super) fn take_answer(allowed: &mut Option<String>, id: &str, r: &Value) -> bool {
    let oversize = r["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("Frame exceeds maximum size ("));
    if oversize {
        assert_eq!(
            allowed.take().as_deref(),
            Some(id),
            "oversize answer for an id that was not oversize: {r}"
        );
        assert_eq!(r["code"], json!("INVALID_REQUEST"), "{r}");
    }
    oversize
}
