//! The session: one side of a gateway as a sans-IO state machine.
//!
//! Everything protocol.md says about the handshake, channel lifecycle, flow
//! control and termination happens here; the frame layout lives in
//! [`frame`](crate::frame), values in [`codec`], per-channel
//! state in [`channel`](crate::channel).

use std::collections::VecDeque;
use std::mem;
use std::time::{Duration, Instant};

use crate::channel::{Channel, ChannelId, ChannelMap, PendingEnd};
use crate::codec::{self, decode_item};
use crate::config::{Config, PROTOCOL_VERSION};
use crate::error::{LocalError, ProtocolError, ValueError};
use crate::frame::{write_frame, write_header, Deframer, Frame, FrameKind, HEADER_LEN};
use crate::value::Value;

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

/// What a session reports to its driver (see [`Session::poll_event`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Host: the worker's HELLO arrived.
    Ready(WorkerInfo),
    /// Worker: the host's HELLO arrived (the worker HELLO is queued).
    HostHello {
        /// The host's `options` map.
        options: Value,
    },
    /// An item arrived. Call [`ChannelMut::consumed`] with `credit` once the
    /// application has taken it (received it, or a callback returned).
    Data {
        /// The channel.
        channel: ChannelId,
        /// The item.
        value: Value,
        /// The bytes of window this item holds until it is consumed: its
        /// DATA payload plus any DATA_MORE credit held for it. Pass it to
        /// `consumed`.
        credit: u32,
    },
    /// The channel's receive side ended; exactly once per channel.
    ChannelEnded {
        /// The channel.
        channel: ChannelId,
        /// How it ended.
        how: ChannelEnd,
    },
    /// Worker: the host asks to run code on a new channel.
    ExecRequested {
        /// The exec's channel.
        channel: ChannelId,
        /// What to run.
        request: ExecRequest,
    },
    /// A send that returned `WouldBlock` may be retried.
    WindowOpened {
        /// The channel.
        channel: ChannelId,
    },
    /// Worker: the host asked for a status; answer with `reply_status`.
    StatusRequested {
        /// The request id.
        id: u64,
    },
    /// Host: the worker answered a status request.
    StatusReply {
        /// The request id.
        id: u64,
        /// The worker's status.
        status: Status,
    },
    /// Host: forwarded worker output.
    Output {
        /// 1 (stdout) or 2 (stderr).
        fd: u8,
        /// The bytes, in the order read.
        bytes: Vec<u8>,
    },
    /// Worker: the host sent TERMINATE; finish up and call `terminate`.
    TerminateRequested {
        /// The host's reason, if any.
        reason: Option<String>,
    },
    /// The session is over; the last event.
    Terminated {
        /// Why.
        reason: TerminateReason,
    },
}

/// How a channel's receive side ended.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ChannelEnd {
    /// The peer closed it (CLOSE without error, or LAST_MESSAGE).
    Closed,
    /// The peer closed it with an error text.
    RemoteError(String),
    /// This side closed it.
    ClosedLocally,
    /// The session terminated cleanly (or timed out) first.
    Terminated,
    /// The connection was lost or violated protocol first.
    ConnectionLost(ProtocolError),
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TerminateReason {
    /// This side asked, and the peer answered.
    Clean,
    /// The peer asked (with its reason); this side answered.
    PeerInitiated(Option<String>),
    /// The peer did not answer before the deadline.
    TimedOut,
    /// End of stream, truncation or a protocol violation.
    ConnectionLost(ProtocolError),
}

/// An EXEC request (protocol.md §6).
#[derive(Clone, Debug, PartialEq)]
pub struct ExecRequest {
    /// Python source to execute.
    pub source: String,
    /// Optional `(function_name, kwargs)` to call after executing `source`;
    /// `kwargs` must be a `Value::Dict` with `Str` keys.
    pub call: Option<(String, Value)>,
}

/// The worker's HELLO (protocol.md §4).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct WorkerInfo {
    /// Protocol version the worker speaks.
    pub version: u32,
    /// `sys.implementation.name`.
    pub implementation: String,
    /// `[major, minor, micro, releaselevel, serial]`.
    pub version_info: Vec<Value>,
    /// `sys.executable`.
    pub executable: String,
    /// `sys.platform`.
    pub platform: String,
    /// Worker process id.
    pub pid: u32,
    /// Current directory at start.
    pub cwd: String,
    /// Execution model in force.
    pub execmodel: String,
}

