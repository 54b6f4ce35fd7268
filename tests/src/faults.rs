//! Fault injection for the reliability suite (`tests/tests/reliability_*.rs`).
//!
//! - [`FakeWorker`]: a small Python program usable as `python=` that speaks a
//!   scripted, possibly broken protocol. The test builds the bytes it sends
//!   with `execnet_core`'s public frame and codec API ([`frame`],
//!   [`worker_hello`], [`cbor`]) and lists the [`Step`]s: read the
//!   bootstrap, read N host frames, send bytes, sleep, exit, close stdout.
//! - [`CorruptWriter`]: wraps a transport's writer and breaks the byte
//!   stream towards a real worker after N bytes (insert garbage, cut it
//!   short), for corruption seen by the worker.
//! - [`Resources`]: the process-wide counts a leak would grow (threads,
//!   open fds, RSS, child processes), read from `/proc/self`; and
//!   [`RssSampler`], which keeps the peak RSS seen by a sampling thread.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use execnet_core::frame::{write_frame, FrameKind};
use execnet_core::Value;

use crate::TempDir;

/// The interpreter that runs fake workers (always present on our machines).
pub const PYTHON: &str = "/usr/bin/python3";

/// A frame of a known kind.
pub fn frame(kind: FrameKind, channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, kind, channel, payload);
    out
}

/// A frame with any kind byte and any announced length (for kinds the
/// protocol does not know and lengths that lie).
pub fn raw_frame(kind: u8, channel: u32, length: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The CBOR encoding of a value.
pub fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    execnet_core::encode(v, &mut out).expect("encodable value");
    out
}

/// A worker HELLO frame announcing protocol `version`.
pub fn worker_hello(version: u64) -> Vec<u8> {
    let kv = |k: &str, v: Value| (Value::str(k), v);
    let info = Value::Dict(vec![
        kv("version", Value::Int(version as i64)),
        kv("implementation", Value::str("fake")),
        kv(
            "version_info",
            Value::List(vec![
                Value::Int(3),
                Value::Int(11),
                Value::Int(0),
                Value::str("final"),
                Value::Int(0),
            ]),
        ),
        kv("executable", Value::str(PYTHON)),
        kv("platform", Value::str("linux")),
        kv("pid", Value::Int(std::process::id() as i64)),
        kv("cwd", Value::str("/")),
        kv("execmodel", Value::str("thread")),
    ]);
    frame(FrameKind::Hello, 0, &cbor(&info))
}

/// One step of a fake worker's script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Read the compressed worker source the loader would read.
    ReadBootstrap,
    /// Read this many whole frames from the host (HELLO is the first).
    ReadFrames(usize),
    /// Write these bytes to stdout at once.
    Send(Vec<u8>),
    /// Sleep this long.
    Sleep(Duration),
    /// Exit with this status (without closing anything first).
    Exit(i32),
    /// Close stdout (the host sees end of stream) and go on.
    CloseStdout,
    /// Read stdin until end of stream.
    Drain,
}

const FAKE_WORKER: &str = r#"
import json, os, re, sys, time
plan = json.load(open(sys.argv[1]))
inp = sys.stdin.buffer
def readn(n):
    b = b""
    while len(b) < n:
        c = inp.read(n - len(b))
        if not c:
            sys.stderr.write("fake worker: end of input\n")
            os._exit(3)
        b += c
    return b
for op, arg in plan:
    if op == "bootstrap":
        fixed = re.search(r"read\((\d+)\)", sys.argv[-1])
        if fixed:  # a loader that reads N bytes of source
            readn(int(fixed.group(1)))
        else:  # popen's boot loader: "K N VERSION\n", K bytes of code, N of source
            k, n = inp.readline().split()[:2]
            readn(int(k) + int(n))
    elif op == "frames":
        for _ in range(arg):
            h = readn(9)
            readn(int.from_bytes(h[5:9], "big"))
    elif op == "send":
        os.write(1, bytes.fromhex(arg))
    elif op == "sleep":
        time.sleep(arg)
    elif op == "exit":
        sys.stderr.write("fake worker: exit %d\n" % arg)
        sys.stderr.flush()
        os._exit(arg)
    elif op == "close":
        os.close(1)
    elif op == "drain":
        while inp.read(65536):
            pass
"#;

/// A scripted fake worker: `spec()` is a popen spec whose `python=` runs it.
#[derive(Debug)]
pub struct FakeWorker {
    dir: TempDir,
}

