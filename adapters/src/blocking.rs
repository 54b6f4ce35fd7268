//! The blocking API: the same gateways, channels and groups as the crate
//! root, waiting by blocking the calling thread. Every type here wraps its
//! async counterpart and every method is that method under the driver's
//! `block_on` (which also lets the thread write the transport itself): one
//! implementation, two faces.
//! [`Channel::receive`] additionally lets its thread read the transport
//! itself while it waits (leader/follower, see the driver).
//!
//! ```no_run
//! use execnet::blocking::makegateway;
//!
//! let gw = makegateway("popen")?;
//! let ch = gw.remote_exec("import os; channel.send(os.getpid())")?;
//! let pid: u32 = ch.receive()?;
//! assert_eq!(pid, gw.info().pid);
//! gw.exit()?;
//! # Ok::<(), execnet::Error>(())
//! ```

use std::time::Duration;

use crate::driver::block_on;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{ChannelReader, ChannelWriter};
use crate::{ChannelRef, Config, OutputMode, RemoteInfo, RemoteStatus, Value, XSpec};

/// Opens a gateway from a spec string (see [`XSpec`]).
pub fn makegateway(spec: &str) -> Result<Gateway> {
    crate::transport::inline_starts(|| block_on(crate::makegateway(spec)).map(Gateway))
}

/// A running worker. Cheap to clone; see [`crate::Gateway`].
#[derive(Clone, Debug)]
pub struct Gateway(crate::Gateway);

impl Gateway {
    /// A builder for options beyond the spec string.
    pub fn builder(spec: &str) -> Result<GatewayBuilder> {
        crate::GatewayBuilder::new(spec).map(GatewayBuilder)
    }
    /// The gateway id.
    pub fn id(&self) -> &str {
        self.0.id()
    }
    /// The spec this gateway was made from.
    pub fn spec(&self) -> &XSpec {
        self.0.spec()
    }
    /// What the worker told about itself.
    pub fn info(&self) -> &RemoteInfo {
        self.0.info()
    }
    /// Where the worker was reached (ssh host, socket address).
    pub fn remoteaddress(&self) -> Option<&str> {
        self.0.remoteaddress()
    }
    /// Runs `source` remotely with a new channel as `channel`.
    pub fn remote_exec(&self, source: &str) -> Result<Channel> {
        block_on(self.0.remote_exec(source)).map(Channel)
    }
    /// Runs `module_source`, then `function(channel, **kwargs)`.
    pub fn remote_exec_call<K: Serialize + ?Sized>(
        &self,
        module_source: &str,
        function: &str,
        kwargs: &K,
    ) -> Result<Channel> {
        block_on(self.0.remote_exec_call(module_source, function, kwargs)).map(Channel)
    }
    /// A new channel, to be passed to remote code.
    pub fn newchannel(&self) -> Result<Channel> {
        self.0.newchannel().map(Channel)
    }
    /// A handle on a channel referenced inside a received [`Value`].
    pub fn channel_from_ref(&self, r: ChannelRef) -> Channel {
        Channel(self.0.channel_from_ref(r))
    }
    /// The worker's channel and execution counts.
    pub fn remote_status(&self) -> Result<RemoteStatus> {
        block_on(self.0.remote_status())
    }
    /// Whether the gateway's session is over.
    pub fn is_terminated(&self) -> bool {
        self.0.is_terminated()
    }
    /// Ends the worker cleanly (bounded; kills it if it does not finish).
    pub fn exit(&self) -> Result<()> {
        block_on(self.0.exit())
    }
    /// Exits, killing the process group after `timeout`. Always returns.
    pub fn terminate(&self, timeout: Option<Duration>) {
        block_on(self.0.terminate(timeout))
    }
    /// Kills the worker's process group at once.
    pub fn kill(&self) {
        self.0.kill()
    }
}

/// Builds a gateway with options beyond the spec string.
#[derive(Debug)]
pub struct GatewayBuilder(crate::GatewayBuilder);

