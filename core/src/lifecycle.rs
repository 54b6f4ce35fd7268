//! The channel lifecycle (protocol.md §6.1) as one table: state × event →
//! outcome, in the manner of h11's `_state.py`.
//!
//! A channel's state on one side is what this side did to end it
//! ([`Local`]) and what the peer did ([`Remote`]). Every lifecycle event
//! ([`ChannelEvent`]) looks its outcome up in [`TABLE`]: the next state, or
//! [`Outcome::Refused`] (a local command not allowed now:
//! `LocalError::Closed`), or [`Outcome::Violation`] (a frame the peer may
//! not send now). The session asks nothing else to decide what a channel
//! may do; the derived questions ([`ChannelState::ended`],
//! [`ChannelState::closing`], ...) are read off the state.
//!
//! The worker (`bootstrap/worker.py`, `_LIFECYCLE`) holds the same table
//! literally. `core/tests/vectors/channel_policy.json` is generated from
//! [`TABLE`] (`EXECNET_BLESS=1 cargo test -p execnet-core --test
//! channel_policy`), and both `core/tests/channel_policy.rs` and
//! `bootstrap/tests/test_channel_policy.py` check their table against it, so
//! neither side can change alone.

/// What this side did to end the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Local {
    /// Nothing: items may be sent.
    Open,
    /// LAST_MESSAGE accepted, waiting behind queued items.
    LastQueued,
    /// LAST_MESSAGE transmitted.
    LastSent,
    /// CLOSE accepted (a local close, or the answer to the peer's CLOSE),
    /// waiting behind queued items.
    CloseQueued,
    /// CLOSE transmitted.
    CloseSent,
}

/// What the peer did to end the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Remote {
    /// Nothing: items may arrive.
    Open,
    /// LAST_MESSAGE received.
    Last,
    /// CLOSE received.
    Closed,
}

/// One side's state of one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelState {
    /// This side's part.
    pub local: Local,
    /// The peer's part.
    pub remote: Remote,
}

/// What can happen to a channel's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelEvent {
    /// A local `send` queues an item.
    Send,
    /// A local half-close (LAST_MESSAGE after the queued items).
    HalfClose,
    /// A local close (CLOSE after the queued items).
    Close,
    /// The queued LAST_MESSAGE went out.
    LastTransmitted,
    /// The queued CLOSE went out.
    CloseTransmitted,
    /// DATA or DATA_MORE arrived.
    RecvData,
    /// LAST_MESSAGE arrived.
    RecvLast,
    /// CLOSE arrived.
    RecvClose,
}

/// The outcome of an event in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Allowed: the channel moves to this state.
    To(ChannelState),
    /// A local command that is not allowed in this state.
    Refused,
    /// A frame the peer may not send in this state.
    Violation,
}

impl Local {
    /// Every value, in table order.
    pub const ALL: [Local; 5] = [
        Local::Open,
        Local::LastQueued,
        Local::LastSent,
        Local::CloseQueued,
        Local::CloseSent,
    ];

    /// The name used in the golden file and the worker's table.
    pub fn name(self) -> &'static str {
        match self {
            Local::Open => "open",
            Local::LastQueued => "last_queued",
            Local::LastSent => "last_sent",
            Local::CloseQueued => "close_queued",
            Local::CloseSent => "close_sent",
        }
    }
}

impl Remote {
    /// Every value, in table order.
    pub const ALL: [Remote; 3] = [Remote::Open, Remote::Last, Remote::Closed];

    /// The name used in the golden file and the worker's table.
    pub fn name(self) -> &'static str {
        match self {
            Remote::Open => "open",
            Remote::Last => "last",
            Remote::Closed => "closed",
        }
    }
}

impl ChannelEvent {
    /// Every event, in table order.
    pub const ALL: [ChannelEvent; 8] = [
        ChannelEvent::Send,
        ChannelEvent::HalfClose,
        ChannelEvent::Close,
        ChannelEvent::LastTransmitted,
        ChannelEvent::CloseTransmitted,
        ChannelEvent::RecvData,
        ChannelEvent::RecvLast,
        ChannelEvent::RecvClose,
    ];

