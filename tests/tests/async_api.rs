//! The async API under two different executors: smol and
//! `futures::executor`.

use std::time::Duration;

use execnet::{Error, Group, Value};
use execnet_tests::{assert_reaped, bounded, plus_one_after_a_pause, LIMIT};
use futures_lite::StreamExt;

async fn scenario() -> Vec<i64> {
    let gw = execnet::makegateway("popen").await.unwrap();
    let pid = gw.info().pid;
    let ch = gw
        .remote_exec("for x in channel:\n    channel.send(x * 2)\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    for i in 0..5i64 {
        ch.send(&i).await.unwrap();
        out.push(ch.receive::<i64>().await.unwrap());
    }
    assert!(matches!(
        ch.receive_timeout::<Value>(Duration::from_millis(50)).await,
        Err(Error::Timeout)
    ));
    ch.close().unwrap();
    let ch = gw
        .remote_exec("for i in range(3): channel.send(i)")
        .await
        .unwrap();
    let streamed: Vec<i64> = ch.stream::<i64>().map(|r| r.unwrap()).collect().await;
    assert_eq!(streamed, vec![0, 1, 2]);
    let status = gw.remote_status().await.unwrap();
    assert_eq!(status.execmodel, "thread");
    let e = gw
        .remote_exec("raise RuntimeError('x')")
        .await
        .unwrap()
        .waitclose(Some(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(
        e.as_remote().unwrap().exception_type(),
        Some("RuntimeError")
    );
    gw.exit().await.unwrap();
    assert_reaped(pid, Duration::from_secs(10));
    out
}

#[test]
fn async_under_smol() {
    bounded(LIMIT, || {
        let out = smol::block_on(scenario());
        assert_eq!(out, vec![0, 2, 4, 6, 8]);
    })
}

#[test]
fn async_under_futures_executor() {
    bounded(LIMIT, || {
        let out = futures_executor::block_on(scenario());
        assert_eq!(out, vec![0, 2, 4, 6, 8]);
    })
}

#[test]
fn many_tasks_on_one_smol_executor() {
    bounded(LIMIT, || {
        let ex = smol::LocalExecutor::new();
        smol::block_on(ex.run(async {
            let group = Group::new();
            let gw = group.makegateway("popen").await.unwrap();
            let tasks: Vec<_> = (0..20i64)
                .map(|i| {
                    let gw = gw.clone();
                    ex.spawn(async move { plus_one_after_a_pause(&gw, i).await })
                })
                .collect();
            let mut sum = 0;
            for t in tasks {
                sum += t.await;
            }
            assert_eq!(sum, (1..=20).sum::<i64>());
            group.terminate(Some(Duration::from_secs(2))).await;
        }));
    })
}

/// The futures are `Send`, so multi-threaded executors (tokio's
/// `spawn`, async-std) accept them. Checked at compile time.
#[allow(dead_code)]
fn futures_are_send(gw: execnet::Gateway, ch: execnet::Channel) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&execnet::makegateway("popen"));
    is_send(&gw.remote_exec("pass"));
    is_send(&gw.remote_exec_call("", "f", &()));
    is_send(&gw.remote_status());
    is_send(&gw.exit());
    is_send(&gw.terminate(None));
    is_send(&ch.send(&1));
    is_send(&ch.send_timeout(&1, Duration::from_secs(1)));
    is_send(&ch.receive::<i64>());
    is_send(&ch.receive_timeout::<i64>(Duration::from_secs(1)));
    is_send(&ch.waitclose(None));
    is_send(&ch.stream::<i64>());
    is_send(&Group::new().makegateway(""));
    fn is_sync<T: Sync + Send + Clone>() {}
    is_sync::<execnet::Gateway>();
    is_sync::<execnet::Channel>();
    is_sync::<execnet::blocking::Gateway>();
    is_sync::<execnet::blocking::Channel>();
}
