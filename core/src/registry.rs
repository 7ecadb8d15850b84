//! What this binary can run by name: remote functions and actor types,
//! registered at link time by `#[troupe::remote]` and `#[troupe::actor]`
//! (with `inventory`, so there is no hand-written list), looked up by hash.
//!
//! This is how a task or a call made on one node runs on another: every
//! node runs the same binary, so a name (and the encoded arguments) is
//! enough. [`build_id`] hashes the whole registry, names and signatures: two
//! nodes whose ids differ are not running the same program, and a cluster
//! refuses to join them.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::Instrument;
use troupe_objects::{AnyObjectRef, Encoded, ObjectError, ObjectStore};

use crate::actor::{Actor, ActorOptions, Factory};
use crate::error::{ActorError, CallProblem, SpawnError, TaskError};
use crate::function::{Failure, RemoteFn, Returns, Start, TypedTask};
use crate::generator;
use crate::ids::{ActorId, NodeId};
use crate::remote::{RemoteOutcome, RemoteResult, ReplicaRequest};
use crate::runtime::Runtime;
use crate::spec::{TaskArgs, TaskSpec};

mod tree;
mod wire;

pub use tree::{build_tree, RemoteTree, Subtree, TreeType};

pub use wire::{
    ByName, ByNameNew, NoRemoteCall, NotByName, NotByNameNew, RemoteCall, Wire, WireNew,
};

/// Objects up to this size travel with the reply; larger ones stay where
/// they were made (Ray's limit for inline values: 100 KiB).
pub const INLINE_LIMIT: usize = 100 * 1024;

/// A task made from a spec, ready to submit.
#[doc(hidden)]
pub struct Built {
    body: Arc<dyn crate::function::TaskBody>,
    results: Vec<AnyObjectRef>,
    items: Option<mpsc::Receiver<AnyObjectRef>>,
    /// Its top-level ref arguments, read from the decoded arguments.
    deps: Vec<troupe_objects::ObjectId>,
}

/// A remote function, registered under its stable name.
pub struct RemoteFunction {
    /// The stable name (`f::NAME`: the function's module path).
    pub name: &'static str,
    /// Its parameter and return types, as written (part of the build id).
    pub signature: &'static str,
    /// What kind of results it has.
    pub returns: crate::spec::Returns,
    /// Makes the task from a spec (decodes its arguments, makes its result
    /// objects under the owner's ids).
    #[doc(hidden)]
    pub build: fn(&ObjectStore, &TaskSpec) -> Result<Built, TaskError>,
    /// Keeps a replica of one of its results, from the bytes fetched from
    /// the node that made it (decoded as that result's type).
    #[doc(hidden)]
    pub keep_copy: KeepCopy,
}

/// The type of [`RemoteFunction::keep_copy`].
#[doc(hidden)]
pub type KeepCopy = fn(
    &ObjectStore,
    usize,
    troupe_objects::ObjectId,
    troupe_objects::NodeId,
    troupe_objects::Fetched,
) -> BoxFuture<'static, Result<u64, ObjectError>>;

/// The generic `keep_copy` of a remote function: used by generated code.
#[doc(hidden)]
pub fn keep_copy<F: RemoteFn>(
    store: &ObjectStore,
    index: usize,
    id: troupe_objects::ObjectId,
    owner: troupe_objects::NodeId,
    fetched: troupe_objects::Fetched,
) -> BoxFuture<'static, Result<u64, ObjectError>> {
    F::Returns::keep_copy(store, index, id, owner, fetched)
}

inventory::collect!(RemoteFunction);

