//! Gateway behaviour, ported from execnet's `testing/test_gateway.py`:
//! info, status, termination in every way a worker can end, popen spec
//! keys, output forwarding, bootstrap errors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Gateway, Group};
use execnet::{Error, ExitStatus, OutputMode, Value};
use execnet_tests::{assert_reaped, bounded, gw, process_alive, recording_output, TempDir, LIMIT};

const T: Duration = Duration::from_secs(10);

fn remote_pid(gw: &Gateway) -> u32 {
    gw.remote_exec("import os; channel.send(os.getpid())")
        .unwrap()
        .receive()
        .unwrap()
}

#[test]
fn info_matches_the_worker() {
    bounded(LIMIT, || {
        let gw = gw();
        let info = gw.info().clone();
        assert_eq!(info.pid, remote_pid(&gw));
        assert_eq!(info.platform, "linux");
        assert_eq!(info.version_info.major, 3);
        assert!(!info.executable.is_empty());
        let cwd: String = gw
            .remote_exec("import os; channel.send(os.getcwd())")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(info.cwd, cwd);
        assert_eq!(info.execmodel, "thread");
        assert!(gw.id().starts_with("gw"), "{}", gw.id());
        assert_eq!(gw.spec().id(), Some(gw.id()));
        gw.exit().unwrap();
        assert_reaped(info.pid, T);
    })
}

#[test]
fn remote_status_counts() {
    bounded(LIMIT, || {
        let gw = gw();
        let s = gw.remote_status().unwrap();
        assert_eq!(s.numexecuting, 0);
        assert_eq!(s.execmodel, "thread");
        let ch = gw.remote_exec("channel.receive()").unwrap();
        assert!(execnet_tests::wait_until(T, || {
            gw.remote_status().unwrap().numexecuting == 1
        }));
        let s = gw.remote_status().unwrap();
        assert!(s.numchannels >= 1, "{s:?}");
        ch.send(&1).unwrap();
        ch.waitclose(Some(T)).unwrap();
        assert!(execnet_tests::wait_until(T, || {
            let s = gw.remote_status().unwrap();
            s.numexecuting == 0 && s.numchannels == 0
        }));
    })
}

#[test]
fn exit_is_clean_and_reaps() {
    bounded(LIMIT, || {
        let gw = gw();
        let pid = gw.info().pid;
        let ch = gw.remote_exec("channel.receive()").unwrap();
        let t0 = Instant::now();
        gw.exit().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(6));
        assert!(gw.is_terminated());
        assert_reaped(pid, T);
        // The channel ended; operations on the gateway fail cleanly.
        let r = ch.receive::<Value>();
        assert!(
            matches!(r, Err(Error::EndOfChannel) | Err(Error::Remote(_))),
            "{r:?}"
        );
        assert!(gw.remote_exec("pass").is_err());
        gw.exit().unwrap();
    })
}

#[test]
fn terminate_kills_code_that_blocks_forever() {
    bounded(LIMIT, || {
        let gw = gw();
        let pid = gw.info().pid;
        // Ignores the interrupt and sleeps on.
        let _ch = gw
            .remote_exec(
                r#"
                import signal, time
                while True:
                    try:
                        time.sleep(100)
                    except BaseException:
                        pass
                "#,
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        gw.terminate(Some(Duration::from_millis(500)));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_reaped(pid, T);
    })
}

#[test]
fn drop_of_last_handle_terminates_and_reaps() {
    bounded(LIMIT, || {
        let gw = gw();
        let pid = gw.info().pid;
        let ch = gw.remote_exec("import time; time.sleep(1000)").unwrap();
        drop(gw);
        // The channel still holds the gateway.
        assert!(process_alive(pid));
        let t0 = Instant::now();
        drop(ch);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_reaped(pid, T);
    })
}

#[test]
fn grandchildren_are_killed_with_the_group() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                import subprocess
                p = subprocess.Popen(["sleep", "1000"])
                channel.send(p.pid)
                "#,
            )
            .unwrap();
        let child: u32 = ch.receive().unwrap();
        assert!(process_alive(child));
        gw.terminate(Some(Duration::from_millis(500)));
        assert!(
            execnet_tests::wait_until(T, || !process_alive(child)),
            "grandchild {child} survived terminate"
        );
    })
}

