//! Blocking from sync code that may be running on an async worker.
//!
//! Sync actor methods run on the runtime's tokio workers, and sync code may
//! call `get_blocking`. Blocking a worker stalls every task queued on it;
//! tokio's `block_in_place` hands the worker's other tasks to another thread
//! first. It cannot do that on a current-thread runtime (there is no other
//! thread), where waiting for another task would deadlock: that is an
//! error, not a panic.

use std::future::Future;

use tokio::runtime::{Handle, RuntimeFlavor};

/// Where this thread is, as far as blocking goes.
enum Here {
    /// A plain thread (a CPU thread of the runtime, the user's own).
    Plain,
    /// A worker of a multi-thread runtime.
    MultiThread,
    /// The thread of a current-thread runtime.
    CurrentThread,
}

fn here() -> Here {
    match Handle::try_current() {
        Err(_) => Here::Plain,
        Ok(handle) => match handle.runtime_flavor() {
            RuntimeFlavor::CurrentThread => Here::CurrentThread,
            _ => Here::MultiThread,
        },
    }
}

/// Whether this thread may block waiting for other tasks (not on a
/// current-thread runtime).
pub(crate) fn can_block() -> bool {
    !matches!(here(), Here::CurrentThread)
}

/// Runs `f`, which may block, without stalling the worker's other tasks.
/// Where it cannot hand them off (a current-thread runtime), runs it inline.
pub(crate) fn block_in_place<R>(f: impl FnOnce() -> R) -> R {
    match here() {
        Here::MultiThread => tokio::task::block_in_place(f),
        Here::Plain | Here::CurrentThread => f(),
    }
}

/// Waits for `future` from sync code: on a multi-thread worker after handing
/// its tasks off, on a plain thread directly (driving it on `runtime`, so
/// that its timers work). `None` on a current-thread runtime, where the
/// future could never complete while this thread waits.
pub(crate) fn wait_for<F: Future>(runtime: &Handle, future: F) -> Option<F::Output> {
    match here() {
        Here::Plain => Some(runtime.block_on(future)),
        Here::MultiThread => Some(tokio::task::block_in_place(|| runtime.block_on(future))),
        Here::CurrentThread => None,
    }
}
