//! Objects across nodes: remote entries, the borrowing protocol's
//! accounting (registrations on the owner, credits on the borrower), refs
//! that arrive in messages, and what a node's death means.
//!
//! The protocol (the cluster drives it; ARCHITECTURE.md has the whole of
//! it): a node that sends refs to another registers the receiver with each
//! object's owner before the message leaves (on the owner itself, a local
//! count; from a third node, a notice on that node's connection to the
//! owner, ahead of any release of its own); the receiver holds every ref a
//! message lists from the moment it arrives, counting one credit per
//! registration; when its last local ref to an object goes, it gives all
//! its credits back in one release. The owner frees an object when no local
//! ref and no positive registration count remain.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use super::{Entry, Kind, ObjectStore, State};
use crate::codec::Encoded;
use crate::{AnyObjectRef, Fetched, NodeId, Object, ObjectError, ObjectId, ObjectRef};

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
        self.insert(id, Entry::new(State::remote(location), Kind::of::<T>()))
    }

    /// Holds the refs a message from another node lists (`encoded.refs`)
    /// until `encoded` is dropped, counting a credit for each object owned
    /// elsewhere (its sender registered this node with the owner). Call it
    /// as the message arrives, in the order messages arrive: a release
    /// that follows the message on the same connection then finds these
    /// refs held. Idempotent per `Encoded`.
    pub fn receive(&self, encoded: &mut Encoded) {
        if encoded.refs.is_empty() || !encoded.held.is_empty() {
            return; // nothing to hold, or held already (it was made here)
        }
        encoded.held = self.hold(&encoded.refs);
    }

    /// [`receive`](Self::receive) for a list of refs that arrived without
    /// an `Encoded` (an object's bytes from the data path): the handles,
    /// held until dropped.
    pub fn hold(&self, refs: &[ObjectId]) -> Vec<AnyObjectRef> {
        refs.iter()
            .map(|id| {
                let handle = self.inner.attach_as(*id, Kind::untyped());
                if id.node != self.inner.node {
                    if let Some(mut entry) = self.inner.objects.get_mut(id) {
                        entry.credits += 1;
                    }
                }
                AnyObjectRef { handle }
            })
            .collect()
    }

    /// Records that `node` holds a ref to `id`, an object this node owns
    /// (or keeps for its owner): it lives while any registration or local
    /// ref does. Registered once per ref sent there; each is given back by
    /// [`remove_borrower`](Self::remove_borrower).
    pub fn add_borrower(&self, id: ObjectId, node: NodeId) -> Result<(), ObjectError> {
        let mut entry = self
            .inner
            .objects
            .get_mut(&id)
            .ok_or_else(|| self.missing(id))?;
        count(&mut entry, node, 1);
        Ok(())
    }

    /// Keeps a replica of `id`, an object `owner` owns, from `fetched` (its
    /// bytes, pulled from the node that made it), for `owner`: held like
    /// that node's copy, until `owner` releases it or dies, and read here
    /// like any copy. Returns its size. Fails, keeping nothing, if this
    /// node knows `id` already (it borrows it: a replica belongs on a node
    /// that does not) or the bytes do not decode as `T`.
    pub async fn keep_copy<T: Object>(
        &self,
        id: ObjectId,
        owner: NodeId,
        fetched: Fetched,
    ) -> Result<u64, ObjectError> {
        if self.inner.objects.contains_key(&id) {
            return Err(known_here(id));
        }
        let kind = Kind::of::<T>();
        let (value, size) = self.materialize(id, kind, fetched).await?;
        match self.inner.objects.entry(id) {
            dashmap::Entry::Occupied(_) => return Err(known_here(id)),
            dashmap::Entry::Vacant(vacant) => {
                let mut entry = Entry::new(State::Ready(value), kind);
                entry.size = size;
                entry.borrowers.push((owner, 1));
                entry.last_used.store(self.inner.tick(), Ordering::Relaxed);
                vacant.insert(entry);
                self.inner.account(size);
            }
        }
        self.inner
            .completions
            .send_modify(|n| *n = n.wrapping_add(1));
        Ok(size)
    }

    /// `node` gave back `times` registrations of `id`; frees it if nothing
    /// else holds it. A release may arrive before the registration it
    /// cancels (they travel on different connections): the count goes
    /// below zero until it does.
    pub fn remove_borrower(&self, id: ObjectId, node: NodeId, times: u32) {
        if let Some(mut entry) = self.inner.objects.get_mut(&id) {
            count(&mut entry, node, -i64::from(times));
        }
        self.inner.last_ref_dropped(id);
    }

    /// How many times this node is registered with `id`'s owner (0 for
    /// its own objects, or objects it does not know).
    pub fn credits(&self, id: ObjectId) -> u32 {
        self.inner.objects.get(&id).map_or(0, |e| e.credits)
    }

    /// Where `id`'s value is, as this store knows it: `None` if this store
    /// does not know `id`; `Some(None)` if the value is (or will be) here;
    /// `Some(Some(node))` if it lives on `node` (a result kept where it was
    /// made). How an owner answers a borrower asking where to read from.
    pub fn location(&self, id: ObjectId) -> Option<Option<NodeId>> {
        let entry = self.inner.objects.get(&id)?;
        Some(match &entry.state {
            State::Remote { location, .. } => location.or(entry.kept_at.first().copied()),
            _ => None,
        })
    }

    /// The nodes that keep `id`'s value for this node, its owner: where a
    /// task made it, then its replicas; dead ones left out.
    pub fn keepers(&self, id: ObjectId) -> Vec<NodeId> {
        self.inner
            .objects
            .get(&id)
            .map(|e| e.kept_at.clone())
            .unwrap_or_default()
    }

    /// The nodes registered as holding refs to `id`.
    pub fn borrowers(&self, id: ObjectId) -> Vec<NodeId> {
        self.inner
            .objects
            .get(&id)
            .map(|e| {
                e.borrowers
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(node, _)| *node)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `node` died: it borrows nothing any more, this node's objects with
    /// a replica elsewhere are read from there, and objects whose value
    /// lived only there are gone from it. Returns this node's own objects
    /// that were lost (their owner, this node, may make them again, and
    /// may say why not with [`replace_failure`](Self::replace_failure)).
    /// Another node's object that lived there is lost too if its owner was
    /// `node`; otherwise the next read asks its owner again, which may
    /// have made it again.
    pub fn node_died(&self, node: NodeId) -> Vec<ObjectId> {
        self.node_died_and_tell(node, |_| {})
    }

    /// [`node_died`](Self::node_died), calling `before_failing` with this
    /// node's own lost objects before any reader or waiter can see them
    /// fail: a runtime that makes lost objects again marks them as awaited
    /// there, so that no task taking one fails in between.
    pub fn node_died_and_tell(
        &self,
        node: NodeId,
        before_failing: impl FnOnce(&[ObjectId]),
    ) -> Vec<ObjectId> {
        let mut orphans = Vec::new();
        let mut lost = Vec::new();
        let mut relocate = Vec::new();
        let mut moved = 0u64;
        for mut entry in self.inner.objects.iter_mut() {
            let before = entry.borrowers.len();
            entry.borrowers.retain(|(n, _)| *n != node);
            if entry.borrowers.len() != before {
                orphans.push(*entry.key());
            }
            let id = *entry.key();
            entry.kept_at.retain(|keeper| *keeper != node);
            let replica = entry.kept_at.first().copied();
            if let State::Remote {
                location: Some(at), ..
            } = entry.state
            {
                if at == node {
                    if id.node == self.inner.node && replica.is_some() {
                        // This node's object with a replica left: read there.
                        entry.state = State::remote(replica);
                        moved += 1;
                    } else if id.node == node || id.node == self.inner.node {
                        lost.push((id, None));
                    } else {
                        relocate.push(id);
                    }
                }
            }
            if id.node == node {
                // Its owner is gone: nobody to give credits back to.
                entry.credits = 0;
            }
        }
        // Fetches from it in flight: what they would find, at once.
        let fetching: Vec<(ObjectId, u64)> = self
            .inner
            .fetching_from
            .iter()
            .filter(|e| e.value().1 == node)
            .map(|e| (*e.key(), e.value().0))
            .collect();
        for (id, token) in fetching {
            self.inner.fetching_from.remove(&id);
            let in_flight =
                self.inner.objects.get(&id).is_some_and(
                    |e| matches!(e.state, State::Pending { fetch, .. } if fetch == token),
                );
            let replica = match id.node == self.inner.node {
                true => self
                    .inner
                    .objects
                    .get(&id)
                    .and_then(|e| e.kept_at.first().copied()),
                false => None,
            };
            if in_flight && replica.is_some() {
                // Fetched again, from the replica, by the next read.
                moved += 1;
                self.inner.settle_from(id, token, State::remote(replica), 0);
            } else if in_flight {
                if id.node == node || id.node == self.inner.node {
                    lost.push((id, Some(token)));
                } else {
                    // Its owner knows where else it is (or makes it again).
                    self.inner.settle_from(
                        id,
                        token,
                        State::Remote {
                            location: None,
                            failed: None,
                        },
                        0,
                    );
                }
            }
        }
        if moved > 0 {
            metrics::counter!("troupe_object_store_moved_to_replica_total").increment(moved);
            tracing::info!(%node, objects = moved, "objects kept on a dead node: read from their replicas");
        }
        for id in orphans {
            self.inner.last_ref_dropped(id);
        }
        for id in relocate {
            if let Some(mut entry) = self.inner.objects.get_mut(&id) {
                if let State::Remote { location, failed } = &mut entry.state {
                    *location = None;
                    *failed = None;
                }
            }
        }
        let own: Vec<ObjectId> = lost
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| id.node != node)
            .collect();
        before_failing(&own);
        for (id, fetch) in lost {
            let error = if id.node == node {
                ObjectError::owner_died(id)
            } else {
                ObjectError::Lost {
                    id,
                    node,
                    why: "this node, its owner, could not make it again".to_owned(),
                }
            };
            match fetch {
                Some(token) => self.inner.settle_from(id, token, State::failed(error), 0),
                None => self.inner.settle_remote(id, State::failed(error)),
            }
        }
        own
    }

    /// Replaces the error of an object that failed (one lost with its
    /// node, say) with `error`, which says more; false if `id` is not
    /// failed here.
    pub fn replace_failure(&self, id: ObjectId, error: ObjectError) -> bool {
        let Some(mut entry) = self.inner.objects.get_mut(&id) else {
            return false;
        };
        match &mut entry.state {
            State::Failed(err) => {
                **err = error;
                true
            }
            State::Remote { .. } => {
                entry.state = State::failed(error);
                drop(entry);
                self.inner
                    .completions
                    .send_modify(|n| *n = n.wrapping_add(1));
                true
            }
            _ => false,
        }
    }

    /// The error an object failed with, if it is failed here (a read of it
    /// gives that error); `None` for any other state, or an unknown id.
    pub fn failure(&self, id: ObjectId) -> Option<ObjectError> {
        let entry = self.inner.objects.get(&id)?;
        match &entry.state {
            State::Failed(err) => Some((**err).clone()),
            _ => None,
        }
    }
}

/// Adds `delta` to `node`'s registration count on `entry` (a count that
/// reaches zero goes).
fn count(entry: &mut Entry, node: NodeId, delta: i64) {
    match entry.borrowers.iter_mut().position(|(n, _)| *n == node) {
        Some(at) => {
            entry.borrowers[at].1 += delta;
            if entry.borrowers[at].1 == 0 {
                entry.borrowers.swap_remove(at);
            }
        }
        None => entry.borrowers.push((node, delta)),
    }
}

/// Why a replica of `id` is not kept on a node that knows it already.
fn known_here(id: ObjectId) -> ObjectError {
    ObjectError::Fetch {
        id,
        reason: "this node holds refs to it already: a replica belongs on another node".to_owned(),
    }
}
