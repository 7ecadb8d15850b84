//! Typed errors. Each says what happened and, where it helps, what to do.
//!
//! Every error is `#[non_exhaustive]` and serializable: a task that fails on
//! another node reaches its owner as the same typed value, its cause chain
//! kept as structured errors ([`Cause`]), never flattened to a string.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use troupe_objects::{register_cause, Cause, NodeId, ObjectError, ObjectId};

use crate::ids::{ActorInfo, TaskId};
use crate::Resources;

/// Starting an actor, a supervisor or a child failed.
#[derive(Debug, thiserror::Error, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SpawnError {
    /// The constructor (or `pre_start`) panicked or returned an error.
    #[error("{what} failed to start: {cause}")]
    StartFailed {
        /// The actor type or child id.
        what: String,
        /// The panic message or the constructor's error.
        cause: String,
    },
    /// It was to live in a placement group's bundle that cannot take it.
    #[error("the actor cannot live in its placement group: {0}")]
    PlacementGroup(crate::placement_group::PlacementGroupError),
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
    /// No actor type or constructor of that name is registered in this
    /// binary (spawning by name).
    #[error("no actor constructor {0:?} in this binary; is every node running the same build?")]
    UnknownConstructor(String),
    /// Spawning on another node failed (no node fits, the node refused or
    /// died, no cluster).
    #[error("spawning on {} failed: {reason}", node.map(|n| format!("node {n}")).unwrap_or_else(|| "the cluster".to_owned()))]
    Remote {
        /// The node asked, if one was.
        node: Option<crate::ids::NodeId>,
        /// Why.
        reason: String,
    },
    /// A constructor's arguments did not decode.
    #[error("the arguments for {constructor} did not decode: {cause}")]
    BadArguments {
        /// The constructor.
        constructor: String,
        /// What the decoder said.
        cause: String,
    },
    /// A service of the config (`Config::service`) failed to start; the
    /// runtime was shut down again. The cause is the service's own typed
    /// error: `cause.downcast_ref::<troupe::cluster::ClusterError>()`, say.
    #[error("the {service} service failed to start: {cause}")]
    Service {
        /// The service's name.
        service: String,
        /// Why: the service's own error, typed.
        cause: Cause,
    },
}

/// Writing a timeline failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimelineError {
    /// Nothing was recorded: recording is off by default, as it costs a
    /// little on every task and actor call.
    #[error("no timeline was recorded; start recording with Config::record_timeline(true) or rt.record_timeline(true), run the work, then write the timeline")]
    NotRecorded,
    /// The file could not be written.
    #[error("could not write the timeline to {path:?}: {cause}")]
    Io {
        /// Where.
        path: std::path::PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The events could not be written out.
    #[error("could not encode the timeline: {0}")]
    Encode(String),
}

/// Why a call to an actor failed. The call's result never hangs: one of these
/// (or the value) always arrives.
#[derive(Debug, thiserror::Error, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ActorError {
    /// The actor died with the call in flight, or is dead for good
    /// (restarts exhausted, killed with `no_restart`, stopped, runtime shut
    /// down).
    #[error("actor {actor} died before answering {method}: {reason}")]
    ActorDied {
        /// Which actor.
        actor: Arc<ActorInfo>,
        /// The method called.
        method: Cow<'static, str>,
        /// What is known about the death.
        reason: String,
    },
    /// The method panicked. The actor is restarted if it has restarts left.
    #[error("actor {actor} panicked in {method}: {message}")]
    Panicked {
        /// Which actor.
        actor: Arc<ActorInfo>,
        /// The method called.
        method: Cow<'static, str>,
        /// The panic message.
        message: String,
    },
    /// A management request got no answer in time.
    #[error("actor {actor}: {what} timed out after {after:?}")]
    Timeout {
        /// Which actor.
        actor: Arc<ActorInfo>,
        /// What timed out.
        what: Cow<'static, str>,
        /// How long it waited.
        after: Duration,
    },
    /// The call could not be made: `problem` says which part was wrong,
    /// `reason` says how.
    #[error("call to {method} on {actor} failed: {reason}")]
    BadCall {
        /// Which actor.
        actor: Arc<ActorInfo>,
        /// The method named.
        method: String,
        /// Which part of the call was wrong.
        problem: CallProblem,
        /// What is wrong, and what to do about it.
        reason: String,
    },
}

