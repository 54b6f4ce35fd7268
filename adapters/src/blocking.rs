//! The blocking API: the same gateways, channels and groups as the crate
//! root, waiting by blocking the calling thread. Every type here wraps its
//! async counterpart and every method is that method under
//! `futures_lite::future::block_on`: one implementation, two faces.
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

use futures_lite::future::block_on;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{ChannelReader, ChannelWriter};
use crate::{ChannelRef, Config, OutputMode, RemoteInfo, RemoteStatus, Value, XSpec};

/// Opens a gateway from a spec string (see [`XSpec`]).
pub fn makegateway(spec: &str) -> Result<Gateway> {
    block_on(crate::makegateway(spec)).map(Gateway)
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
        block_on(self.0.start()).map(Gateway)
    }
    /// Runs the protocol over a caller-supplied transport.
    pub fn start_with_transport(self, transport: crate::transport::Transport) -> Result<Gateway> {
        block_on(self.0.start_with_transport(transport)).map(Gateway)
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
    /// Receives the next item.
    pub fn receive<T: DeserializeOwned>(&self) -> Result<T> {
        block_on(self.0.receive())
    }
    /// Receives the next item, `Err(Timeout)` after `timeout`.
    pub fn receive_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T> {
        block_on(self.0.receive_timeout(timeout))
    }
    /// Receives the next item as a [`Value`].
    pub fn receive_value(&self, timeout: Option<Duration>) -> Result<Value> {
        block_on(self.0.receive_value(timeout))
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
        block_on(self.0.makegateway(spec)).map(Gateway)
    }
    /// Opens a gateway from a builder in the group.
    pub fn makegateway_with(&self, builder: GatewayBuilder) -> Result<Gateway> {
        block_on(self.0.makegateway_with(builder.0)).map(Gateway)
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
    /// Terminates every gateway within about `timeout`.
    pub fn terminate(&self, timeout: Option<Duration>) {
        block_on(self.0.terminate(timeout))
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
faces!(Gateway, GatewayBuilder, Channel, Group);
