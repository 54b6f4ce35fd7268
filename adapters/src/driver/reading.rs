//! Reading: the read token (leader/follower), the reader thread, feeding
//! input to the session, end of stream.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Driver, ReadSide, State, INTERRUPTED, INTERRUPTIBLE, LEADING, READER_GRACE, READER_POLL,
    REAP_ON_EOF,
};
use crate::error::Error;
use crate::sync::{lock, wait, wait_timeout};
use crate::transport;

/// What a read waits for before it reads.
#[derive(Clone, Copy)]
enum Until {
    /// Nothing: it reads at once (and blocks in `read`).
    Input,
    /// Input, until this deadline (`PeerControl::wait_readable`).
    Deadline(Instant),
    /// Input or a candidate (the reader thread: the transport's descriptor
    /// and the wake-up descriptor in one poll, without a timeout).
    InputOrCandidate,
}

/// The read token, held by this thread (see the module comment). Dropping
/// it (a panic in a callback) gives it back.
pub(super) struct ReadToken<'a> {
    driver: &'a Driver,
    prev: usize,
    armed: bool,
}

impl<'a> ReadToken<'a> {
    /// Takes the free token (under the lock).
    pub(super) fn take(driver: &'a Driver, st: &mut State) -> ReadToken<'a> {
        debug_assert!(!st.reading);
        st.reading = true;
        st.token_takes = st.token_takes.wrapping_add(1);
        Self::held(driver)
    }

    /// The token this thread already holds (`reading` is set).
    pub(super) fn held(driver: &'a Driver) -> ReadToken<'a> {
        let prev = LEADING.with(|l| l.replace(driver as *const Driver as usize));
        ReadToken {
            driver,
            prev,
            armed: true,
        }
    }

    /// Gives the token back (under the lock).
    pub(super) fn release(mut self, st: &mut State) {
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

impl Driver {
    // ---------------------------------------------------------------- reader

    pub(super) fn reader_loop(self: Arc<Self>) {
        let _g = self.span.clone().entered();
        // Starts with the token (set in `start`).
        let mut token = Some(ReadToken::held(&self));
        loop {
            if let Some(t) = token.take() {
                // Read until the end, or until a candidate wants the token.
                loop {
                    let more = self.read_for_reader_thread();
                    let mut st = lock(&self.state);
                    if st.woken {
                        // A candidate signalled: it is served below, or it
                        // is gone already (then the next poll must block).
                        if let Some(wake) = &self.wake {
                            wake.drain();
                        }
                        st.woken = false;
                    }
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
                    let (g, timed_out) = wait_timeout(&self.read_cv, st, READER_GRACE);
                    st = g;
                    if timed_out && !st.reading && st.candidates == 0 && !st.reader_done {
                        break;
                    }
                    continue;
                }
                if !st.reading {
                    // A candidate is about to take the free token.
                    st = wait_timeout(&self.read_cv, st, READER_GRACE).0;
                    continue;
                }
                // A leader reads. While the token changes hands (a
                // ping-pong of blocking receives) look every READER_GRACE,
                // as a release then wakes nobody; once it stayed with one
                // leader for that long (a receive waiting on a silent
                // worker), sleep until its release wakes us.
                let takes = st.token_takes;
                let (g, timed_out) = wait_timeout(&self.read_cv, st, READER_GRACE);
                st = g;
                if timed_out && st.reading && st.token_takes == takes {
                    st.reader_parked = true;
                    while st.reader_parked && !st.reader_done && !st.shutdown {
                        st = wait(&self.read_cv, st);
                    }
                    st.reader_parked = false;
                }
            }
            token = Some(ReadToken::take(&self, &mut st));
            st.reader_has_token = true;
        }
    }

    /// The reader thread's read, with the token: returns after input was
    /// fed, at the end of the stream (`false`), or, where the transport
    /// polls, when a candidate may want the token (nothing read).
    fn read_for_reader_thread(&self) -> bool {
        if self.wake.is_some() {
            // Sleeps until input or a candidate (the wake-up descriptor).
            self.read_once_with(Until::InputOrCandidate).unwrap_or(true)
        } else if self.lead_with_deadline {
            // A transport that can tell when input waits but gave no
            // descriptor to poll with ours: look for candidates every
            // READER_POLL, so that one takes over even while no input
            // arrives.
            self.read_once_until(Some(Instant::now() + READER_POLL))
                .unwrap_or(true)
        } else {
            // Nothing to poll: a candidate takes over after the next input.
            self.read_once()
        }
    }

    /// Whether input is awaited by someone who will not read it himself.
    pub(super) fn input_needed(st: &State) -> bool {
        st.waiters > 0 || st.callbacks > 0 || st.shutdown
    }

    /// The read token is free again (under the lock): wake who may take it.
    pub(super) fn token_released(&self, st: &mut State) {
        st.reading = false;
        st.reader_has_token = false;
        if st.candidates > 0 {
            self.token_event.notify(usize::MAX);
        } else if Self::input_needed(st) || st.reader_done || st.reader_parked {
            st.reader_parked = false;
            self.read_cv.notify_one();
        }
    }

    /// A candidate registered (under the lock): if the reader thread holds
    /// the token (and sleeps in its poll, or will poll next), wake it so
    /// that it gives the token away now rather than at the next input.
    pub(super) fn candidate_arrived(&self, st: &mut State) {
        if st.reader_has_token && !st.woken {
            if let Some(wake) = &self.wake {
                wake.signal();
                st.woken = true;
            }
        }
    }

    /// A waiter or callback appeared (under the lock): make sure the reader
    /// thread reads if nobody else does.
    pub(super) fn input_wanted(&self, st: &State) {
        if !st.reading && st.candidates == 0 {
            self.read_cv.notify_one();
        }
    }

    /// With the read token: one read from the transport, fed to the session
    /// (callbacks and output run here too). `false` at the end of the
    /// stream (then `reader_done` is set).
    pub(super) fn read_once(&self) -> bool {
        self.read_once_until(None).unwrap_or(true)
    }

    /// [`read_once`](Self::read_once) that waits for input only until
    /// `deadline` (if any): `None` when it passed with nothing read. The
    /// wait is `PeerControl::wait_readable` with the time left (a poll on
    /// the transport's descriptor), so a deadline needs a transport that
    /// can wait without reading (`Driver::lead_with_deadline`). A signal
    /// that interrupts it ends the read of an interruptible wait at once.
    pub(super) fn read_once_until(&self, deadline: Option<Instant>) -> Option<bool> {
        self.read_once_with(match deadline {
            Some(d) => Until::Deadline(d),
            None => Until::Input,
        })
    }

    /// One read, after a wait for input as `until` says: `None` when the
    /// wait ended with nothing to read (a deadline passed, a candidate
    /// appeared), else as [`read_once`](Self::read_once).
    fn read_once_with(&self, until: Until) -> Option<bool> {
        let mut side = lock(&self.source);
        let ReadSide {
            reader,
            buf,
            last_full,
        } = &mut *side;
        let Some(r) = reader.as_mut() else {
            return Some(false);
        };
        // The reader is open (we hold it), so the peer's descriptor is too.
        match (until, self.control.as_deref(), *last_full) {
            (Until::Deadline(deadline), Some(control), false) => loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match control.wait_readable(left) {
                    Some(true) | None => break,
                    Some(false) if Instant::now() >= deadline => return None,
                    Some(false) => {
                        // Woken early by a signal.
                        if INTERRUPTIBLE.with(|c| c.get()) {
                            INTERRUPTED.with(|c| c.set(true));
                            return Some(true);
                        }
                    }
                }
            },
            (Until::InputOrCandidate, Some(control), false) => {
                if let (Some(fd), Some(wake)) = (control.readable_fd(), &self.wake) {
                    // No timeout: input, its end, or a candidate ends it
                    // (`candidate_arrived` signals `wake` while the reader
                    // thread holds the token; `reader_loop` drains it).
                    let polled = transport::poll_input(fd, Some(wake.fd()), None);
                    if !polled.input {
                        // A candidate, or a signal: the caller looks.
                        return None;
                    }
                }
            }
            _ => {}
        }
        let n = loop {
            match r.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    if INTERRUPTIBLE.with(|c| c.get()) {
                        // Nothing read: the waiting caller handles the
                        // signal and comes back.
                        INTERRUPTED.with(|c| c.set(true));
                        return Some(true);
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "transport read failed; treating as end of stream");
                    break 0;
                }
            }
        };
        *last_full = n == buf.len();
        if n > 0 {
            self.feed(&buf[..n]);
            return Some(true);
        }
        self.handle_eof();
        side.reader = None;
        drop(side);
        let mut st = lock(&self.state);
        st.reader_done = true;
        self.gw_event.notify(usize::MAX);
        self.token_event.notify(usize::MAX);
        self.read_cv.notify_all();
        Some(false)
    }

    /// Feeds received bytes to the session and dispatches what follows.
    pub(super) fn feed(&self, bytes: &[u8]) {
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

    pub(super) fn handle_eof(&self) {
        // Reap first, so that every channel learns how the worker ended.
        let death = match &self.control {
            Some(c) => match c.wait(REAP_ON_EOF) {
                Some(status) => match c.limit_exceeded(status) {
                    // A resource limit (docs/jails.md) ended it: say which.
                    Some(limit) => Error::LimitExceeded {
                        gateway: self.label.clone(),
                        limit,
                        status,
                        stderr_tail: c.stderr_tail(Duration::from_millis(300)),
                    },
                    None => Error::WorkerDied {
                        gateway: self.label.clone(),
                        status,
                        stderr_tail: c.stderr_tail(Duration::from_millis(300)),
                    },
                },
                None => {
                    // The stream ended under a live worker: the session
                    // cannot go on, so the worker goes too.
                    c.kill();
                    let status = c.wait(Duration::from_secs(1));
                    tracing::debug!(?status, "stream ended while the worker ran; killed it");
                    Error::ConnectionLost(format!(
                        "{}: the stream ended while the worker (pid {}) was still running; it was killed",
                        self.label,
                        c.pid().map_or_else(|| "?".to_string(), |p| p.to_string())
                    ))
                }
            },
            None => Error::ConnectionLost(format!("{}: end of stream", self.label)),
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
}
