//! `Group`: a set of gateways with ids, terminated together.
//!
//! Gateways made through a group get the spec's `id=` or the next free
//! `gwN`. [`Group::terminate`] asks every worker to exit at once, waits for
//! all of them against one deadline, then kills and reaps what is left, so
//! it returns within about the timeout whatever the workers do. Dropping the
//! group does the same with [`DROP_TIMEOUT`].

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gateway::{Gateway, GatewayBuilder, DROP_TIMEOUT};
use crate::xspec::XSpec;

/// A set of gateways (async API; [`crate::blocking::Group`] is the blocking
/// face).
#[derive(Debug)]
pub struct Group {
    state: Mutex<GroupState>,
}

#[derive(Debug)]
struct GroupState {
    gateways: Vec<Gateway>,
    next: usize,
    defaultspec: String,
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
                next: 0,
                defaultspec: "popen".into(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spec used by `makegateway("")`.
    pub fn defaultspec(&self) -> String {
        self.lock().defaultspec.clone()
    }

    /// Sets the spec used by `makegateway("")`.
    pub fn set_defaultspec(&self, spec: &str) {
        self.lock().defaultspec = spec.to_string();
    }

    /// Allocates the spec's id (`id=`, or the next free `gwN`); errors on a
    /// duplicate id.
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
                if st.gateways.iter().any(|g| g.id() == id) {
                    return Err(Error::Spec(format!("duplicate gateway id {id:?}")));
                }
            }
            None => loop {
                let id = format!("gw{}", st.next);
                st.next += 1;
                if !st.gateways.iter().any(|g| g.id() == id) {
                    x.set_id(&id);
                    break;
                }
            },
        }
        Ok(x)
    }

    pub(crate) fn add(&self, gw: Gateway) -> Result<Gateway> {
        let mut st = self.lock();
        if st.gateways.iter().any(|g| g.id() == gw.id()) {
            return Err(Error::Spec(format!("duplicate gateway id {:?}", gw.id())));
        }
        st.gateways.push(gw.clone());
        Ok(gw)
    }

    /// Opens a gateway (the default spec if `spec` is empty) in this group.
    pub async fn makegateway(&self, spec: &str) -> Result<Gateway> {
        let x = self.prepare(spec)?;
        let gw = GatewayBuilder::from_spec(x)
            .resolve_through(|id| self.get(id))
            .start()
            .await?;
        self.add(gw)
    }

    /// Opens a gateway from a builder in this group (an id is allocated if
    /// the builder's spec has none).
    pub async fn makegateway_with(&self, mut builder: GatewayBuilder) -> Result<Gateway> {
        let x = self.prepare(&builder.spec_mut().to_string())?;
        *builder.spec_mut() = x;
        let gw = builder.resolve_through(|id| self.get(id)).start().await?;
        self.add(gw)
    }

    /// The gateway with this id.
    pub fn get(&self, id: &str) -> Option<Gateway> {
        self.lock().gateways.iter().find(|g| g.id() == id).cloned()
    }

    /// The gateways, in creation order.
    pub fn gateways(&self) -> Vec<Gateway> {
        self.lock().gateways.clone()
    }

    /// How many gateways the group holds.
    pub fn len(&self) -> usize {
        self.lock().gateways.len()
    }

    /// Whether the group holds no gateway.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Terminates every gateway: all are asked to exit at once, then waited
    /// for against one deadline (`timeout`, default [`DROP_TIMEOUT`]), then
    /// killed and reaped. The group is empty afterwards.
    pub async fn terminate(&self, timeout: Option<Duration>) {
        let gws: Vec<Gateway> = std::mem::take(&mut self.lock().gateways);
        terminate_all(&gws, timeout.unwrap_or(DROP_TIMEOUT)).await;
    }
}

pub(crate) async fn terminate_all(gws: &[Gateway], timeout: Duration) {
    for g in gws {
        g.inner.driver.begin_terminate(timeout);
    }
    let deadline = Instant::now() + timeout;
    for g in gws {
        let d = &g.inner.driver;
        if d.on_reader_thread() {
            d.finish_terminate_detached(deadline);
        } else {
            d.finish_terminate(deadline).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let gws: Vec<Gateway> = std::mem::take(&mut self.lock().gateways);
        if !gws.is_empty() {
            futures_lite::future::block_on(terminate_all(&gws, DROP_TIMEOUT));
        }
    }
}
