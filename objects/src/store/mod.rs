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

mod borrow;
mod entry;
mod memory;
mod read;
mod refs;
mod spill;
mod write;

pub use read::Availability;
pub use refs::{AnyObjectRef, Completer, ObjectRef};
pub use spill::SpillReport;

pub(crate) use entry::{Entry, Kind, State};
pub(crate) use refs::RefHandle;

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use crate::blob::Pool;
use crate::{GetSize, NodeId, ObjectDirectory, ObjectId};

/// What can be stored: serializable (for spilling and transfer), sized (for
/// the memory budget, without serializing), shareable. Implemented for every
/// such type; derive `GetSize` on your own types.
pub trait Object: serde::Serialize + DeserializeOwned + GetSize + Send + Sync + 'static {}

impl<T: serde::Serialize + DeserializeOwned + GetSize + Send + Sync + 'static> Object for T {}

/// Object store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of objects kept in memory (default: 30% of the memory this
    /// process may use, as Ray: the machine's, or its cgroup's limit where
    /// lower, as in a container; 30% of 8 GiB where neither can be read).
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
        let total = memory::available().unwrap_or(8 << 30);
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

pub(crate) struct Inner {
    pub(crate) node: NodeId,
    next: AtomicU64,
    pub(crate) objects: DashMap<ObjectId, Entry, crate::IdHashing>,
    in_memory: AtomicU64,
    /// Bytes (as they were in memory) and number of objects on disk.
    spilled_bytes: AtomicU64,
    spilled_objects: AtomicU64,
    clock: AtomicU64,
    pub(crate) config: StoreConfig,
    /// Bumped whenever an object settles: `wait` sleeps on it.
    completions: watch::Sender<u64>,
    /// Woken when memory use crosses the spill threshold, or a put waits.
    spill_wanted: Notify,
    /// Woken when memory is freed or a spill round ends: puts waiting for
    /// room re-check.
    room: Notify,
    /// Tokens of fetches (0 is a producer here).
    pub(crate) fetches: AtomicU64,
    /// Fetches in flight from a known holder (the fetch's token, the
    /// holder): a holder's death fails them as lost at once
    /// (`node_died`), as it does objects it holds, so that their owner
    /// makes them again.
    pub(crate) fetching_from: DashMap<ObjectId, (u64, NodeId), crate::IdHashing>,
    /// Puts waiting for room: frees notify only when there are some (a
    /// notify takes a lock; most frees have no one to tell).
    pub(crate) room_waiters: AtomicUsize,
    /// The largest put waiting for room (0 when none waits): spilling goes
    /// on until it fits, even under the threshold.
    room_wanted: AtomicU64,
    /// Spillers attached (the runtime's object store actor): without one, a
    /// put that does not fit fails at once.
    spillers: AtomicUsize,
    /// The last spill round freed nothing while over the threshold.
    stuck: AtomicBool,
    pub(crate) pool: Arc<Pool>,
    directory: OnceLock<Arc<dyn ObjectDirectory>>,
    /// Told when one of this node's objects leaves the index.
    on_forget: OnceLock<ForgetHook>,
    /// Metrics of the hot paths, registered once with the recorder
    /// installed when the store is made.
    memory_gauge: metrics::Gauge,
    pub(crate) put_bytes: metrics::Counter,
}

impl Inner {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn threshold(&self) -> u64 {
        (self.config.memory_budget as f64 * self.config.spill_threshold) as u64
    }

    /// Whether a spill round has work: memory over the threshold, or a put
    /// waiting for more room than the budget has left.
    fn needs_spill(&self) -> bool {
        let used = self.in_memory.load(Ordering::Acquire);
        used > self.threshold()
            || (self.room_waiters.load(Ordering::Acquire) > 0
                && used.saturating_add(self.room_wanted.load(Ordering::Acquire))
                    > self.config.memory_budget)
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
        self.memory_gauge.set(now as f64);
        if now > self.threshold() {
            self.spill_wanted.notify_one();
        }
    }

