//! A supervision subtree on another node: a supervisor built there from a
//! registered [`RemoteTree`], supervised here as one child.
//!
//! The child is a [`remote_child`](Runtime::remote_child) of the built-in
//! actor type [`Subtree`]. Its constructor, on the node the child is placed
//! on, builds the tree's spec with that node's runtime and starts the
//! supervisor under that node's `user` supervisor; the actor lives exactly
//! as long as the supervisor. The supervisor's end (past its intensity it
//! gives up, OTP's escalation) ends the actor, which the parent's proxy sees
//! as its child's abnormal exit; the actor killed (the parent restarting or
//! stopping it, or its owner's death) stops the supervisor and its children.
//! The rest is `remote_child`'s: placement, `noconnection` when the node
//! dies, a restart that may land on another node.
//!
//! Message flow: parent → proxy → SpawnActor(Subtree, "new", (NAME, tree))
//! on a node → build(spec) → spawn_supervisor there → its children (local,
//! or `remote_child`s from there) … supervisor ends → Subtree killed →
//! ActorExited to the parent's node → proxy fails → parent's policy.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Constructor, Spawning};
use crate::actor::{Actor, ActorHandle, ActorOptions, Factory, StopHow};
use crate::error::SpawnError;
use crate::ids::ActorId;
use crate::runtime::Runtime;
use crate::supervisor::{ChildSpec, SupervisorRef, SupervisorSpec};

/// How long a subtree's supervisor has to stop its children in order once
/// its actor is gone, before the rest are killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A supervision tree that can be started on another node: plain data
/// (its fields travel to that node) that builds a [`SupervisorSpec`] there.
/// Register each type once with [`remote_tree!`](crate::remote_tree), and
/// supervise it from any node with [`Runtime::remote_tree_child`].
///
/// ```
/// use std::time::Duration;
/// use troupe_core::supervisor::{Intensity, Strategy, SupervisorSpec};
/// use troupe_core::{remote_tree, RemoteTree, Runtime};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Shards { count: u32 }
///
/// impl RemoteTree for Shards {
///     const NAME: &'static str = "example::Shards";
///     fn spec(self, _rt: &Runtime) -> SupervisorSpec {
///         // Children here are built on the tree's node (local actors, or
///         // `rt.remote_child` placed from there).
///         SupervisorSpec::new(format!("shards-{}", self.count), Strategy::OneForAll)
///             .intensity(Intensity::new(3, Duration::from_secs(5)))
///     }
/// }
/// remote_tree!(Shards);
/// ```
pub trait RemoteTree: Serialize + DeserializeOwned + Send + 'static {
    /// The name it is registered under: the same in every process running
    /// this binary, and unique in it (the type's path is a good one).
    const NAME: &'static str;

    /// The tree's spec, built on the node the tree runs on: `rt` is that
    /// node's runtime.
    fn spec(self, rt: &Runtime) -> SupervisorSpec;
}

/// A [`RemoteTree`] type, registered by [`remote_tree!`](crate::remote_tree).
pub struct TreeType {
    /// [`RemoteTree::NAME`].
    pub name: &'static str,
    /// Decodes the tree and builds its spec on this node.
    #[doc(hidden)]
    pub build: fn(&Runtime, &[u8]) -> Result<SupervisorSpec, String>,
}

inventory::collect!(TreeType);

/// Registers a [`RemoteTree`] type so that other nodes can start it.
#[macro_export]
macro_rules! remote_tree {
    ($tree:ty) => {
        $crate::__private::inventory::submit! {
            $crate::__private::TreeType {
                name: <$tree as $crate::RemoteTree>::NAME,
                build: $crate::__private::build_tree::<$tree>,
            }
        }
    };
}

/// Decodes a `T` from `bytes` and builds its spec on `rt`'s node.
#[doc(hidden)]
pub fn build_tree<T: RemoteTree>(rt: &Runtime, bytes: &[u8]) -> Result<SupervisorSpec, String> {
    let tree: T = rt.objects().decode(bytes).map_err(|e| e.to_string())?;
    Ok(tree.spec(rt))
}

/// The registered tree type named `name`.
pub(crate) fn tree_type(name: &str) -> Option<&'static TreeType> {
    inventory::iter::<TreeType>
        .into_iter()
        .find(|t| t.name == name)
}

