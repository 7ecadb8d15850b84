//! Tasks: the one submit path every kind of task goes through, and cancel.

use std::sync::Arc;

use troupe_objects::{ObjectId, ObjectRef};

use super::Runtime;
use crate::context::TraceContext;
use crate::function::{One, RemoteFn, Returns, Start, TaskBody, TypedTask};
use crate::generator::{self, ObjectStream};
use crate::scheduler::{Counts, Task};
use crate::spec::{self, FunctionName, TaskArgs, TaskOptions, TaskSpec};

impl Runtime {
    /// The spec of a task submitted here (this node owns its results).
    fn spec(
        &self,
        function: FunctionName,
        options: TaskOptions,
        deps: Vec<ObjectId>,
        results: Vec<ObjectId>,
        returns: spec::Returns,
    ) -> TaskSpec {
        let id = self.inner.ids.task();
        TaskSpec {
            id,
            trace: TraceContext::for_new_task(id),
            function,
            args: TaskArgs::Local,
            deps,
            options,
            owner: self.node_id(),
            attempt: 1,
            results,
            returns,
        }
    }

    /// The one path every task takes to the scheduler: submitted here with
    /// typed arguments, or received as a spec from another node.
    pub(crate) fn submit_task(&self, spec: TaskSpec, body: Arc<dyn TaskBody>) {
        if let crate::spec::SchedulingStrategy::PlacementGroup { group, bundle } =
            spec.options.get_scheduling_strategy()
        {
            let (group, bundle) = (*group, *bundle);
            return self.submit_in_group(spec, body, group, bundle);
        }
        let stats = self.inner.scheduler.stats_of(&spec.function);
        let task = Task::new(spec, body, stats);
        let span = tracing::trace_span!(
            "submit",
            task = %task.spec.id,
            function = %task.spec.function,
            trace = %task.spec.trace.root,
        );
        let _entered = span.enter();
        self.inner.scheduler.submit(Arc::new(task));
    }

    /// Submits a task of the remote function `F` with its arguments as
    /// typed values (nothing is encoded unless the task leaves this node)
    /// and returns its ref(s) at once. What `f::remote(..)` calls.
    #[doc(hidden)]
    pub fn submit_fn<F: RemoteFn>(
        &self,
        options: TaskOptions,
        args: F::Args,
    ) -> <F::Returns as Returns>::Refs {
        let store = &self.inner.objects;
        let (refs, completers, results) = F::Returns::pending(store);
        let deps = F::deps(&args);
        let spec = self.spec(F::NAME.into(), options, deps, results, F::Returns::KIND);
        let start = Start {
            store: store.clone(),
            sink: None,
        };
        self.submit_task(spec, Arc::new(TypedTask::<F>::new(args, completers, start)));
        refs
    }

    /// Submits a generator task: its items arrive as they are yielded.
    #[doc(hidden)]
    pub fn submit_generator<F: RemoteFn<Returns = One<()>>>(
        &self,
        options: TaskOptions,
        args: F::Args,
    ) -> ObjectStream<F::Item> {
        let store = &self.inner.objects;
        let (sink, items) = generator::channel(store, options.get_generator_backpressure());
        let (done, completer, results) = One::<()>::pending(store);
        let deps = F::deps(&args);
        let spec = self.spec(
            F::NAME.into(),
            options,
            deps,
            results,
            spec::Returns::Stream,
        );
        let start = Start {
            store: store.clone(),
            sink: Some(sink),
        };
        self.submit_task(spec, Arc::new(TypedTask::<F>::new(args, completer, start)));
        generator::stream(store, items, done)
    }

    /// Cancels the task that produces `result` (Ray's `ray.cancel`). A
    /// queued task, or one waiting for its arguments, is dropped; a running
    /// async body is stopped at its next await; a running sync body cannot
    /// be interrupted in-process, so it runs to its end and its result is
    /// dropped. `get` on the ref then fails with `TaskError::Cancelled`, and
    /// the task is not retried. `force` is accepted for Ray's API: in one
    /// process there is nothing stronger than stopping at the next await.
    ///
    /// Returns whether the task was stopped before it stored its result:
    /// `false` when no unfinished task produces `result`, or when it
    /// finished first (then `get` returns its value).
    pub fn cancel<T>(&self, result: &ObjectRef<T>, force: bool) -> bool {
        let _ = force;
        self.inner.scheduler.cancel(result.id())
    }

    /// Tasks queued (arguments ready), waiting for arguments, and running.
    pub fn task_counts(&self) -> (usize, usize, usize) {
        let counts = self.inner.scheduler.counts();
        (counts.queued, counts.waiting_for_args, counts.running)
    }

    /// How many tasks are where, unplaced and delegated ones included.
    pub fn task_summary(&self) -> Counts {
        self.inner.scheduler.counts()
    }

    /// What this node has free now.
    pub fn available_resources(&self) -> crate::Resources {
        self.inner.scheduler.available()
    }

    /// What this node offers in all (its config's resources, detected GPUs
    /// included): what a cluster advertises for it.
    pub fn total_resources(&self) -> crate::Resources {
        self.inner.scheduler.capacity().clone()
    }
}
