//! The state API across the cluster (`troupe list`, `summary`, `get`):
//! each member's snapshot ([`troupe_core::State`]), gathered by one node
//! from every member with a deadline, so that a node that does not answer
//! is shown as such and never holds the answer up.
//!
//! The gathered answer travels in one control frame: each member cuts its
//! lists to its share of the frame (the counts of its summary are always
//! complete) and says when it did.

use serde::{Deserialize, Serialize};
use troupe_core::State;

use crate::protocol::{Member, MAX_FRAME_BYTES};

/// Every member's snapshot, in the directory's order (the head first).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterState {
    /// One entry per member, departed ones included.
    pub nodes: Vec<NodeState>,
}

/// One member and what it answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    /// The member as the directory lists it (state, role, addresses,
    /// resources, load).
    pub member: Member,
    /// Its snapshot, or why there is none.
    pub answer: NodeAnswer,
}

/// What a member answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NodeAnswer {
    /// Its snapshot; `truncated` when its lists were cut to fit.
    State {
        /// The snapshot.
        state: Box<State>,
        /// Whether its lists were cut.
        truncated: bool,
    },
    /// It left or died: nothing to ask.
    Departed,
    /// It did not answer in time, or the request failed: why.
    NoAnswer(String),
}

impl ClusterState {
    /// The snapshots that came back, with their members.
    pub fn answered(&self) -> impl Iterator<Item = (&Member, &State)> {
        self.nodes.iter().filter_map(|n| match &n.answer {
            NodeAnswer::State { state, .. } => Some((&n.member, state.as_ref())),
            _ => None,
        })
    }
}

/// What one member's snapshot may take when `members` share a frame.
pub(crate) fn share(members: usize) -> u32 {
    let usable = MAX_FRAME_BYTES.saturating_sub(16 << 10);
    let per = usable / members.max(1);
    // Fits u32: the frame cap is 1 MiB.
    u32::try_from(per).unwrap_or(u32::MAX)
}

fn encoded_size(state: &State) -> usize {
    postcard::to_stdvec(state).map_or(usize::MAX, |bytes| bytes.len())
}

/// `state` with its lists cut until its encoding takes at most `budget`
/// bytes (halving each list, then dropping the supervision tree's
/// children); whether anything was cut. The summary is never cut.
pub(crate) fn fit(mut state: State, budget: u32) -> (State, bool) {
    let budget = budget as usize;
    let mut truncated = false;
    while encoded_size(&state) > budget {
        truncated = true;
        let lists = state.actors.len() + state.tasks.len() + state.objects.len();
        if lists > 0 {
            state.actors.truncate(state.actors.len() / 2);
            state.tasks.truncate(state.tasks.len() / 2);
            state.objects.truncate(state.objects.len() / 2);
        } else if !state.supervisors.children.is_empty() {
            state.supervisors.more += state.supervisors.children.len();
            state.supervisors.children.clear();
        } else {
            // Only the summary is left: sent as it is.
            break;
        }
    }
    (state, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_is_cut_to_its_budget_and_its_summary_is_kept() {
        let rt = troupe_core::init(troupe_core::Config::default())
            .await
            .expect("a runtime");
        let mut kept = Vec::new();
        for i in 0..300u64 {
            kept.push(rt.objects().put(i).await.expect("put"));
        }
        let whole = rt.state().await;
        let (same, cut) = fit(whole.clone(), u32::MAX);
        assert!(!cut);
        assert_eq!(same.objects.len(), whole.objects.len());
        let budget = 4096;
        let (small, cut) = fit(whole.clone(), budget);
        assert!(cut);
        assert!(encoded_size(&small) <= budget as usize);
        assert!(small.objects.len() < whole.objects.len());
        assert_eq!(small.summary, whole.summary, "counts are never cut");
        // Shares of a frame: smaller with more members, never zero.
        assert!(share(1) > share(10) && share(10_000) > 0);
        rt.shutdown().await.expect("shut down");
    }
}
