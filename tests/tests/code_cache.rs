//! The compiled-worker cache across host processes (adapters/src/transport/
//! code_cache.rs): the disk layer and single-flight.
//!
//! Every test runs `cache_probe` (tests/src/bin/cache_probe.rs) as fresh
//! host processes, with `EXECNET_CACHE_DIR` (or `XDG_CACHE_HOME`/`HOME`)
//! pointed at a temporary directory: nothing here touches the real
//! `~/.cache`. How each worker booted is what the worker itself reports
//! (`loaded` compiled code sent by the host, or `compiled` the source), so a
//! "hit from disk" is the first gateway of a fresh process reporting
//! `loaded`: nothing else in that process could have sent it code.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use execnet_tests::{bounded, interpreters, skip, TempDir, LIMIT};

/// Debian's python3 (fast to start), or whichever interpreter is present.
fn python() -> Option<PathBuf> {
    interpreters().into_iter().next().map(|i| i.path)
}

/// Runs one fresh host process starting `n` gateways at once; returns how
/// each worker booted (`loaded`/`compiled`, sorted).
fn probe(python: &Path, n: usize, env: &[(&str, &Path)], unset: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cache_probe"));
    cmd.arg(format!("popen//python={}", python.display()))
        .arg(n.to_string());
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run cache_probe");
    assert!(
        out.status.success(),
        "cache_probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut kinds: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    kinds.sort();
    assert_eq!(kinds.len(), n);
    kinds
}

fn in_dir(python: &Path, dir: &Path, n: usize) -> Vec<String> {
    probe(python, n, &[("EXECNET_CACHE_DIR", dir)], &[])
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// The one entry file in `dir` (and nothing else: no temporary left).
fn only_entry(dir: &Path) -> PathBuf {
    let all = entries(dir);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].to_string_lossy().ends_with(".exnc"), "{all:?}");
    all[0].clone()
}

#[test]
fn a_second_fresh_process_loads_the_worker_from_disk() {
    bounded(LIMIT, || {
        let Some(py) = python() else {
            return skip("no python3");
        };
        let tmp = TempDir::new("cache-disk");
        let dir = tmp.path().join("cache");
        assert_eq!(in_dir(&py, &dir, 1), ["compiled"], "empty cache");
        // Created owner-only, one entry, owner-only.
        assert_eq!(mode(&dir), 0o700);
        let entry = only_entry(&dir);
        assert_eq!(mode(&entry), 0o600);
        assert_eq!(in_dir(&py, &dir, 1), ["loaded"], "a hit from disk");
        assert_eq!(in_dir(&py, &dir, 2), ["loaded", "loaded"]);
        assert_eq!(only_entry(&dir), entry);
    })
}

#[test]
fn the_default_directories_and_off() {
    bounded(LIMIT, || {
        let Some(py) = python() else {
            return skip("no python3");
        };
        let tmp = TempDir::new("cache-where");
        let xdg = tmp.path().join("xdg");
        let home = tmp.path().join("home");
        // $XDG_CACHE_HOME/execnet-rs
        let kinds = probe(&py, 1, &[("XDG_CACHE_HOME", &xdg)], &["EXECNET_CACHE_DIR"]);
        assert_eq!(kinds, ["compiled"]);
        only_entry(&xdg.join("execnet-rs"));
        // ~/.cache/execnet-rs
        let kinds = probe(
            &py,
            1,
            &[("HOME", &home)],
            &["EXECNET_CACHE_DIR", "XDG_CACHE_HOME"],
        );
        assert_eq!(kinds, ["compiled"]);
        only_entry(&home.join(".cache/execnet-rs"));
        let kinds = probe(
            &py,
            1,
            &[("HOME", &home)],
            &["EXECNET_CACHE_DIR", "XDG_CACHE_HOME"],
        );
        assert_eq!(kinds, ["loaded"]);

        // off: nothing written anywhere, nothing read.
        let off_home = tmp.path().join("off-home");
        let off_xdg = tmp.path().join("off-xdg");
        std::fs::create_dir_all(&off_home).unwrap();
        std::fs::create_dir_all(&off_xdg).unwrap();
        for _ in 0..2 {
            let kinds = probe(
                &py,
                1,
                &[
                    ("EXECNET_CACHE_DIR", Path::new("off")),
                    ("HOME", &off_home),
                    ("XDG_CACHE_HOME", &off_xdg),
                ],
                &[],
            );
            assert_eq!(kinds, ["compiled"]);
        }
        assert!(entries(&off_home).is_empty() && entries(&off_xdg).is_empty());
        // ... and an existing entry is not used.
        let kinds = probe(
            &py,
            1,
            &[
                ("EXECNET_CACHE_DIR", Path::new("off")),
                ("XDG_CACHE_HOME", &xdg),
            ],
            &[],
        );
        assert_eq!(kinds, ["compiled"]);
    })
}

