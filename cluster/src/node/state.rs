//! The state API, the timeline and the logs across nodes: a member's own
//! snapshot, cut to its share of a frame, and the gathering of every
//! member's by one node; timeline pages, with each node's clock offset;
//! log pages.

use super::*;
use crate::state::{
    fit, share, timeline_page, ClusterState, ClusterTimeline, NodeAnswer, NodeState, NodeTimeline,
    TimelinePage, TIMELINE_PAGE_EVENTS,
};
use troupe_core::logs::{LogBook, LogPage, LogQuery};
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

impl Shared {
    /// A page of `node`'s timeline: this node's own, or `node`'s asked over
    /// its link, its events' offset measured as the midpoint of the round
    /// trip against `node`'s clock at its answer.
    pub(super) async fn timeline_page(
        self: &Arc<Self>,
        node: NodeId,
        from: u64,
        record: Option<bool>,
    ) -> Reply {
        let Some(rt) = self.runtime() else {
            return Reply::Refused("this node is stopping".to_owned());
        };
        if Some(node) == self.me() {
            if let Some(on) = record {
                rt.record_timeline(on);
            }
            let snapshot = rt.timeline_snapshot(from, TIMELINE_PAGE_EVENTS);
            let page = timeline_page(node, snapshot);
            return Reply::TimelinePage(Box::new(page));
        }
        let Some(transport) = self.transport.get() else {
            return Reply::Refused("not joined".to_owned());
        };
        let sent = rt.clock_us();
        let asked = transport.request(node, Request::TimelinePage { node, from, record });
        match asked.await {
            Ok(Reply::TimelinePage(mut page)) => {
                let back = rt.clock_us();
                // The node's clock read `clock_us` about halfway through
                // the round trip.
                let midpoint = i64::try_from(sent / 2 + back / 2).unwrap_or(i64::MAX);
                let theirs = i64::try_from(page.clock_us).unwrap_or(i64::MAX);
                page.offset_us = midpoint.saturating_sub(theirs);
                Reply::TimelinePage(page)
            }
            Ok(other) => Reply::Refused(format!("node {node} answered {other:?}")),
            Err(err) => Reply::Refused(format!("node {node}: {err}")),
        }
    }
}

impl Shared {
    /// A page of `node`'s log: this node's own, or asked of `node`.
    pub(super) async fn log_page(self: &Arc<Self>, node: NodeId, query: LogQuery) -> Reply {
        if Some(node) == self.me() {
            return Reply::LogPage(Box::new(LogBook::global().read(&query)));
        }
        let Some(transport) = self.transport.get() else {
            return Reply::Refused("not joined".to_owned());
        };
        match transport
            .request(node, Request::LogPage { node, query })
            .await
        {
            Ok(reply @ Reply::LogPage(_)) => reply,
            Ok(other) => Reply::Refused(format!("node {node} answered {other:?}")),
            Err(err) => Reply::Refused(format!("node {node}: {err}")),
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
        let head = self.head_id()?;
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

impl ClusterNode {
    /// Turns timeline recording on or off on every live member (through
    /// the head); the members that could not be told, with why.
    pub async fn record_cluster_timeline(
        &self,
        on: bool,
    ) -> Result<Vec<(NodeId, String)>, ClusterError> {
        let mut failed = Vec::new();
        for member in self.live_members().await? {
            let node = member.hello.node;
            if let Err(why) = self.timeline_page(node, u64::MAX, Some(on)).await {
                failed.push((node, why));
            }
        }
        Ok(failed)
    }

    /// Every live member's timeline (`troupe timeline`), page by page
    /// through the head, each node's events moved onto the head's clock
    /// (off by at most half the round trip between them). Write it with
    /// [`ClusterTimeline::chrome_trace`]. Events recorded while it pages
    /// may shift a page: stop recording first for an exact copy.
    pub async fn cluster_timeline(&self) -> Result<ClusterTimeline, ClusterError> {
        let mut nodes = Vec::new();
        for member in self.live_members().await? {
            let node = member.hello.node;
            let mut whole: Option<TimelinePage> = None;
            let mut from = 0;
            let timeline = loop {
                match self.timeline_page(node, from, None).await {
                    Err(why) => break Err(why),
                    Ok(page) => {
                        let next = page.next;
                        match &mut whole {
                            None => whole = Some(page),
                            Some(w) => w.events.extend(page.events),
                        }
                        match next {
                            Some(n) if n > from => from = n,
                            _ => break whole.take().ok_or_else(|| "no page".to_owned()),
                        }
                    }
                }
            };
            nodes.push(NodeTimeline { member, timeline });
        }
        Ok(ClusterTimeline { nodes })
    }

    async fn live_members(&self) -> Result<Vec<Member>, ClusterError> {
        Ok(self
            .status()
            .await?
            .into_iter()
            .filter(|m| m.hello.role != Role::Client && !departed(m))
            .collect())
    }

    /// A page of `node`'s log (`troupe logs`): the lines its processes'
    /// `tracing` events made, tagged with the task or actor that wrote
    /// them (kept where `troupe start` runs the node, or where a program
    /// installed [`LogCapture`](troupe_core::logs::LogCapture)); asked of
    /// the head, which asks `node`.
    pub async fn logs(&self, node: NodeId, query: LogQuery) -> Result<LogPage, ClusterError> {
        let head = self.shared.head().ok_or(ClusterError::NotJoined)?;
        let reply = if Some(head) == self.shared.me() {
            self.shared.log_page(node, query).await
        } else {
            self.request(head, Request::LogPage { node, query }).await?
        };
        match reply {
            Reply::LogPage(page) => Ok(*page),
            Reply::Refused(why) => Err(ClusterError::Query(why)),
            other => Err(ClusterError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// One page of `node`'s timeline, asked of the head (or answered here,
    /// on the head).
    async fn timeline_page(
        &self,
        node: NodeId,
        from: u64,
        record: Option<bool>,
    ) -> Result<TimelinePage, String> {
        let head = self.shared.head().ok_or("not joined")?;
        let reply = if Some(head) == self.shared.me() {
            self.shared.timeline_page(node, from, record).await
        } else {
            self.request(head, Request::TimelinePage { node, from, record })
                .await
                .map_err(|e| e.to_string())?
        };
        match reply {
            Reply::TimelinePage(page) => Ok(*page),
            Reply::Refused(why) => Err(why),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }
}
