//! The compiled-worker cache of popen gateways.
//!
//! Compiling the worker's source is most of what a start costs above the
//! bare interpreter (~10 ms of ~12 ms on CPython 3.11 here). So the first
//! popen start of an interpreter in this process uses
//! [`execnet_bootstrap::learning_loader`]: the interpreter compiles the
//! source and writes the marshalled code back on stdout, in a record ahead
//! of its HELLO. [`LearningReader`] takes that record off the stream before
//! the driver sees any byte, and keeps it here. Later starts of the same
//! interpreter send the marshal data with
//! [`execnet_bootstrap::cached_loader`], which loads it (~0.5 ms) instead
//! of compiling.
//!
//! Marshal data is specific to an interpreter version, and loading another
//! version's could crash the interpreter. Entries are keyed by the command
//! line and the identity of the program file it runs (device, inode, size,
//! modification time; found on the child's `PATH`), and the loader itself
//! compares `sys.version` before loading: on any mismatch it compiles the
//! source, which is always sent too. The cache lives in memory only:
//! nothing is written anywhere, and the first start in each process pays
//! the compile. It holds at most [`MAX_ENTRIES`] interpreters (~110 KB each).

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use crate::sync::lock;

/// Longest `sys.version` accepted in a record (CPython's is ~80 bytes).
const MAX_VERSION: usize = 1024;
/// Largest marshalled worker accepted in a record (it is ~110 KB).
const MAX_CODE: usize = 16 << 20;
/// Bytes read from the interpreter at once while the record comes in.
const READ_CHUNK: usize = 64 << 10;
/// Interpreters kept; a start of another one then compiles as without a
/// cache (and replaces an entry).
const MAX_ENTRIES: usize = 16;

/// What identifies "the same interpreter" for the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    argv: Vec<String>,
    /// (device, inode, size, mtime in ns) of the program file.
    program: (u64, u64, u64, i128),
}

/// A worker compiled by one interpreter.
#[derive(Debug)]
struct Compiled {
    /// The interpreter's `sys.version`.
    version: String,
    /// `marshal.dumps` of the compiled worker.
    code: Vec<u8>,
}

/// Compiled workers by interpreter, at most [`MAX_ENTRIES`] of them.
#[derive(Default)]
pub(crate) struct Cache {
    entries: Mutex<HashMap<Key, Arc<Compiled>>>,
}

impl Cache {
    fn get(&self, key: &Key) -> Option<Arc<Compiled>> {
        lock(&self.entries).get(key).cloned()
    }

    fn insert(&self, key: Key, compiled: Compiled) {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            // Any one: a host cycling through more interpreters than this
            // gains little from keeping them all.
            if let Some(old) = entries.keys().next().cloned() {
                entries.remove(&old);
            }
        }
        entries.insert(key, Arc::new(compiled));
    }
}

/// The process's cache, used by every popen start.
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

/// How to start one worker: the `-c` loader, what to write to stdin ahead of
/// the frames, and whether the stdout must go through a [`LearningReader`].
pub(crate) struct Boot {
    /// The `-c` argument.
    pub(crate) loader: String,
    compiled: Option<Arc<Compiled>>,
    /// Set when this start should hand its compiled worker back.
    pub(crate) learn: Option<Key>,
}

impl Boot {
    /// The plain source start ([`execnet_bootstrap::loader`]).
    fn source() -> Boot {
        Boot {
            loader: super::process::source_loader(),
            compiled: None,
            learn: None,
        }
    }

    /// The parts to write to stdin, in order, before the first frame.
    pub(crate) fn payload(&self) -> Vec<&[u8]> {
        let source = execnet_bootstrap::worker_compressed();
        match &self.compiled {
            Some(c) => vec![&c.code, source],
            None => vec![source],
        }
    }
}

