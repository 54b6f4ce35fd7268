//! Items accepted by `send` before `close` are all delivered, in order,
//! under random interleavings: threads racing `close` against their sends,
//! many seeds. See docs/reliability.md.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use execnet::blocking::makegateway;
use execnet_tests::{bounded, LIMIT};

/// xorshift64*: a reproducible random source per seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const SENDERS: usize = 3;
const SEEDS: u64 = 40;

#[test]
fn items_accepted_before_close_are_delivered_in_order() {
    bounded(LIMIT, || {
        let gw = makegateway("popen").unwrap();
        // The remote collects what arrives on a data channel until its end
        // and reports per sender on the exec channel.
        let collector = r#"
            data = channel.receive()
            got = {}
            for sender, seq in data:
                got.setdefault(sender, []).append(seq)
            channel.send(got)
        "#;
        let mut accepted_total = 0usize;
        for seed in 1..=SEEDS {
            let ch = gw.remote_exec(collector).unwrap();
            let data = gw.newchannel().unwrap();
            ch.send(&data).unwrap();
            let start = Arc::new(Barrier::new(SENDERS + 1));
            let senders: Vec<_> = (0..SENDERS)
                .map(|i| {
                    let (data, start) = (data.clone(), start.clone());
                    let mut rng = Rng(seed * 7919 + i as u64 + 1);
                    std::thread::spawn(move || {
                        start.wait();
                        let mut accepted = Vec::new();
                        for seq in 0..100_000i64 {
                            match data.send(&(i as i64, seq)) {
                                Ok(()) => accepted.push(seq),
                                Err(execnet::Error::ChannelClosed) => break,
                                Err(e) => panic!("seed {seed}: {e}"),
                            }
                            if rng.next().is_multiple_of(64) {
                                std::thread::yield_now();
                            }
                        }
                        accepted
                    })
                })
                .collect();
            let mut rng = Rng(seed);
            start.wait();
            std::thread::sleep(Duration::from_micros(rng.next() % 3000));
            data.close().unwrap();
            let accepted: Vec<Vec<i64>> = senders.into_iter().map(|h| h.join().unwrap()).collect();
            let got: std::collections::BTreeMap<i64, Vec<i64>> =
                ch.receive_timeout(Duration::from_secs(30)).unwrap();
            for (i, acc) in accepted.iter().enumerate() {
                let g = got.get(&(i as i64)).cloned().unwrap_or_default();
                assert_eq!(
                    g.len(),
                    acc.len(),
                    "seed {seed} sender {i}: {} accepted, {} delivered",
                    acc.len(),
                    g.len()
                );
                assert_eq!(&g, acc, "seed {seed} sender {i}: order");
                accepted_total += acc.len();
            }
            ch.waitclose(Some(Duration::from_secs(10))).unwrap();
        }
        eprintln!("{SEEDS} seeds x {SENDERS} senders: {accepted_total} items accepted, all delivered in order");
        gw.exit().unwrap();
    })
}
