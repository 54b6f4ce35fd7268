//! `XSpec`: execnet's gateway specification strings.
//!
//! A spec is a list of `key=value` or bare `flag` parts joined by `//`, for
//! example `popen//python=python3.12//chdir=/tmp/w//env:LANG=C//id=w1`.
//! The first part that names a gateway type (`popen`, `ssh=…`, `socket=…`,
//! `vagrant_ssh=…`) says how to reach the interpreter; the other parts
//! configure it. Parsing keeps every part in order (unknown keys included,
//! so specs meant for newer versions survive a round trip through
//! `XSpec::to_string`) and rejects duplicate keys.
//!
//! Typed accessors parse their values once, at [`XSpec::parse`]: a `nice=`
//! that is not an integer or an unknown `execmodel=` is an error there, not a
//! surprise at connection time.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The gateway types a spec can name.
pub const GATEWAY_TYPES: &[&str] = &["popen", "ssh", "socket", "vagrant_ssh"];

/// How the worker's stdout/stderr (user `print()`s) reach the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// Sent over the protocol as OUTPUT frames, then to the host's stderr or
    /// the gateway's output callback (the default).
    #[default]
    Forward,
    /// The worker keeps the process's stderr (which the host passes through
    /// to its own stderr); fd 1 goes to fd 2.
    Inherit,
    /// Both go to `/dev/null`.
    Discard,
}

impl OutputMode {
    /// The spelling used in specs and in the host HELLO options.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputMode::Forward => "forward",
            OutputMode::Inherit => "inherit",
            OutputMode::Discard => "discard",
        }
    }
}

impl FromStr for OutputMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "forward" => Ok(OutputMode::Forward),
            "inherit" => Ok(OutputMode::Inherit),
            "discard" => Ok(OutputMode::Discard),
            other => Err(Error::Spec(format!(
                "stdout={other}: expected forward, inherit or discard"
            ))),
        }
    }
}

/// Where the worker runs remote code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecModel {
    /// Each `remote_exec` in its own thread; the main thread is the primary
    /// executor (execnet's default).
    #[default]
    Thread,
    /// Every `remote_exec` in the main thread, one after the other.
    MainThreadOnly,
}

impl ExecModel {
    /// The spelling used in specs and in the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecModel::Thread => "thread",
            ExecModel::MainThreadOnly => "main_thread_only",
        }
    }
}

impl FromStr for ExecModel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "thread" => Ok(ExecModel::Thread),
            "main_thread_only" => Ok(ExecModel::MainThreadOnly),
            other => Err(Error::Spec(format!(
                "execmodel={other}: supported are thread and main_thread_only"
            ))),
        }
    }
}

/// A parsed gateway specification. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XSpec {
    /// Every part in spec order: key and value (`None` for a bare flag).
    parts: Vec<(String, Option<String>)>,
    nice: Option<i32>,
    execmodel: ExecModel,
    stdout: OutputMode,
    limits: Limits,
}

/// Resource limits of a worker (`max_memory=`, `max_cpu=`, `max_procs=`),
/// with or without `jail`. See docs/jails.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// `max_memory=SIZE`: bytes of memory for the worker and everything it
    /// starts (a cgroup's memory limit; its OOM killer ends the worker).
    pub memory: Option<u64>,
    /// `max_cpu=SECONDS`: CPU time of the worker process (`RLIMIT_CPU`:
    /// SIGXCPU at the limit, SIGKILL one second later). Each process the
    /// worker starts has its own budget of the same size.
    pub cpu: Option<u64>,
    /// `max_procs=N`: processes and threads the worker's code may start
    /// (a cgroup's pids limit, above the worker's own threads).
    pub procs: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.cpu.is_some() || self.procs.is_some()
    }
}

/// Parses a size: a number of bytes, optionally followed by `K`, `M`, `G`
/// or `T` (powers of 1024; a trailing `B` or `iB` is accepted too).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&v| v > 0)
}

