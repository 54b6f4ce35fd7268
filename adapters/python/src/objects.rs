//! The native objects: `Gateway`, `Channel`, `ReceiveQueue`, and the
//! functions that act on several of them (group termination, send_each,
//! MultiChannel.waitclose, rsync).

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use execnet::{blocking, Value};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{item_value, recycle, to_py, to_value, Ctx};
use crate::errors::{start_error, to_pyerr, Op};
use crate::{duration, fork_gen, registry, wait};

fn forked() -> PyErr {
    PyOSError::new_err("this handle belongs to the parent process (os.fork() happened since)")
}

/// Drops an engine handle without the GIL (dropping the last handle of a
/// gateway terminates it, which may wait for a callback that needs the
/// GIL), or forgets it in a forked child.
fn release<T: Send>(handle: T, gen: u64) {
    if gen != fork_gen() {
        std::mem::forget(handle);
        return;
    }
    Python::attach(|py| py.detach(move || drop(handle)));
}

/// A gateway (engine handle). Python: `execnet_rs.Gateway._gw`.
#[pyclass(module = "execnet_rs._core", name = "Gateway", frozen)]
pub(crate) struct Gateway {
    inner: Option<blocking::Gateway>,
    gen: u64,
    /// The thread of a non-blocking `exit()`.
    exiting: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let exiting = self.exiting.get_mut().ok().and_then(Option::take);
        if let Some(g) = self.inner.take() {
            release((g, exiting), self.gen);
        }
    }
}

impl Gateway {
    pub(crate) fn new(gw: blocking::Gateway) -> Gateway {
        Gateway {
            inner: Some(gw),
            gen: fork_gen(),
            exiting: Mutex::new(None),
        }
    }

    pub(crate) fn gw(&self) -> PyResult<&blocking::Gateway> {
        match &self.inner {
            Some(g) if self.gen == fork_gen() => Ok(g),
            _ => Err(forked()),
        }
    }
}

#[pymethods]
impl Gateway {
    /// The gateway id.
    #[getter]
    fn id(&self) -> PyResult<String> {
        Ok(self.gw()?.id().to_string())
    }

    /// The spec string (with the id).
    #[getter]
    fn spec(&self) -> PyResult<String> {
        Ok(self.gw()?.spec().to_string())
    }

    /// `[user@]host` or `host:port`, None for popen.
    #[getter]
    fn remoteaddress(&self) -> PyResult<Option<String>> {
        Ok(self.gw()?.remoteaddress().map(str::to_string))
    }

