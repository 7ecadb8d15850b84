//! Making lost objects again: a read of an object this node owns whose
//! copy died with its node first looks for another copy (on a node that
//! borrows it and may have read it), then runs its task again from its
//! lineage (its lost arguments first), within the task's retries.

use std::sync::Arc;

use futures::future::BoxFuture;
use tracing::Instrument;
use troupe_objects::{ObjectError, ObjectId, ObjectRef};

use super::Runtime;
use crate::lineage::Start;
use crate::spec::{TaskArgs, TaskSpec};

/// How many times one recovery makes an object again that keeps being lost
/// (each a task attempt, within its `max_retries`).
const MAX_RECOVERY_ROUNDS: usize = 8;

impl Runtime {
    /// Makes `id` again if it is an object of this node lost with the node
    /// that held its copy, and resolves once it is here again or made again
    /// (or could not be: the error says why, and the object keeps that
    /// error). A copy another node read is fetched if there is one; else
    /// the task that made it runs again (within its `max_retries`; each
    /// reconstruction spends an attempt), its own lost arguments first;
    /// concurrent calls share one reconstruction. Does nothing for any other
    /// object. Reads of this node's objects call it; a cluster calls it
    /// when another node asks where a lost object is.
    pub async fn reconstruct(&self, id: ObjectId) -> Result<(), ObjectError> {
        let lost = id.node == self.node_id()
            && matches!(
                self.inner.objects.failure(id),
                Some(ObjectError::Lost { .. })
            );
        if !lost {
            return Ok(()); // the common case (every remote read asks): no lock
        }
        self.recover(id).await
    }

    /// Bytes of lineage this node keeps (specs of retriable tasks whose
    /// results live on other nodes), at most `Config::lineage_bytes`.
    pub fn lineage_bytes(&self) -> u64 {
        self.inner.scheduler.lineage().bytes()
    }

    /// Tasks whose lineage this node keeps.
    pub fn lineage_tasks(&self) -> usize {
        self.inner.scheduler.lineage().len()
    }

