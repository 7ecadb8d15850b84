//! Placement groups (Ray's `placement_group`): bundles of resources
//! reserved together, on one node or across a cluster's nodes, before any
//! work runs in them. Tasks and actors are then placed into a bundle by
//! index, and run on its node out of what it holds.
//!
//! A bundle reserved on a node takes its resources out of the node's free
//! pool for as long as the group lives, and offers them again under names
//! only the group's work asks for (`pg/<group>/<bundle>/cpu`, ...): work in a
//! bundle never competes with work outside it, as in Ray, whose bundles are
//! renamed resources too.
//!
//! ```
//! # use troupe_core::{Config, Resources};
//! # use troupe_core::placement_group::{PlacementGroupOptions, PlacementStrategy};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let rt = troupe_core::init(Config::default().resources(Resources::cpus(4.0))).await.unwrap();
//! let group = rt
//!     .placement_group(
//!         PlacementGroupOptions::new(vec![Resources::cpus(1.0); 2])
//!             .strategy(PlacementStrategy::Pack),
//!     )
//!     .unwrap();
//! group.ready(std::time::Duration::from_secs(5)).await.unwrap();
//! assert_eq!(rt.available_resources().num_cpus, 2.0);
//! rt.remove_placement_group(&group).await;
//! assert_eq!(rt.available_resources().num_cpus, 4.0);
//! # rt.shutdown().await.unwrap();
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ids::NodeId;
use crate::Resources;

/// A placement group's id: its creator's node and a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlacementGroupId {
    /// The node that created it (and places its bundles).
    pub node: NodeId,
    /// Unique on that node.
    pub seq: u64,
}

impl fmt::Display for PlacementGroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pg-{}-{}", self.node, self.seq)
    }
}

/// How a group's bundles are spread over nodes (Ray's strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementStrategy {
    /// On as few nodes as possible (one if it fits).
    #[default]
    Pack,
    /// On as many distinct nodes as possible.
    Spread,
    /// All on one node, or not at all.
    StrictPack,
    /// Each on a distinct node, or not at all.
    StrictSpread,
}

/// What to reserve: the bundles, in order (tasks and actors name them by
/// index), and how to spread them.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementGroupOptions {
    pub(crate) bundles: Vec<Resources>,
    pub(crate) strategy: PlacementStrategy,
    pub(crate) name: Option<String>,
}

impl PlacementGroupOptions {
    /// `bundles`, packed ([`PlacementStrategy::Pack`]) unless told otherwise.
    pub fn new(bundles: Vec<Resources>) -> Self {
        Self {
            bundles,
            strategy: PlacementStrategy::Pack,
            name: None,
        }
    }