    /// What the worker told in its HELLO, as a dict.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.gw()?.info();
        let d = PyDict::new(py);
        d.set_item("executable", &i.executable)?;
        let v = &i.version_info;
        d.set_item(
            "version_info",
            (v.major, v.minor, v.micro, v.releaselevel.as_str(), v.serial),
        )?;
        d.set_item("platform", &i.platform)?;
        d.set_item("cwd", &i.cwd)?;
        d.set_item("pid", i.pid)?;
        d.set_item("implementation", &i.implementation)?;
        d.set_item("execmodel", &i.execmodel)?;
        Ok(d)
    }

    /// `remote_exec(pygw, source)`: a new channel running `source`.
    fn remote_exec(&self, py: Python<'_>, pygw: Py<PyAny>, source: &str) -> PyResult<Py<PyAny>> {
        let gw = self.gw()?;
        let ch = py
            .detach(|| gw.remote_exec(source))
            .map_err(|e| to_pyerr(py, e, Op::Other))?;
        wrap_channel(py, &pygw, ch)
    }

    /// `remote_exec_call(pygw, source, name, kwargs)`: runs `source`, then
    /// `name(channel, **kwargs)`.
    fn remote_exec_call(
        &self,
        py: Python<'_>,
        pygw: Py<PyAny>,
        source: &str,
        name: &str,
        kwargs: &Bound<'_, PyDict>,
    ) -> PyResult<Py<PyAny>> {
        let gw = self.gw()?;
        let ctx = Ctx { gw, pygw: &pygw };
        let kw = to_value(kwargs.as_any(), Some(&ctx))?;
        let ch = py
            .detach(|| gw.remote_exec_call(source, name, &kw))
            .map_err(|e| to_pyerr(py, e, Op::Send))?;
        wrap_channel(py, &pygw, ch)
    }

    /// A new channel (to pass to remote code inside a value).
    fn newchannel(&self, py: Python<'_>, pygw: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let gw = self.gw()?;
        let ch = gw.newchannel().map_err(|e| to_pyerr(py, e, Op::Other))?;
        wrap_channel(py, &pygw, ch)
    }

    /// A handle on channel `id` of this gateway (execnet's
    /// `Channel(gateway, id)`), as a native channel.
    fn channel(&self, pygw: Py<PyAny>, id: u32) -> PyResult<Channel> {
        let gw = self.gw()?;
        let ch = gw.channel_from_ref(execnet::ChannelRef(execnet_core::ChannelId(id)));
        Ok(Channel {
            inner: Some(ch),
            gen: fork_gen(),
            pygw,
        })
    }

    /// `(numchannels, numexecuting, execmodel)`.
    fn remote_status(&self, py: Python<'_>) -> PyResult<(u64, u64, String)> {
        let gw = self.gw()?;
        let s = py
            .detach(|| gw.remote_status())
            .map_err(|e| to_pyerr(py, e, Op::Other))?;
        Ok((s.numchannels, s.numexecuting, s.execmodel))
    }

    /// Whether the gateway's session is over.
    fn is_terminated(&self) -> PyResult<bool> {
        Ok(self.gw()?.is_terminated())
    }

    /// The worker's pid (from its HELLO).
    #[getter]
    fn pid(&self) -> PyResult<u32> {
        Ok(self.gw()?.info().pid)
    }

    /// Starts ending the worker (TERMINATE, wait up to 5 s, kill) on a
    /// helper thread and returns at once, as execnet's `exit()` does;
    /// `join_exit`/`terminate` wait for it.
    fn begin_exit(&self) -> PyResult<()> {
        let gw = self.gw()?.clone();
        let mut slot = self.exiting.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let h = std::thread::Builder::new()
                .name("execnet-exit".into())
                .spawn(move || {
                    let _ = gw.exit();
                })
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            *slot = Some(h);
        }
        Ok(())
    }

    /// Ends the worker within about `timeout` (default 2 s) plus a second:
    /// TERMINATE, wait, kill. Always returns.
    #[pyo3(signature = (timeout=None))]
    fn terminate(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        terminate_gateways(
            py,
            vec![self.gw()?.clone()],
            self.take_exit(),
            duration(timeout)?,
        )
    }

    /// Kills the worker's process group now.
    fn kill(&self) -> PyResult<()> {
        self.gw()?.kill();
        Ok(())
    }
}

impl Gateway {
    fn take_exit(&self) -> Vec<JoinHandle<()>> {
        self.exiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .into_iter()
            .collect()
    }
}

/// Terminates gateways all at once (one thread each), then joins pending
/// `exit()` threads. Bounded: each terminate returns within its timeout
/// plus the engine's slack. The wait is a `wait` like any other: Ctrl-C
/// interrupts it on the main thread (the terminations go on in the
/// background).
fn terminate_gateways(
    py: Python<'_>,
    gws: Vec<blocking::Gateway>,
    exits: Vec<JoinHandle<()>>,
    timeout: Option<Duration>,
) -> PyResult<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut n = 0usize;
    for g in gws {
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("execnet-terminate".into())
            .spawn(move || {
                g.terminate(timeout);
                let _ = tx.send(());
            });
        if spawned.is_ok() {
            n += 1;
        }
    }
    for h in exits {
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("execnet-exit-join".into())
            .spawn(move || {
                let _ = h.join();
                let _ = tx.send(());
            });
        if spawned.is_ok() {
            n += 1;
        }
    }
    drop(tx);
    let rx = Mutex::new(rx);
    let mut left = n;
    while left > 0 {
        let r = wait(py, None, |t| {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match t {
                None => rx.recv().map_err(|_| execnet::Error::GatewayTerminated),
                Some(t) => rx.recv_timeout(t).map_err(|e| match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => execnet::Error::Timeout,
                    std::sync::mpsc::RecvTimeoutError::Disconnected => {
                        execnet::Error::GatewayTerminated
                    }
                }),
            }
        })?;
        match r {
            Ok(()) => left -= 1,
            // Every sender is gone: nothing left to wait for.
            Err(_) => break,
        }
    }
    Ok(())
}

