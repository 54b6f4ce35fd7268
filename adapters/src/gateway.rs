//! `Gateway`: one worker interpreter, reached over one transport.
//!
//! A `Gateway` is a cheap, cloneable handle; the worker lives until
//! [`Gateway::exit`] / [`Gateway::terminate`], the worker's own end, or the
//! drop of the last handle (channels count as handles: a channel keeps its
//! gateway alive). Dropping the last handle terminates with a bounded
//! timeout ([`DROP_TIMEOUT`]) and reaps the process.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use execnet_core::{to_value, ChannelRef, Config, ExecRequest, Value, WorkerInfo};

use crate::channel::{with_gateway, Channel};
use crate::driver::{Driver, OutputSink};
use crate::error::{Error, Result};
use crate::sync::lock;
use crate::transport::{self, Transport};
use crate::xspec::{OutputMode, XSpec};

/// How long `exit()` waits for the worker to end before killing it.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The grace period of `terminate(None)` and of dropping the last handle.
pub const DROP_TIMEOUT: Duration = Duration::from_secs(2);
pub use crate::transport::STARTUP_TIMEOUT;

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// What the worker told about itself in its HELLO.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RemoteInfo {
    /// `sys.executable`.
    pub executable: String,
    /// `sys.version_info`.
    pub version_info: VersionInfo,
    /// `sys.platform`.
    pub platform: String,
    /// The worker's current directory at start.
    pub cwd: String,
    /// The worker's process id.
    pub pid: u32,
    /// `sys.implementation.name` (`cpython`, `pypy`).
    pub implementation: String,
    /// The execution model in force.
    pub execmodel: String,
}

/// `sys.version_info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionInfo {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
    /// `final`, `candidate`, …
    pub releaselevel: String,
    /// Serial.
    pub serial: u32,
}

impl From<WorkerInfo> for RemoteInfo {
    fn from(w: WorkerInfo) -> Self {
        let num = |i: usize| {
            w.version_info
                .get(i)
                .and_then(Value::as_i64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        let version_info = VersionInfo {
            major: num(0),
            minor: num(1),
            micro: num(2),
            releaselevel: w
                .version_info
                .get(3)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            serial: num(4),
        };
        RemoteInfo {
            executable: w.executable,
            version_info,
            platform: w.platform,
            cwd: w.cwd,
            pid: w.pid,
            implementation: w.implementation,
            execmodel: w.execmodel,
        }
    }
}

/// The worker's answer to [`Gateway::remote_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStatus {
    /// Channels open in the worker.
    pub numchannels: u64,
    /// Executions running.
    pub numexecuting: u64,
    /// Execution model.
    pub execmodel: String,
}

/// Builds a gateway with options beyond the spec string.
pub struct GatewayBuilder {
    spec: XSpec,
    output_mode: OutputMode,
    output: Option<crate::driver::OutputCallback>,
    startup_timeout: Duration,
    config: Config,
    /// The gateway named by `via=` / `installvia=`.
    through: Option<Gateway>,
    /// The socket server's token (overrides `token=` / `token_file=`).
    token: Option<Vec<u8>>,
    /// Where the transport reached the worker (ssh host, socket address).
    remoteaddress: Option<String>,
}

impl fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("spec", &self.spec.to_string())
            .field("output_mode", &self.output_mode)
            .field("startup_timeout", &self.startup_timeout)
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// Starts from a spec string (see [`XSpec`]).
    pub fn new(spec: &str) -> Result<GatewayBuilder> {
        Ok(GatewayBuilder::from_spec(XSpec::parse(spec)?))
    }

    /// Starts from a parsed spec.
    pub fn from_spec(spec: XSpec) -> GatewayBuilder {
        GatewayBuilder {
            output_mode: spec.stdout(),
            spec,
            output: None,
            startup_timeout: STARTUP_TIMEOUT,
            config: Config::default(),
            through: None,
            token: None,
            remoteaddress: None,
        }
    }

    /// The gateway that `via=GWID` / `installvia=GWID` names (a
    /// [`Group`](crate::Group) passes its own gateway with that id).
    pub fn via_gateway(mut self, gateway: Gateway) -> Self {
        self.through = Some(gateway);
        self
    }

