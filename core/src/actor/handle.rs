//! Typed handles.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::call::{Async, CallCell, Inline, MayBlock, Pending};
use super::slot::{Forbid, Signal, Slot};
use super::{Actor, ActorOptions};
use crate::ids::{ActorId, ActorInfo};

/// An untyped-method handle to an actor; `#[troupe::actor]` wraps it in a
/// typed handle. Cheap to clone; valid across restarts.
///
/// An unnamed actor spawned with `Runtime::spawn_actor` lives while a handle
/// to it does: when the last one is dropped, it answers the calls already
/// sent and stops (as Ray collects actors). Named actors and actors in your
/// own trees live until stopped, killed, removed or shut down.
pub struct ActorHandle<A: Actor> {
    owner: Arc<Owner<A>>,
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
            owner: self.owner.clone(),
        }
    }
}

impl<A: Actor> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({})", self.owner.slot.info)
    }
}

impl<A: Actor> ActorHandle<A> {
    /// A handle; with `collect_on_drop`, dropping its last clone stops the
    /// actor.
    pub(crate) fn new(slot: Arc<Slot<A>>, collect_on_drop: bool) -> Self {
        Self {
            owner: Arc::new(Owner {
                slot,
                collect_on_drop,
            }),
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
        let slot = &self.owner.slot;
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
        let slot = &self.owner.slot;
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
        let slot = &self.owner.slot;
        let cell = Arc::new(CallCell::new(slot.info.clone(), method, Async(f)));
        slot.send(cell.clone());
        Pending::waiting(cell)
    }

    /// Who this actor is.
    pub fn info(&self) -> &ActorInfo {
        &self.owner.slot.info
    }

    pub(crate) fn info_arc(&self) -> Arc<ActorInfo> {
        self.owner.slot.info.clone()
    }

    /// Its id, unique across nodes and stable across restarts.
    pub fn id(&self) -> ActorId {
        self.owner.slot.info.id
    }

    /// The options it was spawned with.
    pub fn options(&self) -> &ActorOptions {
        &self.owner.slot.options
    }

    /// Whether an incarnation is running now (false while restarting).
    pub fn is_alive(&self) -> bool {
        self.owner.slot.is_alive()
    }

    /// Whether the actor is dead for good.
    pub fn is_dead(&self) -> bool {
        self.owner.slot.dead_reason().is_some()
    }

    /// How many times it has been restarted.
    pub fn restarts(&self) -> u32 {
        self.owner.slot.restarts.load(Ordering::Acquire)
    }

    /// Stops the actor gracefully: it answers the calls sent before this,
    /// then stops for good (no restart; its name and resources are given
    /// back). Calls sent after it fail with [`ActorError::ActorDied`].
    /// Returns once it is dead (ractor's `stop_and_wait`, kameo's
    /// `stop_gracefully`).
    ///
    /// [`ActorError::ActorDied`]: crate::ActorError::ActorDied
    pub async fn stop(&self) {
        self.owner.slot.send_stop(Forbid::Stopped);
        self.owner.slot.wait_dead().await;
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
        let slot = &self.owner.slot;
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
