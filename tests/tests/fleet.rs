//! The fleet test bed (`execnet_tests::fleet`): hosts as network
//! namespaces, each with a real sshd, every host but the first reached
//! through the first with `ProxyJump` (and with `via=` a gateway on it).
//! Tests: start every host at once, a farm over a receive queue, faults mid
//! run (a host killed, a worker killed, a link gone silent): the affected
//! channels end with a typed error within a bound, their tasks go to the
//! others, every result arrives exactly once, `terminate` returns within
//! its bound. `EXECNET_FLEET_HOSTS=N` sets the size; `tests/fleet/run.sh N`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Channel, Gateway, Group};
use execnet::{Error, Value};
use execnet_tests::fleet::Fleet;
use execnet_tests::{bounded, skip, TempDir};

/// Each task is squared, slowly enough that the run lasts a while.
const FARM: &str = r#"
import os, time
server = os.environ["SSH_CONNECTION"].split()[2]
for task in channel:
    time.sleep(0.002)
    channel.send([task, task * task, server])
"#;

/// What happens to one host during the farm.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Every process in its namespace killed (sshd, sessions, workers).
    KillHost,
    /// Its Python worker SIGKILLed; sshd stays up.
    KillWorker,
    /// Its link silently drops everything.
    Silence,
}

/// What the farm saw.
struct Farm {
    time: Duration,
    per_host: Vec<usize>,
    /// For each fault: the host, how long until its channel ended, the error.
    detected: Vec<(usize, Fault, Duration, Error)>,
}

/// Runs `tasks` tasks over every gateway (up to 4 in flight each); after a
/// quarter of the results, applies `faults`. Checks that every result
/// arrives exactly once and from the right host, and that exactly the
/// faulted hosts' channels end.
fn farm(fleet: &mut Fleet, group: &Group, tasks: i64, faults: &[(usize, Fault)]) -> Farm {
    const WINDOW: usize = 4;
    let gws: Vec<Gateway> = group.gateways();
    let n = gws.len();
    let mc = group.remote_exec(FARM).unwrap();
    let channels: Vec<Channel> = mc.channels();
    let queue = mc.make_receive_queue(Some(Value::str("ENDED"))).unwrap();
    let mut pending: VecDeque<i64> = (0..tasks).collect();
    let mut in_flight: Vec<Vec<i64>> = vec![Vec::new(); n];
    let mut alive = vec![true; n];
    let mut results: BTreeMap<i64, usize> = BTreeMap::new();
    let mut faulted_at = None;
    let mut ended = Vec::new();
    let fill = |i: usize, pending: &mut VecDeque<i64>, in_flight: &mut Vec<Vec<i64>>| {
        while in_flight[i].len() < WINDOW {
            let Some(t) = pending.pop_front() else { break };
            if channels[i].send(&t).is_err() {
                // The host died and its end is not taken yet: the task
                // stays queued for the others.
                pending.push_front(t);
                break;
            }
            in_flight[i].push(t);
        }
    };
    let t0 = Instant::now();
    for i in 0..n {
        fill(i, &mut pending, &mut in_flight);
    }
    while results.len() < tasks as usize {
        let (ch, item) = queue
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("farm stalled at {} results: {e}", results.len()));
        // (channel ids are per gateway: tell them apart by gateway)
        let i = (0..n)
            .find(|&i| gws[i].id() == ch.gateway().id())
            .expect("a channel of ours");
        if item == Value::str("ENDED") {
            alive[i] = false;
            let at: Instant = faulted_at.expect("a channel ended before any fault");
            ended.push((i, at.elapsed()));
            pending.extend(in_flight[i].drain(..));
            for j in (0..n).filter(|&j| alive[j]) {
                fill(j, &mut pending, &mut in_flight);
            }
            assert!(alive.iter().any(|&a| a), "every host is gone");
            continue;
        }
        let (task, square, server): (i64, i64, String) =
            execnet::from_value(item).expect("[task, square, server]");
        assert_eq!(square, task * task);
        assert_eq!(server, fleet.hosts[i].addr, "result from the wrong host");
        assert!(
            results.insert(task, i).is_none(),
            "task {task} arrived twice"
        );
        in_flight[i].retain(|&t| t != task);
        if results.len() == tasks as usize / 4 && faulted_at.is_none() {
            faulted_at = Some(Instant::now());
            for &(h, fault) in faults {
                assert!(h > 0, "host 0 is the jump host");
                match fault {
                    Fault::KillHost => fleet.kill_host(h),
                    Fault::KillWorker => assert_eq!(fleet.kill_workers(h), 1, "host {h}"),
                    Fault::Silence => fleet.silence(h).unwrap(),
                }
            }
        }
        if alive[i] {
            fill(i, &mut pending, &mut in_flight);
        }
    }
    let time = t0.elapsed();
    // A silent host may be given up after the last result: wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ended.len() < faults.len() && Instant::now() < deadline {
        if let Ok((ch, item)) = queue.recv_timeout(Duration::from_millis(100)) {
            let i = (0..n).find(|&i| gws[i].id() == ch.gateway().id()).unwrap();
            assert_eq!(item, Value::str("ENDED"), "an item after the last result");
            ended.push((i, faulted_at.unwrap().elapsed()));
        }
    }
    let mut detected = Vec::new();
    for &(h, fault) in faults {
        let &(_, after) = ended
            .iter()
            .find(|&&(i, _)| i == h)
            .unwrap_or_else(|| panic!("host {h} ({fault:?}) never ended; ended: {ended:?}"));
        let err = channels[h]
            .waitclose(Some(Duration::from_secs(10)))
            .expect_err("a faulted host's channel ends with an error");
        detected.push((h, fault, after, err));
    }
    assert_eq!(
        ended.len(),
        faults.len(),
        "unfaulted hosts ended: {ended:?}"
    );
    // The others end cleanly once their input ends.
    for (i, ch) in channels.iter().enumerate() {
        if faults.iter().all(|&(h, _)| h != i) {
            ch.close_sending().unwrap();
            ch.waitclose(Some(Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("host {i}: {e}"));
        }
    }
    let per_host = (0..n)
        .map(|i| results.values().filter(|&&h| h == i).count())
        .collect();
    Farm {
        time,
        per_host,
        detected,
    }
}