/// Plans the start of `argv` (the interpreter's command line, without the
/// worker arguments) with `env` added to its environment.
pub(crate) fn boot(argv: &[String], env: &[(String, String)]) -> Boot {
    let Some(program) = argv.first().and_then(|p| program_id(p, env)) else {
        // Not found: the spawn will say so; nothing to key a cache entry on.
        return Boot::source();
    };
    // The rest of the environment cannot change which binary runs, and the
    // loader's version check covers what it could change.
    let key = Key {
        argv: argv.to_vec(),
        program,
    };
    let source_len = execnet_bootstrap::worker_compressed().len();
    match cache().get(&key) {
        Some(c) => Boot {
            loader: execnet_bootstrap::cached_loader(c.code.len(), &c.version, source_len),
            compiled: Some(c),
            learn: None,
        },
        None => Boot {
            loader: execnet_bootstrap::learning_loader(source_len),
            compiled: None,
            learn: Some(key),
        },
    }
}

/// The identity of the file `program` runs, found as `Command` finds it:
/// a name with a slash is a path, anything else is looked up on `PATH`
/// (the child's, if `env` sets one).
fn program_id(program: &str, env: &[(String, String)]) -> Option<(u64, u64, u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let path = if program.contains('/') {
        Path::new(program).to_path_buf()
    } else {
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.into());
        super::popen::find_in_path(program, path)?
    };
    let m = std::fs::metadata(path).ok()?;
    let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    Some((m.dev(), m.ino(), m.size(), mtime))
}

