//! The state API and the timeline across the cluster (`troupe list`,
//! `summary`, `get`, `timeline`):
//! each member's snapshot ([`troupe_core::State`]), gathered by one node
//! from every member with a deadline, so that a node that does not answer
//! is shown as such and never holds the answer up.
//!
//! The gathered answer travels in one control frame: each member cuts its
//! lists to its share of the frame (the counts of its summary are always
//! complete) and says when it did.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use troupe_core::timeline::{chrome_trace_part, TimelineSnapshot, TracePart};
use troupe_core::{NodeId, State, TimelineEvent};

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

/// A page of one node's timeline, its events on its own clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelinePage {
    /// Whose.
    pub node: NodeId,
    /// Its events from the page's start, oldest first.
    pub events: Vec<TimelineEvent>,
    /// Its thread numbers and names.
    pub threads: BTreeMap<u64, String>,
    /// Where the next page starts, if there is one.
    pub next: Option<u64>,
    /// Whether it records now.
    pub recording: bool,
    /// Whether it ever recorded.
    pub ever_recorded: bool,
    /// Its clock when it answered, in microseconds since the Unix epoch.
    pub clock_us: u64,
    /// Add to its events' times to put them on the clock of the node that
    /// was asked (0 for that node itself; for another, measured around the
    /// request: at most half its round trip off).
    pub offset_us: i64,
}

/// Bytes of events one timeline page carries at most.
const TIMELINE_PAGE_BYTES: usize = MAX_FRAME_BYTES / 2;

/// Events one timeline page asks its node for at most (then cut to
/// [`TIMELINE_PAGE_BYTES`]).
pub(crate) const TIMELINE_PAGE_EVENTS: usize = 16_384;

/// A page from `snapshot` (a window of a node's timeline): its events up to
/// [`TIMELINE_PAGE_BYTES`].
pub(crate) fn timeline_page(node: NodeId, snapshot: TimelineSnapshot) -> TimelinePage {
    let mut bytes = 0;
    let mut events = Vec::new();
    for event in snapshot.events {
        let size = postcard::to_stdvec(&event).map_or(usize::MAX, |b| b.len());
        if !events.is_empty() && bytes + size > TIMELINE_PAGE_BYTES {
            break;
        }
        bytes = bytes.saturating_add(size);
        events.push(event);
    }
    let end = snapshot.from.saturating_add(events.len() as u64);
    TimelinePage {
        clock_us: snapshot.now_us,
        node,
        events,
        threads: snapshot.threads,
        next: (end < snapshot.total).then_some(end),
        recording: snapshot.recording,
        ever_recorded: snapshot.ever_recorded,
        offset_us: 0,
    }
}

/// Every member's timeline, its events on the head's clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterTimeline {
    /// One entry per live member asked.
    pub nodes: Vec<NodeTimeline>,
}

/// One member's timeline, or why it is missing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeTimeline {
    /// The member.
    pub member: Member,
    /// Its whole timeline (pages joined), or why there is none.
    pub timeline: Result<TimelinePage, String>,
}

impl ClusterTimeline {
    /// Whether any member ever recorded.
    pub fn ever_recorded(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.timeline.as_ref().is_ok_and(|t| t.ever_recorded))
    }

    /// Events in all.
    pub fn events(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| n.timeline.as_ref().ok())
            .map(|t| t.events.len())
            .sum()
    }

    /// The whole as one Chrome trace (open it in Perfetto): a process per
    /// node, named after it, its events moved onto the head's clock.
    pub fn chrome_trace(&self) -> Vec<serde_json::Value> {
        let mut trace = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Ok(timeline) = &n.timeline else { continue };
            let part = TracePart {
                pid: i as u64 + 1,
                process: format!(
                    "{} (node {}, {:?})",
                    n.member.hello.name, n.member.hello.node, n.member.hello.role
                ),
                threads: timeline.threads.clone(),
                offset_us: timeline.offset_us,
            };
            trace.extend(chrome_trace_part(&part, &timeline.events));
        }
        trace
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

    fn event(i: u64, error_bytes: usize) -> TimelineEvent {
        TimelineEvent {
            work: troupe_core::timeline::Work::Task {
                id: troupe_core::TaskId {
                    node: NodeId(1),
                    seq: i,
                },
                function: "f".into(),
                attempt: 1,
            },
            start_us: 1_000_000 + i,
            duration_us: 3,
            thread: 1,
            error: (error_bytes > 0).then(|| "e".repeat(error_bytes)),
        }
    }

    /// `all` as `Runtime::timeline_snapshot(from, max)` would give it.
    fn window(all: &[TimelineEvent], from: u64, max: usize) -> TimelineSnapshot {
        let start = (from as usize).min(all.len());
        TimelineSnapshot {
            events: all[start..].iter().take(max).cloned().collect(),
            from,
            total: all.len() as u64,
            threads: BTreeMap::from([(1, "worker".to_owned())]),
            recording: false,
            ever_recorded: true,
            now_us: 2_000_000,
        }
    }

    #[test]
    fn a_timeline_read_page_by_page_is_whole_and_moved_by_its_offset() {
        // Small events: pages end at the window; large ones: at the bytes.
        for (count, error_bytes, max) in [(40, 0, 7), (12, 200_000, 16)] {
            let all: Vec<TimelineEvent> = (0..count).map(|i| event(i, error_bytes)).collect();
            let (mut paged, mut from, mut pages) = (Vec::new(), 0, 0);
            loop {
                let page = timeline_page(NodeId(1), window(&all, from, max));
                pages += 1;
                assert!(page.events.len() <= max && !page.events.is_empty());
                paged.extend(page.events);
                match page.next {
                    Some(next) => from = next,
                    None => break,
                }
            }
            assert_eq!(paged, all);
            assert!(pages > 1, "{count} events in one page");
        }
        // In a trace, a node's events move by its offset.
        let member = Member {
            hello: crate::protocol::Hello {
                protocol: crate::protocol::PROTOCOL_VERSION,
                build_id: 0,
                node: NodeId(1),
                name: "n1".to_owned(),
                role: crate::protocol::Role::Worker,
                control_addr: "127.0.0.1:1".to_owned(),
                data_addr: "127.0.0.1:2".parse().expect("an address"),
                resources: troupe_core::Resources::cpus(1.0),
                pid: 1,
                metrics: None,
            },
            state: crate::protocol::MemberState::Alive,
            available: troupe_core::Resources::cpus(1.0),
            load: Default::default(),
        };
        let mut page = timeline_page(NodeId(1), window(&[event(0, 0)], 0, 10));
        page.offset_us = -1_000;
        let timeline = ClusterTimeline {
            nodes: vec![NodeTimeline {
                member,
                timeline: Ok(page),
            }],
        };
        let trace = timeline.chrome_trace();
        let first = trace.iter().find(|r| r["ph"] == "X").expect("an event");
        assert_eq!(first["ts"].as_u64(), Some(1_000_000 - 1_000));
        assert!(trace
            .iter()
            .any(|r| r["name"] == "thread_name" && r["args"]["name"] == "worker"));
    }
}
