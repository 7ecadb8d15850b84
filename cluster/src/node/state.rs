//! The state API across nodes: a member's own snapshot, cut to its share
//! of a frame, and the gathering of every member's by one node.

use super::*;
use crate::state::{fit, share, ClusterState, NodeAnswer, NodeState};
use troupe_core::StateQuery;

/// How long a member has to answer beyond the query's own wait for its
/// supervisors.
const ANSWER_SLACK: Duration = Duration::from_secs(3);

impl Shared {
    /// This node's snapshot in at most `budget` encoded bytes.
    pub(super) async fn node_state(&self, rt: &Runtime, query: &StateQuery, budget: u32) -> Reply {
        let (state, truncated) = fit(rt.state_with(query).await, budget);
        Reply::NodeState {
            state: Box::new(state),
            truncated,
        }
    }

    /// Every member's snapshot (command-line clients aside), asked at once,
    /// each within the query's supervisor wait and a few seconds: one that
    /// does not answer is listed as such.
    pub(super) async fn gather(self: &Arc<Self>, query: StateQuery) -> ClusterState {
        let members: Vec<Member> = self
            .members()
            .into_iter()
            .filter(|m| m.hello.role != Role::Client)
            .collect();
        let budget = share(members.len());
        let wait = query.supervisor_timeout + ANSWER_SLACK;
        let me = self.me();
        let asks = members.into_iter().map(|member| {
            let shared = self.clone();
            let query = query.clone();
            async move {
                let node = member.hello.node;
                let answer = if departed(&member) {
                    NodeAnswer::Departed
                } else if Some(node) == me {
                    match shared.runtime() {
                        Some(rt) => state_answer(Ok(shared.node_state(&rt, &query, budget).await)),
                        None => NodeAnswer::NoAnswer("this node is stopping".to_owned()),
                    }
                } else {
                    match shared.transport.get() {
                        Some(transport) => {
                            let asked =
                                transport.request(node, Request::NodeState { query, budget });
                            match tokio::time::timeout(wait, asked).await {
                                Ok(reply) => state_answer(reply.map_err(|e| e.to_string())),
                                Err(_) => {
                                    NodeAnswer::NoAnswer(format!("no answer within {wait:?}"))
                                }
                            }
                        }
                        None => NodeAnswer::NoAnswer("not joined".to_owned()),
                    }
                };
                NodeState { member, answer }
            }
        });
        ClusterState {
            nodes: futures::future::join_all(asks).await,
        }
    }
}

fn state_answer(reply: Result<Reply, String>) -> NodeAnswer {
    match reply {
        Ok(Reply::NodeState { state, truncated }) => NodeAnswer::State { state, truncated },
        Ok(other) => NodeAnswer::NoAnswer(format!("unexpected reply {other:?}")),
        Err(why) => NodeAnswer::NoAnswer(why),
    }
}

impl ClusterNode {
    /// Every member's state-API snapshot (Ray's `ray list`, `ray
    /// summary`): gathered by the head from each member with a deadline,
    /// a member that does not answer listed as such. Lists are cut to fit
    /// one control frame (each answer says when); the summaries' counts
    /// are complete.
    pub async fn cluster_state(&self, query: StateQuery) -> Result<ClusterState, ClusterError> {
        let head = self
            .shared
            .head
            .get()
            .copied()
            .ok_or(ClusterError::NotJoined)?;
        if Some(head) == self.shared.me() {
            return Ok(self.shared.gather(query).await);
        }
        match self.request(head, Request::ClusterState(query)).await? {
            Reply::ClusterState(state) => Ok(state),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }
}
