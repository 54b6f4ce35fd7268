//! The fleet test bed (`execnet_tests::fleet`): hosts as network
//! namespaces, each with a real sshd, every host but the first reached
//! through the first with `ProxyJump`. A smoke test: start every host at
//! once, run a farm over a receive queue, kill one host mid-run; its
//! channel ends with a typed error, its tasks go to the others, every
//! result arrives exactly once, and `terminate` returns within its bound.
//! `EXECNET_FLEET_HOSTS=N` sets the size (default 4); `tests/fleet/run.sh`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Channel, Group};
use execnet::{Error, Value};
use execnet_tests::fleet::Fleet;
use execnet_tests::{bounded, skip};

/// Each task is squared, slowly enough that the run lasts a while.
const FARM: &str = r#"
import os, time
server = os.environ["SSH_CONNECTION"].split()[2]
for task in channel:
    time.sleep(0.002)
    channel.send([task, task * task, server])
"#;

#[test]
fn fleet_start_farm_and_a_host_killed_mid_run() {
    bounded(Duration::from_secs(300), || {
        let n = Fleet::size(4).max(2);
        let t0 = Instant::now();
        let mut fleet = match Fleet::create(n) {
            Ok(f) => f,
            Err(e) => return skip(&format!("cannot create the fleet: {e}")),
        };
        let setup = t0.elapsed();

        // One host alone, then all at once.
        let t0 = Instant::now();
        let one = makegateway(&fleet.spec(n - 1)).unwrap();
        let one_start = t0.elapsed();
        one.exit().unwrap();
        let group = Group::new();
        let t0 = Instant::now();
        let gws = group
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

        // The farm: up to WINDOW tasks in flight per host; a host's
        // unfinished tasks go back to the queue when its channel ends.
        const TASKS: i64 = 2000;
        const WINDOW: usize = 4;
        let victim = n - 1;
        let mc = group.remote_exec(FARM).unwrap();
        let channels: Vec<Channel> = mc.channels();
        let queue = mc.make_receive_queue(Some(Value::str("ENDED"))).unwrap();
        let mut pending: VecDeque<i64> = (0..TASKS).collect();
        let mut in_flight: Vec<Vec<i64>> = vec![Vec::new(); n];
        let mut alive = vec![true; n];
        let mut results: BTreeMap<i64, (i64, usize)> = BTreeMap::new();
        let mut killed_at = None;
        let mut detected = None;
        let farm_start = Instant::now();
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
        for i in 0..n {
            fill(i, &mut pending, &mut in_flight);
        }
        while results.len() < TASKS as usize {
            let (ch, item) = queue
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("farm stalled at {} results: {e}", results.len()));
            // (channel ids are per gateway: tell them apart by gateway)
            let i = (0..n)
                .find(|&i| gws[i].id() == ch.gateway().id())
                .expect("a channel of ours");
            if item == Value::str("ENDED") {
                alive[i] = false;
                assert_eq!(i, victim, "host {i} ended without being killed");
                detected = Some(killed_at.map(|k: Instant| k.elapsed()));
                pending.extend(in_flight[i].drain(..));
                for j in (0..n).filter(|&j| alive[j]) {
                    fill(j, &mut pending, &mut in_flight);
                }
                continue;
            }
            let (task, square, server): (i64, i64, String) =
                execnet::from_value(item).expect("[task, square, server]");
            assert_eq!(square, task * task);
            assert_eq!(server, fleet.hosts[i].addr);
            assert!(
                results.insert(task, (square, i)).is_none(),
                "task {task} arrived twice"
            );
            in_flight[i].retain(|&t| t != task);
            if results.len() == TASKS as usize / 4 && killed_at.is_none() {
                assert!(!in_flight[victim].is_empty());
                killed_at = Some(Instant::now());
                fleet.kill_host(victim);
            }
            if alive[i] {
                fill(i, &mut pending, &mut in_flight);
            }
        }
        let farm_time = farm_start.elapsed();
        let detected = detected
            .flatten()
            .expect("the killed host's channel ended during the farm");

        // The victim's channel ends with a typed error; the others' work
        // is complete and each ends cleanly once its input ends.
        let err = channels[victim]
            .waitclose(Some(Duration::from_secs(10)))
            .expect_err("a killed host's channel ends with an error");
        assert!(
            matches!(err, Error::WorkerDied { .. } | Error::ConnectionLost(_)),
            "{err:?}"
        );
        let victim_host = &fleet.hosts[victim];
        let text = err.to_string();
        assert!(
            text.contains(&victim_host.addr),
            "the error does not name {}: {text}",
            victim_host.addr
        );
        for (i, ch) in channels.iter().enumerate().filter(|&(i, _)| i != victim) {
            ch.close_sending().unwrap();
            ch.waitclose(Some(Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("host {i}: {e}"));
        }
        let per_host: Vec<usize> = (0..n)
            .map(|i| results.values().filter(|&&(_, h)| h == i).count())
            .collect();
        assert!(per_host[..victim].iter().all(|&c| c > 0), "{per_host:?}");
        let t0 = Instant::now();
        group.terminate(Some(Duration::from_secs(2)));
        let terminate = t0.elapsed();
        eprintln!(
            "fleet of {n}: setup {setup:?}; one host start {one_start:?}, all {n} at once \
             {all_start:?}; farm of {TASKS} tasks in {farm_time:?} ({:.0} tasks/s), per host \
             {per_host:?}; {} killed, detected after {detected:?}: {text}; terminate {terminate:?}",
            TASKS as f64 / farm_time.as_secs_f64(),
            victim_host.name,
        );
        assert!(
            detected < Duration::from_secs(10),
            "detected after {detected:?}"
        );
        assert!(
            terminate < Duration::from_secs(10),
            "terminate took {terminate:?}"
        );
    })
}