    /// How the bundles are spread over nodes.
    pub fn strategy(mut self, strategy: PlacementStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// A name, for the state API and logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Why these options cannot make a group, if they cannot.
    pub(crate) fn validate(&self) -> Result<(), PlacementGroupError> {
        if self.bundles.is_empty() {
            return Err(PlacementGroupError::NoBundles);
        }
        for (index, bundle) in self.bundles.iter().enumerate() {
            let invalid = |reason: String| PlacementGroupError::InvalidBundle { index, reason };
            bundle.validate().map_err(invalid)?;
            if bundle.num_gpus > 0.0 {
                return Err(invalid(
                    "GPUs in bundles are not supported yet (a task in a bundle would not be given the bundle's devices); reserve GPU actors with num_gpus and node affinity instead".to_owned(),
                ));
            }
            if bundle.custom.keys().any(|k| k.starts_with(KEY_PREFIX)) {
                return Err(invalid(format!(
                    "resource names starting with {KEY_PREFIX:?} are the bundles' own"
                )));
            }
            let empty = bundle.num_cpus == 0.0
                && bundle.memory == 0
                && bundle.custom.values().all(|v| *v == 0.0);
            if empty {
                return Err(invalid(
                    "it reserves nothing: give it CPUs, memory or a custom resource".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// Where a group is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementGroupState {
    /// Not (all) reserved yet: no node set fits it now, and it waits for
    /// resources to come back or nodes to join.
    Pending {
        /// Why it does not fit now.
        why: String,
    },
    /// Every bundle is reserved: bundle `i` on `nodes[i]`.
    Ready {
        /// Each bundle's node, by index.
        nodes: Vec<NodeId>,
    },
    /// Removed: its resources are back, and what ran in it was stopped.
    Removed,
}

/// A placement group this node created. Cheap to clone; removal is
/// explicit ([`Runtime::remove_placement_group`](crate::Runtime::remove_placement_group)),
/// or comes with the runtime's shutdown.
#[derive(Clone)]
pub struct PlacementGroup {
    pub(crate) id: PlacementGroupId,
    pub(crate) shared: Arc<GroupShared>,
}

pub(crate) struct GroupShared {
    pub(crate) options: PlacementGroupOptions,
    pub(crate) state: watch::Sender<PlacementGroupState>,
    /// Next bundle for work that names none (round robin).
    pub(crate) next_bundle: std::sync::atomic::AtomicUsize,
}

impl fmt::Debug for PlacementGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlacementGroup")
            .field("id", &self.id)
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

impl PlacementGroup {
    /// Its id.
    pub fn id(&self) -> PlacementGroupId {
        self.id
    }

    /// Its bundles, by index.
    pub fn bundles(&self) -> &[Resources] {
        &self.shared.options.bundles
    }

    /// Its strategy.
    pub fn strategy(&self) -> PlacementStrategy {
        self.shared.options.strategy
    }

    /// Where it is now.
    pub fn state(&self) -> PlacementGroupState {
        self.shared.state.borrow().clone()
    }

    /// Waits until every bundle is reserved (Ray's `pg.ready()`); each
    /// bundle's node, by index. Fails if it is removed, or still pending
    /// after `timeout` (it stays pending: wait again, or remove it).
    pub async fn ready(&self, timeout: Duration) -> Result<Vec<NodeId>, PlacementGroupError> {
        let mut state = self.shared.state.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                match &*state.borrow_and_update() {
                    PlacementGroupState::Ready { nodes } => return Ok(nodes.clone()),
                    PlacementGroupState::Removed => {
                        return Err(PlacementGroupError::Removed(self.id))
                    }
                    PlacementGroupState::Pending { .. } => {}
                }
                if state.changed().await.is_err() {
                    return Err(PlacementGroupError::Removed(self.id));
                }
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => Err(PlacementGroupError::NotReady {
                id: self.id,
                waited: timeout,
                why: match self.state() {
                    PlacementGroupState::Pending { why } => why,
                    other => format!("{other:?}"),
                },
            }),
        }
    }

    /// The node bundle `index` is reserved on, once ready.
    pub fn bundle_node(&self, index: usize) -> Option<NodeId> {
        match &*self.shared.state.borrow() {
            PlacementGroupState::Ready { nodes } => nodes.get(index).copied(),
            _ => None,
        }
    }
}

/// Why a placement group could not be made, used or waited for.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PlacementGroupError {
    /// A group of no bundles.
    #[error("a placement group needs at least one bundle")]
    NoBundles,
    /// A bundle that cannot be reserved as given.
    #[error("bundle {index} is invalid: {reason}")]
    InvalidBundle {
        /// Its index.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Still pending when the wait ended.
    #[error("placement group {id} is not ready after {waited:?}: {why}; it stays pending until it fits (add nodes or free resources), or remove it")]
    NotReady {
        /// The group.
        id: PlacementGroupId,
        /// How long the caller waited.
        waited: Duration,
        /// Why it does not fit now.
        why: String,
    },
    /// Removed (or its runtime shut down).
    #[error("placement group {0} was removed")]
    Removed(PlacementGroupId),
    /// Work named a group this node does not know: groups are placed by
    /// the node that created them, and work goes into one from there.
    #[error("placement group {0} is not known on this node (work goes into a group from the node that created it, {node})", node = .0.node)]
    Unknown(PlacementGroupId),
    /// Work named a bundle the group does not have.
    #[error("placement group {id} has {count} bundle(s), not a bundle {index}")]
    NoSuchBundle {
        /// The group.
        id: PlacementGroupId,
        /// The index asked for.
        index: usize,
        /// How many it has.
        count: usize,
    },
    /// Work asked for more than its bundle holds.
    #[error("{what} needs {needs:?}, more than bundle {index} of placement group {id} holds ({holds:?}): ask for less, or make the bundle larger")]
    DoesNotFit {
        /// The task or actor.
        what: String,
        /// The group.
        id: PlacementGroupId,
        /// The bundle.
        index: usize,
        /// What it asked for.
        needs: Box<Resources>,
        /// What the bundle holds.
        holds: Box<Resources>,
    },
}

/// The prefix of the resource names a bundle's reservation offers.
pub(crate) const KEY_PREFIX: &str = "pg/";

/// Whether `name` is a resource a placement group's bundle offers (on the
/// node holding it, for as long as it is held: not part of what a node
/// offers in all).
pub fn is_bundle_resource(name: &str) -> bool {
    name.starts_with(KEY_PREFIX)
}

/// The prefix of bundle `index` of `group`'s resource names.
pub(crate) fn bundle_prefix(group: PlacementGroupId, index: usize) -> String {
    format!("{KEY_PREFIX}{group}/{index}/")
}

/// What `needs` asks of bundle `index` of `group`, under the bundle's own
/// resource names.
pub(crate) fn in_bundle(needs: &Resources, group: PlacementGroupId, index: usize) -> Resources {
    let prefix = bundle_prefix(group, index);
    let mut renamed = Resources::default();
    let mut put = |name: &str, amount: f64| {
        if amount > 0.0 {
            renamed.custom.insert(format!("{prefix}{name}"), amount);
        }
    };
    put("cpu", needs.num_cpus);
    put("memory", needs.memory as f64);
    for (k, v) in &needs.custom {
        put(&format!("custom/{k}"), *v);
    }
    renamed
}

/// A node as the planner sees it: what it offers in all and has free now.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRoom {
    /// The node.
    pub node: NodeId,
    /// What it has free now.
    pub free: Resources,
}

/// Picks a node for each bundle under `strategy`, given each node's free
/// resources (a pure function: the rules are unit-tested). `Err` says why
/// no choice fits now.
pub(crate) fn plan(
    bundles: &[Resources],
    strategy: PlacementStrategy,
    nodes: &[NodeRoom],
) -> Result<Vec<NodeId>, String> {
    const EPS: f64 = 1e-9;
    let fits = |need: &Resources, free: &Resources| {
        need.num_cpus <= free.num_cpus + EPS
            && need.memory <= free.memory
            && need
                .custom
                .iter()
                .all(|(k, v)| *v <= free.custom.get(k).copied().unwrap_or(0.0) + EPS)
    };
    let take = |need: &Resources, free: &mut Resources| {
        free.num_cpus -= need.num_cpus;
        free.memory = free.memory.saturating_sub(need.memory);
        for (k, v) in &need.custom {
            if let Some(have) = free.custom.get_mut(k) {
                *have -= v;
            }
        }
    };
    if nodes.is_empty() {
        return Err("no node can run work yet".to_owned());
    }
    let mut free: Vec<Resources> = nodes.iter().map(|n| n.free.clone()).collect();
    // Most free CPUs first: what packs most, and spreads onto room.
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|a, b| free[*b].num_cpus.total_cmp(&free[*a].num_cpus));
    let all_on_one = |free: &[Resources]| {
        order.iter().copied().find(|&i| {
            let mut room = free[i].clone();
            bundles.iter().all(|b| {
                let ok = fits(b, &room);
                take(b, &mut room);
                ok
            })
        })
    };
    match strategy {
        PlacementStrategy::StrictPack => match all_on_one(&free) {
            Some(i) => Ok(vec![nodes[i].node; bundles.len()]),
            None => Err(format!(
                "no node has room for all {} bundles together (STRICT_PACK)",
                bundles.len()
            )),
        },
        PlacementStrategy::Pack => {
            if let Some(i) = all_on_one(&free) {
                return Ok(vec![nodes[i].node; bundles.len()]);
            }
            // Fill the nodes already used before opening another.
            let mut used: Vec<usize> = Vec::new();
            let mut chosen = Vec::with_capacity(bundles.len());
            for (index, b) in bundles.iter().enumerate() {
                let pick = used
                    .iter()
                    .copied()
                    .chain(order.iter().copied())
                    .find(|&i| fits(b, &free[i]))
                    .ok_or_else(|| format!("no node has room for bundle {index} ({b:?})"))?;
                take(b, &mut free[pick]);
                if !used.contains(&pick) {
                    used.push(pick);
                }
                chosen.push(nodes[pick].node);
            }
            Ok(chosen)
        }
        PlacementStrategy::Spread | PlacementStrategy::StrictSpread => {
            let strict = strategy == PlacementStrategy::StrictSpread;
            if strict && bundles.len() > nodes.len() {
                return Err(format!(
                    "{} bundles need as many distinct nodes (STRICT_SPREAD), and {} can run work",
                    bundles.len(),
                    nodes.len()
                ));
            }
            let mut uses = vec![0usize; nodes.len()];
            let mut chosen = Vec::with_capacity(bundles.len());
            for (index, b) in bundles.iter().enumerate() {
                // The least used node with room, most free first.
                let pick = order
                    .iter()
                    .copied()
                    .filter(|&i| fits(b, &free[i]) && (!strict || uses[i] == 0))
                    .min_by_key(|&i| uses[i])
                    .ok_or_else(|| {
                        if strict {
                            format!("no node not already holding a bundle has room for bundle {index} ({b:?}) (STRICT_SPREAD)")
                        } else {
                            format!("no node has room for bundle {index} ({b:?})")
                        }
                    })?;
                take(b, &mut free[pick]);
                uses[pick] += 1;
                chosen.push(nodes[pick].node);
            }
            Ok(chosen)
        }
    }
}

#[cfg(test)]
#[path = "placement_group/tests.rs"]
mod tests;
