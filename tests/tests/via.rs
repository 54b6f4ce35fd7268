//! via gateways: a target started from another gateway's host with its
//! bytes relayed through a channel (`popen//via=GWID`,
//! `ssh=…//via=GWID`), chains of them, and how they end.

use std::time::{Duration, Instant};

use execnet::blocking::{Gateway, Group};
use execnet::Error;
use execnet_tests::sshd::Sshd;
use execnet_tests::{bounded, gw, process_alive, skip, suite, wait_until, LIMIT};

/// Starts `spec` through `via`.
fn through(via: &Gateway, spec: &str) -> Result<Gateway, Error> {
    Gateway::builder(&format!("{spec}//via={}", via.id()))?
        .via_gateway(via.clone())
        .start()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn suite_via_popen_and_via_via() {
    bounded(LIMIT, || {
        let gw0 = gw();
        let t0 = Instant::now();
        let gw1 = through(&gw0, "popen").unwrap();
        eprintln!("via gateway start: {:?}", t0.elapsed());
        // Started by gw0's worker, with gw0's interpreter.
        assert_eq!(ppid(gw1.info().pid), Some(gw0.info().pid));
        assert_eq!(gw1.info().executable, gw0.info().executable);
        suite::run(&gw1);
        let gw2 = through(&gw1, "popen").unwrap();
        assert_eq!(ppid(gw2.info().pid), Some(gw1.info().pid));
        suite::run(&gw2);
        let pids = [gw2.info().pid, gw1.info().pid];
        gw2.exit().unwrap();
        gw1.exit().unwrap();
        for pid in pids {
            assert!(
                wait_until(Duration::from_secs(5), || !process_alive(pid)),
                "{pid} alive after exit"
            );
        }
        // The relays are done: gw0 runs nothing any more.
        assert!(wait_until(Duration::from_secs(5), || gw0
            .remote_status()
            .is_ok_and(|s| s.numexecuting == 0)));
        gw0.exit().unwrap();
    })
}

#[test]
fn popen_keys_over_via() {
    bounded(LIMIT, || {
        let gw0 = gw();
        let tmp = execnet_tests::TempDir::new("viachdir");
        let dir = tmp.path().join("x");
        let gw1 = through(
            &gw0,
            &format!(
                "popen//python=/usr/bin/python3//chdir={}//env:EXECNET_V=1 2//nice=2",
                dir.display()
            ),
        )
        .unwrap();
        assert_eq!(gw1.info().executable, "/usr/bin/python3");
        assert_eq!(std::path::Path::new(&gw1.info().cwd), dir);
        let (v, nice0, nice1): (String, i64, i64) = gw1
            .remote_exec("import os; channel.send((os.environ['EXECNET_V'], 0, os.nice(0)))")
            .unwrap()
            .receive()
            .unwrap();
        let ours: i64 = gw0
            .remote_exec("import os; channel.send(os.nice(0))")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!((v.as_str(), nice0, nice1), ("1 2", 0, (ours + 2).min(19)));
        match through(&gw0, "popen//python=/nonexistent/python3") {
            Err(Error::InterpreterNotFound { python, reason }) => {
                assert_eq!(python, "/nonexistent/python3");
                assert!(reason.contains("No such file"), "{reason}");
            }
            other => panic!("expected InterpreterNotFound, got {other:?}"),
        }
    })
}

#[test]
fn group_resolves_via_ids() {
    bounded(LIMIT, || {
        let group = Group::new();
        let gw0 = group.makegateway("popen//id=base").unwrap();
        let gw1 = group.makegateway("popen//via=base").unwrap();
        assert_eq!(ppid(gw1.info().pid), Some(gw0.info().pid));
        suite::echo(&gw1);
        let s = group.makegateway("socket//installvia=base").unwrap();
        suite::echo(&s);
        group.terminate(Some(Duration::from_secs(5)));
    })
}

#[test]
fn killing_the_target_kills_it_on_the_via_host() {
    bounded(LIMIT, || {
        let gw0 = gw();
        let gw1 = through(&gw0, "popen").unwrap();
        let pid = gw1.info().pid;
        let ch = gw1
            .remote_exec("import time\nwhile 1: time.sleep(1)")
            .unwrap();
        let t0 = Instant::now();
        gw1.kill();
        assert!(ch.receive_value(Some(Duration::from_secs(10))).is_err());
        assert!(
            wait_until(Duration::from_secs(5), || !process_alive(pid)),
            "target {pid} alive after kill"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        // gw0 is unharmed.
        suite::echo(&gw0);
    })
}

#[test]
fn ending_the_via_gateway_ends_its_targets_with_an_error() {
    bounded(LIMIT, || {
        let gw0 = gw();
        let gw1 = through(&gw0, "popen").unwrap();
        let gw2 = through(&gw1, "popen").unwrap();
        let pids = [gw1.info().pid, gw2.info().pid];
        let c1 = gw1.remote_exec("channel.receive()").unwrap();
        let c2 = gw2.remote_exec("channel.receive()").unwrap();
        let t0 = Instant::now();
        // Killed, not asked: the worst case.
        gw0.kill();
        for (name, ch) in [("gw1", &c1), ("gw2", &c2)] {
            match ch.receive_value(Some(Duration::from_secs(10))) {
                Err(e @ (Error::WorkerDied { .. } | Error::ConnectionLost(_))) => {
                    eprintln!("{name}: {e}");
                }
                other => panic!("{name}: expected an error, got {other:?}"),
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // gw1's error names the gateway it went through.
        match c1.receive_value(None) {
            Err(e) => assert!(e.to_string().contains(gw0.id()), "{e}"),
            Ok(v) => panic!("{v:?}"),
        }
        for pid in pids {
            assert!(
                wait_until(Duration::from_secs(10), || !process_alive(pid)),
                "target {pid} outlived its via gateway"
            );
        }
    })
}

#[test]
fn ssh_via_a_gateway() {
    bounded(LIMIT, || {
        let sshd = match Sshd::start() {
            Ok(s) => s,
            Err(e) => return skip(&format!("cannot start sshd: {e}")),
        };
        let gw0 = gw();
        let spec = format!("ssh=sshd-user//ssh_config={}", sshd.ssh_config().display());
        let gw1 = through(&gw0, &spec).unwrap();
        assert_eq!(gw1.info().executable, "/usr/bin/python3");
        assert_eq!(gw1.remoteaddress(), Some("sshd-user"));
        suite::run(&gw1);
        // Via a via gateway, and the failures are still specific.
        let gw2 = through(&gw0, "popen").unwrap();
        let gw3 = through(&gw2, &spec).unwrap();
        suite::echo(&gw3);
        let e = through(&gw0, &format!("{spec}//python=/nonexistent/python3")).unwrap_err();
        assert!(matches!(e, Error::InterpreterNotFound { .. }), "{e:?}");
        let e = through(
            &gw0,
            &format!(
                "ssh=no-such-host.invalid//ssh_config={}",
                sshd.ssh_config().display()
            ),
        )
        .unwrap_err();
        assert!(matches!(e, Error::HostNotFound { .. }), "{e:?}");
    })
}

#[test]
fn exiting_the_via_gateway_ends_its_targets_with_an_error() {
    bounded(LIMIT, || {
        let gw0 = gw();
        let gw1 = through(&gw0, "popen").unwrap();
        let pid = gw1.info().pid;
        let c1 = gw1.remote_exec("channel.receive()").unwrap();
        let t0 = Instant::now();
        let exited = gw0.exit();
        eprintln!(
            "gw0.exit() with a live target: {exited:?} after {:?}",
            t0.elapsed()
        );
        match c1.receive_value(Some(Duration::from_secs(10))) {
            Err(e @ (Error::WorkerDied { .. } | Error::ConnectionLost(_))) => {
                assert!(e.to_string().contains(gw0.id()), "{e}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
        assert!(
            wait_until(Duration::from_secs(10), || !process_alive(pid)),
            "target {pid} outlived its via gateway"
        );
    })
}

/// pytest-xdist's `--px`: one proxy gateway with `execmodel=main_thread_only`
/// and several targets through it. The relay's exec returns once its target
/// runs, so the proxy's only exec thread is free for the next relay; a relay
/// that held it made the second start wait for the start timeout.
#[test]
fn several_targets_through_a_main_thread_only_proxy() {
    bounded(LIMIT, || {
        let proxy = Gateway::builder("popen//execmodel=main_thread_only")
            .unwrap()
            .start()
            .unwrap();
        let start = |_| {
            Gateway::builder(&format!("popen//via={}", proxy.id()))
                .unwrap()
                .via_gateway(proxy.clone())
                .startup_timeout(Duration::from_secs(10))
                .start()
        };
        let targets: Vec<Gateway> = (0..3).map(start).collect::<Result<_, _>>().unwrap();
        for t in &targets {
            assert_eq!(ppid(t.info().pid), Some(proxy.info().pid));
            suite::run(t);
        }
        // The proxy still runs code of its own (its main thread is free).
        let ch = proxy.remote_exec("channel.send(6 * 7)").unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 42);
        for t in targets {
            t.exit().unwrap();
        }
        proxy.exit().unwrap();
    })
}
