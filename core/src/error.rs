//! The three error types, split by blame.
//!
//! - [`ProtocolError`]: the peer (or the byte stream) broke protocol.md. Fatal
//!   and sticky: the session is over and every channel ends with it, which is
//!   why it is `Clone + PartialEq`.
//! - [`LocalError`]: the local caller asked for something impossible right
//!   now. Nothing was sent and the session (and channel) stay usable.
//! - [`ValueError`]: a value could not be encoded, decoded or converted.

use thiserror::Error;

/// A violation of the wire protocol, or the loss of the connection.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// End of stream between frames before the peer's TERMINATE.
    #[error("connection lost: end of stream without TERMINATE")]
    ConnectionLost,
    /// End of stream in the middle of a frame.
    #[error("truncated frame: end of stream with {buffered} bytes of an incomplete frame")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// A header announced a payload longer than `max_frame`.
    #[error("frame too large: payload length {length} exceeds max_frame {max}")]
    FrameTooLarge {
        /// The announced payload length.
        length: u32,
        /// The limit in force.
        max: u32,
    },
    /// A frame kind not in protocol.md §3.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A payload that does not decode as its frame kind requires.
    #[error("bad {kind} payload: {reason}")]
    BadPayload {
        /// The frame kind's name.
        kind: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A frame sent in the wrong direction (e.g. EXEC to a host).
    #[error("{kind} frame sent in the wrong direction")]
    WrongDirection {
        /// The frame kind's name.
        kind: &'static str,
    },
    /// A gateway frame on a channel, or a channel frame on channel 0.
    #[error("{kind} frame on channel {channel}")]
    WrongChannel {
        /// The frame kind's name.
        kind: &'static str,
        /// The channel it named.
        channel: u32,
    },
    /// A frame naming a channel of this side's parity that this side never
    /// allocated or has forgotten.
    #[error("unknown channel {0}")]
    UnknownChannel(u32),
    /// A frame that the state machine does not allow now (before HELLO,
    /// after TERMINATE, data after the peer's CLOSE, a second CLOSE, ...).
    #[error("unexpected {kind} frame: {reason}")]
    UnexpectedFrame {
        /// The frame kind's name.
        kind: &'static str,
        /// Why it is not allowed.
        reason: &'static str,
    },
    /// The peer's HELLO announced another protocol version.
    #[error("version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        ours: u32,
        /// What the peer announced.
        theirs: u64,
    },
    /// The peer sent more item bytes than the credit it was granted.
    #[error("credit exceeded on channel {channel}: {length} bytes sent with {credit} granted")]
    CreditExceeded {
        /// The channel.
        channel: u32,
        /// The payload length received.
        length: u32,
        /// The credit that remained.
        credit: u64,
    },
    /// A WINDOW frame pushed the send credit past 2³² − 1.
    #[error("window overflow on channel {channel}")]
    WindowOverflow {
        /// The channel.
        channel: u32,
    },
    /// A reassembled item grew past `max_item`.
    #[error("item too large on channel {channel}: {size} bytes exceed max_item {max}")]
    ItemTooLarge {
        /// The channel.
        channel: u32,
        /// Bytes the item would have.
        size: u64,
        /// The limit in force.
        max: u64,
    },
    /// An item payload that is not exactly one well-formed value.
    #[error("bad item on channel {channel}: {error}")]
    BadItem {
        /// The channel.
        channel: u32,
        /// What the decoder found.
        error: ValueError,
    },
    /// The peer opened more channels than `max_channels`.
    #[error("too many channels: more than {max} open")]
    TooManyChannels {
        /// The limit in force.
        max: usize,
    },
    /// The peer ended the session on its own, with open channels (a worker
    /// that hit a protocol violation or an internal error says so in its
    /// TERMINATE reason, protocol.md §8, §11).
    #[error("the peer ended the session: {0}")]
    PeerTerminated(String),
    /// A frame arrived after the session was over.
    #[error("input after the session ended")]
    AfterEnd,
}

/// A command the local caller cannot do now. Nothing was sent.
#[derive(Clone, Debug, PartialEq, Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The channel already buffers a window's worth of unsent bytes; retry
    /// after [`Event::WindowOpened`](crate::Event::WindowOpened).
    #[error("channel send buffer is full (would block)")]
    WouldBlock,
    /// The channel is closed for sending (closed, half-closed, or closed by
    /// the peer).
    #[error("channel is closed")]
    Closed,
    /// The encoded item exceeds `max_item`.
    #[error("item too large: {size} bytes exceed max_item {max}")]
    ItemTooLarge {
        /// The encoded size.
        size: u64,
        /// The limit in force.
        max: u64,
    },
    /// The value cannot be sent to a Python peer (e.g. a list as dict key).
    #[error("cannot send {type_name}: {error}")]
    Unrepresentable {
        /// The Python type name at fault ("list", "dict", ...).
        type_name: &'static str,
        /// The encoder's error.
        error: ValueError,
    },
    /// `send_encoded` was given an empty buffer.
    #[error("an encoded item cannot be empty")]
    EmptyItem,
    /// The command is for the other role (e.g. `exec` on a worker).
    #[error("not allowed in this role")]
    WrongRole,
    /// The worker has not received the host HELLO yet.
    #[error("handshake not complete")]
    NotReady,
    /// The channel id is unknown or forgotten.
    #[error("unknown channel {0}")]
    UnknownChannel(u32),
    /// `max_channels` channels are open, or ids are exhausted.
    #[error("too many channels")]
    TooManyChannels,
    /// An argument is out of range (e.g. an OUTPUT fd other than 1 or 2).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The session is terminating or over (cleanly, lost, or violated).
    #[error("session terminated")]
    Terminated,
}

/// A value could not be encoded, decoded or converted.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ValueError {
    /// A dict key or set member Python cannot hash.
    #[error("unhashable type '{type_name}' as {context}")]
    Unhashable {
        /// Python type name: "list", "dict" or "set".
        type_name: &'static str,
        /// "dict key" or "set member".
        context: &'static str,
    },
    /// Nesting deeper than the limit.
    #[error("value nested deeper than {max}")]
    TooDeep {
        /// The limit in force.
        max: u32,
    },
    /// The input ended inside a value.
    #[error("truncated value")]
    Truncated,
    /// Bytes follow the value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// Indefinite-length strings, arrays or maps.
    #[error("indefinite length items are not allowed")]
    Indefinite,
    /// A tag not in protocol.md §7.1.
    #[error("unsupported tag {0}")]
    UnsupportedTag(u64),
    /// Any other malformed input (bad simple value, bad UTF-8, bad tag
    /// content, ...).
    #[error("malformed value: {0}")]
    Malformed(String),
    /// A serde conversion error (`to_value` / `from_value`).
    #[error("{0}")]
    Custom(String),
}

impl serde::ser::Error for ValueError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ValueError::Custom(msg.to_string())
    }
}

impl serde::de::Error for ValueError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ValueError::Custom(msg.to_string())
    }
}
