//! `exit` and `terminate(timeout)` return within their documented bounds
//! whatever the remote is doing: sleeping, blocked in a C call, ignoring
//! SIGINT, stopped with SIGSTOP, running non-daemon threads. See
//! docs/reliability.md.

use std::time::{Duration, Instant};

use execnet::blocking::makegateway;
use execnet::EXIT_TIMEOUT;
use execnet_tests::faults::signal;
use execnet_tests::{assert_reaped, bounded, LIMIT};

/// What `terminate`/`exit` may add to their grace: kill, reap, join.
const SLACK: Duration = Duration::from_millis(1500);
const GRACE: Duration = Duration::from_millis(500);

const SCENARIOS: &[(&str, &str)] = &[
    ("sleep", "import time\ntime.sleep(1e6)"),
    ("select() in C", "import select\nselect.select([], [], [], 1e6)"),
    ("blocking read on a pipe", "import os\nr, w = os.pipe()\nos.read(r, 1)"),
    (
        "ignoring SIGINT",
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    try:\n        time.sleep(1e6)\n    except BaseException:\n        pass\n",
    ),
    (
        "non-daemon threads",
        "import threading, time\nfor _ in range(3):\n    threading.Thread(target=time.sleep, args=(1e6,)).start()\ntime.sleep(1e6)",
    ),
    ("SIGSTOP", "import time\ntime.sleep(1e6)"),
];

/// Runs one scenario and ends it with `exit` or `terminate(GRACE)`;
/// returns how long that took.
fn end_one(name: &str, source: &str, use_exit: bool) -> Duration {
    let gw = makegateway("popen").unwrap();
    let pid = gw.info().pid;
    let ch = gw
        .remote_exec(&format!("channel.send(1)\n{source}"))
        .unwrap();
    assert_eq!(ch.receive::<i64>().unwrap(), 1, "{name}");
    std::thread::sleep(Duration::from_millis(50));
    if name == "SIGSTOP" {
        signal(pid, 19);
    }
    let t0 = Instant::now();
    let how = if use_exit {
        // Ok when the worker answered, Err(Timeout) when it had to be killed.
        format!("exit -> {:?}", gw.exit().err())
    } else {
        gw.terminate(Some(GRACE));
        "terminate(500 ms)".to_string()
    };
    let took = t0.elapsed();
    let bound = if use_exit { EXIT_TIMEOUT } else { GRACE } + SLACK;
    assert!(took < bound, "{name}: {how} took {took:?} > {bound:?}");
    assert!(ch.receive::<i64>().is_err(), "{name}");
    assert_reaped(pid, Duration::from_secs(2));
    eprintln!("{name}: {how} in {took:?}");
    took
}

fn run_all(use_exit: bool) {
    // In parallel: the slow ones (exit on a stopped worker waits
    // EXIT_TIMEOUT) would add up.
    std::thread::scope(|s| {
        for (name, source) in SCENARIOS {
            s.spawn(move || end_one(name, source, use_exit));
        }
    });
}

#[test]
fn terminate_returns_within_its_grace() {
    bounded(LIMIT, || run_all(false))
}

#[test]
fn exit_returns_within_exit_timeout() {
    bounded(LIMIT, || run_all(true))
}
