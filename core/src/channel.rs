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

use std::collections::VecDeque;

use crate::lifecycle::{ChannelEvent, ChannelState, Local, Outcome};
use crate::value::Value;
use crate::window::RecvWindow;
use std::hash::{BuildHasherDefault, Hasher};

/// One side's state of one channel: its lifecycle state (the table of
/// [`crate::lifecycle`]), the send queue with its credit, and the receive
/// credit with reassembly and the received items.
#[derive(Debug)]
pub(crate) struct Channel {
    // ---- lifecycle (protocol.md §6.1) ----
    /// Where the channel is in its lifecycle; changed only through
    /// [`Channel::apply`].
    pub state: ChannelState,
    /// The error text of a queued CLOSE (`Local::CloseQueued`).
    pub close_error: Option<String>,

    // ---- sending ----
    /// Encoded items not yet (fully) transmitted; the front one may be
    /// partly sent (`front_offset` bytes of it).
    pub queue: VecDeque<Vec<u8>>,
    /// Bytes of the front item already transmitted.
    pub front_offset: usize,
    /// Untransmitted bytes in `queue`.
    pub queued_bytes: u64,
    /// Credit the peer granted us (protocol.md §6.2).
    pub send_credit: u64,
    /// A send returned `WouldBlock`; emit `WindowOpened` when room returns.
    pub blocked: bool,
    /// The id is in the session's ready list.
    pub in_ready: bool,

    // ---- receiving ----
    /// Receive credit (the window policy: [`crate::window`]).
    pub window: RecvWindow,
    /// The id is in the session's WINDOW list.
    pub in_windows: bool,
    /// The chunks of an item arriving in DATA_MORE frames.
    pub reassembly: Vec<u8>,
    /// Received items not taken yet, each with the credit it holds until it
    /// is taken (the window bounds their total: [`crate::window`]).
    pub received: VecDeque<(Value, u32)>,
    /// Items taken with `recv_held` whose credit is still held (a callback
    /// is running on them), and that credit.
    pub in_use: u32,
    pub in_use_credit: u64,
}

impl Channel {
    pub fn new(window: u32) -> Channel {
        Channel {
            state: ChannelState::OPEN,
            close_error: None,
            queue: VecDeque::new(),
            front_offset: 0,
            queued_bytes: 0,
            send_credit: u64::from(window),
            blocked: false,
            in_ready: false,
            window: RecvWindow::new(window),
            in_windows: false,
            reassembly: Vec::new(),
            received: VecDeque::new(),
            in_use: 0,
            in_use_credit: 0,
        }
    }

    /// Applies a lifecycle event ([`crate::lifecycle::TABLE`]): the state
    /// before it on success, `Err(outcome)` (refused or a violation) with
    /// the state unchanged.
    #[inline]
    pub fn apply(&mut self, event: ChannelEvent) -> Result<ChannelState, Outcome> {
        match self.state.next(event) {
            Outcome::To(next) => Ok(std::mem::replace(&mut self.state, next)),
            other => Err(other),
        }
    }

    /// `send` may queue an item now.
    pub fn accepts_items(&self) -> bool {
        self.state.allows(ChannelEvent::Send)
    }

    /// A LAST_MESSAGE or CLOSE waits to be transmitted.
    pub fn end_queued(&self) -> bool {
        matches!(self.state.local, Local::LastQueued | Local::CloseQueued)
    }

    /// Something can be transmitted now: an item chunk within credit, or the
    /// pending end once the queue is empty.
    pub fn is_ready(&self) -> bool {
        if self.queue.is_empty() {
            self.end_queued()
        } else {
            self.send_credit > 0
        }
    }

    /// Puts the channel on the session's ready list (`ready`) if it can
    /// transmit something and is not on it yet.
    pub fn schedule(&mut self, id: u32, ready: &mut VecDeque<u32>) {
        if self.is_ready() && !self.in_ready {
            self.in_ready = true;
            ready.push_back(id);
        }
    }

    /// Puts the channel on the session's WINDOW list when a WINDOW frame is
    /// `due` (the window policy said so) and it is not on it yet.
    pub fn want_window(&mut self, due: bool, id: u32, windows: &mut Vec<u32>) {
        if due && !self.in_windows {
            self.in_windows = true;
            windows.push(id);
        }
    }

    /// Drops every untransmitted item (the peer closed, or the session ends).
    pub fn drop_queue(&mut self) {
        self.queue.clear();
        self.front_offset = 0;
        self.queued_bytes = 0;
    }
}

/// A fast, deterministic hasher for channel ids (they are small integers the
/// peer chooses; SipHash's DoS resistance buys nothing behind
/// `max_channels`, and determinism keeps runs reproducible).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Fold the well-mixed high bits of the product into the low bits
        // (ids share their low bit: all odd or all even).
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The channel table.
pub(crate) type ChannelMap = std::collections::HashMap<u32, Channel, BuildHasherDefault<IdHasher>>;
