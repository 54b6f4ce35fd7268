//! Waiting: one `wait_for` for every wait (listener under the lock, check,
//! lead or await), and the waits built on it.

use std::time::{Duration, Instant};

use event_listener::{Event, EventListener};
use execnet_core::{ProtocolError, WorkerInfo};

use super::{Driver, ReadToken, State, BOUNDED, INTERRUPTED, INTERRUPTIBLE, LEAD_OK, REAP_ON_EOF};
use crate::error::{Error, Result};
use crate::sync::lock;

/// A registered waiter or candidate (see the module comment); unregisters
/// when dropped (a cancelled async wait).
pub(super) struct Registration<'a> {
    driver: &'a Driver,
    kind: Option<bool>,
}

impl Registration<'_> {
    pub(super) fn register(&mut self, st: &mut State, candidate: bool) {
        debug_assert!(self.kind.is_none());
        self.kind = Some(candidate);
        if candidate {
            st.candidates += 1;
            self.driver.candidate_arrived(st);
        } else {
            st.waiters += 1;
            self.driver.input_wanted(st);
        }
    }

    pub(super) fn unregister(&mut self, st: &mut State) {
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

impl Driver {
    // ---------------------------------------------------------------- waiting

    /// Waits until `check` returns `Some`, re-checking after every
    /// notification of `event`. `Err(Timeout)` after `deadline`.
    pub(super) async fn wait_for<R>(
        &self,
        event: impl Fn(&State) -> EventListener,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut State) -> Option<R>,
    ) -> Result<R> {
        // Leader/follower: a blocking receive leads without a deadline; with
        // one, where the transport can bound the read by it (it polls with
        // the time left), or when the wait is interruptible and its deadline
        // only a slice (a signal cuts its read short).
        let sliced = INTERRUPTIBLE.with(|c| c.get()) && !BOUNDED.with(|c| c.get());
        // (A deadline already passed only checks, as before: a zero-timeout
        // receive is a peek at what arrived.)
        let bounded = self.lead_with_deadline && deadline.is_some_and(|d| d > Instant::now());
        let may_lead = (deadline.is_none() || bounded || sliced) && LEAD_OK.with(|c| c.get());
        let read_until = deadline.filter(|_| self.lead_with_deadline);
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
                        let Some(more) = self.read_once_until(read_until) else {
                            // The deadline passed with nothing to read.
                            let mut st = lock(&self.state);
                            let r = check(&mut st);
                            token.release(&mut st);
                            return r.ok_or(Error::Timeout);
                        };
                        let mut st = lock(&self.state);
                        if let Some(r) = check(&mut st) {
                            token.release(&mut st);
                            return Ok(r);
                        }
                        if INTERRUPTED.with(|c| c.replace(false)) {
                            token.release(&mut st);
                            return Err(Error::Timeout);
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
                (Some(d), Some(t)) => {
                    // An interruptible follower: the deadline still applies.
                    let woken = futures_lite::future::or(
                        async {
                            futures_lite::future::or(listener, t).await;
                            true
                        },
                        async {
                            async_io::Timer::at(d).await;
                            false
                        },
                    )
                    .await;
                    if !woken {
                        let mut st = lock(&self.state);
                        reg.unregister(&mut st);
                        return check(&mut st).ok_or(Error::Timeout);
                    }
                }
                (None, Some(t)) => futures_lite::future::or(listener, t).await,
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

    pub(super) fn chan_listener(st: &State, id: u32) -> EventListener {
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

    pub(super) fn stderr_tail(&self) -> String {
        self.control
            .as_ref()
            .map(|c| c.stderr_tail(Duration::from_millis(200)))
            .unwrap_or_default()
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
}
