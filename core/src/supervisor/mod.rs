//! Erlang/OTP supervisors for any [`ractor::Actor`] and for Troupe actors.
//!
//! A [`Supervisor`] starts its children in order, watches them, restarts them
//! according to its [`Strategy`] and each child's [`Restart`] type, and stops
//! them in reverse order. More restarts than its [`Intensity`] allows within
//! the window make it stop all its children and fail, so the failure
//! escalates to its own supervisor. The decision itself is made in one
//! place, `policy.rs`, shared with the drivers of top-level actors.
//!
//! Why our own and not `ractor-supervisor`: that crate requires every child to
//! be registered under a global name; Troupe's children are mostly unnamed and
//! short-lived, and several runtimes share one process (see ARCHITECTURE.md).
//!
//! ```
//! use std::time::Duration;
//! use troupe_core::supervisor::{ChildSpec, Intensity, Strategy, Supervisor, SupervisorSpec};
//! # #[derive(Clone)] struct Worker;
//! # impl ractor::Actor for Worker {
//! #     type Msg = (); type State = (); type Arguments = ();
//! #     async fn pre_start(&self, _: ractor::ActorRef<()>, _: ()) -> Result<(), ractor::ActorProcessingErr> { Ok(()) }
//! # }
//! # #[tokio::main] async fn main() {
//! let spec = SupervisorSpec::new("workers", Strategy::OneForAll)
//!     .intensity(Intensity::new(3, Duration::from_secs(5)))
//!     .child(ChildSpec::new("a", Worker, ()))
//!     .child(ChildSpec::new("b", Worker, ()));
//! let sup = Supervisor::spawn(spec).await.unwrap();
//! assert_eq!(sup.which_children().await.unwrap().len(), 2);
//! sup.stop(Duration::from_secs(5)).await;
//! # }
//! ```

mod child;
mod event;
mod handle;
mod lifecycle;
pub(crate) mod policy;
mod spec;

pub(crate) use child::Member;
pub use child::{ChildExit, ChildSpec, Restart, Shutdown, StartContext, DEFAULT_SHUTDOWN};
#[doc(hidden)]
pub use child::{NativeChild, NativeControl, Running};
pub use event::{EventBus, SupervisionEvent};
pub(crate) use handle::children_of;
pub use policy::{Backoff, Intensity};
pub use spec::SupervisorSpec;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::SpawnError;
use policy::{ChildRules, Exit, Verdict, Window};

/// Which children are restarted when one of them has to be (OTP strategies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// All children: the others are stopped (reverse order), then all are
    /// started again (in order).
    OneForAll,
    /// The child that exited and every child started after it.
    RestForOne,
}

/// Identifies a child within its supervisor; stable across restarts.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ChildKey(u64);

/// A request to a supervisor failed.
#[derive(Debug, thiserror::Error, Clone, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The supervisor is not running.
    #[error("supervisor {0:?} is not running")]
    Down(String),
    /// The supervisor did not answer in time.
    #[error("supervisor {supervisor:?} did not answer within {after:?}")]
    Timeout {
        /// Name of the supervisor.
        supervisor: String,
        /// How long it waited.
        after: Duration,
    },
    /// Starting a child failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// No child with that key.
    #[error("supervisor {supervisor:?} has no child {key}")]
    NoSuchChild {
        /// Name of the supervisor.
        supervisor: String,
        /// The key asked for.
        key: ChildKey,
    },
}

impl fmt::Display for ChildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why something failed last, and when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastFailure {
    /// What happened (a panic's message, an error, "killed").
    pub reason: String,
    /// When, in microseconds since the Unix epoch.
    pub at_us: u64,
}

impl LastFailure {
    /// A failure now.
    pub fn now(reason: impl Into<String>) -> Self {
        let at_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Self {
            reason: reason.into(),
            at_us,
        }
    }
}

/// One child as [`SupervisorRef::which_children`] reports it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChildInfo {
    /// Its key.
    pub key: ChildKey,
    /// Its id.
    pub id: Arc<str>,
    /// Whether it is running now (false while it waits for a backed-off
    /// restart).
    pub running: bool,
    /// The running ractor actor, if the child is one (a Troupe actor child
    /// has no ractor cell).
    pub actor: Option<ActorCell>,
    /// Restarts so far.
    pub restarts: u32,
    /// The Troupe actor, if the child is one.
    pub actor_id: Option<crate::ids::ActorId>,
    /// Why it failed last (an abnormal exit or a failed restart), if it
    /// ever did.
    pub last_failure: Option<LastFailure>,
}

