//! Objects across nodes: remote entries, borrowers (the owner's side of
//! distributed reference counting), and what a node's death means.

use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;
use std::sync::Weak;

use super::{Entry, Kind, ObjectStore, State};
use crate::{NodeId, Object, ObjectError, ObjectId, ObjectRef};

impl ObjectStore {
    /// Registers an object that lives on `location` (or wherever the
    /// directory finds it) and returns a ref to it; reading it fetches it.
    pub fn remote<T: Object>(&self, id: ObjectId, location: Option<NodeId>) -> ObjectRef<T> {
        if let Some(entry) = self.inner.objects.get(&id) {
            if let Some(handle) = entry.handle.upgrade() {
                return ObjectRef {
                    handle,
                    _type: PhantomData,
                };
            }
        }
        self.insert(
            id,
            Entry {
                state: State::Remote { location },
                size: 0,
                kind: Kind::of::<T>(),
                last_used: AtomicU64::new(0),
                handle: Weak::new(),
                pinned: false,
                borrowers: Vec::new(),
                origin: location,
            },
        )
    }

    /// Records that `node` holds a ref to `id`, an object this node owns:
    /// it lives while any borrower or local ref does.
    pub fn add_borrower(&self, id: ObjectId, node: NodeId) -> Result<(), ObjectError> {
        let mut entry = self
            .inner
            .objects
            .get_mut(&id)
            .ok_or_else(|| self.missing(id))?;
        if !entry.borrowers.contains(&node) {
            entry.borrowers.push(node);
        }
        Ok(())
    }

    /// `node` dropped its last ref to `id`; frees it if nothing else holds it.
    pub fn remove_borrower(&self, id: ObjectId, node: NodeId) {
        if let Some(mut entry) = self.inner.objects.get_mut(&id) {
            entry.borrowers.retain(|n| *n != node);
        }
        self.inner.last_ref_dropped(id);
    }

    /// Where `id`'s value is, as this store knows it: `None` if this store
    /// does not know `id`; `Some(None)` if the value is (or will be) here;
    /// `Some(Some(node))` if it lives on `node` (a result kept where it was
    /// made). How an owner answers a borrower asking where to read from.
    pub fn location(&self, id: ObjectId) -> Option<Option<NodeId>> {
        let entry = self.inner.objects.get(&id)?;
        Some(match &entry.state {
            State::Remote { location } => location.or(entry.origin),
            _ => None,
        })
    }

    /// The nodes borrowing `id`.
    pub fn borrowers(&self, id: ObjectId) -> Vec<NodeId> {
        self.inner
            .objects
            .get(&id)
            .map(|e| e.borrowers.clone())
            .unwrap_or_default()
    }

    /// `node` died: it borrows nothing any more, and objects that lived
    /// only there are lost.
    pub fn node_died(&self, node: NodeId) {
        let mut orphans = Vec::new();
        let mut lost = Vec::new();
        for mut entry in self.inner.objects.iter_mut() {
            let before = entry.borrowers.len();
            entry.borrowers.retain(|n| *n != node);
            if entry.borrowers.len() != before {
                orphans.push(*entry.key());
            }
            if let State::Remote { location: Some(at) } = entry.state {
                if at == node {
                    lost.push(*entry.key());
                }
            }
        }
        for id in orphans {
            self.inner.last_ref_dropped(id);
        }
        for id in lost {
            self.inner
                .settle_remote(id, State::failed(ObjectError::Lost { id, node }));
        }
    }
}