fn fleet_or_skip(default: usize) -> Option<Fleet> {
    match Fleet::create(Fleet::size(default).max(4)) {
        Ok(f) => Some(f),
        Err(e) => {
            skip(&format!("cannot create the fleet: {e}"));
            None
        }
    }
}

#[test]
fn fleet_start_farm_and_a_host_killed_mid_run() {
    bounded(Duration::from_secs(300), || {
        let t0 = Instant::now();
        let Some(mut fleet) = fleet_or_skip(4) else {
            return;
        };
        let (setup, n) = (t0.elapsed(), fleet.hosts.len());

        // One host alone, then all at once.
        let t0 = Instant::now();
        let one = makegateway(&fleet.spec(n - 1)).unwrap();
        let one_start = t0.elapsed();
        one.exit().unwrap();
        let group = Group::new();
        let t0 = Instant::now();
        group
            .makegateways((0..n).map(|i| fleet.spec(i)))
            .unwrap_or_else(|e| panic!("makegateways: {e}"));
        let all_start = t0.elapsed();

        // Each gateway runs on its host; every host but the jump host was
        // reached from the jump host's address.
        let who = group
            .remote_exec("import os; channel.send(os.environ['SSH_CONNECTION'].split())")
            .unwrap()
            .receive_each::<Vec<String>>()
            .unwrap();
        for (i, conn) in who.iter().enumerate() {
            assert_eq!(
                conn[2], fleet.hosts[i].addr,
                "gateway {i} is not on its host"
            );
            if i > 0 {
                assert_eq!(
                    conn[0], fleet.hosts[0].addr,
                    "host {i} not reached through fh0"
                );
            }
        }

        // via=: a gateway on the jump host starts one on the last host.
        let jump = group.get("fh0").unwrap();
        let via = Gateway::builder(&format!(
            "ssh={}-direct//ssh_config={}//python=/usr/bin/python3//via=fh0",
            fleet.hosts[n - 1].name,
            fleet.ssh_config().display()
        ))
        .unwrap()
        .via_gateway(jump)
        .start()
        .unwrap();
        let conn: Vec<String> = via
            .remote_exec("import os; channel.send(os.environ['SSH_CONNECTION'].split())")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(
            (conn[0].as_str(), conn[2].as_str()),
            (
                fleet.hosts[0].addr.as_str(),
                fleet.hosts[n - 1].addr.as_str()
            )
        );
        via.exit().unwrap();

        const TASKS: i64 = 10_000;
        let victim = n - 1;
        let f = farm(&mut fleet, &group, TASKS, &[(victim, Fault::KillHost)]);
        let (_, _, detected, err) = &f.detected[0];
        assert!(
            matches!(err, Error::WorkerDied { .. } | Error::ConnectionLost(_)),
            "{err:?}"
        );
        // The error names the host through its gateway (id and address
        // fh<i>), whatever ssh's stderr says ("Connection to ADDR closed by
        // remote host", or "client_loop: send disconnect: Broken pipe" from
        // a client that was writing).
        let text = err.to_string();
        let host = &fleet.hosts[victim].name;
        assert!(text.contains(&format!("gateway {host} ({host})")), "{text}");
        assert!(*detected < Duration::from_secs(10), "{detected:?}");
        let t0 = Instant::now();
        group.terminate(Some(Duration::from_secs(2)));
        let terminate = t0.elapsed();
        eprintln!(
            "fleet of {n}: setup {setup:?}; one host start {one_start:?}, all {n} at once \
             {all_start:?}; farm of {TASKS} tasks in {:?} ({:.0} tasks/s), per host {:?}; \
             {} killed, detected after {detected:?}: {}; terminate {terminate:?}",
            f.time,
            TASKS as f64 / f.time.as_secs_f64(),
            f.per_host,
            fleet.hosts[victim].name,
            text.replace('\n', " "),
        );
        assert!(
            terminate < Duration::from_secs(10),
            "terminate took {terminate:?}"
        );
    })
}

