#![no_main]
//! Body: `execnet_core::fuzzing::deframer`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| execnet_core::fuzzing::deframer(data));
