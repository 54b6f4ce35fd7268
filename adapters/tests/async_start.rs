//! The async face never blocks its executor's thread while a gateway starts
//! (issue 15, item 5): the blocking parts of a start (spawn, bootstrap
//! payload, connect and handshake) run on another thread.

use std::net::TcpListener;
use std::time::Duration;

use futures_lite::future;

/// A socket server that accepts the connection (the kernel does, from its
/// backlog) but never answers the handshake: the start waits for
/// `CONNECT_TIMEOUT` (10 s). Meanwhile, on the same single-threaded
/// executor, a timer of 200 ms must fire: had the start blocked the thread,
/// the timer could not even be polled before the start failed.
#[test]
fn a_stuck_socket_handshake_leaves_the_executor_free() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let spec = format!("socket={address}//token=0123456789abcdef");
    let outcome = future::block_on(future::or(
        async {
            let r = execnet::makegateway(&spec).await;
            Err(format!("the start returned first: {:?}", r.err()))
        },
        async {
            async_io::Timer::after(Duration::from_millis(200)).await;
            Ok(())
        },
    ));
    // Dropping the start future abandons the handshake; its thread gives up
    // at the connect timeout.
    drop(listener);
    outcome.unwrap();
}

/// Two popen starts polled by one single-threaded executor both complete,
/// and each gateway answers.
#[test]
fn two_popen_starts_on_one_executor_thread() {
    future::block_on(async {
        let (a, b) =
            future::zip(execnet::makegateway("popen"), execnet::makegateway("popen")).await;
        for gw in [a.unwrap(), b.unwrap()] {
            let ch = gw.remote_exec("channel.send(6 * 7)").await.unwrap();
            let v: i64 = ch.receive().await.unwrap();
            assert_eq!(v, 42);
            gw.exit().await.unwrap();
        }
    });
}
