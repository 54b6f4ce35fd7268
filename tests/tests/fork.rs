//! `popen//fork`: workers forked from a fork server, against real
//! interpreters. Each forked worker is a full gateway (own pid and process
//! group, reaped and reported by the server, terminate kills its group, no
//! descriptor of another gateway in it); servers are per interpreter and
//! setup, end with their last gateway, and never outlive the host.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Gateway, Group};
use execnet::{Error, ExitStatus, Value};
use execnet_tests::{
    assert_reaped, bounded, interpreters, process_alive, recording_output, wait_until, TempDir,
    LIMIT,
};

const T: Duration = Duration::from_secs(10);

/// (pid, ppid, pgid, sid) of the worker.
fn ids(gw: &Gateway) -> (u32, u32, u32, u32) {
    gw.remote_exec(
        "import os; channel.send((os.getpid(), os.getppid(), os.getpgid(0), os.getsid(0)))",
    )
    .unwrap()
    .receive()
    .unwrap()
}

/// A spec whose fork server no other test shares (its own env key).
fn own_spec(tag: &str) -> String {
    format!(
        "popen//fork//env:EXECNET_FORK_TEST={tag}-{}",
        std::process::id()
    )
}

/// Every live process whose parent is `ppid` (from /proc).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(ppid) && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// The pipe and socket inodes open in this process.
fn own_links() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("pipe:") || l.starts_with("socket:"))
        .collect()
}

/// The pipe and socket inodes open in the worker.
fn worker_links(gw: &Gateway) -> BTreeSet<String> {
    let links: Vec<String> = gw
        .remote_exec(
            r#"
import os
out = []
for fd in os.listdir('/proc/self/fd'):
    try:
        out.append(os.readlink('/proc/self/fd/' + fd))
    except OSError:
        pass  # listdir's own descriptor
channel.send(out)
"#,
        )
        .unwrap()
        .receive()
        .unwrap();
    links
        .into_iter()
        .filter(|l| l.starts_with("pipe:") || l.starts_with("socket:"))
        .collect()
}

#[test]
fn sixteen_fork_gateways_at_once_are_distinct_full_gateways() {
    bounded(LIMIT, || {
        let group = Group::new();
        let spec = own_spec("sixteen");
        let gws = group.makegateways(vec![spec.as_str(); 16]).unwrap();
        let mut servers = BTreeSet::new();
        let mut pids = BTreeSet::new();
        for gw in &gws {
            let (pid, ppid, pgid, sid) = ids(gw);
            assert_eq!(pid, gw.info().pid, "HELLO carries the forked pid");
            assert_eq!((pgid, sid), (pid, pid), "own session and process group");
            assert_ne!(ppid, std::process::id(), "forked by the server, not by us");
            servers.insert(ppid);
            pids.insert(pid);
            let ch = gw
                .remote_exec("channel.send(channel.receive() * 2)")
                .unwrap();
            ch.send(&21).unwrap();
            assert_eq!(ch.receive::<i64>().unwrap(), 42);
        }
        assert_eq!(pids.len(), 16, "distinct pids");
        assert_eq!(servers.len(), 1, "one server for one interpreter and setup");
        let server = *servers.iter().next().unwrap();
        group.terminate(Some(T));
        for pid in pids {
            assert_reaped(pid, T);
        }
        drop(gws);
        drop(group);
        assert_reaped(server, T);
    })
}