/// `terminate_all(gateways, timeout)`: the group's termination. Gateways
/// that go `via=` another are ended first, so that their relays are still
/// there while they end.
#[pyfunction]
#[pyo3(signature = (gateways, timeout=None))]
fn terminate_all(
    py: Python<'_>,
    gateways: Vec<Bound<'_, Gateway>>,
    timeout: Option<f64>,
) -> PyResult<()> {
    let t = duration(timeout)?;
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut exits = Vec::new();
    for g in &gateways {
        let g = g.get();
        let Ok(gw) = g.gw() else { continue };
        exits.extend(g.take_exit());
        if gw.spec().via().is_some() {
            first.push(gw.clone());
        } else {
            second.push(gw.clone());
        }
    }
    terminate_gateways(py, first, Vec::new(), t)?;
    terminate_gateways(py, second, exits, t)?;
    Ok(())
}

/// `makegateway(spec, via=None)`: starts a gateway (spec "thread": a
/// thread gateway in this interpreter). Waits without the GIL.
#[pyfunction]
#[pyo3(signature = (spec, via=None))]
fn makegateway(py: Python<'_>, spec: &str, via: Option<Bound<'_, Gateway>>) -> PyResult<Gateway> {
    let x = execnet::XSpec::parse(spec).map_err(|e| to_pyerr(py, e, Op::Other))?;
    if x.has("thread") {
        return crate::thread::start(py, spec).map(Gateway::new);
    }
    let mut builder = blocking::Gateway::builder(spec).map_err(|e| to_pyerr(py, e, Op::Other))?;
    if let Some(v) = via {
        builder = builder.via_gateway(v.get().gw()?.clone());
    }
    let ssh = x.ssh().is_some();
    let gw = py
        .detach(|| builder.start())
        .map_err(|e| start_error(py, e, ssh))?;
    Ok(Gateway::new(gw))
}

/// A channel (engine handle). Python: `execnet_rs.Channel._ch`.
#[pyclass(module = "execnet_rs._core", name = "Channel", frozen)]
pub(crate) struct Channel {
    inner: Option<blocking::Channel>,
    gen: u64,
    /// The Python `Gateway` object channels received here belong to.
    pygw: Py<PyAny>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        if let Some(c) = self.inner.take() {
            release(c, self.gen);
        }
    }
}

/// Wraps an engine channel as an `execnet_rs.Channel(gateway, core)`.
pub(crate) fn wrap_channel(
    py: Python<'_>,
    pygw: &Py<PyAny>,
    ch: blocking::Channel,
) -> PyResult<Py<PyAny>> {
    let core = Py::new(
        py,
        Channel {
            inner: Some(ch),
            gen: fork_gen(),
            pygw: pygw.clone_ref(py),
        },
    )?;
    let reg = registry(py)?;
    Ok(reg
        .channel
        .bind(py)
        .call1((pygw.clone_ref(py), core))?
        .unbind())
}

/// A unique value standing for "the channel ended" in callbacks and receive
/// queues: the Python endmarker may be any object, even one that cannot be
/// converted, so the engine gets this and we map it back.
fn endmarker_value() -> Value {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tag = b"\0execnet_rs endmarker ".to_vec();
    tag.extend_from_slice(&u64::from(std::process::id()).to_be_bytes());
    tag.extend_from_slice(&n.to_be_bytes());
    Value::Tuple(vec![Value::Bytes(tag)])
}

fn is_marker(v: &Value, marker: &Value) -> bool {
    matches!(v, Value::Tuple(t) if t.len() == 1) && v == marker
}

impl Channel {
    pub(crate) fn channel(&self) -> PyResult<&blocking::Channel> {
        match &self.inner {
            Some(c) if self.gen == fork_gen() => Ok(c),
            _ => Err(forked()),
        }
    }
}

#[pymethods]
impl Channel {
    /// The channel id.
    #[getter]
    fn id(&self) -> PyResult<u32> {
        Ok(self.channel()?.id())
    }

