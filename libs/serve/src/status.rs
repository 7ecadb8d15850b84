//! What `serve status` shows: every deployment, its replicas and their
//! health, as plain serde data (the proxy serves it as JSON at
//! `/-/status`).

use serde::{Deserialize, Serialize};

use crate::deployment::{AutoscalingConfig, BatchConfig};

/// The state of serving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServeStatus {
    /// Where the HTTP proxy listens, if it runs.
    pub proxy: Option<String>,
    /// The deployments, by name.
    pub deployments: Vec<DeploymentStatus>,
}

/// One deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeploymentStatus {
    /// Its name.
    pub name: String,
    /// Its HTTP route, if any.
    pub route_prefix: Option<String>,
    /// The version deployed last.
    pub version: String,
    /// How many replicas of that version it aims at.
    pub target_replicas: usize,
    /// Requests waiting for a replica.
    pub queued_requests: usize,
    /// Its batching, if it batches.
    pub batching: Option<BatchConfig>,
    /// Its autoscaling, if it scales.
    pub autoscaling: Option<AutoscalingConfig>,
    /// Its replicas.
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// Its number within the deployment.
    pub index: u64,
    /// The version it runs.
    pub version: String,
    /// What it is doing.
    pub state: ReplicaState,
    /// Requests sent to it and not answered yet.
    pub ongoing_requests: usize,
    /// Requests it has answered.
    pub served: u64,
    /// How often its actor restarted (after panics or failed health
    /// checks).
    pub restarts: u32,
    /// The node it runs on (as far as this node knows: a replica restarted
    /// elsewhere shows its new node once a request or check reached it), in
    /// hex as `troupe status` shows nodes.
    #[serde(default)]
    pub node: String,
}

/// What a replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReplicaState {
    /// Taking requests.
    Running,
    /// Its actor is restarting (requests go to the others).
    Restarting,
    /// Its last health check failed; it is about to restart.
    Unhealthy,
    /// Finishing its requests before it stops.
    Draining,
    /// Dead for good; it is about to be replaced.
    Dead,
}
