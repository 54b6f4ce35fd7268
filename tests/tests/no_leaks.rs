//! After gateways end in every way they can, this process has no child
//! processes left (no zombies) and no threads beyond its baseline.
//!
//! One test in its own binary: the checks look at the whole process.

use std::time::Duration;

use execnet::blocking::{makegateway, Group};
use execnet::Value;
use execnet_tests::faults::children;
use execnet_tests::{bounded, wait_until};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |rd| rd.count())
}

fn scenarios() {
    // Clean exit.
    let gw = makegateway("popen").unwrap();
    gw.remote_exec("channel.send(1)")
        .unwrap()
        .receive::<i64>()
        .unwrap();
    gw.exit().unwrap();
    // Drop with a running exec.
    let gw = makegateway("popen").unwrap();
    let ch = gw.remote_exec("import time; time.sleep(100)").unwrap();
    drop(gw);
    drop(ch);
    // Terminate of code that ignores interrupts, with a grandchild.
    let gw = makegateway("popen").unwrap();
    let _ch = gw
        .remote_exec(
            "import subprocess, time\nsubprocess.Popen(['sleep', '100'])\nwhile True:\n    try:\n        time.sleep(100)\n    except BaseException:\n        pass\n",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    gw.terminate(Some(Duration::from_millis(300)));
    // Killed from outside.
    let gw = makegateway("popen").unwrap();
    let ch = gw.remote_exec("channel.receive()").unwrap();
    gw.kill();
    assert!(ch.receive::<Value>().is_err());
    drop(ch);
    drop(gw);
    // The worker exits by itself.
    let gw = makegateway("popen").unwrap();
    let ch = gw.remote_exec("import os; os._exit(0)").unwrap();
    assert!(ch.receive::<Value>().is_err());
    drop(ch);
    drop(gw);
    // A group dropped with gateways in it, and a callback on one.
    let group = Group::new();
    for _ in 0..3 {
        group.makegateway("popen").unwrap();
    }
    let ch = group.gateways()[0]
        .remote_exec("channel.receive()")
        .unwrap();
    ch.set_callback(|_| {}, Some(Value::Null)).unwrap();
    drop(ch);
    drop(group);
    // Bootstrap failures.
    assert!(makegateway("popen//python=/bin/false").is_err());
    assert!(makegateway("popen//python=/nonexistent").is_err());
}

#[test]
fn no_child_or_thread_outlives_its_gateway() {
    bounded(Duration::from_secs(120), || {
        // Warm up lazily created helpers (the async-io timer thread).
        let gw = makegateway("popen").unwrap();
        let ch = gw.remote_exec("channel.send(1)").unwrap();
        let _ = ch.receive_timeout::<i64>(Duration::from_secs(10));
        // The check below is only meaningful if the kernel lists children.
        assert!(
            children().contains(&gw.info().pid),
            "/proc/self/task/*/children does not list the worker"
        );
        drop(ch);
        gw.exit().unwrap();
        assert!(wait_until(Duration::from_secs(5), || children().is_empty()));
        let baseline = threads();
        scenarios();
        // The bounded() runner thread is ours; everything else must be gone.
        assert!(
            wait_until(Duration::from_secs(10), || children().is_empty()),
            "children left: {:?}",
            children()
        );
        assert!(
            wait_until(Duration::from_secs(10), || threads() <= baseline),
            "threads: {} now, {} before",
            threads(),
            baseline
        );
    })
}