/// Which part of an actor call could not be made ([`ActorError::BadCall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CallProblem {
    /// No method of that name is registered for the actor's type (the
    /// caller runs another build).
    NoSuchMethod,
    /// The arguments did not encode, or did not decode as the method's
    /// parameters.
    Arguments,
    /// The result did not encode, or the reply did not decode as the
    /// method's result type.
    Result,
    /// The actor is on another node and this method cannot be called there:
    /// its arguments or result are not serde types, it borrows, or it takes
    /// a closure.
    NotRemotable,
}

/// Looking an actor up by name failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
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
        expected: Cow<'static, str>,
        /// The type the actor really has.
        actual: Cow<'static, str>,
    },
}

/// `Runtime::shutdown` could not stop everything in order within its deadline.
#[derive(Debug, thiserror::Error, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The ordered stop overran the deadline; what was left was killed.
    #[error("ordered shutdown overran its deadline of {0:?}; the remaining actors were killed")]
    DeadlineExceeded(Duration),
}

/// What made an attempt fail.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskCause {
    /// The body panicked; the panic message.
    Panicked(String),
    /// The body returned `Err`: the error itself (read it back with
    /// `Cause::downcast_ref`).
    Error(Cause),
    /// The node running it died.
    NodeDied(NodeId),
    /// The node running it lost it (its reply never came, though the node
    /// lives on: a connection broke, say), and why.
    Lost {
        /// The node.
        node: NodeId,
        /// What happened.
        reason: String,
    },
}

impl std::fmt::Display for TaskCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskCause::Panicked(m) => write!(f, "panicked: {m}"),
            TaskCause::Error(e) => write!(f, "returned an error: {e}"),
            TaskCause::NodeDied(node) => write!(f, "was lost with node {node}, which died"),
            TaskCause::Lost { node, reason } => write!(f, "was lost by node {node}: {reason}"),
        }
    }
}

/// Why a task has no result. `get` on its ref returns
/// `ObjectError::Failed` whose cause is this; read it with
/// `err.failure::<TaskError>()`.
#[derive(Debug, thiserror::Error, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskError {
    /// Every allowed attempt failed.
    #[error("task {task} ({id}) failed after {attempts} attempt(s); the last {cause}")]
    Failed {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        cause: TaskCause,
    },
    /// An argument has no value (its task failed, or did not run either),
    /// so this one never ran (never retried). However long the line of
    /// tasks that did not run, it keeps the first failure and the line's
    /// length, not one nested error per task.
    #[error("task {task} ({id}) did not run: its argument {dependency} {}: {cause}", upstream(*depth))]
    DependencyFailed {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// The argument's object.
        dependency: ObjectId,
        /// How many tasks in a row have no value up to the first failure:
        /// 1 when the argument itself failed, 2 when its task did not run
        /// because of its own argument, and so on.
        depth: u32,
        /// Why the first object of that line has no value (its producer's
        /// error: read the failed task with `root_cause`).
        #[source]
        cause: ObjectError,
    },
    /// The task needs more than any node it can run on has.
    #[error("task {task} ({id}) needs {needs:?} but this node has only {node:?}; lower the task's options or add a node that fits")]
    Infeasible {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// What it asked for.
        needs: Resources,
        /// What the node has in all.
        node: Resources,
    },
    /// The task's resource options make no sense (negative, too large, or
    /// GPUs that mix whole and partial devices); it was not run.
    #[error("task {task} ({id}) has invalid resource options: {reason}")]
    InvalidResources {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// What is wrong and what to change.
        reason: String,
    },
    /// It was to run in a placement group's bundle that cannot take it
    /// (removed, no such bundle, too small, or created on another node).
    #[error("task {task} ({id}) cannot run in its placement group: {cause}")]
    PlacementGroup {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// What is wrong.
        cause: crate::placement_group::PlacementGroupError,
    },
    /// The task was cancelled (`Runtime::cancel`); it is never retried.
    #[error("task {task} ({id}) was cancelled")]
    Cancelled {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
    },
    /// The runtime shut down before the task finished.
    #[error("task {task} ({id}) was abandoned: the runtime shut down")]
    ShutDown {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
    },
    /// The result could not be stored (larger than the store's budget).
    #[error("task {task} ({id}) produced a result that could not be stored: {cause}")]
    ResultNotStored {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// The store's error.
        #[source]
        cause: ObjectError,
    },
    /// The task must run on one node (hard node affinity), and that node
    /// has left the cluster or died.
    #[error("task {task} ({id}) must run on node {node} (hard node affinity), which has left the cluster or died; use soft affinity, or another node")]
    NodeGone {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// The node it must run on.
        node: NodeId,
    },
    /// No remote function has that name in this binary.
    #[error("task {task} ({id}): no remote function of that name in this binary; is every node running the same build?")]
    UnknownFunction {
        /// The name asked for.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
    },
    /// The arguments did not decode as the function's parameters.
    #[error(
        "task {task} ({id}): its arguments did not decode as the function's parameters: {cause}"
    )]
    BadArguments {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// What the decoder said.
        cause: String,
    },
    /// The task, sent here by its owner on another node, waited for
    /// resources while node `to` had room: it goes back to its owner, who
    /// sends it there (spillback). Seen only on the node it left; its
    /// owner's `get` never returns it.
    #[error("task {task} ({id}) waited here for resources and went to node {to}, which had room")]
    Spilled {
        /// The function's name.
        task: Cow<'static, str>,
        /// The task.
        id: TaskId,
        /// The node it went to.
        to: NodeId,
    },
}

