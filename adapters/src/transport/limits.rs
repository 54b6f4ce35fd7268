//! Resource limits of a worker: `max_memory=`, `max_procs=` (a cgroup) and
//! `max_cpu=` (`RLIMIT_CPU`), with or without `jail` (docs/jails.md).
//!
//! **Cgroups.** A worker with `max_memory=` or `max_procs=` gets a cgroup
//! of its own, created below the cgroup this process is in (never beside
//! it: whatever limits us limits the worker too). cgroup v2 is tried first;
//! when the v2 hierarchy lacks the controller (a *hybrid* machine, where
//! `/sys/fs/cgroup/unified` has no controllers) the v1 `memory` / `pids`
//! hierarchies are used, one cgroup in each. When none can be created the
//! start fails with [`Error::NoWritableCgroup`], naming every place tried.
//!
//! **Joining without `unsafe`.** A child cannot be moved into a cgroup
//! between fork and exec without `pre_exec` (which is `unsafe`), and moving
//! it after the spawn races with what it starts (bwrap forks at once). So
//! the worker joins by itself: the loader's first statements write `0`
//! (the writing process) to each cgroup's `cgroup.procs`, before the
//! worker source is even read; a failure there ends the interpreter, so no
//! user code ever runs outside its limits. In a jail those files are bound
//! writable (the files alone: the limits themselves stay read-only).
//!
//! **CPU.** The same prelude sets `RLIMIT_CPU` to `(N, N+1)`: the kernel
//! sends SIGXCPU after N seconds of CPU time (default action: the process
//! ends) and SIGKILL one second later if SIGXCPU was caught.
//!
//! **Ending.** When the worker has been reaped ([`PeerControl::wait`]), or
//! killed, whatever is left in its cgroup is killed too (`cgroup.kill` on
//! v2, SIGKILL to every member otherwise), and the cgroup is removed. A
//! cgroup left by a process that was itself killed (`execnet-PID-N` with
//! PID gone) is removed at the next start of this kind.
//!
//! **Which limit killed it.** Before removal the memory cgroup's
//! `oom_kill` count is read (v2 `memory.events`, v1 `memory.oom_control`):
//! a worker that died while it is above zero was killed by `max_memory`. A
//! worker ended by SIGXCPU (or SIGKILL after at least `max_cpu` seconds)
//! hit `max_cpu`. The driver then ends every channel with
//! [`Error::LimitExceeded`] instead of [`Error::WorkerDied`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::PeerControl;
use crate::error::{Error, ExitStatus, Result};
use crate::sync::lock;
use crate::xspec::Limits;

/// Tasks the worker needs for itself (main thread, its I/O threads, the
/// thread of one `remote_exec`), added to `max_procs`: the limit is what
/// the remote code may start.
pub const WORKER_TASKS: u64 = 4;

/// Where a cgroup lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// One cgroup directory we created.
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    version: Version,
    /// Whether it holds the memory controller (where `oom_kill` is read).
    memory: bool,
}

/// The cgroup(s) of one worker: one on v2, or one per v1 hierarchy.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<Dir>,
}

/// A limit as the spec spells it, for errors: `max_memory=256M`.
pub(crate) fn memory_text(bytes: u64) -> String {
    let unit = |shift: u32, suffix: &str| {
        bytes
            .is_multiple_of(1u64 << shift)
            .then(|| format!("{}{suffix}", bytes >> shift))
    };
    let size = unit(30, "G")
        .or_else(|| unit(20, "M"))
        .or_else(|| unit(10, "K"))
        .unwrap_or_else(|| bytes.to_string());
    format!("max_memory={size}")
}

/// The name of our cgroups: `execnet-PID-N`.
fn cgroup_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "execnet-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The mount points of the cgroup hierarchies: the v2 one, and each v1 one
/// with its controllers (from `/proc/self/mountinfo`).
fn mounts() -> (Option<PathBuf>, Vec<(PathBuf, Vec<String>)>) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let superopts = r.nth(1).unwrap_or("");
        let point = PathBuf::from(point.replace("\\040", " "));
        match fstype {
            "cgroup2" if v2.is_none() => v2 = Some(point),
            "cgroup" => v1.push((point, superopts.split(',').map(str::to_string).collect())),
            _ => {}
        }
    }
    (v2, v1)
}

