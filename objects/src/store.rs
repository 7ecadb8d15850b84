//! The store: a concurrent index of objects, typed refs, pending objects,
//! and a memory budget with spilling to disk.

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::{GetSize, NodeId, ObjectError, ObjectId};

/// What can be stored: serializable (for spilling and, later, transfer),
/// sized (for the memory budget, without serializing), shareable.
/// Implemented for every such type; derive `GetSize` on your own types.
pub trait Object: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static> Object for T {}

type AnyValue = Arc<dyn Any + Send + Sync>;

/// How to turn one type's values into bytes and back, captured at `put`.
#[derive(Clone, Copy)]
struct Codec {
    encode: fn(&(dyn Any + Send + Sync)) -> Result<Vec<u8>, String>,
    decode: fn(&[u8]) -> Result<AnyValue, String>,
}

fn encode<T: Object>(value: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, String> {
    let value = value
        .downcast_ref::<T>()
        .ok_or_else(|| format!("stored value is not a {}", std::any::type_name::<T>()))?;
    postcard::to_allocvec(value).map_err(|e| e.to_string())
}

fn decode<T: Object>(bytes: &[u8]) -> Result<AnyValue, String> {
    postcard::from_bytes::<T>(bytes)
        .map(|v| Arc::new(v) as AnyValue)
        .map_err(|e| e.to_string())
}

impl Codec {
    fn of<T: Object>() -> Self {
        Codec {
            encode: encode::<T>,
            decode: decode::<T>,
        }
    }
}

enum State {
    /// Woken when it settles; readers of this object wait on it alone.
    Pending(Arc<Notify>),
    Ready(AnyValue),
    Spilled(PathBuf),
    Failed(ObjectError),
}

struct Entry {
    state: State,
    size: u64,
    type_id: TypeId,
    type_name: &'static str,
    codec: Codec,
    /// Store clock at the last read, for least-recently-used spilling.
    last_used: AtomicU64,
    /// The handle every ref to this object shares; a ref decoded from bytes
    /// attaches to it, so the object still dies with its last ref.
    handle: Weak<RefHandle>,
    /// Its value holds refs: never spilled (dropping the value from memory
    /// would drop those refs and free what they point to).
    pinned: bool,
}

thread_local! {
    /// Set when an `ObjectRef` is encoded: the value being spilled holds refs.
    static ENCODED_A_REF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The store that refs decoded on this thread attach to.
    static DECODING_FOR: std::cell::RefCell<Weak<Inner>> = const { std::cell::RefCell::new(Weak::new()) };
}

impl<T> Serialize for ObjectRef<T> {
    /// A ref encodes as its id. Values that hold refs are kept in memory,
    /// never spilled; the wire (cluster) will carry ids this way.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ENCODED_A_REF.with(|f| f.set(true));
        self.handle.id.serialize(serializer)
    }
}

impl<'de, T> serde::Deserialize<'de> for ObjectRef<T> {
    /// Decodes an id into a ref of the store that is decoding (refs cannot
    /// be decoded elsewhere). A ref to an object that is gone reads as
    /// [`ObjectError::Freed`].
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = ObjectId::deserialize(deserializer)?;
        let store = DECODING_FOR.with(|s| s.borrow().upgrade()).ok_or_else(|| {
            <D::Error as serde::de::Error>::custom(
                "an ObjectRef can only be decoded by a Troupe object store",
            )
        })?;
        Ok(store.attach(id))
    }
}

impl<T> GetSize for ObjectRef<T> {}

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
}

impl Default for StoreConfig {
    fn default() -> Self {
        let total = total_memory().unwrap_or(8 << 30);
        Self {
            memory_budget: total / 10 * 3,
            spill_threshold: 0.8,
            spill_dir: std::env::temp_dir().join(format!("troupe-spill-{}", std::process::id())),
        }
    }
}

fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

struct Inner {
    node: NodeId,
    next: AtomicU64,
    objects: DashMap<ObjectId, Entry>,
    in_memory: AtomicU64,
    clock: AtomicU64,
    config: StoreConfig,
    /// Bumped whenever a pending object completes: `get` and `wait` sleep on it.
    completions: watch::Sender<u64>,
    /// Woken when memory use crosses the spill threshold.
    spill_wanted: Notify,
}

