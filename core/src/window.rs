//! The receive-window policy (protocol.md §6.2), in one place.
//!
//! A channel's receiver grants the sender `window` bytes of credit at first.
//! Every DATA or DATA_MORE payload spends credit; the receiver gives it back
//! in WINDOW frames as the application consumes items. The rules:
//!
//! - **Batching**: consumed credit is *owed* and goes back once
//!   [`grant_threshold`] (half a window) is owed, so a steady stream costs
//!   one WINDOW frame per half window, not one per item.
//! - **Items larger than the window**: while no delivered item waits
//!   unconsumed, a DATA_MORE chunk's credit is owed at once, so a big item
//!   flows through a small window.
//! - **Waiting items hold their credit**: while items wait, a DATA_MORE
//!   chunk's credit is *held* with the item being reassembled and returned
//!   with it (or when the last waiting item is consumed), so unconsumed
//!   items never hold more than a window.
//! - **Dropped items** (they crossed our CLOSE) give their credit back at
//!   once, so a peer blocked on credit can reach its CLOSE.
//!
//! The worker's mirror of this policy is the "window policy" section of
//! `bootstrap/worker.py` (`Gateway._w_*`); the constants and a set of
//! replayed cases are shared through `core/tests/vectors/channel_policy.json`
//! (generated from this file by `core/tests/channel_policy.rs`, checked by
//! `bootstrap/tests/test_channel_policy.py`). To change the policy, change
//! this file and that section, and regenerate the file (docs/architecture.md,
//! "Change the window policy").

/// Owed credit goes back in a WINDOW frame once `window / GRANT_DIVISOR`
/// is owed (half a window).
pub const GRANT_DIVISOR: u32 = 2;

/// The worker also returns owed credit from `window / EAGER_DIVISOR` up at
/// the points where one of its threads is about to block or sends on the
/// channel anyway (a sender is never stuck on less: it still has at least
/// half a window). The host has no such point: its session returns credit
/// as items are taken, and its driver's waits do not hold owed credit back
/// beyond [`GRANT_DIVISOR`]'s threshold. Shared with the worker through
/// `core/tests/vectors/channel_policy.json`.
pub const EAGER_DIVISOR: u32 = 16;

/// Owed credit goes back in a WINDOW frame once this much is owed: half the
/// window (at least 1 byte).
pub fn grant_threshold(window: u32) -> u64 {
    u64::from((window / GRANT_DIVISOR).max(1))
}

/// One channel's receive-side credit (see the module documentation). The
/// session keeps one per channel; it is public so that the policy can be
/// replayed on its own (the golden vectors of
/// `core/tests/channel_policy.rs`).
#[derive(Debug)]
pub struct RecvWindow {
    /// Credit the peer may still use before we return more.
    credit: u64,
    /// Credit consumed by the application (or returned for DATA_MORE) but
    /// not yet sent back in a WINDOW frame.
    owed: u64,
    /// Items delivered to the application and not consumed yet
    /// ("waiting items").
    waiting: u32,
    /// Credit of DATA_MORE chunks of the item being reassembled, held
    /// because items were waiting.
    held: u64,
    /// [`grant_threshold`] of the window.
    threshold: u64,
}

impl RecvWindow {
    /// A channel's receive credit with a fresh `window` granted.
    pub fn new(window: u32) -> RecvWindow {
        RecvWindow {
            credit: u64::from(window),
            owed: 0,
            waiting: 0,
            held: 0,
            threshold: grant_threshold(window),
        }
    }

    /// A payload of `n` bytes arrived: spends its credit. `Err(credit)`
    /// (the credit left) when the peer exceeded it.
    pub fn spend(&mut self, n: u64) -> Result<(), u64> {
        if n > self.credit {
            return Err(self.credit);
        }
        self.credit -= n;
        Ok(())
    }

    /// A DATA_MORE chunk of `n` bytes was buffered for reassembly. Returns
    /// whether a WINDOW frame is due.
    pub fn chunk_buffered(&mut self, n: u64) -> bool {
        if self.waiting == 0 {
            // The application keeps up: return the chunk's credit at once,
            // so an item larger than the window flows through.
            self.owe(n)
        } else {
            // Items are waiting: hold the credit with this item, so waiting
            // items never hold more than a window.
            self.held += n;
            false
        }
    }

