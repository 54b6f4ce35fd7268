//! RSync against real interpreters and real files (ports of execnet's
//! testing/test_rsync.py, plus larger trees, a 1 GiB file and the CLI).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use execnet::blocking::{Gateway, Group, RSync};
use execnet::{Error, Phase, Stats, TargetOptions};
use execnet_tests::{bounded, TempDir, LIMIT};

struct Dirs {
    _tmp: TempDir,
    source: PathBuf,
    dest1: PathBuf,
    dest2: PathBuf,
}

fn dirs(tag: &str) -> Dirs {
    let tmp = TempDir::new(tag);
    let source = tmp.path().join("source");
    fs::create_dir(&source).unwrap();
    Dirs {
        source,
        dest1: tmp.path().join("dest1"),
        dest2: tmp.path().join("dest2"),
        _tmp: tmp,
    }
}

fn two() -> (Group, Gateway, Gateway) {
    let group = Group::with_specs(["popen//id=gw1", "popen//id=gw2"]).unwrap();
    let (a, b) = (group.get("gw1").unwrap(), group.get("gw2").unwrap());
    (group, a, b)
}

fn write(path: &Path, content: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, content).unwrap();
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn sync(source: &Path, targets: &[(&Gateway, &Path, bool)]) -> Stats {
    let mut rsync = RSync::new(source);
    for (gw, dest, delete) in targets {
        rsync.add_target(gw, dest, *delete);
    }
    rsync.send().unwrap()
}

#[test]
fn no_targets() {
    let d = dirs("notargets");
    let mut rsync = RSync::new(&d.source);
    assert!(matches!(rsync.send(), Err(Error::NoTargets)));
}

#[test]
fn dirsync_to_two_targets_and_delete_on_one() {
    bounded(LIMIT, || {
        let d = dirs("dirsync");
        let (_group, gw1, gw2) = two();
        let file = d.source.join("subdir/file1");
        for s in ["content1", "content2", "content2-a-bit-longer"] {
            write(&file, s);
            sync(
                &d.source,
                &[(&gw1, &d.dest1, false), (&gw2, &d.dest2, false)],
            );
            for dest in [&d.dest1, &d.dest2] {
                assert!(dest.join("subdir").is_dir());
                assert_eq!(fs::read_to_string(dest.join("subdir/file1")).unwrap(), s);
                set_mtime(&dest.join("subdir/file1"), SystemTime::UNIX_EPOCH);
            }
        }
        fs::remove_file(&file).unwrap();
        sync(
            &d.source,
            &[(&gw2, &d.dest2, false), (&gw1, &d.dest1, false)],
        );
        assert!(d.dest1.join("subdir/file1").is_file());
        assert!(d.dest2.join("subdir/file1").is_file());
        let stats = sync(
            &d.source,
            &[(&gw1, &d.dest1, true), (&gw2, &d.dest2, false)],
        );
        assert!(!d.dest1.join("subdir/file1").exists());
        assert!(d.dest2.join("subdir/file1").exists());
        assert_eq!(stats.deleted, 1);
    })
}

#[test]
fn send_twice_needs_new_targets() {
    bounded(LIMIT, || {
        let d = dirs("twice");
        let (_group, gw1, _) = two();
        write(&d.source.join("hello"), "");
        let mut rsync = RSync::new(&d.source);
        rsync.add_target(&gw1, &d.dest1, false);
        rsync.send().unwrap();
        assert!(d.dest1.join("hello").exists());
        assert!(matches!(rsync.send(), Err(Error::NoTargets)));
        rsync.add_target(&gw1, &d.dest2, false);
        rsync.send().unwrap();
        assert!(d.dest2.join("hello").exists());
        assert!(matches!(rsync.send(), Err(Error::NoTargets)));
    })
}