impl ChildInfo {
    /// Whether the child is itself a supervisor (its children can be
    /// listed in turn).
    pub fn supervisor(&self) -> Option<ractor::ActorRef<SupervisorMsg>> {
        self.actor
            .as_ref()
            .filter(|cell| cell.get_type_id() == std::any::TypeId::of::<SupervisorMsg>())
            .map(|cell| ractor::ActorRef::from(cell.clone()))
    }
}

/// Messages a supervisor accepts. Use [`SupervisorRef`] rather than sending
/// these yourself.
pub enum SupervisorMsg {
    /// Take charge of a child that `start_child` already started (linked to
    /// this supervisor) in the caller's task.
    #[doc(hidden)]
    Adopt {
        /// Allocated by the caller, in start order.
        key: ChildKey,
        /// How to restart and stop it.
        spec: ChildSpec,
        /// The running child.
        running: Running,
    },
    /// A Troupe actor child ended.
    #[doc(hidden)]
    NativeExited {
        /// The actor.
        actor: crate::ids::ActorId,
        /// Which of its incarnations.
        incarnation: u64,
        /// Whether it failed (a panic, a failed constructor, a kill).
        abnormal: bool,
        /// Why.
        reason: String,
    },
    /// Stop a child per its shutdown and forget its spec.
    TerminateChild(ChildKey, RpcReplyPort<bool>),
    /// List the children.
    WhichChildren(RpcReplyPort<Vec<ChildInfo>>),
    /// A backed-off restart is due.
    RestartDue {
        /// Children to start again, in order.
        keys: Vec<ChildKey>,
    },
}

#[cfg(feature = "cluster")]
impl ractor::Message for SupervisorMsg {}

struct Child {
    spec: ChildSpec,
    running: Option<Running>,
    restarts: u32,
    last_failure: Option<LastFailure>,
    /// The Troupe actor it runs, if it runs one (the same over restarts).
    actor_id: Option<crate::ids::ActorId>,
}

impl Child {
    fn rules(&self) -> ChildRules {
        ChildRules {
            restart: self.spec.restart,
            max_restarts: self.spec.max_restarts,
        }
    }

    fn allowed(&self) -> bool {
        self.spec.restart_if.as_ref().is_none_or(|allow| allow())
    }
}

/// What a linked actor is to its supervisor.
enum Linked {
    /// A child under this key.
    Child(ChildKey),
    /// A child the supervisor is stopping itself: its exit is expected.
    Stopping,
}

/// A supervisor's state: its children in start order and its restart window.
pub struct SupervisorState {
    children: BTreeMap<ChildKey, Child>,
    linked: HashMap<Member, Linked>,
    /// Exits of children started by `start_child` whose `Adopt` has not
    /// arrived yet (supervision events overtake ordinary messages).
    early_exits: HashMap<Member, Exit>,
    window: Window,
    _alive: Option<AliveGauge>,
}

/// The supervisor actor. Spawn it with [`Supervisor::spawn`], or nest it with
/// [`ChildSpec::supervisor`].
pub struct Supervisor {
    spec: SupervisorSpec,
    /// Child keys, shared with [`SupervisorRef`] so callers allocate them.
    keys: Arc<AtomicU64>,
    /// Its path in its tree (`root/user/workers`).
    path: Arc<str>,
}

/// A handle to a running supervisor.
#[derive(Clone)]
pub struct SupervisorRef {
    actor: ActorRef<SupervisorMsg>,
    name: Arc<str>,
    path: Arc<str>,
    keys: Arc<AtomicU64>,
    events: EventBus,
}

impl fmt::Debug for SupervisorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorRef")
            .field("name", &self.name)
            .field("actor", &self.actor.get_id())
            .finish()
    }
}

