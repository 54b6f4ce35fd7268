//! The code record a learning start sends ahead of its HELLO, taken off
//! the worker's stdout (see the parent module).

use super::*;

/// The worker's stdout during a boot-loader start: takes the code record
/// (if the interpreter compiled) off the front of the stream, stores it in
/// the cache, and passes every later byte through untouched. A start that
/// loaded cached code sends no record: its first byte is a frame's.
///
/// If the stream does not start with a well-formed record (something wrote
/// to stdout before the loader ran), the bytes are passed through as they
/// are and the driver reports them as it would without the cache. If it
/// ends inside the record, the partial record is dropped: the driver sees
/// the end of the stream, as it would have (the worker ended before HELLO).
pub(crate) struct LearningReader<R> {
    inner: R,
    state: Learn,
    cache: &'static Cache,
    /// The flight this start leads, if it does: released once the record
    /// is cached or there is none (or this reader is dropped).
    ticket: Option<Ticket>,
}

enum Learn {
    /// Collecting the record (and whatever arrives behind it).
    Record { buf: Vec<u8>, key: Key },
    /// Bytes read past the record, not yet returned.
    Leftover { buf: Vec<u8>, pos: usize },
    /// Pass-through.
    Done,
}

/// What the front of the stream holds.
enum Parsed {
    /// A complete record, and its length.
    Record(Compiled, usize),
    /// A prefix of a record: this many bytes at least are needed.
    NeedMore(usize),
    /// Not a record.
    Invalid,
}

fn parse(buf: &[u8]) -> Parsed {
    let magic = execnet_bootstrap::CODE_RECORD_MAGIC;
    let head = buf.len().min(magic.len());
    if buf[..head] != magic[..head] {
        return Parsed::Invalid;
    }
    let len_at = |at: usize| -> Option<usize> {
        let b = buf.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let vstart = magic.len() + 4;
    let Some(vlen) = len_at(magic.len()) else {
        return Parsed::NeedMore(vstart);
    };
    if vlen > MAX_VERSION {
        return Parsed::Invalid;
    }
    let cstart = vstart + vlen + 4;
    let Some(clen) = len_at(vstart + vlen) else {
        return Parsed::NeedMore(cstart);
    };
    if clen > MAX_CODE {
        return Parsed::Invalid;
    }
    let end = cstart + clen;
    if buf.len() < end {
        return Parsed::NeedMore(end);
    }
    match std::str::from_utf8(&buf[vstart..vstart + vlen]) {
        Ok(version) => Parsed::Record(
            Compiled {
                version: version.to_string(),
                code: buf[cstart..end].to_vec(),
            },
            end,
        ),
        Err(_) => Parsed::Invalid,
    }
}

impl<R: Read> LearningReader<R> {
    pub(super) fn with_cache(
        inner: R,
        key: Key,
        ticket: Option<Ticket>,
        cache: &'static Cache,
    ) -> LearningReader<R> {
        LearningReader {
            ticket,
            inner,
            state: Learn::Record {
                buf: Vec::new(),
                key,
            },
            cache,
        }
    }

    /// Reads until the record is complete (or turns out not to be one).
    fn take_record(&mut self) -> io::Result<()> {
        let Learn::Record { buf, key } = &mut self.state else {
            return Ok(());
        };
        loop {
            let need = match parse(buf) {
                Parsed::Record(compiled, end) => {
                    tracing::debug!(
                        bytes = compiled.code.len(),
                        version = %compiled.version,
                        "cached the compiled worker"
                    );
                    let key = key.clone();
                    let rest = buf.split_off(end);
                    self.state = Learn::Leftover { buf: rest, pos: 0 };
                    // Memory first, then waiters go, then the disk write.
                    self.cache.insert(key.clone(), Arc::new(compiled));
                    drop(self.ticket.take());
                    if let Some(disk) = &self.cache.disk {
                        if let Some(c) = self.cache.get(&key) {
                            disk.store(&key, &c);
                        }
                    }
                    return Ok(());
                }
                Parsed::Invalid => {
                    // Loaded code (or something else wrote first): no
                    // record; waiters compile themselves if they must.
                    let all = std::mem::take(buf);
                    self.state = Learn::Leftover { buf: all, pos: 0 };
                    drop(self.ticket.take());
                    return Ok(());
                }
                Parsed::NeedMore(n) => n,
            };
            let old = buf.len();
            buf.resize(old.max(need).max(old + READ_CHUNK), 0);
            let got = loop {
                match self.inner.read(&mut buf[old..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            match got {
                Ok(0) => {
                    self.state = Learn::Done;
                    drop(self.ticket.take());
                    return Ok(());
                }
                Ok(n) => buf.truncate(old + n),
                Err(e) => {
                    buf.truncate(old);
                    return Err(e);
                }
            }
        }
    }
}

impl<R: Read> Read for LearningReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if matches!(self.state, Learn::Record { .. }) {
            self.take_record()?;
            if matches!(self.state, Learn::Done) {
                // The stream ended inside the record.
                return Ok(0);
            }
        }
        match &mut self.state {
            Learn::Leftover { buf, pos } => {
                let n = out.len().min(buf.len() - *pos);
                out[..n].copy_from_slice(&buf[*pos..*pos + n]);
                *pos += n;
                if *pos == buf.len() {
                    self.state = Learn::Done;
                }
                if n > 0 || out.is_empty() {
                    return Ok(n);
                }
                self.inner.read(out)
            }
            _ => self.inner.read(out),
        }
    }
}
