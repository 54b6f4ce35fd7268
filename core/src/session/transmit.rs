//! The session's transmit side: `poll_transmit`'s helpers (control frames,
//! WINDOW frames, channel data round-robin, TERMINATE).

use std::mem;

use super::{Session, QUANTUM};
use crate::channel::ChannelId;
use crate::frame::{write_frame, write_header, FrameKind, HEADER_LEN};
use crate::lifecycle::{ChannelEvent, Local};
use crate::message::{cbor_uint, truncate_text, write_close, Event};
use crate::value::Value;

impl Session {
    /// Copies pending control bytes; true when none remain.
    pub(super) fn drain_control(&mut self, buf: &mut Vec<u8>, start: usize, end: usize) -> bool {
        let pending = self.control.len() - self.control_sent;
        if pending > 0 {
            let room = end.saturating_sub(buf.len());
            let take = if buf.len() == start {
                pending.min(room.max(1))
            } else {
                pending.min(room)
            };
            buf.extend_from_slice(&self.control[self.control_sent..self.control_sent + take]);
            self.control_sent += take;
            if self.control_sent < self.control.len() {
                return false;
            }
        }
        self.control.clear();
        self.control_sent = 0;
        true
    }

    pub(super) fn write_windows(&mut self, buf: &mut Vec<u8>) {
        let ids = mem::take(&mut self.windows);
        for &id in &ids {
            let Some(ch) = self.channels.get_mut(&id) else {
                continue;
            };
            ch.in_windows = false;
            if ch.state.closing() {
                continue;
            }
            let grant = ch.window.grant();
            if grant == 0 {
                continue;
            }
            let mut payload = [0u8; 9];
            let n = cbor_uint(&mut payload, grant);
            write_frame(buf, FrameKind::Window, id, &payload[..n]);
        }
        // Reuse the allocation.
        let mut ids = ids;
        ids.clear();
        if self.windows.is_empty() {
            self.windows = ids;
        }
    }

    pub(super) fn write_data(&mut self, buf: &mut Vec<u8>, start: usize, end: usize) {
        let max_frame = self.config.max_frame as u64;
        let window = u64::from(self.config.window);
        while buf.len() < end {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(ch) = self.channels.get_mut(&id) else {
                continue;
            };
            ch.in_ready = false;
            let visit_start = buf.len();
            let mut forget = false;
            // The limit is reached (no room for a worthwhile frame).
            let mut full = false;
            loop {
                if buf.len() - visit_start >= QUANTUM || buf.len() >= end {
                    break;
                }
                if let Some(front) = ch.queue.front() {
                    if ch.send_credit == 0 {
                        break;
                    }
                    let remaining = (front.len() - ch.front_offset) as u64;
                    let room = end.saturating_sub(buf.len()) as u64;
                    // Do not cut tiny frames just to meet `limit`, unless
                    // nothing was appended yet (progress guarantee).
                    if buf.len() > start && room < HEADER_LEN as u64 + remaining.min(512) {
                        full = true;
                        break;
                    }
                    let room_payload = room.saturating_sub(HEADER_LEN as u64).max(1);
                    let chunk = remaining
                        .min(max_frame)
                        .min(ch.send_credit)
                        .min(room_payload.max(remaining.min(512)));
                    // chunk <= max_frame, a u32.
                    let chunk_len = chunk as usize;
                    let last = chunk == remaining;
                    let kind = if last {
                        FrameKind::Data
                    } else {
                        FrameKind::DataMore
                    };
                    write_header(buf, kind, id, chunk as u32);
                    buf.extend_from_slice(&front[ch.front_offset..ch.front_offset + chunk_len]);
                    ch.send_credit -= chunk;
                    ch.queued_bytes -= chunk;
                    if last {
                        ch.queue.pop_front();
                        ch.front_offset = 0;
                    } else {
                        ch.front_offset += chunk_len;
                    }
                } else if ch.end_queued() {
                    if ch.state.local == Local::LastQueued {
                        write_header(buf, FrameKind::LastMessage, id, 0);
                        let _ = ch.apply(ChannelEvent::LastTransmitted);
                    } else {
                        write_close(buf, id, ch.close_error.take().as_deref());
                        let _ = ch.apply(ChannelEvent::CloseTransmitted);
                        forget = ch.state.fully_closed();
                        ch.reassembly = Vec::new();
                    }
                    break;
                } else {
                    break;
                }
            }
            if ch.blocked && ch.queued_bytes < window && ch.accepts_items() {
                ch.blocked = false;
                self.events.push_back(Event::WindowOpened {
                    channel: ChannelId(id),
                });
            }
            if forget {
                self.forget(id);
            } else if ch.is_ready() {
                ch.in_ready = true;
                if full {
                    // Its turn is not over: first again next time.
                    self.ready.push_front(id);
                    break;
                }
                self.ready.push_back(id);
            }
            if full {
                break;
            }
        }
    }

    /// Queues TERMINATE (after the CLOSEs of channels closed locally whose
    /// items could not all go out); drops everything else.
    pub(super) fn write_terminate(&mut self) {
        if self.sent_terminate {
            return;
        }
        let mut ids: Vec<u32> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(ch) = self.channels.get_mut(&id) {
                if ch.state.local == Local::CloseQueued {
                    write_close(&mut self.control, id, ch.close_error.take().as_deref());
                    let _ = ch.apply(ChannelEvent::CloseTransmitted);
                }
                ch.drop_queue();
            }
        }
        self.ready.clear();
        self.windows.clear();
        let reason = self
            .terminate_requested
            .clone()
            .flatten()
            .map(|text| truncate_text(text, self.config.max_frame));
        match reason {
            Some(text) => {
                let _ = self.queue_value_frame(FrameKind::Terminate, 0, &Value::Str(text));
            }
            None => write_header(&mut self.control, FrameKind::Terminate, 0, 0),
        }
        self.sent_terminate = true;
    }
}
