//! `popen`: the worker as a local subprocess.
//!
//! `PYTHON [-B] -u -c LOADER` with stdin/stdout as the byte stream, in its own
//! process group (so terminate can kill whatever the worker started), stderr
//! read by a thread that keeps its tail for error reports and passes it
//! through to our stderr when output is inherited (all of that is
//! `transport/process.rs`, shared with ssh). The first start of an
//! interpreter has it hand back its compiled worker, which later starts (in
//! this process, or in others through the disk cache) load instead of
//! compiling (`transport/code_cache/`). The default interpreter is
//! the `python3` on `PATH`, resolved once to the real binary (a pyenv shim
//! costs ~80 ms per start).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::jail;
use super::limits;
use super::{
    code_cache, off_thread, process, via, Connect, ConnectFuture, Connected, PeerControl, Request,
    Through, Transport, WorkerSetup,
};
use crate::error::{Error, Result};
use crate::xspec::{OutputMode, XSpec};

/// Everything the popen transport needs, taken from a spec.
#[derive(Debug, Clone, Default)]
pub struct PopenOptions {
    /// The interpreter command line; `None`: the resolved default `python3`.
    pub python: Option<Vec<String>>,
    /// How the worker process is set up (`chdir=`, `nice=`, `env:`, ...).
    pub setup: WorkerSetup,
}

impl PopenOptions {
    /// Takes the popen keys of a spec. [`Error::Spec`]: `python=` is empty
    /// or not a valid shell word list.
    pub fn from_spec(spec: &XSpec) -> Result<PopenOptions> {
        let python = match spec.python() {
            Some(p) => {
                let argv =
                    shell_words::split(p).map_err(|e| Error::Spec(format!("python={p}: {e}")))?;
                if argv.is_empty() {
                    return Err(Error::Spec("python= is empty".into()));
                }
                Some(argv)
            }
            None => None,
        };
        if spec.via().is_some() {
            // The relay starts the target: jail the gateway via= names.
            jail::refuse_unsupported(spec, "popen via=", &[])?;
        }
        Ok(PopenOptions {
            python,
            setup: WorkerSetup::from_spec(spec),
        })
    }
}

/// The interpreter that `python3` on `PATH` runs, resolved once per process:
/// the PATH entry is asked for `sys.executable`, which sees through shims.
pub fn default_python() -> Result<String> {
    static RESOLVED: OnceLock<Option<String>> = OnceLock::new();
    RESOLVED
        .get_or_init(resolve_python3)
        .clone()
        .ok_or_else(|| Error::InterpreterNotFound {
            python: "python3".into(),
            reason: "no python3 on PATH".into(),
        })
}