impl Supervisor {
    /// Starts a top-level supervisor and all its children, in order. If a
    /// child fails to start, those already started are stopped in reverse
    /// order and the error names the child.
    pub async fn spawn(spec: SupervisorSpec) -> Result<SupervisorRef, SpawnError> {
        let path = spec.name.clone();
        Self::start(spec, None, path).await
    }

    /// Starts a supervisor linked to `parent`.
    pub async fn spawn_linked(
        spec: SupervisorSpec,
        parent: ActorCell,
    ) -> Result<SupervisorRef, SpawnError> {
        let path = spec.name.clone();
        Self::start(spec, Some(parent), path).await
    }

    /// Starts a supervisor as the child a start function is starting
    /// (linked to that supervisor, its path under that one's).
    pub async fn spawn_child(
        spec: SupervisorSpec,
        ctx: &StartContext,
    ) -> Result<SupervisorRef, SpawnError> {
        let path: Arc<str> = format!("{}/{}", ctx.path, spec.name).into();
        Self::start(spec, Some(ctx.supervisor.clone()), path).await
    }

    async fn start(
        spec: SupervisorSpec,
        parent: Option<ActorCell>,
        path: Arc<str>,
    ) -> Result<SupervisorRef, SpawnError> {
        let name = spec.name.clone();
        let events = spec.events.clone();
        let keys = Arc::new(AtomicU64::new(0));
        let supervisor = Supervisor {
            spec,
            keys: keys.clone(),
            path: path.clone(),
        };
        let started = match parent {
            Some(parent) => ractor::Actor::spawn_linked(None, supervisor, (), parent).await,
            None => ractor::Actor::spawn(None, supervisor, ()).await,
        };
        started
            .map(|(actor, _)| SupervisorRef {
                actor,
                name: name.clone(),
                path,
                keys,
                events,
            })
            .map_err(|err| child::spawn_failed(&format!("supervisor {name:?}"), err))
    }

    fn next_key(&self) -> ChildKey {
        ChildKey(self.keys.fetch_add(1, Ordering::Relaxed))
    }

    /// Runs a child's start function linked to this supervisor.
    async fn run_start(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        spec: &ChildSpec,
    ) -> Result<Running, SpawnError> {
        let ctx = StartContext {
            supervisor: myself.get_cell(),
            events: self.spec.events.clone(),
            reports: myself.clone(),
            path: self.path.clone(),
        };
        (spec.start)(ctx).await
    }

    fn emit(&self, make: impl FnOnce() -> SupervisionEvent) {
        self.spec.events.emit(make);
    }

    fn remove_child(&self, state: &mut SupervisorState, key: ChildKey, exit: ChildExit) {
        if let Some(child) = state.children.remove(&key) {
            // Callers stop (or saw the exit of) the child first.
            debug_assert!(child.running.is_none(), "removing a running child");
            tracing::debug!(supervisor = %self.spec.name, child = %child.spec.id, ?exit, "child removed");
            self.emit(|| SupervisionEvent::ChildRemoved {
                supervisor: self.spec.name.clone(),
                child: child.spec.id.clone(),
            });
            if let Some(hook) = &child.spec.on_exit {
                hook(exit);
            }
        }
    }

    /// Stops the given children in reverse order, each per its shutdown.
    async fn stop_children(&self, state: &mut SupervisorState, keys: &[ChildKey]) {
        for key in keys.iter().rev() {
            let Some(child) = state.children.get_mut(key) else {
                continue;
            };
            if let Some(running) = child.running.take() {
                // Its exit will still be reported: expect it.
                state.linked.insert(running.member(), Linked::Stopping);
                running.stop(child.spec.shutdown).await;
            }
        }
    }

    /// Stops every child in reverse order and forgets them.
    async fn stop_all(&self, state: &mut SupervisorState) {
        let keys: Vec<ChildKey> = state.children.keys().copied().collect();
        self.stop_children(state, &keys).await;
        for key in keys.into_iter().rev() {
            self.remove_child(state, key, ChildExit::Terminated);
        }
    }

