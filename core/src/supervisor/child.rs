//! Child specifications: how a supervisor starts, restarts and stops a child.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::ActorCell;

use super::event::EventBus;
use super::SupervisorSpec;
use crate::error::SpawnError;
use crate::ids::ActorId;

/// When a child that exited is restarted (OTP's `restart`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Restart {
    /// Always restarted, whatever the exit.
    Permanent,
    /// Restarted only after an abnormal exit (a panic, an error, a kill).
    Transient,
    /// Never restarted.
    Temporary,
}

/// How a supervisor stops a child (OTP's `shutdown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Shutdown {
    /// Ask the child to stop, and kill it if it has not stopped after this long.
    Timeout(Duration),
    /// Kill at once, interrupting whatever the child is doing.
    Brutal,
    /// Ask the child to stop and wait as long as it takes (the default for
    /// children that are supervisors, whose own children have timeouts).
    Infinity,
}

/// The default shutdown of a worker child: 5 seconds, as in OTP.
pub const DEFAULT_SHUTDOWN: Shutdown = Shutdown::Timeout(Duration::from_secs(5));

/// How a child left its supervisor for good (given to [`ChildSpec::on_exit`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// It stopped normally and its restart type does not restart it.
    Stopped,
    /// It failed and its restart type does not restart it.
    Failed(String),
    /// It failed more often than its own `max_restarts` allows.
    RestartsExhausted {
        /// Restarts it had.
        restarts: u32,
        /// Why it failed last.
        last_error: String,
    },
    /// Its supervisor stopped it (shutdown, `terminate_child`, or escalation).
    Terminated,
}

/// What a child's start function receives.
#[derive(Clone)]
pub struct StartContext {
    /// The supervisor the new actor must link to (`spawn_linked`).
    pub supervisor: ActorCell,
    /// Supervision events of this tree; a child supervisor inherits it.
    pub(crate) events: EventBus,
    /// Where a Troupe actor child reports its exit.
    pub(crate) reports: ractor::ActorRef<super::SupervisorMsg>,
    /// The supervisor's path in its tree (`root/user/workers`).
    pub(crate) path: Arc<str>,
}

impl StartContext {
    /// The path of the supervisor starting this child, names from the top
    /// of its tree (`root/user/workers`).
    pub fn supervisor_path(&self) -> &str {
        &self.path
    }
}

/// A running child: a ractor actor linked to its supervisor, or a Troupe
/// actor, which reports its exit to the supervisor with a message.
#[doc(hidden)]
#[derive(Clone)]
pub enum Running {
    Cell(ActorCell),
    Native(NativeChild),
}

/// A Troupe actor running as a supervisor's child.
#[doc(hidden)]
#[derive(Clone)]
pub struct NativeChild {
    /// The actor and its incarnation: what its exit report names.
    pub(crate) actor: ActorId,
    pub(crate) incarnation: u64,
    pub(crate) control: Arc<dyn NativeControl>,
}

/// How a supervisor stops a Troupe actor child.
#[doc(hidden)]
pub trait NativeControl: Send + Sync + 'static {
    /// Stops it per `shutdown` and resolves once it is gone.
    fn stop(self: Arc<Self>, shutdown: Shutdown) -> BoxFuture<'static, ()>;
    /// Kills it at once, without waiting.
    fn kill(&self);
}

/// Who a linked child is, for matching its exit to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Member {
    Cell(ractor::ActorId),
    Native(ActorId, u64),
}

impl Running {
    pub(crate) fn member(&self) -> Member {
        match self {
            Running::Cell(cell) => Member::Cell(cell.get_id()),
            Running::Native(child) => Member::Native(child.actor, child.incarnation),
        }
    }

    pub(crate) fn actor_id(&self) -> Option<ActorId> {
        match self {
            Running::Cell(_) => None,
            Running::Native(child) => Some(child.actor),
        }
    }

    pub(crate) fn cell(&self) -> Option<ActorCell> {
        match self {
            Running::Cell(cell) => Some(cell.clone()),
            Running::Native(_) => None,
        }
    }

    /// Stops it per `shutdown` and waits until it is gone.
    pub(crate) async fn stop(&self, shutdown: Shutdown) {
        match self {
            Running::Cell(cell) => super::stop_actor(cell, shutdown).await,
            Running::Native(child) => child.control.clone().stop(shutdown).await,
        }
    }

    /// Kills it without waiting (its supervisor is gone).
    pub(crate) fn kill(&self) {
        match self {
            Running::Cell(cell) => cell.kill(),
            Running::Native(child) => child.control.kill(),
        }
    }
}

pub(crate) type StartFn =
    Arc<dyn Fn(StartContext) -> BoxFuture<'static, Result<Running, SpawnError>> + Send + Sync>;
pub(crate) type ExitHook = Arc<dyn Fn(ChildExit) + Send + Sync>;
pub(crate) type RestartVeto = Arc<dyn Fn() -> bool + Send + Sync>;

