//! What the session reports and the payloads of its frames: [`Event`]
//! (with [`ChannelEnd`] and [`TerminateReason`]), the gateway messages
//! [`ExecRequest`], [`WorkerInfo`] and [`Status`] (protocol.md §4, §6, §9),
//! and the helpers that parse and write frame payloads.

use crate::channel::ChannelId;
use crate::codec;
use crate::error::{LocalError, ProtocolError, ValueError};
use crate::frame::{write_frame, write_header, FrameKind};
use crate::value::Value;

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
    /// Items wait on the channel: take them with
    /// [`ChannelMut::recv`](crate::ChannelMut::recv). Emitted when an item
    /// arrives on a channel that had none waiting (take them all, or ask
    /// again later: no second event comes for items already waiting).
    Readable {
        /// The channel.
        channel: ChannelId,
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

// ---- payload helpers (used by the session) ----

/// Cuts `text` (at a character boundary) so that its CBOR encoding fits a
/// frame of `max_frame` bytes.
pub(crate) fn truncate_text(mut text: String, max_frame: u32) -> String {
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

pub(crate) fn unrepresentable(what: &'static str) -> impl Fn(ValueError) -> LocalError {
    move |error| LocalError::Unrepresentable {
        type_name: match &error {
            ValueError::Unhashable { type_name, .. } => type_name,
            _ => what,
        },
        error,
    }
}

pub(crate) fn bad(kind: FrameKind, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::BadPayload {
        kind: kind.name(),
        reason: reason.into(),
    }
}

pub(crate) fn payload_value(
    kind: FrameKind,
    payload: &[u8],
    max_depth: u32,
) -> Result<Value, ProtocolError> {
    codec::decode(payload, max_depth).map_err(|e| bad(kind, e.to_string()))
}

/// Empty, or one CBOR text string.
pub(crate) fn payload_text(
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
pub(crate) fn payload_uint(kind: FrameKind, payload: &[u8]) -> Result<u64, ProtocolError> {
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

pub(crate) fn uint_field(
    kind: FrameKind,
    map: &Value,
    key: &'static str,
) -> Result<u64, ProtocolError> {
    match map.get(key) {
        Some(Value::Int(n)) if *n >= 0 => Ok(*n as u64),
        Some(Value::BigInt(b)) => {
            u64::try_from(b).map_err(|_| bad(kind, format!("{key} out of range")))
        }
        Some(_) => Err(bad(kind, format!("{key} is not an unsigned integer"))),
        None => Err(bad(kind, format!("missing {key}"))),
    }
}

pub(crate) fn text_field(
    kind: FrameKind,
    map: &Value,
    key: &'static str,
) -> Result<String, ProtocolError> {
    match map.get(key) {
        Some(Value::Str(s)) => Ok(s.clone()),
        Some(_) => Err(bad(kind, format!("{key} is not text"))),
        None => Err(bad(kind, format!("missing {key}"))),
    }
}

/// Writes the shortest CBOR head of major type 0 for `n`; returns its length.
pub(crate) fn cbor_uint(out: &mut [u8; 9], n: u64) -> usize {
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
pub(crate) fn write_close(out: &mut Vec<u8>, id: u32, error: Option<&str>) {
    match error {
        None => write_header(out, FrameKind::Close, id, 0),
        Some(text) => {
            let mut payload = Vec::with_capacity(text.len() + 9);
            let _ = codec::encode(&Value::str(text), &mut payload);
            write_frame(out, FrameKind::Close, id, &payload);
        }
    }
}
