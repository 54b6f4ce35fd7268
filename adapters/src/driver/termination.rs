//! Termination: TERMINATE, waiting for the worker's end, killing, reaping,
//! stopping the threads.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use execnet_core::TerminateReason;

use super::{Driver, REAP_ON_EOF};
use crate::sync::lock;

impl Driver {
    /// Finishes termination on a helper thread (for callers on the reader
    /// thread, which must return to read the worker's answer).
    pub(crate) fn finish_terminate_detached(self: &Arc<Self>, deadline: Instant) {
        let d = self.clone();
        let spawned = std::thread::Builder::new()
            .name("execnet-terminate".into())
            .spawn(move || {
                super::block_on(d.finish_terminate(deadline));
            });
        if spawned.is_err() {
            // No thread to be had: kill now, the reader reaps at EOF.
            if let Some(c) = &self.control {
                c.kill();
            }
        }
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
                // The worker is killed and reaped: no answer can come any
                // more, so the session's own terminate deadline (from
                // `begin_terminate`'s grace) counts as passed. Without a
                // terminate under way there is no deadline; then the end of
                // the stream ends it.
                if let Some(deadline) = st.session.poll_timeout() {
                    st.session.handle_timeout(deadline.max(Instant::now()));
                }
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

    pub(super) fn stop_threads(&self) {
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
