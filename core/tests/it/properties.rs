//! Property tests of the engine's invariants (SPEC §9).

use std::collections::BTreeSet;

use credproxy_core::frame::{self, DecodeError, FrameDecoder};
use credproxy_core::testkit::Harness;
use credproxy_core::{Config, Secret};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const RT_SENTINEL: &str = "RT-SENTINEL-8c1f2e";

/// Arbitrary JSON values of bounded depth.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(".{0,8}", json_value(), 0..6).prop_map(|m| m.into_iter().collect())
}

/// One client action in a generated session.
#[derive(Debug, Clone)]
enum Action {
    Get {
        id: u8,
        provider: u8,
    },
    Save {
        id: u8,
        provider: u8,
    },
    Remove {
        id: u8,
        provider: u8,
    },
    GetKey {
        id: u8,
    },
    List {
        id: u8,
    },
    Cancel {
        id: u8,
        target: u8,
    },
    Bogus {
        id: u8,
    },
    /// Complete the held effect at this index (modulo the queue length).
    Complete(u8),
}

fn action() -> impl Strategy<Value = Action> {
    let id = 0u8..12;
    let provider = 0u8..3;
    prop_oneof![
        (id.clone(), provider.clone()).prop_map(|(id, provider)| Action::Get { id, provider }),
        (id.clone(), provider.clone()).prop_map(|(id, provider)| Action::Save { id, provider }),
        (id.clone(), provider).prop_map(|(id, provider)| Action::Remove { id, provider }),
        id.clone().prop_map(|id| Action::GetKey { id }),
        id.clone().prop_map(|id| Action::List { id }),
        (id.clone(), 0u8..12).prop_map(|(id, target)| Action::Cancel { id, target }),
        id.prop_map(|id| Action::Bogus { id }),
        any::<u8>().prop_map(Action::Complete),
        any::<u8>().prop_map(Action::Complete),
    ]
}

fn provider_name(i: u8) -> &'static str {
    ["anthropic", "codex", "qwen"][usize::from(i)]
}

fn seeded() -> Harness {
    let mut h = Harness::new();
    for p in ["anthropic", "codex"] {
        h.store.put_token(
            p,
            "default",
            json!({"access_token":format!("at-{p}"),"refresh_token":RT_SENTINEL,"expiry":2_000_000_000,"token_type":"Bearer"}),
        );
    }
    h.store
        .keys
        .insert("OPENAI".into(), Secret::new("sk-sentinel"));
    h
}

/// The client-side model of what is in flight, checked against every reply.
#[derive(Default)]
struct Model {
    in_flight: BTreeSet<String>,
    violations: Vec<String>,
}

impl Model {
    fn sent(&mut self, id: &str) -> bool {
        // Returns whether the frame is a duplicate of an in-flight id.
        !self.in_flight.insert(id.to_owned())
    }

    fn received(&mut self, reply: &Value) {
        let id = reply["id"].as_str().unwrap_or("?").to_owned();
        if reply["error"] == json!("Duplicate request id") {
            if !self.in_flight.contains(&id) {
                self.violations
                    .push(format!("duplicate refusal for {id} not in flight"));
            }
            return;
        }
        if !self.in_flight.remove(&id) {
            self.violations
                .push(format!("reply for {id} which is not in flight: {reply}"));
        }
    }
}

