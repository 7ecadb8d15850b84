//! Typed handles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use futures::future::BoxFuture;

use super::call::{Async, CallCell, Inline, MayBlock, Pending};
use super::slot::{Forbid, Signal, Slot};
use super::StopHow;
use super::{Actor, ActorOptions};
use crate::error::{ActorError, CallProblem};
use crate::ids::ActorOwner;
use crate::ids::{ActorId, ActorInfo};
use troupe_objects::{Encoded, ObjectStore};

/// An untyped-method handle to an actor; `#[troupe::actor]` wraps it in a
/// typed handle. Cheap to clone; valid across restarts.
///
/// An unnamed actor spawned with `Runtime::spawn_actor` lives while a handle
/// to it does: when the last one is dropped, it answers the calls already
/// sent and stops (as Ray collects actors). Named actors and actors in your
/// own trees live until stopped, killed, removed or shut down.
pub struct ActorHandle<A: Actor> {
    target: Target<A>,
}

/// Where the actor lives: here (its slot), or on another node (reached
/// through the cluster's executor).
enum Target<A: Actor> {
    Local(Arc<Owner<A>>),
    Remote(Arc<RemoteActor>),
}

/// Shared by all clones of a handle; its drop is the last handle's drop.
struct Owner<A: Actor> {
    slot: Arc<Slot<A>>,
    collect_on_drop: bool,
}

impl<A: Actor> Drop for Owner<A> {
    fn drop(&mut self) {
        if self.collect_on_drop {
            self.slot.send_stop(Forbid::Collected);
        }
    }
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        Self {
            target: match &self.target {
                Target::Local(owner) => Target::Local(owner.clone()),
                Target::Remote(remote) => Target::Remote(remote.clone()),
            },
        }
    }
}

impl<A: Actor> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Local(owner) => write!(f, "ActorHandle({})", owner.slot.info),
            Target::Remote(remote) => write!(
                f,
                "ActorHandle({} on node {})",
                remote.info,
                remote.at.load().node
            ),
        }
    }
}

/// How a handle reaches actors on other nodes (the runtime adapts the
/// cluster's `RemoteExecutor` to it; actors know nothing of the network).
pub trait ActorLink: Send + Sync + 'static {
    /// Calls `method` of `actor` on `node` with encoded arguments.
    fn call(
        &self,
        node: crate::ids::NodeId,
        actor: ActorId,
        method: &str,
        args: Encoded,
    ) -> BoxFuture<'static, Result<Encoded, ActorError>>;

    /// Stops or kills `actor` on `node`.
    fn stop(
        &self,
        node: crate::ids::NodeId,
        actor: ActorId,
        how: StopHow,
    ) -> BoxFuture<'static, ()>;

    /// Asks the actor's owner where it lives now.
    fn locate(&self, owner: ActorOwner) -> BoxFuture<'static, Relocation>;

    /// Tells the actor's owner not to restart it: it was stopped for good.
    fn ended(&self, owner: ActorOwner);

    /// Whether `node` is alive and reachable.
    fn alive(&self, node: crate::ids::NodeId) -> bool;

    /// Where the actor lives now if not as `known`, when its owner is this
    /// node (a lookup, no message): a supervisor here may have restarted
    /// it elsewhere. `None`: unchanged, or not known here.
    fn moved(&self, owner: ActorOwner, known: ActorId) -> Option<Relocation> {
        let _ = (owner, known);
        None
    }

    /// Runs `decode` with this node's runtime current, so that the actor
    /// handles a reply holds become handles of this runtime (a reply is
    /// decoded wherever its caller awaits it, maybe outside any task).
    fn in_runtime(&self, decode: &mut dyn FnMut()) {
        decode()
    }
}

/// What an actor's owner answers when asked where it lives now.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Relocation {
    /// It lives there.
    At(ActorInfo),
    /// Its node died and it is being restarted elsewhere: ask again.
    Restarting,
    /// It is dead for good, and why.
    Dead(String),
}

/// How long a call waits for an actor whose node died to be restarted
/// elsewhere by its owner before failing with `ActorDied`.
const RELOCATE_WAIT: Duration = Duration::from_secs(30);

