#![no_main]
//! Body: `execnet_core::fuzzing::session_bytes`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| execnet_core::fuzzing::session_bytes(data));
