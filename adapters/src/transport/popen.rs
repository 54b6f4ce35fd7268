//! `popen`: the worker as a local subprocess.
//!
//! `PYTHON [-B] -u -c LOADER` with stdin/stdout as the byte stream, in its own
//! process group (so terminate can kill whatever the worker started), stderr
//! read by a thread that keeps its tail for error reports and passes it
//! through to our stderr when output is inherited. The default interpreter is
//! the `python3` on `PATH`, resolved once to the real binary (a pyenv shim
//! costs ~80 ms per start).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{PeerControl, Transport};
use crate::error::{Error, ExitStatus, Result};
use crate::xspec::{OutputMode, XSpec};

/// How many bytes of stderr are kept for error reports.
const STDERR_TAIL: usize = 8 * 1024;
/// Requested size of the stdin/stdout pipes.
const PIPE_SIZE: usize = 1 << 20;

/// Everything the popen transport needs, taken from a spec.
#[derive(Debug, Clone, Default)]
pub struct PopenOptions {
    /// The interpreter command line; `None`: the resolved default `python3`.
    pub python: Option<Vec<String>>,
    /// Working directory, created if missing.
    pub chdir: Option<PathBuf>,
    /// Niceness increment.
    pub nice: Option<i32>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Run with `-B`.
    pub dont_write_bytecode: bool,
    /// Whether the worker's stderr is passed through to ours.
    pub output: OutputMode,
}

impl PopenOptions {
    /// Takes the popen keys of a spec.
    pub fn from_spec(spec: &XSpec) -> Result<PopenOptions> {
        let python = match spec.python() {
            Some(p) => {
                let argv =
                    shell_words::split(p).map_err(|e| Error::Spec(format!("python={p}: {e}")))?;
                if argv.is_empty() {
                    return Err(Error::Spec("python= is empty".into()));
                }
                Some(argv)
            }
            None => None,
        };
        Ok(PopenOptions {
            python,
            chdir: spec.chdir().map(PathBuf::from),
            nice: spec.nice(),
            env: spec
                .env()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dont_write_bytecode: spec.dont_write_bytecode(),
            output: spec.stdout(),
        })
    }
}

/// The interpreter that `python3` on `PATH` runs, resolved once per process:
/// the PATH entry is asked for `sys.executable`, which sees through shims.
pub fn default_python() -> Result<String> {
    static RESOLVED: OnceLock<Option<String>> = OnceLock::new();
    RESOLVED
        .get_or_init(resolve_python3)
        .clone()
        .ok_or_else(|| Error::InterpreterNotFound {
            python: "python3".into(),
            reason: "no python3 on PATH".into(),
        })
}

fn resolve_python3() -> Option<String> {
    let found = find_in_path("python3")?;
    let out = Command::new(&found)
        .args(["-c", "import sys;sys.stdout.write(sys.executable or '')"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok();
    if let Some(out) = out {
        if out.status.success() {
            let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !exe.is_empty() && Path::new(&exe).is_file() {
                tracing::debug!(python3 = %found.display(), resolved = %exe, "resolved default interpreter");
                return Some(exe);
            }
        }
    }
    Some(found.to_string_lossy().into_owned())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Starts the interpreter, sends it the worker, and returns the byte stream.
pub fn connect(opts: &PopenOptions) -> Result<Transport> {
    let argv: Vec<String> = match &opts.python {
        Some(v) => v.clone(),
        None => vec![default_python()?],
    };
    let compressed = execnet_bootstrap::worker_compressed();
    let loader = execnet_bootstrap::loader(compressed.len());
    // `argv` is non-empty: from_spec refuses an empty python=, and the
    // default is one element.
    let (program, pre_args) = argv
        .split_first()
        .ok_or_else(|| Error::Spec("python= is empty".into()))?;
    let mut cmd = Command::new(program);
    cmd.args(pre_args);
    if opts.dont_write_bytecode {
        cmd.arg("-B");
    }
    cmd.arg("-u").arg("-c").arg(&loader);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &opts.chdir {
        std::fs::create_dir_all(dir).map_err(|e| Error::BootstrapFailed {
            reason: format!("chdir={}: cannot create: {e}", dir.display()),
            stderr_tail: String::new(),
        })?;
        cmd.current_dir(dir);
    }
    let description = format!("popen {}", shell_words::join(&argv));
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            Error::InterpreterNotFound {
                python: shell_words::join(&argv),
                reason: e.to_string(),
            }
        }
        _ => Error::from(e),
    })?;
    let pid = child.id();
    tracing::debug!(pid, %description, "spawned worker");

    // Take the pipes before anything can fail, so that the error paths below
    // still kill and reap the child through `ProcessControl`.
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let control = ProcessControl::new(child, stderr, opts.output == OutputMode::Inherit);
    let (Some(mut stdin), Some(stdout)) = (stdin, stdout) else {
        control.kill();
        control.wait(Duration::from_secs(1));
        return Err(Error::BootstrapFailed {
            reason: "child pipes missing".into(),
            stderr_tail: String::new(),
        });
    };

    // Bigger pipes: fewer wake-ups per MiB (about 4x the bandwidth here).
    // Best effort: a smaller limit in /proc/sys/fs/pipe-max-size is fine.
    let _ = rustix::pipe::fcntl_setpipe_size(&stdin, PIPE_SIZE);
    let _ = rustix::pipe::fcntl_setpipe_size(&stdout, PIPE_SIZE);

    if let Some(n) = opts.nice {
        // Renice now, while the interpreter is single-threaded and blocked
        // on its stdin: threads it creates later inherit the value (Linux
        // niceness is per thread).
        if let Err(e) = renice(pid, n) {
            control.kill();
            control.wait(Duration::from_secs(1));
            return Err(Error::BootstrapFailed {
                reason: format!("nice={n}: {e}"),
                stderr_tail: String::new(),
            });
        }
    }

    if let Err(e) = stdin.write_all(compressed) {
        control.kill();
        control.wait(Duration::from_secs(2));
        return Err(Error::BootstrapFailed {
            reason: format!("writing the worker: {e}"),
            stderr_tail: control.stderr_tail(Duration::from_millis(500)),
        });
    }
    Ok(Transport {
        reader: Box::new(stdout),
        writer: Box::new(stdin),
        control: Some(Box::new(control)),
        description,
    })
}