impl XSpec {
    /// Parses a spec string. Errors: an empty spec or part, a duplicate key,
    /// or a malformed value of a typed key (`nice`, `execmodel`, `stdout`).
    pub fn parse(spec: &str) -> Result<XSpec, Error> {
        if spec.trim().is_empty() {
            return Err(Error::Spec("empty gateway spec".into()));
        }
        let mut parts: Vec<(String, Option<String>)> = Vec::new();
        for part in spec.split("//") {
            if part.is_empty() {
                return Err(Error::Spec(format!("empty part in spec {spec:?}")));
            }
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (part.to_string(), None),
            };
            if key.is_empty() {
                return Err(Error::Spec(format!("part {part:?} has no key")));
            }
            if parts.iter().any(|(k, _)| *k == key) {
                return Err(Error::Spec(format!(
                    "duplicate key {key:?} in spec {spec:?}"
                )));
            }
            parts.push((key, value));
        }
        let mut x = XSpec {
            parts,
            nice: None,
            execmodel: ExecModel::Thread,
            stdout: OutputMode::Forward,
            limits: Limits::default(),
        };
        if let Some(n) = x.value("nice") {
            x.nice = Some(
                n.trim()
                    .parse()
                    .map_err(|_| Error::Spec(format!("nice={n}: expected an integer")))?,
            );
        }
        if let Some(m) = x.value("execmodel") {
            x.execmodel = m.parse()?;
        }
        if let Some(m) = x.value("stdout") {
            x.stdout = m.parse()?;
        }
        x.parse_jail_keys()?;
        Ok(x)
    }

    /// The `jail`, `jail_rw=`, `jail_net` and limit keys: typed values,
    /// and jail options only with `jail`.
    fn parse_jail_keys(&mut self) -> Result<(), Error> {
        let positive = |key: &str| -> Result<Option<u64>, Error> {
            match self.get(key) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(Error::Spec(format!(
                        "{key}={v}: expected a positive integer"
                    ))),
                },
            }
        };
        let (cpu, procs) = (positive("max_cpu")?, positive("max_procs")?);
        self.limits.cpu = cpu;
        self.limits.procs = procs;
        if let Some(v) = self.get("max_memory") {
            self.limits.memory = Some(parse_size(v).ok_or_else(|| {
                Error::Spec(format!(
                    "max_memory={v}: expected a size such as 256M or 1G"
                ))
            })?);
        }
        if self.value("jail").is_some() {
            return Err(Error::Spec(
                "jail is a flag: write `jail`, not `jail=…`".into(),
            ));
        }
        if !self.has("jail") {
            for key in ["jail_rw", "jail_net"] {
                if self.has(key) {
                    return Err(Error::Spec(format!("{key} needs `jail` in the spec")));
                }
            }
        }
        if self.has("jail_rw") && self.jail_rw().next().is_none() {
            return Err(Error::Spec("jail_rw= needs PATH[,PATH…]".into()));
        }
        if self.value("jail_net").is_some() {
            return Err(Error::Spec("jail_net is a flag: write `jail_net`".into()));
        }
        Ok(())
    }

    /// The raw value of `key`: `None` when absent, `Some("")` for a bare flag.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// Whether `key` is present (as a flag or with a value).
    pub fn has(&self, key: &str) -> bool {
        self.parts.iter().any(|(k, _)| k == key)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Every part in order, `(key, value)`; flags have no value.
    pub fn parts(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.parts.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Parts whose key this crate does not interpret (kept for round trips
    /// and for transports added later).
    pub fn unknown(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        const KNOWN: &[&str] = &[
            "popen",
            "ssh",
            "socket",
            "vagrant_ssh",
            "via",
            "installvia",
            "python",
            "chdir",
            "nice",
            "id",
            "execmodel",
            "dont_write_bytecode",
            "fork",
            "ssh_config",
            "ssh_reuse",
            "token",
            "token_file",
            "stdout",
            "jail",
            "jail_rw",
            "jail_net",
            "max_memory",
            "max_cpu",
            "max_procs",
        ];
        self.parts()
            .filter(|(k, _)| !KNOWN.contains(k) && !k.starts_with("env:"))
    }

    /// The gateway type: the first part naming one of [`GATEWAY_TYPES`].
    pub fn gateway_type(&self) -> Option<&str> {
        self.parts
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| GATEWAY_TYPES.contains(k))
    }

    /// `popen` flag present.
    pub fn popen(&self) -> bool {
        self.has("popen")
    }
    /// `ssh=[options] [user@]host`.
    pub fn ssh(&self) -> Option<&str> {
        self.value("ssh")
    }
    /// `socket=host:port`.
    pub fn socket(&self) -> Option<&str> {
        self.value("socket")
    }
    /// `vagrant_ssh=name`.
    pub fn vagrant_ssh(&self) -> Option<&str> {
        self.value("vagrant_ssh")
    }
    /// `via=GWID`: start this gateway from another one.
    pub fn via(&self) -> Option<&str> {
        self.value("via")
    }
    /// `installvia=GWID`: install the socket server through another gateway.
    pub fn installvia(&self) -> Option<&str> {
        self.value("installvia")
    }
    /// `python=`: the interpreter command line (shell syntax).
    pub fn python(&self) -> Option<&str> {
        self.value("python")
    }
    /// `chdir=`: the worker's working directory (created if missing).
    pub fn chdir(&self) -> Option<&str> {
        self.value("chdir")
    }
    /// `nice=`: niceness increment for the worker.
    pub fn nice(&self) -> Option<i32> {
        self.nice
    }
    /// `id=`: the gateway id.
    pub fn id(&self) -> Option<&str> {
        self.value("id")
    }
    /// `execmodel=` (default `thread`).
    pub fn execmodel(&self) -> ExecModel {
        self.execmodel
    }
    /// `stdout=forward|inherit|discard` (default `forward`).
    pub fn stdout(&self) -> OutputMode {
        self.stdout
    }
    /// `dont_write_bytecode` flag: run the interpreter with `-B`.
    pub fn dont_write_bytecode(&self) -> bool {
        self.has("dont_write_bytecode")
    }
    /// `fork` flag (with `popen`): the worker is forked from a fork server
    /// of its interpreter instead of started afresh (docs/architecture.md,
    /// "Fork workers").
    pub fn fork(&self) -> bool {
        self.has("fork")
    }
    /// `ssh_config=`: an ssh config file.
    pub fn ssh_config(&self) -> Option<&str> {
        self.value("ssh_config")
    }
    /// `ssh_reuse` flag: share one ssh connection per host (ControlMaster).
    pub fn ssh_reuse(&self) -> bool {
        self.has("ssh_reuse")
    }
    /// `token=`: the socket server's token.
    pub fn token(&self) -> Option<&str> {
        self.value("token")
    }
    /// `token_file=`: a file holding the socket server's token.
    pub fn token_file(&self) -> Option<&str> {
        self.value("token_file")
    }
    /// `jail` flag: run the worker under bubblewrap (docs/jails.md).
    pub fn jail(&self) -> bool {
        self.has("jail")
    }
    /// `jail_rw=PATH[,PATH…]`: paths bound writable into the jail.
    pub fn jail_rw(&self) -> impl Iterator<Item = &str> {
        self.value("jail_rw")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }
    /// `jail_net` flag: the jail keeps the host's network.
    pub fn jail_net(&self) -> bool {
        self.has("jail_net")
    }
    /// `max_memory=`, `max_cpu=`, `max_procs=`, parsed.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// `env:NAME=value` parts, in spec order.
    pub fn env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parts.iter().filter_map(|(k, v)| {
            k.strip_prefix("env:")
                .map(|name| (name, v.as_deref().unwrap_or("")))
        })
    }

    /// Sets (or replaces) `id=`.
    pub fn set_id(&mut self, id: &str) {
        if let Some(p) = self.parts.iter_mut().find(|(k, _)| k == "id") {
            p.1 = Some(id.to_string());
        } else {
            self.parts.push(("id".into(), Some(id.to_string())));
        }
    }
}

