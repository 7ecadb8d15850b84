//! Core's inspection seam: the cluster's state API and jobs in core's
//! words, for a dashboard that knows nothing of the cluster crate.

use troupe_core::runtime::{
    ClusterInspector, ClusterView, InspectError, JobLogPage, JobView, NodeHealth, NodeLoad,
    NodeReply, NodeView,
};
use troupe_core::StateQuery;

use super::*;
use crate::jobs::{JobInfo, JobState};
use crate::protocol::Load;
use crate::state::{ClusterState, NodeAnswer};

/// Looks at the cluster through this node (every call goes to the head).
pub(super) struct Inspector(pub(super) Arc<Shared>);

impl Inspector {
    fn node(&self) -> ClusterNode {
        ClusterNode {
            shared: self.0.clone(),
        }
    }
}

fn cluster_error(err: ClusterError) -> InspectError {
    InspectError::Cluster(Box::new(err))
}

impl ClusterInspector for Inspector {
    fn cluster(&self, query: StateQuery) -> BoxFuture<'static, Result<ClusterView, InspectError>> {
        let node = self.node();
        Box::pin(async move {
            let state = node.cluster_state(query).await.map_err(cluster_error)?;
            Ok(cluster_view(state, node.head(), node.shared.me()))
        })
    }

    fn jobs(&self) -> BoxFuture<'static, Result<Vec<JobView>, InspectError>> {
        let node = self.node();
        Box::pin(async move {
            let jobs = node.jobs().await.map_err(cluster_error)?;
            Ok(jobs.into_iter().map(job_view).collect())
        })
    }

    fn job_log(
        &self,
        id: String,
        from: u64,
    ) -> BoxFuture<'static, Result<JobLogPage, InspectError>> {
        let node = self.node();
        Box::pin(async move {
            let page = node.job_logs(&id, from).await.map_err(cluster_error)?;
            Ok(JobLogPage {
                bytes: page.bytes,
                next: page.next,
                ended: page.ended,
            })
        })
    }
}

/// The gathered state in core's words.
pub(crate) fn cluster_view(
    state: ClusterState,
    head: Option<NodeId>,
    me: Option<NodeId>,
) -> ClusterView {
    let nodes = state
        .nodes
        .into_iter()
        .map(|n| {
            let m = n.member;
            NodeView {
                id: m.hello.node,
                name: m.hello.name,
                address: m.hello.control_addr,
                role: match m.hello.role {
                    Role::Head => "head",
                    Role::Worker => "worker",
                    Role::Driver => "driver",
                    Role::Client => "client",
                }
                .to_owned(),
                pid: m.hello.pid,
                health: match m.state {
                    MemberState::Alive => NodeHealth::Alive,
                    MemberState::Suspect => NodeHealth::Suspect,
                    MemberState::Dead => NodeHealth::Dead,
                    MemberState::Left => NodeHealth::Left,
                },
                total: m.hello.resources,
                available: m.available,
                load: load(m.load),
                reply: match n.answer {
                    NodeAnswer::State { state, truncated } => NodeReply::State { state, truncated },
                    NodeAnswer::Departed => NodeReply::Departed,
                    NodeAnswer::NoAnswer(why) => NodeReply::NoAnswer(why),
                },
            }
        })
        .collect();
    ClusterView { head, me, nodes }
}

fn load(l: Load) -> NodeLoad {
    NodeLoad {
        tasks_queued: l.tasks_queued,
        tasks_running: l.tasks_running,
        tasks_unplaced: l.tasks_unplaced,
        actors: l.actors,
        objects: l.objects,
        object_bytes: l.object_bytes,
        placement_groups_pending: l.placement_groups_pending,
    }
}

fn job_view(job: JobInfo) -> JobView {
    let (status, error) = match job.state {
        JobState::Running => ("running", None),
        JobState::Succeeded => ("succeeded", None),
        JobState::Failed(why) => ("failed", Some(why)),
        JobState::Stopped => ("stopped", None),
    };
    JobView {
        id: job.id,
        command: job.spec.command.join(" "),
        status: status.to_owned(),
        error,
        submitted_at_us: job.submitted_at_us,
        ended_at_us: job.ended_at_us,
    }
}
