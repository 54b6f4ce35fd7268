//! Writing: the writing token, inline flushes by callers, the flusher
//! thread.

use std::io::Write;
use std::sync::{Arc, MutexGuard};

use super::{Driver, State, WRITE_CHUNK};
use crate::sync::{lock, wait};

impl Driver {
    // ---------------------------------------------------------------- writing

    /// Writes what the session has to send. `inline`: the calling thread
    /// writes if nobody else is writing and it may block (it runs a
    /// [`block_on`](super::block_on)); otherwise the flusher is asked to.
    ///
    /// Also dispatches the events the command produced (a local close ends
    /// the channel's receive side at once, for example), so that a waiter
    /// never depends on the next input to see them.
    pub(crate) fn flush(&self, inline: bool) {
        let inline = inline && super::may_block();
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
    pub(super) fn write_loop<'a>(&'a self, mut st: MutexGuard<'a, State>) {
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
    pub(super) fn pump_for_flusher(&self, st: &mut State) {
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

    pub(super) fn flusher_loop(self: Arc<Self>) {
        let _g = self.span.clone().entered();
        let mut st = lock(&self.state);
        loop {
            while !st.flush_wanted && !st.shutdown {
                st = wait(&self.flush_cv, st);
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
}
