//! One attempt of a task here: launched (a tokio task for an async body,
//! a CPU-pool job for a sync one), recorded from its launch to its end
//! however it ends, and reported back to the scheduler.

use super::*;

impl Scheduler {
    /// Runs one attempt: a tokio task for an async body, a CPU-thread job
    /// for a sync one; either reports its end here.
    pub(super) fn launch(self: &Arc<Self>, launch: Launch<TaskRef>) {
        let Launch {
            task,
            attempt,
            gpus,
        } = launch;
        let task = task.0;
        if task.stopped.load(Ordering::Acquire) {
            return; // cancelled between the decision and now
        }
        let id = task.spec.id;
        let launched = Instant::now();
        task.attempt.store(attempt, Ordering::Release);
        task.started_us
            .store(self.clock.unix_us(launched), Ordering::Release);
        if task.delegated.load(Ordering::Acquire) {
            // Retried here after running elsewhere.
            *task.elsewhere.lock().unwrap_or_else(|e| e.into_inner()) = None;
            task.delegated.store(false, Ordering::Release);
        }
        task.stats.attempt_started(
            (attempt == 1).then(|| launched.saturating_duration_since(task.submitted)),
        );
        let span = tracing::debug_span!(
            parent: &task.parent,
            "task",
            task = %id,
            trace = %task.spec.trace.root,
            attempt,
            function = %task.spec.function,
            node = %self.node,
        );
        let frame = self.frame(&task, attempt, &gpus);
        let mut record = AttemptRecord {
            scheduler: Some(self.clone()),
            task: task.clone(),
            attempt,
            began: launched,
            thread: 0,
            recording: self.timeline.is_recording(),
            accounted: false,
        };
        match task.body.clone().launch(frame) {
            function::Launch::Blocking(body) => {
                let job = Job::new(Box::new(move || {
                    record.began = Instant::now();
                    record.thread = timeline::thread_number();
                    let outcome = {
                        let _entered = span.enter();
                        body()
                    };
                    record.task.stats.timing.record(record.began.elapsed());
                    let scheduler = record.end(&outcome);
                    // What this completion launches may run next on this
                    // thread: the body has returned.
                    if let Some(scheduler) = scheduler {
                        cpu_pool::as_job_ends(|| scheduler.finished(id, outcome));
                    }
                }));
                *task.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
                // Its submitter runs a short body itself, right after
                // submitting it (`run_or_queue`): queued, it would wake a
                // pool thread only to lose the race for it.
                let submitter_runs = SUBMITTER_RUNS.with(Cell::get) == Some(id)
                    && task.stats.timing.known_short()
                    && task.spec.returns != crate::spec::Returns::Stream;
                if !submitter_runs {
                    self.cpus.execute(job);
                }
            }
            function::Launch::Async(body) => {
                let handle = self.tokio.spawn(async move {
                    record.thread = timeline::thread_number();
                    let outcome = tracing::Instrument::instrument(body, span).await;
                    if let Some(scheduler) = record.end(&outcome) {
                        scheduler.finished(id, outcome);
                    }
                });
                task.set_handle(handle.abort_handle());
            }
        }
    }

    fn frame(&self, task: &Task, attempt: u32, gpus: &[GpuShare]) -> Frame {
        Frame {
            task: Some(Arc::new(TaskContext {
                task_id: task.spec.id,
                function: task.spec.function.clone(),
                attempt,
                trace: task.spec.trace,
                node: self.node,
                resources: task.resources.clone(),
                gpu_ids: ordinals(gpus),
            })),
            actor: None,
            runtime: self.runtime.get().cloned(),
        }
    }
}

/// One attempt from its launch to its end, however it ends (aborted
/// included): counted as running meanwhile, timed, and put on the
/// timeline if the timeline recorded when it launched.
struct AttemptRecord {
    /// Handed back by `end` (to report the outcome) with no extra clone.
    scheduler: Option<Arc<Scheduler>>,
    task: Arc<Task>,
    attempt: u32,
    /// When it launched; for a sync body, when the body started.
    began: Instant,
    /// The thread it started on.
    thread: u64,
    recording: bool,
    accounted: bool,
}

impl AttemptRecord {
    /// The attempt ended with `outcome`: accounted now; the scheduler to
    /// report it to.
    fn end(mut self, outcome: &Outcome) -> Option<Arc<Scheduler>> {
        let error = match outcome {
            Outcome::Done => None,
            Outcome::Failed(failure) => Some(failure.to_string()),
        };
        self.account(error);
        self.scheduler.take()
    }

    fn account(&mut self, error: Option<String>) {
        if std::mem::replace(&mut self.accounted, true) {
            return;
        }
        let Some(scheduler) = &self.scheduler else {
            return;
        };
        let now = Instant::now();
        let ran = now.saturating_duration_since(self.began);
        self.task.stats.attempt_ended();
        self.task
            .ended_us
            .store(scheduler.clock.unix_us(now), Ordering::Release);
        if self.recording {
            scheduler.timeline.record(TimelineEvent {
                work: Work::Task {
                    id: self.task.spec.id,
                    function: self.task.spec.function.clone(),
                    attempt: self.attempt,
                },
                start_us: scheduler.clock.unix_us(self.began),
                duration_us: ran.as_micros() as u64,
                thread: self.thread,
                error,
            });
        }
    }
}

impl Drop for AttemptRecord {
    fn drop(&mut self) {
        // Dropped without an end: aborted (cancelled, shut down), or its
        // job was dropped unrun.
        self.account(Some(
            "stopped before it ended (cancelled or shut down)".to_owned(),
        ));
    }
}
