//! `ssh`: the worker on another host, through the system `ssh` binary.
//!
//! `ssh -o BatchMode=yes [-F ssh_config] [reuse options] [ssh options] HOST
//! 'env NAME=VALUE… PYTHON [-B] -u -c LOADER'`, run like popen (own process
//! group, stderr tail, reaping: `transport/process.rs`). The remote command is
//! one shell line: `python=` is pasted in unquoted, so
//! `python=sudo -u app python3` works; the arguments after it (the loader
//! with the `chdir=`/`nice=` prelude) are quoted, and `env:` parts become an
//! `env` prefix, so all three behave as over popen.
//!
//! With `ssh_reuse` in the spec, gateways to the same host share one ssh
//! connection (`ControlMaster=auto`, a socket in a private directory,
//! `ControlPersist`): the first pays the handshake, later ones start in
//! milliseconds. A count of live gateways per connection stops the master
//! (`ssh -O exit`) when the last of them ends.
//!
//! A failed start is classified from ssh's exit status and stderr
//! (`classify`): host not found, connection refused, host unreachable,
//! authentication failed, host key verification failed, interpreter not
//! found; each error carries the stderr tail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::process::{self, ProcessControl, Shared};
use super::{
    off_thread, via, Connect, ConnectFuture, Connected, PeerControl, Request, Through, Transport,
    WorkerSetup,
};
use crate::error::{Error, ExitStatus, Result};
use crate::sync::lock;
use crate::xspec::{OutputMode, XSpec};

/// How long an idle shared connection survives us if we die without
/// stopping it (normally it is stopped when its last gateway ends).
const CONTROL_PERSIST: &str = "60";

/// Everything the ssh transport needs, taken from a spec.
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// The words of `ssh=`: ssh options, then `[user@]host` last.
    pub args: Vec<String>,
    /// `ssh_config=`: passed as `-F`.
    pub ssh_config: Option<PathBuf>,
    /// The remote interpreter command, pasted into the remote shell line
    /// unquoted (default `python3`).
    pub python: String,
    /// How the remote worker process is set up (`chdir=`, `nice=`, `env:`,
    /// ...).
    pub setup: WorkerSetup,
    /// Share one connection per host (`ssh_reuse`).
    pub reuse: bool,
}

impl SshOptions {
    /// Takes the ssh keys of a spec.
    pub fn from_spec(spec: &XSpec) -> Result<SshOptions> {
        let value = spec
            .ssh()
            .ok_or_else(|| Error::Spec("ssh= needs [options] [user@]host".into()))?;
        let args =
            shell_words::split(value).map_err(|e| Error::Spec(format!("ssh={value}: {e}")))?;
        if args.is_empty() {
            return Err(Error::Spec("ssh= needs [options] [user@]host".into()));
        }
        // The cgroup limits need a cgroup made on the remote host.
        super::jail::refuse_unsupported(spec, "ssh", &["jail", "max_cpu"])?;
        Ok(SshOptions {
            args,
            ssh_config: spec.ssh_config().map(PathBuf::from),
            python: spec.python().unwrap_or("python3").to_string(),
            setup: WorkerSetup::from_spec(spec),
            reuse: spec.ssh_reuse(),
        })
    }

    /// The `[user@]host` word (the last of `ssh=`).
    pub fn host(&self) -> &str {
        self.args.last().map_or("", String::as_str)
    }

    /// The shell line ssh runs remotely (with `jail`, under the remote
    /// host's bwrap: `jail::remote_line`).
    pub fn remote_command(&self) -> String {
        // max_cpu=: the loader's first statement, as over popen.
        let loader = super::limits::prelude(&self.setup.limits, None) + &process::source_loader();
        let args = self.setup.interpreter_args(&loader);
        if let Some(jail) = &self.setup.jail {
            return super::jail::remote_line(
                jail,
                &self.setup.env,
                self.setup.chdir.as_deref(),
                &self.python,
                &args,
            );
        }
        let mut line = String::new();
        if !self.setup.env.is_empty() {
            line.push_str("env");
            for (k, v) in &self.setup.env {
                line.push(' ');
                line.push_str(&shell_words::quote(&format!("{k}={v}")));
            }
            line.push(' ');
        }
        line.push_str(&self.python);
        for a in args {
            line.push(' ');
            line.push_str(&shell_words::quote(&a));
        }
        line
    }

