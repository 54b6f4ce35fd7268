//! The compiled-worker cache of popen gateways: in memory, and on disk.
//!
//! Compiling the worker's source is most of what a start costs above the
//! bare interpreter (~10 ms of ~12 ms on CPython 3.11 here). A popen start
//! runs [`execnet_bootstrap::boot_loader`], whose stdin begins with a header
//! saying whether marshal data comes ahead of the source. When the host has
//! none for this interpreter, the interpreter compiles the source and writes
//! the marshalled code back on stdout, in a record ahead of its HELLO;
//! [`LearningReader`] takes that record off the stream before the driver
//! sees any byte, and keeps it here. Later starts send the marshal data,
//! which the interpreter loads (~0.5 ms) instead of compiling.
//!
//! # Keys and safety
//!
//! Marshal data is specific to an interpreter version, and loading another
//! version's could crash the interpreter; loading foreign marshal data is
//! running foreign code. Entries are keyed by the command line and the
//! identity of the program file it runs (resolved path, device, inode,
//! size, modification time; found on the child's `PATH`) and, on disk, by
//! a hash of the worker source too. The loader itself compares
//! `sys.version` before loading: on a mismatch it compiles the source
//! (always sent too) and hands the new code back, which replaces the entry.
//!
//! # On disk
//!
//! Fresh host processes (command-line runs, test runs) would otherwise pay
//! the compile on their first start, so learned code is also written to a
//! directory: `$EXECNET_CACHE_DIR`, else `$XDG_CACHE_HOME/execnet-rs`, else
//! `~/.cache/execnet-rs`; `EXECNET_CACHE_DIR=off` turns the disk layer off.
//! The directory is created 0700 and used only if it is ours and not
//! writable by group or others. A file is one entry (see [`Disk`] for its
//! layout), written 0600 under a temporary name and renamed into place, so
//! readers in other processes see a whole old or a whole new file. It is
//! used only if it is a regular file of ours, not group/world-writable, of
//! exactly the length its header says, with a matching checksum and key
//! digest; anything else is ignored (the start compiles and overwrites it).
//! At most [`MAX_DISK_ENTRIES`] entries are kept (the oldest go).
//!
//! # Single-flight
//!
//! N concurrent starts of one interpreter that finds nothing cached compile
//! once: the first becomes the *leader* (it reads the disk, and compiles if
//! that fails), the others spawn their interpreters at once but wait, at
//! most [`FLIGHT_WAIT`], before writing their stdin, then send the leader's
//! code. If the leader fails they compile themselves.
//!
//! The memory layer holds at most [`MAX_ENTRIES`] interpreters (~130 KB
//! each).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::sync::{lock, wait_timeout};

/// Longest `sys.version` accepted in a record (CPython's is ~80 bytes).
const MAX_VERSION: usize = 1024;
/// Largest marshalled worker accepted in a record (it is ~130 KB).
const MAX_CODE: usize = 16 << 20;
/// Bytes read from the interpreter at once while the record comes in.
const READ_CHUNK: usize = 64 << 10;
/// Interpreters kept in memory; a start of another one then compiles as
/// without a cache (and replaces an entry).
const MAX_ENTRIES: usize = 16;
/// Entries kept on disk; writing one more removes the oldest.
pub(crate) const MAX_DISK_ENTRIES: usize = 32;
/// How long a start waits for another start of the same interpreter that
/// is compiling the worker, before compiling itself.
pub(crate) const FLIGHT_WAIT: Duration = Duration::from_secs(10);
/// A temporary file older than this was left by a process that died
/// mid-write: pruning removes it.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// What identifies "the same interpreter" for the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    argv: Vec<String>,
    /// The program file, resolved (symlinks followed).
    path: PathBuf,
    /// (device, inode, size, mtime in ns) of the program file.
    program: (u64, u64, u64, i128),
}

impl Key {
    /// SHA-256 of everything the disk entry is for: this key, the worker
    /// source and the file format.
    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"execnet-rs compiled worker v1\0");
        h.update(source_digest());
        for a in &self.argv {
            h.update((a.len() as u64).to_be_bytes());
            h.update(a.as_bytes());
        }
        let p = self.path.as_os_str().as_encoded_bytes();
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
        let (dev, ino, size, mtime) = self.program;
        h.update(dev.to_be_bytes());
        h.update(ino.to_be_bytes());
        h.update(size.to_be_bytes());
        h.update(mtime.to_be_bytes());
        h.finalize().into()
    }
}

