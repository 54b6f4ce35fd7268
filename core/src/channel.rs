//! Channel ids and per-channel state (protocol.md §6).

use std::fmt;

/// A channel id: odd ids are allocated by the host, even ids by the worker,
/// 0 addresses the gateway itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