/// The generic `build` of a remote function: used by generated code.
#[doc(hidden)]
// TaskError is what callers match on; boxing it would make each unbox it.
#[allow(clippy::result_large_err)]
pub fn build_task<F: RemoteFn>(store: &ObjectStore, spec: &TaskSpec) -> Result<Built, TaskError> {
    let bad = |cause: String| TaskError::BadArguments {
        task: spec.function.clone(),
        id: spec.id,
        cause,
    };
    let TaskArgs::Encoded(bytes) = &spec.args else {
        return Err(bad("the spec carries no encoded arguments".to_owned()));
    };
    let args: F::Args = store.decode(&bytes.bytes).map_err(|e| bad(e.to_string()))?;
    let deps = F::deps(&args);
    let (results, completers) =
        F::Returns::pending_at(store, &spec.results).map_err(|e| bad(e.to_string()))?;
    let (sink, items) = if F::GENERATOR {
        let (sink, items) = generator::channel(store, spec.options.get_generator_backpressure());
        (Some(sink), Some(items))
    } else {
        (None, None)
    };
    let start = Start {
        store: store.clone(),
        sink,
    };
    Ok(Built {
        body: Arc::new(TypedTask::<F>::new(args, completers, start)),
        results,
        items,
        deps,
    })
}

/// A method of an actor type, callable by name.
pub struct Method {
    /// The method's name.
    pub name: &'static str,
    /// Its parameter and return types, as written.
    pub signature: &'static str,
    /// Calls it on the actor whose slot is given, with encoded arguments.
    #[doc(hidden)]
    pub call: MethodCall,
}

/// A constructor of an actor type (an associated function returning
/// `Self`), callable by name.
pub struct Constructor {
    /// The function's name.
    pub name: &'static str,
    /// Its parameter types, as written.
    pub signature: &'static str,
    /// Spawns the actor from encoded arguments.
    #[doc(hidden)]
    pub spawn: Spawner,
}

/// An actor type, registered under its stable name (`Actor::NAME`).
pub struct ActorType {
    /// The stable name.
    pub name: &'static str,
    /// Its public methods.
    pub methods: &'static [Method],
    /// Its constructors.
    pub constructors: &'static [Constructor],
}

inventory::collect!(ActorType);

/// The encoded reply of a call by name.
#[doc(hidden)]
pub type EncodedReply = BoxFuture<'static, Result<Encoded, ActorError>>;

/// Why a call by name was refused before it reached the actor.
#[doc(hidden)]
pub type Refusal = (CallProblem, String);

/// Calls a method on the actor whose slot is given, with encoded arguments.
#[doc(hidden)]
pub type MethodCall =
    fn(Arc<dyn Any + Send + Sync>, &ObjectStore, &[u8]) -> Result<EncodedReply, Refusal>;

/// A spawn in progress: the new actor's id, or why it did not start.
#[doc(hidden)]
pub type Spawning = BoxFuture<'static, Result<ActorId, SpawnError>>;

/// Spawns an actor from encoded constructor arguments.
#[doc(hidden)]
pub type Spawner = fn(&Runtime, ActorOptions, &[u8]) -> Result<Spawning, String>;

struct Registry {
    functions: HashMap<&'static str, &'static RemoteFunction>,
    actors: HashMap<&'static str, (&'static ActorType, HashMap<&'static str, &'static Method>)>,
    build_id: u64,
}

/// FNV-1a: stable across builds and platforms (std's hasher is not
/// promised to be).
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    *hash ^= 0xff;
    *hash = hash.wrapping_mul(0x0100_0000_01b3);
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let functions: HashMap<_, _> = inventory::iter::<RemoteFunction>
            .into_iter()
            .map(|f| (f.name, f))
            .collect();
        let actors: HashMap<_, _> = inventory::iter::<ActorType>
            .into_iter()
            .map(|t| (t.name, (t, t.methods.iter().map(|m| (m.name, m)).collect())))
            .collect();
        let mut lines: Vec<String> = functions
            .values()
            .map(|f| format!("fn {} {}", f.name, f.signature))
            .collect();
        for (t, _) in actors.values() {
            for m in t.methods {
                lines.push(format!("actor {} {} {}", t.name, m.name, m.signature));
            }
            for c in t.constructors {
                lines.push(format!("new {} {} {}", t.name, c.name, c.signature));
            }
        }
        lines.extend(tree::tree_names().map(|name| format!("tree {name}")));
        lines.sort();
        let mut build_id = 0xcbf2_9ce4_8422_2325;
        for line in &lines {
            fnv(&mut build_id, line.as_bytes());
        }
        Registry {
            functions,
            actors,
            build_id,
        }
    })
}

