//! Asking one rollout worker for a fragment, and what to do when it fails:
//! a panic or a kill is retried on the restarted worker, a worker that does
//! not answer within `sample_timeout` is killed so that its supervisor
//! replaces it, and each worker may fail at most `max_worker_restarts`
//! times within `worker_restart_window` (OTP's restart intensity, per
//! worker) before training stops with an error.
//!
//! A worker on another node is not supervised here: when it fails (its
//! node died, it panicked, it hung), the trainer spawns a new one with the
//! next incarnation, on a node the cluster picks (or in the worker's
//! bundle of the placement group), within the same budget, and asks it for
//! the fragment. Its fragment is copied into this node's store as soon as
//! it arrives, so that losing the worker's node later loses nothing the
//! learner still needs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use troupe::gpu::Weights;
use troupe::{ActorError, ActorOptions, ObjectRef, Runtime};

use crate::config::PpoConfig;
use crate::error::RlError;
use crate::fragment::Fragment;
use crate::worker::{RolloutWorker, RolloutWorkerHandle, WorkerSetup};

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

/// How to spawn a worker on the cluster again: what it is built from, and
/// where it may go.
#[derive(Clone, Debug)]
pub(crate) struct RemoteSlot {
    pub(crate) setup: WorkerSetup,
    pub(crate) options: ActorOptions,
    /// Respawns so far (the high half of the incarnation).
    pub(crate) respawns: u32,
}

/// Spawns worker `slot` on the cluster, within `placement_timeout`.
pub(crate) async fn spawn_on_cluster(
    rt: &Runtime,
    slot: &RemoteSlot,
    config: &PpoConfig,
) -> Result<RolloutWorkerHandle, RlError> {
    let index = slot.setup.index;
    let spawn = RolloutWorker::remote(rt, slot.options.clone()).on_node(slot.setup.clone());
    match tokio::time::timeout(config.placement_timeout, spawn).await {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(err)) => Err(RlError::Placement {
            reason: format!(
                "could not spawn rollout worker {index}: {err} (workers_on_cluster needs a runtime that joined a cluster, through Config::connect and Troupe's `cluster` feature, and a live node with {} CPU(s) free per worker; or leave workers_on_cluster off)",
                config.num_cpus_per_worker
            ),
        }),
        Err(_) => Err(RlError::Placement {
            reason: format!(
                "rollout worker {index} was not placed within placement_timeout ({:?}): no live node has {} free CPU(s) for it; add nodes, lower num_cpus_per_worker, or raise placement_timeout",
                config.placement_timeout, config.num_cpus_per_worker
            ),
        }),
    }
}

/// A fragment from worker `index`, and how many failed attempts it took.
/// `remote` is set for a worker on the cluster: the trainer respawns it
/// (replacing `worker`) instead of a supervisor restarting it.
pub(crate) async fn sample_one(
    index: usize,
    worker: &mut RolloutWorkerHandle,
    mut remote: Option<(&Runtime, &mut RemoteSlot)>,
    weights: &ObjectRef<Weights>,
    version: u64,
    config: &PpoConfig,
    window: &mut RestartWindow,
) -> Result<(ObjectRef<Fragment>, u32), RlError> {
    let timeout = config.sample_timeout;
    let mut failures = 0u32;
    loop {
        let call = tokio::time::timeout(timeout, worker.sample(weights.clone(), version)).await;
        let cause = match (call, &remote) {
            (Ok(Ok(Ok(fragment))), None) => return Ok((fragment, failures)),
            (Ok(Ok(Ok(fragment))), Some((rt, _))) => match keep_here(rt, &fragment).await {
                Ok(kept) => return Ok((kept, failures)),
                Err(err) => format!("its fragment was lost before it was read: {err}"),
            },
            (Ok(Ok(Err(err))), _) => return Err(err.into()),
            (Ok(Err(err @ ActorError::BadCall { .. })), Some(_)) => {
                return Err(RlError::WorkerFailed {
                    worker: index,
                    attempts: failures + 1,
                    cause: err.to_string(),
                })
            }
            // On the cluster, any other failure (its node died, it
            // panicked, it was cut off) is a loss: respawn it below.
            (Ok(Err(err)), Some(_)) => err.to_string(),
            (Ok(Err(err @ ActorError::Panicked { .. })), None) => err.to_string(),
            // Killed under the call but restarting: ask again.
            (Ok(Err(err @ ActorError::ActorDied { .. })), None) if !worker.is_dead() => {
                err.to_string()
            }
            (Ok(Err(err)), None) => {
                return Err(RlError::WorkerFailed {
                    worker: index,
                    attempts: failures + 1,
                    cause: err.to_string(),
                })
            }
            (Err(_), Some(_)) => {
                tracing::warn!(
                    worker = index,
                    after = ?timeout,
                    "rollout worker on the cluster did not answer within sample_timeout (a hung environment, an unreachable node?); killing it and spawning another"
                );
                if tokio::time::timeout(KILL_DEADLINE, worker.kill(true))
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        worker = index,
                        "killing the hung rollout worker did not finish within {KILL_DEADLINE:?}; replacing it anyway"
                    );
                }
                format!("no fragment within sample_timeout ({timeout:?}); the worker was replaced")
            }
            (Err(_), None) => {
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
        if let Some((rt, slot)) = remote.as_mut() {
            // Make sure the old one is gone (a no-op when its node died),
            // then start the next incarnation on a node the cluster picks.
            let _ = tokio::time::timeout(KILL_DEADLINE, worker.kill(true)).await;
            slot.respawns = slot.respawns.saturating_add(1);
            slot.setup.incarnation = u64::from(slot.respawns) << 32;
            *worker =
                spawn_on_cluster(rt, slot, config)
                    .await
                    .map_err(|err| RlError::WorkerFailed {
                        worker: index,
                        attempts: failures,
                        cause: format!("{cause}; then {err}"),
                    })?;
            metrics::counter!("troupe_rl_workers_replaced_total").increment(1);
            tracing::warn!(
                worker = index,
                failures,
                cause = %cause,
                node = ?worker.info().node,
                "rollout worker on the cluster lost mid-fragment; respawned it, sampling its fragment again"
            );
            continue;
        }
        tracing::warn!(worker = index, failures, cause = %cause, "rollout worker failed mid-fragment; sampling it again");
    }
}

/// A copy of a worker's fragment in this node's store: the learner reads
/// it from here even if the worker's node dies in the meantime.
async fn keep_here(
    rt: &Runtime,
    fragment: &ObjectRef<Fragment>,
) -> Result<ObjectRef<Fragment>, troupe::ObjectError> {
    let fetched = rt.get(fragment).await?;
    rt.put(Fragment::clone(&fetched)).await
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
