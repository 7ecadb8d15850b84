//! Typed errors. Each says what happened and, where it helps, what to do.

use std::sync::Arc;

use crate::Resources;
use std::time::Duration;

use crate::actor::ActorInfo;

/// Starting an actor, a supervisor or a child failed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum SpawnError {
    /// The constructor (or `pre_start`) panicked or returned an error.
    #[error("{what} failed to start: {cause}")]
    StartFailed {
        /// The actor type or child id.
        what: String,
        /// The panic message or the constructor's error.
        cause: String,
    },
    /// Another live actor already holds this name in this runtime.
    #[error("the actor name {0:?} is already taken in this runtime; pick another name or look the existing actor up with get_actor")]
    NameTaken(String),
    /// The supervisor that should own the new actor is not running.
    #[error("supervisor {supervisor:?} is not running (the runtime is shutting down or it has failed); the actor was not started")]
    SupervisorDown {
        /// Name of the supervisor.
        supervisor: String,
    },
    /// The runtime was shut down.
    #[error("the runtime has been shut down; start a new one with troupe::init")]
    RuntimeShutDown,
    /// The actor asks for more than this node has; it can never be placed here.
    #[error("{what} needs {needs:?} but this node has only {node:?}; lower the actor's resources or add a node that fits")]
    Infeasible {
        /// The actor type.
        what: String,
        /// What it asked for.
        needs: Resources,
        /// What the node has in all.
        node: Resources,
    },
    /// An actor in a tree of your own (`actor_child`) asks for resources
    /// that are taken now; trees start synchronously, so it cannot wait.
    #[error("{what} needs {needs:?}, which other work holds now; spawn it with spawn_actor (which waits for them) or free them first")]
    ResourcesBusy {
        /// The actor type.
        what: String,
        /// What it asked for.
        needs: Resources,
    },
    /// Resource amounts that make no sense (in the config or the actor's options).
    #[error("invalid resources: {0}")]
    InvalidResources(String),
    /// The config's GPU detector failed; the runtime did not start.
    #[error("GPU detection failed: {0}; check the NVIDIA driver (nvidia-smi), or start without a GPU detector to run on CPU")]
    GpuDetection(String),
    /// The tokio runtime for `Runtime::start` could not be built.
    #[error("could not build the tokio runtime: {0}; check thread limits, or embed Troupe in your own tokio runtime with troupe::init")]
    Tokio(String),
}

/// Why a call to an actor failed. The call's result never hangs: one of these
/// (or the value) always arrives.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ActorError {
    /// The actor died with the call in flight, or is dead for good
    /// (restarts exhausted, killed with `no_restart`, runtime shut down).
    #[error("actor {actor} died before answering {method}: {reason}")]
    ActorDied {
        /// Which actor.
        actor: Arc<ActorInfo>,
        /// The method called.
        method: &'static str,
        /// What is known about the death.
        reason: String,
    },
    /// The method panicked. The actor is restarted if it has restarts left.
    #[error("actor {actor} panicked in {method}: {message}")]
    Panicked {
        /// Which actor.
        actor: Arc<ActorInfo>,
        /// The method called.
        method: &'static str,
        /// The panic message.
        message: String,
    },
    /// A management request to the actor's supervisor got no answer in time.
    #[error("actor {actor}: {what} timed out after {after:?}")]
    Timeout {
        /// Which actor.
        actor: Arc<ActorInfo>,
        /// What timed out.
        what: &'static str,
        /// How long it waited.
        after: Duration,
    },
}

/// Looking an actor up by name failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// No live actor has this name in this runtime.
    #[error("no actor named {0:?} in this runtime")]
    NotFound(String),
    /// An actor has this name but it is of another type.
    #[error("actor {name:?} is a {actual}, not a {expected}")]
    WrongType {
        /// The name looked up.
        name: String,
        /// The type asked for.
        expected: &'static str,
        /// The type the actor really has.
        actual: &'static str,
    },
}

/// A request to a supervisor failed.
#[derive(Debug, thiserror::Error, Clone)]
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
        key: crate::supervisor::ChildKey,
    },
}

/// `Runtime::shutdown` could not stop everything in order within its deadline.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ShutdownError {
    /// The ordered stop overran the deadline; what was left was killed.
    #[error("ordered shutdown overran its deadline of {0:?}; the remaining actors were killed")]
    DeadlineExceeded(Duration),
}

/// Turns a caught panic payload into its message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
