//! The driver: runs one [`Session`] over one [`Transport`] with threads.
//!
//! Its jobs live in one file each: this one holds the shared state and the
//! start; `reading.rs` the read token and the reader thread, `dispatch.rs`
//! session events into channel states and callbacks, `writing.rs` the
//! writing token and the flusher, `waiting.rs` the one `wait_for` every wait
//! goes through, `commands.rs` what the handles ask (exec, send, receive,
//! close, status), `termination.rs` the end of a gateway.
//!
//! **The drive contract** (the core's run loop, `execnet_core` crate doc):
//! every input goes in through one of `Session::handle_input` (reading.rs,
//! `feed`), `handle_eof` (reading.rs) or `handle_timeout` (termination.rs,
//! with the session's own `poll_timeout` deadline, never an invented one),
//! or a command (commands.rs, dispatch.rs). After each, under the same lock,
//! the driver drains in the core's order: `poll_transmit` into `outbuf`
//! (writing.rs, `write_loop` / `pump_for_flusher`), then `poll_event`
//! (dispatch.rs, `dispatch`; again after transmitting, since sending frees
//! window room), then `poll_timeout` (only a terminate sets one; the
//! termination wait is bounded by the caller's deadline and then applies
//! the session's). Bytes leave in `poll_transmit` order through one writing
//! token; events are dispatched under the lock and user code runs after it.
//!
//! Shared state sits under one `Mutex` ([`State`]): the session (which holds
//! each channel's received items and their credit: a receive takes the next
//! item with `ChannelMut::recv`, and the credit goes back inside the core),
//! callbacks, status replies, and the bytes waiting to be written. Three kinds of threads touch it:
//!
//! - the **reader** thread (one per gateway) blocks on the transport, feeds
//!   `handle_input`, drains events (`Readable`: items wait) and wakes waiters
//!   (`event-listener`). It runs callbacks and forwards remote output, outside
//!   the lock. It never writes: two readers blocked on writes to each other
//!   would deadlock once both pipes are full.
//! - **callers** (user threads or tasks) issue commands under the lock and
//!   then write what the session produced themselves, if nobody else is
//!   writing at that moment (one "writing" token in the state). That keeps a
//!   ping-pong at one thread hand-off per message.
//! - the **flusher** thread writes what the reader made the session produce
//!   (credit returns, WINDOW-opened item chunks, CLOSE answers) and what a
//!   `Drop` left behind, so that neither blocks on a write.
//!
//! Order on the wire is kept because every byte the session produces goes
//! through `State::outbuf` in `poll_transmit` order, and only the holder of
//! the writing token takes bytes out of it.
//!
//! Waiting is the same for the async and the blocking API: a waiter takes an
//! `event_listener` listener under the lock (so no notification is lost),
//! releases the lock, and awaits the listener (the blocking API blocks on
//! that future). Deadlines race the listener against an `async_io::Timer`.
//!
//! **Leader/follower reading** (DESIGN.md §7). Reading the transport needs
//! the *read token* (`State::reading`); the transport reader and its buffer
//! sit in `Driver::source`, used only by the token holder. A thread waiting
//! in a blocking [`receive`](crate::blocking::Channel::receive) without a
//! deadline (the thread-local set by [`leading_allowed`]) takes the token
//! when it is free and reads itself: `feed` (handle_input, dispatch, pump)
//! and the callbacks/output it produced, on its own thread, until its own
//! item is there; then it gives the token back at once. That saves the
//! cross-CPU wake-up of a hand-off from the reader thread per item. Waiters
//! that may not lead (async tasks, deadlines) never read: they register as
//! *waiters*; blocking receivers register as *candidates*.
//!
//! The reader thread holds the token otherwise. After each read it stands
//! back (gives the token away and wakes the candidates) when a candidate
//! waits; it takes the token again when it is free and nobody is a
//! candidate, at once if anyone may need input (a waiter, a callback, a
//! shutdown), else after at most [`READER_GRACE`] (unattended output, EOF).
//! So every byte is read by someone whenever anyone waits or a callback is
//! set. Where the transport has a descriptor to poll
//! (`PeerControl::readable_fd`: popen, ssh, socket, fork) the reader thread
//! waits for input in one poll on it and on its wake-up descriptor
//! (`wake.rs`), which a new candidate signals: it stands back at once even
//! while no input arrives, and an idle gateway's reader sleeps without
//! waking. While a leader holds the token for longer than
//! [`READER_GRACE`] the reader thread sleeps too, until the release.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use event_listener::Event;
use execnet_core::{
    Config, LocalError, ProtocolError, Session, Status, TerminateReason, Value, WorkerInfo,
};

