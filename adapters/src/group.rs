//! `Group`: a set of gateways with ids, started and terminated together.
//!
//! Gateways made through a group get the spec's `id=` or the next free
//! `gwN`. [`Group::makegateways`] starts many gateways at once (their
//! interpreters start in parallel, so sixteen take about as long as one or
//! two). [`Group::terminate`] asks every worker to exit at once (gateways
//! reached `via=` another gateway of the group before the gateways they go
//! through), waits for all of them against one deadline, then kills and
//! reaps what is left, so it returns within about the timeout whatever the
//! workers do. Dropping the group does the same with [`DROP_TIMEOUT`].
//!
//! As in execnet, a gateway that has ended (`exit`, `terminate`, its
//! worker's death) leaves the group: lookups, `len` and iteration only see
//! live gateways.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gateway::{Gateway, GatewayBuilder, DROP_TIMEOUT};
use crate::multi::{join_all, MultiChannel};
use crate::xspec::XSpec;

/// How much longer than its timeout [`Group::terminate`] may take at most:
/// killing, reaping and joining the gateway threads after the deadline.
pub const TERMINATE_SLACK: Duration = Duration::from_secs(5);

/// A set of gateways (async API; [`crate::blocking::Group`] is the blocking
/// face).
#[derive(Debug)]
pub struct Group {
    state: Mutex<GroupState>,
}

#[derive(Debug)]
struct GroupState {
    gateways: Vec<Gateway>,
    /// Ids handed out to gateways still starting.
    reserved: Vec<String>,
    next: usize,
    defaultspec: String,
    /// Bound on gateways starting at once in `makegateways` (`None`:
    /// unbounded).
    max_starts: Option<usize>,
}

impl GroupState {
    fn taken(&self, id: &str) -> bool {
        self.reserved.iter().any(|r| r == id)
            || self
                .gateways
                .iter()
                .any(|g| g.id() == id && !g.is_terminated())
    }

    /// Forgets gateways that have ended (execnet unregisters them on exit).
    fn prune(&mut self) {
        self.gateways.retain(|g| !g.is_terminated());
    }
}

impl Default for Group {
    fn default() -> Self {
        Group::new()
    }
}

impl Group {
    /// An empty group whose default spec is `popen`.
    pub fn new() -> Group {
        Group {
            state: Mutex::new(GroupState {
                gateways: Vec::new(),
                reserved: Vec::new(),
                next: 0,
                defaultspec: "popen".into(),
                max_starts: None,
            }),
        }
    }

