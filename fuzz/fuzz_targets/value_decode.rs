#![no_main]
//! Body: `execnet_core::fuzzing::value_decode`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| execnet_core::fuzzing::value_decode(data));
