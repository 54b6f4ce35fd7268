//! The transport seam: anything that gives a byte stream to a worker.
//!
//! A [`Transport`] is a boxed reader, a boxed writer and an optional
//! [`PeerControl`]: for a subprocess that is the process (kill its group,
//! reap it with a timeout, the tail of its stderr); for a socket it is the
//! socket (shut it down). The driver (`crate::driver`) runs the protocol over
//! any transport the same way, so popen, ssh, socket and via gateways differ
//! only in how they produce one. A caller can build a `Transport` from its own
//! byte stream and hand it to
//! [`GatewayBuilder::start_with_transport`](crate::GatewayBuilder::start_with_transport).
//!
//! Bootstrapping (sending the worker source) is the transport's job, done
//! before the `Transport` is returned: the driver starts with the protocol's
//! first frame.

pub(crate) mod code_cache;
pub mod popen;
pub(crate) mod process;
pub mod socket;
pub mod ssh;
pub mod via;

use std::io::{Read, Write};
use std::time::Duration;

use crate::error::ExitStatus;

/// A byte stream to a worker, ready for the protocol.
pub struct Transport {
    /// Bytes from the worker. Read by the gateway's reader thread only.
    pub reader: Box<dyn Read + Send>,
    /// Bytes to the worker. Written by one thread at a time.
    pub writer: Box<dyn Write + Send>,
    /// Control over the peer, when there is one to control.
    pub control: Option<Box<dyn PeerControl>>,
    /// Human-readable description for logs and errors (`popen python3 …`).
    pub description: String,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("description", &self.description)
            .field("has_control", &self.control.is_some())
            .finish_non_exhaustive()
    }
}

/// Control over what is at the other end of a transport. Every method is
/// bounded in time and safe to call from any thread, repeatedly.
pub trait PeerControl: Send + Sync {
    /// The worker's OS process id, if it is a local process.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// Ends the peer by force: kills the process group (SIGKILL), or shuts
    /// the connection down. Makes the reader see end of stream soon.
    fn kill(&self);
    /// Waits at most `timeout` for the peer to end and reaps it. Returns its
    /// exit status once known (later calls return the same status).
    fn wait(&self, timeout: Duration) -> Option<ExitStatus>;
    /// The last bytes (lossy UTF-8) the peer wrote to stderr, if captured.
    /// Waits at most `timeout` for the stderr stream to reach its end first.
    fn stderr_tail(&self, timeout: Duration) -> String {
        let _ = timeout;
        String::new()
    }
}
