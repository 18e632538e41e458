use std::borrow::Cow;

use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

#[test]
fn reads_the_envelope_borrowed() {
    let json =
        br#"{"v":2,"id":"a1","op":"get_token","payload":{"provider":"p","bucket":"b","x":[1]}}"#;
    let r = parse(json).unwrap();
    assert!(matches!(r.id, Some(Field::Str(Cow::Borrowed("a1")))));
    assert!(matches!(r.op, Some(Field::Str(Cow::Borrowed("get_token")))));
    let Some(PayloadField::Object(p)) = r.payload else {
        panic!("payload is an object");
    };
    assert!(matches!(
        p.get("provider"),
        Some(Field::Str(Cow::Borrowed("p")))
    ));
    assert!(matches!(
        p.get("bucket"),
        Some(Field::Str(Cow::Borrowed("b")))
    ));
    assert_eq!(p.get("x"), None);
    check_against_value(json);
}

#[test]
fn same_verdicts_as_parsing_into_value() {
    for json in [
        &br#"{}"#[..],
        br#"{"id":"1","id":2,"op":"a","op":"get_token"}"#,
        br#"{"payload":{"provider":"a","provider":5}}"#,
        br#"{"payload":{"provider":"x"},"payload":null}"#,
        br#"{"payload":[1,{"a":2}],"id":7.0,"op":null}"#,
        br#"{"payload":"str","id":-1,"op":true}"#,
        br#"{"payload":{"prov\u0069der":"\u0061\"b","token":{"a":[1,2.5,"c"]}}}"#,
        br#"{"id":"\ud800"}"#,
        br#"{"x":"\ud800"}"#,
        br#"{"payload":{"y":"\udc00"}}"#,
        br#"{"x":"\ud83d\ude00","id":"\ud83d\ude00"}"#,
        br#"{"x":1e400}"#,
        br#"{"x":18446744073709551616,"id":-9223372036854775809}"#,
        b"{\"a\":\"\xff\xfe\"}",
        b"{\"a\xff\":1}",
        br#"{"a":"ctl	"}"#,
        b"{nope",
        b"",
        b"   ",
        b"[1,2]",
        b"[1,2",
        b"[1,2] x",
        b"null",
        b"\"s\"",
        b"\"s",
        b"12",
        b"1 2",
        b"{} {}",
        b"{}   ",
        b" {\"id\" : \"1\" } ",
        br#"{"id":"1",}"#,
        br#"{"id"}"#,
    ] {
        check_against_value(json);
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    check_against_value(deep.as_bytes());
    let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(126), "]".repeat(126));
    check_against_value(deep.as_bytes());
    let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
    check_against_value(deep.as_bytes());
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z\u{e9}\"\\\\]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        let key = prop_oneof![
            Just("id".to_owned()),
            Just("op".to_owned()),
            Just("payload".to_owned()),
            Just("provider".to_owned()),
            Just("targetId".to_owned()),
            "[a-z]{1,3}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn agrees_with_value_on_any_json(v in json_value()) {
        check_against_value(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn agrees_with_value_on_any_bytes(
        bytes in prop::collection::vec(
            prop::sample::select(b"{}[]\":,\\ u0123456789abdfnrtxe.-+\xc3\xa9\xff".to_vec()),
            0..40,
        )
    ) {
        check_against_value(&bytes);
    }

    #[test]
    fn agrees_with_value_on_mutated_requests(cut in 0usize..90, byte in any::<u8>()) {
        let mut json = br#"{"v":2,"id":"6f1c","op":"get_token","payload":{"provider":"anthropic","bucket":"d"}}"#.to_vec();
        let at = cut.min(json.len() - 1);
        json[at] = byte;
        check_against_value(&json);
    }
}

#[test]
fn payload_from_a_value_for_tests_and_tools() {
    let p = Payload::deserialize(json!({"provider":"a","bucket":3,"other":"x"})).unwrap();
    assert_eq!(p.get("provider"), Some(&Field::Str(Cow::Borrowed("a"))));
    assert_eq!(p.get("bucket"), Some(&Field::Other(json!(3))));
    assert_eq!(p.get("other"), None);
    assert!(Payload::deserialize(json!([1])).is_err());
}
