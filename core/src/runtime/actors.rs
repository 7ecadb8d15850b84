//! Actors: spawning (supervised in place, or as children of your own
//! trees), names, and supervision trees of your own.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::Runtime;
use crate::actor::{
    construct, describe, rules_of, run_in_place, start_as_child, Actor, ActorHandle, ActorInfo,
    ActorOptions, Control, Factory, Slot,
};
use crate::error::{LookupError, SpawnError};
use crate::scheduler::{state::ReserveError, Reservation, Units};
use crate::supervisor::SupervisionEvent;
use crate::supervisor::{
    ChildSpec, Running, StartContext, Supervisor, SupervisorError, SupervisorRef, SupervisorSpec,
};

impl Runtime {
    /// Spawns an actor under the user subtree. `new` builds the instance and
    /// is called again, with the same captured arguments, on each restart.
    /// A panic in `new` is a failed start: the error says so.
    pub async fn spawn_actor<A, F>(
        &self,
        options: ActorOptions,
        new: F,
    ) -> Result<A::Handle, SpawnError>
    where
        A: Actor,
        F: Fn() -> A + Send + Sync + 'static,
    {
        self.spawn_with_factory(options, Factory::Sync(Arc::new(new)))
            .await
    }

    /// Like [`spawn_actor`](Self::spawn_actor) with an async, fallible
    /// constructor; its error fails the start (or the restart).
    pub async fn spawn_actor_with<A, F, Fut, E>(
        &self,
        options: ActorOptions,
        new: F,
    ) -> Result<A::Handle, SpawnError>
    where
        A: Actor,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A, E>> + Send + 'static,
        E: fmt::Display,
    {
        let factory = Factory::Async(Arc::new(move || {
            let building = new();
            Box::pin(async move { building.await.map_err(|e| e.to_string()) })
        }));
        self.spawn_with_factory(options, factory).await
    }

    async fn spawn_with_factory<A: Actor>(
        &self,
        options: ActorOptions,
        factory: Factory<A>,
    ) -> Result<A::Handle, SpawnError> {
        // Unnamed actors are collected with their last handle; named ones
        // stay reachable through get_actor, so they live until stopped.
        let collect = options.name.is_none();
        self.spawn_inner(options, factory, collect)
            .await
            .map(A::Handle::from)
    }

    /// Spawns an actor supervised in place; with `collect`, dropping its
    /// last handle stops it.
    pub(crate) async fn spawn_inner<A: Actor>(
        &self,
        options: ActorOptions,
        factory: Factory<A>,
        collect: bool,
    ) -> Result<ActorHandle<A>, SpawnError> {
        if self.is_shut_down() {
            return Err(SpawnError::RuntimeShutDown);
        }
        let options = self.local_actor_in_group(options, A::NAME).await?;
        let reservation = match self.needs_of(&options)? {
            None => None,
            Some(needs) if options.wait_for_room => {
                let reserved = self.inner.scheduler.reserve(needs).await;
                Some(self.reserved::<A>(&options, reserved)?)
            }
            Some(needs) => Some(self.reserve_now::<A>(&options, &needs)?),
        };
        let bundle = (!options.resources.custom.is_empty()).then(|| options.resources.clone());
        let (slot, handle) = self.new_slot::<A>(options, reservation, collect, true)?;
        if let Some(resources) = bundle {
            self.adopt_into_bundle(&resources, slot.info.id);
        }
        // The caller may drop this future while an async constructor runs:
        // the slot (its name, resources, directory entry) must not outlive
        // that as a live actor nobody started.
        let unstarted = Unstarted(Some(&*slot));
        let built = construct(&slot.info, &factory, &self.inner.env).await;
        unstarted.disarm();
        match built {
            Ok(actor) => {
                slot.started();
                let env = self.inner.env.clone();
                self.inner.events.emit(|| SupervisionEvent::ChildStarted {
                    supervisor: env.supervisor.clone(),
                    child: slot.info.to_string().into(),
                });
                self.inner
                    .handle
                    .spawn(run_in_place(slot, factory, env, actor));
                Ok(handle)
            }
            Err(cause) => {
                let err = SpawnError::StartFailed {
                    what: slot.info.to_string(),
                    cause,
                };
                self.inner
                    .events
                    .emit(|| SupervisionEvent::ChildStartFailed {
                        supervisor: self.inner.env.supervisor.clone(),
                        child: slot.info.to_string().into(),
                        error: err.to_string(),
                    });
                slot.mark_dead(err.to_string());
                Err(err)
            }
        }
    }

