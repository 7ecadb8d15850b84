//! The node agent: the one remotable actor of a node (ractor_cluster
//! mirrors every remotable actor on every peer, so Troupe exposes exactly
//! one), and the transport: requests with ids, a table of pending replies
//! that fails every outstanding request with a node-died error when the
//! peer's session (or link) ends, and notices.
//!
//! Agents find each other through a ractor process group: each joins
//! [`AGENT_GROUP`] under the name `troupe.agent.<node id>`, and a session
//! coming up makes the peer's agent appear in the group (a pg join event),
//! going down makes it leave. The one frame agents carry is `Notice::Link`
//! (where the sender's control link listens); every other frame travels on
//! the control link (`link.rs`), one socket write away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{oneshot, watch};
use troupe_core::NodeId;

use crate::link::{LinkError, LinkWriter};
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

/// Where this node's control link listens, and the secret links prove.
pub struct LinkSetup {
    /// The address peers connect to (advertised).
    pub addr: std::net::SocketAddr,
    /// The cluster's cookie.
    pub cookie: Arc<[u8]>,
    /// Where peer changes go (`PeerUp` once a link is up).
    pub inbound: Arc<dyn Fn(Inbound) + Send + Sync>,
}

/// One peer's outbound link and its serial number (a broken link that was
/// already replaced must not take its replacement down).
struct Outbound {
    writer: LinkWriter,
    serial: u64,
}

/// Requests, replies and notices between this node and its peers.
///
/// A peer is connected once its ractor_cluster session is up (its agent
/// appeared) *and* this node's control link to it is up: every frame
/// travels on the link, in order.
pub struct Transport {
    me: NodeId,
    /// Peers' agents (their ractor_cluster sessions are up).
    agents: DashMap<NodeId, ActorRef<AgentMessage>>,
    /// Links up, to peers whose session is up: what `connected` means.
    links: DashMap<NodeId, Arc<Outbound>>,
    /// Bumped whenever a peer comes up (waiters for a session re-check).
    peers_changed: watch::Sender<u64>,
    pending: DashMap<u64, Waiting>,
    pending_per_peer: DashMap<NodeId, usize>,
    next_id: AtomicU64,
    link: std::sync::OnceLock<LinkSetup>,
    serials: AtomicU64,
    /// The serial of the latest inbound link from each peer.
    inbound_serials: DashMap<NodeId, u64>,
    /// Where each peer's link listens (to connect again after a break).
    link_addrs: DashMap<NodeId, std::net::SocketAddr>,
    /// Serializes link changes (so that each transition is told once).
    changing: std::sync::Mutex<()>,
}

impl Transport {
    /// A transport for node `me`.
    pub fn new(me: NodeId) -> Arc<Self> {
        Arc::new(Transport {
            me,
            agents: DashMap::new(),
            links: DashMap::new(),
            peers_changed: watch::channel(0).0,
            pending: DashMap::new(),
            pending_per_peer: DashMap::new(),
            next_id: AtomicU64::new(1),
            link: std::sync::OnceLock::new(),
            serials: AtomicU64::new(1),
            inbound_serials: DashMap::new(),
            link_addrs: DashMap::new(),
            changing: std::sync::Mutex::new(()),
        })
    }

