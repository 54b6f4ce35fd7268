//! Unit tests of the compiled-worker cache: the memory and disk layers,
//! single-flight, the code record.

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
        unit: Unit::Worker,
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
