//! ssh gateways against a real OpenSSH server on 127.0.0.1
//! (`execnet_tests::sshd`): the behaviour suite as root and as an
//! unprivileged user, chdir/env/nice, connection reuse, a non-default
//! remote Python, and every start-up failure a user can act on.

use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Gateway};
use execnet::{Error, Value};
use execnet_tests::sshd::{Sshd, TEST_USER};
use execnet_tests::{bounded, process_alive, skip, suite, wait_until, TempDir, LIMIT};

/// A daemon, or `None` after a loud skip.
fn sshd() -> Option<Sshd> {
    match Sshd::start() {
        Ok(s) => Some(s),
        Err(e) => {
            skip(&format!("cannot start sshd: {e}"));
            None
        }
    }
}

fn spec(sshd: &Sshd, host: &str, extra: &str) -> String {
    format!(
        "ssh={host}//ssh_config={}{extra}",
        sshd.ssh_config().display()
    )
}

fn start(spec: &str, sshd: &Sshd) -> Gateway {
    makegateway(spec).unwrap_or_else(|e| panic!("{spec}: {e}\nsshd log:\n{}", sshd.log()))
}

#[test]
fn suite_as_root_and_as_user() {
    bounded(LIMIT, || {
        let Some(sshd) = sshd() else { return };
        for (host, uid_is_root) in [("sshd-root", true), ("sshd-user", false)] {
            let t0 = Instant::now();
            let gw = start(&spec(&sshd, host, ""), &sshd);
            eprintln!("ssh {host}: gateway up in {:?}", t0.elapsed());
            assert_eq!(gw.remoteaddress(), Some(host));
            let (uid, user): (i64, String) = gw
                .remote_exec(
                    "import os, pwd; u = os.getuid(); channel.send((u, pwd.getpwuid(u).pw_name))",
                )
                .unwrap()
                .receive()
                .unwrap();
            assert_eq!(uid == 0, uid_is_root, "{host}: uid {uid}");
            if !uid_is_root {
                assert_eq!(user, TEST_USER);
                assert_eq!(gw.info().executable, "/usr/bin/python3");
            }
            suite::run(&gw);
            let pid = gw.info().pid;
            gw.exit().unwrap();
            // The worker runs on this machine (the server is on loopback).
            assert!(
                wait_until(Duration::from_secs(5), || !process_alive(pid)),
                "remote worker {pid} still alive after exit"
            );
        }
    })
}

#[test]
fn chdir_env_and_nice_as_over_popen() {
    bounded(LIMIT, || {
        let Some(sshd) = sshd() else { return };
        let tmp = TempDir::new("sshchdir");
        // The unprivileged user must be able to create it.
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let dir = tmp.path().join("a b/c");
        let gw = start(
            &spec(
                &sshd,
                "sshd-user",
                &format!(
                    "//chdir={}//env:EXECNET_X=it's a \"test\"//nice=3",
                    dir.display()
                ),
            ),
            &sshd,
        );
        let (cwd, x, nice): (String, String, i64) = gw
            .remote_exec(
                "import os; channel.send((os.getcwd(), os.environ['EXECNET_X'], os.nice(0)))",
            )
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(std::path::Path::new(&cwd), dir);
        assert_eq!(gw.info().cwd, cwd);
        assert_eq!(x, "it's a \"test\"");
        // sshd (started by this test process) passes our own niceness on:
        // nice=3 is an increment, as over popen.
        assert_eq!(nice, (own_niceness() + 3).min(19));
    })
}

/// This process's niceness (field 19 of /proc/self/stat): a suite run under
/// `nice -n N` starts sshd, and so every remote shell, at N.
fn own_niceness() -> i64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(16).unwrap().parse().unwrap()
}

/// With `ssh_reuse` the second gateway rides the first one's connection;
/// the master ends with the last gateway.
#[test]
fn connection_reuse() {
    bounded(LIMIT, || {
        let _one = reuse_lock();
        let Some(sshd) = sshd() else { return };
        let plain = spec(&sshd, "sshd-user", "");
        let t0 = Instant::now();
        start(&plain, &sshd).exit().unwrap();
        let no_reuse = t0.elapsed();

        let reuse = spec(&sshd, "sshd-user", "//ssh_reuse");
        let t0 = Instant::now();
        let first = start(&reuse, &sshd);
        let first_time = t0.elapsed();
        let t0 = Instant::now();
        let second = start(&reuse, &sshd);
        let second_time = t0.elapsed();
        let third = start(&reuse, &sshd);
        eprintln!(
            "ssh gateway start: {no_reuse:?} without reuse, {first_time:?} first with reuse, \
             {second_time:?} reusing"
        );
        // One TCP connection for the three (sshd logs each accepted key).
        let accepted = sshd.log().matches("Accepted publickey").count();
        assert_eq!(accepted, 2, "{}", sshd.log());
        suite::echo(&second);
        assert!(
            second_time < no_reuse,
            "reuse was not faster: {second_time:?} vs {no_reuse:?}"
        );
        // The master survives the gateway that started it.
        first.exit().unwrap();
        suite::echo(&third);
        second.exit().unwrap();
        third.exit().unwrap();
        // The last one stopped the master: nobody listens on the control
        // socket any more.
        let check = std::process::Command::new("ssh")
            .arg("-F")
            .arg(sshd.ssh_config())
            .args(["-o", "ControlPath=none", "-O", "check", "sshd-user"])
            .output()
            .unwrap();
        assert!(!check.status.success());
        // ...and removed its private directory.
        let dir = std::env::temp_dir().join(format!("execnet-ssh-{}", std::process::id()));
        assert!(!dir.exists(), "{} left behind", dir.display());
    })
}

