//! The worker group on a cluster ([`Trainer::fit_registered`] on a runtime
//! that joined one): workers on any node, built there from the loop's
//! registered name, their collectives over the transport (`mesh.rs`), and
//! rank 0's reports and checkpoints sent back to the trainer.
//!
//! Message flow of an attempt:
//! 1. The trainer reserves one bundle per worker (a placement group) and
//!    starts a one-for-all supervisor here whose children are
//!    [`ClusterWorker`]s on the bundles' nodes (`Runtime::remote_child`).
//! 2. `prepare(attempt)` on each worker: it starts its [`Inbox`] on its
//!    node and answers with the inbox and its incarnation.
//! 3. `run(job)` on each: every inbox, the [`ReportSink`] (an actor here),
//!    and the checkpoint to start from (read here, sent as an object).
//!    The ranks exchange chunks inbox to inbox; rank 0's `report` calls
//!    `ReportSink::record`, which writes the checkpoint here, before any
//!    rank leaves `report`.
//! 4. A failure (a loop's error or panic, or a worker's node dying) ends
//!    the attempt: the trainer aborts every inbox at the first failed
//!    `run`, so the others return; it kills the failing worker if it still
//!    lives, and the supervisor restarts the whole group (the placement
//!    group reserves a dead node's bundles again elsewhere). Step 2 then
//!    waits for every worker's new incarnation, and the next attempt starts
//!    from the last checkpoint.
//!
//! [`Trainer::fit_registered`]: crate::Trainer::fit_registered

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tch::Device;
use tracing::Instrument;
use troupe::prelude::*;
use troupe::supervisor::SupervisorRef;

use crate::checkpoint::{self, Checkpoint};
use crate::collective::Collectives;
use crate::config::Settings;
use crate::context::{Reporter, StartFrom, WorkerContext};
use crate::error::TrainError;
use crate::mesh::{Inbox, InboxHandle, InboxState, Mesh};
use crate::registry::{self, LoopFnPtr};
use crate::report::Metrics;
use crate::trainer::{count_failure, primary_failure, run_loop, Failure, RunState};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where rank 0's reports arrive, in the trainer's process.
pub(crate) struct ReportSink {
    state: Arc<RunState>,
}

#[troupe::actor]
impl ReportSink {
    /// Rank 0's report: into the history, its checkpoint (if any) read
    /// from rank 0's node and written here.
    #[blocking]
    pub(crate) fn record(
        &mut self,
        iteration: u64,
        metrics: Metrics,
        checkpoint: Option<ObjectRef<Blob>>,
    ) -> Result<(), String> {
        let checkpoint = match checkpoint {
            None => None,
            Some(r) => {
                let rt = Runtime::current().ok_or("the report sink runs outside a runtime")?;
                let bytes = rt
                    .get_blocking(&r)
                    .map_err(|e| format!("reading rank 0's checkpoint: {e}"))?;
                Some(Checkpoint::decode(&bytes).map_err(|e| e.to_string())?)
            }
        };
        self.state
            .record(iteration, metrics, checkpoint)
            .map_err(|e| e.to_string())
    }
}

/// A worker ready for an attempt: which incarnation, and its inbox.
#[derive(Serialize, Deserialize)]
pub(crate) struct Prepared {
    incarnation: u64,
    inbox: InboxHandle,
}

/// What one attempt's `run` needs.
#[derive(Serialize, Deserialize)]
pub(crate) struct Job {
    attempt: u32,
    iteration: u64,
    peers: Vec<InboxHandle>,
    settings: Settings,
    sink: ReportSinkHandle,
    checkpoint: Option<ObjectRef<Blob>>,
    loop_config: Option<String>,
}

/// One worker of a group on a cluster.
pub(crate) struct ClusterWorker {
    rank: usize,
    train_loop: Result<LoopFnPtr, String>,
    /// Tells a restarted worker from the one before.
    incarnation: u64,
    inbox: Option<(InboxHandle, Arc<InboxState>)>,
}

fn incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[troupe::actor]
impl ClusterWorker {
    /// Rank `rank`, running the loop registered as `train_loop` (an unknown
    /// name is the error of its first `run`).
    pub(crate) fn on_node(train_loop: String, rank: usize) -> Self {
        ClusterWorker {
            rank,
            train_loop: registry::lookup(&train_loop),
            incarnation: incarnation(),
            inbox: None,
        }
    }

