#![no_main]
//! Body: `execnet_core::fuzzing::session_ops` (structured operations on a
//! wired Pair, decoded with `arbitrary`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| execnet_core::fuzzing::session_ops(data, std::time::Instant::now()));