impl FromStr for XSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<XSpec, Error> {
        XSpec::parse(s)
    }
}

impl fmt::Display for XSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str("//")?;
            }
            f.write_str(k)?;
            if let Some(v) = v {
                write!(f, "={v}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_popen_keys() {
        let s = "popen//python=sudo -u x python3//chdir=/tmp/a//nice=5//env:A=b=c//id=w//execmodel=main_thread_only//dont_write_bytecode//stdout=discard";
        let x = XSpec::parse(s).unwrap();
        assert_eq!(x.gateway_type(), Some("popen"));
        assert!(x.popen());
        assert_eq!(x.python(), Some("sudo -u x python3"));
        assert_eq!(x.chdir(), Some("/tmp/a"));
        assert_eq!(x.nice(), Some(5));
        assert_eq!(x.env().collect::<Vec<_>>(), vec![("A", "b=c")]);
        assert_eq!(x.id(), Some("w"));
        assert_eq!(x.execmodel(), ExecModel::MainThreadOnly);
        assert!(x.dont_write_bytecode());
        assert_eq!(x.stdout(), OutputMode::Discard);
        assert_eq!(x.to_string(), s);
        assert_eq!(x.unknown().count(), 0);
    }

    #[test]
    fn keeps_unknown_and_rejects_duplicates() {
        let x = XSpec::parse("ssh=-p 22 me@host//future_key=1//flag").unwrap();
        assert_eq!(x.ssh(), Some("-p 22 me@host"));
        assert_eq!(
            x.unknown().collect::<Vec<_>>(),
            vec![("future_key", Some("1")), ("flag", None)]
        );
        assert_eq!(x.to_string(), "ssh=-p 22 me@host//future_key=1//flag");
        assert!(XSpec::parse("popen//id=a//id=b").is_err());
        assert!(XSpec::parse("").is_err());
        assert!(XSpec::parse("popen//").is_err());
        assert!(XSpec::parse("popen//nice=x").is_err());
        assert!(XSpec::parse("popen//execmodel=eventlet").is_err());
    }

    #[test]
    fn every_key_parses_and_round_trips() {
        let specs = [
            "ssh=-p 2222 -i /k me@host//python=sudo -u app python3//chdir=/w//nice=3//env:A=1//ssh_config=/c//ssh_reuse//id=s1//dont_write_bytecode//execmodel=main_thread_only//stdout=inherit",
            "popen//via=gw0//python=python3.12//id=v",
            "ssh=h//via=gw1",
            "socket=127.0.0.1:8888//token=t0k//id=sock",
            "socket=[::1]:8888//token_file=/etc/tok",
            "socket//installvia=gw0",
            "socket=0.0.0.0:0//installvia=gw0",
            "vagrant_ssh=box//python=python3",
            "popen//fork//python=python3//env:X=1//chdir=/w",
        ];
        for text in specs {
            let x = XSpec::parse(text).unwrap();
            assert_eq!(x.to_string(), text);
            assert_eq!(XSpec::parse(&x.to_string()).unwrap(), x);
            assert_eq!(x.unknown().count(), 0, "{text}");
        }
        let x = XSpec::parse(specs[0]).unwrap();
        assert_eq!(x.gateway_type(), Some("ssh"));
        assert_eq!(x.ssh(), Some("-p 2222 -i /k me@host"));
        assert_eq!(x.ssh_config(), Some("/c"));
        assert!(x.ssh_reuse());
        assert_eq!(x.stdout(), OutputMode::Inherit);
        let x = XSpec::parse(specs[1]).unwrap();
        assert_eq!((x.gateway_type(), x.via()), (Some("popen"), Some("gw0")));
        let x = XSpec::parse(specs[3]).unwrap();
        assert_eq!(
            (x.socket(), x.token()),
            (Some("127.0.0.1:8888"), Some("t0k"))
        );
        assert_eq!(
            XSpec::parse(specs[4]).unwrap().token_file(),
            Some("/etc/tok")
        );
        let x = XSpec::parse(specs[5]).unwrap();
        assert_eq!(
            (x.gateway_type(), x.socket(), x.installvia()),
            (Some("socket"), None, Some("gw0"))
        );
        assert_eq!(XSpec::parse(specs[7]).unwrap().vagrant_ssh(), Some("box"));
        let x = XSpec::parse(specs[8]).unwrap();
        assert_eq!((x.gateway_type(), x.fork()), (Some("popen"), true));
        assert!(!XSpec::parse(specs[1]).unwrap().fork());
    }

    #[test]
    fn jail_and_limit_keys() {
        let text = "popen//jail//jail_rw=/a, /b//jail_net//max_memory=256M//max_cpu=2//max_procs=8";
        let x = XSpec::parse(text).unwrap();
        assert!(x.jail() && x.jail_net());
        assert_eq!(x.jail_rw().collect::<Vec<_>>(), ["/a", "/b"]);
        assert_eq!(
            x.limits(),
            Limits {
                memory: Some(256 << 20),
                cpu: Some(2),
                procs: Some(8)
            }
        );
        assert_eq!(x.to_string(), text);
        assert_eq!(x.unknown().count(), 0);
        // Limits alone, without a jail.
        let x = XSpec::parse("popen//max_memory=1G").unwrap();
        assert!(!x.jail() && x.limits().any());
        assert_eq!(x.limits().memory, Some(1 << 30));
        for bad in [
            "popen//jail_rw=/a",
            "popen//jail_net",
            "popen//jail=1",
            "popen//jail//jail_rw=,",
            "popen//max_memory=lots",
            "popen//max_memory=0",
            "popen//max_cpu=-1",
            "popen//max_procs=0",
        ] {
            assert!(XSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("3MiB"), Some(3 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn set_id_replaces() {
        let mut x = XSpec::parse("popen").unwrap();
        x.set_id("gw3");
        assert_eq!(x.to_string(), "popen//id=gw3");
        x.set_id("gw4");
        assert_eq!(x.id(), Some("gw4"));
    }
}
