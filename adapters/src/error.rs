//! One error type for everything the crate does, split by what the user can
//! act on: a remote exception, the end of a channel, a timeout, a dead worker,
//! a bad spec, a transport that could not start.

use std::fmt;
use std::sync::Arc;

use execnet_core::{LocalError, ProtocolError, ValueError};

/// A shorthand for `Result<T, execnet::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong. `Clone` because one cause (a worker's death)
/// is reported to every channel of its gateway.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The remote code raised an exception (or closed the channel with an
    /// error). Display is the full remote traceback.
    #[error("{0}")]
    Remote(RemoteError),
    /// The channel ended: the remote closed it (or the gateway terminated)
    /// and every item has been received. Python's `EOFError`.
    #[error("end of channel")]
    EndOfChannel,
    /// A bounded wait ran out.
    #[error("timed out")]
    Timeout,
    /// `send` on a channel that is closed (by either side).
    #[error("channel is closed")]
    ChannelClosed,
    /// `receive` on a channel that has a callback.
    #[error("channel has a callback; receive is not possible")]
    CallbackSet,
    /// A wait that could never end, refused at once instead of hanging:
    /// channel callbacks and output handlers run on the thread that reads
    /// the gateway's input, so from there a wait for more input of the same
    /// gateway (`receive`, `waitclose`, a `send` out of flow-control credit,
    /// `status`) would wait for itself. Wait on another thread instead.
    #[error("would wait forever: {0}")]
    WouldDeadlock(String),
    /// The interpreter named by `python=` (or the default `python3`) could not
    /// be started.
    #[error("interpreter not found: {python}: {reason}")]
    InterpreterNotFound {
        /// The command line that was tried.
        python: String,
        /// Why it failed (the OS error; over ssh, the remote shell's
        /// stderr tail).
        reason: String,
    },
    /// The host name could not be resolved (ssh's "Could not resolve
    /// hostname", a socket's failed DNS lookup).
    #[error("host not found: {host}{}", tail_suffix(.detail))]
    HostNotFound {
        /// The host as given in the spec.
        host: String,
        /// ssh's stderr tail, or the resolver's error.
        detail: String,
    },
    /// Nothing listens at the address (TCP connection refused).
    #[error("connection refused: {host}{}", tail_suffix(.detail))]
    ConnectionRefused {
        /// The host (and port) as given in the spec.
        host: String,
        /// ssh's stderr tail, or the OS error.
        detail: String,
    },
    /// The host did not answer: the connection timed out, or there is no
    /// route to it.
    #[error("host unreachable: {host}{}", tail_suffix(.detail))]
    HostUnreachable {
        /// The host as given in the spec.
        host: String,
        /// ssh's stderr tail, or the OS error.
        detail: String,
    },
    /// The server refused our credentials: ssh's "Permission denied", or a
    /// socket server that does not accept our token (nothing was run).
    #[error("authentication failed: {host}{}", tail_suffix(.detail))]
    AuthenticationFailed {
        /// The host as given in the spec.
        host: String,
        /// ssh's stderr tail, or what the handshake saw.
        detail: String,
    },
    /// ssh does not trust the server's host key (unknown or changed).
    #[error("host key verification failed: {host}{}", tail_suffix(.detail))]
    HostKeyVerificationFailed {
        /// The host as given in the spec.
        host: String,
        /// ssh's stderr tail.
        detail: String,
    },
    /// The interpreter started but the worker did not come up (it exited, or
    /// said something else than HELLO, or took too long).
    #[error("bootstrap failed: {reason}{}", tail_suffix(.stderr_tail))]
    BootstrapFailed {
        /// What went wrong.
        reason: String,
        /// The last lines the interpreter wrote to stderr.
        stderr_tail: String,
    },
    /// The worker process ended without terminating the protocol.
    #[error("{gateway}: worker died ({status}){}", tail_suffix(.stderr_tail))]
    WorkerDied {
        /// Which gateway: `gateway ID`, with its remote address when it has
        /// one (`gateway fh3 (fh3)`, `gateway gw1 (127.0.0.1:8888)`) — on a
        /// fleet, the host whose channels ended.
        gateway: String,
        /// How it ended.
        status: ExitStatus,
        /// The last lines the worker wrote to stderr.
        stderr_tail: String,
    },
    /// The byte stream ended or failed without a process we could ask why
    /// (or before the process could be reaped).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The peer broke the protocol (sticky: the gateway is dead).
    #[error("protocol violation: {0}")]
    Protocol(ProtocolError),
    /// The gateway was terminated (by `exit`, `terminate` or the worker).
    #[error("gateway is terminated")]
    GatewayTerminated,
    /// A value could not be converted to or from `Value`, or Python cannot
    /// represent it (e.g. a list as a dict key).
    #[error("value error: {0}")]
    Value(#[from] ValueError),
    /// A local misuse reported by the protocol core (item too large, …).
    #[error("{0}")]
    Local(LocalError),
    /// A malformed or unsupported gateway spec.
    #[error("invalid spec: {0}")]
    Spec(String),
    /// An I/O error starting or talking to a transport.
    #[error("i/o error: {0}")]
    Io(Arc<std::io::Error>),
    /// `jail`: bubblewrap (`bwrap`) is not installed (or not on `PATH`).
    /// Install it: `apt-get install bubblewrap` (Debian, Ubuntu), `dnf
    /// install bubblewrap` (Fedora).
    #[error("jail: bubblewrap (bwrap) not found: {detail}; install it with `apt-get install bubblewrap`")]
    BubblewrapMissing {
        /// What was looked for, and where.
        detail: String,
    },
    /// `jail`: this kernel does not let bubblewrap create the namespaces a
    /// jail needs (user namespaces are disabled or exhausted). On Debian
    /// and Ubuntu: `sysctl kernel.unprivileged_userns_clone=1`; everywhere:
    /// `user.max_user_namespaces` must be above 0 (and AppArmor's
    /// `kernel.apparmor_restrict_unprivileged_userns` may forbid them).
    #[error("jail: user namespaces are not permitted here (check the sysctls kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0){}", tail_suffix(.detail))]
    NamespacesNotPermitted {
        /// bwrap's stderr.
        detail: String,
    },
    /// `max_memory=` / `max_procs=`: no cgroup with the needed controller
    /// could be created (cgroup v2 first, then the v1 `memory`/`pids`
    /// hierarchies). Run as root, or in a cgroup v2 subtree delegated to
    /// you (`systemd-run --user --scope -p Delegate=yes …`), or drop the
    /// limit.
    #[error("{limit} needs a writable cgroup with the {controller} controller and none was usable (tried: {tried}); run as root or inside a delegated cgroup v2 subtree (systemd-run --scope -p Delegate=yes), or drop the limit")]
    NoWritableCgroup {
        /// The spec key that asked for it (`max_memory=256M`).
        limit: String,
        /// The controller (`memory`, `pids`).
        controller: String,
        /// Each place tried and why it failed.
        tried: String,
    },
    /// The worker was killed by one of its resource limits: the memory
    /// limit (the cgroup's OOM killer) or the CPU-time limit (SIGXCPU,
    /// then SIGKILL one second later). Every channel of the gateway ends
    /// with this instead of [`Error::WorkerDied`].
    #[error("{gateway}: limit exceeded: {limit} (worker {status}){}", tail_suffix(.stderr_tail))]
    LimitExceeded {
        /// Which gateway, as in [`Error::WorkerDied`].
        gateway: String,
        /// The limit, as in the spec (`max_memory=256M`, `max_cpu=2`).
        limit: String,
        /// How the worker ended.
        status: ExitStatus,
        /// The last lines the worker wrote to stderr.
        stderr_tail: String,
    },
    /// RSync: a path of the source that cannot be synced (a FIFO, socket
    /// or device; an unreadable directory; a source that is not a
    /// directory).
    #[error("cannot sync {}: {reason}", path.display())]
    CannotSync {
        /// The local path.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// RSync: `send` without targets (each `send` uses up its targets).
    #[error("rsync: no targets (was send() called twice?)")]
    NoTargets,
    /// RSync: one target failed (the others were still synced).
    #[error("rsync to gateway {gateway}: {error}")]
    SyncTarget {
        /// The gateway id.
        gateway: String,
        /// What went wrong there (often a remote error).
        error: Box<Error>,
    },
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; stderr:\n{}", tail.trim_end())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl Error {
    /// The remote error, if this is one.
    pub fn as_remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote(r) => Some(r),
            _ => None,
        }
    }
    /// Whether this is the end of a channel.
    pub fn is_eof(&self) -> bool {
        matches!(self, Error::EndOfChannel)
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Could not be determined (not a process, or not reaped in time).
    Unknown,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}{}", signal_name(*s)),
            ExitStatus::Unknown => f.write_str("exit status unknown"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        24 => " (SIGXCPU)",
        13 => " (SIGPIPE)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            _ => ExitStatus::Unknown,
        }
    }
}

