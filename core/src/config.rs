//! Every limit of a session, in one place.

/// The protocol version this crate speaks (protocol.md §4).
pub const PROTOCOL_VERSION: u32 = 1;

/// The smallest `max_frame` a session uses (smaller values are raised): it
/// leaves room for every gateway frame but HELLO.
pub const MIN_MAX_FRAME: u32 = 64;

/// Limits of a [`Session`](crate::Session). `Config::default()` is the set of
/// defaults of protocol.md §5.
///
/// A host's `max_frame`, `window` and `max_item` are announced in its HELLO
/// and used by **both** sides; a worker session adopts the host's values when
/// the HELLO arrives (its own values only bound the HELLO frame itself).
/// `max_depth` and `max_channels` are local to each side.
///
/// Build one with struct update syntax:
///
/// ```
/// let config = execnet_core::Config { window: 1 << 20, ..Default::default() };
/// assert_eq!(config.max_frame, 1 << 20);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest frame payload accepted or sent, in bytes (default 1 MiB).
    /// A header announcing more is a protocol violation before any
    /// allocation.
    pub max_frame: u32,
    /// Initial credit per channel and direction, in bytes (default 4 MiB).
    /// Bounds both what a sender buffers before `send` reports
    /// [`LocalError::WouldBlock`](crate::LocalError::WouldBlock) and what a
    /// receiver holds unconsumed.
    pub window: u32,
    /// Largest encoded item, in bytes (default 1 GiB). Larger items are
    /// refused at `send` and are a protocol violation when received.
    pub max_item: u64,
    /// Deepest nesting of arrays, maps and tags a decoded value may have
    /// (default 200).
    pub max_depth: u32,
    /// Most channels open at once on this side (default 65,536). A peer
    /// opening more is a protocol violation; a local open beyond it is
    /// [`LocalError::TooManyChannels`](crate::LocalError::TooManyChannels).
    pub max_channels: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame: 1 << 20,
            window: 4 << 20,
            max_item: 1 << 30,
            max_depth: 200,
            max_channels: 65_536,
        }
    }
}

impl Config {
    /// The same limits with degenerate values raised to workable minimums
    /// (a zero window or frame size would deadlock every channel).
    pub(crate) fn sanitized(mut self) -> Config {
        self.max_frame = self.max_frame.max(MIN_MAX_FRAME);
        self.window = self.window.max(1);
        self.max_item = self.max_item.max(1);
        self.max_depth = self.max_depth.max(1);
        self.max_channels = self.max_channels.max(1);
        self
    }
}
