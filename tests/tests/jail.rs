//! `popen//jail` under real bubblewrap, and the resource limits
//! (`max_memory=`, `max_cpu=`, `max_procs=`) with and without a jail
//! (docs/jails.md).
//!
//! Without `bwrap` the jail tests say SKIPPED (they fail under
//! `EXECNET_REQUIRE_ALL=1`; `EXECNET_TEST_ABSENT=bwrap` makes it absent).
//! Without a writable cgroup the memory/procs tests say SKIPPED, and
//! `no_writable_cgroup_is_a_typed_error` checks the error instead.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Gateway, Group};
use execnet::{Error, Value};
use execnet_tests::{assert_reaped, bounded, process_alive, skip, wait_until, TempDir, LIMIT};

const T: Duration = Duration::from_secs(10);

/// Whether bwrap is usable here; else says SKIPPED (or fails in CI).
fn have_bwrap() -> bool {
    if execnet_tests::made_absent("bwrap") {
        skip("bwrap made absent by EXECNET_TEST_ABSENT");
        return false;
    }
    let ok = std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip("bubblewrap is not installed (apt-get install bubblewrap)");
    }
    ok
}

/// Whether a cgroup with `controller` can be made here (the engine's own
/// answer: a start with the limit); else says SKIPPED.
fn have_cgroup(limit: &str) -> bool {
    match makegateway(&format!("popen//{limit}")) {
        Ok(gw) => {
            gw.exit().unwrap();
            true
        }
        Err(e @ Error::NoWritableCgroup { .. }) => {
            skip(&format!("no writable cgroup: {e}"));
            false
        }
        Err(e) => panic!("popen//{limit}: {e}"),
    }
}

fn eval<T: serde::de::DeserializeOwned>(gw: &Gateway, source: &str) -> T {
    gw.remote_exec(source)
        .unwrap()
        .receive_timeout(T)
        .unwrap_or_else(|e| panic!("{source}: {e}"))
}

/// Opens `dir` to the jail's user (uid 65534 on the host when the tests
/// run as root): a jail_rw= path must be writable by it.
fn open_to_jail(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}

fn jail(extra: &str) -> Gateway {
    let spec = format!("popen//jail{extra}");
    makegateway(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

#[test]
fn the_filesystem_is_read_only_but_jail_rw_and_chdir() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let rw = TempDir::new("jail-rw");
        open_to_jail(rw.path());
        let work = TempDir::new("jail-chdir");
        let chdir = work.path().join("w");
        let gw = jail(&format!(
            "//jail_rw={}//chdir={}",
            rw.path().display(),
            chdir.display()
        ));
        let probe = r#"
import os
def attempt(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as e:
        return e.errno
channel.send([attempt(p) for p in channel.receive()])
"#;
        let ch = gw.remote_exec(probe).unwrap();
        let targets = vec![
            "/usr/execnet-jail-test".to_string(),
            "/etc/execnet-jail-test".to_string(),
            rw.path().join("f").display().to_string(),
            "in-chdir".to_string(),
            "/tmp/private".to_string(),
        ];
        ch.send(&targets).unwrap();
        let got: Vec<Value> = ch.receive_timeout(T).unwrap();
        let erofs = Value::Int(30.into());
        assert_eq!(got[0], erofs, "{got:?}");
        assert_eq!(got[1], erofs, "{got:?}");
        assert_eq!(got[2], Value::Str("ok".into()), "{got:?}");
        assert_eq!(got[3], Value::Str("ok".into()), "{got:?}");
        assert_eq!(got[4], Value::Str("ok".into()), "{got:?}");
        // The writable paths are the host's own; /tmp is the jail's.
        assert_eq!(std::fs::read_to_string(rw.path().join("f")).unwrap(), "x");
        assert_eq!(
            std::fs::read_to_string(chdir.join("in-chdir")).unwrap(),
            "x"
        );
        assert!(!Path::new("/tmp/private").exists());
        assert!(!Path::new("/usr/execnet-jail-test").exists());
        gw.exit().unwrap();
    })
}