fn assert_worker_died(gw: &Gateway, ch: &execnet::blocking::Channel, signal: i32) {
    let t0 = Instant::now();
    let e = ch.receive::<Value>().unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5));
    match &e {
        Error::WorkerDied { status, .. } => assert_eq!(*status, ExitStatus::Signal(signal)),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(e.to_string().contains(&format!("signal {signal}")), "{e}");
    // Which gateway died is in the error (on a fleet: which host).
    assert!(
        e.to_string().contains(&format!("gateway {}", gw.id())),
        "{e}"
    );
    // Sticky, and waitclose agrees.
    assert!(matches!(
        ch.waitclose(Some(T)),
        Err(Error::WorkerDied { .. })
    ));
    assert!(gw.is_terminated());
    assert_reaped(gw.info().pid, T);
}

#[test]
fn worker_killed_by_sigkill() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.receive()").unwrap();
        let st = std::process::Command::new("kill")
            .args(["-KILL", &gw.info().pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        assert_worker_died(&gw, &ch, 9);
    })
}

#[test]
fn worker_killed_by_sigterm() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.receive()").unwrap();
        let other = gw.remote_exec("channel.receive()").unwrap();
        let st = std::process::Command::new("kill")
            .args(["-TERM", &gw.info().pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        assert_worker_died(&gw, &ch, 15);
        // Every channel ended, not only the one we waited on.
        assert!(matches!(
            other.receive::<Value>(),
            Err(Error::WorkerDied { .. })
        ));
        assert!(other.send(&1).is_err());
    })
}

#[test]
fn worker_exiting_from_remote_code() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                "import sys, os; sys.stderr.write('bye now\\n'); sys.stderr.flush(); os._exit(3)",
            )
            .unwrap();
        match ch.receive::<Value>().unwrap_err() {
            Error::WorkerDied { status, .. } => assert_eq!(status, ExitStatus::Code(3)),
            other => panic!("expected WorkerDied, got {other:?}"),
        }
    })
}

#[test]
fn system_exit_closes_the_channel_not_the_worker() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("raise SystemExit(2)").unwrap();
        let e = ch.receive::<Value>().unwrap_err();
        assert_eq!(e.as_remote().unwrap().exception_type(), Some("SystemExit"));
        let ch = gw.remote_exec("channel.send(7)").unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 7);
    })
}

#[test]
fn fd_writes_do_not_corrupt_the_stream() {
    bounded(LIMIT, || {
        let (gw, out) = recording_output("popen");
        let ch = gw
            .remote_exec(
                r#"
                import os, sys
                os.write(1, b"fd1-raw\n")
                os.write(2, b"fd2-raw\n")
                print("printed")
                sys.stdout.flush()
                sys.stderr.write("stderr-text\n")
                sys.stderr.flush()
                channel.send("after")
                "#,
            )
            .unwrap();
        assert_eq!(ch.receive::<String>().unwrap(), "after");
        ch.waitclose(Some(T)).unwrap();
        assert!(
            execnet_tests::wait_until(T, || {
                let (o, e) = (out.text(1), out.text(2));
                o.contains("fd1-raw")
                    && o.contains("printed")
                    && e.contains("fd2-raw")
                    && e.contains("stderr-text")
            }),
            "output: {:?}",
            out.chunks()
        );
        // Still a working gateway.
        let ch = gw.remote_exec("channel.send(1)").unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1);
    })
}

#[test]
fn stderr_written_just_before_a_local_worker_dies_is_forwarded() {
    bounded(LIMIT, || {
        // Output `forward` on a local worker: the host reads the worker's
        // stderr pipe itself, so the last words of a worker that ends at
        // once (os._exit, a crash) arrive; through the worker's own output
        // thread they were lost in about half of such ends. Also with a
        // limit (its control wraps the process's).
        for spec in ["popen", "popen//max_cpu=600"] {
            for i in 0..5 {
                let (gw, out) = recording_output(spec);
                let ch = gw
                    .remote_exec(&format!(
                        "import os, sys\nsys.stderr.write('last words {i}\\n')\nsys.stderr.flush()\nos._exit(3)\n"
                    ))
                    .unwrap();
                assert!(ch.receive::<i64>().is_err(), "the worker died");
                let want = format!("last words {i}");
                assert!(
                    execnet_tests::wait_until(T, || out.text(2).contains(&want)),
                    "{spec}, run {i}: {:?}",
                    out.chunks()
                );
                gw.terminate(Some(T));
            }
        }
    })
}

