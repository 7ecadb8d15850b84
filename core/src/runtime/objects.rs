//! Objects: `put`, `get`, `wait` and `free` on the node's store.

use std::sync::Arc;
use std::time::Duration;

use troupe_objects::{Blob, Object, ObjectError, ObjectRef, ObjectStore};

use super::Runtime;
use crate::scheduler::{Blocked, Lent};

impl Runtime {
    /// The node's object store.
    pub fn objects(&self) -> &ObjectStore {
        &self.inner.objects
    }

    /// Inside a task of this runtime that is about to wait: lend its CPUs,
    /// and, on a CPU-pool thread, let the pool start another for the job
    /// this one may be waiting for.
    fn lend_while_waiting(&self) -> Option<(Option<Lent>, Option<Blocked>)> {
        let context = crate::context::task()?;
        if context.node != self.node_id() {
            return None;
        }
        let blocked = self.inner.scheduler.blocking();
        Some((self.inner.scheduler.lend(context.task_id), blocked))
    }

    /// Stores a value (moved in, not copied) and returns its ref; the object
    /// lives until the last clone of the ref is dropped (Ray's `put`). When
    /// the store is over its memory budget, waits while spilling makes room
    /// (backpressure), and fails with `ObjectError::StoreFull` when nothing
    /// can be spilled.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = troupe_core::init(troupe_core::Config::default()).await?;
    /// let r = rt.put(vec![1.5f32; 1000]).await?;
    /// assert_eq!(rt.get(&r).await?.len(), 1000);
    /// rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn put<T: Object>(&self, value: T) -> Result<ObjectRef<T>, ObjectError> {
        self.inner.objects.put(value).await
    }

    /// [`put`](Self::put) without waiting: `ObjectError::StoreFull` when the
    /// value does not fit the budget now. For sync code that must not block.
    pub fn try_put<T: Object>(&self, value: T) -> Result<ObjectRef<T>, ObjectError> {
        self.inner.objects.try_put(value)
    }

    /// [`put`](Self::put) from sync code that may block (a sync task body,
    /// a `#[blocking]` actor method, a plain thread).
    /// On a current-thread tokio runtime, where waiting would deadlock, it
    /// does not wait (as [`try_put`](Self::try_put)).
    pub fn put_blocking<T: Object>(&self, value: T) -> Result<ObjectRef<T>, ObjectError> {
        if !crate::blocking::can_block() {
            return self.inner.objects.try_put(value);
        }
        crate::blocking::wait_for(&self.inner.handle, self.inner.objects.put(value))
            .unwrap_or_else(|| Err(self.inner.objects.full_error(0)))
    }

    /// Copies bytes into a buffer the store owns and reuses (as Ray's put
    /// copies into its shared memory), and returns the ref of the
    /// resulting [`Blob`]: large puts run at memory speed with any global
    /// allocator.
    pub async fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectRef<Blob>, ObjectError> {
        self.inner.objects.put_bytes(bytes).await
    }

    /// Reads an object, shared not copied, waiting while it is pending.
    ///
    /// Inside a task, waiting lends the task's CPUs back to the node, so
    /// tasks can wait on tasks without deadlock.
    ///
    /// An object of this node lost with the node that held its only copy
    /// is made again from its lineage (see [`reconstruct`](Self::reconstruct)).
    pub async fn get<T: Object>(&self, r: &ObjectRef<T>) -> Result<Arc<T>, ObjectError> {
        let first = match self.ready_now(r) {
            Some(ready) => ready,
            None => {
                let _lent = self.lend_while_waiting();
                self.inner.objects.get(r).await
            }
        };
        self.read_again(r, first, || async {
            let _lent = self.lend_while_waiting();
            self.inner.objects.get(r).await
        })
        .await
    }

    /// A value in memory now (not spilled: that read goes to a blocking
    /// thread), without waiting. A short sync task about to produce it, not
    /// started yet, is run here first (no wake-up of another thread).
    fn ready_now<T: Object>(&self, r: &ObjectRef<T>) -> Option<Result<Arc<T>, ObjectError>> {
        if let Some(ready) = self.inner.objects.get_if_ready(r) {
            return Some(ready);
        }
        if self.inner.scheduler.help(r.id()) {
            return self.inner.objects.get_if_ready(r);
        }
        None
    }

    /// Reads an object, waiting at most `timeout`.
    pub async fn get_timeout<T: Object>(
        &self,
        r: &ObjectRef<T>,
        timeout: Duration,
    ) -> Result<Arc<T>, ObjectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let first = match self.ready_now(r) {
            Some(ready) => ready,
            None => {
                let _lent = self.lend_while_waiting();
                self.inner.objects.get_timeout(r, Some(timeout)).await
            }
        };
        let again = self.read_again(r, first, || async {
            let _lent = self.lend_while_waiting();
            self.inner.objects.get(r).await
        });
        tokio::time::timeout_at(deadline, again)
            .await
            .unwrap_or(Err(ObjectError::Timeout {
                id: r.id(),
                after: timeout,
            }))
    }

    /// Reads many objects in order, within one optional timeout.
    pub async fn get_many<T: Object>(
        &self,
        refs: &[ObjectRef<T>],
        timeout: Option<Duration>,
    ) -> Result<Vec<Arc<T>>, ObjectError> {
        for r in refs {
            // Short tasks still queued run here rather than wake a thread.
            if !self.inner.objects.is_settled(r.id()) {
                self.inner.scheduler.help(r.id());
            }
        }
        let _lent = self.lend_while_waiting();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            let first = self.inner.objects.get_timeout(r, left).await;
            let again = self.read_again(r, first, || self.inner.objects.get(r));
            out.push(match deadline {
                None => again.await?,
                Some(deadline) => tokio::time::timeout_at(deadline, again)
                    .await
                    .unwrap_or(Err(ObjectError::Timeout {
                        id: r.id(),
                        after: timeout.unwrap_or_default(),
                    }))?,
            });
        }
        Ok(out)
    }

    /// Ray's `wait`: `(ready, not_ready)` once `num_returns` are ready or
    /// `timeout` passes, each in the order given.
    pub async fn wait<T>(
        &self,
        refs: Vec<ObjectRef<T>>,
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>) {
        let _lent = self.lend_while_waiting();
        self.inner.objects.wait(refs, num_returns, timeout).await
    }

    /// Reads an object from synchronous code that may block: a sync task
    /// body, a sync actor method, a plain thread. On a runtime worker it
    /// hands the worker's other tasks to another thread first
    /// (`block_in_place`); on a current-thread tokio runtime, where nothing
    /// could produce the object while it waits, it fails with
    /// `ObjectError::WouldDeadlock` instead.
    pub fn get_blocking<T: Object>(&self, r: &ObjectRef<T>) -> Result<Arc<T>, ObjectError> {
        if let Some(ready) = self.ready_now(r) {
            if !matches!(ready, Err(ObjectError::Lost { .. })) {
                return ready;
            }
        }
        let _lent = self.lend_while_waiting();
        let read = async {
            let first = self.inner.objects.get(r).await;
            self.read_again(r, first, || self.inner.objects.get(r))
                .await
        };
        crate::blocking::wait_for(&self.inner.handle, read)
            .unwrap_or(Err(ObjectError::WouldDeadlock { id: r.id() }))
    }

    /// Frees objects now, whatever refs remain.
    pub fn free<T>(&self, refs: &[ObjectRef<T>]) {
        self.inner.objects.free(refs)
    }
}