#[test]
fn identity_capabilities_processes_and_hidden_paths() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let gw = jail("");
        let host_pid = gw.info().pid;
        let (uid, capeff, pids, hidden): (u32, String, Vec<u32>, Vec<Value>) = eval(
            &gw,
            r#"
import os
status = open("/proc/self/status").read()
capeff = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff:")][0]
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
def look(path):
    try:
        if os.path.isdir(path):
            names = os.listdir(path)
            return len(names) if names != [".pyenv"] else 1
        return len(open(path).read())
    except OSError as e:
        return e.errno
channel.send((os.getuid(), capeff, pids,
              [look(p) for p in ("/root", "/home", "/etc/shadow", "/etc/ssh")]))
"#,
        );
        assert_ne!(uid, 0);
        assert_eq!(capeff, "0000000000000000");
        // Its own PID namespace: bwrap's init and the worker, nothing of
        // the host's (the worker's host pid is not among them either).
        assert!(pids.len() <= 3 && pids.contains(&1), "{pids:?}");
        assert!(!pids.contains(&host_pid) || host_pid <= 3, "{pids:?}");
        assert!(process_alive(host_pid));
        // Hidden behind a tmpfs (in /root at most the interpreter bound
        // back: pyenv's live there) or an unreadable /dev/null.
        let zero = Value::Int(0.into());
        let root_ok = hidden[0] == zero || hidden[0] == Value::Int(1.into());
        assert!(root_ok, "/root: {hidden:?}");
        assert_eq!(hidden[1], zero, "/home: {hidden:?}");
        let eacces = Value::Int(13.into());
        assert!(
            hidden[2] == zero || hidden[2] == eacces,
            "/etc/shadow: {hidden:?}"
        );
        assert_eq!(hidden[3], zero, "/etc/ssh: {hidden:?}");
        // Seen from the host, a process of the jail is not root (run as
        // root, no user namespace maps it there): uid and gid 65534 (or
        // the user running the tests), no capability, no_new_privs.
        // Digits only: the tag is part of sleep's interval (`1000.TAG`);
        // a letter made sleep exit at once, and the daemon was found only
        // when the scan happened to catch it dying.
        let tag = format!("{}4", std::process::id());
        let daemon = start_daemon(&gw, &tag);
        let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
        let field = |name: &str| -> Vec<String> {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().skip(1).map(String::from).collect()
        };
        let me = rustix::process::geteuid().as_raw();
        let want = if me == 0 { 65534 } else { me }.to_string();
        assert_eq!(field("Uid:"), vec![want.clone(); 4], "{status}");
        if me == 0 {
            assert_eq!(field("Gid:"), vec![want; 4], "{status}");
            assert_eq!(field("Groups:"), Vec::<String>::new(), "{status}");
        }
        for caps in ["CapPrm:", "CapEff:", "CapAmb:"] {
            assert_eq!(field(caps), ["0000000000000000"], "{caps} {status}");
        }
        assert_eq!(field("NoNewPrivs:"), ["1"], "{status}");
        gw.exit().unwrap();
        assert!(wait_until(T, || !process_alive(daemon)));
    })
}

/// Run as root, the interpreter starts as root and drops to 65534 in its
/// loader: a spec that would let code from a jail-writable place run
/// before that (env:PYTHONPATH, LD_PRELOAD; a jail_rw= over the
/// interpreter's installation) is refused, saying why.
#[test]
fn a_root_jail_refuses_what_would_run_before_the_drop() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        if !rustix::process::geteuid().is_root() {
            skip("the tests do not run as root: a jail of theirs has no root to drop");
            return;
        }
        let rw = TempDir::new("jail-pre-drop");
        open_to_jail(rw.path());
        let d = rw.path().display();
        for spec in [
            format!("popen//jail//jail_rw={d}//env:PYTHONPATH={d}"),
            format!("popen//jail//env:LD_PRELOAD={d}/x.so"),
            "popen//python=/usr/bin/python3//jail//jail_rw=/usr/local".to_string(),
        ] {
            match makegateway(&spec) {
                Err(Error::Spec(why)) => assert!(why.contains("root"), "{spec}: {why}"),
                Err(e) => panic!("{spec}: expected a spec error, got {e}"),
                Ok(_) => panic!("{spec}: a root jail started with it"),
            }
        }
        // What the issue allows stays allowed: env: of other names.
        let gw = jail(&format!("//jail_rw={d}//env:MINE=1"));
        let mine: String = eval(&gw, "import os\nchannel.send(os.environ['MINE'])");
        assert_eq!(mine, "1");
        gw.exit().unwrap();
    })
}

