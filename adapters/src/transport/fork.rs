//! `popen//fork`: local workers forked from a fork server, so that N
//! gateways cost one interpreter start and N forks.
//!
//! One fork server runs per interpreter and per process setup that matters
//! when the interpreter starts (`python=`, `chdir=`, `nice=`, `env:`,
//! `dont_write_bytecode`; the [`ServerKey`]). It is
//! `bootstrap/forkserver.py`, started like a popen worker (same loader, same
//! `chdir`/`nice` prelude, same environment) but with its stdin a unix
//! socket to us, the *control connection*. Its own code comes from
//! `code_cache/` too (a loader that compiled writes the record to the
//! server's stdout, a pipe the report thread drains). It loads the worker
//! once (the compiled code of `code_cache/` when there is some; otherwise
//! it compiles and hands its code back to that cache); then,
//! per gateway, we make the two pipes of the protocol (its stdin and
//! stdout), send their far ends over the control connection
//! (`SCM_RIGHTS`), and the server forks: the child gets its own session and
//! process group, the pipes as fds 0/1, a fresh stderr pipe read by the
//! server as fd 2, every other descriptor closed, and runs the worker's
//! normal process-mode main. The driver then talks to it exactly as to a
//! popen worker (output forwarding, terminate, HELLO with its own pid).
//!
//! The server is the worker's parent: it reaps it and reports, on the
//! control connection, the pid (`S`), how it ended with the tail of its
//! stderr (`X`), or why it could not fork (`E`); with output `inherit` it
//! also relays the worker's stderr as it comes (`O`), which we copy to our
//! stderr; with output `forward` it gives the worker a stdout pipe too and
//! relays both, which we hand to the gateway's output
//! ([`PeerControl::forward_output`]): what a worker writes just before it
//! dies is in those pipes, not lost with its own output thread (it has none
//! then). [`ForkWorker`], the gateway's [`PeerControl`], kills the worker's
//! process group itself and learns the exit status and stderr tail from
//! those reports, so [`Error::WorkerDied`] reads
//! as for popen.
//!
//! Lifetime: every [`ForkWorker`] holds its [`Server`]; the registry only a
//! weak reference. When the last gateway of a server is gone we close the
//! control connection, and the server kills whatever is left of its
//! workers' process groups, reaps them and exits (it does the same if we
//! die). A server that ends under us fails the starts in flight (their
//! worker never says HELLO: a start error carrying the reason), running
//! gateways keep their pipes and go on, and the next start starts a new
//! server.
//!
//! A start does not wait for the fork: it sends the request and hands the
//! pipes to the driver, whose HELLO wait (the builder's start timeout)
//! bounds it like any start; the pid arrives with the `S` report, and a
//! kill asked for before that is carried out when it arrives. Starts made
//! while the server is still starting queue their requests; the start that
//! spawned it sends them as one burst at READY (or, if it never gets
//! ready, fails them with its reason).

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::popen::{default_python, PopenOptions};
use super::process::{self, ProcessControl};
use super::{
    code_cache, off_thread, Connect, ConnectFuture, Connected, ForwardSink, PeerControl, Request,
    Through, Transport, STARTUP_TIMEOUT,
};
use crate::error::{Error, ExitStatus, Result};
use crate::sync::{lock, wait_timeout};
use crate::xspec::OutputMode;

/// The spec flag this module serves (`popen//fork`).
const FLAG: &str = "fork";
/// A request's size on the control connection (forkserver.py's `REQUEST`).
const REQUEST: usize = 16;
/// A report's header: kind, token, payload length.
const REPORT_HEADER: usize = 13;
/// The largest report payload we accept (the server sends at most 64 KiB
/// of stderr at once and an 8 KiB tail).
const MAX_REPORT: usize = 1 << 20;
/// How long dropping the last gateway waits for its server to exit before
/// it kills it.
const SERVER_EXIT: Duration = Duration::from_secs(2);

