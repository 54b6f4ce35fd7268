//! `RSync`: one local directory tree to many gateways at once.
//!
//! The host walks the source once and sends the listing (paths, modes,
//! mtimes in nanoseconds, sizes, link targets) to every target; each target
//! (`bootstrap/rsync_remote.py`) creates directories, symlinks, deletes
//! extras (with `delete`) and answers which files it needs: those whose
//! size or mtime differ, with the SHA-256 of its copy when only the mtime
//! differs. The host then reads each needed file once and sends it to every
//! target that needs it: files smaller than [`CHUNK`] travel together, up
//! to [`BATCH_BYTES`] per item, larger ones are streamed in chunks of
//! [`CHUNK`] bytes; a file whose content turns out equal only gets its mode
//! and mtime set. Channel windows give backpressure (nothing is
//! acknowledged item by item), so memory stays at a few chunks per target
//! whatever the file sizes.
//!
//! Symlinks pointing inside the tree become relative links (the tree stays
//! relocatable; execnet makes absolute ones point into the destination);
//! others are copied verbatim. FIFOs, sockets and devices are an error
//! naming the path ([`Error::CannotSync`]). Files that vanish during the
//! walk or before they are read are skipped.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::multi::join_all;
use crate::{Channel, Value};

/// Bytes per data item when streaming a file.
pub const CHUNK: usize = 1 << 20;
/// Listing entries per item (small: the targets start comparing early).
const BATCH: usize = 256;
/// How long a failed target may take to report why.
const ERROR_WAIT: Duration = Duration::from_secs(10);
/// Bytes of small files gathered into one item (per target), at most about.
const BATCH_BYTES: usize = 1 << 20;

/// Options of one target.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TargetOptions {
    /// Remove files and directories at the target that the source (as
    /// filtered) does not have.
    pub delete: bool,
}

impl TargetOptions {
    /// The defaults: nothing is deleted.
    pub fn new() -> TargetOptions {
        TargetOptions::default()
    }
    /// Sets [`delete`](Self::delete).
    pub fn delete(mut self, delete: bool) -> TargetOptions {
        self.delete = delete;
        self
    }
}

/// Counters of one [`RSync::send`]. Transfers count once per target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Targets synced.
    pub targets: u64,
    /// Regular files in the (filtered) source.
    pub files_listed: u64,
    /// Their bytes.
    pub bytes_listed: u64,
    /// Directories in the source (the root included).
    pub dirs_listed: u64,
    /// Symlinks in the source.
    pub links_listed: u64,
    /// File transfers the targets asked for (known after they answered).
    pub files_to_send: u64,
    /// Their bytes.
    pub bytes_to_send: u64,
    /// Files sent (per target).
    pub files_sent: u64,
    /// Bytes sent (per target).
    pub bytes_sent: u64,
    /// Files a target already had (same size and mtime, or same content).
    pub files_skipped: u64,
    /// Their bytes.
    pub bytes_skipped: u64,
    /// Files that vanished before they could be read.
    pub files_vanished: u64,
    /// Entries removed at targets (`delete`).
    pub deleted: u64,
}

/// Where a [`send`](RSync::send) is, for progress callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// The source was walked (`*_listed` are final).
    Listed,
    /// Every target answered (`files_to_send`, `bytes_to_send` are known).
    Compared,
    /// A chunk or a whole file went out (`bytes_sent` grew).
    Sending,
    /// All done.
    Done,
}

/// What a progress callback sees.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Progress<'a> {
    /// Where the send is.
    pub phase: Phase,
    /// The counters so far.
    pub stats: &'a Stats,
    /// The file being sent (relative to the source), while sending.
    pub path: Option<&'a Path>,
}

/// A target's need of a file: (entry index or target index, the SHA-256 of
/// the target's copy when only its mtime differs).
type Need = (usize, Option<Vec<u8>>);

