//! Groups: ids, lookup, concurrent start, termination that always returns
//! (ports of execnet's testing/test_multi.py `TestGroup` and more).

use std::time::{Duration, Instant};

use execnet::blocking::Group;
use execnet::{Error, TERMINATE_SLACK};
use execnet_tests::{assert_reaped, bounded, process_alive, wait_until, LIMIT};

const T: Duration = Duration::from_secs(10);

#[test]
fn container_basics() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen//id=hello"]).unwrap();
        assert_eq!(group.len(), 2);
        let ids: Vec<String> = group
            .gateways()
            .iter()
            .map(|g| g.id().to_string())
            .collect();
        assert_eq!(ids, ["gw0", "hello"]);
        let hello = group.get("hello").unwrap();
        assert_eq!(group.get_index(1).unwrap().info().pid, hello.info().pid);
        assert_eq!(group.get_index(0).unwrap().id(), "gw0");
        assert!(group.get_index(2).is_none());
        assert!(group.contains("hello"));
        assert!(!group.contains("nope"));
        assert!(group.get("nope").is_none());
        // Iteration in creation order.
        let iterated: Vec<String> = (&group).into_iter().map(|g| g.id().to_string()).collect();
        assert_eq!(iterated, ids);
        // Duplicate id.
        let e = group.makegateway("popen//id=hello").unwrap_err();
        assert!(
            matches!(e, Error::Spec(ref m) if m.contains("duplicate")),
            "{e}"
        );
        // The default spec.
        assert_eq!(group.defaultspec(), "popen");
        group.set_defaultspec("popen//id=fromdefault");
        let d = group.makegateway("").unwrap();
        assert_eq!(d.id(), "fromdefault");
        assert_eq!(group.len(), 3);
        // An exited gateway leaves the group (execnet unregisters it).
        let pid = hello.info().pid;
        hello.exit().unwrap();
        assert!(!group.contains("hello"));
        assert_eq!(group.len(), 2);
        assert_reaped(pid, T);
        // Its id is free again.
        group.set_defaultspec("popen");
        let again = group.makegateway("popen//id=hello").unwrap();
        assert_eq!(again.id(), "hello");
        let pids: Vec<u32> = group.gateways().iter().map(|g| g.info().pid).collect();
        group.terminate(Some(Duration::from_secs(2)));
        assert!(group.is_empty());
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

#[test]
fn makegateways_duplicate_id_starts_nothing() {
    bounded(LIMIT, || {
        let group = Group::new();
        let e = group
            .makegateways(["popen//id=a", "popen//id=a"])
            .unwrap_err();
        assert!(matches!(e, Error::Spec(_)));
        assert!(group.is_empty());
        // The reservation of "a" was given back.
        assert_eq!(group.makegateway("popen//id=a").unwrap().id(), "a");
    })
}

#[test]
fn makegateways_failure_keeps_the_others() {
    bounded(LIMIT, || {
        let group = Group::new();
        let e = group
            .makegateways(["popen", "popen//python=/nonexistent/python", "popen"])
            .unwrap_err();
        assert!(matches!(e, Error::InterpreterNotFound { .. }), "{e}");
        let ids: Vec<String> = group
            .gateways()
            .iter()
            .map(|g| g.id().to_string())
            .collect();
        assert_eq!(ids, ["gw0", "gw2"]);
        assert!(Group::with_specs(["popen//python=/nonexistent/python"]).is_err());
    })
}

#[test]
fn sixteen_gateways_start_together() {
    bounded(Duration::from_secs(120), || {
        // Warm the interpreter's files into the page cache first.
        let group = Group::new();
        group.makegateway("popen").unwrap();
        group.terminate(None);
        let t0 = Instant::now();
        let one = Group::with_specs(["popen"]).unwrap();
        let t_one = t0.elapsed();
        drop(one);
        let t0 = Instant::now();
        let group = Group::new();
        let gws = group.makegateways(vec!["popen"; 16]).unwrap();
        let t_sixteen = t0.elapsed();
        eprintln!("makegateways: 1 gateway in {t_one:?}, 16 in {t_sixteen:?}");
        assert_eq!(gws.len(), 16);
        let ids: Vec<String> = gws.iter().map(|g| g.id().to_string()).collect();
        let want: Vec<String> = (0..16).map(|i| format!("gw{i}")).collect();
        assert_eq!(ids, want);
        let mc = group
            .remote_exec("import os; channel.send(os.getpid())")
            .unwrap();
        let pids: Vec<u32> = mc.receive_each().unwrap();
        let expect: Vec<u32> = gws.iter().map(|g| g.info().pid).collect();
        assert_eq!(pids, expect);
        // On 2 cores sixteen interpreters cannot start in the time of one,
        // but far from sixteen times it.
        assert!(
            t_sixteen < t_one * 8 + Duration::from_secs(1),
            "16 gateways took {t_sixteen:?}, one {t_one:?}"
        );
        let t0 = Instant::now();
        group.terminate(Some(Duration::from_secs(2)));
        eprintln!("terminate of 16 idle gateways: {:?}", t0.elapsed());
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

fn terminate_within(group: &Group, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    group.terminate(Some(timeout));
    let took = t0.elapsed();
    assert!(
        took < timeout + TERMINATE_SLACK,
        "terminate({timeout:?}) took {took:?}"
    );
    took
}

#[test]
fn terminate_while_remotes_sleep() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen"]).unwrap();
        let pids: Vec<u32> = group.gateways().iter().map(|g| g.info().pid).collect();
        let mc = group
            .remote_exec("import time; channel.send(1); time.sleep(100)")
            .unwrap();
        let _: Vec<i64> = mc.receive_each().unwrap();
        let took = terminate_within(&group, Duration::from_secs(1));
        eprintln!("terminate with sleeping remotes: {took:?}");
        for pid in pids {
            assert_reaped(pid, T);
        }
        // The channels ended (the interrupted sleep is a remote error).
        let r = mc.waitclose(Some(T));
        assert!(!matches!(r, Err(Error::Timeout)), "{r:?}");
    })
}

