//! Actors on other nodes: spawning one there by its registered
//! constructor, finding one by name anywhere, and what a node does when
//! another asks it to (the other side of `RemoteExecutor`'s actor methods).

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use troupe_objects::Encoded;

use super::{Runtime, WeakRuntime};
use crate::actor::{Actor, ActorHandle, ActorLink, ActorOptions, Slot};
use crate::error::{ActorError, LookupError, SpawnError};
use crate::ids::{ActorId, ActorInfo, ActorOwner, NodeId};
use crate::remote::{Relocation, RemoteSpawn, StopHow};
use crate::spec::SchedulingStrategy;

impl Runtime {
    /// Spawns an actor of type `A` with its registered constructor
    /// `constructor` (a `fn ...(args) -> Self` in its `#[troupe::actor]`
    /// block) and arguments `args` (a tuple), on another node of the
    /// cluster: the one its options' `NodeAffinity` names, else one the
    /// cluster picks for its resources (this one included). The handle
    /// works as a local one: its typed methods travel by name.
    ///
    /// Needs a cluster (the `cluster` feature); alone, it fails with
    /// [`SpawnError::Remote`]. Prefer the typed form `#[troupe::actor]`
    /// generates, `A::remote(&rt, options).new(args)`: the constructor's
    /// name and arguments are checked by the compiler; this one is for a
    /// constructor named at run time.
    pub async fn spawn_remote<A: Actor>(
        &self,
        options: ActorOptions,
        constructor: &str,
        args: &impl Serialize,
    ) -> Result<A::Handle, SpawnError> {
        let Some(executor) = self.inner.config.cluster.executor.clone() else {
            return Err(SpawnError::Remote {
                node: None,
                reason: "this runtime is not part of a cluster".to_owned(),
            });
        };
        let args = Encoded::of(args).map_err(|err| SpawnError::BadArguments {
            constructor: format!("{}::{constructor}", A::NAME),
            cause: err.to_string(),
        })?;
        let options = self.actor_in_group(options, A::NAME).await?;
        let node = match options.strategy {
            SchedulingStrategy::NodeAffinity { node, soft: false } => Some(node),
            _ => None,
        };
        let request = RemoteSpawn {
            type_name: A::NAME.to_owned(),
            constructor: constructor.to_owned(),
            options: options.clone(),
            args,
            wait_for_room: true,
        };
        let info = executor.spawn_actor(node, request.clone()).await?;
        // With restarts left, this runtime owns it: it restarts it on
        // another node when its node dies.
        let owner = self.track_placed(&info, request);
        Ok(A::Handle::from(self.raw_handle_for::<A>(
            info.clone(),
            info,
            owner,
            options,
        )))
    }

    /// Looks up the actor named `name` here, then on the other nodes of the
    /// cluster (Ray's `get_actor`, cluster-wide).
    pub async fn find_actor<A: Actor>(&self, name: &str) -> Result<A::Handle, LookupError> {
        match self.get_actor::<A>(name) {
            Err(LookupError::NotFound(_)) => {}
            found => return found,
        }
        let Some(executor) = self.inner.config.cluster.executor.clone() else {
            return Err(LookupError::NotFound(name.to_owned()));
        };
        let info = executor
            .find_actor(name)
            .await
            .ok_or_else(|| LookupError::NotFound(name.to_owned()))?;
        if info.type_name != A::NAME {
            return Err(LookupError::WrongType {
                name: name.to_owned(),
                expected: A::NAME.into(),
                actual: info.type_name,
            });
        }
        Ok(self.handle_for::<A>(info, ActorOptions::new().name(name)))
    }

    /// A handle to the actor `info` names: local if it lives here.
    pub(crate) fn handle_for<A: Actor>(&self, info: ActorInfo, options: ActorOptions) -> A::Handle {
        A::Handle::from(self.raw_handle_for::<A>(info.clone(), info, None, options))
    }

    /// A handle to the actor `info` (who it was first) living as `at`:
    /// local if it lives here, else through the cluster.
    pub(crate) fn raw_handle_for<A: Actor>(
        &self,
        info: ActorInfo,
        at: ActorInfo,
        owner: Option<ActorOwner>,
        options: ActorOptions,
    ) -> ActorHandle<A> {
        if at.node == self.node_id() {
            if let Some(slot) = self
                .inner
                .actors
                .get(at.id)
                .and_then(|control| control.slot_any().downcast::<Slot<A>>().ok())
            {
                return ActorHandle::new(slot, false);
            }
        }
        // Without a cluster (never the case here in practice) every call
        // fails and says so.
        let link: Arc<dyn ActorLink> = match self.inner.config.cluster.executor.clone() {
            Some(executor) => Arc::new(ExecutorLink {
                executor,
                runtime: self.downgrade(),
                me: self.node_id(),
            }),
            None => Arc::new(NoCluster),
        };
        ActorHandle::remote(info, at, owner, options, link, self.objects().clone())
    }