/// SHA-256 of the compressed worker source (what the interpreter compiles).
fn source_digest() -> &'static [u8; 32] {
    static D: OnceLock<[u8; 32]> = OnceLock::new();
    D.get_or_init(|| Sha256::digest(execnet_bootstrap::worker_compressed()).into())
}

/// A worker compiled by one interpreter.
#[derive(Debug, PartialEq, Eq)]
struct Compiled {
    /// The interpreter's `sys.version`.
    version: String,
    /// `marshal.dumps` of the compiled worker.
    code: Vec<u8>,
}

/// A start of an interpreter that is compiling the worker (or reading it
/// from disk); starts of the same interpreter wait for it.
#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Flight {
    /// Waits until the flight has landed (or crashed), at most `bound`.
    fn wait(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut done = lock(&self.done);
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            done = wait_timeout(&self.cv, done, left).0;
        }
    }
}

/// The leader's hold on its flight: dropping it (the record arrived, the
/// start failed, the stream ended) releases the waiters.
pub(crate) struct Ticket {
    key: Key,
    cache: &'static Cache,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let flight = lock(&self.cache.flights).remove(&self.key);
        if let Some(f) = flight {
            *lock(&f.done) = true;
            f.cv.notify_all();
        }
    }
}

/// Compiled workers by interpreter: at most [`MAX_ENTRIES`] in memory, and
/// the disk layer, if any.
#[derive(Default)]
pub(crate) struct Cache {
    entries: Mutex<HashMap<Key, Arc<Compiled>>>,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    disk: Option<Disk>,
}

impl Cache {
    fn get(&self, key: &Key) -> Option<Arc<Compiled>> {
        lock(&self.entries).get(key).cloned()
    }

    fn insert(&self, key: Key, compiled: Arc<Compiled>) {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            // Any one: a host cycling through more interpreters than this
            // gains little from keeping them all.
            if let Some(old) = entries.keys().next().cloned() {
                entries.remove(&old);
            }
        }
        entries.insert(key, compiled);
    }

    /// What a start of `key` sends: cached code, or none (then it learns,
    /// holding the flight's ticket if it leads one).
    fn resolve(&'static self, key: Key) -> Start {
        if let Some(c) = self.get(&key) {
            return Start::cached(key, c);
        }
        let flight = {
            let mut flights = lock(&self.flights);
            match flights.get(&key) {
                Some(f) => Some(f.clone()),
                None => {
                    // A leader may have landed since the look-up above.
                    if let Some(c) = self.get(&key) {
                        return Start::cached(key, c);
                    }
                    flights.insert(key.clone(), Arc::default());
                    None
                }
            }
        };
        if let Some(f) = flight {
            f.wait(FLIGHT_WAIT);
            return match self.get(&key) {
                Some(c) => {
                    tracing::debug!("compiled worker: waited for another start");
                    Start::cached(key, c)
                }
                None => Start::learn(key, None),
            };
        }
        let ticket = Ticket {
            key: key.clone(),
            cache: self,
        };
        if let Some(c) = self.disk.as_ref().and_then(|d| d.load(&key)) {
            tracing::debug!(bytes = c.code.len(), "compiled worker: loaded from disk");
            let c = Arc::new(c);
            self.insert(key.clone(), c.clone());
            drop(ticket);
            return Start::cached(key, c);
        }
        Start::learn(key, Some(ticket))
    }
}

/// The process's cache, used by every popen start.
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Cache {
        disk: Disk::from_env(),
        ..Cache::default()
    })
}

/// How to start one worker: the `-c` loader now; what to write to its stdin
/// once the interpreter is spawned ([`Boot::resolve`]).
pub(crate) struct Boot {
    /// The `-c` argument.
    pub(crate) loader: String,
    key: Option<Key>,
}

impl Boot {
    /// Decides what the spawned interpreter gets: compiled code from memory
    /// or disk, or the source (then it hands its code back). May wait, at
    /// most [`FLIGHT_WAIT`], for another start of the same interpreter that
    /// is compiling.
    pub(crate) fn resolve(self) -> Start {
        match self.key {
            Some(key) => cache().resolve(key),
            None => Start {
                header: None,
                compiled: None,
                learn: None,
            },
        }
    }
}

