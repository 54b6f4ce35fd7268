//! The transport seam: anything that gives a byte stream to a worker.
//!
//! A [`Transport`] is a boxed reader, a boxed writer and an optional
//! [`PeerControl`]: for a subprocess that is the process (kill its group,
//! reap it with a timeout, the tail of its stderr); for a socket it is the
//! socket (shut it down). The driver (`crate::driver`) runs the protocol over
//! any transport the same way, so popen, ssh, socket and via gateways differ
//! only in how they produce one. A caller can build a `Transport` from its own
//! byte stream and hand it to
//! [`GatewayBuilder::start_with_transport`](crate::GatewayBuilder::start_with_transport).
//!
//! Bootstrapping (sending the worker source) is the transport's job, done
//! before the `Transport` is returned: the driver starts with the protocol's
//! first frame.
//!
//! **Choosing a transport.** Each transport module implements [`Connect`]
//! once and offers a *claim* function that turns a spec it serves into its
//! connector; [`TRANSPORTS`] lists the claims, one line each. The builder
//! asks [`connector_for`] and then only calls the trait: it never looks at
//! the gateway type itself. Adding a transport is one new file here and one
//! line in [`TRANSPORTS`] (docs/architecture.md, "Add a transport").
//!
//! **Off the caller's thread.** Starting a transport spawns processes,
//! writes the bootstrap payload and connects sockets: blocking system
//! calls. The async face must not run them on an executor's thread, so the
//! blocking connectors run on a thread of their own ([`off_thread`]); see
//! docs/architecture.md for the cost.

pub(crate) mod code_cache;
mod fork;
pub mod jail;
pub(crate) mod limits;
pub mod popen;
pub(crate) mod process;
pub mod socket;
pub mod ssh;
pub mod via;
mod worker_setup;

pub use worker_setup::WorkerSetup;

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_listener::Event;

use crate::error::{Error, ExitStatus, Result};
use crate::sync::lock;
use crate::xspec::{OutputMode, XSpec};

/// How long a new gateway may take to say hello (and a transport to take
/// its bootstrap payload).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Every transport, by the claim that recognises its specs (tried in
/// order; the first that claims a spec serves it). Adding a transport: one
/// new module with a [`Connect`] implementation, and its line here.
const TRANSPORTS: &[Claim] = &[fork::claim, popen::claim, ssh::claim, socket::claim];

/// A transport's claim: `None` when the spec is not its own, else its
/// connector (or why the spec is wrong for it).
pub(crate) type Claim = fn(&Request<'_>) -> Option<Result<Box<dyn Connect>>>;

/// What a gateway start asks of its transport.
pub(crate) struct Request<'a> {
    /// The parsed spec.
    pub spec: &'a XSpec,
    /// How remote output reaches us (the builder may override `stdout=`).
    pub output: OutputMode,
    /// The socket server's token, when the builder was given one.
    pub token: Option<Vec<u8>>,
}

/// A started transport, ready for the protocol.
pub(crate) struct Connected {
    /// The byte stream.
    pub transport: Transport,
    /// Explains a failed start from the process's exit status and stderr
    /// (ssh and via starts).
    pub probe: Option<ssh::Probe>,
    /// Where the worker was reached (ssh host, socket address).
    pub remoteaddress: Option<String>,
}

/// A future that a connector returns (boxed: connectors are chosen at run
/// time).
pub(crate) type ConnectFuture = Pin<Box<dyn Future<Output = Result<Connected>> + Send>>;

/// How one kind of transport reaches a worker; implemented once per
/// transport module.
pub(crate) trait Connect: Send {
    /// The gateway id that `via=` / `installvia=` names, when the spec goes
    /// through another gateway.
    fn through(&self) -> Option<&str> {
        None
    }
    /// Starts the worker (spawn or connect, then the bootstrap payload) and
    /// returns its byte stream. `through` is the gateway [`through`](Self::through)
    /// names. Never blocks the calling thread.
    fn connect(self: Box<Self>, through: Option<Box<dyn Through>>) -> ConnectFuture;
}

