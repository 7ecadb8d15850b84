//! The public face: [`Dataset`], a lazy plan, and what runs it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use futures::stream::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use troupe::{Runtime, TaskOptions};

use crate::block::BlockRef;
use crate::budget::ExecStats;
use crate::error::{BoxError, DataError};
use crate::exec::{Exec, FlowRx};
use crate::io;
use crate::plan::{
    AllToAll, BatchFn, Compute, MakeStateful, Plan, ReadTask, Source, StatefulFn, StepError,
};
use crate::{ActorPoolStrategy, Aggregation, SortKey, TextReadOptions};

/// How a dataset runs.
#[derive(Clone, Debug, PartialEq)]
pub struct DataOptions {
    /// Bytes of blocks in flight across the pipeline (default 512 MiB):
    /// producers wait while it is spent. Keep it below the object store's
    /// capacity. All-to-all operators (`sort`, `groupby`, ...) hold their
    /// whole input outside it.
    pub memory_budget: usize,
    /// Blocks worked on at once per operator (default: the machine's cores).
    pub parallelism: usize,
    /// Rows per block that sources make (default 65,536).
    pub rows_per_block: usize,
    /// Progress bars per operator on stderr (default off).
    pub progress: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            memory_budget: 512 << 20,
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            rows_per_block: 1 << 16,
            progress: false,
        }
    }
}

impl DataOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Bytes of blocks in flight at most (about; see [`ExecStats`]).
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }
    /// Blocks worked on at once per operator.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.parallelism = n.max(1);
        self
    }
    /// Rows per block that sources make.
    pub fn rows_per_block(mut self, rows: usize) -> Self {
        self.rows_per_block = rows.max(1);
        self
    }
    /// Progress bars per operator.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }
}

/// A lazy, distributed-ready data set: a list of Arrow blocks in Troupe's
/// object store and the transforms still to apply. Nothing runs until a
/// sink (`stream`, `collect`, `count`, `write_parquet`, ...) asks; then the
/// plan runs as a streaming pipeline within a memory budget.
///
/// ```
/// use troupe::prelude::*;
/// use troupe_data::{Aggregation, Dataset};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = troupe::init(Config::default()).await?;
/// let squares = Dataset::range(&rt, 1000)
///     .map(|r: Row| Squared { id: r.id, sq: r.id * r.id, even: r.id % 2 == 0 })
///     .filter(|r: &Squared| r.sq > 100);
/// let by_parity = squares.groupby(["even"]).aggregate([Aggregation::count(), Aggregation::max("sq")]);
/// let out = by_parity.collect().await?;
/// assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
/// rt.shutdown().await?;
/// # Ok(()) }
/// #[derive(serde::Deserialize)] struct Row { id: i64 }
/// #[derive(serde::Serialize, serde::Deserialize)] struct Squared { id: i64, sq: i64, even: bool }
/// ```
#[derive(Clone)]
pub struct Dataset {
    pub(crate) rt: Runtime,
    pub(crate) options: Arc<DataOptions>,
    pub(crate) plan: Arc<Plan>,
    pub(crate) last: Arc<Mutex<Option<ExecStats>>>,
}

fn user<E: Into<BoxError>>(operator: &Arc<str>, e: E) -> StepError {
    StepError {
        operator: operator.clone(),
        message: e.into().to_string(),
    }
}

impl Dataset {
    fn from_plan(rt: &Runtime, plan: Plan) -> Self {
        Dataset {
            rt: rt.clone(),
            options: Arc::new(DataOptions::default()),
            plan: Arc::new(plan),
            last: Arc::default(),
        }
    }

    fn then(&self, plan: Plan) -> Self {
        Dataset {
            rt: self.rt.clone(),
            options: self.options.clone(),
            plan: Arc::new(plan),
            last: Arc::default(),
        }
    }

    pub(crate) fn reads(rt: &Runtime, name: &'static str, tasks: Vec<ReadTask>) -> Self {
        Self::from_plan(
            rt,
            Plan::Source(Source::Reads {
                name,
                tasks: Arc::new(tasks),
                columns: None,
            }),
        )
    }