    /// Sends one item (DumpError if it cannot be converted; nothing is sent
    /// then and the channel stays usable).
    fn send(&self, py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        let ch = self.channel()?;
        let gw = ch.gateway();
        let v = item_value(
            item,
            Some(&Ctx {
                gw: &gw,
                pygw: &self.pygw,
            }),
        )?;
        let sent = if crate::on_main_thread() {
            // A full window may hold the send for good: wait in slices so
            // that Ctrl-C raises. Nothing is sent by a slice that times
            // out; the item is encoded again only after such a slice.
            crate::wait_interruptible(py, |slice| ch.send_value_timeout(&v, slice))
        } else {
            Ok(py.detach(|| ch.send_value(&v)))
        };
        recycle(v);
        sent?.map_err(|e| to_pyerr(py, e, Op::Send))
    }

    /// Receives one item; `timeout` in seconds (None: wait for good).
    #[pyo3(signature = (timeout=None))]
    fn receive(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let ch = self.channel()?;
        // An item already queued is taken without giving up the GIL (the
        // engine's lock is never held while it waits for the GIL, so this
        // cannot deadlock); otherwise wait without the GIL.
        let v = match ch.receive_value(Some(Duration::ZERO)) {
            Err(execnet::Error::Timeout) => match duration(timeout)? {
                // Main thread, no timeout: lead like an untimed receive
                // (one thread hand-off less per item) and still see Ctrl-C.
                None if crate::on_main_thread() => {
                    crate::wait_interruptible(py, |slice| ch.receive_value_interruptible(slice))?
                }
                // Main thread with a timeout: a slice that reads the
                // transport itself bounds that read by the slice (a poll)
                // and a signal cuts it short at once, so Ctrl-C raises at
                // once instead of at the slice's end.
                Some(t) if crate::on_main_thread() => wait(py, Some(t), |slice| {
                    ch.receive_value_interruptible_timeout(slice.unwrap_or(t))
                })?,
                t => wait(py, t, |t| ch.receive_value(t))?,
            },
            other => other,
        }
        .map_err(|e| to_pyerr(py, e, Op::Receive))?;
        let gw = ch.gateway();
        to_py(
            py,
            v,
            Some(&Ctx {
                gw: &gw,
                pygw: &self.pygw,
            }),
        )
    }

    /// Waits until the channel is closed; re-raises the remote error once.
    #[pyo3(signature = (timeout=None))]
    fn waitclose(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let ch = self.channel()?;
        wait(py, duration(timeout)?, |t| ch.waitclose(t))?.map_err(|e| to_pyerr(py, e, Op::Other))
    }

    /// Closes the channel (with an error text for the remote receiver).
    #[pyo3(signature = (error=None))]
    fn close(&self, py: Python<'_>, error: Option<String>) -> PyResult<()> {
        let ch = self.channel()?;
        py.detach(|| match &error {
            None => ch.close(),
            Some(e) => ch.close_with_error(e),
        })
        .map_err(|e| to_pyerr(py, e, Op::Other))
    }

    /// Whether the channel is closed.
    fn isclosed(&self) -> PyResult<bool> {
        Ok(self.channel()?.is_closed())
    }

    /// Delivers items to `callback` (on the engine's reader thread, with the
    /// GIL). `endmarker` is called once at the end if `want_endmarker`.
    /// A callback that raises closes the channel with the traceback as
    /// error, as execnet does.
    fn setcallback(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        want_endmarker: bool,
        endmarker: Py<PyAny>,
    ) -> PyResult<()> {
        let ch = self.channel()?;
        let marker = endmarker_value();
        let m2 = marker.clone();
        let gw = ch.gateway();
        let pygw = self.pygw.clone_ref(py);
        let me = ch.clone();
        let f = move |v: Value| {
            if crate::finalizing() {
                return;
            }
            Python::try_attach(|py| {
                let r = if is_marker(&v, &m2) {
                    callback.call1(py, (endmarker.clone_ref(py),)).map(drop)
                } else {
                    to_py(
                        py,
                        v,
                        Some(&Ctx {
                            gw: &gw,
                            pygw: &pygw,
                        }),
                    )
                    .and_then(|o| callback.call1(py, (o,)).map(drop))
                };
                if let Err(e) = r {
                    if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) {
                        // Ctrl-C reached a callback run by the main thread
                        // while it led a receive: hand it back to the main
                        // thread's code instead of failing the channel.
                        let _ = py
                            .import("_thread")
                            .and_then(|m| m.call_method0("interrupt_main"));
                        return;
                    }
                    let text = registry(py)
                        .and_then(|reg| reg.format_exception.call1(py, (e.value(py),)))
                        .and_then(|t| t.extract::<String>(py))
                        .unwrap_or_else(|_| e.to_string());
                    e.print(py);
                    let _ = me.close_with_error(&text);
                }
            });
        };
        let end = want_endmarker.then_some(marker);
        py.detach(|| ch.set_callback(f, end)).map_err(|e| match e {
            execnet::Error::CallbackSet => {
                PyOSError::new_err("channel has callback already registered")
            }
            e => to_pyerr(py, e, Op::Other),
        })
    }

    /// Whether two handles name the same channel.
    fn same(&self, other: &Channel) -> PyResult<bool> {
        let (a, b) = (self.channel()?, other.channel()?);
        Ok(a.id() == b.id() && a.gateway().id() == b.gateway().id())
    }
}

