//! The sans-IO protocol core of execnet: frames, values, channels and
//! credit windows as a plain state machine, with no I/O, threads or clock.
//!
//! A [`Session`] is one side (host or worker) of a gateway. It never reads,
//! writes or sleeps: the driver hands it bytes, end of stream and the time,
//! and takes from it bytes to transmit, events and the next deadline. The
//! same code therefore runs under threads, an async runtime, a custom event
//! loop, or two sessions wired together in memory (how the tests and fuzz
//! targets exercise it). The wire format is the normative
//! `docs/protocol.md`; `tests/vectors/golden.json` holds byte-exact examples
//! shared with the Python worker.
//!
//! # Layout
//!
//! - [`config`]: every limit ([`Config`]), with the protocol defaults.
//! - [`error`]: [`ProtocolError`] (the peer broke the protocol: sticky and
//!   terminal), [`LocalError`] (a command cannot be done now: nothing sent),
//!   [`ValueError`] (a value cannot be encoded, decoded or converted).
//! - [`frame`]: the 9-byte header, the frame kinds, the incremental
//!   [`Deframer`](frame::Deframer).
//! - [`value`]: the [`Value`] model of a Python value, [`BigInt`],
//!   [`ChannelRef`].
//! - [`codec`]: CBOR [`encode`] / [`decode`] of values (tags and limits).
//! - [`serde`](mod@serde): [`to_value`] / [`from_value`] for any serde type, and the
//!   [`CHANNEL_TOKEN`] newtype trick for channel handles.
//! - [`channel`]: [`ChannelId`] and the per-channel state (lifecycle flags,
//!   send queue and credit, receive credit and reassembly).
//! - [`message`]: what a session reports ([`Event`], [`ChannelEnd`],
//!   [`TerminateReason`]) and the gateway messages ([`ExecRequest`],
//!   [`WorkerInfo`], [`Status`]) with their payload encodings.
//! - [`window`]: the receive-window policy (protocol.md §6.2), in one place.
//! - [`session`]: [`Session`], [`ChannelMut`]: handshake, exec, data, close,
//!   termination, status, output, fair scheduling (split by job:
//!   `session/receive.rs` frames in, `session/transmit.rs` frames out,
//!   `session/channel_handle.rs` the channel handle).
//! - `fuzzing` (feature `fuzzing`): the `Pair` harness, the `run_ops` model
//!   checker and the fuzz target bodies.
//!
//! # The run loop
//!
//! After **every** input (`handle_input`, `handle_eof`, `handle_timeout`) and
//! every command (`send`, `close`, `exec`, `recv`, `terminate`, ...),
//! drain the session in this order:
//!
//! 1. [`Session::poll_transmit`] until it returns 0, writing the bytes to the
//!    transport (it appends many small frames into one buffer; `limit` bounds
//!    one call);
//! 2. [`Session::poll_event`] until `None`, dispatching events (data to the
//!    channel's receiver, ends, exec requests, ...);
//! 3. [`Session::poll_timeout`], arming a timer for
//!    [`Session::handle_timeout`] (only set while a termination waits for the
//!    peer).
//!
//! Events can make the application issue commands (take an item, answer
//! a status request): drain again after those. Reading and writing are
//! independent: a driver must never block on writing while nobody reads, so
//! read in one place and flush from wherever bytes were produced.
//!
//! Flow control is per channel, and the session owns it whole, as
//! quinn-proto owns its stream buffers: received items wait in the session
//! ([`Event::Readable`] says a channel has some) until the application takes
//! them with [`ChannelMut::recv`]; taking an item returns its credit to the
//! peer in WINDOW frames (batched: when half a window is owed). A driver
//! never sees a credit figure. A peer can therefore never make this side
//! buffer more than `window` unconsumed bytes per channel. An application
//! that is not done with an item when it takes it (a callback runs on it)
//! uses [`ChannelMut::recv_held`] and [`ChannelMut::release_held`], so the
//! item keeps counting against the window meanwhile. On the sending side, [`ChannelMut::send`] accepts items
//! until a window's worth of bytes waits untransmitted, then returns
//! [`LocalError::WouldBlock`]; [`Event::WindowOpened`] says when to retry.
//! Other channels keep flowing meanwhile.
//!
//! Each channel reports [`Event::ChannelEnded`] exactly once, after every
//! item that arrived before its end. [`Event::Terminated`] is the last event
//! of a session.
//!
//! # Example
//!
//! A full driver loop over two sessions wired in memory is the `README.md`
//! example below (kept there so that `src/` never reads the clock, which a
//! driver must).
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod channel;
pub mod codec;
pub mod config;
pub mod error;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod lifecycle;
pub mod message;
pub mod serde;
pub mod session;
pub mod value;
pub mod window;

pub use channel::ChannelId;
pub use codec::{decode, encode};
pub use config::{Config, PROTOCOL_VERSION};
pub use error::{LocalError, ProtocolError, ValueError};
pub use serde::{from_value, to_value, CHANNEL_TOKEN};
pub use session::{
    ChannelEnd, ChannelMut, Event, ExecRequest, Role, Session, Status, TerminateReason, WorkerInfo,
};
pub use value::{BigInt, ChannelRef, OutOfRange, Value};
