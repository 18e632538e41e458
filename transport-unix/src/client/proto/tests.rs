use proptest::prelude::*;
use serde_json::json;

use super::*;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn bytes_of(frames: &[Value]) -> Vec<u8> {
    frames.iter().flat_map(frame::encode).collect()
}

fn ready() -> ClientProto<u32> {
    let mut p = ClientProto::new(IdGen::new("ab"), 1 << 20);
    p.handle_bytes(&frame::encode(
        &json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}}),
    ));
    assert!(matches!(p.poll_event(), Some(Event::Handshake { .. })));
    p
}

fn drain<T>(p: &mut ClientProto<T>) -> Vec<Event<T>> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn sent(bytes: &[u8]) -> Value {
    serde_json::from_slice(&bytes[4..]).unwrap()
}

#[test]
fn envelope_checks() {
    for bad in [
        json!({"id":"1"}),
        json!({"id":"1","ok":"true"}),
        json!({"id":"1","ok":false,"code":7}),
        json!({"id":"1","ok":false,"error":null}),
        json!({"id":"1","ok":false,"retryAfter":"3"}),
        json!({"id":"1","ok":true,"data":[1]}),
        json!({"id":"1","ok":true,"data":null}),
    ] {
        assert!(Reply::parse(obj(bad.clone())).is_err(), "{bad}");
    }
    let ok = Reply::parse(obj(json!({"id":"1","ok":true}))).unwrap();
    assert!(ok.is_ok());
    assert_eq!(ok.into_result().unwrap(), Map::new());
    let err = Reply::parse(obj(
        json!({"id":"1","ok":false,"code":"RATE_LIMITED","error":"Too many requests","retryAfter":2.2}),
    ))
    .unwrap();
    assert_eq!(
        err.into_result().unwrap_err(),
        ServerError {
            code: Some("RATE_LIMITED".into()),
            message: Some("Too many requests".into()),
            retry_after: serde_json::Number::from_f64(2.2),
        }
    );
    let bare = Reply::parse(obj(json!({"id":"1","ok":false}))).unwrap();
    assert_eq!(
        bare.into_result().unwrap_err(),
        ServerError {
            code: None,
            message: None,
            retry_after: None
        }
    );
}

#[test]
fn handshake_versions() {
    let accept =
        |data: Value| handshake_reply(&obj(json!({"v":2,"op":"handshake","ok":true,"data":data})));
    assert_eq!(
        accept(json!({"version":2})),
        Ok(Handshake::Accepted { version: 2 })
    );
    assert_eq!(
        accept(json!({"version":1})),
        Ok(Handshake::Accepted { version: 1 })
    );
    assert_eq!(accept(json!({})), Ok(Handshake::Accepted { version: 1 }));
    assert_eq!(
        handshake_reply(&obj(json!({"ok":true}))),
        Ok(Handshake::Accepted { version: 1 })
    );
    assert!(accept(json!({"version":3})).is_err());
    assert!(accept(json!({"version":"2"})).is_err());
    assert_eq!(
        handshake_reply(&obj(json!({"ok":false,"code":"UNAUTHORIZED","error":"x"}))),
        Ok(Handshake::Refused {
            code: "UNAUTHORIZED".into(),
            message: "x".into()
        })
    );
    assert_eq!(
        handshake_reply(&obj(json!({"ok":false}))),
        Ok(Handshake::Refused {
            code: UNKNOWN_CODE.into(),
            message: UNKNOWN_MESSAGE.into()
        })
    );
    assert!(handshake_reply(&obj(json!({"ok":1}))).is_err());
}

#[test]
fn the_handshake_is_the_one_the_clients_always_sent() {
    let p: ClientProto = ClientProto::new(IdGen::new(""), 1024);
    assert_eq!(
        sent(&p.handshake(None)),
        json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}})
    );
    assert_eq!(
        sent(&p.handshake(Some(&Secret::new("t0k")))),
        json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2,"capabilityToken":"t0k"}})
    );
}

