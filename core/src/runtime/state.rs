//! The state API: what a runtime runs now (Ray's `ray list` and `ray
//! summary`), as one serializable snapshot: nodes, actors, tasks (live
//! ones from the scheduler, the last finished ones from its history),
//! objects, the supervision tree, and counts of each.
//!
//! Lists are bounded ([`StateQuery::limit`]): a snapshot of a node with a
//! million queued tasks must not copy a million rows. The summary's counts
//! are always complete.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use troupe_objects::{NodeId, ObjectInfo};

use super::Runtime;
use crate::actor::{ActorState, ActorSummary};
use crate::ids::ActorId;
use crate::scheduler::{Counts, FunctionSummary, TaskFilter, TaskInfo};
use crate::supervisor::{children_of, LastFailure, SupervisorMsg};
use crate::{GpuInfo, Resources};

/// What to include in a [`State`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateQuery {
    /// Which tasks to list (default: any, at most 1,000).
    pub tasks: TaskFilter,
    /// At most this many actors, objects, and children per supervisor
    /// (default 1,000; the summary counts them all).
    pub limit: usize,
    /// How long to wait for each supervisor's list of children (default
    /// 2 s): one busy restarting a slow child is shown as not answering
    /// rather than holding the snapshot up.
    pub supervisor_timeout: Duration,
}

impl Default for StateQuery {
    fn default() -> Self {
        Self {
            tasks: TaskFilter::default(),
            limit: 1000,
            supervisor_timeout: Duration::from_secs(2),
        }
    }
}

impl StateQuery {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists tasks per `filter`.
    pub fn tasks(mut self, filter: TaskFilter) -> Self {
        self.tasks = filter;
        self
    }

    /// Lists at most `limit` actors, objects and children per supervisor.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// A node of the cluster (for now, this one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node.
    pub id: NodeId,
    /// Its runtime's name (`Config::name`).
    pub name: String,
    /// Whether it is alive.
    pub alive: bool,
    /// When it started, in microseconds since the Unix epoch.
    pub started_at_us: u64,
    /// What it offers in all.
    pub resources: Resources,
    /// What is free now.
    pub available: Resources,
    /// Its GPUs.
    pub gpus: Vec<GpuInfo>,
}

/// What kind of child a supervisor has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildKind {
    /// A supervisor (its children are listed in turn).
    Supervisor,
    /// A Troupe actor (`#[troupe::actor]`).
    Actor,
    /// Any other ractor actor (the runtime's system actors, or yours).
    Ractor,
}

/// One child of a supervisor in the supervision tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildView {
    /// Its id in its supervisor (a Troupe actor's is `Type#seq`).
    pub id: String,
    /// What it is.
    pub kind: ChildKind,
    /// Whether it runs now (false while it waits for a restart).
    pub running: bool,
    /// Restarts so far.
    pub restarts: u32,
    /// Why it failed last, if it ever did.
    pub last_failure: Option<LastFailure>,
    /// The Troupe actor, if it is one.
    pub actor: Option<ActorId>,
    /// The Troupe actor's type, if it is one.
    pub actor_type: Option<String>,
    /// Its own children, if it is a supervisor.
    pub supervisor: Option<SupervisorView>,
}

/// One supervisor and its children, as the state API shows the tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupervisorView {
    /// Its name.
    pub name: String,
    /// Its path from the root (`root/user/workers`).
    pub path: String,
    /// Its children in start order (for `root/user`, then the actors it
    /// supervises in place, oldest first).
    pub children: Vec<ChildView>,
    /// Children left out past the query's limit.
    pub more: usize,
    /// Why its children are missing, if they are (it did not answer).
    pub error: Option<String>,
}

/// Actors by state and by type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorCounts {
    /// Running an incarnation.
    pub alive: usize,
    /// Between incarnations.
    pub restarting: usize,
    /// Restarts of the live actors, added up.
    pub restarts: u64,
    /// Live actors by type.
    pub by_type: BTreeMap<String, usize>,
}

/// The object store in numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSummary {
    /// Objects in the store (pending, in memory, spilled, failed, remote).
    pub objects: usize,
    /// Bytes of objects in memory.
    pub memory_bytes: u64,
    /// The memory budget.
    pub budget_bytes: u64,
    /// Bytes of objects on disk (as they were in memory).
    pub spilled_bytes: u64,
    /// Objects on disk.
    pub spilled_objects: u64,
    /// Bytes of freed buffers kept for reuse.
    pub pooled_bytes: u64,
}

