//! Load: 64 gateways in one group, each running code at once. (1,000
//! concurrent channels on one gateway: `stress.rs`.) See docs/reliability.md.

use std::time::{Duration, Instant};

use execnet::blocking::Group;
use execnet_tests::{assert_reaped, bounded, LIMIT};

#[test]
fn sixty_four_gateways_in_one_group() {
    bounded(LIMIT, || {
        let group = Group::new();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..8 {
                        group.makegateway("popen").unwrap();
                    }
                });
            }
        });
        let started = t0.elapsed();
        let gws = group.gateways();
        assert_eq!(gws.len(), 64);
        let pids: Vec<u32> = gws.iter().map(|g| g.info().pid).collect();
        let t1 = Instant::now();
        let chans: Vec<_> = gws
            .iter()
            .map(|g| {
                g.remote_exec("channel.send(sum(range(channel.receive())))")
                    .unwrap()
            })
            .collect();
        for c in &chans {
            c.send(&1000).unwrap();
        }
        for c in &chans {
            assert_eq!(c.receive::<i64>().unwrap(), 499_500);
        }
        let ran = t1.elapsed();
        drop((chans, gws));
        let t2 = Instant::now();
        group.terminate(Some(Duration::from_secs(2)));
        let ended = t2.elapsed();
        assert!(ended < Duration::from_secs(4), "{ended:?}");
        for pid in pids {
            assert_reaped(pid, Duration::from_secs(5));
        }
        eprintln!("64 gateways: started in {started:?}, one exec each in {ran:?}, terminated in {ended:?}");
    })
}
