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
//!
//! `popen//fork`'s fork server (`bootstrap/forkserver.py`) is started the
//! same way and cached the same way, as entries of its own ([`Unit`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::sync::{lock, wait_timeout};

mod disk;
mod record;

pub(crate) use disk::Disk;
pub(crate) use record::LearningReader;

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

/// What an entry holds the compiled code of: the worker (every popen
/// start, and each fork server), or `popen//fork`'s fork server itself
/// (`bootstrap/forkserver.py`, ~2.3 ms to compile on CPython 3.11 here, on
/// the path of every first fork-mode gateway of a host process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Unit {
    Worker,
    ForkServer,
}

impl Unit {
    /// The compressed source the interpreter compiles.
    fn compressed(self) -> &'static [u8] {
        match self {
            Unit::Worker => execnet_bootstrap::worker_compressed(),
            Unit::ForkServer => execnet_bootstrap::forkserver_compressed(),
        }
    }

    /// What a disk entry's digest starts with: the format and the unit.
    fn tag(self) -> &'static [u8] {
        match self {
            Unit::Worker => b"execnet-rs compiled worker v1\0",
            Unit::ForkServer => b"execnet-rs compiled fork server v1\0",
        }
    }
}

/// What identifies "the same interpreter" (and what it compiled) for the
/// cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    unit: Unit,
    argv: Vec<String>,
    /// The program file, resolved (symlinks followed).
    path: PathBuf,
    /// (device, inode, size, mtime in ns) of the program file.
    program: (u64, u64, u64, i128),
}

impl Key {
    /// SHA-256 of everything the disk entry is for: this key, the unit's
    /// source and the file format.
    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.unit.tag());
        h.update(source_digest(self.unit));
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

/// SHA-256 of the unit's compressed source (what the interpreter compiles).
fn source_digest(unit: Unit) -> &'static [u8; 32] {
    static WORKER: OnceLock<[u8; 32]> = OnceLock::new();
    static FORK_SERVER: OnceLock<[u8; 32]> = OnceLock::new();
    let d = match unit {
        Unit::Worker => &WORKER,
        Unit::ForkServer => &FORK_SERVER,
    };
    d.get_or_init(|| Sha256::digest(unit.compressed()).into())
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
    unit: Unit,
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
                unit: self.unit,
                header: None,
                compiled: None,
                learn: None,
            },
        }
    }
}

/// What one start writes to its interpreter, and how its stdout is read.
pub(crate) struct Start {
    unit: Unit,
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
        let source = key.unit.compressed().len();
        Start {
            unit: key.unit,
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
        let source = key.unit.compressed().len();
        Start {
            unit: key.unit,
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
        parts.push(self.unit.compressed());
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
    boot_unit(Unit::Worker, argv, env)
}

/// Like [`boot`], for what `unit` is.
pub(crate) fn boot_unit(unit: Unit, argv: &[String], env: &[(String, String)]) -> Boot {
    let Some((path, program)) = argv.first().and_then(|p| program_id(p, env)) else {
        // Not found: the spawn will say so; nothing to key a cache entry on.
        return Boot {
            loader: execnet_bootstrap::loader(unit.compressed().len()),
            unit,
            key: None,
        };
    };
    // The rest of the environment cannot change which binary runs, and the
    // loader's version check covers what it could change.
    Boot {
        loader: execnet_bootstrap::boot_loader().to_string(),
        unit,
        key: Some(Key {
            unit,
            argv: argv.to_vec(),
            path,
            program,
        }),
    }
}

// ------------------------------------------------------------------ disk

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

#[cfg(test)]
mod tests;