#[test]
fn a_remount_fails() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let gw = jail("");
        let (rc, still_ro): (i64, bool) = eval(
            &gw,
            r#"
import os, subprocess
r = subprocess.run(["mount", "-o", "remount,rw", "/"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
try:
    open("/usr/execnet-remount-test", "w")
    ro = False
except OSError:
    ro = True
channel.send((r.returncode, ro))
"#,
        );
        assert_ne!(rc, 0);
        assert!(still_ro);
        gw.exit().unwrap();
    })
}

#[test]
fn the_environment_is_the_allowlist_and_env_keys() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        // Our own environment has more (cargo sets CARGO_* for tests).
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
        let gw = jail("//env:EXECNET_JAIL_TEST=yes please");
        let env: std::collections::BTreeMap<String, String> =
            eval(&gw, "import os; channel.send(dict(os.environ))");
        assert_eq!(
            env.get("EXECNET_JAIL_TEST").map(String::as_str),
            Some("yes please")
        );
        assert_eq!(env.get("HOME").map(String::as_str), Some("/tmp"));
        for k in env.keys() {
            let allowed = ["PATH", "LANG", "LANGUAGE", "TERM", "TZ", "HOME", "EXECNET_JAIL_TEST"]
                .contains(&k.as_str())
                || k.starts_with("LC_")
                // The interpreter's own additions.
                || k == "PWD";
            assert!(allowed, "{k} leaked into the jail: {env:?}");
        }
        gw.exit().unwrap();
    })
}

#[test]
fn no_network_unless_jail_net() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connect = format!(
            r#"
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    channel.send("connected")
except OSError as e:
    channel.send("refused: %s" % e)
"#
        );
        let gw = jail("");
        let r: String = eval(&gw, &connect);
        assert!(r.starts_with("refused"), "{r}");
        gw.exit().unwrap();
        let gw = jail("//jail_net");
        let r: String = eval(&gw, &connect);
        assert_eq!(r, "connected");
        gw.exit().unwrap();
    })
}

/// Starts a daemon (double fork, new session) in the jail and returns its
/// host pid (found by its unique command line). `tag` must be digits: the
/// daemon is `sleep 1000.TAG`.
fn start_daemon(gw: &Gateway, tag: &str) -> u32 {
    let _: i64 = eval(
        gw,
        &format!(
            r#"
import os, subprocess
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "1000.{tag}"])
    os._exit(0)
os.wait()
channel.send(1)
"#
        ),
    );
    let needle = format!("1000.{tag}");
    let mut found = None;
    assert!(wait_until(T, || {
        found = find_process(&needle);
        found.is_some()
    }));
    found.unwrap()
}

fn find_process(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (String::from_utf8_lossy(&cmd).contains(needle) && process_alive(pid)).then_some(pid)
    })
}

#[test]
fn terminate_leaves_no_daemon_behind() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let tag = format!("{}1", std::process::id());
        let gw = jail("");
        let daemon = start_daemon(&gw, &tag);
        let worker = gw.info().pid;
        gw.exit().unwrap();
        assert!(
            wait_until(T, || !process_alive(daemon)),
            "the jail's daemon {daemon} survived exit()"
        );
        let _ = worker;
    })
}

#[test]
fn a_killed_host_leaves_no_daemon_behind() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        // A host process of our own (this test binary, asked to run the
        // helper below) starts a jail with a daemon, then is SIGKILLed.
        let tag = format!("{}2", std::process::id());
        let exe = std::env::current_exe().unwrap();
        let mut host = std::process::Command::new(exe)
            .args([
                "--exact",
                "helper_host_with_a_jailed_daemon",
                "--nocapture",
                "--include-ignored",
            ])
            .env("EXECNET_JAIL_DAEMON_TAG", &tag)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let needle = format!("1000.{tag}");
        let mut daemon = None;
        assert!(wait_until(Duration::from_secs(30), || {
            daemon = find_process(&needle);
            daemon.is_some()
        }));
        let daemon = daemon.unwrap();
        host.kill().unwrap();
        host.wait().unwrap();
        assert!(
            wait_until(T, || !process_alive(daemon)),
            "the jail's daemon {daemon} survived its host's SIGKILL"
        );
    })
}