#[test]
fn damaged_foreign_or_open_entries_are_ignored_and_replaced() {
    bounded(LIMIT, || {
        let Some(py) = python() else {
            return skip("no python3");
        };
        let tmp = TempDir::new("cache-bad");
        let dir = tmp.path().join("cache");
        assert_eq!(in_dir(&py, &dir, 1), ["compiled"]);
        let entry = only_entry(&dir);
        let good = std::fs::read(&entry).unwrap();
        let root = rustix::process::geteuid().is_root();
        type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
        let cases: Vec<(&str, Damage)> = vec![
            (
                "truncated",
                Box::new(|p| std::fs::write(p, &good[..good.len() / 2]).unwrap()),
            ),
            (
                "corrupt",
                Box::new(|p| {
                    let mut d = good.clone();
                    let n = d.len();
                    d[n - 1000] ^= 0x55;
                    std::fs::write(p, d).unwrap()
                }),
            ),
            (
                "world-writable",
                Box::new(|p| {
                    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).unwrap()
                }),
            ),
            (
                "group-writable",
                Box::new(|p| {
                    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o620)).unwrap()
                }),
            ),
            (
                "owned by another user",
                Box::new(move |p| {
                    if root {
                        let nobody = rustix::fs::Uid::from_raw(65534);
                        rustix::fs::chown(p, Some(nobody), None).unwrap()
                    }
                }),
            ),
        ];
        for (what, damage) in cases {
            if what == "owned by another user" && !root {
                skip("a foreign-owned entry (needs root to chown)");
                continue;
            }
            damage(&entry);
            assert_eq!(in_dir(&py, &dir, 1), ["compiled"], "{what}: ignored");
            // Replaced by a good one, owner-only again.
            assert_eq!(only_entry(&dir), entry);
            assert_eq!(mode(&entry), 0o600, "{what}");
            assert_eq!(std::fs::read(&entry).unwrap(), good, "{what}: replaced");
            assert_eq!(in_dir(&py, &dir, 1), ["loaded"], "{what}: then used");
        }
    })
}

#[test]
fn eight_fresh_processes_at_once_leave_one_valid_entry() {
    bounded(LIMIT * 2, || {
        let Some(py) = python() else {
            return skip("no python3");
        };
        let tmp = TempDir::new("cache-race");
        let dir = tmp.path().join("cache");
        let all: Vec<Vec<String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| in_dir(&py, &dir, 1))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Each started (some may have loaded what another had written).
        assert_eq!(all.len(), 8);
        assert!(all.iter().any(|k| k == &["compiled"]));
        only_entry(&dir);
        assert_eq!(in_dir(&py, &dir, 1), ["loaded"]);
    })
}

#[test]
fn concurrent_cold_starts_in_a_fresh_process_compile_once() {
    bounded(LIMIT * 2, || {
        let Some(py) = python() else {
            return skip("no python3");
        };
        // No disk: only single-flight can spare the compiles.
        let kinds = in_dir(&py, Path::new("off"), 8);
        let compiled = kinds.iter().filter(|k| *k == "compiled").count();
        assert_eq!(compiled, 1, "{kinds:?}");
        // With an empty disk cache too: one compile, one entry.
        let tmp = TempDir::new("cache-flight");
        let dir = tmp.path().join("cache");
        let kinds = in_dir(&py, &dir, 8);
        let compiled = kinds.iter().filter(|k| *k == "compiled").count();
        assert_eq!(compiled, 1, "{kinds:?}");
        only_entry(&dir);
    })
}
