//! The seam through which a cluster tells the store about objects that live
//! on other nodes. API boundary: `troupe-cluster` implements it; the
//! single-node default has none.

use futures::future::BoxFuture;

use crate::{Blob, NodeId, ObjectError, ObjectId};

/// An object's bytes as another node sent them, and the refs its value
/// holds (held by the fetching store before it decodes the bytes).
#[derive(Debug)]
pub struct Fetched {
    /// Its encoding (or a byte object's bytes).
    pub bytes: Blob,
    /// The objects its value holds refs to, each once.
    pub refs: Vec<ObjectId>,
}

/// Where objects this node does not hold can be found, and who must hear
/// that this node no longer holds a ref to an object another node owns.
///
/// With no directory (the embedded default) an object that was not made
/// here is [`ObjectError::Unknown`]. With one, a ref to such an object
/// (decoded from a task's arguments, a reply, or another object) reads as
/// `Remote` until someone reads it: [`get`](crate::ObjectStore::get) then
/// asks [`fetch`](Self::fetch) for its bytes, once, whatever the number of
/// readers, and keeps the copy while local refs to it remain.
pub trait ObjectDirectory: Send + Sync + 'static {
    /// The object's encoding (as [`ObjectStore::export`](crate::ObjectStore::export)
    /// gives it on the node that holds it), waiting until it is ready
    /// there. `location` is where this node last heard it lives. An error
    /// is final for this read (the object is lost, its owner died).
    fn fetch(
        &self,
        id: ObjectId,
        location: Option<NodeId>,
    ) -> BoxFuture<'static, Result<Fetched, ObjectError>>;

    /// This node no longer needs `id` (its last local ref was dropped):
    /// `to` may drop `times` registrations of this node on it. For an
    /// object another node owns, `to` is the owner and `times` how often
    /// this node was registered as a borrower; for one this node owns whose
    /// value another node keeps (a task's result left where it was made),
    /// `to` is that node, which may free its copy.
    fn released(&self, id: ObjectId, to: NodeId, times: u32);
}
