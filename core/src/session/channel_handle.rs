//! [`ChannelMut`]: the short-lived handle through which commands act on one
//! channel.

use super::Session;
use crate::channel::ChannelId;
use crate::codec;
use crate::error::{LocalError, ValueError};
use crate::lifecycle::ChannelEvent;
use crate::message::{truncate_text, ChannelEnd, Event};
use crate::value::Value;

/// A short-lived handle on one channel, borrowed from
/// [`Session::channel`].
#[derive(Debug)]
pub struct ChannelMut<'a> {
    pub(super) session: &'a mut Session,
    pub(super) id: u32,
}

impl ChannelMut<'_> {
    /// This channel's id.
    pub fn id(&self) -> ChannelId {
        ChannelId(self.id)
    }

    /// Encodes and queues one item. `Err(WouldBlock)` when the channel
    /// already buffers a window's worth of unsent bytes (retry after
    /// [`Event::WindowOpened`]); `Err(ItemTooLarge)`, `Err(Unrepresentable)`
    /// and `Err(Closed)` send nothing and leave the channel usable.
    pub fn send(&mut self, value: &Value) -> Result<(), LocalError> {
        self.check_send()?;
        let hint = match value {
            Value::Bytes(b) => b.len() + 9,
            Value::Str(s) => s.len() + 9,
            _ => 16,
        };
        let mut item = Vec::with_capacity(hint);
        codec::encode(value, &mut item).map_err(|error| {
            let type_name = match &error {
                ValueError::Unhashable { type_name, .. } => type_name,
                _ => value.type_name(),
            };
            LocalError::Unrepresentable { type_name, error }
        })?;
        self.enqueue(item)
    }

    /// The same with a pre-encoded CBOR item (fast path; the core validates
    /// nothing but its size).
    pub fn send_encoded(&mut self, item: Vec<u8>) -> Result<(), LocalError> {
        self.check_send()?;
        if item.is_empty() {
            return Err(LocalError::EmptyItem);
        }
        self.enqueue(item)
    }

    /// Closes the channel after its queued items: sends CLOSE, ends the
    /// channel here with [`ChannelEnd::ClosedLocally`], and drops items that
    /// arrive later.
    pub fn close(&mut self) -> Result<(), LocalError> {
        self.close_inner(None)
    }

    /// Closes the channel with an error text the peer receives (once, after
    /// the queued items).
    pub fn close_with_error(&mut self, error: &str) -> Result<(), LocalError> {
        self.close_inner(Some(error.to_owned()))
    }

    /// Half-close: sends LAST_MESSAGE after the queued items; this side may
    /// still receive (a callback still consumes), but sends no more items.
    pub fn half_close(&mut self) -> Result<(), LocalError> {
        self.session.check_commands()?;
        let s = &mut *self.session;
        let ch = s.channels.get_mut(&self.id).ok_or(LocalError::Closed)?;
        ch.apply(ChannelEvent::HalfClose)
            .map_err(|_| LocalError::Closed)?;
        ch.schedule(self.id, &mut s.ready);
        Ok(())
    }

    /// Takes the next received item ([`Event::Readable`]), or `None` when
    /// none waits. Its credit goes back to the peer (batched: a WINDOW frame
    /// leaves once half a window is owed), and when no received item is left
    /// waiting, so does the credit held for an item still being reassembled
    /// (protocol.md §6.2). Items of a channel closed here, or by the peer,
    /// return no credit (nothing more may arrive).
    pub fn recv(&mut self) -> Option<Value> {
        let s = &mut *self.session;
        if let Some(value) = s.orphans_first(self.id) {
            return Some(value);
        }
        let ch = s.channels.get_mut(&self.id)?;
        let (value, credit) = ch.received.pop_front()?;
        if credit > 0 && !ch.state.closing() {
            let due = ch.window.item_consumed(u64::from(credit));
            ch.want_window(due, self.id, &mut s.windows);
        }
        Some(value)
    }

    /// Like [`recv`](Self::recv), but the item keeps holding its credit until
    /// [`release_held`](Self::release_held): for an application that is not
    /// done with the item when it takes it (a callback runs on it), so that
    /// what it holds still counts against the window.
    pub fn recv_held(&mut self) -> Option<Value> {
        let s = &mut *self.session;
        if let Some(value) = s.orphans_first(self.id) {
            return Some(value);
        }
        let ch = s.channels.get_mut(&self.id)?;
        let (value, credit) = ch.received.pop_front()?;
        ch.in_use += 1;
        ch.in_use_credit += u64::from(credit);
        Some(value)
    }

    /// The application is done with the items taken by
    /// [`recv_held`](Self::recv_held): their credit goes back as in `recv`.
    pub fn release_held(&mut self) {
        let s = &mut *self.session;
        let Some(ch) = s.channels.get_mut(&self.id) else {
            return;
        };
        let items = std::mem::take(&mut ch.in_use);
        let credit = std::mem::take(&mut ch.in_use_credit);
        if items == 0 || ch.state.closing() {
            return;
        }
        let due = ch.window.items_consumed(items, credit);
        ch.want_window(due, self.id, &mut s.windows);
    }

    /// Drops every received item still waiting, returning their credit (an
    /// application that will never take them, so that the peer is not left
    /// blocked on the window).
    pub fn discard_received(&mut self) {
        while self.recv().is_some() {}
    }

    /// The window credit the waiting received items hold (at most the
    /// window: protocol.md §6.2).
    pub fn received_credit(&self) -> u64 {
        self.session
            .channels
            .get(&self.id)
            .map_or(0, |ch| ch.received.iter().map(|(_, c)| u64::from(*c)).sum())
    }

    /// How many received items wait to be taken.
    pub fn received(&self) -> usize {
        let orphans = self.session.orphans.get(&self.id).map_or(0, |q| q.len());
        orphans
            + self
                .session
                .channels
                .get(&self.id)
                .map_or(0, |ch| ch.received.len())
    }

    /// Whether a `send` would be accepted now, registering interest when it
    /// would not: if the channel buffers a window's worth of unsent bytes,
    /// [`Event::WindowOpened`] is emitted once room returns. A driver that
    /// asks before sending (so that no item is handed over only to be refused
    /// with `WouldBlock`) waits for that event; [`can_send`](Self::can_send)
    /// only looks and registers nothing.
    pub fn poll_send_ready(&mut self) -> bool {
        self.check_send().is_ok()
    }

    /// Whether a `send` would be accepted now (a pure query: see
    /// [`poll_send_ready`](Self::poll_send_ready) to be woken when it would).
    pub fn can_send(&self) -> bool {
        self.session.check_commands().is_ok()
            && self.session.channels.get(&self.id).is_some_and(|ch| {
                ch.accepts_items() && ch.queued_bytes < u64::from(self.session.config.window)
            })
    }

    /// Whether [`Event::ChannelEnded`] was emitted for this channel.
    pub fn is_ended(&self) -> bool {
        self.session
            .channels
            .get(&self.id)
            .is_none_or(|ch| ch.state.ended())
    }

    /// Untransmitted bytes queued on this channel.
    pub fn queued_bytes(&self) -> u64 {
        self.session
            .channels
            .get(&self.id)
            .map_or(0, |ch| ch.queued_bytes)
    }

    fn check_send(&mut self) -> Result<(), LocalError> {
        self.session.check_commands()?;
        let window = u64::from(self.session.config.window);
        let ch = self
            .session
            .channels
            .get_mut(&self.id)
            .ok_or(LocalError::Closed)?;
        if !ch.accepts_items() {
            return Err(LocalError::Closed);
        }
        if ch.queued_bytes >= window {
            ch.blocked = true;
            return Err(LocalError::WouldBlock);
        }
        Ok(())
    }

    fn enqueue(&mut self, item: Vec<u8>) -> Result<(), LocalError> {
        let s = &mut *self.session;
        let size = item.len() as u64;
        if size > s.config.max_item {
            return Err(LocalError::ItemTooLarge {
                size,
                max: s.config.max_item,
            });
        }
        let ch = s.channels.get_mut(&self.id).ok_or(LocalError::Closed)?;
        ch.queued_bytes += size;
        ch.queue.push_back(item);
        ch.schedule(self.id, &mut s.ready);
        Ok(())
    }

    fn close_inner(&mut self, error: Option<String>) -> Result<(), LocalError> {
        self.session.check_commands()?;
        let s = &mut *self.session;
        let ch = s.channels.get_mut(&self.id).ok_or(LocalError::Closed)?;
        let before = ch
            .apply(ChannelEvent::Close)
            .map_err(|_| LocalError::Closed)?;
        // The error text must fit one frame.
        ch.close_error = error.map(|text| truncate_text(text, s.config.max_frame));
        ch.reassembly = Vec::new();
        if !before.ended() {
            s.events.push_back(Event::ChannelEnded {
                channel: ChannelId(self.id),
                how: ChannelEnd::ClosedLocally,
            });
        }
        ch.schedule(self.id, &mut s.ready);
        Ok(())
    }
}
