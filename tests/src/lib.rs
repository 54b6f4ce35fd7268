//! Shared harness for the integration tests: interpreter discovery, the
//! "absent peer" policy, time bounds and process checks.
//!
//! - [`interpreters`] finds every Python on this machine: Debian's
//!   `/usr/bin/python3`, pyenv's `/root/.pyenv/versions/*/bin/python3`
//!   (3.x only) and `/usr/bin/pypy3`.
//! - [`require_all`]: with `EXECNET_REQUIRE_ALL=1` (set by `.ci/run`) a test
//!   whose peer is absent fails; on a developer machine it is skipped, loudly
//!   (see [`skip`]: the `SKIPPED` line shows in plain `cargo test` output).
//! - [`made_absent`]: `EXECNET_TEST_ABSENT=sshd,pypy3,netns` makes the
//!   harness treat those peers as absent, to see (and test) the skip path on
//!   a machine that has them.
//! - [`bounded`] runs a test body on a thread and fails the test if it takes
//!   longer than its bound, so no test can hang the suite.
//! - [`assert_reaped`] checks that a worker process is gone (neither alive
//!   nor a zombie).
//! - [`sshd`]: a real OpenSSH server on 127.0.0.1 with throwaway keys.
//! - [`netns`]: two network namespaces as extra hosts (h2 behind h1).
//! - [`fleet`]: N namespaces with an sshd each, one of them a jump host.
//! - [`suite`]: the channel/gateway behaviour every transport must show,
//!   run over ssh, socket and via gateways.

pub mod faults;
pub mod fleet;
pub mod netns;
pub mod sshd;
pub mod suite;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use execnet;

/// A Python interpreter found on this machine.
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// A short name: `debian-3.11`, `pyenv-3.6.15`, `pypy3`.
    pub name: String,
    /// The executable.
    pub path: PathBuf,
}

impl Interpreter {
    /// A popen spec for this interpreter.
    pub fn spec(&self) -> String {
        format!("popen//python={}", self.path.display())
    }
}

/// Every Python 3 interpreter present (Debian's, pyenv's, PyPy's).
pub fn interpreters() -> Vec<Interpreter> {
    let mut found = Vec::new();
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        found.push(Interpreter {
            name: "debian-python3".into(),
            path: debian.into(),
        });
    }
    if let Ok(rd) = std::fs::read_dir("/root/.pyenv/versions") {
        let mut versions: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        versions.sort();
        for v in versions {
            let name = v
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let py = v.join("bin/python3");
            if name.starts_with('3') && py.exists() {
                found.push(Interpreter {
                    name: format!("pyenv-{name}"),
                    path: py,
                });
            }
        }
    }
    let pypy = Path::new("/usr/bin/pypy3");
    if pypy.exists() && !made_absent("pypy3") {
        found.push(Interpreter {
            name: "pypy3".into(),
            path: pypy.into(),
        });
    }
    found
}

/// A Python 2 interpreter, for "too old" tests.
pub fn python2() -> Option<PathBuf> {
    let p = PathBuf::from("/root/.pyenv/versions/2.7.18/bin/python2");
    if p.exists() {
        return Some(p);
    }
    let rd = std::fs::read_dir("/root/.pyenv/versions").ok()?;
    rd.filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/python2"))
        .find(|p| p.exists())
}

/// Whether every peer must be present (`EXECNET_REQUIRE_ALL=1`, set in CI).
pub fn require_all() -> bool {
    std::env::var("EXECNET_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Whether `peer` (`sshd`, `pypy3`, `netns`, ...) is listed in
/// `EXECNET_TEST_ABSENT` (comma-separated): the harness then behaves as if
/// that peer were not installed, so the skip (or, under [`require_all`],
/// the failure) can be seen on a machine that has it.
pub fn made_absent(peer: &str) -> bool {
    std::env::var("EXECNET_TEST_ABSENT").is_ok_and(|v| v.split(',').any(|p| p.trim() == peer))
}

/// Reports an absent peer: fails under [`require_all`], else prints a loud
/// `SKIPPED <test>: <what>` line. Returns so that the caller can `return`.
///
/// The line is written to the process's real standard error, not through
/// `eprintln!`: libtest captures `print!`/`eprint!` output of passing tests
/// and throws it away, which made a skipped test look like a plain `ok`.
/// Writes through `std::io::stderr()` itself bypass that capture.
pub fn skip(what: &str) {
    if require_all() {
        panic!("required peer absent (EXECNET_REQUIRE_ALL=1): {what}");
    }
    use std::io::Write;
    // libtest names each test's thread after the test ([`bounded`] passes
    // the name on), so the line says which test was skipped.
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    let line = format!("SKIPPED {test}: {what} (set EXECNET_REQUIRE_ALL=1 to make this fail)\n");
    // One write_all on the locked handle: the line is not torn by other
    // tests writing at the same time.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Runs `f` on its own thread and fails if it does not finish within
/// `limit`. A panic inside `f` is re-raised here.
pub fn bounded<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    // The body's thread carries the test's name (libtest's thread name),
    // for [`skip`]'s line and for panic messages.
    let name = std::thread::current()
        .name()
        .map_or_else(|| "bounded-test".to_string(), str::to_string);
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .expect("spawn test thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(r)) => {
            let _ = handle.join();
            r
        }
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z') && state != Some('X')
        }
        Err(_) => false,
    }
}

