//! `MultiChannel`: one operation on many channels at once, and a receive
//! queue that merges their items.
//!
//! [`MultiChannel::make_receive_queue`] installs a callback on every channel
//! that puts `(channel, item)` on one [`ReceiveQueue`]; a channel's
//! endmarker (if one is given) is its last item, delivered when it ends for
//! any reason (close, remote error, termination, worker death). Once every
//! channel has ended and the queue is empty, `recv` reports
//! [`Error::EndOfChannel`] instead of waiting forever.
//!
//! ```
//! # fn main() -> execnet::Result<()> {
//! use execnet::blocking::Group;
//! use execnet::Value;
//!
//! let group = Group::with_specs(["popen", "popen"])?;
//! let mc = group.remote_exec("channel.send(channel.receive() + 1)")?;
//! mc.send_each(&41)?;
//! assert_eq!(mc.receive_each::<i64>()?, [42, 42]);
//!
//! let mc = group.remote_exec("import os; channel.send(os.getpid())")?;
//! let queue = mc.make_receive_queue(Some(Value::str("done")))?;
//! let mut ended = 0;
//! while ended < 2 {
//!     let (channel, item) = queue.recv()?;
//!     if item == Value::str("done") {
//!         ended += 1;
//!     } else {
//!         println!("{} says {item:?}", channel.gateway().id());
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use event_listener::Event;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::Channel;
use crate::error::{Error, Result};
use crate::Value;

/// Several channels used as one (async API; [`crate::blocking::MultiChannel`]
/// is the blocking face). [`crate::Group::remote_exec`] returns one.
#[derive(Debug)]
pub struct MultiChannel {
    channels: Vec<Channel>,
    queue: Mutex<Option<ReceiveQueue>>,
}

impl MultiChannel {
    /// Groups these channels.
    pub fn new(channels: Vec<Channel>) -> MultiChannel {
        MultiChannel {
            channels,
            queue: Mutex::new(None),
        }
    }

    /// How many channels there are.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether there is no channel.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The `index`-th channel.
    pub fn get(&self, index: usize) -> Option<&Channel> {
        self.channels.get(index)
    }