    /// Stops everything and returns the error that fails this supervisor.
    async fn escalate(&self, state: &mut SupervisorState) -> ActorProcessingErr {
        let limit = self.spec.intensity.unwrap_or_default();
        tracing::error!(
            supervisor = %self.spec.name,
            max_restarts = limit.max_restarts,
            period = ?limit.period,
            "restart intensity exceeded; stopping all children and escalating"
        );
        metrics::counter!("troupe_supervisor_escalations_total", "supervisor" => self.spec.name.to_string())
            .increment(1);
        self.emit(|| SupervisionEvent::IntensityExceeded {
            supervisor: self.spec.name.clone(),
            max_restarts: limit.max_restarts,
            period: limit.period,
        });
        self.stop_all(state).await;
        format!(
            "supervisor {:?}: more than {} restarts in {:?}",
            self.spec.name, limit.max_restarts, limit.period
        )
        .into()
    }

    /// A child has to be restarted after `delay`: apply the strategy.
    async fn restart(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        failed: ChildKey,
        delay: Duration,
    ) -> Result<(), ActorProcessingErr> {
        let mut keys: Vec<ChildKey> = match self.spec.strategy {
            Strategy::OneForOne => vec![failed],
            Strategy::OneForAll => state.children.keys().copied().collect(),
            Strategy::RestForOne => state.children.range(failed..).map(|(k, _)| *k).collect(),
        };
        self.stop_children(state, &keys).await;
        // Temporary siblings stopped by the strategy are dropped, as in OTP.
        let temporary: Vec<ChildKey> = keys
            .iter()
            .copied()
            .filter(|k| *k != failed && state.children[k].spec.restart == Restart::Temporary)
            .collect();
        for key in &temporary {
            self.remove_child(state, *key, ChildExit::Terminated);
        }
        keys.retain(|k| !temporary.contains(k));
        if delay.is_zero() {
            return self.start_again(myself, state, keys).await;
        }
        tracing::debug!(supervisor = %self.spec.name, ?delay, "restart backed off");
        // Detached timer: if we stop first, its message finds no one.
        drop(myself.send_after(delay, move || SupervisorMsg::RestartDue { keys }));
        Ok(())
    }

