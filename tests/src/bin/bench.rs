//! Side-by-side benchmark: this crate against Python's execnet 2.1.2, on the
//! same interpreter binary, interleaved in one run, plus the machine limits
//! (bare interpreter start, raw pipe ping-pong and bandwidth, `tar | tar`)
//! measured in the same run.
//!
//! ```text
//! cargo run --release -p execnet-tests --bin bench [-- --quick] [--python PATH] [--only a,b]
//!     [--pythons PATH,PATH]
//! ```
//!
//! Sections (`--only`): `start` (warm start vs bare), `cold` (warm start,
//! first start of a fresh host process with an empty and with a populated
//! compiled-worker cache), `many` (16 and 64 gateways at once in a fresh
//! process against as many bare interpreters, per start mode in
//! [`START_MODES`]), `gateways` (bulk each way on the first and a later
//! gateway of a fresh process, the worker's page faults per MiB received),
//! `pinned` (ping-pong with both ends pinned by `taskset`, across cores and
//! on one core), `pingpong`, `items`, `bulk`, `channels`, `rsync`. `cold`,
//! `many` and `gateways` run on each of `--pythons` (default: Debian's
//! `/usr/bin/python3` and pyenv's newest 3.11); the rest on `--python`.
//! The run uses a compiled-worker cache directory of its own under
//! `target/` (never `~/.cache`), removed at the end.
//!
//! The execnet side runs in a throwaway venv under `target/bench-venv`
//! (created once with `PYTHON -m venv` and `pip install execnet==2.1.2`),
//! driven by `tests/src/bench/execnet_driver.py`, which answers one JSON line
//! per command. Every remote snippet is defined here and sent to both, so
//! both implementations run the same remote code. Each figure is the median
//! of its repeats; within a repeat the two sides alternate who goes first.
//!
//! The table's `speed-up` is how many times better ours is than execnet
//! (execnet's time / ours, or our rate / execnet's); `target` is the goal of
//! issue 8 with the value it is checked against.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Gateway};
use execnet::Value;

const DRIVER: &str = include_str!("../bench/execnet_driver.py");

// The remote code, the same for both implementations.
const SRC_ECHO: &str = "for x in channel:\n    channel.send(x)\n";
const SRC_ITEMS_UP: &str =
    "n = 0\nfor x in channel:\n    if x is None:\n        break\n    n += 1\nchannel.send(n)\n";
const SRC_ITEMS_DOWN: &str = "n, kind = channel.receive()\nsend = channel.send\n\
if kind == 'int':\n    for i in range(n):\n        send(i)\n\
else:\n    for i in range(n):\n        send((i, 'ab'))\nsend(None)\n";
const SRC_BULK_UP: &str = "n = 0\nwhile 1:\n    x = channel.receive()\n    if x is None:\n        break\n    n += len(x)\nchannel.send(n)\n";
const SRC_BULK_DOWN: &str = "n = channel.receive()\ndata = b'x' * (1 << 20)\n\
for i in range(n):\n    channel.send(data)\nchannel.send(None)\n";
const SRC_CHANNEL: &str = "channel.send(channel.receive())";
const SRC_ANSWER: &str = "channel.send(1)";

// The limits: a Python child on raw pipes.
const RAW_ECHO: &str = "import os\nr, w = os.read, os.write\nwhile 1:\n    d = r(0, 65536)\n    if not d:\n        break\n    w(1, d)\n";
const RAW_SINK: &str = "import os, fcntl\ntry:\n    fcntl.fcntl(0, 1031, 1 << 20)\nexcept Exception:\n    pass\n\
f = open(0, 'rb', buffering=0)\nb = bytearray(1 << 20)\nt = 0\nwhile 1:\n    k = f.readinto(b)\n    if not k:\n        break\n    t += k\nos.write(1, str(t).encode())\n";
const RAW_SOURCE: &str =
    "import os, sys, fcntl\ntry:\n    fcntl.fcntl(1, 1031, 1 << 20)\nexcept Exception:\n    pass\n\
b = b'x' * (1 << 20)\nfor i in range(int(sys.argv[1])):\n    os.write(1, b)\n";

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Sizes of one run.
struct Plan {
    repeats: usize,
    pingpong: usize,
    items: i64,
    bulk_mib: u64,
    channels: usize,
    /// Repeats of the 16-at-once rows, and of the 64-at-once rows.
    many_repeats: usize,
    many_repeats_64: usize,
    /// Repeats of the cold/warm start rows (single starts swing by 2-3x on
    /// a loaded 2-core VM: more samples than the other rows).
    cold_repeats: usize,
    rsync_files: usize,
    rsync_bytes: usize,
    rsync_repeats: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                repeats: 3,
                pingpong: 1000,
                items: 50_000,
                bulk_mib: 64,
                channels: 1000,
                many_repeats: 2,
                many_repeats_64: 1,
                cold_repeats: 9,
                rsync_files: 2000,
                rsync_bytes: 50 << 20,
                rsync_repeats: 1,
            }
        } else {
            Plan {
                repeats: 7,
                pingpong: 5000,
                items: 200_000,
                bulk_mib: 256,
                channels: 1000,
                many_repeats: 3,
                many_repeats_64: 2,
                cold_repeats: 21,
                rsync_files: 2000,
                rsync_bytes: 50 << 20,
                rsync_repeats: 3,
            }
        }
    }
}

/// The execnet side: the driver script in the venv.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn call(&mut self, cmd: serde_json::Value) -> Option<f64> {
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).ok()?;
        self.stdin.flush().ok()?;
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).ok()?;
        let v: serde_json::Value = serde_json::from_str(&answer).ok()?;
        if let Some(e) = v.get("error") {
            eprintln!("execnet: {cmd}: {e}");
            return None;
        }
        v.get("value").and_then(|x| x.as_f64())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.call(serde_json::json!({"op": "exit"}));
        let _ = self.child.wait();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The venv with execnet 2.1.2 (created once), or why there is none.