type Filter = Box<dyn FnMut(&Path) -> bool + Send>;
type ProgressFn = Box<dyn FnMut(&Progress<'_>) + Send>;

/// Sends a directory tree to one or more gateways (async API;
/// [`crate::blocking::RSync`] is the blocking face).
///
/// ```no_run
/// # async fn demo() -> execnet::Result<()> {
/// let gw = execnet::makegateway("popen").await?;
/// let mut rsync = execnet::RSync::new("src");
/// rsync.add_target(&gw, "/tmp/copy", true);
/// let stats = rsync.send().await?;
/// println!("{} files, {} bytes sent", stats.files_sent, stats.bytes_sent);
/// # Ok(()) }
/// ```
pub struct RSync {
    source: PathBuf,
    targets: Vec<Target>,
    filter: Option<Filter>,
    progress: Option<ProgressFn>,
}

struct Target {
    gateway: Gateway,
    dest: PathBuf,
    options: TargetOptions,
}

impl fmt::Debug for RSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RSync")
            .field("source", &self.source)
            .field(
                "targets",
                &self
                    .targets
                    .iter()
                    .map(|t| (t.gateway.id(), &t.dest))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// One entry of the walk.
struct Entry {
    /// Relative path, `/`-separated (empty for the root).
    rel: PathBuf,
    kind: Kind,
}

enum Kind {
    Dir { mode: u32 },
    File { mode: u32, mtime_ns: i64, size: u64 },
    Link { target: Vec<u8> },
}

/// A target during a send.
struct Live {
    id: String,
    ch: Channel,
    failed: Option<Error>,
    /// Small files waiting to go out together: `(index, data)` items.
    batch: Vec<Value>,
    batch_bytes: usize,
}

impl Live {
    fn new(id: String, ch: Channel) -> Live {
        Live {
            id,
            ch,
            failed: None,
            batch: Vec::new(),
            batch_bytes: 0,
        }
    }

    /// Sends `v` (waiting for room in the channel window); a failure marks
    /// the target.
    async fn send(&mut self, v: &Value) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.ch.send_value(v).await {
            tracing::debug!(gateway = %self.id, error = %e, "rsync target failed");
            self.failed = Some(e);
        }
    }

    /// Sends the small files gathered so far, if any.
    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if self.failed.is_some() {
            return;
        }
        let item = Value::Tuple(vec![Value::str("F"), Value::List(files)]);
        self.send(&item).await;
    }

    /// The next item from the target.
    async fn reply(&mut self) -> Result<Value> {
        self.ch.receive_value(None).await
    }
}

impl RSync {
    /// A sync of the directory `source` (to targets added next).
    pub fn new(source: impl AsRef<Path>) -> RSync {
        RSync {
            source: source.as_ref().to_path_buf(),
            targets: Vec::new(),
            filter: None,
            progress: None,
        }
    }

    /// Adds a target: `dest` on `gateway` (created if missing). With
    /// `delete`, what the source does not have is removed there.
    pub fn add_target(&mut self, gateway: &Gateway, dest: impl AsRef<Path>, delete: bool) {
        self.add_target_with(gateway, dest, TargetOptions::new().delete(delete));
    }

    /// Adds a target with options.
    pub fn add_target_with(
        &mut self,
        gateway: &Gateway,
        dest: impl AsRef<Path>,
        options: TargetOptions,
    ) {
        self.targets.push(Target {
            gateway: gateway.clone(),
            dest: dest.as_ref().to_path_buf(),
            options,
        });
    }

    /// Only paths for which `f(full_path)` is true are synced (a directory
    /// left out is left out whole). Called once per path during the walk.
    pub fn filter(&mut self, f: impl FnMut(&Path) -> bool + Send + 'static) -> &mut Self {
        self.filter = Some(Box::new(f));
        self
    }

