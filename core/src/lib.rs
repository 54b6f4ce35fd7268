//! The sans-IO protocol core of execnet (being written).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod channel;
pub mod codec;
pub mod config;
pub mod error;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod serde;
pub mod session;
pub mod value;

pub use channel::ChannelId;
pub use codec::{decode, encode};
pub use config::{Config, PROTOCOL_VERSION};
pub use error::{LocalError, ProtocolError, ValueError};
pub use serde::{from_value, to_value, CHANNEL_TOKEN};
pub use session::{
    ChannelEnd, ChannelMut, Event, ExecRequest, Role, Session, Status, TerminateReason, WorkerInfo,
};
pub use value::{BigInt, ChannelRef, Value};