/// An actor on another node, as a handle reaches it: calls travel as a
/// method name and encoded arguments (`#[troupe::actor]`'s typed methods
/// encode them), through the cluster.
///
/// An actor with restarts left has an owner (the process that spawned
/// it), which restarts it on another node when its node dies. A call that
/// finds its node dead asks the owner where it lives now and goes there;
/// calls in flight when the node died fail with `ActorDied` (Ray's
/// semantics without `max_task_retries`).
pub struct RemoteActor {
    /// Who it is, as first spawned (its id is the handle's stable id).
    info: Arc<ActorInfo>,
    /// Where calls go now.
    at: ArcSwap<ActorInfo>,
    owner: Option<ActorOwner>,
    options: ActorOptions,
    executor: Arc<dyn ActorLink>,
    store: ObjectStore,
    /// A call found it dead: ask the owner before the next one.
    stale: AtomicBool,
    dead: AtomicBool,
}

impl RemoteActor {
    /// Who the actor is.
    pub fn info_arc(&self) -> Arc<ActorInfo> {
        self.info.clone()
    }

    /// Calls `method` with encoded arguments; the reply's encoding. Sent
    /// before this returns (so calls made one after another keep their
    /// order), unless the actor's node died: then once its owner says
    /// where it was restarted.
    pub fn call_encoded(
        self: &Arc<Self>,
        method: &'static str,
        args: Encoded,
    ) -> BoxFuture<'static, Result<Encoded, ActorError>> {
        let mut at = self.at.load_full();
        let mut restarting = false;
        if let Some(owner) = self.owner {
            // Owned here: the owner's table is at hand, so a restart
            // (a supervisor's, say) is followed before the call, not after
            // a failed one.
            match self.executor.moved(owner, at.id) {
                Some(Relocation::At(info)) => {
                    let info = Arc::new(info);
                    self.at.store(info.clone());
                    self.stale.store(false, Ordering::Release);
                    at = info;
                }
                Some(Relocation::Restarting) => restarting = true,
                _ => {}
            }
        }
        let relocate = self.owner.is_some()
            && (restarting || self.stale.load(Ordering::Acquire) || !self.executor.alive(at.node));
        let remote = self.clone();
        if !relocate {
            let reply = self.executor.call(at.node, at.id, method, args);
            return Box::pin(async move {
                let result = reply.await;
                remote.settle(&result);
                result
            });
        }
        Box::pin(async move {
            let at = remote.relocate(method).await?;
            let result = remote.executor.call(at.node, at.id, method, args).await;
            remote.settle(&result);
            result
        })
    }

    fn settle<T>(&self, result: &Result<T, ActorError>) {
        if let Err(ActorError::ActorDied { .. }) = result {
            if self.owner.is_some() {
                self.stale.store(true, Ordering::Release);
            } else {
                self.dead.store(true, Ordering::Release);
            }
        }
    }

    /// Asks the owner where the actor lives now, until it says (it may
    /// not have heard of the death yet, or be restarting it).
    async fn relocate(&self, method: &'static str) -> Result<Arc<ActorInfo>, ActorError> {
        let died = |reason: String| ActorError::ActorDied {
            actor: self.info.clone(),
            method: method.into(),
            reason,
        };
        let Some(owner) = self.owner else {
            return Err(died("it has no owner to restart it".to_owned()));
        };
        let deadline = Instant::now() + RELOCATE_WAIT;
        loop {
            match self.executor.locate(owner).await {
                Relocation::At(info) if self.executor.alive(info.node) => {
                    let info = Arc::new(info);
                    self.at.store(info.clone());
                    self.stale.store(false, Ordering::Release);
                    return Ok(info);
                }
                // Its owner has not heard of the death yet, or is restarting it.
                Relocation::At(_) | Relocation::Restarting => {}
                Relocation::Dead(reason) => {
                    self.dead.store(true, Ordering::Release);
                    return Err(died(reason));
                }
            }
            if Instant::now() >= deadline {
                return Err(died(format!(
                    "its node died and its owner {} did not restart it within {RELOCATE_WAIT:?}",
                    owner.owner
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Calls `method` with `args`, decoding the reply as `R` (refs in it
    /// attach to this node's store).
    pub fn call<Args, R>(self: &Arc<Self>, method: &'static str, args: &Args) -> Pending<R>
    where
        Args: serde::Serialize,
        R: serde::de::DeserializeOwned + Send + 'static,
    {
        let bytes = match Encoded::of(args) {
            Ok(bytes) => bytes,
            Err(err) => {
                return Pending::ready(Err(ActorError::BadCall {
                    actor: self.info.clone(),
                    method: method.to_owned(),
                    problem: CallProblem::Arguments,
                    reason: format!("its arguments did not encode: {err}"),
                }))
            }
        };
        let call = self.call_encoded(method, bytes);
        let store = self.store.clone();
        let info = self.info.clone();
        let link = self.executor.clone();
        Pending::from_future(async move {
            // Its refs are held (since it arrived) until it is decoded.
            let reply = call.await?;
            let mut decoded = None;
            link.in_runtime(&mut || decoded = Some(store.decode::<R>(&reply.bytes)));
            let bad = |reason: String| ActorError::BadCall {
                actor: info,
                method: method.to_owned(),
                problem: CallProblem::Result,
                reason,
            };
            match decoded {
                Some(Ok(value)) => Ok(value),
                Some(Err(err)) => Err(bad(format!("its reply did not decode: {err}"))),
                None => Err(bad("the cluster's link did not decode its reply".to_owned())),
            }
        })
    }

    /// Stops or kills it where it lives now; `for_good`: tell its owner
    /// not to restart it.
    async fn end(&self, how: StopHow, for_good: bool) {
        if for_good {
            if let Some(owner) = self.owner {
                self.executor.ended(owner);
            }
        }
        let at = self.at.load_full();
        self.executor.stop(at.node, at.id, how).await;
        if for_good {
            self.dead.store(true, Ordering::Release);
        }
    }
}

impl<A: Actor> ActorHandle<A> {
    /// A handle; with `collect_on_drop`, dropping its last clone stops the
    /// actor.
    pub(crate) fn new(slot: Arc<Slot<A>>, collect_on_drop: bool) -> Self {
        Self {
            target: Target::Local(Arc::new(Owner {
                slot,
                collect_on_drop,
            })),
        }
    }

    /// A handle to an actor on another node (the runtime makes these:
    /// `Runtime::spawn_remote`, `Runtime::find_actor`).
    pub(crate) fn remote(
        info: ActorInfo,
        at: ActorInfo,
        owner: Option<ActorOwner>,
        options: ActorOptions,
        executor: Arc<dyn ActorLink>,
        store: ObjectStore,
    ) -> Self {
        Self {
            target: Target::Remote(Arc::new(RemoteActor {
                info: Arc::new(info),
                at: ArcSwap::from_pointee(at),
                owner,
                options,
                executor,
                store,
                stale: AtomicBool::new(false),
                dead: AtomicBool::new(false),
            })),
        }
    }

    /// Where the actor lives now, as far as this handle knows: for an
    /// actor on another node restarted elsewhere, its new node and id
    /// ([`info`](Self::info) stays who it was first).
    pub fn location(&self) -> Arc<ActorInfo> {
        match &self.target {
            Target::Local(owner) => owner.slot.info.clone(),
            Target::Remote(remote) => remote.at.load_full(),
        }
    }

    /// Who keeps track of the actor across its node's death (an actor on
    /// another node with restarts left).
    pub fn owner(&self) -> Option<ActorOwner> {
        match &self.target {
            Target::Local(_) => None,
            Target::Remote(remote) => remote.owner,
        }
    }

    /// The actor on another node this handle reaches, if it is not here
    /// (what `#[troupe::actor]`'s typed methods check first).
    #[doc(hidden)]
    pub fn remote_target(&self) -> Option<&Arc<RemoteActor>> {
        match &self.target {
            Target::Remote(remote) => Some(remote),
            Target::Local(_) => None,
        }
    }

    /// Whether the actor lives on another node.
    pub fn is_remote(&self) -> bool {
        matches!(self.target, Target::Remote(_))
    }

    fn local_only<R>(&self, method: &'static str) -> Result<&Arc<Slot<A>>, Pending<R>> {
        match &self.target {
            Target::Local(owner) => Ok(&owner.slot),
            Target::Remote(remote) => Err(Pending::ready(Err(ActorError::BadCall {
                actor: remote.info.clone(),
                method: method.to_owned(),
                problem: CallProblem::NotRemotable,
                reason: "the actor is on another node, and a closure cannot travel: call it through its typed handle's methods".to_owned(),
            }))),
        }
    }

    /// Calls a synchronous method (it runs on the actor's task, on a runtime
    /// worker: keep it short, or use [`call_blocking`](Self::call_blocking)).
    /// The call is sent before this returns, so calls made one after another
    /// run in that order whether or not their replies are awaited.
    pub fn call<R, F>(&self, method: &'static str, f: F) -> Pending<R>
    where
        F: FnOnce(&mut A) -> R + Send + 'static,
        R: Send + 'static,
    {
        let slot = match self.local_only(method) {
            Ok(slot) => slot,
            Err(refused) => return refused,
        };
        let cell = Arc::new(CallCell::new(slot.info.clone(), method, Inline(f)));
        slot.send(cell.clone());
        Pending::waiting(cell)
    }

    /// Calls a synchronous method that may block (file I/O, a long
    /// computation, `get_blocking`): its worker thread is handed to the
    /// runtime's other tasks while it runs (`#[blocking]` methods).
    pub fn call_blocking<R, F>(&self, method: &'static str, f: F) -> Pending<R>
    where
        F: FnOnce(&mut A) -> R + Send + 'static,
        R: Send + 'static,
    {
        let slot = match self.local_only(method) {
            Ok(slot) => slot,
            Err(refused) => return refused,
        };
        let cell = Arc::new(CallCell::new(slot.info.clone(), method, MayBlock(f)));
        slot.send(cell.clone());
        Pending::waiting(cell)
    }

    /// Calls an async method; it still has the actor to itself until done.
    pub fn call_async<R, F>(&self, method: &'static str, f: F) -> Pending<R>
    where
        F: for<'a> FnOnce(&'a mut A) -> BoxFuture<'a, R> + Send + 'static,
        R: Send + 'static,
    {
        let slot = match self.local_only(method) {
            Ok(slot) => slot,
            Err(refused) => return refused,
        };
        let cell = Arc::new(CallCell::new(slot.info.clone(), method, Async(f)));
        slot.send(cell.clone());
        Pending::waiting(cell)
    }

    /// Who this actor is.
    pub fn info(&self) -> &ActorInfo {
        match &self.target {
            Target::Local(owner) => &owner.slot.info,
            Target::Remote(remote) => &remote.info,
        }
    }

    pub(crate) fn info_arc(&self) -> Arc<ActorInfo> {
        match &self.target {
            Target::Local(owner) => owner.slot.info.clone(),
            Target::Remote(remote) => remote.info.clone(),
        }
    }

    /// Its id, unique across nodes and stable across restarts.
    pub fn id(&self) -> ActorId {
        self.info().id
    }

    /// The options it was spawned with.
    pub fn options(&self) -> &ActorOptions {
        match &self.target {
            Target::Local(owner) => &owner.slot.options,
            Target::Remote(remote) => &remote.options,
        }
    }

    /// Whether an incarnation is running now (false while restarting). For
    /// an actor on another node: whether it has not been seen dead.
    pub fn is_alive(&self) -> bool {
        match &self.target {
            Target::Local(owner) => owner.slot.is_alive(),
            Target::Remote(remote) => !remote.dead.load(Ordering::Acquire),
        }
    }

    /// Whether the actor is dead for good (for an actor on another node:
    /// a call found it dead, or its node died).
    pub fn is_dead(&self) -> bool {
        match &self.target {
            Target::Local(owner) => owner.slot.dead_reason().is_some(),
            Target::Remote(remote) => remote.dead.load(Ordering::Acquire),
        }
    }

    /// How many times it has been restarted (0 for an actor on another
    /// node: not reported across nodes yet).
    pub fn restarts(&self) -> u32 {
        match &self.target {
            Target::Local(owner) => owner.slot.restarts.load(Ordering::Acquire),
            Target::Remote(_) => 0,
        }
    }

    /// Stops the actor gracefully: it answers the calls sent before this,
    /// then stops for good (no restart; its name and resources are given
    /// back). Calls sent after it fail with [`ActorError::ActorDied`].
    /// Returns once it is dead (ractor's `stop_and_wait`, kameo's
    /// `stop_gracefully`).
    ///
    /// [`ActorError::ActorDied`]: crate::ActorError::ActorDied
    pub async fn stop(&self) {
        match &self.target {
            Target::Local(owner) => {
                owner.slot.send_stop(Forbid::Stopped);
                owner.slot.wait_dead().await;
            }
            Target::Remote(remote) => remote.end(StopHow::Stop, true).await,
        }
    }

    /// Kills the running incarnation at once (Ray's `ray.kill`): an async
    /// call in progress stops at its next await and fails with
    /// `ActorDied`; a sync method cannot be interrupted and finishes first.
    /// With `no_restart` the actor is dead for good: queued and later calls
    /// fail with `ActorDied`, and its name and resources are given back only
    /// once it has stopped. Otherwise it restarts if it has restarts left.
    /// Returns once the incarnation has stopped (and, with `no_restart`,
    /// once the actor is dead).
    pub async fn kill(&self, no_restart: bool) {
        let slot = match &self.target {
            Target::Local(owner) => &owner.slot,
            Target::Remote(remote) => {
                return remote.end(StopHow::Kill { no_restart }, no_restart).await;
            }
        };
        if no_restart {
            slot.forbid_restart(Forbid::Killed);
        }
        let seen = slot.incarnations();
        if slot.is_alive() {
            slot.signals.raise(Signal::Kill);
            slot.wait_incarnation_end(seen).await;
        }
        if no_restart {
            slot.wait_dead().await;
        }
    }
}