/// `send_each(channels, item)`: converts once, sends to each in order.
#[pyfunction]
fn send_each(
    py: Python<'_>,
    channels: Vec<Bound<'_, Channel>>,
    item: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let mut cache: Option<(String, Value)> = None;
    for c in &channels {
        let core = c.get();
        let ch = core.channel()?;
        let gw = ch.gateway();
        let v = match &cache {
            Some((id, v)) if id == gw.id() => v.clone(),
            _ => {
                let v = to_value(
                    item,
                    Some(&Ctx {
                        gw: &gw,
                        pygw: &core.pygw,
                    }),
                )?;
                cache = Some((gw.id().to_string(), v.clone()));
                v
            }
        };
        py.detach(|| ch.send_value(&v))
            .map_err(|e| to_pyerr(py, e, Op::Send))?;
    }
    Ok(())
}

/// `multi_waitclose(channels, timeout)`: one deadline for all; the first
/// remote error after all ended.
#[pyfunction]
#[pyo3(signature = (channels, timeout=None))]
fn multi_waitclose(
    py: Python<'_>,
    channels: Vec<Bound<'_, Channel>>,
    timeout: Option<f64>,
) -> PyResult<()> {
    let chs = channels
        .iter()
        .map(|c| c.get().channel().cloned())
        .collect::<PyResult<Vec<_>>>()?;
    let mc = blocking::MultiChannel::new(chs);
    wait(py, duration(timeout)?, |t| mc.waitclose(t))?.map_err(|e| to_pyerr(py, e, Op::Other))
}

/// The engine's receive queue over several channels' callbacks.
#[pyclass(module = "execnet_rs._core", name = "ReceiveQueue", frozen)]
pub(crate) struct ReceiveQueue {
    inner: Option<blocking::ReceiveQueue>,
    gen: u64,
    marker: Value,
    want_endmarker: bool,
    endmarker: Py<PyAny>,
    /// The Python channels, to map an item's channel back to its object.
    channels: Vec<(String, u32, Py<PyAny>)>,
}

impl Drop for ReceiveQueue {
    fn drop(&mut self) {
        if let Some(q) = self.inner.take() {
            release(q, self.gen);
        }
    }
}

/// `make_receive_queue(pychannels, want_endmarker, endmarker)`.
#[pyfunction]
fn make_receive_queue(
    py: Python<'_>,
    pychannels: Vec<Bound<'_, PyAny>>,
    want_endmarker: bool,
    endmarker: Py<PyAny>,
) -> PyResult<ReceiveQueue> {
    let mut chs = Vec::new();
    let mut map = Vec::new();
    for pc in &pychannels {
        let core = pc.getattr("_ch")?;
        let core = core.cast::<Channel>()?;
        let ch = core.get().channel()?.clone();
        map.push((ch.gateway().id().to_string(), ch.id(), pc.clone().unbind()));
        chs.push(ch);
    }
    let marker = endmarker_value();
    let mc = blocking::MultiChannel::new(chs);
    let q = py
        .detach(|| mc.make_receive_queue(Some(marker.clone())))
        .map_err(|e| match e {
            execnet::Error::CallbackSet => {
                PyOSError::new_err("channel has callback already registered")
            }
            e => to_pyerr(py, e, Op::Other),
        })?;
    Ok(ReceiveQueue {
        inner: Some(q),
        gen: fork_gen(),
        marker,
        want_endmarker,
        endmarker,
        channels: map,
    })
}

