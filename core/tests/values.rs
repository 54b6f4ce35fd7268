//! proptest: arbitrary nested values round-trip through CBOR and through
//! serde (NaN-aware comparison).

mod support;

use execnet_core::{decode, encode, from_value, to_value, BigInt, ChannelId, ChannelRef, Value};
use proptest::prelude::*;
use support::same_value;

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.0),
    ]
}

fn int() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        prop_oneof![
            Just(0i64),
            Just(23),
            Just(24),
            Just(255),
            Just(256),
            Just(-1),
            Just(-24),
            Just(-25)
        ]
        .prop_map(Value::Int),
        any::<i128>().prop_map(Value::from),
        any::<u128>().prop_map(Value::from),
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(neg, mag)| Value::from_bigint(BigInt::from_sign_magnitude(neg, &mag))),
    ]
}

/// Values Python can hash: usable as dict keys and set members.
fn hashable() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        int(),
        float().prop_map(Value::Float),
        ".{0,8}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        (1u32..1000).prop_map(|id| Value::Channel(ChannelRef(ChannelId(id)))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Tuple),
            proptest::collection::vec(inner, 0..4).prop_map(Value::FrozenSet),
        ]
    })
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        int(),
        float().prop_map(Value::Float),
        (float(), float()).prop_map(|(a, b)| Value::Complex(a, b)),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes),
        any::<String>().prop_map(Value::Str),
        (1u32..u32::MAX).prop_map(|id| Value::Channel(ChannelRef(ChannelId(id)))),
        hashable(),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Tuple),
            proptest::collection::vec((hashable(), inner), 0..6).prop_map(Value::Dict),
            proptest::collection::vec(hashable(), 0..6).prop_map(Value::Set),
            proptest::collection::vec(hashable(), 0..6).prop_map(Value::FrozenSet),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn cbor_round_trip(v in value()) {
        let mut bytes = Vec::new();
        encode(&v, &mut bytes).unwrap();
        let back = decode(&bytes, 200).unwrap();
        prop_assert!(same_value(&v, &back), "{:?} != {:?}", v, back);
        // canonical: re-encoding gives the same bytes
        let mut again = Vec::new();
        encode(&back, &mut again).unwrap();
        prop_assert_eq!(bytes, again);
    }

    #[test]
    fn serde_round_trip(v in value()) {
        let through = to_value(&v).unwrap();
        prop_assert!(same_value(&v, &through), "to_value: {:?} != {:?}", v, through);
        let back: Value = from_value(v.clone()).unwrap();
        prop_assert!(same_value(&v, &back), "from_value: {:?} != {:?}", v, back);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes, 200);
    }

    #[test]
    fn rust_types_through_serde(
        t in (any::<i32>(), ".{0,8}", proptest::collection::vec(any::<u64>(), 0..4), any::<Option<i128>>()),
    ) {
        let v = to_value(&t).unwrap();
        prop_assert!(matches!(v, Value::Tuple(_)));
        let mut bytes = Vec::new();
        encode(&v, &mut bytes).unwrap();
        let back: (i32, String, Vec<u64>, Option<i128>) = from_value(decode(&bytes, 200).unwrap()).unwrap();
        prop_assert_eq!(back, t);
    }
}
