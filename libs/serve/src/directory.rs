//! Handles on a [`Serve`](crate::Serve)'s deployments from any process of
//! the cluster ([`DeploymentHandle::connect`]).
//!
//! Each `Serve` runs a named directory actor, `troupe-serve/<app>`
//! ([`ServeOptions::app`](crate::ServeOptions::app)). Asked for a
//! deployment, it answers with its settings and its replicas' handles
//! (a [`DeploymentView`]). A program elsewhere builds a router of its own
//! over those replicas: the same power of two choices, bounded queue,
//! timeout, retry and batching as the `Serve`'s own router, with requests
//! and responses crossing as JSON. A follower task asks the directory
//! again every [`FOLLOW_EVERY`] and applies what changed: replicas added
//! or removed, drains, settings, and the deployment's deletion (calls then
//! fail with `NoDeployment`). A handle connected in the `Serve`'s own
//! process is the `Serve`'s handle.
//!
//! Limit: a router counts only its own requests, so with handles in
//! several processes a replica may hold more than `max_ongoing_requests`
//! at once (at most that many per process); its mailbox queues the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use troupe::{ActorError, ActorOptions, LookupError, NodeId, Runtime};

use crate::batch;
use crate::controller::{batching_of, DeploymentState};
use crate::deployment::{BatchConfig, Codec, Deployment};
use crate::error::ServeError;
use crate::handle::DeploymentHandle;
use crate::lock::{lock, write};
use crate::registry::RemoteCodec;
use crate::replica::ReplicaHandle;
use crate::router::{ReplicaSlot, Router, RouterSettings};
use crate::serve::ServeInner;

/// How often a connected handle asks the directory what changed (the
/// controller's drains wait three of these for followers).
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// How long a connect, or one follow step, waits for the directory.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of the directory actor of the `Serve` called `app`.
pub(crate) fn actor_name(app: &str) -> String {
    format!("troupe-serve/{app}")
}

/// The `Serve`s of this process, by runtime and app name: a handle
/// connected here uses the `Serve`'s own router.
static LOCAL: Mutex<Vec<(NodeId, String, Weak<ServeInner>)>> = Mutex::new(Vec::new());

fn local(node: NodeId, app: &str) -> Option<Arc<ServeInner>> {
    let mut serves = lock(&LOCAL);
    serves.retain(|(_, _, s)| s.strong_count() > 0);
    serves
        .iter()
        .find(|(n, a, _)| *n == node && a == app)
        .and_then(|(_, _, s)| s.upgrade())
}

/// One replica as the directory tells it.
#[derive(Serialize, Deserialize)]
pub(crate) struct ReplicaView {
    index: u64,
    version: String,
    draining: bool,
    handle: ReplicaHandle,
}

/// A deployment as the directory tells it: its types, settings and
/// replicas.
#[derive(Serialize, Deserialize)]
pub(crate) struct DeploymentView {
    request_type: String,
    response_type: String,
    max_ongoing: usize,
    max_queued: usize,
    timeout_ms: u64,
    retry: bool,
    batching: Option<BatchConfig>,
    replicas: Vec<ReplicaView>,
}

impl DeploymentView {
    fn of(state: &DeploymentState) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let router = &state.router;
        let settings = &router.settings;
        DeploymentView {
            request_type: router.codec.request_type.to_owned(),
            response_type: router.codec.response_type.to_owned(),
            max_ongoing: settings.max_ongoing.load(SeqCst),
            max_queued: settings.max_queued.load(SeqCst),
            timeout_ms: settings.timeout_ms.load(SeqCst),
            retry: settings.retry.load(SeqCst),
            batching: batching_of(state),
            replicas: router
                .replicas()
                .iter()
                .map(|slot| ReplicaView {
                    index: slot.index,
                    version: slot.version.clone(),
                    draining: slot.draining.load(SeqCst),
                    handle: slot.handle.clone(),
                })
                .collect(),
        }
    }
}

/// The directory actor of one `Serve`.
pub(crate) struct Directory {
    serve: Weak<ServeInner>,
}

