//! Events from the rest of a cluster, and what a node does about them.

use tokio::sync::broadcast;

use super::Runtime;
use crate::remote::ClusterEvent;

impl Runtime {
    /// Subscribes to node events (up, down). A single node never sees one;
    /// a cluster publishes them on every node and driver.
    pub fn cluster_events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.inner.cluster_events.subscribe()
    }

    /// Tells this node what happened to another (the cluster calls this).
    /// A dead node's objects are lost here (this node's own are made again
    /// from their lineage when read) and its borrows end; tasks that
    /// ran there are retried or fail as their attempts would. A new node,
    /// or one heard from again after a silence, gets another chance at
    /// tasks that fitted no node.
    pub fn publish(&self, event: ClusterEvent) {
        match &event {
            ClusterEvent::NodeDown { node, reason } => {
                tracing::warn!(%node, %reason, "node down");
                // Marked as awaiting recovery before they fail, so that a
                // task taking one waits for it instead of failing.
                let lost = self
                    .inner
                    .objects
                    .node_died_and_tell(*node, |own| self.await_recovery_of(own));
                self.explain_lost(&lost);
                self.inner.scheduler.node_died(*node);
                self.restart_placed(*node);
                self.end_hosted_by(*node);
                self.groups_node_down(*node);
            }
            ClusterEvent::NodeUp { node, .. } => {
                tracing::info!(%node, "node up");
                self.inner.scheduler.node_up();
            }
            ClusterEvent::NodeRecovered { node } => {
                tracing::info!(%node, "node heard from again");
                self.inner.scheduler.node_up();
            }
        }
        let _ = self.inner.cluster_events.send(event);
    }
}