    /// Recovers `id`: a copy from a node that borrows it if one has it,
    /// else a reconstruction; one recovery per object, shared.
    fn recover(&self, id: ObjectId) -> BoxFuture<'static, Result<(), ObjectError>> {
        let weak = Arc::downgrade(&self.inner);
        let (running, new) = self.inner.scheduler.lineage().recovery(id, move || {
            Box::pin(async move {
                let Some(inner) = weak.upgrade() else {
                    return Err(ObjectError::ProducerDropped(id));
                };
                let rt = Runtime { inner };
                // What was made again may be lost again (its new node died
                // too): made once more, while its task has attempts left
                // (the lineage says when they are spent).
                let mut result = Err(ObjectError::ProducerDropped(id));
                for _ in 0..MAX_RECOVERY_ROUNDS {
                    result = if rt.another_copy(id).await {
                        Ok(())
                    } else {
                        rt.rebuild(id).await
                    };
                    let lost_again = matches!(result, Err(ObjectError::Lost { .. }))
                        && matches!(rt.inner.objects.failure(id), Some(ObjectError::Lost { .. }));
                    if !lost_again {
                        break;
                    }
                    metrics::counter!("troupe_lineage_lost_again_total").increment(1);
                    tracing::info!(object = %id, "made again, and lost again: once more");
                }
                rt.inner.scheduler.lineage().recovered(id);
                result
            })
        });
        if new {
            // Runs to its end whoever waits for it.
            self.inner.handle.spawn(running.clone());
        }
        Box::pin(running)
    }

    /// Fetches a copy of `id`, lost here, from a node that keeps a
    /// replica of it or is registered as borrowing it (it may have read
    /// it), trying each in turn; true if one had it (or it is not lost any
    /// more), false if none did.
    async fn another_copy(&self, id: ObjectId) -> bool {
        let store = &self.inner.objects;
        if !matches!(store.failure(id), Some(ObjectError::Lost { .. })) {
            return true; // not lost here (any more): a read will tell
        }
        let mut nodes = store.keepers(id);
        nodes.extend(store.borrowers(id));
        for node in nodes {
            match store.fetch_copy(id, node).await {
                Ok(()) => {
                    tracing::info!(object = %id, %node, "a lost object's copy found on another node");
                    metrics::counter!("troupe_lineage_copies_found_total").increment(1);
                    return true;
                }
                Err(err) => tracing::debug!(object = %id, %node, %err, "no copy there"),
            }
        }
        false
    }

    fn rebuild(&self, id: ObjectId) -> BoxFuture<'static, Result<(), ObjectError>> {
        let weak = Arc::downgrade(&self.inner);
        let start = self
            .inner
            .scheduler
            .lineage()
            .start(id, &self.inner.objects, move |spec| {
                Box::pin(async move {
                    let task = spec.id;
                    let Some(inner) = weak.upgrade() else {
                        return Err(ObjectError::ProducerDropped(id));
                    };
                    let rt = Runtime { inner };
                    let result = rt.rerun(spec).await;
                    rt.inner.scheduler.lineage().finished(task);
                    result
                })
            });
        match start {
            Start::NotLost => Box::pin(async { Ok(()) }),
            Start::Began(running) => {
                // Runs to its end whoever waits for it.
                self.inner.handle.spawn(running.clone());
                Box::pin(running)
            }
            Start::Wait(running) => Box::pin(running),
            Start::Cannot(why) => {
                let err = self.lost_because(id, why);
                Box::pin(async move { Err(err) })
            }
        }
    }

    /// `id`'s lost error with `why`, kept as the object's error.
    fn lost_because(&self, id: ObjectId, why: String) -> ObjectError {
        let node = match self.inner.objects.failure(id) {
            Some(ObjectError::Lost { node, .. }) => node,
            _ => id.node,
        };
        let err = ObjectError::Lost { id, node, why };
        self.inner.objects.replace_failure(id, err.clone());
        err
    }

    /// Runs a task again for its lost results: its lost arguments are made
    /// again first, then it is submitted under the same result ids; resolves
    /// once every result is made.
    async fn rerun(&self, spec: TaskSpec) -> Result<(), ObjectError> {
        let span = tracing::info_span!(
            "reconstruct",
            task = %spec.id,
            function = %spec.function,
            attempt = spec.attempt,
            trace = %spec.trace.root,
        );
        async move {
            metrics::counter!("troupe_lineage_reconstructions_started_total").increment(1);
            tracing::info!("making lost results again");
            let result = self.rerun_inner(spec).await;
            match &result {
                Ok(()) => {
                    metrics::counter!("troupe_lineage_reconstructions_succeeded_total")
                        .increment(1);
                    tracing::info!("lost results made again");
                }
                Err(err) => {
                    metrics::counter!("troupe_lineage_reconstructions_failed_total").increment(1);
                    tracing::warn!(%err, "lost results could not be made again");
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn rerun_inner(&self, spec: TaskSpec) -> Result<(), ObjectError> {
        let store = &self.inner.objects;
        let lost_args: Vec<ObjectId> = match &spec.args {
            TaskArgs::Encoded(args) => args
                .refs
                .iter()
                .copied()
                .filter(|arg| {
                    arg.node == self.node_id()
                        && matches!(store.failure(*arg), Some(ObjectError::Lost { .. }))
                })
                .collect(),
            TaskArgs::Local => Vec::new(),
        };
        let rebuilt = futures::future::join_all(lost_args.iter().map(|arg| self.recover(*arg)));
        for (arg, made) in lost_args.iter().zip(rebuilt.await) {
            if let Err(err) = made {
                let why = format!(
                    "{arg}, an argument of the task that made it, could not be made again: {err}"
                );
                return Err(self.fail_results(&spec.results, why));
            }
        }
        let results = spec.results.clone();
        // In a placement group: into its bundle wherever the bundle is now
        // (reserved again elsewhere when its node died), not where it was.
        let spec = TaskSpec {
            options: spec.options.out_of_bundle(),
            ..spec
        };
        let submitted = match self.submit_spec(spec) {
            Ok(submitted) => submitted,
            Err(err) => {
                let why = format!("running its task again failed: {err}");
                return Err(self.fail_results(&results, why));
            }
        };
        for id in &results {
            store.made(*id).await;
        }
        drop(submitted);
        for id in &results {
            if let Some(err) = store.failure(*id) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Every result of a task that cannot run again keeps a lost error
    /// saying why; the last is returned (a task has at least one result).
    fn fail_results(&self, results: &[ObjectId], why: String) -> ObjectError {
        let mut last = ObjectError::Fetch {
            id: results.first().copied().unwrap_or(ObjectId {
                node: self.node_id(),
                seq: 0,
            }),
            reason: why.clone(),
        };
        for id in results {
            last = self.lost_because(*id, why.clone());
        }
        last
    }

    /// Objects of this node about to be lost with their node: those its
    /// lineage can make again are awaited (tasks taking them wait).
    pub(crate) fn await_recovery_of(&self, lost: &[ObjectId]) {
        let lineage = self.inner.scheduler.lineage();
        let recoverable: Vec<ObjectId> = lost
            .iter()
            .copied()
            .filter(|id| lineage.why_not(*id).is_none())
            .collect();
        lineage.mark_lost(recoverable);
    }

    /// Explains the loss of objects of this node that cannot be made again
    /// (their node just died): their error says why from now on.
    pub(crate) fn explain_lost(&self, lost: &[ObjectId]) {
        let lineage = self.inner.scheduler.lineage();
        for id in lost {
            if let Some(why) = lineage.why_not(*id) {
                self.lost_because(*id, why);
            }
        }
    }

    /// Lets the scheduler recover lost arguments of the tasks it runs here.
    pub(crate) fn recover_lost_arguments(&self) {
        let weak = Arc::downgrade(&self.inner);
        self.inner
            .scheduler
            .lineage()
            .set_recover(Box::new(move |id| match weak.upgrade() {
                Some(inner) => Runtime { inner }.recover(id),
                None => Box::pin(async move { Err(ObjectError::ProducerDropped(id)) }),
            }));
    }

    /// A read of `r` that found it lost, after making it again if it can
    /// be (`read` reads it once more).
    pub(crate) async fn read_again<T, F>(
        &self,
        r: &ObjectRef<T>,
        first: Result<Arc<T>, ObjectError>,
        read: impl Fn() -> F,
    ) -> Result<Arc<T>, ObjectError>
    where
        F: std::future::Future<Output = Result<Arc<T>, ObjectError>>,
    {
        let mut result = first;
        // A read that finds it lost again (its new node died too) tries
        // once more.
        for _ in 0..2 {
            match result {
                Err(ObjectError::Lost { .. }) if r.id().node == self.node_id() => {
                    self.reconstruct(r.id()).await?;
                    result = read().await;
                }
                other => return other,
            }
        }
        result
    }
}
