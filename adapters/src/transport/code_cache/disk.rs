//! The disk layer of the compiled-worker cache (see the parent module).

use super::*;

/// The disk layer: one file per entry in one directory.
///
/// File layout (integers big-endian):
///
/// ```text
/// "EXNDISK1"              8 bytes
/// key digest              32 bytes  (Key::digest: key, unit and its source, format)
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
    pub(super) fn from_env() -> Option<Disk> {
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
    pub(super) fn new(dir: PathBuf) -> Disk {
        Disk { dir }
    }

    pub(super) fn file(&self, digest: &[u8; 32]) -> PathBuf {
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
    pub(super) fn load(&self, key: &Key) -> Option<Compiled> {
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
    pub(super) fn store(&self, key: &Key, c: &Compiled) {
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
