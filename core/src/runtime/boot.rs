//! Starting a runtime: the node's GPUs, its store, its scheduler, and the
//! supervision tree.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use tokio::sync::broadcast;
use troupe_objects::{Cause, NodeId, ObjectStore};

use super::{Config, Inner, OwnedTokio, Runtime};
use crate::actor::{Directory, Env};
use crate::error::SpawnError;
use crate::ids::Minter;
use crate::lineage::Lineage;
use crate::object_store::ObjectStoreActor;
use crate::resources::MAX_GPUS;
use crate::scheduler::{Recording, Scheduler, SchedulerActor};
use crate::supervisor::{
    ChildSpec, EventBus, Shutdown, StartContext, Strategy, Supervisor, SupervisorRef,
    SupervisorSpec,
};
use crate::timeline::{Clock, Timeline};
use crate::GpuInfo;

/// Boots a runtime inside the current tokio runtime (embedding). Opens no
/// socket and starts no thread of its own but the CPU threads of sync
/// task bodies (started on first use).
///
/// ```
/// # #[tokio::main] async fn main() {
/// let rt = troupe_core::init(troupe_core::Config::default()).await.unwrap();
/// rt.shutdown().await.unwrap();
/// # }
/// ```
pub async fn init(config: Config) -> Result<Runtime, SpawnError> {
    boot(config, OwnedTokio(None)).await
}

impl Runtime {
    /// Boots a runtime on a tokio runtime of its own, for plain `fn main`.
    /// Drive async code with [`Runtime::block_on`].
    pub fn start(config: Config) -> Result<Runtime, SpawnError> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("troupe-worker");
        if let Some(n) = config.worker_threads {
            builder.worker_threads(n);
        }
        let tokio = builder
            .build()
            .map_err(|e| SpawnError::Tokio(e.to_string()))?;
        let handle = tokio.handle().clone();
        handle.block_on(boot(config, OwnedTokio(Some(tokio))))
    }
}

/// A supervisor child that publishes its `SupervisorRef` once started.
fn publishing(spec: SupervisorSpec, into: Arc<ArcSwapOption<SupervisorRef>>) -> ChildSpec {
    let id = spec.name.clone();
    ChildSpec::from_fn(id, move |ctx: StartContext| {
        let spec = spec.clone();
        let into = into.clone();
        async move {
            let sup = Supervisor::spawn_child(spec, &ctx).await?;
            let cell = sup.cell();
            into.store(Some(Arc::new(sup)));
            Ok(cell)
        }
    })
    .shutdown(Shutdown::Infinity)
}

/// The node's GPUs: detected, or as declared by `resources.num_gpus`.
fn node_gpus(config: &mut Config) -> Result<Vec<GpuInfo>, SpawnError> {
    config
        .resources
        .validate()
        .map_err(SpawnError::InvalidResources)?;
    let declared = config.resources.num_gpus;
    if config.gpu_detector.is_none() && declared.fract() != 0.0 {
        return Err(SpawnError::InvalidResources(format!(
            "a node has whole GPUs, not num_gpus = {declared}; declare the devices it has \
             (a task or actor may then ask for a fraction of one)"
        )));
    }
    let gpus = match &config.gpu_detector {
        Some(detector) => detector.detect().map_err(SpawnError::GpuDetection)?,
        // Bounded by validate (MAX_GPUS): one entry per device, never per
        // declared unit of anything else.
        None => (0..config.resources.num_gpus as u32)
            .map(|ordinal| GpuInfo {
                ordinal,
                name: "declared".to_owned(),
                memory_bytes: None,
            })
            .collect(),
    };
    if gpus.len() as f64 > MAX_GPUS {
        return Err(SpawnError::GpuDetection(format!(
            "the detector reported {} GPUs, more than the most a node may have ({MAX_GPUS})",
            gpus.len()
        )));
    }
    config.resources.num_gpus = gpus.len() as f64;
    for gpu in &gpus {
        tracing::info!(ordinal = gpu.ordinal, name = %gpu.name, memory_bytes = ?gpu.memory_bytes, "GPU");
    }
    metrics::gauge!("troupe_node_gpus").set(gpus.len() as f64);
    Ok(gpus)
}