#[test]
fn env_and_chdir_key_their_servers() {
    bounded(LIMIT, || {
        let dir = TempDir::new("fork-chdir");
        let a = own_spec("key-a");
        let b = own_spec("key-b");
        let c = format!("{a}//chdir={}", dir.path().display());
        let group = Group::new();
        let gws = group.makegateways([&a, &a, &b, &c]).unwrap();
        let parents: Vec<u32> = gws.iter().map(|gw| ids(gw).1).collect();
        assert_eq!(parents[0], parents[1], "same setup, same server");
        assert_ne!(parents[0], parents[2], "another env, another server");
        assert_ne!(parents[0], parents[3], "another chdir, another server");
        let seen: (String, String) = gws[2]
            .remote_exec("import os; channel.send((os.environ['EXECNET_FORK_TEST'], os.getcwd()))")
            .unwrap()
            .receive()
            .unwrap();
        assert!(seen.0.starts_with("key-b-"), "{seen:?}");
        let cwd: String = gws[3]
            .remote_exec("import os; channel.send(os.getcwd())")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(
            std::fs::canonicalize(cwd).unwrap(),
            std::fs::canonicalize(dir.path()).unwrap()
        );
        assert_eq!(gws[3].info().cwd, cwd_of(&gws[3]));
        group.terminate(Some(T));
    })
}

fn cwd_of(gw: &Gateway) -> String {
    gw.remote_exec("import os; channel.send(os.getcwd())")
        .unwrap()
        .receive()
        .unwrap()
}

