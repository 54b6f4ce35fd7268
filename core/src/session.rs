//! The session: one side of a gateway as a sans-IO state machine.
//!
//! Everything protocol.md says about the handshake, channel lifecycle, flow
//! control and termination happens here; the frame layout lives in
//! [`frame`](crate::frame), values in [`codec`], per-channel
//! state in [`channel`](crate::channel), the receive-window policy in
//! [`window`](crate::window), event and payload types in
//! [`message`](crate::message).
//!
//! The session's jobs are split by file: this one holds the state, the
//! constructors, the inputs/outputs/commands of the public API and the
//! endings; `transmit.rs` writes frames out (`poll_transmit`),
//! `receive.rs` handles frames in, `channel_handle.rs` is [`ChannelMut`].

use std::collections::VecDeque;
use std::mem;
use std::time::{Duration, Instant};

use std::hash::BuildHasherDefault;

use crate::channel::{Channel, ChannelId, ChannelMap, IdHasher};
use crate::codec;
use crate::config::{Config, PROTOCOL_VERSION};
use crate::error::{LocalError, ProtocolError, ValueError};
use crate::frame::{write_frame, Deframer, FrameKind};
use crate::message::unrepresentable;
use crate::value::Value;

mod channel_handle;
mod receive;
mod transmit;

pub use crate::message::{ChannelEnd, Event, ExecRequest, Status, TerminateReason, WorkerInfo};
pub use channel_handle::ChannelMut;

/// Bytes one channel may emit per visit of the round-robin scheduler before
/// the next ready channel gets its turn.
const QUANTUM: usize = 64 * 1024;

/// Frames are accepted up to this size (or `max_frame` if larger) until the
/// peer's HELLO has arrived.
const HELLO_MAX_FRAME: u32 = 64 * 1024;

/// Which side of the gateway a session plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that started the gateway; allocates odd channel ids.
    Host,
    /// The side that runs code; allocates even channel ids.
    Worker,
}

/// One side of a gateway: a plain value driven by method calls that return
/// at once. See the [crate documentation](crate) for the run loop.
///
/// Inputs are `handle_*` (bytes, end of stream, time); outputs are `poll_*`
/// (bytes to transmit, events, the next deadline); commands act on the
/// session or on a channel through [`Session::channel`]. After every input
/// or command, drain in this order: [`poll_transmit`](Session::poll_transmit)
/// until it returns 0, [`poll_event`](Session::poll_event) until `None`, then
/// arm a timer at [`poll_timeout`](Session::poll_timeout).
#[derive(Debug)]
pub struct Session {
    role: Role,
    /// Limits in force (a worker adopts the host's from its HELLO).
    config: Config,
    /// Worker: our HELLO, sent when the host's arrives.
    own_info: Option<WorkerInfo>,
    /// Host: the worker's HELLO.
    remote_info: Option<WorkerInfo>,
    /// The peer's HELLO arrived.
    hello_received: bool,

    deframer: Deframer,
    channels: ChannelMap,
    /// Received items of channels the protocol is done with (fully closed,
    /// or the session ended) that the application has not taken yet.
    orphans: std::collections::HashMap<u32, VecDeque<Value>, BuildHasherDefault<IdHasher>>,
    /// Next id this side allocates (u64: never wraps).
    next_id: u64,
    /// Channels with something to transmit, round-robin.
    ready: VecDeque<u32>,
    /// Channels owing a WINDOW frame.
    windows: Vec<u32>,
    /// Gateway frames, EXEC, and the final CLOSEs/TERMINATE, transmitted
    /// before channel data (`control_sent` bytes already went out).
    control: Vec<u8>,
    control_sent: usize,
    events: VecDeque<Event>,
    next_status_id: u64,
    /// Scratch list of channel references found in an item.
    refs: Vec<u32>,

