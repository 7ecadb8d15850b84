//! What a [`Trainer`](crate::Trainer) runs: the worker group's size and
//! resources, the failure budget, checkpoint storage and retention.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use troupe::placement_group::PlacementStrategy;
use troupe::Resources;

/// The part of the configuration a worker uses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Settings {
    pub(crate) seed: u64,
    pub(crate) bucket_bytes: usize,
    pub(crate) use_gpu: bool,
    pub(crate) threads: usize,
    pub(crate) collective_timeout: Duration,
}

/// Whether a lower or a higher metric is better (for keeping the best
/// checkpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Lower is better (a loss).
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// The trainer's configuration: a builder.
///
/// ```
/// use troupe_train::{Mode, TrainerConfig};
/// let config = TrainerConfig::new(2)
///     .cpus_per_worker(1.0)
///     .max_failures(2)
///     .storage_path(std::env::temp_dir().join("my-run"))
///     .keep_best(3, "loss", Mode::Min);
/// assert_eq!(config.workers(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct TrainerConfig {
    pub(crate) workers: usize,
    pub(crate) resources: Resources,
    pub(crate) strategy: PlacementStrategy,
    pub(crate) use_gpu: bool,
    pub(crate) max_failures: u32,
    pub(crate) storage: Option<PathBuf>,
    pub(crate) keep: Option<(usize, String, Mode)>,
    pub(crate) resume: Option<PathBuf>,
    pub(crate) seed: u64,
    pub(crate) bucket_bytes: usize,
    pub(crate) collective_timeout: Duration,
    pub(crate) restart_timeout: Duration,
    pub(crate) torch_threads: Option<usize>,
}

impl TrainerConfig {
    /// A group of `workers` workers, each holding 1 CPU, packed onto as few
    /// nodes as possible (PACK), no retries, no storage.
    pub fn new(workers: usize) -> Self {
        TrainerConfig {
            workers,
            resources: Resources::cpus(1.0),
            strategy: PlacementStrategy::Pack,
            use_gpu: false,
            max_failures: 0,
            storage: None,
            keep: None,
            resume: None,
            seed: 0,
            bucket_bytes: 25 << 20,
            collective_timeout: Duration::from_secs(600),
            restart_timeout: Duration::from_secs(60),
            torch_threads: None,
        }
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// CPUs each worker holds (default 1).
    pub fn cpus_per_worker(mut self, cpus: f64) -> Self {
        self.resources.num_cpus = cpus;
        self
    }

    /// GPUs each worker holds (default 0). With at least one, a worker's
    /// [`device`](crate::WorkerContext::device) is a CUDA device when
    /// libtorch sees one.
    pub fn gpus_per_worker(mut self, gpus: f64) -> Self {
        self.resources.num_gpus = gpus;
        self.use_gpu = gpus > 0.0;
        self
    }

    /// All of a worker's resources at once (its bundle in the placement group).
    pub fn resources_per_worker(mut self, resources: Resources) -> Self {
        self.use_gpu = resources.num_gpus > 0.0;
        self.resources = resources;
        self
    }

    /// How the placement group places the workers' bundles (default PACK).
    pub fn placement_strategy(mut self, strategy: PlacementStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// How many failures (a worker's panic or error) the group recovers
    /// from by restarting from its last checkpoint (default 0).
    pub fn max_failures(mut self, n: u32) -> Self {
        self.max_failures = n;
        self
    }

    /// Where rank 0 writes checkpoints (needed to report one).
    pub fn storage_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.storage = Some(dir.into());
        self
    }

    /// Keeps only the `k` best checkpoints by `metric` (and always the
    /// latest, which a restart needs); default: keep all.
    pub fn keep_best(mut self, k: usize, metric: impl Into<String>, mode: Mode) -> Self {
        self.keep = Some((k, metric.into(), mode));
        self
    }

    /// Starts from a checkpoint directory that an earlier `fit` wrote (see
    /// [`latest_checkpoint`](crate::latest_checkpoint)): the history up to
    /// it is restored and the workers get it from
    /// [`checkpoint`](crate::WorkerContext::checkpoint).
    pub fn resume_from(mut self, checkpoint_dir: impl Into<PathBuf>) -> Self {
        self.resume = Some(checkpoint_dir.into());
        self
    }

    /// The seed of the data shuffles (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The size of the buckets gradients are all-reduced in (default 25 MiB).
    pub fn bucket_bytes(mut self, bytes: usize) -> Self {
        self.bucket_bytes = bytes.max(1);
        self
    }

    /// How long a collective waits for the other workers before it fails
    /// the attempt (default 10 minutes).
    pub fn collective_timeout(mut self, timeout: Duration) -> Self {
        self.collective_timeout = timeout;
        self
    }

    /// libtorch's intra-op threads for each worker's loop (set on the
    /// worker's thread before the loop runs; with libtorch's OpenMP build
    /// this is per thread). Default: the worker's CPUs, rounded down, at
    /// least 1, as Ray Train sets `OMP_NUM_THREADS`; without it, every
    /// worker would use one thread per core of the machine and the workers
    /// of a node would contend for the cores.
    pub fn torch_threads(mut self, threads: usize) -> Self {
        self.torch_threads = Some(threads.max(1));
        self
    }

    pub(crate) fn threads_per_worker(&self) -> usize {
        self.torch_threads
            .unwrap_or(self.resources.num_cpus.floor() as usize)
            .max(1)
    }

    /// What a worker needs of the configuration (sent to workers on other
    /// nodes).
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            seed: self.seed,
            bucket_bytes: self.bucket_bytes,
            use_gpu: self.use_gpu,
            threads: self.threads_per_worker(),
            collective_timeout: self.collective_timeout,
        }
    }

    /// How long the trainer waits for the placement group to be placed at
    /// the start (a group that does not fit the cluster waits for room),
    /// and for the supervisor to restart the group after a failure
    /// (default 60 s).
    pub fn restart_timeout(mut self, timeout: Duration) -> Self {
        self.restart_timeout = timeout;
        self
    }
}
