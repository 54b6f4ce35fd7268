//! What every transport that starts a process shares: spawning it in its
//! own process group with piped stdio, and [`ProcessControl`] (reaping,
//! killing the group, the tail of stderr). The interpreter's arguments come
//! from [`WorkerSetup`](super::WorkerSetup).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use crate::sync::lock;
use std::time::{Duration, Instant};

use super::{ForwardSink, PeerControl};
use crate::error::{Error, ExitStatus, Result};

/// How many bytes of stderr are kept for error reports.
const STDERR_TAIL: usize = 8 * 1024;

/// A started process: its stdin and stdout, and its control.
pub(crate) struct Spawned {
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
    pub(crate) control: Arc<ProcessControl>,
}

/// Requested size of a worker's protocol pipes: fewer wake-ups per MiB
/// (about 4x the bandwidth here).
const PIPE_SIZE: usize = 1 << 20;

/// Makes a protocol pipe [`PIPE_SIZE`] big. Best effort: a smaller limit in
/// /proc/sys/fs/pipe-max-size is fine.
pub(crate) fn widen_pipe(fd: impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
}

/// SIGKILLs the process group that `pid` leads: the worker and what it
/// started. Once the leader is reaped its id may only be reused after the
/// whole group is gone, so this cannot hit a stranger while members are
/// left. `Err(SRCH)`: no such group (any more, or not yet).
pub(crate) fn kill_group(pid: u32) -> rustix::io::Result<()> {
    use rustix::process::{kill_process_group, Pid, Signal};
    match i32::try_from(pid).ok().and_then(Pid::from_raw) {
        Some(pid) => kill_process_group(pid, Signal::KILL),
        None => Err(rustix::io::Errno::SRCH),
    }
}

/// A failed spawn of `program` as our error: a missing or non-executable
/// program is [`Error::InterpreterNotFound`] (the interpreter, or the ssh
/// or bwrap in front of it), anything else an I/O error.
pub(crate) fn spawn_error(e: std::io::Error, program: &str) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            Error::InterpreterNotFound {
                python: program.to_string(),
                reason: e.to_string(),
            }
        }
        _ => Error::from(e),
    }
}

/// Spawns `cmd` in its own process group with piped stdin, stdout and
/// stderr (read by a thread that keeps the tail, and passes it through to
/// our stderr when `passthrough`). `program` names the command in errors:
/// a missing or non-executable program is [`Error::InterpreterNotFound`].
pub(crate) fn spawn(mut cmd: Command, program: &str, passthrough: bool) -> Result<Spawned> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|e| spawn_error(e, program))?;
    // Take the pipes before anything can fail, so that the error path below
    // still kills and reaps the child through `ProcessControl`.
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let mut control = ProcessControl::new(child, stderr, passthrough);
    {
        use std::os::fd::AsFd;
        // A duplicate of stdout to poll (`readable_fd`); best effort:
        // without it, receives with a deadline do not lead and the reader
        // thread blocks in `read`.
        control.stdout = stdout
            .as_ref()
            .and_then(|s| s.as_fd().try_clone_to_owned().ok());
    }
    let control = Arc::new(control);
    let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
        control.kill();
        control.wait(Duration::from_secs(1));
        return Err(Error::BootstrapFailed {
            reason: "child pipes missing".into(),
            stderr_tail: String::new(),
        });
    };
    Ok(Spawned {
        stdin,
        stdout,
        control,
    })
}

/// The loader of a plain source start: [`execnet_bootstrap::loader`] for
/// [`execnet_bootstrap::worker_compressed`], the payload of [`send_worker`].
pub(crate) fn source_loader() -> String {
    execnet_bootstrap::loader(execnet_bootstrap::worker_compressed().len())
}

/// How long a spawned interpreter may take to read the bootstrap payload
/// from its stdin (as long as it may take to answer HELLO).
const PAYLOAD_TIMEOUT: Duration = super::STARTUP_TIMEOUT;

/// Writes the bootstrap payload (`parts`, in order: what the loader reads)
/// to a freshly spawned interpreter; on failure kills and reaps it and
/// reports its stderr.
pub(crate) fn send_worker(
    stdin: &mut (impl Write + std::os::fd::AsFd),
    control: &ProcessControl,
    parts: &[&[u8]],
) -> Result<()> {
    let written = write_within(stdin, parts, Instant::now() + PAYLOAD_TIMEOUT);
    if let Err(e) = written {
        // A broken pipe mostly means the interpreter has already ended
        // (`python=/bin/true`, killed at start): say how, as the reader
        // would have after a successful write.
        let ended = control.wait(Duration::from_millis(500));
        if ended.is_none() {
            control.kill();
            control.wait(Duration::from_secs(2));
        }
        let how = ended.map_or_else(String::new, |s| {
            format!("; worker ended before HELLO ({s})")
        });
        return Err(Error::BootstrapFailed {
            reason: format!("writing the worker: {e}{how}"),
            stderr_tail: control.stderr_tail(Duration::from_millis(500)),
        });
    }
    Ok(())
}