/// A boxed future of a [`Through`] call.
pub(crate) type ThroughFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What a transport needs of the gateway a start goes through (`via=GWID`,
/// `installvia=GWID`). `Gateway` implements it in `crate::relay`, so no
/// transport names gateways or channels: `gateway` uses `transport`,
/// `relay` uses both, and nothing points back (no import cycle).
pub(crate) trait Through: Send + Sync {
    /// The gateway's id, for descriptions and errors.
    fn id(&self) -> &str;
    /// Runs `argv` on the gateway's host (`None` first: that worker's own
    /// interpreter) with `env` added to its environment, in a session of
    /// its own; returns the byte stream to its stdin/stdout and its
    /// control (kill, exit status, stderr tail).
    fn relay_process(
        &self,
        argv: Vec<Option<String>>,
        env: Vec<(String, String)>,
        description: String,
    ) -> ThroughFuture<'_, (Transport, Arc<dyn PeerControl>)>;
    /// Starts `bootstrap/socketserver.py` in the gateway's worker, bound to
    /// `bind` (`HOST:PORT`, port 0: any free one) and accepting `token`;
    /// returns the address it serves.
    fn install_socket_server(&self, bind: String, token: String) -> ThroughFuture<'_, String>;
}

/// The connector of the first transport in [`TRANSPORTS`] that claims
/// `request.spec`.
pub(crate) fn connector_for(request: &Request<'_>) -> Result<Box<dyn Connect>> {
    if let Some(claimed) = TRANSPORTS.iter().find_map(|claim| claim(request)) {
        return claimed;
    }
    Err(match request.spec.gateway_type() {
        Some(other) => Error::Spec(format!("{other} gateways are not implemented yet")),
        None => Error::Spec(format!(
            "no gateway type in {:?} (expected popen, ssh=, socket=)",
            request.spec.to_string()
        )),
    })
}

thread_local! {
    /// Set by the blocking faces around a start: [`off_thread`] runs the
    /// start inline on this thread.
    static INLINE_STARTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a blocking face's `block_on` of a start) with starts done on
/// the calling thread, as before the async face moved them off it: a caller
/// that blocks anyway gains nothing from a start thread, and that thread's
/// first allocations cost glibc a fresh malloc arena (+1.3 MiB RSS in the
/// bench's fresh-process row).
pub(crate) fn inline_starts<R>(f: impl FnOnce() -> R) -> R {
    crate::sync::with_flag(&INLINE_STARTS, f)
}

/// Runs a blocking start (spawn, payload write, connect) on a thread of its
/// own, so that an async caller's executor thread never blocks; the caller
/// awaits the result. A thread per start costs tens of microseconds against
/// a start of ~10 ms, and ends with the start (a pool's idle threads would
/// linger; docs/architecture.md has the numbers). If the caller gives up
/// (drops the future), the start still completes on its thread and its
/// result is dropped there: a started process is killed and reaped.
pub(crate) async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    if INLINE_STARTS.with(|c| c.get()) {
        // A blocking face's caller blocks anyway.
        return f();
    }
    struct Slot<T> {
        value: Mutex<Option<Result<T>>>,
        done: Event,
    }
    /// Fills the slot even when `f` panics, so the awaiting side never
    /// waits for good.
    struct Fill<T>(Arc<Slot<T>>);
    impl<T> Drop for Fill<T> {
        fn drop(&mut self) {
            let mut v = lock(&self.0.value);
            if v.is_none() {
                *v = Some(Err(Error::Io(Arc::new(std::io::Error::other(
                    "the gateway start thread panicked",
                )))));
            }
            drop(v);
            self.0.done.notify(usize::MAX);
        }
    }
    let slot = Arc::new(Slot {
        value: Mutex::new(None),
        done: Event::new(),
    });
    let fill = Fill(slot.clone());
    std::thread::Builder::new()
        .name("execnet-start".into())
        .spawn(move || {
            let r = f();
            *lock(&fill.0.value) = Some(r);
        })?;
    loop {
        let listener = slot.done.listen();
        if let Some(r) = lock(&slot.value).take() {
            return r;
        }
        listener.await;
    }
}

/// A byte stream to a worker, ready for the protocol.
pub struct Transport {
    /// Bytes from the worker. Read by the gateway's reader thread only.
    pub reader: Box<dyn Read + Send>,
    /// Bytes to the worker. Written by one thread at a time.
    pub writer: Box<dyn Write + Send>,
    /// Control over the peer, when there is one to control.
    pub control: Option<Box<dyn PeerControl>>,
    /// Human-readable description for logs and errors (`popen python3 …`).
    pub description: String,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("description", &self.description)
            .field("has_control", &self.control.is_some())
            .finish_non_exhaustive()
    }
}

