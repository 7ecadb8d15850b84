//! The controller of one deployment: an actor that takes one step at a
//! time towards the deployment's target (start, drain, stop or restart a
//! replica, as [`plan`](crate::plan) decides), runs the health checks and
//! the autoscaler. A ticker task asks it for a step every control
//! interval, and at once again after a step that did something.
//!
//! The controller holds no data of its own: everything it acts on is in
//! the shared [`DeploymentState`], so a controller that panics is restarted
//! and goes on from the same state.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument;
use troupe::{ActorOptions, Limit, Runtime};

use crate::autoscale::Autoscaler;
use crate::batch;
use crate::deployment::{BatchConfig, DeploymentOptions, Factory};
use crate::error::ServeError;
use crate::lock::{lock, read};
use crate::plan::{plan, Action, ReplicaView};
use crate::registry::RemoteCodec;
use crate::replica::Replica;
use crate::router::{ReplicaSlot, Router};
use crate::status::{DeploymentStatus, ReplicaState, ReplicaStatus};

/// What a deployment is and how far it has got: shared by its controller,
/// its ticker, [`Serve`](crate::Serve) and (through the router) the proxy.
pub(crate) struct DeploymentState {
    pub(crate) name: String,
    pub(crate) rt: Runtime,
    pub(crate) router: Arc<Router>,
    /// The batch settings, read by the batchers once per batch.
    pub(crate) batching: Arc<RwLock<BatchConfig>>,
    pub(crate) spec: Mutex<Spec>,
    pub(crate) control: Mutex<Control>,
    /// When a handle in another process last asked for the replicas
    /// (`directory`): while such handles follow, a drain gives them time
    /// to learn of it before the replica stops.
    followed: Mutex<Option<Instant>>,
}

/// How long after a drain starts followers have surely heard of it (three
/// of their steps).
const FOLLOWER_NOTICE: Duration = crate::directory::FOLLOW_EVERY.saturating_mul(3);

/// How long a follower that stopped asking is still counted.
const FOLLOWER_FORGOTTEN: Duration = Duration::from_secs(5);

/// What the user deployed last.
pub(crate) struct Spec {
    pub(crate) options: DeploymentOptions,
    pub(crate) factory: Factory,
    /// Its registered kind, when it was deployed by kind: what replicas on
    /// other nodes are built from.
    pub(crate) registered: Option<Registration>,
}

/// A deployment deployed by its registered kind.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) kind: String,
    pub(crate) remote: RemoteCodec,
}

/// The controller's progress.
pub(crate) struct Control {
    /// How many replicas of the current version should run.
    pub(crate) target: usize,
    next_index: u64,
    /// When each draining replica started draining.
    drains: HashMap<u64, Instant>,
    autoscaler: Autoscaler,
    last_health_round: Option<Instant>,
}

impl DeploymentState {
    pub(crate) fn new(
        name: &str,
        rt: Runtime,
        router: Arc<Router>,
        options: DeploymentOptions,
        factory: Factory,
        registered: Option<Registration>,
    ) -> Self {
        let batching = options
            .batching
            .unwrap_or(BatchConfig::new(1, Duration::ZERO));
        Self {
            name: name.to_owned(),
            rt,
            router,
            batching: Arc::new(RwLock::new(batching)),
            control: Mutex::new(Control {
                target: options.initial_replicas(),
                next_index: 0,
                drains: HashMap::new(),
                autoscaler: Autoscaler::default(),
                last_health_round: None,
            }),
            spec: Mutex::new(Spec {
                options,
                factory,
                registered,
            }),
            followed: Mutex::new(None),
        }
    }

    /// A handle in another process asked for the replicas now.
    pub(crate) fn followed(&self) {
        *lock(&self.followed) = Some(Instant::now());
    }

    /// Whether a drain that started at `since` may stop its replica as
    /// far as followers are concerned: none asked lately, or they have
    /// had time to hear of the drain.
    fn followers_noticed(&self, since: Instant, now: Instant) -> bool {
        lock(&self.followed).is_none_or(|at| now.duration_since(at) > FOLLOWER_FORGOTTEN)
            || now.duration_since(since) >= FOLLOWER_NOTICE
    }

    /// A new version or new options: the next steps converge to them.
    pub(crate) fn update(
        &self,
        options: DeploymentOptions,
        factory: Factory,
        registered: Option<Registration>,
    ) {
        apply_settings(&self.router, &options);
        if let Some(b) = options.batching {
            *crate::lock::write(&self.batching) = b;
        }
        let mut control = lock(&self.control);
        control.target = match &options.autoscaling {
            Some(a) => control.target.clamp(a.min_replicas, a.max_replicas),
            None => options.replicas,
        };
        *lock(&self.spec) = Spec {
            options,
            factory,
            registered,
        };
    }