use crate::error::{Error, RemoteError, Result};
use crate::sync::lock;
use crate::transport::{PeerControl, Transport};

mod commands;
mod dispatch;
mod reading;
mod termination;
mod waiting;
mod wake;
mod writing;

use reading::ReadToken;
pub(crate) use waiting::listen_until;
use wake::Wake;

/// Bytes taken from the session per write.
const WRITE_CHUNK: usize = 1 << 20;
/// Bytes read from the transport at once.
const READ_CHUNK: usize = 256 << 10;
/// How long the reader waits for a process that closed its stdout to exit.
const REAP_ON_EOF: Duration = Duration::from_secs(1);
/// How long the reader thread leaves a free read token alone while nobody
/// waits (so that the next blocking receive can lead).
const READER_GRACE: Duration = Duration::from_millis(2);
/// How long the reader thread waits for input at a time, on a transport
/// that can tell when input waits (`PeerControl::wait_readable`) but has no
/// descriptor to poll with the wake-up descriptor (or when none could be
/// made), before it looks whether a blocking receiver waits to read itself
/// (then it gives the token away).
const READER_POLL: Duration = Duration::from_millis(20);

thread_local! {
    /// Set while this thread runs a [`block_on`]: it blocks anyway, so it
    /// may write to the transport itself. Elsewhere (an async executor's
    /// thread) commands leave their bytes to the flusher thread.
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static LEAD_OK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static LEADING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Set around an interruptible wait (`leading_interruptible`): this
    /// thread may lead even with a deadline, and a signal that interrupts
    /// its read ends the wait.
    static INTERRUPTIBLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// A read of this thread was interrupted by a signal (EINTR) while
    /// `INTERRUPTIBLE` was set.
    static INTERRUPTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set with `INTERRUPTIBLE` by `leading_interruptible_bounded`: the
    /// wait's deadline is real, so this thread leads only where its read can
    /// be bounded by it (`Driver::lead_with_deadline`).
    static BOUNDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Like [`leading_interruptible`], for a wait whose deadline must hold: the
/// thread leads only on a transport that bounds its read by the deadline
/// (`PeerControl::wait_readable`), and a signal that interrupts that wait
/// ends it with `Err(Timeout)` at once; elsewhere it follows, as a timed
/// receive does.
pub(crate) fn leading_interruptible_bounded<R>(f: impl FnOnce() -> R) -> R {
    crate::sync::with_flag(&BOUNDED, || leading_interruptible(f))
}

/// Like [`leading_allowed`], for a wait that must react to signals (a
/// Python host's main thread and Ctrl-C): the thread may lead (read the
/// transport itself) even though the wait has a deadline, and a signal that
/// interrupts that read ends the wait with `Err(Timeout)`. While it leads
/// the deadline is not watched (a read cannot be cut short): only input or a
/// signal ends it; while it follows, the deadline applies as usual.
pub(crate) fn leading_interruptible<R>(f: impl FnOnce() -> R) -> R {
    /// A signal seen by this wait is this wait's: the next starts clean.
    struct ClearInterrupted;
    impl Drop for ClearInterrupted {
        fn drop(&mut self) {
            INTERRUPTED.with(|c| c.set(false));
        }
    }
    crate::sync::with_flag(&INTERRUPTIBLE, || {
        let _clear = ClearInterrupted;
        leading_allowed(f)
    })
}

/// Runs `f` to completion on this thread, which may block: the blocking
/// faces, `io`'s readers and writers, the via relay's transport and the
/// driver's own helper threads wait through this, never through
/// `futures_lite::future::block_on` directly. While it runs, commands write
/// their frames on this thread (one thread hand-off less per message);
/// anywhere else, an async task's thread, they leave the write to the
/// flusher thread, so the async face never blocks its executor on a full
/// pipe (issue 15: the async face performs no blocking system call).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    crate::sync::with_flag(&MAY_BLOCK, || futures_lite::future::block_on(f))
}

/// Whether this thread runs a [`block_on`] (it may write inline).
pub(super) fn may_block() -> bool {
    MAY_BLOCK.with(|c| c.get())
}

/// Runs `f` (a `block_on` of a receive) with leader/follower reading
/// allowed on this thread. Only for threads that may block.
pub(crate) fn leading_allowed<R>(f: impl FnOnce() -> R) -> R {
    crate::sync::with_flag(&LEAD_OK, f)
}

/// A callback on a channel's items.
pub(crate) type Callback = Box<dyn FnMut(Value) + Send>;
/// Runs a closure inside a context (the gateway set for channel conversion).
pub(crate) type CallbackContext = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;
/// A sink for forwarded remote output: `(fd, bytes)`.
pub(crate) type OutputCallback = Box<dyn FnMut(u8, &[u8]) + Send>;