    /// The options before the host: batch mode, config, connection sharing.
    fn common_args(&self, control_path: Option<&Path>) -> Vec<String> {
        let mut argv = vec!["ssh".to_string(), "-o".into(), "BatchMode=yes".into()];
        if let Some(cfg) = &self.ssh_config {
            argv.push("-F".into());
            argv.push(cfg.to_string_lossy().into_owned());
        }
        if let Some(path) = control_path {
            argv.extend([
                "-o".to_string(),
                "ControlMaster=auto".into(),
                "-o".into(),
                format!("ControlPath={}", path.display()),
                "-o".into(),
                format!("ControlPersist={CONTROL_PERSIST}"),
            ]);
        }
        argv
    }

    /// The whole command line, `ssh` first. `control_path`: the
    /// connection-sharing socket, if reusing.
    pub fn argv(&self, control_path: Option<&Path>) -> Vec<String> {
        let mut argv = self.common_args(control_path);
        argv.extend(self.args.iter().cloned());
        argv.push(self.remote_command());
        argv
    }
}

/// The spec's gateway type this module serves.
const KIND: &str = "ssh";

/// The ssh transport: `ssh … PYTHON` from here, or from another gateway's
/// host (`via=GWID`).
struct SshConnect {
    opts: SshOptions,
    via: Option<String>,
}

/// Claims `ssh=` specs (see [`super::TRANSPORTS`]).
pub(crate) fn claim(request: &Request<'_>) -> Option<Result<Box<dyn Connect>>> {
    if request.spec.gateway_type() != Some(KIND) {
        return None;
    }
    let via = request.spec.via().map(str::to_string);
    Some(SshOptions::from_spec(request.spec).map(|mut opts| {
        opts.setup.output = request.output;
        Box::new(SshConnect { opts, via }) as Box<dyn Connect>
    }))
}

impl Connect for SshConnect {
    fn through(&self) -> Option<&str> {
        self.via.as_deref()
    }

    fn connect(self: Box<Self>, through: Option<Box<dyn Through>>) -> ConnectFuture {
        Box::pin(async move {
            let remoteaddress = Some(self.opts.host().to_string());
            let (transport, probe) = match through {
                Some(gw) => via::connect_ssh(gw.as_ref(), &self.opts).await?,
                None => {
                    let opts = self.opts;
                    off_thread(move || connect(&opts)).await?
                }
            };
            Ok(Connected {
                transport,
                probe: Some(probe),
                remoteaddress,
            })
        })
    }
}

/// What a failed start is checked against, kept by the caller of
/// [`connect`] (and of the via transport): the process (for its exit
/// status) and the names for the error.
pub(crate) struct Probe {
    pub(crate) control: Arc<dyn PeerControl>,
    pub(crate) host: String,
    pub(crate) python: String,
    /// Whether the process is ssh (else only "interpreter not found" is
    /// recognised).
    pub(crate) ssh: bool,
}

impl Probe {
    /// Turns a start-up failure into the specific error the exit status
    /// and stderr point to (unchanged when nothing matches).
    pub(crate) fn classify(&self, err: Error) -> Error {
        let status = self.control.wait(Duration::from_millis(500));
        let status = match status {
            Some(ExitStatus::Code(255)) if !self.ssh => None,
            s => s,
        };
        classify(err, status, &self.host, &self.python)
    }
}

