//! The store: a concurrent index of objects, typed refs, pending objects,
//! a memory budget with backpressure and spilling, and remote objects.
//!
//! Each entry is in one state:
//!
//! ```text
//!            complete                     spill (LRU, unpinned)
//! Pending ───────────────→ Ready ─────────────────────→ Spilled
//!    │  fail / producer      ↑ ←──────────────────────────┘
//!    │  dropped              │        restore on get
//!    └───────────→ Failed    │ fetched (directory)
//!                            │
//! Remote ──── first read ──→ Pending (fetching)
//! ```
//!
//! Every read path shares the stored `Arc` (no copy in-process). Waiting
//! readers sleep on the entry's own `Notify`; `wait` re-checks its refs on
//! a store-wide completion counter.

mod refs;
mod spill;

pub use refs::{AnyObjectRef, Completer, ObjectRef};
pub use spill::SpillReport;

pub(crate) use refs::RefHandle;

use std::any::TypeId;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use crate::blob::{class_of, Pool};
use crate::codec::{AnyValue, Codec, DecodeScope};
use crate::{Blob, BlobWriter, GetSize, NodeId, ObjectDirectory, ObjectError, ObjectId};

/// What can be stored: serializable (for spilling and transfer), sized (for
/// the memory budget, without serializing), shareable. Implemented for every
/// such type; derive `GetSize` on your own types.
pub trait Object: serde::Serialize + DeserializeOwned + GetSize + Send + Sync + 'static {}

impl<T: serde::Serialize + DeserializeOwned + GetSize + Send + Sync + 'static> Object for T {}

pub(crate) enum State {
    /// Woken when it settles; readers of this object wait on it alone.
    Pending(Arc<Notify>),
    Ready(AnyValue),
    Spilled(PathBuf),
    Failed(ObjectError),
    /// Known, not here: fetched through the directory on the first read.
    Remote {
        location: Option<NodeId>,
    },
}

/// The value's type, when the entry knows it (a remote entry decoded from
/// an untyped ref does not, until someone reads it typed).
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) codec: Codec,
}

impl Kind {
    pub(crate) fn of<T: Object>() -> Self {
        Kind {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            codec: Codec::of::<T>(),
        }
    }
}

pub(crate) struct Entry {
    pub(crate) state: State,
    pub(crate) size: u64,
    pub(crate) kind: Kind,
    /// Store clock at the last read, for least-recently-used spilling.
    pub(crate) last_used: AtomicU64,
    /// The handle every local ref to this object shares; a ref decoded from
    /// bytes attaches to it, so the object still dies with its last ref.
    pub(crate) handle: Weak<RefHandle>,
    /// Its value holds refs: never spilled (dropping the value from memory
    /// would drop those refs and free what they point to).
    pub(crate) pinned: bool,
    /// Other nodes holding refs to it (owner side): it lives while any does.
    pub(crate) borrowers: Vec<NodeId>,
    /// The node its value lives on (or came from), when not here: told
    /// when this node no longer needs it.
    pub(crate) origin: Option<NodeId>,
}

/// Object store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of objects kept in memory (default: 30% of the machine's
    /// memory, as Ray; 2 GiB where that cannot be read).
    pub memory_budget: u64,
    /// Spilling starts above this fraction of the budget (default 0.8).
    pub spill_threshold: f64,
    /// Where spilled objects go (default: a per-process folder in the
    /// system's temporary directory).
    pub spill_dir: PathBuf,
    /// Bytes of freed large buffers kept for reuse by byte objects
    /// (default: a quarter of the budget, at most 4 GiB).
    pub buffer_pool: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let total = total_memory().unwrap_or(8 << 30);
        let budget = total / 10 * 3;
        Self {
            memory_budget: budget,
            spill_threshold: 0.8,
            spill_dir: std::env::temp_dir().join(format!("troupe-spill-{}", std::process::id())),
            buffer_pool: (budget / 4).min(4 << 30),
        }
    }
}

impl StoreConfig {
    /// The default settings with another memory budget (and a pool of a
    /// quarter of it).
    pub fn with_budget(budget: u64) -> Self {
        Self {
            memory_budget: budget,
            buffer_pool: (budget / 4).min(4 << 30),
            ..Self::default()
        }
    }
}

fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(crate) struct Inner {
    pub(crate) node: NodeId,
    next: AtomicU64,
    pub(crate) objects: DashMap<ObjectId, Entry>,
    in_memory: AtomicU64,
    clock: AtomicU64,
    pub(crate) config: StoreConfig,
    /// Bumped whenever an object settles: `wait` sleeps on it.
    completions: watch::Sender<u64>,
    /// Woken when memory use crosses the spill threshold, or a put waits.
    spill_wanted: Notify,
    /// Woken when memory is freed or a spill round ends: puts waiting for
    /// room re-check.
    room: Notify,
    /// Spillers attached (the runtime's object store actor): without one, a
    /// put that does not fit fails at once.
    spillers: AtomicUsize,
    /// The last spill round freed nothing while over the threshold.
    stuck: AtomicBool,
    pub(crate) pool: Arc<Pool>,
    directory: OnceLock<Arc<dyn ObjectDirectory>>,
}

impl Inner {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn threshold(&self) -> u64 {
        (self.config.memory_budget as f64 * self.config.spill_threshold) as u64
    }

    /// Takes `size` bytes of the budget if they fit.
    fn admit(&self, size: u64) -> bool {
        let budget = self.config.memory_budget;
        self.in_memory
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + size <= budget).then_some(used + size)
            })
            .is_ok()
    }

    /// Counts bytes that are in memory already (a result, a restore).
    pub(crate) fn account(&self, size: u64) {
        let now = self.in_memory.fetch_add(size, Ordering::AcqRel) + size;
        self.after_growth(now);
    }

    fn after_growth(&self, now: u64) {
        metrics::gauge!("troupe_object_store_memory_bytes").set(now as f64);
        if now > self.threshold() {
            self.spill_wanted.notify_one();
        }
    }

    pub(crate) fn unaccount(&self, size: u64) {
        if size == 0 {
            return;
        }
        let now = self.in_memory.fetch_sub(size, Ordering::AcqRel) - size;
        metrics::gauge!("troupe_object_store_memory_bytes").set(now as f64);
        self.room.notify_waiters();
    }

    /// Settles a pending object and wakes its readers. A value is stored
    /// only over a pending entry: a freed object stays freed.
    pub(crate) fn settle(&self, id: ObjectId, state: State, size: u64) {
        let notify = match self.objects.get_mut(&id) {
            Some(mut entry) => {
                match std::mem::replace(&mut entry.state, State::Failed(ObjectError::Freed(id))) {
                    State::Pending(notify) => {
                        entry.state = state;
                        entry.size = size;
                        entry.last_used.store(self.tick(), Ordering::Relaxed);
                        Some(notify)
                    }
                    other => {
                        entry.state = other;
                        None
                    }
                }
            }
            None => None,
        };
        let Some(notify) = notify else { return };
        if size > 0 {
            self.account(size);
        }
        notify.notify_waiters();
        self.completions.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A ref to `id` for a decoded value: the live handle if the entry has
    /// one, a new one otherwise.
    pub(crate) fn attach<T: Object>(self: &Arc<Self>, id: ObjectId) -> ObjectRef<T> {
        let new_handle = || {
            Arc::new(RefHandle {
                id,
                store: Arc::downgrade(self),
            })
        };
        let handle = match self.objects.entry(id) {
            dashmap::Entry::Occupied(mut entry) => match entry.get().handle.upgrade() {
                Some(handle) => handle,
                None => {
                    let handle = new_handle();
                    entry.get_mut().handle = Arc::downgrade(&handle);
                    handle
                }
            },
            dashmap::Entry::Vacant(vacant) => {
                let handle = new_handle();
                if id.node != self.node && self.directory.get().is_some() {
                    // Another node's object: known, fetched when read.
                    vacant.insert(Entry {
                        state: State::Remote {
                            location: Some(id.node),
                        },
                        size: 0,
                        kind: Kind::of::<T>(),
                        last_used: AtomicU64::new(0),
                        handle: Arc::downgrade(&handle),
                        pinned: false,
                        borrowers: Vec::new(),
                        origin: Some(id.node),
                    });
                }
                // Otherwise no entry: reads say Freed (made here) or Unknown.
                handle
            }
        };
        ObjectRef {
            handle,
            _type: PhantomData,
        }
    }

    /// The last local ref to `id` was dropped.
    pub(crate) fn last_ref_dropped(&self, id: ObjectId) {
        let removed = self.objects.remove_if(&id, |_, entry| {
            // Re-attached meanwhile, or still borrowed by another node.
            entry.handle.strong_count() == 0 && entry.borrowers.is_empty()
        });
        if let Some((_, entry)) = removed {
            self.forget(id, entry);
        }
    }

    /// Accounting and side effects of an entry that left the index.
    fn forget(&self, id: ObjectId, entry: Entry) {
        let origin = match &entry.state {
            State::Remote { location } => location.or(entry.origin),
            _ => entry.origin,
        };
        match entry.state {
            State::Ready(_) => self.unaccount(entry.size),
            State::Spilled(path) => {
                let _ = std::fs::remove_file(path);
            }
            State::Pending(notify) => notify.notify_waiters(),
            _ => {}
        }
        // Made elsewhere, or made here but kept elsewhere: whoever holds
        // it there may free it now.
        if id.node != self.node || origin.is_some() {
            if let Some(directory) = self.directory.get() {
                directory.released(id, origin);
            }
        }
    }
}