/// The names of the registered tree types (for the build id).
pub(crate) fn tree_names() -> impl Iterator<Item = &'static str> {
    inventory::iter::<TreeType>.into_iter().map(|t| t.name)
}

/// The actor that stands for a subtree on its node: alive exactly as long
/// as the subtree's supervisor. It has no methods.
pub struct Subtree {
    supervisor: SupervisorRef,
}

impl Actor for Subtree {
    type Handle = ActorHandle<Subtree>;
    const NAME: &'static str = "troupe::Subtree";
}

impl Drop for Subtree {
    fn drop(&mut self) {
        // Killed (its parent restarts or stops it, or its owner died): the
        // subtree goes with it.
        if self.supervisor.is_alive() {
            let supervisor = self.supervisor.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    supervisor.stop(STOP_DEADLINE).await;
                });
            }
        }
    }
}

inventory::submit! {
    super::ActorType {
        name: <Subtree as Actor>::NAME,
        methods: &[],
        constructors: &[Constructor {
            name: "new",
            signature: "(String, RemoteTree) -> Self",
            spawn: spawn_subtree,
        }],
    }
}

/// The `Subtree` constructor, run on the node the tree goes to: its
/// arguments are the tree type's name, then the tree.
fn spawn_subtree(rt: &Runtime, options: ActorOptions, bytes: &[u8]) -> Result<Spawning, String> {
    let (name, rest): (String, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| format!("the tree's type name: {e}"))?;
    let kind = tree_type(&name).ok_or_else(|| {
        format!("no remote tree named {name:?} is registered in this program (remote_tree!)")
    })?;
    // User code: a panic in it is this spawn's error, not the host's.
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (kind.build)(rt, rest)))
        .unwrap_or_else(|panic| {
            Err(format!(
                "its spec panicked: {}",
                crate::error::panic_message(&*panic)
            ))
        });
    let spec = built.map_err(|e| format!("the tree {name}: {e}"))?;
    let rt = rt.clone();
    Ok(Box::pin(
        async move { start_subtree(rt, options, spec).await },
    ))
}

async fn start_subtree(
    rt: Runtime,
    options: ActorOptions,
    spec: SupervisorSpec,
) -> Result<ActorId, SpawnError> {
    let tree = spec.name.clone();
    let supervisor = rt.spawn_supervisor(spec).await?;
    let held = supervisor.clone();
    let factory = Factory::Sync(Arc::new(move || Subtree {
        supervisor: held.clone(),
    }));
    // Not collected when handles drop: its supervisor's end, or its owner,
    // ends it.
    let spawned = rt.spawn_inner::<Subtree>(options, factory, false).await;
    let handle = match spawned {
        Ok(handle) => handle,
        Err(err) => {
            supervisor.stop(STOP_DEADLINE).await;
            return Err(err);
        }
    };
    let id = handle.id();
    metrics::counter!("troupe_remote_trees_started_total").increment(1);
    tracing::info!(actor = %id, supervisor = %tree, "remote subtree started");
    // The supervisor's end is the actor's.
    let weak = rt.downgrade();
    tokio::spawn(async move {
        let _ = supervisor.cell().wait(None).await;
        let Some(rt) = weak.upgrade() else { return };
        if let Some(control) = rt.inner.actors.get(id) {
            tracing::warn!(actor = %id, supervisor = %tree, "remote subtree's supervisor ended: ending it");
            metrics::counter!("troupe_remote_trees_ended_total").increment(1);
            control.end(StopHow::Kill { no_restart: true }).await;
        }
    });
    Ok(id)
}

impl Runtime {
    /// A child for your supervision trees that runs the supervision tree
    /// `tree` on another node: the node `options` picks (node affinity, a
    /// placement group bundle, or the cluster's choice) builds its spec
    /// ([`RemoteTree::spec`]) and runs its supervisor. The subtree ending
    /// (its supervisor past its intensity) is this child's abnormal exit,
    /// and so is its node's death (`noconnection`); this supervisor's
    /// strategy and intensity apply as to any child, and a restart may
    /// start the tree on another node. Stopping the child stops the tree.
    ///
    /// Needs a cluster: without one, starting the child fails.
    pub fn remote_tree_child<T: RemoteTree>(
        &self,
        id: &str,
        options: ActorOptions,
        tree: &T,
    ) -> Result<ChildSpec, SpawnError> {
        let (spec, _) = self.remote_child::<Subtree>(id, options, "new", &(T::NAME, tree))?;
        Ok(spec)
    }
}
