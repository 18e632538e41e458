//! Frames on the wire for the load generator and the echo baseline: a
//! blocking reader over core's frame decoder, pre-encoded requests whose id
//! is written in place, and a cheap look at a reply's `id` and `ok`.
//!
//! The codec is core's ([`credproxy_core::frame`], what `PROTOCOL.md`
//! specifies: a 4-byte big-endian length, then a JSON object), and the
//! handshake and single calls go through the client protocol
//! ([`credproxy_unix::client::proto`]); what stays here is what a load
//! generator needs on its hot path: no JSON encoding per request and no
//! parse per reply. The reply look falls back to a full parse for another
//! field order, so any implementation of the protocol can be measured.

use std::borrow::Cow;
use std::io::{self, Read};

use credproxy_core::frame::{DecodeError, FrameDecoder, encode_payload};
use serde_json::Value;

/// Width of the request ids the generator sends: fixed-width decimal, so a
/// pre-encoded frame gets its id by overwriting these bytes in place.
pub const ID_WIDTH: usize = 12;

/// Largest id that fits [`ID_WIDTH`] digits.
pub const MAX_ID: u64 = 999_999_999_999;

/// The bytes of a request frame before the id digits.
const REQUEST_HEAD: &[u8] = br#"{"v":2,"id":""#;

/// Offset of the id digits in an encoded request frame (prefix included).
pub const ID_OFFSET: usize = 4 + REQUEST_HEAD.len();

/// Writes `id` as [`ID_WIDTH`] decimal digits (zero-padded) into `dst`.
///
/// # Panics
///
/// When `dst` is not [`ID_WIDTH`] bytes long.
pub fn put_id(dst: &mut [u8], mut id: u64) {
    assert_eq!(dst.len(), ID_WIDTH, "id slot width");
    for b in dst.iter_mut().rev() {
        *b = b'0' + u8::try_from(id % 10).expect("a digit");
        id /= 10;
    }
}

/// Parses an id the generator sent (ASCII decimal digits only).
#[must_use]
pub fn parse_id(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// A request frame, length prefix included, with a placeholder id at
/// [`ID_OFFSET`]: `{"v":2,"id":"000000000000","op":OP,"payload":PAYLOAD}`.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    /// The operation name.
    pub op: String,
    /// The whole frame.
    pub bytes: Vec<u8>,
}

impl RequestTemplate {
    /// Encodes `op` with `payload` (a JSON object).
    ///
    /// # Errors
    ///
    /// When `payload` is not an object.
    pub fn new(op: &str, payload: &Value) -> Result<RequestTemplate, String> {
        if !payload.is_object() {
            return Err(format!("the payload of {op} must be a JSON object"));
        }
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(REQUEST_HEAD);
        body.extend_from_slice(&[b'0'; ID_WIDTH]);
        body.extend_from_slice(b"\",\"op\":");
        serde_json::to_writer(&mut body, op).map_err(|e| e.to_string())?;
        body.extend_from_slice(b",\"payload\":");
        serde_json::to_writer(&mut body, payload).map_err(|e| e.to_string())?;
        body.push(b'}');
        Ok(RequestTemplate {
            op: op.to_owned(),
            bytes: encode_payload(&body),
        })
    }

    /// Appends this frame with `id` to `out`.
    pub fn append(&self, out: &mut Vec<u8>, id: u64) {
        let at = out.len() + ID_OFFSET;
        out.extend_from_slice(&self.bytes);
        put_id(&mut out[at..at + ID_WIDTH], id);
    }
}

/// What went wrong while reading frames.
#[derive(Debug)]
pub enum FrameError {
    /// A length prefix above the reader's limit.
    TooLarge(usize),
    /// The peer closed the connection in the middle of a frame.
    Truncated,
    /// The peer closed the connection between frames.
    Closed,
    /// A read failed (a timeout included).
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes is over the limit"),
            FrameError::Truncated => f.write_str("connection closed in the middle of a frame"),
            FrameError::Closed => f.write_str("connection closed by the server"),
            FrameError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => {
                f.write_str("no reply within the read timeout")
            }
            FrameError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// A blocking frame reader: [`FrameReader::fill`] reads whatever the
/// socket has into one buffer, [`FrameReader::next_frame`] hands out the
/// frames it completes — borrowed from the buffer when a frame arrived in
/// one read, else assembled by core's [`FrameDecoder`].
#[derive(Debug)]
pub struct FrameReader {
    decoder: FrameDecoder,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// A reader with a `capacity`-byte read buffer that refuses frames
    /// longer than `max_frame`.
    #[must_use]
    pub fn new(capacity: usize, max_frame: usize) -> FrameReader {
        FrameReader {
            decoder: FrameDecoder::new(max_frame),
            buf: vec![0; capacity.max(16)],
            start: 0,
            end: 0,
        }
    }

