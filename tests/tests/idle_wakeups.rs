//! An idle gateway costs no CPU: its reader thread sleeps until input
//! arrives or a blocking receiver wants to read itself (a wake-up
//! descriptor in its poll), instead of waking every few milliseconds to
//! look. Counted, not timed: the reader thread's voluntary context
//! switches (`/proc/self/task/TID/status`) over a second of idleness.
//!
//! The hand-over that the periodic wake-ups used to serve is checked too:
//! a blocking receive that starts while the reader thread waits for input
//! takes over the reading (a channel's callback runs on the thread that
//! reads its item), on every transport that polls (popen, fork, socket,
//! ssh, and a gateway with a resource limit).
//!
//! The tests of this file run one at a time (`SERIAL`): they find a
//! gateway's reader thread as the `execnet-reader` thread that was not
//! there before the gateway started.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use execnet::blocking::{makegateway, Gateway};
use execnet::Value;
use execnet_tests::sshd::Sshd;
use execnet_tests::{bounded, skip, LIMIT};

/// One test at a time: reader threads are told apart by what appeared.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long the gateways are watched while idle.
const IDLE: Duration = Duration::from_secs(1);

/// Wake-ups of an idle reader thread over [`IDLE`] that still count as
/// "does not wake periodically": a few for whatever settles after the last
/// round trip. Polling every 20 ms gave ~50, the 2 ms grace loop ~500.
const FEW: u64 = 10;

fn reader_threads() -> BTreeSet<u32> {
    let mut tids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "execnet-reader" {
            if let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                tids.insert(tid);
            }
        }
    }
    tids
}

/// The `execnet-reader` threads that `start` adds (exactly one expected).
fn started_with_reader(start: impl FnOnce() -> Gateway) -> (Gateway, u32) {
    let before = reader_threads();
    let gw = start();
    let new: Vec<u32> = reader_threads().difference(&before).copied().collect();
    assert_eq!(new.len(), 1, "one new reader thread expected: {new:?}");
    (gw, new[0])
}