#[test]
fn terminate_when_remotes_ignore_signals() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen", "popen"]).unwrap();
        let pids: Vec<u32> = group.gateways().iter().map(|g| g.info().pid).collect();
        let _mc = group
            .remote_exec(
                r#"
                import signal, time
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                channel.send("ready")
                while True:
                    try:
                        time.sleep(100)
                    except BaseException:
                        pass
                "#,
            )
            .unwrap();
        let _ready: Vec<String> = _mc.receive_each().unwrap();
        let took = terminate_within(&group, Duration::from_millis(500));
        eprintln!("terminate with signal-ignoring remotes: {took:?}");
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn terminate_stopped_workers() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen"]).unwrap();
        let pids: Vec<u32> = group.gateways().iter().map(|g| g.info().pid).collect();
        for &pid in &pids {
            signal(pid, "-STOP");
        }
        let took = terminate_within(&group, Duration::from_millis(500));
        eprintln!("terminate of SIGSTOPped workers: {took:?}");
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

#[test]
fn terminate_with_a_dead_worker() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen"]).unwrap();
        let pids: Vec<u32> = group.gateways().iter().map(|g| g.info().pid).collect();
        signal(pids[0], "-KILL");
        assert!(wait_until(T, || !process_alive(pids[0])));
        terminate_within(&group, Duration::from_millis(500));
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

#[test]
fn drop_terminates_what_is_left() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen"]).unwrap();
        let pids: Vec<u32> = group.gateways().iter().map(|g| g.info().pid).collect();
        let _mc = group.remote_exec("import time; time.sleep(100)").unwrap();
        let t0 = Instant::now();
        drop(group);
        assert!(t0.elapsed() < execnet::DROP_TIMEOUT + TERMINATE_SLACK);
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

#[test]
fn async_group() {
    bounded(LIMIT, || {
        smol::block_on(async {
            let group = execnet::Group::with_specs(["popen", "popen"])
                .await
                .unwrap();
            let more = group.makegateways(["popen//id=x"]).await.unwrap();
            assert_eq!(more[0].id(), "x");
            let mc = group
                .remote_exec("channel.send(channel.receive() * 2)")
                .await
                .unwrap();
            mc.send_each(&21).await.unwrap();
            let got: Vec<i64> = mc.receive_each().await.unwrap();
            assert_eq!(got, [42, 42, 42]);
            group.terminate(Some(Duration::from_secs(1))).await;
            assert!(group.is_empty());
        })
    })
}

#[test]
fn via_gateways_start_in_one_batch_and_terminate_first() {
    bounded(LIMIT, || {
        let group = Group::new();
        let gws = group
            .makegateways(["popen//via=master//id=sub", "popen//id=master"])
            .unwrap();
        let ids: Vec<&str> = gws.iter().map(|g| g.id()).collect();
        assert_eq!(ids, ["sub", "master"]);
        let (sub, master) = (&gws[0], &gws[1]);
        assert_ne!(sub.info().pid, master.info().pid);
        let ch = sub
            .remote_exec("import os; channel.send(os.getppid())")
            .unwrap();
        assert_eq!(ch.receive::<u32>().unwrap(), master.info().pid);
        let pids = [sub.info().pid, master.info().pid];
        let took = terminate_within(&group, Duration::from_secs(5));
        eprintln!("terminate of a via pair: {took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

/// `set_max_concurrent_starts(2)`: of 6 popen gateways at most 2 start at
/// once. Each interpreter is launched through a shell wrapper that logs its
/// start time and then waits 0.3 s before exec'ing python, so a start takes
/// at least 0.3 s: bounded to 2, any 3 consecutive logged starts span at
/// least 0.3 s (the third waits for a finished handshake); unbounded, all 6
/// would be logged within milliseconds.
#[test]
fn makegateways_bounded_concurrency() {
    bounded(LIMIT, || {
        let dir = std::env::temp_dir().join(format!("execnet-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("starts.log");
        let wrap = dir.join("wrap.sh");
        std::fs::write(
            &wrap,
            format!(
                "date +%s.%N >> '{}'\nsleep 0.3\nexec /usr/bin/python3 \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        let group = Group::new();
        assert_eq!(group.max_concurrent_starts(), None);
        group.set_max_concurrent_starts(Some(2));
        assert_eq!(group.max_concurrent_starts(), Some(2));
        let spec = format!("popen//python=/bin/sh {}", wrap.display());
        let gws = group.makegateways(vec![spec; 6]).unwrap();
        assert_eq!(gws.len(), 6);
        let mc = group
            .remote_exec("import os; channel.send(os.getpid())")
            .unwrap();
        let pids: Vec<u32> = mc.receive_each().unwrap();
        assert_eq!(pids.len(), 6);
        let mut starts: Vec<f64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        starts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(starts.len(), 6, "{starts:?}");
        for w in starts.windows(3) {
            assert!(
                w[2] - w[0] >= 0.29,
                "3 starts in flight at once: {starts:?}"
            );
        }
        group.terminate(Some(T));
        let _ = std::fs::remove_dir_all(&dir);
    });
}