fn venv(python: &Path) -> std::result::Result<PathBuf, String> {
    let dir = target_dir().join("bench-venv");
    let vpy = dir.join("bin/python");
    let ok = |p: &Path| {
        Command::new(p)
            .args([
                "-c",
                "import sys, execnet; sys.exit(execnet.__version__ != '2.1.2')",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok(&vpy) {
        return Ok(vpy);
    }
    eprintln!("creating {} with execnet==2.1.2 ...", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    let st = Command::new(python)
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .map_err(|e| format!("{} -m venv: {e}", python.display()))?;
    if !st.success() {
        return Err(format!("{} -m venv failed ({st})", python.display()));
    }
    let st = Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "execnet==2.1.2",
        ])
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !st.success() || !ok(&vpy) {
        return Err(format!("pip install execnet==2.1.2 failed ({st})"));
    }
    Ok(vpy)
}

fn start_peer(vpy: &Path, python: &Path) -> Res<Peer> {
    start_peer_with(&[], vpy, &python.display().to_string())
}

/// The driver run as `PREFIX… VPY DRIVER PYTHON` (`prefix`: e.g. `taskset
/// -c 0`; `python`: the worker's command line, e.g. `taskset -c 1 PY`).
fn start_peer_with(prefix: &[&str], vpy: &Path, python: &str) -> Res<Peer> {
    let script = target_dir().join("bench-execnet-driver.py");
    std::fs::write(&script, DRIVER)?;
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(vpy);
            c
        }
        None => Command::new(vpy),
    };
    let mut child = cmd
        .arg(&script)
        .arg(python)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    Ok(Peer {
        child,
        stdin,
        stdout,
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

// ------------------------------------------------------------------ ours

/// `popen//python=PYTHON`.
fn popen_spec(python: &Path) -> String {
    format!("popen//python={}", python.display())
}

fn fork_spec(python: &Path) -> String {
    format!("popen//fork//python={}", python.display())
}

fn ours_start(spec: &str) -> Res<f64> {
    let t = Instant::now();
    let gw = makegateway(spec)?;
    gw.remote_exec("channel.send(1)")?.receive::<i64>()?;
    let dt = t.elapsed().as_secs_f64();
    gw.exit()?;
    Ok(dt)
}

fn ours_start_many(spec: &str, n: usize) -> Res<f64> {
    let t = Instant::now();
    let gws: Vec<execnet::Result<Gateway>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let gw = makegateway(spec)?;
                    gw.remote_exec("channel.send(1)")?.receive::<i64>()?;
                    Ok(gw)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(execnet::Error::Spec("panicked".into())))
            })
            .collect()
    });
    let dt = t.elapsed().as_secs_f64();
    let mut err = None;
    std::thread::scope(|s| {
        for gw in &gws {
            match gw {
                Ok(gw) => {
                    s.spawn(|| gw.terminate(Some(Duration::from_secs(5))));
                }
                Err(e) => err = Some(e.clone()),
            }
        }
    });
    match err {
        Some(e) => Err(e.into()),
        None => Ok(dt),
    }
}

fn ours_pingpong(gw: &Gateway, n: usize) -> Res<f64> {
    let ch = gw.remote_exec(SRC_ECHO)?;
    for i in 0..200i64 {
        ch.send(&i)?;
        ch.receive::<i64>()?;
    }
    let t = Instant::now();
    for i in 0..n as i64 {
        ch.send(&i)?;
        ch.receive::<i64>()?;
    }
    let dt = t.elapsed().as_secs_f64() / n as f64;
    ch.close()?;
    ch.waitclose(None)?;
    Ok(dt)
}

fn ours_items_up(gw: &Gateway, n: i64, tuples: bool) -> Res<f64> {
    let t = Instant::now();
    let ch = gw.remote_exec(SRC_ITEMS_UP)?;
    if tuples {
        for i in 0..n {
            ch.send(&(i, "ab"))?;
        }
    } else {
        for i in 0..n {
            ch.send(&i)?;
        }
    }
    ch.send(&())?;
    let got: i64 = ch.receive()?;
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(got, n);
    ch.waitclose(None)?;
    Ok(n as f64 / dt)
}

fn ours_items_down(gw: &Gateway, n: i64, tuples: bool) -> Res<f64> {
    let t = Instant::now();
    let ch = gw.remote_exec(SRC_ITEMS_DOWN)?;
    ch.send(&(n, if tuples { "tuple" } else { "int" }))?;
    let mut k = 0;
    if tuples {
        while let Some((_i, _s)) = ch.receive::<Option<(i64, String)>>()? {
            k += 1;
        }
    } else {
        while let Some(_i) = ch.receive::<Option<i64>>()? {
            k += 1;
        }
    }
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(k, n);
    ch.waitclose(None)?;
    Ok(n as f64 / dt)
}

fn ours_bulk_up(gw: &Gateway, mib: u64) -> Res<f64> {
    let data = Value::Bytes(vec![b'x'; 1 << 20]);
    let t = Instant::now();
    let ch = gw.remote_exec(SRC_BULK_UP)?;
    for _ in 0..mib {
        ch.send_value(&data)?;
    }
    ch.send(&())?;
    let got: u64 = ch.receive()?;
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(got, mib << 20);
    ch.waitclose(None)?;
    Ok(mib as f64 / dt)
}

fn ours_bulk_down(gw: &Gateway, mib: u64) -> Res<f64> {
    let t = Instant::now();
    let ch = gw.remote_exec(SRC_BULK_DOWN)?;
    ch.send(&mib)?;
    let mut total = 0u64;
    while let Value::Bytes(b) = ch.receive_value(None)? {
        total += b.len() as u64;
    }
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(total, mib << 20);
    ch.waitclose(None)?;
    Ok(mib as f64 / dt)
}

fn ours_channels(gw: &Gateway, n: usize) -> Res<f64> {
    let t = Instant::now();
    let chans = (0..n)
        .map(|_| gw.remote_exec(SRC_CHANNEL))
        .collect::<execnet::Result<Vec<_>>>()?;
    for (i, ch) in chans.iter().enumerate() {
        ch.send(&(i as i64))?;
    }
    for (i, ch) in chans.iter().enumerate() {
        assert_eq!(ch.receive::<i64>()?, i as i64);
    }
    let dt = t.elapsed().as_secs_f64();
    for ch in &chans {
        ch.waitclose(None)?;
    }
    Ok(dt)
}

/// `n` execs that each answer once (the Python package bench's "1,000
/// channels" row): the worker runs short execs back to back.
fn ours_execs(gw: &Gateway, n: usize) -> Res<f64> {
    let t = Instant::now();
    let chans = (0..n)
        .map(|_| gw.remote_exec(SRC_ANSWER))
        .collect::<execnet::Result<Vec<_>>>()?;
    for ch in &chans {
        assert_eq!(ch.receive::<i64>()?, 1);
    }
    let dt = t.elapsed().as_secs_f64();
    for ch in &chans {
        ch.waitclose(None)?;
    }
    Ok(dt)
}

/// The child process of the RSS measurement: bulk both ways, then VmHWM.
fn rss_child(python: &Path, mib: u64) -> Res<()> {
    let gw = makegateway(&popen_spec(python))?;
    ours_bulk_up(&gw, mib)?;
    ours_bulk_down(&gw, mib)?;
    gw.exit()?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmHWM")?;
    println!("{}", kib * 1024);
    Ok(())
}

fn ours_rss(python: &Path, mib: u64) -> Res<f64> {
    in_fresh_process(
        "--rss-child",
        &[python.as_os_str(), mib.to_string().as_ref()],
    )
}

/// The child process of the cold-start measurements: the first start in a
/// fresh host process (with whatever the disk cache holds: the parent
/// points `EXECNET_CACHE_DIR` at an empty or a populated directory).
fn first_start_child(spec: &str) -> Res<()> {
    println!("{}", ours_start(spec)?);
    Ok(())
}

fn ours_first_start(spec: &str, cache: &Path) -> Res<f64> {
    in_fresh_process_env(
        "--first-start-child",
        &[spec.as_ref()],
        &[("EXECNET_CACHE_DIR", cache)],
    )?
    .first()
    .copied()
    .ok_or_else(|| "no figure".into())
}

