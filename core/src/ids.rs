//! Global ids of tasks and actors, and who an actor is.
//!
//! Every id is its node's id (random per runtime incarnation) and a counter
//! there: unique across nodes and across restarts of a node, with no
//! coordination. The node that submits a task or spawns an actor mints its
//! ids (Ray's owner does the same), so a ref exists before anyone runs it.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

pub(crate) use troupe_objects::{NodeId, ObjectId};

use crate::Resources;

/// A task, unique across nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// The node that submitted it (its owner).
    pub node: NodeId,
    /// Its number there.
    pub seq: u64,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task-{}-{}", self.node, self.seq)
    }
}

/// An actor, unique across nodes and stable across its restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorId {
    /// The node that spawned it.
    pub node: NodeId,
    /// Its number there.
    pub seq: u64,
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "actor-{}-{}", self.node, self.seq)
    }
}

/// Mints ids for one node.
#[derive(Debug)]
pub(crate) struct Minter {
    node: NodeId,
    next: AtomicU64,
}

impl Minter {
    pub(crate) fn new(node: NodeId) -> Self {
        Self {
            node,
            next: AtomicU64::new(1),
        }
    }

    pub(crate) fn task(&self) -> TaskId {
        TaskId {
            node: self.node,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub(crate) fn actor(&self) -> ActorId {
        ActorId {
            node: self.node,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Who an actor is, for errors, logs, metrics and the state API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorInfo {
    /// Unique across nodes, stable across restarts.
    pub id: ActorId,
    /// The name it was spawned with, if any.
    pub name: Option<String>,
    /// The Rust type of the actor (its registered name).
    pub type_name: Cow<'static, str>,
    /// The node it lives on.
    pub node: NodeId,
    /// What it holds from its node for its whole life, restarts included.
    pub resources: Resources,
    /// The GPUs it holds, by ordinal: empty unless it asked for `num_gpus`.
    /// A restarted incarnation keeps them.
    pub gpu_ids: Vec<u32>,
}

impl ActorInfo {
    /// An actor known only by its id and node (a call's error names it when
    /// nothing more is known here: it lives, or lived, elsewhere).
    pub fn unknown(id: ActorId, node: NodeId) -> Self {
        ActorInfo {
            id,
            name: None,
            type_name: "unknown".into(),
            node,
            resources: Resources::default(),
            gpu_ids: Vec::new(),
        }
    }
}

impl fmt::Display for ActorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self
            .type_name
            .rsplit("::")
            .next()
            .unwrap_or(&self.type_name);
        match &self.name {
            Some(name) => write!(f, "{short}#{} {name:?}", self.id.seq),
            None => write!(f, "{short}#{}", self.id.seq),
        }
    }
}

// Ids hold no heap memory: storable as parts of objects.
impl troupe_objects::GetSize for TaskId {}
impl troupe_objects::GetSize for ActorId {}

/// Who keeps track of an actor spawned on another node: the process that
/// spawned it (its owner, as in Ray) and the actor's id as first spawned.
/// A handle carries it, so that when the actor's node dies the handle can
/// ask the owner where the actor was restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActorOwner {
    /// The node that spawned the actor and restarts it.
    pub owner: NodeId,
    /// The actor's id as first spawned: the owner's key for it.
    pub actor: ActorId,
}