/// Tests that share ssh connections run one at a time: the control
/// directory is per process, and `connection_reuse` checks that it goes.
fn reuse_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every interpreter on this machine as root's remote Python, riding one
/// shared connection (each costs an interpreter start, not a login).
#[test]
fn every_interpreter_over_a_shared_connection() {
    bounded(LIMIT, || {
        let _one = reuse_lock();
        let Some(sshd) = sshd() else { return };
        // Holds the shared connection open between the others.
        let anchor = start(&spec(&sshd, "sshd-root", "//ssh_reuse"), &sshd);
        let t0 = Instant::now();
        let all = execnet_tests::interpreters();
        for py in &all {
            let gw = start(
                &spec(
                    &sshd,
                    "sshd-root",
                    &format!("//ssh_reuse//python={}", py.path.display()),
                ),
                &sshd,
            );
            assert_eq!(
                std::path::Path::new(&gw.info().executable)
                    .canonicalize()
                    .unwrap(),
                py.path.canonicalize().unwrap(),
                "{}",
                py.name
            );
            suite::echo(&gw);
            gw.exit().unwrap();
        }
        eprintln!(
            "{} interpreters over the shared connection in {:?}",
            all.len(),
            t0.elapsed()
        );
        anchor.exit().unwrap();
    })
}

#[test]
fn non_default_python() {
    bounded(LIMIT, || {
        let py = "/root/.pyenv/versions/3.12.1/bin/python3";
        if !std::path::Path::new(py).exists() {
            skip(&format!("{py} is not installed"));
            return;
        }
        let Some(sshd) = sshd() else { return };
        let gw = start(&spec(&sshd, "sshd-root", &format!("//python={py}")), &sshd);
        assert_eq!(
            (gw.info().version_info.major, gw.info().version_info.minor),
            (3, 12)
        );
        suite::echo(&gw);
        // python= is a remote shell command prefix, not one word.
        let gw = start(
            &spec(
                &sshd,
                "sshd-root",
                &format!("//python=env EXECNET_P=1 {py} -E"),
            ),
            &sshd,
        );
        let (p, e): (Value, i64) = gw
            .remote_exec("import os, sys; channel.send((os.environ.get('EXECNET_P'), sys.flags.ignore_environment))")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!((p, e), (Value::str("1"), 1));
    })
}

