//! `Channel`: one multiplexed conversation with remote code.
//!
//! A `Channel` is a cheap, cloneable handle. When the last handle of an open
//! channel is dropped the channel is closed (half-closed if a callback still
//! consumes it), as execnet does when a channel is garbage collected.
//! Channels are `Serialize`/`Deserialize`: they travel inside sent and
//! received values (a thread-local names the gateway being received on).

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::Stream;
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use execnet_core::{from_value, to_value, Value, CHANNEL_TOKEN};

use crate::error::{Error, Result};
use crate::gateway::Gateway;

/// One channel of a gateway (async API; see [`crate::blocking::Channel`] for
/// the blocking face of the same object).
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelInner>,
}

struct ChannelInner {
    gateway: Gateway,
    id: u32,
    span: tracing::Span,
}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        self.gateway.inner.driver.detach_handle(self.id);
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Channel id={} gateway={}>",
            self.inner.id,
            self.gateway().id()
        )
    }
}

thread_local! {
    /// Gateways whose values are being converted on this thread (innermost
    /// last): received channel ids resolve against the top one, and sent
    /// channels must belong to it.
    static CONTEXT: RefCell<Vec<Gateway>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `gateway` as the conversion context.
pub(crate) fn with_gateway<R>(gateway: &Gateway, f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            CONTEXT.with(|c| {
                c.borrow_mut().pop();
            });
        }
    }
    CONTEXT.with(|c| c.borrow_mut().push(gateway.clone()));
    let _pop = Pop;
    f()
}

fn current_gateway() -> Option<Gateway> {
    CONTEXT.with(|c| c.borrow().last().cloned())
}

impl Channel {
    /// A new handle on channel `id` of `gateway` (the driver already counts
    /// it as attached).
    pub(crate) fn attached(gateway: Gateway, id: u32) -> Channel {
        let span = tracing::trace_span!(parent: &gateway.inner.driver.span, "channel", id);
        Channel {
            inner: Arc::new(ChannelInner { gateway, id, span }),
        }
    }

    /// The channel id (odd: opened by us, even: opened by the worker).
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// The gateway this channel belongs to.
    pub fn gateway(&self) -> &Gateway {
        &self.inner.gateway
    }

    fn driver(&self) -> &crate::driver::Driver {
        &self.inner.gateway.inner.driver
    }

    /// Sends one item. Waits while the channel's window is full (the remote
    /// side has not consumed enough). `Err(ChannelClosed)` once either side
    /// closed the channel; a value Python cannot receive is refused before
    /// anything is sent.
    pub async fn send<T: Serialize + ?Sized>(&self, item: &T) -> Result<()> {
        let value = with_gateway(self.gateway(), || to_value(item))?;
        self.send_value(&value).await
    }

    /// Sends a [`Value`] as is (no serde pass: the fast path for large
    /// values).
    pub async fn send_value(&self, value: &Value) -> Result<()> {
        self.send_value_deadline(value, None).await
    }

    /// Like [`send`](Self::send), but `Err(Timeout)` if the channel's window
    /// stays full for `timeout` (nothing is sent then).
    pub async fn send_timeout<T: Serialize + ?Sized>(
        &self,
        item: &T,
        timeout: Duration,
    ) -> Result<()> {
        let value = with_gateway(self.gateway(), || to_value(item))?;
        self.send_value_deadline(&value, Some(Instant::now() + timeout))
            .await
    }

    /// [`send_value`](Self::send_value) with [`send_timeout`](Self::send_timeout)'s
    /// bound: `Err(Timeout)` if the window stays full for `timeout`
    /// (nothing is sent then).
    pub async fn send_value_timeout(&self, value: &Value, timeout: Duration) -> Result<()> {
        self.send_value_deadline(value, Some(Instant::now() + timeout))
            .await
    }

    async fn send_value_deadline(&self, value: &Value, deadline: Option<Instant>) -> Result<()> {
        let mut buf = Vec::new();
        execnet_core::encode(value, &mut buf)?;
        self.driver()
            .send_encoded(self.inner.id, buf, deadline)
            .instrument(self.inner.span.clone())
            .await
    }

    /// Receives the next item, waiting as long as it takes.
    /// `Err(EndOfChannel)` once the channel ended and every item was taken;
    /// `Err(Remote(_))` (once) if the remote closed it with an error.
    pub async fn receive<T: DeserializeOwned>(&self) -> Result<T> {
        let v = self.receive_value(None).await?;
        self.convert(v)
    }