async fn boot(mut config: Config, tokio: OwnedTokio) -> Result<Runtime, SpawnError> {
    let began = Instant::now();
    crate::panics::install();
    for service in &config.services {
        service.prepare().map_err(|cause| SpawnError::Service {
            service: service.name().to_owned(),
            cause: Cause::from_arc(cause.into()),
        })?;
    }
    let clock = Arc::new(Clock::new());
    let timeline = Arc::new(Timeline::new(
        config.timeline_events,
        config.record_timeline,
        clock.clone(),
    ));
    let gpus = node_gpus(&mut config)?;
    let handle = tokio::runtime::Handle::current();
    let node = NodeId::random();
    let events = EventBus::new(config.event_capacity);
    let system = Arc::new(ArcSwapOption::empty());
    let user = Arc::new(ArcSwapOption::empty());
    let objects = ObjectStore::with_node(node, config.objects.clone());
    if let Some(directory) = &config.cluster.objects {
        objects.set_directory(directory.clone());
    }
    let lineage = Arc::new(Lineage::new(config.lineage_bytes));
    if config.cluster.executor.is_some() {
        // Lineage is kept only for tasks run on other nodes.
        let freed = lineage.clone();
        objects.on_forget(Arc::new(move |id| freed.freed(id)));
    }
    let scheduler = Arc::new(Scheduler::new(
        &config.resources,
        objects.clone(),
        handle.clone(),
        config.cluster.placement.clone(),
        config.cluster.executor.clone(),
        Recording {
            clock: clock.clone(),
            timeline: timeline.clone(),
            task_history: config.task_history,
            lineage,
        },
    ));
    let system_spec = SupervisorSpec::new("system", Strategy::OneForOne)
        .events(events.clone())
        .child(ChildSpec::new(
            "object_store",
            ObjectStoreActor {
                store: objects.clone(),
            },
            (),
        ))
        .child(ChildSpec::new(
            "scheduler",
            SchedulerActor {
                scheduler: scheduler.clone(),
            },
            (),
        ));
    let root_spec = SupervisorSpec::new("root", Strategy::RestForOne)
        .events(events.clone())
        .child(publishing(system_spec, system.clone()))
        .child(publishing(
            // Each user actor carries its own restart cap (max_restarts), so
            // one crash-looping actor cannot take the others down with it.
            SupervisorSpec::dynamic("user")
                .unlimited_intensity()
                .events(events.clone()),
            user.clone(),
        ));
    let root = Supervisor::spawn(root_spec).await?;
    let started_in = began.elapsed();
    tracing::info!(runtime = %config.name, %node, ?started_in, "runtime started");
    let user_path: Arc<str> = user
        .load_full()
        .map_or_else(|| Arc::from("root/user"), |sup| Arc::from(sup.path()));
    let inner = Arc::new_cyclic(|me: &std::sync::Weak<Inner>| {
        let groups = me.clone();
        scheduler.set_bundle_locator(Arc::new(move |group, index| {
            let inner = groups.upgrade()?;
            Runtime { inner }.bundle_node_now(group, index)
        }));
        let me: std::sync::Weak<dyn std::any::Any + Send + Sync> = me.clone();
        scheduler.set_runtime(me.clone());
        Inner {
            env: Arc::new(Env {
                runtime: Some(me),
                events: events.clone(),
                supervisor: "user".into(),
                timeline: timeline.clone(),
            }),
            config,
            gpus,
            ids: Minter::new(node),
            root,
            system,
            user,
            events,
            cluster_events: broadcast::channel(256).0,
            placed: Default::default(),
            hosted: Default::default(),
            groups: Default::default(),
            exits: Default::default(),
            objects,
            scheduler,
            actors: Arc::new(Directory::default()),
            shut_down: AtomicBool::new(false),
            started_in,
            clock,
            timeline,
            user_path,
            services: Default::default(),
            handle,
            _tokio: tokio,
        }
    });
    let runtime = Runtime { inner };
    runtime.recover_lost_arguments();
    if let Err(err) = runtime.start_services().await {
        tracing::error!(runtime = %runtime.inner.config.name, error = %err, "a service failed to start; shutting the runtime down");
        if let Err(shutdown) = runtime.shutdown().await {
            tracing::warn!(error = %shutdown, "shutting down after a failed service start");
        }
        return Err(err);
    }
    Ok(runtime)
}