/// Whether a process entry exists at all (alive or zombie).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Asserts that `pid` is gone, zombie included (we reaped it), within `within`.
pub fn assert_reaped(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while process_exists(pid) {
        if Instant::now() > deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            panic!("worker {pid} not reaped after {within:?}: {stat}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A fresh temporary directory (removed when dropped).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/execnet-test-<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "execnet-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The default bound for one test.
pub const LIMIT: Duration = Duration::from_secs(60);

/// One async round trip of its own on `gw`: a fresh exec that sleeps 50 ms
/// and answers `i + 1` (tasks of one runtime sharing a gateway, whatever the
/// runtime).
pub async fn plus_one_after_a_pause(gw: &execnet::Gateway, i: i64) -> i64 {
    let ch = gw
        .remote_exec("import time; x = channel.receive(); time.sleep(0.05); channel.send(x + 1)")
        .await
        .unwrap();
    ch.send(&i).await.unwrap();
    ch.receive::<i64>().await.unwrap()
}

/// Opens a default popen gateway (blocking API), panicking with the error.
pub fn gw() -> execnet::blocking::Gateway {
    execnet::blocking::makegateway("popen").unwrap_or_else(|e| panic!("makegateway(popen): {e}"))
}

/// What a gateway's output callback received: `(fd, bytes)` chunks, in
/// the order they came.
#[derive(Clone, Default)]
pub struct RecordedOutput(std::sync::Arc<std::sync::Mutex<Vec<Chunk>>>);

/// One chunk of remote output: the fd (1 or 2) and its bytes.
pub type Chunk = (u8, Vec<u8>);

impl RecordedOutput {
    /// The chunks so far.
    pub fn chunks(&self) -> Vec<Chunk> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Everything that came on `fd` so far, joined.
    pub fn bytes(&self, fd: u8) -> Vec<u8> {
        self.chunks()
            .into_iter()
            .filter(|(f, _)| *f == fd)
            .flat_map(|(_, b)| b)
            .collect()
    }

    /// [`bytes`](Self::bytes) as text (lossy).
    pub fn text(&self, fd: u8) -> String {
        String::from_utf8_lossy(&self.bytes(fd)).into_owned()
    }
}

/// Starts a gateway of `spec` (blocking API) whose remote output goes to a
/// [`RecordedOutput`] (output `forward`), panicking with the error.
pub fn recording_output(spec: &str) -> (execnet::blocking::Gateway, RecordedOutput) {
    let out = RecordedOutput::default();
    let to = out.clone();
    let gw = execnet::blocking::Gateway::builder(spec)
        .and_then(|b| {
            b.on_output(move |fd, bytes| {
                to.0.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((fd, bytes.to_vec()))
            })
            .start()
        })
        .unwrap_or_else(|e| panic!("gateway {spec}: {e}"));
    (gw, out)
}

/// A port on 127.0.0.1 where nothing listens, for "connection refused"
/// tests. Taken below the ephemeral range (32768 and up here), which
/// `bind(0)` never hands out: a port freed by a dropped listener could be
/// reused by a server another test starts in parallel.
pub fn refused_port() -> u16 {
    (1..1024)
        .rev()
        .find(|&p| {
            matches!(
                std::net::TcpStream::connect(("127.0.0.1", p)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        })
        .expect("some port below 1024 refuses connections on 127.0.0.1")
}