    /// Like [`receive`](Self::receive), but `Err(Timeout)` after `timeout`.
    pub async fn receive_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T> {
        let v = self.receive_value(Some(timeout)).await?;
        self.convert(v)
    }

    /// Receives the next item as a [`Value`] (no serde pass).
    pub async fn receive_value(&self, timeout: Option<Duration>) -> Result<Value> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.driver()
            .receive(self.inner.id, deadline)
            .instrument(self.inner.span.clone())
            .await
    }

    fn convert<T: DeserializeOwned>(&self, v: Value) -> Result<T> {
        Ok(with_gateway(self.gateway(), || from_value(v))?)
    }

    /// The items as a stream of results: ends at the end of the channel;
    /// a remote error is yielded as the last element.
    pub fn stream<T: DeserializeOwned + 'static>(&self) -> impl Stream<Item = Result<T>> + 'static {
        futures_lite::stream::unfold(Some(self.clone()), |ch| async move {
            let ch = ch?;
            match ch.receive::<T>().await {
                Ok(v) => Some((Ok(v), Some(ch))),
                Err(Error::EndOfChannel) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// Waits until the remote closed the channel (or it ended otherwise).
    /// Re-raises the remote error if it was not received yet.
    pub async fn waitclose(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.driver()
            .waitclose(self.inner.id, deadline)
            .instrument(self.inner.span.clone())
            .await
    }

    /// Closes the channel after every item sent so far. Idempotent.
    pub fn close(&self) -> Result<()> {
        self.driver().close(self.inner.id, None)
    }

    /// Closes the sending side only, after every item sent so far: the
    /// remote's `receive` then sees the end of the channel (Python:
    /// `EOFError`; iteration stops) while the remote can still send and this
    /// side still receives (protocol.md §6.1, LAST_MESSAGE). A later `send`
    /// here fails with [`Error::ChannelClosed`](crate::Error::ChannelClosed).
    /// Idempotent; does nothing on a closed or ended channel.
    pub fn close_sending(&self) -> Result<()> {
        self.driver().close_sending(self.inner.id)
    }

    /// Closes the channel with an error: the remote receiver gets it as a
    /// `RemoteError` (Python: `channel.RemoteError`).
    pub fn close_with_error(&self, error: &str) -> Result<()> {
        self.driver().close(self.inner.id, Some(error))
    }

    /// Whether the channel is closed (locally, or by the remote, or because
    /// the gateway ended).
    pub fn is_closed(&self) -> bool {
        self.driver().is_closed(self.inner.id)
    }

    /// Delivers every item to `callback` instead of the receive queue:
    /// items already queued first, then each new item as it arrives (on the
    /// thread that reads the gateway's input: keep it short). A wait in the
    /// callback that needs more input of the same gateway (`receive`,
    /// `waitclose`, a `send` out of credit, `status`) fails at once with
    /// [`Error::WouldDeadlock`](crate::Error::WouldDeadlock) instead of
    /// waiting for itself. When the channel ends for any reason
    /// (close, remote error, termination, worker death) `endmarker` is
    /// delivered once, if given. A second callback is an error. The
    /// callback is dropped after the endmarker; until then a callback that
    /// captures a `Channel` keeps the gateway alive (`exit`/`terminate`
    /// still end it). A panicking callback is removed (logged); the gateway
    /// goes on.
    pub fn set_callback(
        &self,
        callback: impl FnMut(Value) + Send + 'static,
        endmarker: Option<Value>,
    ) -> Result<()> {
        self.driver()
            .set_callback(self.inner.id, Box::new(callback), endmarker)
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if let Some(gw) = current_gateway() {
            if !gw.same_as(self.gateway()) {
                return Err(serde::ser::Error::custom(format!(
                    "channel {} belongs to gateway {}, not {}",
                    self.inner.id,
                    self.gateway().id(),
                    gw.id()
                )));
            }
        }
        serializer.serialize_newtype_struct(CHANNEL_TOKEN, &self.inner.id)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = u32;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a channel reference")
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<u32, D::Error> {
                u32::deserialize(d)
            }
        }
        let id = deserializer.deserialize_newtype_struct(CHANNEL_TOKEN, IdVisitor)?;
        let gw = current_gateway().ok_or_else(|| {
            serde::de::Error::custom(
                "a Channel can only be deserialized from an item received on a gateway",
            )
        })?;
        Ok(gw.attach_channel(id))
    }
}