#[pymethods]
impl ReceiveQueue {
    /// `(channel, item)`; `timeout` None waits for good. TimeoutError after
    /// the timeout, EOFError once every channel ended and all was taken.
    /// Endmarkers are skipped unless one was asked for.
    #[pyo3(signature = (timeout=None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let q = match &self.inner {
            Some(q) if self.gen == fork_gen() => q,
            _ => return Err(forked()),
        };
        let t = duration(timeout)?;
        let deadline = t.map(|t| std::time::Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            // A queued item is taken without giving up the GIL.
            let (ch, v) = match q.try_recv() {
                Some(item) => item,
                None => wait(py, left, |t| match t {
                    None => q.recv(),
                    Some(t) => q.recv_timeout(t),
                })?
                .map_err(|e| to_pyerr(py, e, Op::Receive))?,
            };
            let pych = self
                .channels
                .iter()
                .find(|(g, id, _)| *id == ch.id() && g == ch.gateway().id())
                .map(|(_, _, o)| o.clone_ref(py))
                .unwrap_or_else(|| py.None());
            if is_marker(&v, &self.marker) {
                if self.want_endmarker {
                    return Ok((pych, self.endmarker.clone_ref(py)));
                }
                continue;
            }
            let gw = ch.gateway();
            let pygw = pych.bind(py).getattr("gateway")?.unbind();
            let item = to_py(
                py,
                v,
                Some(&Ctx {
                    gw: &gw,
                    pygw: &pygw,
                }),
            )?;
            return Ok((pych, item));
        }
    }

    /// Items waiting.
    fn qsize(&self) -> usize {
        self.inner.as_ref().map_or(0, |q| q.len())
    }
}

/// `rsync_send(source, targets, filter, report)`: syncs `source` to each
/// `(gateway, dest, delete)`; `filter(path) -> bool` (or None) gets full
/// local paths, `report(kind, relpath, bytes_to_send)` the progress:
/// `("list", None, n)` once the targets answered, `("send", path, n)`
/// for each chunk or file sent. Returns a stats dict.
#[pyfunction]
fn rsync_send<'py>(
    py: Python<'py>,
    source: &str,
    targets: Vec<(Bound<'py, Gateway>, String, bool)>,
    filter: Option<Py<PyAny>>,
    report: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut rs = blocking::RSync::new(source);
    for (g, dest, delete) in &targets {
        rs.add_target(g.get().gw()?, dest, *delete);
    }
    if let Some(f) = filter {
        rs.filter(move |p: &std::path::Path| {
            Python::try_attach(|py| {
                f.call1(py, (p.to_string_lossy().into_owned(),))
                    .and_then(|r| r.bind(py).is_truthy())
                    .unwrap_or_else(|e| {
                        e.print(py);
                        true
                    })
            })
            .unwrap_or(true)
        });
    }
    if let Some(r) = report {
        rs.progress(move |p: &execnet::Progress<'_>| {
            let event = match (p.phase, p.path) {
                (execnet::Phase::Compared, _) => Some(("list", None)),
                (execnet::Phase::Sending, Some(path)) => {
                    Some(("send", Some(path.to_string_lossy().into_owned())))
                }
                _ => None,
            };
            if let Some((kind, path)) = event {
                let to_send = p.stats.bytes_to_send;
                Python::try_attach(|py| {
                    if let Err(e) = r.call1(py, (kind, path, to_send)) {
                        e.print(py);
                    }
                });
            }
        });
    }
    let stats = py
        .detach(|| rs.send())
        .map_err(|e| to_pyerr(py, e, Op::Other))?;
    let d = PyDict::new(py);
    d.set_item("files_sent", stats.files_sent)?;
    d.set_item("bytes_sent", stats.bytes_sent)?;
    d.set_item("deleted", stats.deleted)?;
    Ok(d)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Gateway>()?;
    m.add_class::<Channel>()?;
    m.add_class::<ReceiveQueue>()?;
    m.add_function(wrap_pyfunction!(makegateway, m)?)?;
    m.add_function(wrap_pyfunction!(terminate_all, m)?)?;
    m.add_function(wrap_pyfunction!(send_each, m)?)?;
    m.add_function(wrap_pyfunction!(multi_waitclose, m)?)?;
    m.add_function(wrap_pyfunction!(make_receive_queue, m)?)?;
    m.add_function(wrap_pyfunction!(rsync_send, m)?)?;
    Ok(())
}
