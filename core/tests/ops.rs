//! Property tests over random operation sequences on a wired pair (the same
//! model checker as the `session_ops` fuzz target, see
//! `execnet_core::fuzzing::run_ops`).

use execnet_core::fuzzing::{run_ops, same_trace, Chunking, Op, Side};
use execnet_core::Config;
use proptest::prelude::*;
use std::time::Instant;

fn now() -> Instant {
    Instant::now()
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Host), Just(Side::Worker)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => side().prop_map(Op::Open),
        1 => Just(Op::Exec),
        8 => (side(), any::<u8>(), prop_oneof![0u16..40, 0u16..3000]).prop_map(|(side, channel, size)| Op::Send { side, channel, size }),
        1 => (side(), any::<u8>(), any::<bool>()).prop_map(|(side, channel, error)| Op::Close { side, channel, error }),
        1 => (side(), any::<u8>()).prop_map(|(side, channel)| Op::HalfClose { side, channel }),
        3 => (side(), any::<u8>()).prop_map(|(side, count)| Op::Consume { side, count }),
        4 => (side(), any::<u16>()).prop_map(|(to, bytes)| Op::Deliver { to, bytes }),
        2 => Just(Op::Pump),
        1 => Just(Op::Status),
        1 => any::<u8>().prop_map(Op::Output),
        1 => prop_oneof![Just(Op::Terminate(Side::Host)), Just(Op::Terminate(Side::Worker))],
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (64u32..2048, 1u32..8192).prop_map(|(max_frame, window)| Config {
        max_frame,
        window,
        ..Config::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every invariant of `run_ops` holds, and the event sequence is the
    /// same whether bytes arrive whole, one at a time, or randomly split.
    #[test]
    fn random_operations_keep_the_invariants(
        config in config(),
        ops in proptest::collection::vec(op(), 0..80),
        seed in any::<u64>(),
        max in 1usize..300,
    ) {
        let whole = run_ops(&config, &ops, Chunking::Whole, now());
        let random = run_ops(&config, &ops, Chunking::Random { seed, max }, now());
        prop_assert!(same_trace(&whole, &random), "events depend on chunking");
    }

    /// Without terminations, with tiny windows and byte-by-byte delivery.
    #[test]
    fn byte_by_byte_with_tiny_windows(
        ops in proptest::collection::vec(op(), 0..40),
        window in 1u32..64,
    ) {
        let ops: Vec<Op> = ops.into_iter().filter(|o| !matches!(o, Op::Terminate(_))).collect();
        let config = Config { max_frame: 64, window, ..Config::default() };
        let whole = run_ops(&config, &ops, Chunking::Whole, now());
        let bytewise = run_ops(&config, &ops, Chunking::Fixed(1), now());
        prop_assert!(same_trace(&whole, &bytewise));
    }
}