#[test]
fn output_discard_and_inherit_keep_the_stream_intact() {
    bounded(LIMIT, || {
        for mode in ["discard", "inherit"] {
            let gw = makegateway(&format!("popen//stdout={mode}")).unwrap();
            let ch = gw
                .remote_exec(&format!(
                    "import os; os.write(1, b'x' * {}); print('p'); channel.send('ok')",
                    if mode == "discard" { 100_000 } else { 10 }
                ))
                .unwrap();
            assert_eq!(ch.receive::<String>().unwrap(), "ok", "mode {mode}");
            gw.exit().unwrap();
        }
        let gw = Gateway::builder("popen")
            .unwrap()
            .output_mode(OutputMode::Discard)
            .start()
            .unwrap();
        assert_eq!(
            gw.remote_exec("print('x'); channel.send(2)")
                .unwrap()
                .receive::<i64>()
                .unwrap(),
            2
        );
    })
}

#[test]
fn main_thread_only() {
    bounded(LIMIT, || {
        let gw = makegateway("popen//execmodel=main_thread_only").unwrap();
        assert_eq!(gw.info().execmodel, "main_thread_only");
        assert_eq!(gw.remote_status().unwrap().execmodel, "main_thread_only");
        let ch = gw
            .remote_exec("import threading; channel.send(threading.current_thread() is threading.main_thread())")
            .unwrap();
        assert!(ch.receive::<bool>().unwrap());
        // Execs queue up behind each other; the receiver does not stall.
        let a = gw
            .remote_exec("channel.send(channel.receive() + 1)")
            .unwrap();
        let b = gw.remote_exec("channel.send('b')").unwrap();
        a.send(&1).unwrap();
        assert_eq!(a.receive::<i64>().unwrap(), 2);
        assert_eq!(b.receive::<String>().unwrap(), "b");
        // Status is answered while main-thread code runs.
        let c = gw.remote_exec("channel.receive()").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(gw.remote_status().unwrap().numexecuting, 1);
        c.send(&0).unwrap();
        c.waitclose(Some(T)).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn chdir_is_created_and_used() {
    bounded(LIMIT, || {
        let tmp = TempDir::new("chdir");
        let dir = tmp.path().join("a/b");
        let gw = makegateway(&format!("popen//chdir={}", dir.display())).unwrap();
        let cwd: String = gw
            .remote_exec("import os; channel.send(os.getcwd())")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(std::path::Path::new(&cwd), dir.canonicalize().unwrap());
        assert_eq!(gw.info().cwd, cwd);
    })
}

#[test]
fn env_keys_reach_the_worker() {
    bounded(LIMIT, || {
        let gw = makegateway("popen//env:EXECNET_T1=hello world//env:EXECNET_T2=a=b").unwrap();
        let (a, b): (String, String) = gw
            .remote_exec(
                "import os; channel.send((os.environ['EXECNET_T1'], os.environ['EXECNET_T2']))",
            )
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(a, "hello world");
        assert_eq!(b, "a=b");
    })
}

#[test]
fn nice_is_applied_to_every_thread() {
    bounded(LIMIT, || {
        let ours: i64 = {
            let gw = gw();
            gw.remote_exec("import os; channel.send(os.nice(0))")
                .unwrap()
                .receive()
                .unwrap()
        };
        let gw = makegateway("popen//nice=5").unwrap();
        // In an exec thread and in the main thread alike.
        let n: i64 = gw
            .remote_exec("import os; channel.send(os.nice(0))")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(n, (ours + 5).min(19));
        let gw = makegateway("popen//nice=5//execmodel=main_thread_only").unwrap();
        let n: i64 = gw
            .remote_exec("import os; channel.send(os.nice(0))")
            .unwrap()
            .receive()
            .unwrap();
        assert_eq!(n, (ours + 5).min(19));
    })
}

#[test]
fn python_key_with_shell_words() {
    bounded(LIMIT, || {
        // An interpreter command with arguments: `-E` ignores PYTHON* env.
        let gw = makegateway("popen//python=/usr/bin/python3 -E//env:PYTHONFOO=1").unwrap();
        let (exe, flag): (String, i64) = gw
            .remote_exec("import sys; channel.send((sys.executable, sys.flags.ignore_environment))")
            .unwrap()
            .receive()
            .unwrap();
        assert!(
            exe.ends_with("python3") || exe.contains("python3."),
            "{exe}"
        );
        assert_eq!(flag, 1);
        assert_eq!(gw.info().executable, exe);
    })
}

#[test]
fn dont_write_bytecode() {
    bounded(LIMIT, || {
        let gw = makegateway("popen//dont_write_bytecode").unwrap();
        let b: bool = gw
            .remote_exec("import sys; channel.send(sys.dont_write_bytecode)")
            .unwrap()
            .receive()
            .unwrap();
        assert!(b);
        if std::env::var_os("PYTHONDONTWRITEBYTECODE").is_none() {
            let gw = makegateway("popen").unwrap();
            let b: bool = gw
                .remote_exec("import sys; channel.send(sys.dont_write_bytecode)")
                .unwrap()
                .receive()
                .unwrap();
            assert!(!b);
        }
    })
}

#[test]
fn missing_interpreter_is_interpreter_not_found() {
    bounded(LIMIT, || {
        let t0 = Instant::now();
        let e = makegateway("popen//python=/nonexistent/python9").unwrap_err();
        assert!(matches!(e, Error::InterpreterNotFound { .. }), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    })
}

#[test]
fn interpreter_that_is_not_python_fails_bootstrap_with_stderr() {
    bounded(LIMIT, || {
        // `sh -c LOADER` fails at once with a message on stderr.
        let e = makegateway("popen//python=sh").unwrap_err();
        match &e {
            Error::BootstrapFailed { stderr_tail, .. } => {
                assert!(!stderr_tail.is_empty(), "{e}")
            }
            other => panic!("expected BootstrapFailed, got {other:?}"),
        }
    })
}

#[test]
fn python2_is_refused_with_a_bootstrap_error() {
    bounded(LIMIT, || {
        let Some(py2) = execnet_tests::python2() else {
            eprintln!("SKIPPED: no python2 on this machine (optional)");
            return;
        };
        let e = makegateway(&format!("popen//python={}", py2.display())).unwrap_err();
        match &e {
            Error::BootstrapFailed { stderr_tail, .. } => {
                assert!(!stderr_tail.is_empty(), "{e}")
            }
            other => panic!("expected BootstrapFailed, got {other:?}"),
        }
    })
}

/// Which loader started the worker: `None` compiled the source (and handed
/// the code back), `Some(true)` loaded the code an earlier start compiled.
fn boot_kind(gw: &Gateway) -> Option<bool> {
    gw.remote_exec(
        "import sys; channel.send(getattr(sys.modules['__main__'], '_execnet_boot', None))",
    )
    .unwrap()
    .receive()
    .unwrap()
}

#[test]
fn later_popen_starts_load_the_worker_the_first_one_compiled() {
    bounded(LIMIT, || {
        // A command line of its own (`-X` takes any name): no other test's
        // start shares the entry.
        let python = execnet::transport::popen::default_python().unwrap();
        let spec = format!("popen//python={python} -X execnet_cache_test");
        let first = makegateway(&spec).unwrap();
        assert_eq!(boot_kind(&first), None, "the first start compiles");
        let later: Vec<Gateway> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4).map(|_| s.spawn(|| makegateway(&spec))).collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        for gw in later.iter().chain([&first]) {
            if !std::ptr::eq(gw, &first) {
                assert_eq!(boot_kind(gw), Some(true), "a later start loads the code");
            }
            // The loaded worker is the whole worker: values, errors, channels.
            let ch = gw
                .remote_exec("x = channel.receive(); channel.send((x, [x] * 2, {'k': x}))")
                .unwrap();
            ch.send(&7i64).unwrap();
            let v: (i64, Vec<i64>, std::collections::BTreeMap<String, i64>) = ch.receive().unwrap();
            assert_eq!(v, (7, vec![7, 7], [("k".to_string(), 7)].into()));
            let e = gw
                .remote_exec("1/0")
                .unwrap()
                .waitclose(Some(T))
                .unwrap_err();
            assert!(e.to_string().contains("ZeroDivisionError"), "{e}");
        }
        // A different command line is a different interpreter for the cache;
        // a different environment is not.
        let other = makegateway(&format!("{spec}=2")).unwrap();
        assert_eq!(boot_kind(&other), None);
        let env = makegateway(&format!("{spec}//env:EXECNET_CACHE_TEST=1")).unwrap();
        assert_eq!(boot_kind(&env), Some(true));
        for gw in later.into_iter().chain([first, other, env]) {
            let pid = gw.info().pid;
            gw.exit().unwrap();
            assert_reaped(pid, T);
        }
    })
}

#[test]
fn spec_errors() {
    bounded(LIMIT, || {
        assert!(matches!(makegateway("nonsense"), Err(Error::Spec(_))));
        assert!(matches!(makegateway("popen//nice=x"), Err(Error::Spec(_))));
        assert!(matches!(
            makegateway("popen//execmodel=eventlet"),
            Err(Error::Spec(_))
        ));
    })
}

#[test]
fn group_ids_and_terminate() {
    bounded(LIMIT, || {
        let group = Group::new();
        let a = group.makegateway("popen").unwrap();
        let b = group.makegateway("popen//id=special").unwrap();
        let c = group.makegateway("").unwrap();
        assert_eq!(a.id(), "gw0");
        assert_eq!(b.id(), "special");
        assert_eq!(c.id(), "gw1");
        assert!(group.makegateway("popen//id=special").is_err());
        assert_eq!(group.len(), 3);
        assert_eq!(group.get("special").unwrap().info().pid, b.info().pid);
        let pids: Vec<u32> = group.gateways().iter().map(|g| g.info().pid).collect();
        let _blocked = a.remote_exec("import time; time.sleep(100)").unwrap();
        let t0 = Instant::now();
        group.terminate(Some(Duration::from_millis(500)));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(group.is_empty());
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

#[test]
fn group_drop_reaps_everything() {
    bounded(LIMIT, || {
        let group = Group::new();
        let pids: Vec<u32> = (0..3)
            .map(|_| group.makegateway("popen").unwrap().info().pid)
            .collect();
        drop(group);
        for pid in pids {
            assert_reaped(pid, T);
        }
    })
}

#[test]
fn exec_source_is_dedented() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                "
                    x = 1
                    if x:
                        channel.send(x)
                ",
            )
            .unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1);
    })
}

#[test]
fn garbage_instead_of_hello_is_a_bootstrap_error() {
    bounded(LIMIT, || {
        let t0 = Instant::now();
        let e = makegateway(
            "popen//python=/bin/sh -c 'printf garbage-garbage-garbage-garbage; exec sleep 30' sh",
        )
        .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        match &e {
            Error::BootstrapFailed { reason, .. } => {
                assert!(reason.contains("protocol"), "{e}")
            }
            other => panic!("expected BootstrapFailed, got {other:?}"),
        }
    })
}

/// A reader that ends the stream after `left` bytes (a cut connection).
struct Cut<R> {
    inner: R,
    left: usize,
}

impl<R: std::io::Read> std::io::Read for Cut<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn cut_stream_ends_channels_and_kills_the_worker() {
    bounded(LIMIT, || {
        let mut t =
            execnet::transport::popen::connect(&execnet::transport::popen::PopenOptions::default())
                .unwrap();
        let pid = t.control.as_ref().unwrap().pid().unwrap();
        t.reader = Box::new(Cut {
            inner: t.reader,
            left: 2000,
        });
        let gw = Gateway::builder("popen")
            .unwrap()
            .start_with_transport(t)
            .unwrap();
        let ch = gw
            .remote_exec("channel.send(b'x' * 100000); channel.receive()")
            .unwrap();
        let t0 = Instant::now();
        let e = ch.receive::<Value>().unwrap_err();
        assert!(
            matches!(e, Error::ConnectionLost(_) | Error::Protocol(_)),
            "{e:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(gw.is_terminated());
        assert_reaped(pid, T);
    })
}

#[test]
fn exit_from_a_callback_is_bounded() {
    bounded(LIMIT, || {
        let gw = gw();
        let pid = gw.info().pid;
        let ch = gw
            .remote_exec("channel.send(1); channel.receive()")
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let g2 = gw.clone();
        ch.set_callback(
            move |_| {
                let t0 = Instant::now();
                let r = g2.exit();
                let _ = tx.send((r.is_ok(), t0.elapsed()));
            },
            None,
        )
        .unwrap();
        let (ok, took) = rx.recv_timeout(T).unwrap();
        assert!(ok);
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_reaped(pid, T);
    })
}

#[test]
fn many_execs_do_not_accumulate_state() {
    bounded(LIMIT, || {
        let gw = gw();
        for _ in 0..300 {
            let ch = gw.remote_exec("channel.send(1)").unwrap();
            assert_eq!(ch.receive::<i64>().unwrap(), 1);
        }
        // Fire and forget: handles dropped at once.
        for _ in 0..300 {
            drop(gw.remote_exec("pass").unwrap());
        }
        assert!(execnet_tests::wait_until(T, || {
            let s = gw.remote_status().unwrap();
            s.numchannels == 0 && s.numexecuting == 0
        }));
    })
}

#[test]
fn default_cwd_and_executable_are_the_hosts() {
    bounded(LIMIT, || {
        let gw = gw();
        let here = std::env::current_dir().unwrap();
        assert_eq!(std::path::Path::new(&gw.info().cwd), here);
        let exe = execnet::transport::popen::default_python().unwrap();
        assert_eq!(gw.info().executable, exe);
    })
}

#[test]
fn exc_info_is_clear_after_startup() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                import sys, traceback
                excinfo = sys.exc_info()
                if excinfo != (None, None, None):
                    channel.send("".join(traceback.format_exception(*excinfo)))
                else:
                    channel.send(0)
                "#,
            )
            .unwrap();
        assert_eq!(ch.receive::<Value>().unwrap(), Value::Int(0));
    })
}