#[test]
fn requests_wait_for_the_handshake() {
    let mut p: ClientProto = ClientProto::new(IdGen::new(""), 1024);
    assert_eq!(
        p.request("x", &json!({}), ()),
        Err(NotReady(State::Handshaking))
    );
    p.handle_bytes(&frame::encode(&json!({"ok":true,"data":{"version":1}})));
    assert_eq!(p.state(), State::Ready { version: 1 });
    let (id, bytes) = p
        .request("get_token", &json!({"provider":"p"}), ())
        .unwrap();
    assert_eq!(id, "1");
    // Requests carry the negotiated version.
    assert_eq!(
        sent(&bytes),
        json!({"v":1,"id":"1","op":"get_token","payload":{"provider":"p"}})
    );
}

#[test]
fn a_refused_handshake_closes() {
    let mut p: ClientProto = ClientProto::new(IdGen::new(""), 1024);
    let refusal = json!({"v":2,"op":"handshake","ok":false,"code":"UNAUTHORIZED","error":"no"});
    p.handle_bytes(&bytes_of(&[refusal.clone(), json!({"id":"1","ok":true})]));
    assert_eq!(
        drain(&mut p),
        vec![Event::Handshake {
            outcome: Handshake::Refused {
                code: "UNAUTHORIZED".into(),
                message: "no".into()
            },
            frame: obj(refusal)
        }]
    );
    assert_eq!(p.state(), State::Closed);
    assert!(p.request("x", &json!({}), ()).is_err());
}

#[test]
fn replies_are_matched_by_id_in_any_order() {
    let mut p = ready();
    let (a, _) = p.request("a", &json!({}), 1).unwrap();
    let (b, _) = p.request("b", &json!({}), 2).unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("ab-1", "ab-2"));
    assert_eq!(p.pending(), 2);
    p.handle_bytes(&bytes_of(&[
        json!({"id":b,"ok":true,"data":{"x":1}}),
        json!({"ok":true}),
        json!({"id":"other","ok":"not checked"}),
        json!({"id":a,"ok":false,"code":"NOT_FOUND","error":"none"}),
    ]));
    let events = drain(&mut p);
    assert_eq!(events.len(), 4);
    match &events[0] {
        Event::Reply { id, reply, tag } => {
            assert_eq!((id.as_str(), *tag), ("ab-2", 2));
            assert_eq!(reply.clone().into_result().unwrap(), obj(json!({"x":1})));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(events[1], Event::Unsolicited(obj(json!({"ok":true}))));
    assert!(matches!(&events[2], Event::Unsolicited(f) if f["id"] == "other"));
    assert!(matches!(&events[3], Event::Reply { tag: 1, reply, .. } if !reply.is_ok()));
    assert_eq!(p.pending(), 0);
}

#[test]
fn cancel_forgets_and_frames_a_cancel() {
    let mut p = ready();
    let (id, _) = p.request("slow", &json!({}), 7).unwrap();
    let (tag, bytes) = p.cancel(&id).unwrap();
    assert_eq!(tag, 7);
    let cancel = sent(&bytes);
    assert_eq!(cancel["op"], "cancel");
    assert_eq!(cancel["v"], 2);
    assert_eq!(cancel["payload"], json!({"targetId": id}));
    assert_eq!(cancel["id"], "ab-2");
    assert!(p.cancel(&id).is_none());
    p.handle_bytes(&frame::encode(&json!({"id":id,"ok":true})));
    assert!(matches!(drain(&mut p).as_slice(), [Event::Unsolicited(_)]));
}

#[test]
fn caller_chosen_ids_are_matched_too() {
    let mut p = ready();
    let bytes = p.request_with_id("r1", "x", &json!({}), 3).unwrap();
    assert_eq!(sent(&bytes)["id"], "r1");
    p.handle_bytes(&frame::encode(&json!({"id":"r1","ok":true})));
    assert!(matches!(
        drain(&mut p).as_slice(),
        [Event::Reply { tag: 3, .. }]
    ));
}

#[test]
fn broken_streams_close_and_drop_what_is_pending() {
    // A malformed reply to a pending request.
    let mut p = ready();
    let (id, _) = p.request("a", &json!({}), 1).unwrap();
    p.handle_bytes(&bytes_of(&[
        json!({"id":id,"ok":true,"data":[1]}),
        json!({"ok":true}),
    ]));
    assert_eq!(
        drain(&mut p),
        vec![Event::Error(ProtocolError::Reply(
            "a reply's `data` is not an object"
        ))]
    );
    assert_eq!((p.state(), p.pending()), (State::Closed, 0));
    // Bytes that are not frames.
    let mut p = ready();
    p.handle_bytes(&frame::encode_payload(b"[1]"));
    assert_eq!(
        drain(&mut p),
        vec![Event::Error(ProtocolError::Framing(DecodeError::NotObject))]
    );
    // A frame over the limit, refused from its header.
    let mut p: ClientProto = ClientProto::new(IdGen::new(""), 8);
    p.handle_bytes(&[0, 0, 0, 9]);
    assert!(matches!(
        drain(&mut p).as_slice(),
        [Event::Error(ProtocolError::Framing(
            DecodeError::Oversize { len: 9, .. }
        ))]
    ));
    // A malformed handshake reply.
    let mut p: ClientProto = ClientProto::new(IdGen::new(""), 1024);
    p.handle_bytes(&frame::encode(&json!({"ok":true,"data":{"version":3}})));
    assert!(matches!(
        drain(&mut p).as_slice(),
        [Event::Error(ProtocolError::Handshake(_))]
    ));
}

#[test]
fn clones_of_an_id_generator_share_the_counter() {
    let ids = IdGen::new("p");
    let other = ids.clone();
    assert_eq!(ids.next_id(), "p-1");
    assert_eq!(other.next_id(), "p-2");
}

/// A session: the handshake reply, then (once requests `ab-1..=ab-4` are
/// pending) their replies, a frame for no request, and a broken tail.
fn session() -> (usize, Vec<u8>) {
    let mut bytes = frame::encode(&json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}}));
    let handshake_len = bytes.len();
    bytes.extend(bytes_of(&[
        json!({"id":"ab-3","ok":true,"data":{"k":"v".repeat(300)}}),
        json!({"id":"zz","ok":true}),
        json!({"id":"ab-1","ok":false,"code":"RATE_LIMITED","error":"slow","retryAfter":2}),
        json!({"id":"ab-4","ok":true}),
        json!({"id":"ab-2","ok":true,"data":{}}),
    ]));
    bytes.extend_from_slice(&frame::encode_payload(b"{not json"));
    bytes.extend_from_slice(&frame::encode(&json!({"id":"ab-1","ok":true})));
    (handshake_len, bytes)
}