/// Claims `popen//fork` specs (see [`super::TRANSPORTS`]; listed before
/// popen, which would otherwise take them). `fork` with another gateway
/// type, with `via=`, or with `jail` is refused.
pub(crate) fn claim(request: &Request<'_>) -> Option<Result<Box<dyn Connect>>> {
    let spec = request.spec;
    if !spec.has(FLAG) {
        return None;
    }
    if spec.gateway_type() != Some("popen") {
        return Some(Err(Error::Spec(format!(
            "fork is a popen option (popen//fork), not one of {:?}",
            spec.gateway_type().unwrap_or("a spec without gateway type")
        ))));
    }
    if spec.via().is_some() {
        return Some(Err(Error::Spec(
            "popen//fork cannot go via= another gateway (fork servers are local)".into(),
        )));
    }
    // Forked workers share their server's process: no jail, no limits.
    if let Err(e) = super::jail::refuse_unsupported(spec, "popen//fork", &[]) {
        return Some(Err(e));
    }
    Some(PopenOptions::from_spec(spec).map(|mut opts| {
        opts.setup.output = request.output;
        Box::new(ForkConnect { opts }) as Box<dyn Connect>
    }))
}

/// The fork transport's connector.
struct ForkConnect {
    opts: PopenOptions,
}

impl Connect for ForkConnect {
    fn connect(self: Box<Self>, _through: Option<Box<dyn Through>>) -> ConnectFuture {
        Box::pin(async move {
            let opts = self.opts;
            let transport = off_thread(move || connect(&opts)).await?;
            Ok(Connected {
                transport,
                probe: None,
                remoteaddress: None,
            })
        })
    }
}

/// Starts a forked worker: finds (or starts) the fork server of `opts`'
/// interpreter and setup, and asks it for a worker. Errors:
/// [`Error::InterpreterNotFound`] (the interpreter cannot be run),
/// [`Error::BootstrapFailed`] (the server did not come up, or has ended).
/// A worker the server cannot fork shows as a start that fails with the
/// server's reason as its stderr.
pub fn connect(opts: &PopenOptions) -> Result<Transport> {
    let key = ServerKey::new(opts)?;
    let server = server_for(key)?;
    server.fork(opts.setup.output)
}

/// What one fork server serves: the interpreter and every setting that
/// takes effect when it starts. Output mode is per worker, not part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerKey {
    argv: Vec<String>,
    chdir: Option<PathBuf>,
    nice: Option<i32>,
    env: Vec<(String, String)>,
    dont_write_bytecode: bool,
}

impl ServerKey {
    fn new(opts: &PopenOptions) -> Result<ServerKey> {
        let argv = match &opts.python {
            Some(v) => v.clone(),
            None => vec![default_python()?],
        };
        let s = &opts.setup;
        Ok(ServerKey {
            argv,
            chdir: s.chdir.clone(),
            nice: s.nice,
            env: s.env.clone(),
            dont_write_bytecode: s.dont_write_bytecode,
        })
    }
}

/// One registry slot per key; its lock is held while the key's server is
/// spawned, so concurrent first starts share one server instead of
/// starting several.
type Slot = Arc<Mutex<Weak<Server>>>;

/// The running fork servers, weakly: a server lives as long as gateways use
/// it.
fn registry() -> &'static Mutex<Vec<(ServerKey, Slot)>> {
    static SERVERS: OnceLock<Mutex<Vec<(ServerKey, Slot)>>> = OnceLock::new();
    SERVERS.get_or_init(Mutex::default)
}

/// The live server for `key`, started if there is none (or it has ended).
fn server_for(key: ServerKey) -> Result<Arc<Server>> {
    let slot = {
        let mut all = lock(registry());
        // Forget ended servers' slots that no one is starting in.
        all.retain(|(_, slot)| {
            Arc::strong_count(slot) > 1 || slot.try_lock().map_or(true, |w| w.strong_count() > 0)
        });
        match all.iter().find(|(k, _)| *k == key) {
            Some((_, slot)) => slot.clone(),
            None => {
                let slot = Slot::default();
                all.push((key.clone(), slot.clone()));
                slot
            }
        }
    };
    let mut current = lock(&slot);
    if let Some(server) = current.upgrade() {
        if !server.reports.has_ended() && server.owner == std::process::id() {
            // Possibly still starting: its requests wait in its queue.
            return Ok(server);
        }
    }
    let server = Arc::new(Server::spawn(&key)?);
    *current = Arc::downgrade(&server);
    // Concurrent starts take the server now and queue their requests,
    // instead of waiting here one after the other.
    drop(current);
    server.until_ready()?;
    Ok(server)
}