impl GatewayBuilder {
    /// Sets the gateway id.
    pub fn id(self, id: &str) -> Self {
        GatewayBuilder(self.0.id(id))
    }
    /// How remote output reaches us.
    pub fn output_mode(self, mode: OutputMode) -> Self {
        GatewayBuilder(self.0.output_mode(mode))
    }
    /// Forwards remote output to `f(fd, bytes)`.
    pub fn on_output(self, f: impl FnMut(u8, &[u8]) + Send + 'static) -> Self {
        GatewayBuilder(self.0.on_output(f))
    }
    /// How long the worker may take to start.
    pub fn startup_timeout(self, timeout: Duration) -> Self {
        GatewayBuilder(self.0.startup_timeout(timeout))
    }
    /// Protocol limits.
    pub fn config(self, config: Config) -> Self {
        GatewayBuilder(self.0.config(config))
    }
    /// The gateway `via=` / `installvia=` names.
    pub fn via_gateway(self, gateway: Gateway) -> Self {
        GatewayBuilder(self.0.via_gateway(gateway.0))
    }
    /// The socket server's token.
    pub fn token(self, token: impl Into<Vec<u8>>) -> Self {
        GatewayBuilder(self.0.token(token))
    }
    /// Starts the gateway.
    pub fn start(self) -> Result<Gateway> {
        crate::transport::inline_starts(|| block_on(self.0.start()).map(Gateway))
    }
    /// Runs the protocol over a caller-supplied transport.
    pub fn start_with_transport(self, transport: crate::transport::Transport) -> Result<Gateway> {
        crate::transport::inline_starts(|| {
            block_on(self.0.start_with_transport(transport)).map(Gateway)
        })
    }
}

/// One channel of a gateway. Cheap to clone; travels inside values.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Channel(crate::Channel);

impl Channel {
    /// The channel id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }
    /// The gateway this channel belongs to.
    pub fn gateway(&self) -> Gateway {
        Gateway(self.0.gateway().clone())
    }
    /// Sends one item (waits while the window is full).
    pub fn send<T: Serialize + ?Sized>(&self, item: &T) -> Result<()> {
        block_on(self.0.send(item))
    }
    /// Sends one item; `Err(Timeout)` if the window stays full for `timeout`.
    pub fn send_timeout<T: Serialize + ?Sized>(&self, item: &T, timeout: Duration) -> Result<()> {
        block_on(self.0.send_timeout(item, timeout))
    }
    /// Sends a [`Value`] as is.
    pub fn send_value(&self, value: &Value) -> Result<()> {
        block_on(self.0.send_value(value))
    }
    /// Sends a [`Value`] as is; `Err(Timeout)` if the window stays full for
    /// `timeout` (nothing is sent then).
    pub fn send_value_timeout(&self, value: &Value, timeout: Duration) -> Result<()> {
        block_on(self.0.send_value_timeout(value, timeout))
    }
    /// Receives the next item.
    pub fn receive<T: DeserializeOwned>(&self) -> Result<T> {
        crate::driver::leading_allowed(|| block_on(self.0.receive()))
    }
    /// Receives the next item, `Err(Timeout)` after `timeout`.
    pub fn receive_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T> {
        crate::driver::leading_allowed(|| block_on(self.0.receive_timeout(timeout)))
    }
    /// Receives the next item as a [`Value`].
    pub fn receive_value(&self, timeout: Option<Duration>) -> Result<Value> {
        crate::driver::leading_allowed(|| block_on(self.0.receive_value(timeout)))
    }
    /// Receives the next item as a [`Value`], for a thread that must react
    /// to signals while it waits (a Python host's main thread and Ctrl-C):
    /// it may read the transport itself, as an untimed receive does, and
    /// returns `Err(Timeout)` early when a signal interrupts that read (the
    /// caller handles the signal and calls again). While another thread
    /// reads for it, it waits at most `slice`; while it reads itself, only
    /// input or a signal ends the wait (a read cannot be cut short), so use
    /// [`receive_value`](Self::receive_value) for a real timeout.
    pub fn receive_value_interruptible(&self, slice: Duration) -> Result<Value> {
        crate::driver::leading_interruptible(|| block_on(self.0.receive_value(Some(slice))))
    }
    /// Like [`receive_value`](Self::receive_value) with a timeout that
    /// holds, for a thread that must react to signals: while it reads the
    /// transport itself (popen, ssh and socket gateways can bound that read
    /// by the timeout), a signal ends the wait at once with `Err(Timeout)`
    /// (the caller handles the signal and calls again with the time left);
    /// otherwise it waits as `receive_value` does. Never waits much past
    /// `timeout`.
    pub fn receive_value_interruptible_timeout(&self, timeout: Duration) -> Result<Value> {
        crate::driver::leading_interruptible_bounded(|| {
            block_on(self.0.receive_value(Some(timeout)))
        })
    }
    /// The items until the end of the channel; a remote error is the last.
    pub fn iter<T: DeserializeOwned>(&self) -> impl Iterator<Item = Result<T>> + '_ {
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            match self.receive::<T>() {
                Ok(v) => Some(Ok(v)),
                Err(Error::EndOfChannel) => {
                    done = true;
                    None
                }
                Err(e) => {
                    done = true;
                    Some(Err(e))
                }
            }
        })
    }
    /// Waits until the remote closed the channel; re-raises its error.
    pub fn waitclose(&self, timeout: Option<Duration>) -> Result<()> {
        block_on(self.0.waitclose(timeout))
    }
    /// Closes the channel. Idempotent.
    pub fn close(&self) -> Result<()> {
        self.0.close()
    }
    /// Closes the sending side only (see [`crate::Channel::close_sending`]).
    pub fn close_sending(&self) -> Result<()> {
        self.0.close_sending()
    }
    /// Closes the channel with an error for the remote side.
    pub fn close_with_error(&self, error: &str) -> Result<()> {
        self.0.close_with_error(error)
    }
    /// Whether the channel is closed.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    /// Delivers items to `callback` (see [`crate::Channel::set_callback`]).
    pub fn set_callback(
        &self,
        callback: impl FnMut(Value) + Send + 'static,
        endmarker: Option<Value>,
    ) -> Result<()> {
        self.0.set_callback(callback, endmarker)
    }
    /// A `Write` that sends each write as a `bytes` item.
    pub fn makefile_writer(&self) -> ChannelWriter {
        ChannelWriter::new(self.0.clone())
    }
    /// A `Read` over the channel's `str`/`bytes` items.
    pub fn makefile_reader(&self) -> ChannelReader {
        ChannelReader::new(self.0.clone())
    }
}

