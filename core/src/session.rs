//! The session: one side of a gateway (skeleton).

use std::time::{Duration, Instant};

use crate::channel::ChannelId;
use crate::config::Config;
use crate::error::{LocalError, ProtocolError};
use crate::value::Value;

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
    /// application has taken it.
    Data {
        /// The channel.
        channel: ChannelId,
        /// The item.
        value: Value,
        /// Credit to return with `consumed`.
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

/// One side of a gateway.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: Config,
}

impl Session {
    /// Host role: queues the host HELLO at once.
    pub fn new_host(config: Config, options: Value) -> Session {
        let _ = options;
        Session {
            role: Role::Host,
            config,
        }
    }
    /// Worker role: waits for the host HELLO, then answers with `info`.
    pub fn new_worker(config: Config, info: WorkerInfo) -> Session {
        let _ = info;
        Session {
            role: Role::Worker,
            config,
        }
    }
    /// Bytes from the transport.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let _ = bytes;
        todo!()
    }
    /// End of the input stream.
    pub fn handle_eof(&mut self) {
        todo!()
    }
    /// Applies the terminate deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }
    /// Appends bytes to transmit.
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>, limit: usize) -> usize {
        let _ = (buf, limit);
        todo!()
    }
    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }
    /// The next deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!()
    }
    /// Opens a channel.
    pub fn open_channel(&mut self) -> Result<ChannelId, LocalError> {
        todo!()
    }
    /// Host only: runs code on a new channel.
    pub fn exec(&mut self, request: ExecRequest) -> Result<ChannelId, LocalError> {
        let _ = request;
        todo!()
    }
    /// A handle on a channel.
    pub fn channel(&mut self, id: ChannelId) -> Option<ChannelMut<'_>> {
        let _ = id;
        todo!()
    }
    /// Starts a clean termination.
    pub fn terminate(&mut self, reason: Option<&str>, now: Instant, grace: Duration) {
        let _ = (reason, now, grace);
        todo!()
    }
    /// Host only: asks for the worker's status.
    pub fn request_status(&mut self) -> Result<u64, LocalError> {
        todo!()
    }
    /// Worker only: answers a status request.
    pub fn reply_status(&mut self, id: u64, status: &Status) -> Result<(), LocalError> {
        let _ = (id, status);
        todo!()
    }
    /// Worker only: forwards output.
    pub fn send_output(&mut self, fd: u8, bytes: &[u8]) -> Result<(), LocalError> {
        let _ = (fd, bytes);
        todo!()
    }
    /// This session's role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The worker's HELLO.
    pub fn remote_info(&self) -> Option<&WorkerInfo> {
        let _ = &self.config;
        todo!()
    }
    /// Whether the session is over.
    pub fn is_terminated(&self) -> bool {
        todo!()
    }
    /// The sticky violation.
    pub fn error(&self) -> Option<&ProtocolError> {
        todo!()
    }
}

/// A short-lived handle on one channel.
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
    /// Encodes and queues one item.
    pub fn send(&mut self, value: &Value) -> Result<(), LocalError> {
        let _ = (value, &self.session);
        todo!()
    }
    /// Queues one pre-encoded item.
    pub fn send_encoded(&mut self, item: Vec<u8>) -> Result<(), LocalError> {
        let _ = item;
        todo!()
    }
    /// Closes after queued items.
    pub fn close(&mut self) -> Result<(), LocalError> {
        todo!()
    }
    /// Closes with an error after queued items.
    pub fn close_with_error(&mut self, error: &str) -> Result<(), LocalError> {
        let _ = error;
        todo!()
    }
    /// Sends LAST_MESSAGE after queued items.
    pub fn half_close(&mut self) -> Result<(), LocalError> {
        todo!()
    }
    /// Returns credit of a consumed item.
    pub fn consumed(&mut self, credit: u32) {
        let _ = credit;
        todo!()
    }
    /// Whether a send would be accepted now.
    pub fn can_send(&self) -> bool {
        todo!()
    }
    /// Whether ChannelEnded was emitted.
    pub fn is_ended(&self) -> bool {
        todo!()
    }
}