/// The object store of one node. Cheap to clone.
///
/// ```
/// use troupe_objects::{ObjectStore, StoreConfig};
/// # #[tokio::main] async fn main() -> Result<(), troupe_objects::ObjectError> {
/// let store = ObjectStore::new(StoreConfig::default());
/// let r = store.put(vec![1u32, 2, 3])?;
/// let v = store.get(&r).await?;          // an Arc: no copy
/// assert_eq!(*v, vec![1, 2, 3]);
/// drop(r);                                // last ref: the object is freed
/// assert_eq!(store.len(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<Inner>,
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

/// A typed reference to an object. Cloning it is cheap; when the last clone
/// is dropped, the object is freed.
pub struct ObjectRef<T> {
    handle: Arc<RefHandle>,
    _type: PhantomData<fn() -> T>,
}

struct RefHandle {
    id: ObjectId,
    // Weak: a stored value may hold refs; a strong pointer would be a cycle.
    store: Weak<Inner>,
}

impl Drop for RefHandle {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store.remove(self.id);
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

/// A ref whose value type is known only at run time (an object reached by
/// name, or over the wire). It keeps the object alive like any ref.
#[derive(Clone)]
pub struct AnyObjectRef {
    handle: Arc<RefHandle>,
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

/// Completes a pending object exactly once. Dropping it without completing
/// fails the object with [`ObjectError::ProducerDropped`], so no reader hangs.
pub struct Completer<T> {
    id: ObjectId,
    store: Weak<Inner>,
    done: bool,
    _type: PhantomData<fn(T)>,
}

impl<T: Object> Completer<T> {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Stores the value. Fails (and fails the object) if it is larger than
    /// the whole budget.
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
            store.settle(self.id, State::Failed(err.clone()), 0);
            return Err(err);
        }
        store.settle(self.id, State::Ready(Arc::new(value)), size);
        Ok(())
    }

    /// Fails the object; readers get [`ObjectError::Failed`] with `cause`.
    pub fn fail(mut self, cause: Arc<dyn std::error::Error + Send + Sync>) {
        self.done = true;
        if let Some(store) = self.store.upgrade() {
            let id = self.id;
            store.settle(id, State::Failed(ObjectError::Failed { id, cause }), 0);
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(store) = self.store.upgrade() {
                let id = self.id;
                store.settle(id, State::Failed(ObjectError::ProducerDropped(id)), 0);
            }
        }
    }
}

/// What one spill pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpillReport {
    /// Objects written to disk.
    pub objects: usize,
    /// Their bytes (in-memory size).
    pub bytes: u64,
}