/// The child process of the many-at-once rows: `n` gateways of `spec`
/// started at once, as the first starts of a fresh host process.
fn many_child(spec: &str, n: usize) -> Res<()> {
    let dt = ours_start_many(spec, n)?;
    // Every gateway has ended and been reaped by now (a fork server too,
    // which reaped its workers): the page faults of the whole run.
    println!("{dt} {}", faults_of_all()?);
    Ok(())
}

/// Minor page faults of this process and of every descendant reaped so far
/// (`/proc/self/stat` minflt + cminflt): exact counts, unlike CPU times.
fn faults_of_all() -> Res<f64> {
    let [own, reaped] = fault_counts("self")?;
    Ok(own + reaped)
}

/// Page faults per gateway of `spec`, all processes counted (host,
/// workers, a fork server): fresh host processes starting 16 gateways at
/// once against ones starting 1, medians of `reps`, the difference / 15.
fn faults_per_gateway(spec: &str, cache: &Path, reps: usize) -> Option<f64> {
    let run = |n: usize| {
        let figures: Vec<f64> = (0..reps)
            .filter_map(|_| {
                in_fresh_process_env(
                    "--many-child",
                    &[spec.as_ref(), n.to_string().as_ref()],
                    &[("EXECNET_CACHE_DIR", cache)],
                )
                .map_err(|e| eprintln!("faults: {e}"))
                .ok()
                .and_then(|v| v.get(1).copied())
            })
            .collect();
        median(figures)
    };
    Some((run(16)? - run(1)?) / 15.0)
}

fn ours_many_fresh(spec: &str, n: usize, cache: &Path) -> Res<f64> {
    in_fresh_process_env(
        "--many-child",
        &[spec.as_ref(), n.to_string().as_ref()],
        &[("EXECNET_CACHE_DIR", cache)],
    )?
    .first()
    .copied()
    .ok_or_else(|| "no figure".into())
}

/// Minor page faults of process `pid` so far (`/proc/PID/stat` field 10).
fn minflt(pid: i64) -> Res<f64> {
    Ok(fault_counts(&pid.to_string())?[0])
}

/// `/proc/PROC/stat` fields 10 and 11 (`PROC` a pid or `self`): the
/// process's minor page faults, and those of its reaped descendants.
fn fault_counts(proc: &str) -> Res<[f64; 2]> {
    let stat = std::fs::read_to_string(format!("/proc/{proc}/stat"))?;
    // The fields after the command name (which may hold spaces) start at
    // field 3, the state.
    let mut after = stat
        .rsplit_once(')')
        .ok_or("stat")?
        .1
        .split_whitespace()
        .skip(7);
    let mut next = || -> Res<f64> { Ok(after.next().ok_or("stat")?.parse::<u64>()? as f64) };
    Ok([next()?, next()?])
}

/// Bulk each way on one gateway: (host→worker MiB/s, worker→host MiB/s,
/// the worker's page faults per MiB received).
fn bulk_on(gw: &Gateway, mib: u64) -> Res<[f64; 3]> {
    let pid: i64 = gw
        .remote_exec("import os\nchannel.send(os.getpid())")?
        .receive()?;
    let f0 = minflt(pid)?;
    let up = ours_bulk_up(gw, mib)?;
    let faults = (minflt(pid)? - f0) / mib as f64;
    let down = ours_bulk_down(gw, mib)?;
    Ok([up, down, faults])
}

/// The child process of the per-gateway bulk rows: bulk each way on the
/// first gateway of a fresh host process, then on a later one. Prints six
/// numbers: first up, down, faults/MiB; later up, down, faults/MiB.
fn bulk_child(spec: &str, mib: u64) -> Res<()> {
    let gw = makegateway(spec)?;
    let first = bulk_on(&gw, mib)?;
    gw.exit()?;
    // A few starts between: "later" is any start after the first.
    for _ in 0..2 {
        ours_start(spec)?;
    }
    let gw = makegateway(spec)?;
    let later = bulk_on(&gw, mib)?;
    gw.exit()?;
    let all: Vec<String> = first.iter().chain(&later).map(|x| x.to_string()).collect();
    println!("{}", all.join(" "));
    Ok(())
}

/// The child process of the pinned ping-pong rows (run under `taskset`):
/// ours on `spec`, and the raw pipe to `python` (a command line).
fn pingpong_child(spec: &str, python: &str, n: usize) -> Res<()> {
    let gw = makegateway(spec)?;
    let ours = ours_pingpong(&gw, n)?;
    gw.exit()?;
    let argv = shell_split(python);
    let raw = raw_pingpong_argv(&argv, n)?;
    println!("{ours} {raw}");
    Ok(())
}

fn shell_split(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// Runs this binary as `bench MODE ARGS…` (a measurement that needs a fresh
/// host process) and returns the one number it prints.
fn in_fresh_process(mode: &str, args: &[&std::ffi::OsStr]) -> Res<f64> {
    in_fresh_process_env(mode, args, &[])?
        .first()
        .copied()
        .ok_or_else(|| "no figure".into())
}

/// [`in_fresh_process`] with `env` set, returning every number printed.
fn in_fresh_process_env(
    mode: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &Path)],
) -> Res<Vec<f64>> {
    in_fresh_process_with(Command::new(std::env::current_exe()?), mode, args, env)
}

fn in_fresh_process_with(
    mut cmd: Command,
    mode: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &Path)],
) -> Res<Vec<f64>> {
    cmd.arg(mode).args(args).stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("bench {mode} failed").into());
    }
    String::from_utf8(out.stdout)?
        .split_whitespace()
        .map(|x| Ok(x.parse()?))
        .collect()
}

// ------------------------------------------------------------------ limits

/// `n` bare interpreters started at once, until the last has ended: what
/// `n` concurrent starts cost on this machine's cores at the least.
fn bare_start_many(python: &Path, n: usize) -> Res<f64> {
    let t = Instant::now();
    let spawned: Vec<_> = (0..n)
        .map(|_| Command::new(python).args(["-c", "pass"]).spawn())
        .collect();
    // Every child that started is reaped, even when another failed to.
    let mut ok = true;
    for c in spawned {
        ok &= c.and_then(|mut c| c.wait()).is_ok_and(|s| s.success());
    }
    if !ok {
        return Err("python -c pass failed".into());
    }
    Ok(t.elapsed().as_secs_f64())
}

fn bare_start(python: &Path) -> Res<f64> {
    let t = Instant::now();
    let st = Command::new(python).args(["-c", "pass"]).status()?;
    let dt = t.elapsed().as_secs_f64();
    if !st.success() {
        return Err("python -c pass failed".into());
    }
    Ok(dt)
}

fn raw_child(python: &Path, src: &str, args: &[String]) -> Res<Child> {
    Ok(Command::new(python)
        .arg("-c")
        .arg(src)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?)
}

fn raw_pingpong(python: &Path, n: usize) -> Res<f64> {
    raw_pingpong_argv(&[python.display().to_string()], n)
}

