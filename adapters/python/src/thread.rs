//! Thread gateways (spec `thread`): the worker runs in a daemon thread of
//! this interpreter (contract T, `serve_thread`), over two pipes made here;
//! the engine drives the host ends like any other transport.

use std::fs::File;
use std::os::fd::IntoRawFd;

use execnet::blocking;
use execnet::transport::Transport;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use rustix::pipe::{pipe_with, PipeFlags};

use crate::errors::{to_pyerr, Op};
use crate::registry;

/// Starts a thread gateway for `spec` (its `execmodel=`, `id=` apply;
/// process-wide options do not).
pub(crate) fn start(py: Python<'_>, spec: &str) -> PyResult<blocking::Gateway> {
    let x = execnet::XSpec::parse(spec).map_err(|e| to_pyerr(py, e, Op::Other))?;
    for key in ["python", "chdir", "nice", "via", "ssh", "socket", "popen"] {
        if x.has(key) {
            return Err(PyValueError::new_err(format!(
                "a thread gateway runs in this interpreter: {key}= does not apply"
            )));
        }
    }
    if x.env().next().is_some() {
        return Err(PyValueError::new_err(
            "a thread gateway runs in this interpreter: env: does not apply",
        ));
    }
    let err = |e: rustix::io::Errno| PyOSError::new_err(format!("pipe: {e}"));
    // Host -> worker and worker -> host; close-on-exec so that children
    // started later do not hold them open.
    let (to_worker_r, to_worker_w) = pipe_with(PipeFlags::CLOEXEC).map_err(err)?;
    let (from_worker_r, from_worker_w) = pipe_with(PipeFlags::CLOEXEC).map_err(err)?;
    let transport = Transport {
        reader: Box::new(File::from(from_worker_r)),
        writer: Box::new(File::from(to_worker_w)),
        control: None,
        description: "thread".into(),
    };
    // The worker's ends go to Python, which owns (and closes) them from
    // here on: serve_thread closes both before it returns.
    let (rfd, wfd) = (to_worker_r.into_raw_fd(), from_worker_w.into_raw_fd());
    let reg = registry(py)?;
    if let Err(e) = reg.start_thread_worker.call1(py, (rfd, wfd)) {
        // The transport's drop closes our ends; the worker's ends are
        // closed by the Python side on failure.
        drop(transport);
        return Err(e);
    }
    let builder = blocking::Gateway::builder(spec).map_err(|e| to_pyerr(py, e, Op::Other))?;
    py.detach(|| builder.start_with_transport(transport))
        .map_err(|e| to_pyerr(py, e, Op::Other))
}