/// Runs actions with held effects, checking after every step that each
/// reply answers exactly one request that was in flight.
fn run(h: &mut Harness, actions: &[Action]) -> (Vec<Value>, Model) {
    h.auto_effects = false;
    let conn = h.connect();
    let mut model = Model::default();
    let mut all = Vec::new();
    for a in actions {
        let (id, op, payload) = match a {
            Action::Get { id, provider } => (
                id,
                "get_token",
                json!({"provider": provider_name(*provider)}),
            ),
            Action::Save { id, provider } => (
                id,
                "save_token",
                json!({"provider": provider_name(*provider), "token": {"access_token":"new","expiry":5,"token_type":"bearer","refresh_token":"client-rt"}}),
            ),
            Action::Remove { id, provider } => (
                id,
                "remove_token",
                json!({"provider": provider_name(*provider)}),
            ),
            Action::GetKey { id } => (id, "get_api_key", json!({"name":"OPENAI"})),
            Action::List { id } => (id, "list_providers", json!({})),
            Action::Cancel { id, target } => {
                (id, "cancel", json!({"targetId": format!("q{target}")}))
            }
            Action::Bogus { id } => (id, "bogus", json!({})),
            Action::Complete(i) => {
                if !h.held.is_empty() {
                    let idx = usize::from(*i) % h.held.len();
                    h.complete(idx);
                }
                for r in h.take_replies(conn) {
                    model.received(&r);
                    all.push(r);
                }
                continue;
            }
        };
        let id = format!("q{id}");
        let duplicate = model.sent(&id);
        h.request(conn, &id, op, payload);
        let replies = h.take_replies(conn);
        if duplicate
            && !replies
                .iter()
                .any(|r| r["id"] == json!(id) && r["error"] == json!("Duplicate request id"))
        {
            model
                .violations
                .push(format!("no duplicate refusal for {id}"));
        }
        for r in replies {
            model.received(&r);
            all.push(r);
        }
    }
    h.complete_all();
    for r in h.take_replies(conn) {
        model.received(&r);
        all.push(r);
    }
    (all, model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_encode_is_identity(obj in json_object()) {
        let bytes = frame::encode(&obj);
        let mut dec = FrameDecoder::new(1 << 20);
        let mut input = &bytes[..];
        let got = dec.decode(&mut input).unwrap().unwrap();
        prop_assert_eq!(got, obj);
        prop_assert!(input.is_empty());
    }

    #[test]
    fn oversize_lengths_never_allocate(len in 65_537u32.., chunk in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut dec = FrameDecoder::new(65_536);
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend(chunk);
        let mut input = &bytes[..];
        let err = dec.decode(&mut input).unwrap_err();
        prop_assert_eq!(err, DecodeError::Oversize { len, max: 65_536 });
        prop_assert_eq!(dec.reserved(), 0);
    }

    #[test]
    fn reservation_is_bounded_by_arrivals(len in 2u32..65_536, arrived in 0usize..4096) {
        let mut dec = FrameDecoder::new(65_536);
        let body = arrived.min(len as usize - 1);
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(b' ', body));
        let mut input = &bytes[..];
        prop_assert_eq!(dec.decode(&mut input), Ok(None));
        prop_assert!(dec.reserved() <= 2 * body);
    }

    #[test]
    fn any_chunking_gives_the_same_outputs(
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        n in 1usize..6,
    ) {
        let mut stream = frame::encode(&json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}));
        for i in 0..n {
            let op = ["get_token","list_providers","get_api_key","save_token","bogus"][i % 5];
            stream.extend(frame::encode(&json!({"v":2,"id":format!("{i}"),"op":op,"payload":{
                "provider":"anthropic","name":"OPENAI",
                "token":{"access_token":"x","expiry":1,"token_type":"Bearer"}}})));
        }
        // Effects are held and completed afterwards in the same order, so the
        // comparison isolates chunking from when the host completes effects.
        let mut whole = seeded();
        whole.auto_effects = false;
        let c1 = whole.open();
        whole.send(c1, &stream);
        whole.complete_all();

        let mut split = seeded();
        split.auto_effects = false;
        let c2 = split.open();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut last = 0;
        for p in points.into_iter().chain([stream.len()]) {
            split.send(c2, &stream[last..p]);
            last = p;
        }
        split.complete_all();
        prop_assert_eq!(&whole.sent[&c1], &split.sent[&c2]);
        prop_assert_eq!(whole.audit, split.audit);
        prop_assert_eq!(whole.store.tokens, split.store.tokens);
    }

    #[test]
    fn exactly_one_reply_per_accepted_request(actions in prop::collection::vec(action(), 0..60)) {
        let mut h = seeded();
        let (_, model) = run(&mut h, &actions);
        prop_assert!(model.violations.is_empty(), "{:?}", model.violations);
        prop_assert!(model.in_flight.is_empty(), "unanswered: {:?}", model.in_flight);
        prop_assert!(h.held.is_empty());
        prop_assert_eq!(h.engine.pending_tasks(), 0);
    }

    #[test]
    fn no_refresh_token_ever_leaves_the_host(actions in prop::collection::vec(action(), 0..60)) {
        let mut h = seeded();
        run(&mut h, &actions);
        let text = h.observable_text();
        prop_assert!(!text.contains(RT_SENTINEL));
        prop_assert!(!text.contains("client-rt"));
        for ev in &h.audit {
            let line = serde_json::to_string(ev).unwrap();
            prop_assert!(!line.contains("sk-sentinel"));
            prop_assert!(!line.contains("at-anthropic"));
        }
        // Without a remove, the stored refresh token survives every save.
        let removed = actions.iter().any(|a| matches!(a, Action::Remove { provider: 0, .. }));
        if !removed && let Some(t) = h.store.token("anthropic", "default") {
            prop_assert_eq!(&t["refresh_token"], &json!(RT_SENTINEL));
        }
    }

    #[test]
    fn same_seed_same_inputs_same_outputs(actions in prop::collection::vec(action(), 0..40), seed in any::<u64>()) {
        let mut a = Harness::with_config(Config::default(), seed);
        let mut b = Harness::with_config(Config::default(), seed);
        for h in [&mut a, &mut b] {
            h.store.put_token("anthropic", "default", json!({"access_token":"x","refresh_token":"y","expiry":1,"token_type":"Bearer"}));
        }
        let (ra, _) = run(&mut a, &actions);
        let (rb, _) = run(&mut b, &actions);
        prop_assert_eq!(ra, rb);
        prop_assert_eq!(a.sent, b.sent);
        prop_assert_eq!(a.audit, b.audit);
        prop_assert_eq!(a.effects, b.effects);
    }
}

#[test]
fn the_model_catches_a_double_reply() {
    // Guards the property above against being vacuous.
    let mut m = Model::default();
    m.sent("a");
    m.received(&json!({"id":"a","ok":true,"data":{}}));
    m.received(&json!({"id":"a","ok":false,"code":"CANCELLED","error":"Operation cancelled"}));
    assert_eq!(m.violations.len(), 1);
}