/// A running fork server: the control connection, what it reported, and
/// its process.
pub(crate) struct Server {
    /// The control connection (requests go out here; a clone is read by
    /// the report thread).
    ctl: UnixStream,
    /// Held while a request is written, so requests never interleave.
    sending: Mutex<()>,
    /// Requests made before READY (`None` from then on). The server reads
    /// its start through a buffered reader, which could take a request's
    /// bytes without its descriptors, so nothing else may reach it first;
    /// and the starts that came meanwhile are sent as one burst when it is
    /// ready, which the server forks back to back. (When each start waited
    /// for READY itself, they sent their requests one at a time as their
    /// threads got a core among the first workers: with 16 at once on two
    /// cores the last request came ~9 ms after READY.)
    queue: Mutex<Option<Vec<Queued>>>,
    /// When the server was spawned: READY is awaited until STARTUP_TIMEOUT
    /// after.
    started: Instant,
    reports: Arc<Reports>,
    process: Arc<ProcessControl>,
    reader: Mutex<Option<JoinHandle<()>>>,
    next_token: AtomicU64,
    /// The process that started the server. A process forked from it (a
    /// Python host's `multiprocessing`) shares the control connection but
    /// not the thread that reads it: there the server is not used, and
    /// dropping it touches nothing of the parent's.
    owner: u32,
    /// The interpreter's command line, for descriptions and errors.
    python: String,
}

