//! Two transports of one process joined in memory, without sockets or
//! ractor_cluster: what the node's frame handling is unit-tested through.
//! Frames are encoded and decoded as on a control link, and arrive in
//! order, on a task of their own (never inside the sender's call).

use super::*;

impl Transport {
    /// Joins `a` and `b` both ways: each is connected to the other, and
    /// frames go to the other's `LinkSetup::inbound` (set it first).
    pub(crate) fn join_in_memory(a: &Arc<Transport>, b: &Arc<Transport>) {
        a.memory_link_to(b);
        b.memory_link_to(a);
    }

    fn memory_link_to(self: &Arc<Self>, to: &Arc<Transport>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let receiver = Arc::downgrade(to);
        let source = crate::agent::Source::Link(self.me);
        self.io.spawn(async move {
            while let Some(bytes) = rx.recv().await {
                let Some(to) = receiver.upgrade() else {
                    return;
                };
                if let Some(setup) = to.link.get() {
                    crate::agent::deliver(&to, &*setup.inbound, source, &bytes);
                }
            }
        });
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        self.update(to.me, |peer| {
            let writer = Writer::Memory(tx);
            peer.outbound = Some(Arc::new(Outbound { writer, serial }));
            ((), false)
        });
        to.inbound_link(self.me, serial, true);
    }

    /// Sends raw bytes to `node` as one frame, as a broken or hostile peer
    /// might.
    pub(crate) fn send_raw(&self, node: NodeId, bytes: &[u8]) {
        if let Some(link) = self.peers.get(&node).and_then(|p| p.outbound.clone()) {
            let _ = link.writer.send(bytes);
        }
    }
}