    /// Calls `f` as the send goes on (on the thread running `send`).
    pub fn progress(&mut self, f: impl FnMut(&Progress<'_>) + Send + 'static) -> &mut Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// How many targets are waiting for `send`.
    pub fn targets(&self) -> usize {
        self.targets.len()
    }

    /// Syncs the source to every target at once and uses the targets up (a
    /// second `send` needs new ones: [`Error::NoTargets`]). If a target
    /// fails, the others are still synced and the first failure is
    /// returned as [`Error::SyncTarget`].
    pub async fn send(&mut self) -> Result<Stats> {
        if self.targets.is_empty() {
            return Err(Error::NoTargets);
        }
        let targets = std::mem::take(&mut self.targets);
        let root = std::fs::canonicalize(&self.source).map_err(|e| Error::CannotSync {
            path: self.source.clone(),
            reason: e.to_string(),
        })?;
        if !root.is_dir() {
            return Err(Error::CannotSync {
                path: self.source.clone(),
                reason: "not a directory".into(),
            });
        }
        let mut walker = Walker::new(&root)?;
        // Start the remote side everywhere (it starts up while the source is
        // walked); a target that cannot start (its gateway is gone) fails
        // alone.
        let mut live = Vec::new();
        let mut not_started = None;
        for t in &targets {
            let id = t.gateway.id().to_string();
            let ch = match t.gateway.remote_exec(execnet_bootstrap::RSYNC_SOURCE).await {
                Ok(ch) => ch,
                Err(e) => {
                    not_started.get_or_insert(Error::SyncTarget {
                        gateway: id,
                        error: Box::new(e),
                    });
                    continue;
                }
            };
            let hello = Value::Tuple(vec![
                Value::Bytes(t.dest.as_os_str().as_bytes().to_vec()),
                Value::Bool(t.options.delete),
            ]);
            live.push(Live::new(id, ch));
            let n = live.len() - 1;
            send_all(&mut live[n..], &hello).await;
        }

        // The listing, sent as the walk goes (the targets compare while the
        // walk goes on), then every target's needs.
        let mut entries = Vec::new();
        let mut sent = 0;
        loop {
            let more = match walker.step(&mut entries, self.filter.as_mut()) {
                Ok(more) => more,
                Err(e) => {
                    for t in &live {
                        let _ = t.ch.close();
                    }
                    return Err(e);
                }
            };
            if entries.len() - sent >= BATCH || (!more && entries.len() > sent) {
                let end = entries.len().min(sent + BATCH);
                let items = entries[sent..end].iter().map(entry_value).collect();
                send_all(&mut live, &Value::List(items)).await;
                sent = end;
                if entries.len() > sent {
                    continue;
                }
            }
            if !more {
                break;
            }
        }
        send_all(&mut live, &Value::Null).await;
        let mut stats = Stats {
            targets: targets.len() as u64,
            ..Stats::default()
        };
        for e in &entries {
            match e.kind {
                Kind::Dir { .. } => stats.dirs_listed += 1,
                Kind::File { size, .. } => {
                    stats.files_listed += 1;
                    stats.bytes_listed += size;
                }
                Kind::Link { .. } => stats.links_listed += 1,
            }
        }
        self.report(Phase::Listed, &stats, None);

        let answers = join_all(
            live.iter_mut()
                .map(|t| async move {
                    if t.failed.is_some() {
                        return None;
                    }
                    Some(t.reply().await)
                })
                .collect(),
        )
        .await;
        // index -> (target, digest of its copy if only the mtime differs)
        let mut plan: BTreeMap<usize, Vec<Need>> = BTreeMap::new();
        for (ti, answer) in answers.into_iter().enumerate() {
            let Some(answer) = answer else { continue };
            match answer
                .map_err(Some)
                .and_then(|v| parse_needs(&v).ok_or(None))
            {
                Ok((needs, deleted)) => {
                    stats.deleted += deleted;
                    let mut needed_bytes = 0;
                    for (idx, digest) in needs {
                        let Some(Entry {
                            kind: Kind::File { size, .. },
                            ..
                        }) = entries.get(idx)
                        else {
                            live[ti].failed = Some(Error::Spec(format!(
                                "rsync: target asked for entry {idx}, not a file"
                            )));
                            break;
                        };
                        stats.files_to_send += 1;
                        stats.bytes_to_send += size;
                        needed_bytes += size;
                        plan.entry(idx).or_default().push((ti, digest));
                    }
                    let n = plan.values().flatten().filter(|(t, _)| *t == ti).count() as u64;
                    stats.files_skipped += stats.files_listed.saturating_sub(n);
                    stats.bytes_skipped += stats.bytes_listed.saturating_sub(needed_bytes);
                }
                Err(e) => {
                    live[ti].failed = Some(e.unwrap_or_else(|| {
                        Error::Spec("rsync: malformed answer from the target".into())
                    }))
                }
            }
        }
        self.report(Phase::Compared, &stats, None);

        // The data.
        for (idx, mut wants) in plan {
            wants.retain(|(ti, _)| live[*ti].failed.is_none());
            let Some(Entry {
                rel,
                kind: Kind::File { size, .. },
            }) = entries.get(idx)
            else {
                continue;
            };
            let path = root.join(rel);
            let index = Value::Int(idx as i64);
            if wants.iter().any(|(_, d)| d.is_some()) {
                // Some target has a copy of the same size: compare content.
                let local = sha256(&path).ok();
                let mut same = Vec::new();
                wants.retain(|(ti, d)| {
                    let equal = d.is_some() && *d == local;
                    if equal {
                        same.push(*ti);
                    }
                    !equal
                });
                let touch = Value::Tuple(vec![Value::str("t"), index.clone()]);
                send_some(&mut live, &same, &touch).await;
                stats.files_to_send -= same.len() as u64;
                stats.bytes_to_send -= size * same.len() as u64;
                stats.files_skipped += same.len() as u64;
                stats.bytes_skipped += size * same.len() as u64;
            }
            let to: Vec<usize> = wants.iter().map(|(ti, _)| *ti).collect();
            if to.is_empty() {
                continue;
            }
            self.stream_file(&mut live, &to, &path, rel, index, &mut stats)
                .await;
        }
        join_all(live.iter_mut().map(|t| t.flush()).collect()).await;
        send_all(&mut live, &Value::Null).await;

        // Every target confirms, then closes.
        let dones = join_all(
            live.iter_mut()
                .map(|t| async move {
                    if t.failed.is_some() {
                        return None;
                    }
                    let r = t.reply().await;
                    Some(r.and(t.ch.waitclose(Some(ERROR_WAIT)).await))
                })
                .collect(),
        )
        .await;
        for (t, r) in live.iter_mut().zip(dones) {
            if let Some(Err(e)) = r {
                t.failed.get_or_insert(e);
            }
        }
        self.report(Phase::Done, &stats, None);
        if let Some(e) = not_started {
            return Err(e);
        }
        for t in live {
            if let Some(e) = t.failed {
                // A send that failed because the remote raised: its error
                // explains more than `ChannelClosed`.
                let e = match (&e, t.ch.waitclose(Some(ERROR_WAIT)).await) {
                    (Error::ChannelClosed | Error::EndOfChannel, Err(remote)) => remote,
                    _ => e,
                };
                return Err(Error::SyncTarget {
                    gateway: t.id,
                    error: Box::new(e),
                });
            }
        }
        Ok(stats)
    }

    /// Reads `path` once and sends it to the targets `to`: one item for a
    /// file up to [`CHUNK`] bytes, else a stream of chunks.
    async fn stream_file(
        &mut self,
        live: &mut [Live],
        to: &[usize],
        path: &Path,
        rel: &Path,
        index: Value,
        stats: &mut Stats,
    ) {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(_) => {
                // Vanished (or became unreadable) since the walk: the
                // targets keep what they have.
                stats.files_vanished += 1;
                return;
            }
        };
        let first = read_chunk(&mut file);
        let first = match first {
            Ok(b) => b,
            Err(_) => {
                stats.files_vanished += 1;
                return;
            }
        };
        let n = to.len() as u64;
        if first.len() < CHUNK {
            // Goes out with other small files.
            let len = first.len();
            let mut full = Vec::new();
            for (ti, t) in live.iter_mut().enumerate() {
                if !to.contains(&ti) || t.failed.is_some() {
                    continue;
                }
                t.batch.push(Value::Tuple(vec![
                    index.clone(),
                    Value::Bytes(first.clone()),
                ]));
                t.batch_bytes += len + 64;
                if t.batch_bytes >= BATCH_BYTES {
                    full.push(ti);
                }
            }
            if !full.is_empty() {
                join_all(
                    live.iter_mut()
                        .enumerate()
                        .filter(|(ti, _)| full.contains(ti))
                        .map(|(_, t)| t.flush())
                        .collect(),
                )
                .await;
            }
            let len = len as u64;
            stats.files_sent += n;
            stats.bytes_sent += len * n;
            self.report(Phase::Sending, stats, Some(rel));
            return;
        }
        send_some(
            live,
            to,
            &Value::Tuple(vec![Value::str("w"), index.clone()]),
        )
        .await;
        let mut chunk = first;
        let ok = loop {
            let len = chunk.len() as u64;
            send_some(live, to, &Value::Bytes(chunk)).await;
            stats.bytes_sent += len * n;
            self.report(Phase::Sending, stats, Some(rel));
            if len < CHUNK as u64 {
                break true;
            }
            chunk = match read_chunk(&mut file) {
                Ok(c) if c.is_empty() => break true,
                Ok(c) => c,
                Err(_) => break false,
            };
        };
        send_some(
            live,
            to,
            &Value::Tuple(vec![Value::str("e"), index, Value::Bool(ok)]),
        )
        .await;
        if ok {
            stats.files_sent += n;
        } else {
            stats.files_vanished += 1;
        }
    }