/// The registered remote function named `name`.
pub fn remote_function(name: &str) -> Option<&'static RemoteFunction> {
    registry().functions.get(name).copied()
}

/// The registered actor type named `name`.
pub fn actor_type(name: &str) -> Option<&'static ActorType> {
    registry().actors.get(name).map(|(t, _)| *t)
}

/// A hash of everything registered (names and signatures): equal on every
/// node running the same program.
pub fn build_id() -> u64 {
    registry().build_id
}

/// What submitting a spec by name gave.
#[derive(Debug)]
pub struct Submitted {
    /// The result objects (under the owner's ids), one per result.
    pub results: Vec<AnyObjectRef>,
    /// A generator's items, as it yields them.
    pub items: Option<mpsc::Receiver<AnyObjectRef>>,
}

impl Runtime {
    /// Submits a task received as a spec (another node's, or built by
    /// hand): its function is looked up by name, its arguments decoded
    /// against this node's store, and its results made under the ids in the
    /// spec. The same scheduler path as every task.
    #[allow(clippy::result_large_err)] // see build_task
    pub fn submit_spec(&self, mut spec: TaskSpec) -> Result<Submitted, TaskError> {
        let function =
            remote_function(&spec.function).ok_or_else(|| TaskError::UnknownFunction {
                task: spec.function.clone(),
                id: spec.id,
            })?;
        // Decoded inside this runtime: handles among the arguments become
        // handles of this node.
        let built = {
            let _frame = self.decode_frame();
            (function.build)(self.objects(), &spec)?
        };
        spec.deps = built.deps;
        self.submit_task(spec, built.body);
        Ok(Submitted {
            results: built.results,
            items: built.items,
        })
    }

    /// Submits the remote function registered as `name` with its arguments
    /// encoded as the wire carries them (a postcard tuple of
    /// [`Arg`](crate::task::Arg)s, refs as ids): a spec owned by this node.
    #[allow(clippy::result_large_err)] // see build_task
    pub fn submit_by_name(
        &self,
        name: &str,
        options: crate::spec::TaskOptions,
        encoded_args: &[u8],
    ) -> Result<Submitted, TaskError> {
        let id = self.inner.ids.task();
        let function = remote_function(name).ok_or_else(|| TaskError::UnknownFunction {
            task: name.to_owned().into(),
            id,
        })?;
        let count = match function.returns {
            crate::spec::Returns::Many(n) => n as usize,
            crate::spec::Returns::One | crate::spec::Returns::Stream => 1,
        };
        let results = (0..count).map(|_| self.objects().new_id()).collect();
        self.submit_spec(TaskSpec {
            id,
            trace: crate::context::TraceContext::for_new_task(id),
            function: function.name.into(),
            args: TaskArgs::Encoded(Encoded::plain(encoded_args.to_vec())),
            deps: Vec::new(),
            options,
            owner: self.node_id(),
            attempt: 1,
            results,
            returns: function.returns,
        })
    }