/// The worker's stdout during a learning start: takes the code record off
/// the front of the stream, stores it in the cache, and passes every later
/// byte through untouched.
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
    /// Wraps the stdout of a start planned with `learn` set.
    pub(crate) fn new(inner: R, key: Key) -> LearningReader<R> {
        Self::with_cache(inner, key, cache())
    }

    fn with_cache(inner: R, key: Key, cache: &'static Cache) -> LearningReader<R> {
        LearningReader {
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
                    self.cache.insert(key.clone(), compiled);
                    let rest = buf.split_off(end);
                    self.state = Learn::Leftover { buf: rest, pos: 0 };
                    return Ok(());
                }
                Parsed::Invalid => {
                    let all = std::mem::take(buf);
                    self.state = Learn::Leftover { buf: all, pos: 0 };
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

#[cfg(test)]
mod tests {
    use super::*;
    use execnet_core::Value;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn python() -> Option<String> {
        super::super::popen::default_python().ok()
    }

    /// A cache of the test's own (the process's is shared by every test).
    fn own_cache() -> &'static Cache {
        Box::leak(Box::default())
    }

    fn test_key(tag: &str) -> Key {
        Key {
            argv: vec![format!("test-{tag}")],
            program: (0, 0, 0, 0),
        }
    }

    /// Runs `python -u -c loader` with `stdin` and returns its stdout.
    fn run(python: &str, loader: &str, stdin: &[&[u8]]) -> Vec<u8> {
        let mut child = Command::new(python)
            .args(["-u", "-c", loader])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        for part in stdin {
            input.write_all(part).unwrap();
        }
        // The host HELLO (the worker answers with its own), then EOF: the
        // worker ends after its HELLO.
        let mut hello = Vec::new();
        let mut session =
            execnet_core::Session::new_host(execnet_core::Config::default(), Value::Dict(vec![]));
        assert!(session.poll_transmit(&mut hello, 1 << 20) > 0);
        input.write_all(&hello).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        out.stdout
    }

    /// The worker's first frame is a HELLO (protocol.md §2, §3: kind 1
    /// in the header's first byte, channel 0).
    fn starts_with_hello(stdout: &[u8]) -> bool {
        stdout.len() > 9 && stdout[..5] == [1, 0, 0, 0, 0]
    }

    #[test]
    fn a_learning_start_hands_back_code_that_a_cached_start_runs() {
        let Some(py) = python() else {
            eprintln!("skipped: no python3");
            return;
        };
        let source = execnet_bootstrap::worker_compressed();
        let out = run(
            &py,
            &execnet_bootstrap::learning_loader(source.len()),
            &[source],
        );
        let key = test_key("learn");
        let c = own_cache();
        let mut r = LearningReader::with_cache(&out[..], key.clone(), c);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(starts_with_hello(&rest), "frames follow the record");
        let compiled = c.get(&key).expect("the record was cached");
        assert!(compiled.version.starts_with(char::is_numeric));
        assert!(compiled.code.len() > 10_000);

        // The cached start runs the code: same frames as the source start.
        let loader =
            execnet_bootstrap::cached_loader(compiled.code.len(), &compiled.version, source.len());
        let cached = run(&py, &loader, &[&compiled.code, source]);
        assert!(starts_with_hello(&cached));

        // Another version's code is never loaded: the source runs instead.
        let garbage = vec![0xffu8; compiled.code.len()];
        let loader = execnet_bootstrap::cached_loader(garbage.len(), "0.0 other", source.len());
        let fallback = run(&py, &loader, &[&garbage, source]);
        assert!(starts_with_hello(&fallback));
    }

    #[test]
    fn a_stream_without_a_record_passes_through_untouched() {
        let data = b"\x00\x00\x00\x05garbage and more".to_vec();
        let key = test_key("invalid");
        let c = own_cache();
        let mut out = Vec::new();
        LearningReader::with_cache(&data[..], key.clone(), c)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert!(c.get(&key).is_none());

        // A record claiming an absurd size is not one either.
        let mut huge = execnet_bootstrap::CODE_RECORD_MAGIC.to_vec();
        huge.extend(&(u32::MAX).to_be_bytes());
        let mut out = Vec::new();
        LearningReader::with_cache(&huge[..], key.clone(), c)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, huge);
    }

    #[test]
    fn a_stream_ending_inside_the_record_ends_with_nothing() {
        let mut rec = execnet_bootstrap::CODE_RECORD_MAGIC.to_vec();
        rec.extend(&3u32.to_be_bytes());
        rec.extend(b"3.x");
        rec.extend(&100u32.to_be_bytes());
        rec.extend(&[7u8; 40]);
        let key = test_key("truncated");
        let c = own_cache();
        let mut out = Vec::new();
        LearningReader::with_cache(&rec[..], key.clone(), c)
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        assert!(c.get(&key).is_none());
    }

    #[test]
    fn a_record_split_over_many_reads_is_reassembled() {
        // One byte per read: the record's every boundary falls mid-read.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(1).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut rec = execnet_bootstrap::CODE_RECORD_MAGIC.to_vec();
        rec.extend(&4u32.to_be_bytes());
        rec.extend(b"3.99");
        rec.extend(&5u32.to_be_bytes());
        rec.extend(b"CODE!");
        rec.extend(b"frames");
        let key = test_key("trickle");
        let cache = own_cache();
        let mut out = Vec::new();
        LearningReader::with_cache(Trickle(&rec), key.clone(), cache)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"frames");
        let c = cache.get(&key).unwrap();
        assert_eq!((c.version.as_str(), &c.code[..]), ("3.99", &b"CODE!"[..]));
    }

    #[test]
    fn the_cache_keeps_at_most_its_bound() {
        let c = own_cache();
        let compiled = || Compiled {
            version: "3.x".into(),
            code: vec![1, 2, 3],
        };
        for i in 0..MAX_ENTRIES + 5 {
            c.insert(test_key(&i.to_string()), compiled());
        }
        assert_eq!(lock(&c.entries).len(), MAX_ENTRIES);
        // The newest is always kept; replacing an entry evicts nothing.
        let last = test_key(&(MAX_ENTRIES + 4).to_string());
        assert!(c.get(&last).is_some());
        c.insert(last.clone(), compiled());
        assert_eq!(lock(&c.entries).len(), MAX_ENTRIES);
    }
}