    fn report(&mut self, phase: Phase, stats: &Stats, path: Option<&Path>) {
        if let Some(f) = &mut self.progress {
            f(&Progress { phase, stats, path });
        }
    }
}

/// Sends `v` to every live target at once; a failure marks the target.
async fn send_all(live: &mut [Live], v: &Value) {
    let all: Vec<usize> = (0..live.len()).collect();
    send_some(live, &all, v).await;
}

/// Sends `v` to the targets `to` at once; a failure marks the target.
async fn send_some(live: &mut [Live], to: &[usize], v: &Value) {
    let sends = live
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| to.contains(i))
        .map(|(_, t)| t.send(v))
        .collect();
    join_all(sends).await;
}

/// Reads up to [`CHUNK`] bytes (less only at the end of the file).
fn read_chunk(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK);
    file.by_ref().take(CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

fn sha256(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_vec())
}

fn entry_value(e: &Entry) -> Value {
    let rel = Value::Bytes(e.rel.as_os_str().as_bytes().to_vec());
    match &e.kind {
        Kind::Dir { mode } => Value::Tuple(vec![rel, Value::Int(0), Value::Int(i64::from(*mode))]),
        Kind::File {
            mode,
            mtime_ns,
            size,
        } => Value::Tuple(vec![
            rel,
            Value::Int(1),
            Value::Int(i64::from(*mode)),
            Value::Int(*mtime_ns),
            Value::Int(i64::try_from(*size).unwrap_or(i64::MAX)),
        ]),
        Kind::Link { target } => {
            Value::Tuple(vec![rel, Value::Int(2), Value::Bytes(target.clone())])
        }
    }
}