    /// Starts the given children again, in order. A failed start counts as
    /// another failure of that child (the policy decides what follows).
    async fn start_again(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        keys: Vec<ChildKey>,
    ) -> Result<(), ActorProcessingErr> {
        for (i, key) in keys.iter().enumerate() {
            let Some(child) = state.children.get(key) else {
                continue; // terminated while its restart was backed off
            };
            if child.running.is_some() {
                continue;
            }
            if !child.allowed() {
                self.remove_child(state, *key, ChildExit::Terminated);
                continue;
            }
            let spec = child.spec.clone();
            match self.run_start(myself, &spec).await {
                Ok(running) => {
                    let child = state
                        .children
                        .get_mut(key)
                        .ok_or("child vanished while restarting")?;
                    child.restarts += 1;
                    state.linked.insert(running.member(), Linked::Child(*key));
                    child.running = Some(running);
                    tracing::warn!(supervisor = %self.spec.name, child = %spec.id, restarts = child.restarts, "child restarted");
                    metrics::counter!("troupe_supervisor_restarts_total", "supervisor" => self.spec.name.to_string())
                        .increment(1);
                    self.emit(|| SupervisionEvent::ChildRestarted {
                        supervisor: self.spec.name.clone(),
                        child: spec.id.clone(),
                        restarts: child.restarts,
                    });
                }
                Err(err) => {
                    tracing::error!(supervisor = %self.spec.name, child = %spec.id, error = %err, "child failed to restart");
                    metrics::counter!("troupe_supervisor_start_failures_total", "supervisor" => self.spec.name.to_string())
                        .increment(1);
                    self.emit(|| SupervisionEvent::ChildStartFailed {
                        supervisor: self.spec.name.clone(),
                        child: spec.id.clone(),
                        error: err.to_string(),
                    });
                    let child = state
                        .children
                        .get_mut(key)
                        .ok_or("child vanished while restarting")?;
                    child.restarts += 1;
                    child.last_failure =
                        Some(LastFailure::now(format!("failed to restart: {err}")));
                    let verdict = state.window.after_failed_start(
                        child.rules(),
                        child.restarts,
                        err.to_string(),
                        Instant::now(),
                    );
                    match verdict {
                        Verdict::Remove(exit) => {
                            self.remove_child(state, *key, exit);
                            continue;
                        }
                        Verdict::Escalate => return Err(self.escalate(state).await),
                        Verdict::Restart { delay, .. } => {
                            let rest = keys[i..].to_vec();
                            drop(myself.send_after(delay, move || SupervisorMsg::RestartDue {
                                keys: rest,
                            }));
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A child exited: log it, then let the policy restart or remove it.
    async fn on_exit(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        key: ChildKey,
        exit: Exit,
    ) -> Result<(), ActorProcessingErr> {
        let Some(child) = state.children.get_mut(&key) else {
            return Ok(());
        };
        child.running = None;
        let id = child.spec.id.clone();
        if exit.abnormal {
            child.last_failure = Some(LastFailure::now(exit.reason.clone()));
            tracing::warn!(supervisor = %self.spec.name, child = %id, reason = %exit.reason, "child failed");
        } else {
            tracing::debug!(supervisor = %self.spec.name, child = %id, reason = %exit.reason, "child stopped");
        }
        self.emit(|| SupervisionEvent::ChildExited {
            supervisor: self.spec.name.clone(),
            child: id,
            abnormal: exit.abnormal,
            reason: exit.reason.clone(),
        });
        let (rules, restarts, allowed) = (child.rules(), child.restarts, child.allowed());
        match state
            .window
            .after_exit(rules, restarts, exit, allowed, Instant::now())
        {
            Verdict::Remove(exit) => {
                if let ChildExit::RestartsExhausted { restarts, .. } = &exit {
                    tracing::warn!(supervisor = %self.spec.name, child = %state.children[&key].spec.id, restarts, "child exhausted its restarts; leaving it dead");
                }
                self.remove_child(state, key, exit);
                Ok(())
            }
            Verdict::Escalate => Err(self.escalate(state).await),
            Verdict::Restart { delay, .. } => self.restart(myself, state, key, delay).await,
        }
    }

    /// A child's exit arrived (a ractor event or a Troupe actor's report).
    async fn exited(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        member: Member,
        exit: Exit,
    ) -> Result<(), ActorProcessingErr> {
        let key = match state.linked.remove(&member) {
            Some(Linked::Child(key)) => key,
            // We stopped it ourselves.
            Some(Linked::Stopping) => return Ok(()),
            // Started by `start_child`, its Adopt still on the way.
            None => {
                state.early_exits.insert(member, exit);
                return Ok(());
            }
        };
        self.on_exit(myself, state, key, exit).await
    }
}

/// Stops one actor per a shutdown policy and waits until it is gone.
pub(crate) async fn stop_actor(cell: &ActorCell, shutdown: Shutdown) {
    match shutdown {
        Shutdown::Brutal => {
            let _ = cell.kill_and_wait(None).await;
        }
        Shutdown::Infinity => {
            let _ = cell.stop_and_wait(Some("shutdown".into()), None).await;
        }
        Shutdown::Timeout(limit) => {
            if let Err(ractor::RactorErr::Timeout) = cell
                .stop_and_wait(Some("shutdown".into()), Some(limit))
                .await
            {
                tracing::warn!(actor = %cell.get_id(), ?limit, "child ignored stop; killing it");
                let _ = cell.kill_and_wait(None).await;
            }
        }
    }
}

/// The type supervisors count as in `troupe_actors_alive`.
const SUPERVISOR_TYPE: &str = "troupe::supervisor";

/// Counts a ractor actor in the `troupe_actors_alive{type}` gauge while it
/// lives. Keep it in the actor's state, which ractor drops however the
/// actor ends (its `post_stop` is skipped after a failure or a kill); the
/// runtime's supervisors and system actors do.
#[derive(Debug)]
pub struct AliveGauge(&'static str);

impl AliveGauge {
    /// Counts one more actor of `actor_type` until dropped.
    pub fn new(actor_type: &'static str) -> Self {
        metrics::gauge!("troupe_actors_alive", "type" => actor_type).increment(1.0);
        Self(actor_type)
    }
}

impl Drop for AliveGauge {
    fn drop(&mut self) {
        metrics::gauge!("troupe_actors_alive", "type" => self.0).decrement(1.0);
    }
}

/// The exit reason ractor gives an actor stopped by `kill`.
const KILLED: &str = "killed";
