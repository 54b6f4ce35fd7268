//! `execnet_rs._core`: the native part of the Python package `execnet_rs`.
//!
//! A small face over the `execnet` crate's blocking API: gateways,
//! channels, receive queues, rsync, `dumps`/`loads`. The Python classes in
//! `execnet_rs` (python/execnet_rs/) are thin wrappers over these, so that
//! subclassing and attribute setting stay natural.
//!
//! Rules every function here keeps:
//! - every call that can wait releases the GIL (`Python::detach`), so
//!   callbacks, which take the GIL on the engine's reader thread, never
//!   deadlock against a waiting caller;
//! - on the main thread, waits run in slices with `check_signals` between
//!   them, so Ctrl-C raises KeyboardInterrupt and the gateway stays usable;
//! - after `os.fork()` the child forgets every inherited handle (drop would
//!   write TERMINATE into the parent's pipes or wait for threads the child
//!   does not have): `FORK_GEN` counts forks, each handle remembers the
//!   generation it was made in;
//! - errors become execnet's exception classes (`errors`); no panic crosses
//!   into Python (pyo3 turns a panic into `PanicException`, and none is
//!   expected: no `unwrap` on fallible paths).

mod convert;
mod errors;
mod objects;
mod thread;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

/// Incremented in a forked child (`os.register_at_fork`).
static FORK_GEN: AtomicU64 = AtomicU64::new(0);
/// Set at interpreter exit: callbacks stop taking the GIL.
static FINALIZING: AtomicBool = AtomicBool::new(false);

/// The current fork generation.
pub(crate) fn fork_gen() -> u64 {
    FORK_GEN.load(Ordering::Relaxed)
}

/// Whether callbacks may still run Python code.
pub(crate) fn finalizing() -> bool {
    FINALIZING.load(Ordering::Relaxed)
}

/// Python objects the package registers at import.
pub(crate) struct Registry {
    /// `execnet_rs.Channel` (called as `Channel(gateway, core)`).
    pub channel: Py<PyAny>,
    pub remote_error: Py<PyAny>,
    pub timeout_error: Py<PyAny>,
    pub dump_error: Py<PyAny>,
    pub load_error: Py<PyAny>,
    pub host_not_found: Py<PyAny>,
    /// `start_thread_worker(read_fd, write_fd)`: serves a thread gateway
    /// in a daemon thread (contract T).
    pub start_thread_worker: Py<PyAny>,
    /// `format_exception(exc) -> str` for callback errors.
    pub format_exception: Py<PyAny>,
}

static REGISTRY: PyOnceLock<Registry> = PyOnceLock::new();

pub(crate) fn registry(py: Python<'_>) -> PyResult<&'static Registry> {
    REGISTRY.get(py).ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err("execnet_rs._core used before _register()")
    })
}

/// How long one slice of a main-thread wait lasts (the Ctrl-C latency).
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

/// Whether this is the process's main thread (the one Python runs signal
/// handlers in): on Linux its thread id is the process id.
pub(crate) fn on_main_thread() -> bool {
    thread_local! {
        /// (fork generation, answer): a fork makes the forking thread the
        /// child's main thread.
        static MAIN: std::cell::Cell<Option<(u64, bool)>> = const { std::cell::Cell::new(None) };
    }
    let gen = fork_gen();
    MAIN.with(|m| match m.get() {
        Some((g, answer)) if g == gen => answer,
        _ => {
            let answer = rustix::thread::gettid().as_raw_nonzero().get()
                == rustix::process::getpid().as_raw_nonzero().get();
            m.set(Some((gen, answer)));
            answer
        }
    })
}

/// Runs a wait without the GIL. `f(t)` waits at most `t` (`None`: for
/// good). On the main thread the wait is cut in slices so that a pending
/// signal (Ctrl-C) raises between them; elsewhere it is one call.
pub(crate) fn wait<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    f: impl Fn(Option<Duration>) -> execnet::Result<T> + Sync,
) -> PyResult<execnet::Result<T>> {
    if !on_main_thread() {
        return Ok(py.detach(|| f(timeout)));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            None => SIGNAL_SLICE,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(SIGNAL_SLICE),
        };
        match py.detach(|| f(Some(slice))) {
            Err(execnet::Error::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Err(execnet::Error::Timeout));
                }
                py.check_signals()?;
            }
            other => return Ok(other),
        }
    }
}

/// Waits on the main thread without a timeout with `f(slice)`, an
/// interruptible wait that returns `Err(Timeout)` when a signal interrupted
/// it or a slice passed: pending signals raise between calls.
pub(crate) fn wait_interruptible<T: Send>(
    py: Python<'_>,
    f: impl Fn(Duration) -> execnet::Result<T> + Sync,
) -> PyResult<execnet::Result<T>> {
    loop {
        match py.detach(|| f(SIGNAL_SLICE)) {
            Err(execnet::Error::Timeout) => py.check_signals()?,
            other => return Ok(other),
        }
    }
}

/// A Python timeout (seconds, float or None) as a Duration.
pub(crate) fn duration(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() => Err(pyo3::exceptions::PyValueError::new_err(
            "timeout must be a number",
        )),
        Some(t) => Ok(Some(Duration::from_secs_f64(t.clamp(0.0, 1e9)))),
    }
}

#[allow(clippy::too_many_arguments)]
#[pyfunction]
fn _register(
    py: Python<'_>,
    channel: Py<PyAny>,
    remote_error: Py<PyAny>,
    timeout_error: Py<PyAny>,
    dump_error: Py<PyAny>,
    load_error: Py<PyAny>,
    host_not_found: Py<PyAny>,
    start_thread_worker: Py<PyAny>,
    format_exception: Py<PyAny>,
) {
    let _ = REGISTRY.set(
        py,
        Registry {
            channel,
            remote_error,
            timeout_error,
            dump_error,
            load_error,
            host_not_found,
            start_thread_worker,
            format_exception,
        },
    );
}

/// Called in the child after `os.fork()`: every handle made before is
/// forgotten, never used or terminated.
#[pyfunction]
fn _after_fork_in_child() {
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
}

/// Called at interpreter exit (after the groups' cleanup): callbacks no
/// longer run Python code.
#[pyfunction]
fn _set_finalizing() {
    FINALIZING.store(true, Ordering::Relaxed);
}

/// `execnet.dumps`: the engine's value encoding of `obj`.
#[pyfunction]
fn dumps<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let v = convert::to_value(obj, None)?;
    let mut out = Vec::new();
    execnet_core::encode(&v, &mut out).map_err(|e| errors::dump_error(py, e.to_string()))?;
    Ok(PyBytes::new(py, &out))
}

/// `execnet.loads`: the inverse of `dumps`.
#[pyfunction]
fn loads(py: Python<'_>, data: &[u8]) -> PyResult<Py<PyAny>> {
    let v = execnet_core::decode(data, convert::MAX_DEPTH)
        .map_err(|e| errors::load_error(py, e.to_string()))?;
    convert::to_py(py, v, None)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_register, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(_set_finalizing, m)?)?;
    m.add_function(wrap_pyfunction!(dumps, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    objects::register(m)?;
    m.add("WORKER_SOURCE", execnet_bootstrap::WORKER_SOURCE)?;
    Ok(())
}