/// What one start writes to its interpreter, and how its stdout is read.
pub(crate) struct Start {
    /// The [`execnet_bootstrap::boot_header`]; `None`: the plain source
    /// loader runs.
    header: Option<Vec<u8>>,
    compiled: Option<Arc<Compiled>>,
    /// Set when the interpreter may hand a record back (always with the
    /// boot loader: it compiles if the code's version is not its own).
    learn: Option<(Key, Option<Ticket>)>,
}

impl Start {
    fn cached(key: Key, c: Arc<Compiled>) -> Start {
        let source = execnet_bootstrap::worker_compressed().len();
        Start {
            header: Some(execnet_bootstrap::boot_header(
                c.code.len(),
                &c.version,
                source,
            )),
            compiled: Some(c),
            learn: Some((key, None)),
        }
    }

    fn learn(key: Key, ticket: Option<Ticket>) -> Start {
        let source = execnet_bootstrap::worker_compressed().len();
        Start {
            header: Some(execnet_bootstrap::boot_header(0, "", source)),
            compiled: None,
            learn: Some((key, ticket)),
        }
    }

    /// The parts to write to stdin, in order, before the first frame.
    pub(crate) fn payload(&self) -> Vec<&[u8]> {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(3);
        if let Some(h) = &self.header {
            parts.push(h);
        }
        if let Some(c) = &self.compiled {
            parts.push(&c.code);
        }
        parts.push(execnet_bootstrap::worker_compressed());
        parts
    }

    /// The interpreter's stdout as the driver should read it.
    pub(crate) fn reader<R: Read + Send + 'static>(self, stdout: R) -> Box<dyn Read + Send> {
        match self.learn {
            Some((key, ticket)) => {
                Box::new(LearningReader::with_cache(stdout, key, ticket, cache()))
            }
            None => Box::new(stdout),
        }
    }
}

/// Plans the start of `argv` (the interpreter's command line, without the
/// worker arguments) with `env` added to its environment.
pub(crate) fn boot(argv: &[String], env: &[(String, String)]) -> Boot {
    let Some((path, program)) = argv.first().and_then(|p| program_id(p, env)) else {
        // Not found: the spawn will say so; nothing to key a cache entry on.
        return Boot {
            loader: super::process::source_loader(),
            key: None,
        };
    };
    // The rest of the environment cannot change which binary runs, and the
    // loader's version check covers what it could change.
    Boot {
        loader: execnet_bootstrap::boot_loader().to_string(),
        key: Some(Key {
            argv: argv.to_vec(),
            path,
            program,
        }),
    }
}

// ------------------------------------------------------------------ disk

/// The disk layer: one file per entry in one directory.
///
/// File layout (integers big-endian):
///
/// ```text
/// "EXNDISK1"              8 bytes
/// key digest              32 bytes  (Key::digest: key, worker source, format)
/// version length V        4 bytes
/// code length C           4 bytes
/// SHA-256(version, code)  32 bytes
/// version                 V bytes   (the interpreter's sys.version)
/// code                    C bytes   (marshal.dumps of the compiled worker)
/// ```
///
/// The file is exactly that long; its name is the key digest's first 16
/// bytes in hex with `.exnc`.
pub(crate) struct Disk {
    dir: PathBuf,
}

const DISK_MAGIC: &[u8; 8] = b"EXNDISK1";
const DISK_HEADER: usize = 8 + 32 + 4 + 4 + 32;

