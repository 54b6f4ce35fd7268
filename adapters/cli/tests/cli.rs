//! The `execnet` command line.

use std::process::Command;

fn execnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_execnet"))
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