    /// Runs one attempt of a spec for another node (the owner), and
    /// reports how it ended: small results travel back inline, larger ones
    /// stay here, kept alive for the owner (a borrower) until it releases
    /// them. The owner decides about retries: the attempt runs once.
    pub async fn run_spec(&self, mut spec: TaskSpec) -> RemoteOutcome {
        let owner = spec.owner;
        spec.options = spec.options.max_retries(0);
        let task = spec.id;
        let copies = spec.options.get_replicas() - 1;
        // Named only when replicas are asked for (most tasks: no allocation).
        let function = (copies > 0).then(|| spec.function.to_string());
        let submitted = {
            // A short sync body runs here, on the thread that received it,
            // rather than wake a pool thread and be woken back (two
            // cross-thread wake-ups: most of a small remote task's cost).
            let _runs = crate::scheduler::SubmitterRuns::enter(task);
            self.submit_spec(spec)
        };
        let submitted = match submitted {
            Ok(submitted) => submitted,
            Err(err @ TaskError::UnknownFunction { .. }) => {
                return RemoteOutcome::Refused(err.to_string())
            }
            Err(err) => {
                return RemoteOutcome::Failed(Failure::Error(troupe_objects::Cause::new(err)))
            }
        };
        let mut results = Vec::with_capacity(submitted.results.len());
        for (index, r) in submitted.results.iter().enumerate() {
            if !self.objects().is_settled(r.id()) {
                self.inner.scheduler.run_or_queue(r.id());
            }
            self.objects().ready(r.id()).await;
            match self.objects().export(r.id()).await {
                Ok((bytes, refs)) if bytes.len() <= INLINE_LIMIT => {
                    let encoded = Encoded::new(bytes.to_vec(), refs);
                    results.push((r.id(), RemoteResult::Inline(encoded)));
                }
                Ok(_) => {
                    let _ = self.objects().add_borrower(r.id(), owner);
                    let replicas = match &function {
                        None => Vec::new(),
                        Some(function) => {
                            let request = ReplicaRequest {
                                id: r.id(),
                                owner,
                                function: function.clone(),
                                index: index as u32,
                                copies,
                            };
                            self.replicate(request).await
                        }
                    };
                    let node = self.node_id();
                    results.push((r.id(), RemoteResult::At { node, replicas }));
                }
                Err(err) => {
                    if let Some(TaskError::Spilled { to, .. }) = err.failure::<TaskError>() {
                        return RemoteOutcome::Spilled(*to);
                    }
                    return RemoteOutcome::Failed(failure_of(err));
                }
            }
        }
        RemoteOutcome::Done(results)
    }

    /// Has other nodes keep replicas of a result this node made and keeps
    /// for its owner; the nodes that do. Fewer than asked (a cluster too
    /// small, nodes that refused) is logged and counted, not an error: the
    /// result is made, and keeps what copies it got.
    async fn replicate(&self, request: ReplicaRequest) -> Vec<NodeId> {
        let Some(executor) = self.inner.config.cluster.executor.clone() else {
            return Vec::new();
        };
        let (id, copies) = (request.id, request.copies);
        let span = tracing::debug_span!("replicate", object = %id, copies);
        let kept = executor.replicate(request).instrument(span).await;
        metrics::counter!("troupe_object_replicas_made_total").increment(kept.len() as u64);
        if kept.len() < usize::from(copies) {
            metrics::counter!("troupe_object_replicas_missing_total")
                .increment((usize::from(copies) - kept.len()) as u64);
            tracing::warn!(object = %id, asked = copies, kept = kept.len(), "fewer replicas than asked: too few nodes of this program could keep one");
        }
        kept
    }

    /// Keeps a replica of `id`, result `index` of a task of `function`
    /// made on another node, for its owner `owner`, from its bytes
    /// (`fetched`): how a node answers another's
    /// [`RemoteExecutor::replicate`](crate::remote::RemoteExecutor::replicate).
    /// Its size, or why not (an unknown function, a node that holds refs
    /// to it already, bytes that do not decode).
    #[doc(hidden)]
    pub async fn keep_copy(
        &self,
        function: &str,
        index: u32,
        id: troupe_objects::ObjectId,
        owner: NodeId,
        fetched: troupe_objects::Fetched,
    ) -> Result<u64, String> {
        let Some(entry) = remote_function(function) else {
            return Err(format!("no function {function} in this node's program"));
        };
        (entry.keep_copy)(self.objects(), index as usize, id, owner, fetched)
            .await
            .map_err(|err| err.to_string())
    }

