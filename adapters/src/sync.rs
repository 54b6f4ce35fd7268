//! Lock-or-recover: the one way this crate takes a lock or waits on a
//! condition variable.
//!
//! A panic inside a critical section poisons a `Mutex`. Every critical
//! section in this crate leaves its state consistent between statements
//! that can panic (user callbacks run outside the locks), so a poisoned lock
//! is still usable, and recovering it keeps one panicking callback from
//! taking the whole gateway down.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Locks `m`, recovering it if a panic poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `cv.wait(guard)`, recovering a poisoned lock.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// `cv.wait_timeout(guard, timeout)`, recovering a poisoned lock; the flag
/// says whether the wait timed out.
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> (MutexGuard<'a, T>, bool) {
    match cv.wait_timeout(guard, timeout) {
        Ok((g, t)) => (g, t.timed_out()),
        Err(e) => {
            let (g, t) = e.into_inner();
            (g, t.timed_out())
        }
    }
}
