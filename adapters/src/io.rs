//! `Read`/`Write` over a channel: execnet's `channel.makefile()`.
//!
//! [`ChannelWriter`] sends every write as one `bytes` item; on the Python
//! side `channel.makefile("r").read()` (or plain `receive()`) gets them.
//! [`ChannelReader`] receives `str` or `bytes` items and presents them as
//! one byte stream; it ends (reads 0) at the end of the channel. A remote
//! error surfaces as an `io::Error` wrapping [`crate::Error`].

use std::io;

use crate::driver::block_on;
use execnet_core::Value;

use crate::channel::Channel;
use crate::error::Error;

fn io_error(e: Error) -> io::Error {
    let kind = match &e {
        Error::Timeout => io::ErrorKind::TimedOut,
        Error::ChannelClosed => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// Writes bytes to a channel (each `write` is one `bytes` item). Closing the
/// writer with [`ChannelWriter::close`] closes the channel.
#[derive(Debug)]
pub struct ChannelWriter {
    channel: Channel,
}

impl ChannelWriter {
    /// A writer on `channel`.
    pub fn new(channel: Channel) -> ChannelWriter {
        ChannelWriter { channel }
    }
    /// Closes the channel.
    pub fn close(self) -> crate::Result<()> {
        self.channel.close()
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        block_on(self.channel.send_value(&Value::Bytes(buf.to_vec()))).map_err(io_error)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the `str`/`bytes` items of a channel as one byte stream.
#[derive(Debug)]
pub struct ChannelReader {
    channel: Channel,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl ChannelReader {
    /// A reader on `channel`.
    pub fn new(channel: Channel) -> ChannelReader {
        ChannelReader {
            channel,
            buf: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        while self.pos >= self.buf.len() && !self.eof {
            match block_on(self.channel.receive_value(None)) {
                Ok(Value::Bytes(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(Value::Str(s)) => {
                    self.buf = s.into_bytes();
                    self.pos = 0;
                }
                Ok(other) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("makefile reader got a {} item", other.type_name()),
                    ))
                }
                Err(Error::EndOfChannel) => self.eof = true,
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }
}

impl io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        self.fill()?;
        let avail = &self.buf[self.pos.min(self.buf.len())..];
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill()?;
        Ok(&self.buf[self.pos.min(self.buf.len())..])
    }
    fn consume(&mut self, amt: usize) {
        self.pos += amt;
    }
}