#[test]
fn threads_race_sending() {
    bounded(LIMIT, || {
        let gw = gw();
        let chans: Vec<_> = (0..5)
            .map(|_| {
                gw.remote_exec(
                    r#"
                    for x in range(10):
                        channel.send("x" * 1000)
                    channel.receive()
                    "#,
                )
                .unwrap()
            })
            .collect();
        for ch in &chans {
            for _ in 0..10 {
                assert_eq!(ch.receive_timeout::<String>(T).unwrap().len(), 1000);
            }
            ch.send(&1).unwrap();
        }
        for ch in &chans {
            ch.waitclose(Some(T)).unwrap();
        }
    })
}

#[test]
fn remote_closing_its_own_exec_channel() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.send(1); channel.close()").unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1);
        // Whatever the worker reports (execnet: an error mentioning the
        // explicit close), the channel ends and the gateway stays usable.
        let _ = ch.waitclose(Some(T));
        assert!(ch.is_closed());
        assert_eq!(
            gw.remote_exec("channel.send(2)")
                .unwrap()
                .receive::<i64>()
                .unwrap(),
            2
        );
    })
}

#[test]
fn group_makegateway_with_a_builder() {
    bounded(LIMIT, || {
        let group = Group::new();
        let out = Arc::new(Mutex::new(Vec::new()));
        let o2 = out.clone();
        let b = Gateway::builder("popen")
            .unwrap()
            .on_output(move |_, bytes| o2.lock().unwrap().extend_from_slice(bytes));
        let gw = group.makegateway_with(b).unwrap();
        assert_eq!(gw.id(), "gw0");
        let ch = gw
            .remote_exec("print('via builder'); channel.send(1)")
            .unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1);
        assert!(execnet_tests::wait_until(T, || {
            String::from_utf8_lossy(&out.lock().unwrap()).contains("via builder")
        }));
        let named = group
            .makegateway_with(Gateway::builder("popen").unwrap().id("named"))
            .unwrap();
        assert_eq!(named.id(), "named");
        assert!(group
            .makegateway_with(Gateway::builder("popen//id=named").unwrap())
            .is_err());
    })
}