/// The object store of one node. Cheap to clone.
///
/// ```
/// use troupe_objects::{ObjectStore, StoreConfig};
/// # #[tokio::main] async fn main() -> Result<(), troupe_objects::ObjectError> {
/// let store = ObjectStore::new(StoreConfig::default());
/// let r = store.put(vec![1u32, 2, 3]).await?;
/// let v = store.get(&r).await?;          // an Arc: no copy
/// assert_eq!(*v, vec![1, 2, 3]);
/// drop(r);                                // last ref: the object is freed
/// assert_eq!(store.len(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ObjectStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("node", &self.inner.node)
            .field("objects", &self.inner.objects.len())
            .field("in_memory", &self.in_memory_bytes())
            .finish()
    }
}

/// What the state API shows of one object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectInfo {
    /// The object.
    pub id: ObjectId,
    /// Its value's type.
    pub type_name: String,
    /// Bytes it holds in memory (0 while pending, spilled or remote).
    pub size: u64,
    /// Where it is: "pending", "memory", "spilled", "failed" or "remote".
    pub state: std::borrow::Cow<'static, str>,
    /// Whether a local ref to it is alive.
    pub referenced: bool,
    /// Other nodes that borrow it.
    pub borrowers: Vec<NodeId>,
}

/// Keeps a spiller attached while it lives (see [`ObjectStore::attach_spiller`]).
pub struct SpillerGuard {
    store: Weak<Inner>,
}

impl Drop for SpillerGuard {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store.spillers.fetch_sub(1, Ordering::AcqRel);
            store.room.notify_waiters();
        }
    }
}

impl ObjectStore {
    /// An empty store with a random node id.
    pub fn new(config: StoreConfig) -> Self {
        Self::with_node(NodeId::random(), config)
    }

    /// An empty store for `node`: ids it makes are `node`'s.
    pub fn with_node(node: NodeId, config: StoreConfig) -> Self {
        let (completions, _) = watch::channel(0);
        let pool = Pool::new(config.buffer_pool);
        Self {
            inner: Arc::new(Inner {
                node,
                next: AtomicU64::new(0),
                objects: DashMap::new(),
                in_memory: AtomicU64::new(0),
                clock: AtomicU64::new(0),
                config,
                completions,
                spill_wanted: Notify::new(),
                room: Notify::new(),
                spillers: AtomicUsize::new(0),
                stuck: AtomicBool::new(false),
                pool,
                directory: OnceLock::new(),
            }),
        }
    }

    /// Sets where objects of other nodes are found (the cluster's seam).
    /// Once per store; a second call returns false and changes nothing.
    pub fn set_directory(&self, directory: Arc<dyn ObjectDirectory>) -> bool {
        self.inner.directory.set(directory).is_ok()
    }

    /// The node whose ids this store makes.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Objects in the index (pending, in memory, spilled, failed, remote).
    pub fn len(&self) -> usize {
        self.inner.objects.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.objects.is_empty()
    }

    /// Bytes of objects held in memory.
    pub fn in_memory_bytes(&self) -> u64 {
        self.inner.in_memory.load(Ordering::Acquire)
    }

    /// Bytes of freed buffers kept for reuse by byte objects.
    pub fn pooled_bytes(&self) -> u64 {
        self.inner.pool.held()
    }

