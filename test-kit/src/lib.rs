//! Helpers shared by Troupe's tests, in every crate: a test that waits
//! waits on observable state, with a deadline, and fails saying what it
//! waited for.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use troupe_test_kit::{eventually, within};
//!
//! let done = AtomicBool::new(false);
//! within("a quick step", async { done.store(true, Ordering::SeqCst) }).await;
//! eventually("the step is done", || done.load(Ordering::SeqCst)).await;
//! # }
//! ```

// The lint wall (CI denies warnings), as in every crate.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::dbg_macro, clippy::todo)]

pub mod fuzz;

use std::future::Future;
use std::time::Duration;

/// How long a wait may take before the test fails, unless it says
/// otherwise.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(2);

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(DEADLINE, what, check).await
}

/// Polls `check` until it holds, failing the test after `deadline`.
pub async fn eventually_within(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + deadline;
    while !check() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "not within {deadline:?}: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `fut`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(DEADLINE, what, fut).await
}

/// Awaits `fut`, failing the test after `deadline`.
pub async fn within_for<T>(deadline: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(out) => out,
        Err(_) => panic!("not within {deadline:?}: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[should_panic(expected = "not within 20ms: never")]
    async fn eventually_fails_saying_what_it_waited_for() {
        eventually_within(Duration::from_millis(20), "never", || false).await;
    }

    #[tokio::test]
    #[should_panic(expected = "not within 20ms: a future that never ends")]
    async fn within_fails_saying_what_it_waited_for() {
        within_for(
            Duration::from_millis(20),
            "a future that never ends",
            std::future::pending::<()>(),
        )
        .await;
    }
}