/// Starts `ssh … PYTHON`, sends the worker and returns the byte stream
/// (and the probe that explains a failed start).
pub(crate) fn connect(opts: &SshOptions) -> Result<(Transport, Probe)> {
    let master = if opts.reuse {
        Some(MasterRef::acquire(opts)?)
    } else {
        None
    };
    let argv = opts.argv(master.as_ref().map(|m| m.path.as_path()));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let description = format!("ssh {}", shell_words::join(&opts.args));
    let process::Spawned {
        mut stdin,
        stdout,
        control,
    } = process::spawn(cmd, "ssh", opts.setup.output == OutputMode::Inherit)?;
    tracing::debug!(pid = control.pid(), %description, reuse = opts.reuse, "spawned ssh");
    let control = Arc::new(SshControl {
        process: control,
        master: Mutex::new(master),
    });
    let probe = Probe {
        control: control.clone(),
        host: opts.host().to_string(),
        python: opts.python.clone(),
        ssh: true,
    };
    // ssh that fails fast (a refused port, a bad key) may exit before the
    // worker is written: the broken pipe is explained like any failed start.
    process::send_worker(
        &mut stdin,
        &control.process,
        &[execnet_bootstrap::worker_compressed()],
    )
    .map_err(|e| probe.classify(e))?;
    Ok((
        Transport {
            reader: Box::new(stdout),
            writer: Box::new(stdin),
            control: Some(if opts.setup.limits.any() {
                // Which limit ended the worker (max_cpu=).
                Box::new(super::limits::Limited::new(
                    control,
                    opts.setup.limits,
                    None,
                ))
            } else {
                Box::new(Shared(control))
            }),
            description,
        },
        probe,
    ))
}

/// Maps ssh's exit status and stderr to an error the user can act on.
/// ssh itself exits with 255; anything else is the remote command's status
/// (127/126: the shell found no such interpreter, or could not run it).
pub(crate) fn classify(err: Error, status: Option<ExitStatus>, host: &str, python: &str) -> Error {
    let Error::BootstrapFailed { stderr_tail, .. } = &err else {
        return err;
    };
    let tail = stderr_tail.clone();
    let has = |s: &str| tail.contains(s);
    let (host, detail) = (host.to_string(), tail.clone());
    match status {
        Some(ExitStatus::Code(255)) => {
            if has("Could not resolve hostname") || has("Name or service not known") {
                Error::HostNotFound { host, detail }
            } else if has("Connection refused") {
                Error::ConnectionRefused { host, detail }
            } else if has("timed out") || has("No route to host") || has("Network is unreachable") {
                Error::HostUnreachable { host, detail }
            } else if has("Host key verification failed")
                || has("HOST IDENTIFICATION HAS CHANGED")
                || has("host key is known")
            {
                Error::HostKeyVerificationFailed { host, detail }
            } else if has("Permission denied") || has("Too many authentication failures") {
                Error::AuthenticationFailed { host, detail }
            } else {
                err
            }
        }
        Some(ExitStatus::Code(126 | 127)) => Error::InterpreterNotFound {
            python: python.to_string(),
            reason: tail.trim_end().to_string(),
        },
        _ => err,
    }
}

/// The ssh process, and the share of a master connection it holds.
struct SshControl {
    process: Arc<ProcessControl>,
    master: Mutex<Option<MasterRef>>,
}

impl PeerControl for SshControl {
    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
    fn kill(&self) {
        self.process.kill()
    }
    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let status = self.process.wait(timeout);
        if status.is_some() {
            // This gateway's session is over: give back its share of the
            // connection now rather than when the last handle is dropped.
            drop(lock(&self.master).take());
        }
        status
    }
    fn stderr_tail(&self, timeout: Duration) -> String {
        self.process.stderr_tail(timeout)
    }
    fn readable_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.process.readable_fd()
    }
}

/// One gateway's share of a ControlMaster connection; the last share to go
/// stops the master.
struct MasterRef {
    key: String,
    path: PathBuf,
    exit_argv: Vec<String>,
}

/// Live gateways per shared connection (keyed by everything that selects
/// the connection: config, options, host).
fn masters() -> &'static Mutex<HashMap<String, usize>> {
    static M: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

impl MasterRef {
    fn acquire(opts: &SshOptions) -> Result<MasterRef> {
        let mut m = lock(masters());
        // Under the lock: the last share to go removes the directory.
        let dir = control_dir()?;
        let key = format!("{:?} {:?}", opts.ssh_config, opts.args);
        // %C: a hash of the connection's parameters, 40 hex digits; keeps the
        // socket path short (unix socket paths are limited to ~108 bytes).
        let path = dir.join("%C");
        let mut exit_argv = opts.common_args(Some(&path));
        exit_argv.extend(["-O".to_string(), "exit".into()]);
        exit_argv.extend(opts.args.iter().cloned());
        *m.entry(key.clone()).or_insert(0) += 1;
        Ok(MasterRef {
            key,
            path,
            exit_argv,
        })
    }
}