/// The raw pipe ping-pong against `argv -c RAW_ECHO` (`argv` may be a
/// `taskset -c N python` prefix).
fn raw_pingpong_argv(argv: &[String], n: usize) -> Res<f64> {
    let (prog, pre) = argv.split_first().ok_or("empty python")?;
    let mut child = Command::new(prog)
        .args(pre)
        .arg("-c")
        .arg(RAW_ECHO)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut w = child.stdin.take().ok_or("stdin")?;
    let mut r = child.stdout.take().ok_or("stdout")?;
    let mut b = [0u8; 1];
    for _ in 0..200 {
        w.write_all(b"x")?;
        r.read_exact(&mut b)?;
    }
    let t = Instant::now();
    for _ in 0..n {
        w.write_all(b"x")?;
        r.read_exact(&mut b)?;
    }
    let dt = t.elapsed().as_secs_f64() / n as f64;
    drop(w);
    child.wait()?;
    Ok(dt)
}

fn raw_bulk_up(python: &Path, mib: u64) -> Res<f64> {
    let mut child = raw_child(python, RAW_SINK, &[])?;
    let mut w = child.stdin.take().ok_or("stdin")?;
    let mut r = child.stdout.take().ok_or("stdout")?;
    let data = vec![b'x'; 1 << 20];
    // Let the child enlarge the pipe first.
    std::thread::sleep(Duration::from_millis(30));
    let t = Instant::now();
    for _ in 0..mib {
        w.write_all(&data)?;
    }
    drop(w);
    let mut s = String::new();
    r.read_to_string(&mut s)?;
    let dt = t.elapsed().as_secs_f64();
    child.wait()?;
    assert_eq!(s.trim().parse::<u64>()?, mib << 20);
    Ok(mib as f64 / dt)
}

fn raw_bulk_down(python: &Path, mib: u64) -> Res<f64> {
    let mut child = raw_child(python, RAW_SOURCE, &[mib.to_string()])?;
    drop(child.stdin.take());
    let mut r = child.stdout.take().ok_or("stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    // Time from the first byte: the interpreter's start is not bandwidth.
    let mut total = r.read(&mut buf)? as u64;
    let t0 = Instant::now();
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        total += k as u64;
    }
    let dt = t0.elapsed().as_secs_f64();
    child.wait()?;
    assert_eq!(total, mib << 20);
    Ok((mib as f64 - 1.0) / dt)
}

/// A tree of `files` files with `bytes` in all, for the rsync rows.
fn make_tree(dir: &Path, files: usize, bytes: usize) -> Res<()> {
    let _ = std::fs::remove_dir_all(dir);
    let per = bytes / files;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 40));
        std::fs::create_dir_all(&sub)?;
        let mut data = vec![0u8; per];
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(sub.join(format!("f{i:05}.dat")), data)?;
    }
    Ok(())
}

/// Writes back every dirty page (`sync`), so that a timed copy does not pay
/// for the previous one.
fn settle_disk() {
    let _ = Command::new("sync").status();
}

fn tar_pipe(src: &Path, dst: &Path) -> Res<f64> {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst)?;
    settle_disk();
    let t = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg("tar -C \"$1\" -cf - . | tar -C \"$2\" -xf -")
        .arg("sh")
        .arg(src)
        .arg(dst)
        .status()?;
    let dt = t.elapsed().as_secs_f64();
    if !st.success() {
        return Err("tar | tar failed".into());
    }
    Ok(dt)
}

// ------------------------------------------------------------------ table

#[derive(Clone, Copy)]
enum Unit {
    Ms,
    Us,
    PerSec,
    MiBs,
    MiB,
    /// A plain count.
    Count,
}

impl Unit {
    fn fmt(self, v: Option<f64>) -> String {
        let Some(v) = v else {
            return "n/a".into();
        };
        match self {
            Unit::Ms => format!("{:.1} ms", v * 1e3),
            Unit::Us => format!("{:.1} µs", v * 1e6),
            Unit::PerSec => format!("{:.0}k/s", v / 1e3),
            Unit::MiBs => format!("{v:.0} MiB/s"),
            Unit::MiB => format!("{:.1} MiB", v / (1u64 << 20) as f64),
            Unit::Count => format!("{v:.0}"),
        }
    }
    /// Bigger is better.
    fn is_rate(self) -> bool {
        matches!(self, Unit::PerSec | Unit::MiBs)
    }
}

/// What a row is checked against.
enum Target {
    None,
    /// ours ≤ k × a limit (a time).
    TimesLimit(f64, &'static str, Option<f64>),
    /// ours ≥ k × another rate.
    RateAtLeast(f64, &'static str, Option<f64>),
    /// speed-up over execnet ≥ k.
    SpeedUp(f64),
    /// ours ≤ k (absolute).
    AtMost(f64, &'static str),
}

struct Row {
    metric: String,
    unit: Unit,
    ours: Option<f64>,
    peer: Option<f64>,
    target: Target,
}

fn speed_up(unit: Unit, ours: Option<f64>, peer: Option<f64>) -> Option<f64> {
    let (o, p) = (ours?, peer?);
    Some(if unit.is_rate() { o / p } else { p / o })
}

fn print_table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| metric | ours | execnet 2.1.2 | speed-up | target | pass |\n");
    s.push_str("|---|---:|---:|---:|---|:---:|\n");
    for r in rows {
        let su = speed_up(r.unit, r.ours, r.peer);
        let (target, pass) = match &r.target {
            Target::None => (String::new(), String::new()),
            Target::TimesLimit(k, name, limit) => match (r.ours, limit) {
                (Some(o), Some(l)) => {
                    let x = o / l;
                    (
                        format!("≤ {k}× {name} (is {x:.2}×)"),
                        if x <= *k { "pass" } else { "FAIL" }.into(),
                    )
                }
                _ => (format!("≤ {k}× {name}"), "n/a".into()),
            },
            Target::RateAtLeast(k, name, other) => match (r.ours, other) {
                (Some(o), Some(l)) => {
                    let x = o / l;
                    (
                        format!("≥ {k}× {name} (is {x:.2}×)"),
                        if x >= *k { "pass" } else { "FAIL" }.into(),
                    )
                }
                _ => (format!("≥ {k}× {name}"), "n/a".into()),
            },
            Target::SpeedUp(k) => (
                format!("≥ {k}× execnet"),
                match su {
                    Some(x) if x >= *k => "pass".into(),
                    Some(_) => "FAIL".into(),
                    None => "n/a".into(),
                },
            ),
            Target::AtMost(k, what) => (
                format!("≤ {what}"),
                match r.ours {
                    Some(o) if o <= *k => "pass".into(),
                    Some(_) => "FAIL".into(),
                    None => "n/a".into(),
                },
            ),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.metric,
            r.unit.fmt(r.ours),
            r.unit.fmt(r.peer),
            su.map_or("".into(), |x| format!("{x:.2}×")),
            target,
            pass
        ));
    }
    s
}

// ------------------------------------------------------------------ main

/// Runs `ours` and `peer` `n` times, alternating who goes first.
fn both(
    n: usize,
    mut ours: impl FnMut() -> Res<f64>,
    peer: &mut Option<Peer>,
    cmd: serde_json::Value,
) -> (Option<f64>, Option<f64>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut run_ours = |a: &mut Vec<f64>| match ours() {
        Ok(v) => a.push(v),
        Err(e) => eprintln!("ours: {e}"),
    };
    for i in 0..n {
        if i % 2 == 0 {
            run_ours(&mut a);
        }
        if let Some(p) = peer.as_mut() {
            if let Some(v) = p.call(cmd.clone()) {
                b.push(v);
            }
        }
        if i % 2 == 1 {
            run_ours(&mut a);
        }
    }
    (median(a), median(b))
}

fn limit(n: usize, mut f: impl FnMut() -> Res<f64>) -> Option<f64> {
    median(
        (0..n)
            .filter_map(|_| f().map_err(|e| eprintln!("limit: {e}")).ok())
            .collect(),
    )
}

/// How gateways of an interpreter are started in the many-at-once rows:
/// (name, spec for the interpreter). Every mode gets the same rows (16 and
/// 64 at once in a fresh host process, against as many bare interpreters).
/// `popen//fork` (issue 16 item 3): each run is a fresh host process, so
/// its figure includes starting the fork server.
const START_MODES: &[(&str, SpecFor)] = &[("popen", popen_spec), ("popen//fork", fork_spec)];

/// Makes the spec of one start mode for an interpreter.
type SpecFor = fn(&Path) -> String;

/// Debian's python3 and pyenv's newest 3.11, those present.
fn default_pythons() -> Vec<PathBuf> {
    let mut v = Vec::new();
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.exists() {
        v.push(debian);
    }
    let mut pyenv: Vec<PathBuf> = std::fs::read_dir("/root/.pyenv/versions")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("3.11."))
                .map(|e| e.path().join("bin/python3"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    pyenv.sort();
    v.extend(pyenv.pop());
    v
}

/// A short name for an interpreter in row titles: `debian 3.11.2`,
/// `pyenv 3.11.7`, or the path.
fn interpreter_label(py: &Path) -> String {
    let version = Command::new(py)
        .arg("--version")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            s.trim().trim_start_matches("Python ").to_string()
        })
        .unwrap_or_default();
    let p = py.display().to_string();
    if p.starts_with("/usr/bin/") {
        format!("debian {version}")
    } else if p.contains("/.pyenv/") {
        format!("pyenv {version}")
    } else {
        p
    }
}