/// Run by `a_killed_host_leaves_no_daemon_behind` in a child process.
#[test]
#[ignore = "a helper: run by a_killed_host_leaves_no_daemon_behind"]
fn helper_host_with_a_jailed_daemon() {
    let Ok(tag) = std::env::var("EXECNET_JAIL_DAEMON_TAG") else {
        return;
    };
    let gw = jail("");
    start_daemon(&gw, &tag);
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn output_is_forwarded() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let o = out.clone();
        let gw = Gateway::builder("popen//jail")
            .unwrap()
            .on_output(move |_fd, bytes| o.lock().unwrap().extend_from_slice(bytes))
            .start()
            .unwrap();
        let ch = gw
            .remote_exec(
                "import sys; print('hello from the jail'); sys.stdout.flush(); channel.send(1)",
            )
            .unwrap();
        let _: i64 = ch.receive_timeout(T).unwrap();
        assert!(wait_until(T, || String::from_utf8_lossy(
            &out.lock().unwrap()
        )
        .contains("hello from the jail")));
        gw.exit().unwrap();
    })
}

#[test]
fn rsync_into_a_jail_rw_path() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let src = TempDir::new("jail-rsync-src");
        std::fs::write(src.path().join("a.txt"), "alpha").unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/b.txt"), "beta").unwrap();
        let dst = TempDir::new("jail-rsync-dst");
        open_to_jail(dst.path());
        let gw = jail(&format!("//jail_rw={}", dst.path().display()));
        let target = dst.path().join("copy");
        let mut rs = execnet::blocking::RSync::new(src.path());
        rs.add_target(&gw, &target, false);
        rs.send().unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("a.txt")).unwrap(),
            "alpha"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("sub/b.txt")).unwrap(),
            "beta"
        );
        gw.exit().unwrap();
    })
}

#[test]
fn via_through_a_jailed_gateway() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let group = Group::new();
        let j = group.makegateway("popen//jail//id=j").unwrap();
        let inner = group.makegateway("popen//via=j//id=inner").unwrap();
        // The target runs inside j's jail: same PID namespace (small pids).
        let (pid, uid): (u32, u32) = eval(
            &inner,
            "import os; channel.send((os.getpid(), os.getuid()))",
        );
        assert!(pid < 100, "{pid}");
        assert_ne!(uid, 0);
        let _ = j;
        group.terminate(Some(T));
    })
}

