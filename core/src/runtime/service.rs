//! Services that run beside a runtime (**API boundary**): what a crate
//! that is not core (the dashboard, say, which serves HTTP: core never
//! opens a socket) plugs in through [`Config::service`](super::Config::service).
//!
//! A service is started once the runtime has booted, in the order the
//! config lists them, and stopped first at shutdown, in reverse order. One
//! that fails to start fails `init` (the runtime is shut down again), with
//! an error that names it: asked-for observability that is silently
//! missing is worse than a clear error.

use std::fmt;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Inner, Runtime};

/// What a service failed to start with.
pub type ServiceError = Box<dyn std::error::Error + Send + Sync>;

/// Something to run beside every runtime started with this config (a
/// dashboard, a metrics endpoint). Implement it in your own crate and add
/// it with [`Config::service`](super::Config::service).
///
/// ```
/// use troupe_core::runtime::{RunningService, RuntimeService, ServiceError, WeakRuntime};
/// use troupe_core::{Config, Runtime};
/// use futures::future::BoxFuture;
///
/// /// Logs the number of live actors every second.
/// #[derive(Debug)]
/// struct Census;
///
/// struct Running(tokio::task::JoinHandle<()>);
///
/// impl RunningService for Running {
///     fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
///         self.0.abort();
///         Box::pin(async {})
///     }
/// }
///
/// impl Drop for Running {
///     fn drop(&mut self) {
///         self.0.abort(); // dropped without stop: stop without waiting
///     }
/// }
///
/// impl RuntimeService for Census {
///     fn name(&self) -> &str {
///         "census"
///     }
///     fn start(&self, runtime: &Runtime) -> BoxFuture<'static, Result<Box<dyn RunningService>, ServiceError>> {
///         // Weak: a service must not keep its runtime alive.
///         let runtime: WeakRuntime = runtime.downgrade();
///         Box::pin(async move {
///             let task = tokio::spawn(async move {
///                 while let Some(rt) = runtime.upgrade() {
///                     println!("{} actors", rt.live_actors());
///                     drop(rt);
///                     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///                 }
///             });
///             Ok(Box::new(Running(task)) as Box<dyn RunningService>)
///         })
///     }
/// }
///
/// # #[tokio::main] async fn main() {
/// let rt = troupe_core::init(Config::default().service(Census)).await.unwrap();
/// assert_eq!(rt.services()[0].name, "census");
/// rt.shutdown().await.unwrap();
/// # }
/// ```
pub trait RuntimeService: fmt::Debug + Send + Sync + 'static {
    /// A short name, for logs, errors and [`Runtime::services`].
    fn name(&self) -> &str;

    /// Called first when a runtime boots, before any of its parts exist:
    /// for process-wide set-up those parts must see when they are made (a
    /// `metrics` recorder: the runtime registers its metric handles once,
    /// against the recorder installed then). An error fails `init`.
    /// Default: nothing.
    fn prepare(&self) -> Result<(), ServiceError> {
        Ok(())
    }

    /// Starts the service for `runtime`, which has booted. Called inside
    /// the runtime's tokio runtime (spawn what it runs there). Keep a
    /// [`WeakRuntime`], not a `Runtime`: the runtime holds the running
    /// service, and a strong handle back would keep both alive forever.
    fn start(
        &self,
        runtime: &Runtime,
    ) -> BoxFuture<'static, Result<Box<dyn RunningService>, ServiceError>>;
}

/// The name of the service that serves the process's metrics in
/// Prometheus's format (the dashboard crate's `MetricsExporter`): a
/// cluster node advertises its endpoint's port to the others, so that one
/// node can list every node's for Prometheus's service discovery.
pub const METRICS_SERVICE: &str = "metrics";

/// A started service, held by its runtime until shutdown.
pub trait RunningService: Send + Sync + 'static {
    /// Where it can be reached, if anywhere (a URL): what
    /// [`Runtime::services`] reports.
    fn endpoint(&self) -> Option<String> {
        None
    }

    /// Stops it (at runtime shutdown, before anything else stops).
    /// Dropping it without `stop` (a runtime dropped without shutdown)
    /// must stop it too, without waiting.
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// A service of a running runtime, as [`Runtime::services`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Its name.
    pub name: String,
    /// Where it can be reached, if anywhere.
    pub endpoint: Option<String>,
}

/// A handle to a runtime that does not keep it alive (what services hold).
#[derive(Clone)]
pub struct WeakRuntime(pub(crate) Weak<Inner>);

impl WeakRuntime {
    /// The runtime, if it is still alive (it may have been shut down: check
    /// [`Runtime::is_shut_down`]).
    pub fn upgrade(&self) -> Option<Runtime> {
        self.0.upgrade().map(|inner| Runtime { inner })
    }
}

impl fmt::Debug for WeakRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakRuntime")
            .field("alive", &(self.0.strong_count() > 0))
            .finish()
    }
}

/// The running services of a runtime.
pub(crate) type Services = std::sync::Mutex<Vec<(String, Box<dyn RunningService>)>>;

impl Runtime {
    /// A handle that does not keep the runtime alive.
    pub fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.inner))
    }

    /// The services running beside this runtime, in start order.
    pub fn services(&self) -> Vec<ServiceInfo> {
        self.inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, running)| ServiceInfo {
                name: name.clone(),
                endpoint: running.endpoint(),
            })
            .collect()
    }

    /// Starts the config's services in order; the first failure is
    /// returned, with the services started before it stopped again.
    pub(crate) async fn start_services(&self) -> Result<(), crate::error::SpawnError> {
        let services = self.inner.config.services.clone();
        for service in services {
            let name = service.name().to_owned();
            match service.start(self).await {
                Ok(running) => {
                    tracing::info!(service = %name, endpoint = ?running.endpoint(), "service started");
                    self.inner
                        .services
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name, running));
                }
                Err(cause) => {
                    self.stop_services().await;
                    return Err(crate::error::SpawnError::Service {
                        service: name,
                        cause: troupe_objects::Cause::from_arc(cause.into()),
                    });
                }
            }
        }
        Ok(())
    }

    /// Stops the running services, newest first.
    pub(crate) async fn stop_services(&self) {
        let running = std::mem::take(
            &mut *self
                .inner
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (name, service) in running.into_iter().rev() {
            service.stop().await;
            tracing::debug!(service = %name, "service stopped");
        }
    }
}

/// The services a config asks for (shared: a config may start several
/// runtimes).
pub(crate) type ServiceList = Vec<Arc<dyn RuntimeService>>;