    /// Runs with `options` (the budget, parallelism, block size, progress bars).
    pub fn with_options(mut self, options: DataOptions) -> Self {
        self.options = Arc::new(options);
        self
    }

    /// The integers `0..n` in an `Int64` column `id`.
    pub fn range(rt: &Runtime, n: u64) -> Self {
        Self::from_plan(rt, Plan::Source(Source::Range(n)))
    }

    /// A dataset of these batches, one block each (they must share a schema
    /// for the operators that combine blocks).
    pub fn from_batches(rt: &Runtime, batches: Vec<RecordBatch>) -> Self {
        let mut first = 0u64;
        let tasks = batches
            .into_iter()
            .map(|batch| {
                let rows = first..first + batch.num_rows() as u64;
                first = rows.end;
                ReadTask {
                    source: "from_batches".into(),
                    open: Arc::new(move |_: &crate::plan::ReadSpec| {
                        Ok(
                            Box::new(std::iter::once(Ok((batch.clone(), Some(rows.clone())))))
                                as crate::plan::Batches,
                        )
                    }),
                }
            })
            .collect();
        Self::reads(rt, "from_batches", tasks)
    }

    /// A dataset of serializable rows (columns named by their fields), cut
    /// into blocks of the default rows per block.
    pub fn from_items<T: Serialize>(rt: &Runtime, items: &[T]) -> Result<Self, DataError> {
        let per = DataOptions::default().rows_per_block;
        let empty = Arc::new(Schema::empty());
        let batches = items
            .chunks(per)
            .map(|chunk| {
                crate::rows::to_batch(chunk, &empty)
                    .map_err(|e| DataError::Invalid(format!("from_items: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_batches(rt, batches))
    }

    /// Blocks already in the object store.
    pub fn from_blocks(rt: &Runtime, blocks: Vec<BlockRef>) -> Self {
        Self::from_plan(rt, Plan::Source(Source::Blocks(Arc::new(blocks))))
    }

    /// Parquet files (paths, directories or globs): one read task per row
    /// group, blocks of at most `rows_per_block` rows.
    pub fn read_parquet<P: AsRef<Path>>(rt: &Runtime, paths: &[P]) -> Result<Self, DataError> {
        let files = io::expand(&owned(paths))?;
        Ok(Self::reads(rt, "read_parquet", io::parquet_tasks(&files)?))
    }

    /// CSV files with a header row (paths, directories or globs); the
    /// schema is inferred from the start of the first. A file over 64 MiB
    /// is read by several tasks, one per byte range, which needs its split
    /// points outside quoted fields: see [`TextReadOptions`].
    pub fn read_csv<P: AsRef<Path>>(rt: &Runtime, paths: &[P]) -> Result<Self, DataError> {
        Self::read_csv_with(rt, paths, TextReadOptions::default())
    }

    /// [`read_csv`](Self::read_csv) with byte-range splits of
    /// `options.split_bytes`, or one task per file (when quoted fields hold
    /// line breaks): see [`TextReadOptions`]. Each file's header is its
    /// first line; its other ranges are read against the same schema.
    pub fn read_csv_with<P: AsRef<Path>>(
        rt: &Runtime,
        paths: &[P],
        options: TextReadOptions,
    ) -> Result<Self, DataError> {
        let files = io::expand(&owned(paths))?;
        let tasks = io::csv_tasks(&files, options.split_bytes)?;
        Ok(Self::reads(rt, "read_csv", tasks))
    }

    /// JSON-lines files; the schema is inferred from the start of the
    /// first. A file over 64 MiB is read in byte ranges, as `read_csv`'s.
    pub fn read_json<P: AsRef<Path>>(rt: &Runtime, paths: &[P]) -> Result<Self, DataError> {
        Self::read_json_with(rt, paths, TextReadOptions::default())
    }

    /// [`read_json`](Self::read_json) with these splits (see [`TextReadOptions`]).
    pub fn read_json_with<P: AsRef<Path>>(
        rt: &Runtime,
        paths: &[P],
        options: TextReadOptions,
    ) -> Result<Self, DataError> {
        let files = io::expand(&owned(paths))?;
        let tasks = io::json_tasks(&files, options.split_bytes)?;
        Ok(Self::reads(rt, "read_json", tasks))
    }

    fn map_named(&self, name: &str, num_cpus: f64, f: BatchFn) -> Self {
        self.then(self.plan.then_map(name, num_cpus, f))
    }

    /// Applies `f` to every block, as a task holding one CPU. Consecutive
    /// task transforms are fused: a block goes through all of them at once.
    pub fn map_batches<F, E>(&self, f: F) -> Self
    where
        F: Fn(RecordBatch) -> Result<RecordBatch, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        self.map_batches_with_cpus(1.0, f)
    }

    /// [`map_batches`](Self::map_batches) on tasks that hold `num_cpus` each.
    pub fn map_batches_with_cpus<F, E>(&self, num_cpus: f64, f: F) -> Self
    where
        F: Fn(RecordBatch) -> Result<RecordBatch, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let name: Arc<str> = "map_batches".into();
        self.map_named(
            "map_batches",
            num_cpus,
            Arc::new(move |b| f(b).map_err(|e| user(&name, e))),
        )
    }

    /// Applies `f` on a pool of actors, each built once with `make` (load a
    /// model there, onto the GPU the actor was given): the pool grows from
    /// `strategy.min` to `strategy.max` actors while blocks wait.
    pub fn map_batches_on_actors<S, M, ME, F, E>(
        &self,
        strategy: ActorPoolStrategy,
        make: M,
        f: F,
    ) -> Self
    where
        S: Send + 'static,
        M: Fn() -> Result<S, ME> + Send + Sync + 'static,
        ME: Into<BoxError>,
        F: Fn(&mut S, RecordBatch) -> Result<RecordBatch, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let f = Arc::new(f);
        let name: Arc<str> = "map_batches_on_actors".into();
        let make: MakeStateful = Arc::new(move || {
            let mut state = make().map_err(Into::into)?;
            let (f, name) = (f.clone(), name.clone());
            Ok(
                Box::new(move |batch| f(&mut state, batch).map_err(|e| user(&name, e)))
                    as StatefulFn,
            )
        });
        self.then(Plan::Map {
            input: self.plan.clone(),
            names: vec!["map_batches_on_actors".into()],
            compute: Compute::Actors { strategy, make },
            f: None,
        })
    }

    /// Applies the batch function registered as `name`
    /// ([`register_batch_fn!`](crate::register_batch_fn)) as tasks of one
    /// CPU, placed by the cluster on any node (this one included), retried
    /// on another when their node dies (Troupe's default `max_retries`);
    /// each output block stays on the node that made it until read. An
    /// unknown name fails the run, naming those registered.
    pub fn map_batches_registered(&self, name: &str) -> Self {
        self.map_batches_registered_with(name, TaskOptions::default())
    }

    /// [`map_batches_registered`](Self::map_batches_registered) with these
    /// task options (CPUs, GPUs, retries, a scheduling strategy).
    pub fn map_batches_registered_with(&self, name: &str, options: TaskOptions) -> Self {
        let compute = Compute::Registered {
            name: name.into(),
            options,
        };
        let names = vec![format!("map_batches({name})").into()];
        self.then(Plan::Map {
            input: self.plan.clone(),
            names,
            compute,
            f: None,
        })
    }

    /// Maps every row, read as a `T` (columns by field name), to a `U`.
    pub fn map<T, U, F>(&self, f: F) -> Self
    where
        T: DeserializeOwned,
        U: Serialize,
        F: Fn(T) -> U + Send + Sync + 'static,
    {
        let name: Arc<str> = "map".into();
        self.map_named(
            "map",
            1.0,
            Arc::new(move |batch| {
                let rows: Vec<T> = crate::rows::from_batch(&batch).map_err(|e| user(&name, e))?;
                let out: Vec<U> = rows.into_iter().map(&f).collect();
                crate::rows::to_batch(&out, &Arc::new(Schema::empty())).map_err(|e| user(&name, e))
            }),
        )
    }

    /// Maps every row to any number of rows.
    pub fn flat_map<T, U, F>(&self, f: F) -> Self
    where
        T: DeserializeOwned,
        U: Serialize,
        F: Fn(T) -> Vec<U> + Send + Sync + 'static,
    {
        let name: Arc<str> = "flat_map".into();
        self.map_named(
            "flat_map",
            1.0,
            Arc::new(move |batch| {
                let rows: Vec<T> = crate::rows::from_batch(&batch).map_err(|e| user(&name, e))?;
                let out: Vec<U> = rows.into_iter().flat_map(&f).collect();
                crate::rows::to_batch(&out, &Arc::new(Schema::empty())).map_err(|e| user(&name, e))
            }),
        )
    }

    /// Keeps the rows for which `keep` is true; the columns stay as they are.
    pub fn filter<T, F>(&self, keep: F) -> Self
    where
        T: DeserializeOwned,
        F: Fn(&T) -> bool + Send + Sync + 'static,
    {
        let name: Arc<str> = "filter".into();
        self.map_named(
            "filter",
            1.0,
            Arc::new(move |batch| {
                let rows: Vec<T> = crate::rows::from_batch(&batch).map_err(|e| user(&name, e))?;
                let mask = BooleanArray::from(rows.iter().map(&keep).collect::<Vec<bool>>());
                arrow_select::filter::filter_record_batch(&batch, &mask).map_err(|e| user(&name, e))
            }),
        )
    }

    /// Keeps the rows where the mask `keep` computes for a block is true
    /// (vectorized: compute it with Arrow's kernels).
    pub fn filter_batches<F, E>(&self, keep: F) -> Self
    where
        F: Fn(&RecordBatch) -> Result<BooleanArray, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let name: Arc<str> = "filter_batches".into();
        self.map_named(
            "filter_batches",
            1.0,
            Arc::new(move |batch| {
                let mask = keep(&batch).map_err(|e| user(&name, e))?;
                arrow_select::filter::filter_record_batch(&batch, &mask).map_err(|e| user(&name, e))
            }),
        )
    }

    /// Keeps these columns, in this order (right after `read_parquet`, only
    /// they are decoded).
    pub fn select_columns(&self, columns: &[&str]) -> Self {
        // Right after a file source, the readers decode only these columns.
        if let Plan::Source(Source::Reads { name, tasks, .. }) = &*self.plan {
            let columns: Arc<[String]> = columns.iter().map(|c| c.to_string()).collect();
            return self.then(Plan::Source(Source::Reads {
                name,
                tasks: tasks.clone(),
                columns: Some(columns),
            }));
        }
        let name: Arc<str> = "select_columns".into();
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        self.map_named(
            "select_columns",
            1.0,
            Arc::new(move |batch| {
                let schema = batch.schema();
                let indices = columns
                    .iter()
                    .map(|c| {
                        schema.index_of(c).map_err(|_| {
                            user(
                                &name,
                                format!(
                                    "no column {c:?}; the columns are {:?}",
                                    crate::shuffle::column_names(&schema)
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                batch.project(&indices).map_err(|e| user(&name, e))
            }),
        )
    }

    /// Adds (or replaces) the column `column`, computed from each block.
    pub fn add_column<F, E>(&self, column: &str, f: F) -> Self
    where
        F: Fn(&RecordBatch) -> Result<ArrayRef, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let name: Arc<str> = "add_column".into();
        let column = column.to_string();
        self.map_named(
            "add_column",
            1.0,
            Arc::new(move |batch| {
                let values = f(&batch).map_err(|e| user(&name, e))?;
                let schema = batch.schema();
                let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
                let mut columns = batch.columns().to_vec();
                let field = Arc::new(Field::new(
                    &column,
                    values.data_type().clone(),
                    values.null_count() > 0,
                ));
                match schema.index_of(&column) {
                    Ok(i) => {
                        fields[i] = field;
                        columns[i] = values;
                    }
                    Err(_) => {
                        fields.push(field);
                        columns.push(values);
                    }
                }
                RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                    .map_err(|e| user(&name, e))
            }),
        )
    }

    fn all(&self, op: AllToAll) -> Self {
        self.then(Plan::AllToAll {
            input: self.plan.clone(),
            op,
        })
    }

    /// The same rows in `n` blocks of nearly equal size, in order.
    pub fn repartition(&self, n: usize) -> Self {
        self.all(AllToAll::Repartition(n))
    }

    /// The rows in a random order fixed by `seed` (push-based: every block
    /// scatters its rows to the output blocks, which then shuffle theirs).
    pub fn random_shuffle(&self, seed: u64) -> Self {
        self.all(AllToAll::RandomShuffle {
            seed,
            partitions: None,
        })
    }

    /// Sorted by `keys` (stable: equal keys keep their order), in blocks
    /// cut at sampled key ranges.
    pub fn sort(&self, keys: Vec<SortKey>) -> Self {
        self.all(AllToAll::Sort { keys })
    }

    /// Sorted ascending by one column.
    pub fn sort_by(&self, column: &str) -> Self {
        self.sort(vec![SortKey::asc(column)])
    }

    /// Groups rows by these key columns; see [`Grouped::aggregate`].
    pub fn groupby<K: Into<String>>(&self, keys: impl IntoIterator<Item = K>) -> Grouped {
        Grouped {
            dataset: self.clone(),
            keys: keys.into_iter().map(Into::into).collect(),
        }
    }

    /// This dataset's rows, then each of `others`'.
    pub fn union(&self, others: impl IntoIterator<Item = Dataset>) -> Self {
        let mut plans = vec![self.plan.clone()];
        plans.extend(others.into_iter().map(|d| d.plan));
        self.then(Plan::Union(plans))
    }

    /// Row `i` of this dataset beside row `i` of `other` (as many rows;
    /// a column name both have gets `_1` on `other`'s side).
    pub fn zip(&self, other: &Dataset) -> Self {
        self.then(Plan::Zip(self.plan.clone(), other.plan.clone()))
    }

    /// The first `rows` rows (the pipeline stops once it has them).
    pub fn limit(&self, rows: usize) -> Self {
        self.then(Plan::Limit {
            input: self.plan.clone(),
            rows,
        })
    }

    /// The plan, source first: `read_parquet(8 tasks) -> map_batches+filter -> sort`.
    pub fn describe(&self) -> String {
        self.plan.describe()
    }

    /// What the last run of this dataset (by any sink) measured.
    pub fn last_stats(&self) -> Option<ExecStats> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn start(&self) -> (Arc<Exec>, FlowRx) {
        let exec = Exec::new(self.rt.clone(), self.options.clone(), &self.plan);
        let rx = exec.run(&self.plan);
        (exec, rx)
    }

    /// Runs the plan and streams its blocks in order, as they are made.
    /// Dropping the stream stops the pipeline.
    pub fn stream(&self) -> impl Stream<Item = Result<RecordBatch, DataError>> + Send + 'static {
        let (exec, rx) = self.start();
        let last = self.last.clone();
        futures::stream::unfold(Some((exec, rx, last)), |state| async move {
            let (exec, mut rx, last) = state?;
            match rx.recv().await {
                Some(Ok(flow)) => {
                    let got = exec
                        .rt
                        .get(&flow.block.object)
                        .await
                        .map_err(|e| DataError::Store {
                            what: flow.block.origin.to_string(),
                            message: e.to_string(),
                        });
                    Some((got.map(|b| b.0.clone()), Some((exec, rx, last))))
                }
                Some(Err(e)) => {
                    record(&last, &exec);
                    Some((Err(e), None))
                }
                None => {
                    record(&last, &exec);
                    None
                }
            }
        })
    }

    /// The blocks' batches, from synchronous code (a trainer's thread).
    /// Call it off the async runtime's threads: each step blocks.
    pub fn iter_batches(&self) -> impl Iterator<Item = Result<RecordBatch, DataError>> {
        let mut stream = Box::pin(self.stream());
        std::iter::from_fn(move || futures::executor::block_on(stream.next()))
    }

    /// Runs the plan to its end and keeps its blocks. Each block's budget
    /// charge is released as it arrives: the caller holds the blocks now,
    /// and a pipeline must not wait for room a finished result takes.
    async fn blocks(&self) -> Result<Vec<BlockRef>, DataError> {
        let (exec, mut rx) = self.start();
        let mut blocks = Vec::new();
        let outcome = loop {
            match rx.recv().await {
                Some(Ok(flow)) => blocks.push(flow.block),
                Some(Err(e)) => break Err(e),
                None => break Ok(blocks),
            }
        };
        record(&self.last, &exec);
        outcome
    }

    /// Every batch, in order.
    pub async fn collect(&self) -> Result<Vec<RecordBatch>, DataError> {
        let blocks = self.blocks().await?;
        crate::exec::batches_of(&self.rt, &blocks).await
    }

    /// Rows as `T`s (columns by field name).
    pub async fn collect_rows<T: DeserializeOwned>(&self) -> Result<Vec<T>, DataError> {
        let mut rows = Vec::new();
        for batch in self.collect().await? {
            rows.extend(
                crate::rows::from_batch::<T>(&batch)
                    .map_err(|e| DataError::Invalid(e.to_string()))?,
            );
        }
        Ok(rows)
    }

    /// The first `rows` rows, as batches.
    pub async fn take(&self, rows: usize) -> Result<Vec<RecordBatch>, DataError> {
        self.limit(rows).collect().await
    }

    /// How many rows (blocks are counted, not read).
    pub async fn count(&self) -> Result<usize, DataError> {
        Ok(self.blocks().await?.iter().map(|b| b.rows).sum())
    }

    /// The schema of the first block (`None` for a dataset with no blocks).
    pub async fn schema(&self) -> Result<Option<SchemaRef>, DataError> {
        Ok(self.take(1).await?.first().map(|b| b.schema()))
    }

    /// Runs the plan and keeps its blocks in the object store: the result's
    /// sinks read them without running anything again.
    pub async fn materialize(&self) -> Result<Dataset, DataError> {
        let blocks = self.blocks().await?;
        Ok(self.then(Plan::Source(Source::Blocks(Arc::new(blocks)))))
    }
}

fn owned<P: AsRef<Path>>(paths: &[P]) -> Vec<PathBuf> {
    paths.iter().map(|p| p.as_ref().to_path_buf()).collect()
}

pub(crate) fn record(last: &Mutex<Option<ExecStats>>, exec: &Exec) {
    *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(exec.stats());
}

/// A dataset grouped by key columns.
#[derive(Clone)]
pub struct Grouped {
    dataset: Dataset,
    keys: Vec<String>,
}

impl Grouped {
    /// One row per group, sorted by the keys: the keys, then each
    /// aggregate (`count()`, `sum(x)`, ...; see [`Aggregation`]). A hash
    /// aggregation: each block is folded into per-group values as it
    /// arrives, so the input is never held whole.
    pub fn aggregate(&self, aggregations: impl IntoIterator<Item = Aggregation>) -> Dataset {
        let aggregations = aggregations.into_iter().collect();
        let dataset = &self.dataset;
        dataset.then(Plan::GroupBy {
            input: dataset.plan.clone(),
            keys: self.keys.clone(),
            aggregations,
        })
    }

    /// Rows per group.
    pub fn count(&self) -> Dataset {
        self.aggregate([Aggregation::Count])
    }
}