#[test]
fn the_interpreters_under_root_run_jailed() {
    bounded(LIMIT * 2, || {
        if !have_bwrap() {
            return;
        }
        for interp in execnet_tests::interpreters() {
            let spec = format!("popen//jail//python={}", interp.path.display());
            let gw = makegateway(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let n: i64 = eval(&gw, "channel.send(6 * 7)");
            assert_eq!(n, 42, "{}", interp.name);
            gw.exit().unwrap();
        }
    })
}

// ---- limits ------------------------------------------------------------

/// The memory limit's error comes within a second of the allocation that
/// crossed it: the runaway code reports each 16 MiB it holds, and the
/// error must follow the last report within 1 s (wall time from the start
/// would measure the machine's load).
fn check_limit(spec: &str, source: &str, limit: &str) {
    let other = makegateway("popen").unwrap();
    let gw = makegateway(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    // In a jail the worker's own pid is its namespace's.
    let pid = (!spec.contains("jail")).then(|| gw.info().pid);
    let ch = gw.remote_exec(source).unwrap();
    let mut last: Option<(i64, Instant)> = None;
    let e = loop {
        match ch.receive_timeout::<i64>(Duration::from_secs(30)) {
            Ok(held) => last = Some((held, Instant::now())),
            Err(e) => break e,
        }
    };
    match &e {
        Error::LimitExceeded { limit: l, .. } => assert_eq!(l, limit, "{e}"),
        other => panic!("{spec}: expected LimitExceeded({limit}), got {other}"),
    }
    assert!(e.to_string().contains(limit), "{e}");
    let (held, at) = last.expect("progress reports");
    let after = at.elapsed();
    eprintln!("{spec}: {limit} error {after:?} after the last report ({held} MiB held)");
    assert!(after < Duration::from_secs(1), "{spec}: {after:?}");
    if let Some(pid) = pid {
        assert_reaped(pid, T);
    }
    // The other gateway, and we, are unaffected.
    let n: i64 = eval(&other, "channel.send(1 + 1)");
    assert_eq!(n, 2);
    other.exit().unwrap();
}

const RUNAWAY_ALLOCATION: &str =
    "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n    channel.send(16 * len(x))\n";

/// The CPU limit's error comes within a second of the worker's CPU time
/// reaching the limit. Wall time from the start would measure the
/// machine's load instead (CPU time accrues slower on busy shared cores),
/// so the looping code reports its own CPU time every 50 ms of it, and
/// the error must follow the last report (at 0.8 s or more) within 1.5 s:
/// the rest of the second, plus the signal's way to us.
fn check_cpu_limit(spec_head: &str) {
    let spec = format!("{spec_head}//max_cpu=1");
    let other = makegateway("popen").unwrap();
    let gw = makegateway(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let ch = gw
        .remote_exec(
            "import time\nlast = 0\nwhile True:\n    t = time.process_time()\n    if t - last >= 0.05:\n        channel.send(t)\n        last = t\n",
        )
        .unwrap();
    let mut last: Option<(f64, Instant)> = None;
    let e = loop {
        match ch.receive_timeout::<f64>(Duration::from_secs(30)) {
            Ok(t) => last = Some((t, Instant::now())),
            Err(e) => break e,
        }
    };
    match &e {
        Error::LimitExceeded { limit, .. } => assert_eq!(limit, "max_cpu=1", "{e}"),
        other => panic!("{spec}: expected LimitExceeded(max_cpu=1), got {other}"),
    }
    assert!(e.to_string().contains("max_cpu=1"), "{e}");
    let (cpu, at) = last.expect("CPU time reports");
    let after = at.elapsed();
    eprintln!("{spec}: max_cpu=1 error {after:?} after the last report ({cpu:.2} s of CPU)");
    assert!(cpu >= 0.8, "{spec}: last report at {cpu} s of CPU");
    assert!(after < Duration::from_millis(1500), "{spec}: {after:?}");
    let n: i64 = eval(&other, "channel.send(1 + 1)");
    assert_eq!(n, 2);
    other.exit().unwrap();
}

/// The CPU limit is set by the loader with `resource` from the
/// interpreter's own installation: a `resource.py` that remote code of an
/// earlier start left in the working directory (a reused `chdir=`, first on
/// `sys.path` under `-c`) is not imported, so it can neither skip the limit
/// nor, in a root host's jail, run before the worker gives up root.
#[test]
fn a_planted_module_does_not_run_before_the_limits() {
    bounded(LIMIT, || {
        let dir = TempDir::new("planted");
        let planted = "import os, builtins\n\
                       builtins._execnet_planted = os.getuid()\n\
                       RLIMIT_CPU = 0\n\
                       def setrlimit(*args):\n    pass\n";
        std::fs::write(dir.path().join("resource.py"), planted).unwrap();
        let check = "import builtins\n\
                     cpu = [l.split()[3:5] for l in open('/proc/self/limits')\n\
                            if l.startswith('Max cpu time')][0]\n\
                     channel.send((getattr(builtins, '_execnet_planted', None), cpu))";
        let mut heads = vec!["popen".to_string()];
        if have_bwrap() {
            // The jail binds chdir= writable; the planted file is the
            // jail user's to read.
            heads.push("popen//jail".to_string());
        }
        for head in heads {
            let spec = format!("{head}//chdir={}//max_cpu=30", dir.path().display());
            let gw = makegateway(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let (planted, limit): (Option<i64>, Vec<String>) = eval(&gw, check);
            assert_eq!(planted, None, "{spec}: the planted resource.py ran");
            assert_eq!(limit, ["30", "31"], "{spec}");
            gw.exit().unwrap();
        }
    })
}

#[test]
fn max_cpu_ends_an_infinite_loop() {
    bounded(LIMIT, || {
        // No cgroup needed: RLIMIT_CPU.
        check_cpu_limit("popen");
        if have_bwrap() {
            check_cpu_limit("popen//jail");
        }
    })
}

#[test]
fn max_memory_ends_a_runaway_allocation() {
    bounded(LIMIT, || {
        if !have_cgroup("max_memory=256M") {
            return;
        }
        check_limit(
            "popen//max_memory=256M",
            RUNAWAY_ALLOCATION,
            "max_memory=256M",
        );
        if have_bwrap() {
            check_limit(
                "popen//jail//max_memory=256M",
                RUNAWAY_ALLOCATION,
                "max_memory=256M",
            );
        }
    })
}

#[test]
fn max_procs_fails_forks_inside() {
    bounded(LIMIT, || {
        if !have_cgroup("max_procs=5") {
            return;
        }
        for spec in ["popen//max_procs=5", "popen//jail//max_procs=5"] {
            if spec.contains("jail") && !have_bwrap() {
                continue;
            }
            let gw = makegateway(spec).unwrap();
            let ch = gw
                .remote_exec(
                    r#"
import os, time
pids = []
try:
    for i in range(50):
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        pids.append(pid)
finally:
    for p in pids:
        os.kill(p, 9)
        os.waitpid(p, 0)
"#,
                )
                .unwrap();
            let e = ch.waitclose(Some(T)).expect_err("a fork fails");
            let text = e.to_string();
            assert!(
                text.contains("Resource temporarily unavailable"),
                "{spec}: {text}"
            );
            assert!(text.contains("max_procs=5"), "{spec}: {text}");
            // The gateway lives on.
            let n: i64 = eval(&gw, "channel.send(3)");
            assert_eq!(n, 3);
            gw.exit().unwrap();
        }
    })
}

#[test]
fn the_cgroup_is_removed_and_its_processes_killed() {
    bounded(LIMIT, || {
        if !have_cgroup("max_procs=20") {
            return;
        }
        // Without a jail: a daemon that left the process group still goes.
        let tag = format!("{}3", std::process::id());
        let gw = makegateway("popen//max_procs=20").unwrap();
        let cgroup: String = eval(&gw, "channel.send(open('/proc/self/cgroup').read())");
        assert!(cgroup.contains("execnet-"), "{cgroup}");
        let daemon = start_daemon(&gw, &tag);
        gw.exit().unwrap();
        assert!(
            wait_until(T, || !process_alive(daemon)),
            "daemon {daemon} survived"
        );
        // No execnet cgroup of ours is left.
        let mine = format!("execnet-{}-", std::process::id());
        let leftover = cgroup
            .lines()
            .filter(|l| l.contains(&mine))
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| {
                [
                    "/sys/fs/cgroup/pids",
                    "/sys/fs/cgroup/memory",
                    "/sys/fs/cgroup/unified",
                    "/sys/fs/cgroup",
                ]
                .iter()
                .any(|m| Path::new(&format!("{m}{path}")).exists())
            });
        assert!(!leftover, "cgroup left behind: {cgroup}");
    })
}

// ---- errors a user can act on ----------------------------------------------

/// Runs `helper_errors` (below) in a child process of this test binary
/// under `prefix` (a command line) with `env`, and fails with its output
/// unless it passed.
fn run_helper(prefix: &[&str], case: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    argv.push(exe.display().to_string());
    argv.extend(
        [
            "--exact",
            "helper_errors",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ]
        .map(String::from),
    );
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("EXECNET_JAIL_HELPER", case)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helper {case} failed:\n{text}");
    assert!(
        text.contains(&format!("checked {case}")),
        "helper {case} did not run:\n{text}"
    );
}

/// Run by the tests below in a child process (`EXECNET_JAIL_HELPER`).
#[test]
#[ignore = "a helper: run by the *_is_a_typed_error tests"]
fn helper_errors() {
    let Ok(case) = std::env::var("EXECNET_JAIL_HELPER") else {
        return;
    };
    match case.as_str() {
        "no-cgroup" => {
            let e = makegateway("popen//python=/usr/bin/python3//max_memory=64M").unwrap_err();
            let Error::NoWritableCgroup {
                ref limit,
                ref controller,
                ref tried,
            } = e
            else {
                panic!("expected NoWritableCgroup, got {e}");
            };
            assert_eq!(
                (limit.as_str(), controller.as_str()),
                ("max_memory=64M", "memory")
            );
            assert!(
                tried.contains("Read-only file system") || tried.contains("offers no"),
                "{e}"
            );
            assert!(e.to_string().contains("max_memory=64M"), "{e}");
            // max_cpu needs no cgroup: it still works.
            let gw = makegateway("popen//python=/usr/bin/python3//max_cpu=5").unwrap();
            gw.exit().unwrap();
        }
        "no-bwrap" => {
            let e = makegateway("popen//jail//python=/usr/bin/python3").unwrap_err();
            assert!(matches!(e, Error::BubblewrapMissing { .. }), "{e}");
            assert!(e.to_string().contains("apt-get install bubblewrap"), "{e}");
        }
        "no-userns" => {
            let e = makegateway("popen//jail//python=/usr/bin/python3").unwrap_err();
            assert!(matches!(e, Error::NamespacesNotPermitted { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains("user.max_user_namespaces"), "{text}");
            assert!(text.contains("kernel.unprivileged_userns_clone"), "{text}");
            // Limits need no namespace: they still work.
            let gw = makegateway("popen//python=/usr/bin/python3//max_cpu=5").unwrap();
            gw.exit().unwrap();
        }
        other => panic!("unknown case {other}"),
    }
    println!("checked {case}");
}

#[test]
fn no_writable_cgroup_is_a_typed_error() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        // The helper sees /sys read-only: no cgroup can be made.
        run_helper(
            &[
                "bwrap",
                "--dev-bind",
                "/",
                "/",
                "--ro-bind",
                "/sys",
                "/sys",
                "--",
            ],
            "no-cgroup",
        );
    })
}

#[test]
fn namespaces_not_permitted_is_a_typed_error() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        // The helper runs where no user namespace can be created (bwrap's
        // --disable-userns): as on a kernel that forbids them. It runs as
        // a user other than root there: a root host's jails make no user
        // namespace, and a root allowed the other namespaces would jail.
        run_helper(
            &[
                "bwrap",
                "--unshare-user",
                "--uid",
                "1000",
                "--disable-userns",
                "--dev-bind",
                "/",
                "/",
                "--",
            ],
            "no-userns",
        );
    })
}