    /// The name used in the golden file and the worker's table.
    pub fn name(self) -> &'static str {
        match self {
            ChannelEvent::Send => "send",
            ChannelEvent::HalfClose => "half_close",
            ChannelEvent::Close => "close",
            ChannelEvent::LastTransmitted => "last_transmitted",
            ChannelEvent::CloseTransmitted => "close_transmitted",
            ChannelEvent::RecvData => "recv_data",
            ChannelEvent::RecvLast => "recv_last",
            ChannelEvent::RecvClose => "recv_close",
        }
    }

    /// Whether the peer causes it (a disallowed one is a violation), rather
    /// than a local command (a disallowed one is refused).
    pub fn is_remote(self) -> bool {
        matches!(
            self,
            ChannelEvent::RecvData | ChannelEvent::RecvLast | ChannelEvent::RecvClose
        )
    }
}

// Short names for the table below.
use ChannelEvent as E;
use Local::{CloseQueued as CQ, CloseSent as CS, LastQueued as LQ, LastSent as LS, Open as LO};
use Remote::{Closed as RC, Last as RL, Open as RO};

const fn st(local: Local, remote: Remote) -> ChannelState {
    ChannelState { local, remote }
}

/// Every allowed transition: `(state, event, next state)`. A pair not
/// listed is refused (local event) or a violation (remote event).
pub const TRANSITIONS: &[(ChannelState, ChannelEvent, ChannelState)] = &[
    // Sending items: only while this side has not ended its sending and the
    // peer has not closed (a peer's LAST_MESSAGE still lets us send).
    (st(LO, RO), E::Send, st(LO, RO)),
    (st(LO, RL), E::Send, st(LO, RL)),
    // Half-close: the same condition; this side may still receive.
    (st(LO, RO), E::HalfClose, st(LQ, RO)),
    (st(LO, RL), E::HalfClose, st(LQ, RL)),
    // Close: once per channel (the peer's CLOSE queues ours as an answer).
    (st(LO, RO), E::Close, st(CQ, RO)),
    (st(LO, RL), E::Close, st(CQ, RL)),
    (st(LQ, RO), E::Close, st(CQ, RO)),
    (st(LQ, RL), E::Close, st(CQ, RL)),
    (st(LS, RO), E::Close, st(CQ, RO)),
    (st(LS, RL), E::Close, st(CQ, RL)),
    // The queued end goes out after the queued items.
    (st(LQ, RO), E::LastTransmitted, st(LS, RO)),
    (st(LQ, RL), E::LastTransmitted, st(LS, RL)),
    (st(CQ, RO), E::CloseTransmitted, st(CS, RO)),
    (st(CQ, RL), E::CloseTransmitted, st(CS, RL)),
    // Both CLOSEs: the channel is fully closed and forgotten.
    (st(CQ, RC), E::CloseTransmitted, st(CS, RC)),
    // Items arrive until the peer's LAST_MESSAGE or CLOSE (dropped once
    // this side is closing).
    (st(LO, RO), E::RecvData, st(LO, RO)),
    (st(LQ, RO), E::RecvData, st(LQ, RO)),
    (st(LS, RO), E::RecvData, st(LS, RO)),
    (st(CQ, RO), E::RecvData, st(CQ, RO)),
    (st(CS, RO), E::RecvData, st(CS, RO)),
    // The peer's LAST_MESSAGE; ignored (the state stays) once this side is
    // closing, as the items it follows are.
    (st(LO, RO), E::RecvLast, st(LO, RL)),
    (st(LQ, RO), E::RecvLast, st(LQ, RL)),
    (st(LS, RO), E::RecvLast, st(LS, RL)),
    (st(CQ, RO), E::RecvLast, st(CQ, RO)),
    (st(CS, RO), E::RecvLast, st(CS, RO)),
    // The peer's CLOSE, once: this side answers with its own CLOSE (queued
    // behind nothing: its unsent items are dropped) unless it sent one.
    (st(LO, RO), E::RecvClose, st(CQ, RC)),
    (st(LO, RL), E::RecvClose, st(CQ, RC)),
    (st(LQ, RO), E::RecvClose, st(CQ, RC)),
    (st(LQ, RL), E::RecvClose, st(CQ, RC)),
    (st(LS, RO), E::RecvClose, st(CQ, RC)),
    (st(LS, RL), E::RecvClose, st(CQ, RC)),
    (st(CQ, RO), E::RecvClose, st(CQ, RC)),
    (st(CQ, RL), E::RecvClose, st(CQ, RC)),
    (st(CS, RO), E::RecvClose, st(CS, RC)),
    (st(CS, RL), E::RecvClose, st(CS, RC)),
];