/// Writes `parts` to the pipe `w`, failing with `TimedOut` at `deadline`.
///
/// What fits in the pipe's buffer is written at once. A larger payload (a
/// compiled worker when the pipe could not be enlarged) is written in
/// pieces of at most one page, each after `poll` says there is room: a
/// program that never reads its stdin would otherwise block this thread
/// for good, before any startup timeout runs.
fn write_within(
    w: &mut (impl Write + std::os::fd::AsFd),
    parts: &[&[u8]],
    deadline: Instant,
) -> std::io::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let room = rustix::pipe::fcntl_getpipe_size(w.as_fd()).unwrap_or(0);
    if total <= room {
        // A fresh pipe: nothing else was written to it yet.
        return parts.iter().try_for_each(|p| w.write_all(p));
    }
    for part in parts {
        // A pipe that is not full has at least a page free, and a write of
        // at most a page (PIPE_BUF) into it does not block.
        for piece in part.chunks(4096) {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the interpreter did not read its stdin within {PAYLOAD_TIMEOUT:?}"
                        ),
                    ));
                }
                let timeout =
                    Timespec::try_from(left.min(Duration::from_secs(1))).unwrap_or(Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    });
                let fd = w.as_fd();
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match poll(&mut fds, Some(&timeout)) {
                    Ok(0) => continue,
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            w.write_all(piece)?;
        }
    }
    Ok(())
}

/// A [`PeerControl`] shared with the transport that made it (which keeps a
/// clone to learn the exit status after a failed start).
pub(crate) struct Shared<T: PeerControl>(pub(crate) Arc<T>);

impl<T: PeerControl> PeerControl for Shared<T> {
    fn pid(&self) -> Option<u32> {
        self.0.pid()
    }
    fn kill(&self) {
        self.0.kill()
    }
    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        self.0.wait(timeout)
    }
    fn stderr_tail(&self, timeout: Duration) -> String {
        self.0.stderr_tail(timeout)
    }
    fn readable_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.0.readable_fd()
    }
    fn forward_output(&self, fd: u8, sink: ForwardSink) -> bool {
        self.0.forward_output(fd, sink)
    }
}

/// The child process: reaping, killing its group, its stderr tail.
pub(crate) struct ProcessControl {
    pid: u32,
    /// A duplicate of the worker's stdout, to poll for input (the original
    /// belongs to the transport's reader).
    stdout: Option<std::os::fd::OwnedFd>,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stderr: Arc<StderrTail>,
}

impl ProcessControl {
    pub(crate) fn new(
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
            stdout: None,
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
        let _ = kill_group(self.pid);
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
    fn readable_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.stdout.as_ref().map(AsFd::as_fd)
    }
    fn forward_output(&self, fd: u8, sink: ForwardSink) -> bool {
        // Its stdout is the protocol's pipe: only stderr is ours to read.
        fd == 2 && self.stderr.forward(sink)
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

/// The last bytes of the child's stderr, and where it goes as it comes.
#[derive(Default)]
struct StderrTail {
    buf: Mutex<(VecDeque<u8>, bool)>,
    done: Condvar,
    /// Output `forward`: the gateway's output (`forward_output`).
    sink: Mutex<Option<ForwardSink>>,
}

impl StderrTail {
    fn run(&self, mut stderr: std::process::ChildStderr, passthrough: bool) {
        let mut chunk = [0u8; 4096];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    match lock(&self.sink).as_mut() {
                        Some(sink) => sink(&chunk[..n]),
                        None if passthrough => {
                            let _ = std::io::stderr().write_all(&chunk[..n]);
                        }
                        None => {}
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

    /// Sends what comes from now on to `sink` too; `false` if nothing
    /// more comes (no stderr pipe, or it has ended).
    fn forward(&self, sink: ForwardSink) -> bool {
        let mut slot = lock(&self.sink);
        // Under the sink's lock: the reader takes it before each chunk, so
        // no chunk read after this check is missed.
        if lock(&self.buf).1 {
            return false;
        }
        *slot = Some(sink);
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    fn child(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_payload_larger_than_the_pipe_is_written_within_the_deadline() {
        let payload = vec![7u8; 300 << 10];
        let parts = [&payload[..100], &payload[100..]];

        // A reader: everything arrives.
        let mut reader = child("cat >/dev/null");
        let mut stdin = reader.stdin.take().unwrap();
        let _ = rustix::pipe::fcntl_setpipe_size(&stdin, 64 << 10);
        write_within(&mut stdin, &parts, Instant::now() + Duration::from_secs(10)).unwrap();
        drop(stdin);
        assert!(reader.wait().unwrap().success());

        // A program that never reads: a bounded failure, not a hang.
        let mut sleeper = child("exec sleep 30");
        let mut stdin = sleeper.stdin.take().unwrap();
        let _ = rustix::pipe::fcntl_setpipe_size(&stdin, 64 << 10);
        let t0 = Instant::now();
        let e = write_within(&mut stdin, &parts, t0 + Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
}