impl Disk {
    /// The directory from the environment (see the module docs), or `None`
    /// when the disk layer is off or no directory is known.
    fn from_env() -> Option<Disk> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let dir = match var("EXECNET_CACHE_DIR") {
            Some(v) if v == "off" => return None,
            Some(v) => PathBuf::from(v),
            None => match var("XDG_CACHE_HOME").map(PathBuf::from) {
                Some(x) if x.is_absolute() => x.join("execnet-rs"),
                _ => PathBuf::from(var("HOME")?).join(".cache/execnet-rs"),
            },
        };
        Some(Disk { dir })
    }

    /// A disk layer in `dir` (created on the first store).
    #[cfg(test)]
    fn new(dir: PathBuf) -> Disk {
        Disk { dir }
    }

    fn file(&self, digest: &[u8; 32]) -> PathBuf {
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.exnc"))
    }

    /// Whether the directory exists, is ours, and no one else can write to it.
    fn dir_is_safe(&self) -> bool {
        match std::fs::metadata(&self.dir) {
            Ok(m) => m.is_dir() && owned_and_private(&m),
            Err(_) => false,
        }
    }

    /// The entry for `key`, if there is a trustworthy one.
    fn load(&self, key: &Key) -> Option<Compiled> {
        if !self.dir_is_safe() {
            return None;
        }
        let digest = key.digest();
        let path = self.file(&digest);
        let found = read_entry(&path, &digest);
        if let Err(why) = &found {
            if why.kind() != io::ErrorKind::NotFound {
                tracing::debug!(path = %path.display(), %why, "compiled worker on disk ignored");
            }
        }
        found.ok()
    }

    /// Writes the entry for `key` (best effort: a failure only costs a
    /// later process the compile).
    fn store(&self, key: &Key, c: &Compiled) {
        if let Err(e) = self.try_store(key, c) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "compiled worker not written to disk");
        }
    }

    fn try_store(&self, key: &Key, c: &Compiled) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        if !self.dir_is_safe() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the cache directory is not ours alone",
            ));
        }
        let digest = key.digest();
        let mut data = Vec::with_capacity(DISK_HEADER + c.version.len() + c.code.len());
        data.extend_from_slice(DISK_MAGIC);
        data.extend_from_slice(&digest);
        data.extend_from_slice(&(c.version.len() as u32).to_be_bytes());
        data.extend_from_slice(&(c.code.len() as u32).to_be_bytes());
        data.extend_from_slice(&content_sum(c.version.as_bytes(), &c.code));
        data.extend_from_slice(c.version.as_bytes());
        data.extend_from_slice(&c.code);

        // A name no other writer uses (pid + time + counter), in the same
        // directory: the rename is atomic, a reader sees all or nothing.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{nanos}-{seq}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)?;
            f.write_all(&data)?;
            std::fs::rename(&tmp, self.file(&digest))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        self.prune();
        Ok(())
    }

    /// Keeps at most [`MAX_DISK_ENTRIES`] entries (the most recently
    /// written or used), and removes temporary files of writers that died.
    fn prune(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(m) = e.metadata() else { continue };
            let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.starts_with(".tmp-") {
                if now.duration_since(mtime).unwrap_or_default() > STALE_TEMP {
                    let _ = std::fs::remove_file(e.path());
                }
            } else if name.ends_with(".exnc") {
                entries.push((mtime, e.path()));
            }
        }
        if entries.len() > MAX_DISK_ENTRIES {
            entries.sort();
            let extra = entries.len() - MAX_DISK_ENTRIES;
            for (_, p) in entries.into_iter().take(extra) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Owned by this process's effective user, and not writable by group or
/// others.
fn owned_and_private(m: &std::fs::Metadata) -> bool {
    m.uid() == rustix::process::geteuid().as_raw() && m.mode() & 0o022 == 0
}

fn content_sum(version: &[u8], code: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((version.len() as u64).to_be_bytes());
    h.update(version);
    h.update(code);
    h.finalize().into()
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Reads and checks one entry file (see [`Disk`]).
fn read_entry(path: &Path, digest: &[u8; 32]) -> io::Result<Compiled> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(invalid("not a regular file"));
    }
    if !owned_and_private(&m) {
        return Err(invalid("not ours, or writable by others"));
    }
    let len = m.len();
    if len < DISK_HEADER as u64 || len > (DISK_HEADER + MAX_VERSION + MAX_CODE) as u64 {
        return Err(invalid("bad length"));
    }
    let mut data = Vec::with_capacity(len as usize + 1);
    // One byte more than expected: a file that grew is caught too.
    (&mut f).take(len + 1).read_to_end(&mut data)?;
    if data.len() as u64 != len || &data[..8] != DISK_MAGIC || &data[8..40] != digest {
        return Err(invalid("not an entry for this key"));
    }
    let vlen = u32::from_be_bytes([data[40], data[41], data[42], data[43]]) as usize;
    let clen = u32::from_be_bytes([data[44], data[45], data[46], data[47]]) as usize;
    if vlen > MAX_VERSION || clen > MAX_CODE || DISK_HEADER + vlen + clen != data.len() {
        return Err(invalid("truncated"));
    }
    let version = &data[DISK_HEADER..DISK_HEADER + vlen];
    let code = &data[DISK_HEADER + vlen..];
    if content_sum(version, code)[..] != data[48..80] {
        return Err(invalid("checksum mismatch"));
    }
    let version = std::str::from_utf8(version)
        .map_err(|_| invalid("version is not UTF-8"))?
        .to_string();
    // Recently used: pruning keeps it (best effort; an hour's resolution
    // saves a syscall per start).
    if m.modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > Duration::from_secs(3600))
    {
        let _ = f.set_modified(SystemTime::now());
    }
    Ok(Compiled {
        version,
        code: code.to_vec(),
    })
}

