//! A trainer's rollout workers: where they start (children of a local
//! supervisor, or actors spawned on the cluster's nodes by their registered
//! constructor, into a placement group's bundles or wherever the resources
//! are), a round of sampling over all of them, and their stop.

use super::*;

impl Trainer {
    /// The workers as children of a local supervisor (any maker).
    pub(super) async fn spawn_local(
        rt: &Runtime,
        env: &EnvMaker,
        config: &PpoConfig,
        shape: &PolicyShape,
        worker_resources: Resources,
    ) -> Result<(SupervisorRef, Vec<RolloutWorkerHandle>), RlError> {
        // Each worker may fail max_worker_restarts times per window (the
        // trainer counts, per worker, and stops with an error past that);
        // the supervisor's intensity is the same budget for all of them
        // together, plus the failure that stops training, so that it never
        // gives up first. A child's own cap would count over its whole life.
        let mut tree = SupervisorSpec::new("rl-rollout-workers", Strategy::OneForOne).intensity(
            Intensity::new(
                config
                    .max_worker_restarts
                    .saturating_add(1)
                    .saturating_mul(config.num_workers as u32),
                config.worker_restart_window,
            ),
        );
        let mut workers = Vec::with_capacity(config.num_workers);
        for index in 0..config.num_workers {
            let setup = LocalSetup {
                index,
                rt: rt.clone(),
                maker: env.clone(),
                envs: config.envs_per_worker,
                fragment_len: config.fragment_len,
                shape: shape.clone(),
                seed: config.seed,
                incarnations: Arc::new(AtomicU64::new(0)),
            };
            let options = ActorOptions::new()
                .max_restarts(None)
                .resources(worker_resources.clone());
            let (child, handle) = rt
                .actor_child(options, move || RolloutWorker::local(setup.clone()))
                .map_err(|err| match err {
                    SpawnError::ResourcesBusy { .. } | SpawnError::Infeasible { .. } => RlError::Config {
                        field: "num_cpus_per_worker",
                        reason: format!(
                            "× num_workers ({} × {}) do not fit this node ({err}); lower num_workers or num_cpus_per_worker",
                            config.num_cpus_per_worker, config.num_workers
                        ),
                    },
                    other => RlError::Spawn(other),
                })?;
            tree = tree.child(child);
            workers.push(handle);
        }
        Ok((rt.spawn_supervisor(tree).await?, workers))
    }

