//! The driver: runs one [`Session`] over one [`Transport`] with threads.
//!
//! Shared state sits under one `Mutex` ([`State`]): the session, a queue of
//! received items per channel, callbacks, status replies, and the bytes
//! waiting to be written. Three kinds of threads touch it:
//!
//! - the **reader** thread (one per gateway) blocks on the transport, feeds
//!   `handle_input`, drains events into the channel queues and wakes waiters
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
//! set, and the reader thread sleeps in `read` when the gateway is idle.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener};
use execnet_core::{
    ChannelEnd, ChannelId, Config, Event as SessionEvent, ExecRequest, LocalError, ProtocolError,
    Session, Status, TerminateReason, Value, WorkerInfo,
};

use crate::error::{Error, RemoteError, Result};
use crate::transport::{PeerControl, Transport};

/// Bytes taken from the session per write.
const WRITE_CHUNK: usize = 1 << 20;
/// Bytes read from the transport at once.
const READ_CHUNK: usize = 256 << 10;
/// How long the reader waits for a process that closed its stdout to exit.
const REAP_ON_EOF: Duration = Duration::from_secs(1);
/// How long the reader thread leaves a free read token alone while nobody
/// waits (so that the next blocking receive can lead).
const READER_GRACE: Duration = Duration::from_millis(2);