    fn mint(&self) -> ObjectId {
        ObjectId {
            node: self.inner.node,
            seq: self.inner.next.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A fresh id of this node, for an object made later (with
    /// [`pending_at`](Self::pending_at) here or on another node).
    pub fn new_id(&self) -> ObjectId {
        self.mint()
    }

    fn insert<T>(&self, id: ObjectId, mut entry: Entry) -> ObjectRef<T> {
        let handle = Arc::new(RefHandle {
            id,
            store: Arc::downgrade(&self.inner),
        });
        entry.handle = Arc::downgrade(&handle);
        self.inner.objects.insert(id, entry);
        ObjectRef {
            handle,
            _type: PhantomData,
        }
    }

    fn ready_entry<T: Object>(&self, value: Arc<T>, size: u64) -> Entry {
        Entry {
            state: State::Ready(value),
            size,
            kind: Kind::of::<T>(),
            last_used: AtomicU64::new(self.inner.tick()),
            handle: Weak::new(),
            pinned: false,
            borrowers: Vec::new(),
            origin: None,
        }
    }

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
        loop {
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
        metrics::counter!("troupe_object_store_put_bytes_total").increment(size);
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
    /// result's id before anyone ran it. Fails if the id is in use here.
    pub fn pending_at<T: Object>(
        &self,
        id: ObjectId,
    ) -> Result<(ObjectRef<T>, Completer<T>), ObjectError> {
        if self.inner.objects.contains_key(&id) {
            return Err(ObjectError::WrongType {
                id,
                expected: "a fresh id".into(),
                actual: "an object already in this store".into(),
            });
        }
        Ok(self.pending_unchecked(id))
    }

    fn pending_unchecked<T: Object>(&self, id: ObjectId) -> (ObjectRef<T>, Completer<T>) {
        let r = self.insert(
            id,
            Entry {
                state: State::Pending(Arc::new(Notify::new())),
                size: 0,
                kind: Kind::of::<T>(),
                last_used: AtomicU64::new(0),
                handle: Weak::new(),
                pinned: false,
                borrowers: Vec::new(),
                origin: None,
            },
        );
        let completer = Completer {
            id,
            store: Arc::downgrade(&self.inner),
            done: false,
            _type: PhantomData,
        };
        (r, completer)
    }

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

    /// What a read of a missing id means: freed if this node made it,
    /// unknown otherwise.
    fn missing(&self, id: ObjectId) -> ObjectError {
        if id.node == self.inner.node && id.seq < self.inner.next.load(Ordering::Relaxed) {
            ObjectError::Freed(id)
        } else {
            ObjectError::Unknown(id)
        }
    }

    fn wrong_type(id: ObjectId, expected: &'static str, actual: &'static str) -> ObjectError {
        ObjectError::WrongType {
            id,
            expected: expected.into(),
            actual: actual.into(),
        }
    }

    /// Reads an object now: `None` while it is pending (or being fetched).
    /// In-memory objects are shared, never copied; a spilled one is read
    /// back from disk on this thread (it may block: from async code use
    /// `get`, which reads on a blocking thread).
    pub fn try_get<T: Object>(&self, r: &ObjectRef<T>) -> Option<Result<Arc<T>, ObjectError>> {
        match self.peek::<T>(r.id()) {
            Peek::Value(v) => Some(Ok(v)),
            Peek::Error(e) => Some(Err(e)),
            Peek::Wait(_) => None,
            Peek::Spilled => Some(self.restore_typed::<T>(r.id())),
            Peek::Remote => {
                self.start_fetch(r.id());
                None
            }
        }
    }

    /// Reads an object if that needs neither waiting nor the disk: its
    /// value or error when in memory (or gone), `None` otherwise.
    pub fn get_if_ready<T: Object>(&self, r: &ObjectRef<T>) -> Option<Result<Arc<T>, ObjectError>> {
        match self.peek::<T>(r.id()) {
            Peek::Value(v) => Some(Ok(v)),
            Peek::Error(e) => Some(Err(e)),
            Peek::Wait(_) | Peek::Spilled | Peek::Remote => None,
        }
    }

    fn restore_typed<T: Object>(&self, id: ObjectId) -> Result<Arc<T>, ObjectError> {
        let value = self.restore(id)?;
        value
            .downcast::<T>()
            .map_err(|_| Self::wrong_type(id, std::any::type_name::<T>(), "another type"))
    }

    fn peek<T: Object>(&self, id: ObjectId) -> Peek<T> {
        let Some(entry) = self.inner.objects.get(&id) else {
            return Peek::Error(self.missing(id));
        };
        if !matches!(entry.state, State::Remote { .. }) && entry.kind.type_id != TypeId::of::<T>() {
            return Peek::Error(Self::wrong_type(
                id,
                std::any::type_name::<T>(),
                entry.kind.type_name,
            ));
        }
        match &entry.state {
            State::Pending(notify) => Peek::Wait(notify.clone()),
            State::Failed(err) => Peek::Error(err.clone()),
            State::Ready(value) => {
                entry
                    .last_used
                    .store(self.inner.clock.load(Ordering::Relaxed), Ordering::Relaxed);
                match value.clone().downcast::<T>() {
                    Ok(v) => Peek::Value(v),
                    Err(_) => Peek::Error(Self::wrong_type(
                        id,
                        std::any::type_name::<T>(),
                        entry.kind.type_name,
                    )),
                }
            }
            State::Spilled(_) => Peek::Spilled,
            State::Remote { .. } => Peek::Remote,
        }
    }

    /// An object's bytes, to send to another node: a byte object's buffer
    /// as it is (no copy), anything else encoded. Waits while it is pending.
    pub async fn export(&self, id: ObjectId) -> Result<Blob, ObjectError> {
        loop {
            let probe = {
                let Some(entry) = self.inner.objects.get(&id) else {
                    return Err(self.missing(id));
                };
                match &entry.state {
                    State::Pending(notify) => Err(notify.clone()),
                    State::Failed(err) => return Err(err.clone()),
                    State::Remote { .. } => return Err(ObjectError::Unknown(id)),
                    State::Ready(value) => Ok(Some((value.clone(), entry.kind.codec))),
                    State::Spilled(_) => Ok(None),
                }
            };
            let (value, codec) = match probe {
                Err(notify) => {
                    let settled = notify.notified();
                    tokio::pin!(settled);
                    settled.as_mut().enable();
                    if self.is_settled(id) {
                        continue;
                    }
                    settled.await;
                    continue;
                }
                Ok(Some(found)) => found,
                Ok(None) => {
                    let store = self.clone();
                    let value = blocking(id, move || store.restore(id)).await?;
                    let codec = self
                        .inner
                        .objects
                        .get(&id)
                        .map(|e| e.kind.codec)
                        .ok_or_else(|| self.missing(id))?;
                    (value, codec)
                }
            };
            if let Some(blob) = value.downcast_ref::<Blob>() {
                return Ok(blob.clone()); // a byte object is sent as it is
            }
            if let Some(bytes) = codec.raw.and_then(|raw| (raw.bytes)(&*value)) {
                return Ok(Blob::from(bytes.to_vec()));
            }
            let mut out = Vec::new();
            (codec.encode)(&*value, &mut out)
                .map_err(|reason| ObjectError::Fetch { id, reason })?;
            return Ok(Blob::from(out));
        }
    }

    /// Reads an object, waiting while it is pending or being fetched. A
    /// spilled object is read back on a blocking thread, never on an async
    /// worker.
    pub async fn get<T: Object>(&self, r: &ObjectRef<T>) -> Result<Arc<T>, ObjectError> {
        self.get_timeout(r, None).await
    }

    /// Reads an object, waiting at most `timeout` while it is pending.
    pub async fn get_timeout<T: Object>(
        &self,
        r: &ObjectRef<T>,
        timeout: Option<Duration>,
    ) -> Result<Arc<T>, ObjectError> {
        let id = r.id();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let notify = match self.peek::<T>(id) {
                Peek::Value(v) => return Ok(v),
                Peek::Error(e) => return Err(e),
                Peek::Spilled => {
                    let store = self.clone();
                    return blocking(id, move || store.restore_typed::<T>(id)).await;
                }
                Peek::Remote => {
                    self.start_fetch(id);
                    continue;
                }
                Peek::Wait(notify) => notify,
            };
            let settled = notify.notified();
            tokio::pin!(settled);
            // Registered before the re-check: a settle in between is seen.
            settled.as_mut().enable();
            if self.is_settled(id) {
                continue;
            }
            match deadline {
                None => settled.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, settled).await.is_err() {
                        return Err(ObjectError::Timeout {
                            id,
                            after: timeout.unwrap_or_default(),
                        });
                    }
                }
            }
        }
    }

    /// Resolves once a read of the object would not wait: it holds a value
    /// or an error, or is gone or unknown. A remote object is fetched.
    /// Wakes only for this object.
    pub async fn ready(&self, id: ObjectId) {
        loop {
            let notify = match self.inner.objects.get(&id) {
                Some(entry) => match &entry.state {
                    State::Pending(notify) => notify.clone(),
                    State::Remote { .. } => {
                        drop(entry);
                        self.start_fetch(id);
                        continue;
                    }
                    _ => return,
                },
                None => return,
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_settled(id) {
                return;
            }
            notified.await;
        }
    }

    /// Turns a remote entry into a pending one and fetches it in the
    /// background, as the type it was decoded as (once, whatever the number
    /// of readers).
    fn start_fetch(&self, id: ObjectId) {
        let (kind, location) = match self.inner.objects.get(&id) {
            Some(entry) => match &entry.state {
                State::Remote { location } => (entry.kind, *location),
                _ => return,
            },
            None => return,
        };
        let Some(directory) = self.inner.directory.get().cloned() else {
            self.inner
                .settle_remote(id, State::Failed(ObjectError::Unknown(id)));
            return;
        };
        {
            let Some(mut entry) = self.inner.objects.get_mut(&id) else {
                return;
            };
            if !matches!(entry.state, State::Remote { .. }) {
                return;
            }
            // Remembered after the fetch: that node hears when we let go.
            entry.origin = entry.origin.or(location);
            entry.state = State::Pending(Arc::new(Notify::new()));
        }
        let store = self.clone();
        let fetch = async move {
            let fetched = directory.fetch(id, location).await;
            let result = fetched.and_then(|blob| match kind.codec.raw {
                Some(raw) => Ok((raw.from)(blob)),
                None => {
                    let _scope = DecodeScope::enter(&store.inner);
                    (kind.codec.decode)(&blob).map_err(|reason| ObjectError::Fetch { id, reason })
                }
            });
            match result {
                Ok(value) => {
                    let size = (kind.codec.size)(&*value);
                    store.inner.settle(id, State::Ready(value), size)
                }
                Err(err) => store.inner.settle(id, State::Failed(err), 0),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(fetch);
            }
            Err(_) => self.inner.settle(
                id,
                State::Failed(ObjectError::Fetch {
                    id,
                    reason: "no tokio runtime to fetch on".to_owned(),
                }),
                0,
            ),
        }
    }

    /// Reads many objects, in order, waiting for each.
    pub async fn get_many<T: Object>(
        &self,
        refs: &[ObjectRef<T>],
        timeout: Option<Duration>,
    ) -> Result<Vec<Arc<T>>, ObjectError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            out.push(self.get_timeout(r, left).await?);
        }
        Ok(out)
    }