    /// Starts this worker's inbox for `attempt`.
    pub(crate) async fn prepare(&mut self, attempt: u32) -> Result<Prepared, String> {
        let rt = Runtime::current().ok_or("the worker runs outside a runtime")?;
        let (inbox, state) = Inbox::start(&rt, attempt)
            .await
            .map_err(|e| format!("starting the worker's inbox: {e}"))?;
        if let Some((_, old)) = self.inbox.replace((inbox.clone(), state)) {
            old.abort("a new attempt began");
        }
        Ok(Prepared {
            incarnation: self.incarnation,
            inbox,
        })
    }

    /// Runs the training loop once, to its end or its first failure.
    #[blocking]
    pub(crate) fn run(&mut self, job: Job) -> Result<(), Failure> {
        let fail = |message: String| Failure {
            message,
            aborted: false,
        };
        let train_loop = self.train_loop.clone().map_err(fail)?;
        let state = self
            .inbox
            .as_ref()
            .map(|(_, s)| s.clone())
            .ok_or_else(|| fail("run before prepare".to_owned()))?;
        let rt = Runtime::current().ok_or_else(|| fail("no runtime".to_owned()))?;
        let mesh = Mesh::new(
            self.rank,
            job.attempt,
            job.peers,
            state,
            rt.clone(),
            job.settings.collective_timeout,
        );
        let mut ctx = WorkerContext {
            rank: self.rank,
            device: Device::Cpu,
            attempt: job.attempt,
            iteration: job.iteration,
            group: Collectives::Mesh(Arc::new(mesh)),
            settings: job.settings,
            reporter: Reporter::Remote(job.sink),
            unconfirmed: None,
            checkpoint: job.checkpoint.map(StartFrom::Object),
            loop_config: job.loop_config.map(Arc::from),
            rt,
        };
        run_loop(self.rank, &mut ctx, &train_loop)
    }
}

/// What a cancelled `fit` leaves to tear down.
struct Group {
    rt: Runtime,
    placement: PlacementGroup,
    supervisor: SupervisorRef,
    workers: Vec<ClusterWorkerHandle>,
    /// The running attempt's inboxes, to abort.
    inboxes: Mutex<Vec<InboxHandle>>,
}

impl Group {
    fn abort(&self, why: &str) {
        for inbox in lock(&self.inboxes).iter() {
            inbox.abort(why.to_owned()).detach();
        }
    }

    async fn stop(&self) {
        if !self.supervisor.stop(Duration::from_secs(10)).await {
            tracing::warn!("the worker group's supervisor did not stop within 10 s");
        }
        self.rt.remove_placement_group(&self.placement).await;
    }
}

/// Tears the group down if `fit` is dropped before it ends.
struct Teardown(Option<Arc<Group>>);

impl Drop for Teardown {
    fn drop(&mut self) {
        let Some(group) = self.0.take() else {
            return;
        };
        group.abort("fit was cancelled");
        tracing::debug!("fit was cancelled; stopping the worker group");
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { group.stop().await });
        }
    }
}

/// Runs the loop registered as `name` on a group spread over the cluster;
/// the failures recovered from.
pub(crate) async fn fit(
    rt: &Runtime,
    state: &Arc<RunState>,
    name: &str,
    loop_config: Option<Arc<str>>,
) -> Result<Vec<String>, TrainError> {
    let config = state.config();
    let shared = state.clone();
    let sink = rt
        .spawn_actor(ActorOptions::new(), move || ReportSink {
            state: shared.clone(),
        })
        .await
        .map_err(|e| TrainError::Start(format!("starting the report sink: {e}")))?;
    let group = Arc::new(start(rt, config, name).await?);
    let mut teardown = Teardown(Some(group.clone()));
    let outcome = attempts(rt, state, &group, &sink, loop_config).await;
    teardown.0 = None; // it ended: tear down here, in order
    group.stop().await;
    sink.as_ref().stop().await;
    outcome
}