/// Where forwarded remote output goes.
pub(crate) enum OutputSink {
    Stderr,
    Callback(OutputCallback),
}

impl OutputSink {
    /// Hands `bytes` the worker wrote to its `fd` (1 or 2) on.
    pub(crate) fn deliver(&mut self, fd: u8, bytes: &[u8]) {
        match self {
            OutputSink::Stderr => {
                let _ = std::io::stderr().write_all(bytes);
            }
            OutputSink::Callback(f) => f(fd, bytes),
        }
    }
}

/// One gateway's shared state and threads.
pub(crate) struct Driver {
    state: Mutex<State>,
    source: Mutex<ReadSide>,
    read_cv: Condvar,
    token_event: Event,
    flush_cv: Condvar,
    gw_event: Event,
    writer: Mutex<Box<dyn Write + Send>>,
    control: Option<Box<dyn PeerControl>>,
    /// The transport can wait for input without reading
    /// (`PeerControl::wait_readable`): a blocking receive with a deadline
    /// may then lead, its read bounded by the deadline.
    lead_with_deadline: bool,
    /// The reader thread's wake-up descriptor (`wake.rs`), when the
    /// transport has a descriptor to poll (`PeerControl::readable_fd`).
    wake: Option<Wake>,
    /// Shared with the transport's stderr reader when it forwards the
    /// worker's stderr itself (`PeerControl::forward_output`).
    output: Arc<Mutex<OutputSink>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    reader_id: OnceLock<std::thread::ThreadId>,
    callback_context: OnceLock<CallbackContext>,
    pub(crate) span: tracing::Span,
    pub(crate) description: String,
    /// `gateway ID (ADDRESS)`: names the gateway in the errors that end its
    /// channels (one of many gateways died: which one?).
    pub(crate) label: String,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

struct State {
    session: Session,
    channels: HashMap<u32, ChanState>,
    outbuf: Vec<u8>,
    spare: Vec<u8>,
    writing: bool,
    write_failed: bool,
    flush_wanted: bool,
    shutdown: bool,
    ready: Option<WorkerInfo>,
    status_replies: HashMap<u64, Status>,
    reading: bool,
    /// How often the read token was taken (the reader thread waits for a
    /// leader's release without a timeout once it stops changing hands).
    token_takes: u64,
    /// The reader thread waits for the token's release without a timeout:
    /// the release must wake it.
    reader_parked: bool,
    /// The reader thread holds the token (and waits for input in a poll
    /// with the wake-up descriptor): a new candidate signals the descriptor.
    reader_has_token: bool,
    /// The wake-up descriptor was signalled and is not drained yet.
    woken: bool,
    candidates: usize,
    waiters: usize,
    callbacks: usize,
    ended: Option<TerminateReason>,
    death: Option<Error>,
    reader_done: bool,
    terminate_started: bool,
    finished: Option<bool>,
}

struct ReadSide {
    reader: Option<Box<dyn Read + Send>>,
    buf: Vec<u8>,
    /// The last read filled `buf`: the reader (a wrapper with a buffer of
    /// its own) may hold more than the descriptor shows, so the next read
    /// does not wait for the descriptor first.
    last_full: bool,
}

/// What the driver keeps of a channel besides the session's own state:
/// who waits on it, its callback, its user handles, and how its end reads to
/// the user (the session forgets a fully closed channel; the user may still
/// ask). No lifecycle state: whether the channel is closed, may send or has
/// ended is the session's (`execnet_core::lifecycle`), and received items
/// and their credit stay in the session (`ChannelMut::recv`).
#[derive(Default)]
struct ChanState {
    end: Option<End>,
    error_reported: bool,
    callback: Option<Callback>,
    has_callback: bool,
    callback_busy: bool,
    endmarker: Option<Value>,
    endmarker_done: bool,
    event: Arc<Event>,
    handles: u32,
    attached_once: bool,
}

/// How a channel ended, translated for the user.
#[derive(Clone)]
enum End {
    Closed,
    Remote(String),
    Failed(Error),
}

impl ChanState {
    /// How the channel's end reads for a waiter, once it ended: `Ok(())`
    /// for a clean end, `Err` for a failure or a remote error. A remote
    /// error is reported once; after that the channel reads as cleanly
    /// ended (execnet's `_getremoteerror` semantics).
    fn end_result(&mut self) -> Option<Result<()>> {
        match self.end.as_ref()? {
            End::Closed => Some(Ok(())),
            End::Remote(_) if self.error_reported => Some(Ok(())),
            End::Remote(text) => {
                let text = text.clone();
                self.error_reported = true;
                Some(Err(Error::Remote(RemoteError::new(text))))
            }
            End::Failed(e) => Some(Err(e.clone())),
        }
    }
}

/// Work that calls user code, collected under the lock and done after it.
enum Work {
    Output(u8, Vec<u8>),
    Callbacks(u32),
}

impl Driver {
    /// Starts the session over `transport` with its reader and flusher
    /// threads. The host HELLO is written at once.
    pub(crate) fn start(
        transport: Transport,
        config: Config,
        options: Value,
        output: Arc<Mutex<OutputSink>>,
        span: tracing::Span,
        label: String,
    ) -> Result<Arc<Driver>> {
        let Transport {
            reader,
            writer,
            control,
            description,
        } = transport;
        let session = Session::new_host(config, options);
        let lead_with_deadline = control
            .as_deref()
            .is_some_and(|c| c.wait_readable(Duration::ZERO).is_some());
        let wake = control
            .as_deref()
            .and_then(PeerControl::readable_fd)
            .and_then(|_| Wake::new());
        let driver = Arc::new(Driver {
            state: Mutex::new(State {
                session,
                channels: HashMap::new(),
                outbuf: Vec::new(),
                spare: Vec::new(),
                writing: false,
                write_failed: false,
                flush_wanted: false,
                shutdown: false,
                ready: None,
                status_replies: HashMap::new(),
                ended: None,
                death: None,
                reader_done: false,
                terminate_started: false,
                finished: None,
                // The reader thread starts with the token.
                reading: true,
                token_takes: 1,
                reader_parked: false,
                reader_has_token: true,
                woken: false,
                candidates: 0,
                waiters: 0,
                callbacks: 0,
            }),
            source: Mutex::new(ReadSide {
                reader: Some(reader),
                buf: vec![0u8; READ_CHUNK],
                last_full: false,
            }),
            read_cv: Condvar::new(),
            token_event: Event::new(),
            flush_cv: Condvar::new(),
            gw_event: Event::new(),
            writer: Mutex::new(writer),
            control,
            lead_with_deadline,
            wake,
            output,
            threads: Mutex::new(Vec::new()),
            reader_id: OnceLock::new(),
            callback_context: OnceLock::new(),
            span,
            description,
            label,
        });
        let r = driver.clone();
        let reader_thread = std::thread::Builder::new()
            .name("execnet-reader".into())
            .spawn(move || r.reader_loop());
        let reader_thread = match reader_thread {
            Ok(t) => t,
            Err(e) => {
                driver.kill_and_reap();
                return Err(e.into());
            }
        };
        let _ = driver.reader_id.set(reader_thread.thread().id());
        lock(&driver.threads).push(reader_thread);
        let f = driver.clone();
        match std::thread::Builder::new()
            .name("execnet-flusher".into())
            .spawn(move || f.flusher_loop())
        {
            Ok(t) => lock(&driver.threads).push(t),
            Err(e) => {
                driver.kill_and_reap();
                return Err(e.into());
            }
        }
        driver.flush(true);
        Ok(driver)
    }