/// Control over what is at the other end of a transport. Every method is
/// bounded in time and safe to call from any thread, repeatedly.
pub trait PeerControl: Send + Sync {
    /// The worker's OS process id, if it is a local process.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// Ends the peer by force: kills the process group (SIGKILL), or shuts
    /// the connection down. Makes the reader see end of stream soon.
    fn kill(&self);
    /// Waits at most `timeout` for the peer to end and reaps it. Returns its
    /// exit status once known (later calls return the same status).
    fn wait(&self, timeout: Duration) -> Option<ExitStatus>;
    /// The last bytes (lossy UTF-8) the peer wrote to stderr, if captured.
    /// Waits at most `timeout` for the stderr stream to reach its end first.
    fn stderr_tail(&self, timeout: Duration) -> String {
        let _ = timeout;
        String::new()
    }
    /// The resource limit (`max_memory=256M`, `max_cpu=2`) that killed the
    /// worker, once [`wait`](Self::wait) has returned `status`; `None`
    /// when no limit explains its end. The driver then ends the channels
    /// with [`Error::LimitExceeded`] instead of [`Error::WorkerDied`].
    fn limit_exceeded(&self, status: ExitStatus) -> Option<String> {
        let _ = status;
        None
    }
    /// A remote error's text, with a first line added when a limit of the
    /// worker explains it (a fork that failed at `max_procs=`). Called
    /// once per remote error, under the gateway's lock: must be quick.
    fn annotate_remote_error(&self, text: String) -> String {
        text
    }
    /// The descriptor whose readability shows that the transport's reader
    /// has input (or its end) to deliver: the worker's stdout, the socket.
    /// `None` when there is none (a relay, an in-memory stream). With one,
    /// the driver's reader thread sleeps in a poll on it and on a wake-up
    /// descriptor of its own until input arrives or a blocking receiver
    /// wants to read itself, and a receive with a deadline may read the
    /// transport itself (see [`wait_readable`](Self::wait_readable)).
    /// It must stay open as long as the reader is.
    fn readable_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Waits at most `timeout` until the transport's reader has input (or
    /// its end) to deliver, without reading: `Some(true)` when it has,
    /// `Some(false)` when the time ran out or a signal interrupted the wait,
    /// `None` when this transport cannot tell. The driver calls it, while
    /// the reader is open, so that a receive with a deadline can read the
    /// transport itself (leader/follower) without waiting past its
    /// deadline; with `None` such a receive waits for another reader. The
    /// default polls [`readable_fd`](Self::readable_fd); a transport
    /// without a descriptor that can still tell may implement it instead
    /// (its reader thread then looks for blocking receivers every 20 ms).
    fn wait_readable(&self, timeout: Duration) -> Option<bool> {
        let fd = self.readable_fd()?;
        Some(poll_input(fd, None, Some(timeout)).input)
    }
    /// Output `forward`: hands every chunk the worker writes to its `fd`
    /// (1: stdout, 2: stderr) to `sink` from now on, as this transport reads
    /// it (a local process's stderr pipe; a forked worker's stdout and
    /// stderr, relayed by its fork server), so that what a worker writes
    /// there just before it dies is not lost with it. `false` when this
    /// transport does not read that fd of the worker: the worker then
    /// forwards it itself (OUTPUT frames from its output thread).
    fn forward_output(&self, fd: u8, sink: ForwardSink) -> bool {
        let _ = (fd, sink);
        false
    }
}

/// Where [`PeerControl::forward_output`] delivers a worker's output.
pub type ForwardSink = Box<dyn FnMut(&[u8]) + Send>;

/// What [`poll_input`] saw. Neither: the time ran out, or a signal
/// interrupted the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Polled {
    /// `input` is readable (input, its end, or an error the read will
    /// report).
    pub input: bool,
    /// `wake` is readable.
    pub woken: bool,
}

/// Waits until `input` or `wake` (if any) is readable, at most `timeout`
/// (`None`: without a limit). Returns early, with nothing seen, when a
/// signal interrupts the wait (the caller decides whether to wait again).
pub(crate) fn poll_input(
    input: BorrowedFd<'_>,
    wake: Option<BorrowedFd<'_>>,
    timeout: Option<Duration>,
) -> Polled {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let ts = timeout.map(|t| {
        Timespec::try_from(t).unwrap_or(Timespec {
            tv_sec: i64::from(i32::MAX),
            tv_nsec: 0,
        })
    });
    let mut both;
    let mut one;
    let fds: &mut [PollFd<'_>] = match wake {
        Some(w) => {
            both = [
                PollFd::from_borrowed_fd(input, PollFlags::IN),
                PollFd::from_borrowed_fd(w, PollFlags::IN),
            ];
            &mut both
        }
        None => {
            one = [PollFd::from_borrowed_fd(input, PollFlags::IN)];
            &mut one
        }
    };
    match poll(fds, ts.as_ref()) {
        Ok(0) | Err(rustix::io::Errno::INTR) => Polled {
            input: false,
            woken: false,
        },
        // Readable, hung up, or an error the read itself will report.
        Ok(_) => Polled {
            input: !fds[0].revents().is_empty(),
            woken: fds.get(1).is_some_and(|w| !w.revents().is_empty()),
        },
        Err(_) => Polled {
            input: true,
            woken: false,
        },
    }
}
