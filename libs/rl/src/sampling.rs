//! Asking one rollout worker for a fragment, and what to do when it fails:
//! a panic or a kill is retried on the restarted worker, a worker that does
//! not answer within `sample_timeout` is killed so that its supervisor
//! replaces it, and each worker may fail at most `max_worker_restarts`
//! times within `worker_restart_window` (OTP's restart intensity, per
//! worker) before training stops with an error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use troupe::gpu::Weights;
use troupe::{ActorError, ObjectRef};

use crate::config::PpoConfig;
use crate::error::RlError;
use crate::fragment::Fragment;
use crate::worker::RolloutWorkerHandle;

/// How long killing a hung worker may take before training stops.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// One worker's recent failures, for its restart intensity.
#[derive(Debug, Default)]
pub(crate) struct RestartWindow {
    recent: VecDeque<Instant>,
}

impl RestartWindow {
    /// Records a failure at `now`; false when that makes more than `max`
    /// within `window`.
    pub(crate) fn admit(&mut self, now: Instant, max: u32, window: Duration) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() <= max as usize
    }
}

/// A fragment from worker `index`, and how many failed attempts it took.
pub(crate) async fn sample_one(
    index: usize,
    worker: &RolloutWorkerHandle,
    weights: &ObjectRef<Weights>,
    version: u64,
    config: &PpoConfig,
    window: &mut RestartWindow,
) -> Result<(ObjectRef<Fragment>, u32), RlError> {
    let timeout = config.sample_timeout;
    let mut failures = 0u32;
    loop {
        let call = tokio::time::timeout(timeout, worker.sample(weights.clone(), version)).await;
        let cause = match call {
            Ok(Ok(Ok(fragment))) => return Ok((fragment, failures)),
            Ok(Ok(Err(err))) => return Err(err),
            Ok(Err(err @ ActorError::Panicked { .. })) => err.to_string(),
            // Killed under the call but restarting: ask again.
            Ok(Err(err @ ActorError::ActorDied { .. })) if !worker.is_dead() => err.to_string(),
            Ok(Err(err)) => {
                return Err(RlError::WorkerFailed {
                    worker: index,
                    attempts: failures + 1,
                    cause: err.to_string(),
                })
            }
            Err(_) => {
                metrics::counter!("troupe_rl_workers_replaced_total").increment(1);
                tracing::warn!(
                    worker = index,
                    after = ?timeout,
                    "rollout worker did not answer within sample_timeout (a hung environment?); killing it so that its supervisor replaces it"
                );
                if tokio::time::timeout(KILL_DEADLINE, worker.kill(false))
                    .await
                    .is_err()
                {
                    return Err(RlError::Timeout {
                        what: format!("killing hung rollout worker {index}"),
                        after: KILL_DEADLINE,
                    });
                }
                format!("no fragment within sample_timeout ({timeout:?}); the worker was replaced")
            }
        };
        failures += 1;
        metrics::counter!("troupe_rl_fragments_resampled_total").increment(1);
        let (max, period) = (config.max_worker_restarts, config.worker_restart_window);
        if !window.admit(Instant::now(), max, period) {
            return Err(RlError::WorkerFailed {
                worker: index,
                attempts: failures,
                cause: format!(
                    "{cause} (more than max_worker_restarts = {max} failures within worker_restart_window = {period:?})"
                ),
            });
        }
        tracing::warn!(worker = index, failures, cause = %cause, "rollout worker failed mid-fragment; sampling it again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_within_the_window_only() {
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert!(w.admit(t0, 2, 10 * s));
        assert!(w.admit(t0 + s, 2, 10 * s));
        assert!(!w.admit(t0 + 2 * s, 2, 10 * s), "a third within 10 s");
        // Spread out, any number is fine.
        let mut w = RestartWindow::default();
        for i in 0..20 {
            assert!(w.admit(t0 + i * 11 * s, 2, 10 * s), "failure {i}");
        }
        // None allowed.
        assert!(!RestartWindow::default().admit(t0, 0, s));
    }
}
