//! The node agent: the one remotable actor of a node (ractor_cluster
//! mirrors every remotable actor on every peer, so Troupe exposes exactly
//! one), and the transport built on it: requests with ids, a table of
//! pending replies that fails every outstanding request with a node-died
//! error when the peer's session ends, and notices.
//!
//! Agents find each other through a ractor process group: each joins
//! [`AGENT_GROUP`] under the name `troupe.agent.<node id>`, and a session
//! coming up makes the peer's agent appear in the group (a pg join event),
//! going down makes it leave.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{oneshot, watch};
use troupe_core::NodeId;

use crate::protocol::{Frame, FrameError, Notice, Reply, Request};

/// The process group every node agent joins.
pub const AGENT_GROUP: &str = "troupe.agents";

/// The most requests one node may have waiting on one peer: past it, a
/// request fails at once instead of growing memory (a peer that stops
/// answering cannot make its callers queue without bound).
pub const MAX_PENDING_PER_PEER: usize = 1 << 16;

/// The agent's ractor name for a node.
pub fn agent_name(node: NodeId) -> String {
    format!("troupe.agent.{}", node.0)
}

fn node_of_agent(name: &str) -> Option<NodeId> {
    name.strip_prefix("troupe.agent.")?.parse().ok().map(NodeId)
}

/// A frame's bytes: the only message type that crosses ractor_cluster.
#[derive(Debug)]
pub struct AgentMessage(pub Vec<u8>);

impl ractor::BytesConvertable for AgentMessage {
    fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    fn from_bytes(bytes: Vec<u8>) -> Self {
        AgentMessage(bytes)
    }
}

/// What the agent hands to its node.
#[derive(Debug)]
pub enum Inbound {
    /// A decoded frame (boxed: frames are large, peer events small).
    Frame(Box<Frame>),
    /// A peer's agent appeared (its session is ready).
    PeerUp(NodeId),
    /// A peer's agent went away (its session ended).
    PeerDown(NodeId),
}

/// Why a request got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer's session ended (or it was declared dead) first.
    #[error("node {0} died (or its session ended) before answering")]
    NodeDied(NodeId),
    /// No session to the peer, within the connect timeout.
    #[error("no session to node {0}: it is unknown, unreachable, or gone")]
    NoSession(NodeId),
    /// Too many requests already wait on this peer.
    #[error("{MAX_PENDING_PER_PEER} requests already wait on node {0}; try again later")]
    Backpressure(NodeId),
    /// The request could not be encoded.
    #[error("{0}")]
    Frame(String),
    /// No answer in time.
    #[error("node {0} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
}

impl From<FrameError> for TransportError {
    fn from(e: FrameError) -> Self {
        TransportError::Frame(e.to_string())
    }
}

/// The most bytes one ractor_cluster message carries: frames sent in a
/// burst to one peer travel together (one hop through ractor_cluster's
/// actors per batch, not per frame), up to this size.
pub const MAX_BATCH_BYTES: usize = 2 * crate::protocol::MAX_FRAME_BYTES;

/// Frames waiting to go to one peer, flushed together.
struct Outbox {
    agent: ActorRef<AgentMessage>,
    state: std::sync::Mutex<OutboxState>,
}

#[derive(Default)]
struct OutboxState {
    batch: Vec<u8>,
    /// A flush is due at the end of this scheduling round.
    flush_scheduled: bool,
}

