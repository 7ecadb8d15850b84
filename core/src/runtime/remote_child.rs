//! A supervisor's child on another node: supervision trees that span
//! nodes, with OTP's semantics.
//!
//! The supervisor's child is a local proxy actor, linked to it like any
//! child. Starting it spawns the real actor on another node (by node
//! affinity, or where the cluster's placement puts it) with no restarts of
//! its own; the proxy then fails, as its child's abnormal exit, when the
//! actor dies there (its host tells this node: `RemoteExecutor::actor_exited`)
//! or its node does (OTP's `noconnection`). The supervisor applies its
//! strategy, intensity and escalation exactly as for a local child; a
//! restart spawns the actor again, on whichever node fits now. Stopping
//! the proxy (a one-for-all restart, `terminate_child`, shutdown) kills the
//! remote actor. Handles ask this node where the current incarnation lives.
//!
//! Message flow: supervisor → start → proxy pre_start → SpawnActor on a node
//! → watch (ActorExited from the host | NodeDown) → proxy fails → supervisor
//! policy → restart (spawn again) | escalate; proxy dropped → StopActor(kill).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::sync::oneshot;

use super::{Runtime, WeakRuntime};
use crate::actor::{Actor, ActorOptions, Limit, StopHow};
use crate::error::SpawnError;
use crate::ids::{ActorId, ActorInfo, ActorOwner, NodeId};
use crate::remote::{ClusterEvent, RemoteSpawn};
use crate::spec::SchedulingStrategy;
use crate::supervisor::ChildSpec;
use troupe_objects::Encoded;

/// How long dropping a proxy waits for its remote actor to be killed.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// Who waits to hear that an actor this node placed elsewhere died.
#[derive(Default)]
pub(crate) struct Exits {
    waiting: Mutex<HashMap<ActorId, oneshot::Sender<String>>>,
}

impl Exits {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ActorId, oneshot::Sender<String>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Runtime {
    /// A child for your supervision trees that runs an actor of type `A` on
    /// another node, built there by its registered `constructor` with
    /// `args` (as [`spawn_remote`](Self::spawn_remote)), and a handle that
    /// follows it across restarts. `options`' scheduling strategy picks its
    /// node (node affinity, a placement group bundle, or the cluster's
    /// choice); its `max_restarts` is ignored: the supervisor restarts it,
    /// per its strategy and intensity, when it dies or its node does.
    /// (Its spec's `on_exit` hook is taken: it tells the handles when the
    /// child is gone for good.)
    ///
    /// Needs a cluster: without one, starting the child fails.
    pub fn remote_child<A: Actor>(
        &self,
        id: &str,
        options: ActorOptions,
        constructor: &str,
        args: &impl Serialize,
    ) -> Result<(ChildSpec, A::Handle), SpawnError> {
        let args = Encoded::of(args).map_err(|err| SpawnError::BadArguments {
            constructor: format!("{}::{constructor}", A::NAME),
            cause: err.to_string(),
        })?;
        let mut spawned = options.clone();
        spawned.max_restarts = Limit::Finite(0);
        let request = RemoteSpawn {
            type_name: A::NAME.to_owned(),
            constructor: constructor.to_owned(),
            options: spawned,
            args,
            wait_for_room: true,
        };
        let key = self.inner.ids.actor();
        self.inner.placed.supervise(key, request.clone());
        // Until it starts, the handle knows it only by its key: its first
        // call asks this node where it lives (node 0 is never alive).
        let placeholder = ActorInfo {
            id: key,
            name: options.name.clone(),
            type_name: A::NAME.into(),
            node: NodeId(0),
            resources: options.resources.clone(),
            gpu_ids: Vec::new(),
        };
        let owner = ActorOwner {
            owner: self.node_id(),
            actor: key,
        };
        let handle =
            self.raw_handle_for::<A>(placeholder.clone(), placeholder, Some(owner), options);
        let runtime = self.downgrade();
        let spec = ChildSpec::new(
            id.to_owned(),
            Proxy,
            ProxyArgs {
                runtime: runtime.clone(),
                key,
                request,
            },
        )
        .on_exit(move |exit| {
            // Gone for good: its handles fail at once instead of waiting.
            if let Some(rt) = runtime.upgrade() {
                tracing::info!(child = %key, ?exit, "remote child removed");
                rt.inner.placed.forget(key);
            }
        });
        Ok((spec, A::Handle::from(handle)))
    }

