//! CBOR encoding and decoding of [`Value`]s (protocol.md §7.1).

use crate::error::ValueError;
use crate::value::Value;

/// Appends the CBOR encoding of `value` to `out`.
pub fn encode(value: &Value, out: &mut Vec<u8>) -> Result<(), ValueError> {
    let _ = (value, out);
    todo!()
}

/// Decodes exactly one value from `bytes`.
pub fn decode(bytes: &[u8], max_depth: u32) -> Result<Value, ValueError> {
    let _ = (bytes, max_depth);
    todo!()
}