    /// The socket server's token (overrides `token=`, `token_file=` and
    /// `$EXECNET_SOCKET_TOKEN`).
    pub fn token(mut self, token: impl Into<Vec<u8>>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Finds the gateway `via=` / `installvia=` names with `lookup` (a
    /// group's ids), unless one was given with [`via_gateway`](Self::via_gateway).
    pub(crate) fn resolve_through(mut self, lookup: impl Fn(&str) -> Option<Gateway>) -> Self {
        if self.through.is_none() {
            if let Some(id) = self.spec.via().or(self.spec.installvia()) {
                self.through = lookup(id);
            }
        }
        self
    }

    /// The gateway named by `via=` or `installvia=`.
    fn through(&self, id: &str) -> Result<Gateway> {
        match &self.through {
            Some(gw) if gw.id() == id => Ok(gw.clone()),
            Some(gw) => Err(Error::Spec(format!(
                "the spec goes through {id:?} but the builder was given gateway {:?}",
                gw.id()
            ))),
            None => Err(Error::Spec(format!(
                "no gateway {id:?} to go through: make both in one Group, \
                 or pass it with GatewayBuilder::via_gateway"
            ))),
        }
    }

    pub(crate) fn spec_mut(&mut self) -> &mut XSpec {
        &mut self.spec
    }

    /// Sets the gateway id (overrides `id=`).
    pub fn id(mut self, id: &str) -> Self {
        self.spec.set_id(id);
        self
    }

    /// How remote output reaches us (overrides `stdout=`).
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.output_mode = mode;
        self
    }

    /// Forwards remote output (`fd` 1 or 2, bytes) to `f` instead of our
    /// stderr. Implies [`OutputMode::Forward`]. Runs on the gateway's reader
    /// thread, or (a local worker's stderr, read from its pipe; a fork
    /// worker's stdout and stderr, relayed by its fork server) on the
    /// thread that reads it: `f` should return soon (a fork server's
    /// reports to all of its gateways wait for it).
    pub fn on_output(mut self, f: impl FnMut(u8, &[u8]) + Send + 'static) -> Self {
        self.output_mode = OutputMode::Forward;
        self.output = Some(Box::new(f));
        self
    }

    /// How long the worker may take to start (default [`STARTUP_TIMEOUT`]).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Protocol limits (window, frame and item sizes).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Starts the gateway the spec describes: the transport that claims
    /// the spec (see [`crate::transport`]) reaches the worker, off this
    /// thread, then the protocol starts over it.
    pub async fn start(mut self) -> Result<Gateway> {
        let token = self.token.take();
        let connector = transport::connector_for(&transport::Request {
            spec: &self.spec,
            output: self.output_mode,
            token,
        })?;
        let through = match connector.through() {
            Some(id) => Some(Box::new(self.through(id)?) as Box<dyn transport::Through>),
            None => None,
        };
        let transport::Connected {
            transport,
            probe,
            remoteaddress,
        } = connector.connect(through).await?;
        if remoteaddress.is_some() {
            self.remoteaddress = remoteaddress;
        }
        let r = self.start_with_transport(transport).await;
        // A probe turns a failed start into the specific error (host not
        // found, authentication failed, interpreter not found, ...).
        match probe {
            Some(probe) => r.map_err(|e| probe.classify(e)),
            None => r,
        }
    }

    /// Runs the protocol over a caller-supplied transport (the worker source
    /// must already have been sent, see [`crate::transport`]).
    pub async fn start_with_transport(self, transport: Transport) -> Result<Gateway> {
        let id = match self.spec.id() {
            Some(id) => id.to_string(),
            None => format!("gw{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        };
        let mut spec = self.spec;
        if spec.id().is_none() {
            spec.set_id(&id);
        }
        let debug = std::env::var_os("EXECNET_DEBUG").is_some_and(|v| !v.is_empty() && v != "0");
        let sink = Arc::new(Mutex::new(match self.output {
            Some(f) => OutputSink::Callback(f),
            None => OutputSink::Stderr,
        }));
        let mut options = vec![
            (
                Value::str("execmodel"),
                Value::str(spec.execmodel().as_str()),
            ),
            (Value::str("output"), Value::str(self.output_mode.as_str())),
            (Value::str("debug"), Value::Bool(debug)),
        ];
        // A local worker's stderr is a pipe we read anyway (its tail for
        // errors), a forked worker's stdout and stderr are pipes its fork
        // server reads: forwarded from there, what the worker writes to them
        // just before it dies reaches the sink; through the worker's own
        // output thread it could die with it. Forwarded from the worker's
        // HELLO on: what the interpreter wrote before (a failed start's
        // error) stays the start error's stderr tail, as through the worker.
        let forwarding = Arc::new(AtomicBool::new(false));
        if self.output_mode == OutputMode::Forward {
            if let Some(c) = transport.control.as_ref() {
                for (fd, name) in [(2u8, "stderr"), (1u8, "stdout")] {
                    let to = sink.clone();
                    let on = forwarding.clone();
                    let host_reads = c.forward_output(
                        fd,
                        Box::new(move |bytes: &[u8]| {
                            if on.load(Ordering::Acquire) {
                                lock(&to).deliver(fd, bytes);
                            }
                        }),
                    );
                    if host_reads {
                        options.push((Value::str(name), Value::str("host")));
                    }
                }
            }
        }
        let options = Value::Dict(options);
        let span = tracing::debug_span!("gateway", id = %id);
        let started = Instant::now();
        // Driver::start spawns threads and writes the HELLO: off this thread.
        let config = self.config;
        let driver_span = span.clone();
        let label = match &self.remoteaddress {
            Some(address) => format!("gateway {id} ({address})"),
            None => format!("gateway {id}"),
        };
        let driver = transport::off_thread(move || {
            Driver::start(transport, config, options, sink, driver_span, label)
        })
        .await?;
        let info = match driver.wait_ready(started + self.startup_timeout).await {
            Ok(info) => info,
            Err(e) => {
                driver.kill_and_reap();
                return Err(e);
            }
        };
        // Before any remote code can run (the first EXEC is sent after this).
        forwarding.store(true, Ordering::Release);
        tracing::debug!(parent: &span, elapsed = ?started.elapsed(), pid = info.pid, "gateway up");
        let inner = Arc::new(GatewayInner {
            driver,
            id,
            spec,
            info: info.into(),
            remoteaddress: self.remoteaddress,
        });
        let weak = Arc::downgrade(&inner);
        inner
            .driver
            .set_callback_context(Box::new(move |f: &mut dyn FnMut()| match weak.upgrade() {
                Some(inner) => with_gateway(&Gateway { inner }, f),
                None => f(),
            }));
        Ok(Gateway { inner })
    }
}

/// A running worker (async API; [`crate::blocking::Gateway`] is the
/// blocking face of the same object). Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<GatewayInner>,
}

pub(crate) struct GatewayInner {
    pub(crate) driver: Arc<Driver>,
    id: String,
    spec: XSpec,
    info: RemoteInfo,
    remoteaddress: Option<String>,
}

impl Drop for GatewayInner {
    fn drop(&mut self) {
        let driver = self.driver.clone();
        let run = move || {
            driver.begin_terminate(DROP_TIMEOUT);
            crate::driver::block_on(driver.finish_terminate(Instant::now() + DROP_TIMEOUT));
        };
        if std::thread::current().name() == Some("execnet-reader") {
            // Dropped by a callback on a reader thread (maybe this gateway's
            // own): terminating here would wait for ourselves.
            let _ = std::thread::Builder::new()
                .name("execnet-terminate".into())
                .spawn(run);
        } else {
            run();
        }
    }
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Gateway id={} {} pid={}>",
            self.inner.id, self.inner.driver.description, self.inner.info.pid
        )
    }
}