    /// The actor `actor`, which this node placed on another, died there
    /// for good (its host says why): what the cluster calls.
    pub fn remote_actor_exited(&self, actor: ActorId, reason: String) {
        self.inner.placed.exited(actor, &reason);
        if let Some(waiting) = self.inner.exits.lock().remove(&actor) {
            let _ = waiting.send(reason);
        }
    }
}

/// The local stand-in of a remote child.
#[derive(Clone)]
struct Proxy;

#[derive(Clone)]
struct ProxyArgs {
    runtime: WeakRuntime,
    key: ActorId,
    request: RemoteSpawn,
}

/// Why the remote actor is gone.
enum ProxyMsg {
    Lost(String),
}

// Local only (never sent between nodes through ractor).
#[cfg(feature = "cluster")]
impl ractor::Message for ProxyMsg {}

/// The running proxy's state; dropping it (however the proxy ends: stopped,
/// failed or killed) kills the remote actor unless it is already gone.
struct ProxyState {
    runtime: WeakRuntime,
    key: ActorId,
    info: ActorInfo,
    watcher: tokio::task::JoinHandle<()>,
    lost: bool,
}

impl ractor::Actor for Proxy {
    type Msg = ProxyMsg;
    type State = ProxyState;
    type Arguments = ProxyArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ProxyMsg>,
        args: ProxyArgs,
    ) -> Result<ProxyState, ActorProcessingErr> {
        let rt = args.runtime.upgrade().ok_or("the runtime is gone")?;
        let executor = rt
            .inner
            .config
            .cluster
            .executor
            .clone()
            .ok_or("this runtime is not part of a cluster: a remote child needs one")?;
        let options = rt
            .actor_in_group(args.request.options.clone(), &args.request.type_name)
            .await?;
        let node = match options.strategy {
            SchedulingStrategy::NodeAffinity { node, soft: false } => Some(node),
            _ => None,
        };
        let mut request = args.request.clone();
        request.options = options;
        let mut events = rt.cluster_events();
        let info = executor.spawn_actor(node, request).await?;
        let (exited, exit) = oneshot::channel();
        rt.inner.exits.lock().insert(info.id, exited);
        rt.inner.placed.supervised_at(args.key, info.clone());
        metrics::counter!("troupe_remote_children_started_total").increment(1);
        tracing::info!(child = %args.key, actor = %info.id, node = %info.node, "remote child started");
        let at = info.node;
        let watcher = tokio::spawn(async move {
            let why = tokio::select! {
                reason = exit => match reason {
                    Ok(reason) => format!("it died on node {at}: {reason}"),
                    Err(_) => return, // the proxy ended first
                },
                why = node_down(&mut events, at) => why,
            };
            let _ = myself.send_message(ProxyMsg::Lost(why));
        });
        Ok(ProxyState {
            runtime: args.runtime,
            key: args.key,
            info,
            watcher,
            lost: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ProxyMsg>,
        message: ProxyMsg,
        state: &mut ProxyState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ProxyMsg::Lost(why) => {
                state.lost = true;
                metrics::counter!("troupe_remote_children_lost_total").increment(1);
                tracing::warn!(child = %state.key, actor = %state.info.id, %why, "remote child lost");
                // Its exit, abnormal, as the supervisor sees it.
                Err(format!(
                    "remote child {} ({}): {why}",
                    state.info.id, state.info.type_name
                )
                .into())
            }
        }
    }
}

/// Resolves when `node` goes down (or the events end), saying why.
async fn node_down(
    events: &mut tokio::sync::broadcast::Receiver<ClusterEvent>,
    node: NodeId,
) -> String {
    loop {
        match events.recv().await {
            Ok(ClusterEvent::NodeDown { node: down, reason }) if down == node => {
                return format!("noconnection: its node {node} is down ({reason})");
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return format!("noconnection: this node left the cluster of {node}"),
        }
    }
}

impl Drop for ProxyState {
    fn drop(&mut self) {
        self.watcher.abort();
        let Some(rt) = self.runtime.upgrade() else {
            return;
        };
        rt.inner.exits.lock().remove(&self.info.id);
        rt.inner.placed.supervised_gone(self.key, self.info.id);
        if self.lost {
            return;
        }
        // Stopped by its supervisor: the remote actor goes with it (placed
        // here, the cluster's choice, it is killed here).
        let (node, actor) = (self.info.node, self.info.id);
        let how = StopHow::Kill { no_restart: true };
        if node == rt.node_id() {
            let here = rt.clone();
            rt.inner.handle.spawn(async move {
                let _ = tokio::time::timeout(KILL_DEADLINE, here.stop_requested(actor, how)).await;
            });
        } else if let Some(executor) = rt.inner.config.cluster.executor.clone() {
            let kill = executor.stop_actor(node, actor, how);
            rt.inner.handle.spawn(async move {
                let _ = tokio::time::timeout(KILL_DEADLINE, kill).await;
            });
        }
    }
}
