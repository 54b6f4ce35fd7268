//! The reader thread's wake-up descriptor: an eventfd that the reader
//! thread polls together with the transport's descriptor, so that it sleeps
//! until input arrives or a blocking receiver wants the read token, instead
//! of waking every few milliseconds to look (50 wake-ups a second per idle
//! gateway did that before).
//!
//! Protocol, all under the driver's state lock: `State::reader_has_token`
//! is set while the reader thread holds the read token; whoever registers
//! a candidate then signals the descriptor, once (`State::woken`); the
//! reader thread drains it where it looks for candidates after each read
//! or wake-up (and gives the token away if one is still there). So the
//! descriptor is readable exactly while `woken` is set, a candidate that
//! registers just before the poll still ends it (the poll is
//! level-triggered), the poll itself takes no lock (a sender busy under
//! the lock never delays the reader's next read), and a leader's poll never
//! sees a stale wake-up (it does not poll this descriptor at all).
//!
//! The descriptor is close-on-exec and never handed to anyone: no worker
//! inherits it (popen, ssh, the fork server), and the fork transport's
//! `SCM_RIGHTS` passes only the protocol pipes it names.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// One gateway's wake-up descriptor.
pub(super) struct Wake(OwnedFd);

impl Wake {
    /// A fresh, unsignalled wake-up descriptor; `None` where none can be
    /// had (out of descriptors, or no eventfd on this system): the reader
    /// thread then looks for candidates every `READER_POLL`, as before.
    pub(super) fn new() -> Option<Wake> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use rustix::event::{eventfd, EventfdFlags};
            match eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK) {
                Ok(fd) => Some(Wake(fd)),
                Err(e) => {
                    tracing::debug!(error = %e, "no eventfd; the reader thread polls");
                    None
                }
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            None
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Makes the descriptor readable. Called at most once between two
    /// [`drain`](Self::drain)s (`State::woken`), so the counter never
    /// nears its limit and the non-blocking write cannot fail for room.
    pub(super) fn signal(&self) {
        if let Err(e) = rustix::io::write(&self.0, &1u64.to_ne_bytes()) {
            // Cannot happen for an eventfd with room; the reader still
            // sees the candidate at its next input.
            tracing::debug!(error = %e, "wake-up write failed");
        }
    }

    /// Makes the descriptor unreadable again (reads the counter to zero).
    pub(super) fn drain(&self) {
        let mut counter = [0u8; 8];
        // Non-blocking: nothing to read (EAGAIN) leaves nothing to drain.
        let _ = rustix::io::read(&self.0, &mut counter);
    }
}