/// Opens a gateway from a spec string such as `popen`,
/// `popen//python=python3.12//chdir=/tmp/w`.
pub async fn makegateway(spec: &str) -> Result<Gateway> {
    GatewayBuilder::new(spec)?.start().await
}

impl Gateway {
    /// A builder for options beyond the spec string.
    pub fn builder(spec: &str) -> Result<GatewayBuilder> {
        GatewayBuilder::new(spec)
    }

    /// The gateway id (`id=` of the spec, or `gwN`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The spec this gateway was made from (with its id).
    pub fn spec(&self) -> &XSpec {
        &self.inner.spec
    }

    /// What the worker told about itself.
    pub fn info(&self) -> &RemoteInfo {
        &self.inner.info
    }

    /// Where the worker was reached: the `[user@]host` of an ssh gateway,
    /// the `host:port` of a socket gateway (execnet's `remoteaddress`);
    /// `None` for popen.
    pub fn remoteaddress(&self) -> Option<&str> {
        self.inner.remoteaddress.as_deref()
    }

    pub(crate) fn same_as(&self, other: &Gateway) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn attach_channel(&self, id: u32) -> Channel {
        self.inner.driver.attach_handle(id);
        Channel::attached(self.clone(), id)
    }

    /// A handle on a channel named by a reference inside a received
    /// [`Value`].
    pub fn channel_from_ref(&self, r: ChannelRef) -> Channel {
        self.attach_channel(r.id().0)
    }

    /// Runs `source` in the worker with a new channel as `channel`
    /// (`__name__ == "__channelexec__"`). The source is dedented first, so
    /// an indented raw string works.
    pub async fn remote_exec(&self, source: &str) -> Result<Channel> {
        self.exec(ExecRequest {
            source: dedent(source),
            call: None,
        })
    }

