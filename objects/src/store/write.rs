//! Writing objects: admission against the memory budget (backpressure),
//! puts, byte objects in pooled buffers, pending objects.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Entry, Kind, ObjectStore, RefHandle, State};
use crate::blob::class_of;
use crate::{Blob, BlobWriter, Completer, GetSize, Object, ObjectError, ObjectId, ObjectRef};

impl ObjectStore {
    fn too_large(&self, size: u64) -> Result<(), ObjectError> {
        if size > self.inner.config.memory_budget {
            return Err(ObjectError::TooLarge {
                size,
                budget: self.inner.config.memory_budget,
            });
        }
        Ok(())
    }

    /// The error of a put of `size` bytes that does not fit now.
    pub fn full_error(&self, size: u64) -> ObjectError {
        self.full(size)
    }

    fn full(&self, size: u64) -> ObjectError {
        ObjectError::StoreFull {
            size,
            in_memory: self.in_memory_bytes(),
            budget: self.inner.config.memory_budget,
        }
    }

    /// Waits until `size` bytes fit in the budget (spilling makes room), or
    /// fails when nothing can make room.
    async fn make_room(&self, size: u64) -> Result<(), ObjectError> {
        self.too_large(size)?;
        // The common case: it fits, nothing to wait for.
        if self.inner.admit(size) {
            return Ok(());
        }
        let _waiting = RoomWaiter::enter(&self.inner);
        self.wait_for_room(size).await
    }

    async fn wait_for_room(&self, size: u64) -> Result<(), ObjectError> {
        loop {
            // Said again on every pass: the last waiter to leave clears the
            // mark, possibly just after this one arrived.
            self.inner.room_wanted.fetch_max(size, Ordering::AcqRel);
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.inner.admit(size) {
                return Ok(());
            }
            if self.inner.spillers.load(Ordering::Acquire) == 0 {
                return Err(self.full(size));
            }
            if self.inner.stuck.load(Ordering::Acquire) {
                // The last round could not spill anything; one more try
                // after this wake-up, in case memory was freed since.
                self.inner.spill_wanted.notify_one();
                room.await;
                if self.inner.admit(size) {
                    return Ok(());
                }
                if self.inner.stuck.load(Ordering::Acquire) {
                    return Err(self.full(size));
                }
                continue;
            }
            metrics::counter!("troupe_object_store_put_waits_total").increment(1);
            self.inner.spill_wanted.notify_one();
            room.await;
        }
    }

    fn insert_admitted<T: Object>(&self, value: T, size: u64) -> ObjectRef<T> {
        let r = self.insert(self.mint(), self.ready_entry(Arc::new(value), size));
        self.inner.after_growth(self.in_memory_bytes());
        self.inner.put_bytes.increment(size);
        r
    }

    /// Stores a value and returns its ref. The value is moved in, not copied
    /// or encoded: reads in this process share it. When the store is over
    /// its budget, waits while spilling makes room (backpressure); fails
    /// with [`ObjectError::StoreFull`] when nothing can be spilled.
    pub async fn put<T: Object>(&self, value: T) -> Result<ObjectRef<T>, ObjectError> {
        let size = value.get_size() as u64;
        self.make_room(size).await?;
        Ok(self.insert_admitted(value, size))
    }

    /// [`put`](Self::put) without waiting: [`ObjectError::StoreFull`] when
    /// the value does not fit in the budget now.
    pub fn try_put<T: Object>(&self, value: T) -> Result<ObjectRef<T>, ObjectError> {
        let size = value.get_size() as u64;
        self.too_large(size)?;
        if !self.inner.admit(size) {
            self.inner.spill_wanted.notify_one();
            return Err(self.full(size));
        }
        Ok(self.insert_admitted(value, size))
    }

    /// [`put`](Self::put) from synchronous code: blocks the thread while it
    /// waits for room. Not from async code (use `put`).
    pub fn put_blocking<T: Object>(&self, value: T) -> Result<ObjectRef<T>, ObjectError> {
        futures::executor::block_on(self.put(value))
    }