    /// Spawns an actor of the registered type `type_name` with its
    /// constructor `constructor` and encoded arguments: how a node creates
    /// an actor another node asked for. The actor is not collected when
    /// handles drop (its owner, elsewhere, stops it).
    pub async fn spawn_by_name(
        &self,
        type_name: &str,
        constructor: &str,
        options: ActorOptions,
        args: &[u8],
    ) -> Result<ActorId, SpawnError> {
        let unknown = || SpawnError::UnknownConstructor(format!("{type_name}::{constructor}"));
        let kind = actor_type(type_name).ok_or_else(unknown)?;
        let ctor = kind
            .constructors
            .iter()
            .find(|c| c.name == constructor)
            .ok_or_else(unknown)?;
        // Decoded inside this runtime: handles among the arguments become
        // handles of this node.
        let spawning = {
            let _frame = self.decode_frame();
            (ctor.spawn)(self, options, args)
        }
        .map_err(|cause| SpawnError::BadArguments {
            constructor: format!("{type_name}::{constructor}"),
            cause,
        })?;
        spawning.await
    }

    /// Calls `method` on the live actor `actor` of this node with encoded
    /// arguments, and returns its encoded result: how a node runs a call
    /// another node made. Errors say which of actor, method, arguments or
    /// result was wrong.
    pub fn call_by_name(&self, actor: ActorId, method: &str, args: &[u8]) -> EncodedReply {
        let Some(control) = self.inner.actors.get(actor) else {
            // Stopped, or never here: either way no call reaches it again.
            let err = ActorError::ActorDied {
                actor: Arc::new(crate::ids::ActorInfo::unknown(actor, actor.node)),
                method: method.to_owned().into(),
                reason: format!("no live actor {actor} on this node"),
            };
            return Box::pin(async move { Err(err) });
        };
        let info = control.info().clone();
        let found = registry()
            .actors
            .get(info.type_name.as_ref())
            .and_then(|(_, methods)| methods.get(method));
        let Some(entry) = found else {
            let err = ActorError::BadCall {
                actor: info,
                method: method.to_owned(),
                problem: CallProblem::NoSuchMethod,
                reason: "no such method is registered for its type; is every node running the same build?".to_owned(),
            };
            return Box::pin(async move { Err(err) });
        };
        let dispatched = {
            let _frame = self.decode_frame();
            (entry.call)(control.slot_any(), self.objects(), args)
        };
        match dispatched {
            Ok(reply) => reply,
            Err((problem, reason)) => {
                let err = ActorError::BadCall {
                    actor: info,
                    method: method.to_owned(),
                    problem,
                    reason,
                };
                Box::pin(async move { Err(err) })
            }
        }
    }
}

/// What a failed result object says about the attempt that made it.
fn failure_of(err: ObjectError) -> Failure {
    if let Some(task) = err.failure::<TaskError>() {
        if let TaskError::Failed { cause, .. } = task {
            return match cause {
                crate::error::TaskCause::Panicked(m) => Failure::Panicked(m.clone()),
                crate::error::TaskCause::Error(e) => Failure::Error(e.clone()),
                crate::error::TaskCause::NodeDied(n) => Failure::NodeDied(*n),
                crate::error::TaskCause::Lost { node, reason } => {
                    Failure::Lost(*node, reason.clone())
                }
            };
        }
        if let TaskError::DependencyFailed {
            task: name,
            id,
            dependency,
            depth,
            cause,
        } = task
        {
            // What reading the argument said there: its first failure, as
            // many steps up the line (the owner's error keeps the depth).
            let read = if *depth > 1 {
                ObjectError::Failed {
                    id: *dependency,
                    cause: troupe_objects::Cause::new(TaskError::DependencyFailed {
                        task: name.clone(),
                        id: *id,
                        dependency: *dependency,
                        depth: depth - 1,
                        cause: cause.clone(),
                    }),
                }
            } else {
                cause.clone()
            };
            return Failure::Dependency(*dependency, read);
        }
    }
    Failure::Store(err)
}