    /// Spawns what `owner` asked for ([`Runtime::spawn_remote`] on that
    /// node); who it is. Unless detached, the actor dies with its owner
    /// (when `owner` leaves or dies, [`Runtime::publish`] kills it).
    pub async fn spawn_requested(
        &self,
        request: RemoteSpawn,
        owner: NodeId,
    ) -> Result<ActorInfo, SpawnError> {
        let detached = request.options.detached;
        let mut request = request;
        request.options.wait_for_room = request.wait_for_room;
        let id = self
            .spawn_by_name(
                &request.type_name,
                &request.constructor,
                request.options,
                &request.args.bytes,
            )
            .await?;
        if owner != self.node_id() && !detached {
            self.inner.hosted.add(owner, id, &self.inner.actors);
        }
        // Its owner hears of its end (a supervisor there restarts it).
        if let Some(control) = self.inner.actors.get(id) {
            if owner == self.node_id() {
                let runtime = self.downgrade();
                control.when_dead(Box::new(move |reason| {
                    if let Some(rt) = runtime.upgrade() {
                        rt.remote_actor_exited(id, reason);
                    }
                }));
            } else if let Some(executor) = self.inner.config.cluster.executor.clone() {
                control.when_dead(Box::new(move |reason| {
                    executor.actor_exited(owner, id, reason);
                }));
            }
        }
        self.actor_info(id).ok_or(SpawnError::StartFailed {
            what: request.type_name,
            cause: "it stopped as soon as it started".to_owned(),
        })
    }

    /// `owner` left or died: the actors this node runs for it (and not
    /// detached) are killed, and what they hold is freed.
    pub(crate) fn end_hosted_by(&self, owner: NodeId) {
        let ids = self.inner.hosted.take(owner);
        for id in ids {
            let Some(control) = self.inner.actors.get(id) else {
                continue;
            };
            tracing::info!(actor = %id, %owner, "its owner is gone: killing the actor");
            metrics::counter!("troupe_actors_ended_with_owner_total").increment(1);
            tokio::spawn(async move {
                control.end(StopHow::Kill { no_restart: true }).await;
            });
        }
    }

    /// Who the live actor `id` of this node is.
    pub fn actor_info(&self, id: ActorId) -> Option<ActorInfo> {
        self.inner.actors.get(id).map(|c| (**c.info()).clone())
    }

    /// Who the live actor named `name` on this node is.
    pub fn named_actor(&self, name: &str) -> Option<ActorInfo> {
        self.inner.actors.named(name).map(|c| (**c.info()).clone())
    }

    /// Stops or kills this node's actor `id` as another node asked; returns
    /// once done (at once if there is no such actor).
    pub async fn stop_requested(&self, id: ActorId, how: StopHow) {
        let Some(control) = self.inner.actors.get(id) else {
            return;
        };
        control.end(how).await;
    }
}

/// The actors a runtime runs for owners on other nodes, by owner: they
/// share their owner's fate (Ray's non-detached actors).
#[derive(Default)]
pub(crate) struct HostedActors {
    by_owner: std::sync::Mutex<std::collections::HashMap<NodeId, Vec<ActorId>>>,
}

impl HostedActors {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<NodeId, Vec<ActorId>>> {
        self.by_owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `id`, run for `owner` (and forgets its actors that ended
    /// meanwhile, so that the table stays as large as what runs).
    fn add(&self, owner: NodeId, id: ActorId, actors: &crate::actor::Directory) {
        let mut table = self.lock();
        let list = table.entry(owner).or_default();
        list.retain(|a| actors.get(*a).is_some());
        list.push(id);
    }

    fn take(&self, owner: NodeId) -> Vec<ActorId> {
        self.lock().remove(&owner).unwrap_or_default()
    }
}

/// A handle's link to other nodes: the cluster's executor, and this
/// runtime for an actor restarted here or owned here.
struct ExecutorLink {
    executor: Arc<dyn crate::remote::RemoteExecutor>,
    runtime: WeakRuntime,
    me: NodeId,
}

impl ActorLink for ExecutorLink {
    fn call(
        &self,
        node: NodeId,
        actor: ActorId,
        method: &str,
        args: Encoded,
    ) -> BoxFuture<'static, Result<Encoded, ActorError>> {
        if node == self.me {
            if let Some(rt) = self.runtime.upgrade() {
                return rt.call_by_name(actor, method, &args.bytes);
            }
        }
        self.executor.call_actor(node, actor, method, args)
    }