#[test]
fn bubblewrap_missing_is_a_typed_error() {
    bounded(LIMIT, || {
        run_helper(&["env", "PATH=/nonexistent"], "no-bwrap");
    })
}

/// bwrap's `--die-with-parent` follows the thread that spawned it: a jail
/// started from a thread that then ends (a CLI's start thread, the async
/// face's start thread) must live on.
#[test]
fn a_jail_outlives_the_thread_that_started_it() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let gw = std::thread::spawn(|| jail("")).join().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let n: i64 = eval(&gw, "channel.send(5)");
        assert_eq!(n, 5);
        // The async face starts off the caller's thread.
        let gw2 = futures_lite::future::block_on(execnet::makegateway("popen//jail")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let ch = futures_lite::future::block_on(gw2.remote_exec("channel.send(6)")).unwrap();
        let n: i64 = futures_lite::future::block_on(ch.receive()).unwrap();
        assert_eq!(n, 6);
        futures_lite::future::block_on(gw2.exit()).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn transports_that_cannot_jail_refuse_the_keys() {
    bounded(LIMIT, || {
        for spec in [
            "socket=127.0.0.1:1//jail",
            "socket=127.0.0.1:1//max_cpu=1",
            "popen//via=gw0//jail",
            "popen//via=gw0//max_memory=1G",
            "popen//fork//jail",
            "popen//fork//max_cpu=1",
        ] {
            match makegateway(spec) {
                Err(Error::Spec(m)) => assert!(m.contains("not supported"), "{spec}: {m}"),
                Err(e) => panic!("{spec}: {e}"),
                Ok(_) => panic!("{spec}: started without its jail or limit"),
            }
        }
    })
}

/// `ssh=HOST//jail`: the remote host's bwrap builds the same jail (here
/// the "remote" host is this one, through a real sshd on loopback).
#[test]
fn ssh_jail_walls_in_the_remote_worker() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let sshd = match execnet_tests::sshd::Sshd::start() {
            Ok(s) => s,
            Err(e) => {
                skip(&format!("cannot start sshd: {e}"));
                return;
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let spec = format!(
            "ssh=sshd-root//ssh_config={}//jail//env:K=v w",
            sshd.ssh_config().display()
        );
        let gw = makegateway(&spec).unwrap_or_else(|e| panic!("{spec}: {e}\n{}", sshd.log()));
        let (uid, root, k, home, usr, net): (u32, Vec<String>, String, String, i64, String) = eval(
            &gw,
            &format!(
                r#"
import os, socket
try:
    open("/usr/execnet-ssh-jail", "w")
    usr = 0
except OSError as e:
    usr = e.errno
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    net = "connected"
except OSError as e:
    net = "refused"
channel.send((os.getuid(), os.listdir("/root"), os.environ["K"], os.environ["HOME"], usr, net))
"#
            ),
        );
        assert_ne!(uid, 0);
        assert!(root.is_empty(), "{root:?}");
        assert_eq!((k.as_str(), home.as_str()), ("v w", "/tmp"));
        assert_eq!(usr, 30);
        assert_eq!(net, "refused");
        gw.exit().unwrap();
        // max_cpu= over ssh: the same typed error.
        let spec = format!(
            "ssh=sshd-root//ssh_config={}//jail//max_cpu=1",
            sshd.ssh_config().display()
        );
        let gw = makegateway(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        let e = gw
            .remote_exec("while True:\n    pass\n")
            .unwrap()
            .receive_timeout::<Value>(Duration::from_secs(30))
            .unwrap_err();
        assert!(
            matches!(&e, Error::LimitExceeded { limit, .. } if limit == "max_cpu=1"),
            "{e}"
        );
        // The cgroup limits need a cgroup made there: refused.
        let spec = format!(
            "ssh=sshd-root//ssh_config={}//max_memory=1G",
            sshd.ssh_config().display()
        );
        assert!(matches!(makegateway(&spec), Err(Error::Spec(_))));
    })
}

/// From a spec's second start on, its next jail is built ahead (a spare):
/// every gateway still gets a jail of its own (own /tmp, own PID
/// namespace), and a spare killed meanwhile is replaced, not used.
#[test]
fn spare_jails_are_fresh_and_of_their_own() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let spec = "popen//jail//env:EXECNET_SPARE_TEST=1";
        let mut seen = Vec::new();
        for round in 0..4 {
            let gw = jail("//env:EXECNET_SPARE_TEST=1");
            let (found, pids): (Vec<String>, usize) = eval(
                &gw,
                "import os\nfound = os.listdir('/tmp')\nopen('/tmp/mark', 'w').close()\n\
                 channel.send((found, len([p for p in os.listdir('/proc') if p.isdigit()])))",
            );
            assert!(found.is_empty(), "{spec} round {round}: /tmp had {found:?}");
            assert!(pids <= 3, "{spec} round {round}: {pids} processes");
            seen.push(gw.info().pid);
            gw.exit().unwrap();
            if round == 2 {
                // Kill the spare that waits for round 3.
                let mut spares = Vec::new();
                assert!(
                    wait_until(T, || {
                        spares = spare_pids();
                        !spares.is_empty()
                    }),
                    "no spare was built"
                );
                assert_eq!(spares.len(), 1, "one spare for the spec: {spares:?}");
                for pid in spares {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                    // Dead (a zombie until the next start reaps it and
                    // finds it gone).
                    assert!(wait_until(T, || !process_alive(pid)));
                }
            }
        }
    })
}

/// bwrap processes of ours for the spare test's spec (its `env:` name is
/// on their command line): with that test's gateway gone, its spare.
fn spare_pids() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string));
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid.as_deref() == Some(me.as_str())
                && comm.trim() == "bwrap"
                && String::from_utf8_lossy(&cmd).contains("EXECNET_SPARE_TEST")
        })
        .collect()
}

/// Everything a transport must do (tests/src/suite.rs) works in a jail,
/// with limits on too.
#[test]
fn the_transport_suite_runs_jailed() {
    bounded(LIMIT, || {
        if !have_bwrap() {
            return;
        }
        let gw = jail("");
        execnet_tests::suite::run(&gw);
        gw.exit().unwrap();
        let gw = jail("//max_cpu=60");
        execnet_tests::suite::run(&gw);
        gw.exit().unwrap();
    })
}