/// An ssh config next to the daemon's with one host changed.
fn variant_config(sshd: &Sshd, name: &str, lines: &str) -> std::path::PathBuf {
    let path = sshd.dir().join(format!("{name}_config"));
    let text = format!(
        "Host {name}\n  HostName 127.0.0.1\n  User root\n  BatchMode yes\n  IdentitiesOnly yes\n  LogLevel ERROR\n{lines}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn fail(spec: &str) -> Error {
    match makegateway(spec) {
        Ok(gw) => panic!("{spec}: started (pid {})", gw.info().pid),
        Err(e) => e,
    }
}

#[test]
fn startup_failures_are_specific() {
    bounded(LIMIT, || {
        let Some(sshd) = sshd() else { return };
        let dir = sshd.dir().display().to_string();
        let port = sshd.port();

        // A key the server does not know.
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(sshd.dir().join("other_key"))
            .status()
            .unwrap();
        assert!(status.success());
        let cfg = variant_config(
            &sshd,
            "wrongkey",
            &format!(
                "  Port {port}\n  IdentityFile {dir}/other_key\n  UserKnownHostsFile {dir}/known_hosts\n"
            ),
        );
        let e = fail(&format!("ssh=wrongkey//ssh_config={}", cfg.display()));
        match &e {
            Error::AuthenticationFailed { host, detail } => {
                assert_eq!(host, "wrongkey");
                assert!(detail.contains("Permission denied"), "{detail}");
            }
            other => panic!("expected AuthenticationFailed, got {other:?}"),
        }

        // A server whose host key we do not know.
        let cfg = variant_config(
            &sshd,
            "unknownkey",
            &format!(
                "  Port {port}\n  IdentityFile {dir}/client_key\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
            ),
        );
        let e = fail(&format!("ssh=unknownkey//ssh_config={}", cfg.display()));
        assert!(
            matches!(e, Error::HostKeyVerificationFailed { .. }),
            "expected HostKeyVerificationFailed, got {e:?}"
        );

        // Nobody listening.
        let closed = execnet_tests::refused_port();
        let cfg = variant_config(&sshd, "closed", &format!("  Port {closed}\n"));
        let e = fail(&format!("ssh=closed//ssh_config={}", cfg.display()));
        assert!(
            matches!(e, Error::ConnectionRefused { .. }),
            "expected ConnectionRefused, got {e:?}"
        );

        // A name that cannot resolve (RFC 2606 reserves .invalid).
        let e = fail(&format!(
            "ssh=no-such-host.invalid//ssh_config={}",
            sshd.ssh_config().display()
        ));
        match &e {
            Error::HostNotFound { host, detail } => {
                assert_eq!(host, "no-such-host.invalid");
                assert!(detail.contains("Could not resolve"), "{detail}");
            }
            other => panic!("expected HostNotFound, got {other:?}"),
        }

        // The remote interpreter does not exist.
        let e = fail(&spec(&sshd, "sshd-user", "//python=/nonexistent/python3"));
        match &e {
            Error::InterpreterNotFound { python, reason } => {
                assert_eq!(python, "/nonexistent/python3");
                assert!(
                    reason.contains("No such file") || reason.contains("not found"),
                    "{reason}"
                );
            }
            other => panic!("expected InterpreterNotFound, got {other:?}"),
        }
        let e = fail(&spec(&sshd, "sshd-user", "//python=python9.9"));
        assert!(
            matches!(e, Error::InterpreterNotFound { .. }),
            "expected InterpreterNotFound, got {e:?}"
        );
    })
}

/// The processes whose parent chain leads to `root`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

#[test]
fn sshd_killed_mid_session_ends_every_channel() {
    bounded(LIMIT, || sshd_killed_mid_session(""))
}

#[test]
fn sshd_killed_under_a_shared_connection_ends_every_channel() {
    bounded(LIMIT, || {
        let _one = reuse_lock();
        sshd_killed_mid_session("//ssh_reuse")
    })
}

fn sshd_killed_mid_session(extra: &str) {
    {
        let Some(mut sshd) = sshd() else { return };
        let gw = start(&spec(&sshd, "sshd-root", extra), &sshd);
        // With a shared connection: a second gateway on it, ended too.
        let other = (!extra.is_empty()).then(|| start(&spec(&sshd, "sshd-root", extra), &sshd));
        let worker = gw.info().pid;
        let chans: Vec<_> = (0..3)
            .map(|_| gw.remote_exec("channel.receive()").unwrap())
            .collect();
        let daemon = sshd.pid().unwrap();
        let sessions: Vec<u32> = descendants(daemon)
            .into_iter()
            .filter(|&p| p != worker)
            .filter(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim().starts_with("sshd"))
            })
            .collect();
        assert!(!sessions.is_empty(), "no sshd session process found");
        let t0 = Instant::now();
        sshd.kill();
        for p in sessions {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .status();
        }
        for ch in &chans {
            match ch.receive_value(Some(Duration::from_secs(10))) {
                Err(Error::WorkerDied { .. }) | Err(Error::ConnectionLost(_)) => {}
                other => panic!("expected the channel to end with an error, got {other:?}"),
            }
        }
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "channels ended after {took:?}"
        );
        assert!(gw.is_terminated() || wait_until(Duration::from_secs(5), || gw.is_terminated()));
        assert!(
            wait_until(Duration::from_secs(10), || !process_alive(worker)),
            "the remote worker {worker} outlived its connection"
        );
        if let Some(other) = other {
            let pid = other.info().pid;
            assert!(
                wait_until(Duration::from_secs(5), || other.is_terminated()),
                "the other gateway on the shared connection did not end"
            );
            assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
        }
    }
}

/// `socket//installvia=` an ssh gateway: the server runs as the remote
/// user on the remote host (here: loopback) and we connect to it directly.
#[test]
fn socket_installed_via_an_ssh_gateway() {
    bounded(LIMIT, || {
        let Some(sshd) = sshd() else { return };
        let remote = start(&spec(&sshd, "sshd-user", "//id=remote"), &sshd);
        let gw = Gateway::builder("socket//installvia=remote")
            .unwrap()
            .via_gateway(remote.clone())
            .start()
            .unwrap();
        let uid: i64 = gw
            .remote_exec("import os; channel.send(os.getuid())")
            .unwrap()
            .receive()
            .unwrap();
        assert_ne!(uid, 0, "the socket worker runs as the ssh user");
        suite::echo(&gw);
        gw.exit().unwrap();
        remote.exit().unwrap();
    })
}