const STATES: usize = Local::ALL.len() * Remote::ALL.len();
const EVENTS: usize = ChannelEvent::ALL.len();

/// [`TRANSITIONS`] as a dense lookup table, built at compile time.
pub const TABLE: [[Outcome; EVENTS]; STATES] = build();

const fn index(s: ChannelState) -> usize {
    s.local as usize * Remote::ALL.len() + s.remote as usize
}

const fn build() -> [[Outcome; EVENTS]; STATES] {
    let mut table = [[Outcome::Refused; EVENTS]; STATES];
    // Remote events default to a violation.
    let mut i = 0;
    while i < STATES {
        table[i][E::RecvData as usize] = Outcome::Violation;
        table[i][E::RecvLast as usize] = Outcome::Violation;
        table[i][E::RecvClose as usize] = Outcome::Violation;
        i += 1;
    }
    let mut k = 0;
    while k < TRANSITIONS.len() {
        let (from, event, to) = TRANSITIONS[k];
        table[index(from)][event as usize] = Outcome::To(to);
        k += 1;
    }
    table
}

impl ChannelState {
    /// A new channel: open both ways.
    pub const OPEN: ChannelState = st(LO, RO);

    /// Every state, in table order.
    pub fn all() -> impl Iterator<Item = ChannelState> {
        Local::ALL
            .into_iter()
            .flat_map(|l| Remote::ALL.into_iter().map(move |r| st(l, r)))
    }

    /// The outcome of `event` in this state ([`TABLE`]).
    #[inline]
    pub fn next(self, event: ChannelEvent) -> Outcome {
        TABLE[index(self)][event as usize]
    }

    /// Whether `event` is allowed in this state.
    #[inline]
    pub fn allows(self, event: ChannelEvent) -> bool {
        matches!(self.next(event), Outcome::To(_))
    }

    /// The receive side has ended (`Event::ChannelEnded` is due once, when
    /// a transition makes this true): the peer sent LAST_MESSAGE or CLOSE,
    /// or this side is closing.
    pub fn ended(self) -> bool {
        self.remote != RO || self.closing()
    }

    /// This side closed or answered a CLOSE: arriving items are dropped.
    pub fn closing(self) -> bool {
        matches!(self.local, CQ | CS)
    }

    /// Both CLOSEs crossed: the side forgets the channel.
    pub fn fully_closed(self) -> bool {
        self.local == CS && self.remote == RC
    }

    /// The name used in the golden file and the worker's table
    /// (`local/remote`).
    pub fn name(self) -> String {
        format!("{}/{}", self.local.name(), self.remote.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_is_listed_once() {
        for (k, (from, event, _)) in TRANSITIONS.iter().enumerate() {
            for (from2, event2, _) in &TRANSITIONS[k + 1..] {
                assert!(
                    !(from == from2 && event == event2),
                    "{from:?} {event:?} twice"
                );
            }
        }
    }

    #[test]
    fn ended_is_reached_once_and_kept() {
        // No allowed transition leaves an ended state un-ended, so
        // "ChannelEnded exactly once" follows from the table.
        for s in ChannelState::all() {
            for e in ChannelEvent::ALL {
                if let Outcome::To(next) = s.next(e) {
                    assert!(!s.ended() || next.ended(), "{s:?} {e:?} -> {next:?}");
                }
            }
        }
    }

    #[test]
    fn a_fully_closed_channel_accepts_nothing() {
        let gone = st(CS, RC);
        for e in ChannelEvent::ALL {
            assert!(!gone.allows(e), "{e:?}");
        }
    }
}