impl Server {
    /// Starts the fork server of `key`; [`Server::until_ready`] waits
    /// until it is ready.
    fn spawn(key: &ServerKey) -> Result<Server> {
        let python = shell_words::join(&key.argv);
        let (program, pre_args) = key
            .argv
            .split_first()
            .ok_or_else(|| Error::Spec("python= is empty".into()))?;
        let (ours, theirs) = UnixStream::pair()?;
        let setup = super::WorkerSetup {
            chdir: key.chdir.clone(),
            nice: key.nice,
            env: key.env.clone(),
            dont_write_bytecode: key.dont_write_bytecode,
            output: OutputMode::Forward,
            // The claim refuses jail and limits for fork specs.
            ..Default::default()
        };
        // The server itself starts as a popen worker does, through the
        // boot loader: its compiled code from the cache when there is some
        // (compiling it cost ~2.3 ms of every first fork-mode start), else
        // its source, and then the loader writes the code it compiled to
        // its stdout, a pipe of ours (read by the report thread until the
        // server closes it, first thing).
        let server_boot = code_cache::boot_unit(code_cache::Unit::ForkServer, &key.argv, &key.env);
        // The worker goes to the server the same way, and the server hands
        // the code it compiled back on the control connection (ahead of
        // READY).
        let boot = code_cache::boot(&key.argv, &key.env);
        let cacheable = boot.loader == execnet_bootstrap::boot_loader();
        let (record, record_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(std::io::Error::from)?;
        // The whole record fits in it (~21 KB on CPython 3.11; the report
        // thread reads it only after we have written the start, which the
        // loader stops reading while it writes the record).
        process::widen_pipe(&record);
        let mut cmd = Command::new(program);
        cmd.args(pre_args)
            .args(setup.interpreter_args(&server_boot.loader))
            .envs(key.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(record_w))
            .stderr(Stdio::piped());
        {
            use std::os::unix::process::CommandExt;
            // Out of our terminal's process group: a Ctrl-C meant for us
            // must not kill the server under running gateways.
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(|e| process::spawn_error(e, &python))?;
        // The command holds our copies of the server's end of the control
        // connection and of its stdout: while it lives, a server that dies
        // at once would not be seen to (no end of file until the ready wait
        // runs out).
        drop(cmd);
        let stderr = child.stderr.take();
        // The server's own stderr (its traces, a crash) is kept for errors,
        // and shown as it comes when tracing is on.
        let debug = std::env::var_os("EXECNET_DEBUG").is_some_and(|v| !v.is_empty() && v != "0");
        let process = Arc::new(ProcessControl::new(child, stderr, debug));
        let pid = process.pid().unwrap_or(0);
        tracing::debug!(pid, %python, "spawned fork server");

        let fail = |reason: String| start_failed(&process, &python, &reason);
        let started = Instant::now();
        // May wait (bounded) for another start of this interpreter that is
        // compiling; the server starts meanwhile.
        let server_start = server_boot.resolve();
        let start = boot.resolve();
        let worker = execnet_bootstrap::worker_compressed();
        let plain_header;
        let parts = if cacheable {
            start.payload()
        } else {
            // Nothing to key a cache entry on: the source, as the header
            // says (`start` then learns nothing either).
            plain_header = execnet_bootstrap::boot_header(0, "", worker.len());
            vec![&plain_header[..], worker]
        };
        let sent = ours
            .set_write_timeout(Some(STARTUP_TIMEOUT))
            .and_then(|()| {
                server_start
                    .payload()
                    .iter()
                    .chain(&parts)
                    .try_for_each(|p| (&ours).write_all(p))
            });
        if let Err(e) = sent {
            return Err(fail(format!("writing its source: {e}")));
        }
        let reports = Arc::new(Reports::default());
        let reader = ours.try_clone().and_then(|r| {
            // Takes the code record (if any) off the front of the reports.
            let r = start.reader(r);
            // The server's own code record (if its loader compiled), cached
            // as the stream ends: the server closes it before it loads the
            // worker, and the kill of a failed start closes it too.
            let mut record = server_start.reader(File::from(record));
            let reports = reports.clone();
            let server_process = process.clone();
            std::thread::Builder::new()
                .name(format!("execnet-fork-{pid}"))
                .spawn(move || {
                    // Nothing else is written there: what is not a record is
                    // dropped.
                    let _ = std::io::copy(&mut record, &mut std::io::sink());
                    drop(record);
                    let why = read_reports(r, &reports);
                    // Without its control connection the server is of no
                    // use (it exits at its end): reap it now, not when its
                    // last gateway goes, and say how it ended. Only then are
                    // the waits on its reports ended (at most 2 SERVER_EXITs
                    // later), so every error of a start in flight says it.
                    let status = server_process.wait(SERVER_EXIT).or_else(|| {
                        server_process.kill();
                        server_process.wait(SERVER_EXIT)
                    });
                    let tail = server_process.stderr_tail(Duration::from_millis(200));
                    let mut why = match status {
                        Some(s) => format!("{why}; the fork server (pid {pid}) ended: {s}"),
                        None => why,
                    };
                    if !tail.trim().is_empty() {
                        why = format!("{why}; its stderr:\n{}", tail.trim_end());
                    }
                    tracing::debug!(%why, "fork server gone");
                    reports.update(|b| b.ended = Some(why));
                })
        });
        let reader = match reader {
            Ok(h) => h,
            Err(e) => return Err(fail(format!("no report thread: {e}"))),
        };
        Ok(Server {
            ctl: ours,
            sending: Mutex::new(()),
            queue: Mutex::new(Some(Vec::new())),
            started,
            reports,
            process,
            reader: Mutex::new(Some(reader)),
            next_token: AtomicU64::new(1),
            owner: std::process::id(),
            python,
        })
    }

    /// Waits until the server is ready (bounded by [`STARTUP_TIMEOUT`]
    /// from its spawn), then sends the requests queued meanwhile. Errors:
    /// [`Error::BootstrapFailed`] with why it did not come up (it is
    /// killed; the queued starts fail as their pipes close).
    fn until_ready(&self) -> Result<()> {
        let ready = self
            .reports
            .wait_until(self.started + STARTUP_TIMEOUT, |b| {
                if b.ready {
                    Some(Ok(()))
                } else {
                    b.ended.clone().map(Err)
                }
            })
            .unwrap_or_else(|| Err(format!("not ready within {STARTUP_TIMEOUT:?}")));
        let pid = self.process.pid().unwrap_or(0);
        let mut queue = lock(&self.queue);
        // Held through the burst: a start that finds the queue gone sends
        // after it.
        let one_at_a_time = lock(&self.sending);
        let queued = queue.take().unwrap_or_default();
        drop(queue);
        match ready {
            Ok(()) => {
                tracing::debug!(pid, elapsed = ?self.started.elapsed(), queued = queued.len(), "fork server ready");
                for q in queued {
                    if let Err(e) = self.send(&q) {
                        // Its start fails as its pipes close (q goes), with
                        // this reason.
                        self.refuse(
                            &[q],
                            &format!("the fork server did not take the request: {e}"),
                        );
                    }
                }
                Ok(())
            }
            Err(why) => {
                drop(one_at_a_time);
                let e = start_failed(&self.process, &self.python, &why);
                if let Error::BootstrapFailed { reason, .. } = &e {
                    self.refuse(&queued, reason);
                }
                Err(e)
            }
        }
    }

    /// Records why queued requests were never sent, for their starts'
    /// errors; they fail as their pipes close (when `queued` is dropped).
    fn refuse(&self, queued: &[Queued], why: &str) {
        self.reports.update(|b| {
            for q in queued {
                if let Some(w) = b.workers.get_mut(&q.token) {
                    w.refused = Some(why.to_string());
                }
            }
        });
    }

    /// Writes one request with its two descriptors; the caller holds
    /// `sending`.
    fn send(&self, q: &Queued) -> std::io::Result<()> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let fds = [q.stdin.as_fd(), q.stdout.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        // The buffer is sized for exactly these two descriptors.
        let pushed = ancillary.push(SendAncillaryMessage::ScmRights(&fds));
        debug_assert!(pushed);
        match sendmsg(
            &self.ctl,
            &[IoSlice::new(&q.request)],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        ) {
            // The descriptors travel with the first byte; the rest of a
            // short write follows as plain bytes.
            Ok(n) => (&self.ctl).write_all(&q.request[n..]),
            Err(e) => Err(e.into()),
        }
    }

    /// Asks the server for a worker and returns its byte stream. Does not
    /// wait for the fork (see the module docs).
    fn fork(self: &Arc<Self>, output: OutputMode) -> Result<Transport> {
        use rustix::pipe::{pipe_with, PipeFlags};

        // CLOEXEC: no other child we start inherits them (the server gets
        // its copies over the socket).
        let (in_r, in_w) = pipe_with(PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
        let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
        process::widen_pipe(&in_w);
        process::widen_pipe(&out_r);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let forward = output == OutputMode::Forward;
        self.reports
            .register(token, forward)
            .map_err(|why| self.ended_error(&why))?;

        let mut request = [0u8; REQUEST];
        request[0] = b'F';
        // Bit 0: relay its stderr for ours; bit 1: relay stdout and stderr
        // for the gateway's output (forkserver.py, "Requests").
        request[1] = match output {
            OutputMode::Inherit => 1,
            OutputMode::Forward => 2,
            OutputMode::Discard => 0,
        };
        request[8..].copy_from_slice(&token.to_be_bytes());
        let q = Queued {
            token,
            request,
            stdin: in_r,
            stdout: out_w,
        };
        let sent = {
            let mut queue = lock(&self.queue);
            match queue.as_mut() {
                Some(waiting) => {
                    // Not ready yet: until_ready sends it (or drops it, and
                    // the start fails as the pipes close).
                    waiting.push(q);
                    Ok(())
                }
                None => {
                    let _one_at_a_time = lock(&self.sending);
                    drop(queue);
                    // The server holds the far ends now; ours would keep
                    // the worker's stdin open after we are gone, and its
                    // stdout after it is gone.
                    self.send(&q)
                }
            }
        };
        if let Err(e) = sent {
            self.reports.update(|b| {
                b.workers.remove(&token);
            });
            return Err(self.ended_error(&format!("it did not take the request: {e}")));
        }
        let control = ForkWorker {
            server: self.clone(),
            token,
            // A duplicate of the worker's stdout to poll (`readable_fd`);
            // best effort: without it, receives with a deadline do not lead.
            stdout: out_r.try_clone().ok(),
        };
        Ok(Transport {
            reader: Box::new(File::from(out_r)),
            writer: Box::new(File::from(in_w)),
            description: format!(
                "popen//fork {} (fork server pid {})",
                self.python,
                self.process.pid().unwrap_or(0)
            ),
            control: Some(Box::new(control)),
        })
    }

    fn ended_error(&self, why: &str) -> Error {
        let status = self.process.wait(Duration::from_millis(200));
        let how = status.map_or_else(String::new, |s| format!(" ({s})"));
        Error::BootstrapFailed {
            reason: format!(
                "the fork server of popen//fork {} (pid {}) has ended{how}: {why}",
                self.python,
                self.process.pid().unwrap_or(0)
            ),
            stderr_tail: self.process.stderr_tail(Duration::from_millis(200)),
        }
    }
}

impl Drop for Server {
    /// The last gateway has gone: closing the control connection ends the
    /// server (it kills what is left of its workers, reaps them and exits).
    fn drop(&mut self) {
        if self.owner != std::process::id() {
            // A forked copy: shutting the shared connection down would end
            // the parent's server.
            return;
        }
        let _ = self.ctl.shutdown(std::net::Shutdown::Both);
        if self.process.wait(SERVER_EXIT).is_none() {
            self.process.kill();
            let _ = self.process.wait(SERVER_EXIT);
        }
        if let Some(reader) = lock(&self.reader).take() {
            // It has seen the end of the connection (shut down above).
            let _ = reader.join();
        }
    }
}

/// The error of a server that did not come up: it is killed and reaped
/// (bounded), and the error says how it ended, why, and its stderr tail.
fn start_failed(process: &ProcessControl, python: &str, why: &str) -> Error {
    process.kill();
    let status = process.wait(Duration::from_secs(2));
    let how = status.map_or_else(String::new, |s| format!(" ({s})"));
    Error::BootstrapFailed {
        reason: format!("the fork server of {python}{how}: {why}"),
        stderr_tail: process.stderr_tail(Duration::from_millis(500)),
    }
}

/// A request for a worker: its bytes and the far ends of its pipes (closed
/// here once sent: the server has its copies).
struct Queued {
    token: u64,
    request: [u8; REQUEST],
    stdin: OwnedFd,
    stdout: OwnedFd,
}

/// What the server reported, shared by its report thread and the gateways.
#[derive(Default)]
struct Reports {
    board: Mutex<Board>,
    changed: Condvar,
    /// Output `forward`: each worker's stdout (fd 1) and stderr (fd 2)
    /// sinks, by (token, fd), from `forward_output` until its exit report.
    /// Apart from the board: a sink runs the gateway's output callback,
    /// which must not hold up the board's waiters.
    sinks: Mutex<HashMap<(u64, u8), ForwardSink>>,
}

#[derive(Default)]
struct Board {
    /// The server said READY.
    ready: bool,
    /// Why the control connection ended (`None` while it runs).
    ended: Option<String>,
    /// Each gateway's worker, by token.
    workers: HashMap<u64, Worker>,
}

/// One gateway's worker, as reported.
#[derive(Default)]
struct Worker {
    /// Output `forward`: the server relays its stdout and stderr for the
    /// gateway's sinks (dropped while there is no sink), not for our stderr.
    forward: bool,
    pid: Option<u32>,
    /// The server could not fork it: why.
    refused: Option<String>,
    /// How it ended, and its stderr tail.
    exit: Option<(ExitStatus, String)>,
    /// A kill was asked for before the pid was known.
    kill_when_started: bool,
}

/// What a wait on a worker's reports found.
enum Outcome {
    Exited(ExitStatus, String),
    /// Never forked: the server refused, or ended first.
    NotStarted(String),
    /// The server ended; the worker (an orphan now) may still run.
    Orphaned(u32),
}

impl Reports {
    fn has_ended(&self) -> bool {
        lock(&self.board).ended.is_some()
    }

    fn register(&self, token: u64, forward: bool) -> std::result::Result<(), String> {
        let mut b = lock(&self.board);
        if let Some(why) = &b.ended {
            return Err(why.clone());
        }
        b.workers.insert(
            token,
            Worker {
                forward,
                ..Worker::default()
            },
        );
        Ok(())
    }

    /// Hands what the server relays of `token`'s worker's `fd` to `sink`
    /// from now on; `false` if it relays nothing of it for a gateway (not
    /// output `forward`, or the worker has ended).
    fn forward(&self, token: u64, fd: u8, sink: ForwardSink) -> bool {
        let mut sinks = lock(&self.sinks);
        // Under the sinks' lock: the report thread takes it before it
        // delivers an `O` report, and drops the sinks at the `X`.
        let relayed = (fd == 1 || fd == 2)
            && lock(&self.board)
                .workers
                .get(&token)
                .is_some_and(|w| w.forward && w.exit.is_none());
        if relayed {
            sinks.insert((token, fd), sink);
        }
        relayed
    }

    /// No more output for `token`'s sinks (its worker's exit report is in,
    /// or its gateway is gone).
    fn drop_sinks(&self, token: u64) {
        lock(&self.sinks).retain(|(t, _), _| *t != token);
    }

    /// A relayed chunk of `token`'s worker's output on `fd`.
    fn output(&self, token: u64, fd: u8, bytes: &[u8]) {
        let mut sinks = lock(&self.sinks);
        if let Some(sink) = sinks.get_mut(&(token, fd)) {
            sink(bytes);
            return;
        }
        drop(sinks);
        let forward = lock(&self.board)
            .workers
            .get(&token)
            .is_some_and(|w| w.forward);
        // Output `inherit` (only stderr is relayed then): ours. Forward
        // output before its sink (none: the gateway reads from its HELLO
        // on) or after the gateway: dropped, as the worker's output thread
        // would have (the stderr tail keeps the last of it).
        if !forward && fd == 2 {
            let _ = std::io::stderr().write_all(bytes);
        }
    }

    /// Waits until `check` answers, at most until `deadline`.
    fn wait_until<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&mut Board) -> Option<T>,
    ) -> Option<T> {
        let mut b: MutexGuard<'_, Board> = lock(&self.board);
        loop {
            if let Some(t) = check(&mut b) {
                return Some(t);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            b = wait_timeout(&self.changed, b, deadline - now).0;
        }
    }

    /// How `token`'s worker ended, once known (at most until `deadline`).
    fn outcome(&self, token: u64, deadline: Instant) -> Option<Outcome> {
        self.wait_until(deadline, |b| {
            let Some(w) = b.workers.get(&token) else {
                return Some(Outcome::NotStarted("no such worker".into()));
            };
            if let Some((s, tail)) = &w.exit {
                return Some(Outcome::Exited(*s, tail.clone()));
            }
            if let Some(why) = &w.refused {
                return Some(Outcome::NotStarted(why.clone()));
            }
            let why = b.ended.as_ref()?;
            Some(match w.pid {
                Some(pid) => Outcome::Orphaned(pid),
                None => Outcome::NotStarted(format!(
                    "the fork server ended before it forked this worker: {why}"
                )),
            })
        })
    }

    fn update(&self, f: impl FnOnce(&mut Board)) {
        f(&mut lock(&self.board));
        self.changed.notify_all();
    }
}

/// The report thread: reads the control connection until it ends, and
/// returns why it ended.
fn read_reports(mut ctl: impl Read, reports: &Reports) -> String {
    let why = loop {
        let mut head = [0u8; REPORT_HEADER];
        if let Err(e) = ctl.read_exact(&mut head) {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "the control connection ended".to_string()
            } else {
                format!("reading the control connection: {e}")
            };
        }
        let kind = head[0];
        let mut t = [0u8; 8];
        t.copy_from_slice(&head[1..9]);
        let token = u64::from_be_bytes(t);
        let len = u32::from_be_bytes([head[9], head[10], head[11], head[12]]) as usize;
        if len > MAX_REPORT {
            break format!("a report of {len} bytes (at most {MAX_REPORT})");
        }
        let mut payload = vec![0u8; len];
        if let Err(e) = ctl.read_exact(&mut payload) {
            break format!("the control connection ended inside a report: {e}");
        }
        match kind {
            b'R' => reports.update(|b| b.ready = true),
            b'S' if len == 4 => {
                let pid = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                reports.update(|b| match b.workers.get_mut(&token) {
                    Some(w) => {
                        w.pid = Some(pid);
                        if w.kill_when_started {
                            kill_group(pid);
                        }
                    }
                    // The gateway gave up before the fork (its pipes are
                    // closed, so the worker would end by itself anyway).
                    None => kill_group(pid),
                });
            }
            b'E' => {
                let why = String::from_utf8_lossy(&payload).into_owned();
                reports.update(|b| {
                    if let Some(w) = b.workers.get_mut(&token) {
                        w.refused = Some(why);
                    }
                });
            }
            b'X' if len >= 5 => {
                let n = i32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
                let status = match payload[0] {
                    b'S' => ExitStatus::Signal(n),
                    b'C' if n >= 0 => ExitStatus::Code(n),
                    _ => ExitStatus::Unknown,
                };
                let tail = String::from_utf8_lossy(&payload[5..]).into_owned();
                // Its output came before this report (the server drains its
                // pipes first): nothing more for its sinks.
                reports.drop_sinks(token);
                reports.update(|b| {
                    if let Some(w) = b.workers.get_mut(&token) {
                        w.exit = Some((status, tail));
                    }
                });
            }
            b'O' if len >= 1 => reports.output(token, payload[0], &payload[1..]),
            other => break format!("an unknown report {other:#04x} of {len} bytes"),
        }
    };
    why
}

/// Kills the worker `pid` with its process group. The server reports the
/// pid right after its fork, possibly before the child's `setsid`: while
/// there is no such group yet, the child has started nothing, and killing
/// the process itself is enough.
fn kill_group(pid: u32) {
    use rustix::process::{kill_process, Pid, Signal};
    if process::kill_group(pid) == Err(rustix::io::Errno::SRCH) {
        if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

/// Whether `pid` has ended: gone, or a zombie (an orphan whose new parent
/// has not reaped it yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// A forked worker: the [`PeerControl`] of a `popen//fork` gateway. Kills
/// the worker's process group itself; its exit status and stderr tail come
/// from the server's reports. Holds the server: the last one dropped ends
/// it.
pub(crate) struct ForkWorker {
    server: Arc<Server>,
    token: u64,
    /// A duplicate of the worker's stdout, to poll for input (the original
    /// belongs to the transport's reader).
    stdout: Option<OwnedFd>,
}

impl ForkWorker {
    fn reports(&self) -> &Reports {
        &self.server.reports
    }
}

impl PeerControl for ForkWorker {
    fn pid(&self) -> Option<u32> {
        lock(&self.reports().board)
            .workers
            .get(&self.token)
            .and_then(|w| w.pid)
    }

    fn kill(&self) {
        let pid = {
            let mut b = lock(&self.reports().board);
            match b.workers.get_mut(&self.token) {
                Some(w) if w.pid.is_none() => {
                    // Not forked yet (or never will be): the report thread
                    // kills it when its pid arrives.
                    w.kill_when_started = true;
                    None
                }
                Some(w) => w.pid,
                None => None,
            }
        };
        if let Some(pid) = pid {
            // The group outlives its leader's reaping while members are
            // left, so this reaches what the worker started (as popen's).
            // Once the server has reaped the leader (its exit report is
            // in), a lone pid is not ours any more: only the group is.
            let reaped = lock(&self.reports().board)
                .workers
                .get(&self.token)
                .is_some_and(|w| w.exit.is_some());
            if reaped {
                let _ = process::kill_group(pid);
            } else {
                kill_group(pid);
            }
        }
    }

    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        match self.reports().outcome(self.token, deadline)? {
            Outcome::Exited(status, _) => Some(status),
            Outcome::NotStarted(_) => Some(ExitStatus::Unknown),
            Outcome::Orphaned(pid) => {
                // No one reports on it now: watch the process itself.
                let mut pause = Duration::from_millis(1);
                loop {
                    if ended(pid) {
                        return Some(ExitStatus::Unknown);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    fn readable_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.stdout.as_ref().map(AsFd::as_fd)
    }

    fn forward_output(&self, fd: u8, sink: ForwardSink) -> bool {
        self.reports().forward(self.token, fd, sink)
    }

    fn stderr_tail(&self, timeout: Duration) -> String {
        match self.reports().outcome(self.token, Instant::now() + timeout) {
            Some(Outcome::Exited(_, tail)) => tail,
            Some(Outcome::NotStarted(why)) => why,
            Some(Outcome::Orphaned(_)) | None => String::new(),
        }
    }
}

impl Drop for ForkWorker {
    fn drop(&mut self) {
        if self.server.owner != std::process::id() {
            // A forked copy of the host: the worker is the parent's.
            return;
        }
        // Last resort, normally done by the gateway: no worker outlives
        // its gateway.
        let known = matches!(
            self.reports().outcome(self.token, Instant::now()),
            Some(Outcome::Exited(..) | Outcome::NotStarted(_))
        );
        if !known {
            self.kill();
            let _ = self.wait(Duration::from_secs(2));
        }
        self.reports().drop_sinks(self.token);
        self.reports().update(|b| {
            b.workers.remove(&self.token);
        });
    }
}
