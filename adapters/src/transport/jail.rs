//! `jail`: the worker runs under bubblewrap (`bwrap`), docs/jails.md.
//!
//! The interpreter's command line is wrapped in
//!
//! ```text
//! bwrap --unshare-all [--share-net] --die-with-parent --new-session
//!       --cap-drop ALL --uid 65534 --gid 65534
//!       --ro-bind / / --dev /dev --proc /proc --perms 1777 --tmpfs /tmp
//!       --tmpfs /run --tmpfs /root --tmpfs /home --tmpfs /etc/ssh
//!       --ro-bind /dev/null /etc/shadow --ro-bind /dev/null /etc/gshadow
//!       --perms 0755 --dir D …           (the way to a bind under a hidden path)
//!       --ro-bind PREFIX PREFIX …        (the interpreter, if under a hidden path)
//!       --bind CGROUP.PROCS …            (only with max_memory= / max_procs=)
//!       --bind RW RW …                   (jail_rw= and chdir=)
//!       --clearenv --setenv NAME VALUE … (the allowlist, HOME=/tmp, env:)
//!       --chdir DIR -- PYTHON ARGS…
//! ```
//!
//! bwrap passes its stdin, stdout and stderr on to the worker, so the
//! protocol pipes are the jailed process's own; bwrap holds its copies
//! only while the worker lives (its init exits with it, and the PID
//! namespace takes every other process of the jail along).
//!
//! **Who the worker is.** Run as another user, bwrap makes a user
//! namespace that maps the jail's uid 65534 to that user. Run as root, a
//! user namespace would map it to root outside (a root without
//! capabilities, but root's files would be its own), so there is none:
//! the namespaces are named one by one (`--unshare-ipc --unshare-pid
//! --unshare-net --unshare-uts --unshare-cgroup-try`), bwrap keeps only
//! `CAP_SETUID`/`CAP_SETGID`, and the worker's loader drops to uid and gid
//! 65534 with no supplementary groups ([`drop_root`]) after joining its
//! cgroup and before any remote code: on the host the jailed processes are
//! `nobody`, with no capability and `no_new_privs`. What the jail writes
//! must be writable by uid 65534 (`jail_rw=` paths; a `chdir=` the host
//! creates is given to it). Mounts are read-only all the same, and the
//! places where secrets live (`/root`, `/home`, `/etc/shadow`,
//! `/etc/gshadow`, `/etc/ssh`) and sockets (`/run`, `/tmp`) are hidden.
//! `ssh=HOST//jail` keeps bwrap's user namespace (the remote user is not
//! known here).
//!
//! **The interpreter.** pyenv's interpreters (and many virtualenvs) live
//! under `/root`, `/home` or `/tmp`, which the jail hides. A single-word
//! `python=` (or the default) is asked once per process for its
//! `sys.executable`, prefixes and base prefixes; those under a hidden path
//! are bound back read-only. A `python=` with several words (`perf stat
//! python3`) runs as given.
//!
//! **Checked once per process**: that `bwrap` is on `PATH`
//! ([`Error::BubblewrapMissing`]) and that it can create its namespaces
//! here ([`Error::NamespacesNotPermitted`]: a trial jail, run beside the
//! first real one and awaited once that one has its payload, so that it
//! costs the first start no wall time).
//!
//! **Spawning.** Every jail is spawned from one lasting thread
//! (`spawn_on_lasting_thread`: `--die-with-parent` follows the spawning
//! thread), and from a spec's second start on its next jail is built ahead
//! (`take_spare`: bwrap's set-up is most of a jailed start's cost).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::sync::lock;
use crate::xspec::XSpec;

/// The uid and gid the worker has inside the jail (`nobody`).
pub const JAIL_UID: u32 = 65534;

/// Paths the jail hides behind an empty tmpfs (if they exist). `/tmp` is
/// the jail's private one.
const HIDDEN_DIRS: &[&str] = &["/tmp", "/run", "/root", "/home", "/etc/ssh"];

/// The jail's `HOME`: its private `/tmp` (the user site, `HOME/.local`, is
/// empty in a fresh jail unless a writable bind reaches it).
const JAIL_HOME: &str = "/tmp";

/// Files the jail covers with `/dev/null` (if they exist): bound without
/// device access (bwrap's binds are `nodev`), so opening them fails.
const HIDDEN_FILES: &[&str] = &["/etc/shadow", "/etc/gshadow"];

/// Environment variables that pass into a jail (`LC_*` too); everything
/// else is cleared. `HOME` is set to `/tmp`.
const ENV_ALLOWLIST: &[&str] = &["PATH", "LANG", "LANGUAGE", "TERM", "TZ"];

/// The `jail` keys of a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailOptions {
    /// `jail_rw=`: paths bound writable (they must exist).
    pub rw: Vec<PathBuf>,
    /// `jail_net`: keep the host's network namespace.
    pub net: bool,
}

impl JailOptions {
    /// `Some` when the spec has `jail`.
    pub fn from_spec(spec: &XSpec) -> Option<JailOptions> {
        spec.jail().then(|| JailOptions {
            rw: spec.jail_rw().map(PathBuf::from).collect(),
            net: spec.jail_net(),
        })
    }
}

/// The jail and limit keys, for [`refuse_unsupported`].
pub(crate) const KEYS: &[&str] = &["jail", "max_memory", "max_cpu", "max_procs"];