    /// Sets the wrapper run around every callback invocation.
    pub(crate) fn set_callback_context(&self, f: CallbackContext) {
        let _ = self.callback_context.set(f);
    }

    /// Whether the caller is this gateway's reader thread or holds its read
    /// token (in a callback).
    pub(crate) fn on_reader_thread(&self) -> bool {
        self.reader_id.get() == Some(&std::thread::current().id())
            || LEADING.with(|l| l.get()) == self as *const Driver as usize
    }

    pub(crate) fn control(&self) -> Option<&dyn PeerControl> {
        self.control.as_deref()
    }

    fn session_gone(st: &State) -> Error {
        match (&st.ended, &st.death) {
            (Some(TerminateReason::ConnectionLost(_)), Some(d)) => d.clone(),
            (Some(TerminateReason::ConnectionLost(e)), None) => Error::Protocol(e.clone()),
            _ => Error::GatewayTerminated,
        }
    }

    fn local_error(st: &State, e: LocalError) -> Error {
        match e {
            LocalError::Closed => Error::ChannelClosed,
            LocalError::Terminated => Self::session_gone(st),
            e => Error::Local(e),
        }
    }
}

/// What a connection loss means for the user: the worker's death if the
/// reader found a process exit, else the protocol error.
fn connection_error(st: &State, e: ProtocolError) -> Error {
    match e {
        ProtocolError::ConnectionLost | ProtocolError::Truncated { .. } => match &st.death {
            Some(d) => d.clone(),
            None => Error::ConnectionLost(e.to_string()),
        },
        other => Error::Protocol(other),
    }
}