#[test]
fn unchanged_files_are_skipped() {
    bounded(LIMIT, || {
        let d = dirs("skip");
        let (_group, gw1, gw2) = two();
        write(&d.source.join("a"), "a".repeat(100));
        write(&d.source.join("b/c"), "c".repeat(10));
        let s = sync(
            &d.source,
            &[(&gw1, &d.dest1, false), (&gw2, &d.dest2, false)],
        );
        assert_eq!((s.files_sent, s.bytes_sent, s.files_skipped), (4, 220, 0));
        let s = sync(
            &d.source,
            &[(&gw1, &d.dest1, false), (&gw2, &d.dest2, false)],
        );
        assert_eq!(
            (s.files_sent, s.files_skipped, s.bytes_skipped),
            (0, 4, 220)
        );
        // Same size, other mtime, same content: skipped by hash, and the
        // mtime is fixed so that the next run skips by size and mtime.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        set_mtime(&d.dest1.join("a"), t);
        let s = sync(&d.source, &[(&gw1, &d.dest1, false)]);
        assert_eq!((s.files_sent, s.files_skipped), (0, 2));
        assert_eq!(
            fs::metadata(d.dest1.join("a")).unwrap().modified().unwrap(),
            fs::metadata(d.source.join("a"))
                .unwrap()
                .modified()
                .unwrap()
        );
        // Same size and mtime at the target but other content: not seen
        // (as rsync without --checksum); other mtime: sent.
        write(&d.dest1.join("a"), "b".repeat(100));
        set_mtime(&d.dest1.join("a"), t);
        let s = sync(&d.source, &[(&gw1, &d.dest1, false)]);
        assert_eq!((s.files_sent, s.bytes_sent), (1, 100));
        assert_eq!(
            fs::read_to_string(d.dest1.join("a")).unwrap(),
            "a".repeat(100)
        );
    })
}

