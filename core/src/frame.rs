//! Frames: the 9-byte header, the kinds, and the incremental deframer
//! (protocol.md §2, §3).
//!
//! ```text
//! offset 0: kind (u8) | 1..5: channel (u32 BE) | 5..9: length (u32 BE) | payload
//! ```

use crate::error::ProtocolError;

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 9;

/// The frame kinds of protocol.md §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Handshake, both directions, channel 0.
    Hello = 0x01,
    /// Host → worker: run code on a new (odd) channel.
    Exec = 0x02,
    /// The last (or only) chunk of an item.
    Data = 0x03,
    /// A non-final chunk of an item.
    DataMore = 0x04,
    /// Close a channel, optionally with an error text.
    Close = 0x05,
    /// Half-close: no more items from the sender.
    LastMessage = 0x06,
    /// Credit returned to the sender.
    Window = 0x07,
    /// End of the session, optionally with a reason.
    Terminate = 0x08,
    /// Host → worker: status request.
    StatusRequest = 0x09,
    /// Worker → host: status reply.
    StatusReply = 0x0A,
    /// Worker → host: forwarded output.
    Output = 0x0B,
}

impl FrameKind {
    /// The protocol.md name of the kind, e.g. `"DATA_MORE"`.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "HELLO",
            FrameKind::Exec => "EXEC",
            FrameKind::Data => "DATA",
            FrameKind::DataMore => "DATA_MORE",
            FrameKind::Close => "CLOSE",
            FrameKind::LastMessage => "LAST_MESSAGE",
            FrameKind::Window => "WINDOW",
            FrameKind::Terminate => "TERMINATE",
            FrameKind::StatusRequest => "STATUS_REQUEST",
            FrameKind::StatusReply => "STATUS_REPLY",
            FrameKind::Output => "OUTPUT",
        }
    }

    /// Whether frames of this kind address the gateway (channel 0).
    pub fn is_gateway(self) -> bool {
        matches!(
            self,
            FrameKind::Hello
                | FrameKind::Terminate
                | FrameKind::StatusRequest
                | FrameKind::StatusReply
                | FrameKind::Output
        )
    }
}

impl TryFrom<u8> for FrameKind {
    type Error = ProtocolError;
    fn try_from(b: u8) -> Result<FrameKind, ProtocolError> {
        Ok(match b {
            0x01 => FrameKind::Hello,
            0x02 => FrameKind::Exec,
            0x03 => FrameKind::Data,
            0x04 => FrameKind::DataMore,
            0x05 => FrameKind::Close,
            0x06 => FrameKind::LastMessage,
            0x07 => FrameKind::Window,
            0x08 => FrameKind::Terminate,
            0x09 => FrameKind::StatusRequest,
            0x0A => FrameKind::StatusReply,
            0x0B => FrameKind::Output,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The kind.
    pub kind: FrameKind,
    /// The channel id (0: the gateway).
    pub channel: u32,
    /// The payload length.
    pub length: u32,
}

impl Header {
    /// Parses and checks a header: a known kind and `length <= max_frame`.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_frame: u32) -> Result<Header, ProtocolError> {
        let kind = FrameKind::try_from(bytes[0])?;
        let channel = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let length = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        if length > max_frame {
            return Err(ProtocolError::FrameTooLarge {
                length,
                max: max_frame,
            });
        }
        Ok(Header {
            kind,
            channel,
            length,
        })
    }
}

/// Appends a frame header to `out`.
pub fn write_header(out: &mut Vec<u8>, kind: FrameKind, channel: u32, length: u32) {
    out.push(kind as u8);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Appends a whole frame to `out`. `payload` must not exceed `u32::MAX`
/// bytes (callers bound it by `max_frame`).
pub fn write_frame(out: &mut Vec<u8>, kind: FrameKind, channel: u32, payload: &[u8]) {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    write_header(out, kind, channel, length);
    out.extend_from_slice(payload);
}

/// One complete frame, borrowing its payload from the input or from the
/// deframer's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    /// Exactly `header.length` bytes.
    pub payload: &'a [u8],
}

/// Cuts a byte stream arriving in arbitrary chunks into frames.
///
/// "Need more bytes" is `Ok(None)`, never an error. A header is checked (kind,
/// `length <= max_frame`) as soon as its 9 bytes are present, before any
/// payload byte is buffered. Whole frames inside one input chunk are returned
/// straight from the input without copying; only a frame split across chunks
/// is buffered, and its buffer grows with the bytes that actually arrive.
#[derive(Debug, Default)]
pub struct Deframer {
    /// Bytes of the incomplete frame (header first).
    partial: Vec<u8>,
    /// The incomplete frame's header, once its 9 bytes are in `partial`.
    header: Option<Header>,
    /// `partial` holds a frame returned by the last call; clear it first.
    stale: bool,
}

impl Deframer {
    /// An empty deframer.
    pub fn new() -> Deframer {
        Deframer::default()
    }

    /// The next complete frame, taking bytes from the front of `input`.
    ///
    /// Call repeatedly until `Ok(None)`: then `input` is empty and any
    /// incomplete frame is buffered.
    pub fn next_frame<'a, 'i: 'a>(
        &'a mut self,
        input: &mut &'i [u8],
        max_frame: u32,
    ) -> Result<Option<Frame<'a>>, ProtocolError> {
        if self.stale {
            self.partial.clear();
            self.header = None;
            self.stale = false;
        }
        if self.partial.is_empty() {
            // Fast path: a whole frame at the front of the input.
            if let Some(head) = input.get(..HEADER_LEN).and_then(|h| h.try_into().ok()) {
                let header = Header::parse(head, max_frame)?;
                let end = HEADER_LEN + header.length as usize;
                if input.len() >= end {
                    let payload = &input[HEADER_LEN..end];
                    *input = &input[end..];
                    return Ok(Some(Frame { header, payload }));
                }
            }
            if input.is_empty() {
                return Ok(None);
            }
        }
        // Slow path: accumulate the header, then the payload.
        if self.header.is_none() {
            let need = HEADER_LEN - self.partial.len();
            let take = need.min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            *input = &input[take..];
            match self
                .partial
                .get(..HEADER_LEN)
                .and_then(|h| h.try_into().ok())
            {
                Some(head) => self.header = Some(Header::parse(head, max_frame)?),
                None => return Ok(None),
            }
        }
        let Some(header) = self.header else {
            return Ok(None);
        };
        let end = HEADER_LEN + header.length as usize;
        let take = (end - self.partial.len()).min(input.len());
        self.partial.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.partial.len() < end {
            return Ok(None);
        }
        self.stale = true;
        Ok(Some(Frame {
            header,
            payload: &self.partial[HEADER_LEN..end],
        }))
    }