    /// An item completed with a last chunk of `n` bytes and is delivered:
    /// returns the credit it holds until consumed (that chunk plus what was
    /// held for it).
    pub fn item_delivered(&mut self, n: u64) -> u64 {
        self.waiting = self.waiting.saturating_add(1);
        n + std::mem::take(&mut self.held)
    }

    /// The application consumed a delivered item holding `credit`. Returns
    /// whether a WINDOW frame is due.
    pub fn item_consumed(&mut self, credit: u64) -> bool {
        self.items_consumed(1, credit)
    }

    /// The application consumed `items` delivered items holding `credit`
    /// in all. Returns whether a WINDOW frame is due.
    pub fn items_consumed(&mut self, items: u32, credit: u64) -> bool {
        self.owed += credit;
        self.waiting = self.waiting.saturating_sub(items);
        if self.waiting == 0 {
            // The last waiting item is consumed: release what was held for
            // the item being reassembled.
            self.owed += std::mem::take(&mut self.held);
        }
        self.owed >= self.threshold
    }

    /// A payload of `n` bytes was dropped (it crossed our CLOSE): its credit,
    /// and what was held, go back. Returns whether a WINDOW frame is due.
    pub fn dropped(&mut self, n: u64) -> bool {
        let held = std::mem::take(&mut self.held);
        self.owe(n + held)
    }

    /// Takes the owed credit for a WINDOW frame (0: nothing owed) and counts
    /// it as granted again.
    pub fn grant(&mut self) -> u64 {
        // owed + credit never exceeds the window (a u32).
        let grant = std::mem::take(&mut self.owed);
        self.credit += grant;
        grant
    }

    fn owe(&mut self, n: u64) -> bool {
        self.owed += n;
        self.owed >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_credit_goes_back_from_half_a_window() {
        let mut w = RecvWindow::new(100);
        assert_eq!(grant_threshold(100), 50);
        w.spend(30).unwrap();
        assert_eq!(w.item_delivered(30), 30);
        assert!(!w.item_consumed(30), "30 < 50 owed: no WINDOW yet");
        w.spend(30).unwrap();
        assert_eq!(w.item_delivered(30), 30);
        assert!(w.item_consumed(30), "60 owed: a WINDOW is due");
        assert_eq!(w.grant(), 60);
        assert_eq!(w.grant(), 0);
        // 100 - 60 spent + 60 granted: the whole window again.
        assert_eq!(w.spend(101), Err(100));
    }

    #[test]
    fn chunks_flow_while_nothing_waits_and_are_held_while_items_wait() {
        let mut w = RecvWindow::new(100);
        // Nothing waits: a DATA_MORE chunk's credit is owed at once.
        w.spend(60).unwrap();
        assert!(w.chunk_buffered(60));
        assert_eq!(w.grant(), 60);
        // An item waits: the next chunks' credit is held with their item.
        w.spend(10).unwrap();
        assert_eq!(w.item_delivered(10), 10);
        w.spend(20).unwrap();
        assert!(!w.chunk_buffered(20));
        // The item completes carrying the held credit.
        w.spend(5).unwrap();
        assert_eq!(w.item_delivered(5), 25);
        assert!(!w.item_consumed(10));
        assert!(!w.item_consumed(25), "35 owed after both items: below half");
        assert_eq!(w.grant(), 35);
    }

    #[test]
    fn the_last_waiting_item_releases_what_was_held() {
        let mut w = RecvWindow::new(100);
        w.spend(10).unwrap();
        w.item_delivered(10);
        w.spend(40).unwrap();
        assert!(!w.chunk_buffered(40));
        // Consuming the only waiting item releases the 40 held for the
        // item still being reassembled.
        assert!(w.item_consumed(10));
        assert_eq!(w.grant(), 50);
    }

    #[test]
    fn a_dropped_payload_returns_its_credit_and_what_was_held() {
        let mut w = RecvWindow::new(100);
        w.spend(10).unwrap();
        w.item_delivered(10);
        w.spend(30).unwrap();
        w.chunk_buffered(30);
        w.spend(20).unwrap();
        assert!(w.dropped(20), "20 + 30 held = 50 owed");
        assert_eq!(w.grant(), 50);
    }
}
