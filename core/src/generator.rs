//! Generators: tasks that yield a stream of objects (Ray's
//! `ObjectRefGenerator`).
//!
//! The body stores each item as it yields it and sends its ref through a
//! bounded channel: when the reader falls `generator_backpressure` items
//! behind, the body waits (a sync body blocks its CPU thread, an async one
//! awaits), so a fast producer cannot fill the store with items nobody has
//! read. A reader that drops its stream releases the producer: the items it
//! would have read are dropped as they come.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use troupe_objects::{AnyObjectRef, Object, ObjectError, ObjectRef, ObjectStore};

use crate::error::Failure;

/// The refs a generator task yields, in order, as it produces them.
/// Made by `#[troupe::remote(generator)]`.
///
/// `next().await` gives `Some(Ok(ref))` per item, then `Some(Err(e))` once
/// if the task failed, then `None`.
pub struct ObjectStream<T> {
    items: mpsc::Receiver<AnyObjectRef>,
    done: ObjectRef<()>,
    store: ObjectStore,
    ended: bool,
    failure: Option<ObjectError>,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T> ObjectStream<T> {
    /// The task's completion: pass it to `Runtime::cancel` to stop the
    /// generator, or `get` it to wait for the end.
    pub fn completion(&self) -> &ObjectRef<()> {
        &self.done
    }

    /// The next item's ref, waiting for the generator to yield it.
    pub async fn next(&mut self) -> Option<Result<ObjectRef<T>, ObjectError>> {
        loop {
            // Items yielded before the end come first, always.
            if let Ok(item) = self.items.try_recv() {
                return Some(Ok(item.typed()));
            }
            if self.ended {
                return self.failure.take().map(Err);
            }
            let end = tokio::select! {
                biased;
                item = self.items.recv() => match item {
                    Some(item) => return Some(Ok(item.typed())),
                    // The sink is gone: the task has ended.
                    None => self.store.get(&self.done).await,
                },
                end = self.store.get(&self.done) => end,
            };
            self.ended = true;
            self.failure = end.err();
        }
    }

    /// Collects every item's ref (until the end, or the first error).
    pub async fn collect(mut self) -> Result<Vec<ObjectRef<T>>, ObjectError> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }
}

/// Where a generator task puts what it yields. Used by generated code.
#[doc(hidden)]
pub struct StreamSink {
    store: ObjectStore,
    items: mpsc::Sender<AnyObjectRef>,
    /// Items handed out so far: a retried attempt skips them (Ray's rule:
    /// generators are assumed deterministic).
    yielded: AtomicUsize,
}

impl StreamSink {
    /// Runs one attempt's iterator (a sync body, on a CPU thread), storing
    /// and sending each new item; waits while the reader is far behind.
    pub fn run<T: Object>(&self, items: impl Iterator<Item = T>) -> Result<(), Failure> {
        let already = self.yielded.load(Ordering::Acquire);
        for (n, item) in items.enumerate() {
            if n < already {
                continue;
            }
            let r = self.store.put_blocking(item).map_err(Failure::Store)?;
            self.yielded.store(n + 1, Ordering::Release);
            // A dropped stream only means nobody reads: keep the semantics
            // of a task (run to the end) regardless.
            let _ = self.items.blocking_send(r.erase());
        }
        Ok(())
    }

    /// Runs one attempt's async stream, storing and sending each new item;
    /// waits while the reader is far behind.
    pub async fn run_stream<T: Object>(
        &self,
        items: impl futures::Stream<Item = T>,
    ) -> Result<(), Failure> {
        use futures::StreamExt;
        let already = self.yielded.load(Ordering::Acquire);
        let mut items = std::pin::pin!(items.enumerate());
        while let Some((n, item)) = items.next().await {
            if n < already {
                continue;
            }
            let r = self.store.put(item).await.map_err(Failure::Store)?;
            self.yielded.store(n + 1, Ordering::Release);
            let _ = self.items.send(r.erase()).await;
        }
        Ok(())
    }
}

/// A sink and the receiving end of its stream.
pub(crate) fn channel(
    store: &ObjectStore,
    backpressure: u32,
) -> (Arc<StreamSink>, mpsc::Receiver<AnyObjectRef>) {
    let (tx, rx) = mpsc::channel(backpressure.max(1) as usize);
    let sink = Arc::new(StreamSink {
        store: store.clone(),
        items: tx,
        yielded: AtomicUsize::new(0),
    });
    (sink, rx)
}

/// The stream over a sink's items and the task's completion.
pub(crate) fn stream<T>(
    store: &ObjectStore,
    items: mpsc::Receiver<AnyObjectRef>,
    done: ObjectRef<()>,
) -> ObjectStream<T> {
    ObjectStream {
        items,
        done,
        store: store.clone(),
        ended: false,
        failure: None,
        _item: std::marker::PhantomData,
    }
}