    /// Runs `module_source`, then calls `function(channel, **kwargs)` there.
    /// `kwargs` must serialize to a map with string keys.
    pub async fn remote_exec_call<K: Serialize + ?Sized>(
        &self,
        module_source: &str,
        function: &str,
        kwargs: &K,
    ) -> Result<Channel> {
        let kwargs = with_gateway(self, || to_value(kwargs))?;
        let kwargs = match kwargs {
            Value::Dict(pairs) => {
                if pairs.iter().any(|(k, _)| !matches!(k, Value::Str(_))) {
                    return Err(Error::Spec(
                        "remote_exec_call: kwargs keys must be strings".into(),
                    ));
                }
                Value::Dict(pairs)
            }
            Value::Null => Value::Dict(Vec::new()),
            other => {
                return Err(Error::Spec(format!(
                    "remote_exec_call: kwargs must be a map, not {}",
                    other.type_name()
                )))
            }
        };
        self.exec(ExecRequest {
            source: dedent(module_source),
            call: Some((function.to_string(), kwargs)),
        })
    }

    fn exec(&self, request: ExecRequest) -> Result<Channel> {
        let id = self.inner.driver.exec(request)?;
        tracing::debug!(parent: &self.inner.driver.span, channel = id, "remote_exec");
        Ok(Channel::attached(self.clone(), id))
    }

    /// A new channel, to be passed to remote code inside a sent value.
    pub fn newchannel(&self) -> Result<Channel> {
        let id = self.inner.driver.open_channel()?;
        Ok(Channel::attached(self.clone(), id))
    }

    /// Asks the worker how many channels and executions it has (answered by
    /// its reader, so also while code runs). Waits at most 30 s.
    pub async fn remote_status(&self) -> Result<RemoteStatus> {
        let s = self
            .inner
            .driver
            .status(Some(Instant::now() + STARTUP_TIMEOUT))
            .await?;
        Ok(RemoteStatus {
            numchannels: s.numchannels,
            numexecuting: s.numexecuting,
            execmodel: s.execmodel,
        })
    }

    /// Whether the gateway's session is over.
    pub fn is_terminated(&self) -> bool {
        self.inner.driver.is_terminated()
    }

    /// Ends the worker cleanly: sends TERMINATE, waits up to
    /// [`EXIT_TIMEOUT`] for it to finish, and reaps it. If it did not finish
    /// in time it is killed and `Err(Timeout)` is returned. Channels end as
    /// closed (not with an error). Called from a channel callback (on the
    /// gateway's reader thread) it only starts the termination, which a
    /// helper thread finishes.
    pub async fn exit(&self) -> Result<()> {
        let d = &self.inner.driver;
        let was_over = d.is_terminated();
        d.begin_terminate(EXIT_TIMEOUT);
        if d.on_reader_thread() {
            // Called from a callback: the reader must return to read the
            // worker's answer, so the rest happens on a helper thread.
            d.finish_terminate_detached(Instant::now() + EXIT_TIMEOUT);
            return Ok(());
        }
        let clean = d.finish_terminate(Instant::now() + EXIT_TIMEOUT).await;
        if clean || was_over {
            Ok(())
        } else {
            Err(Error::Timeout)
        }
    }

    /// Like [`exit`](Self::exit) with a chosen grace period (default
    /// [`DROP_TIMEOUT`]), after which the worker's process group is killed.
    /// Always returns, within about the timeout plus a second.
    pub async fn terminate(&self, timeout: Option<Duration>) {
        let t = timeout.unwrap_or(DROP_TIMEOUT);
        let d = &self.inner.driver;
        d.begin_terminate(t);
        if d.on_reader_thread() {
            d.finish_terminate_detached(Instant::now() + t);
            return;
        }
        d.finish_terminate(Instant::now() + t).await;
    }

    /// Forcefully ends the worker: kills its process group at once.
    pub fn kill(&self) {
        if let Some(c) = self.inner.driver.control() {
            c.kill();
        }
    }
}

/// Removes the common leading whitespace of all non-blank lines, like
/// Python's `textwrap.dedent` (which execnet applies to sources).
pub(crate) fn dedent(source: &str) -> String {
    let indent = |l: &str| l.len() - l.trim_start_matches([' ', '\t']).len();
    let common = source
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| &l[..indent(l)])
        .reduce(|a, b| {
            let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
            &a[..n]
        })
        .unwrap_or("");
    if common.is_empty() {
        return source.to_string();
    }
    let mut out = String::with_capacity(source.len());
    for line in source.split_inclusive('\n') {
        if line.trim().is_empty() {
            out.push_str(if line.ends_with('\n') { "\n" } else { "" });
        } else {
            out.push_str(line.strip_prefix(common).unwrap_or(line));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dedent;

    #[test]
    fn dedents_like_textwrap() {
        assert_eq!(dedent("\n    a\n      b\n\n    c"), "\na\n  b\n\nc");
        assert_eq!(dedent("a\n  b"), "a\n  b");
        assert_eq!(dedent("\tx\n\ty\n"), "x\ny\n");
    }
}
