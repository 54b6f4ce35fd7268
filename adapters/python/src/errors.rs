//! Engine errors as execnet's exception classes (the Python package
//! defines them and registers them here at import).

use execnet::Error;
use pyo3::exceptions::{
    PyEOFError, PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;

use crate::registry;

fn make(py: Python<'_>, class: fn(&crate::Registry) -> &Py<PyAny>, msg: String) -> PyErr {
    match registry(py) {
        Ok(reg) => match class(reg).bind(py).call1((msg,)) {
            Ok(v) => PyErr::from_value(v),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// `execnet.DumpError(msg)`.
pub(crate) fn dump_error(py: Python<'_>, msg: String) -> PyErr {
    make(py, |r| &r.dump_error, msg)
}

/// `execnet.LoadError(msg)`.
pub(crate) fn load_error(py: Python<'_>, msg: String) -> PyErr {
    make(py, |r| &r.load_error, msg)
}

/// `channel.TimeoutError(msg)`.
pub(crate) fn timeout_error(py: Python<'_>, msg: String) -> PyErr {
    make(py, |r| &r.timeout_error, msg)
}

/// A failed gateway start. execnet raises `HostNotFound` for any ssh
/// gateway whose worker never answered (ssh's own failures: a bad
/// `ssh_config`, an unknown option, a refused login); the engine's
/// classified causes keep their mapping in [`to_pyerr`].
pub(crate) fn start_error(py: Python<'_>, e: Error, ssh: bool) -> PyErr {
    match e {
        Error::BootstrapFailed { .. } if ssh => make(py, |r| &r.host_not_found, e.to_string()),
        e => to_pyerr(py, e, Op::Other),
    }
}

/// What the failing call was doing: decides between DumpError and
/// LoadError for value errors, and the text of some errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Send,
    Receive,
    Other,
}

/// Maps an engine error to the exception execnet raises in that case.
pub(crate) fn to_pyerr(py: Python<'_>, e: Error, op: Op) -> PyErr {
    match e {
        Error::Remote(r) => make(py, |r| &r.remote_error, r.formatted().to_string()),
        Error::EndOfChannel => PyEOFError::new_err(()),
        Error::Timeout => timeout_error(py, "timed out".into()),
        Error::ChannelClosed => PyOSError::new_err("cannot send to a closed channel"),
        Error::CallbackSet => PyOSError::new_err("cannot receive(), channel has receiver callback"),
        Error::WouldDeadlock(m) => PyOSError::new_err(format!("would wait forever: {m}")),
        Error::HostNotFound { .. }
        | Error::ConnectionRefused { .. }
        | Error::HostUnreachable { .. }
        | Error::AuthenticationFailed { .. }
        | Error::HostKeyVerificationFailed { .. } => make(py, |r| &r.host_not_found, e.to_string()),
        Error::InterpreterNotFound { .. } | Error::BubblewrapMissing { .. } => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        // jail: the kernel or the cgroups refuse (docs/jails.md).
        Error::NamespacesNotPermitted { .. } | Error::NoWritableCgroup { .. } => {
            PyPermissionError::new_err(e.to_string())
        }
        // execnet: a send to a dead worker is an IOError, a wait an EOFError.
        // A limit's kill reads like any dead worker, with the limit named.
        Error::WorkerDied { .. } | Error::LimitExceeded { .. } | Error::ConnectionLost(_)
            if op == Op::Send =>
        {
            PyOSError::new_err(format!("cannot send: {e}"))
        }
        Error::WorkerDied { .. } | Error::LimitExceeded { .. } | Error::ConnectionLost(_) => {
            PyEOFError::new_err(e.to_string())
        }
        Error::GatewayTerminated => {
            PyOSError::new_err(format!("cannot send (already closed?): {e}"))
        }
        Error::Value(_) | Error::Local(_) => match op {
            Op::Receive => load_error(py, e.to_string()),
            _ => dump_error(py, e.to_string()),
        },
        Error::Spec(m) => PyValueError::new_err(m),
        Error::Io(_)
        | Error::BootstrapFailed { .. }
        | Error::Protocol(_)
        | Error::CannotSync { .. }
        | Error::NoTargets
        | Error::SyncTarget { .. } => PyOSError::new_err(e.to_string()),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}
