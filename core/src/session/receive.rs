//! The session's receive side: one handler per frame kind (protocol.md
//! §4-§9), called by `handle_input` for every complete frame.

use std::mem;

use super::{Role, Session};
use crate::channel::{Channel, ChannelId};
use crate::codec::decode_item;
use crate::config::PROTOCOL_VERSION;
use crate::error::ProtocolError;
use crate::frame::{Frame, FrameKind};
use crate::lifecycle::{ChannelEvent, Local};
use crate::message::{
    bad, payload_text, payload_uint, payload_value, text_field, uint_field, ChannelEnd, Event,
    ExecRequest, Status, TerminateReason, WorkerInfo,
};
use crate::value::Value;

impl Session {
    pub(super) fn handle_frame(&mut self, frame: Frame<'_>) -> Result<(), ProtocolError> {
        let Frame { header, payload } = frame;
        let kind = header.kind;
        let id = header.channel;
        if self.over {
            return Err(ProtocolError::AfterEnd);
        }
        if self.peer_terminated.is_some() {
            return Err(ProtocolError::UnexpectedFrame {
                kind: kind.name(),
                reason: "after the peer's TERMINATE",
            });
        }
        let wrong_direction = match self.role {
            Role::Host => matches!(kind, FrameKind::Exec | FrameKind::StatusRequest),
            Role::Worker => matches!(kind, FrameKind::StatusReply | FrameKind::Output),
        };
        if wrong_direction {
            return Err(ProtocolError::WrongDirection { kind: kind.name() });
        }
        if kind.is_gateway() != (id == 0) {
            return Err(ProtocolError::WrongChannel {
                kind: kind.name(),
                channel: id,
            });
        }
        if !self.hello_received && !matches!(kind, FrameKind::Hello | FrameKind::Terminate) {
            return Err(ProtocolError::UnexpectedFrame {
                kind: kind.name(),
                reason: "before HELLO",
            });
        }
        match kind {
            FrameKind::Hello => self.on_hello(payload),
            FrameKind::Exec => self.on_exec(id, payload),
            FrameKind::Data => self.on_data(id, payload, true),
            FrameKind::DataMore => self.on_data(id, payload, false),
            FrameKind::Close => self.on_close(id, payload),
            FrameKind::LastMessage => self.on_last_message(id, payload),
            FrameKind::Window => self.on_window(id, payload),
            FrameKind::Terminate => self.on_terminate(payload),
            FrameKind::StatusRequest => {
                let id = payload_uint(kind, payload)?;
                self.events.push_back(Event::StatusRequested { id });
                Ok(())
            }
            FrameKind::StatusReply => self.on_status_reply(payload),
            FrameKind::Output => self.on_output(payload),
        }
    }

    fn on_hello(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Hello;
        if self.hello_received {
            return Err(ProtocolError::UnexpectedFrame {
                kind: K.name(),
                reason: "second HELLO",
            });
        }
        let map = payload_value(K, payload, self.config.max_depth)?;
        if !matches!(map, Value::Dict(_)) {
            return Err(bad(K, "not a map"));
        }
        let version = uint_field(K, &map, "version")?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        self.hello_received = true;
        match self.role {
            Role::Worker => {
                let window = uint_field(K, &map, "window")?;
                let max_frame = uint_field(K, &map, "max_frame")?;
                let max_item = uint_field(K, &map, "max_item")?;
                let (Ok(window), Ok(max_frame)) = (u32::try_from(window), u32::try_from(max_frame))
                else {
                    return Err(bad(K, "window or max_frame beyond 2^32-1"));
                };
                if window == 0 || max_frame == 0 || max_item == 0 {
                    return Err(bad(K, "zero window, max_frame or max_item"));
                }
                self.config.window = window;
                self.config.max_frame = max_frame;
                self.config.max_item = max_item;
                let options = map
                    .get("options")
                    .cloned()
                    .unwrap_or(Value::Dict(Vec::new()));
                let info = self.own_info.take().unwrap_or_default();
                let hello = Value::Dict(vec![
                    (Value::str("version"), Value::from(PROTOCOL_VERSION)),
                    (
                        Value::str("implementation"),
                        Value::Str(info.implementation),
                    ),
                    (Value::str("version_info"), Value::List(info.version_info)),
                    (Value::str("executable"), Value::Str(info.executable)),
                    (Value::str("platform"), Value::Str(info.platform)),
                    (Value::str("pid"), Value::from(info.pid)),
                    (Value::str("cwd"), Value::Str(info.cwd)),
                    (Value::str("execmodel"), Value::Str(info.execmodel)),
                ]);
                if self.sent_terminate {
                    // We already said goodbye (a worker refusing to start):
                    // TERMINATE stays our last frame.
                } else if self.queue_value_frame(K, 0, &hello).is_err() {
                    // version_info holding unhashable keys is the only way to
                    // get here; send it without.
                    let mut hello = hello;
                    if let Value::Dict(pairs) = &mut hello {
                        pairs[2].1 = Value::List(Vec::new());
                    }
                    let _ = self.queue_value_frame(K, 0, &hello);
                }
                self.events.push_back(Event::HostHello { options });
            }
            Role::Host => {
                let info = WorkerInfo {
                    version: PROTOCOL_VERSION,
                    implementation: text_field(K, &map, "implementation")?,
                    version_info: match map.get("version_info") {
                        Some(Value::List(items)) | Some(Value::Tuple(items)) => items.clone(),
                        _ => return Err(bad(K, "version_info is not an array")),
                    },
                    executable: text_field(K, &map, "executable")?,
                    platform: text_field(K, &map, "platform")?,
                    pid: u32::try_from(uint_field(K, &map, "pid")?)
                        .map_err(|_| bad(K, "pid beyond 2^32-1"))?,
                    cwd: text_field(K, &map, "cwd")?,
                    execmodel: text_field(K, &map, "execmodel")?,
                };
                self.remote_info = Some(info.clone());
                self.events.push_back(Event::Ready(info));
            }
        }
        Ok(())
    }

