//! The golden vectors (`tests/vectors/golden.json`): the byte-exact contract
//! with the Python worker, which checks the same file. Every value entry is
//! decoded (and, unless `decode_only`, encoded); every frame entry is checked
//! by the real sessions in `golden_frames`.

mod support;

use execnet_core::{decode, encode, Value};
use support::golden::{load, typed_value};
use support::same_value;

#[test]
fn golden_values_encode_and_decode() {
    let golden = load();
    let values = golden["values"].as_array().expect("values");
    assert!(values.len() > 60);
    for entry in values {
        let name = entry["name"].as_str().unwrap();
        let value = typed_value(&entry["value"]);
        let bytes = support::unhex(entry["hex"].as_str().unwrap());
        let decoded = decode(&bytes, 200).unwrap_or_else(|e| panic!("{name}: decode: {e}"));
        assert!(
            same_value(&decoded, &value),
            "{name}: decoded {decoded:?}, expected {value:?}"
        );
        if !entry["decode_only"].as_bool().unwrap() {
            let mut out = Vec::new();
            encode(&value, &mut out).unwrap_or_else(|e| panic!("{name}: encode: {e}"));
            assert_eq!(
                support::hex(&out),
                entry["hex"].as_str().unwrap(),
                "{name}: encode"
            );
        }
    }
}

#[test]
fn golden_depth_limit_is_exactly_200() {
    let golden = load();
    let deep = golden["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "list_depth_200")
        .unwrap();
    let bytes = support::unhex(deep["hex"].as_str().unwrap());
    assert!(decode(&bytes, 200).is_ok());
    let mut deeper = vec![0x81];
    deeper.extend_from_slice(&bytes);
    assert!(decode(&deeper, 200).is_err());
    let _ = Value::Null;
}
