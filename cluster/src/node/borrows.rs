//! The node's half of the borrowing protocol (ARCHITECTURE.md has the
//! whole of it): before a frame that carries refs leaves, its receiver is
//! registered as a borrower of each object with that object's owner; the
//! owner counts those registrations, and frees an object once none is
//! left and no local ref holds it.

use super::*;

impl Shared {
    /// Registers (`register`) or takes back the receiver `to` as a borrower
    /// of each of `refs`, which a frame to it carries: on this node for its
    /// own objects (at once), else with a notice to each owner, on this
    /// node's link to it, before any release of this node's own (which
    /// follows on the same link). The owner itself is never registered as
    /// a borrower of its own objects.
    pub(super) fn lend(&self, to: NodeId, refs: &[ObjectId], register: bool) {
        let (Some(rt), Some(transport)) = (self.runtime(), self.transport.get()) else {
            return;
        };
        if register && transport.is_fenced(to) {
            // Declared dead: its borrows already ended, and a new one would
            // never be released.
            return;
        }
        let me = transport.me();
        for id in refs {
            if id.node == to {
                continue;
            }
            if id.node == me {
                if register {
                    if let Err(err) = rt.objects().add_borrower(*id, to) {
                        // The sender holds the ref it sends: this is a bug.
                        tracing::error!(object = %id, %to, %err, "a ref sent to a node is gone here");
                    }
                } else {
                    rt.objects().remove_borrower(*id, to, 1);
                }
                continue;
            }
            let notice = Notice::Borrow {
                id: *id,
                borrower: to,
                delta: if register { 1 } else { -1 },
            };
            if let Err(err) = transport.notify(id.node, notice) {
                tracing::warn!(
                    object = %id, owner = %id.node, %to, %err,
                    "could not register a borrower with the object's owner"
                );
            }
        }
        metrics::counter!("troupe_cluster_refs_lent_total").increment(refs.len() as u64);
    }

    /// A node that sent refs to `id` (this node's object) to `borrower`
    /// registered it (`delta` 1), or took that back (-1). A registration
    /// for a node that is gone already counts for nothing.
    pub(super) fn borrow(&self, id: ObjectId, borrower: NodeId, delta: i32) {
        let Some(rt) = self.runtime() else {
            return;
        };
        if delta > 0 {
            if self.member(borrower).is_some_and(|m| departed(&m)) {
                return;
            }
            for _ in 0..delta {
                // Missing: every holder let go already, and this
                // registration was overtaken by its own release.
                let _ = rt.objects().add_borrower(id, borrower);
            }
        } else {
            rt.objects()
                .remove_borrower(id, borrower, delta.unsigned_abs());
        }
    }
}