/// Feeds `bytes` cut at `cuts` (and where the handshake reply ends: a
/// server answers requests only once they were sent) and sends the four
/// requests as soon as the handshake completes.
fn events_for(cuts: &[usize]) -> Vec<Event<u32>> {
    let (handshake_len, bytes) = session();
    let mut cuts = cuts.to_vec();
    cuts.push(handshake_len);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut p = ClientProto::new(IdGen::new("ab"), 1 << 20);
    let mut events = Vec::new();
    let mut at = 0;
    for cut in cuts {
        let cut = cut.clamp(at, bytes.len());
        p.handle_bytes(&bytes[at..cut]);
        at = cut;
        while let Some(e) = p.poll_event() {
            if matches!(e, Event::Handshake { .. }) {
                for tag in 1..=4 {
                    p.request("op", &json!({}), tag).unwrap();
                }
            }
            events.push(e);
        }
    }
    events
}

#[test]
fn a_session_decoded_whole_or_byte_by_byte() {
    let whole = events_for(&[]);
    assert_eq!(whole.len(), 7);
    assert!(matches!(&whole[1], Event::Reply { tag: 3, .. }));
    assert!(matches!(&whole[2], Event::Unsolicited(_)));
    assert_eq!(
        whole[6],
        Event::Error(ProtocolError::Framing(DecodeError::InvalidJson))
    );
    let each: Vec<usize> = (1..session().1.len()).collect();
    assert_eq!(events_for(&each), whole);
}

proptest! {
    /// However the stream is cut into reads, the events are the same.
    #[test]
    fn any_chunking_gives_the_same_events(cuts in prop::collection::vec(0usize..1600, 0..40)) {
        prop_assert_eq!(events_for(&cuts), events_for(&[]));
    }
}