/// A worker's status (protocol.md §9).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Status {
    /// Channels currently open in the worker.
    pub numchannels: u64,
    /// Executions currently running.
    pub numexecuting: u64,
    /// Execution model.
    pub execmodel: String,
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
    /// (fully closed) or the session is over.
    pub fn channel(&mut self, id: ChannelId) -> Option<ChannelMut<'_>> {
        if self.over || !self.channels.contains_key(&id.0) {
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

    // ---- internals: commands ----

    fn check_gateway_commands(&self) -> Result<(), LocalError> {
        if self.over || self.sent_terminate || self.terminate_requested.is_some() {
            return Err(LocalError::Terminated);
        }
        if self.role == Role::Worker && !self.hello_received {
            return Err(LocalError::NotReady);
        }
        Ok(())
    }

    fn check_commands(&self) -> Result<(), LocalError> {
        self.check_gateway_commands()
    }

    fn queue_value_frame(
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

    // ---- internals: transmit ----

    /// Copies pending control bytes; true when none remain.
    fn drain_control(&mut self, buf: &mut Vec<u8>, start: usize, end: usize) -> bool {
        let pending = self.control.len() - self.control_sent;
        if pending > 0 {
            let room = end.saturating_sub(buf.len());
            let take = if buf.len() == start {
                pending.min(room.max(1))
            } else {
                pending.min(room)
            };
            buf.extend_from_slice(&self.control[self.control_sent..self.control_sent + take]);
            self.control_sent += take;
            if self.control_sent < self.control.len() {
                return false;
            }
        }
        self.control.clear();
        self.control_sent = 0;
        true
    }

    fn write_windows(&mut self, buf: &mut Vec<u8>) {
        let ids = mem::take(&mut self.windows);
        for &id in &ids {
            let Some(ch) = self.channels.get_mut(&id) else {
                continue;
            };
            ch.in_windows = false;
            if ch.owed == 0 || ch.sent_close || ch.recv_close {
                continue;
            }
            // owed + recv_credit never exceeds the window (a u32).
            let grant = ch.owed;
            ch.recv_credit += grant;
            ch.owed = 0;
            let mut payload = [0u8; 9];
            let n = cbor_uint(&mut payload, grant);
            write_frame(buf, FrameKind::Window, id, &payload[..n]);
        }
        // Reuse the allocation.
        let mut ids = ids;
        ids.clear();
        if self.windows.is_empty() {
            self.windows = ids;
        }
    }

    fn write_data(&mut self, buf: &mut Vec<u8>, start: usize, end: usize) {
        let max_frame = self.config.max_frame as u64;
        let window = u64::from(self.config.window);
        while buf.len() < end {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(ch) = self.channels.get_mut(&id) else {
                continue;
            };
            ch.in_ready = false;
            let visit_start = buf.len();
            let mut forget = false;
            // The limit is reached (no room for a worthwhile frame).
            let mut full = false;
            loop {
                if buf.len() - visit_start >= QUANTUM || buf.len() >= end {
                    break;
                }
                if let Some(front) = ch.queue.front() {
                    if ch.send_credit == 0 {
                        break;
                    }
                    let remaining = (front.len() - ch.front_offset) as u64;
                    let room = end.saturating_sub(buf.len()) as u64;
                    // Do not cut tiny frames just to meet `limit`, unless
                    // nothing was appended yet (progress guarantee).
                    if buf.len() > start && room < HEADER_LEN as u64 + remaining.min(512) {
                        full = true;
                        break;
                    }
                    let room_payload = room.saturating_sub(HEADER_LEN as u64).max(1);
                    let chunk = remaining
                        .min(max_frame)
                        .min(ch.send_credit)
                        .min(room_payload.max(remaining.min(512)));
                    // chunk <= max_frame, a u32.
                    let chunk_len = chunk as usize;
                    let last = chunk == remaining;
                    let kind = if last {
                        FrameKind::Data
                    } else {
                        FrameKind::DataMore
                    };
                    write_header(buf, kind, id, chunk as u32);
                    buf.extend_from_slice(&front[ch.front_offset..ch.front_offset + chunk_len]);
                    ch.send_credit -= chunk;
                    ch.queued_bytes -= chunk;
                    if last {
                        ch.queue.pop_front();
                        ch.front_offset = 0;
                    } else {
                        ch.front_offset += chunk_len;
                    }
                } else if let Some(end_frame) = ch.pending_end.take() {
                    match end_frame {
                        PendingEnd::Last => {
                            write_header(buf, FrameKind::LastMessage, id, 0);
                            ch.sent_last = true;
                        }
                        PendingEnd::Close(error) => {
                            write_close(buf, id, error.as_deref());
                            ch.sent_close = true;
                            forget = ch.recv_close;
                            ch.reassembly = Vec::new();
                        }
                    }
                    break;
                } else {
                    break;
                }
            }
            if ch.blocked && ch.queued_bytes < window && ch.accepts_items() {
                ch.blocked = false;
                self.events.push_back(Event::WindowOpened {
                    channel: ChannelId(id),
                });
            }
            if forget {
                self.channels.remove(&id);
            } else if ch.is_ready() {
                ch.in_ready = true;
                if full {
                    // Its turn is not over: first again next time.
                    self.ready.push_front(id);
                    break;
                }
                self.ready.push_back(id);
            }
            if full {
                break;
            }
        }
    }

    /// Queues TERMINATE (after the CLOSEs of channels closed locally whose
    /// items could not all go out); drops everything else.
    fn write_terminate(&mut self) {
        if self.sent_terminate {
            return;
        }
        let mut ids: Vec<u32> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(ch) = self.channels.get_mut(&id) {
                if let Some(PendingEnd::Close(error)) = ch.pending_end.take() {
                    if !ch.sent_close {
                        write_close(&mut self.control, id, error.as_deref());
                        ch.sent_close = true;
                    }
                }
                ch.drop_queue();
            }
        }
        self.ready.clear();
        self.windows.clear();
        let reason = self
            .terminate_requested
            .clone()
            .flatten()
            .map(|text| truncate_text(text, self.config.max_frame));
        match reason {
            Some(text) => {
                let _ = self.queue_value_frame(FrameKind::Terminate, 0, &Value::Str(text));
            }
            None => write_header(&mut self.control, FrameKind::Terminate, 0, 0),
        }
        self.sent_terminate = true;
    }

    // ---- internals: endings ----

    /// Ends every channel not yet ended with `how` (in id order), forgets
    /// them all.
    fn end_all(&mut self, how: ChannelEnd) {
        let mut ids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.ended)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.events.push_back(Event::ChannelEnded {
                channel: ChannelId(id),
                how: how.clone(),
            });
        }
        self.channels.clear();
        self.ready.clear();
        self.windows.clear();
    }

    fn finish(&mut self, reason: TerminateReason) {
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
    fn fail(&mut self, error: ProtocolError) {
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

    // ---- internals: frames in ----

    fn handle_frame(&mut self, frame: Frame<'_>) -> Result<(), ProtocolError> {
        let Frame { header, payload } = frame;
        let kind = header.kind;
        let id = header.channel;
        if self.over {
            return Err(ProtocolError::AfterEnd);
        }
        if self.peer_terminated.is_some() {
            return Err(ProtocolError::UnexpectedFrame {
                kind: kind.name(),
                reason: "after the peer's TERMINATE",
            });
        }
        let wrong_direction = match self.role {
            Role::Host => matches!(kind, FrameKind::Exec | FrameKind::StatusRequest),
            Role::Worker => matches!(kind, FrameKind::StatusReply | FrameKind::Output),
        };
        if wrong_direction {
            return Err(ProtocolError::WrongDirection { kind: kind.name() });
        }
        if kind.is_gateway() != (id == 0) {
            return Err(ProtocolError::WrongChannel {
                kind: kind.name(),
                channel: id,
            });
        }
        if !self.hello_received && !matches!(kind, FrameKind::Hello | FrameKind::Terminate) {
            return Err(ProtocolError::UnexpectedFrame {
                kind: kind.name(),
                reason: "before HELLO",
            });
        }
        match kind {
            FrameKind::Hello => self.on_hello(payload),
            FrameKind::Exec => self.on_exec(id, payload),
            FrameKind::Data => self.on_data(id, payload, true),
            FrameKind::DataMore => self.on_data(id, payload, false),
            FrameKind::Close => self.on_close(id, payload),
            FrameKind::LastMessage => self.on_last_message(id, payload),
            FrameKind::Window => self.on_window(id, payload),
            FrameKind::Terminate => self.on_terminate(payload),
            FrameKind::StatusRequest => {
                let id = payload_uint(kind, payload)?;
                self.events.push_back(Event::StatusRequested { id });
                Ok(())
            }
            FrameKind::StatusReply => self.on_status_reply(payload),
            FrameKind::Output => self.on_output(payload),
        }
    }

    fn on_hello(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Hello;
        if self.hello_received {
            return Err(ProtocolError::UnexpectedFrame {
                kind: K.name(),
                reason: "second HELLO",
            });
        }
        let map = payload_value(K, payload, self.config.max_depth)?;
        if !matches!(map, Value::Dict(_)) {
            return Err(bad(K, "not a map"));
        }
        let version = uint_field(K, &map, "version")?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        self.hello_received = true;
        match self.role {
            Role::Worker => {
                let window = uint_field(K, &map, "window")?;
                let max_frame = uint_field(K, &map, "max_frame")?;
                let max_item = uint_field(K, &map, "max_item")?;
                let (Ok(window), Ok(max_frame)) = (u32::try_from(window), u32::try_from(max_frame))
                else {
                    return Err(bad(K, "window or max_frame beyond 2^32-1"));
                };
                if window == 0 || max_frame == 0 || max_item == 0 {
                    return Err(bad(K, "zero window, max_frame or max_item"));
                }
                self.config.window = window;
                self.config.max_frame = max_frame;
                self.config.max_item = max_item;
                let options = map
                    .get("options")
                    .cloned()
                    .unwrap_or(Value::Dict(Vec::new()));
                let info = self.own_info.take().unwrap_or_default();
                let hello = Value::Dict(vec![
                    (Value::str("version"), Value::from(PROTOCOL_VERSION)),
                    (
                        Value::str("implementation"),
                        Value::Str(info.implementation),
                    ),
                    (Value::str("version_info"), Value::List(info.version_info)),
                    (Value::str("executable"), Value::Str(info.executable)),
                    (Value::str("platform"), Value::Str(info.platform)),
                    (Value::str("pid"), Value::from(info.pid)),
                    (Value::str("cwd"), Value::Str(info.cwd)),
                    (Value::str("execmodel"), Value::Str(info.execmodel)),
                ]);
                if self.sent_terminate {
                    // We already said goodbye (a worker refusing to start):
                    // TERMINATE stays our last frame.
                } else if self.queue_value_frame(K, 0, &hello).is_err() {
                    // version_info holding unhashable keys is the only way to
                    // get here; send it without.
                    let mut hello = hello;
                    if let Value::Dict(pairs) = &mut hello {
                        pairs[2].1 = Value::List(Vec::new());
                    }
                    let _ = self.queue_value_frame(K, 0, &hello);
                }
                self.events.push_back(Event::HostHello { options });
            }
            Role::Host => {
                let info = WorkerInfo {
                    version: PROTOCOL_VERSION,
                    implementation: text_field(K, &map, "implementation")?,
                    version_info: match map.get("version_info") {
                        Some(Value::List(items)) | Some(Value::Tuple(items)) => items.clone(),
                        _ => return Err(bad(K, "version_info is not an array")),
                    },
                    executable: text_field(K, &map, "executable")?,
                    platform: text_field(K, &map, "platform")?,
                    pid: u32::try_from(uint_field(K, &map, "pid")?)
                        .map_err(|_| bad(K, "pid beyond 2^32-1"))?,
                    cwd: text_field(K, &map, "cwd")?,
                    execmodel: text_field(K, &map, "execmodel")?,
                };
                self.remote_info = Some(info.clone());
                self.events.push_back(Event::Ready(info));
            }
        }
        Ok(())
    }

    /// Finds the channel a frame names, opening a peer-parity one implicitly
    /// (protocol.md §6).
    fn ensure_channel(&mut self, id: u32) -> Result<(), ProtocolError> {
        if !self.channels.contains_key(&id) {
            self.open_remote(id)?;
        }
        Ok(())
    }

    fn is_own_parity(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.role == Role::Host)
    }

    fn open_remote(&mut self, id: u32) -> Result<(), ProtocolError> {
        if self.is_own_parity(id) {
            return Err(ProtocolError::UnknownChannel(id));
        }
        if self.channels.len() >= self.config.max_channels {
            return Err(ProtocolError::TooManyChannels {
                max: self.config.max_channels,
            });
        }
        self.channels.insert(id, Channel::new(self.config.window));
        Ok(())
    }

    fn on_exec(&mut self, id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Exec;
        if self.is_own_parity(id) {
            return Err(ProtocolError::WrongChannel {
                kind: K.name(),
                channel: id,
            });
        }
        if self.channels.contains_key(&id) {
            return Err(ProtocolError::UnexpectedFrame {
                kind: K.name(),
                reason: "the channel is already open",
            });
        }
        let map = payload_value(K, payload, self.config.max_depth)?;
        let source = text_field(K, &map, "source")?;
        let call = match map.get("call") {
            None | Some(Value::Null) => None,
            Some(Value::List(items)) | Some(Value::Tuple(items)) => match items.as_slice() {
                [Value::Str(name), kwargs @ Value::Dict(_)] => Some((name.clone(), kwargs.clone())),
                _ => return Err(bad(K, "call is not [name, kwargs]")),
            },
            Some(_) => return Err(bad(K, "call is not null or an array")),
        };
        self.open_remote(id)?;
        self.events.push_back(Event::ExecRequested {
            channel: ChannelId(id),
            request: ExecRequest { source, call },
        });
        Ok(())
    }

    fn on_data(&mut self, id: u32, payload: &[u8], last: bool) -> Result<(), ProtocolError> {
        let kind = if last {
            FrameKind::Data
        } else {
            FrameKind::DataMore
        };
        let max_item = self.config.max_item;
        let max_depth = self.config.max_depth;
        let threshold = window_threshold(self.config.window);
        self.ensure_channel(id)?;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownChannel(id))?;
        ch.check_peer_sending(kind.name())?;
        let n = payload.len() as u64;
        if n > ch.recv_credit {
            return Err(ProtocolError::CreditExceeded {
                channel: id,
                length: payload.len() as u32,
                credit: ch.recv_credit,
            });
        }
        ch.recv_credit -= n;
        if !last && n == 0 {
            return Err(bad(kind, "empty DATA_MORE"));
        }
        let size = ch.reassembly.len() as u64 + n;
        if size > max_item {
            return Err(ProtocolError::ItemTooLarge {
                channel: id,
                size,
                max: max_item,
            });
        }
        if ch.closing() {
            // Crossed our CLOSE: dropped. Until our CLOSE is out, give the
            // credit back so a peer blocked on it can make progress.
            ch.reassembly = Vec::new();
            if !ch.sent_close {
                ch.owed += n + mem::take(&mut ch.held);
                if ch.owed >= threshold && !ch.in_windows {
                    ch.in_windows = true;
                    self.windows.push(id);
                }
            }
            return Ok(());
        }
        if !last {
            ch.reassembly.extend_from_slice(payload);
            if ch.waiting == 0 {
                // The application keeps up: return the chunk's credit at
                // once, so an item larger than the window flows through.
                ch.owed += n;
                if ch.owed >= threshold && !ch.in_windows {
                    ch.in_windows = true;
                    self.windows.push(id);
                }
            } else {
                // Items are waiting: hold the credit with this item, so
                // waiting items never hold more than a window.
                ch.held += n;
            }
            return Ok(());
        }
        // The item's credit: this chunk plus what was held for it.
        let credit = n + mem::take(&mut ch.held);
        ch.waiting = ch.waiting.saturating_add(1);
        self.refs.clear();
        let decoded = if ch.reassembly.is_empty() {
            decode_item(payload, max_depth, &mut self.refs)
        } else {
            let mut item = mem::take(&mut ch.reassembly);
            item.extend_from_slice(payload);
            decode_item(&item, max_depth, &mut self.refs)
        };
        let value = decoded.map_err(|error| ProtocolError::BadItem { channel: id, error })?;
        for i in 0..self.refs.len() {
            let r = self.refs[i];
            if self.channels.contains_key(&r) {
                continue;
            }
            if self.is_own_parity(r) {
                if u64::from(r) >= self.next_id {
                    return Err(ProtocolError::UnknownChannel(r));
                }
                // A reference to one of our channels that is already
                // forgotten: the receiver's handle is simply closed.
            } else {
                self.open_remote(r)?;
            }
        }
        self.events.push_back(Event::Data {
            channel: ChannelId(id),
            value,
            // Unreturned credit never exceeds the window, a u32.
            credit: u32::try_from(credit).unwrap_or(u32::MAX),
        });
        Ok(())
    }

    fn on_close(&mut self, id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Close;
        let error = payload_text(K, payload, self.config.max_depth)?;
        self.ensure_channel(id)?;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownChannel(id))?;
        if ch.recv_close {
            return Err(ProtocolError::UnexpectedFrame {
                kind: K.name(),
                reason: "second CLOSE",
            });
        }
        ch.recv_close = true;
        ch.drop_queue();
        ch.reassembly = Vec::new();
        if !ch.ended {
            ch.ended = true;
            let how = match error {
                Some(text) => ChannelEnd::RemoteError(text),
                None => ChannelEnd::Closed,
            };
            self.events.push_back(Event::ChannelEnded {
                channel: ChannelId(id),
                how,
            });
        }
        if ch.sent_close {
            self.channels.remove(&id);
            return Ok(());
        }
        if !matches!(ch.pending_end, Some(PendingEnd::Close(_))) {
            ch.pending_end = Some(PendingEnd::Close(None));
        }
        if !ch.in_ready {
            ch.in_ready = true;
            self.ready.push_back(id);
        }
        Ok(())
    }

    fn on_last_message(&mut self, id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::LastMessage;
        if !payload.is_empty() {
            return Err(bad(K, "payload must be empty"));
        }
        self.ensure_channel(id)?;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownChannel(id))?;
        ch.check_peer_sending(K.name())?;
        if ch.closing() {
            return Ok(());
        }
        ch.recv_last = true;
        if !ch.ended {
            ch.ended = true;
            self.events.push_back(Event::ChannelEnded {
                channel: ChannelId(id),
                how: ChannelEnd::Closed,
            });
        }
        Ok(())
    }

    fn on_window(&mut self, id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Window;
        let grant = payload_uint(K, payload)?;
        self.ensure_channel(id)?;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownChannel(id))?;
        if ch.sent_close {
            return Ok(());
        }
        let credit = ch.send_credit.saturating_add(grant);
        if credit > u64::from(u32::MAX) {
            return Err(ProtocolError::WindowOverflow { channel: id });
        }
        ch.send_credit = credit;
        if ch.is_ready() && !ch.in_ready {
            ch.in_ready = true;
            self.ready.push_back(id);
        }
        Ok(())
    }

    fn on_terminate(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        let reason = payload_text(FrameKind::Terminate, payload, self.config.max_depth)?;
        self.peer_terminated = Some(reason.clone());
        if self.sent_terminate || self.terminate_requested.is_some() {
            // Our own TERMINATE (queued or sent) answers it.
            self.write_terminate();
            self.finish(TerminateReason::Clean);
            return Ok(());
        }
        match self.role {
            Role::Host => {
                self.terminate_requested = Some(None);
                self.write_terminate();
                self.finish(TerminateReason::PeerInitiated(reason));
            }
            Role::Worker => {
                self.events.push_back(Event::TerminateRequested { reason });
            }
        }
        Ok(())
    }

    fn on_status_reply(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::StatusReply;
        let map = payload_value(K, payload, self.config.max_depth)?;
        let id = uint_field(K, &map, "id")?;
        let status = Status {
            numchannels: uint_field(K, &map, "numchannels")?,
            numexecuting: uint_field(K, &map, "numexecuting")?,
            execmodel: text_field(K, &map, "execmodel")?,
        };
        self.events.push_back(Event::StatusReply { id, status });
        Ok(())
    }

    fn on_output(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Output;
        let value = payload_value(K, payload, self.config.max_depth)?;
        let (fd, bytes) = match value {
            Value::List(items) => match <[Value; 2]>::try_from(items) {
                Ok([Value::Int(fd @ (1 | 2)), Value::Bytes(bytes)]) => (fd as u8, bytes),
                _ => return Err(bad(K, "not [1 or 2, bytes]")),
            },
            _ => return Err(bad(K, "not an array")),
        };
        self.events.push_back(Event::Output { fd, bytes });
        Ok(())
    }
}