    /// The replicas as the plan sees them.
    fn views(&self, now: Instant) -> (Vec<ReplicaView>, usize) {
        let (version, drain_timeout) = {
            let spec = lock(&self.spec);
            (spec.options.version.clone(), spec.options.drain_timeout)
        };
        let control = lock(&self.control);
        let views = self
            .router
            .replicas()
            .iter()
            .map(|slot| {
                let draining = slot.draining.load(Ordering::SeqCst);
                let since = control.drains.get(&slot.index);
                let drained = draining
                    && ((slot.ongoing.load(Ordering::SeqCst) == 0
                        && since.is_none_or(|since| self.followers_noticed(*since, now)))
                        || since.is_none_or(|since| now.duration_since(*since) >= drain_timeout));
                ReplicaView {
                    index: slot.index,
                    current: slot.version == version,
                    draining,
                    drained,
                    unhealthy: slot.unhealthy.load(Ordering::SeqCst),
                    dead: slot.handle.is_dead(),
                }
            })
            .collect();
        (views, control.target)
    }

    /// Whether the deployment has reached its target: that many replicas
    /// of the current version, none draining or unhealthy.
    pub(crate) fn settled(&self) -> bool {
        let (views, target) = self.views(Instant::now());
        views.len() == target
            && views
                .iter()
                .all(|v| v.current && !v.draining && !v.unhealthy)
    }

    /// One step of the controller.
    pub(crate) async fn step(&self) -> Result<Action, ServeError> {
        let now = Instant::now();
        self.health_round(now);
        self.autoscale(now);
        let (views, target) = self.views(now);
        let action = plan(target, &views);
        match action {
            Action::Idle => {}
            Action::Remove(index) => {
                tracing::warn!(deployment = %self.name, replica = index, "removing a replica dead for good");
                self.router.remove(index);
            }
            Action::Restart(index) => {
                if let Some(slot) = self.slot(index) {
                    tracing::warn!(deployment = %self.name, replica = index, "restarting an unhealthy replica");
                    self.router.metrics.health_restarts.increment(1);
                    slot.unhealthy.store(false, Ordering::SeqCst);
                    kill(&slot, false).await;
                }
            }
            Action::Drain(index) => {
                if let Some(slot) = self.slot(index) {
                    tracing::info!(deployment = %self.name, replica = index, "draining a replica");
                    slot.draining.store(true, Ordering::SeqCst);
                    lock(&self.control).drains.insert(index, now);
                }
            }
            Action::Stop(index) => {
                lock(&self.control).drains.remove(&index);
                if let Some(slot) = self.router.remove(index) {
                    tracing::info!(deployment = %self.name, replica = index, "stopping a drained replica");
                    let grace = lock(&self.spec).options.drain_timeout;
                    tokio::spawn(stop_replica(slot, grace));
                }
            }
            Action::Start => self.start_replica().await?,
        }
        Ok(action)
    }

    fn slot(&self, index: u64) -> Option<Arc<ReplicaSlot>> {
        self.router
            .replicas()
            .iter()
            .find(|s| s.index == index)
            .cloned()
    }

