//! Every value type crosses to Python and back with its exact Python type.

use std::collections::BTreeMap;

use execnet::{BigInt, Value};
use execnet_tests::{bounded, gw, LIMIT};

/// The remote side: answers each item with `(type name, repr, item)`.
const ECHO_TYPES: &str = r#"
for item in channel:
    def tname(v):
        t = type(v).__name__
        if isinstance(v, (list, tuple, set, frozenset)):
            return t + "[" + ",".join(sorted(tname(x) for x in v)) + "]"
        if isinstance(v, dict):
            return t + "{" + ",".join(sorted(tname(k) + ":" + tname(x) for k, x in v.items())) + "}"
        return t
    channel.send((tname(item), repr(item), item))
"#;

fn check(ch: &execnet::blocking::Channel, v: Value, pytype: &str, pyrepr: Option<&str>) {
    ch.send_value(&v).unwrap();
    let (t, r, back): (String, String, Value) = ch.receive().unwrap();
    assert_eq!(t, pytype, "type of {v:?} (repr {r})");
    if let Some(pr) = pyrepr {
        assert_eq!(r, pr, "repr of {v:?}");
    }
    match (&v, &back) {
        (Value::Float(a), Value::Float(b)) if a.is_nan() => assert!(b.is_nan()),
        _ => assert_eq!(back, v, "round trip"),
    }
}

#[test]
fn every_value_type_round_trips() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec(ECHO_TYPES).unwrap();
        check(&ch, Value::Null, "NoneType", Some("None"));
        check(&ch, Value::Bool(true), "bool", Some("True"));
        check(&ch, Value::Bool(false), "bool", Some("False"));
        check(&ch, Value::Int(0), "int", Some("0"));
        check(&ch, Value::Int(-1), "int", Some("-1"));
        check(
            &ch,
            Value::Int(i64::MAX),
            "int",
            Some("9223372036854775807"),
        );
        check(
            &ch,
            Value::Int(i64::MIN),
            "int",
            Some("-9223372036854775808"),
        );
        let big: BigInt = "123456789012345678901234567890".parse().unwrap();
        check(
            &ch,
            Value::BigInt(big),
            "int",
            Some("123456789012345678901234567890"),
        );
        let neg: BigInt = "-98765432109876543210987654321098765".parse().unwrap();
        check(
            &ch,
            Value::BigInt(neg),
            "int",
            Some("-98765432109876543210987654321098765"),
        );
        check(&ch, Value::Float(1.5), "float", Some("1.5"));
        check(&ch, Value::Float(f64::INFINITY), "float", Some("inf"));
        check(&ch, Value::Float(f64::NEG_INFINITY), "float", Some("-inf"));
        check(&ch, Value::Float(f64::NAN), "float", Some("nan"));
        check(&ch, Value::Complex(1.0, -2.0), "complex", Some("(1-2j)"));
        check(
            &ch,
            Value::Bytes(b"a\x00\xff".to_vec()),
            "bytes",
            Some("b'a\\x00\\xff'"),
        );
        check(&ch, Value::Bytes(Vec::new()), "bytes", Some("b''"));
        check(&ch, Value::str("hé ∑ 😀"), "str", Some("'hé ∑ 😀'"));
        check(&ch, Value::str(""), "str", Some("''"));
        check(
            &ch,
            Value::List(vec![Value::Int(1), Value::str("a")]),
            "list[int,str]",
            Some("[1, 'a']"),
        );
        check(
            &ch,
            Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![])]),
            "tuple[int,tuple[]]",
            Some("(1, ())"),
        );
        check(
            &ch,
            Value::Tuple(vec![Value::Int(1)]),
            "tuple[int]",
            Some("(1,)"),
        );
        check(
            &ch,
            Value::Dict(vec![
                (Value::str("b"), Value::Int(1)),
                (Value::str("a"), Value::Int(2)),
            ]),
            "dict{str:int,str:int}",
            Some("{'b': 1, 'a': 2}"),
        );
        check(
            &ch,
            Value::Dict(vec![
                (Value::Int(1), Value::Null),
                (
                    Value::Tuple(vec![Value::Int(1), Value::Int(2)]),
                    Value::Bool(true),
                ),
                (Value::FrozenSet(vec![Value::Int(3)]), Value::Float(0.5)),
            ]),
            "dict{frozenset[int]:float,int:NoneType,tuple[int,int]:bool}",
            None,
        );
        check(
            &ch,
            Value::Set(vec![Value::Int(3)]),
            "set[int]",
            Some("{3}"),
        );
        check(&ch, Value::Set(vec![]), "set[]", Some("set()"));
        check(
            &ch,
            Value::FrozenSet(vec![Value::str("x")]),
            "frozenset[str]",
            Some("frozenset({'x'})"),
        );
        // Deep nesting well below the limit.
        let mut deep = Value::Int(0);
        for _ in 0..100 {
            deep = Value::List(vec![deep]);
        }
        ch.send_value(&deep).unwrap();
        let (_, _, back): (String, String, Value) = ch.receive().unwrap();
        assert_eq!(back, deep);
        ch.close().unwrap();
    })
}

#[test]
fn python_subclasses_are_accepted() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                import collections
                P = collections.namedtuple("P", "x y")
                class S(str): pass
                channel.send(P(1, 2))
                channel.send(collections.OrderedDict([("z", 1), ("a", 2)]))
                channel.send(S("sub"))
                channel.send(bytearray(b"ba"))
                channel.send(memoryview(b"mv"))
                channel.send(True)
                channel.send(2**70)
                "#,
            )
            .unwrap();
        assert_eq!(
            ch.receive::<Value>().unwrap(),
            Value::Tuple(vec![Value::Int(1), Value::Int(2)])
        );
        assert_eq!(
            ch.receive::<Value>().unwrap(),
            Value::Dict(vec![
                (Value::str("z"), Value::Int(1)),
                (Value::str("a"), Value::Int(2))
            ])
        );
        assert_eq!(ch.receive::<Value>().unwrap(), Value::str("sub"));
        assert_eq!(ch.receive::<Value>().unwrap(), Value::Bytes(b"ba".to_vec()));
        assert_eq!(ch.receive::<Value>().unwrap(), Value::Bytes(b"mv".to_vec()));
        assert_eq!(ch.receive::<Value>().unwrap(), Value::Bool(true));
        let big: BigInt = "1180591620717411303424".parse().unwrap();
        assert_eq!(ch.receive::<Value>().unwrap(), Value::BigInt(big));
    })
}

#[test]
fn serde_types_round_trip() {
    bounded(LIMIT, || {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Task {
            name: String,
            args: Vec<i64>,
            weights: BTreeMap<String, f64>,
            pair: (bool, Option<u32>),
        }
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                t = channel.receive()
                assert isinstance(t, dict), type(t)
                assert isinstance(t["pair"], tuple), type(t["pair"])
                t["args"] = [a * 2 for a in t["args"]]
                channel.send(t)
                "#,
            )
            .unwrap();
        let t = Task {
            name: "x".into(),
            args: vec![1, 2, 3],
            weights: [("a".to_string(), 0.5)].into_iter().collect(),
            pair: (true, None),
        };
        ch.send(&t).unwrap();
        let back: Task = ch.receive().unwrap();
        assert_eq!(
            back,
            Task {
                args: vec![2, 4, 6],
                ..t
            }
        );
    })
}
