//! The async face never blocks its executor's thread on a write (issue 15,
//! item 5): commands queue their frames in the session and the flusher
//! thread writes them, so a worker that stops reading stalls the gateway's
//! writes, not the caller's executor.

use std::time::Duration;

use futures_lite::future;

/// The worker's reader thread sleeps in a channel callback, so nothing
/// reads the host's pipe any more. A 3.5 MiB item (within the 4 MiB window,
/// beyond any pipe buffer) is accepted by the session; writing it would
/// block. On the same single-threaded executor a 200 ms timer must fire
/// while that send is under way: had the send written inline, the thread
/// would be stuck in `write` until the worker is killed.
#[test]
fn a_send_into_a_full_pipe_leaves_the_executor_free() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let pid = std::sync::Arc::new(std::sync::Mutex::new(None::<u32>));
    let p = pid.clone();
    let t = std::thread::spawn(move || {
        let outcome = future::block_on(async {
            let gw = execnet::makegateway("popen").await.unwrap();
            *p.lock().unwrap() = Some(gw.info().pid);
            let ch = gw
                .remote_exec(
                    "import time\n\
                     channel.setcallback(lambda x: time.sleep(600))\n\
                     channel.send('ready')\n\
                     time.sleep(600)\n",
                )
                .await
                .unwrap();
            // The callback is set: the next item puts the reader to sleep.
            let ready: String = ch.receive().await.unwrap();
            assert_eq!(ready, "ready");
            ch.send(&1i64).await.unwrap();
            let big = execnet::Value::Bytes(vec![7u8; 3_500_000]);
            let ticked = future::zip(
                async {
                    ch.send_value(&big).await.unwrap();
                },
                async {
                    async_io::Timer::after(Duration::from_millis(200)).await;
                },
            )
            .await;
            let _ = ticked;
            gw
        });
        let _ = done_tx.send(());
        // The worker sleeps: end it by force (its writes then fail).
        future::block_on(outcome.terminate(Some(Duration::from_millis(100))));
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(20)).is_ok();
    if !finished {
        // Unblock the stuck write so the thread (and the test) can end.
        if let Some(pid) = *pid.lock().unwrap() {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
        }
    }
    t.join().unwrap();
    assert!(finished, "the send blocked the executor's thread");
}