/// Counts of everything, complete whatever the lists' limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Unfinished tasks by where they are.
    pub tasks: Counts,
    /// Each function's tasks so far.
    pub functions: Vec<FunctionSummary>,
    /// Actors.
    pub actors: ActorCounts,
    /// The object store.
    pub objects: ObjectSummary,
    /// Whether the timeline records now.
    pub timeline_recording: bool,
    /// Placement groups (of any node) with a bundle reserved on this node.
    #[serde(default)]
    pub placement_groups: usize,
}

/// What a runtime runs now: the state API's snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// This node.
    pub node: NodeId,
    /// The runtime's name.
    pub name: String,
    /// When the snapshot was taken, in microseconds since the Unix epoch.
    pub at_us: u64,
    /// The nodes (for now, this one).
    pub nodes: Vec<NodeInfo>,
    /// Live actors, oldest first (at most the query's limit).
    pub actors: Vec<ActorSummary>,
    /// Tasks the query's filter keeps: unfinished ones (running first),
    /// then finished ones, newest first.
    pub tasks: Vec<TaskInfo>,
    /// Objects in the store (at most the query's limit).
    pub objects: Vec<ObjectInfo>,
    /// The supervision tree from `root`.
    pub supervisors: SupervisorView,
    /// Counts of everything.
    pub summary: Summary,
}

impl Runtime {
    /// What runs now (the state API): nodes, actors, tasks, objects, the
    /// supervision tree and a summary, with the default query. Serializable
    /// (the dashboard serves it as JSON).
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let rt = troupe_core::init(troupe_core::Config::default()).await.unwrap();
    /// let state = rt.state().await;
    /// assert_eq!(state.supervisors.path, "root");
    /// assert_eq!(state.nodes[0].id, rt.node_id());
    /// rt.shutdown().await.unwrap();
    /// # }
    /// ```
    pub async fn state(&self) -> State {
        self.state_with(&StateQuery::default()).await
    }

    /// [`state`](Self::state) with a query: which tasks, how many of each.
    pub async fn state_with(&self, query: &StateQuery) -> State {
        let supervisors = self.supervision_tree(query).await;
        let all_actors = self.inner.actors.summaries();
        State {
            node: self.node_id(),
            name: self.inner.config.name.clone(),
            at_us: self.inner.clock.now_us(),
            nodes: self.nodes(),
            summary: self.summary_of(&all_actors),
            actors: all_actors.into_iter().take(query.limit).collect(),
            tasks: self.tasks(&query.tasks),
            objects: self.inner.objects.list_some(query.limit),
            supervisors,
        }
    }

    /// Tasks `filter` keeps: unfinished ones (running first), then the last
    /// finished ones (`Config::task_history`), newest first.
    pub fn tasks(&self, filter: &TaskFilter) -> Vec<TaskInfo> {
        self.inner.scheduler.tasks(filter)
    }

    /// Counts of tasks (by where they are, by function), actors and
    /// objects: complete, and cheap (no list is copied but the actors').
    pub fn summary(&self) -> Summary {
        self.summary_of(&self.inner.actors.summaries())
    }

    fn summary_of(&self, actors: &[ActorSummary]) -> Summary {
        let mut counts = ActorCounts::default();
        for actor in actors {
            match actor.state {
                ActorState::Alive => counts.alive += 1,
                ActorState::Restarting => counts.restarting += 1,
                ActorState::Dead => {}
            }
            counts.restarts += u64::from(actor.restarts);
            *counts
                .by_type
                .entry(actor.info.type_name.to_string())
                .or_default() += 1;
        }
        let store = &self.inner.objects;
        let (spilled_bytes, spilled_objects) = store.spilled();
        Summary {
            tasks: self.inner.scheduler.counts(),
            functions: self.inner.scheduler.function_summaries(),
            actors: counts,
            objects: ObjectSummary {
                objects: store.len(),
                memory_bytes: store.in_memory_bytes(),
                budget_bytes: store.config().memory_budget,
                spilled_bytes,
                spilled_objects,
                pooled_bytes: store.pooled_bytes(),
            },
            timeline_recording: self.inner.timeline.is_recording(),
            placement_groups: {
                // Sorted by group: a group's bundles are neighbours.
                let mut groups: Vec<_> =
                    self.hosted_bundles().into_iter().map(|(g, _)| g).collect();
                groups.dedup();
                groups.len()
            },
        }
    }