impl Outbox {
    fn new(agent: ActorRef<AgentMessage>) -> Arc<Self> {
        Arc::new(Outbox {
            agent,
            state: std::sync::Mutex::new(OutboxState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Casts under the lock (a cast only queues), so frames leave in the
    /// order they were pushed.
    fn cast(&self, batch: Vec<u8>) -> bool {
        batch.is_empty() || self.agent.cast(AgentMessage(batch)).is_ok()
    }

    fn flush(&self) {
        let mut state = self.lock();
        state.flush_scheduled = false;
        let batch = std::mem::take(&mut state.batch);
        self.cast(batch);
    }

    /// Sends a frame. Idle (nothing sent in this scheduling round), it
    /// goes at once, alone: a request sent one at a time pays no wait. The
    /// frames that follow it within the round (a burst) are appended and
    /// go together when the round ends (one yield); a full batch goes at
    /// once.
    fn push(self: &Arc<Self>, frame: &[u8]) -> bool {
        let mut one = Vec::with_capacity(4 + frame.len());
        one.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        one.extend_from_slice(frame);
        let mut state = self.lock();
        if state.flush_scheduled {
            let mut sent = true;
            if state.batch.len() + one.len() > MAX_BATCH_BYTES {
                let full = std::mem::take(&mut state.batch);
                sent = self.cast(full);
            }
            state.batch.extend_from_slice(&one);
            return sent;
        }
        let sent = self.cast(one);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return sent; // no runtime: every frame goes alone
        };
        state.flush_scheduled = true;
        drop(state);
        let outbox = self.clone();
        handle.spawn(async move {
            tokio::task::yield_now().await;
            outbox.flush();
        });
        sent
    }
}

/// Splits a batch into its frames' bytes; a malformed length ends it
/// (what came before is kept).
pub fn split_batch(mut batch: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut frames = Vec::new();
    while !batch.is_empty() {
        let Some((len, rest)) = batch.split_first_chunk::<4>() else {
            return (frames, false);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return (frames, false);
        }
        let (frame, rest) = rest.split_at(len);
        frames.push(frame);
        batch = rest;
    }
    (frames, true)
}

struct Waiting {
    node: NodeId,
    reply: oneshot::Sender<Result<Reply, TransportError>>,
}

/// Requests, replies and notices between this node and its peers.
pub struct Transport {
    me: NodeId,
    peers: DashMap<NodeId, ActorRef<AgentMessage>>,
    outboxes: DashMap<NodeId, Arc<Outbox>>,
    /// Bumped whenever a peer comes up (waiters for a session re-check).
    peers_changed: watch::Sender<u64>,
    pending: DashMap<u64, Waiting>,
    pending_per_peer: DashMap<NodeId, usize>,
    next_id: AtomicU64,
}

impl Transport {
    /// A transport for node `me`.
    pub fn new(me: NodeId) -> Arc<Self> {
        Arc::new(Transport {
            me,
            peers: DashMap::new(),
            outboxes: DashMap::new(),
            peers_changed: watch::channel(0).0,
            pending: DashMap::new(),
            pending_per_peer: DashMap::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Whether a session to `node` is up.
    pub fn connected(&self, node: NodeId) -> bool {
        self.peers.contains_key(&node)
    }

    /// The peers with a session up.
    pub fn peers(&self) -> Vec<NodeId> {
        self.peers.iter().map(|e| *e.key()).collect()
    }

    fn peer_up(&self, node: NodeId, agent: ActorRef<AgentMessage>) {
        self.outboxes.insert(node, Outbox::new(agent.clone()));
        self.peers.insert(node, agent);
        self.peers_changed.send_modify(|n| *n += 1);
    }

    /// `node`'s session ended (or it was declared dead): every request
    /// waiting on it fails with [`TransportError::NodeDied`].
    pub fn peer_down(&self, node: NodeId) {
        self.peers.remove(&node);
        self.outboxes.remove(&node);
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|e| e.value().node == node)
            .map(|e| *e.key())
            .collect();
        for id in ids {
            if let Some((_, waiting)) = self.pending.remove(&id) {
                let _ = waiting.reply.send(Err(TransportError::NodeDied(node)));
            }
        }
        self.pending_per_peer.remove(&node);
    }

    /// Waits up to `timeout` for a session to `node`.
    pub async fn session(
        &self,
        node: NodeId,
        timeout: Duration,
    ) -> Result<ActorRef<AgentMessage>, TransportError> {
        let mut changed = self.peers_changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(agent) = self.peers.get(&node) {
                return Ok(agent.clone());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(TransportError::NoSession(node)),
            }
        }
    }

    fn send(&self, node: NodeId, frame: &Frame) -> Result<(), TransportError> {
        let bytes = frame.encode()?;
        metrics::counter!("troupe_cluster_frames_sent_total").increment(1);
        metrics::counter!("troupe_cluster_control_bytes_sent_total").increment(bytes.len() as u64);
        let outbox = self
            .outboxes
            .get(&node)
            .map(|o| o.clone())
            .ok_or(TransportError::NoSession(node))?;
        if outbox.push(&bytes) {
            Ok(())
        } else {
            Err(TransportError::NoSession(node))
        }
    }

    /// Sends `body` to `node` and waits for its reply (or its death).
    pub async fn request(
        &self,
        node: NodeId,
        body: Request,
        connect_timeout: Duration,
    ) -> Result<Reply, TransportError> {
        self.session(node, connect_timeout).await?;
        self.send_request(node, body)?.await
    }

    /// Sends `body` to `node` now (before returning: requests sent one
    /// after another leave in that order) if a session to it is up; the
    /// future resolves to its reply (or the node's death).
    pub fn send_request(
        &self,
        node: NodeId,
        body: Request,
    ) -> Result<
        impl std::future::Future<Output = Result<Reply, TransportError>> + use<>,
        TransportError,
    > {
        if !self.peers.contains_key(&node) {
            return Err(TransportError::NoSession(node));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut count = self.pending_per_peer.entry(node).or_insert(0);
            if *count >= MAX_PENDING_PER_PEER {
                return Err(TransportError::Backpressure(node));
            }
            *count += 1;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, Waiting { node, reply: tx });
        let frame = Frame::Request {
            id,
            from: self.me,
            body,
        };
        if let Err(err) = self.send(node, &frame) {
            self.settle(id);
            return Err(err);
        }
        // The peer may have gone between the lookup and the insert.
        if !self.peers.contains_key(&node) {
            if let Some((_, w)) = self.pending.remove(&id) {
                self.release_slot(node);
                let _ = w.reply.send(Err(TransportError::NodeDied(node)));
            }
        }
        Ok(async move {
            match rx.await {
                Ok(result) => result,
                Err(_) => Err(TransportError::NodeDied(node)),
            }
        })
    }

    fn settle(&self, id: u64) -> Option<Waiting> {
        let (_, waiting) = self.pending.remove(&id)?;
        self.release_slot(waiting.node);
        Some(waiting)
    }

    fn release_slot(&self, node: NodeId) {
        if let Some(mut count) = self.pending_per_peer.get_mut(&node) {
            *count = count.saturating_sub(1);
        }
    }

    /// A reply arrived.
    pub fn complete(&self, id: u64, body: Reply) {
        if let Some(waiting) = self.settle(id) {
            let _ = waiting.reply.send(Ok(body));
        }
    }

    /// Answers request `id` of `node`.
    pub fn reply(&self, node: NodeId, id: u64, body: Reply) {
        let frame = Frame::Reply { id, body };
        if let Err(err @ TransportError::Frame(_)) = self.send(node, &frame) {
            // Too large to send back: answer with the error instead, so
            // the requester is not left waiting.
            tracing::warn!(%node, %err, "reply not sent");
            let fallback = Frame::Reply {
                id,
                body: Reply::Refused(err.to_string()),
            };
            let _ = self.send(node, &fallback);
        }
    }

    /// Sends a notice to `node` if a session to it is up.
    pub fn notify(&self, node: NodeId, body: Notice) -> Result<(), TransportError> {
        self.send(
            node,
            &Frame::Notice {
                from: self.me,
                body,
            },
        )
    }
}

/// The agent actor: decodes frames from peers and follows the agent group.
pub struct Agent {
    /// Where frames and peer changes go.
    /// Called in the agent's turn (no further hop): frames are handled in
    /// the order they arrived; requests spawn their own work.
    pub inbound: Arc<dyn Fn(Inbound) + Send + Sync>,
    /// The node's transport.
    pub transport: Arc<Transport>,
}

impl Actor for Agent {
    type Msg = AgentMessage;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::monitor(AGENT_GROUP.to_owned(), myself.get_cell());
        ractor::pg::join(AGENT_GROUP.to_owned(), vec![myself.get_cell()]);
        // Agents that were already known when this one started.
        for cell in ractor::pg::get_members(&AGENT_GROUP.to_owned()) {
            self.follow(cell, true);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::demonitor(AGENT_GROUP.to_owned(), myself.get_id());
        ractor::pg::leave(AGENT_GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: AgentMessage,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        metrics::counter!("troupe_cluster_control_bytes_received_total")
            .increment(message.0.len() as u64);
        let (frames, whole) = split_batch(&message.0);
        if !whole {
            metrics::counter!("troupe_cluster_bad_frames_total").increment(1);
            tracing::warn!(
                bytes = message.0.len(),
                "dropped the malformed end of a control batch"
            );
        }
        for bytes in frames {
            match Frame::decode(bytes) {
                Ok(frame) => {
                    (self.inbound)(Inbound::Frame(Box::new(frame)));
                }
                Err(err) => {
                    // A peer's bad bytes never stop this node.
                    metrics::counter!("troupe_cluster_bad_frames_total").increment(1);
                    tracing::warn!(%err, bytes = bytes.len(), "dropped a malformed control frame");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = event {
            match change {
                ractor::pg::GroupChangeMessage::Join(_, group, cells) if group == AGENT_GROUP => {
                    for cell in cells {
                        self.follow(cell, true);
                    }
                }
                ractor::pg::GroupChangeMessage::Leave(_, group, cells) if group == AGENT_GROUP => {
                    for cell in cells {
                        self.follow(cell, false);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Agent {
    fn follow(&self, cell: ractor::ActorCell, up: bool) {
        if cell.get_id().is_local() {
            return;
        }
        let Some(node) = cell.get_name().as_deref().and_then(node_of_agent) else {
            return;
        };
        if up {
            self.transport.peer_up(node, ActorRef::from(cell));
            (self.inbound)(Inbound::PeerUp(node));
        } else {
            // Only if this cell is the one we know (a reconnect may have
            // replaced it already).
            let ours = self
                .transport
                .peers
                .get(&node)
                .map(|a| a.get_id() == cell.get_id())
                .unwrap_or(false);
            if ours {
                self.transport.peer_down(node);
                (self.inbound)(Inbound::PeerDown(node));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_carry_the_node() {
        assert_eq!(node_of_agent(&agent_name(NodeId(42))), Some(NodeId(42)));
        assert_eq!(node_of_agent("troupe.agent.x"), None);
        assert_eq!(node_of_agent("other"), None);
    }

    #[test]
    fn batches_split_into_their_frames_and_a_bad_length_ends_one() {
        let mut batch = Vec::new();
        for frame in [&b"one"[..], b"", b"three"] {
            batch.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            batch.extend_from_slice(frame);
        }
        let (frames, whole) = split_batch(&batch);
        assert!(whole);
        assert_eq!(frames, vec![&b"one"[..], b"", b"three"]);
        batch.extend_from_slice(&u32::MAX.to_le_bytes());
        batch.extend_from_slice(b"short");
        let (frames, whole) = split_batch(&batch);
        assert!(!whole);
        assert_eq!(frames.len(), 3, "what came before is kept");
        assert_eq!(split_batch(&[1, 2]), (Vec::<&[u8]>::new(), false));
    }

    #[tokio::test]
    async fn a_peer_going_down_fails_its_waiting_requests() {
        let t = Transport::new(NodeId(1));
        let (tx, rx) = oneshot::channel();
        t.pending.insert(
            7,
            Waiting {
                node: NodeId(2),
                reply: tx,
            },
        );
        let (tx2, rx2) = oneshot::channel();
        t.pending.insert(
            8,
            Waiting {
                node: NodeId(3),
                reply: tx2,
            },
        );
        t.peer_down(NodeId(2));
        assert!(matches!(
            rx.await,
            Ok(Err(TransportError::NodeDied(NodeId(2))))
        ));
        assert_eq!(t.pending.len(), 1, "another peer's request still waits");
        t.complete(8, Reply::Ok);
        assert!(matches!(rx2.await, Ok(Ok(Reply::Ok))));
    }

    #[tokio::test]
    async fn no_session_is_an_error_after_the_timeout() {
        let t = Transport::new(NodeId(1));
        let err = t
            .request(NodeId(9), Request::Status, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::NoSession(NodeId(9))));
    }
}
