//! Reading objects: now, waiting, many at once, `wait`; fetching remote
//! ones through the directory; exporting one to send it.

use std::any::TypeId;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::{Inner, ObjectStore, State};
use crate::codec::DecodeScope;
use crate::{Blob, Object, ObjectError, ObjectId, ObjectRef};

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
        if !matches!(entry.state, State::Remote { .. }) && entry.kind.type_id() != TypeId::of::<T>()
        {
            return Peek::Error(Self::wrong_type(
                id,
                std::any::type_name::<T>(),
                entry.kind.type_name(),
            ));
        }
        match &entry.state {
            State::Pending(notify) => Peek::Wait(notify.clone()),
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
                    State::Failed(err) => return Err((**err).clone()),
                    State::Remote { .. } => return Err(ObjectError::Unknown(id)),
                    State::Ready(value) => Ok(Some((value.clone(), entry.kind.codec()))),
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
                        .map(|e| e.kind.codec())
                        .ok_or_else(|| self.missing(id))?;
                    (value, codec)
                }
            };
            if let Some(blob) = value.downcast_ref::<Blob>() {
                return Ok(blob.clone()); // a byte object is sent as it is
            }
            // A byte vector too: shared, not copied (1 GB copied per pull,
            // into fresh pages, was most of a cross-node read).
            let value = match value.downcast::<Vec<u8>>() {
                Ok(bytes) => return Ok(Blob::shared(bytes)),
                Err(value) => value,
            };
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
                .settle_remote(id, State::failed(ObjectError::Unknown(id)));
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
            let materialize = {
                let store = store.clone();
                move |blob: Blob| {
                    let value = match kind.codec().raw {
                        Some(raw) => (raw.from)(blob),
                        None => {
                            let _scope = DecodeScope::enter(&store.inner);
                            (kind.codec().decode)(&blob)
                                .map_err(|reason| ObjectError::Fetch { id, reason })?
                        }
                    };
                    let size = (kind.codec().size)(&*value);
                    Ok((value, size))
                }
            };
            // Decoding a large object takes long enough to hold up an async
            // worker (and the tasks queued behind it: a node's heartbeats):
            // it runs on a blocking thread.
            let result = match fetched {
                Ok(blob) if blob.len() >= LARGE_DECODE => {
                    blocking(id, move || materialize(blob)).await
                }
                Ok(blob) => materialize(blob),
                Err(err) => Err(err),
            };
            match result {
                Ok((value, size)) => store.inner.settle(id, State::Ready(value), size),
                Err(err) => store.inner.settle(id, State::failed(err), 0),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(fetch);
            }
            Err(_) => self.inner.settle(
                id,
                State::failed(ObjectError::Fetch {
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
        let remote = match self.inner.objects.get(&id) {
            Some(e) => match e.state {
                State::Pending(_) => return false,
                State::Remote { .. } => true,
                _ => return true,
            },
            None => return matches!(self.missing(id), ObjectError::Freed(_)),
        };
        if remote {
            // Ready once fetched; start the fetch now.
            self.start_fetch(id);
        }
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
    /// Settles an entry that may be remote (not pending): a lost or unknown
    /// remote object.
    pub(super) fn settle_remote(&self, id: ObjectId, state: State) {
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