#[test]
fn permissions() {
    bounded(LIMIT, || {
        let d = dirs("perm");
        let (_group, gw1, _) = two();
        let onedir = d.source.join("one");
        fs::create_dir(&onedir).unwrap();
        fs::set_permissions(&onedir, fs::Permissions::from_mode(0o700)).unwrap();
        let onefile = d.source.join("file");
        write(&onefile, "x");
        fs::set_permissions(&onefile, fs::Permissions::from_mode(0o770)).unwrap();
        let mtime = fs::metadata(&onefile).unwrap().modified().unwrap();
        sync(&d.source, &[(&gw1, &d.dest1, false)]);
        assert_eq!(mode(&d.dest1.join("file")), 0o770);
        assert_eq!(mode(&d.dest1.join("one")), 0o700);
        // Again with changed permissions (same mtime: only the mode moves).
        fs::set_permissions(&onedir, fs::Permissions::from_mode(0o770)).unwrap();
        fs::set_permissions(&onefile, fs::Permissions::from_mode(0o700)).unwrap();
        set_mtime(&onefile, mtime);
        let s = sync(&d.source, &[(&gw1, &d.dest1, false)]);
        assert_eq!(s.files_sent, 0);
        assert_eq!(mode(&d.dest1.join("file")), 0o700);
        assert_eq!(mode(&d.dest1.join("one")), 0o770);
        // mtimes are kept.
        assert_eq!(
            fs::metadata(d.dest1.join("file"))
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
    })
}

#[test]
fn read_only_directories_stay_writable() {
    bounded(LIMIT, || {
        let d = dirs("rodirs");
        let (_group, gw1, _) = two();
        let ro = d.source.join("ro");
        write(&ro.join("inner/f"), "1");
        write(&ro.join("g"), "2");
        fs::set_permissions(ro.join("inner"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(ro.join("g"), fs::Permissions::from_mode(0o444)).unwrap();
        sync(&d.source, &[(&gw1, &d.dest1, false)]);
        assert_eq!(mode(&d.dest1.join("ro")), 0o700);
        assert_eq!(mode(&d.dest1.join("ro/inner")), 0o755);
        assert_eq!(mode(&d.dest1.join("ro/g")), 0o444);
        // A change under read-only directories, to a read-only file.
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(ro.join("g"), fs::Permissions::from_mode(0o644)).unwrap();
        write(&ro.join("g"), "22");
        fs::set_permissions(ro.join("g"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
        sync(&d.source, &[(&gw1, &d.dest1, true)]);
        assert_eq!(fs::read_to_string(d.dest1.join("ro/g")).unwrap(), "22");
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(ro.join("inner"), fs::Permissions::from_mode(0o700)).unwrap();
    })
}

#[test]
fn symlinks_of_every_kind() {
    bounded(LIMIT, || {
        let d = dirs("symlinks");
        let (_group, gw1, _) = two();
        let s = &d.source;
        write(&s.join("subdir/existant"), "x");
        symlink("subdir/existant", s.join("rellink")).unwrap();
        symlink(s.join("subdir/existant"), s.join("abslink")).unwrap();
        symlink("link2", s.join("subdir/link1")).unwrap();
        symlink(s.join("subdir/existant"), s.join("subdir/link2")).unwrap();
        let outside = s.parent().unwrap();
        symlink(outside, s.join("subdir/link3")).unwrap();
        symlink("../../elsewhere", s.join("subdir/relout")).unwrap();
        symlink("nothing-here", s.join("dangling")).unwrap();
        symlink("subdir", s.join("dirlink")).unwrap();
        symlink("..", s.join("subdir/up")).unwrap();
        // At the target, a file and a directory stand where links go.
        write(&d.dest1.join("rellink"), "old");
        write(&d.dest1.join("dirlink/x"), "old");
        let stats = sync(s, &[(&gw1, &d.dest1, false)]);
        assert_eq!(stats.links_listed, 9);
        let link = |p: &str| fs::read_link(d.dest1.join(p)).unwrap();
        assert_eq!(link("rellink"), Path::new("subdir/existant"));
        assert_eq!(link("abslink"), Path::new("subdir/existant"));
        assert_eq!(link("subdir/link1"), Path::new("link2"));
        assert_eq!(link("subdir/link2"), Path::new("existant"));
        assert_eq!(link("subdir/link3"), outside);
        assert_eq!(link("subdir/relout"), Path::new("../../elsewhere"));
        assert_eq!(link("dangling"), Path::new("nothing-here"));
        assert_eq!(link("dirlink"), Path::new("subdir"));
        assert_eq!(link("subdir/up"), Path::new(".."));
        assert_eq!(
            fs::read_to_string(d.dest1.join("abslink")).unwrap(),
            "x",
            "resolves inside the destination"
        );
        // Again: nothing changes, the links stay.
        let again = sync(s, &[(&gw1, &d.dest1, true)]);
        assert_eq!((again.files_sent, again.deleted), (0, 0));
        assert_eq!(link("abslink"), Path::new("subdir/existant"));
    })
}

#[test]
fn type_changes_at_the_target() {
    bounded(LIMIT, || {
        let d = dirs("types");
        let (_group, gw1, _) = two();
        write(&d.source.join("was_dir"), "file now");
        write(&d.source.join("was_file/inner"), "dir now");
        write(&d.dest1.join("was_dir/deep/x"), "old");
        write(&d.dest1.join("was_file"), "old");
        sync(&d.source, &[(&gw1, &d.dest1, false)]);
        assert_eq!(
            fs::read_to_string(d.dest1.join("was_dir")).unwrap(),
            "file now"
        );
        assert_eq!(
            fs::read_to_string(d.dest1.join("was_file/inner")).unwrap(),
            "dir now"
        );
    })
}

#[test]
fn progress_callback() {
    bounded(LIMIT, || {
        let d = dirs("callback");
        let (_group, gw1, _) = two();
        write(&d.source.join("existant"), "a".repeat(100));
        write(&d.source.join("existant2"), "a".repeat(10));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut rsync = RSync::new(&d.source);
        let s2 = seen.clone();
        rsync.progress(move |p| {
            let path = p.path.map(|p| p.to_string_lossy().into_owned());
            s2.lock().unwrap().push((p.phase, p.stats.clone(), path));
        });
        rsync.add_target(&gw1, &d.dest1, false);
        let stats = rsync.send().unwrap();
        let seen = seen.lock().unwrap();
        let phases: Vec<Phase> = seen.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(
            phases,
            [
                Phase::Listed,
                Phase::Compared,
                Phase::Sending,
                Phase::Sending,
                Phase::Done
            ]
        );
        assert_eq!(seen[0].1.bytes_listed, 110);
        assert_eq!(seen[0].1.files_listed, 2);
        assert_eq!(seen[1].1.bytes_to_send, 110);
        assert_eq!(seen[2].1.bytes_sent, 100);
        assert_eq!(seen[2].2.as_deref(), Some("existant"));
        assert_eq!(seen[3].1.bytes_sent, 110);
        assert_eq!(seen[3].2.as_deref(), Some("existant2"));
        assert_eq!(stats, seen[4].1);
    })
}

#[test]
fn filter_and_disappearing_files() {
    bounded(LIMIT, || {
        let d = dirs("disappear");
        let (_group, gw1, _) = two();
        write(&d.source.join("ex"), "a".repeat(100));
        write(&d.source.join("ex2"), "a".repeat(100));
        write(&d.source.join("skipped/x"), "");
        let source = d.source.clone();
        let removed = Arc::new(Mutex::new(false));
        let r2 = removed.clone();
        let mut rsync = RSync::new(&d.source);
        rsync.filter(move |p| {
            assert_ne!(p, source);
            if p.ends_with("ex2") {
                fs::remove_file(p).unwrap();
                *r2.lock().unwrap() = true;
            }
            !p.ends_with("skipped")
        });
        rsync.add_target(&gw1, &d.dest1, false);
        let stats = rsync.send().unwrap();
        assert!(*removed.lock().unwrap());
        assert_eq!(fs::read_dir(&d.dest1).unwrap().count(), 1);
        assert_eq!(fs::read_dir(&d.source).unwrap().count(), 2);
        assert_eq!(stats.files_listed, 1);
    })
}

#[test]
fn special_files_are_an_error_naming_the_path() {
    bounded(LIMIT, || {
        let d = dirs("fifo");
        let (_group, gw1, _) = two();
        write(&d.source.join("ok"), "");
        let fifo = d.source.join("sub/pipe");
        fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let mut rsync = RSync::new(&d.source);
        rsync.add_target(&gw1, &d.dest1, false);
        let e = rsync.send().unwrap_err();
        match &e {
            Error::CannotSync { path, reason } => {
                assert_eq!(path, &fifo);
                assert!(reason.contains("FIFO"), "{reason}");
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("sub/pipe"), "{e}");
        assert!(!d.dest1.exists(), "nothing was sent");
    })
}

#[test]
fn a_failing_target_does_not_stop_the_others() {
    bounded(LIMIT, || {
        let d = dirs("failing");
        let (_group, gw1, gw2) = two();
        write(&d.source.join("f"), "data");
        let blocker = d.dest1.join("a-file");
        write(&blocker, "");
        let mut rsync = RSync::new(&d.source);
        rsync.add_target(&gw1, blocker.join("sub"), false);
        rsync.add_target(&gw2, &d.dest2, false);
        let e = rsync.send().unwrap_err();
        match &e {
            Error::SyncTarget { gateway, error } => {
                assert_eq!(gateway, "gw1");
                assert!(error.as_remote().is_some(), "{error}");
            }
            other => panic!("{other}"),
        }
        assert_eq!(fs::read_to_string(d.dest2.join("f")).unwrap(), "data");
        // The gateway is still usable.
        let ch = gw1.remote_exec("channel.send(1)").unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1);
    })
}

#[test]
fn odd_names_and_multi_chunk_files() {
    bounded(LIMIT, || {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let d = dirs("odd");
        let (_group, gw1, gw2) = two();
        let odd = d.source.join(OsStr::from_bytes(b"caf\xe9 \xff name"));
        write(&odd, "latin-1");
        write(&d.source.join("ünïcødé/ファイル"), "utf-8");
        let big: Vec<u8> = (0..(3 * execnet::CHUNK + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        write(&d.source.join("big"), &big);
        write(&d.source.join("exact"), vec![1u8; execnet::CHUNK]);
        write(&d.source.join("empty"), "");
        let s = sync(
            &d.source,
            &[(&gw1, &d.dest1, false), (&gw2, &d.dest2, false)],
        );
        assert_eq!(s.files_sent, 10);
        for dest in [&d.dest1, &d.dest2] {
            assert_eq!(
                fs::read(dest.join(OsStr::from_bytes(b"caf\xe9 \xff name"))).unwrap(),
                b"latin-1"
            );
            assert_eq!(fs::read(dest.join("ünïcødé/ファイル")).unwrap(), b"utf-8");
            assert!(fs::read(dest.join("big")).unwrap() == big);
            assert_eq!(fs::read(dest.join("exact")).unwrap().len(), execnet::CHUNK);
            assert_eq!(fs::read(dest.join("empty")).unwrap().len(), 0);
            // No temporary file is left behind.
            let names: Vec<_> = fs::read_dir(dest)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(names.len(), 5, "{names:?}");
        }
    })
}

fn make_tree(root: &Path, files: usize, total: usize) {
    let size = total / files;
    for i in 0..files {
        let p = root.join(format!("d{}/e{}/f{i}.dat", i % 20, i % 7));
        let byte = (i % 251) as u8;
        // Every 200th file spans a few chunks; the rest are small.
        let n = if i % 200 == 0 {
            2 * execnet::CHUNK + i
        } else {
            size / 2 + i % 1000
        };
        write(&p, vec![byte; n]);
    }
}

#[test]
fn tree_of_2000_files_to_4_targets() {
    bounded(Duration::from_secs(120), || {
        let tmp = TempDir::new("tree");
        let source = tmp.path().join("source");
        let nfiles: usize = std::env::var("TREE_FILES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        make_tree(&source, nfiles, nfiles * (25 << 10));
        eprintln!("tree made");
        let group = Group::with_specs(vec!["popen"; 4]).unwrap();
        let dests: Vec<PathBuf> = (0..4)
            .map(|i| tmp.path().join(format!("dest{i}")))
            .collect();
        let run = |delete: bool| {
            let mut rsync = RSync::new(&source);
            for (gw, dest) in group.gateways().iter().zip(&dests) {
                rsync.add_target_with(gw, dest, TargetOptions::new().delete(delete));
            }
            let t0 = Instant::now();
            let s = rsync.send().unwrap();
            (s, t0.elapsed())
        };
        let (fresh, t_fresh) = run(false);
        assert_eq!(fresh.files_listed as usize, nfiles);
        assert_eq!(fresh.files_sent as usize, 4 * nfiles);
        eprintln!(
            "rsync {} files / {:.1} MB to 4 targets: fresh {t_fresh:?} ({:.0} MB/s sent)",
            fresh.files_listed,
            fresh.bytes_listed as f64 / 1e6,
            fresh.bytes_sent as f64 / 1e6 / t_fresh.as_secs_f64()
        );
        let (same, t_same) = run(true);
        assert_eq!(
            (
                same.files_sent as usize,
                same.files_skipped as usize,
                same.deleted
            ),
            (0, 4 * nfiles, 0)
        );
        eprintln!("rsync unchanged: {t_same:?}");
        for dest in &dests {
            for i in [0, 1, 999, 1999] {
                let rel = format!("d{}/e{}/f{i}.dat", i % 20, i % 7);
                assert!(fs::read(dest.join(&rel)).unwrap() == fs::read(source.join(&rel)).unwrap());
            }
        }
        group.terminate(Some(Duration::from_secs(2)));
    })
}

fn vm_hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The body of `one_gib_file_to_2_targets`, in a child process so that its
/// peak memory is its own.
#[test]
fn one_gib_child() {
    let Ok(dir) = std::env::var("EXECNET_RSYNC_1GIB_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let group = Group::with_specs(["popen", "popen"]).unwrap();
    let before = vm_hwm_kib();
    let mut rsync = RSync::new(dir.join("source"));
    rsync.add_target(&group.gateways()[0], dir.join("dest1"), false);
    rsync.add_target(&group.gateways()[1], dir.join("dest2"), false);
    let t0 = Instant::now();
    let s = rsync.send().unwrap();
    let took = t0.elapsed();
    assert_eq!(s.bytes_sent, 2 << 30);
    println!(
        "RESULT hwm_before_kib={before} hwm_after_kib={} secs={:.2}",
        vm_hwm_kib(),
        took.as_secs_f64()
    );
}

#[test]
fn one_gib_file_to_2_targets() {
    bounded(Duration::from_secs(120), || {
        let tmp = TempDir::new("gib");
        let source = tmp.path().join("source");
        fs::create_dir(&source).unwrap();
        // Sparse: no disk time on the source side.
        let f = fs::File::create(source.join("big")).unwrap();
        f.set_len(1 << 30).unwrap();
        drop(f);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "one_gib_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EXECNET_RSYNC_1GIB_DIR", tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The child must not outlive this test, even when it hangs.
        let deadline = Instant::now() + Duration::from_secs(100);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the 1 GiB sync did not finish in 100 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // libtest prints "test one_gib_child ... " before it on the same line.
        let line = stdout
            .lines()
            .find_map(|l| l.find("RESULT").map(|i| &l[i..]))
            .expect("a RESULT line");
        eprintln!("1 GiB to 2 targets: {line}");
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        let peak_mib = field("hwm_after_kib=") / 1024.0;
        assert!(peak_mib < 256.0, "peak RSS {peak_mib:.0} MiB");
        for dest in ["dest1", "dest2"] {
            let m = fs::metadata(tmp.path().join(dest).join("big")).unwrap();
            assert_eq!(m.len(), 1 << 30);
        }
    })
}

#[test]
fn cli_rsync() {
    bounded(LIMIT, || {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("execnet");
        if !bin.exists() {
            execnet_tests::skip(
                "the execnet binary is not built (cargo build --release -p execnet-cli)",
            );
            return;
        }
        let d = dirs("cli");
        write(&d.source.join("a/b"), "hello");
        let out = std::process::Command::new(&bin)
            .arg("rsync")
            .arg(&d.source)
            .args(["--gw", "popen", "--gw", "popen"])
            .arg(&d.dest1)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read_to_string(d.dest1.join("a/b")).unwrap(), "hello");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("1 files"), "{err}");
    })
}

#[test]
fn async_rsync() {
    bounded(LIMIT, || {
        let d = dirs("async");
        write(&d.source.join("x"), "y");
        smol::block_on(async {
            let gw = execnet::makegateway("popen").await.unwrap();
            let mut rsync = execnet::RSync::new(&d.source);
            rsync.add_target(&gw, &d.dest1, true);
            let s = rsync.send().await.unwrap();
            assert_eq!(s.files_sent, 1);
            gw.exit().await.unwrap();
        });
        assert_eq!(fs::read_to_string(d.dest1.join("x")).unwrap(), "y");
    })
}

#[test]
fn every_interpreter() {
    bounded(Duration::from_secs(120), || {
        for py in execnet_tests::interpreters() {
            let d = dirs("interp");
            write(&d.source.join("a/b"), "1234");
            write(&d.source.join("big"), vec![7u8; execnet::CHUNK + 5]);
            symlink("a/b", d.source.join("l")).unwrap();
            write(&d.dest1.join("extra/x"), "");
            let gw = execnet::blocking::makegateway(&py.spec()).unwrap();
            let s = sync(&d.source, &[(&gw, &d.dest1, true)]);
            assert_eq!((s.files_sent, s.deleted), (2, 1), "{}", py.name);
            set_mtime(&d.dest1.join("a/b"), SystemTime::UNIX_EPOCH);
            let s = sync(&d.source, &[(&gw, &d.dest1, true)]);
            assert_eq!((s.files_sent, s.files_skipped), (0, 2), "{}", py.name);
            assert_eq!(fs::read_to_string(d.dest1.join("l")).unwrap(), "1234");
            assert_eq!(
                fs::read(d.dest1.join("big")).unwrap().len(),
                execnet::CHUNK + 5
            );
            gw.exit().unwrap();
        }
    })
}

#[test]
fn two_targets_sharing_one_directory() {
    bounded(LIMIT, || {
        let d = dirs("shared");
        let (_group, gw1, gw2) = two();
        for i in 0..50 {
            write(&d.source.join(format!("sub{}/f{i}", i % 5)), format!("{i}"));
        }
        write(&d.source.join("big"), vec![3u8; 2 * execnet::CHUNK + 1]);
        sync(
            &d.source,
            &[(&gw1, &d.dest1, false), (&gw2, &d.dest1, false)],
        );
        assert_eq!(fs::read_to_string(d.dest1.join("sub3/f13")).unwrap(), "13");
        assert_eq!(
            fs::read(d.dest1.join("big")).unwrap().len(),
            2 * execnet::CHUNK + 1
        );
        let names = fs::read_dir(&d.dest1).unwrap().count();
        assert_eq!(names, 6, "no temporary file left");
    })
}

#[test]
fn a_dead_gateway_does_not_stop_the_others() {
    bounded(LIMIT, || {
        let d = dirs("deadgw");
        let (_group, gw1, gw2) = two();
        write(&d.source.join("f"), "data");
        gw1.exit().unwrap();
        let mut rsync = RSync::new(&d.source);
        rsync.add_target(&gw1, &d.dest1, false);
        rsync.add_target(&gw2, &d.dest2, false);
        let e = rsync.send().unwrap_err();
        assert!(
            matches!(&e, Error::SyncTarget { gateway, .. } if gateway == "gw1"),
            "{e}"
        );
        assert_eq!(fs::read_to_string(d.dest2.join("f")).unwrap(), "data");
    })
}