/// Refuses the jail and limit keys of `spec` that transport `what` cannot
/// apply (all of [`KEYS`] but `allowed`): a worker must never run without
/// the wall or the limit its spec asked for.
pub(crate) fn refuse_unsupported(spec: &XSpec, what: &str, allowed: &[&str]) -> Result<()> {
    match KEYS.iter().find(|k| spec.has(k) && !allowed.contains(k)) {
        Some(k) => Err(Error::Spec(format!(
            "{k} is not supported on {what} gateways (docs/jails.md)"
        ))),
        None => Ok(()),
    }
}

/// What [`command`] needs besides the options.
pub(crate) struct Wrap<'a> {
    /// The interpreter's command line (`python=`), resolved.
    pub python: &'a [String],
    /// The arguments after it (`-u -c LOADER`).
    pub args: &'a [String],
    /// `env:` of the spec.
    pub env: &'a [(String, String)],
    /// `chdir=`, bound writable (made by [`prepare_chdir`]).
    pub chdir: Option<&'a Path>,
    /// Files bound writable besides (the cgroup's `cgroup.procs`).
    pub writable_files: &'a [PathBuf],
}

/// Creates `chdir=` on the host (the jail could not: its filesystem is
/// read-only there) and returns it absolute, as it is bound into the jail.
/// Run as root, a directory it creates is given to the jail's user (who
/// would not be able to write there otherwise).
pub(crate) fn prepare_chdir(dir: &Path) -> Result<PathBuf> {
    let err = |e: std::io::Error| Error::Spec(format!("chdir={}: {e}", dir.display()));
    let new = !dir.exists();
    std::fs::create_dir_all(dir).map_err(err)?;
    if new && as_root() {
        std::os::unix::fs::chown(dir, Some(JAIL_UID), Some(JAIL_UID)).map_err(err)?;
    }
    std::fs::canonicalize(dir).map_err(err)
}

/// The `bwrap` command for a jailed local worker: checks bwrap and the
/// namespaces once, and binds the interpreter's installation back in.
pub(crate) fn command(jail: &JailOptions, w: &Wrap<'_>) -> Result<Command> {
    let bwrap = bwrap()?;
    // Started here, awaited by the caller once the jail is on its way
    // (`namespaces_permitted`): the trial runs while the real jail starts.
    start_namespace_check(&bwrap)?;
    for p in &jail.rw {
        if !p.exists() {
            return Err(Error::Spec(format!(
                "jail_rw={}: no such file or directory (it is bound into the jail as it is)",
                p.display()
            )));
        }
    }
    let chdir = w.chdir.map(Path::to_path_buf);
    let python: Vec<String> = match w.python {
        [one] => vec![resolve(one).executable.clone()],
        many => many.to_vec(),
    };
    let prefixes = match w.python {
        [one] => resolve(one).prefixes.clone(),
        _ => Vec::new(),
    };
    let mut argv = base_args(jail, as_root());
    hide(&mut argv, Path::exists);
    let mut made = Vec::new();
    for p in &prefixes {
        if is_hidden(p) {
            way_to(&mut argv, &mut made, p);
            argv.extend(["--ro-bind".into(), path_arg(p), path_arg(p)]);
        }
    }
    for f in w.writable_files {
        argv.extend(["--bind".into(), path_arg(f), path_arg(f)]);
    }
    let rw: Vec<PathBuf> = jail
        .rw
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .chain(chdir.clone())
        .collect();
    if as_root() {
        before_the_drop(w.env, &prefixes, &rw)?;
    }
    for p in &rw {
        way_to(&mut argv, &mut made, p);
        argv.extend(["--bind".into(), path_arg(p), path_arg(p)]);
    }
    environment(
        &mut argv,
        w.env,
        |k| std::env::var(k).ok(),
        std::env::vars(),
    );
    // Start where the worker will be (chdir=), else in the host's working
    // directory when the jail shows it, else in /.
    let cwd = chdir
        .or_else(|| std::env::current_dir().ok().filter(|d| !is_hidden(d)))
        .unwrap_or_else(|| PathBuf::from("/"));
    argv.extend(["--chdir".into(), path_arg(&cwd), "--".into()]);
    argv.extend(python);
    argv.extend(w.args.iter().cloned());
    let mut cmd = Command::new(&bwrap);
    cmd.args(&argv);
    Ok(cmd)
}

/// The remote shell line of `ssh=HOST//jail`: the same jail, built by the
/// remote host's shell, which has bwrap. What cannot be known from here
/// is asked there: which hidden paths exist (a `$(…)` list), and the
/// allowlisted variables come from the remote environment. `chdir=` is
/// created first (`mkdir -p`); `python` is pasted unquoted, as ssh does.
/// The remote interpreter must live outside the hidden paths
/// (`/usr/bin/python3`; the jail's `PATH` lookup skips hidden ones).
pub(crate) fn remote_line(
    jail: &JailOptions,
    env: &[(String, String)],
    chdir: Option<&Path>,
    python: &str,
    args: &[String],
) -> String {
    let q = |s: &str| shell_words::quote(s).into_owned();
    let mut line = String::new();
    if let Some(d) = chdir {
        line.push_str(&format!("mkdir -p {} && ", q(&d.to_string_lossy())));
    }
    line.push_str("bwrap");
    // The remote user is not known here: bwrap's user namespace maps the
    // jail's user to it (to root, run as root there; docs/jails.md).
    for a in base_args(jail, false) {
        line.push(' ');
        line.push_str(&q(&a));
    }
    let dirs = HIDDEN_DIRS.join(" ");
    let files = HIDDEN_FILES.join(" ");
    line.push_str(&format!(
        " $(for d in {dirs}; do test -e $d && echo --tmpfs $d; done;          for f in {files}; do test -e $f && echo --ro-bind /dev/null $f; done)"
    ));
    for p in jail.rw.iter().map(PathBuf::as_path).chain(chdir) {
        let p = q(&p.to_string_lossy());
        line.push_str(&format!(" --bind {p} {p}"));
    }
    line.push_str(" --clearenv --setenv PATH \"$PATH\"");
    for k in ENV_ALLOWLIST.iter().filter(|k| **k != "PATH") {
        line.push_str(&format!(" ${{{k}:+--setenv {k} \"${k}\"}}"));
    }
    line.push_str(&format!(" --setenv HOME {JAIL_HOME}"));
    for (k, v) in env {
        line.push_str(&format!(" --setenv {} {}", q(k), q(v)));
    }
    if let Some(d) = chdir {
        line.push_str(&format!(" --chdir {}", q(&d.to_string_lossy())));
    }
    line.push_str(" -- ");
    line.push_str(python);
    for a in args {
        line.push(' ');
        line.push_str(&q(a));
    }
    line
}

