//! The frame decoder target: arbitrary bytes in arbitrary chunkings
//! through [`FrameDecoder`], checked against a whole-stream reference
//! decoder written from the SPEC's framing rules.

use serde_json::{Map, Value};

use crate::engine::config::MAX_FRAME_CEILING;
use crate::wire::frame::{self, DecodeError, FrameDecoder, HEADER_LEN};

/// Frame limits the decoder target picks from (low 3 bits of the first byte).
const DECODER_LIMITS: [usize; 8] = [1, 2, 16, 64, 300, 4096, 65_536, MAX_FRAME_CEILING];

/// One decoder result.
#[derive(Debug, PartialEq)]
enum Item {
    Frame(Map<String, Value>),
    Error(DecodeError),
}

/// Decodes arbitrary bytes in arbitrary chunkings.
///
/// Layout of `data`: the first byte picks the frame limit (low 3 bits) and
/// the number `n` of chunk-plan bytes (high 5 bits); the next `n` bytes are
/// the chunk plan (cycled: `0` delivers an empty chunk, `>= 0xF0` the whole
/// rest, anything else that many bytes); the rest is the byte stream.
///
/// Invariants: no panic; the chunked decoder yields exactly what a
/// whole-stream reference decoder yields; after every call the reserved body
/// memory is at most twice the body bytes received and at most the limit;
/// an oversize length errors as soon as the header is complete, with nothing
/// reserved; `is_partial` tracks the bytes of the current frame; every
/// decoded frame round-trips through `encode`.
pub fn fuzz_frame_decoder(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let limit = DECODER_LIMITS[usize::from(head & 7)];
    let plan_len = usize::from(head >> 3).min(rest.len());
    let (plan, stream) = rest.split_at(plan_len);
    let (expected, expected_partial) = reference_decode(stream, limit);
    let (got, got_partial) = chunked_decode(stream, limit, plan);
    assert_eq!(got, expected, "chunked decoding differs from the reference");
    if !matches!(got.last(), Some(Item::Error(_))) {
        assert_eq!(got_partial, expected_partial, "partial state differs");
    }
    for item in &got {
        if let Item::Frame(f) = item {
            round_trip(f);
        }
    }
}

/// The whole stream decoded by the SPEC's rules, without the decoder.
fn reference_decode(stream: &[u8], limit: usize) -> (Vec<Item>, bool) {
    let mut items = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < HEADER_LEN {
            return (items, !rest.is_empty());
        }
        let announced = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let len = announced as usize;
        if len > limit {
            items.push(Item::Error(DecodeError::Oversize {
                len: announced,
                max: limit,
            }));
            return (items, false);
        }
        if rest.len() - HEADER_LEN < len {
            return (items, true);
        }
        let payload = &rest[HEADER_LEN..HEADER_LEN + len];
        let item = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(m)) => Item::Frame(m),
            Ok(_) => Item::Error(DecodeError::NotObject),
            Err(_) => Item::Error(DecodeError::InvalidJson),
        };
        let stop = matches!(item, Item::Error(_));
        items.push(item);
        if stop {
            return (items, false);
        }
        rest = &rest[HEADER_LEN + len..];
    }
}

fn chunk_size(plan: &[u8], turn: usize, remaining: usize) -> usize {
    if plan.is_empty() {
        return remaining;
    }
    match plan[turn % plan.len()] {
        b if b >= 0xF0 => remaining,
        b => usize::from(b).min(remaining),
    }
}

/// Checks the decoder's bookkeeping after a call that returned `Ok(None)`.
fn check_waiting(dec: &FrameDecoder, frame_bytes: usize, limit: usize) {
    let body = frame_bytes.saturating_sub(HEADER_LEN);
    assert!(
        dec.reserved() <= 2 * body,
        "reserved {} bytes for {body} body bytes received",
        dec.reserved()
    );
    assert!(dec.reserved() <= limit, "reserved beyond the limit");
    assert_eq!(
        dec.is_partial(),
        frame_bytes > 0,
        "is_partial after {frame_bytes} bytes of a frame"
    );
}

fn chunked_decode(stream: &[u8], limit: usize, plan: &[u8]) -> (Vec<Item>, bool) {
    let mut dec = FrameDecoder::new(limit);
    let mut items = Vec::new();
    let mut pos = 0;
    let mut frame_start = 0;
    let mut turn = 0;
    while pos < stream.len() {
        let mut size = chunk_size(plan, turn, stream.len() - pos);
        turn += 1;
        if size == 0 {
            // An empty read must change nothing.
            let mut empty: &[u8] = &[];
            assert_eq!(dec.decode(&mut empty), Ok(None), "empty input");
            check_waiting(&dec, pos - frame_start, limit);
            size = 1;
        }
        let chunk = &stream[pos..pos + size];
        let mut input = chunk;
        loop {
            let result = dec.decode(&mut input);
            let consumed = pos + (chunk.len() - input.len());
            match result {
                Ok(Some(f)) => {
                    assert!(consumed - frame_start >= HEADER_LEN);
                    frame_start = consumed;
                    assert!(!dec.is_partial(), "partial right after a frame");
                    assert_eq!(dec.reserved(), 0, "memory kept after a frame");
                    items.push(Item::Frame(f));
                }
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) with input left");
                    check_waiting(&dec, consumed - frame_start, limit);
                    break;
                }
                Err(e) => {
                    if let DecodeError::Oversize { len, max } = e {
                        assert_eq!(dec.reserved(), 0, "reserved for an oversize frame");
                        assert_eq!(max, limit);
                        assert!(len as usize > limit);
                        assert_eq!(
                            consumed - frame_start,
                            HEADER_LEN,
                            "oversize not refused from the header alone"
                        );
                    }
                    items.push(Item::Error(e));
                    return (items, false);
                }
            }
        }
        pos += size;
    }
    (items, dec.is_partial())
}

fn round_trip(f: &Map<String, Value>) {
    let bytes = frame::encode(f);
    let mut dec = FrameDecoder::new(bytes.len());
    let mut input = &bytes[..];
    let back = dec
        .decode(&mut input)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is complete");
    assert!(input.is_empty(), "encode produced trailing bytes");
    assert_eq!(&back, f, "decode(encode(x)) != x");
    assert_eq!(frame::encode(&back), bytes, "encoding is not stable");
}