/// Our own cgroup path in the hierarchy with `key` (`""` for v2, a
/// controller name for v1), from `/proc/self/cgroup`.
fn own_path(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = if key.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == key)
        };
        hit.then(|| path.to_string())
    })
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

/// `base/path` for a path that starts with `/`.
fn under(base: &Path, path: &str) -> PathBuf {
    base.join(path.trim_start_matches('/'))
}

impl Cgroup {
    /// Creates the cgroup(s) for `limits` (memory and pids; `None` when
    /// neither is set) and writes the limits. [`Error::NoWritableCgroup`]
    /// when no hierarchy offers a needed controller.
    pub(crate) fn create(limits: &Limits) -> Result<Option<Cgroup>> {
        let mut wanted: Vec<(&'static str, String)> = Vec::new();
        if let Some(m) = limits.memory {
            wanted.push(("memory", memory_text(m)));
        }
        if let Some(p) = limits.procs {
            wanted.push(("pids", format!("max_procs={p}")));
        }
        if wanted.is_empty() {
            return Ok(None);
        }
        let (v2, v1) = mounts();
        let mut tried: Vec<String> = Vec::new();
        // cgroup v2: one directory with every controller.
        if let Some(mount) = &v2 {
            let names: Vec<&str> = wanted.iter().map(|(c, _)| *c).collect();
            match create_v2(mount, &names) {
                Ok(path) => {
                    let cg = Cgroup {
                        dirs: vec![Dir {
                            path,
                            version: Version::V2,
                            memory: limits.memory.is_some(),
                        }],
                    };
                    return cg.apply(limits).map(Some);
                }
                Err(why) => tried.push(format!("cgroup v2 at {}: {why}", mount.display())),
            }
        } else {
            tried.push("cgroup v2: not mounted".into());
        }
        // cgroup v1: one directory per controller's hierarchy.
        let mut cg = Cgroup { dirs: Vec::new() };
        for (controller, limit) in &wanted {
            let Some((mount, _)) = v1
                .iter()
                .find(|(_, opts)| opts.iter().any(|o| o == controller))
            else {
                tried.push(format!("cgroup v1 {controller}: not mounted"));
                return Err(no_cgroup(limit, controller, &tried));
            };
            let own = own_path(controller).unwrap_or_else(|| "/".into());
            let parent = under(mount, &own);
            sweep(&parent);
            let path = parent.join(cgroup_name());
            match std::fs::create_dir(&path) {
                Ok(()) => cg.dirs.push(Dir {
                    path,
                    version: Version::V1,
                    memory: *controller == "memory",
                }),
                Err(e) => {
                    tried.push(format!("cgroup v1 {}: {e}", parent.display()));
                    // `cg` removes what was created so far.
                    return Err(no_cgroup(limit, controller, &tried));
                }
            }
        }
        cg.apply(limits).map(Some)
    }

    /// Writes the limits into the created directories.
    fn apply(self, limits: &Limits) -> Result<Cgroup> {
        let fail = |what: &str, p: &Path, e: std::io::Error| {
            Error::Io(Arc::new(std::io::Error::new(
                e.kind(),
                format!("{what}: writing {}: {e}", p.display()),
            )))
        };
        for d in &self.dirs {
            let file = |n: &str| d.path.join(n);
            if let (Some(m), true) = (limits.memory, d.memory) {
                let text = memory_text(m);
                match d.version {
                    Version::V2 => {
                        write(&file("memory.max"), &m.to_string())
                            .map_err(|e| fail(&text, &file("memory.max"), e))?;
                        // No swap: the limit is the memory the worker gets.
                        let _ = write(&file("memory.swap.max"), "0");
                    }
                    Version::V1 => {
                        write(&file("memory.limit_in_bytes"), &m.to_string())
                            .map_err(|e| fail(&text, &file("memory.limit_in_bytes"), e))?;
                        let _ = write(&file("memory.memsw.limit_in_bytes"), &m.to_string());
                    }
                }
            }
            if let Some(p) = limits.procs {
                let f = file("pids.max");
                if f.exists() {
                    write(&f, &(p + WORKER_TASKS).to_string())
                        .map_err(|e| fail(&format!("max_procs={p}"), &f, e))?;
                }
            }
        }
        Ok(self)
    }

    /// The `cgroup.procs` files the worker writes itself into.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// How many times the memory limit's OOM killer struck.
    fn oom_kills(&self) -> u64 {
        let Some(d) = self.dirs.iter().find(|d| d.memory) else {
            return 0;
        };
        let file = match d.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        std::fs::read_to_string(d.path.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How many times a fork failed at the pids limit.
    fn pids_max_hits(&self) -> u64 {
        self.dirs
            .iter()
            .map(|d| {
                std::fs::read_to_string(d.path.join("pids.events"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("max ")?.trim().parse().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Kills every process in the cgroup(s).
    fn kill_all(&self) {
        for d in &self.dirs {
            kill_members(&d.path, d.version);
        }
    }

    /// Kills what is left and removes the directories (bounded: ~2 s).
    fn remove(&mut self) {
        for d in self.dirs.drain(..) {
            remove_dir(&d.path, d.version);
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The error for a controller no hierarchy offered.
fn no_cgroup(limit: &str, controller: &str, tried: &[String]) -> Error {
    Error::NoWritableCgroup {
        limit: limit.to_string(),
        controller: controller.to_string(),
        tried: tried.join("; "),
    }
}

/// Creates our cgroup in the v2 hierarchy at `mount`, below our own, with
/// `controllers` enabled; `Err` says why not.
fn create_v2(mount: &Path, controllers: &[&str]) -> std::result::Result<PathBuf, String> {
    let own = own_path("").unwrap_or_else(|| "/".into());
    let parent = under(mount, &own);
    let available = std::fs::read_to_string(parent.join("cgroup.controllers"))
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    let missing: Vec<&str> = controllers
        .iter()
        .copied()
        .filter(|c| !available.split_whitespace().any(|a| a == *c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} offers no {} controller (it has: {})",
            parent.display(),
            missing.join(", "),
            if available.trim().is_empty() {
                "none"
            } else {
                available.trim()
            }
        ));
    }
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    for c in controllers {
        if !enabled.split_whitespace().any(|a| a == *c) {
            // Fails with EBUSY when our cgroup holds processes and is not
            // the root ("no internal processes"): a delegated subtree must
            // be set up with its processes in a leaf.
            write(&parent.join("cgroup.subtree_control"), &format!("+{c}"))
                .map_err(|e| format!("enabling {c} in {}: {e}", parent.display()))?;
        }
    }
    sweep(&parent);
    let path = parent.join(cgroup_name());
    std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The pids in a cgroup.
fn members(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn kill_members(dir: &Path, version: Version) {
    if version == Version::V2 && write(&dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in members(dir) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Kills the members and removes the directory, retrying for up to 2 s
/// (killed processes leave the cgroup when they have exited).
fn remove_dir(dir: &Path, version: Version) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        kill_members(dir, version);
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the worker's cgroup");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Removes cgroups that a killed process of ours left in `parent`
/// (`execnet-PID-N` whose PID is gone), once per parent and process.
fn sweep(parent: &Path) {
    static SWEPT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    {
        let mut swept = lock(&SWEPT);
        if swept.iter().any(|p| p == parent) {
            return;
        }
        swept.push(parent.to_path_buf());
    }
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("execnet-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let version = if parent.join("cgroup.controllers").exists() {
                Version::V2
            } else {
                Version::V1
            };
            remove_dir(&entry.path(), version);
        }
    }
}

/// The Python statements that put the worker under its limits, run first
/// in the loader: join each cgroup (write `0`, "this process", to its
/// `cgroup.procs`), then set `RLIMIT_CPU`. Empty when there is nothing to
/// do.
pub(crate) fn prelude(limits: &Limits, cgroup: Option<&Cgroup>) -> String {
    let mut p = String::new();
    let files = cgroup.map(Cgroup::procs_files).unwrap_or_default();
    if !files.is_empty() {
        p.push_str("import os;");
        for f in files {
            let f = serde_json::to_string(&f.to_string_lossy()).unwrap_or_default();
            p.push_str(&format!(
                "_f=os.open({f},os.O_WRONLY);os.write(_f,b'0');os.close(_f);"
            ));
        }
        p.push_str("del _f;");
    }
    if let Some(n) = limits.cpu {
        // `resource` from the interpreter's own installation only: the
        // working directory ('' first on sys.path under -c) and PYTHONPATH
        // may hold what remote code of an earlier start wrote (a reused
        // chdir= or jail_rw=), and a module planted there must neither skip
        // the limit nor run before a root host's jail gives up root.
        p.push_str(
            "import sys;_p=sys.path;sys.path=[d for d in _p if \
             d.startswith((sys.base_prefix,sys.base_exec_prefix))];\
             import resource;sys.path=_p;del _p;",
        );
        p.push_str(&format!(
            "resource.setrlimit(resource.RLIMIT_CPU,({n},{}));",
            n + 1
        ));
    }
    p
}

/// Which limit, if any, explains a worker's death. `oom_kills`: the memory
/// cgroup's count; `ran`: how long the worker lived. A SIGKILL counts as
/// the CPU limit's only after `max_cpu` seconds: the process cannot have
/// used that much CPU time sooner (its own threads aside), so an earlier
/// SIGKILL came from someone else.
fn verdict(limits: &Limits, status: ExitStatus, oom_kills: u64, ran: Duration) -> Option<String> {
    const SIGKILL: i32 = 9;
    const SIGXCPU: i32 = 24;
    // In a jail, bwrap reports its child's signal as 128 + signal.
    let signal = match status {
        ExitStatus::Signal(s) => Some(s),
        ExitStatus::Code(c) if c > 128 => Some(c - 128),
        _ => None,
    };
    if let (Some(m), true) = (limits.memory, oom_kills > 0) {
        return Some(memory_text(m));
    }
    let cpu = limits.cpu?;
    match signal {
        Some(SIGXCPU) => Some(format!("max_cpu={cpu}")),
        Some(SIGKILL) if ran.as_secs_f64() >= cpu as f64 => Some(format!("max_cpu={cpu}")),
        _ => None,
    }
}

/// The control of a worker under limits: the process's control, plus its
/// cgroup (killed with it, removed once it is reaped) and the verdict on
/// its death.
pub(crate) struct Limited {
    inner: Arc<dyn PeerControl>,
    limits: Limits,
    cgroup: Mutex<Option<Cgroup>>,
    started: Instant,
    /// Set once, when the worker has been reaped: `Some(limit)` if a limit
    /// killed it.
    verdict: Mutex<Option<Option<String>>>,
}

impl Limited {
    /// Wraps `inner` (the spawned process) with its limits and cgroup.
    pub(crate) fn new(
        inner: Arc<dyn PeerControl>,
        limits: Limits,
        cgroup: Option<Cgroup>,
    ) -> Limited {
        Limited {
            inner,
            limits,
            cgroup: Mutex::new(cgroup),
            started: Instant::now(),
            verdict: Mutex::new(None),
        }
    }
}

/// The errno text of a failed fork (EAGAIN).
const EAGAIN_TEXT: &str = "Resource temporarily unavailable";

impl PeerControl for Limited {
    fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    fn kill(&self) {
        self.inner.kill();
        if let Some(cg) = lock(&self.cgroup).as_ref() {
            cg.kill_all();
        }
    }

    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let status = self.inner.wait(timeout)?;
        let mut judged = lock(&self.verdict);
        if judged.is_none() {
            // The worker is gone: judge its death, then leave nothing of
            // it behind (what it started goes with it).
            let mut cg = lock(&self.cgroup);
            let ooms = cg.as_ref().map_or(0, Cgroup::oom_kills);
            *judged = Some(verdict(&self.limits, status, ooms, self.started.elapsed()));
            if let Some(mut cg) = cg.take() {
                cg.remove();
            }
        }
        Some(status)
    }

    fn stderr_tail(&self, timeout: Duration) -> String {
        self.inner.stderr_tail(timeout)
    }

    fn readable_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        // The worker's stdout: its reader thread sleeps until input or a
        // blocking receiver (driver/wake.rs), receives with a deadline lead.
        self.inner.readable_fd()
    }

    fn forward_output(&self, fd: u8, sink: super::ForwardSink) -> bool {
        self.inner.forward_output(fd, sink)
    }

    fn limit_exceeded(&self, status: ExitStatus) -> Option<String> {
        let _ = status;
        lock(&self.verdict).clone().flatten()
    }

    fn annotate_remote_error(&self, text: String) -> String {
        let Some(n) = self.limits.procs else {
            return text;
        };
        if !text.contains(EAGAIN_TEXT) {
            return text;
        }
        let hits = lock(&self.cgroup).as_ref().map_or(0, Cgroup::pids_max_hits);
        if hits == 0 {
            return text;
        }
        // A first line: the traceback's last line (the exception) stays
        // where RemoteError looks for it.
        format!(
            "execnet: max_procs={n} reached in this worker (a fork or thread start failed)\n{text}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_texts() {
        assert_eq!(memory_text(256 << 20), "max_memory=256M");
        assert_eq!(memory_text(1 << 30), "max_memory=1G");
        assert_eq!(memory_text(1000), "max_memory=1000");
    }

    #[test]
    fn verdicts() {
        let l = Limits {
            memory: Some(64 << 20),
            cpu: Some(2),
            procs: None,
        };
        let s = Duration::from_secs;
        assert_eq!(
            verdict(&l, ExitStatus::Signal(9), 1, s(0)).as_deref(),
            Some("max_memory=64M")
        );
        assert_eq!(
            verdict(&l, ExitStatus::Code(137), 1, s(0)).as_deref(),
            Some("max_memory=64M")
        );
        assert_eq!(
            verdict(&l, ExitStatus::Code(152), 0, s(0)).as_deref(),
            Some("max_cpu=2")
        );
        assert_eq!(
            verdict(&l, ExitStatus::Signal(24), 0, s(3)).as_deref(),
            Some("max_cpu=2")
        );
        assert_eq!(
            verdict(&l, ExitStatus::Signal(9), 0, s(3)).as_deref(),
            Some("max_cpu=2")
        );
        // Killed early by someone else, or exited: no limit.
        assert_eq!(verdict(&l, ExitStatus::Signal(9), 0, s(1)), None);
        assert_eq!(verdict(&l, ExitStatus::Code(1), 0, s(5)), None);
        assert_eq!(
            verdict(&Limits::default(), ExitStatus::Signal(24), 0, s(5)),
            None
        );
    }

    #[test]
    fn prelude_joins_then_limits_cpu() {
        let l = Limits {
            memory: None,
            cpu: Some(3),
            procs: None,
        };
        let p = prelude(&l, None);
        // `resource` is imported with sys.path cut to the installation's.
        assert!(
            p.starts_with("import sys;_p=sys.path;sys.path=[d for d in _p if d.startswith("),
            "{p}"
        );
        assert!(
            p.ends_with(
                "import resource;sys.path=_p;del _p;resource.setrlimit(resource.RLIMIT_CPU,(3,4));"
            ),
            "{p}"
        );
        assert_eq!(prelude(&Limits::default(), None), "");
        let cg = Cgroup {
            dirs: vec![Dir {
                path: PathBuf::from("/nonexistent/execnet-test"),
                version: Version::V2,
                memory: false,
            }],
        };
        let p = prelude(&l, Some(&cg));
        assert!(
            p.starts_with(
                "import os;_f=os.open(\"/nonexistent/execnet-test/cgroup.procs\",os.O_WRONLY);"
            ),
            "{p}"
        );
        assert!(p.ends_with("(3,4));"), "{p}");
    }

    #[test]
    fn parses_mountinfo_and_own_paths() {
        // On any Linux: at least one hierarchy is mounted, and our own path
        // in it is absolute.
        let (v2, v1) = mounts();
        assert!(v2.is_some() || !v1.is_empty(), "no cgroup hierarchy found");
        if v2.is_some() {
            assert!(own_path("").is_some_and(|p| p.starts_with('/')));
        }
    }

    /// A real cgroup: created with the limits written, removed on drop.
    /// Skips (says so) where no cgroup is writable.
    #[test]
    fn creates_and_removes_a_real_cgroup() {
        let l = Limits {
            memory: Some(64 << 20),
            cpu: None,
            procs: Some(5),
        };
        let cg = match Cgroup::create(&l) {
            Ok(cg) => cg.expect("limits set"),
            Err(Error::NoWritableCgroup { tried, .. }) => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED creates_and_removes_a_real_cgroup: {tried}"
                );
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let dirs: Vec<PathBuf> = cg.dirs.iter().map(|d| d.path.clone()).collect();
        for d in &cg.dirs {
            assert!(d.path.is_dir());
            if d.path.join("pids.max").exists() {
                assert_eq!(
                    std::fs::read_to_string(d.path.join("pids.max"))
                        .unwrap()
                        .trim(),
                    (5 + WORKER_TASKS).to_string()
                );
            }
        }
        assert_eq!(cg.oom_kills(), 0);
        drop(cg);
        for d in dirs {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
}