    /// A child spec running a typed actor, for your own supervision trees,
    /// and its handle (calls wait in its mailbox until the tree starts it).
    /// The name, if any, is taken now. The tree's supervisor restarts it
    /// per its strategy; `max_restarts` caps its restarts over its life.
    pub fn actor_child<A, F>(
        &self,
        options: ActorOptions,
        new: F,
    ) -> Result<(ChildSpec, A::Handle), SpawnError>
    where
        A: Actor,
        F: Fn() -> A + Send + Sync + 'static,
    {
        if self.is_shut_down() {
            return Err(SpawnError::RuntimeShutDown);
        }
        let options = match self.actor_in_group_now(&options, A::NAME)? {
            Some(placed) => self.here_or_refuse(placed)?,
            None => return Err(Self::group_not_ready(&options)),
        };
        let reservation = match self.needs_of(&options)? {
            None => None,
            Some(needs) => Some(self.reserve_now::<A>(&options, &needs)?),
        };
        let max_restarts = options.max_restarts;
        let shutdown = options.shutdown;
        let bundle = (!options.resources.custom.is_empty()).then(|| options.resources.clone());
        let (slot, handle) = self.new_slot::<A>(options, reservation, false, false)?;
        if let Some(resources) = bundle {
            self.adopt_into_bundle(&resources, slot.info.id);
        }
        let factory = Factory::Sync(Arc::new(new));
        let env = self.inner.env.clone();
        let start_slot = slot.clone();
        let rules = rules_of(max_restarts);
        let spec = ChildSpec::with_start(
            slot.info.to_string(),
            Arc::new(move |ctx: StartContext| {
                let slot = start_slot.clone();
                let factory = factory.clone();
                let env = env.clone();
                Box::pin(async move {
                    start_as_child(slot, factory, env, ctx.reports, ctx.path)
                        .await
                        .map(Running::Native)
                })
            }),
        )
        .restart(rules.restart)
        .max_restarts(rules.max_restarts)
        .shutdown(shutdown)
        .restart_if({
            let slot = slot.clone();
            move || slot.restart_forbidden().is_none()
        })
        .on_exit({
            let slot = slot.clone();
            move |exit| {
                let reason = match slot.restart_forbidden() {
                    Some(why) => why.to_string(),
                    None => describe(&exit, max_restarts),
                };
                slot.mark_dead(reason)
            }
        });
        Ok((spec, A::Handle::from(handle)))
    }

    /// What an actor's options ask the node to hold, if anything.
    fn needs_of(&self, options: &ActorOptions) -> Result<Option<Units>, SpawnError> {
        options
            .resources
            .validate()
            .map_err(SpawnError::InvalidResources)?;
        let needs = Units::of(&options.resources);
        Ok((!needs.is_zero()).then_some(needs))
    }

    /// Holds `needs` for the actor now, or fails with `ResourcesBusy`.
    fn reserve_now<A: Actor>(
        &self,
        options: &ActorOptions,
        needs: &Units,
    ) -> Result<Reservation, SpawnError> {
        let reserved = match self.inner.scheduler.try_reserve(needs) {
            Ok(Some(granted)) => Ok(granted),
            Ok(None) => {
                return Err(SpawnError::ResourcesBusy {
                    what: A::NAME.to_owned(),
                    needs: options.resources.clone(),
                })
            }
            Err(err) => Err(err),
        };
        self.reserved::<A>(options, reserved)
    }

    fn reserved<A: Actor>(
        &self,
        options: &ActorOptions,
        reserved: Result<Reservation, ReserveError>,
    ) -> Result<Reservation, SpawnError> {
        reserved.map_err(|err| match err {
            ReserveError::ShutDown => SpawnError::RuntimeShutDown,
            ReserveError::Infeasible => SpawnError::Infeasible {
                what: A::NAME.to_owned(),
                needs: options.resources.clone(),
                node: self.inner.scheduler.capacity().clone(),
            },
        })
    }