/// A short-lived handle on one channel, borrowed from
/// [`Session::channel`].
#[derive(Debug)]
pub struct ChannelMut<'a> {
    session: &'a mut Session,
    id: u32,
}

impl ChannelMut<'_> {
    /// This channel's id.
    pub fn id(&self) -> ChannelId {
        ChannelId(self.id)
    }

    /// Encodes and queues one item. `Err(WouldBlock)` when the channel
    /// already buffers a window's worth of unsent bytes (retry after
    /// [`Event::WindowOpened`]); `Err(ItemTooLarge)`, `Err(Unrepresentable)`
    /// and `Err(Closed)` send nothing and leave the channel usable.
    pub fn send(&mut self, value: &Value) -> Result<(), LocalError> {
        self.check_send()?;
        let hint = match value {
            Value::Bytes(b) => b.len() + 9,
            Value::Str(s) => s.len() + 9,
            _ => 16,
        };
        let mut item = Vec::with_capacity(hint);
        codec::encode(value, &mut item).map_err(|error| {
            let type_name = match &error {
                ValueError::Unhashable { type_name, .. } => type_name,
                _ => value.type_name(),
            };
            LocalError::Unrepresentable { type_name, error }
        })?;
        self.enqueue(item)
    }

    /// The same with a pre-encoded CBOR item (fast path; the core validates
    /// nothing but its size).
    pub fn send_encoded(&mut self, item: Vec<u8>) -> Result<(), LocalError> {
        self.check_send()?;
        if item.is_empty() {
            return Err(LocalError::EmptyItem);
        }
        self.enqueue(item)
    }

    /// Closes the channel after its queued items: sends CLOSE, ends the
    /// channel here with [`ChannelEnd::ClosedLocally`], and drops items that
    /// arrive later.
    pub fn close(&mut self) -> Result<(), LocalError> {
        self.close_inner(None)
    }

    /// Closes the channel with an error text the peer receives (once, after
    /// the queued items).
    pub fn close_with_error(&mut self, error: &str) -> Result<(), LocalError> {
        self.close_inner(Some(error.to_owned()))
    }

    /// Half-close: sends LAST_MESSAGE after the queued items; this side may
    /// still receive (a callback still consumes), but sends no more items.
    pub fn half_close(&mut self) -> Result<(), LocalError> {
        self.session.check_commands()?;
        let s = &mut *self.session;
        let ch = s
            .channels
            .get_mut(&self.id)
            .ok_or(LocalError::UnknownChannel(self.id))?;
        if !ch.accepts_items() {
            return Err(LocalError::Closed);
        }
        ch.pending_end = Some(PendingEnd::Last);
        if ch.is_ready() && !ch.in_ready {
            ch.in_ready = true;
            s.ready.push_back(self.id);
        }
        Ok(())
    }

    /// The application consumed an item delivered with `credit`
    /// ([`Event::Data`]): call it once per item. The credit goes back to the
    /// peer (batched: a WINDOW frame leaves once half a window is owed), and
    /// when no delivered item is left unconsumed, so does the credit held
    /// for an item still being reassembled (protocol.md §6.2).
    pub fn consumed(&mut self, credit: u32) {
        let s = &mut *self.session;
        let threshold = window_threshold(s.config.window);
        let Some(ch) = s.channels.get_mut(&self.id) else {
            return;
        };
        if credit == 0 || ch.closing() || ch.recv_close {
            return;
        }
        ch.owed += u64::from(credit);
        ch.waiting = ch.waiting.saturating_sub(1);
        if ch.waiting == 0 {
            // The last waiting item is consumed: release what was held for
            // the item being reassembled (protocol.md §6.2).
            ch.owed += mem::take(&mut ch.held);
        }
        if ch.owed >= threshold && !ch.in_windows {
            ch.in_windows = true;
            s.windows.push(self.id);
        }
    }

    /// Whether a `send` would be accepted now, registering interest when it
    /// would not: if the channel buffers a window's worth of unsent bytes,
    /// [`Event::WindowOpened`] is emitted once room returns. A driver that
    /// asks before sending (so that no item is handed over only to be refused
    /// with `WouldBlock`) waits for that event; [`can_send`](Self::can_send)
    /// only looks and registers nothing.
    pub fn poll_send_ready(&mut self) -> bool {
        self.check_send().is_ok()
    }

    /// Whether a `send` would be accepted now (a pure query: see
    /// [`poll_send_ready`](Self::poll_send_ready) to be woken when it would).
    pub fn can_send(&self) -> bool {
        self.session.check_commands().is_ok()
            && self.session.channels.get(&self.id).is_some_and(|ch| {
                ch.accepts_items() && ch.queued_bytes < u64::from(self.session.config.window)
            })
    }

    /// Whether [`Event::ChannelEnded`] was emitted for this channel.
    pub fn is_ended(&self) -> bool {
        self.session
            .channels
            .get(&self.id)
            .map_or(true, |ch| ch.ended)
    }

    /// Untransmitted bytes queued on this channel.
    pub fn queued_bytes(&self) -> u64 {
        self.session
            .channels
            .get(&self.id)
            .map_or(0, |ch| ch.queued_bytes)
    }

    fn check_send(&mut self) -> Result<(), LocalError> {
        self.session.check_commands()?;
        let window = u64::from(self.session.config.window);
        let ch = self
            .session
            .channels
            .get_mut(&self.id)
            .ok_or(LocalError::UnknownChannel(self.id))?;
        if !ch.accepts_items() {
            return Err(LocalError::Closed);
        }
        if ch.queued_bytes >= window {
            ch.blocked = true;
            return Err(LocalError::WouldBlock);
        }
        Ok(())
    }

    fn enqueue(&mut self, item: Vec<u8>) -> Result<(), LocalError> {
        let s = &mut *self.session;
        let size = item.len() as u64;
        if size > s.config.max_item {
            return Err(LocalError::ItemTooLarge {
                size,
                max: s.config.max_item,
            });
        }
        let ch = s
            .channels
            .get_mut(&self.id)
            .ok_or(LocalError::UnknownChannel(self.id))?;
        ch.queued_bytes += size;
        ch.queue.push_back(item);
        if ch.is_ready() && !ch.in_ready {
            ch.in_ready = true;
            s.ready.push_back(self.id);
        }
        Ok(())
    }

    fn close_inner(&mut self, error: Option<String>) -> Result<(), LocalError> {
        self.session.check_commands()?;
        let s = &mut *self.session;
        let ch = s
            .channels
            .get_mut(&self.id)
            .ok_or(LocalError::UnknownChannel(self.id))?;
        if ch.closing() {
            return Err(LocalError::Closed);
        }
        // The error text must fit one frame.
        let error = error.map(|text| truncate_text(text, s.config.max_frame));
        ch.pending_end = Some(PendingEnd::Close(error));
        ch.reassembly = Vec::new();
        if !ch.ended {
            ch.ended = true;
            s.events.push_back(Event::ChannelEnded {
                channel: ChannelId(self.id),
                how: ChannelEnd::ClosedLocally,
            });
        }
        if ch.is_ready() && !ch.in_ready {
            ch.in_ready = true;
            s.ready.push_back(self.id);
        }
        Ok(())
    }
}

