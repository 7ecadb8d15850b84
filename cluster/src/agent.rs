//! The node agent: the one remotable actor of a node (ractor_cluster
//! mirrors every remotable actor on every peer, so Troupe exposes exactly
//! one). It follows peers' sessions (their agents appearing and leaving)
//! for the transport (`transport/`), which carries every frame.
//!
//! Agents find each other through a ractor process group: each joins
//! [`AGENT_GROUP`] under the name `troupe.agent.<node id>`, and a session
//! coming up makes the peer's agent appear in the group (a pg join event),
//! going down makes it leave. The one frame agents carry is `Notice::Link`
//! (where the sender's control link listens); every other frame travels on
//! the control link (`link/`), one socket write away.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use troupe_core::NodeId;

use crate::protocol::{Frame, Notice};
use crate::transport::Transport;

/// The process group every node agent joins.
pub const AGENT_GROUP: &str = "troupe.agents";

/// The most requests one node may have waiting on one peer: past it, a
/// request fails at once instead of growing memory (a peer that stops
/// answering cannot make its callers queue without bound).
pub const MAX_PENDING_PER_PEER: usize = 1 << 16;

/// The agent's ractor name for a node.
pub(crate) fn agent_name(node: NodeId) -> String {
    format!("troupe.agent.{}", node.0)
}

fn node_of_agent(name: &str) -> Option<NodeId> {
    name.strip_prefix("troupe.agent.")?.parse().ok().map(NodeId)
}

/// A frame's bytes: the only message type that crosses ractor_cluster.
#[derive(Debug)]
pub(crate) struct AgentMessage(pub Vec<u8>);

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
pub(crate) enum Inbound {
    /// A decoded frame and the node that sent it, as its link's handshake
    /// proved (boxed: frames are large, peer events small).
    Frame { from: NodeId, frame: Box<Frame> },
    /// A peer's agent appeared (its session is ready).
    PeerUp(NodeId),
    /// A peer's agent went away (its session ended).
    PeerDown(NodeId),
}

/// Splits a batch into its frames' bytes; a malformed length ends it
/// (what came before is kept).
pub(crate) fn split_batch(mut batch: &[u8]) -> (Vec<&[u8]>, bool) {
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

/// Where a frame's bytes came from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    /// A control link, opened by the node its handshake proved.
    Link(NodeId),
    /// An agent, through a ractor_cluster session (it carries only where a
    /// peer's link listens).
    Session,
}

/// Decodes one frame a peer sent and hands it on; a link notice goes to
/// the transport. Bad bytes, and a frame claiming another sender than the
/// one its link proved, are counted and dropped: they never stop the node.
pub(crate) fn deliver(
    transport: &Arc<Transport>,
    inbound: &(dyn Fn(Inbound) + Send + Sync),
    source: Source,
    bytes: &[u8],
) {
    if let Source::Link(from) = source {
        // A node declared dead may still be writing (it stalled, and has
        // not heard yet): what it says no longer counts.
        if transport.is_fenced(from) {
            metrics::counter!("troupe_cluster_fenced_frames_total").increment(1);
            return;
        }
    }
    let frame = match Frame::decode(bytes) {
        Ok(frame) => frame,
        Err(err) => {
            metrics::counter!("troupe_cluster_bad_frames_total").increment(1);
            tracing::warn!(%err, bytes = bytes.len(), ?source, "dropped a malformed control frame");
            return;
        }
    };
    match (source, frame) {
        (
            _,
            Frame::Notice {
                from,
                body: Notice::Link { addr },
            },
        ) => transport.connect_link(from, addr),
        (Source::Link(proved), frame) => match frame.claimed_sender() {
            Some(claimed) if claimed != proved => {
                metrics::counter!("troupe_cluster_impersonations_total").increment(1);
                tracing::warn!(%claimed, %proved, "dropped a frame claiming another sender than its link's");
            }
            _ => inbound(Inbound::Frame {
                from: proved,
                frame: Box::new(frame),
            }),
        },
        (Source::Session, _) => {
            metrics::counter!("troupe_cluster_bad_frames_total").increment(1);
            tracing::warn!(
                "dropped a frame sent through a session: only link notices travel there"
            );
        }
    }
}

/// The agent actor: decodes frames from peers and follows the agent group.
pub(crate) struct Agent {
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
            deliver(&self.transport, &*self.inbound, Source::Session, bytes);
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
            // `PeerUp` follows once the links are up too.
            self.transport.agent_up(node, ActorRef::from(cell));
        } else if self.transport.is_agent(node, &cell) {
            // Only if this cell is the one we know (a reconnect may have
            // replaced it already); the transport tells the node.
            self.transport.peer_down(node);
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
}
