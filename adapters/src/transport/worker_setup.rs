//! [`WorkerSetup`]: how the worker process is set up, whichever transport
//! starts it.
//!
//! popen runs `PYTHON ARGS…` locally, ssh runs `ssh … 'env … PYTHON ARGS…'`,
//! and via asks a relay on another gateway to run the same argv: the
//! arguments come from [`WorkerSetup::interpreter_args`] in every case, so
//! `chdir=`, `nice=` and `dont_write_bytecode` behave the same over all of
//! them, and `env:` is set by each launcher in the interpreter's
//! environment, before it starts. A new option that shapes the worker's
//! process (a limit, a sandbox) belongs here, once, not in each transport's
//! options.

use std::path::PathBuf;

use super::jail::JailOptions;
use crate::xspec::{Limits, OutputMode, XSpec};

/// The spec keys that shape the worker's process, shared by every
/// transport that starts one (popen, ssh, and both through `via=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSetup {
    /// `chdir=`: working directory, created if missing.
    pub chdir: Option<PathBuf>,
    /// `nice=`: niceness increment.
    pub nice: Option<i32>,
    /// `env:NAME=value`: extra environment of the interpreter.
    pub env: Vec<(String, String)>,
    /// `dont_write_bytecode`: run the interpreter with `-B`.
    pub dont_write_bytecode: bool,
    /// `stdout=`: whether the process's stderr is passed through to ours
    /// (a transport may override it with the start request's mode).
    pub output: OutputMode,
    /// `jail`, `jail_rw=`, `jail_net`: run under bubblewrap
    /// (`transport/jail.rs`, docs/jails.md).
    pub jail: Option<JailOptions>,
    /// `max_memory=`, `max_cpu=`, `max_procs=` (`transport/limits.rs`).
    pub limits: Limits,
}

impl WorkerSetup {
    /// Takes the worker-process keys of a spec. Never fails: the keys were
    /// checked when the spec was parsed.
    pub fn from_spec(spec: &XSpec) -> WorkerSetup {
        WorkerSetup {
            chdir: spec.chdir().map(PathBuf::from),
            nice: spec.nice(),
            env: spec
                .env()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dont_write_bytecode: spec.dont_write_bytecode(),
            output: spec.stdout(),
            jail: JailOptions::from_spec(spec),
            limits: spec.limits(),
        }
    }

    /// The interpreter arguments that start the worker: `[-B] -u -c LOADER`,
    /// where LOADER is docs/protocol.md §1's loader preceded by
    /// [`prelude`](Self::prelude). `env:` is not in them: a launcher sets it
    /// in the interpreter's environment, before it starts.
    pub(crate) fn interpreter_args(&self, loader: &str) -> Vec<String> {
        let mut args = Vec::with_capacity(4);
        if self.dont_write_bytecode {
            args.push("-B".to_string());
        }
        args.extend(["-u".to_string(), "-c".to_string(), self.prelude() + loader]);
        args
    }

    /// Python statements that create and enter `chdir` and apply `nice`,
    /// run in the worker's main thread before it starts any thread (so
    /// every thread inherits them; the HELLO already reports the new
    /// directory). Values are embedded as JSON strings, which are valid
    /// Python string literals. Empty when neither is set.
    fn prelude(&self) -> String {
        let mut prelude = String::new();
        if self.chdir.is_some() || self.nice.is_some() {
            prelude.push_str("import os;");
        }
        if let Some(dir) = &self.chdir {
            let d = py_str(&dir.to_string_lossy());
            prelude.push_str(&format!("os.makedirs({d},exist_ok=True);os.chdir({d});"));
        }
        if let Some(n) = self.nice {
            prelude.push_str(&format!("os.nice({n});"));
        }
        prelude
    }

    /// The worker source with the whole setup as Python statements in
    /// front, for transports that cannot shape the interpreter's start (a
    /// socket server starts it): the prelude, then `env:` into
    /// `os.environ` and `-B` as `sys.dont_write_bytecode`, before any code
    /// of the worker or the user runs (processes the user's code starts
    /// inherit that environment). `None`: nothing to add, send the worker
    /// as it is.
    pub(crate) fn worker_source(&self, source: &str) -> Option<String> {
        let mut head = self.prelude();
        if !self.env.is_empty() {
            head.push_str("import os;");
            for (k, v) in &self.env {
                head.push_str(&format!("os.environ[{}]={};", py_str(k), py_str(v)));
            }
        }
        if self.dont_write_bytecode {
            head.push_str("import sys;sys.dont_write_bytecode=True;");
        }
        if head.is_empty() {
            return None;
        }
        Some(format!("{head}\n{source}"))
    }
}

/// `s` as a Python string literal (a JSON string is one).
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_every_worker_key_of_a_spec() {
        let spec =
            XSpec::parse("popen//chdir=/tmp/w//nice=3//env:A=1//dont_write_bytecode").unwrap();
        let setup = WorkerSetup::from_spec(&spec);
        assert_eq!(setup.chdir, Some(PathBuf::from("/tmp/w")));
        assert_eq!(setup.nice, Some(3));
        assert_eq!(setup.env, vec![("A".to_string(), "1".to_string())]);
        assert!(setup.dont_write_bytecode);
    }

    #[test]
    fn arguments_carry_the_prelude_before_the_loader() {
        let setup = WorkerSetup {
            chdir: Some(PathBuf::from("/tmp/a'b")),
            nice: Some(2),
            dont_write_bytecode: true,
            ..WorkerSetup::default()
        };
        let args = setup.interpreter_args("LOADER");
        assert_eq!(&args[..3], ["-B", "-u", "-c"]);
        assert_eq!(
            args[3],
            "import os;os.makedirs(\"/tmp/a'b\",exist_ok=True);os.chdir(\"/tmp/a'b\");os.nice(2);LOADER"
        );
        assert_eq!(
            WorkerSetup::default().interpreter_args("L"),
            ["-u", "-c", "L"]
        );
    }

    #[test]
    fn a_started_interpreter_gets_the_setup_as_statements() {
        assert_eq!(WorkerSetup::default().worker_source("W"), None);
        let setup = WorkerSetup {
            chdir: Some(PathBuf::from("/d")),
            env: vec![("A".into(), "x\"y".into())],
            dont_write_bytecode: true,
            ..WorkerSetup::default()
        };
        assert_eq!(
            setup.worker_source("W").unwrap(),
            "import os;os.makedirs(\"/d\",exist_ok=True);os.chdir(\"/d\");\
             import os;os.environ[\"A\"]=\"x\\\"y\";\
             import sys;sys.dont_write_bytecode=True;\nW"
        );
    }
}