/// `("needs", [(index, digest|None), ...], deleted)`.
fn parse_needs(v: &Value) -> Option<(Vec<Need>, u64)> {
    let Value::Tuple(parts) = v else { return None };
    let [tag, Value::List(needs), deleted] = parts.as_slice() else {
        return None;
    };
    if tag.as_str() != Some("needs") {
        return None;
    }
    let deleted = u64::try_from(deleted.as_i64()?).ok()?;
    let mut out = Vec::with_capacity(needs.len());
    for n in needs {
        let Value::Tuple(pair) = n else { return None };
        let [idx, digest] = pair.as_slice() else {
            return None;
        };
        let idx = usize::try_from(idx.as_i64()?).ok()?;
        let digest = match digest {
            Value::Null => None,
            Value::Bytes(b) => Some(b.clone()),
            _ => return None,
        };
        out.push((idx, digest));
    }
    Some((out, deleted))
}

/// Walks a root (canonical), directories before their contents, names
/// sorted, one directory per [`step`](Walker::step). Paths that vanish are
/// skipped; special files are an error.
struct Walker {
    root: PathBuf,
    /// Directories still to list, the next last.
    stack: Vec<PathBuf>,
}

impl Walker {
    /// A walk of `root`; its entry is the first [`step`](Walker::step)
    /// gives.
    fn new(root: &Path) -> Result<Walker> {
        std::fs::metadata(root)?;
        Ok(Walker {
            root: root.to_path_buf(),
            stack: Vec::new(),
        })
    }

