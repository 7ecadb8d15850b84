//! How long a function's sync bodies take: whether a waiter may run one
//! itself (see `Scheduler::help`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A body that takes at most this long is short: running it on the thread
/// that waits for it costs less than waking a thread on another vCPU.
const SHORT: Duration = Duration::from_micros(50);

/// How many short runs in a row make a function known to be short.
const TRUST: u64 = 16;

/// The record of one function's runs.
#[derive(Debug, Default)]
pub(crate) struct Timing {
    runs: AtomicU64,
    /// The run number of the last run that was not short.
    last_long: AtomicU64,
}

impl Timing {
    pub(crate) fn record(&self, took: Duration) {
        let run = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        if took > SHORT {
            self.last_long.store(run, Ordering::Relaxed);
        }
    }

    /// Whether its last `TRUST` runs were all short (a body that is
    /// sometimes long never is).
    pub(crate) fn known_short(&self) -> bool {
        let runs = self.runs.load(Ordering::Relaxed);
        runs >= TRUST && runs - self.last_long.load(Ordering::Relaxed) >= TRUST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_after_enough_short_runs_and_long_after_one_long_one() {
        let t = Timing::default();
        for _ in 0..TRUST - 1 {
            t.record(Duration::from_micros(5));
        }
        assert!(!t.known_short(), "too few runs to trust");
        t.record(Duration::from_micros(5));
        assert!(t.known_short());
        t.record(Duration::from_millis(3));
        assert!(!t.known_short(), "one long run ends the trust");
        for _ in 0..TRUST {
            t.record(Duration::from_micros(5));
        }
        assert!(t.known_short());
    }
}