    /// Copies bytes into a buffer the store owns (reused from freed byte
    /// objects, so a stream of large puts runs at memory speed) and stores
    /// them. Waits for room as [`put`](Self::put) does.
    pub async fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectRef<Blob>, ObjectError> {
        let size = class_of(bytes.len()) as u64;
        self.make_room(size).await?;
        let mut buf = self.inner.pool.take(bytes.len());
        buf.extend_from_slice(bytes);
        let blob = Blob::pooled(buf, &self.inner.pool);
        let size = blob.get_size() as u64;
        // The class estimate and the buffer's real capacity can differ.
        let admitted = class_of(bytes.len()) as u64;
        if size > admitted {
            self.inner.account(size - admitted);
        } else {
            self.inner.unaccount(admitted - size);
        }
        Ok(self.insert_admitted(blob, size))
    }

    /// A writer for a byte object of `len` bytes in a store buffer (how
    /// bytes from the network land in the store without a second copy).
    pub fn blob_writer(&self, len: usize) -> BlobWriter {
        BlobWriter::new(len, self.inner.pool.clone())
    }

    /// A ref to an object that does not exist yet, and the one-shot
    /// [`Completer`] that will give it its value or its error.
    pub fn pending<T: Object>(&self) -> (ObjectRef<T>, Completer<T>) {
        self.pending_unchecked(self.mint())
    }

    /// [`pending`](Self::pending) under an id minted elsewhere: how a node
    /// makes the result of a task whose owner (on another node) minted the
    /// result's id before anyone ran it.
    ///
    /// This store may know the id already: a ref to it arrived first
    /// (inside another task's arguments), or an earlier attempt of the same
    /// task ran here. This producer then takes the entry over: a remote or
    /// failed entry becomes pending here (readers waiting on a fetch of it
    /// wake when this producer settles it), and an entry that holds a value
    /// keeps it (the completer has nothing left to do). Fails only if the
    /// id holds a value of another type.
    pub fn pending_at<T: Object>(
        &self,
        id: ObjectId,
    ) -> Result<(ObjectRef<T>, Completer<T>), ObjectError> {
        let kind = Kind::of::<T>();
        let handle = match self.inner.objects.entry(id) {
            dashmap::Entry::Vacant(vacant) => {
                let handle = self.new_handle(id);
                let mut entry = Entry::new(State::pending(), kind);
                entry.handle = Arc::downgrade(&handle);
                vacant.insert(entry);
                handle
            }
            dashmap::Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                if !entry.kind.is_untyped() && entry.kind.type_id() != kind.type_id() {
                    return Err(ObjectError::WrongType {
                        id,
                        expected: std::any::type_name::<T>().into(),
                        actual: entry.kind.type_name().into(),
                    });
                }
                entry.kind = kind;
                match &entry.state {
                    State::Remote { .. } | State::Failed(_) => entry.state = State::pending(),
                    State::Pending { notify, fetch } if *fetch != 0 => {
                        entry.state = State::Pending {
                            notify: notify.clone(),
                            fetch: 0,
                        };
                    }
                    // Pending here already (another attempt), or a value.
                    _ => {}
                }
                match entry.handle.upgrade() {
                    Some(handle) => handle,
                    None => {
                        let handle = self.new_handle(id);
                        entry.handle = Arc::downgrade(&handle);
                        handle
                    }
                }
            }
        };
        Ok(self.completing(handle))
    }

    fn pending_unchecked<T: Object>(&self, id: ObjectId) -> (ObjectRef<T>, Completer<T>) {
        let r: ObjectRef<T> = self.insert(id, Entry::new(State::pending(), Kind::of::<T>()));
        let handle = r.handle;
        self.completing(handle)
    }

    fn completing<T: Object>(&self, handle: Arc<RefHandle>) -> (ObjectRef<T>, Completer<T>) {
        let completer = Completer {
            id: handle.id,
            store: Arc::downgrade(&self.inner),
            done: false,
            _type: PhantomData,
        };
        (
            ObjectRef {
                handle,
                _type: PhantomData,
            },
            completer,
        )
    }
}

/// A put waiting for room, counted while it waits (a cancelled put stops
/// counting too: the guard is dropped with its future).
struct RoomWaiter<'a>(&'a super::Inner);

impl<'a> RoomWaiter<'a> {
    fn enter(inner: &'a super::Inner) -> Self {
        inner.room_waiters.fetch_add(1, Ordering::AcqRel);
        RoomWaiter(inner)
    }
}

impl Drop for RoomWaiter<'_> {
    fn drop(&mut self) {
        if self.0.room_waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: the high-water mark of sizes is over (a put
            // that starts waiting meanwhile raises it again on its next
            // pass; at worst a round spills a little more than needed).
            self.0.room_wanted.store(0, Ordering::Release);
        }
    }
}