fn voluntary_switches(tid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .unwrap_or_else(|e| panic!("reader thread {tid} gone: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/self/task/TID/status")
}

/// Wake-ups of thread `tid` while `during` runs.
fn wakeups_during(tid: u32, during: impl FnOnce()) -> u64 {
    let before = voluntary_switches(tid);
    during();
    voluntary_switches(tid) - before
}

fn round_trip(gw: &Gateway) {
    let ch = gw
        .remote_exec("channel.send(channel.receive() + 1)")
        .unwrap();
    ch.send(&41i64).unwrap();
    assert_eq!(ch.receive::<i64>().unwrap(), 42);
    ch.waitclose(Some(Duration::from_secs(10))).unwrap();
}

/// The idle reader thread of `gw` (after a round trip) sleeps through a
/// second.
fn assert_idle_reader_sleeps(what: &str, gw: &Gateway, reader: u32) {
    round_trip(gw);
    // Let what follows the round trip settle (the 2 ms grace, the close).
    std::thread::sleep(Duration::from_millis(100));
    let n = wakeups_during(reader, || std::thread::sleep(IDLE));
    eprintln!("{what}: idle reader thread woke {n} times in {IDLE:?}");
    assert!(
        n < FEW,
        "{what}: the idle reader thread woke {n} times in {IDLE:?} (periodic wake-ups)"
    );
    // And it still reads.
    round_trip(gw);
}

/// A blocking receive started on `gw` while its reader thread waits for
/// input takes over the reading: an item the worker sends a while after
/// the receive began, on another channel, reaches that channel's callback
/// on the receiving thread. (Remote output is no probe: a fork worker's
/// comes through its fork server, not the gateway's stream.) Both a
/// receive without and one with a deadline (the latter reads through a
/// poll bounded by its deadline).
fn assert_receiver_takes_over(what: &str, gw: &Gateway) {
    for deadline in [None, Some(Duration::from_secs(60))] {
        let ch = gw
            .remote_exec(
                "import time\n\
                 probe = channel.gateway.newchannel()\n\
                 channel.send(probe)\n\
                 time.sleep(0.5)\n\
                 probe.send('while the receiver waits')\n\
                 time.sleep(0.3)\n\
                 channel.send(1)\n",
            )
            .unwrap();
        let probe = match ch.receive::<Value>().unwrap() {
            Value::Channel(r) => gw.channel_from_ref(r),
            other => panic!("{what}: expected a channel, got {other:?}"),
        };
        let read_by = Arc::new(Mutex::new(Vec::<String>::new()));
        let r2 = read_by.clone();
        probe
            .set_callback(
                move |_| {
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    r2.lock().unwrap().push(name);
                },
                None,
            )
            .unwrap();
        // Idle first: the reader thread holds the read token again.
        std::thread::sleep(Duration::from_millis(50));
        let name = format!("receiver-{what}-{deadline:?}");
        let got: i64 = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || match deadline {
                None => ch.receive().unwrap(),
                Some(d) => ch.receive_timeout(d).unwrap(),
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, 1);
        let read_by = read_by.lock().unwrap().clone();
        assert_eq!(
            read_by,
            vec![name],
            "{what} (deadline {deadline:?}): the probe item was read by {read_by:?}, not by \
             the waiting receiver: it did not take the reading over"
        );
    }
}

fn check_transport(what: &str, spec: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (gw, reader) = started_with_reader(|| makegateway(spec).unwrap());
    assert_idle_reader_sleeps(what, &gw, reader);
    assert_receiver_takes_over(what, &gw);
    assert_idle_reader_sleeps(what, &gw, reader);
    gw.terminate(Some(Duration::from_secs(5)));
}

#[test]
fn an_idle_popen_gateway_does_not_wake_its_reader() {
    bounded(LIMIT, || check_transport("popen", "popen"));
}

#[test]
fn an_idle_fork_gateway_does_not_wake_its_reader() {
    bounded(LIMIT, || {
        check_transport("fork", "popen//fork//env:EXECNET_IDLE_WAKEUPS=1")
    });
}

/// A gateway with a resource limit (its control wraps the process's).
#[test]
fn an_idle_limited_gateway_does_not_wake_its_reader() {
    bounded(LIMIT, || check_transport("limited", "popen//max_cpu=600"));
}

#[test]
fn an_idle_socket_gateway_does_not_wake_its_reader() {
    bounded(LIMIT, || {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let via = makegateway("popen").unwrap();
        let spec = format!("socket//installvia={}", via.id());
        let (gw, reader) = started_with_reader(|| {
            Gateway::builder(&spec)
                .unwrap()
                .via_gateway(via.clone())
                .start()
                .unwrap()
        });
        assert_idle_reader_sleeps("socket", &gw, reader);
        assert_receiver_takes_over("socket", &gw);
        gw.terminate(Some(Duration::from_secs(5)));
        via.terminate(Some(Duration::from_secs(5)));
    });
}

#[test]
fn an_idle_ssh_gateway_does_not_wake_its_reader() {
    bounded(LIMIT, || {
        let sshd = match Sshd::start() {
            Ok(s) => s,
            Err(e) => return skip(&format!("no sshd: {e}")),
        };
        let spec = format!(
            "ssh=sshd-root//ssh_config={}//python=/usr/bin/python3",
            sshd.ssh_config().display()
        );
        check_transport("ssh", &spec);
    });
}

/// While a blocking receive leads (reads the transport itself) and the
/// worker is silent, the reader thread sleeps too: it waits for the token
/// to come back instead of looking every 2 ms.
#[test]
fn the_reader_sleeps_while_a_receiver_leads() {
    bounded(LIMIT, || {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let (gw, reader) = started_with_reader(|| makegateway("popen").unwrap());
        round_trip(&gw);
        for deadline in [None, Some(Duration::from_secs(60))] {
            let ch = gw.remote_exec("channel.send(channel.receive())").unwrap();
            let ch2 = ch.clone();
            let receiver = std::thread::spawn(move || -> i64 {
                match deadline {
                    None => ch2.receive().unwrap(),
                    Some(d) => ch2.receive_timeout(d).unwrap(),
                }
            });
            // Let the receiver take the reading over, then watch.
            std::thread::sleep(Duration::from_millis(100));
            let n = wakeups_during(reader, || std::thread::sleep(IDLE));
            eprintln!(
                "reader woke {n} times in {IDLE:?} while a receiver (deadline {deadline:?}) led"
            );
            ch.send(&7i64).unwrap();
            assert_eq!(receiver.join().unwrap(), 7);
            assert!(
                n < FEW,
                "the reader thread woke {n} times in {IDLE:?} while a receive \
                 (deadline {deadline:?}) waited on a silent worker"
            );
        }
        round_trip(&gw);
    });
}

/// The reader's wake-up descriptor (an eventfd) is close-on-exec: no worker
/// started while other gateways are open holds one.
#[test]
fn no_wakeup_descriptor_reaches_a_worker() {
    bounded(LIMIT, || {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let eventfds = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("eventfd"))
                })
                .count()
        };
        let before = eventfds();
        let first = makegateway("popen").unwrap();
        let forked = makegateway("popen//fork//env:EXECNET_IDLE_WAKEUPS=2").unwrap();
        let last = makegateway("popen").unwrap();
        let ours = eventfds() - before;
        assert!(
            ours >= 3,
            "expected an eventfd per gateway in the host, {ours} new"
        );
        for gw in [&first, &forked, &last] {
            let pid = gw.info().pid;
            let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .collect();
            assert!(
                !fds.iter().any(|l| l.contains("eventfd")),
                "worker {pid} holds a wake-up descriptor: {fds:?}"
            );
        }
        for gw in [first, forked, last] {
            gw.terminate(Some(Duration::from_secs(5)));
        }
    });
}
