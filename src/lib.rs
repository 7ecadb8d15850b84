//! # Troupe
//!
//! A distributed computing framework with the programming model of Ray,
//! built on actors under Erlang/OTP supervisors.
//!
//! ```
//! use troupe::prelude::*;
//!
//! struct Counter { n: u64 }
//!
//! #[troupe::actor]
//! impl Counter {
//!     pub fn incr(&mut self, by: u64) -> u64 { self.n += by; self.n }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = troupe::init(Config::default()).await?;
//! let counter = rt.spawn_actor(ActorOptions::new().name("c"), || Counter { n: 0 }).await?;
//! let pending: Vec<_> = (0..10).map(|_| counter.incr(1)).collect(); // pipelined
//! for p in pending { p.await?; }
//! assert_eq!(counter.incr(0).await?, 10);
//! rt.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! See `examples/quickstart.rs` and `ARCHITECTURE.md`.

// The lint wall (CI denies warnings): no unsafe code but where a
// `SAFETY` comment allows it; every public item documented and truly
// public; no debugging leftovers; no `unwrap` outside tests.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub use troupe_core::local_message;
pub use troupe_core::register_cause;
pub use troupe_core::remote_tree;
pub use troupe_core::{
    actor, error, init, logs, object_store, placement_group, registry, remote, resources, runtime,
    scheduler, supervisor, task, timeline, Actor, ActorError, ActorHandle, ActorId, ActorInfo,
    ActorOptions, AnyObjectRef, Availability, Blob, CallProblem, Cause, ClusterSeams, Config,
    Encoded, Fetched, GetSize, GpuDetector, GpuInfo, IntoArg, Limit, LookupError, NodeId, Object,
    ObjectDirectory, ObjectError, ObjectId, ObjectRef, ObjectStore, ObjectStream, Pending,
    RemoteTree, Resources, Runtime, SchedulingStrategy, ShutdownError, SpawnError, State,
    StateQuery, StoreConfig, SupervisionEvent, SupervisorError, TaskCause, TaskContext, TaskError,
    TaskFilter, TaskId, TaskInfo, TaskOptions, TaskState, TimelineError, TimelineEvent,
};
pub use troupe_macros::{actor, remote};

pub mod guide;

/// The README's Rust snippets, compiled and run as doctests: the quick
/// start cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// GPU support on libtorch: device detection, devices for actors and
/// tasks, tensors and weights as objects (the `gpu` feature).
#[cfg(feature = "gpu")]
pub use troupe_gpu as gpu;

/// The live dashboard page and the Prometheus endpoint (the `dashboard`
/// feature): `Config::default().dashboard("127.0.0.1:8265")` with
/// [`dashboard::ConfigExt`] in scope (the prelude has it).
#[cfg(feature = "dashboard")]
pub use troupe_dashboard as dashboard;

/// Clusters of nodes (the `cluster` feature): `Config::connect(addr)` for a
/// driver, [`cluster::ClusterNode`] and [`cluster::ClusterOptions`] for
/// nodes, the `troupe` command line in [`cluster::cli`].
#[cfg(feature = "cluster")]
pub use troupe_cluster as cluster;

/// Running the `troupe` commands from the user's own binary (the
/// `cluster` feature): call [`node::main_if_requested`] first in `main`,
/// then `my_program troupe start --address HOST:PORT` starts a node that
/// runs this program's remote functions.
#[cfg(feature = "cluster")]
pub mod node {
    pub use troupe_cluster::cli::main_if_requested;
}

/// With the `mimalloc` feature, Troupe installs mimalloc as the global
/// allocator (actor creation is allocation-bound; see the README).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[doc(hidden)]
pub use troupe_core::__private;

/// The names most programs need.
pub mod prelude {
    /// `Config::connect(addr)` and `.cluster_node(options)`.
    #[cfg(feature = "cluster")]
    pub use troupe_cluster::ConfigExt as _;
    pub use troupe_core::placement_group::{
        PlacementGroup, PlacementGroupOptions, PlacementGroupState, PlacementStrategy,
    };
    pub use troupe_core::supervisor::{
        Backoff, ChildSpec, Intensity, Restart, Shutdown, Strategy, SupervisionEvent, Supervisor,
        SupervisorRef, SupervisorSpec,
    };
    pub use troupe_core::{
        ActorError, ActorOptions, Blob, Config, GetSize, Limit, ObjectError, ObjectRef, Pending,
        RemoteTree, Resources, Runtime, SpawnError, StoreConfig, TaskError, TaskOptions,
    };
    /// `.dashboard(addr)` and `.metrics_addr(addr)` on `Config`.
    #[cfg(feature = "dashboard")]
    pub use troupe_dashboard::ConfigExt as _;
}