/// The identity of the file `program` runs, found as `Command` finds it:
/// a name with a slash is a path, anything else is looked up on `PATH`
/// (the child's, if `env` sets one): its resolved path and (device, inode,
/// size, mtime in ns).
fn program_id(program: &str, env: &[(String, String)]) -> Option<(PathBuf, (u64, u64, u64, i128))> {
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
    let m = std::fs::metadata(&path).ok()?;
    let resolved = std::fs::canonicalize(&path).unwrap_or(path);
    let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    Some((resolved, (m.dev(), m.ino(), m.size(), mtime)))
}

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
    fn with_cache(
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

#[cfg(test)]
mod tests {
    use super::*;
    use execnet_core::Value;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    fn python() -> Option<String> {
        super::super::popen::default_python().ok()
    }

    /// A cache of the test's own (the process's is shared by every test).
    fn own_cache(disk: Option<&Path>) -> &'static Cache {
        Box::leak(Box::new(Cache {
            disk: disk.map(|d| Disk::new(d.to_path_buf())),
            ..Cache::default()
        }))
    }

    fn test_key(tag: &str) -> Key {
        Key {
            argv: vec![format!("test-{tag}")],
            path: PathBuf::from("/nonexistent"),
            program: (0, 0, 0, 0),
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let d = std::env::temp_dir().join(format!(
                "execnet-code-cache-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
            TempDir(d)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
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

    fn read_all(r: impl Read, key: &Key, c: &'static Cache) -> Vec<u8> {
        let mut out = Vec::new();
        LearningReader::with_cache(r, key.clone(), None, c)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_boot_loader_compiles_and_hands_back_code_that_a_later_start_loads() {
        let Some(py) = python() else {
            eprintln!("SKIPPED: no python3");
            return;
        };
        let loader = execnet_bootstrap::boot_loader();
        let source = execnet_bootstrap::worker_compressed();
        let header = execnet_bootstrap::boot_header(0, "", source.len());
        let out = run(&py, loader, &[&header, source]);
        let key = test_key("learn");
        let c = own_cache(None);
        let rest = read_all(&out[..], &key, c);
        assert!(starts_with_hello(&rest), "frames follow the record");
        let compiled = c.get(&key).expect("the record was cached");
        assert!(compiled.version.starts_with(char::is_numeric));
        assert!(compiled.code.len() > 10_000);

        // The cached start runs the code and sends no record.
        let header =
            execnet_bootstrap::boot_header(compiled.code.len(), &compiled.version, source.len());
        let cached = run(&py, loader, &[&header, &compiled.code, source]);
        assert!(starts_with_hello(&cached));

        // Another version's code is never loaded: the source runs instead,
        // and its record replaces the entry.
        let garbage = vec![0xffu8; compiled.code.len()];
        let header = execnet_bootstrap::boot_header(garbage.len(), "0.0 other", source.len());
        let fallback = run(&py, loader, &[&header, &garbage, source]);
        let other = test_key("other");
        let rest = read_all(&fallback[..], &other, c);
        assert!(starts_with_hello(&rest));
        assert_eq!(c.get(&other).unwrap().version, compiled.version);

        // The older one-purpose loaders still work.
        let out = run(
            &py,
            &execnet_bootstrap::learning_loader(source.len()),
            &[source],
        );
        assert!(starts_with_hello(&read_all(&out[..], &test_key("l2"), c)));
        let loader =
            execnet_bootstrap::cached_loader(compiled.code.len(), &compiled.version, source.len());
        assert!(starts_with_hello(&run(
            &py,
            &loader,
            &[&compiled.code, source]
        )));
    }

    #[test]
    fn a_stream_without_a_record_passes_through_untouched() {
        let data = b"\x00\x00\x00\x05garbage and more".to_vec();
        let key = test_key("invalid");
        let c = own_cache(None);
        assert_eq!(read_all(&data[..], &key, c), data);
        assert!(c.get(&key).is_none());

        // A record claiming an absurd size is not one either.
        let mut huge = execnet_bootstrap::CODE_RECORD_MAGIC.to_vec();
        huge.extend(&(u32::MAX).to_be_bytes());
        assert_eq!(read_all(&huge[..], &key, c), huge);
    }

    #[test]
    fn a_stream_ending_inside_the_record_ends_with_nothing() {
        let mut rec = execnet_bootstrap::CODE_RECORD_MAGIC.to_vec();
        rec.extend(&3u32.to_be_bytes());
        rec.extend(b"3.x");
        rec.extend(&100u32.to_be_bytes());
        rec.extend(&[7u8; 40]);
        let key = test_key("truncated");
        let c = own_cache(None);
        assert!(read_all(&rec[..], &key, c).is_empty());
        assert!(c.get(&key).is_none());
    }

    fn record(version: &str, code: &[u8]) -> Vec<u8> {
        let mut rec = execnet_bootstrap::CODE_RECORD_MAGIC.to_vec();
        rec.extend(&(version.len() as u32).to_be_bytes());
        rec.extend(version.as_bytes());
        rec.extend(&(code.len() as u32).to_be_bytes());
        rec.extend(code);
        rec
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
        let mut rec = record("3.99", b"CODE!");
        rec.extend(b"frames");
        let key = test_key("trickle");
        let cache = own_cache(None);
        assert_eq!(read_all(Trickle(&rec), &key, cache), b"frames");
        let c = cache.get(&key).unwrap();
        assert_eq!((c.version.as_str(), &c.code[..]), ("3.99", &b"CODE!"[..]));
    }

    #[test]
    fn the_cache_keeps_at_most_its_bound() {
        let c = own_cache(None);
        let compiled = || {
            Arc::new(Compiled {
                version: "3.x".into(),
                code: vec![1, 2, 3],
            })
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

    fn sample() -> Compiled {
        Compiled {
            version: "3.11.2 (main) [GCC]".into(),
            code: (0..50_000u32).map(|i| (i * 7) as u8).collect(),
        }
    }

    #[test]
    fn a_stored_entry_is_owner_only_and_loads_back_for_its_key_only() {
        let dir = TempDir::new("store");
        let sub = dir.0.join("a/b");
        let disk = Disk::new(sub.clone());
        let key = test_key("disk");
        disk.store(&key, &sample());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        let files: Vec<_> = std::fs::read_dir(&sub).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "one entry, no temporary file left");
        assert_eq!(mode(&files[0].path()), 0o600);
        assert_eq!(disk.load(&key), Some(sample()));
        assert_eq!(disk.load(&test_key("other")), None);

        // A file with another key's digest under this key's name.
        let other = test_key("other");
        disk.store(&other, &sample());
        std::fs::rename(disk.file(&other.digest()), disk.file(&key.digest())).unwrap();
        assert_eq!(disk.load(&key), None, "an entry for another key");
    }

    #[test]
    fn damaged_or_foreign_entries_are_ignored_and_replaced() {
        let dir = TempDir::new("bad");
        let disk = Disk::new(dir.0.clone());
        let key = test_key("bad");
        let path = disk.file(&key.digest());
        let set_mode =
            |m: u32| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        let good = || {
            disk.store(&key, &sample());
            assert_eq!(disk.load(&key), Some(sample()));
        };
        type Damage = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Damage)> = vec![
            (
                "truncated",
                Box::new(|p| {
                    let len = std::fs::metadata(p).unwrap().len();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(len - 100)
                        .unwrap()
                }),
            ),
            (
                "a flipped byte",
                Box::new(|p| {
                    let mut d = std::fs::read(p).unwrap();
                    let n = d.len();
                    d[n - 10] ^= 1;
                    std::fs::write(p, d).unwrap()
                }),
            ),
            (
                "longer than its header says",
                Box::new(|p| {
                    let mut d = std::fs::read(p).unwrap();
                    d.push(0);
                    std::fs::write(p, d).unwrap()
                }),
            ),
            (
                "garbage",
                Box::new(|p| std::fs::write(p, b"garbage").unwrap()),
            ),
            ("empty", Box::new(|p| std::fs::write(p, b"").unwrap())),
        ];
        for (what, damage) in cases {
            good();
            damage(&path);
            assert_eq!(disk.load(&key), None, "{what}");
        }
        for m in [0o620, 0o602, 0o666] {
            good();
            set_mode(m);
            assert_eq!(disk.load(&key), None, "mode {m:o}");
        }
        good();
        let target = dir.0.join("elsewhere");
        std::fs::rename(&path, &target).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert_eq!(disk.load(&key), None, "a symlink");
        std::fs::remove_file(&path).unwrap();

        good();
        if rustix::process::geteuid().is_root() {
            let nobody = rustix::fs::Uid::from_raw(65534);
            rustix::fs::chown(&path, Some(nobody), None).unwrap();
            assert_eq!(disk.load(&key), None, "owned by someone else");
        } else {
            eprintln!("SKIPPED: a foreign-owned entry (needs root to chown)");
        }
        // Replaced by the next store.
        good();

        // A directory others can write to is not used at all.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(disk.load(&key), None, "a world-writable directory");
        disk.store(&test_key("x"), &sample());
        assert!(!disk.file(&test_key("x").digest()).exists());
    }

    #[test]
    fn pruning_keeps_the_newest_entries_and_drops_stale_temporaries() {
        let dir = TempDir::new("prune");
        let disk = Disk::new(dir.0.clone());
        let stale = dir.0.join(".tmp-1-2-3");
        std::fs::write(&stale, b"half").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3 * 3600);
        let f = std::fs::File::options().write(true).open(&stale).unwrap();
        f.set_modified(old).unwrap();
        let fresh = dir.0.join(".tmp-4-5-6");
        std::fs::write(&fresh, b"being written").unwrap();
        for i in 0..MAX_DISK_ENTRIES + 3 {
            let key = test_key(&format!("p{i}"));
            disk.store(&key, &sample());
            // The first three are the oldest.
            if i < 3 {
                let f = std::fs::File::open(disk.file(&key.digest())).unwrap();
                f.set_modified(old + Duration::from_secs(i as u64)).unwrap();
            }
        }
        let count = std::fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".exnc"))
            .count();
        assert_eq!(count, MAX_DISK_ENTRIES);
        for i in 0..3 {
            assert!(
                disk.load(&test_key(&format!("p{i}"))).is_none(),
                "p{i} pruned"
            );
        }
        assert!(disk.load(&test_key("p3")).is_some());
        assert!(!stale.exists(), "a stale temporary is removed");
        assert!(fresh.exists(), "a recent temporary is left to its writer");
    }

    #[test]
    fn concurrent_resolves_of_one_key_elect_one_leader() {
        let dir = TempDir::new("flight");
        let c = own_cache(Some(&dir.0));
        let key = test_key("flight");
        let first = c.resolve(key.clone());
        assert!(first.compiled.is_none());
        let ticket = first.learn.as_ref().map(|(_, t)| t.is_some());
        assert_eq!(ticket, Some(true), "the first leads");
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let k = key.clone();
                std::thread::spawn(move || c.resolve(k))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        assert!(waiters.iter().all(|w| !w.is_finished()), "the others wait");
        // The leader's record arrives: all of them get its code.
        let mut rec = record("3.99", b"CODE!");
        rec.extend(b"frames");
        let (k, t) = first.learn.unwrap();
        let mut out = Vec::new();
        LearningReader::with_cache(&rec[..], k, t, c)
            .read_to_end(&mut out)
            .unwrap();
        for w in waiters {
            let s = w.join().unwrap();
            assert_eq!(s.compiled.unwrap().code, b"CODE!");
        }
        // And it went to disk: a fresh cache on the same directory loads it.
        let c2 = own_cache(Some(&dir.0));
        let s = c2.resolve(key.clone());
        assert_eq!(s.compiled.unwrap().code, b"CODE!");

        // A leader that fails (no record) releases the waiters, who compile.
        let key = test_key("crash");
        let first = c.resolve(key.clone());
        let w = {
            let k = key.clone();
            std::thread::spawn(move || c.resolve(k))
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(first);
        let s = w.join().unwrap();
        assert!(s.compiled.is_none());
        assert!(s.learn.is_some_and(|(_, t)| t.is_none()));
    }
}