    /// Appends the entries of the next directory to `out`; false when
    /// the walk is over.
    fn step(&mut self, out: &mut Vec<Entry>, mut filter: Option<&mut Filter>) -> Result<bool> {
        if out.is_empty() {
            let meta = std::fs::metadata(&self.root)?;
            out.push(Entry {
                rel: PathBuf::new(),
                kind: Kind::Dir {
                    mode: meta.permissions().mode() & 0o7777,
                },
            });
            self.stack.push(PathBuf::new());
            return Ok(true);
        }
        let Some(dir_rel) = self.stack.pop() else {
            return Ok(false);
        };
        let dir = self.root.join(&dir_rel);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => {
                return Err(Error::CannotSync {
                    path: dir,
                    reason: e.to_string(),
                })
            }
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let full = dir.join(&name);
            if let Some(f) = filter.as_mut() {
                if !f(&full) {
                    continue;
                }
            }
            let rel = dir_rel.join(&name);
            let meta = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(_) => continue, // vanished
            };
            let ft = meta.file_type();
            let mode = meta.permissions().mode() & 0o7777;
            let kind = if ft.is_dir() {
                subdirs.push(rel.clone());
                Kind::Dir { mode }
            } else if ft.is_file() {
                Kind::File {
                    mode,
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                    size: meta.len(),
                }
            } else if ft.is_symlink() {
                let target = match std::fs::read_link(&full) {
                    Ok(t) => t,
                    Err(_) => continue, // vanished
                };
                Kind::Link {
                    target: link_target(&self.root, &full, &target),
                }
            } else {
                let what = if ft.is_fifo() {
                    "a FIFO"
                } else if ft.is_socket() {
                    "a socket"
                } else if ft.is_block_device() {
                    "a block device"
                } else if ft.is_char_device() {
                    "a character device"
                } else {
                    "not a file, directory or symlink"
                };
                return Err(Error::CannotSync {
                    path: full,
                    reason: format!("is {what}"),
                });
            };
            out.push(Entry { rel, kind });
        }
        // Depth first, in name order: push in reverse.
        self.stack.extend(subdirs.into_iter().rev());
        Ok(!self.stack.is_empty())
    }
}

/// The target to create for the link at `link` (under `root`): relative
/// to the link's directory if it points inside the tree, else verbatim.
fn link_target(root: &Path, link: &Path, target: &Path) -> Vec<u8> {
    let verbatim = || target.as_os_str().as_bytes().to_vec();
    let Some(dir) = link.parent() else {
        return verbatim();
    };
    let absolute = normalize(&dir.join(target));
    let (Ok(to), Ok(from)) = (absolute.strip_prefix(root), dir.strip_prefix(root)) else {
        return verbatim();
    };
    let to: Vec<Component> = to.components().collect();
    let from: Vec<Component> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        rel.push(".");
    }
    rel.as_os_str().as_bytes().to_vec()
}

/// Resolves `.` and `..` lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        let root = Path::new("/src");
        let t = |link: &str, target: &str| {
            String::from_utf8(link_target(root, Path::new(link), Path::new(target))).unwrap()
        };
        assert_eq!(t("/src/rellink", "subdir/existant"), "subdir/existant");
        assert_eq!(t("/src/abslink", "/src/subdir/existant"), "subdir/existant");
        assert_eq!(t("/src/sub/l", "/src/sub/f"), "f");
        assert_eq!(t("/src/sub/l", "/src/f"), "../f");
        assert_eq!(t("/src/sub/l", ".."), "..");
        assert_eq!(t("/src/sub/l", "/"), "/");
        assert_eq!(t("/src/sub/l", "../../etc"), "../../etc");
        assert_eq!(t("/src/l", "/srcx/f"), "/srcx/f");
        assert_eq!(t("/src/sub/l", "/src/sub"), ".");
    }
}