    /// Decodes bytes (postcard) in this store's context: refs inside attach
    /// to its objects. How values that arrive as bytes (a task submitted by
    /// name, a message from another node) come back to life.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, postcard::Error> {
        let _scope = DecodeScope::enter(&self.inner);
        postcard::from_bytes::<T>(bytes)
    }

    /// Whether a read of the object would not wait: anything but pending or
    /// remote (an id this node never saw counts, since reading it fails at
    /// once with [`ObjectError::Unknown`]).
    pub fn is_settled(&self, id: ObjectId) -> bool {
        self.inner
            .objects
            .get(&id)
            .is_none_or(|e| !matches!(e.state, State::Pending(_) | State::Remote { .. }))
    }

    /// Whether `wait` counts the object as ready: settled, and known (an
    /// unknown id never becomes ready).
    fn is_ready_for_wait(&self, id: ObjectId) -> bool {
        match self.inner.objects.get(&id) {
            Some(e) => !matches!(e.state, State::Pending(_) | State::Remote { .. }),
            None => matches!(self.missing(id), ObjectError::Freed(_)),
        }
    }

    /// Waits until `num_returns` of `refs` are ready (holding a value or an
    /// error) or `timeout` passes, and returns `(ready, not_ready)`, each in
    /// the order given (Ray's `wait`). Remote objects are fetched; an id
    /// this node does not know is never ready.
    pub async fn wait<T>(
        &self,
        refs: Vec<ObjectRef<T>>,
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
        let want = num_returns.min(refs.len());
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut completions = self.inner.completions.subscribe();
        for r in &refs {
            self.start_fetch(r.id());
        }
        loop {
            let ready = refs
                .iter()
                .filter(|r| self.is_ready_for_wait(r.id()))
                .count();
            if ready >= want {
                break;
            }
            let changed = completions.changed();
            let woke = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, changed).await.ok(),
                None => Some(changed.await),
            };
            if !matches!(woke, Some(Ok(()))) {
                break;
            }
        }
        // Ray returns at most num_returns as ready.
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        for r in refs {
            if ready.len() < want && self.is_ready_for_wait(r.id()) {
                ready.push(r);
            } else {
                not_ready.push(r);
            }
        }
        (ready, not_ready)
    }

    /// Frees objects now, whatever refs remain: later reads get
    /// [`ObjectError::Freed`].
    pub fn free<T>(&self, refs: &[ObjectRef<T>]) {
        for r in refs {
            if let Some((id, entry)) = self.inner.objects.remove(&r.id()) {
                self.inner.forget(id, entry);
            }
        }
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
                .settle_remote(id, State::Failed(ObjectError::Lost { id, node }));
        }
    }

    /// A snapshot of every object, for the state API.
    pub fn list(&self) -> Vec<ObjectInfo> {
        self.inner
            .objects
            .iter()
            .map(|e| ObjectInfo {
                id: *e.key(),
                type_name: e.kind.type_name.to_owned(),
                size: e.size,
                state: match e.state {
                    State::Pending(_) => "pending",
                    State::Ready(_) => "memory",
                    State::Spilled(_) => "spilled",
                    State::Failed(_) => "failed",
                    State::Remote { .. } => "remote",
                }
                .into(),
                referenced: e.handle.strong_count() > 0,
                borrowers: e.borrowers.clone(),
            })
            .collect()
    }

    /// Resolves when memory use has crossed the spill threshold or a put
    /// waits for room.
    pub async fn spill_wanted(&self) {
        self.inner.spill_wanted.notified().await
    }

    /// Whether memory use is above the spill threshold.
    pub fn over_threshold(&self) -> bool {
        self.in_memory_bytes() > self.inner.threshold()
    }

    /// Declares a spiller (something that calls [`spill`](Self::spill) when
    /// [`spill_wanted`](Self::spill_wanted) fires). While one is attached, a
    /// put that does not fit waits for it; without one, it fails at once.
    pub fn attach_spiller(&self) -> SpillerGuard {
        self.inner.spillers.fetch_add(1, Ordering::AcqRel);
        SpillerGuard {
            store: Arc::downgrade(&self.inner),
        }
    }
}