/// A set of gateways terminated together; see [`crate::Group`].
#[derive(Debug, Default)]
pub struct Group(crate::Group);

impl Group {
    /// An empty group (default spec `popen`).
    pub fn new() -> Group {
        Group(crate::Group::new())
    }
    /// Opens a gateway in the group (`""`: the default spec).
    pub fn makegateway(&self, spec: &str) -> Result<Gateway> {
        crate::transport::inline_starts(|| block_on(self.0.makegateway(spec)).map(Gateway))
    }
    /// Opens a gateway from a builder in the group.
    pub fn makegateway_with(&self, builder: GatewayBuilder) -> Result<Gateway> {
        crate::transport::inline_starts(|| {
            block_on(self.0.makegateway_with(builder.0)).map(Gateway)
        })
    }
    /// The gateway with this id.
    pub fn get(&self, id: &str) -> Option<Gateway> {
        self.0.get(id).map(Gateway)
    }
    /// The gateways in creation order.
    pub fn gateways(&self) -> Vec<Gateway> {
        self.0.gateways().into_iter().map(Gateway).collect()
    }
    /// How many gateways the group holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether the group is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Sets the spec used by `makegateway("")`.
    pub fn set_defaultspec(&self, spec: &str) {
        self.0.set_defaultspec(spec)
    }
    /// Bounds how many gateways `makegateways` starts at once (see
    /// [`crate::Group::set_max_concurrent_starts`]); `None` is unbounded.
    pub fn set_max_concurrent_starts(&self, n: Option<usize>) {
        self.0.set_max_concurrent_starts(n)
    }
    /// The bound on concurrent starts (`None`: unbounded).
    pub fn max_concurrent_starts(&self) -> Option<usize> {
        self.0.max_concurrent_starts()
    }
    /// Terminates every gateway within about `timeout`.
    pub fn terminate(&self, timeout: Option<Duration>) {
        block_on(self.0.terminate(timeout))
    }
    /// A group with a gateway per spec, started at once.
    pub fn with_specs<I, S>(specs: I) -> Result<Group>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        crate::transport::inline_starts(|| block_on(crate::Group::with_specs(specs)).map(Group))
    }
    /// Opens a gateway per spec, all at once, in this group.
    pub fn makegateways<I, S>(&self, specs: I) -> Result<Vec<Gateway>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        crate::transport::inline_starts(|| {
            block_on(self.0.makegateways(specs)).map(|v| v.into_iter().map(Gateway).collect())
        })
    }
    /// The spec used by `makegateway("")`.
    pub fn defaultspec(&self) -> String {
        self.0.defaultspec()
    }
    /// The `index`-th gateway in creation order.
    pub fn get_index(&self, index: usize) -> Option<Gateway> {
        self.0.get_index(index).map(Gateway)
    }
    /// Whether a gateway with this id is in the group.
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }
    /// Runs `source` on every gateway; the channels as one [`MultiChannel`].
    pub fn remote_exec(&self, source: &str) -> Result<MultiChannel> {
        block_on(self.0.remote_exec(source)).map(MultiChannel)
    }
}

impl IntoIterator for &Group {
    type Item = Gateway;
    type IntoIter = std::vec::IntoIter<Gateway>;
    /// A snapshot of the gateways, in creation order.
    fn into_iter(self) -> Self::IntoIter {
        self.gateways().into_iter()
    }
}

/// Several channels used as one; see [`crate::MultiChannel`].
#[derive(Debug)]
pub struct MultiChannel(crate::MultiChannel);