fn resolve_python3() -> Option<String> {
    let found = find_in_path("python3", None)?;
    let out = Command::new(&found)
        .args(["-c", "import sys;sys.stdout.write(sys.executable or '')"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok();
    if let Some(out) = out {
        if out.status.success() {
            let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !exe.is_empty() && Path::new(&exe).is_file() {
                tracing::debug!(python3 = %found.display(), resolved = %exe, "resolved default interpreter");
                return Some(exe);
            }
        }
    }
    Some(found.to_string_lossy().into_owned())
}

/// The first executable `name` in the directories of `path` (default: our
/// `PATH`).
pub(crate) fn find_in_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = path
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The spec's gateway type this module serves.
const KIND: &str = "popen";

/// The popen transport: a local subprocess, or one started from another
/// gateway's host (`via=GWID`).
struct PopenConnect {
    opts: PopenOptions,
    via: Option<String>,
}

/// Claims `popen` specs (see [`super::TRANSPORTS`]).
pub(crate) fn claim(request: &Request<'_>) -> Option<Result<Box<dyn Connect>>> {
    if request.spec.gateway_type() != Some(KIND) {
        return None;
    }
    let via = request.spec.via().map(str::to_string);
    Some(PopenOptions::from_spec(request.spec).map(|mut opts| {
        if via.is_none() {
            // Through a relay the target's stderr always comes back as
            // items; the output mode applies to a direct child only.
            opts.setup.output = request.output;
        }
        Box::new(PopenConnect { opts, via }) as Box<dyn Connect>
    }))
}

impl Connect for PopenConnect {
    fn through(&self) -> Option<&str> {
        self.via.as_deref()
    }

    fn connect(self: Box<Self>, through: Option<Box<dyn Through>>) -> ConnectFuture {
        Box::pin(async move {
            let (transport, probe) = match through {
                Some(gw) => {
                    let (t, probe) = via::connect_popen(gw.as_ref(), &self.opts).await?;
                    (t, Some(probe))
                }
                None => {
                    let opts = self.opts;
                    (off_thread(move || connect(&opts)).await?, None)
                }
            };
            Ok(Connected {
                transport,
                probe,
                remoteaddress: None,
            })
        })
    }
}

/// The command that starts `argv` as `setup` says (in a jail, under its
/// limits), the plan of its payload, and its cgroup.
fn prepare(
    argv: &[String],
    setup: &WorkerSetup,
) -> Result<(Command, code_cache::Boot, Option<limits::Cgroup>)> {
    // `argv` is non-empty: from_spec refuses an empty python=, and the
    // default is one element.
    let (program, pre_args) = argv
        .split_first()
        .ok_or_else(|| Error::Spec("python= is empty".into()))?;
    let boot = code_cache::boot(argv, &setup.env);
    // Limits: the worker joins its cgroup and sets its rlimits first thing.
    let cgroup = limits::Cgroup::create(&setup.limits)?;
    let mut loader = limits::prelude(&setup.limits, cgroup.as_ref());
    if setup.jail.is_some() {
        // As root, the worker gives up root itself, once in its cgroup.
        loader.push_str(&jail::drop_root());
    }
    loader.push_str(&boot.loader);
    let cmd = match &setup.jail {
        Some(j) => {
            // The jail binds chdir= writable: it must exist, absolute.
            let chdir = setup
                .chdir
                .as_deref()
                .map(jail::prepare_chdir)
                .transpose()?;
            let args = WorkerSetup {
                chdir: chdir.clone(),
                ..setup.clone()
            }
            .interpreter_args(&loader);
            let files = cgroup.as_ref().map(limits::Cgroup::procs_files);
            jail::command(
                j,
                &jail::Wrap {
                    python: argv,
                    args: &args,
                    env: &setup.env,
                    chdir: chdir.as_deref(),
                    writable_files: files.as_deref().unwrap_or_default(),
                },
            )?
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(pre_args).args(setup.interpreter_args(&loader));
            for (k, v) in &setup.env {
                cmd.env(k, v);
            }
            cmd
        }
    };
    Ok((cmd, boot, cgroup))
}

/// Starts the interpreter, sends it the worker, and returns the byte stream.
pub fn connect(opts: &PopenOptions) -> Result<Transport> {
    let argv: Vec<String> = match &opts.python {
        Some(v) => v.clone(),
        None => vec![default_python()?],
    };
    let setup = &opts.setup;
    let python = shell_words::join(&argv);
    let description = format!(
        "popen {}{python}",
        if setup.jail.is_some() { "(jail) " } else { "" }
    );
    let passthrough = setup.output == OutputMode::Inherit;
    // A jail without cgroup limits may use a spare started ahead
    // (jail::take_spare: bwrap's own set-up is most of a jailed start).
    let spare_key =
        (setup.jail.is_some() && setup.limits.memory.is_none() && setup.limits.procs.is_none())
            .then(|| format!("{argv:?} {setup:?}"));
    let (spawned, boot, cgroup) = match spare_key.as_deref().and_then(jail::take_spare) {
        Some(ready) => (ready.spawned, ready.boot, None),
        None => {
            let (cmd, boot, cgroup) = prepare(&argv, setup)?;
            let spawned = if setup.jail.is_some() {
                // bwrap dies with the thread that spawned it (see there).
                let python = python.clone();
                jail::spawn_on_lasting_thread(move || process::spawn(cmd, &python, passthrough))??
            } else {
                process::spawn(cmd, &python, passthrough)?
            };
            (spawned, boot, cgroup)
        }
    };
    if let Some(key) = spare_key {
        let (argv, setup, python) = (argv.clone(), setup.clone(), python.clone());
        jail::refill(key, move || {
            // On the lasting thread already: spawn directly.
            let (cmd, boot, _) = prepare(&argv, &setup)?;
            let spawned = process::spawn(cmd, &python, passthrough)?;
            Ok(jail::Ready { spawned, boot })
        });
    }
    let process::Spawned {
        mut stdin,
        stdout,
        control,
    } = spawned;
    tracing::debug!(pid = control.pid(), %description, "spawned worker");

    process::widen_pipe(&stdin);
    process::widen_pipe(&stdout);

    // Compiled code from memory or disk, or the source; may wait for
    // another start of this interpreter that is compiling (single-flight)
    // while this one's interpreter starts up.
    let start = boot.resolve();
    let sent = process::send_worker(&mut stdin, &control, &start.payload());
    if setup.jail.is_some() {
        // The process's trial jail ran beside this one (jail::command): a
        // refusal of namespaces is the error to report, not this jail's end
        // (a failed send has killed and reaped the jail already).
        if let Err(e) = jail::namespaces_permitted(super::STARTUP_TIMEOUT) {
            if sent.is_ok() {
                control.kill();
                let _ = control.wait(std::time::Duration::from_secs(1));
            }
            return Err(e);
        }
    }
    sent?;
    let reader = start.reader(stdout);
    let control: Box<dyn PeerControl> = if setup.limits.any() {
        Box::new(limits::Limited::new(control, setup.limits, cgroup))
    } else {
        Box::new(process::Shared(control))
    };
    Ok(Transport {
        reader,
        writer: Box::new(stdin),
        control: Some(control),
        description,
    })
}