#[test]
fn a_killed_fork_worker_is_worker_died_with_status_and_stderr_tail() {
    bounded(LIMIT, || {
        // stdout=inherit: fd 2 stays the worker's stderr (the server's pipe),
        // as a popen worker's stays its stderr pipe.
        let gw = makegateway(&format!("{}//stdout=inherit", own_spec("killed"))).unwrap();
        let ch = gw
            .remote_exec(
                "import os, sys\nsys.stderr.write('last words of a fork worker\\n')\n\
                 sys.stderr.flush()\nos.kill(os.getpid(), 9)",
            )
            .unwrap();
        let e = ch.receive::<Value>().unwrap_err();
        match &e {
            Error::WorkerDied {
                status,
                stderr_tail,
                gateway,
            } => {
                assert_eq!(*status, ExitStatus::Signal(9), "{e}");
                assert!(stderr_tail.contains("last words of a fork worker"), "{e}");
                assert!(gateway.contains(gw.id()), "{e}");
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        assert!(gw.is_terminated());
        assert_reaped(gw.info().pid, T);
    })
}

#[test]
fn output_written_just_before_a_fork_worker_dies_is_forwarded() {
    bounded(LIMIT, || {
        // Output `forward`: the fork server reads the worker's stdout and
        // stderr pipes and relays them, so what a worker writes just before
        // it ends at once (os._exit) arrives, each on its own fd, and its
        // stderr is in WorkerDied's tail; through the worker's own output
        // thread the last words were lost in about half of such ends.
        for i in 0..5 {
            let (gw, out) = recording_output("popen//fork");
            let e = gw
                .remote_exec(&format!(
                    "import os, sys\nprint('printed {i}')\nsys.stderr.write('last words {i}\\n')\n\
                     sys.stderr.flush()\nos.write(1, b'raw {i}\\n')\nos._exit(3)\n"
                ))
                .unwrap()
                .receive::<i64>()
                .unwrap_err();
            match &e {
                Error::WorkerDied {
                    status,
                    stderr_tail,
                    ..
                } => {
                    assert_eq!(*status, ExitStatus::Code(3), "{e}");
                    assert!(stderr_tail.contains(&format!("last words {i}")), "{e}");
                }
                other => panic!("expected WorkerDied, got {other:?}"),
            }
            let want_out = format!("printed {i}\nraw {i}\n");
            let want_err = format!("last words {i}\n");
            assert!(
                wait_until(T, || out.text(1) == want_out && out.text(2) == want_err),
                "run {i}: stdout {:?}, stderr {:?}",
                out.text(1),
                out.text(2)
            );
            gw.terminate(Some(T));
        }
        // Much of it, on a worker that goes on: whole and in order, and the
        // session is not disturbed.
        let (gw, out) = recording_output("popen//fork");
        let ch = gw
            .remote_exec(
                "import os\nfor i in range(3000): os.write(1, b'%07d' % i + b'.' * 92)\nchannel.send(7)",
            )
            .unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 7);
        let want: Vec<u8> = (0..3000)
            .flat_map(|i| {
                let mut v = format!("{i:07}").into_bytes();
                v.extend([b'.'; 92]);
                v
            })
            .collect();
        assert!(
            wait_until(T, || out.bytes(1).len() >= want.len()),
            "{} of {} bytes",
            out.bytes(1).len(),
            want.len()
        );
        assert!(out.bytes(1) == want, "stdout arrived changed");
        gw.exit().unwrap();
    })
}

#[test]
fn terminate_kills_the_worker_process_group() {
    bounded(LIMIT, || {
        let gw = makegateway("popen//fork").unwrap();
        let grandchild: u32 = gw
            .remote_exec(
                "import subprocess; p = subprocess.Popen(['sleep', '1000']); channel.send(p.pid)",
            )
            .unwrap()
            .receive()
            .unwrap();
        assert!(process_alive(grandchild));
        let pid = gw.info().pid;
        gw.terminate(Some(Duration::from_millis(500)));
        assert!(
            wait_until(T, || !process_alive(grandchild)),
            "grandchild {grandchild} survived terminate"
        );
        assert_reaped(pid, T);
    })
}

#[test]
fn no_descriptor_of_another_gateway_is_open_in_a_fork_worker() {
    bounded(LIMIT, || {
        let group = Group::new();
        let gws = group.makegateways(vec!["popen//fork"; 3]).unwrap();
        // A plain popen gateway too: its pipes are the host's as well.
        let plain = group.makegateway("popen").unwrap();
        let sets: Vec<BTreeSet<String>> = gws.iter().map(worker_links).collect();
        let host = own_links();
        for (i, set) in sets.iter().enumerate() {
            assert!(
                !set.iter().any(|l| l.starts_with("socket:")),
                "worker {i} holds a socket (the server's control connection?): {set:?}"
            );
            // Shared with the host: exactly its own stdin and stdout pipes.
            let shared: Vec<_> = set.intersection(&host).collect();
            assert_eq!(
                shared.len(),
                2,
                "worker {i} shares {shared:?} with the host"
            );
            for (j, other) in sets.iter().enumerate().skip(i + 1) {
                let both: Vec<_> = set.intersection(other).collect();
                assert!(both.is_empty(), "workers {i} and {j} share {both:?}");
            }
        }
        let plain_set = worker_links(&plain);
        for set in &sets {
            assert!(set.is_disjoint(&plain_set));
        }
        group.terminate(Some(T));
    })
}

#[test]
fn the_server_exits_after_its_last_gateway_and_leaves_nothing() {
    bounded(LIMIT, || {
        let spec = own_spec("last");
        let group = Group::new();
        let gws = group.makegateways(vec![spec.as_str(); 3]).unwrap();
        let server = ids(&gws[0]).1;
        let workers: Vec<u32> = gws.iter().map(|g| g.info().pid).collect();
        assert_eq!(children_of(server).len(), 3);
        // One gateway gone: the server stays for the others.
        gws[0].terminate(Some(T));
        assert_reaped(workers[0], T);
        assert!(process_alive(server));
        group.terminate(Some(T));
        drop(gws);
        drop(group);
        assert_reaped(server, T);
        for pid in workers {
            assert_reaped(pid, T);
        }
        assert!(children_of(server).is_empty());
        // The next start gets a new server.
        let gw = makegateway(&spec).unwrap();
        let again = ids(&gw).1;
        assert_ne!(again, server);
        gw.exit().unwrap();
        drop(gw);
        assert_reaped(again, T);
    })
}

#[test]
fn a_worker_that_forks_still_works() {
    bounded(LIMIT, || {
        let gw = makegateway("popen//fork").unwrap();
        let got: Value = gw
            .remote_exec(
                r#"
import os
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, b"from the grandchild")
    os._exit(0)
os.close(w)
data = os.read(r, 100)
_, status = os.waitpid(pid, 0)
assert status == 0, status
import subprocess
out = subprocess.check_output(["echo", "subprocess"])
channel.send(data + b" " + out.strip())
"#,
            )
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(
            got,
            Value::Bytes(b"from the grandchild subprocess".to_vec())
        );
        let v: i64 = gw
            .remote_exec("channel.send(6 * 7)")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(v, 42);
        gw.exit().unwrap();
    })
}