    /// Bytes of an incomplete frame held (0: the stream is between frames).
    pub fn buffered(&self) -> usize {
        if self.stale {
            0
        } else {
            self.partial.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]], max: u32) -> Result<Vec<(FrameKind, u32, Vec<u8>)>, ProtocolError> {
        let mut d = Deframer::new();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            while let Some(f) = d.next_frame(&mut input, max)? {
                out.push((f.header.kind, f.header.channel, f.payload.to_vec()));
            }
            assert!(input.is_empty());
        }
        Ok(out)
    }

    #[test]
    fn every_split_yields_the_same_frames() {
        let mut stream = Vec::new();
        write_frame(&mut stream, FrameKind::Data, 1, b"abc");
        write_frame(&mut stream, FrameKind::Close, 1, b"");
        write_frame(&mut stream, FrameKind::Window, 2, &[0x18, 0x40]);
        let whole = frames(&[&stream], 100).unwrap();
        assert_eq!(whole.len(), 3);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let got = frames(&[&stream[..i], &stream[i..j], &stream[j..]], 100).unwrap();
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames(&bytewise, 100).unwrap(), whole);
    }

    #[test]
    fn oversized_header_fails_before_the_payload() {
        let mut d = Deframer::new();
        let head = [3, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        let mut input = &head[..];
        assert_eq!(
            d.next_frame(&mut input, 1 << 20),
            Err(ProtocolError::FrameTooLarge {
                length: u32::MAX,
                max: 1 << 20
            })
        );
        // the same split in two
        let mut d = Deframer::new();
        let mut a = &head[..4];
        assert_eq!(d.next_frame(&mut a, 10), Ok(None));
        let mut b = &head[4..];
        assert!(matches!(
            d.next_frame(&mut b, 10),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert!(d.partial.capacity() < 64);
    }

    #[test]
    fn unknown_kind_fails_at_the_header() {
        for kind in [0u8, 0x0c, 0xff] {
            let head = [kind, 0, 0, 0, 0, 0, 0, 0, 5];
            assert_eq!(frames(&[&head], 100), Err(ProtocolError::UnknownKind(kind)));
        }
    }

    #[test]
    fn buffered_reports_incomplete_frames() {
        let mut d = Deframer::new();
        let mut stream = Vec::new();
        write_frame(&mut stream, FrameKind::Data, 1, b"abc");
        let mut input = &stream[..5];
        assert_eq!(d.next_frame(&mut input, 100), Ok(None));
        assert_eq!(d.buffered(), 5);
        let mut input = &stream[5..];
        assert!(d.next_frame(&mut input, 100).unwrap().is_some());
        assert_eq!(d.buffered(), 0);
    }
}