    /// Whether part of a frame is buffered.
    #[must_use]
    pub fn has_partial(&self) -> bool {
        self.end > self.start || self.decoder.is_partial()
    }

    /// One `read` into the buffer; returns what `read` returned (0 at
    /// EOF). Frames handed out before must be dropped first.
    ///
    /// # Errors
    ///
    /// The read's error.
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        // Bytes not yet taken by `next_frame` move to the front.
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The body of the next complete frame, or `None` when more bytes are
    /// needed.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] for a length prefix above the limit.
    pub fn next_frame(&mut self) -> Result<Option<Cow<'_, [u8]>>, FrameError> {
        let mut input = &self.buf[self.start..self.end];
        let frame = self.decoder.decode_payload(&mut input);
        self.start = self.end - input.len();
        match frame {
            Ok(frame) => Ok(frame),
            Err(DecodeError::Oversize { len, .. }) => Err(FrameError::TooLarge(len as usize)),
            // Not reported by `decode_payload`, which does not parse.
            Err(DecodeError::InvalidJson | DecodeError::NotObject) => Ok(None),
        }
    }

    /// Reads until one frame is complete and returns its body (blocking
    /// helper for handshakes and single calls).
    ///
    /// # Errors
    ///
    /// Any [`FrameError`].
    pub fn read_one(&mut self, r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
        loop {
            if let Some(body) = self.next_frame()? {
                return Ok(body.into_owned());
            }
            match self.fill(r) {
                Ok(0) if self.has_partial() => return Err(FrameError::Truncated),
                Ok(0) => return Err(FrameError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }
}

/// A reply's id (when it is one of ours: decimal digits) and whether it
/// says `"ok":true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHead {
    /// The id as a number, `None` when absent or not ours.
    pub id: Option<u64>,
    /// `ok` is `true`.
    pub ok: bool,
}

/// Looks at a reply body: a fast path for the usual layout
/// (`{"id":"…","ok":…` first, as credproxy writes it), and a full JSON
/// parse for anything else (another implementation may order fields
/// differently). `None` when the body is not a JSON object.
#[must_use]
pub fn reply_head(body: &[u8]) -> Option<ReplyHead> {
    const HEAD: &[u8] = br#"{"id":""#;
    if let Some(rest) = body.strip_prefix(HEAD)
        && let Some(q) = rest.iter().position(|&b| b == b'"')
    {
        let after = &rest[q + 1..];
        let ok = if after.starts_with(br#","ok":true"#) {
            Some(true)
        } else if after.starts_with(br#","ok":false"#) {
            Some(false)
        } else {
            None
        };
        if let Some(ok) = ok {
            return Some(ReplyHead {
                id: parse_id(&rest[..q]),
                ok,
            });
        }
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let id = match obj.get("id") {
        Some(Value::String(s)) => parse_id(s.as_bytes()),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    Some(ReplyHead {
        id,
        ok: obj.get("ok") == Some(&Value::Bool(true)),
    })
}

/// `CODE: message` of an error reply, for reports (never the data).
#[must_use]
pub fn error_summary(body: &[u8]) -> String {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return "a reply that is not a JSON object".to_owned();
    };
    let field = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    format!("{}: {}", field("code"), field("error"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A reader that hands out its bytes in chunks of the given sizes.
    struct Chunks {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        next: usize,
    }

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.data.len() {
                return Ok(0);
            }
            let want = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let n = want.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn frames_of(bodies: &[Vec<u8>]) -> Vec<u8> {
        bodies.iter().flat_map(|b| encode_payload(b)).collect()
    }

    fn read_all(data: Vec<u8>, sizes: Vec<usize>, capacity: usize) -> Vec<Vec<u8>> {
        let mut src = Chunks {
            data,
            pos: 0,
            sizes,
            next: 0,
        };
        let mut r = FrameReader::new(capacity, 1 << 20);
        let mut got = Vec::new();
        loop {
            while let Some(body) = r.next_frame().expect("within limit") {
                got.push(body.into_owned());
            }
            if r.fill(&mut src).expect("read") == 0 {
                assert!(!r.has_partial(), "left a partial frame");
                return got;
            }
        }
    }

    #[test]
    fn reads_frames_split_at_every_byte() {
        let bodies: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("{{\"id\":\"{i}\",\"x\":\"{}\"}}", "y".repeat(i * 7)).into_bytes())
            .collect();
        let data = frames_of(&bodies);
        for sizes in [vec![1], vec![3], vec![2, 5, 1], vec![4096]] {
            // A small buffer forces frames across reads as well.
            for capacity in [16, 64, 4096] {
                assert_eq!(read_all(data.clone(), sizes.clone(), capacity), bodies);
            }
        }
    }

    #[test]
    fn grows_for_a_frame_larger_than_the_buffer() {
        let big = vec![b'a'; 10_000];
        let bodies = vec![b"{}".to_vec(), big.clone(), b"{}".to_vec()];
        assert_eq!(read_all(frames_of(&bodies), vec![777], 16), bodies);
    }

    #[test]
    fn refuses_a_length_over_the_limit() {
        let mut r = FrameReader::new(64, 100);
        let mut src = io::Cursor::new(encode_payload(&[b'x'; 101]));
        r.fill(&mut src).unwrap();
        assert!(matches!(r.next_frame(), Err(FrameError::TooLarge(101))));
    }

    #[test]
    fn read_one_reports_eof_inside_and_between_frames() {
        let mut data = encode_payload(b"{\"a\":1}");
        data.extend_from_slice(&[0, 0, 0, 9, b'{']);
        let mut src = io::Cursor::new(data);
        let mut r = FrameReader::new(64, 1024);
        assert_eq!(r.read_one(&mut src).unwrap(), b"{\"a\":1}");
        assert!(matches!(r.read_one(&mut src), Err(FrameError::Truncated)));
        let mut r = FrameReader::new(64, 1024);
        let mut empty = io::Cursor::new(Vec::new());
        assert!(matches!(r.read_one(&mut empty), Err(FrameError::Closed)));
    }

    #[test]
    fn template_writes_ids_in_place() {
        let t = RequestTemplate::new("get_token", &json!({"provider":"anthropic"})).unwrap();
        let mut out = Vec::new();
        t.append(&mut out, 42);
        t.append(&mut out, MAX_ID);
        let mut r = FrameReader::new(16, 1024);
        let mut src = io::Cursor::new(out);
        let first: Value = serde_json::from_slice(&r.read_one(&mut src).unwrap()).unwrap();
        let second: Value = serde_json::from_slice(&r.read_one(&mut src).unwrap()).unwrap();
        assert_eq!(
            first,
            json!({"v":2,"id":"000000000042","op":"get_token","payload":{"provider":"anthropic"}})
        );
        assert_eq!(second["id"], "999999999999");
        assert!(RequestTemplate::new("get_token", &json!([1])).is_err());
    }

    #[test]
    fn reply_head_fast_and_slow_paths_agree() {
        let cases: [(&[u8], Option<ReplyHead>); 7] = [
            (
                br#"{"id":"000000000007","ok":true,"data":{}}"#,
                Some(ReplyHead {
                    id: Some(7),
                    ok: true,
                }),
            ),
            (
                br#"{"id":"12","ok":false,"code":"NOT_FOUND","error":"x"}"#,
                Some(ReplyHead {
                    id: Some(12),
                    ok: false,
                }),
            ),
            // Another field order: the slow path.
            (
                br#"{"ok":true,"data":{"id":"5"},"id":"9"}"#,
                Some(ReplyHead {
                    id: Some(9),
                    ok: true,
                }),
            ),
            (
                br#"{"id":9,"ok":true}"#,
                Some(ReplyHead {
                    id: Some(9),
                    ok: true,
                }),
            ),
            (
                br#"{"id":"abc","ok":true}"#,
                Some(ReplyHead { id: None, ok: true }),
            ),
            (
                br#"{"v":2,"op":"handshake"}"#,
                Some(ReplyHead {
                    id: None,
                    ok: false,
                }),
            ),
            (b"[1,2]", None),
        ];
        for (body, want) in cases {
            assert_eq!(reply_head(body), want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn ids_round_trip() {
        let mut slot = [0u8; ID_WIDTH];
        for id in [0, 1, 9, 10, 123_456_789, MAX_ID] {
            put_id(&mut slot, id);
            assert_eq!(parse_id(&slot), Some(id));
        }
        assert_eq!(parse_id(b""), None);
        assert_eq!(parse_id(b"1a"), None);
    }

    #[test]
    fn error_summary_names_code_and_message() {
        assert_eq!(
            error_summary(br#"{"id":"1","ok":false,"code":"NOT_FOUND","error":"No token"}"#),
            "NOT_FOUND: No token"
        );
    }
}