    /// Finds the channel a frame names, opening a peer-parity one implicitly
    /// (protocol.md §6).
    fn ensure_channel(&mut self, id: u32) -> Result<(), ProtocolError> {
        if !self.channels.contains_key(&id) {
            self.open_remote(id)?;
        }
        Ok(())
    }

    fn is_own_parity(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.role == Role::Host)
    }

    fn open_remote(&mut self, id: u32) -> Result<(), ProtocolError> {
        if self.is_own_parity(id) {
            return Err(ProtocolError::UnknownChannel(id));
        }
        if self.channels.len() >= self.config.max_channels {
            return Err(ProtocolError::TooManyChannels {
                max: self.config.max_channels,
            });
        }
        self.channels.insert(id, Channel::new(self.config.window));
        Ok(())
    }

    fn on_exec(&mut self, id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Exec;
        if self.is_own_parity(id) {
            return Err(ProtocolError::WrongChannel {
                kind: K.name(),
                channel: id,
            });
        }
        if self.channels.contains_key(&id) {
            return Err(ProtocolError::UnexpectedFrame {
                kind: K.name(),
                reason: "the channel is already open",
            });
        }
        let map = payload_value(K, payload, self.config.max_depth)?;
        let source = text_field(K, &map, "source")?;
        let call = match map.get("call") {
            None | Some(Value::Null) => None,
            Some(Value::List(items)) | Some(Value::Tuple(items)) => match items.as_slice() {
                [Value::Str(name), kwargs @ Value::Dict(_)] => Some((name.clone(), kwargs.clone())),
                _ => return Err(bad(K, "call is not [name, kwargs]")),
            },
            Some(_) => return Err(bad(K, "call is not null or an array")),
        };
        self.open_remote(id)?;
        self.events.push_back(Event::ExecRequested {
            channel: ChannelId(id),
            request: ExecRequest { source, call },
        });
        Ok(())
    }

    fn on_data(&mut self, id: u32, payload: &[u8], last: bool) -> Result<(), ProtocolError> {
        let kind = if last {
            FrameKind::Data
        } else {
            FrameKind::DataMore
        };
        let max_item = self.config.max_item;
        let max_depth = self.config.max_depth;
        self.ensure_channel(id)?;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownChannel(id))?;
        ch.apply(ChannelEvent::RecvData)
            .map_err(|_| after_peer_end(kind))?;
        let n = payload.len() as u64;
        if let Err(credit) = ch.window.spend(n) {
            return Err(ProtocolError::CreditExceeded {
                channel: id,
                length: payload.len() as u32,
                credit,
            });
        }
        if !last && n == 0 {
            return Err(bad(kind, "empty DATA_MORE"));
        }
        let size = ch.reassembly.len() as u64 + n;
        if size > max_item {
            return Err(ProtocolError::ItemTooLarge {
                channel: id,
                size,
                max: max_item,
            });
        }
        if ch.state.closing() {
            // Crossed our CLOSE: dropped. Until our CLOSE is out, give the
            // credit back so a peer blocked on it can make progress.
            ch.reassembly = Vec::new();
            if ch.state.local != Local::CloseSent {
                let due = ch.window.dropped(n);
                ch.want_window(due, id, &mut self.windows);
            }
            return Ok(());
        }
        if !last {
            ch.reassembly.extend_from_slice(payload);
            let due = ch.window.chunk_buffered(n);
            ch.want_window(due, id, &mut self.windows);
            return Ok(());
        }
        let credit = ch.window.item_delivered(n);
        self.refs.clear();
        let decoded = if ch.reassembly.is_empty() {
            decode_item(payload, max_depth, &mut self.refs)
        } else {
            let mut item = mem::take(&mut ch.reassembly);
            item.extend_from_slice(payload);
            decode_item(&item, max_depth, &mut self.refs)
        };
        let value = decoded.map_err(|error| ProtocolError::BadItem { channel: id, error })?;
        for i in 0..self.refs.len() {
            let r = self.refs[i];
            if self.channels.contains_key(&r) {
                continue;
            }
            if self.is_own_parity(r) {
                if u64::from(r) >= self.next_id {
                    return Err(ProtocolError::UnknownChannel(r));
                }
                // A reference to one of our channels that is already
                // forgotten: the receiver's handle is simply closed.
            } else {
                self.open_remote(r)?;
            }
        }
        // The channel exists: `ensure_channel` above, and the references
        // only add channels.
        let Some(ch) = self.channels.get_mut(&id) else {
            return Err(ProtocolError::UnknownChannel(id));
        };
        if ch.received.is_empty() {
            self.events.push_back(Event::Readable {
                channel: ChannelId(id),
            });
        }
        // Unreturned credit never exceeds the window, a u32.
        ch.received
            .push_back((value, u32::try_from(credit).unwrap_or(u32::MAX)));
        Ok(())
    }

    fn on_close(&mut self, id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Close;
        let error = payload_text(K, payload, self.config.max_depth)?;
        self.ensure_channel(id)?;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownChannel(id))?;
        let before =
            ch.apply(ChannelEvent::RecvClose)
                .map_err(|_| ProtocolError::UnexpectedFrame {
                    kind: K.name(),
                    reason: "second CLOSE",
                })?;
        ch.drop_queue();
        ch.reassembly = Vec::new();
        if !before.ended() {
            let how = match error {
                Some(text) => ChannelEnd::RemoteError(text),
                None => ChannelEnd::Closed,
            };
            self.events.push_back(Event::ChannelEnded {
                channel: ChannelId(id),
                how,
            });
        }
        if ch.state.fully_closed() {
            self.forget(id);
            return Ok(());
        }
        if before.local != Local::CloseQueued {
            // Our CLOSE answers the peer's (no error text).
            ch.close_error = None;
        }
        ch.schedule(id, &mut self.ready);
        Ok(())
    }

    fn on_last_message(&mut self, id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::LastMessage;
        if !payload.is_empty() {
            return Err(bad(K, "payload must be empty"));
        }
        self.ensure_channel(id)?;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownChannel(id))?;
        let before = ch
            .apply(ChannelEvent::RecvLast)
            .map_err(|_| after_peer_end(K))?;
        if !before.ended() && ch.state.ended() {
            self.events.push_back(Event::ChannelEnded {
                channel: ChannelId(id),
                how: ChannelEnd::Closed,
            });
        }
        Ok(())
    }

    fn on_window(&mut self, id: u32, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Window;
        let grant = payload_uint(K, payload)?;
        self.ensure_channel(id)?;
        let ch = self
            .channels
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownChannel(id))?;
        if ch.state.local == Local::CloseSent {
            return Ok(());
        }
        let credit = ch.send_credit.saturating_add(grant);
        if credit > u64::from(u32::MAX) {
            return Err(ProtocolError::WindowOverflow { channel: id });
        }
        ch.send_credit = credit;
        ch.schedule(id, &mut self.ready);
        Ok(())
    }

    fn on_terminate(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        let reason = payload_text(FrameKind::Terminate, payload, self.config.max_depth)?;
        self.peer_terminated = Some(reason.clone());
        if self.sent_terminate || self.terminate_requested.is_some() {
            // Our own TERMINATE (queued or sent) answers it.
            self.write_terminate();
            self.finish(TerminateReason::Clean);
            return Ok(());
        }
        match self.role {
            Role::Host => {
                self.terminate_requested = Some(None);
                self.write_terminate();
                self.finish(TerminateReason::PeerInitiated(reason));
            }
            Role::Worker => {
                self.events.push_back(Event::TerminateRequested { reason });
            }
        }
        Ok(())
    }

    fn on_status_reply(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::StatusReply;
        let map = payload_value(K, payload, self.config.max_depth)?;
        let id = uint_field(K, &map, "id")?;
        let status = Status {
            numchannels: uint_field(K, &map, "numchannels")?,
            numexecuting: uint_field(K, &map, "numexecuting")?,
            execmodel: text_field(K, &map, "execmodel")?,
        };
        self.events.push_back(Event::StatusReply { id, status });
        Ok(())
    }

    fn on_output(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        const K: FrameKind = FrameKind::Output;
        let value = payload_value(K, payload, self.config.max_depth)?;
        let (fd, bytes) = match value {
            Value::List(items) => match <[Value; 2]>::try_from(items) {
                Ok([Value::Int(fd @ (1 | 2)), Value::Bytes(bytes)]) => (fd as u8, bytes),
                _ => return Err(bad(K, "not [1 or 2, bytes]")),
            },
            _ => return Err(bad(K, "not an array")),
        };
        self.events.push_back(Event::Output { fd, bytes });
        Ok(())
    }
}

/// A DATA, DATA_MORE or LAST_MESSAGE the lifecycle table refuses: the peer
/// already ended its sending.
fn after_peer_end(kind: FrameKind) -> ProtocolError {
    ProtocolError::UnexpectedFrame {
        kind: kind.name(),
        reason: "after the peer's CLOSE or LAST_MESSAGE",
    }
}
