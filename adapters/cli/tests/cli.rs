//! The `execnet` command line.

use std::process::Command;

fn execnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_execnet"))
}

/// Fails the test with the command's stderr unless it exited with 0.
fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_prints_items_as_json_lines() {
    let out = execnet()
        .args([
            "run",
            "-c",
            "import sys; channel.send(sys.version); channel.send({'a': [1, (2, 3)], 'b': None})",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(v.as_str().unwrap().starts_with('3'), "{v}");
    assert_eq!(lines[1], r#"{"a":[1,[2,3]],"b":null}"#);
}

#[test]
fn run_on_several_gateways_prefixes_ids_and_forwards_output() {
    let out = execnet()
        .args([
            "run",
            "--gw",
            "popen//id=one",
            "--gw",
            "popen//id=two",
            "-c",
            "print('remote says hi'); channel.send(42)",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["one 42", "two 42"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("remote says hi").count(), 2, "{stderr}");
}

#[test]
fn run_file_and_remote_error_exit_status() {
    let dir = std::env::temp_dir().join(format!("execnet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("job.py");
    std::fs::write(&file, "channel.send('before')\nraise KeyError('nope')\n").unwrap();
    let out = execnet().arg("run").arg(&file).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"before\"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Traceback"), "{stderr}");
    assert!(stderr.contains("KeyError: 'nope'"), "{stderr}");
}

#[test]
fn bad_spec_fails_cleanly() {
    let out = execnet()
        .args(["run", "--gw", "popen//python=/nonexistent/py", "-c", "pass"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interpreter not found"), "{stderr}");
}

/// Runs `execnet ARGS` with `input` on its standard input.
fn run_with_input(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = execnet()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn stdin_lines_are_sent_as_json_values() {
    // The issue's example.
    let out = run_with_input(
        &["run", "-c", "channel.send(channel.receive() + 1)"],
        "41\n",
    );
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    // Every JSON type; blank lines skipped; end of input ends the remote's
    // iteration, and the remote still sends after it.
    let out = run_with_input(
        &[
            "run",
            "-c",
            "items = list(channel)\nchannel.send([type(x).__name__ for x in items])\nchannel.send(items)",
        ],
        "1\n\n2.5\r\n\"s\"\nnull\ntrue\n[1, [2]]\n{\"k\": {\"n\": -3}}\n18446744073709551615\n",
    );
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            r#"["int","float","str","NoneType","bool","list","dict","int"]"#,
            r#"[1,2.5,"s",null,true,[1,[2]],{"k":{"n":-3}},18446744073709551615]"#,
        ]
    );
}

#[test]
fn stdin_raw_lines_are_str_and_go_to_every_gateway() {
    let out = run_with_input(
        &[
            "run",
            "--raw",
            "--gw",
            "popen//id=one",
            "--gw",
            "popen//id=two",
            "-c",
            "channel.send([x.upper() for x in channel])",
        ],
        "a b\n\n{not json}\r\nlast without newline",
    );
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    let want = r#"["A B","","{NOT JSON}","LAST WITHOUT NEWLINE"]"#;
    assert_eq!(lines, [format!("one {want}"), format!("two {want}")]);
}

#[test]
fn stdin_that_is_not_json_fails_after_the_lines_before() {
    let out = run_with_input(
        &["run", "-c", "channel.send(list(channel))"],
        "1\nnope\n3\n",
    );
    assert_eq!(out.status.code(), Some(1));
    // The remote saw the first line, then end of input.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[1]\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2 is not JSON"), "{stderr}");
    assert!(stderr.contains("--raw"), "{stderr}");
    // Reading past the end of input is the remote code's EOFError.
    let out = run_with_input(&["run", "-c", "channel.send(channel.receive())"], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("EOFError"), "{stderr}");
}

#[test]
fn code_that_does_not_read_stdin_ends_while_stdin_stays_open() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = execnet()
        .args(["run", "-c", "channel.send('done')"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Our end of its stdin stays open (an idle terminal or pipe).
    let _stdin = child.stdin.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("execnet run waited for standard input after its code ended");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, "\"done\"\n");
}

/// `jail` and the limits from the command line (docs/jails.md): the jail
/// outlives the CLI's start threads, and a limit's kill is named.
#[test]
fn jail_and_limit_keys_work_from_the_command_line() {
    let out = execnet()
        .args([
            "run",
            "--gw",
            "popen//max_cpu=1",
            "-c",
            "while True:\n    pass\n",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limit exceeded: max_cpu=1"), "{stderr}");

    let have_bwrap = Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_bwrap {
        assert!(
            std::env::var("EXECNET_REQUIRE_ALL").as_deref() != Ok("1"),
            "bwrap missing (apt-get install bubblewrap)"
        );
        use std::io::Write;
        let _ = std::io::stderr().write_all(
            b"SKIPPED jail_and_limit_keys_work_from_the_command_line (jail part): bwrap missing\n",
        );
        return;
    }
    let out = execnet()
        .args([
            "run",
            "--gw",
            "popen//jail",
            "--gw",
            "popen//jail//jail_net",
            "-c",
            "import os, time; time.sleep(0.3); channel.send(os.getuid())",
        ])
        .output()
        .unwrap();
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.lines().all(|l| l.ends_with("65534")), "{stdout}");
}