/// `py` as a file name part.
fn slug(py: &Path) -> String {
    py.display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The execnet driver for `py` (started on first use).
fn peer_for<'a>(
    peers: &'a mut Vec<(PathBuf, Option<Peer>)>,
    vpy: Option<&Path>,
    py: &Path,
) -> &'a mut Option<Peer> {
    let i = match peers.iter().position(|(p, _)| p == py) {
        Some(i) => i,
        None => {
            let mut peer = vpy.and_then(|v| start_peer(v, py).ok());
            // Its first start pays the page cache.
            if let Some(p) = peer.as_mut() {
                let _ = p.call(serde_json::json!({"op": "start"}));
            }
            peers.push((py.to_path_buf(), peer));
            peers.len() - 1
        }
    };
    &mut peers[i].1
}

/// Pushes a measurement, or reports why there is none.
fn report(into: &mut Vec<f64>, r: Res<f64>) {
    match r {
        Ok(v) => into.push(v),
        Err(e) => eprintln!("ours: {e}"),
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--rss-child") {
        let python = PathBuf::from(args.get(2).ok_or("python")?);
        let mib: u64 = args.get(3).ok_or("mib")?.parse()?;
        return rss_child(&python, mib);
    }
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    match args.get(1).map(String::as_str) {
        Some("--first-start-child") => return first_start_child(arg(2)?),
        Some("--many-child") => return many_child(arg(2)?, arg(3)?.parse()?),
        Some("--bulk-child") => return bulk_child(arg(2)?, arg(3)?.parse()?),
        Some("--pingpong-child") => return pingpong_child(arg(2)?, arg(3)?, arg(4)?.parse()?),
        _ => {}
    }
    let quick = args.iter().any(|a| a == "--quick");
    let python = args
        .iter()
        .position(|a| a == "--python")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("/usr/bin/python3"), PathBuf::from);
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(String::from).collect());
    let want = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));
    // The interpreters of the per-interpreter rows (cold, many, gateways):
    // Debian's and pyenv's 3.11 by default.
    let pythons: Vec<PathBuf> = args
        .iter()
        .position(|a| a == "--pythons")
        .and_then(|i| args.get(i + 1))
        .map_or_else(default_pythons, |s| {
            s.split(',').map(PathBuf::from).collect()
        });
    // A compiled-worker cache of this run's own, never the user's: this
    // process's starts and its children's use it unless a row sets another.
    let bench_cache = target_dir().join(format!("bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bench_cache);
    // Set before any thread starts (the engine reads it at its first start).
    std::env::set_var("EXECNET_CACHE_DIR", bench_cache.join("main"));
    let plan = Plan::new(quick);
    let started = Instant::now();
    let spec = popen_spec(&python);
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let vpy = match venv(&python) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("execnet figures are missing: {e}");
            None
        }
    };
    let mut peer = match &vpy {
        Some(v) => Some(start_peer(v, &python)?),
        None => None,
    };
    // Drivers of execnet for the per-interpreter rows, by interpreter.
    let mut peers: Vec<(PathBuf, Option<Peer>)> = Vec::new();
    // Warm up both (page cache, first interpreter start).
    let _ = ours_start(&spec);
    if let Some(p) = peer.as_mut() {
        let _ = p.call(serde_json::json!({"op": "start"}));
    }

    let n = plan.repeats;
    let mut rows = Vec::new();
    let gw = makegateway(&spec)?;

    if want("start") {
        let bare = limit(n, || bare_start(&python));
        let (o, p) = both(
            n,
            || ours_start(&spec),
            &mut peer,
            serde_json::json!({"op": "start"}),
        );
        rows.push(Row {
            metric: "popen start to first round trip".into(),
            unit: Unit::Ms,
            ours: o,
            peer: p,
            target: Target::TimesLimit(1.15, "bare", bare),
        });
        // popen//jail (docs/jails.md): bwrap around the same start, in
        // pairs with a plain start so that both see the same load. The
        // warm-up pays the once-per-process checks (bwrap, namespaces) and
        // makes the spec's spare (jail::take_spare); each jailed start then
        // uses the spare and the next one is built in the background, which
        // the pauses after it leave time for (not timed). The first-of-spec
        // row gives every start a spec of its own (an env: value), so none
        // has a spare. The fresh-process row pairs the first jailed start of
        // a new host process (its one-time checks timed) with the first
        // plain start of one, both with the compiled worker on disk.
        let have_bwrap = Command::new("bwrap")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if have_bwrap {
            let jailed = format!("{spec}//jail");
            let _ = ours_start(&jailed);
            let _ = ours_start(&jailed);
            let first_cache = bench_cache.join("jail-first");
            let _ = ours_first_start(&spec, &first_cache); // fills it
            let pause = || std::thread::sleep(std::time::Duration::from_millis(150));
            let (mut plain, mut warm, mut cold) = (Vec::new(), Vec::new(), Vec::new());
            let (mut plain_first, mut jail_first) = (Vec::new(), Vec::new());
            for i in 0..n {
                pause();
                plain.extend(ours_start(&spec).map_err(|e| eprintln!("ours: {e}")).ok());
                pause();
                let once = format!("{jailed}//env:EXECNET_BENCH_COLD={i}");
                cold.extend(ours_start(&once).map_err(|e| eprintln!("jail: {e}")).ok());
                pause();
                warm.extend(ours_start(&jailed).map_err(|e| eprintln!("jail: {e}")).ok());
                // The next spare is built 100 ms after that start (bwrap and
                // an interpreter start: slow under load): let it finish
                // before the next timed start, which it would compete with.
                pause();
                pause();
                plain_first.extend(
                    ours_first_start(&spec, &first_cache)
                        .map_err(|e| eprintln!("ours: {e}"))
                        .ok(),
                );
                pause();
                jail_first.extend(
                    ours_first_start(&jailed, &first_cache)
                        .map_err(|e| eprintln!("jail: {e}"))
                        .ok(),
                );
            }
            let plain = median(plain);
            rows.push(Row {
                metric: "jailed start (popen//jail, spare jail ready) to first round trip".into(),
                unit: Unit::Ms,
                ours: median(warm),
                peer: None,
                target: Target::TimesLimit(1.3, "plain popen start", plain),
            });
            rows.push(Row {
                metric: "jailed start, first of its spec (no spare: bwrap's set-up timed; \
                         the process's one-time checks done)"
                    .into(),
                unit: Unit::Ms,
                ours: median(cold),
                peer: None,
                target: Target::TimesLimit(1.3, "plain popen start", plain),
            });
            rows.push(Row {
                metric: "jailed start, first of a fresh host process (its one-time checks \
                         timed)"
                    .into(),
                unit: Unit::Ms,
                ours: median(jail_first),
                peer: None,
                target: Target::TimesLimit(
                    1.3,
                    "first popen start of a fresh process",
                    median(plain_first),
                ),
            });
        }
        rows.push(Row {
            metric: "limit: bare `python -c pass`".into(),
            unit: Unit::Ms,
            ours: bare,
            peer: None,
            target: Target::None,
        });
    }
    let label = |py: &Path| interpreter_label(py);
    if want("cold") {
        // Warm (memory cache of this process), and the first start of a
        // fresh host process with an empty disk cache and with one an
        // earlier process filled; interleaved, so load drift hits all.
        for py in &pythons {
            let pspec = popen_spec(py);
            let pop = bench_cache.join(format!("cold-{}", slug(py)));
            let _ = ours_first_start(&pspec, &pop); // fills `pop`
            let _ = ours_start(&pspec); // fills this process's memory cache
            let peer = peer_for(&mut peers, vpy.as_deref(), py);
            let (mut warm, mut empty, mut populated, mut theirs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..plan.cold_repeats {
                let empty_dir = bench_cache.join(format!("empty-{i}"));
                let _ = std::fs::remove_dir_all(&empty_dir);
                report(&mut warm, ours_start(&pspec));
                report(&mut empty, ours_first_start(&pspec, &empty_dir));
                report(&mut populated, ours_first_start(&pspec, &pop));
                if let Some(p) = peer.as_mut() {
                    theirs.extend(p.call(serde_json::json!({"op": "start"})));
                }
                let _ = std::fs::remove_dir_all(&empty_dir);
            }
            let (warm, theirs) = (median(warm), median(theirs));
            let l = label(py);
            rows.push(Row {
                metric: format!("{l}: warm start (this process compiled before)"),
                unit: Unit::Ms,
                ours: warm,
                peer: theirs,
                target: Target::None,
            });
            rows.push(Row {
                metric: format!("{l}: cold first start, fresh process, empty cache"),
                unit: Unit::Ms,
                ours: median(empty),
                peer: theirs,
                target: Target::None,
            });
            rows.push(Row {
                metric: format!(
                    "{l}: cold first start, fresh process, cache from an earlier process"
                ),
                unit: Unit::Ms,
                ours: median(populated),
                peer: theirs,
                target: Target::TimesLimit(1.15, "warm", warm),
            });
        }
    }
    if want("many") {
        for py in &pythons {
            let l = label(py);
            let pop = bench_cache.join(format!("many-{}", slug(py)));
            let _ = ours_first_start(&popen_spec(py), &pop);
            for g in [16usize, 64] {
                let reps = if g > 16 {
                    plan.many_repeats_64
                } else {
                    plan.many_repeats
                };
                let mut bare = Vec::new();
                let mut modes: Vec<(Vec<f64>, Vec<f64>)> =
                    START_MODES.iter().map(|_| Default::default()).collect();
                let mut theirs = Vec::new();
                // One warm start per repeat, for the fork target below:
                // measured beside the rows it divides, not in a batch of
                // its own after them (the machine moves between batches).
                let mut warm = Vec::new();
                for i in 0..reps {
                    report(&mut bare, bare_start_many(py, g));
                    if g == 16 {
                        report(&mut warm, ours_start(&popen_spec(py)));
                    }
                    for ((_, mode_spec), (pv, ev)) in START_MODES.iter().zip(modes.iter_mut()) {
                        let s = mode_spec(py);
                        let empty_dir = bench_cache.join(format!("many-empty-{i}"));
                        let _ = std::fs::remove_dir_all(&empty_dir);
                        report(pv, ours_many_fresh(&s, g, &pop));
                        report(ev, ours_many_fresh(&s, g, &empty_dir));
                        let _ = std::fs::remove_dir_all(&empty_dir);
                    }
                    let peer = peer_for(&mut peers, vpy.as_deref(), py);
                    if let Some(p) = peer.as_mut() {
                        theirs.extend(p.call(serde_json::json!({"op": "start_many", "n": g})));
                    }
                }
                let bare = median(bare);
                let theirs = median(theirs);
                if g == 16 {
                    // Fork mode's own target (issue 16): 16 at once, server
                    // start included, within 3x one warm start.
                    let warm = median(warm);
                    let fork = START_MODES
                        .iter()
                        .zip(&modes)
                        .find(|((mode, _), _)| *mode == "popen//fork")
                        .and_then(|(_, (pv, _))| median(pv.clone()));
                    rows.push(Row {
                        metric: format!(
                            "{l}: {g} popen//fork gateways at once against one warm start"
                        ),
                        unit: Unit::Ms,
                        ours: fork,
                        peer: None,
                        target: Target::TimesLimit(3.0, "warm start", warm),
                    });
                }
                for ((mode, _), (pv, ev)) in START_MODES.iter().zip(modes) {
                    // execnet has plain popen starts only.
                    let peer = if *mode == "popen" { theirs } else { None };
                    rows.push(Row {
                        metric: format!(
                            "{l}: {g} {mode} gateways at once, fresh process, cache from an earlier process"
                        ),
                        unit: Unit::Ms,
                        ours: median(pv),
                        peer,
                        target: Target::TimesLimit(1.3, "bare", bare),
                    });
                    rows.push(Row {
                        metric: format!(
                            "{l}: {g} {mode} gateways at once, fresh process, empty cache"
                        ),
                        unit: Unit::Ms,
                        ours: median(ev),
                        peer,
                        target: Target::TimesLimit(1.3, "bare", bare),
                    });
                }
                if g == 16 {
                    // What each further gateway costs in page faults, the
                    // bulk of a forked worker's CPU (copy-on-write and
                    // file-backed faults): exact counts, where the times
                    // above move with the machine.
                    for (mode, mode_spec) in START_MODES {
                        rows.push(Row {
                            metric: format!(
                                "{l}: page faults per {mode} gateway, all processes (16 at once against 1)"
                            ),
                            unit: Unit::Count,
                            ours: faults_per_gateway(&mode_spec(py), &pop, reps.min(5)),
                            peer: None,
                            target: Target::None,
                        });
                    }
                }
                rows.push(Row {
                    metric: format!("{l}: limit: {g} bare `python -c pass` at once"),
                    unit: Unit::Ms,
                    ours: bare,
                    peer: None,
                    target: Target::None,
                });
            }
        }
    }
    if want("gateways") {
        // Bulk each way on the first and on a later gateway of a fresh host
        // process, and the worker's page faults per MiB it received.
        let m = plan.bulk_mib;
        for py in &pythons {
            let l = label(py);
            let mut v: [Vec<f64>; 6] = Default::default();
            for _ in 0..n {
                match in_fresh_process_env(
                    "--bulk-child",
                    &[popen_spec(py).as_ref(), m.to_string().as_ref()],
                    &[],
                ) {
                    Ok(x) if x.len() == 6 => {
                        for (col, x) in v.iter_mut().zip(x) {
                            col.push(x);
                        }
                    }
                    Ok(_) => eprintln!("ours: bulk child: bad output"),
                    Err(e) => eprintln!("ours: {e}"),
                }
            }
            let [fu, fd, ff, lu, ld, lf] = v.map(median);
            let peer = peer_for(&mut peers, vpy.as_deref(), py);
            let (mut tu, mut td) = (Vec::new(), Vec::new());
            if let Some(p) = peer.as_mut() {
                for _ in 0..n {
                    tu.extend(
                        p.call(serde_json::json!({"op": "bulk_up", "src": SRC_BULK_UP, "n": m})),
                    );
                    td.extend(p.call(
                        serde_json::json!({"op": "bulk_down", "src": SRC_BULK_DOWN, "n": m}),
                    ));
                }
            }
            let (tu, td) = (median(tu), median(td));
            for (which, up, down, faults) in [("first", fu, fd, ff), ("later", lu, ld, lf)] {
                rows.push(Row {
                    metric: format!("{l}: bulk host→worker, {which} gateway of a process"),
                    unit: Unit::MiBs,
                    ours: up,
                    peer: tu,
                    target: Target::RateAtLeast(0.8, "worker→host", down),
                });
                rows.push(Row {
                    metric: format!("{l}: bulk worker→host, {which} gateway of a process"),
                    unit: Unit::MiBs,
                    ours: down,
                    peer: td,
                    target: Target::None,
                });
                rows.push(Row {
                    metric: format!("{l}: worker page faults per MiB received, {which} gateway"),
                    unit: Unit::Count,
                    ours: faults,
                    peer: None,
                    target: Target::None,
                });
            }
        }
    }
    if want("pinned") {
        // The ping-pong yardstick with both ends pinned (taskset), across
        // two cores and on one: the unpinned figure swings 6-50 µs with
        // where the scheduler puts the two processes.
        let k = plan.pingpong;
        for (what, host_cpu, worker_cpu) in [("cores 0/1", "0", "1"), ("same core 0/0", "0", "0")] {
            let wpy = format!("taskset -c {worker_cpu} {}", python.display());
            let wspec = format!("popen//python={wpy}");
            let mut peer = match vpy.as_deref() {
                Some(v) => start_peer_with(&["taskset", "-c", host_cpu], v, &wpy).ok(),
                None => None,
            };
            let (mut ours, mut raw, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..n {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", host_cpu]).arg(std::env::current_exe()?);
                match in_fresh_process_with(
                    cmd,
                    "--pingpong-child",
                    &[wspec.as_ref(), wpy.as_ref(), k.to_string().as_ref()],
                    &[],
                ) {
                    Ok(x) if x.len() == 2 => {
                        ours.push(x[0]);
                        raw.push(x[1]);
                    }
                    Ok(_) => eprintln!("ours: pingpong child: bad output"),
                    Err(e) => eprintln!("ours: {e}"),
                }
                if let Some(p) = peer.as_mut() {
                    theirs.extend(p.call(
                        serde_json::json!({"op": "pingpong", "src": SRC_ECHO, "n": k, "warmup": 200}),
                    ));
                }
            }
            let raw = median(raw);
            rows.push(Row {
                metric: format!("ping-pong pinned, {what} (host/worker)"),
                unit: Unit::Us,
                ours: median(ours),
                peer: median(theirs),
                target: Target::TimesLimit(1.1, "pipe", raw),
            });
            rows.push(Row {
                metric: format!("limit: pipe ping-pong pinned, {what}"),
                unit: Unit::Us,
                ours: raw,
                peer: None,
                target: Target::None,
            });
        }
    }
    if want("pingpong") {
        let k = plan.pingpong;
        let raw = limit(n, || raw_pingpong(&python, k));
        let (o, p) = both(
            n,
            || ours_pingpong(&gw, k),
            &mut peer,
            serde_json::json!({"op": "pingpong", "src": SRC_ECHO, "n": k, "warmup": 200}),
        );
        rows.push(Row {
            metric: "ping-pong of a small int".into(),
            unit: Unit::Us,
            ours: o,
            peer: p,
            target: Target::TimesLimit(1.1, "pipe", raw),
        });
        rows.push(Row {
            metric: "limit: pipe ping-pong, Python child".into(),
            unit: Unit::Us,
            ours: raw,
            peer: None,
            target: Target::None,
        });
    }
    if want("items") {
        let k = plan.items;
        for (tuples, kind) in [(false, "int"), (true, "tuple")] {
            let what = if tuples { "short tuples" } else { "ints" };
            let (o, p) = both(
                n,
                || ours_items_up(&gw, k, tuples),
                &mut peer,
                serde_json::json!({"op": "items_up", "src": SRC_ITEMS_UP, "n": k, "kind": kind}),
            );
            rows.push(Row {
                metric: format!("small items host→worker ({what})"),
                unit: Unit::PerSec,
                ours: o,
                peer: p,
                target: Target::SpeedUp(2.0),
            });
            let (o, p) = both(
                n,
                || ours_items_down(&gw, k, tuples),
                &mut peer,
                serde_json::json!({"op": "items_down", "src": SRC_ITEMS_DOWN, "n": k, "kind": kind}),
            );
            rows.push(Row {
                metric: format!("small items worker→host ({what})"),
                unit: Unit::PerSec,
                ours: o,
                peer: p,
                target: Target::SpeedUp(2.0),
            });
        }
    }
    if want("bulk") {
        let m = plan.bulk_mib;
        let (o, p) = both(
            n,
            || ours_bulk_up(&gw, m),
            &mut peer,
            serde_json::json!({"op": "bulk_up", "src": SRC_BULK_UP, "n": m}),
        );
        rows.push(Row {
            metric: "bulk host→worker, 1 MiB bytes items".into(),
            unit: Unit::MiBs,
            ours: o,
            peer: p,
            target: Target::SpeedUp(2.5),
        });
        let (o, p) = both(
            n,
            || ours_bulk_down(&gw, m),
            &mut peer,
            serde_json::json!({"op": "bulk_down", "src": SRC_BULK_DOWN, "n": m}),
        );
        rows.push(Row {
            metric: "bulk worker→host, 1 MiB bytes items".into(),
            unit: Unit::MiBs,
            ours: o,
            peer: p,
            target: Target::SpeedUp(2.5),
        });
        rows.push(Row {
            metric: "limit: raw pipe →Python readinto 1 MiB".into(),
            unit: Unit::MiBs,
            ours: limit(n, || raw_bulk_up(&python, m)),
            peer: None,
            target: Target::None,
        });
        rows.push(Row {
            metric: "limit: raw pipe Python os.write 1 MiB→".into(),
            unit: Unit::MiBs,
            ours: limit(n, || raw_bulk_down(&python, m)),
            peer: None,
            target: Target::None,
        });
        let (o, p) = both(
            1,
            || ours_rss(&python, m),
            &mut peer,
            serde_json::json!({"op": "rss_bulk", "n": m, "src_up": SRC_BULK_UP, "src_down": SRC_BULK_DOWN}),
        );
        rows.push(Row {
            metric: format!("host peak RSS, bulk {m} MiB each way (fresh process)"),
            unit: Unit::MiB,
            ours: o,
            peer: p,
            target: Target::AtMost(64.0 * (1u64 << 20) as f64, "64 MiB"),
        });
    }
    if want("channels") {
        let k = plan.channels;
        let (o, p) = both(
            n,
            || ours_channels(&gw, k),
            &mut peer,
            serde_json::json!({"op": "channels", "src": SRC_CHANNEL, "n": k}),
        );
        rows.push(Row {
            metric: format!("{k} channels opened and echoed"),
            unit: Unit::Ms,
            ours: o,
            peer: p,
            target: Target::SpeedUp(3.0),
        });
        // Each on a fresh gateway: the worker's executor threads are not
        // warm from an earlier round (execnet starts a thread per exec).
        let (o, p) = both(
            n,
            || {
                let g = makegateway(&spec)?;
                let r = ours_execs(&g, k);
                g.exit()?;
                r
            },
            &mut peer,
            serde_json::json!({"op": "execs", "src": SRC_ANSWER, "n": k}),
        );
        rows.push(Row {
            metric: format!("{k} execs answering once, fresh gateway"),
            unit: Unit::Ms,
            ours: o,
            peer: p,
            target: Target::SpeedUp(3.0),
        });
    }
    gw.exit()?;
    if want("rsync") {
        let base = target_dir().join("bench-rsync");
        let src = base.join("src");
        make_tree(&src, plan.rsync_files, plan.rsync_bytes)?;
        let r = plan.rsync_repeats;
        let (mut fresh, mut unchanged) = (Vec::new(), Vec::new());
        let (mut ofresh, mut ounchanged) = (Vec::new(), Vec::new());
        let mut tars = Vec::new();
        let rgw = makegateway(&spec)?;
        // Untimed: the first copy after the tree was made ran 5-10x slower
        // than later ones (the kernel's write-back throttling still
        // learning the disk), whoever made it.
        let _ = tar_pipe(&src, &base.join("warm-up"));
        // Each fresh copy starts with no dirty pages (the previous copy's
        // 50 MB still being written back made the next one 0.2-1.6 s), and
        // the three take turns going first.
        for i in 0..r {
            for turn in 0..3 {
                settle_disk();
                match (i + turn) % 3 {
                    0 => match tar_pipe(&src, &base.join(format!("tar{i}"))) {
                        Ok(t) => tars.push(t),
                        Err(e) => eprintln!("limit: {e}"),
                    },
                    1 => {
                        let dst = base.join(format!("ours{i}"));
                        let _ = std::fs::remove_dir_all(&dst);
                        settle_disk();
                        for out in [&mut ofresh, &mut ounchanged] {
                            let mut rs = execnet::blocking::RSync::new(&src);
                            rs.add_target(&rgw, &dst, false);
                            let t = Instant::now();
                            match rs.send() {
                                Ok(_) => out.push(t.elapsed().as_secs_f64()),
                                Err(e) => eprintln!("ours: rsync: {e}"),
                            }
                        }
                    }
                    _ => {
                        if let Some(p) = peer.as_mut() {
                            let dst = base.join(format!("execnet{i}"));
                            let _ = std::fs::remove_dir_all(&dst);
                            settle_disk();
                            let cmd = serde_json::json!({"op": "rsync", "src": src, "dst": dst});
                            fresh.extend(p.call(cmd.clone()));
                            unchanged.extend(p.call(cmd));
                        }
                    }
                }
            }
        }
        let tar = median(tars);
        rgw.exit()?;
        let _ = std::fs::remove_dir_all(&base);
        let files = format!("{} files / {} MB", plan.rsync_files, plan.rsync_bytes >> 20);
        rows.push(Row {
            metric: format!("rsync fresh, {files}"),
            unit: Unit::Ms,
            ours: median(ofresh),
            peer: median(fresh),
            target: Target::TimesLimit(1.2, "tar", tar),
        });
        rows.push(Row {
            metric: format!("rsync unchanged, {files}"),
            unit: Unit::Ms,
            ours: median(ounchanged),
            peer: median(unchanged),
            target: Target::SpeedUp(2.0),
        });
        rows.push(Row {
            metric: "limit: `tar | tar` fresh".into(),
            unit: Unit::Ms,
            ours: tar,
            peer: None,
            target: Target::None,
        });
    }
    drop(peer);
    drop(peers);
    let _ = std::fs::remove_dir_all(&bench_cache);

    let table = print_table(&rows);
    println!(
        "\n{} on {} ({}; per-interpreter rows: {}); {} repeats, median; load before: {}; after: {}; took {:.0} s\n",
        if quick { "bench --quick" } else { "bench" },
        python.display(),
        version,
        pythons
            .iter()
            .map(|p| interpreter_label(p))
            .collect::<Vec<_>>()
            .join(", "),
        n,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        started.elapsed().as_secs_f64(),
    );
    println!("{table}");
    Ok(())
}
