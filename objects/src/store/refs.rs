//! Refs to objects: typed and untyped handles, their encoding as ids, and
//! completers of pending objects.
//!
//! Reference counting is Rust's: every clone of a ref shares one
//! `RefHandle`, and its drop is the last local ref's drop. A ref decoded
//! from bytes attaches to the entry's live handle (each entry keeps a `Weak`
//! to it), so counts stay exact. Other nodes that hold refs are recorded as
//! borrowers on the owner's entry (see [`ObjectStore::add_borrower`]).

use std::marker::PhantomData;
use std::sync::{Arc, Weak};

use crate::codec::{decoding_for, note_ref_encoded};
use crate::{Cause, GetSize, Object, ObjectError, ObjectId};

use super::{Inner, State};

/// A typed reference to an object. Cloning it is cheap; when the last clone
/// is dropped (and no other node borrows it), the object is freed.
pub struct ObjectRef<T> {
    pub(crate) handle: Arc<RefHandle>,
    pub(crate) _type: PhantomData<fn() -> T>,
}

pub(crate) struct RefHandle {
    pub(crate) id: ObjectId,
    // Weak: a stored value may hold refs; a strong pointer would be a cycle.
    pub(crate) store: Weak<Inner>,
}

impl Drop for RefHandle {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store.last_ref_dropped(self.id);
        }
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectRef<{}>({})",
            std::any::type_name::<T>(),
            self.handle.id
        )
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.handle.id == other.handle.id
    }
}

impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.handle.id.hash(state)
    }
}

impl<T> ObjectRef<T> {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.handle.id
    }

    /// The same ref with its type erased (it still keeps the object alive).
    pub fn erase(self) -> AnyObjectRef {
        AnyObjectRef {
            handle: self.handle,
        }
    }
}

impl<T> GetSize for ObjectRef<T> {}

impl<T> serde::Serialize for ObjectRef<T> {
    /// A ref encodes as its id. A value that holds refs is kept in memory,
    /// never spilled; the cluster carries refs this way.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        note_ref_encoded(&self.handle);
        self.handle.id.serialize(serializer)
    }
}

impl<'de, T: Object> serde::Deserialize<'de> for ObjectRef<T> {
    /// Decodes an id into a ref of the store that is decoding (refs cannot
    /// be decoded elsewhere: [`ObjectStore::decode`](crate::ObjectStore::decode)).
    /// A ref to an object made here that is gone reads as
    /// [`ObjectError::Freed`]; one made elsewhere is `Remote` (or
    /// [`ObjectError::Unknown`] with no directory).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = ObjectId::deserialize(deserializer)?;
        let store = decoding_for().ok_or_else(|| {
            <D::Error as serde::de::Error>::custom(
                "an ObjectRef can only be decoded by a Troupe object store (ObjectStore::decode)",
            )
        })?;
        Ok(store.attach::<T>(id))
    }
}

/// A ref whose value type is known only at run time (an object reached by
/// name, or over the wire). It keeps the object alive like any ref.
#[derive(Clone)]
pub struct AnyObjectRef {
    pub(crate) handle: Arc<RefHandle>,
}

impl std::fmt::Debug for AnyObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnyObjectRef({})", self.handle.id)
    }
}

impl AnyObjectRef {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.handle.id
    }

    /// The typed ref. The type is checked when read: a wrong one gives
    /// [`ObjectError::WrongType`], never a bad value.
    pub fn typed<T>(&self) -> ObjectRef<T> {
        ObjectRef {
            handle: self.handle.clone(),
            _type: PhantomData,
        }
    }
}

impl serde::Serialize for AnyObjectRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        note_ref_encoded(&self.handle);
        self.handle.id.serialize(serializer)
    }
}

/// Completes a pending object exactly once. Dropping it without completing
/// fails the object with [`ObjectError::ProducerDropped`], so no reader hangs.
pub struct Completer<T> {
    pub(crate) id: ObjectId,
    pub(crate) store: Weak<Inner>,
    pub(crate) done: bool,
    pub(crate) _type: PhantomData<fn(T)>,
}

impl<T: Object> Completer<T> {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Stores the value. Fails (and fails the object) if it is larger than
    /// the whole budget. A result is never refused for lack of room (it
    /// exists already): the store goes over its budget and spills.
    pub fn complete(mut self, value: T) -> Result<(), ObjectError> {
        self.done = true;
        let Some(store) = self.store.upgrade() else {
            return Ok(()); // the store is gone: nobody can read it
        };
        let size = value.get_size() as u64;
        if size > store.config.memory_budget {
            let err = ObjectError::TooLarge {
                size,
                budget: store.config.memory_budget,
            };
            store.settle(self.id, State::failed(err.clone()), 0);
            return Err(err);
        }
        store.settle(self.id, State::Ready(Arc::new(value)), size);
        Ok(())
    }

    /// Stores a value that arrived encoded (from the node that made it),
    /// decoding refs inside it against this store.
    pub fn complete_encoded(self, bytes: &[u8]) -> Result<(), ObjectError> {
        let Some(store) = self.store.upgrade() else {
            return Ok(());
        };
        let value = {
            let _scope = crate::codec::DecodeScope::enter(&store);
            postcard::from_bytes::<T>(bytes)
        };
        match value {
            Ok(value) => self.complete(value),
            Err(err) => {
                let id = self.id;
                let err = ObjectError::Fetch {
                    id,
                    reason: format!("its value did not decode: {err}"),
                };
                self.fail(Cause::new(err.clone()));
                Err(err)
            }
        }
    }

    /// The value lives on `keepers` (the node that made it first, then
    /// the nodes that keep replicas of it): the object becomes remote here,
    /// readers fetch it through the directory, and each keeper holds its
    /// copy until this node lets go. Losing a keeper moves reads to the
    /// next ([`node_died`](crate::ObjectStore::node_died)).
    pub fn relocate(mut self, keepers: &[crate::NodeId]) {
        let Some(&location) = keepers.first() else {
            let id = self.id;
            let reason = "the reply named no node that keeps its value".to_owned();
            return self.fail(Cause::new(ObjectError::Fetch { id, reason }));
        };
        self.done = true;
        let Some(store) = self.store.upgrade() else {
            return;
        };
        let kept = match store.objects.get_mut(&self.id) {
            Some(mut entry) if matches!(entry.state, State::Pending { fetch: 0, .. }) => {
                // Those nodes keep it for this one until told otherwise.
                entry.kept_at = keepers.to_vec();
                true
            }
            _ => false,
        };
        if kept {
            store.settle(self.id, State::remote(Some(location)), 0);
        } else if let Some(directory) = store.directory.get() {
            // Nobody here wants it any more (its refs were dropped while
            // it was made): the keepers need not keep it.
            for keeper in keepers {
                directory.released(self.id, *keeper, 1);
            }
        }
    }

    /// Fails the object; readers get [`ObjectError::Failed`] with `cause`.
    pub fn fail(mut self, cause: impl Into<Cause>) {
        self.done = true;
        if let Some(store) = self.store.upgrade() {
            let id = self.id;
            let cause = cause.into();
            store.settle(id, State::failed(ObjectError::Failed { id, cause }), 0);
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(store) = self.store.upgrade() {
                store.settle(
                    self.id,
                    State::failed(ObjectError::ProducerDropped(self.id)),
                    0,
                );
            }
        }
    }
}
