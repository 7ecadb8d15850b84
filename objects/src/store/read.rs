//! Reading objects: now, waiting, many at once, `wait`; fetching remote
//! ones through the directory; exporting one to send it.

use std::any::TypeId;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::{Inner, Kind, ObjectStore, State};
use crate::codec::{DecodeScope, EncodeScope};
use crate::directory::Fetched;
use crate::{AnyObjectRef, Blob, NodeId, Object, ObjectError, ObjectId, ObjectRef};

impl ObjectStore {
    /// What a read of a missing id means: freed if this node made it,
    /// unknown otherwise.
    pub(super) fn missing(&self, id: ObjectId) -> ObjectError {
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
                self.start_fetch(r.id(), Kind::of::<T>());
                None
            }
            // The last fetch failed: this read says why (an async read
            // fetches again).
            Peek::RemoteFailed(err) => Some(Err(err)),
        }
    }

    /// Reads an object if that needs neither waiting nor the disk: its
    /// value or error when in memory (or gone), `None` otherwise.
    pub fn get_if_ready<T: Object>(&self, r: &ObjectRef<T>) -> Option<Result<Arc<T>, ObjectError>> {
        match self.peek::<T>(r.id()) {
            Peek::Value(v) => Some(Ok(v)),
            Peek::Error(e) => Some(Err(e)),
            Peek::Wait(_) | Peek::Spilled | Peek::Remote | Peek::RemoteFailed(_) => None,
        }
    }

    fn restore_typed<T: Object>(&self, id: ObjectId) -> Result<Arc<T>, ObjectError> {
        let value = self.restore(id)?;
        value.downcast::<T>().map_err(|_| {
            let actual = self
                .inner
                .objects
                .get(&id)
                .map_or("an unknown type", |e| e.kind.type_name());
            Self::wrong_type(id, std::any::type_name::<T>(), actual)
        })
    }

    fn peek<T: Object>(&self, id: ObjectId) -> Peek<T> {
        let Some(entry) = self.inner.objects.get(&id) else {
            return Peek::Error(self.missing(id));
        };
        if !matches!(entry.state, State::Remote { .. })
            && !entry.kind.is_untyped()
            && entry.kind.type_id() != TypeId::of::<T>()
        {
            return Peek::Error(Self::wrong_type(
                id,
                std::any::type_name::<T>(),
                entry.kind.type_name(),
            ));
        }
        match &entry.state {
            State::Pending { notify, .. } => Peek::Wait(notify.clone()),
            State::Failed(err) => Peek::Error((**err).clone()),
            State::Ready(value) => {
                entry
                    .last_used
                    .store(self.inner.clock.load(Ordering::Relaxed), Ordering::Relaxed);
                match value.clone().downcast::<T>() {
                    Ok(v) => Peek::Value(v),
                    Err(_) => Peek::Error(Self::wrong_type(
                        id,
                        std::any::type_name::<T>(),
                        entry.kind.type_name(),
                    )),
                }
            }
            State::Spilled(_) => Peek::Spilled,
            State::Remote { failed: None, .. } => Peek::Remote,
            State::Remote {
                failed: Some(err), ..
            } => Peek::RemoteFailed((**err).clone()),
        }
    }

    /// An object's bytes, to send to another node: a byte object's buffer
    /// as it is (no copy), anything else encoded; with the refs its value
    /// holds (each once, held: keep them until the bytes are sent). Waits
    /// while it is pending.
    pub async fn export(&self, id: ObjectId) -> Result<(Blob, Vec<AnyObjectRef>), ObjectError> {
        loop {
            let probe = {
                let Some(entry) = self.inner.objects.get(&id) else {
                    return Err(self.missing(id));
                };
                match &entry.state {
                    // Another node's object this node is fetching: not
                    // held here (serving it would wait on that fetch,
                    // which may wait on the asker).
                    State::Pending { fetch, .. } if *fetch != 0 && id.node != self.inner.node => {
                        return Err(ObjectError::Unknown(id))
                    }
                    State::Pending { notify, .. } => Err(notify.clone()),
                    State::Failed(err) => return Err((**err).clone()),
                    State::Remote { .. } => return Err(ObjectError::Unknown(id)),
                    State::Ready(value) => {
                        Ok(Some((value.clone(), entry.kind.codec(), entry.size)))
                    }
                    State::Spilled(_) => Ok(None),
                }
            };
            let (value, codec, size) = match probe {
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
                    let (codec, size) = self
                        .inner
                        .objects
                        .get(&id)
                        .map(|e| (e.kind.codec(), e.size))
                        .ok_or_else(|| self.missing(id))?;
                    (value, codec, size)
                }
            };
            if let Some(blob) = value.downcast_ref::<Blob>() {
                return Ok((blob.clone(), Vec::new())); // a byte object is sent as it is
            }
            // A byte vector too: shared, not copied (1 GB copied per pull,
            // into fresh pages, was most of a cross-node read).
            let value = match value.downcast::<Vec<u8>>() {
                Ok(bytes) => return Ok((Blob::shared(bytes), Vec::new())),
                Err(value) => value,
            };
            if let Some(bytes) = codec.raw.and_then(|raw| (raw.bytes)(&*value)) {
                return Ok((Blob::from(bytes.to_vec()), Vec::new()));
            }
            let encode = move || {
                let scope = EncodeScope::enter();
                let mut out = Vec::new();
                (codec.encode)(&*value, &mut out)
                    .map_err(|reason| ObjectError::Fetch { id, reason })?;
                Ok((Blob::from(out), scope.refs()))
            };
            // Encoding a large value takes long enough to hold up an async
            // worker (a node's I/O thread, serving it): a blocking thread.
            return if size >= LARGE_DECODE as u64 {
                blocking(id, encode).await
            } else {
                encode()
            };
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
        // A fetch that failed before this read began is tried again; one
        // this read waited for gives this read its error.
        let mut waited = false;
        loop {
            let notify = match self.peek::<T>(id) {
                Peek::Value(v) => return Ok(v),
                Peek::Error(e) => return Err(e),
                Peek::Spilled => {
                    let store = self.clone();
                    return blocking(id, move || store.restore_typed::<T>(id)).await;
                }
                Peek::RemoteFailed(e) if waited => return Err(e),
                Peek::Remote | Peek::RemoteFailed(_) => {
                    if !self.start_fetch(id, Kind::of::<T>()) {
                        return Err(ObjectError::Fetch {
                            id,
                            reason: "it could not be fetched (no tokio runtime, or its type is unknown here)".to_owned(),
                        });
                    }
                    continue;
                }
                Peek::Wait(notify) => notify,
            };
            waited = true;
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
                    State::Pending { notify, .. } => notify.clone(),
                    State::Remote { failed: None, .. } => {
                        let kind = entry.kind;
                        drop(entry);
                        if !self.start_fetch(id, kind) {
                            self.inner.cannot_fetch(id);
                            return;
                        }
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

    /// Resolves once the object is made: it holds a value or an error
    /// here, lives on another node, or is gone. Fetches nothing (a task
    /// whose arguments are made may still run on another node).
    pub async fn made(&self, id: ObjectId) {
        loop {
            let notify = match self.inner.objects.get(&id) {
                Some(entry) => match &entry.state {
                    State::Pending { notify, fetch: 0 } => notify.clone(),
                    _ => return,
                },
                None => return,
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.availability(id) != Availability::Pending {
                return;
            }
            notified.await;
        }
    }

    /// Turns a remote entry into a pending one and fetches it in the
    /// background, as `kind` (or the type the entry knows), once whatever
    /// the number of readers. False if it cannot be fetched (its type is
    /// unknown here, or there is no tokio runtime): the entry stays remote.
    /// A fetch that fails for good (the object is lost, or failed where it
    /// was made) settles it failed; one that fails on the way (a dropped
    /// connection) leaves it remote, the error kept for the readers that
    /// waited: the next read fetches again.
    fn start_fetch(&self, id: ObjectId, kind: Kind) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let Some(directory) = self.inner.directory.get().cloned() else {
            self.inner
                .settle_remote(id, State::failed(ObjectError::Unknown(id)));
            return true;
        };
        let (token, kind, location) = {
            let Some(mut entry) = self.inner.objects.get_mut(&id) else {
                return true;
            };
            let State::Remote { location, .. } = entry.state else {
                return true; // fetching (or settled) already
            };
            if entry.kind.is_untyped() {
                if kind.is_untyped() {
                    return false;
                }
                entry.kind = kind;
            }
            let token = self.inner.fetches.fetch_add(1, Ordering::Relaxed);
            entry.state = State::Pending {
                notify: Arc::new(Notify::new()),
                fetch: token,
            };
            (token, entry.kind, location)
        };
        if let Some(holder) = location {
            self.inner.fetching_from.insert(id, (token, holder));
        }
        let store = self.clone();
        let fetch = async move {
            let fetched = directory.fetch(id, location).await;
            store
                .inner
                .fetching_from
                .remove_if(&id, |_, (fetch, _)| *fetch == token);
            let result = match fetched {
                Ok(fetched) => store.materialize(id, kind, fetched).await,
                Err(err) => Err(err),
            };
            match result {
                Ok((value, size)) => store
                    .inner
                    .settle_from(id, token, State::Ready(value), size),
                Err(err) if fetch_may_succeed_later(&err) => {
                    tracing::debug!(object = %id, %err, "fetch failed; the next read tries again");
                    store.inner.settle_from(
                        id,
                        token,
                        State::Remote {
                            location,
                            failed: Some(Box::new(err)),
                        },
                        0,
                    )
                }
                Err(err) => store.inner.settle_from(id, token, State::failed(err), 0),
            }
        };
        runtime.spawn(fetch);
        true
    }

    /// A fetched object's value and size, decoded in this store (its refs
    /// held first). Decoding a large object takes long enough to hold up an
    /// async worker (and the tasks queued behind it: a node's heartbeats):
    /// it runs on a blocking thread.
    pub(super) async fn materialize(
        &self,
        id: ObjectId,
        kind: Kind,
        fetched: Fetched,
    ) -> Result<(crate::codec::AnyValue, u64), ObjectError> {
        let large = fetched.bytes.len() >= LARGE_DECODE;
        let store = self.clone();
        let decode = move || {
            let held = store.hold(&fetched.refs);
            let blob = fetched.bytes;
            let value = match kind.codec().raw {
                Some(raw) => (raw.from)(blob),
                None => {
                    let _scope = DecodeScope::enter(&store.inner);
                    (kind.codec().decode)(&blob)
                        .map_err(|reason| ObjectError::Fetch { id, reason })?
                }
            };
            drop(held);
            let size = (kind.codec().size)(&*value);
            Ok((value, size))
        };
        if large {
            blocking(id, decode).await
        } else {
            decode()
        }
    }

    /// Fetches a copy of `id`, an object failed here (lost with the node
    /// that held it), from `node`, which may hold one, and keeps it: the
    /// entry stays failed while the copy travels, and holds the value once
    /// it is in. An error says why not (the entry is unchanged).
    pub async fn fetch_copy(&self, id: ObjectId, node: NodeId) -> Result<(), ObjectError> {
        let Some(directory) = self.inner.directory.get().cloned() else {
            return Err(ObjectError::Unknown(id));
        };
        let kind = match self.inner.objects.get(&id) {
            Some(entry) if matches!(entry.state, State::Failed(_)) => entry.kind,
            Some(_) => return Ok(()), // not failed (any more)
            None => return Err(self.missing(id)),
        };
        if kind.is_untyped() {
            return Err(ObjectError::Fetch {
                id,
                reason: "its type is not known on this node".to_owned(),
            });
        }
        let fetched = directory.fetch(id, Some(node)).await?;
        let (value, size) = self.materialize(id, kind, fetched).await?;
        let installed = match self.inner.objects.get_mut(&id) {
            Some(mut entry) if matches!(entry.state, State::Failed(_)) => {
                entry.state = State::Ready(value);
                entry.size = size;
                entry.last_used.store(self.inner.tick(), Ordering::Relaxed);
                self.inner.account(size);
                true
            }
            _ => false,
        };
        if installed {
            self.inner
                .completions
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
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
        self.inner.objects.get(&id).is_none_or(|e| {
            !matches!(
                e.state,
                State::Pending { .. } | State::Remote { failed: None, .. }
            )
        })
    }

    /// Where an object stands for a task that takes it as an argument:
    /// still being made, made on another node (or being fetched), or
    /// readable here now (a value, an error, or gone: a read does not
    /// wait).
    pub fn availability(&self, id: ObjectId) -> Availability {
        match self.inner.objects.get(&id) {
            Some(e) => match e.state {
                State::Pending { fetch: 0, .. } => Availability::Pending,
                State::Pending { .. } | State::Remote { failed: None, .. } => {
                    Availability::Elsewhere
                }
                _ => Availability::Here,
            },
            None => Availability::Here,
        }
    }

    /// Whether `wait` counts the object as ready: settled, and known (an
    /// unknown id never becomes ready).
    fn is_ready_for_wait(&self, id: ObjectId) -> bool {
        let kind = match self.inner.objects.get(&id) {
            Some(e) => match e.state {
                State::Pending { .. } => return false,
                State::Remote { failed: None, .. } => e.kind,
                _ => return true,
            },
            None => return matches!(self.missing(id), ObjectError::Freed(_)),
        };
        // Ready once fetched; start the fetch now.
        self.start_fetch(id, kind);
        false
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
        let mut flags: Vec<bool>;
        loop {
            flags = refs
                .iter()
                .map(|r| self.is_ready_for_wait(r.id()))
                .collect();
            if flags.iter().filter(|ready| **ready).count() >= want {
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
        // Ray returns at most num_returns as ready, as of the last check.
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        for (r, is_ready) in refs.into_iter().zip(flags) {
            if ready.len() < want && is_ready {
                ready.push(r);
            } else {
                not_ready.push(r);
            }
        }
        (ready, not_ready)
    }
}

impl Inner {
    /// A remote entry that no fetch can start for (its type is not known
    /// here): readers are told so instead of waiting.
    fn cannot_fetch(&self, id: ObjectId) {
        if let Some(mut entry) = self.objects.get_mut(&id) {
            if let State::Remote { failed, .. } = &mut entry.state {
                *failed = Some(Box::new(ObjectError::Fetch {
                    id,
                    reason: "its type is not known on this node: read it through a typed ref"
                        .to_owned(),
                }));
            }
        }
    }

    /// Settles an entry that may be remote (not pending): a lost or unknown
    /// remote object.
    pub(super) fn settle_remote(&self, id: ObjectId, state: State) {
        if let Some(mut entry) = self.objects.get_mut(&id) {
            match entry.state {
                State::Remote { .. } => entry.state = state,
                // Being fetched from where it was lost: the fetch ends too.
                State::Pending { fetch, .. } if fetch != 0 => {
                    drop(entry);
                    self.settle_from(id, fetch, state, 0);
                    return;
                }
                _ => return,
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
    /// Remote, and the last fetch failed with this.
    RemoteFailed(ObjectError),
}

/// Where an object stands for a task that takes it as an argument
/// ([`ObjectStore::availability`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Its producer has not made it yet.
    Pending,
    /// Made, on another node (fetched when read here).
    Elsewhere,
    /// A read here does not wait: a value, an error, or gone.
    Here,
}

/// Whether a fetch that failed with `err` may succeed if tried again (a
/// connection dropped, a holder slow to answer), rather than never (the
/// object is lost, or failed where it was made).
fn fetch_may_succeed_later(err: &ObjectError) -> bool {
    matches!(err, ObjectError::Fetch { .. } | ObjectError::Timeout { .. })
}

/// Runs blocking file I/O off the async workers when there are any.
/// Fetched objects at least this large are decoded on a blocking thread.
const LARGE_DECODE: usize = 1 << 20;

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
