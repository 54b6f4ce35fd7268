//! Dispatch: session events into channel states, and the user code they
//! call (callbacks, the output sink), run outside the lock.

use execnet_core::{ChannelEnd, ChannelId, Event as SessionEvent, Value};

use super::{connection_error, Callback, Driver, End, State, Work};
use crate::error::{Error, Result};
use crate::sync::lock;

impl Driver {
    pub(super) fn dispatch(&self, st: &mut State, work: &mut Vec<Work>) {
        while let Some(ev) = st.session.poll_event() {
            match ev {
                SessionEvent::Ready(info) => {
                    tracing::debug!(pid = info.pid, executable = %info.executable, "worker ready");
                    st.ready = Some(info);
                    self.gw_event.notify(usize::MAX);
                }
                SessionEvent::Readable { channel } => {
                    let c = st.channels.entry(channel.0).or_default();
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
                        ChannelEnd::RemoteError(text) => End::Remote(match &self.control {
                            // A limit may explain it (a fork at max_procs).
                            Some(c) => c.annotate_remote_error(text),
                            None => text,
                        }),
                        ChannelEnd::ConnectionLost(e) => End::Failed(connection_error(st, e)),
                        _ => End::Closed,
                    };
                    tracing::trace!(channel = channel.0, "channel ended");
                    let waiting = st
                        .session
                        .channel(channel)
                        .is_some_and(|ch| ch.received() > 0);
                    let c = st.channels.entry(channel.0).or_default();
                    c.end = Some(end);
                    c.event.notify(usize::MAX);
                    if c.has_callback {
                        work.push(Work::Callbacks(channel.0));
                    } else if c.attached_once && c.handles == 0 && !waiting {
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

    pub(super) fn do_work(&self, work: Vec<Work>) {
        for w in work {
            match w {
                Work::Output(fd, bytes) => lock(&self.output).deliver(fd, &bytes),
                Work::Callbacks(id) => self.run_callbacks(id, false),
            }
        }
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
    pub(super) fn run_callbacks(&self, id: u32, inline_flush: bool) {
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
            let ended = c.end.is_some();
            // The item's credit stays held while the callback runs on it
            // (the window bounds what a callback's channel holds, as for a
            // receiver), and goes back when it returned.
            let item = st
                .session
                .channel(ChannelId(id))
                .and_then(|mut ch| ch.recv_held());
            let Some(c) = st.channels.get_mut(&id) else {
                break;
            };
            let (value, taken) = if let Some(v) = item {
                (v, true)
            } else if ended && !c.endmarker_done {
                c.endmarker_done = true;
                match c.endmarker.take() {
                    Some(m) => (m, false),
                    None => continue,
                }
            } else {
                break;
            };
            drop(st);
            let panicked = self.call_callback(&mut cb, value);
            st = lock(&self.state);
            if taken {
                if let Some(mut ch) = st.session.channel(ChannelId(id)) {
                    ch.release_held();
                    consumed_any = true;
                }
            }
            if panicked {
                tracing::error!(channel = id, "channel callback panicked; it is removed");
                if let Some(c) = st.channels.get_mut(&id) {
                    c.endmarker_done = true;
                    c.endmarker = None;
                }
                // Drop what is left so the window reopens.
                if let Some(mut ch) = st.session.channel(ChannelId(id)) {
                    ch.discard_received();
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

    pub(super) fn call_callback(&self, cb: &mut Callback, value: Value) -> bool {
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
}