impl MultiChannel {
    /// Groups these channels.
    pub fn new(channels: Vec<Channel>) -> MultiChannel {
        MultiChannel(crate::MultiChannel::new(
            channels.into_iter().map(|c| c.0).collect(),
        ))
    }
    /// How many channels there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there is no channel.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The `index`-th channel.
    pub fn get(&self, index: usize) -> Option<Channel> {
        self.0.get(index).cloned().map(Channel)
    }
    /// The channels, in order.
    pub fn channels(&self) -> Vec<Channel> {
        self.0.iter().cloned().map(Channel).collect()
    }
    /// Sends `item` on every channel.
    pub fn send_each<T: Serialize + ?Sized>(&self, item: &T) -> Result<()> {
        block_on(self.0.send_each(item))
    }
    /// Receives one item from every channel, in order.
    pub fn receive_each<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        block_on(self.0.receive_each())
    }
    /// Receives one item from every channel, with the channel.
    pub fn receive_each_with_channel<T: DeserializeOwned>(&self) -> Result<Vec<(Channel, T)>> {
        block_on(self.0.receive_each_with_channel())
            .map(|v| v.into_iter().map(|(c, x)| (Channel(c), x)).collect())
    }
    /// The items of every channel merged into one queue (made once); each
    /// channel's `endmarker`, if given, arrives when it ends.
    pub fn make_receive_queue(&self, endmarker: Option<Value>) -> Result<ReceiveQueue> {
        self.0.make_receive_queue(endmarker).map(ReceiveQueue)
    }
    /// Waits until every channel closed; the first remote error, if any.
    pub fn waitclose(&self, timeout: Option<Duration>) -> Result<()> {
        block_on(self.0.waitclose(timeout))
    }
}

/// The merged items of a [`MultiChannel`]; see [`crate::ReceiveQueue`].
#[derive(Clone, Debug)]
pub struct ReceiveQueue(crate::ReceiveQueue);

impl ReceiveQueue {
    /// The next `(channel, item)`; `Err(EndOfChannel)` once every channel
    /// ended and everything was taken.
    pub fn recv(&self) -> Result<(Channel, Value)> {
        block_on(self.0.recv()).map(|(c, v)| (Channel(c), v))
    }
    /// Like [`recv`](Self::recv), `Err(Timeout)` after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<(Channel, Value)> {
        block_on(self.0.recv_timeout(timeout)).map(|(c, v)| (Channel(c), v))
    }
    /// The next item if one is there.
    pub fn try_recv(&self) -> Option<(Channel, Value)> {
        self.0.try_recv().map(|(c, v)| (Channel(c), v))
    }
    /// How many items wait.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether no item waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A directory tree to many gateways; see [`crate::RSync`].
#[derive(Debug)]
pub struct RSync(crate::RSync);

impl RSync {
    /// A sync of the directory `source`.
    pub fn new(source: impl AsRef<std::path::Path>) -> RSync {
        RSync(crate::RSync::new(source))
    }
    /// Adds a target directory on a gateway.
    pub fn add_target(
        &mut self,
        gateway: &Gateway,
        dest: impl AsRef<std::path::Path>,
        delete: bool,
    ) {
        self.0.add_target(&gateway.0, dest, delete);
    }
    /// Adds a target with options.
    pub fn add_target_with(
        &mut self,
        gateway: &Gateway,
        dest: impl AsRef<std::path::Path>,
        options: crate::TargetOptions,
    ) {
        self.0.add_target_with(&gateway.0, dest, options);
    }
    /// Only paths for which `f(full_path)` is true are synced.
    pub fn filter(
        &mut self,
        f: impl FnMut(&std::path::Path) -> bool + Send + 'static,
    ) -> &mut Self {
        self.0.filter(f);
        self
    }
    /// Calls `f` as the send goes on.
    pub fn progress(&mut self, f: impl FnMut(&crate::Progress<'_>) + Send + 'static) -> &mut Self {
        self.0.progress(f);
        self
    }
    /// How many targets wait for `send`.
    pub fn targets(&self) -> usize {
        self.0.targets()
    }
    /// Syncs to every target at once (and uses the targets up).
    pub fn send(&mut self) -> Result<crate::Stats> {
        block_on(self.0.send())
    }
}

macro_rules! faces {
    ($($t:ident),*) => {$(
        impl From<crate::$t> for $t {
            /// The blocking face of an async object.
            fn from(inner: crate::$t) -> Self {
                $t(inner)
            }
        }
        impl From<$t> for crate::$t {
            /// The async face of a blocking object.
            fn from(outer: $t) -> Self {
                outer.0
            }
        }
        impl $t {
            /// The async face of the same object.
            pub fn as_async(&self) -> &crate::$t {
                &self.0
            }
        }
    )*};
}
faces!(
    Gateway,
    GatewayBuilder,
    Channel,
    Group,
    MultiChannel,
    ReceiveQueue,
    RSync
);