impl FakeWorker {
    /// Writes the program and its plan.
    pub fn new(steps: &[Step]) -> FakeWorker {
        let dir = TempDir::new("fake-worker");
        let plan: Vec<serde_json::Value> = steps
            .iter()
            .map(|s| {
                let (op, arg) = match s {
                    Step::ReadBootstrap => ("bootstrap", serde_json::Value::Null),
                    Step::ReadFrames(n) => ("frames", (*n).into()),
                    Step::Send(b) => ("send", hex(b).into()),
                    Step::Sleep(d) => ("sleep", d.as_secs_f64().into()),
                    Step::Exit(c) => ("exit", (*c).into()),
                    Step::CloseStdout => ("close", serde_json::Value::Null),
                    Step::Drain => ("drain", serde_json::Value::Null),
                };
                serde_json::json!([op, arg])
            })
            .collect();
        std::fs::write(dir.path().join("fake.py"), FAKE_WORKER).expect("write fake.py");
        std::fs::write(
            dir.path().join("plan.json"),
            serde_json::to_vec(&plan).expect("json"),
        )
        .expect("write plan.json");
        FakeWorker { dir }
    }

    /// The usual script: take the bootstrap, read the host HELLO and
    /// `host_frames` more frames, send a valid HELLO then `then`, and keep
    /// reading until the host kills us.
    pub fn after_hello(host_frames: usize, then: Vec<u8>) -> FakeWorker {
        FakeWorker::new(&[
            Step::ReadBootstrap,
            Step::ReadFrames(1),
            Step::Send(worker_hello(1)),
            Step::ReadFrames(host_frames),
            Step::Send(then),
            Step::Drain,
        ])
    }

    /// `popen//python=/usr/bin/python3 DIR/fake.py DIR/plan.json`.
    pub fn spec(&self) -> String {
        let d = self.dir.path();
        format!(
            "popen//python={PYTHON} {} {}",
            d.join("fake.py").display(),
            d.join("plan.json").display()
        )
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a [`CorruptWriter`] does once `after` bytes have passed.
#[derive(Debug, Clone)]
pub enum WriteFault {
    /// Writes these bytes before the next write (frame-aligned: the driver
    /// writes whole frames), then passes everything through.
    Insert(Vec<u8>),
    /// Writes `keep` bytes of the next write, then fails every write and
    /// closes the stream (the worker sees a frame cut short).
    Cut {
        /// Bytes of the next write that still go out.
        keep: usize,
    },
}

/// A writer that breaks the stream after `after` bytes.
pub struct CorruptWriter {
    inner: Option<Box<dyn Write + Send>>,
    after: usize,
    written: usize,
    fault: Option<WriteFault>,
    /// Set when the fault has been applied.
    pub fired: Arc<AtomicBool>,
}

impl std::fmt::Debug for CorruptWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorruptWriter")
            .field("after", &self.after)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl CorruptWriter {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Write + Send>, after: usize, fault: WriteFault) -> CorruptWriter {
        CorruptWriter {
            inner: Some(inner),
            after,
            written: 0,
            fault: Some(fault),
            fired: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Write for CorruptWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let broken = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "cut by the test");
        let Some(inner) = self.inner.as_mut() else {
            return Err(broken());
        };
        if self.written >= self.after {
            match self.fault.take() {
                Some(WriteFault::Insert(bytes)) => {
                    inner.write_all(&bytes)?;
                    inner.flush()?;
                    self.fired.store(true, Ordering::SeqCst);
                }
                Some(WriteFault::Cut { keep }) => {
                    let keep = keep.min(buf.len());
                    inner.write_all(&buf[..keep])?;
                    inner.flush()?;
                    self.inner = None;
                    self.fired.store(true, Ordering::SeqCst);
                    return Err(broken());
                }
                None => {}
            }
        }
        let n = inner.write(buf)?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// Counts that grow when something leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Threads of this process.
    pub threads: usize,
    /// Open file descriptors.
    pub fds: usize,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Child processes (zombies included).
    pub children: usize,
}

impl Resources {
    /// Reads them now.
    pub fn now() -> Resources {
        let count = |p: &str| std::fs::read_dir(p).map_or(0, |rd| rd.count());
        Resources {
            threads: count("/proc/self/task"),
            fds: count("/proc/self/fd"),
            rss_kib: status_kib("VmRSS"),
            children: children().len(),
        }
    }
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`).
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Child processes of this process (every thread's children, zombies too).
pub fn children() -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// Samples `VmRSS` every few milliseconds on a thread and keeps the peak.
#[derive(Debug)]
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling every `every`.
    pub fn start(every: Duration) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(status_kib("VmRSS")));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    p.fetch_max(status_kib("VmRSS"), Ordering::Relaxed);
                    std::thread::sleep(every);
                }
            })
            .expect("spawn sampler");
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }
    /// The peak so far, KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(status_kib("VmRSS"))
    }
    /// Stops sampling and returns the peak, KiB.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak_kib()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `sig` (a number) to `pid` with the system `kill`.
pub fn signal(pid: u32, sig: i32) {
    let st = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}
