//! Length-prefixed JSON framing (SPEC §3.1).
//!
//! A frame is a 4-byte unsigned big-endian length `N` followed by `N` bytes of
//! UTF-8 JSON whose top level is an object.
//!
//! The decoder is incremental and defensive:
//! - an announced length above the limit is refused as soon as the header is
//!   complete, before any memory is reserved for the body;
//! - the body buffer grows with the bytes that actually arrived (at most twice
//!   what arrived, never beyond the announced length), so a peer that
//!   announces 64 KiB and sends one byte costs one byte, and growth is
//!   geometric, so a frame trickled in byte by byte is copied O(N) times in
//!   total, not O(N²);
//! - a frame that is wholly contained in one input chunk is parsed straight
//!   from that chunk without copying.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a byte stream cannot be decoded. Every variant closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The announced payload length exceeds the configured maximum.
    Oversize {
        /// Announced length.
        len: u32,
        /// Configured maximum.
        max: usize,
    },
    /// The payload is not valid UTF-8 JSON (including an empty payload).
    InvalidJson,
    /// The payload is JSON but its top level is not an object.
    NotObject,
}

impl DecodeError {
    /// Short stable name used in audit events.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::InvalidJson => "invalid_json",
            DecodeError::NotObject => "not_object",
        }
    }
}

/// Incremental frame decoder for one connection.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Announced body length once the header is complete.
    body_len: Option<usize>,
    body: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `max_len` bytes.
    #[must_use]
    pub fn new(max_len: usize) -> FrameDecoder {
        FrameDecoder {
            max_len,
            header: [0; HEADER_LEN],
            header_len: 0,
            body_len: None,
            body: Vec::new(),
        }
    }

    /// True while a frame has started (even one header byte) but not completed.
    #[must_use]
    pub fn is_partial(&self) -> bool {
        self.header_len > 0
    }

    /// Bytes of memory currently reserved for a partial body.
    #[must_use]
    pub fn reserved(&self) -> usize {
        self.body.capacity()
    }

    /// Consumes bytes from the front of `input` until one frame completes.
    ///
    /// Returns `Ok(Some(frame))` with `input` advanced past it, or `Ok(None)`
    /// once `input` is exhausted without completing a frame. Call it again
    /// with the remaining input to get further frames.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Map<String, Value>>, DecodeError> {
        match self.decode_payload(input)? {
            Some(payload) => parse_object(&payload).map(Some),
            None => Ok(None),
        }
    }

    /// [`FrameDecoder::decode`] without the parse: the payload bytes of the
    /// next complete frame, borrowed from `input` when the frame is wholly
    /// in it. For callers that parse frames into their own types (the
    /// engine decodes requests borrowed, see `request`).
    pub fn decode_payload<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<Cow<'a, [u8]>>, DecodeError> {
        let Some(len) = self.read_header(input)? else {
            return Ok(None);
        };
        if self.body.is_empty() && input.len() >= len {
            let (payload, rest) = input.split_at(len);
            *input = rest;
            self.reset();
            return Ok(Some(Cow::Borrowed(payload)));
        }
        let take = (len - self.body.len()).min(input.len());
        self.grow_body(len, take);
        self.body.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.body.len() < len {
            return Ok(None);
        }
        let body = std::mem::take(&mut self.body);
        self.reset();
        Ok(Some(Cow::Owned(body)))
    }

    /// Completes the header from `input`; returns the body length once known.
    fn read_header(&mut self, input: &mut &[u8]) -> Result<Option<usize>, DecodeError> {
        if let Some(len) = self.body_len {
            return Ok(Some(len));
        }
        let take = (HEADER_LEN - self.header_len).min(input.len());
        self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
        self.header_len += take;
        *input = &input[take..];
        if self.header_len < HEADER_LEN {
            return Ok(None);
        }
        let announced = u32::from_be_bytes(self.header);
        let len = announced as usize;
        if len > self.max_len {
            return Err(DecodeError::Oversize {
                len: announced,
                max: self.max_len,
            });
        }
        self.body_len = Some(len);
        Ok(Some(len))
    }

    /// Reserves room for `incoming` more bytes: geometric growth, capped by
    /// the announced length, never more than twice the bytes received.
    fn grow_body(&mut self, len: usize, incoming: usize) {
        let needed = self.body.len() + incoming;
        if needed <= self.body.capacity() {
            return;
        }
        let target = needed.max(self.body.capacity() * 2).min(len);
        self.body.reserve_exact(target - self.body.len());
    }

    fn reset(&mut self) {
        self.header_len = 0;
        self.body_len = None;
        self.body = Vec::new();
    }
}

/// Parses a frame's payload as a JSON object.
pub fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DecodeError::NotObject),
        Err(_) => Err(DecodeError::InvalidJson),
    }
}

/// Encodes an already-serialized JSON payload as a frame.
#[must_use]
pub fn encode_payload(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + json.len());
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(json);
    out
}

