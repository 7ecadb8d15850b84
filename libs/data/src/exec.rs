//! The streaming executor: every operator of a plan is a tokio task that
//! pulls blocks from the operator before it through a bounded channel and
//! starts work while the memory budget allows (see [`crate::budget`]).
//! Order is kept: an operator emits its blocks in its input's order.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tracing::Instrument;
use troupe::Runtime;

use crate::block::{Block, BlockRef};
use crate::budget::{Budget, Charge, ExecStats, OperatorStats};
use crate::error::{BlockOrigin, DataError};
use crate::plan::{AllToAll, BatchFn, Compute, Plan, Source};
use crate::worker::{spawn_task_worker, Applied, Failure, Pool};
use crate::DataOptions;

/// A block moving between operators, holding its share of the budget.
pub(crate) struct Flow {
    pub(crate) block: BlockRef,
    pub(crate) _charge: Option<Charge>,
}

pub(crate) type FlowRx = mpsc::Receiver<Result<Flow, DataError>>;
pub(crate) type FlowTx = mpsc::Sender<Result<Flow, DataError>>;

/// One run of a plan.
pub(crate) struct Exec {
    pub(crate) rt: Runtime,
    pub(crate) options: Arc<DataOptions>,
    pub(crate) budget: Arc<Budget>,
    stats: Mutex<Vec<OperatorStats>>,
    progress: Option<indicatif::MultiProgress>,
    plan: String,
}

/// An operator's bookkeeping: its budget index, stats row and bar.
pub(crate) struct Operator {
    pub(crate) exec: Arc<Exec>,
    pub(crate) id: usize,
    row: usize,
    pub(crate) name: Arc<str>,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    /// The size of its last block: the estimate of its next.
    pub(crate) typical: AtomicUsize,
}

impl Operator {
    fn emitted(&self, block: &BlockRef) {
        let labels = [("operator", self.name.to_string())];
        metrics::counter!("troupe_data_blocks_total", &labels).increment(1);
        metrics::counter!("troupe_data_rows_total", &labels).increment(block.rows as u64);
        metrics::counter!("troupe_data_bytes_total", &labels).increment(block.bytes as u64);
        if let Some(bar) = &self.bar {
            bar.inc(block.rows as u64);
        }
        let mut stats = self.exec.lock_stats();
        if let Some(s) = stats.get_mut(self.row) {
            s.blocks += 1;
            s.rows += block.rows;
            s.bytes += block.bytes;
            s.seconds = self.started.elapsed().as_secs_f64();
        }
    }

    fn actors(&self, n: usize) {
        if let Some(s) = self.exec.lock_stats().get_mut(self.row) {
            s.max_actors = s.max_actors.max(n);
        }
    }

    /// Puts a batch this operator made into the store, charged to the budget.
    pub(crate) fn put(
        &self,
        batch: RecordBatch,
        origin: BlockOrigin,
        mut charge: Charge,
    ) -> Result<Flow, DataError> {
        let block = Block(batch);
        let (rows, bytes) = (block.num_rows(), block.bytes());
        let object = self
            .exec
            .rt
            .put_blocking(block)
            .map_err(|e| DataError::Store {
                what: origin.to_string(),
                message: e.to_string(),
            })?;
        charge.settle(bytes);
        self.typical.store(bytes, Ordering::Relaxed);
        let block = BlockRef {
            object,
            rows,
            bytes,
            origin: Arc::new(origin),
        };
        self.emitted(&block);
        Ok(Flow {
            block,
            _charge: Some(charge),
        })
    }
}

