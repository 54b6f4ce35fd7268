//! Flow control against a remote that does work between receives: credit
//! must come back while the consumer is slow but steady, so a bulk sender is
//! paced by the consumer, never stalled far beyond it.

use std::time::{Duration, Instant};

use execnet_tests::{bounded, gw};

/// 400 items of 256 KiB to a remote that sleeps 2 ms after each receive: the
/// consumer needs about 0.8 s, so the transfer must not take much longer
/// (a credit return that waits for an idle receiver made this take ~60 s).
#[test]
fn bulk_to_a_busy_consumer_is_paced_not_stalled() {
    bounded(Duration::from_secs(60), || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                "import time\nn = 0\nfor x in iter(channel.receive, None):\n    n += len(x)\n\
                 \x20   time.sleep(0.002)\nchannel.send(n)\n",
            )
            .expect("exec");
        let item = execnet::Value::Bytes(vec![7u8; 256 * 1024]);
        let start = Instant::now();
        for _ in 0..400 {
            ch.send(&item).expect("send");
        }
        ch.send(&execnet::Value::Null).expect("end marker");
        let n: u64 = ch.receive_timeout(Duration::from_secs(50)).expect("total");
        let took = start.elapsed();
        assert_eq!(n, 400 * 256 * 1024);
        // 0.8 s of sleeping plus transfer; generous for a loaded 2-core machine.
        assert!(took < Duration::from_secs(8), "400 items took {took:?}");
        gw.exit().expect("exit");
    });
}

/// Bulk host→worker to a consumer that sends nothing back while it reads:
/// the room a sender waits for is made by the writer draining the session,
/// not by any input, and the waiter must be woken all the same (it hung
/// about one run in two when only the reader dispatched WindowOpened).
#[test]
fn bulk_to_a_silent_consumer_never_waits_for_input() {
    bounded(Duration::from_secs(60), || {
        let gw = gw();
        for round in 0..8 {
            let ch = gw
                .remote_exec(
                    "n = 0\nfor x in iter(channel.receive, None):\n    n += len(x)\n\
                     channel.send(n)\n",
                )
                .expect("exec");
            let item = execnet::Value::Bytes(vec![1u8; 1 << 20]);
            for _ in 0..64 {
                ch.send(&item).expect("send");
            }
            ch.send(&execnet::Value::Null).expect("end marker");
            let n: u64 = ch
                .receive_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(n, 64 << 20);
        }
        gw.exit().expect("exit");
    });
}