impl Inner {
    /// Settles an entry that may be remote (not pending): a lost or unknown
    /// remote object.
    fn settle_remote(&self, id: ObjectId, state: State) {
        if let Some(mut entry) = self.objects.get_mut(&id) {
            if matches!(entry.state, State::Remote { .. }) {
                entry.state = state;
            } else {
                return;
            }
        }
        self.completions.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What a read found, without the map's lock held.
enum Peek<T> {
    Value(Arc<T>),
    Error(ObjectError),
    Wait(Arc<Notify>),
    Spilled,
    Remote,
}

/// Runs blocking file I/O off the async workers when there are any.
async fn blocking<R: Send + 'static>(
    id: ObjectId,
    f: impl FnOnce() -> Result<R, ObjectError> + Send + 'static,
) -> Result<R, ObjectError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.spawn_blocking(f).await {
            Ok(result) => result,
            Err(join) => Err(ObjectError::Spill {
                op: crate::SpillOp::Restoring,
                id,
                path: PathBuf::new(),
                cause: format!("the blocking read did not finish: {join}"),
            }),
        },
        Err(_) => f(),
    }
}

#[cfg(test)]
impl<T> ObjectRef<T> {
    /// Test-only: the same object seen as another type (as a ref decoded
    /// from the wire could be).
    pub(crate) fn unchecked_cast<U>(&self) -> ObjectRef<U> {
        ObjectRef {
            handle: self.handle.clone(),
            _type: PhantomData,
        }
    }
}
