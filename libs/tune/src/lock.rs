//! The crate's one lock helper: a poisoned lock (a panic while it was
//! held) is still used, because every critical section here leaves the
//! data consistent at each step (plain assignments and pushes).

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poison.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
