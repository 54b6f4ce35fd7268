//! Run Python code in other interpreters — subprocesses, ssh hosts, socket
//! servers, or any of these reached through another gateway — and talk to
//! it over multiplexed channels, without installing anything there first. A
//! Rust reimplementation of the host side of Python's
//! [execnet](https://execnet.readthedocs.io): remote snippets written for
//! execnet run unchanged.
//!
//! # Layout
//!
//! - [`error`]: the one [`Error`] enum and [`RemoteError`] (remote
//!   tracebacks with their exception type and message).
//! - [`xspec`]: [`XSpec`], execnet's gateway spec strings
//!   (`popen//python=…//chdir=…//env:NAME=…`), parsed and printed.
//! - [`transport`]: the seam between "a byte stream to a worker" and the
//!   protocol; [`transport::popen`] starts a local interpreter in its own
//!   process group and sends it the worker (compiled once per interpreter
//!   and process, then loaded: `transport/code_cache/`), [`transport::ssh`] does the same
//!   through the system `ssh`, [`transport::socket`] connects to
//!   `bootstrap/socketserver.py` with a token, [`transport::via`] relays a
//!   target's bytes through a channel of another gateway.
//! - `driver` (private): one protocol session (`execnet-core`) per gateway,
//!   driven by a reader thread and a flusher; the shared state both APIs
//!   wait on.
//! - `gateway`: [`Gateway`], [`GatewayBuilder`], [`makegateway`],
//!   [`RemoteInfo`], [`RemoteStatus`].
//! - `channel`: [`Channel`] — send, receive, callbacks, channels inside
//!   values.
//! - `group`: [`Group`] — ids, concurrent start and termination of many
//!   gateways at once.
//! - `multi`: [`MultiChannel`] (one operation on many channels) and
//!   [`ReceiveQueue`] (their items merged, with endmarkers).
//! - `rsync`: [`RSync`] — a directory tree to many gateways at once; the
//!   remote side is `bootstrap/rsync_remote.py`.
//! - [`io`]: `Read`/`Write` over a channel (execnet's `makefile`).
//! - [`blocking`]: the same types with blocking methods.
//! - The `execnet` command line (`execnet run`, `execnet rsync`) is its own
//!   crate, `adapters/cli/` (`execnet-cli`), so this library has no CLI
//!   dependencies.
//! - `examples/`: remote pid, file server, task farm, a quick bench.
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), execnet::Error> {
//! futures_lite::future::block_on(async {
//!     let gw = execnet::makegateway("popen").await?;
//!     let ch = gw
//!         .remote_exec(
//!             r#"
//!             for item in channel:
//!                 channel.send(item * 2)
//!             "#,
//!         )
//!         .await?;
//!     ch.send(&21).await?;
//!     let answer: i64 = ch.receive().await?;
//!     assert_eq!(answer, 42);
//!     ch.close()?;
//!     gw.exit().await
//! })
//! # }
//! ```
//!
//! The same without async, from [`blocking`]:
//!
//! ```
//! let gw = execnet::blocking::makegateway("popen//python=python3")?;
//! let ch = gw.remote_exec("import sys; channel.send(list(sys.version_info[:2]))")?;
//! let version: Vec<u32> = ch.receive()?;
//! println!("remote Python {}.{}", version[0], version[1]);
//! # Ok::<(), execnet::Error>(())
//! ```
//!
//! # Waiting and termination
//!
//! Every wait has a bounded form (`receive_timeout`, `waitclose(Some(t))`,
//! `terminate(Some(t))`). Termination always finishes: `exit()` sends
//! TERMINATE and waits at most [`EXIT_TIMEOUT`]; `terminate(timeout)` then
//! kills the worker's process group and reaps it; dropping the last handle
//! of a gateway (channels are handles too) does the same with
//! [`DROP_TIMEOUT`]. A worker that dies ends every channel at once with
//! [`Error::WorkerDied`] carrying its exit status and the tail of its stderr.
//!
//! # Executors
//!
//! The async methods only wait on `event-listener` notifications and
//! `async-io` timers, so they run under any executor (smol, tokio,
//! async-std, `futures::executor`, a plain `block_on`). I/O happens on a
//! reader thread per gateway; a caller writes its own bytes to the
//! transport when no one else is writing (a short blocking write into a
//! pipe), otherwise a flusher thread does.
//!
//! # Remote output
//!
//! What remote code prints (fd 1 and 2) is forwarded to our stderr by
//! default (`stdout=forward`), or to a callback
//! ([`GatewayBuilder::on_output`]); `stdout=inherit` lets the worker write
//! to our stderr directly and `stdout=discard` drops it.
//!
//! # Debugging
//!
//! The crate logs with `tracing` (a span per gateway). Setting
//! `EXECNET_DEBUG=1` also switches on the worker's own traces.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod blocking;
mod channel;
mod driver;
pub mod error;
mod gateway;
mod group;
pub mod io;
mod multi;
mod relay;
mod rsync;
mod sync;
pub mod transport;
pub mod xspec;

pub use channel::Channel;
pub use error::{Error, ExitStatus, RemoteError, Result};
pub use execnet_core::{from_value, to_value, BigInt, ChannelRef, Config, Value};
pub use gateway::{
    makegateway, Gateway, GatewayBuilder, RemoteInfo, RemoteStatus, VersionInfo, DROP_TIMEOUT,
    EXIT_TIMEOUT, STARTUP_TIMEOUT,
};
pub use group::{Group, TERMINATE_SLACK};
pub use multi::{MultiChannel, ReceiveQueue};
pub use rsync::{Phase, Progress, RSync, Stats, TargetOptions, CHUNK};
pub use xspec::{ExecModel, OutputMode, XSpec};