#[test]
fn item_too_large_is_refused_locally_and_the_channel_stays_usable() {
    bounded(LIMIT, || {
        let config = execnet::Config {
            max_item: 1 << 20,
            ..Default::default()
        };
        let gw = Gateway::builder("popen")
            .unwrap()
            .config(config)
            .start()
            .unwrap();
        let ch = gw
            .remote_exec("for x in channel:\n    channel.send(len(x))")
            .unwrap();
        let e = ch.send_value(&Value::Bytes(vec![0; 2 << 20])).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        ch.send_value(&Value::Bytes(vec![0; 1000])).unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1000);
        // The worker is held to the same limit.
        let big = gw.remote_exec("channel.send(b'x' * (2 << 20))").unwrap();
        assert!(big.receive::<Value>().is_err());
        assert_eq!(
            gw.remote_exec("channel.send(3)")
                .unwrap()
                .receive::<i64>()
                .unwrap(),
            3
        );
    })
}

#[test]
fn silent_interpreter_hits_the_startup_timeout() {
    bounded(LIMIT, || {
        let t0 = Instant::now();
        let e = Gateway::builder("popen//python=/bin/sh -c 'exec sleep 30' sh")
            .unwrap()
            .startup_timeout(Duration::from_millis(500))
            .start()
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(matches!(e, Error::BootstrapFailed { .. }), "{e:?}");
        assert!(e.to_string().contains("HELLO"), "{e}");
    })
}