    /// A new actor's slot and handle, its name taken and its resources held.
    fn new_slot<A: Actor>(
        &self,
        options: ActorOptions,
        reservation: Option<Reservation>,
        collect_on_drop: bool,
        in_place: bool,
    ) -> Result<(Arc<Slot<A>>, ActorHandle<A>), SpawnError> {
        let id = self.inner.ids.actor();
        let info = Arc::new(ActorInfo {
            id,
            name: options.name.clone(),
            type_name: A::NAME.into(),
            node: self.node_id(),
            resources: options.resources.clone(),
            gpu_ids: reservation
                .as_ref()
                .map(Reservation::gpu_ids)
                .unwrap_or_default(),
        });
        if let Some(name) = &options.name {
            if !self.inner.actors.claim(name, id) {
                return Err(SpawnError::NameTaken(name.clone()));
            }
        }
        let slot = Arc::new(Slot::<A>::new(
            info,
            options,
            Arc::downgrade(&self.inner.actors),
        ));
        if in_place {
            slot.supervised_by(self.inner.user_path.clone());
        }
        if let Some(reservation) = reservation {
            tracing::debug!(actor = %slot.info, gpu_ids = ?slot.info.gpu_ids, "actor holds resources");
            // Held across restarts; given back once the actor is dead for good.
            slot.on_dead(Box::new(move |_| drop(reservation)));
        }
        self.inner
            .actors
            .add(slot.clone() as Arc<dyn Control>, in_place);
        Ok((slot.clone(), ActorHandle::new(slot, collect_on_drop)))
    }

    /// Starts a supervision tree of your own under the user subtree. If it
    /// exceeds its restart intensity it stops (and reports it); nest trees in
    /// one spec to escalate through more levels.
    pub async fn spawn_supervisor(
        &self,
        spec: SupervisorSpec,
    ) -> Result<SupervisorRef, SpawnError> {
        let user = self.user_supervisor()?;
        let spec = if spec.events.is_none() {
            spec.events(self.inner.events.clone())
        } else {
            spec
        };
        let started: Arc<Mutex<Option<SupervisorRef>>> = Arc::new(Mutex::new(None));
        let out = started.clone();
        let child = ChildSpec::from_fn(spec.name.clone(), move |ctx: StartContext| {
            let spec = spec.clone();
            let out = out.clone();
            async move {
                let sup = Supervisor::spawn_child(spec, &ctx).await?;
                let cell = sup.cell();
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(sup);
                Ok(cell)
            }
        })
        .restart(crate::supervisor::Restart::Temporary);
        user.start_child(child).await.map_err(|err| match err {
            SupervisorError::Spawn(e) => e,
            _ => SpawnError::SupervisorDown {
                supervisor: user.name().to_owned(),
            },
        })?;
        let sup = started.lock().unwrap_or_else(|e| e.into_inner()).take();
        sup.ok_or(SpawnError::SupervisorDown {
            supervisor: "user".to_owned(),
        })
    }

    /// Looks up a named actor, typed (Ray's `get_actor`).
    pub fn get_actor<A: Actor>(&self, name: &str) -> Result<A::Handle, LookupError> {
        let control = self
            .inner
            .actors
            .named(name)
            .ok_or_else(|| LookupError::NotFound(name.to_owned()))?;
        let actual = control.info().type_name.clone();
        let slot =
            control
                .slot_any()
                .downcast::<Slot<A>>()
                .map_err(|_| LookupError::WrongType {
                    name: name.to_owned(),
                    expected: A::NAME.into(),
                    actual,
                })?;
        Ok(A::Handle::from(ActorHandle::new(slot, false)))
    }
}

/// Marks a slot dead if the spawn that made it ends before its actor
/// starts (the spawning future was dropped).
struct Unstarted<'a, A: Actor>(Option<&'a Slot<A>>);

impl<A: Actor> Unstarted<'_, A> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<A: Actor> Drop for Unstarted<'_, A> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.mark_dead("the spawn was cancelled before the actor started".to_owned());
        }
    }
}