    /// A group with a gateway for each spec, started at once (see
    /// [`makegateways`](Self::makegateways)). If one fails, the gateways
    /// already started are terminated and the first error is returned.
    pub async fn with_specs<I, S>(specs: I) -> Result<Group>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let group = Group::new();
        if let Err(e) = group.makegateways(specs).await {
            group.terminate(Some(Duration::from_secs(1))).await;
            return Err(e);
        }
        Ok(group)
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        crate::sync::lock(&self.state)
    }

    /// The spec used by `makegateway("")`.
    pub fn defaultspec(&self) -> String {
        self.lock().defaultspec.clone()
    }

    /// Sets the spec used by `makegateway("")`.
    pub fn set_defaultspec(&self, spec: &str) {
        self.lock().defaultspec = spec.to_string();
    }

    /// Bounds how many gateways [`makegateways`](Self::makegateways) starts
    /// at once: `Some(n)` starts them in batches of at most `n` (each batch
    /// finishes its handshakes before the next begins), so e.g. many ssh
    /// hosts behind one jump host stay under its `MaxStartups`. `None` (the
    /// default, as execnet does) starts them all at once. `Some(0)` is taken
    /// as `Some(1)`.
    pub fn set_max_concurrent_starts(&self, n: Option<usize>) {
        self.lock().max_starts = n.map(|n| n.max(1));
    }

    /// The bound set by
    /// [`set_max_concurrent_starts`](Self::set_max_concurrent_starts).
    pub fn max_concurrent_starts(&self) -> Option<usize> {
        self.lock().max_starts
    }

    /// Allocates the spec's id (`id=`, or the next free `gwN`) and reserves
    /// it until [`add`](Self::add) or [`release`](Self::release); errors on
    /// a duplicate id.
    pub(crate) fn prepare(&self, spec: &str) -> Result<XSpec> {
        let mut st = self.lock();
        let spec = if spec.trim().is_empty() {
            st.defaultspec.clone()
        } else {
            spec.to_string()
        };
        let mut x = XSpec::parse(&spec)?;
        match x.id() {
            Some(id) => {
                if st.taken(id) {
                    return Err(Error::Spec(format!("duplicate gateway id {id:?}")));
                }
            }
            None => loop {
                let id = format!("gw{}", st.next);
                st.next += 1;
                if !st.taken(&id) {
                    x.set_id(&id);
                    break;
                }
            },
        }
        if let Some(id) = x.id() {
            st.reserved.push(id.to_string());
        }
        Ok(x)
    }

    /// Gives up the reservation of a gateway that did not start.
    fn release(&self, spec: &XSpec) {
        if let Some(id) = spec.id() {
            let mut st = self.lock();
            if let Some(i) = st.reserved.iter().position(|r| r == id) {
                st.reserved.swap_remove(i);
            }
        }
    }

    pub(crate) fn add(&self, gw: Gateway) -> Result<Gateway> {
        let mut st = self.lock();
        if let Some(i) = st.reserved.iter().position(|r| r == gw.id()) {
            st.reserved.swap_remove(i);
        }
        st.prune();
        if st.gateways.iter().any(|g| g.id() == gw.id()) {
            return Err(Error::Spec(format!("duplicate gateway id {:?}", gw.id())));
        }
        st.gateways.push(gw.clone());
        Ok(gw)
    }

    /// Opens a gateway (the default spec if `spec` is empty) in this group.
    pub async fn makegateway(&self, spec: &str) -> Result<Gateway> {
        let x = self.prepare(spec)?;
        self.start_prepared(GatewayBuilder::from_spec(x)).await
    }

    /// Opens a gateway from a builder in this group (an id is allocated if
    /// the builder's spec has none).
    pub async fn makegateway_with(&self, mut builder: GatewayBuilder) -> Result<Gateway> {
        let x = self.prepare(&builder.spec_mut().to_string())?;
        *builder.spec_mut() = x;
        self.start_prepared(builder).await
    }

    async fn start_prepared(&self, mut builder: GatewayBuilder) -> Result<Gateway> {
        let spec = builder.spec_mut().clone();
        match builder.resolve_through(|id| self.get(id)).start().await {
            Ok(gw) => self.add(gw),
            Err(e) => {
                self.release(&spec);
                Err(e)
            }
        }
    }

    /// Opens a gateway for each spec, all at once: ids are allocated in
    /// order, the interpreters start in parallel, and the gateways join the
    /// group in the order of `specs`. Specs that go `via=` another gateway
    /// start after the others. On failure the gateways that did start stay
    /// in the group and the first error is returned.
    pub async fn makegateways<I, S>(&self, specs: I) -> Result<Vec<Gateway>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut prepared = Vec::new();
        for spec in specs {
            match self.prepare(spec.as_ref()) {
                Ok(x) => prepared.push(x),
                Err(e) => {
                    for x in &prepared {
                        self.release(x);
                    }
                    return Err(e);
                }
            }
        }
        let mut results: Vec<Option<Result<Gateway>>> = prepared.iter().map(|_| None).collect();
        // Two rounds: gateways reached via another one need it running.
        for via_round in [false, true] {
            let idx: Vec<usize> = (0..prepared.len())
                .filter(|&i| prepared[i].via().is_some() == via_round)
                .collect();
            // Each start is polled in turn: `start` spawns the interpreter
            // synchronously and then waits for its HELLO, so the spawns run
            // one after the other and the start-ups overlap.
            // The second round finds its via= gateways among the first's.
            let first: Vec<Gateway> = results
                .iter()
                .filter_map(|r| r.as_ref().and_then(|r| r.as_ref().ok()).cloned())
                .collect();
            let lookup = |id: &str| {
                self.get(id)
                    .or_else(|| first.iter().find(|g| g.id() == id).cloned())
            };
            // A bound starts the round in batches of at most `batch`.
            let batch = self.max_concurrent_starts().unwrap_or(usize::MAX).max(1);
            for chunk in idx.chunks(batch) {
                let started = join_all(
                    chunk
                        .iter()
                        .map(|&i| {
                            GatewayBuilder::from_spec(prepared[i].clone())
                                .resolve_through(lookup)
                                .start()
                        })
                        .collect(),
                )
                .await;
                for (&i, r) in chunk.iter().zip(started) {
                    results[i] = Some(r);
                }
            }
        }
        let mut gateways = Vec::new();
        let mut first_err = None;
        for (x, r) in prepared.iter().zip(results) {
            match r {
                Some(Ok(gw)) => match self.add(gw) {
                    Ok(gw) => gateways.push(gw),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                },
                Some(Err(e)) => {
                    self.release(x);
                    first_err.get_or_insert(e);
                }
                None => self.release(x),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(gateways),
        }
    }

    /// The gateway with this id.
    pub fn get(&self, id: &str) -> Option<Gateway> {
        let mut st = self.lock();
        st.prune();
        st.gateways.iter().find(|g| g.id() == id).cloned()
    }

    /// The `index`-th gateway in creation order.
    pub fn get_index(&self, index: usize) -> Option<Gateway> {
        let mut st = self.lock();
        st.prune();
        st.gateways.get(index).cloned()
    }

    /// Whether a gateway with this id is in the group.
    pub fn contains(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// The gateways, in creation order.
    pub fn gateways(&self) -> Vec<Gateway> {
        let mut st = self.lock();
        st.prune();
        st.gateways.clone()
    }

    /// How many gateways the group holds.
    pub fn len(&self) -> usize {
        let mut st = self.lock();
        st.prune();
        st.gateways.len()
    }

    /// Whether the group holds no gateway.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `source` on every gateway of the group; the channels, in the
    /// group's order, as one [`MultiChannel`].
    pub async fn remote_exec(&self, source: &str) -> Result<MultiChannel> {
        let mut channels = Vec::new();
        for gw in self.gateways() {
            channels.push(gw.remote_exec(source).await?);
        }
        Ok(MultiChannel::new(channels))
    }

    /// Terminates every gateway: all are asked to exit at once (gateways
    /// reached `via=` another one first), then waited for against one
    /// deadline (`timeout`, default [`DROP_TIMEOUT`]), then killed and
    /// reaped. Returns within `timeout` plus [`TERMINATE_SLACK`] whatever
    /// the workers do (ignore signals, are stopped, the transport is dead).
    /// The group is empty afterwards.
    pub async fn terminate(&self, timeout: Option<Duration>) {
        let gws: Vec<Gateway> = std::mem::take(&mut self.lock().gateways);
        terminate_all(&gws, timeout.unwrap_or(DROP_TIMEOUT)).await;
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

/// Orders gateways in waves: first those no other gateway goes through,
/// then those only the first wave went through, and so on (execnet exits
/// via-targets before their masters).
fn via_waves(gws: &[Gateway]) -> Vec<Vec<&Gateway>> {
    let mut left: Vec<&Gateway> = gws.iter().collect();
    let mut waves = Vec::new();
    while !left.is_empty() {
        let used: HashSet<&str> = left.iter().filter_map(|g| g.spec().via()).collect();
        let (wave, rest): (Vec<&Gateway>, Vec<&Gateway>) =
            left.into_iter().partition(|g| !used.contains(g.id()));
        if wave.is_empty() {
            // A cycle cannot be built, but never loop: take the rest at once.
            waves.push(rest);
            break;
        }
        waves.push(wave);
        left = rest;
    }
    waves
}

pub(crate) async fn terminate_all(gws: &[Gateway], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let waves = via_waves(gws);
    let last = waves.len().saturating_sub(1);
    for (n, wave) in waves.iter().enumerate() {
        for g in wave {
            g.inner.driver.begin_terminate(timeout);
        }
        if n < last {
            // Let this wave end before the gateways it goes through are
            // asked, but never past the common deadline.
            join_all(
                wave.iter()
                    .map(|g| g.inner.driver.wait_ended(deadline))
                    .collect(),
            )
            .await;
        }
    }
    finish_all(gws, deadline).await;
}

/// Finishes every termination against `deadline`, each on its own thread:
/// the kills after the deadline happen together, and a gateway whose
/// reaping is slow (a stuck transport) does not delay the others.
async fn finish_all(gws: &[Gateway], deadline: Instant) {
    let pending = Arc::new((AtomicUsize::new(gws.len()), Event::new()));
    let done = |p: &(AtomicUsize, Event)| {
        if p.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            p.1.notify(usize::MAX);
        }
    };
    for g in gws {
        let d = g.inner.driver.clone();
        if d.on_reader_thread() {
            // From a callback: the reader must go on reading.
            d.finish_terminate_detached(deadline);
            done(&pending);
            continue;
        }
        let p = pending.clone();
        let d2 = d.clone();
        let spawned = std::thread::Builder::new()
            .name("execnet-terminate".into())
            .spawn(move || {
                crate::driver::block_on(d2.finish_terminate(deadline));
                done(&p);
            });
        if spawned.is_err() {
            d.finish_terminate(deadline).await;
            done(&pending);
        }
    }
    loop {
        let listener = pending.1.listen();
        if pending.0.load(Ordering::Acquire) == 0 {
            break;
        }
        listener.await;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let gws: Vec<Gateway> = std::mem::take(&mut self.lock().gateways);
        if !gws.is_empty() {
            crate::driver::block_on(terminate_all(&gws, DROP_TIMEOUT));
        }
    }
}