/// Whether this process runs as root: then a local jail has no user
/// namespace and its worker drops to [`JAIL_UID`] itself (module docs).
fn as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The namespace and mount options every jail has, up to the hidden paths.
/// `as_root`: no user namespace (it would map the jail's user to root),
/// and the two capabilities [`drop_root`] needs.
fn base_args(jail: &JailOptions, as_root: bool) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if as_root {
        a.extend(
            [
                "--unshare-ipc",
                "--unshare-pid",
                "--unshare-uts",
                "--unshare-cgroup-try",
            ]
            .map(String::from),
        );
        if !jail.net {
            a.push("--unshare-net".into());
        }
    } else {
        a.push("--unshare-all".into());
        if jail.net {
            a.push("--share-net".into());
        }
    }
    a.extend(["--die-with-parent", "--new-session", "--cap-drop", "ALL"].map(String::from));
    if as_root {
        a.extend(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"].map(String::from));
    } else {
        let id = JAIL_UID.to_string();
        a.extend(["--uid".into(), id.clone(), "--gid".into(), id]);
    }
    a.extend(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"].map(String::from));
    a
}

/// The statements the loader of a local jail run as root starts with
/// (after the cgroup and rlimit prelude): no supplementary groups, then
/// gid and uid [`JAIL_UID`] for real, effective and saved ids, which
/// clears every capability (no `SECBIT_KEEP_CAPS`). Empty when this
/// process is not root (bwrap's user namespace does it).
pub(crate) fn drop_root() -> String {
    if !as_root() {
        return String::new();
    }
    format!(
        "import os;os.setgroups([]);os.setresgid({u},{u},{u});os.setresuid({u},{u},{u});",
        u = JAIL_UID
    )
}

/// Environment variables that make an interpreter (or the C library
/// before it) load code or parse files from a path they name: Python's
/// own, and glibc's list of variables it ignores for privileged programs
/// but `TMPDIR` (where files are created; nothing is loaded from it).
const CODE_VARS: &[&str] = &[
    "PYTHON",
    "LD_",
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TZDIR",
];

/// Run as root, the interpreter starts as uid 0 and drops to [`JAIL_UID`]
/// only in its loader ([`drop_root`]): what runs before — the interpreter's
/// installation (`site`, `.pth` files, `sitecustomize`), the user site of
/// `HOME=/tmp`, what the `env:` variables of [`CODE_VARS`] point at —
/// must be out of the jail's reach, or code a jail left behind (in a
/// `jail_rw=` path, a reused `chdir=`) would run as root in the next one.
/// Refuses such a spec (`Error::Spec`, saying why).
fn before_the_drop(env: &[(String, String)], prefixes: &[PathBuf], rw: &[PathBuf]) -> Result<()> {
    if let Some((k, _)) = env
        .iter()
        .find(|(k, _)| CODE_VARS.iter().any(|v| k.starts_with(v)))
    {
        return Err(Error::Spec(format!(
            "env:{k} in a jail run as root: the interpreter would honour it as root, before the \
             jail drops to uid {JAIL_UID} (docs/jails.md); set it from remote code, or run the \
             host as another user"
        )));
    }
    let user_site = Path::new(JAIL_HOME).join(".local");
    for p in prefixes
        .iter()
        .map(PathBuf::as_path)
        .chain([user_site.as_path()])
    {
        if let Some(w) = rw.iter().find(|w| p.starts_with(w) || w.starts_with(p)) {
            return Err(Error::Spec(format!(
                "jail_rw/chdir {} overlaps {}, which the interpreter reads as root before the \
                 jail drops to uid {JAIL_UID} (docs/jails.md)",
                w.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// Appends `--perms 0755 --dir` for each directory between the hidden
/// directory `p` lies under and `p` itself (bwrap would make them 0700,
/// closed to the jail's user), once each.
fn way_to(argv: &mut Vec<String>, made: &mut Vec<PathBuf>, p: &Path) {
    let Some(top) = hidden_under(p) else {
        return;
    };
    let mut dirs: Vec<&Path> = p
        .ancestors()
        .skip(1)
        .take_while(|a| *a != top && a.starts_with(top))
        .collect();
    dirs.reverse();
    for d in dirs {
        if !made.iter().any(|m| m == d) {
            made.push(d.to_path_buf());
            argv.extend(["--perms".into(), "0755".into(), "--dir".into(), path_arg(d)]);
        }
    }
}

/// Appends the options that hide [`HIDDEN_DIRS`] and [`HIDDEN_FILES`]
/// (those for which `exists` holds: bwrap cannot create a mount point on
/// the read-only root).
fn hide(argv: &mut Vec<String>, exists: impl Fn(&Path) -> bool) {
    for d in HIDDEN_DIRS {
        if exists(Path::new(d)) {
            if *d == "/tmp" {
                // Everyone's, as a /tmp is: the jail's user writes there.
                argv.extend(["--perms".into(), "1777".into()]);
            }
            argv.extend(["--tmpfs".into(), (*d).into()]);
        }
    }
    for f in HIDDEN_FILES {
        if exists(Path::new(f)) {
            argv.extend(["--ro-bind".into(), "/dev/null".into(), (*f).into()]);
        }
    }
}

/// Appends `--clearenv` and the variables the jail gets: the allowlist
/// (from `get`), `LC_*` (from `vars`), `HOME=/tmp`, then the spec's `env:`.
fn environment(
    argv: &mut Vec<String>,
    env: &[(String, String)],
    get: impl Fn(&str) -> Option<String>,
    vars: impl Iterator<Item = (String, String)>,
) {
    argv.push("--clearenv".into());
    let mut set = |k: &str, v: &str| argv.extend(["--setenv".into(), k.into(), v.into()]);
    for k in ENV_ALLOWLIST {
        if let Some(v) = get(k) {
            set(k, &v);
        }
    }
    for (k, v) in vars.filter(|(k, _)| k.starts_with("LC_")) {
        set(&k, &v);
    }
    set("HOME", JAIL_HOME);
    for (k, v) in env {
        set(k, v);
    }
}

/// Whether the jail hides `p` (it lies under one of [`HIDDEN_DIRS`]).
fn is_hidden(p: &Path) -> bool {
    hidden_under(p).is_some()
}

/// The hidden directory (of [`HIDDEN_DIRS`]) that `p` lies under, if any.
fn hidden_under(p: &Path) -> Option<&'static Path> {
    HIDDEN_DIRS.iter().map(Path::new).find(|d| p.starts_with(d))
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A job for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// Hands `job` to the thread that spawns jails (see
/// [`spawn_on_lasting_thread`]), starting it if needed.
fn submit(job: Job) -> Result<()> {
    static SPAWNER: Mutex<Option<std::sync::mpsc::Sender<Job>>> = Mutex::new(None);
    let mut spawner = lock(&SPAWNER);
    let job = match spawner.as_ref() {
        None => job,
        Some(s) => match s.send(job) {
            Ok(()) => return Ok(()),
            // The thread is gone (it never ends; a panic in a job would be
            // the only way): start another.
            Err(std::sync::mpsc::SendError(job)) => job,
        },
    };
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("execnet-jail-spawner".into())
        .spawn(move || {
            for job in jobs_rx {
                job();
            }
        })?;
    jobs_tx
        .send(job)
        .map_err(|_| std::io::Error::other("the jail spawner thread ended"))?;
    *spawner = Some(jobs_tx);
    Ok(())
}

/// Runs `f` (the spawn of a jail) on a thread that lives as long as this
/// process, and returns its result.
///
/// `--die-with-parent` makes bwrap ask for SIGKILL when its parent
/// *thread* ends (`PR_SET_PDEATHSIG` follows the thread that forked, not
/// the process): spawned from a start thread (`off_thread`, a CLI's
/// scoped thread) the jail would die as soon as that thread returns. The
/// spawner thread is started by the first jailed start and then waits for
/// the next; it never ends, so the jail dies with this process only.
pub(crate) fn spawn_on_lasting_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    submit(Box::new(move || {
        let _ = tx.send(f());
    }))?;
    rx.recv()
        .map_err(|_| Error::from(std::io::Error::other("the jail spawner thread panicked")))
}

/// A jailed interpreter started ahead of its gateway: bwrap has built the
/// jail and the interpreter waits in its loader for the payload.
pub(crate) struct Ready {
    /// The process, its pipes and control.
    pub(crate) spawned: super::process::Spawned,
    /// What to write to it (decided when it is used).
    pub(crate) boot: super::code_cache::Boot,
}

/// How many specs keep a spare at once (the oldest goes first).
const SPARE_SPECS: usize = 4;

/// How many specs' first starts are remembered (then forgotten at once).
const SEEN_SPECS: usize = 256;

/// Spare jails, by spec (see [`take_spare`]).
#[derive(Default)]
struct Spares {
    ready: HashMap<String, Ready>,
    /// Keys of `ready`, oldest first.
    order: std::collections::VecDeque<String>,
    /// Specs started at least once.
    seen: std::collections::HashSet<String>,
    /// Specs whose spare is being made.
    filling: std::collections::HashSet<String>,
}

fn spares() -> &'static Mutex<Spares> {
    static S: OnceLock<Mutex<Spares>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// Whether spares are made (`EXECNET_JAIL_SPARE=0` turns them off).
fn spares_enabled() -> bool {
    std::env::var("EXECNET_JAIL_SPARE").map_or(true, |v| v != "0")
}

/// The spare jail made for `key` (a spec's interpreter and setup), if one
/// is ready and still alive.
///
/// Why spares: most of a jailed start's extra cost is bwrap's own set-up
/// (its `pivot_root` and the unmount of the old root wait for RCU grace
/// periods: 6-12 ms here, more on busy cores), which the host cannot
/// shorten. From the second start of a spec on, the next jail of that
/// spec is built in the background while the current one works, and the
/// start after it only writes the payload. One spare per spec, for at
/// most [`SPARE_SPECS`] specs; specs with a cgroup limit get none (an
/// idle cgroup would outlive a killed host). Spares die with this process
/// (`--die-with-parent`, spawned from the lasting thread).
pub(crate) fn take_spare(key: &str) -> Option<Ready> {
    let mut s = lock(spares());
    let ready = s.ready.remove(key)?;
    s.order.retain(|k| k != key);
    drop(s);
    // A spare that died meanwhile (killed from outside) is no use.
    match super::PeerControl::wait(&*ready.spawned.control, std::time::Duration::ZERO) {
        None => Some(ready),
        Some(_) => None,
    }
}

/// After a jailed start of `key`: from the spec's second start on, makes
/// its next spare in the background (`make` runs on the lasting thread).
pub(crate) fn refill(key: String, make: impl FnOnce() -> Result<Ready> + Send + 'static) {
    if !spares_enabled() {
        return;
    }
    {
        let mut s = lock(spares());
        if s.seen.len() >= SEEN_SPECS && !s.seen.contains(&key) {
            // Bounded memory in a process that makes specs without end:
            // forgetting only delays a spec's spare by one start.
            s.seen.clear();
        }
        if s.seen.insert(key.clone()) || s.filling.contains(&key) || s.ready.contains_key(&key) {
            return;
        }
        s.filling.insert(key.clone());
    }
    let job_key = key.clone();
    let job: Job = Box::new(move || {
        let made = make();
        let mut s = lock(spares());
        s.filling.remove(&job_key);
        match made {
            Ok(ready) => {
                s.ready.insert(job_key.clone(), ready);
                s.order.push_back(job_key);
                while s.order.len() > SPARE_SPECS {
                    if let Some(old) = s.order.pop_front() {
                        // Dropped: its control kills and reaps it.
                        let gone = s.ready.remove(&old);
                        drop(s);
                        drop(gone);
                        s = lock(spares());
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not pre-start a spare jail"),
        }
    });
    // Built a little later, so that it does not compete for the CPU with
    // the start that asked for it (its first round trips follow at once).
    let delayed = std::thread::Builder::new()
        .name("execnet-jail-spare".into())
        .spawn(move || {
            std::thread::sleep(SPARE_DELAY);
            if submit(job).is_err() {
                lock(spares()).filling.remove(&key);
            }
        });
    if let Err(e) = delayed {
        tracing::debug!(error = %e, "could not schedule a spare jail");
    }
}

/// How long after a jailed start its spec's next spare is built.
const SPARE_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// `bwrap` on `PATH`, found once per process.
fn bwrap() -> Result<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| super::popen::find_in_path("bwrap", None))
        .clone()
        .ok_or_else(|| Error::BubblewrapMissing {
            detail: format!(
                "no executable bwrap in PATH ({})",
                std::env::var("PATH").unwrap_or_default()
            ),
        })
}

/// The outcome of the trial jail (see [`start_namespace_check`]), once
/// known, and the condition its waiters wait on.
struct NamespaceCheck {
    /// `None` until the trial has ended.
    outcome: Mutex<Option<Result<()>>>,
    done: std::sync::Condvar,
}

fn namespace_check() -> &'static NamespaceCheck {
    static CHECK: OnceLock<NamespaceCheck> = OnceLock::new();
    CHECK.get_or_init(|| NamespaceCheck {
        outcome: Mutex::new(None),
        done: std::sync::Condvar::new(),
    })
}

/// Starts, once per process, a trial run of `bwrap` with the jail's
/// namespaces and mounts (`true` inside): a kernel that refuses them fails
/// every jailed start the same way, and [`namespaces_permitted`] then
/// turns that into an error that names the cause. The trial runs on a
/// thread of its own, beside the first real jail (it used to run before
/// it: 3-6 ms on the first jailed start of every process), and not at all
/// where nothing can refuse ([`root_may_unshare`]). Returns the refusal at
/// once when an earlier trial has shown it.
fn start_namespace_check(bwrap: &Path) -> Result<()> {
    static STARTED: std::sync::Once = std::sync::Once::new();
    let check = namespace_check();
    STARTED.call_once(|| {
        if root_may_unshare() {
            *lock(&check.outcome) = Some(Ok(()));
            return;
        }
        let bwrap = bwrap.to_path_buf();
        let trial = move || {
            let outcome = trial_jail(&bwrap);
            *lock(&check.outcome) = Some(outcome);
            check.done.notify_all();
        };
        if let Err(e) = std::thread::Builder::new()
            .name("execnet-jail-check".into())
            .spawn(trial)
        {
            // No thread: the jail's own start will show what is wrong.
            tracing::debug!(error = %e, "could not start the namespace check");
            *lock(&check.outcome) = Some(Ok(()));
        }
    });
    match &*lock(&check.outcome) {
        Some(Err(e)) => Err(e.clone()),
        _ => Ok(()),
    }
}

/// Waits (at most `timeout`) for the trial jail of [`start_namespace_check`]
/// and returns its refusal: [`Error::NamespacesNotPermitted`] (or
/// [`Error::BubblewrapMissing`], [`Error::BootstrapFailed`] for a bwrap
/// that cannot run at all). A jailed start calls it after handing the
/// worker its payload, so the wait overlaps the interpreter's start; `Ok`
/// when the trial worked, or has not ended within `timeout` (the start
/// then shows for itself what is wrong).
pub(crate) fn namespaces_permitted(timeout: std::time::Duration) -> Result<()> {
    let check = namespace_check();
    let deadline = std::time::Instant::now() + timeout;
    let mut outcome = lock(&check.outcome);
    loop {
        if let Some(r) = &*outcome {
            return r.clone();
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            tracing::debug!("the namespace check has not ended: not waiting longer");
            return Ok(());
        }
        outcome = check
            .done
            .wait_timeout(outcome, left)
            .map_or_else(|e| e.into_inner().0, |(g, _)| g);
    }
}

/// Whether this process is root as the machine's root is: in the initial
/// user namespace (`/proc/self/uid_map` maps all ids to themselves), with
/// `CAP_SYS_ADMIN` in effect and no seccomp filter. A root jail has no
/// user namespace ([`base_args`]), and such a root may create every other
/// namespace and mount what bwrap mounts: the trial jail could only
/// confirm it (a Linux security module that forbids it anyway shows as
/// the start's own failure, with bwrap's message in its stderr). Root in a
/// container or a user namespace of its own, or any other user, runs the
/// trial.
fn root_may_unshare() -> bool {
    if !as_root() {
        return false;
    }
    let initial_userns = std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let words: Vec<&str> = m.split_whitespace().collect();
        words == ["0", "0", "4294967295"]
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    const CAP_SYS_ADMIN: u32 = 21;
    let sys_admin = field("CapEff:")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0);
    initial_userns && sys_admin && field("Seccomp:") == Some("0")
}

/// Runs the trial jail (see [`start_namespace_check`]).
fn trial_jail(bwrap: &Path) -> Result<()> {
    let mut argv = base_args(&JailOptions::default(), as_root());
    argv.extend(["--", "true"].map(String::from));
    let out = Command::new(bwrap)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::BubblewrapMissing {
            detail: format!("{}: {e}", bwrap.display()),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(classify(&String::from_utf8_lossy(&out.stderr)))
}

/// bwrap's complaint about namespaces, or another failure to start.
fn classify(stderr: &str) -> Error {
    let s = stderr.to_ascii_lowercase();
    let namespaces = s.contains("namespace")
        || s.contains("uid map")
        || s.contains("setting up uid")
        || s.contains("operation not permitted")
        || s.contains("no permissions");
    if namespaces {
        Error::NamespacesNotPermitted {
            detail: stderr.trim_end().to_string(),
        }
    } else {
        Error::BootstrapFailed {
            reason: "bwrap failed to start a trial jail".into(),
            stderr_tail: stderr.trim_end().to_string(),
        }
    }
}

/// What the jail needs to know about an interpreter.
#[derive(Debug, Clone)]
struct Resolved {
    /// `sys.executable` (a shim seen through), or the name as given.
    executable: String,
    /// Its prefixes and base prefixes, and the directory of the executable
    /// with symlinks resolved.
    prefixes: Vec<PathBuf>,
}

/// Where `python` lives, once per process: from the filesystem when that
/// settles it ([`resolve_from_files`]), else by asking the interpreter
/// ([`ask`], ~10-50 ms, the first jailed start of that interpreter only).
/// An interpreter that cannot answer is run as given (its start then
/// fails with its own error).
fn resolve(python: &str) -> Resolved {
    static CACHE: OnceLock<Mutex<HashMap<String, Resolved>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = lock(cache).get(python) {
        return r.clone();
    }
    let r = resolve_from_files(python)
        .or_else(|| ask(python))
        .unwrap_or_else(|| Resolved {
            executable: python.to_string(),
            prefixes: Vec::new(),
        });
    lock(cache).insert(python.to_string(), r.clone());
    r
}

/// Runs `python` to learn its `sys.executable`, prefixes and base
/// prefixes, and the directories of its executable.
fn ask(python: &str) -> Option<Resolved> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys\nfor p in (sys.executable, sys.prefix, sys.base_prefix, \
             sys.exec_prefix, sys.base_exec_prefix): print(p)",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let (exe, prefixes) = lines.split_first().filter(|(exe, _)| !exe.is_empty())?;
    let mut all: Vec<PathBuf> = prefixes.iter().map(PathBuf::from).collect();
    if let Some(dir) = std::fs::canonicalize(exe)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        all.push(dir);
    }
    if let Some(dir) = Path::new(exe).parent() {
        all.push(dir.to_path_buf());
    }
    Some(Resolved {
        executable: (*exe).to_string(),
        prefixes: minimal(all),
    })
}

/// What [`ask`] would answer, found in the filesystem the way CPython's
/// own start-up finds it (`Modules/getpath.py`), for the common layout
/// only: `python` an absolute path resolving to a file named `pythonX.Y`
/// (so the version is known), not a virtual environment (no `pyvenv.cfg`
/// beside it or one up), no `._pth` file, build directory or stdlib zip;
/// then `sys.prefix` is the nearest directory above the resolved file
/// holding `lib/pythonX.Y/os.py` (or `lib64/…`, `os.pyc`), and
/// `sys.exec_prefix` the nearest holding `lib/pythonX.Y/lib-dynload`.
/// `None` (ask the interpreter) in every other case, which also covers
/// names looked up on `PATH` (pyenv's shims are scripts) and PyPy.
fn resolve_from_files(python: &str) -> Option<Resolved> {
    let given = Path::new(python);
    if !given.is_absolute() {
        return None;
    }
    let real = std::fs::canonicalize(given).ok()?;
    if !real.is_file() {
        return None;
    }
    let version = python_version(&real)?;
    let (given_dir, real_dir) = (given.parent()?, real.parent()?);
    let beside = |f: &Path, suffix: &str| {
        let mut name = f.as_os_str().to_owned();
        name.push(suffix);
        Path::new(&name).exists()
    };
    let special = [given_dir, real_dir]
        .iter()
        .flat_map(|d| [Some(*d), d.parent()])
        .flatten()
        .any(|d| d.join("pyvenv.cfg").exists())
        || beside(given, "._pth")
        || beside(&real, "._pth")
        || real_dir.join("pybuilddir.txt").exists()
        || real_dir.join("Modules/Setup.local").exists();
    if special {
        return None;
    }
    let in_lib = |dir: &Path, rest: &str| -> Vec<PathBuf> {
        ["lib", "lib64"]
            .iter()
            .map(|l| dir.join(l).join(rest))
            .collect()
    };
    let zip = format!("python{}.zip", version.replace('.', ""));
    let stdlib = format!("python{version}");
    let above = || real.ancestors().skip(1);
    if above().any(|d| in_lib(d, &zip).iter().any(|p| p.exists())) {
        return None;
    }
    let prefix = above().find(|d| {
        in_lib(d, &stdlib)
            .iter()
            .any(|s| s.join("os.py").is_file() || s.join("os.pyc").is_file())
    })?;
    let exec_prefix = above().find(|d| {
        in_lib(d, &stdlib)
            .iter()
            .any(|s| s.join("lib-dynload").is_dir())
    })?;
    Some(Resolved {
        executable: python.to_string(),
        prefixes: minimal(vec![
            prefix.to_path_buf(),
            exec_prefix.to_path_buf(),
            real_dir.to_path_buf(),
            given_dir.to_path_buf(),
        ]),
    })
}

/// `3.11` for a file named `python3.11` (`3.13t` for `python3.13t`).
fn python_version(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let version = name.strip_prefix("python")?;
    let (major, minor) = version.split_once('.')?;
    let minor = minor.strip_suffix('t').unwrap_or(minor);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(major) && digits(minor)).then(|| version.to_string())
}

/// The paths of `all` that no other path of `all` contains (sorted,
/// without duplicates): binding a prefix binds its subdirectories.
fn minimal(mut all: Vec<PathBuf>) -> Vec<PathBuf> {
    all.retain(|p| p.is_absolute() && p.as_os_str().len() > 1);
    all.sort();
    all.dedup();
    let keep: Vec<PathBuf> = all
        .iter()
        .filter(|p| !all.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_options() {
        let a = base_args(&JailOptions::default(), false);
        assert_eq!(a[0], "--unshare-all");
        assert!(!a.contains(&"--share-net".to_string()));
        for w in ["--die-with-parent", "--new-session", "--cap-drop", "--uid"] {
            assert!(a.contains(&w.to_string()), "{w}");
        }
        let net = JailOptions {
            rw: vec![],
            net: true,
        };
        let a = base_args(&net, false);
        // --share-net must follow --unshare-all to undo its network part.
        assert_eq!(&a[..2], ["--unshare-all", "--share-net"]);
        // As root: no user namespace, no --uid (the loader drops to it).
        let a = base_args(&JailOptions::default(), true).join(" ");
        assert!(!a.contains("--unshare-all") && !a.contains("--uid"), "{a}");
        assert!(
            a.contains("--unshare-pid") && a.contains("--unshare-net"),
            "{a}"
        );
        assert!(a.contains("--cap-drop ALL --cap-add CAP_SETUID --cap-add CAP_SETGID"));
        let a = base_args(&net, true).join(" ");
        assert!(!a.contains("--unshare-net"), "{a}");
    }

    #[test]
    fn what_runs_before_the_drop_is_out_of_reach() {
        let env = |k: &str| vec![(k.to_string(), "/x".to_string())];
        let pre = [
            PathBuf::from("/usr"),
            PathBuf::from("/root/.pyenv/versions/3.11.7"),
        ];
        let rw = [PathBuf::from("/srv/out")];
        assert!(before_the_drop(&env("FOO"), &pre, &rw).is_ok());
        assert!(before_the_drop(&env("TMPDIR"), &pre, &rw).is_ok());
        for k in ["PYTHONPATH", "PYTHONHOME", "LD_PRELOAD", "GCONV_PATH"] {
            let e = before_the_drop(&env(k), &pre, &rw).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains("root"), "{e}");
        }
        for w in ["/usr/local/lib", "/root/.pyenv", "/tmp/.local/lib", "/"] {
            let e = before_the_drop(&[], &pre, &[PathBuf::from(w)]).unwrap_err();
            assert!(e.to_string().contains("overlaps"), "{e}");
        }
    }

    #[test]
    fn the_way_to_a_hidden_bind_is_open() {
        let (mut a, mut made) = (Vec::new(), Vec::new());
        way_to(&mut a, &mut made, Path::new("/root/.pyenv/versions/3.11.7"));
        way_to(&mut a, &mut made, Path::new("/root/.pyenv/versions/3.12.1"));
        way_to(&mut a, &mut made, Path::new("/usr/lib"));
        way_to(&mut a, &mut made, Path::new("/tmp/x"));
        assert_eq!(
            a.join(" "),
            "--perms 0755 --dir /root/.pyenv --perms 0755 --dir /root/.pyenv/versions"
        );
    }

    #[test]
    fn hides_what_exists() {
        let mut a = Vec::new();
        hide(&mut a, |p| {
            p != Path::new("/etc/gshadow") && p != Path::new("/home")
        });
        let text = a.join(" ");
        assert!(text.contains("--tmpfs /root"), "{text}");
        assert!(text.contains("--perms 1777 --tmpfs /tmp"), "{text}");
        assert!(text.contains("--ro-bind /dev/null /etc/shadow"), "{text}");
        assert!(
            !text.contains("/home") && !text.contains("gshadow"),
            "{text}"
        );
    }

    #[test]
    fn environment_is_cleared_but_the_allowlist() {
        let mut a = Vec::new();
        let host = |k: &str| match k {
            "PATH" => Some("/usr/bin".to_string()),
            "TERM" => Some("xterm".to_string()),
            _ => None,
        };
        let vars = vec![
            ("LC_ALL".to_string(), "C.UTF-8".to_string()),
            ("SECRET".to_string(), "x".to_string()),
        ];
        environment(
            &mut a,
            &[("A".to_string(), "b c".to_string())],
            host,
            vars.into_iter(),
        );
        assert_eq!(
            a.join(" "),
            "--clearenv --setenv PATH /usr/bin --setenv TERM xterm --setenv LC_ALL C.UTF-8 \
             --setenv HOME /tmp --setenv A b c"
        );
    }

    #[test]
    fn minimal_prefixes() {
        let m = minimal(
            [
                "/root/.pyenv/versions/3.11.7",
                "/root/.pyenv/versions/3.11.7/bin",
                "/usr",
                "/usr",
                "rel",
                "/",
            ]
            .map(PathBuf::from)
            .to_vec(),
        );
        assert_eq!(
            m,
            ["/root/.pyenv/versions/3.11.7", "/usr"].map(PathBuf::from)
        );
        assert!(is_hidden(Path::new("/root/.pyenv/versions/3.11.7")));
        assert!(is_hidden(Path::new("/tmp/venv")));
        assert!(!is_hidden(Path::new("/usr")));
        assert!(!is_hidden(Path::new("/rootfs")));
    }

    /// The common layout is resolved from its files as CPython resolves
    /// it; a virtual environment, or one without its standard library
    /// above it, is asked.
    #[test]
    fn interpreters_resolved_from_their_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(format!("jail-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/python3.99"), "").unwrap();
        std::os::unix::fs::symlink("python3.99", root.join("bin/python3")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        let exe = root.join("bin/python3").to_string_lossy().into_owned();
        // No standard library above it: ask.
        assert!(resolve_from_files(&exe).is_none());
        std::fs::create_dir_all(root.join("lib/python3.99/lib-dynload")).unwrap();
        std::fs::write(root.join("lib/python3.99/os.py"), "").unwrap();
        let r = resolve_from_files(&exe).expect("resolved from files");
        assert_eq!(r.executable, exe);
        assert_eq!(r.prefixes, vec![root.clone()]);
        // A virtual environment's base may be elsewhere: ask.
        std::fs::write(root.join("pyvenv.cfg"), "home = /root/x/bin\n").unwrap();
        assert!(resolve_from_files(&exe).is_none());
        std::fs::remove_dir_all(&root).unwrap();
        assert!(resolve_from_files("python3").is_none());
        assert_eq!(
            python_version(Path::new("/x/python3.13t")).as_deref(),
            Some("3.13t")
        );
        assert_eq!(python_version(Path::new("/x/python3")), None);
        assert_eq!(python_version(Path::new("/x/pypy3.9")), None);
    }

    /// Wherever the files settle it, they give what the interpreter itself
    /// answers: every interpreter of this machine (Debian's, pyenv's under
    /// the hidden /root) is checked both ways.
    #[test]
    fn the_files_agree_with_the_interpreter() {
        let mut pythons = vec![PathBuf::from("/usr/bin/python3")];
        if let Ok(versions) = std::fs::read_dir("/root/.pyenv/versions") {
            pythons.extend(versions.flatten().map(|v| v.path().join("bin/python3")));
        }
        let mut compared = 0;
        for py in pythons.iter().filter(|p| p.exists()) {
            let py = py.to_string_lossy();
            let (Some(files), Some(asked)) = (resolve_from_files(&py), ask(&py)) else {
                continue;
            };
            assert_eq!(files.executable, asked.executable, "{py}");
            assert_eq!(files.prefixes, asked.prefixes, "{py}");
            compared += 1;
        }
        println!("{compared} interpreters resolved alike from files and by asking");
    }

    /// The remote line runs in a real shell: a local `sh -c` with bwrap
    /// replaced by `printf` shows the words bwrap would get.
    #[test]
    fn remote_line_is_one_shell_command() {
        let jail = JailOptions {
            rw: vec![PathBuf::from("/srv/a b")],
            net: false,
        };
        let line = remote_line(
            &jail,
            &[("K".into(), "v w".into())],
            Some(Path::new("/tmp/x")),
            "python3",
            &["-u".into(), "-c".into(), "print('hi')".into()],
        );
        assert!(
            line.starts_with("mkdir -p /tmp/x && bwrap --unshare-all"),
            "{line}"
        );
        let shown = line
            .replacen("mkdir -p /tmp/x && bwrap", "printf '%s\\n'", 1)
            .replace("$PATH", "/usr/bin");
        let out = std::process::Command::new("sh")
            .args(["-c", &shown])
            .env("LANG", "C.UTF-8")
            .env_remove("TZ")
            .output()
            .unwrap();
        let words: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        let text = words.join(" ");
        assert!(text.contains("--tmpfs /root"), "{text}");
        assert!(text.contains("--bind /srv/a b /srv/a b"), "{text}");
        assert!(text.contains("--setenv LANG C.UTF-8"), "{text}");
        assert!(!text.contains("TZ"), "{text}");
        assert!(text.contains("--setenv K v w"), "{text}");
        assert!(words.contains(&"v w".to_string()), "{words:?}");
        assert!(text.ends_with("-- python3 -u -c print('hi')"), "{text}");
    }

    #[test]
    fn classifies_bwrap_failures() {
        assert!(matches!(
            classify("bwrap: No permissions to creating new namespace, likely because the kernel does not allow non-privileged user namespaces."),
            Error::NamespacesNotPermitted { .. }
        ));
        assert!(matches!(
            classify("bwrap: setting up uid map: Permission denied"),
            Error::NamespacesNotPermitted { .. }
        ));
        assert!(matches!(
            classify("bwrap: Can't find source path /x: No such file or directory"),
            Error::BootstrapFailed { .. }
        ));
    }
}