/// The placement group and the supervised workers on its bundles.
async fn start(
    rt: &Runtime,
    config: &crate::TrainerConfig,
    name: &str,
) -> Result<Group, TrainError> {
    let bundles = vec![config.resources.clone(); config.workers];
    let placement = rt
        .placement_group(PlacementGroupOptions::new(bundles).strategy(config.strategy))
        .map_err(|e| TrainError::Start(e.to_string()))?;
    let failed = |e: String| TrainError::Start(e);
    let started = async {
        placement
            .ready(config.restart_timeout)
            .await
            .map_err(|e| failed(format!("placing {} workers: {e}", config.workers)))?;
        let mut spec =
            SupervisorSpec::new("troupe-train", Strategy::OneForAll).unlimited_intensity();
        let mut workers = Vec::with_capacity(config.workers);
        for rank in 0..config.workers {
            let options = ActorOptions::new()
                .resources(config.resources.clone())
                .placement_group(&placement, Some(rank));
            let (child, handle) = rt
                .remote_child::<ClusterWorker>(
                    &format!("rank-{rank}"),
                    options,
                    "on_node",
                    &(name.to_owned(), rank),
                )
                .map_err(|e| failed(e.to_string()))?;
            spec = spec.child(child);
            workers.push(handle);
        }
        let supervisor = rt
            .spawn_supervisor(spec)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok::<_, TrainError>((supervisor, workers))
    };
    match started.await {
        Ok((supervisor, workers)) => Ok(Group {
            rt: rt.clone(),
            placement,
            supervisor,
            workers,
            inboxes: Mutex::new(Vec::new()),
        }),
        Err(e) => {
            rt.remove_placement_group(&placement).await;
            Err(e)
        }
    }
}

/// Runs attempts until one succeeds or the budget is spent.
async fn attempts(
    rt: &Runtime,
    state: &Arc<RunState>,
    group: &Group,
    sink: &ReportSinkHandle,
    loop_config: Option<Arc<str>>,
) -> Result<Vec<String>, TrainError> {
    let config = state.config();
    let mut failures = 0u32;
    let mut recovered = Vec::new();
    let mut seen = vec![None; config.workers];
    loop {
        let (iteration, path) = state.rollback();
        let checkpoint = match path {
            None => None,
            Some(path) => {
                let bytes = checkpoint::read_encoded(&path)?;
                Some(rt.put(Blob::from(bytes)).await.map_err(|e| {
                    TrainError::Transport(format!("storing the checkpoint to start from: {e}"))
                })?)
            }
        };
        let inboxes = prepare(group, failures, &mut seen, config.restart_timeout).await?;
        *lock(&group.inboxes) = inboxes.clone();
        let span = tracing::info_span!(
            "train_attempt",
            attempt = failures,
            from_iteration = iteration
        );
        let mut running: FuturesUnordered<_> = group
            .workers
            .iter()
            .enumerate()
            .map(|(rank, w)| {
                let reply = w.run(Job {
                    attempt: failures,
                    iteration,
                    peers: inboxes.clone(),
                    settings: config.settings(),
                    sink: sink.clone(),
                    checkpoint: checkpoint.clone(),
                    loop_config: loop_config.as_deref().map(str::to_owned),
                });
                async move { (rank, reply.await) }
            })
            .collect();
        let mut results: Vec<Option<_>> = (0..config.workers).map(|_| None).collect();
        let mut told = false;
        async {
            while let Some((rank, result)) = running.next().await {
                if !told && !matches!(result, Ok(Ok(()))) {
                    // A worker whose node died cannot tell the others.
                    group.abort(&format!("rank {rank} failed"));
                    told = true;
                }
                results[rank] = Some(result);
            }
        }
        .instrument(span)
        .await;
        let results: Vec<_> = results.into_iter().flatten().collect();
        let Some((rank, message, alive)) = primary_failure(&results) else {
            return Ok(recovered);
        };
        count_failure(config, &mut failures, &mut recovered, rank, message)?;
        if alive {
            // It returned an error: end its incarnation so that the
            // supervisor restarts the whole group.
            group.workers[rank].as_ref().kill(false).await;
        }
    }
}

/// Every worker's inbox for `attempt`, from an incarnation other than the
/// one `seen` last (after a failure: once the supervisor restarted it).
async fn prepare(
    group: &Group,
    attempt: u32,
    seen: &mut [Option<u64>],
    timeout: Duration,
) -> Result<Vec<InboxHandle>, TrainError> {
    let deadline = Instant::now() + timeout;
    let mut inboxes = Vec::with_capacity(group.workers.len());
    for (rank, worker) in group.workers.iter().enumerate() {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, worker.prepare(attempt)).await {
                Ok(Ok(Ok(p))) if seen[rank] != Some(p.incarnation) => {
                    seen[rank] = Some(p.incarnation);
                    inboxes.push(p.inbox);
                    break;
                }
                Ok(Ok(Err(e))) => return Err(TrainError::Start(format!("rank {rank}: {e}"))),
                // The one before the restart, or none yet: ask again.
                Ok(other) if Instant::now() < deadline => {
                    if let Err(e) = &other {
                        tracing::debug!(rank, error = %e, "a worker is not ready yet");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    return Err(TrainError::Start(format!(
                        "worker {rank} was not (re)started within {timeout:?}"
                    )))
                }
            }
        }
    }
    Ok(inboxes)
}