#[test]
fn fleet_faults_mid_run() {
    bounded(Duration::from_secs(300), || {
        let Some(mut fleet) = fleet_or_skip(6) else {
            return;
        };
        let n = fleet.hosts.len();
        let group = Group::new();
        group
            .makegateways((0..n).map(|i| fleet.spec(i)))
            .unwrap_or_else(|e| panic!("makegateways: {e}"));
        const TASKS: i64 = 3000;
        // Issue 18's mix on a big fleet (4 hosts killed, 4 workers killed,
        // one link silent: 23 of 32 hosts left to finish the work); one of
        // each on the small fleet `cargo test` makes.
        let per_kind = if n >= 16 { 4 } else { 1 };
        let mut faults = vec![(n - 1, Fault::Silence)];
        for k in 0..per_kind {
            faults.push((n - 2 - k, Fault::KillHost));
            faults.push((n - 2 - per_kind - k, Fault::KillWorker));
        }
        let f = farm(&mut fleet, &group, TASKS, &faults);
        assert_eq!(f.detected.len(), faults.len(), "every faulty host detected");
        let mut lines = Vec::new();
        for (h, fault, after, err) in &f.detected {
            assert!(
                matches!(err, Error::WorkerDied { .. } | Error::ConnectionLost(_)),
                "host {h} ({fault:?}): {err:?}"
            );
            let host = &fleet.hosts[*h].name;
            assert!(
                err.to_string()
                    .contains(&format!("gateway {host} ({host})")),
                "host {h} ({fault:?}): the error does not name it: {err}"
            );
            // Keepalives every 2 s, 3 unanswered: a silent host in ~6 s.
            let bound = Duration::from_secs(if *fault == Fault::Silence { 20 } else { 10 });
            assert!(
                *after < bound,
                "host {h} ({fault:?}) detected after {after:?}"
            );
            lines.push(format!(
                "{} {fault:?}: {after:?}: {}",
                fleet.hosts[*h].name,
                err.to_string().replace('\n', " ")
            ));
        }
        let t0 = Instant::now();
        group.terminate(Some(Duration::from_secs(2)));
        let terminate = t0.elapsed();
        eprintln!(
            "fleet of {n}, faults: farm of {TASKS} tasks in {:?}, per host {:?}; {}; terminate {terminate:?}",
            f.time,
            f.per_host,
            lines.join("; ")
        );
        assert!(
            terminate < Duration::from_secs(10),
            "terminate took {terminate:?}"
        );
    })
}