    /// The workers on the nodes of the cluster, each through its registered
    /// constructor (the environment by name), placed by resources or into
    /// a placement group of one bundle per worker.
    pub(super) async fn spawn_on_cluster(
        rt: &Runtime,
        env: &EnvMaker,
        config: &PpoConfig,
        shape: &PolicyShape,
        worker_resources: Resources,
    ) -> Result<
        (
            Vec<RolloutWorkerHandle>,
            Vec<RemoteSlot>,
            Option<PlacementGroup>,
        ),
        RlError,
    > {
        if !env.is_registered() {
            return Err(RlError::EnvNotRegistered {
                env: env.name().to_owned(),
            });
        }
        let group =
            match config.worker_placement {
                WorkerPlacement::Resources => None,
                WorkerPlacement::Group(strategy) => {
                    let bundles = vec![worker_resources.clone(); config.num_workers];
                    let group = rt
                        .placement_group(PlacementGroupOptions::new(bundles).strategy(strategy))
                        .map_err(|err| RlError::Placement {
                            reason: format!("the placement group is invalid: {err}"),
                        })?;
                    if let Err(err) = group.ready(config.placement_timeout).await {
                        rt.remove_placement_group(&group).await;
                        return Err(RlError::Placement {
                            reason: format!(
                            "{err} ({} bundles of {} CPU(s), {strategy:?}; placement_timeout {:?})",
                            config.num_workers, config.num_cpus_per_worker, config.placement_timeout
                        ),
                        });
                    }
                    Some(group)
                }
            };
        let slots: Vec<RemoteSlot> = (0..config.num_workers)
            .map(|index| {
                let mut options = ActorOptions::new()
                    .max_restarts(0)
                    .resources(worker_resources.clone());
                if let Some(group) = &group {
                    options = options.placement_group(group, Some(index));
                }
                RemoteSlot {
                    setup: WorkerSetup {
                        env: env.name().to_owned(),
                        index,
                        envs: config.envs_per_worker,
                        fragment_len: config.fragment_len,
                        shape: shape.clone(),
                        seed: config.seed,
                        incarnation: 0,
                    },
                    options,
                    respawns: 0,
                }
            })
            .collect();
        // Into a group: each to its bundle, all at once. By resources: one
        // after another, so that each placement sees the last one's.
        let spawned = if group.is_some() {
            futures::future::join_all(slots.iter().map(|slot| spawn_on_cluster(rt, slot, config)))
                .await
        } else {
            let mut spawned = Vec::with_capacity(slots.len());
            for slot in &slots {
                let result = spawn_on_cluster(rt, slot, config).await;
                let failed = result.is_err();
                spawned.push(result);
                if failed {
                    break;
                }
            }
            spawned
        };
        let mut workers = Vec::with_capacity(spawned.len());
        let mut failed = None;
        for result in spawned {
            match result {
                Ok(worker) => workers.push(worker),
                Err(err) => failed = failed.or(Some(err)),
            }
        }
        if let Some(err) = failed {
            stop_all(&workers).await;
            if let Some(group) = &group {
                rt.remove_placement_group(group).await;
            }
            return Err(err);
        }
        let nodes: Vec<_> = workers.iter().map(|w| w.info().node).collect();
        tracing::info!(?nodes, "rollout workers started on the cluster");
        Ok((workers, slots, group))
    }
}

/// Fragments of one batch, and how they were sampled.
pub(super) struct Batch {
    pub(super) fragments: Vec<ObjectRef<Fragment>>,
    /// Failed attempts it took (fragments sampled again).
    pub(super) resampled: u64,
    /// How long sampling took.
    pub(super) sampled_in: Duration,
    /// The weights' version the workers acted with.
    pub(super) version: u64,
}

/// Asks every worker for a fragment with `weights`; a worker that panics,
/// is killed or hangs past `sample_timeout` is restarted (replaced) by its
/// supervisor, or respawned on the cluster, and asked again, as long as it
/// failed at most `max_worker_restarts` times within
/// `worker_restart_window`; one that fails more often, or is dead for
/// good, is an error.
pub(super) async fn sample_all(
    rt: &Runtime,
    workers: &mut [RolloutWorkerHandle],
    remote: &mut [RemoteSlot],
    restarts: &mut [RestartWindow],
    weights: &ObjectRef<Weights>,
    version: u64,
    config: &PpoConfig,
) -> Result<Batch, RlError> {
    let began = Instant::now();
    let mut remote = remote.iter_mut();
    let calls =
        workers
            .iter_mut()
            .zip(restarts.iter_mut())
            .enumerate()
            .map(|(index, (worker, window))| {
                let remote = remote.next().map(|slot| (rt, slot));
                sample_one(index, worker, remote, weights, version, config, window)
            });
    let results = futures::future::join_all(calls).await;
    let mut fragments = Vec::with_capacity(results.len());
    let mut resampled = 0;
    for result in results {
        let (fragment, failures) = result?;
        fragments.push(fragment);
        resampled += u64::from(failures);
    }
    Ok(Batch {
        fragments,
        resampled,
        sampled_in: began.elapsed(),
        version,
    })
}

/// Kills workers on the cluster (each within a deadline: a node that does
/// not answer is left to kill its actors when its owner is gone).
pub(super) async fn stop_all(workers: &[RolloutWorkerHandle]) {
    futures::future::join_all(
        workers
            .iter()
            .map(|w| tokio::time::timeout(Duration::from_secs(5), w.kill(true))),
    )
    .await;
}