impl Operator {
    /// Emits batches an all-to-all operator made, one admission each.
    pub(crate) async fn emit_all(&self, batches: Vec<RecordBatch>, tx: &FlowTx) {
        for (index, batch) in batches.into_iter().enumerate() {
            let estimate = crate::block::batch_bytes(&batch);
            let charge = self.exec.budget.admit(self.id, estimate).await;
            let origin = BlockOrigin {
                index,
                source: self.name.to_string(),
                rows: None,
            };
            let flow = self.put(batch, origin, charge);
            let failed = flow.is_err();
            if tx.send(flow).await.is_err() || failed {
                return;
            }
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

impl Exec {
    pub(crate) fn new(rt: Runtime, options: Arc<DataOptions>, plan: &Plan) -> Arc<Exec> {
        let progress = options.progress.then(indicatif::MultiProgress::new);
        Arc::new(Exec {
            budget: Budget::new(options.memory_budget),
            rt,
            options,
            stats: Mutex::new(Vec::new()),
            progress,
            plan: plan.describe(),
        })
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, Vec<OperatorStats>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the run measured so far.
    pub(crate) fn stats(&self) -> ExecStats {
        ExecStats {
            plan: self.plan.clone(),
            peak_bytes_in_flight: self.budget.peak(),
            memory_budget: self.budget.limit(),
            operators: self.lock_stats().clone(),
        }
    }

    pub(crate) fn operator(self: &Arc<Self>, name: &str) -> Operator {
        let mut stats = self.lock_stats();
        stats.push(OperatorStats {
            name: name.to_string(),
            ..OperatorStats::default()
        });
        let row = stats.len() - 1;
        drop(stats);
        let bar = self.progress.as_ref().map(|multi| {
            let bar = multi.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {prefix:>24}: {human_pos} rows, {per_sec}, {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Operator {
            exec: self.clone(),
            id: self.budget.operator(),
            row,
            name: name.into(),
            started: Instant::now(),
            bar,
            typical: AtomicUsize::new(0),
        }
    }

    fn channel(&self) -> (FlowTx, FlowRx) {
        mpsc::channel(self.options.parallelism.max(1))
    }

    /// Starts the plan's operators; their blocks arrive in order on the
    /// receiver. Dropping it stops them (their next send fails).
    pub(crate) fn run(self: &Arc<Self>, plan: &Plan) -> FlowRx {
        let (tx, rx) = self.channel();
        let exec = self.clone();
        let spawner = self.rt.tokio_handle().clone();
        match plan {
            Plan::Source(Source::Blocks(blocks)) => {
                let blocks = blocks.clone();
                spawner.spawn(async move {
                    let op = exec.operator("from_blocks");
                    for block in blocks.iter() {
                        op.emitted(block);
                        let flow = Flow {
                            block: block.clone(),
                            _charge: None,
                        };
                        if tx.send(Ok(flow)).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Plan::Source(Source::Reads {
                name,
                tasks,
                columns,
            }) => {
                spawner.spawn(exec.read(name, tasks.clone(), columns.clone(), tx));
            }
            Plan::Source(Source::Range(n)) => {
                let tasks =
                    crate::source::range_tasks(*n, self.options.rows_per_block.max(1) as u64);
                spawner.spawn(exec.read("range", Arc::new(tasks), None, tx));
            }
            Plan::Map {
                input,
                names,
                compute,
                f,
            } => {
                let input = self.run(input);
                let names: Vec<&str> = names.iter().map(|n| &**n).collect();
                let name = names.join("+");
                spawner.spawn(exec.map(name, input, compute.clone(), f.clone(), tx));
            }
            Plan::AllToAll { input, op } => {
                let input = self.run(input);
                spawner.spawn(exec.all_to_all(input, op.clone(), tx));
            }
            Plan::GroupBy {
                input,
                keys,
                aggregations,
            } => {
                let input = self.run(input);
                let (keys, aggregations) = (keys.clone(), aggregations.clone());
                spawner.spawn(exec.group_by(input, keys, aggregations, tx));
            }
            Plan::Union(inputs) => {
                let inputs = inputs.clone();
                spawner.spawn(async move {
                    for plan in inputs {
                        let mut rx = exec.run(&plan);
                        while let Some(flow) = rx.recv().await {
                            let failed = flow.is_err();
                            if tx.send(flow).await.is_err() || failed {
                                return;
                            }
                        }
                    }
                });
            }
            Plan::Zip(a, b) => {
                let (a, b) = (self.run(a), self.run(b));
                spawner.spawn(exec.zip(a, b, tx));
            }
            Plan::Limit { input, rows } => {
                let input = self.run(input);
                spawner.spawn(exec.limit(input, *rows, tx));
            }
        }
        rx
    }

    /// A one-to-one stage: each block through the stage's function, on a
    /// task-like actor per block or on the stage's actor pool.
    async fn map(
        self: Arc<Self>,
        name: String,
        mut input: FlowRx,
        compute: Compute,
        f: Option<BatchFn>,
        tx: FlowTx,
    ) {
        type Running = Pin<
            Box<
                dyn Future<
                        Output = (
                            Result<Flow, DataError>,
                            Option<crate::worker::BatchWorkerHandle>,
                            usize,
                        ),
                    > + Send,
            >,
        >;
        let op = self.operator(&name);
        let op_name: Arc<str> = name.into();
        if let Compute::Registered { name, .. } = &compute {
            if let Err(message) = crate::registry::lookup(name) {
                let _ = tx.send(Err(DataError::Invalid(message))).await;
                return;
            }
        }
        let mut pool = match &compute {
            Compute::Actors { strategy, make } => {
                match Pool::start(&self.rt, strategy.clone(), make.clone()).await {
                    Ok(pool) => Some(pool),
                    Err(message) => {
                        let _ = tx
                            .send(Err(DataError::Pool {
                                operator: op_name.to_string(),
                                message,
                            }))
                            .await;
                        return;
                    }
                }
            }
            Compute::Tasks { .. } | Compute::Registered { .. } => None,
        };
        let limit = match &compute {
            Compute::Actors { strategy, .. } => strategy.max.max(1),
            Compute::Tasks { .. } | Compute::Registered { .. } => self.options.parallelism.max(1),
        };
        let mut running: FuturesOrdered<Running> = FuturesOrdered::new();
        let mut next: Option<Flow> = None;
        let mut input_done = false;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut growth: f64 = 1.0;
        loop {
            if input_done && next.is_none() && running.is_empty() {
                break;
            }
            if let (Some(pool), Some(_)) = (pool.as_mut(), next.as_ref()) {
                pool.wanted();
                op.actors(pool.max_seen);
            }
            let worker_free = pool.as_ref().is_none_or(|p| p.has_idle());
            let can_launch = next.is_some() && running.len() < limit && worker_free;
            let spawning = pool.as_ref().is_some_and(|p| p.is_spawning());
            // A block's output is estimated from its input and the largest
            // growth seen so far, so that a stage that widens its blocks
            // does not overrun the budget by the difference.
            let estimate = next
                .as_ref()
                .map_or(0, |f| (f.block.bytes as f64 * growth) as usize);
            tokio::select! {
                biased;
                Some((result, worker, input_bytes)) = running.next(), if !running.is_empty() => {
                    if let (Some(pool), Some(worker)) = (pool.as_mut(), worker) {
                        pool.give_back(worker);
                    }
                    match result {
                        Ok(flow) => {
                            if input_bytes > 0 {
                                growth = growth.max(flow.block.bytes as f64 / input_bytes as f64);
                            }
                            op.emitted(&flow.block);
                            if tx.send(Ok(flow)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                    }
                }
                spawned = next_spawned(pool.as_mut()), if spawning => {
                    if let Err(message) = spawned {
                        let _ = tx.send(Err(DataError::Pool { operator: op_name.to_string(), message })).await;
                        break;
                    }
                }
                charge = self.budget.admit(op.id, estimate), if can_launch => {
                    let Some(flow) = next.take() else { continue };
                    let worker = pool.as_mut().and_then(|p| p.take());
                    let (rt, op_name) = (self.rt.clone(), op_name.clone());
                    let task = match &compute {
                        Compute::Tasks { num_cpus } => f.clone().map(|f| (*num_cpus, f)),
                        Compute::Actors { .. } | Compute::Registered { .. } => None,
                    };
                    let registered = match &compute {
                        Compute::Registered { name, options } => Some((name.clone(), options.clone())),
                        _ => None,
                    };
                    let input_bytes = flow.block.bytes;
                    let span = tracing::debug_span!(
                        "data_block",
                        operator = %op_name,
                        block = flow.block.origin.index,
                    );
                    running.push_back(Box::pin(async move {
                        let result = match registered {
                            Some((name, options)) => {
                                crate::registry::apply_remote(&rt, &op_name, &name, options, flow, charge).await
                            }
                            None => apply(&rt, &op_name, flow, charge, worker.clone(), task).await,
                        };
                        (result, worker, input_bytes)
                    }.instrument(span)));
                }
                got = input.recv(), if next.is_none() && !input_done => match got {
                    Some(Ok(flow)) => next = Some(flow),
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                    None => input_done = true,
                },
                _ = tick.tick(), if pool.is_some() => {
                    if let Some(pool) = pool.as_mut() {
                        pool.shrink();
                    }
                }
            }
        }
        // Let running blocks finish before the pool's actors are stopped.
        while let Some((_, worker, _)) = running.next().await {
            if let (Some(pool), Some(worker)) = (pool.as_mut(), worker) {
                pool.give_back(worker);
            }
        }
        if let Some(pool) = pool {
            op.actors(pool.max_seen);
            pool.stop().await;
        }
    }

    /// An operator that needs its whole input: collects it, then emits
    /// what the operator makes of it, block by block.
    async fn all_to_all(self: Arc<Self>, input: FlowRx, all: AllToAll, tx: FlowTx) {
        let op = self.operator(all.name());
        let blocks = match collect(input).await {
            Ok(blocks) => blocks,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let (rt, parallelism) = (self.rt.clone(), self.options.parallelism.max(1));
        let made = self
            .rt
            .tokio_handle()
            .spawn_blocking(move || crate::shuffle::run(&rt, &all, blocks, parallelism))
            .await;
        let batches = match made {
            Ok(Ok(batches)) => batches,
            Ok(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(DataError::Stopped(format!("{}: {e}", op.name))))
                    .await;
                return;
            }
        };
        op.emit_all(batches, &tx).await;
    }

    /// Column-wise join of two inputs with the same number of rows.
    async fn zip(self: Arc<Self>, a: FlowRx, b: FlowRx, tx: FlowTx) {
        let op = self.operator("zip");
        let rt = self.rt.clone();
        let made = async {
            let (a, b) = (collect(a).await?, collect(b).await?);
            let (a, b) = (batches_of(&rt, &a).await?, batches_of(&rt, &b).await?);
            rt.tokio_handle()
                .spawn_blocking(move || crate::shuffle::zip(a, b))
                .await
                .map_err(|e| DataError::Stopped(format!("zip: {e}")))?
        };
        let batches = match made.await {
            Ok(batches) => batches,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        op.emit_all(batches, &tx).await;
    }

    /// The first `rows` rows; upstream stops when this drops its input.
    async fn limit(self: Arc<Self>, mut input: FlowRx, rows: usize, tx: FlowTx) {
        let op = self.operator("limit");
        let mut left = rows;
        while left > 0 {
            let Some(flow) = input.recv().await else {
                return;
            };
            let flow = match flow {
                Ok(flow) if flow.block.rows <= left => flow,
                Ok(flow) => {
                    let block = match self.rt.get(&flow.block.object).await {
                        Ok(block) => block,
                        Err(e) => {
                            let _ = tx
                                .send(Err(DataError::Store {
                                    what: flow.block.origin.to_string(),
                                    message: e.to_string(),
                                }))
                                .await;
                            return;
                        }
                    };
                    let batch = block.0.slice(0, left);
                    let charge = self.budget.admit(op.id, 0).await;
                    match op.put(batch, (*flow.block.origin).clone(), charge) {
                        Ok(cut) => cut,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            left -= flow.block.rows;
            if tx.send(Ok(flow)).await.is_err() {
                return;
            }
        }
    }
}

/// The next actor a pool started in the background (never, without a pool).
async fn next_spawned(pool: Option<&mut Pool>) -> Result<(), String> {
    match pool {
        Some(pool) => pool.spawned().await,
        None => std::future::pending().await,
    }
}

/// Runs one block through a stage on `worker` (a pool's) or on a fresh
/// task-like actor, and wraps its output as a flow.
async fn apply(
    rt: &Runtime,
    op_name: &Arc<str>,
    input: Flow,
    charge: Charge,
    worker: Option<crate::worker::BatchWorkerHandle>,
    task: Option<(f64, BatchFn)>,
) -> Result<Flow, DataError> {
    let stopped = |message: String| DataError::Pool {
        operator: op_name.to_string(),
        message,
    };
    let (worker, ephemeral) = match (worker, task) {
        (Some(worker), _) => (worker, false),
        (None, Some((num_cpus, f))) => (
            spawn_task_worker(rt, num_cpus, f)
                .await
                .map_err(|e| stopped(e.to_string()))?,
            true,
        ),
        (None, None) => return Err(stopped("no actor to run the block on".into())),
    };
    let result = worker.apply(input.block.object.clone()).await;
    if ephemeral {
        worker.stop().await;
    }
    let origin = input.block.origin.clone();
    let applied: Applied = match result {
        Ok(Ok(applied)) => applied,
        Ok(Err(Failure::User(step))) => {
            return Err(DataError::UserFunction {
                operator: if &*step.operator == "user function" {
                    op_name.to_string()
                } else {
                    step.operator.to_string()
                },
                origin: (*origin).clone(),
                message: step.message,
            })
        }
        Ok(Err(Failure::Store(message))) => {
            return Err(DataError::Store {
                what: origin.to_string(),
                message,
            })
        }
        Err(e) => return Err(stopped(format!("the actor running {origin} failed: {e}"))),
    };
    let mut charge = charge;
    charge.settle(applied.bytes);
    drop(input);
    Ok(Flow {
        block: BlockRef {
            object: applied.object,
            rows: applied.rows,
            bytes: applied.bytes,
            origin,
        },
        _charge: Some(charge),
    })
}

/// Every block of an input, in order (their budget charges released:
/// an all-to-all operator holds its whole input, outside the budget).
pub(crate) async fn collect(mut input: FlowRx) -> Result<Vec<BlockRef>, DataError> {
    let mut blocks = Vec::new();
    while let Some(flow) = input.recv().await {
        blocks.push(flow?.block);
    }
    Ok(blocks)
}

/// The batches of blocks, read from the store (shared, not copied).
pub(crate) async fn batches_of(
    rt: &Runtime,
    blocks: &[BlockRef],
) -> Result<Vec<RecordBatch>, DataError> {
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        let got = rt.get(&block.object).await.map_err(|e| DataError::Store {
            what: block.origin.to_string(),
            message: e.to_string(),
        })?;
        out.push(got.0.clone());
    }
    Ok(out)
}