    /// The nodes (for now, this one): resources in all and free now.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        vec![NodeInfo {
            id: self.node_id(),
            name: self.inner.config.name.clone(),
            alive: !self.is_shut_down(),
            started_at_us: self.inner.clock.started_us(),
            resources: self.inner.scheduler.capacity().clone(),
            available: self.available_resources(),
            gpus: self.inner.gpus.clone(),
        }]
    }

    /// The supervision tree from `root`: every supervisor's children
    /// (asked of each supervisor, within the query's timeout), and under
    /// `root/user` the actors it supervises in place, each with its
    /// restarts and last failure.
    pub async fn supervision_tree(&self, query: &StateQuery) -> SupervisorView {
        let root = self.inner.root.clone();
        let name = root.name().to_owned();
        let actor: ractor::ActorRef<SupervisorMsg> = ractor::ActorRef::from(root.cell());
        self.walk(actor, name.clone(), name, query, 0).await
    }

    fn walk<'a>(
        &'a self,
        actor: ractor::ActorRef<SupervisorMsg>,
        name: String,
        path: String,
        query: &'a StateQuery,
        depth: usize,
    ) -> Pin<Box<dyn Future<Output = SupervisorView> + Send + 'a>> {
        Box::pin(async move {
            let mut view = SupervisorView {
                name,
                path,
                children: Vec::new(),
                more: 0,
                error: None,
            };
            let children = if actor.get_status() > ractor::ActorStatus::Running {
                Err(format!("supervisor {:?} is not running", view.name))
            } else {
                children_of(&actor, &view.name, query.supervisor_timeout)
                    .await
                    .map_err(|e| e.to_string())
            };
            let children = match children {
                Ok(children) => children,
                Err(error) => {
                    view.error = Some(error);
                    Vec::new()
                }
            };
            let total = children.len();
            for child in children.into_iter().take(query.limit) {
                let nested = match child.supervisor() {
                    // Trees do not cycle; the bound guards the walk anyway.
                    Some(sup) if depth < MAX_DEPTH => {
                        let path = format!("{}/{}", view.path, child.id);
                        Some(
                            self.walk(sup, child.id.to_string(), path, query, depth + 1)
                                .await,
                        )
                    }
                    _ => None,
                };
                let listed = child
                    .actor_id
                    .and_then(|id| self.inner.actors.summary_of(id));
                let kind = if nested.is_some() || child.supervisor().is_some() {
                    ChildKind::Supervisor
                } else if child.actor_id.is_some() {
                    ChildKind::Actor
                } else {
                    ChildKind::Ractor
                };
                view.children.push(ChildView {
                    id: child.id.to_string(),
                    kind,
                    running: child.running,
                    restarts: child.restarts,
                    last_failure: child
                        .last_failure
                        .clone()
                        .or_else(|| listed.as_ref().and_then(|a| a.last_failure.clone())),
                    actor: child.actor_id,
                    actor_type: listed.map(|a| a.info.type_name.to_string()),
                    supervisor: nested,
                });
            }
            view.more = total.saturating_sub(view.children.len());
            if *view.path == *self.inner.user_path {
                let in_place: Vec<ActorSummary> = self
                    .inner
                    .actors
                    .summaries()
                    .into_iter()
                    .filter(|a| a.in_place)
                    .collect();
                let room = query.limit.saturating_sub(view.children.len());
                view.more += in_place.len().saturating_sub(room);
                for actor in in_place.into_iter().take(room) {
                    view.children.push(ChildView {
                        id: actor.info.to_string(),
                        kind: ChildKind::Actor,
                        running: actor.state == ActorState::Alive,
                        restarts: actor.restarts,
                        last_failure: actor.last_failure,
                        actor: Some(actor.info.id),
                        actor_type: Some(actor.info.type_name.to_string()),
                        supervisor: None,
                    });
                }
            }
            view
        })
    }
}

/// How deep the tree walk goes.
const MAX_DEPTH: usize = 64;