impl Drop for MasterRef {
    fn drop(&mut self) {
        // Held across `ssh -O exit`: a gateway to the same host that starts
        // meanwhile must not attach to the master being stopped.
        let mut m = lock(masters());
        let Some(n) = m.get_mut(&self.key) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        m.remove(&self.key);
        stop_master(&self.exit_argv);
        if m.is_empty() {
            // No connection is shared any more: leave nothing behind. The
            // master unlinks its socket just after answering `-O exit`, so
            // the directory may take a moment to become empty.
            let deadline = Instant::now() + Duration::from_secs(1);
            while std::fs::remove_dir(control_path_dir())
                .is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Runs `ssh -O exit …`, bounded in time (a hung master is left to its
/// ControlPersist timeout).
fn stop_master(argv: &[String]) {
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// This process's private directory for ControlMaster sockets:
/// `$TMPDIR/execnet-ssh-PID`, or under `/tmp` if `$TMPDIR` is too long for
/// a socket path. It exists while a connection is shared.
fn control_path_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let name = format!("execnet-ssh-{}", std::process::id());
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() + name.len() + 42 > 100 {
            base = PathBuf::from("/tmp");
        }
        base.join(name)
    })
}

/// Creates the control directory (mode 0700), or makes an existing one
/// (left by an earlier process with our pid) private again.
fn control_dir() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = control_path_dir();
    let created = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        }
        r => r,
    };
    created.map_err(|e| {
        Error::Spec(format!(
            "ssh_reuse: cannot create the control directory {}: {e}",
            dir.display()
        ))
    })?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(spec: &str) -> SshOptions {
        SshOptions::from_spec(&XSpec::parse(spec).unwrap()).unwrap()
    }

    #[test]
    fn argv_and_remote_command() {
        let o = opts("ssh=-p 2222 me@h//python=sudo -u app python3//env:A=b c//ssh_config=/c");
        assert_eq!(o.host(), "me@h");
        let argv = o.argv(None);
        assert_eq!(
            &argv[..7],
            &["ssh", "-o", "BatchMode=yes", "-F", "/c", "-p", "2222"]
        );
        assert_eq!(argv[7], "me@h");
        let remote = &argv[8];
        assert!(
            remote.starts_with("env 'A=b c' sudo -u app python3 -u -c 'import sys,zlib;"),
            "{remote}"
        );
        // The remote shell gives the loader back as one word.
        let words = shell_words::split(remote).unwrap();
        assert_eq!(
            words.last().unwrap(),
            &WorkerSetup::default().interpreter_args(&process::source_loader())[2]
        );
    }

    #[test]
    fn reuse_options() {
        let o = opts("ssh=h//ssh_reuse");
        assert!(o.reuse);
        let argv = o.argv(Some(Path::new("/tmp/x/%C")));
        assert!(argv.contains(&"ControlMaster=auto".to_string()));
        assert!(argv.contains(&"ControlPath=/tmp/x/%C".to_string()));
    }

    #[test]
    fn classifies_stderr() {
        let f = |status, tail: &str| {
            let e = Error::BootstrapFailed {
                reason: "x".into(),
                stderr_tail: tail.into(),
            };
            classify(e, Some(ExitStatus::Code(status)), "h", "python3")
        };
        assert!(matches!(
            f(
                255,
                "ssh: Could not resolve hostname h: Name or service not known\r\n"
            ),
            Error::HostNotFound { .. }
        ));
        assert!(matches!(
            f(255, "ssh: connect to host h port 22: Connection refused"),
            Error::ConnectionRefused { .. }
        ));
        assert!(matches!(
            f(255, "ssh: connect to host h port 22: Connection timed out"),
            Error::HostUnreachable { .. }
        ));
        assert!(matches!(
            f(255, "me@h: Permission denied (publickey)."),
            Error::AuthenticationFailed { .. }
        ));
        assert!(matches!(
            f(
                255,
                "No ED25519 host key is known for h\nHost key verification failed."
            ),
            Error::HostKeyVerificationFailed { .. }
        ));
        assert!(matches!(
            f(127, "bash: line 1: python9: command not found"),
            Error::InterpreterNotFound { .. }
        ));
        assert!(matches!(f(1, "Traceback"), Error::BootstrapFailed { .. }));
    }
}
