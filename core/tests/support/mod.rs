//! Shared test support: the golden-vector reader, NaN-aware comparison, hex.
#![allow(dead_code)]

pub mod golden;

/// Structural equality where NaN equals NaN and -0.0 differs from 0.0
/// (the fuzz model's own, so tests and fuzzing compare alike).
pub use execnet_core::fuzzing::same_value;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
