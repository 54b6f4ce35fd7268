//! Reads `tests/vectors/golden.json` and its typed-JSON values.

use execnet_core::{BigInt, ChannelId, ChannelRef, Value};
use serde_json::Value as Json;

pub fn load() -> Json {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/golden.json");
    let text = std::fs::read_to_string(path).unwrap();
    let mut de = serde_json::Deserializer::from_str(&text);
    // list_depth_200 nests 400 JSON levels.
    de.disable_recursion_limit();
    serde::Deserialize::deserialize(&mut de).unwrap()
}

pub fn float(s: &str) -> f64 {
    match s {
        "nan" => f64::NAN,
        "inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        s => s.parse().unwrap(),
    }
}

/// Typed JSON (`{"int": "5"}`, `{"list": [...]}`, ...) to a `Value`.
pub fn typed_value(j: &Json) -> Value {
    let obj = j.as_object().expect("typed value is an object");
    assert_eq!(obj.len(), 1, "{j}");
    let (kind, v) = obj.iter().next().unwrap();
    let items = |v: &Json| {
        v.as_array()
            .unwrap()
            .iter()
            .map(typed_value)
            .collect::<Vec<_>>()
    };
    match kind.as_str() {
        "none" => Value::Null,
        "bool" => Value::Bool(v.as_bool().unwrap()),
        "int" => Value::from_bigint(v.as_str().unwrap().parse::<BigInt>().unwrap()),
        "float" => Value::Float(float(v.as_str().unwrap())),
        "complex" => {
            let a = v.as_array().unwrap();
            Value::Complex(float(a[0].as_str().unwrap()), float(a[1].as_str().unwrap()))
        }
        "bytes" => Value::Bytes(super::unhex(v.as_str().unwrap())),
        "str" => Value::Str(v.as_str().unwrap().to_owned()),
        "list" => Value::List(items(v)),
        "tuple" => Value::Tuple(items(v)),
        "set" => Value::Set(items(v)),
        "frozenset" => Value::FrozenSet(items(v)),
        "dict" => Value::Dict(
            v.as_array()
                .unwrap()
                .iter()
                .map(|kv| (typed_value(&kv[0]), typed_value(&kv[1])))
                .collect(),
        ),
        "channel" => Value::Channel(ChannelRef(ChannelId(v.as_u64().unwrap() as u32))),
        other => panic!("unknown typed kind {other}"),
    }
}