/// Everything a supervisor needs to run one child (OTP's child spec).
///
/// The start function is called again on every restart, so whatever it
/// captures (the actor and its arguments) must be reusable.
///
/// ```
/// use troupe_core::supervisor::{ChildSpec, Restart, Shutdown};
/// # #[derive(Clone)] struct Echo;
/// # impl ractor::Actor for Echo {
/// #     type Msg = (); type State = (); type Arguments = ();
/// #     async fn pre_start(&self, _: ractor::ActorRef<()>, _: ()) -> Result<(), ractor::ActorProcessingErr> { Ok(()) }
/// # }
/// let spec = ChildSpec::new("echo", Echo, ())
///     .restart(Restart::Transient)
///     .shutdown(Shutdown::Brutal);
/// assert_eq!(spec.id(), "echo");
/// ```
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) id: Arc<str>,
    pub(crate) start: StartFn,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) max_restarts: Option<u32>,
    pub(crate) on_exit: Option<ExitHook>,
    pub(crate) restart_if: Option<RestartVeto>,
}

impl ChildSpec {
    /// A child running any [`ractor::Actor`]; restarted with a clone of the
    /// handler and of the arguments. Permanent, 5 s shutdown.
    pub fn new<A>(id: impl Into<Arc<str>>, actor: A, args: A::Arguments) -> Self
    where
        A: ractor::Actor + Clone + Sync,
        A::Arguments: Clone + Sync,
    {
        let id: Arc<str> = id.into();
        let what = id.clone();
        Self::from_fn(id, move |ctx: StartContext| {
            let actor = actor.clone();
            let args = args.clone();
            let what = what.clone();
            async move {
                ractor::Actor::spawn_linked(None, actor, args, ctx.supervisor)
                    .await
                    .map(|(actor_ref, _)| actor_ref.get_cell())
                    .map_err(|err| spawn_failed(&what, err))
            }
        })
    }

    /// A child started by a function of your own, which must spawn one actor
    /// linked to `ctx.supervisor` and return its cell.
    pub fn from_fn<F, Fut>(id: impl Into<Arc<str>>, start: F) -> Self
    where
        F: Fn(StartContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<ActorCell, SpawnError>> + Send + 'static,
    {
        let start = Arc::new(start);
        Self::with_start(
            id,
            Arc::new(move |ctx| {
                let started = start(ctx);
                Box::pin(async move { started.await.map(Running::Cell) })
            }),
        )
    }

    /// A child whose start function returns either kind of child.
    pub(crate) fn with_start(id: impl Into<Arc<str>>, start: StartFn) -> Self {
        Self {
            id: id.into(),
            start,
            restart: Restart::Permanent,
            shutdown: DEFAULT_SHUTDOWN,
            max_restarts: None,
            on_exit: None,
            restart_if: None,
        }
    }

    /// A child that is itself a supervisor. It inherits the parent's
    /// supervision event bus unless its spec names one, and waits for its own
    /// children to stop (`Shutdown::Infinity`).
    pub fn supervisor(spec: SupervisorSpec) -> Self {
        let id = spec.name.clone();
        let mut child = Self::from_fn(id, move |ctx: StartContext| {
            let mut spec = spec.clone();
            if spec.events.is_none() {
                spec.events = ctx.events.clone();
            }
            async move {
                super::Supervisor::spawn_child(spec, &ctx)
                    .await
                    .map(|sup| sup.cell())
            }
        });
        child.shutdown = Shutdown::Infinity;
        child
    }

    /// The child's id, used in events, logs and metrics. Need not be unique.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets the restart type (default `Permanent`).
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the shutdown (default `Timeout(5 s)`, `Infinity` for supervisors).
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Caps this child's own restarts over its whole life (Ray's
    /// `max_restarts`). Past the cap the child is left dead and removed:
    /// unlike the supervisor's intensity, this does not escalate.
    pub fn max_restarts(mut self, max: Option<u32>) -> Self {
        self.max_restarts = max;
        self
    }

    /// Asked before each restart; `false` removes the child instead (used by
    /// `kill(no_restart)`).
    pub fn restart_if(mut self, allow: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.restart_if = Some(Arc::new(allow));
        self
    }

    /// Called once when the child leaves its supervisor for good.
    pub fn on_exit(mut self, hook: impl Fn(ChildExit) + Send + Sync + 'static) -> Self {
        self.on_exit = Some(Arc::new(hook));
        self
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("max_restarts", &self.max_restarts)
            .finish_non_exhaustive()
    }
}

/// Turns ractor's spawn error into ours, keeping the panic message.
pub(crate) fn spawn_failed(what: &str, err: ractor::SpawnErr) -> SpawnError {
    let cause = match err {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    };
    SpawnError::StartFailed {
        what: what.to_owned(),
        cause,
    }
}