/// Writes a tree of `files` small files (1-4 KiB, in 40 directories).
fn tree(root: &std::path::Path, files: usize) -> u64 {
    let mut bytes = 0;
    for f in 0..files {
        let dir = root.join(format!("d{:02}/sub{}", f % 40, f % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 1024 + (f * 613) % 3072;
        let data: Vec<u8> = (0..len).map(|i| ((i * 31 + f * 7) % 251) as u8).collect();
        std::fs::write(dir.join(format!("f{f}.dat")), &data).unwrap();
        bytes += len as u64;
    }
    bytes
}

/// Every file of `a` is in `b` with the same content, and no more.
fn same_tree(a: &std::path::Path, b: &std::path::Path) -> bool {
    let out = std::process::Command::new("diff")
        .args(["-rq"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    out.status.success()
}

/// rsync of a 2,000-file tree to every host at once, against `tar | ssh
/// tar` to the same hosts (in parallel, through the same jump host) in the
/// same run. The hosts share our file system, so each gets its own
/// destination directory.
#[test]
fn fleet_rsync_vs_tar() {
    bounded(Duration::from_secs(300), || {
        let Some(fleet) = fleet_or_skip(4) else {
            return;
        };
        let n = fleet.hosts.len();
        const FILES: usize = 2000;
        let tmp = TempDir::new("fleet-rsync");
        let src = tmp.path().join("src");
        let bytes = tree(&src, FILES);
        let group = Group::new();
        group
            .makegateways((0..n).map(|i| fleet.spec(i)))
            .unwrap_or_else(|e| panic!("makegateways: {e}"));
        let dest = |how: &str, i: usize| tmp.path().join(format!("{how}-{i}"));

        let mut sync = execnet::blocking::RSync::new(&src);
        for (i, gw) in group.gateways().iter().enumerate() {
            sync.add_target(gw, dest("rsync", i), false);
        }
        let t0 = Instant::now();
        let stats = sync.send().unwrap();
        let rsync = t0.elapsed();
        assert_eq!(stats.files_sent, (FILES * n) as u64, "{stats:?}");

        let t0 = Instant::now();
        let tars: Vec<std::process::Child> = (0..n)
            .map(|i| {
                let cmd = format!(
                    "tar -C {} -cf - . | ssh -F {} {} 'mkdir -p {d} && tar -C {d} -xf -'",
                    src.display(),
                    fleet.ssh_config().display(),
                    fleet.hosts[i].name,
                    d = dest("tar", i).display()
                );
                std::process::Command::new("sh")
                    .args(["-c", &cmd])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut t in tars {
            assert!(t.wait().unwrap().success());
        }
        let tar = t0.elapsed();
        for i in 0..n {
            assert!(
                same_tree(&src, &dest("rsync", i)),
                "rsync to host {i} differs"
            );
            assert!(same_tree(&src, &dest("tar", i)), "tar to host {i} differs");
        }
        group.terminate(Some(Duration::from_secs(2)));
        eprintln!(
            "fleet of {n}: {FILES} files ({} KiB) to every host: rsync {rsync:?}, \
             tar | ssh tar {tar:?} (ratio {:.2})",
            bytes / 1024,
            rsync.as_secs_f64() / tar.as_secs_f64()
        );
    })
}

/// A host without Python: starting every host at once fails for that one
/// with `InterpreterNotFound`, the others start and work; our own Python is
/// untouched.
#[test]
fn fleet_host_without_python() {
    bounded(Duration::from_secs(300), || {
        let Some(fleet) = fleet_or_skip(4) else {
            return;
        };
        let n = fleet.hosts.len();
        let victim = n - 1;
        fleet.remove_python(victim).unwrap();
        let group = Group::new();
        let t0 = Instant::now();
        let err = group
            .makegateways((0..n).map(|i| fleet.spec(i)))
            .expect_err("a host without python");
        let took = t0.elapsed();
        assert!(
            matches!(&err, Error::InterpreterNotFound { python, .. } if python.contains("python3")),
            "{err:?}"
        );
        let started: Vec<String> = group
            .gateways()
            .iter()
            .map(|g| g.id().to_string())
            .collect();
        let want: Vec<String> = (0..victim).map(|i| fleet.hosts[i].name.clone()).collect();
        assert_eq!(started, want);
        let mc = group.remote_exec("channel.send(6 * 7)").unwrap();
        assert_eq!(mc.receive_each::<i64>().unwrap(), vec![42; victim]);
        group.terminate(Some(Duration::from_secs(2)));
        let ours = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "pass"])
            .status()
            .unwrap();
        assert!(ours.success(), "our python3 was touched");
        eprintln!(
            "fleet of {n}: {} without python: makegateways failed after {took:?} with: {err}",
            fleet.hosts[victim].name
        );
    })
}