thread_local! {
    /// Set by the blocking API around a receive: this thread may read the
    /// transport itself while it waits.
    static LEAD_OK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The driver whose read token this thread holds (its address), or 0.
    static LEADING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` (a `block_on` of a receive) with leader/follower reading
/// allowed on this thread. Only for threads that may block.
pub(crate) fn leading_allowed<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEAD_OK.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(LEAD_OK.with(|c| c.replace(true)));
    f()
}

/// A callback on a channel's items.
pub(crate) type Callback = Box<dyn FnMut(Value) + Send>;
/// Runs a closure inside a context (the gateway set for channel conversion).
pub(crate) type CallbackContext = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;
/// A sink for forwarded remote output: `(fd, bytes)`.
pub(crate) type OutputCallback = Box<dyn FnMut(u8, &[u8]) + Send>;

/// Where forwarded remote output goes.
pub(crate) enum OutputSink {
    /// Our stderr.
    Stderr,
    /// A user callback.
    Callback(OutputCallback),
}

/// One gateway's shared state and threads.
pub(crate) struct Driver {
    state: Mutex<State>,
    /// The transport reader and its buffer: only the read token's holder
    /// locks it.
    source: Mutex<ReadSide>,
    /// Wakes the reader thread (token free and needed, shutdown).
    read_cv: Condvar,
    /// Wakes the candidates when the read token is given back.
    token_event: Event,
    /// Wakes the flusher.
    flush_cv: Condvar,
    /// Gateway-level changes: ready, status reply, terminated, reader done.
    gw_event: Event,
    writer: Mutex<Box<dyn Write + Send>>,
    control: Option<Box<dyn PeerControl>>,
    output: Mutex<OutputSink>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The reader thread (termination from a callback must not wait for it).
    reader_id: OnceLock<std::thread::ThreadId>,
    /// Called around callbacks so that `Channel`s can be deserialized there.
    callback_context: OnceLock<CallbackContext>,
    pub(crate) span: tracing::Span,
    pub(crate) description: String,
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
    /// Bytes produced by the session, not yet written.
    outbuf: Vec<u8>,
    /// A cleared buffer to swap in for `outbuf` (saves allocations).
    spare: Vec<u8>,
    /// Someone holds the writing token.
    writing: bool,
    /// A write failed: the stream is dead, later bytes are dropped.
    write_failed: bool,
    /// The flusher should run.
    flush_wanted: bool,
    /// The flusher should exit once it has nothing to do.
    shutdown: bool,
    ready: Option<WorkerInfo>,
    status_replies: HashMap<u64, Status>,
    /// Someone holds the read token.
    reading: bool,
    /// Blocking receivers waiting to take the read token.
    candidates: usize,
    /// Other waiters (they need someone to read).
    waiters: usize,
    /// Channels with a live callback.
    callbacks: usize,
    /// Why the session ended, once it has.
    ended: Option<TerminateReason>,
    /// What a connection loss means, once the reader found out (the
    /// worker's exit status and stderr).
    death: Option<Error>,
    reader_done: bool,
    terminate_started: bool,
    /// `finish_terminate` ran; its result.
    finished: Option<bool>,
}

struct ReadSide {
    reader: Option<Box<dyn Read + Send>>,
    buf: Vec<u8>,
}

#[derive(Default)]
struct ChanState {
    queue: VecDeque<(Value, u32)>,
    end: Option<End>,
    /// A remote error is reported once; then the channel reads as ended.
    error_reported: bool,
    callback: Option<Callback>,
    has_callback: bool,
    callback_busy: bool,
    endmarker: Option<Value>,
    endmarker_done: bool,
    event: Arc<Event>,
    /// Live user handles.
    handles: u32,
    /// A handle existed once (so the state may be forgotten when unused).
    attached_once: bool,
    locally_closed: bool,
}

/// How a channel ended, translated for the user.
#[derive(Clone)]
enum End {
    Closed,
    Remote(String),
    Failed(Error),
}

enum Work {
    Output(u8, Vec<u8>),
    Callbacks(u32),
}

/// The read token, held by this thread (see the module comment). Dropping
/// it (a panic in a callback) gives it back.
struct ReadToken<'a> {
    driver: &'a Driver,
    /// `LEADING` before this thread took the token.
    prev: usize,
    armed: bool,
}

impl<'a> ReadToken<'a> {
    /// Takes the free token (under the lock).
    fn take(driver: &'a Driver, st: &mut State) -> ReadToken<'a> {
        debug_assert!(!st.reading);
        st.reading = true;
        Self::held(driver)
    }

    /// The token this thread already holds (`reading` is set).
    fn held(driver: &'a Driver) -> ReadToken<'a> {
        let prev = LEADING.with(|l| l.replace(driver as *const Driver as usize));
        ReadToken {
            driver,
            prev,
            armed: true,
        }
    }

    /// Gives the token back (under the lock).
    fn release(mut self, st: &mut State) {
        self.armed = false;
        LEADING.with(|l| l.set(self.prev));
        self.driver.token_released(st);
    }
}

impl Drop for ReadToken<'_> {
    fn drop(&mut self) {
        if self.armed {
            LEADING.with(|l| l.set(self.prev));
            let mut st = lock(&self.driver.state);
            self.driver.token_released(&mut st);
        }
    }
}

/// A registered waiter or candidate (see the module comment); unregisters
/// when dropped (a cancelled async wait).
struct Registration<'a> {
    driver: &'a Driver,
    /// `Some(true)`: a candidate; `Some(false)`: a waiter.
    kind: Option<bool>,
}

impl Registration<'_> {
    fn register(&mut self, st: &mut State, candidate: bool) {
        debug_assert!(self.kind.is_none());
        self.kind = Some(candidate);
        if candidate {
            st.candidates += 1;
        } else {
            st.waiters += 1;
            self.driver.input_wanted(st);
        }
    }

    fn unregister(&mut self, st: &mut State) {
        match self.kind.take() {
            None => {}
            Some(true) => {
                st.candidates -= 1;
                if st.candidates == 0 && !st.reading && Driver::input_needed(st) {
                    self.driver.read_cv.notify_one();
                }
            }
            Some(false) => st.waiters -= 1,
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.kind.is_some() {
            let mut st = lock(&self.driver.state);
            self.unregister(&mut st);
        }
    }
}

/// Waits for `listener` until `deadline`: `true` when it fired, `false`
/// when the deadline passed first (the caller then re-checks its condition
/// once more before it reports a timeout).
pub(crate) async fn listen_until(listener: EventListener, deadline: Instant) -> bool {
    futures_lite::future::or(
        async {
            listener.await;
            true
        },
        async {
            async_io::Timer::at(deadline).await;
            false
        },
    )
    .await
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent between statements
    // that can panic, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Driver {
    /// Starts the session over `transport` with its reader and flusher
    /// threads. The host HELLO is written at once.
    pub(crate) fn start(
        transport: Transport,
        config: Config,
        options: Value,
        output: OutputSink,
        span: tracing::Span,
    ) -> Result<Arc<Driver>> {
        let Transport {
            reader,
            writer,
            control,
            description,
        } = transport;
        let session = Session::new_host(config, options);
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
                candidates: 0,
                waiters: 0,
                callbacks: 0,
            }),
            source: Mutex::new(ReadSide {
                reader: Some(reader),
                buf: vec![0u8; READ_CHUNK],
            }),
            read_cv: Condvar::new(),
            token_event: Event::new(),
            flush_cv: Condvar::new(),
            gw_event: Event::new(),
            writer: Mutex::new(writer),
            control,
            output: Mutex::new(output),
            threads: Mutex::new(Vec::new()),
            reader_id: OnceLock::new(),
            callback_context: OnceLock::new(),
            span,
            description,
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

    /// Finishes termination on a helper thread (for callers on the reader
    /// thread, which must return to read the worker's answer).
    pub(crate) fn finish_terminate_detached(self: &Arc<Self>, deadline: Instant) {
        let d = self.clone();
        let spawned = std::thread::Builder::new()
            .name("execnet-terminate".into())
            .spawn(move || {
                futures_lite::future::block_on(d.finish_terminate(deadline));
            });
        if spawned.is_err() {
            // No thread to be had: kill now, the reader reaps at EOF.
            if let Some(c) = &self.control {
                c.kill();
            }
        }
    }

    pub(crate) fn control(&self) -> Option<&dyn PeerControl> {
        self.control.as_deref()
    }

    // ---------------------------------------------------------------- reader

    fn reader_loop(self: Arc<Self>) {
        let _g = self.span.clone().entered();
        // Starts with the token (set in `start`).
        let mut token = Some(ReadToken::held(&self));
        loop {
            if let Some(t) = token.take() {
                // Read until the end, or until a candidate wants the token.
                loop {
                    let more = self.read_once();
                    let mut st = lock(&self.state);
                    if !more || st.candidates > 0 {
                        t.release(&mut st);
                        break;
                    }
                }
            }
            let mut st = lock(&self.state);
            loop {
                if st.reader_done {
                    drop(st);
                    tracing::debug!("reader finished");
                    return;
                }
                if !st.reading && st.candidates == 0 {
                    if Self::input_needed(&st) {
                        break;
                    }
                    let (g, timeout) = self
                        .read_cv
                        .wait_timeout(st, READER_GRACE)
                        .unwrap_or_else(|e| e.into_inner());
                    st = g;
                    if timeout.timed_out() && !st.reading && st.candidates == 0 && !st.reader_done {
                        break;
                    }
                    continue;
                }
                st = self
                    .read_cv
                    .wait_timeout(st, READER_GRACE)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            token = Some(ReadToken::take(&self, &mut st));
        }
    }

    /// Whether input is awaited by someone who will not read it himself.
    fn input_needed(st: &State) -> bool {
        st.waiters > 0 || st.callbacks > 0 || st.shutdown
    }

    /// The read token is free again (under the lock): wake who may take it.
    fn token_released(&self, st: &mut State) {
        st.reading = false;
        if st.candidates > 0 {
            self.token_event.notify(usize::MAX);
        } else if Self::input_needed(st) || st.reader_done {
            self.read_cv.notify_one();
        }
    }

    /// A waiter or callback appeared (under the lock): make sure the reader
    /// thread reads if nobody else does.
    fn input_wanted(&self, st: &State) {
        if !st.reading && st.candidates == 0 {
            self.read_cv.notify_one();
        }
    }

    /// With the read token: one read from the transport, fed to the session
    /// (callbacks and output run here too). `false` at the end of the
    /// stream (then `reader_done` is set).
    fn read_once(&self) -> bool {
        let mut side = lock(&self.source);
        let ReadSide { reader, buf } = &mut *side;
        let Some(r) = reader.as_mut() else {
            return false;
        };
        let n = loop {
            match r.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "transport read failed; treating as end of stream");
                    break 0;
                }
            }
        };
        if n > 0 {
            self.feed(&buf[..n]);
            return true;
        }
        self.handle_eof();
        side.reader = None;
        drop(side);
        let mut st = lock(&self.state);
        st.reader_done = true;
        self.gw_event.notify(usize::MAX);
        self.token_event.notify(usize::MAX);
        self.read_cv.notify_all();
        false
    }

    /// Feeds received bytes to the session and dispatches what follows.
    fn feed(&self, bytes: &[u8]) {
        let mut work = Vec::new();
        let violated = {
            let mut st = lock(&self.state);
            let r = st.session.handle_input(bytes);
            self.dispatch(&mut st, &mut work);
            self.pump_for_flusher(&mut st);
            // Transmitting can free room (WindowOpened): drain events after
            // poll_transmit, as the core's drain order says.
            self.dispatch(&mut st, &mut work);
            r.err()
        };
        if let Some(e) = violated {
            tracing::warn!(error = %e, "protocol violation; killing the worker");
            if let Some(c) = &self.control {
                c.kill();
            }
        }
        self.do_work(work);
    }

    fn handle_eof(&self) {
        // Reap first, so that every channel learns how the worker ended.
        let death = match &self.control {
            Some(c) => match c.wait(REAP_ON_EOF) {
                Some(status) => Error::WorkerDied {
                    status,
                    stderr_tail: c.stderr_tail(Duration::from_millis(300)),
                },
                None => {
                    // The stream ended under a live worker: the session
                    // cannot go on, so the worker goes too.
                    c.kill();
                    let status = c.wait(Duration::from_secs(1));
                    tracing::debug!(?status, "stream ended while the worker ran; killed it");
                    Error::ConnectionLost(format!(
                        "the stream ended while the worker (pid {}) was still running; it was killed",
                        c.pid().map_or_else(|| "?".to_string(), |p| p.to_string())
                    ))
                }
            },
            None => Error::ConnectionLost("end of stream".into()),
        };
        let mut work = Vec::new();
        {
            let mut st = lock(&self.state);
            st.death = Some(death);
            st.session.handle_eof();
            self.dispatch(&mut st, &mut work);
            // Nothing can be written any more.
            st.write_failed = true;
            st.outbuf.clear();
        }
        self.do_work(work);
    }

    /// Drains session events into the channel states. Runs under the lock;
    /// anything that calls user code is returned as `work`.
    fn dispatch(&self, st: &mut State, work: &mut Vec<Work>) {
        while let Some(ev) = st.session.poll_event() {
            match ev {
                SessionEvent::Ready(info) => {
                    tracing::debug!(pid = info.pid, executable = %info.executable, "worker ready");
                    st.ready = Some(info);
                    self.gw_event.notify(usize::MAX);
                }
                SessionEvent::Data {
                    channel,
                    value,
                    credit,
                } => {
                    let c = st.channels.entry(channel.0).or_default();
                    c.queue.push_back((value, credit));
                    if c.has_callback {
                        work.push(Work::Callbacks(channel.0));
                    } else {
                        c.event.notify(usize::MAX);
                    }
                }
                SessionEvent::ChannelEnded { channel, how } => {
                    let end = match how {
                        ChannelEnd::Closed | ChannelEnd::ClosedLocally | ChannelEnd::Terminated => {
                            End::Closed
                        }
                        ChannelEnd::RemoteError(text) => End::Remote(text),
                        ChannelEnd::ConnectionLost(e) => End::Failed(connection_error(st, e)),
                        _ => End::Closed,
                    };
                    tracing::trace!(channel = channel.0, "channel ended");
                    let c = st.channels.entry(channel.0).or_default();
                    c.end = Some(end);
                    c.event.notify(usize::MAX);
                    if c.has_callback {
                        work.push(Work::Callbacks(channel.0));
                    } else if c.attached_once && c.handles == 0 && c.queue.is_empty() {
                        // Nobody can ask about it any more.
                        st.channels.remove(&channel.0);
                    }
                }
                SessionEvent::WindowOpened { channel } => {
                    if let Some(c) = st.channels.get(&channel.0) {
                        c.event.notify(usize::MAX);
                    }
                }
                SessionEvent::StatusReply { id, status } => {
                    st.status_replies.insert(id, status);
                    self.gw_event.notify(usize::MAX);
                }
                SessionEvent::Output { fd, bytes } => work.push(Work::Output(fd, bytes)),
                SessionEvent::Terminated { reason } => {
                    tracing::debug!(?reason, "session terminated");
                    st.ended = Some(reason);
                    self.gw_event.notify(usize::MAX);
                    for c in st.channels.values() {
                        c.event.notify(usize::MAX);
                    }
                }
                // Worker-role events cannot reach a host session.
                _ => {}
            }
        }
    }

    fn do_work(&self, work: Vec<Work>) {
        for w in work {
            match w {
                Work::Output(fd, bytes) => {
                    let mut sink = lock(&self.output);
                    match &mut *sink {
                        OutputSink::Stderr => {
                            let _ = std::io::stderr().write_all(&bytes);
                        }
                        OutputSink::Callback(f) => f(fd, &bytes),
                    }
                }
                Work::Callbacks(id) => self.run_callbacks(id, false),
            }
        }
    }

    // ---------------------------------------------------------------- writing

    /// Writes what the session has to send. `inline`: the calling thread
    /// writes if nobody else is writing; otherwise the flusher is asked to.
    ///
    /// Also dispatches the events the command produced (a local close ends
    /// the channel's receive side at once, for example), so that a waiter
    /// never depends on the next input to see them.
    pub(crate) fn flush(&self, inline: bool) {
        let mut work = Vec::new();
        {
            let mut st = lock(&self.state);
            self.dispatch(&mut st, &mut work);
            if st.writing {
                // The token holder re-checks the session before letting go.
            } else if !inline {
                st.flush_wanted = true;
                self.flush_cv.notify_one();
            } else {
                st.writing = true;
                self.write_loop(st);
            }
        }
        self.do_work(work);
    }

    /// Holds the writing token: writes until the session has nothing left.
    fn write_loop<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        let mut work = Vec::new();
        loop {
            if st.outbuf.len() < WRITE_CHUNK {
                let State {
                    session, outbuf, ..
                } = &mut *st;
                while outbuf.len() < WRITE_CHUNK {
                    if session.poll_transmit(outbuf, WRITE_CHUNK - outbuf.len()) == 0 {
                        break;
                    }
                }
                // Draining the send queues frees room: a sender waiting for
                // WindowOpened must hear of it now, not at the next input
                // (which may never come while the peer only consumes).
                self.dispatch(&mut st, &mut work);
            }
            if st.outbuf.is_empty() {
                st.writing = false;
                drop(st);
                // Callbacks (endmarkers of a session answered TERMINATE)
                // run after the writing token is given back, as in flush().
                self.do_work(work);
                return;
            }
            let spare = std::mem::take(&mut st.spare);
            let mut buf = std::mem::replace(&mut st.outbuf, spare);
            let failed = st.write_failed;
            drop(st);
            let mut ok = true;
            if !failed {
                let mut w = lock(&self.writer);
                if let Err(e) = w.write_all(&buf).and_then(|()| w.flush()) {
                    tracing::debug!(error = %e, "transport write failed");
                    ok = false;
                }
            }
            buf.clear();
            st = lock(&self.state);
            if !ok {
                st.write_failed = true;
            }
            if buf.capacity() <= 4 * WRITE_CHUNK {
                st.spare = buf;
            }
            if st.write_failed {
                st.outbuf.clear();
            }
        }
    }

    /// Reader side: if nobody writes, move pending bytes to `outbuf` and wake
    /// the flusher.
    fn pump_for_flusher(&self, st: &mut State) {
        if st.writing {
            return;
        }
        if st.outbuf.is_empty() {
            let State {
                session, outbuf, ..
            } = st;
            let _ = session.poll_transmit(outbuf, WRITE_CHUNK);
        }
        if !st.outbuf.is_empty() {
            st.flush_wanted = true;
            self.flush_cv.notify_one();
        }
    }

    fn flusher_loop(self: Arc<Self>) {
        let _g = self.span.clone().entered();
        let mut st = lock(&self.state);
        loop {
            while !st.flush_wanted && !st.shutdown {
                st = self.flush_cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if !st.flush_wanted && st.shutdown {
                break;
            }
            st.flush_wanted = false;
            if st.writing {
                continue;
            }
            st.writing = true;
            self.write_loop(st);
            st = lock(&self.state);
        }
    }

    // ---------------------------------------------------------------- waiting

    /// Waits until `check` returns `Some`, re-checking after every
    /// notification of `event`. `Err(Timeout)` after `deadline`.
    async fn wait_for<R>(
        &self,
        event: impl Fn(&State) -> EventListener,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut State) -> Option<R>,
    ) -> Result<R> {
        // Leader/follower: only a blocking receive without a deadline (a
        // read cannot be cut short).
        let may_lead = deadline.is_none() && LEAD_OK.with(|c| c.get());
        let mut reg = Registration {
            driver: self,
            kind: None,
        };
        loop {
            let (listener, token_listener) = {
                let mut st = lock(&self.state);
                reg.unregister(&mut st);
                if let Some(r) = check(&mut st) {
                    return Ok(r);
                }
                if !st.reader_done && self.on_reader_thread() {
                    // A callback or output handler: this thread holds the
                    // read token (or is the reader thread), so nobody would
                    // read what this wait needs.
                    return Err(Error::WouldDeadlock(
                        "waiting for the gateway's input inside a channel callback or output \
                         handler, which run on the thread that reads that input"
                            .into(),
                    ));
                }
                if may_lead && !st.reading && !st.reader_done {
                    // Lead: read until our own item is there.
                    let token = ReadToken::take(self, &mut st);
                    drop(st);
                    loop {
                        let more = self.read_once();
                        let mut st = lock(&self.state);
                        if let Some(r) = check(&mut st) {
                            token.release(&mut st);
                            return Ok(r);
                        }
                        if !more {
                            token.release(&mut st);
                            break;
                        }
                    }
                    continue;
                }
                let listener = event(&st);
                let token_listener =
                    (may_lead && !st.reader_done).then(|| self.token_event.listen());
                reg.register(&mut st, token_listener.is_some());
                (listener, token_listener)
            };
            match (deadline, token_listener) {
                (_, Some(t)) => futures_lite::future::or(listener, t).await,
                (None, None) => listener.await,
                (Some(d), None) => {
                    if !listen_until(listener, d).await {
                        let mut st = lock(&self.state);
                        reg.unregister(&mut st);
                        return check(&mut st).ok_or(Error::Timeout);
                    }
                }
            }
        }
    }

    fn chan_listener(st: &State, id: u32) -> EventListener {
        match st.channels.get(&id) {
            Some(c) => c.event.listen(),
            // Not tracked (cannot happen for a channel with a handle):
            // nothing will notify, so listen to a fresh event; the caller's
            // deadline or a re-check ends the wait.
            None => Event::new().listen(),
        }
    }

    /// Waits for the worker's HELLO.
    pub(crate) async fn wait_ready(&self, deadline: Instant) -> Result<WorkerInfo> {
        let r = self
            .wait_for(
                |_| self.gw_event.listen(),
                Some(deadline),
                |st| {
                    if let Some(info) = &st.ready {
                        return Some(Ok(info.clone()));
                    }
                    if st.ended.is_some() || st.reader_done {
                        return Some(Err(()));
                    }
                    None
                },
            )
            .await;
        match r {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(())) => {
                // Let the reader finish reaping, so the status is known.
                let _ = self
                    .wait_for(
                        |_| self.gw_event.listen(),
                        Some(Instant::now() + REAP_ON_EOF + Duration::from_millis(500)),
                        |st| st.reader_done.then_some(()),
                    )
                    .await;
                let st = lock(&self.state);
                let reason = match (&st.death, &st.ended, st.session.error()) {
                    (_, _, Some(e)) if *e != ProtocolError::ConnectionLost => {
                        format!("protocol violation before HELLO: {e}")
                    }
                    (Some(Error::WorkerDied { status, .. }), _, _) => {
                        format!("worker ended before HELLO ({status})")
                    }
                    (_, Some(r), _) => format!("session ended before HELLO: {r:?}"),
                    _ => "worker ended before HELLO".into(),
                };
                drop(st);
                Err(Error::BootstrapFailed {
                    reason,
                    stderr_tail: self.stderr_tail(),
                })
            }
            Err(_) => Err(Error::BootstrapFailed {
                reason: "no HELLO from the worker in time".into(),
                stderr_tail: self.stderr_tail(),
            }),
        }
    }

    fn stderr_tail(&self) -> String {
        self.control
            .as_ref()
            .map(|c| c.stderr_tail(Duration::from_millis(200)))
            .unwrap_or_default()
    }

    // ---------------------------------------------------------------- commands

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

    /// Starts an execution; the returned channel has one handle attached.
    pub(crate) fn exec(&self, request: ExecRequest) -> Result<u32> {
        let id = {
            let mut st = lock(&self.state);
            let id = st
                .session
                .exec(request)
                .map_err(|e| Self::local_error(&st, e))?;
            let c = st.channels.entry(id.0).or_default();
            c.handles += 1;
            c.attached_once = true;
            id.0
        };
        self.flush(true);
        Ok(id)
    }

    /// Opens a channel; the returned channel has one handle attached.
    pub(crate) fn open_channel(&self) -> Result<u32> {
        let mut st = lock(&self.state);
        let id = st
            .session
            .open_channel()
            .map_err(|e| Self::local_error(&st, e))?;
        let c = st.channels.entry(id.0).or_default();
        c.handles += 1;
        c.attached_once = true;
        Ok(id.0)
    }

    /// A new user handle on `id` (from a received channel reference).
    pub(crate) fn attach_handle(&self, id: u32) {
        let mut st = lock(&self.state);
        let known = st.channels.contains_key(&id);
        let forgotten = !known && st.session.channel(ChannelId(id)).is_none();
        let c = st.channels.entry(id).or_default();
        if forgotten {
            // Fully closed and forgotten by both sides: it reads as ended.
            c.end = Some(End::Closed);
        }
        c.handles += 1;
        c.attached_once = true;
    }

    /// The last... one user handle on `id` is gone. When no handle is left,
    /// an open channel is closed (half-closed when a callback consumes it),
    /// as execnet does when a `Channel` is garbage collected.
    pub(crate) fn detach_handle(&self, id: u32) {
        let mut st = lock(&self.state);
        let Some(c) = st.channels.get_mut(&id) else {
            return;
        };
        c.handles = c.handles.saturating_sub(1);
        if c.handles > 0 {
            return;
        }
        let (has_callback, ended, closed) = (c.has_callback, c.end.is_some(), c.locally_closed);
        if !closed && !ended {
            if let Some(mut ch) = st.session.channel(ChannelId(id)) {
                let _ = if has_callback {
                    ch.half_close()
                } else {
                    ch.close()
                };
            }
        }
        Self::maybe_forget(&mut st, id);
        drop(st);
        self.flush(false);
    }

    fn maybe_forget(st: &mut State, id: u32) {
        if let Some(c) = st.channels.get(&id) {
            let callback_pending = c.has_callback && !c.endmarker_done;
            if c.handles == 0
                && c.attached_once
                && c.end.is_some()
                && !callback_pending
                && !c.callback_busy
            {
                st.channels.remove(&id);
            }
        }
    }

    /// Sends one encoded item, waiting while the channel's window is full.
    pub(crate) async fn send_encoded(
        &self,
        id: u32,
        item: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let mut item = Some(item);
        self.wait_for(
            |st| Self::chan_listener(st, id),
            deadline,
            |st| {
                if st.ended.is_some() {
                    return Some(Err(Self::session_gone(st)));
                }
                let closed = st
                    .channels
                    .get(&id)
                    .is_some_and(|c| c.locally_closed || c.end.is_some());
                let Some(mut ch) = st.session.channel(ChannelId(id)) else {
                    return Some(Err(Error::ChannelClosed));
                };
                // Asks and, when full, registers for WindowOpened, which
                // wakes this waiter through the channel's event.
                if !ch.poll_send_ready() {
                    if closed || ch.is_ended() {
                        return Some(Err(Error::ChannelClosed));
                    }
                    return None;
                }
                let item = item.take()?;
                Some(ch.send_encoded(item).map_err(|e| Self::local_error(st, e)))
            },
        )
        .await??;
        self.flush(true);
        Ok(())
    }

    /// Takes the next item (or the end) of a channel.
    pub(crate) async fn receive(&self, id: u32, deadline: Option<Instant>) -> Result<Value> {
        let (value, credit_returned) = self
            .wait_for(
                |st| Self::chan_listener(st, id),
                deadline,
                |st| {
                    let c = st.channels.entry(id).or_default();
                    if c.has_callback {
                        return Some(Err(Error::CallbackSet));
                    }
                    if let Some((value, credit)) = c.queue.pop_front() {
                        // Return the credit in the same critical section.
                        let known = match st.session.channel(ChannelId(id)) {
                            Some(mut ch) => {
                                ch.consumed(credit);
                                true
                            }
                            None => false,
                        };
                        return Some(Ok((value, known)));
                    }
                    match &c.end {
                        None => None,
                        Some(End::Closed) => Some(Err(Error::EndOfChannel)),
                        Some(End::Remote(text)) => {
                            if c.error_reported {
                                Some(Err(Error::EndOfChannel))
                            } else {
                                c.error_reported = true;
                                Some(Err(Error::Remote(RemoteError::new(text.clone()))))
                            }
                        }
                        Some(End::Failed(e)) => Some(Err(e.clone())),
                    }
                },
            )
            .await??;
        if credit_returned {
            self.flush(true);
        }
        Ok(value)
    }

    /// Waits until the channel ended; reports its remote error (once).
    pub(crate) async fn waitclose(&self, id: u32, deadline: Option<Instant>) -> Result<()> {
        self.wait_for(
            |st| Self::chan_listener(st, id),
            deadline,
            |st| {
                let c = st.channels.entry(id).or_default();
                // With a callback, the channel is closed for a waiter once
                // every item and the endmarker went through it, as in
                // execnet (its receiver runs callbacks before the close).
                if c.has_callback && (!c.endmarker_done || c.callback_busy) {
                    return None;
                }
                match &c.end {
                    None => None,
                    Some(End::Closed) => Some(Ok(())),
                    Some(End::Remote(text)) => {
                        if c.error_reported {
                            Some(Ok(()))
                        } else {
                            c.error_reported = true;
                            Some(Err(Error::Remote(RemoteError::new(text.clone()))))
                        }
                    }
                    Some(End::Failed(e)) => Some(Err(e.clone())),
                }
            },
        )
        .await?
    }

    /// Closes the channel (with an error text, if given). Idempotent.
    pub(crate) fn close(&self, id: u32, error: Option<&str>) -> Result<()> {
        {
            let mut st = lock(&self.state);
            let c = st.channels.entry(id).or_default();
            if c.locally_closed {
                return Ok(());
            }
            c.locally_closed = true;
            if let Some(mut ch) = st.session.channel(ChannelId(id)) {
                let r = match error {
                    Some(e) => ch.close_with_error(e),
                    None => ch.close(),
                };
                match r {
                    Ok(()) | Err(LocalError::Closed) | Err(LocalError::Terminated) => {}
                    Err(e) => return Err(Error::Local(e)),
                }
            }
        }
        self.flush(true);
        Ok(())
    }

    /// Whether the channel is closed locally or ended remotely.
    pub(crate) fn is_closed(&self, id: u32) -> bool {
        let st = lock(&self.state);
        st.channels
            .get(&id)
            .map_or(true, |c| c.locally_closed || c.end.is_some())
    }

    /// Installs a callback: queued items first, then every new item, then
    /// the endmarker once when the channel ends.
    pub(crate) fn set_callback(
        &self,
        id: u32,
        callback: Callback,
        endmarker: Option<Value>,
    ) -> Result<()> {
        {
            let mut st = lock(&self.state);
            let c = st.channels.entry(id).or_default();
            if c.has_callback {
                return Err(Error::CallbackSet);
            }
            c.has_callback = true;
            c.callback = Some(callback);
            c.endmarker = endmarker;
            st.callbacks += 1;
            self.input_wanted(&st);
        }
        self.run_callbacks(id, true);
        Ok(())
    }

    /// Delivers queued items (and the endmarker) to the channel's callback,
    /// unless another thread is already doing so (it will see the new items).
    fn run_callbacks(&self, id: u32, inline_flush: bool) {
        let mut st = lock(&self.state);
        let Some(c) = st.channels.get_mut(&id) else {
            return;
        };
        if c.callback_busy {
            return;
        }
        let Some(mut cb) = c.callback.take() else {
            return;
        };
        c.callback_busy = true;
        let mut consumed_any = false;
        while let Some(c) = st.channels.get_mut(&id) {
            let (value, credit) = if let Some((v, credit)) = c.queue.pop_front() {
                (v, Some(credit))
            } else if c.end.is_some() && !c.endmarker_done {
                c.endmarker_done = true;
                match c.endmarker.take() {
                    Some(m) => (m, None),
                    None => continue,
                }
            } else {
                break;
            };
            drop(st);
            let panicked = self.call_callback(&mut cb, value);
            st = lock(&self.state);
            if let Some(credit) = credit {
                if let Some(mut ch) = st.session.channel(ChannelId(id)) {
                    ch.consumed(credit);
                    consumed_any = true;
                }
            }
            if panicked {
                tracing::error!(channel = id, "channel callback panicked; it is removed");
                if let Some(c) = st.channels.get_mut(&id) {
                    c.endmarker_done = true;
                    c.endmarker = None;
                }
                // Drain what is left so the window reopens.
                if let Some(c) = st.channels.get_mut(&id) {
                    let credits: Vec<u32> = c.queue.drain(..).map(|(_, cr)| cr).collect();
                    if let Some(mut ch) = st.session.channel(ChannelId(id)) {
                        for cr in credits {
                            ch.consumed(cr);
                        }
                    }
                }
                break;
            }
        }
        let done = if let Some(c) = st.channels.get_mut(&id) {
            c.callback_busy = false;
            // waitclose waits for the callbacks to have run.
            c.event.notify(usize::MAX);
            if c.endmarker_done {
                // The channel is over: drop the callback (it may hold
                // handles that keep the gateway alive).
                true
            } else {
                c.callback = Some(cb);
                false
            }
        } else {
            true
        };
        if done {
            // The callback is dropped here.
            st.callbacks = st.callbacks.saturating_sub(1);
            Self::maybe_forget(&mut st, id);
        }
        if consumed_any && !inline_flush {
            self.pump_for_flusher(&mut st);
        }
        drop(st);
        if consumed_any && inline_flush {
            self.flush(true);
        }
    }

    fn call_callback(&self, cb: &mut Callback, value: Value) -> bool {
        let mut value = Some(value);
        let mut run = || {
            if let Some(v) = value.take() {
                cb(v);
            }
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match self.callback_context.get() {
                Some(ctx) => ctx(&mut run),
                None => run(),
            }
        }));
        r.is_err()
    }

    /// Asks the worker for its status.
    pub(crate) async fn status(&self, deadline: Option<Instant>) -> Result<Status> {
        let rid = {
            let mut st = lock(&self.state);
            st.session
                .request_status()
                .map_err(|e| Self::local_error(&st, e))?
        };
        self.flush(true);
        self.wait_for(
            |_| self.gw_event.listen(),
            deadline,
            |st| {
                if let Some(s) = st.status_replies.remove(&rid) {
                    return Some(Ok(s));
                }
                if st.ended.is_some() {
                    return Some(Err(Self::session_gone(st)));
                }
                None
            },
        )
        .await?
    }

    /// Whether the session is over.
    pub(crate) fn is_terminated(&self) -> bool {
        lock(&self.state).ended.is_some()
    }

    /// Waits until the session is over or the reader finished, or
    /// `deadline` (a group lets via-gateways end before their masters).
    pub(crate) async fn wait_ended(&self, deadline: Instant) {
        let _ = self
            .wait_for(
                |_| self.gw_event.listen(),
                Some(deadline),
                |st| (st.ended.is_some() || st.reader_done).then_some(()),
            )
            .await;
    }

    // ------------------------------------------------------------ termination

    /// Sends TERMINATE (once). The session ends when the worker answers.
    pub(crate) fn begin_terminate(&self, grace: Duration) {
        {
            let mut st = lock(&self.state);
            if st.terminate_started || st.ended.is_some() {
                return;
            }
            st.terminate_started = true;
            st.session.terminate(None, Instant::now(), grace);
            let mut work = Vec::new();
            self.dispatch(&mut st, &mut work);
            drop(st);
            self.do_work(work);
        }
        tracing::debug!("terminate requested");
        self.flush(true);
    }

    /// Waits until `deadline` for the worker to end; then kills it. Always
    /// reaps and stops the threads. Returns whether the end was clean.
    pub(crate) async fn finish_terminate(&self, deadline: Instant) -> bool {
        if let Some(r) = lock(&self.state).finished {
            return r;
        }
        // From a callback the reader thread itself is here: it cannot see
        // the end of the stream, so the session's end has to do.
        let on_reader = self.on_reader_thread();
        let exited = self
            .wait_for(
                |_| self.gw_event.listen(),
                Some(deadline),
                |st| {
                    let over = st.ended.is_some() && (self.control.is_none() || on_reader);
                    (st.reader_done || over).then_some(())
                },
            )
            .await
            .is_ok();
        let clean = {
            let st = lock(&self.state);
            matches!(
                st.ended,
                Some(TerminateReason::Clean) | Some(TerminateReason::PeerInitiated(_))
            )
        };
        // Kill the group whatever happened: the worker itself is gone or
        // must go, and anything it started goes with it.
        if let Some(c) = &self.control {
            c.kill();
        }
        if !exited && !on_reader {
            tracing::debug!("worker did not exit in time; killed");
            let _ = self
                .wait_for(
                    |_| self.gw_event.listen(),
                    Some(Instant::now() + REAP_ON_EOF + Duration::from_secs(1)),
                    |st| st.reader_done.then_some(()),
                )
                .await;
        }
        if let Some(c) = &self.control {
            let _ = c.wait(Duration::from_secs(2));
        }
        // End the session for good if the worker never answered.
        {
            let mut st = lock(&self.state);
            if st.ended.is_none() {
                st.session
                    .handle_timeout(Instant::now() + Duration::from_secs(3600));
                if st.ended.is_none() {
                    st.session.handle_eof();
                }
                let mut work = Vec::new();
                self.dispatch(&mut st, &mut work);
                drop(st);
                self.do_work(work);
            }
        }
        self.stop_threads();
        lock(&self.state).finished = Some(clean && exited);
        clean && exited
    }

    /// Kills the peer and reaps it (start-up failures).
    pub(crate) fn kill_and_reap(&self) {
        if let Some(c) = &self.control {
            c.kill();
            let _ = c.wait(Duration::from_secs(2));
        }
        self.stop_threads();
    }

    fn stop_threads(&self) {
        {
            let mut st = lock(&self.state);
            st.shutdown = true;
            self.flush_cv.notify_all();
            self.read_cv.notify_all();
        }
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
        let me = std::thread::current().id();
        let deadline = Instant::now() + Duration::from_secs(1);
        for t in threads {
            if t.thread().id() == me {
                // Termination from a callback on the reader thread: that
                // thread ends by itself when the stream does.
                continue;
            }
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("a gateway thread did not finish in time; detached");
            }
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