#[test]
fn receives_with_a_deadline_work_on_a_fork_gateway() {
    bounded(LIMIT, || {
        // A deadline receive may read the transport itself (it polls the
        // worker's stdout through ForkWorker::wait_readable).
        let gw = makegateway("popen//fork").unwrap();
        let ch = gw
            .remote_exec("for x in channel:\n    channel.send(x + 1)")
            .unwrap();
        for i in 0..200i64 {
            ch.send(&i).unwrap();
            assert_eq!(ch.receive_timeout::<i64>(T).unwrap(), i + 1);
        }
        let t0 = Instant::now();
        let r = ch.receive_timeout::<i64>(Duration::from_millis(200));
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        ch.close().unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn a_stopped_server_fails_the_start_within_its_timeout_and_a_killed_one_is_replaced() {
    bounded(LIMIT, || {
        let spec = own_spec("stopped");
        let first = makegateway(&spec).unwrap();
        let server = ids(&first).1;

        // A server that does not answer: the start fails within its
        // timeout, with a typed error.
        execnet_tests::faults::signal(server, 19); // SIGSTOP
        let t0 = Instant::now();
        let r = Gateway::builder(&spec)
            .unwrap()
            .startup_timeout(Duration::from_secs(2))
            .start();
        let elapsed = t0.elapsed();
        execnet_tests::faults::signal(server, 18); // SIGCONT
        let e = r.map(|_| ()).unwrap_err();
        assert!(
            matches!(e, Error::BootstrapFailed { .. } | Error::Timeout),
            "{e:?}"
        );
        assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
        // The late fork is killed when its pid arrives: only the first
        // gateway's worker is left.
        assert!(
            wait_until(T, || children_of(server) == vec![first.info().pid]),
            "{:?}",
            children_of(server)
        );

        // A killed server: running gateways go on, the next start gets a
        // new server.
        execnet_tests::faults::signal(server, 9);
        assert_reaped(server, T);
        let v: i64 = first
            .remote_exec("channel.send(5)")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(v, 5);
        let second = makegateway(&spec).unwrap();
        assert_ne!(ids(&second).1, server);
        let pid = first.info().pid;
        first.exit().unwrap();
        assert!(wait_until(T, || !process_alive(pid)));
        second.exit().unwrap();
    })
}

#[test]
fn a_server_killed_under_a_start_fails_it_with_the_reason() {
    bounded(LIMIT, || {
        let spec = own_spec("killed-under");
        let first = makegateway(&spec).unwrap();
        let server = ids(&first).1;
        execnet_tests::faults::signal(server, 19); // SIGSTOP: the request waits
        let started = {
            let spec = spec.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let r = Gateway::builder(&spec)
                    .unwrap()
                    .startup_timeout(Duration::from_secs(30))
                    .start()
                    .map(|_| ());
                (r, t0.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        execnet_tests::faults::signal(server, 9);
        let (r, elapsed) = started.join().unwrap();
        let e = r.unwrap_err();
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}: {e}");
        match &e {
            Error::BootstrapFailed { .. } => {
                assert!(e.to_string().contains("fork server"), "{e}");
                assert!(e.to_string().contains("signal 9"), "{e}");
            }
            other => panic!("expected BootstrapFailed, got {other:?}"),
        }
        first.exit().unwrap();
    })
}

#[test]
fn a_server_that_cannot_start_fails_at_once_with_its_stderr() {
    bounded(LIMIT, || {
        // An interpreter that exits at once, and one too old for the
        // loader (the pyenv 2.7 when present): errors within seconds, not
        // after the 30 s start timeout.
        let mut pythons = vec![("/bin/true".to_string(), None)];
        if let Some(py2) = execnet_tests::python2() {
            pythons.push((py2.display().to_string(), Some("buffer")));
        }
        for (python, in_stderr) in pythons {
            let t0 = Instant::now();
            let e = makegateway(&format!("popen//fork//python={python}")).unwrap_err();
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{python}: {:?}",
                t0.elapsed()
            );
            match &e {
                Error::BootstrapFailed { stderr_tail, .. } => {
                    assert!(e.to_string().contains("fork server"), "{e}");
                    if let Some(text) = in_stderr {
                        assert!(stderr_tail.contains(text), "{e}");
                    }
                }
                other => panic!("{python}: expected BootstrapFailed, got {other:?}"),
            }
        }
        match makegateway("popen//fork//python=/nonexistent/python3") {
            Err(Error::InterpreterNotFound { .. }) => {}
            other => panic!("expected InterpreterNotFound, got {other:?}"),
        }
    })
}

#[test]
fn starts_queued_for_a_server_that_cannot_start_fail_with_its_reason() {
    bounded(LIMIT, || {
        // Starts made while a server starts queue their requests (sent as
        // one burst at READY). When it never gets ready, each of them
        // fails as well, within seconds, saying why.
        let spec = format!(
            "popen//fork//python=/bin/true//env:EXECNET_FORK_TEST=queued-{}",
            std::process::id()
        );
        let t0 = Instant::now();
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| makegateway(&spec).map(|_| ())))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        for r in results {
            let e = r.unwrap_err();
            assert!(matches!(e, Error::BootstrapFailed { .. }), "{e:?}");
            assert!(e.to_string().contains("fork server"), "{e}");
        }
    })
}

#[test]
fn fork_specs_that_cannot_work_are_refused() {
    for spec in ["ssh=somehost//fork", "popen//fork//via=gw0"] {
        match makegateway(spec) {
            Err(Error::Spec(m)) => assert!(m.contains("fork"), "{m}"),
            other => panic!("{spec}: expected a spec error, got {other:?}"),
        }
    }
}

#[test]
fn fork_works_on_every_interpreter() {
    bounded(Duration::from_secs(120), || {
        let mut servers = BTreeMap::new();
        for py in interpreters() {
            let gw = makegateway(&format!("popen//fork//python={}", py.path.display()))
                .unwrap_or_else(|e| panic!("{}: {e}", py.name));
            let (pid, ppid, pgid, _) = ids(&gw);
            assert_eq!((pid, pgid), (gw.info().pid, pid), "{}", py.name);
            servers.insert(py.name.clone(), ppid);
            gw.exit().unwrap();
        }
        let distinct: BTreeSet<_> = servers.values().collect();
        assert_eq!(distinct.len(), servers.len(), "{servers:?}");
    })
}

/// Run by [`the_host_killed_takes_its_server_and_workers_along`] in a child
/// process of the test binary: starts fork gateways, prints their pids,
/// and waits to be killed.
#[test]
#[ignore = "a helper: run in a child process by the_host_killed_takes_its_server_and_workers_along"]
fn fork_host_helper() {
    if std::env::var_os("EXECNET_FORK_HOST_HELPER").is_none() {
        return;
    }
    let group = Group::new();
    let gws = group.makegateways(vec!["popen//fork"; 2]).unwrap();
    let server = ids(&gws[0]).1;
    let grandchild: u32 = gws[1]
        .remote_exec(
            "import subprocess; p = subprocess.Popen(['sleep', '1000']); channel.send(p.pid)",
        )
        .unwrap()
        .receive()
        .unwrap();
    // A worker that ends by itself before the host dies, leaving a child
    // in its process group: the server kills that group too when the host
    // goes.
    let left = group.makegateway("popen//fork").unwrap();
    let orphan: u32 = left
        .remote_exec(
            "import os, subprocess, time\np = subprocess.Popen(['sleep', '1000'])\n\
             channel.send(p.pid)\ntime.sleep(0.2)\nos._exit(0)",
        )
        .unwrap()
        .receive()
        .unwrap();
    let left_pid = left.info().pid;
    assert!(wait_until(T, || !execnet_tests::process_exists(left_pid)));
    println!(
        "PIDS {server} {} {} {grandchild} {orphan}",
        gws[0].info().pid,
        gws[1].info().pid
    );
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn the_host_killed_takes_its_server_and_workers_along() {
    bounded(LIMIT, || {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fork_host_helper", "--ignored", "--nocapture"])
            .env("EXECNET_FORK_HOST_HELPER", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut pids = Vec::new();
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("PIDS ") {
                pids = rest.split(' ').map(|p| p.parse::<u32>().unwrap()).collect();
                break;
            }
        }
        assert_eq!(pids.len(), 5, "the helper did not report its pids");
        assert!(pids.iter().all(|&p| process_alive(p)));
        let _ = child.kill(); // SIGKILL: no destructor runs in the host
        let _ = child.wait();
        for pid in pids {
            assert!(
                wait_until(T, || !process_alive(pid)),
                "{pid} outlived its host"
            );
        }
    })
}

/// Run by [`the_fork_server_and_popen_share_the_compiled_worker`] in a
/// fresh process (empty memory cache, no disk cache): prints, for a fork
/// worker, then a popen worker, then a worker of a second fork server,
/// whether its interpreter loaded compiled code (`__main__._execnet_boot`);
/// then, for the two fork servers, whether each loaded its own compiled
/// code (`__main__._execnet_server_boot`).
#[test]
#[ignore = "a helper: run in a child process by the_fork_server_and_popen_share_the_compiled_worker"]
fn fork_cache_helper() {
    if std::env::var_os("EXECNET_FORK_CACHE_HELPER").is_none() {
        return;
    }
    let boot = |spec: &str| -> (bool, bool) {
        let gw = makegateway(spec).unwrap();
        let b: (bool, bool) = gw
            .remote_exec(
                "import __main__; channel.send((getattr(__main__, '_execnet_boot', False), \
                 getattr(__main__, '_execnet_server_boot', False)))",
            )
            .unwrap()
            .receive()
            .unwrap();
        gw.exit().unwrap();
        b
    };
    let (first, server1) = boot("popen//fork//python=/usr/bin/python3//env:EXECNET_FORK_TEST=c1");
    let (popen, _) = boot("popen//python=/usr/bin/python3");
    let (second, server2) = boot("popen//fork//python=/usr/bin/python3//env:EXECNET_FORK_TEST=c2");
    println!("BOOT {first} {popen} {second}");
    println!("SERVER_BOOT {server1} {server2}");
}

#[test]
fn the_fork_server_and_popen_share_the_compiled_worker() {
    bounded(LIMIT, || {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fork_cache_helper", "--ignored", "--nocapture"])
            .env("EXECNET_FORK_CACHE_HELPER", "1")
            .env("EXECNET_CACHE_DIR", "off")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("BOOT "))
            .unwrap_or_else(|| {
                panic!(
                    "no BOOT line: {stdout} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        // The first server compiles and hands its code back; popen and the
        // next server load it.
        assert_eq!(line, "BOOT false true true");
        // The same for the fork server's own code (the loader's code
        // record on the server's stdout).
        let servers = stdout.lines().find(|l| l.starts_with("SERVER_BOOT "));
        assert_eq!(servers, Some("SERVER_BOOT false true"), "{stdout}");
    })
}
