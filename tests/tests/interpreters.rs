//! Every Python interpreter on this machine as a popen target.

use std::time::Duration;

use execnet::blocking::makegateway;
use execnet::Value;
use execnet_tests::{assert_reaped, bounded, interpreters, skip};

#[test]
fn every_interpreter_present_runs_the_worker() {
    bounded(Duration::from_secs(180), || {
        let found = interpreters();
        assert!(!found.is_empty(), "no python3 at all");
        if !found.iter().any(|i| i.name == "pypy3") {
            skip("pypy3 (/usr/bin/pypy3) absent");
        }
        if !found.iter().any(|i| i.name.starts_with("pyenv-")) {
            eprintln!(
                "NOTE: no pyenv interpreters here; only Debian's python3 and pypy3 are tested"
            );
        }
        let mut failures = Vec::new();
        // Twice each: the first start compiles the worker and hands the
        // code back, the second loads that code (transport/code_cache.rs).
        for (py, round) in found.iter().flat_map(|py| [(py, 0), (py, 1)]) {
            let gw = match makegateway(&py.spec()) {
                Ok(gw) => gw,
                Err(e) => {
                    eprintln!("FAILED: {}: {e}", py.name);
                    failures.push(format!("{}: {e}", py.name));
                    continue;
                }
            };
            let ch = gw
                .remote_exec(
                    r#"
                    import sys
                    x = channel.receive()
                    boot = getattr(sys.modules["__main__"], "_execnet_boot", None)
                    channel.send((sys.implementation.name, list(sys.version_info[:2]), x, boot))
                    c = channel.gateway.newchannel()
                    channel.send(c)
                    c.send(b"bytes" * 1000)
                    raise ValueError("on purpose")
                    "#,
                )
                .unwrap();
            let v = Value::Tuple(vec![
                Value::Int(1),
                Value::Float(0.5),
                Value::str("s"),
                Value::Set(vec![Value::Int(2)]),
                Value::Complex(1.0, 1.0),
            ]);
            ch.send_value(&v).unwrap();
            let (imp, ver, back, boot): (String, Vec<u32>, Value, Option<bool>) =
                ch.receive().unwrap();
            assert_eq!(back, v, "{}", py.name);
            let compiled = if round == 0 { None } else { Some(true) };
            assert_eq!(boot, compiled, "{} start {round}", py.name);
            assert_eq!(ver[0], 3, "{}", py.name);
            assert_eq!(ver[0], gw.info().version_info.major);
            assert_eq!(ver[1], gw.info().version_info.minor);
            assert_eq!(imp, gw.info().implementation);
            let sub: execnet::blocking::Channel = ch.receive().unwrap();
            assert_eq!(
                sub.receive::<Value>().unwrap(),
                Value::Bytes(b"bytes".repeat(1000))
            );
            let e = ch.waitclose(Some(Duration::from_secs(10))).unwrap_err();
            assert_eq!(
                e.as_remote().unwrap().exception_type(),
                Some("ValueError"),
                "{}",
                py.name
            );
            let pid = gw.info().pid;
            gw.exit().unwrap();
            assert_reaped(pid, Duration::from_secs(10));
            eprintln!(
                "ok: {} ({} {}.{}) start {round}",
                py.name, imp, ver[0], ver[1]
            );
        }
        assert!(
            failures.is_empty(),
            "interpreters that cannot run the worker:\n{}",
            failures.join("\n")
        );
    })
}