impl Inner {
    /// A ref to `id` sharing the live handle, or a detached one (reading
    /// `Freed`) if the object is gone.
    fn attach<T>(self: &Arc<Self>, id: ObjectId) -> ObjectRef<T> {
        let live = self.objects.get(&id).and_then(|e| e.handle.upgrade());
        let handle = live.unwrap_or_else(|| {
            Arc::new(RefHandle {
                id,
                store: Weak::new(),
            })
        });
        ObjectRef {
            handle,
            _type: PhantomData,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Spilled files die with their store.
        for entry in self.objects.iter() {
            if let State::Spilled(path) = &entry.state {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Inner {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn threshold(&self) -> u64 {
        (self.config.memory_budget as f64 * self.config.spill_threshold) as u64
    }

    fn account(&self, size: u64) {
        let now = self.in_memory.fetch_add(size, Ordering::AcqRel) + size;
        metrics::gauge!("troupe_object_store_memory_bytes").set(now as f64);
        if now > self.threshold() {
            self.spill_wanted.notify_one();
        }
    }

    fn unaccount(&self, size: u64) {
        let now = self.in_memory.fetch_sub(size, Ordering::AcqRel) - size;
        metrics::gauge!("troupe_object_store_memory_bytes").set(now as f64);
    }

    /// A pending object got its value or its error.
    fn settle(&self, id: ObjectId, state: State, size: u64) {
        let mut settled = false;
        if let Some(mut entry) = self.objects.get_mut(&id) {
            if let State::Pending(notify) = &entry.state {
                let notify = notify.clone();
                if matches!(state, State::Ready(_)) {
                    entry.size = size;
                    entry.last_used.store(self.tick(), Ordering::Relaxed);
                }
                entry.state = state;
                settled = true;
                notify.notify_waiters();
            }
        }
        if settled && size > 0 {
            self.account(size);
        }
        self.completions.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn remove(&self, id: ObjectId) {
        if let Some((_, entry)) = self.objects.remove(&id) {
            match entry.state {
                State::Ready(_) => self.unaccount(entry.size),
                State::Spilled(path) => {
                    if let Err(err) = std::fs::remove_file(&path) {
                        tracing::warn!(%id, ?path, %err, "could not delete a spilled object");
                    }
                }
                State::Pending(notify) => notify.notify_waiters(),
                State::Failed(_) => {}
            }
        }
    }
}

impl ObjectStore {
    /// A store for a new node.
    pub fn new(config: StoreConfig) -> Self {
        Self::with_node(NodeId::random(), config)
    }

    /// A store whose ids carry `node`.
    pub fn with_node(node: NodeId, config: StoreConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                node,
                next: AtomicU64::new(0),
                objects: DashMap::new(),
                in_memory: AtomicU64::new(0),
                clock: AtomicU64::new(0),
                config,
                completions: watch::Sender::new(0),
                spill_wanted: Notify::new(),
            }),
        }
    }

    /// The node whose ids this store hands out.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// Its settings.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Objects held (in memory, spilled, pending or failed).
    pub fn len(&self) -> usize {
        self.inner.objects.len()
    }

    /// Whether it holds no object.
    pub fn is_empty(&self) -> bool {
        self.inner.objects.is_empty()
    }

    /// Bytes of object values held in memory.
    pub fn in_memory_bytes(&self) -> u64 {
        self.inner.in_memory.load(Ordering::Acquire)
    }

    fn new_ref<T>(&self, mut entry: Entry) -> ObjectRef<T> {
        let id = ObjectId {
            node: self.inner.node,
            seq: self.inner.next.fetch_add(1, Ordering::Relaxed),
        };
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

    /// Stores a value and returns its ref. The value is moved in, not copied
    /// or encoded: reads in this process share it.
    pub fn put<T: Object>(&self, value: T) -> Result<ObjectRef<T>, ObjectError> {
        let size = value.get_size() as u64;
        if size > self.inner.config.memory_budget {
            return Err(ObjectError::TooLarge {
                size,
                budget: self.inner.config.memory_budget,
            });
        }
        let r = self.new_ref(Entry {
            state: State::Ready(Arc::new(value)),
            size,
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            codec: Codec::of::<T>(),
            last_used: AtomicU64::new(self.inner.tick()),
            handle: Weak::new(),
            pinned: false,
        });
        self.inner.account(size);
        metrics::counter!("troupe_object_store_put_bytes_total").increment(size);
        Ok(r)
    }

    /// A ref to an object that does not exist yet, and the one-shot
    /// [`Completer`] that will give it its value or its error.
    pub fn pending<T: Object>(&self) -> (ObjectRef<T>, Completer<T>) {
        let r = self.new_ref(Entry {
            state: State::Pending(Arc::new(Notify::new())),
            size: 0,
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            codec: Codec::of::<T>(),
            last_used: AtomicU64::new(0),
            handle: Weak::new(),
            pinned: false,
        });
        let completer = Completer {
            id: r.id(),
            store: Arc::downgrade(&self.inner),
            done: false,
            _type: PhantomData,
        };
        (r, completer)
    }

    /// Reads an object now: `None` while it is pending. In-memory objects
    /// are shared, never copied; a spilled one is read back from disk.
    pub fn try_get<T: Object>(&self, r: &ObjectRef<T>) -> Option<Result<Arc<T>, ObjectError>> {
        let id = r.id();
        let spilled = {
            let Some(entry) = self.inner.objects.get(&id) else {
                return Some(Err(ObjectError::Freed(id)));
            };
            if entry.type_id != TypeId::of::<T>() {
                return Some(Err(ObjectError::WrongType {
                    id,
                    expected: std::any::type_name::<T>(),
                    actual: entry.type_name,
                }));
            }
            match &entry.state {
                State::Pending(_) => return None,
                State::Failed(err) => return Some(Err(err.clone())),
                State::Ready(value) => {
                    entry
                        .last_used
                        .store(self.inner.clock.load(Ordering::Relaxed), Ordering::Relaxed);
                    return Some(value.clone().downcast::<T>().map_err(|_| {
                        ObjectError::WrongType {
                            id,
                            expected: std::any::type_name::<T>(),
                            actual: entry.type_name,
                        }
                    }));
                }
                State::Spilled(path) => (path.clone(), entry.codec, entry.size),
            }
        };
        Some(self.restore::<T>(id, spilled))
    }

    /// Reads a spilled object back into memory (and deletes its file).
    fn restore<T: Object>(
        &self,
        id: ObjectId,
        (path, codec, size): (PathBuf, Codec, u64),
    ) -> Result<Arc<T>, ObjectError> {
        let failed = |cause: String| ObjectError::Spill {
            op: "restoring",
            id,
            path: path.clone(),
            cause,
        };
        let bytes = std::fs::read(&path).map_err(|e| failed(e.to_string()))?;
        DECODING_FOR.with(|s| *s.borrow_mut() = Arc::downgrade(&self.inner));
        let decoded = (codec.decode)(&bytes);
        DECODING_FOR.with(|s| *s.borrow_mut() = Weak::new());
        let value = decoded.map_err(failed)?;
        let mut restored = false;
        let value = match self.inner.objects.get_mut(&id) {
            Some(mut entry) => match &entry.state {
                // Another reader restored it first: share theirs.
                State::Ready(theirs) => theirs.clone(),
                State::Spilled(_) => {
                    entry.state = State::Ready(value.clone());
                    entry.last_used.store(self.inner.tick(), Ordering::Relaxed);
                    restored = true;
                    value
                }
                _ => value,
            },
            None => return Err(ObjectError::Freed(id)),
        };
        if restored {
            let _ = std::fs::remove_file(&path);
            self.inner.account(size);
            metrics::counter!("troupe_object_store_restored_bytes_total").increment(size);
        }
        value.downcast::<T>().map_err(|_| ObjectError::WrongType {
            id,
            expected: std::any::type_name::<T>(),
            actual: "another type",
        })
    }

    /// Reads an object, waiting while it is pending.
    pub async fn get<T: Object>(&self, r: &ObjectRef<T>) -> Result<Arc<T>, ObjectError> {
        self.get_timeout(r, None).await
    }

    /// Reads an object, waiting at most `timeout` while it is pending.
    pub async fn get_timeout<T: Object>(
        &self,
        r: &ObjectRef<T>,
        timeout: Option<Duration>,
    ) -> Result<Arc<T>, ObjectError> {
        if let Some(result) = self.try_get(r) {
            return result;
        }
        let ready = self.ready(r.id());
        let in_time = match timeout {
            Some(t) => tokio::time::timeout(t, ready).await.is_ok(),
            None => {
                ready.await;
                true
            }
        };
        if !in_time {
            return Err(ObjectError::Timeout {
                id: r.id(),
                after: timeout.unwrap_or_default(),
            });
        }
        self.try_get(r)
            .unwrap_or(Err(ObjectError::ProducerDropped(r.id())))
    }

    /// Resolves once the object is no longer pending (it holds a value or
    /// an error, or was freed). Wakes only for this object.
    pub async fn ready(&self, id: ObjectId) {
        loop {
            let notify = match self.inner.objects.get(&id) {
                Some(entry) => match &entry.state {
                    State::Pending(notify) => notify.clone(),
                    _ => return,
                },
                None => return,
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before the re-check: a settle in between is seen.
            notified.as_mut().enable();
            if self.is_settled(id) {
                return;
            }
            notified.await;
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
    /// name, later the wire) come back to life.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, postcard::Error> {
        let previous = DECODING_FOR.with(|s| s.replace(Arc::downgrade(&self.inner)));
        let decoded = postcard::from_bytes::<T>(bytes);
        DECODING_FOR.with(|s| *s.borrow_mut() = previous);
        decoded
    }

    /// Whether the object holds a value or an error (or is gone): anything
    /// but pending.
    pub fn is_settled(&self, id: ObjectId) -> bool {
        self.inner
            .objects
            .get(&id)
            .is_none_or(|e| !matches!(e.state, State::Pending(_)))
    }

    /// Waits until `num_returns` of `refs` are ready (holding a value or an
    /// error) or `timeout` passes, and returns `(ready, not_ready)`, each in
    /// the order given (Ray's `wait`).
    pub async fn wait<T>(
        &self,
        refs: Vec<ObjectRef<T>>,
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
        let want = num_returns.min(refs.len());
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut completions = self.inner.completions.subscribe();
        loop {
            let ready = refs.iter().filter(|r| self.is_settled(r.id())).count();
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
            if ready.len() < want && self.is_settled(r.id()) {
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
            self.inner.remove(r.id());
        }
    }

    /// Resolves when memory use has crossed the spill threshold.
    pub async fn spill_wanted(&self) {
        self.inner.spill_wanted.notified().await
    }

    /// Whether memory use is above the spill threshold.
    pub fn over_threshold(&self) -> bool {
        self.in_memory_bytes() > self.inner.threshold()
    }

    /// Writes least-recently-used objects to the spill directory until
    /// memory use is under the threshold. Blocking file I/O: call it from a
    /// blocking thread. On an I/O error (a full disk) it stops and returns
    /// the error; every object is still readable, in memory or on disk.
    pub fn spill(&self) -> Result<SpillReport, ObjectError> {
        let threshold = self.inner.threshold();
        let mut report = SpillReport::default();
        if self.in_memory_bytes() <= threshold {
            return Ok(report);
        }
        let mut victims: Vec<(u64, ObjectId)> = self
            .inner
            .objects
            .iter()
            .filter(|e| matches!(e.state, State::Ready(_)) && e.size > 0 && !e.pinned)
            .map(|e| (e.last_used.load(Ordering::Relaxed), *e.key()))
            .collect();
        victims.sort_unstable();
        let dir = &self.inner.config.spill_dir;
        for (_, id) in victims {
            if self.in_memory_bytes() <= threshold {
                break;
            }
            let path = dir.join(format!("{id}.obj"));
            let failed = |cause: String| ObjectError::Spill {
                op: "spilling",
                id,
                path: path.clone(),
                cause,
            };
            // Encode outside the map's lock; the value is shared, not moved.
            let (value, codec, size) = match self.inner.objects.get(&id) {
                Some(e) => match &e.state {
                    State::Ready(v) => (v.clone(), e.codec, e.size),
                    _ => continue,
                },
                None => continue,
            };
            ENCODED_A_REF.with(|f| f.set(false));
            let bytes = (codec.encode)(&*value).map_err(failed)?;
            if ENCODED_A_REF.with(|f| f.replace(false)) {
                // It holds refs: keep it in memory for good.
                if let Some(mut entry) = self.inner.objects.get_mut(&id) {
                    entry.pinned = true;
                }
                continue;
            }
            std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            if let Err(err) =
                std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, &path))
            {
                let _ = std::fs::remove_file(&tmp);
                tracing::error!(%id, ?path, %err, "spilling failed; the object stays in memory");
                return Err(failed(err.to_string()));
            }
            let mut spilled = false;
            if let Some(mut entry) = self.inner.objects.get_mut(&id) {
                // Only if it is still the same in-memory value.
                if matches!(&entry.state, State::Ready(v) if Arc::ptr_eq(v, &value)) {
                    entry.state = State::Spilled(path.clone());
                    spilled = true;
                }
            }
            if spilled {
                self.inner.unaccount(size);
                report.objects += 1;
                report.bytes += size;
                metrics::counter!("troupe_object_store_spilled_bytes_total").increment(size);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        if report.objects > 0 {
            tracing::debug!(
                objects = report.objects,
                bytes = report.bytes,
                "spilled objects"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
impl ObjectStore {
    /// Test-only: decode a ref as this store would while restoring.
    pub(crate) fn decode_ref_for_test<T>(
        &self,
        bytes: &[u8],
    ) -> Result<ObjectRef<T>, postcard::Error> {
        DECODING_FOR.with(|s| *s.borrow_mut() = Arc::downgrade(&self.inner));
        let decoded = postcard::from_bytes::<ObjectRef<T>>(bytes);
        DECODING_FOR.with(|s| *s.borrow_mut() = Weak::new());
        decoded
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