    // ---- termination (protocol.md §8) ----
    /// `terminate` was called; TERMINATE goes out once the channels that can
    /// still transmit within their credit have done so.
    terminate_requested: Option<Option<String>>,
    /// Our TERMINATE is queued: we transmit nothing else.
    sent_terminate: bool,
    /// The peer's TERMINATE arrived, with its reason.
    peer_terminated: Option<Option<String>>,
    deadline: Option<Instant>,
    /// `Event::Terminated` was emitted.
    over: bool,
    /// The sticky violation (or connection loss).
    error: Option<ProtocolError>,
}

impl Session {
    /// Host role: queues the host HELLO at once (with `options`, normally a
    /// `Value::Dict` with `execmodel`, `output` and `debug`).
    pub fn new_host(config: Config, options: Value) -> Session {
        let mut s = Session::new(Role::Host, config, None);
        let hello = Value::Dict(vec![
            (
                Value::str("version"),
                Value::Int(i64::from(PROTOCOL_VERSION)),
            ),
            (Value::str("window"), Value::from(s.config.window)),
            (Value::str("max_frame"), Value::from(s.config.max_frame)),
            (Value::str("max_item"), Value::from(s.config.max_item)),
            (Value::str("options"), options),
        ]);
        if s.queue_value_frame(FrameKind::Hello, 0, &hello).is_err() {
            // Options that cannot be encoded are replaced by an empty map
            // rather than failing the constructor.
            let mut fallback = hello;
            if let Value::Dict(pairs) = &mut fallback {
                if let Some(last) = pairs.last_mut() {
                    last.1 = Value::Dict(Vec::new());
                }
            }
            let _ = s.queue_value_frame(FrameKind::Hello, 0, &fallback);
        }
        s
    }

    /// Worker role: waits for the host HELLO, then answers with `info`
    /// (`info.version` is replaced by [`PROTOCOL_VERSION`]).
    pub fn new_worker(config: Config, info: WorkerInfo) -> Session {
        Session::new(Role::Worker, config, Some(info))
    }

    fn new(role: Role, config: Config, own_info: Option<WorkerInfo>) -> Session {
        Session {
            role,
            config: config.sanitized(),
            own_info,
            remote_info: None,
            hello_received: false,
            deframer: Deframer::new(),
            channels: ChannelMap::default(),
            orphans: Default::default(),
            next_id: match role {
                Role::Host => 1,
                Role::Worker => 2,
            },
            ready: VecDeque::new(),
            windows: Vec::new(),
            control: Vec::new(),
            control_sent: 0,
            events: VecDeque::new(),
            next_status_id: 1,
            refs: Vec::new(),
            terminate_requested: None,
            sent_terminate: false,
            peer_terminated: None,
            deadline: None,
            over: false,
            error: None,
        }
    }

    // ---- inputs ----