    /// Starts a replica of the current version and adds it to routing.
    async fn start_replica(&self) -> Result<(), ServeError> {
        let (factory, version, resources, start_timeout, batched, on_cluster) = {
            let spec = lock(&self.spec);
            let on_cluster = spec.registered.clone().filter(|_| spec.options.on_cluster);
            (
                spec.factory.clone(),
                spec.options.version.clone(),
                spec.options.resources.clone(),
                spec.options.start_timeout,
                spec.options.batching.is_some(),
                on_cluster,
            )
        };
        let index = {
            let mut control = lock(&self.control);
            control.next_index += 1;
            control.next_index - 1
        };
        let options = ActorOptions::new()
            .max_restarts(Limit::Unlimited)
            .resources(resources);
        // On the cluster: wherever it places a replica's resources (this
        // node included), built there by kind; its owner (this node)
        // restarts it elsewhere when its node dies.
        let remote = on_cluster.as_ref().map(|r| r.remote);
        let spawn: futures::future::BoxFuture<'_, _> = match on_cluster {
            Some(registration) => {
                Box::pin(Replica::remote(&self.rt, options).on_node(registration.kind))
            }
            // Here, it takes requests as they are from this process's
            // router, and encoded from handles connected elsewhere.
            None => {
                let codec = self.router.codec;
                Box::pin(self.rt.spawn_actor(options, move || Replica {
                    code: factory(),
                    codec: Some(codec),
                }))
            }
        };
        let handle = match tokio::time::timeout(start_timeout, spawn).await {
            Ok(Ok(handle)) => handle,
            Ok(Err(source)) => {
                return Err(ServeError::Spawn {
                    deployment: self.name.clone(),
                    source: Box::new(source),
                })
            }
            Err(_) => {
                return Err(ServeError::SpawnTimeout {
                    deployment: self.name.clone(),
                    after: start_timeout,
                })
            }
        };
        let batcher = batched.then(|| {
            batch::start(
                &self.name,
                index,
                handle.clone(),
                remote,
                self.batching.clone(),
                self.router.metrics.clone(),
            )
        });
        tracing::info!(deployment = %self.name, replica = index, %version, node = %handle.info().node, "replica started");
        self.router.add(Arc::new(ReplicaSlot {
            index,
            version,
            handle,
            ongoing: Default::default(),
            served: Default::default(),
            draining: Default::default(),
            unhealthy: Default::default(),
            checking: Default::default(),
            batcher,
            remote,
        }));
        Ok(())
    }

    /// Starts a health check on every replica taking requests, once per
    /// period; a failed or late check marks the replica unhealthy.
    fn health_round(&self, now: Instant) {
        let (period, timeout) = {
            let spec = lock(&self.spec);
            (
                spec.options.health_check_period,
                spec.options.health_check_timeout,
            )
        };
        {
            let mut control = lock(&self.control);
            if control
                .last_health_round
                .is_some_and(|last| now.duration_since(last) < period)
            {
                return;
            }
            control.last_health_round = Some(now);
        }
        for slot in self.router.replicas().iter() {
            if slot.draining.load(Ordering::SeqCst)
                || !slot.handle.is_alive()
                || slot.checking.swap(true, Ordering::SeqCst)
            {
                continue;
            }
            let slot = slot.clone();
            let name = self.name.clone();
            tokio::spawn(async move {
                let verdict = match tokio::time::timeout(timeout, slot.handle.check_health()).await
                {
                    Ok(Ok(Ok(()))) => None,
                    Ok(Ok(Err(reason))) => Some(reason),
                    Ok(Err(failure)) => Some(failure.to_string()),
                    Err(_) => Some(format!("no answer within {timeout:?}")),
                };
                if let Some(reason) = verdict {
                    tracing::warn!(deployment = %name, replica = slot.index, %reason, "health check failed");
                    slot.unhealthy.store(true, Ordering::SeqCst);
                }
                slot.checking.store(false, Ordering::SeqCst);
            });
        }
    }

    /// Samples the load and moves the target if the autoscaler says so.
    fn autoscale(&self, now: Instant) {
        let replicas = self.router.replicas();
        let ongoing: usize = replicas
            .iter()
            .map(|s| s.ongoing.load(Ordering::Relaxed))
            .sum();
        self.router.metrics.ongoing.set(ongoing as f64);
        let Some(config) = lock(&self.spec).options.autoscaling else {
            return;
        };
        let load = (ongoing + self.router.queued.load(Ordering::Relaxed)) as f64;
        let mut control = lock(&self.control);
        let current = control.target;
        let target = control.autoscaler.decide(&config, now, current, load);
        if target != current {
            tracing::info!(deployment = %self.name, from = current, to = target, load, "autoscaling");
            control.target = target;
        }
    }

    /// Drains every replica and stops it, within the drain timeout.
    pub(crate) async fn drain_all(&self) {
        let grace = lock(&self.spec).options.drain_timeout;
        let replicas = self.router.replicas();
        for slot in replicas.iter() {
            slot.draining.store(true, Ordering::SeqCst);
        }
        let since = Instant::now();
        let until = since + grace;
        while Instant::now() < until
            && (replicas
                .iter()
                .any(|s| s.ongoing.load(Ordering::SeqCst) > 0)
                || !self.followers_noticed(since, Instant::now()))
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut stops = Vec::new();
        for slot in replicas.iter() {
            if let Some(slot) = self.router.remove(slot.index) {
                stops.push(stop_replica(slot, grace));
            }
        }
        futures::future::join_all(stops).await;
    }
}

/// Pushes the options the router reads per request into it.
pub(crate) fn apply_settings(router: &Router, options: &DeploymentOptions) {
    let s = &router.settings;
    s.max_ongoing
        .store(options.max_ongoing_requests, Ordering::Relaxed);
    s.max_queued
        .store(options.max_queued_requests, Ordering::Relaxed);
    s.timeout_ms.store(
        options.request_timeout.as_millis().min(u64::MAX as u128) as u64,
        Ordering::Relaxed,
    );
    s.retry
        .store(options.retry_on_replica_failure, Ordering::Relaxed);
}

