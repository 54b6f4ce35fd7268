//! Leader/follower reading on the host: a blocking receive reads the
//! transport itself while it waits, the reader thread stands back and takes
//! over again. These tests look for lost wake-ups and stalls: everything is
//! bounded in time.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use execnet::blocking::Gateway;
use execnet::Value;
use execnet_tests::{bounded, LIMIT};

const ECHO: &str = "for x in channel:\n    channel.send(x)\n";

/// Collected remote output.
fn gateway_with_output() -> (Gateway, Arc<Mutex<Vec<u8>>>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let o2 = out.clone();
    let gw = Gateway::builder("popen")
        .unwrap()
        .on_output(move |_fd, bytes| o2.lock().unwrap().extend_from_slice(bytes))
        .start()
        .unwrap();
    (gw, out)
}

fn wait_output(out: &Mutex<Vec<u8>>, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if String::from_utf8_lossy(&out.lock().unwrap()).contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "remote output {needle:?} not forwarded within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn many_blocking_pingpongs_with_a_callback_and_output() {
    bounded(LIMIT, || {
        let (gw, out) = gateway_with_output();
        // A channel served by a callback, fed while the ping-pongs run.
        let fed = gw
            .remote_exec(
                "import sys, time\n\
                 for i in range(200):\n\
                 \x20   channel.send(i)\n\
                 \x20   if i % 20 == 0:\n\
                 \x20       print('tick', i, flush=True)\n\
                 \x20       time.sleep(0.002)\n\
                 print('feeder done', flush=True)\n",
            )
            .unwrap();
        let (tx, rx) = mpsc::channel();
        fed.set_callback(move |v| tx.send(v).unwrap(), Some(Value::str("end")))
            .unwrap();
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let gw = gw.clone();
                std::thread::spawn(move || {
                    let ch = gw.remote_exec(ECHO).unwrap();
                    for i in 0..300i64 {
                        let x = t * 1_000_000 + i;
                        ch.send(&x).unwrap();
                        assert_eq!(ch.receive::<i64>().unwrap(), x);
                    }
                    ch.close().unwrap();
                    ch.waitclose(Some(Duration::from_secs(10))).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got: Vec<Value> = (0..201)
            .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap())
            .collect();
        let want: Vec<Value> = (0..200)
            .map(Value::Int)
            .chain([Value::str("end")])
            .collect();
        assert_eq!(got, want);
        wait_output(&out, "feeder done", Duration::from_secs(10));
        gw.exit().unwrap();
    })
}

#[test]
fn output_after_a_leading_receive_is_forwarded() {
    // Nobody waits and no callback is set after the receive returned: the
    // reader thread must take over and forward the output anyway.
    bounded(LIMIT, || {
        let (gw, out) = gateway_with_output();
        let ch = gw
            .remote_exec(
                "import time\n\
                 channel.send(1)\n\
                 time.sleep(0.05)\n\
                 print('late output', flush=True)\n\
                 channel.receive()\n",
            )
            .unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1);
        wait_output(&out, "late output", Duration::from_secs(5));
        ch.send(&0i64).unwrap();
        ch.waitclose(Some(Duration::from_secs(10))).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn blocking_and_async_receivers_on_one_gateway() {
    bounded(LIMIT, || {
        let gw = execnet::blocking::makegateway("popen").unwrap();
        let a = gw.remote_exec(ECHO).unwrap();
        let b = gw.remote_exec(ECHO).unwrap();
        let b_async = b.as_async().clone();
        // The async receiver runs on its own executor thread and never reads.
        let async_side = std::thread::spawn(move || {
            futures_lite::future::block_on(async {
                for i in 0..300i64 {
                    b_async.send(&i).await.unwrap();
                    assert_eq!(b_async.receive::<i64>().await.unwrap(), i);
                }
                // An async wait that only another reader can satisfy.
                b_async.send(&-1i64).await.unwrap();
                assert_eq!(b_async.receive::<i64>().await.unwrap(), -1);
            })
        });
        for i in 0..300i64 {
            a.send(&i).unwrap();
            assert_eq!(a.receive::<i64>().unwrap(), i);
        }
        async_side.join().unwrap();
        // An async receive while a blocking receive leads, both answered.
        let b_async = b.as_async().clone();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let v = futures_lite::future::block_on(b_async.receive::<i64>());
            tx.send(v.unwrap()).unwrap();
        });
        let a2 = a.clone();
        let leader = std::thread::spawn(move || a2.receive::<i64>().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        b.send(&7i64).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
        a.send(&8i64).unwrap();
        assert_eq!(leader.join().unwrap(), 8);
        waiter.join().unwrap();
        // A timed receive (never leads) next to a leading one.
        let a2 = a.clone();
        let leader = std::thread::spawn(move || a2.receive::<i64>().unwrap());
        std::thread::sleep(Duration::from_millis(20));
        b.send(&9i64).unwrap();
        assert_eq!(
            b.receive_timeout::<i64>(Duration::from_secs(10)).unwrap(),
            9
        );
        a.send(&10i64).unwrap();
        assert_eq!(leader.join().unwrap(), 10);
        a.close().unwrap();
        b.close().unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn leading_receivers_see_the_worker_die() {
    bounded(LIMIT, || {
        let gw = execnet::blocking::makegateway("popen").unwrap();
        let chans: Vec<_> = (0..3).map(|_| gw.remote_exec(ECHO).unwrap()).collect();
        let waiting: Vec<_> = chans
            .iter()
            .cloned()
            .map(|ch| std::thread::spawn(move || ch.receive::<i64>()))
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        gw.kill();
        for w in waiting {
            assert!(w.join().unwrap().is_err());
        }
    })
}