/// An exception raised by remote code, as the formatted traceback the worker
/// sent, with the exception type and message taken from its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    formatted: String,
    /// Byte range of the exception type within `formatted` (if recognised).
    exc_type: Option<(usize, usize)>,
    /// Byte range of the message within `formatted`.
    message: (usize, usize),
}

impl RemoteError {
    /// Wraps the text a remote sent with its channel close.
    pub fn new(formatted: impl Into<String>) -> RemoteError {
        let formatted = formatted.into();
        let (exc_type, message) = parse_last_line(&formatted);
        RemoteError {
            formatted,
            exc_type,
            message,
        }
    }

    /// The full text, usually a Python traceback.
    pub fn formatted(&self) -> &str {
        &self.formatted
    }

    /// The exception type of the traceback's last line (`"NameError"`,
    /// `"mypkg.MyError"`), if it looks like one.
    pub fn exception_type(&self) -> Option<&str> {
        self.exc_type.map(|(a, b)| &self.formatted[a..b])
    }

    /// The exception message (the last line after `Type: `; the whole last
    /// line when no type was recognised).
    pub fn message(&self) -> &str {
        &self.formatted[self.message.0..self.message.1]
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.formatted)
    }
}

impl std::error::Error for RemoteError {}

/// Finds `Type: message` on the last non-blank line.
fn parse_last_line(text: &str) -> (Option<(usize, usize)>, (usize, usize)) {
    let trimmed = text.trim_end();
    let start = trimmed.rfind('\n').map_or(0, |i| i + 1);
    let line = &trimmed[start..];
    let lead = line.len() - line.trim_start().len();
    let line_start = start + lead;
    let line = &trimmed[line_start..];
    let is_ident = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|p| {
                let mut cs = p.chars();
                matches!(cs.next(), Some(c) if c.is_alphabetic() || c == '_')
                    && cs.all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    match line.split_once(':') {
        Some((ty, rest)) if is_ident(ty) => {
            let msg_lead = rest.len() - rest.trim_start().len();
            let m0 = line_start + ty.len() + 1 + msg_lead;
            (
                Some((line_start, line_start + ty.len())),
                (m0, trimmed.len()),
            )
        }
        None if is_ident(line) => (
            Some((line_start, trimmed.len())),
            (trimmed.len(), trimmed.len()),
        ),
        _ => (None, (line_start, trimmed.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_traceback() {
        let tb = "Traceback (most recent call last):\n  File \"<remote exec>\", line 1, in <module>\nNameError: name 'x' is not defined\n";
        let e = RemoteError::new(tb);
        assert_eq!(e.exception_type(), Some("NameError"));
        assert_eq!(e.message(), "name 'x' is not defined");
        assert_eq!(e.formatted(), tb);
        let e = RemoteError::new("Traceback...\nKeyboardInterrupt");
        assert_eq!(e.exception_type(), Some("KeyboardInterrupt"));
        assert_eq!(e.message(), "");
        let e = RemoteError::new("x\n  mod.sub.Err: a: b  ");
        assert_eq!(e.exception_type(), Some("mod.sub.Err"));
        assert_eq!(e.message(), "a: b");
        let e = RemoteError::new("something went wrong: badly");
        assert_eq!(e.exception_type(), None);
        assert_eq!(e.message(), "something went wrong: badly");
    }
}