    /// An object went to disk (`size`: its bytes in memory).
    pub(crate) fn spilled(&self, size: u64) {
        let now = self.spilled_bytes.fetch_add(size, Ordering::AcqRel) + size;
        self.spilled_objects.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("troupe_object_store_spilled_bytes").set(now as f64);
    }

    /// An object left the disk (restored, or freed while spilled).
    pub(crate) fn unspilled(&self, size: u64) {
        let now = self
            .spilled_bytes
            .fetch_sub(size, Ordering::AcqRel)
            .saturating_sub(size);
        self.spilled_objects.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("troupe_object_store_spilled_bytes").set(now as f64);
    }

    pub(crate) fn unaccount(&self, size: u64) {
        if size == 0 {
            return;
        }
        let now = self.in_memory.fetch_sub(size, Ordering::AcqRel) - size;
        self.memory_gauge.set(now as f64);
        if self.room_waiters.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Settles a pending object that a producer here fills, and wakes its
    /// readers. A value is stored only over a pending entry: a freed object
    /// stays freed.
    pub(crate) fn settle(&self, id: ObjectId, state: State, size: u64) {
        self.settle_from(id, 0, state, size);
    }

    /// Settles a pending object if `fetch` (0: a producer here) is what
    /// fills it now.
    pub(crate) fn settle_from(&self, id: ObjectId, fetch: u64, state: State, size: u64) {
        let notify = match self.objects.get_mut(&id) {
            Some(mut entry) => match &entry.state {
                State::Pending { fetch: current, .. } if *current == fetch => {
                    let pending = std::mem::replace(&mut entry.state, state);
                    entry.size = size;
                    entry.last_used.store(self.tick(), Ordering::Relaxed);
                    // Counted while the entry is locked: a free of it (its
                    // last ref dropped on another thread) takes the lock
                    // next, and uncounts what is counted already.
                    if size > 0 {
                        self.account(size);
                    }
                    match pending {
                        State::Pending { notify, .. } => Some(notify),
                        _ => None,
                    }
                }
                _ => None,
            },
            None => None,
        };
        let Some(notify) = notify else { return };
        notify.notify_waiters();
        self.completions.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A ref to `id` for a decoded value: the live handle if the entry has
    /// one, a new one otherwise.
    pub(crate) fn attach<T: Object>(self: &Arc<Self>, id: ObjectId) -> ObjectRef<T> {
        ObjectRef {
            handle: self.attach_as(id, Kind::of::<T>()),
            _type: PhantomData,
        }
    }

    /// The live handle of `id` (made if none is alive), for a ref of
    /// `kind`: an untyped entry takes the type. Another node's object this
    /// store does not know becomes a remote entry (with a directory).
    pub(crate) fn attach_as(self: &Arc<Self>, id: ObjectId, kind: Kind) -> Arc<RefHandle> {
        let new_handle = || {
            Arc::new(RefHandle {
                id,
                store: Arc::downgrade(self),
            })
        };
        match self.objects.entry(id) {
            dashmap::Entry::Occupied(mut entry) => {
                let entry = entry.get_mut();
                if entry.kind.is_untyped() && !kind.is_untyped() {
                    entry.kind = kind;
                }
                match entry.handle.upgrade() {
                    Some(handle) => handle,
                    None => {
                        let handle = new_handle();
                        entry.handle = Arc::downgrade(&handle);
                        handle
                    }
                }
            }
            dashmap::Entry::Vacant(vacant) => {
                let handle = new_handle();
                if id.node != self.node && self.directory.get().is_some() {
                    // Another node's object: known, fetched when read.
                    let mut entry = Entry::new(State::remote(Some(id.node)), kind);
                    entry.handle = Arc::downgrade(&handle);
                    vacant.insert(entry);
                }
                // Otherwise no entry: reads say Freed (made here) or Unknown.
                handle
            }
        }
    }

    /// The last local ref to `id` was dropped.
    pub(crate) fn last_ref_dropped(&self, id: ObjectId) {
        // Most objects: nobody else holds them, nothing to give back.
        let removed = self.objects.remove_if(&id, |_, entry| {
            entry.handle.strong_count() == 0 && !entry.borrowed() && entry.credits == 0
        });
        if let Some((_, entry)) = removed {
            self.forget(id, entry);
            return;
        }
        // This node holds no ref any more: its registrations with the
        // owner end now, even if the entry lives on (a value this node
        // keeps for its owner, who borrows it). Kept until the entry went,
        // the two would hold each other up forever.
        let (removed, released) = match self.objects.entry(id) {
            dashmap::Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                if entry.handle.strong_count() != 0 {
                    return; // re-attached meanwhile
                }
                let released = std::mem::take(&mut entry.credits);
                if entry.borrowed() {
                    (None, released) // another node still borrows it
                } else {
                    (Some(occupied.remove()), released)
                }
            }
            dashmap::Entry::Vacant(_) => return,
        };
        if released > 0 {
            if let Some(directory) = self.directory.get() {
                directory.released(id, id.node, released);
            }
        }
        if let Some(entry) = removed {
            self.forget(id, entry);
        }
    }

    /// Accounting and side effects of an entry that left the index.
    fn forget(&self, id: ObjectId, entry: Entry) {
        match entry.state {
            State::Ready(value) => {
                self.unaccount(entry.size);
                // A large byte vector nobody else holds: its pages are
                // faulted in already, so the next large object (a put,
                // bytes from the network) lands there instead of in fresh
                // memory, which costs as much to fault in as to fill.
                if entry.size >= crate::blob::MIN_POOLED as u64 {
                    if let Ok(bytes) = value.downcast::<Vec<u8>>() {
                        if let Ok(bytes) = Arc::try_unwrap(bytes) {
                            self.pool.give_back(bytes);
                        }
                    }
                }
            }
            State::Spilled(path) => {
                let _ = std::fs::remove_file(path);
                self.unspilled(entry.size);
            }
            State::Pending { notify, .. } => notify.notify_waiters(),
            _ => {}
        }
        if id.node == self.node {
            if let Some(hook) = self.on_forget.get() {
                hook(id);
            }
        }
        let Some(directory) = self.directory.get() else {
            return;
        };
        // Another node's object this node was registered for: its owner
        // drops those registrations. This node's object kept elsewhere for
        // it: the keeper may free its copy.
        if id.node != self.node {
            if entry.credits > 0 {
                directory.released(id, id.node, entry.credits);
            }
        } else {
            for keeper in entry.kept_at {
                directory.released(id, keeper, 1);
            }
        }
    }
}

/// What [`ObjectStore::on_forget`] calls.
pub type ForgetHook = Arc<dyn Fn(ObjectId) + Send + Sync>;

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
    /// How many local refs to it are alive (clones of an `ObjectRef`).
    pub refs: usize,
    /// Other nodes that borrow it (or, on a node keeping another's result,
    /// its owner).
    pub borrowers: Vec<NodeId>,
    /// Where its value lives when not here: another node's object is
    /// fetched from there (its owner, or where it was made); an object of
    /// this node, the node keeping it.
    pub location: Option<NodeId>,
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
                objects: DashMap::with_hasher(crate::IdHashing::default()),
                in_memory: AtomicU64::new(0),
                spilled_bytes: AtomicU64::new(0),
                spilled_objects: AtomicU64::new(0),
                clock: AtomicU64::new(0),
                config,
                completions,
                spill_wanted: Notify::new(),
                room: Notify::new(),
                fetches: AtomicU64::new(1),
                fetching_from: DashMap::default(),
                room_waiters: AtomicUsize::new(0),
                room_wanted: AtomicU64::new(0),
                spillers: AtomicUsize::new(0),
                stuck: AtomicBool::new(false),
                pool,
                directory: OnceLock::new(),
                on_forget: OnceLock::new(),
                memory_gauge: metrics::gauge!("troupe_object_store_memory_bytes"),
                put_bytes: metrics::counter!("troupe_object_store_put_bytes_total"),
            }),
        }
    }

    /// Sets where objects of other nodes are found (the cluster's seam).
    /// Once per store; a second call returns false and changes nothing.
    pub fn set_directory(&self, directory: Arc<dyn ObjectDirectory>) -> bool {
        self.inner.directory.set(directory).is_ok()
    }

    /// Calls `hook` with the id of each object of this node that leaves
    /// the index (freed: its last ref dropped, or `free`), after it left.
    /// Once per store; a second call returns false and changes nothing.
    /// The hook may drop refs (and so free more objects) but must not wait.
    pub fn on_forget(&self, hook: ForgetHook) -> bool {
        self.inner.on_forget.set(hook).is_ok()
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

    /// Bytes of objects on disk (as they were in memory) and how many
    /// objects that is.
    pub fn spilled(&self) -> (u64, u64) {
        (
            self.inner.spilled_bytes.load(Ordering::Acquire),
            self.inner.spilled_objects.load(Ordering::Acquire),
        )
    }

    /// Refreshes the store's gauges that are not kept live (the number of
    /// objects, the budget): called when metrics are sampled.
    pub fn sample_metrics(&self) {
        metrics::gauge!("troupe_object_store_objects").set(self.len() as f64);
        metrics::gauge!("troupe_object_store_memory_bytes").set(self.in_memory_bytes() as f64);
        metrics::gauge!("troupe_object_store_budget_bytes")
            .set(self.inner.config.memory_budget as f64);
        metrics::gauge!("troupe_object_store_spilled_bytes").set(self.spilled().0 as f64);
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

    fn new_handle(&self, id: ObjectId) -> Arc<RefHandle> {
        Arc::new(RefHandle {
            id,
            store: Arc::downgrade(&self.inner),
        })
    }

    fn insert<T>(&self, id: ObjectId, mut entry: Entry) -> ObjectRef<T> {
        let handle = self.new_handle(id);
        entry.handle = Arc::downgrade(&handle);
        self.inner.objects.insert(id, entry);
        ObjectRef {
            handle,
            _type: PhantomData,
        }
    }

    fn ready_entry<T: Object>(&self, value: Arc<T>, size: u64) -> Entry {
        let mut entry = Entry::new(State::Ready(value), Kind::of::<T>());
        entry.size = size;
        entry.last_used = AtomicU64::new(self.inner.tick());
        entry
    }

    /// Frees objects now, whatever refs remain: later reads get
    /// [`ObjectError::Freed`](crate::ObjectError::Freed).
    pub fn free<T>(&self, refs: &[ObjectRef<T>]) {
        for r in refs {
            if let Some((id, entry)) = self.inner.objects.remove(&r.id()) {
                self.inner.forget(id, entry);
            }
        }
    }

    /// A snapshot of every object, for the state API.
    pub fn list(&self) -> Vec<ObjectInfo> {
        self.list_some(usize::MAX)
    }

    /// A snapshot of at most `limit` objects (in no particular order).
    pub fn list_some(&self, limit: usize) -> Vec<ObjectInfo> {
        self.inner
            .objects
            .iter()
            .take(limit)
            .map(|e| ObjectInfo {
                id: *e.key(),
                type_name: e.kind.type_name().to_owned(),
                size: e.size,
                state: match e.state {
                    State::Pending { .. } => "pending",
                    State::Ready(_) => "memory",
                    State::Spilled(_) => "spilled",
                    State::Failed(_) => "failed",
                    State::Remote { .. } => "remote",
                }
                .into(),
                referenced: e.handle.strong_count() > 0,
                refs: e.handle.strong_count(),
                borrowers: e
                    .borrowers
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(node, _)| *node)
                    .collect(),
                location: match &e.state {
                    State::Remote { location, .. } => location.or(e.kept_at.first().copied()),
                    _ => e.kept_at.first().copied(),
                },
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

    /// Whether a [`spill`](Self::spill) round has work: memory is over the
    /// threshold, or a put waits for more room than the budget has left.
    pub fn needs_spill(&self) -> bool {
        self.inner.needs_spill()
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
