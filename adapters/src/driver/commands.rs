//! Commands: what the gateway and channel handles ask of the driver (exec,
//! open, send, receive, close, handles, status).

use std::time::Instant;

use execnet_core::{ChannelId, ExecRequest, LocalError, Status, Value};

use super::{Driver, End, State};
use crate::error::{Error, Result};
use crate::sync::lock;

impl Driver {
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
        let (has_callback, ended) = (c.has_callback, c.end.is_some());
        if !ended {
            // A channel closed here already refuses (LocalError::Closed).
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

    pub(super) fn maybe_forget(st: &mut State, id: u32) {
        if let Some(c) = st.channels.get(&id) {
            let callback_pending = c.has_callback && !c.endmarker_done;
            if c.handles == 0
                && c.attached_once
                && c.end.is_some()
                && !callback_pending
                && !c.callback_busy
            {
                st.channels.remove(&id);
                // Nobody can take its items any more.
                if let Some(mut ch) = st.session.channel(ChannelId(id)) {
                    ch.discard_received();
                }
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
                let closed = st.channels.get(&id).is_some_and(|c| c.end.is_some());
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
        let value = self
            .wait_for(
                |st| Self::chan_listener(st, id),
                deadline,
                |st| {
                    if st.channels.get(&id).is_some_and(|c| c.has_callback) {
                        return Some(Err(Error::CallbackSet));
                    }
                    // Taking the item returns its credit inside the session,
                    // in the same critical section.
                    if let Some(value) = st
                        .session
                        .channel(ChannelId(id))
                        .and_then(|mut ch| ch.recv())
                    {
                        return Some(Ok(value));
                    }
                    let c = st.channels.entry(id).or_default();
                    // A clean end reads as EndOfChannel to a receiver.
                    c.end_result().map(|r| r.and(Err(Error::EndOfChannel)))
                },
            )
            .await??;
        // The credit may have made a WINDOW frame due.
        self.flush(true);
        Ok(value)
    }

    /// Waits until the channel ended; reports its remote error (once).
    pub(crate) async fn waitclose(&self, id: u32, deadline: Option<Instant>) -> Result<()> {
        self.wait_for(
            |st| Self::chan_listener(st, id),
            deadline,
            |st| {
                let on_reader = self.on_reader_thread();
                let c = st.channels.entry(id).or_default();
                // With a callback, the channel is closed for a waiter once
                // every item and the endmarker went through it, as in
                // execnet (its receiver runs callbacks before the close).
                // Except on the thread running the callbacks: there the
                // endmarker (or a later callback) is being delivered by this
                // very thread, and an ended channel's end is already known
                // -- execnet records the remote error before it calls the
                // endmarker, and pytest-xdist reads it there.
                let ended_here = on_reader && c.end.is_some();
                if c.has_callback && (!c.endmarker_done || c.callback_busy) && !ended_here {
                    return None;
                }
                c.end_result()
            },
        )
        .await?
    }

    /// Closes the channel (with an error text, if given). Idempotent.
    pub(crate) fn close(&self, id: u32, error: Option<&str>) -> Result<()> {
        {
            let mut st = lock(&self.state);
            // The lifecycle table refuses a second close (Closed): idempotent.
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

    /// Ends the sending side only (LAST_MESSAGE after every item sent so
    /// far): the remote sees end of channel, and may still send. Idempotent;
    /// nothing happens on a closed or ended channel.
    pub(crate) fn close_sending(&self, id: u32) -> Result<()> {
        {
            let mut st = lock(&self.state);
            if let Some(mut ch) = st.session.channel(ChannelId(id)) {
                match ch.half_close() {
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
        let mut st = lock(&self.state);
        // Closed here (the session's state says so at once), or ended.
        st.channels.get(&id).is_none_or(|c| c.end.is_some())
            || st
                .session
                .channel(ChannelId(id))
                .is_none_or(|ch| ch.is_ended())
    }

    /// Installs a callback: queued items first, then every new item, then
    /// the endmarker once when the channel ends.
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
}