    /// Sets where this node's link listens (before any peer appears).
    pub fn set_link(&self, setup: LinkSetup) {
        let _ = self.link.set(setup);
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Whether a session and links both ways to `node` are up.
    pub fn connected(&self, node: NodeId) -> bool {
        self.links.contains_key(&node) && self.inbound_serials.contains_key(&node)
    }

    /// The peers with a session and links both ways up.
    pub fn peers(&self) -> Vec<NodeId> {
        self.links
            .iter()
            .map(|e| *e.key())
            .filter(|node| self.inbound_serials.contains_key(node))
            .collect()
    }

    /// `node`'s agent appeared: its session is up. Tells it where this
    /// node's link listens (through the agent: the one message that
    /// crosses ractor_cluster); it connects, and this node connects to it
    /// when told the same.
    fn agent_up(&self, node: NodeId, agent: ActorRef<AgentMessage>) {
        self.agents.insert(node, agent.clone());
        let Some(setup) = self.link.get() else {
            return;
        };
        let frame = Frame::Notice {
            from: self.me,
            body: Notice::Link { addr: setup.addr },
        };
        match frame.encode() {
            Ok(bytes) => {
                let mut batch = Vec::with_capacity(4 + bytes.len());
                batch.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                batch.extend_from_slice(&bytes);
                let _ = agent.cast(AgentMessage(batch));
            }
            Err(err) => tracing::error!(%err, "the link notice did not encode"),
        }
    }

    /// `node` says its link listens at `addr`: connects (again, if a link
    /// broke), trying a few times while its session is up.
    pub fn connect_link(self: &Arc<Self>, node: NodeId, addr: std::net::SocketAddr) {
        let Some(setup) = self.link.get() else {
            return;
        };
        let cookie = setup.cookie.clone();
        self.link_addrs.insert(node, addr);
        let transport = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            for _ in 0..8 {
                if !transport.agents.contains_key(&node) {
                    return; // its session ended meanwhile
                }
                let serial = transport.serials.fetch_add(1, Ordering::Relaxed);
                let weak = Arc::downgrade(&transport);
                let broken = Box::new(move |err: std::io::Error| {
                    if let Some(t) = weak.upgrade() {
                        t.outbound_lost(node, serial, &err.to_string());
                    }
                });
                match LinkWriter::connect(addr, transport.me, node, &cookie, broken).await {
                    Ok(writer) => {
                        if transport.agents.contains_key(&node) {
                            transport.change(node, || {
                                transport
                                    .links
                                    .insert(node, Arc::new(Outbound { writer, serial }));
                            });
                        }
                        return;
                    }
                    Err(err) => {
                        metrics::counter!("troupe_cluster_link_failures_total").increment(1);
                        tracing::warn!(%node, %err, "control link not up; trying again");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            tracing::error!(%node, %addr, "no control link to this node: it stays unreachable");
        });
    }

    /// Applies `f` (a change to the links) and tells the node if `node`
    /// became connected (`PeerUp`) or stopped being so (`PeerDown`; its
    /// waiting requests fail: their replies may have been lost).
    fn change(&self, node: NodeId, f: impl FnOnce()) {
        let _serial = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.connected(node);
        f();
        let after = self.connected(node);
        if before == after {
            return;
        }
        let inbound = self.link.get().map(|setup| setup.inbound.clone());
        if after {
            self.peers_changed.send_modify(|n| *n += 1);
            if let Some(inbound) = inbound {
                inbound(Inbound::PeerUp(node));
            }
        } else {
            self.fail_pending(node);
            if let Some(inbound) = inbound {
                inbound(Inbound::PeerDown(node));
            }
        }
    }

    /// This node's link to `node` (numbered `serial`) failed: connects
    /// again while its session is up.
    fn outbound_lost(self: &Arc<Self>, node: NodeId, serial: u64, why: &str) {
        let mut ours = false;
        self.change(node, || {
            ours = self
                .links
                .remove_if(&node, |_, o| o.serial == serial)
                .is_some();
        });
        if !ours {
            return; // already replaced
        }
        metrics::counter!("troupe_cluster_link_failures_total").increment(1);
        tracing::debug!(%node, %why, "control link lost");
        let addr = self.link_addrs.get(&node).map(|a| *a);
        if let (Some(addr), true) = (addr, self.agents.contains_key(&node)) {
            self.connect_link(node, addr);
        }
    }

    /// A peer's inbound link came up (`up`) or ended. Without the latest
    /// one the peer is not connected (its replies cannot reach this node)
    /// until it connects again. A dead peer's links end at once (its
    /// kernel closes them), before the failure detector's verdict.
    pub fn inbound_link(&self, node: NodeId, serial: u64, up: bool) {
        self.change(node, || {
            if up {
                self.inbound_serials.insert(node, serial);
            } else {
                self.inbound_serials
                    .remove_if(&node, |_, latest| *latest == serial);
            }
        });
    }

    /// `node`'s session ended (or it was declared dead): every request
    /// waiting on it fails with [`TransportError::NodeDied`].
    pub fn peer_down(&self, node: NodeId) {
        self.agents.remove(&node);
        self.links.remove(&node);
        self.link_addrs.remove(&node);
        self.fail_pending(node);
    }

    fn fail_pending(&self, node: NodeId) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|e| e.value().node == node)
            .map(|e| *e.key())
            .collect();
        for id in ids {
            if let Some(waiting) = self.settle(id) {
                let _ = waiting.reply.send(Err(TransportError::NodeDied(node)));
            }
        }
    }

    /// Waits up to `timeout` for a session and a link to `node`.
    pub async fn session(&self, node: NodeId, timeout: Duration) -> Result<(), TransportError> {
        let mut changed = self.peers_changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.connected(node) {
                return Ok(());
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
        let link = self
            .links
            .get(&node)
            .map(|o| o.clone())
            .ok_or(TransportError::NoSession(node))?;
        match link.writer.send(&bytes) {
            Ok(()) => Ok(()),
            Err(LinkError::Backpressure) => Err(TransportError::Backpressure(node)),
            Err(_) => Err(TransportError::NoSession(node)),
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
    /// after another leave in that order) if a link to it is up; the
    /// future resolves to its reply (or the node's death).
    pub fn send_request(
        &self,
        node: NodeId,
        body: Request,
    ) -> Result<
        impl std::future::Future<Output = Result<Reply, TransportError>> + use<>,
        TransportError,
    > {
        if !self.connected(node) {
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
        if !self.connected(node) {
            if let Some(w) = self.settle(id) {
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

    /// Sends a notice to `node` if a link to it is up.
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

/// Decodes one frame a peer sent and hands it on; a link notice goes to
/// the transport. Bad bytes are counted and dropped: they never stop the
/// node.
pub fn deliver(
    transport: &Arc<Transport>,
    inbound: &(dyn Fn(Inbound) + Send + Sync),
    bytes: &[u8],
) {
    match Frame::decode(bytes) {
        Ok(Frame::Notice {
            from,
            body: Notice::Link { addr },
        }) => transport.connect_link(from, addr),
        Ok(frame) => inbound(Inbound::Frame(Box::new(frame))),
        Err(err) => {
            metrics::counter!("troupe_cluster_bad_frames_total").increment(1);
            tracing::warn!(%err, bytes = bytes.len(), "dropped a malformed control frame");
        }
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
            deliver(&self.transport, &*self.inbound, bytes);
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
            // `PeerUp` follows once the link is up too.
            self.transport.agent_up(node, ActorRef::from(cell));
        } else {
            // Only if this cell is the one we know (a reconnect may have
            // replaced it already).
            let ours = self
                .transport
                .agents
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