/// Stops a replica that takes no more requests: it answers what it has,
/// then stops; killed if that takes longer than `grace`.
async fn stop_replica(slot: Arc<ReplicaSlot>, grace: Duration) {
    if tokio::time::timeout(grace, slot.handle.stop())
        .await
        .is_err()
    {
        tracing::warn!(
            replica = slot.index,
            "replica did not stop within its drain timeout; killing it"
        );
        kill(&slot, true).await;
    }
}

/// How long a kill may take: an actor busy in a sync method stops only
/// when the method returns.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Kills a replica's running incarnation (restarting it unless
/// `no_restart`), giving up waiting after [`KILL_TIMEOUT`].
async fn kill(slot: &ReplicaSlot, no_restart: bool) {
    if tokio::time::timeout(KILL_TIMEOUT, slot.handle.kill(no_restart))
        .await
        .is_err()
    {
        tracing::warn!(
            replica = slot.index,
            "replica did not stop within {KILL_TIMEOUT:?} of its kill (a sync handler still runs)"
        );
    }
}

/// The controller actor of one deployment.
pub(crate) struct Controller {
    pub(crate) state: Arc<DeploymentState>,
}

#[troupe::actor]
impl Controller {
    /// One step towards the target.
    pub(crate) async fn step(&mut self) -> Result<Action, ServeError> {
        self.state.step().await
    }
}

/// Asks the controller for a step every `interval` (at once again after a
/// step that did something) until `stop` turns true.
pub(crate) fn start_ticker(
    name: &str,
    controller: ControllerHandle,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::debug_span!("serve_controller", deployment = name);
    tokio::spawn(
        async move {
            let mut busy = false;
            loop {
                if !busy {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stop.changed() => {}
                    }
                }
                if *stop.borrow() {
                    return;
                }
                // A step never waits for long (replica starts have their own
                // timeout), but a hung one must not stop the ticker.
                match tokio::time::timeout(Duration::from_secs(120), controller.step()).await {
                    Ok(Ok(Ok(action))) => busy = action != Action::Idle,
                    Ok(Ok(Err(e))) => {
                        tracing::warn!(error = %e, "controller step failed");
                        busy = false;
                    }
                    Ok(Err(e)) => {
                        if controller.is_dead() {
                            // Stopped with the runtime: nothing left to drive.
                            tracing::debug!(error = %e, "controller stopped; its ticker ends");
                            return;
                        }
                        tracing::warn!(error = %e, "controller failed; it is restarted");
                        busy = false;
                    }
                    Err(_) => {
                        tracing::warn!("controller step took over 120 s");
                        busy = false;
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// Reads a deployment's batching (for status).
pub(crate) fn batching_of(state: &DeploymentState) -> Option<BatchConfig> {
    lock(&state.spec)
        .options
        .batching
        .map(|_| *read(&state.batching))
}

/// What `serve status` shows of one deployment, served at `route_prefix`.
pub(crate) fn deployment_status(
    state: &DeploymentState,
    route_prefix: Option<String>,
) -> DeploymentStatus {
    let (version, autoscaling) = {
        let spec = lock(&state.spec);
        (spec.options.version.clone(), spec.options.autoscaling)
    };
    let target = lock(&state.control).target;
    let replicas = state
        .router
        .replicas()
        .iter()
        .map(|slot| ReplicaStatus {
            index: slot.index,
            version: slot.version.clone(),
            state: if slot.handle.is_dead() {
                ReplicaState::Dead
            } else if slot.draining.load(Ordering::SeqCst) {
                ReplicaState::Draining
            } else if slot.unhealthy.load(Ordering::SeqCst) {
                ReplicaState::Unhealthy
            } else if !slot.handle.is_alive() {
                ReplicaState::Restarting
            } else {
                ReplicaState::Running
            },
            ongoing_requests: slot.ongoing.load(Ordering::SeqCst),
            served: slot.served.load(Ordering::Relaxed),
            restarts: slot.handle.restarts(),
            node: slot.handle.location().node.to_string(),
        })
        .collect();
    DeploymentStatus {
        name: state.name.clone(),
        route_prefix,
        version,
        target_replicas: target,
        queued_requests: state.router.queued.load(Ordering::SeqCst),
        batching: batching_of(state),
        autoscaling,
        replicas,
    }
}
