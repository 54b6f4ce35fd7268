//! The async API under tokio, on a multi-thread and on a current-thread
//! runtime: gateway start, remote_exec, send/receive, callbacks feeding a
//! tokio channel, receive with a timeout (ours and tokio's), tasks spawned
//! on the runtime, the end of the sending side, and termination of a
//! Gateway and of a Group. Nothing tokio-specific is needed: the crate's
//! waits are `event-listener` notifications and `async-io` timers, which
//! work under any executor.

use std::future::Future;
use std::time::Duration;

use execnet::{Error, Group, Value};
use execnet_tests::{assert_reaped, bounded, plus_one_after_a_pause, LIMIT};

/// Runs `f` on a fresh runtime of each flavour.
fn on_both_runtimes<F, Fut>(f: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    bounded(LIMIT, move || {
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        multi.block_on(f());
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        current.block_on(f());
    })
}

#[test]
fn gateway_exec_send_receive_and_timeouts() {
    on_both_runtimes(|| async {
        let gw = execnet::makegateway("popen").await.unwrap();
        let pid = gw.info().pid;
        let ch = gw
            .remote_exec("for x in channel:\n    channel.send(x * 2)\n")
            .await
            .unwrap();
        for i in 0..5i64 {
            ch.send(&i).await.unwrap();
            assert_eq!(ch.receive::<i64>().await.unwrap(), i * 2);
        }
        // Our own timeout...
        assert!(matches!(
            ch.receive_timeout::<Value>(Duration::from_millis(50)).await,
            Err(Error::Timeout)
        ));
        // ...and tokio's, which drops the receive future midway: the item
        // sent afterwards is not lost.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), ch.receive::<i64>())
                .await
                .is_err()
        );
        ch.send(&21).await.unwrap();
        assert_eq!(ch.receive::<i64>().await.unwrap(), 42);
        // A receive waits while another task of the same runtime sends (on
        // the current-thread runtime a blocking wait would hang here).
        let sender = ch.clone();
        let (got, ()) = tokio::join!(ch.receive::<i64>(), async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.send(&50).await.unwrap();
        });
        assert_eq!(got.unwrap(), 100);
        // End of the sending side: the remote loop ends, the channel closes.
        ch.close_sending().unwrap();
        ch.waitclose(Some(Duration::from_secs(10))).await.unwrap();
        // A remote error arrives as one.
        let e = gw
            .remote_exec("raise ValueError('tokio')")
            .await
            .unwrap()
            .waitclose(Some(Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert_eq!(e.as_remote().unwrap().exception_type(), Some("ValueError"));
        gw.exit().await.unwrap();
        assert_reaped(pid, Duration::from_secs(10));
    });
}

#[test]
fn callbacks_feed_a_tokio_channel() {
    on_both_runtimes(|| async {
        let gw = execnet::makegateway("popen").await.unwrap();
        let ch = gw
            .remote_exec("for i in range(100):\n    channel.send(i)\n")
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        ch.set_callback(
            move |v| {
                let _ = tx.send(v);
            },
            Some(Value::str("end")),
        )
        .unwrap();
        let mut got = Vec::new();
        loop {
            let v = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("callback item within 10 s")
                .expect("callback alive until the endmarker");
            if v == Value::str("end") {
                break;
            }
            got.push(v);
        }
        assert_eq!(got, (0..100).map(Value::Int).collect::<Vec<_>>());
        gw.exit().await.unwrap();
    });
}

#[test]
fn tasks_spawned_on_the_runtime_share_a_gateway() {
    on_both_runtimes(|| async {
        let gw = execnet::makegateway("popen").await.unwrap();
        // Spawned, so on the multi-thread runtime the futures run on its
        // worker threads (they are Send).
        let tasks: Vec<_> = (0..20i64)
            .map(|i| {
                let gw = gw.clone();
                tokio::spawn(async move { plus_one_after_a_pause(&gw, i).await })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        assert_eq!(sum, (1..=20).sum::<i64>());
        gw.exit().await.unwrap();
    });
}

#[test]
fn termination_of_a_gateway_and_of_a_group() {
    on_both_runtimes(|| async {
        // A gateway whose code never ends: terminate kills it in bounds.
        let gw = execnet::makegateway("popen").await.unwrap();
        let pid = gw.info().pid;
        let busy = gw
            .remote_exec("import time\nwhile True:\n    time.sleep(0.05)\n")
            .await
            .unwrap();
        let t0 = std::time::Instant::now();
        gw.terminate(Some(Duration::from_millis(500))).await;
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert!(gw.is_terminated());
        assert!(busy.receive::<Value>().await.is_err());
        assert_reaped(pid, Duration::from_secs(10));

        // A group of three, one of them busy.
        let group = Group::new();
        let gws = group
            .makegateways(["popen", "popen", "popen"])
            .await
            .unwrap();
        let pids: Vec<u32> = gws.iter().map(|g| g.info().pid).collect();
        let _busy = gws[0]
            .remote_exec("import time\nwhile True:\n    time.sleep(0.05)\n")
            .await
            .unwrap();
        let mc = group.remote_exec("channel.send(1)").await.unwrap();
        assert_eq!(mc.receive_each::<i64>().await.unwrap(), vec![1, 1, 1]);
        group.terminate(Some(Duration::from_millis(500))).await;
        assert!(gws.iter().all(|g| g.is_terminated()));
        for pid in pids {
            assert_reaped(pid, Duration::from_secs(10));
        }
    });
}