    /// Bytes from the transport, any chunking. A violation is returned, and
    /// is sticky: the session is over, every channel ended with it, and every
    /// later call returns it again.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if self.over {
            self.fail(ProtocolError::AfterEnd);
            return Err(ProtocolError::AfterEnd);
        }
        let mut deframer = mem::take(&mut self.deframer);
        let mut input = bytes;
        let result = loop {
            // The HELLO may exceed a small max_frame: the worker does not
            // know the host's limit before it (protocol.md §2).
            let max_frame = if self.hello_received {
                self.config.max_frame
            } else {
                self.config.max_frame.max(HELLO_MAX_FRAME)
            };
            match deframer.next_frame(&mut input, max_frame) {
                Ok(Some(frame)) => {
                    if let Err(e) = self.handle_frame(frame) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.deframer = deframer;
        if let Err(e) = result {
            self.fail(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// End of the input stream. Between frames after the peer's TERMINATE it
    /// is normal; between frames otherwise it is a connection loss; inside a
    /// frame it is a truncation. Both end every channel with
    /// [`ChannelEnd::ConnectionLost`].
    pub fn handle_eof(&mut self) {
        if self.over {
            return;
        }
        let buffered = self.deframer.buffered();
        if buffered > 0 {
            self.fail(ProtocolError::Truncated { buffered });
        } else if self.peer_terminated.is_none() {
            self.fail(ProtocolError::ConnectionLost);
        }
    }

    /// Time has passed [`poll_timeout`](Session::poll_timeout): if the peer
    /// has not answered our TERMINATE by the deadline, the session ends as
    /// [`TerminateReason::TimedOut`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.over {
            return;
        }
        if let Some(deadline) = self.deadline {
            if now >= deadline {
                if !self.sent_terminate {
                    self.write_terminate();
                }
                self.finish(TerminateReason::TimedOut);
            }
        }
    }

    // ---- outputs ----

    /// Appends bytes to transmit to `buf`, at most about `limit` bytes (one
    /// frame may overshoot it, and at least one frame is appended when any is
    /// pending); returns how many were appended (0: nothing to send now).
    ///
    /// Order: gateway and EXEC frames, then WINDOW frames, then channel data
    /// round-robin (up to 64 KiB per channel per turn), each channel's CLOSE
    /// or LAST_MESSAGE after its last queued item.
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>, limit: usize) -> usize {
        let start = buf.len();
        let end = start.saturating_add(limit.max(1));
        if !self.drain_control(buf, start, end) {
            return buf.len() - start;
        }
        if self.over || self.sent_terminate {
            return buf.len() - start;
        }
        self.write_windows(buf);
        self.write_data(buf, start, end);
        if self.terminate_requested.is_some() && self.ready.is_empty() {
            self.write_terminate();
            if let Some(reason) = self.peer_terminated.clone() {
                self.finish(TerminateReason::PeerInitiated(reason));
            }
            self.drain_control(buf, start, end);
        }
        buf.len() - start
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Session::handle_timeout): the
    /// terminate deadline, while a termination is under way.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.over {
            None
        } else {
            self.deadline
        }
    }

    // ---- commands ----

    /// Allocates a new channel (no frame is sent until it is used).
    pub fn open_channel(&mut self) -> Result<ChannelId, LocalError> {
        self.check_commands()?;
        if self.channels.len() >= self.config.max_channels {
            return Err(LocalError::TooManyChannels);
        }
        let id = u32::try_from(self.next_id).map_err(|_| LocalError::TooManyChannels)?;
        self.next_id += 2;
        self.channels.insert(id, Channel::new(self.config.window));
        Ok(ChannelId(id))
    }

    /// Host only: opens a channel and asks the worker to run `request` with
    /// it. `call`'s kwargs must be a `Value::Dict`.
    pub fn exec(&mut self, request: ExecRequest) -> Result<ChannelId, LocalError> {
        if self.role != Role::Host {
            return Err(LocalError::WrongRole);
        }
        self.check_commands()?;
        let call = match &request.call {
            None => Value::Null,
            Some((name, kwargs)) => {
                if !matches!(kwargs, Value::Dict(_)) {
                    return Err(LocalError::InvalidArgument("exec kwargs must be a dict"));
                }
                Value::List(vec![Value::str(name.as_str()), kwargs.clone()])
            }
        };
        let payload = Value::Dict(vec![
            (Value::str("source"), Value::str(request.source.as_str())),
            (Value::str("call"), call),
        ]);
        let mut bytes = Vec::new();
        codec::encode(&payload, &mut bytes).map_err(unrepresentable("exec kwargs"))?;
        if bytes.len() as u64 > u64::from(self.config.max_frame) {
            return Err(LocalError::ItemTooLarge {
                size: bytes.len() as u64,
                max: u64::from(self.config.max_frame),
            });
        }
        let id = self.open_channel()?;
        write_frame(&mut self.control, FrameKind::Exec, id.0, &bytes);
        Ok(id)
    }

    /// A handle on a channel; `None` when the id is unknown or forgotten
    /// (fully closed, or the session is over) and no received item waits
    /// on it. A forgotten channel with items waiting still hands them out
    /// ([`ChannelMut::recv`]); every other command then returns
    /// [`LocalError::Closed`] or [`LocalError::Terminated`].
    pub fn channel(&mut self, id: ChannelId) -> Option<ChannelMut<'_>> {
        let live = !self.over && self.channels.contains_key(&id.0);
        if !live && !self.orphans.contains_key(&id.0) {
            return None;
        }
        Some(ChannelMut {
            session: self,
            id: id.0,
        })
    }

    /// Starts a clean termination: TERMINATE is transmitted once the items
    /// that can go out within their credit are out (closes accepted before
    /// are sent, blocked items are dropped); the session ends when the peer's
    /// TERMINATE arrives, or as timed out at `now + grace`. A worker calls
    /// this to answer [`Event::TerminateRequested`]. Later commands fail with
    /// [`LocalError::Terminated`].
    pub fn terminate(&mut self, reason: Option<&str>, now: Instant, grace: Duration) {
        if self.over || self.sent_terminate || self.terminate_requested.is_some() {
            return;
        }
        self.terminate_requested = Some(reason.map(str::to_owned));
        if self.peer_terminated.is_none() {
            self.deadline = Some(now.checked_add(grace).unwrap_or(now));
        }
    }

    /// Host only: sends STATUS_REQUEST; the answer arrives as
    /// [`Event::StatusReply`] with the returned id.
    pub fn request_status(&mut self) -> Result<u64, LocalError> {
        if self.role != Role::Host {
            return Err(LocalError::WrongRole);
        }
        self.check_commands()?;
        let id = self.next_status_id;
        self.next_status_id += 1;
        self.queue_value_frame(FrameKind::StatusRequest, 0, &Value::from(id))
            .map_err(unrepresentable("status id"))?;
        Ok(id)
    }

    /// Worker only: answers [`Event::StatusRequested`].
    pub fn reply_status(&mut self, id: u64, status: &Status) -> Result<(), LocalError> {
        if self.role != Role::Worker {
            return Err(LocalError::WrongRole);
        }
        self.check_gateway_commands()?;
        let reply = Value::Dict(vec![
            (Value::str("id"), Value::from(id)),
            (Value::str("numchannels"), Value::from(status.numchannels)),
            (Value::str("numexecuting"), Value::from(status.numexecuting)),
            (
                Value::str("execmodel"),
                Value::str(status.execmodel.as_str()),
            ),
        ]);
        self.queue_value_frame(FrameKind::StatusReply, 0, &reply)
            .map_err(unrepresentable("status"))
    }

    /// Worker only: forwards output of fd 1 or 2 (split into frames of at
    /// most `max_frame`).
    pub fn send_output(&mut self, fd: u8, bytes: &[u8]) -> Result<(), LocalError> {
        if self.role != Role::Worker {
            return Err(LocalError::WrongRole);
        }
        if fd != 1 && fd != 2 {
            return Err(LocalError::InvalidArgument("output fd must be 1 or 2"));
        }
        self.check_gateway_commands()?;
        // [fd, bytes] costs at most 1 + 1 + 5 bytes besides the data.
        let chunk = (self.config.max_frame as usize).saturating_sub(8).max(1);
        for part in bytes.chunks(chunk) {
            let mut payload = Vec::with_capacity(part.len() + 8);
            payload.extend_from_slice(&[0x82, fd]);
            let mut enc = minicbor::Encoder::new(&mut payload);
            let _ = enc.bytes(part);
            write_frame(&mut self.control, FrameKind::Output, 0, &payload);
        }
        Ok(())
    }

    // ---- queries ----

    /// This session's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Host: the worker's HELLO, after [`Event::Ready`]. Worker: `None`.
    pub fn remote_info(&self) -> Option<&WorkerInfo> {
        self.remote_info.as_ref()
    }

    /// Whether the session is over ([`Event::Terminated`] was emitted).
    pub fn is_terminated(&self) -> bool {
        self.over
    }

    /// The sticky violation or connection loss, if any.
    pub fn error(&self) -> Option<&ProtocolError> {
        self.error.as_ref()
    }

    /// The limits in force (a worker's reflect the host HELLO once received).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Fuzzing: every channel with received items waiting, as
    /// `(id, credit they hold, their encoded sizes)`.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn waiting(&self) -> Vec<(u32, u64, Vec<u64>)> {
        let mut out = Vec::new();
        for (&id, ch) in &self.channels {
            if ch.received.is_empty() {
                continue;
            }
            let credit = ch.received.iter().map(|(_, c)| u64::from(*c)).sum();
            let sizes = ch
                .received
                .iter()
                .map(|(v, _)| {
                    let mut b = Vec::new();
                    let _ = codec::encode(v, &mut b);
                    b.len() as u64
                })
                .collect();
            out.push((id, credit, sizes));
        }
        for &id in self.orphans.keys() {
            out.push((id, 0, Vec::new()));
        }
        out
    }

    // ---- internals: commands ----

    pub(super) fn check_gateway_commands(&self) -> Result<(), LocalError> {
        if self.over || self.sent_terminate || self.terminate_requested.is_some() {
            return Err(LocalError::Terminated);
        }
        if self.role == Role::Worker && !self.hello_received {
            return Err(LocalError::NotReady);
        }
        Ok(())
    }

    pub(super) fn check_commands(&self) -> Result<(), LocalError> {
        self.check_gateway_commands()
    }

    pub(super) fn queue_value_frame(
        &mut self,
        kind: FrameKind,
        channel: u32,
        value: &Value,
    ) -> Result<(), ValueError> {
        let mut payload = Vec::new();
        codec::encode(value, &mut payload)?;
        write_frame(&mut self.control, kind, channel, &payload);
        Ok(())
    }
    // ---- internals: endings ----

    /// Ends every channel not yet ended with `how` (in id order), forgets
    /// them all.
    pub(super) fn end_all(&mut self, how: ChannelEnd) {
        let mut ids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.state.ended())
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.events.push_back(Event::ChannelEnded {
                channel: ChannelId(id),
                how: how.clone(),
            });
        }
        let mut ids: Vec<u32> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.forget(id);
        }
        self.ready.clear();
        self.windows.clear();
    }

    /// The next orphaned item of channel `id` (a forgotten channel, or one
    /// whose id the peer opened again: those items came first); `None` at
    /// once in the usual case of no orphans.
    pub(super) fn orphans_first(&mut self, id: u32) -> Option<Value> {
        if self.orphans.is_empty() {
            return None;
        }
        let items = self.orphans.get_mut(&id)?;
        let value = items.pop_front();
        if items.is_empty() {
            self.orphans.remove(&id);
        }
        value
    }

    /// Drops a channel's protocol state; its received items wait on as
    /// orphans until the application takes them.
    pub(super) fn forget(&mut self, id: u32) {
        if let Some(ch) = self.channels.remove(&id) {
            if !ch.received.is_empty() {
                let items = self.orphans.entry(id).or_default();
                items.extend(ch.received.into_iter().map(|(value, _)| value));
            }
        }
    }

    pub(super) fn finish(&mut self, reason: TerminateReason) {
        if self.over {
            return;
        }
        let how = match &reason {
            TerminateReason::ConnectionLost(e) => ChannelEnd::ConnectionLost(e.clone()),
            // A worker ending the session unasked leaves the code on its open
            // channels unfinished: those end with its reason, not cleanly
            // (protocol.md §8), or the host could not tell a worker that
            // failed (say, on a corrupted stream) from code that finished.
            TerminateReason::PeerInitiated(r) if self.role == Role::Host => {
                ChannelEnd::ConnectionLost(ProtocolError::PeerTerminated(
                    r.clone().unwrap_or_else(|| "no reason given".into()),
                ))
            }
            _ => ChannelEnd::Terminated,
        };
        self.end_all(how);
        self.over = true;
        self.deadline = None;
        self.events.push_back(Event::Terminated { reason });
    }

    /// Records a violation or connection loss (sticky) and ends the session.
    pub(super) fn fail(&mut self, error: ProtocolError) {
        if self.error.is_some() {
            return;
        }
        self.error = Some(error.clone());
        if self.over {
            return;
        }
        let violation = !matches!(
            error,
            ProtocolError::ConnectionLost | ProtocolError::Truncated { .. }
        );
        if violation && !self.sent_terminate {
            // protocol.md §11: MAY send TERMINATE with the violation text.
            self.terminate_requested = Some(Some(error.to_string()));
            self.write_terminate();
        }
        self.finish(TerminateReason::ConnectionLost(error));
    }
}