// ---- payload helpers ----

/// Cuts `text` (at a character boundary) so that its CBOR encoding fits a
/// frame of `max_frame` bytes.
fn truncate_text(mut text: String, max_frame: u32) -> String {
    let max = (max_frame as usize).saturating_sub(9);
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn window_threshold(window: u32) -> u64 {
    u64::from((window / 2).max(1))
}

fn unrepresentable(what: &'static str) -> impl Fn(ValueError) -> LocalError {
    move |error| LocalError::Unrepresentable {
        type_name: match &error {
            ValueError::Unhashable { type_name, .. } => type_name,
            _ => what,
        },
        error,
    }
}

fn bad(kind: FrameKind, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::BadPayload {
        kind: kind.name(),
        reason: reason.into(),
    }
}

fn payload_value(kind: FrameKind, payload: &[u8], max_depth: u32) -> Result<Value, ProtocolError> {
    codec::decode(payload, max_depth).map_err(|e| bad(kind, e.to_string()))
}

/// Empty, or one CBOR text string.
fn payload_text(
    kind: FrameKind,
    payload: &[u8],
    max_depth: u32,
) -> Result<Option<String>, ProtocolError> {
    if payload.is_empty() {
        return Ok(None);
    }
    match payload_value(kind, payload, max_depth)? {
        Value::Str(s) => Ok(Some(s)),
        _ => Err(bad(kind, "not a text string")),
    }
}

/// One CBOR unsigned integer.
fn payload_uint(kind: FrameKind, payload: &[u8]) -> Result<u64, ProtocolError> {
    let mut d = minicbor::Decoder::new(payload);
    match (d.datatype(), d.u64()) {
        (
            Ok(
                minicbor::data::Type::U8
                | minicbor::data::Type::U16
                | minicbor::data::Type::U32
                | minicbor::data::Type::U64,
            ),
            Ok(n),
        ) if d.position() == payload.len() => Ok(n),
        _ => Err(bad(kind, "not one unsigned integer")),
    }
}

fn uint_field(kind: FrameKind, map: &Value, key: &'static str) -> Result<u64, ProtocolError> {
    match map.get(key) {
        Some(Value::Int(n)) if *n >= 0 => Ok(*n as u64),
        Some(Value::BigInt(b)) => {
            u64::try_from(b).map_err(|_| bad(kind, format!("{key} out of range")))
        }
        Some(_) => Err(bad(kind, format!("{key} is not an unsigned integer"))),
        None => Err(bad(kind, format!("missing {key}"))),
    }
}

fn text_field(kind: FrameKind, map: &Value, key: &'static str) -> Result<String, ProtocolError> {
    match map.get(key) {
        Some(Value::Str(s)) => Ok(s.clone()),
        Some(_) => Err(bad(kind, format!("{key} is not text"))),
        None => Err(bad(kind, format!("missing {key}"))),
    }
}

/// Writes the shortest CBOR head of major type 0 for `n`; returns its length.
fn cbor_uint(out: &mut [u8; 9], n: u64) -> usize {
    if n < 24 {
        out[0] = n as u8;
        1
    } else if n <= 0xff {
        out[0] = 0x18;
        out[1] = n as u8;
        2
    } else if n <= 0xffff {
        out[0] = 0x19;
        out[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        3
    } else if n <= 0xffff_ffff {
        out[0] = 0x1a;
        out[1..5].copy_from_slice(&(n as u32).to_be_bytes());
        5
    } else {
        out[0] = 0x1b;
        out[1..9].copy_from_slice(&n.to_be_bytes());
        9
    }
}

/// Appends a CLOSE frame, with the error as a CBOR text string if any.
fn write_close(out: &mut Vec<u8>, id: u32, error: Option<&str>) {
    match error {
        None => write_header(out, FrameKind::Close, id, 0),
        Some(text) => {
            let mut payload = Vec::with_capacity(text.len() + 9);
            let _ = codec::encode(&Value::str(text), &mut payload);
            write_frame(out, FrameKind::Close, id, &payload);
        }
    }
}