#[troupe::actor]
impl Directory {
    /// Deployment `name` now; `Err` names why there is none.
    pub(crate) fn view(&self, name: String) -> Result<DeploymentView, String> {
        let serve = self.serve.upgrade().ok_or("its Serve has shut down")?;
        let state = serve
            .deployment(&name)
            .ok_or_else(|| format!("no deployment {name:?}"))?;
        state.followed();
        Ok(DeploymentView::of(&state))
    }
}

/// Starts `serve`'s directory, named for `app`; it lives until stopped or
/// until the runtime shuts down.
pub(crate) async fn start(
    rt: &Runtime,
    app: &str,
    serve: &Arc<ServeInner>,
) -> Result<DirectoryHandle, ServeError> {
    let name = actor_name(app);
    let weak = Arc::downgrade(serve);
    let handle = rt
        .spawn_actor(ActorOptions::new().name(&name), move || Directory {
            serve: weak.clone(),
        })
        .await
        .map_err(|source| match source {
            troupe::SpawnError::NameTaken(_) => ServeError::AppTaken(app.to_owned()),
            source => ServeError::Spawn {
                deployment: name.clone(),
                source: Box::new(source),
            },
        })?;
    lock(&LOCAL).push((rt.node_id(), app.to_owned(), Arc::downgrade(serve)));
    Ok(handle)
}

/// Connects a handle on deployment `name` of the `Serve` called `app`
/// (see [`DeploymentHandle::connect`]).
pub(crate) async fn connect<D>(
    rt: &Runtime,
    app: &str,
    name: &str,
) -> Result<DeploymentHandle<D>, ServeError>
where
    D: Deployment,
    D::Request: Serialize,
    D::Response: DeserializeOwned,
{
    let router = connect_router::<D>(rt, app, name).await?;
    Ok(DeploymentHandle::new(app, router))
}

/// [`connect`]'s router alone: what a handle decoded without one sets
/// up on its first call.
pub(crate) async fn connect_router<D>(
    rt: &Runtime,
    app: &str,
    name: &str,
) -> Result<Arc<Router>, ServeError>
where
    D: Deployment,
    D::Request: Serialize,
    D::Response: DeserializeOwned,
{
    let failed = |problem: String| ServeError::Connect {
        app: app.to_owned(),
        deployment: name.to_owned(),
        problem,
    };
    if let Some(serve) = local(rt.node_id(), app) {
        return serve.router::<D>(name);
    }
    let directory = tokio::time::timeout(ASK_TIMEOUT, rt.find_actor::<Directory>(&actor_name(app)))
        .await
        .map_err(|_| failed(format!("no node answered within {ASK_TIMEOUT:?}")))?
        .map_err(|e| match e {
            LookupError::NotFound(_) => failed(format!(
                "no Serve called {app:?} runs on any node of this runtime's cluster \
                 (ServeOptions::app names it; \"default\" unless set)"
            )),
            other => failed(other.to_string()),
        })?;
    let view = ask(&directory, name).await.map_err(|e| match e {
        Asked::Gone(problem) if problem.starts_with("no deployment") => {
            ServeError::NoDeployment(name.to_owned())
        }
        Asked::Gone(problem) | Asked::Failed(problem) => failed(problem),
    })?;
    let codec = Codec::of::<D>();
    if view.request_type != codec.request_type || view.response_type != codec.response_type {
        return Err(failed(format!(
            "it serves {} -> {}, not {} -> {}",
            view.request_type, view.response_type, codec.request_type, codec.response_type
        )));
    }
    let settings = RouterSettings {
        max_ongoing: view.max_ongoing.into(),
        max_queued: view.max_queued.into(),
        timeout_ms: view.timeout_ms.into(),
        retry: view.retry.into(),
    };
    let router = Arc::new(Router::new(name, codec, settings));
    let follower = Follower {
        router: Arc::downgrade(&router),
        name: name.to_owned(),
        remote: RemoteCodec::of::<D>(),
        // Read only when the deployment batches.
        batching: Arc::new(RwLock::new(
            view.batching.unwrap_or(BatchConfig::new(1, Duration::ZERO)),
        )),
    };
    follower.apply(&router, view);
    let span = tracing::debug_span!("serve_handle_follower", app, deployment = name);
    tokio::spawn(follower.run(directory).instrument(span));
    Ok(router)
}