/// Serializes a value and frames it.
#[must_use]
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing our own reply types and JSON values cannot fail: every map
    // key is a string and there are no non-finite floats in a `Value`.
    let json = serde_json::to_vec(value).unwrap_or_default();
    encode_payload(&json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A large frame arriving in small reads is buffered with geometric
    /// growth: a handful of reallocations, each at least doubling, never
    /// past the announced length.
    #[test]
    fn body_grows_geometrically_up_to_the_announced_length() {
        let body = vec![b' '; 64 * 1024];
        let mut wire = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        wire.extend_from_slice(&body);
        let mut dec = FrameDecoder::new(1 << 20);
        let mut input = &wire[..4];
        assert!(dec.decode(&mut input).unwrap().is_none());
        let mut capacities = vec![dec.body.capacity()];
        for chunk in wire[4..wire.len() - 1].chunks(1024) {
            let mut input = chunk;
            assert!(dec.decode(&mut input).unwrap().is_none());
            let now = dec.body.capacity();
            if now != *capacities.last().unwrap() {
                capacities.push(now);
            }
        }
        assert!(
            capacities.len() <= 9,
            "too many reallocations: {capacities:?}"
        );
        for pair in capacities.windows(2).skip(1) {
            assert!(
                pair[1] >= 2 * pair[0] || pair[1] == body.len(),
                "growth below doubling: {capacities:?}"
            );
        }
        assert_eq!(*capacities.last().unwrap(), body.len());
    }

    fn decode_all(
        dec: &mut FrameDecoder,
        mut input: &[u8],
    ) -> Result<Vec<Map<String, Value>>, DecodeError> {
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut input)? {
            out.push(f);
        }
        assert!(input.is_empty());
        Ok(out)
    }

    #[test]
    fn round_trip_single_and_back_to_back() {
        let a = json!({"v":2,"op":"handshake"});
        let b = json!({"id":"1","op":"get_token","payload":{"provider":"日本語テスト"}});
        let mut bytes = encode(&a);
        bytes.extend(encode(&b));
        let mut dec = FrameDecoder::new(65_536);
        let frames = decode_all(&mut dec, &bytes).unwrap();
        assert_eq!(
            frames,
            vec![
                a.as_object().unwrap().clone(),
                b.as_object().unwrap().clone()
            ]
        );
        assert!(!dec.is_partial());
    }

    #[test]
    fn header_counts_payload_bytes_only() {
        let bytes = encode(&json!({"k":"é"}));
        assert_eq!(&bytes[..4], &(bytes.len() as u32 - 4).to_be_bytes());
    }

    #[test]
    fn byte_by_byte_is_partial_until_complete() {
        let bytes = encode(&json!({"a":1}));
        let mut dec = FrameDecoder::new(1024);
        for (i, b) in bytes.iter().enumerate() {
            let mut one: &[u8] = std::slice::from_ref(b);
            let got = dec.decode(&mut one).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none());
                assert!(dec.is_partial());
            } else {
                assert_eq!(got.unwrap().get("a"), Some(&json!(1)));
                assert!(!dec.is_partial());
            }
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut dec = FrameDecoder::new(65_536);
        let mut input: &[u8] = &65_537u32.to_be_bytes();
        assert_eq!(
            dec.decode(&mut input),
            Err(DecodeError::Oversize {
                len: 65_537,
                max: 65_536
            })
        );
        assert_eq!(dec.reserved(), 0);
    }

    #[test]
    fn exact_limit_is_accepted() {
        let pad = "x".repeat(100 - 10);
        let v = json!({ "p": pad });
        let bytes = encode(&v);
        let limit = bytes.len() - 4;
        let mut dec = FrameDecoder::new(limit);
        assert_eq!(decode_all(&mut dec, &bytes).unwrap().len(), 1);
        let mut dec = FrameDecoder::new(limit - 1);
        assert!(matches!(
            decode_all(&mut dec, &bytes),
            Err(DecodeError::Oversize { .. })
        ));
    }

    #[test]
    fn reserves_only_what_arrived() {
        let mut dec = FrameDecoder::new(65_536);
        let mut header = 60_000u32.to_be_bytes().to_vec();
        header.push(b'{');
        let mut input: &[u8] = &header;
        assert_eq!(dec.decode(&mut input), Ok(None));
        assert!(dec.reserved() <= 2, "reserved {}", dec.reserved());
        let chunk = vec![b' '; 1000];
        let mut input: &[u8] = &chunk;
        assert_eq!(dec.decode(&mut input), Ok(None));
        assert!(dec.reserved() <= 2 * 1001, "reserved {}", dec.reserved());
    }

    #[test]
    fn invalid_json_non_object_and_bad_utf8() {
        for (payload, want) in [
            (&b"{nope"[..], DecodeError::InvalidJson),
            (b"", DecodeError::InvalidJson),
            (b"[1,2]", DecodeError::NotObject),
            (b"null", DecodeError::NotObject),
            (b"\"s\"", DecodeError::NotObject),
            (b"{\"a\":\"\xff\xfe\"}", DecodeError::InvalidJson),
            (b"{} {}", DecodeError::InvalidJson),
        ] {
            let bytes = encode_payload(payload);
            let mut dec = FrameDecoder::new(1024);
            let mut input: &[u8] = &bytes;
            assert_eq!(dec.decode(&mut input), Err(want), "{payload:?}");
        }
    }
}
