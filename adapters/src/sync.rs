//! Lock-or-recover: the one way this crate takes a lock or waits on a
//! condition variable; and [`with_flag`], the one way it sets a
//! thread-local flag around a wait.
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

/// Runs `f` with the thread-local `flag` set, and restores its earlier
/// value afterwards (also when `f` panics): how a wait marks what its
/// thread may do (lead the reading, write inline, start inline).
pub(crate) fn with_flag<R>(
    flag: &'static std::thread::LocalKey<std::cell::Cell<bool>>,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore(&'static std::thread::LocalKey<std::cell::Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|c| c.replace(true)));
    f()
}