/// Why a directory gave no view.
enum Asked {
    /// The deployment or the `Serve` is gone for good.
    Gone(String),
    /// The directory did not answer (its node is slow or unreachable).
    Failed(String),
}

async fn ask(directory: &DirectoryHandle, name: &str) -> Result<DeploymentView, Asked> {
    match tokio::time::timeout(ASK_TIMEOUT, directory.view(name.to_owned())).await {
        Ok(Ok(Ok(view))) => Ok(view),
        Ok(Ok(Err(gone))) => Err(Asked::Gone(gone)),
        Ok(Err(ActorError::ActorDied { reason, .. })) => Err(Asked::Gone(format!(
            "its Serve's directory is gone: {reason}"
        ))),
        Ok(Err(other)) => Err(Asked::Failed(other.to_string())),
        Err(_) => Err(Asked::Failed(format!(
            "its Serve's directory did not answer within {ASK_TIMEOUT:?}"
        ))),
    }
}

/// Keeps a connected router in step with its deployment.
struct Follower {
    router: Weak<Router>,
    name: String,
    remote: RemoteCodec,
    /// The batch settings this process's batchers read.
    batching: Arc<RwLock<BatchConfig>>,
}

impl Follower {
    /// Asks every [`FOLLOW_EVERY`] until every handle is dropped or the
    /// deployment is gone.
    async fn run(self, directory: DirectoryHandle) {
        loop {
            tokio::time::sleep(FOLLOW_EVERY).await;
            if self.router.strong_count() == 0 {
                return;
            }
            let asked = ask(&directory, &self.name).await;
            let Some(router) = self.router.upgrade() else {
                return;
            };
            match asked {
                Ok(view) => self.apply(&router, view),
                Err(Asked::Gone(why)) => {
                    tracing::info!(deployment = %self.name, %why, "connected deployment gone");
                    router.close();
                    return;
                }
                // Its replicas may still answer: keep routing to them.
                Err(Asked::Failed(why)) => {
                    tracing::warn!(deployment = %self.name, %why, "could not follow the deployment");
                }
            }
        }
    }

    /// Makes `router` route as `view` says.
    fn apply(&self, router: &Router, view: DeploymentView) {
        use std::sync::atomic::Ordering::SeqCst;
        let settings = &router.settings;
        settings.max_ongoing.store(view.max_ongoing, SeqCst);
        settings.max_queued.store(view.max_queued, SeqCst);
        settings.timeout_ms.store(view.timeout_ms, SeqCst);
        settings.retry.store(view.retry, SeqCst);
        if let Some(batching) = view.batching {
            *write(&self.batching) = batching;
        }
        let have: HashMap<u64, Arc<ReplicaSlot>> = router
            .replicas()
            .iter()
            .map(|s| (s.index, s.clone()))
            .collect();
        let listed: Vec<u64> = view.replicas.iter().map(|r| r.index).collect();
        for index in have.keys().filter(|i| !listed.contains(i)) {
            router.remove(*index);
        }
        for replica in view.replicas {
            match have.get(&replica.index) {
                Some(slot) => slot.draining.store(replica.draining, SeqCst),
                None => router.add(Arc::new(self.slot(
                    router,
                    replica,
                    view.batching.is_some(),
                ))),
            }
        }
    }

    fn slot(&self, router: &Router, replica: ReplicaView, batched: bool) -> ReplicaSlot {
        let batcher = batched.then(|| {
            batch::start(
                &self.name,
                replica.index,
                replica.handle.clone(),
                Some(self.remote),
                self.batching.clone(),
                router.metrics.clone(),
            )
        });
        ReplicaSlot {
            index: replica.index,
            version: replica.version,
            handle: replica.handle,
            ongoing: Default::default(),
            served: Default::default(),
            draining: replica.draining.into(),
            unhealthy: Default::default(),
            checking: Default::default(),
            batcher,
            remote: Some(self.remote),
        }
    }
}