/// How a dependency error says where its failure began.
fn upstream(depth: u32) -> String {
    match depth {
        0 | 1 => "failed".to_owned(),
        n => format!("has no value: a task {n} steps up the line of its arguments failed"),
    }
}

impl TaskError {
    /// The error of a task that did not run because its argument
    /// `dependency` has no value (`cause`, as reading it said). An argument
    /// whose own task did not run for the same reason passes its first
    /// failure on, one step further: the error stays the same size however
    /// long the line (a chain of 100,000 tasks formats in one line, not
    /// 100,000 nested ones).
    pub fn dependency_failed(
        task: Cow<'static, str>,
        id: TaskId,
        dependency: ObjectId,
        cause: ObjectError,
    ) -> TaskError {
        let upstream = match cause.failure::<TaskError>() {
            Some(TaskError::DependencyFailed { depth, cause, .. }) => {
                Some((depth.saturating_add(1), cause.clone()))
            }
            _ => None,
        };
        let (depth, cause) = upstream.unwrap_or((1, cause));
        TaskError::DependencyFailed {
            task,
            id,
            dependency,
            depth,
            cause,
        }
    }

    /// Follows failed arguments back to the task where the failure began.
    pub fn root_cause(&self) -> &TaskError {
        let mut current = self;
        while let TaskError::DependencyFailed { cause, .. } = current {
            match cause.failure::<TaskError>() {
                Some(inner) => current = inner,
                None => break,
            }
        }
        current
    }

    /// The task the error is about.
    pub fn task_id(&self) -> TaskId {
        match self {
            TaskError::Failed { id, .. }
            | TaskError::DependencyFailed { id, .. }
            | TaskError::Infeasible { id, .. }
            | TaskError::NodeGone { id, .. }
            | TaskError::InvalidResources { id, .. }
            | TaskError::PlacementGroup { id, .. }
            | TaskError::Cancelled { id, .. }
            | TaskError::Spilled { id, .. }
            | TaskError::ShutDown { id, .. }
            | TaskError::ResultNotStored { id, .. }
            | TaskError::UnknownFunction { id, .. }
            | TaskError::BadArguments { id, .. } => *id,
        }
    }
}

/// Why one attempt of a task failed: what a node that ran it for another
/// reports (the owner decides whether to retry).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Failure {
    /// The body panicked.
    Panicked(String),
    /// The body returned `Err`.
    Error(Cause),
    /// An argument has no value.
    Dependency(ObjectId, ObjectError),
    /// The result could not be stored.
    Store(ObjectError),
    /// The node running it died.
    NodeDied(NodeId),
    /// The node running it lost it (its reply never came back), and why.
    Lost(NodeId, String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panicked(m) => write!(f, "panicked: {m}"),
            Failure::Error(e) => write!(f, "returned an error: {e}"),
            Failure::Dependency(id, e) => write!(f, "argument {id} failed: {e}"),
            Failure::Store(e) => write!(f, "result not stored: {e}"),
            Failure::NodeDied(node) => write!(f, "its node {node} died"),
            Failure::Lost(node, why) => write!(f, "node {node} lost it: {why}"),
        }
    }
}

impl From<crate::spec::ArgError> for Failure {
    fn from(crate::spec::ArgError(id, err): crate::spec::ArgError) -> Self {
        Failure::Dependency(id, err)
    }
}

register_cause!(TaskError, "troupe::TaskError");
register_cause!(ActorError, "troupe::ActorError");
register_cause!(SpawnError, "troupe::SpawnError");

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