fn renice(pid: u32, increment: i32) -> std::io::Result<()> {
    use rustix::process::{getpriority_process, setpriority_process, Pid};
    let ours = getpriority_process(None)?;
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("bad pid"))?;
    setpriority_process(Some(pid), (ours + increment).clamp(-20, 19))?;
    Ok(())
}

/// The child process: reaping, killing its group, its stderr tail.
struct ProcessControl {
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stderr: Arc<StderrTail>,
}

impl ProcessControl {
    fn new(
        child: Child,
        stderr: Option<std::process::ChildStderr>,
        passthrough: bool,
    ) -> ProcessControl {
        let pid = child.id();
        let tail = Arc::new(StderrTail::default());
        match stderr {
            Some(stderr) => {
                let t = tail.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("execnet-stderr-{pid}"))
                    .spawn(move || t.run(stderr, passthrough));
                if spawned.is_err() {
                    tail.finish();
                }
            }
            None => tail.finish(),
        }
        ProcessControl {
            pid,
            child: Mutex::new(child),
            status: Mutex::new(None),
            stderr: tail,
        }
    }

    fn try_reap(&self) -> Option<ExitStatus> {
        let mut status = lock(&self.status);
        if let Some(s) = *status {
            return Some(s);
        }
        let mut child = lock(&self.child);
        match child.try_wait() {
            Ok(Some(s)) => {
                *status = Some(s.into());
                *status
            }
            Ok(None) => None,
            Err(_) => {
                // ECHILD: somebody else reaped it; there is nothing to wait for.
                *status = Some(ExitStatus::Unknown);
                *status
            }
        }
    }
}

impl PeerControl for ProcessControl {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn kill(&self) {
        use rustix::process::{kill_process_group, Pid, Signal};
        // Killing the group also reaches what the worker started. Once the
        // leader is reaped its id may only be reused after the whole group is
        // gone, so this cannot hit a stranger while members are left.
        if let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }

    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            if let Some(s) = self.try_reap() {
                return Some(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn stderr_tail(&self, timeout: Duration) -> String {
        self.stderr.wait_done(timeout);
        self.stderr.text()
    }
}

impl Drop for ProcessControl {
    fn drop(&mut self) {
        // Last resort, normally already done by the gateway: never leave a
        // zombie or a live worker behind.
        if self.try_reap().is_none() {
            self.kill();
            let _ = self.wait(Duration::from_secs(2));
        }
    }
}

/// The last bytes of the child's stderr.
#[derive(Default)]
struct StderrTail {
    buf: Mutex<(VecDeque<u8>, bool)>,
    done: Condvar,
}

impl StderrTail {
    fn run(&self, mut stderr: std::process::ChildStderr, passthrough: bool) {
        let mut chunk = [0u8; 4096];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if passthrough {
                        let _ = std::io::stderr().write_all(&chunk[..n]);
                    }
                    let mut g = lock(&self.buf);
                    g.0.extend(&chunk[..n]);
                    let excess = g.0.len().saturating_sub(STDERR_TAIL);
                    g.0.drain(..excess);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.finish();
    }

    fn finish(&self) {
        lock(&self.buf).1 = true;
        self.done.notify_all();
    }

    fn wait_done(&self, timeout: Duration) {
        let g = lock(&self.buf);
        let _ = self.done.wait_timeout_while(g, timeout, |(_, done)| !*done);
    }

    fn text(&self) -> String {
        let g = lock(&self.buf);
        let (a, b) = g.0.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Locks, ignoring poisoning: the data guarded here stays consistent even if
/// a holder panicked (every critical section is a few plain assignments).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
