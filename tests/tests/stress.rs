//! Size and concurrency: a 256 MiB item each way, 1,000 concurrent channels
//! on one gateway, 16 gateways started at once.

use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Group};
use execnet::Value;
use execnet_tests::{assert_reaped, bounded, gw};

const BIG: usize = 256 << 20;

#[test]
fn item_of_256_mib_each_way() {
    bounded(Duration::from_secs(120), || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                data = channel.receive()
                assert isinstance(data, bytes), type(data)
                channel.send((len(data), data[:4], data[-4:]))
                del data
                channel.send(b"\x07" * (256 << 20))
                "#,
            )
            .unwrap();
        let mut data = vec![0u8; BIG];
        data[..4].copy_from_slice(b"head");
        data[BIG - 4..].copy_from_slice(b"tail");
        let t0 = Instant::now();
        ch.send_value(&Value::Bytes(data)).unwrap();
        let (n, head, tail): (u64, Value, Value) = ch.receive().unwrap();
        let up = t0.elapsed();
        assert_eq!(n as usize, BIG);
        assert_eq!(head, Value::Bytes(b"head".to_vec()));
        assert_eq!(tail, Value::Bytes(b"tail".to_vec()));
        let t1 = Instant::now();
        let back = ch.receive_value(None).unwrap();
        let down = t1.elapsed();
        match back {
            Value::Bytes(b) => {
                assert_eq!(b.len(), BIG);
                assert!(b.iter().all(|&x| x == 7));
            }
            other => panic!("expected bytes, got {}", other.type_name()),
        }
        eprintln!(
            "256 MiB: host->worker {:?} ({:.0} MiB/s), worker->host {:?} ({:.0} MiB/s)",
            up,
            256.0 / up.as_secs_f64(),
            down,
            256.0 / down.as_secs_f64()
        );
        ch.waitclose(Some(Duration::from_secs(30))).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn thousand_concurrent_channels_on_one_gateway() {
    bounded(Duration::from_secs(120), || {
        let gw = gw();
        let t0 = Instant::now();
        let chans: Vec<_> = (0..1000)
            .map(|_| {
                gw.remote_exec("channel.send(channel.receive() + 1)")
                    .unwrap()
            })
            .collect();
        for (i, c) in chans.iter().enumerate() {
            c.send(&(i as i64)).unwrap();
        }
        for (i, c) in chans.iter().enumerate() {
            assert_eq!(c.receive::<i64>().unwrap(), i as i64 + 1);
        }
        for c in &chans {
            c.waitclose(Some(Duration::from_secs(30))).unwrap();
        }
        eprintln!("1,000 channels: {:?}", t0.elapsed());
        // And 1,000 channels opened by the host, all live at once.
        let subs: Vec<_> = (0..1000).map(|_| gw.newchannel().unwrap()).collect();
        let ch = gw
            .remote_exec("subs = channel.receive()\nfor i, s in enumerate(subs):\n    s.send(i)\n")
            .unwrap();
        ch.send(&subs).unwrap();
        for (i, s) in subs.iter().enumerate() {
            assert_eq!(s.receive::<i64>().unwrap(), i as i64);
        }
        ch.waitclose(Some(Duration::from_secs(30))).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn sixteen_gateways_at_once() {
    bounded(Duration::from_secs(120), || {
        let group = Group::new();
        let t0 = Instant::now();
        let gws: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|_| s.spawn(|| group.makegateway("popen").unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        eprintln!("16 gateways started in {:?}", t0.elapsed());
        let mut pids: Vec<u32> = gws.iter().map(|g| g.info().pid).collect();
        let chans: Vec<_> = gws
            .iter()
            .map(|g| {
                g.remote_exec("import os; channel.send(os.getpid())")
                    .unwrap()
            })
            .collect();
        for (c, g) in chans.iter().zip(&gws) {
            assert_eq!(c.receive::<u32>().unwrap(), g.info().pid);
        }
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), 16);
        let mut ids: Vec<String> = gws.iter().map(|g| g.id().to_string()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 16);
        drop(chans);
        drop(gws);
        group.terminate(Some(Duration::from_secs(2)));
        for pid in pids {
            assert_reaped(pid, Duration::from_secs(10));
        }
    })
}

#[test]
fn many_small_items_and_ping_pong() {
    bounded(Duration::from_secs(120), || {
        let gw = makegateway("popen").unwrap();
        let ch = gw
            .remote_exec("for x in channel:\n    channel.send(x)\n")
            .unwrap();
        // Warm up, then time round trips.
        for _ in 0..100 {
            ch.send(&1).unwrap();
            ch.receive::<i64>().unwrap();
        }
        let n = 2000;
        let t0 = Instant::now();
        for i in 0..n {
            ch.send(&i).unwrap();
            assert_eq!(ch.receive::<i64>().unwrap(), i);
        }
        let rtt = t0.elapsed() / n as u32;
        // Streaming: send many, then receive many.
        let m = 50_000i64;
        let t1 = Instant::now();
        let ch2 = ch.clone();
        let sender = std::thread::spawn(move || {
            for i in 0..m {
                ch2.send(&i).unwrap();
            }
        });
        for i in 0..m {
            assert_eq!(ch.receive::<i64>().unwrap(), i);
        }
        sender.join().unwrap();
        let rate = m as f64 / t1.elapsed().as_secs_f64();
        eprintln!("ping-pong {rtt:?} per round trip; {rate:.0} small items/s echoed");
        ch.close().unwrap();
    })
}
