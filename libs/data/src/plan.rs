//! The lazy plan a dataset is: a source, then operators, run only by a sink.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::RecordBatch;

use crate::aggregate::Aggregation;
use crate::block::BlockRef;
use crate::error::{BoxError, DataError};

/// What a step of a fused stage returns when the user's function fails.
#[derive(Debug)]
pub(crate) struct StepError {
    pub(crate) operator: Arc<str>,
    pub(crate) message: String,
}

/// A one-to-one transform of a block (several fused into one).
pub(crate) type BatchFn = Arc<dyn Fn(RecordBatch) -> Result<RecordBatch, StepError> + Send + Sync>;

/// A transform with state, built once per actor of a pool.
pub(crate) type StatefulFn = Box<dyn FnMut(RecordBatch) -> Result<RecordBatch, StepError> + Send>;

/// Builds one pool actor's transform (e.g. loads a model onto its GPU).
pub(crate) type MakeStateful = Arc<dyn Fn() -> Result<StatefulFn, BoxError> + Send + Sync>;

/// A batch a read task yields, with the source rows it holds.
pub(crate) type ReadBatch = Result<(RecordBatch, Option<Range<u64>>), DataError>;

/// The batches a read task yields.
pub(crate) type Batches = Box<dyn Iterator<Item = ReadBatch> + Send>;

/// What a run wants of a read task. A reader may ignore either: the
/// executor slices larger batches and projects every batch it is given.
pub(crate) struct ReadSpec {
    /// Rows per block.
    pub(crate) rows_per_block: usize,
    /// Only these columns, in this order (a `select_columns` right after
    /// the source: Parquet then decodes only those).
    pub(crate) columns: Option<Arc<[String]>>,
}

/// Opens a read task's batches.
pub(crate) type OpenFn = dyn Fn(&ReadSpec) -> Result<Batches, DataError> + Send + Sync;

/// One unit of reading: a file's row group, a file, a chunk of a range.
#[derive(Clone)]
pub(crate) struct ReadTask {
    /// What it reads, for errors and progress (`data/a.parquet`).
    pub(crate) source: Arc<str>,
    pub(crate) open: Arc<OpenFn>,
}

/// Where a dataset's blocks come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// Blocks already in the object store (a materialized dataset).
    Blocks(Arc<Vec<BlockRef>>),
    /// The integers `0..n` (column `id`), in blocks of the run's rows per block.
    Range(u64),
    /// Blocks made as the pipeline pulls them.
    Reads {
        name: &'static str,
        tasks: Arc<Vec<ReadTask>>,
        columns: Option<Arc<[String]>>,
    },
}

/// Where a one-to-one stage runs.
#[derive(Clone)]
pub(crate) enum Compute {
    /// Each block on an ephemeral actor holding `num_cpus`, as a task.
    Tasks { num_cpus: f64 },
    /// Each block as a task of the function registered as `name`, placed
    /// by the cluster (any node that fits `options`).
    Registered {
        name: Arc<str>,
        options: troupe::TaskOptions,
    },
    /// On a pool of long-lived actors, each built once.
    Actors {
        strategy: crate::ActorPoolStrategy,
        make: MakeStateful,
    },
}

/// Operators that need all of their input before they emit a block.
#[derive(Clone)]
pub(crate) enum AllToAll {
    Repartition(usize),
    RandomShuffle {
        seed: u64,
        partitions: Option<usize>,
    },
    Sort {
        keys: Vec<crate::SortKey>,
    },
}

impl AllToAll {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            AllToAll::Repartition(_) => "repartition",
            AllToAll::RandomShuffle { .. } => "random_shuffle",
            AllToAll::Sort { .. } => "sort",
        }
    }
}

/// A node of the plan.
#[derive(Clone)]
pub(crate) enum Plan {
    Source(Source),
    /// One-to-one transforms, fused: `names` joined make the stage's name.
    Map {
        input: Arc<Plan>,
        names: Vec<Arc<str>>,
        compute: Compute,
        /// For `Compute::Tasks`: the fused functions. Unused for pools.
        f: Option<BatchFn>,
    },
    AllToAll {
        input: Arc<Plan>,
        op: AllToAll,
    },
    /// A hash aggregation, fed block by block (it never holds its input).
    GroupBy {
        input: Arc<Plan>,
        keys: Vec<String>,
        aggregations: Vec<Aggregation>,
    },
    Union(Vec<Arc<Plan>>),
    Zip(Arc<Plan>, Arc<Plan>),
    Limit {
        input: Arc<Plan>,
        rows: usize,
    },
}

impl Plan {
    /// A one-line description of the operator chain, source first.
    pub(crate) fn describe(&self) -> String {
        match self {
            Plan::Source(Source::Blocks(b)) => format!("from_blocks({})", b.len()),
            Plan::Source(Source::Range(n)) => format!("range({n})"),
            Plan::Source(Source::Reads {
                name,
                tasks,
                columns: None,
            }) => format!("{name}({} tasks)", tasks.len()),
            Plan::Source(Source::Reads {
                name,
                tasks,
                columns: Some(c),
            }) => {
                format!("{name}({} tasks, columns {})", tasks.len(), c.join(", "))
            }
            Plan::Map { input, names, .. } => {
                let names: Vec<&str> = names.iter().map(|n| &**n).collect();
                format!("{} -> {}", input.describe(), names.join("+"))
            }
            Plan::AllToAll { input, op } => format!("{} -> {}", input.describe(), op.name()),
            Plan::GroupBy { input, keys, .. } => {
                format!("{} -> groupby({})", input.describe(), keys.join(", "))
            }
            Plan::Union(inputs) => {
                let parts: Vec<String> = inputs.iter().map(|p| p.describe()).collect();
                format!("union({})", parts.join(", "))
            }
            Plan::Zip(a, b) => format!("zip({}, {})", a.describe(), b.describe()),
            Plan::Limit { input, rows } => format!("{} -> limit({rows})", input.describe()),
        }
    }

    /// Appends a task-run one-to-one transform, fusing it with the stage
    /// before when that one also runs as tasks with the same CPUs.
    pub(crate) fn then_map(self: &Arc<Plan>, name: &str, num_cpus: f64, f: BatchFn) -> Plan {
        if let Plan::Map {
            input,
            names,
            compute: Compute::Tasks { num_cpus: before },
            f: Some(g),
        } = &**self
        {
            if *before == num_cpus {
                let (g, f2) = (g.clone(), f);
                let fused: BatchFn = Arc::new(move |batch| f2(g(batch)?));
                let mut names = names.clone();
                names.push(name.into());
                return Plan::Map {
                    input: input.clone(),
                    names,
                    compute: Compute::Tasks { num_cpus },
                    f: Some(fused),
                };
            }
        }
        Plan::Map {
            input: self.clone(),
            names: vec![name.into()],
            compute: Compute::Tasks { num_cpus },
            f: Some(f),
        }
    }
}