    fn stop(&self, node: NodeId, actor: ActorId, how: StopHow) -> BoxFuture<'static, ()> {
        if node == self.me {
            if let Some(rt) = self.runtime.upgrade() {
                return Box::pin(async move { rt.stop_requested(actor, how).await });
            }
        }
        self.executor.stop_actor(node, actor, how)
    }

    fn moved(&self, owner: ActorOwner, known: ActorId) -> Option<Relocation> {
        if owner.owner != self.me {
            return None;
        }
        self.runtime
            .upgrade()?
            .inner
            .placed
            .moved(owner.actor, known)
    }

    fn locate(&self, owner: ActorOwner) -> BoxFuture<'static, Relocation> {
        if owner.owner == self.me {
            if let Some(rt) = self.runtime.upgrade() {
                return Box::pin(async move { rt.placed_actor_location(owner.actor).await });
            }
        }
        self.executor.locate_actor(owner)
    }

    fn ended(&self, owner: ActorOwner) {
        match self.runtime.upgrade() {
            Some(rt) if owner.owner == self.me => rt.forget_placed_actor(owner.actor),
            _ => self.executor.actor_ended(owner),
        }
    }

    fn alive(&self, node: NodeId) -> bool {
        node == self.me || self.executor.node_alive(node)
    }

    fn in_runtime(&self, decode: &mut dyn FnMut()) {
        let rt = self.runtime.upgrade();
        let _current = rt.as_ref().and_then(Runtime::decode_frame);
        decode()
    }
}

/// The link of a handle made without a cluster: every call fails.
struct NoCluster;

impl ActorLink for NoCluster {
    fn call(
        &self,
        node: NodeId,
        actor: ActorId,
        method: &str,
        _: Encoded,
    ) -> BoxFuture<'static, Result<Encoded, ActorError>> {
        let method = method.to_owned();
        Box::pin(async move {
            Err(ActorError::ActorDied {
                actor: Arc::new(ActorInfo::unknown(actor, node)),
                method: method.into(),
                reason: "this runtime is not part of a cluster".to_owned(),
            })
        })
    }

    fn stop(&self, _: NodeId, _: ActorId, _: StopHow) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn locate(&self, _: ActorOwner) -> BoxFuture<'static, Relocation> {
        Box::pin(async { Relocation::Dead("this runtime is not part of a cluster".to_owned()) })
    }

    fn ended(&self, _: ActorOwner) {}

    fn alive(&self, _: NodeId) -> bool {
        false
    }
}

/// How a handle travels (inside task arguments, actor calls, objects): who
/// the actor is and its options. Decoded inside a runtime (a task, an
/// actor, a call or task received from another node), it becomes a handle
/// of that runtime: local if the actor lives there, remote otherwise. A
/// handle that travels does not keep an unnamed actor alive: name it, or
/// keep a local handle while others use it.
#[derive(serde::Serialize, serde::Deserialize)]
struct HandleWire {
    /// Who it was first (its stable id).
    info: ActorInfo,
    /// Where it lives now, when that differs (restarted elsewhere).
    at: Option<ActorInfo>,
    /// Who restarts it when its node dies.
    owner: Option<ActorOwner>,
    options: ActorOptions,
}

impl<A: Actor> serde::Serialize for ActorHandle<A> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let info = self.info();
        let at = self.location();
        HandleWire {
            info: info.clone(),
            at: (*at != *info).then(|| (*at).clone()),
            owner: self.owner(),
            options: self.options().clone(),
        }
        .serialize(serializer)
    }
}

impl<'de, A: Actor> serde::Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = HandleWire::deserialize(deserializer)?;
        if wire.info.type_name != A::NAME {
            return Err(serde::de::Error::custom(format!(
                "a handle to a {} where a {} was expected",
                wire.info.type_name,
                A::NAME
            )));
        }
        let rt = Runtime::current().ok_or_else(|| {
            serde::de::Error::custom(
                "an actor handle decodes only inside a Troupe runtime (a task, an actor method, or a call from another node)",
            )
        })?;
        let at = wire.at.unwrap_or_else(|| wire.info.clone());
        Ok(rt.raw_handle_for::<A>(wire.info, at, wire.owner, wire.options))
    }
}

impl<A: Actor> troupe_objects::GetSize for ActorHandle<A> {}
