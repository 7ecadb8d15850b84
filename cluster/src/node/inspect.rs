//! Core's inspection seam: the cluster's state API and jobs in core's
//! words, for a dashboard that knows nothing of the cluster crate.

use troupe_core::runtime::{
    ClusterInspector, ClusterView, InspectError, JobLogPage, JobView, MetricsTarget, NodeHealth,
    NodeLoad, NodeReply, NodeView,
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

    fn metrics_targets(&self) -> Vec<MetricsTarget> {
        self.0
            .members()
            .into_iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .filter_map(|m| {
                Some(MetricsTarget {
                    node: m.hello.node,
                    role: role_name(m.hello.role).to_owned(),
                    address: m.hello.metrics?,
                    name: m.hello.name,
                })
            })
            .collect()
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Head => "head",
        Role::Worker => "worker",
        Role::Driver => "driver",
        Role::Client => "client",
    }
}

/// The gathered state in core's words.
fn cluster_view(state: ClusterState, head: Option<NodeId>, me: Option<NodeId>) -> ClusterView {
    let nodes = state
        .nodes
        .into_iter()
        .map(|n| {
            let m = n.member;
            NodeView {
                id: m.hello.node,
                name: m.hello.name,
                address: m.hello.control_addr,
                role: role_name(m.hello.role).to_owned(),
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
                metrics: m.hello.metrics,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobSpec;
    use crate::protocol::Hello;
    use crate::state::NodeState;

    fn member(node: u64, role: Role, state: MemberState) -> Member {
        Member {
            hello: Hello {
                protocol: crate::protocol::PROTOCOL_VERSION,
                build_id: 0,
                node: NodeId(node),
                name: format!("n{node}"),
                role,
                control_addr: format!("127.0.0.1:{node}"),
                data_addr: "127.0.0.1:2".parse().expect("an address"),
                resources: Resources::cpus(4.0),
                pid: node as u32,
                metrics: None,
            },
            state,
            available: Resources::cpus(1.0),
            load: Load {
                tasks_running: 3,
                actors: 2,
                ..Load::default()
            },
        }
    }

    #[test]
    fn the_cluster_state_reads_the_same_in_cores_words() {
        let state = ClusterState {
            nodes: vec![
                NodeState {
                    member: member(1, Role::Head, MemberState::Alive),
                    answer: NodeAnswer::NoAnswer("late".to_owned()),
                },
                NodeState {
                    member: member(2, Role::Worker, MemberState::Dead),
                    answer: NodeAnswer::Departed,
                },
                NodeState {
                    member: member(3, Role::Driver, MemberState::Suspect),
                    answer: NodeAnswer::NoAnswer("silent".to_owned()),
                },
            ],
        };
        let view = cluster_view(state, Some(NodeId(1)), Some(NodeId(3)));
        assert_eq!((view.head, view.me), (Some(NodeId(1)), Some(NodeId(3))));
        let roles: Vec<&str> = view.nodes.iter().map(|n| n.role.as_str()).collect();
        assert_eq!(roles, ["head", "worker", "driver"]);
        let health: Vec<NodeHealth> = view.nodes.iter().map(|n| n.health).collect();
        assert_eq!(
            health,
            [NodeHealth::Alive, NodeHealth::Dead, NodeHealth::Suspect]
        );
        let head = &view.nodes[0];
        assert_eq!(head.reply, NodeReply::NoAnswer("late".to_owned()));
        assert_eq!((head.total.num_cpus, head.available.num_cpus), (4.0, 1.0));
        assert_eq!((head.load.tasks_running, head.load.actors), (3, 2));
        assert_eq!(head.address, "127.0.0.1:1");
        assert_eq!(view.nodes[1].reply, NodeReply::Departed);
    }

    #[test]
    fn jobs_read_with_their_status_and_why_they_failed() {
        let job = |state| JobInfo {
            id: "job-1".to_owned(),
            spec: JobSpec {
                command: vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()],
                env: Vec::new(),
                working_dir: None,
            },
            state,
            pid: None,
            submitted_at_us: 5,
            ended_at_us: Some(9),
            log: "/tmp/log".into(),
        };
        let failed = job_view(job(JobState::Failed("exit status 3".to_owned())));
        assert_eq!(failed.command, "sh -c exit 3");
        assert_eq!(failed.status, "failed");
        assert_eq!(failed.error.as_deref(), Some("exit status 3"));
        assert_eq!((failed.submitted_at_us, failed.ended_at_us), (5, Some(9)));
        assert_eq!(job_view(job(JobState::Stopped)).status, "stopped");
        assert_eq!(job_view(job(JobState::Running)).error, None);
    }
}
