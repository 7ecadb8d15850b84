//! How to start a runtime.

use std::sync::Arc;
use std::time::Duration;

use troupe_objects::{ObjectDirectory, StoreConfig};

use super::service::{RuntimeService, ServiceList};
use crate::remote::{Placement, RemoteExecutor};
use crate::{GpuDetector, Resources};

/// How to start a runtime.
///
/// ```
/// use std::time::Duration;
/// let config = troupe_core::Config::default()
///     .name("my-service")
///     .shutdown_timeout(Duration::from_secs(2));
/// assert!(config.resources.num_cpus >= 1.0);
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// A label for logs and metrics.
    pub name: String,
    /// What this node offers to the scheduler. Default: every core, no GPU.
    pub resources: Resources,
    /// How long `shutdown` waits for the ordered stop before killing.
    pub shutdown_timeout: Duration,
    /// Supervision events kept for slow subscribers.
    pub event_capacity: usize,
    /// Worker threads of the tokio runtime that `Runtime::start` builds
    /// (default: one per core). Ignored by `init`, which uses yours.
    pub worker_threads: Option<usize>,
    /// The object store: memory budget, spill threshold and directory.
    pub objects: StoreConfig,
    /// Finds the node's GPUs at start (the `gpu` crate's libtorch detector,
    /// say); they replace `resources.num_gpus`. Without one, the node has
    /// `resources.num_gpus` GPUs as declared (ordinals `0..n`), which is how
    /// tests exercise GPU placement on machines without GPUs.
    pub gpu_detector: Option<Arc<dyn GpuDetector>>,
    /// The cluster's seams (none: the node runs alone, and opens no
    /// socket). See [`remote`](crate::remote).
    pub cluster: ClusterSeams,
    /// Finished tasks the state API keeps (the last ones; default 10,000).
    /// 0 keeps none.
    pub task_history: usize,
    /// Whether the timeline records from the start (default: no; see
    /// [`Runtime::record_timeline`](super::Runtime::record_timeline)).
    pub record_timeline: bool,
    /// Events the timeline keeps (the last ones; default 1,000,000, about
    /// 100 MB at most). 0 never records.
    pub timeline_events: usize,
    /// Services started beside the runtime (a dashboard, say). See
    /// [`RuntimeService`].
    pub services: ServiceList,
    /// Bytes of lineage kept to make lost objects again (default 1 GiB, as
    /// Ray): for each retriable task this node submitted whose results live
    /// on another node, its function, encoded arguments and options. Past
    /// it, the oldest lineage is evicted, and its results, if lost, cannot
    /// be made again.
    pub lineage_bytes: u64,
}

/// What a cluster plugs into a node (all optional; see
/// [`remote`](crate::remote)).
#[derive(Clone, Default)]
pub struct ClusterSeams {
    /// Where tasks that do not fit this node go.
    pub placement: Option<Arc<dyn Placement>>,
    /// Runs tasks and actor calls on other nodes.
    pub executor: Option<Arc<dyn RemoteExecutor>>,
    /// Finds objects that live on other nodes.
    pub objects: Option<Arc<dyn ObjectDirectory>>,
    /// Shows every node (the dashboard's cluster view).
    pub inspector: Option<Arc<dyn super::ClusterInspector>>,
}

impl std::fmt::Debug for ClusterSeams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSeams")
            .field("placement", &self.placement.is_some())
            .field("executor", &self.executor.is_some())
            .field("objects", &self.objects.is_some())
            .field("inspector", &self.inspector.is_some())
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            name: "troupe".to_owned(),
            resources: Resources::cpus(cores as f64),
            shutdown_timeout: Duration::from_secs(10),
            event_capacity: 1024,
            worker_threads: None,
            objects: StoreConfig::default(),
            gpu_detector: None,
            cluster: ClusterSeams::default(),
            task_history: 10_000,
            record_timeline: false,
            timeline_events: 1_000_000,
            services: Vec::new(),
            lineage_bytes: 1 << 30,
        }
    }
}

impl Config {
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the node's resources.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Sets the shutdown deadline.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets the object store's settings.
    pub fn objects(mut self, objects: StoreConfig) -> Self {
        self.objects = objects;
        self
    }

    /// Detects the node's GPUs with `detector` when the runtime starts.
    pub fn gpu_detector(mut self, detector: impl GpuDetector) -> Self {
        self.gpu_detector = Some(Arc::new(detector));
        self
    }

    /// Sets the worker threads of an owned tokio runtime.
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = Some(n.max(1));
        self
    }

    /// Plugs the node into a cluster.
    pub fn cluster(mut self, seams: ClusterSeams) -> Self {
        self.cluster = seams;
        self
    }

    /// Keeps the last `n` finished tasks for the state API.
    pub fn task_history(mut self, n: usize) -> Self {
        self.task_history = n;
        self
    }

    /// Records the timeline from the start (Chrome trace of every task
    /// attempt and actor call; see
    /// [`Runtime::timeline`](super::Runtime::timeline)).
    pub fn record_timeline(mut self, on: bool) -> Self {
        self.record_timeline = on;
        self
    }

    /// Keeps at most `n` timeline events (the last ones).
    pub fn timeline_events(mut self, n: usize) -> Self {
        self.timeline_events = n;
        self
    }

    /// Keeps at most `bytes` of lineage (see [`Config::lineage_bytes`]).
    pub fn lineage_bytes(mut self, bytes: u64) -> Self {
        self.lineage_bytes = bytes;
        self
    }

    /// Runs `service` beside the runtime: started after boot, stopped
    /// first at shutdown (see [`RuntimeService`]).
    pub fn service(mut self, service: impl RuntimeService) -> Self {
        self.services.push(Arc::new(service));
        self
    }
}