    /// The channels, in order.
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    /// Iterates over the channels.
    pub fn iter(&self) -> std::slice::Iter<'_, Channel> {
        self.channels.iter()
    }

    /// Sends `item` on every channel, in order (each send waits while that
    /// channel's window is full). Stops at the first error.
    pub async fn send_each<T: Serialize + ?Sized>(&self, item: &T) -> Result<()> {
        for ch in &self.channels {
            ch.send(item).await?;
        }
        Ok(())
    }

    /// Receives one item from every channel, in order. Stops at the first
    /// error (a remote error, the end of a channel, …). Not possible once a
    /// receive queue was made ([`Error::CallbackSet`]).
    pub async fn receive_each<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.channels.len());
        for ch in &self.channels {
            out.push(ch.receive().await?);
        }
        Ok(out)
    }

    /// Like [`receive_each`](Self::receive_each), with the channel each item
    /// came from.
    pub async fn receive_each_with_channel<T: DeserializeOwned>(
        &self,
    ) -> Result<Vec<(Channel, T)>> {
        let mut out = Vec::with_capacity(self.channels.len());
        for ch in &self.channels {
            out.push((ch.clone(), ch.receive().await?));
        }
        Ok(out)
    }

    /// A queue receiving the items of every channel as `(channel, item)`,
    /// in arrival order. Each channel's `endmarker`, if given, is put on the
    /// queue once when that channel ends, for whatever reason. Made once:
    /// later calls return the same queue (and ignore `endmarker`).
    pub fn make_receive_queue(&self, endmarker: Option<Value>) -> Result<ReceiveQueue> {
        let mut slot = crate::sync::lock(&self.queue);
        if let Some(q) = &*slot {
            return Ok(q.clone());
        }
        let inner = Arc::new(QueueInner {
            channels: self.channels.clone(),
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                open: self.channels.len(),
            }),
            event: Event::new(),
        });
        for (i, ch) in self.channels.iter().enumerate() {
            // The callback holds the queue weakly: a queue nobody holds any
            // more must not keep gateways alive.
            let feed = Feeder {
                queue: Arc::downgrade(&inner),
                index: i,
            };
            ch.set_callback(move |v| feed.put(v), endmarker.clone())?;
        }
        let q = ReceiveQueue { inner };
        *slot = Some(q.clone());
        Ok(q)
    }

    /// Waits until every channel is closed, against one deadline. Remote
    /// errors are collected and the first is returned after all channels
    /// ended (execnet's behaviour); any other error (a timeout, a dead
    /// worker) is returned at once.
    pub async fn waitclose(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut first = None;
        for ch in &self.channels {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match ch.waitclose(left).await {
                Ok(()) => {}
                Err(e @ Error::Remote(_)) => {
                    first.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl From<Vec<Channel>> for MultiChannel {
    fn from(channels: Vec<Channel>) -> Self {
        MultiChannel::new(channels)
    }
}

impl<'a> IntoIterator for &'a MultiChannel {
    type Item = &'a Channel;
    type IntoIter = std::slice::Iter<'a, Channel>;
    fn into_iter(self) -> Self::IntoIter {
        self.channels.iter()
    }
}

/// The merged items of a [`MultiChannel`]'s channels (async API;
/// [`crate::blocking::ReceiveQueue`] is the blocking face). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReceiveQueue {
    inner: Arc<QueueInner>,
}

#[derive(Debug)]
struct QueueInner {
    channels: Vec<Channel>,
    state: Mutex<QueueState>,
    event: Event,
}

#[derive(Debug)]
struct QueueState {
    items: VecDeque<(usize, Value)>,
    /// Channels whose callback is still installed.
    open: usize,
}

impl QueueInner {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        crate::sync::lock(&self.state)
    }
}

/// A channel's callback: feeds the queue; its drop (the driver drops a
/// callback after the channel's end) counts the channel as ended.
struct Feeder {
    queue: Weak<QueueInner>,
    index: usize,
}

impl Feeder {
    fn put(&self, v: Value) {
        if let Some(q) = self.queue.upgrade() {
            q.lock().items.push_back((self.index, v));
            q.event.notify(usize::MAX);
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        if let Some(q) = self.queue.upgrade() {
            let mut st = q.lock();
            st.open = st.open.saturating_sub(1);
            drop(st);
            q.event.notify(usize::MAX);
        }
    }
}

impl ReceiveQueue {
    /// The next `(channel, item)`, waiting as long as it takes.
    /// `Err(EndOfChannel)` once every channel ended and everything was
    /// taken.
    pub async fn recv(&self) -> Result<(Channel, Value)> {
        self.recv_deadline(None).await
    }

    /// Like [`recv`](Self::recv), but `Err(Timeout)` after `timeout`.
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<(Channel, Value)> {
        self.recv_deadline(Some(Instant::now() + timeout)).await
    }

    /// Takes the next item if one is there.
    pub fn try_recv(&self) -> Option<(Channel, Value)> {
        let (i, v) = self.inner.lock().items.pop_front()?;
        Some((self.inner.channels[i].clone(), v))
    }

    /// How many items wait in the queue.
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    /// Whether no item waits in the queue.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn recv_deadline(&self, deadline: Option<Instant>) -> Result<(Channel, Value)> {
        loop {
            let listener = {
                let mut st = self.inner.lock();
                if let Some((i, v)) = st.items.pop_front() {
                    return Ok((self.inner.channels[i].clone(), v));
                }
                if st.open == 0 {
                    return Err(Error::EndOfChannel);
                }
                self.inner.event.listen()
            };
            match deadline {
                None => listener.await,
                Some(d) => {
                    if !crate::driver::listen_until(listener, d).await {
                        let mut st = self.inner.lock();
                        if let Some((i, v)) = st.items.pop_front() {
                            return Ok((self.inner.channels[i].clone(), v));
                        }
                        if st.open == 0 {
                            return Err(Error::EndOfChannel);
                        }
                        return Err(Error::Timeout);
                    }
                }
            }
        }
    }
}

/// Polls every future until all are done; their outputs in order. (Ours,
/// so that the crate needs no executor: the futures run concurrently inside
/// whatever executor awaits this one.)
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(outputs.iter_mut().filter_map(Option::take).collect())
        }
    })
    .await
}
