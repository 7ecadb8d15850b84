//! The cluster as one of its nodes sees it, for whoever shows it (the
//! dashboard): a seam the cluster plugs in ([`ClusterSeams::inspector`]),
//! so that a view of every node needs no dependency on the cluster.
//!
//! The types here are the cluster's directory and state API in core's
//! words: a member's health, resources and load as its heartbeats said,
//! and its own [`State`] if it answered.
//!
//! [`ClusterSeams::inspector`]: super::ClusterSeams::inspector

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use troupe_objects::NodeId;

use super::{Runtime, State, StateQuery};
use crate::Resources;

/// Every member of the cluster (command-line clients aside), the head
/// first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The head's id.
    pub head: Option<NodeId>,
    /// The node that asked (this one).
    pub me: Option<NodeId>,
    /// One entry per member, departed ones included.
    pub nodes: Vec<NodeView>,
}

/// Whether a member is heard from, as the head's failure detector says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeHealth {
    /// Heard from recently.
    Alive,
    /// Silent past the suspicion limit: sent no new work.
    Suspect,
    /// Silent past the death limit: its work moved or failed.
    Dead,
    /// Left cleanly.
    Left,
}

/// A member's load at its last heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Tasks queued, running or delegated.
    pub tasks_queued: u64,
    /// Tasks running.
    pub tasks_running: u64,
    /// Tasks waiting for a node that fits.
    pub tasks_unplaced: u64,
    /// Live actors.
    pub actors: u64,
    /// Objects in its store.
    pub objects: u64,
    /// Bytes of its objects in memory.
    pub object_bytes: u64,
    /// Placement groups it created that are not (all) reserved yet.
    pub placement_groups_pending: u64,
}

/// What a member answered when asked for its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeReply {
    /// Its snapshot; `truncated` when its lists were cut to fit a frame.
    State {
        /// The snapshot.
        state: Box<State>,
        /// Whether its lists were cut.
        truncated: bool,
    },
    /// It left or died: it was not asked.
    Departed,
    /// It did not answer in time, or the request failed: why.
    NoAnswer(String),
}

/// One member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its id.
    pub id: NodeId,
    /// Its runtime's name.
    pub name: String,
    /// Where its control port listens (`host:port`).
    pub address: String,
    /// `head`, `worker` or `driver`.
    pub role: String,
    /// Its process id.
    pub pid: u32,
    /// Heard from, suspected, dead or left.
    pub health: NodeHealth,
    /// What it offers.
    pub total: Resources,
    /// What was free at its last heartbeat.
    pub available: Resources,
    /// Its load at its last heartbeat.
    pub load: NodeLoad,
    /// Its state, or why there is none.
    pub reply: NodeReply,
    /// Where it serves Prometheus metrics (`host:port`), if it does.
    pub metrics: Option<String>,
}

/// Where one member serves its Prometheus metrics: a target for
/// Prometheus's service discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsTarget {
    /// The member's id.
    pub node: NodeId,
    /// Its runtime's name.
    pub name: String,
    /// `head`, `worker` or `driver`.
    pub role: String,
    /// Where its metrics endpoint listens (`host:port`).
    pub address: String,
}

/// A job the head runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// Its id.
    pub id: String,
    /// Its command line, joined by spaces.
    pub command: String,
    /// `running`, `succeeded`, `failed` or `stopped`.
    pub status: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When it was submitted, in microseconds since the Unix epoch.
    pub submitted_at_us: u64,
    /// When it ended, if it did.
    pub ended_at_us: Option<u64>,
}

/// A page of a job's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogPage {
    /// The bytes from the page's offset.
    pub bytes: Vec<u8>,
    /// Where the next page starts.
    pub next: u64,
    /// Whether the job has ended.
    pub ended: bool,
}

/// Why the cluster could not be inspected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// The cluster's request failed (not joined, the head unreachable, a
    /// job unknown): its own error.
    #[error(transparent)]
    Cluster(Box<dyn std::error::Error + Send + Sync>),
}

/// Looks at the whole cluster from one node; the cluster implements it.
/// Each call asks the head, which asks every member with a deadline.
pub trait ClusterInspector: Send + Sync + 'static {
    /// Every member, with its state per `query`.
    fn cluster(&self, query: StateQuery) -> BoxFuture<'static, Result<ClusterView, InspectError>>;

    /// The head's jobs, oldest first.
    fn jobs(&self) -> BoxFuture<'static, Result<Vec<JobView>, InspectError>>;

    /// A page of job `id`'s log from byte `from`.
    fn job_log(
        &self,
        id: String,
        from: u64,
    ) -> BoxFuture<'static, Result<JobLogPage, InspectError>>;

    /// Where every live member that serves Prometheus metrics serves
    /// them, from this node's copy of the directory: no member is asked,
    /// so a scrape's discovery costs nothing and cannot hang.
    fn metrics_targets(&self) -> Vec<MetricsTarget>;
}

impl Runtime {
    /// What looks at the cluster this node is part of; `None` when it runs
    /// alone.
    pub fn cluster_inspector(&self) -> Option<std::sync::Arc<dyn ClusterInspector>> {
        self.inner.config.cluster.inspector.clone()
    }
}
