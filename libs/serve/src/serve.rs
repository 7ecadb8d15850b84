//! [`Serve`]: the deployments of one program and their HTTP proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use troupe::{ActorOptions, Limit, Runtime};

use crate::controller::{
    apply_settings, deployment_status, start_ticker, Controller, ControllerHandle, DeploymentState,
    Registration, KILL_TIMEOUT,
};
use crate::deployment::{
    BatchConfig, Codec, Deployment, DeploymentOptions, ErasedDeployment, Factory, Typed,
};
use crate::directory::{self, DirectoryHandle};
use crate::error::ServeError;
use crate::handle::DeploymentHandle;
use crate::lock::{lock, read, write};
use crate::plan::Action;
use crate::proxy::{self, HttpServer};
use crate::registry;
use crate::router::{Router, RouterSettings};
use crate::status::ServeStatus;

/// How serving runs as a whole.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub(crate) http: Option<SocketAddr>,
    pub(crate) control_interval: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) app: String,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            http: None,
            control_interval: Duration::from_millis(100),
            max_body_bytes: 16 << 20,
            max_concurrent_requests: 10_000,
            shutdown_timeout: Duration::from_secs(30),
            app: "default".to_owned(),
        }
    }
}

impl ServeOptions {
    /// No HTTP proxy (handles only), a control step every 100 ms, bodies up
    /// to 16 MiB, 10,000 HTTP requests in flight, 30 s to shut down, and
    /// the name `"default"`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run the HTTP proxy on `addr` (port 0 picks a free port; see
    /// [`Serve::http_addr`]).
    pub fn http(mut self, addr: SocketAddr) -> Self {
        self.http = Some(addr);
        self
    }

    /// How often each deployment's controller looks at its replicas
    /// (health checks, autoscaling, drains).
    pub fn control_interval(mut self, interval: Duration) -> Self {
        self.control_interval = interval;
        self
    }

    /// The largest request body the proxy reads (HTTP 413 beyond it).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The most HTTP requests to deployments the proxy has in flight, all
    /// routes together; one more is refused at once with HTTP 503 (kind
    /// `proxy_overloaded`). Each deployment's own queue bound applies
    /// within this; the `/-/` paths are not counted.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent_requests = n.max(1);
        self
    }

    /// The name other processes of the cluster find this `Serve` by, with
    /// [`DeploymentHandle::connect`] (`"default"` unless set). Two `Serve`s
    /// on one runtime need two names ([`ServeError::AppTaken`]).
    pub fn app(mut self, name: impl Into<String>) -> Self {
        self.app = name.into();
        self
    }

    /// How long [`Serve::shutdown`] waits for the HTTP requests in flight.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}

/// One deployment and what drives it.
struct Deployed {
    state: Arc<DeploymentState>,
    controller: ControllerHandle,
    stop: watch::Sender<bool>,
    route: Mutex<Option<String>>,
}

/// An HTTP route: a path prefix and its deployment's router.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) prefix: String,
    pub(crate) router: Arc<Router>,
}

pub(crate) struct ServeInner {
    rt: Runtime,
    options: ServeOptions,
    deployments: Mutex<HashMap<String, Arc<Deployed>>>,
    /// Longest prefix first.
    routes: RwLock<Arc<Vec<Route>>>,
    http: Mutex<Option<HttpServer>>,
    http_addr: Option<SocketAddr>,
    /// Where other processes find the deployments.
    directory: Mutex<Option<DirectoryHandle>>,
}

impl ServeInner {
    /// Deployment `name`'s state, if it is deployed.
    pub(crate) fn deployment(&self, name: &str) -> Option<Arc<DeploymentState>> {
        lock(&self.deployments).get(name).map(|d| d.state.clone())
    }

    /// A typed handle on deployment `name` ([`Serve::handle`]).
    pub(crate) fn handle<D: Deployment>(
        &self,
        name: &str,
    ) -> Result<DeploymentHandle<D>, ServeError> {
        let router = self.router::<D>(name)?;
        Ok(DeploymentHandle::new(&self.options.app, router))
    }

    /// The router of deployment `name`, if it serves `D`'s types.
    pub(crate) fn router<D: Deployment>(&self, name: &str) -> Result<Arc<Router>, ServeError> {
        let state = self
            .deployment(name)
            .ok_or_else(|| ServeError::NoDeployment(name.to_owned()))?;
        check_types(name, &state.router.codec, &Codec::of::<D>())?;
        Ok(state.router.clone())
    }

    /// The deployment serving `path`: the longest prefix that is the path
    /// or a whole-segment start of it.
    pub(crate) fn route(&self, path: &str) -> Option<Arc<Router>> {
        let routes = read(&self.routes).clone();
        routes
            .iter()
            .find(|r| {
                r.prefix == "/"
                    || path == r.prefix
                    || (path.starts_with(&r.prefix)
                        && path.as_bytes().get(r.prefix.len()) == Some(&b'/'))
            })
            .map(|r| r.router.clone())
    }

    pub(crate) fn routes(&self) -> Vec<(String, String)> {
        read(&self.routes)
            .iter()
            .map(|r| (r.prefix.clone(), r.router.name.clone()))
            .collect()
    }

    pub(crate) fn status(&self) -> ServeStatus {
        let mut deployments: Vec<Arc<Deployed>> =
            lock(&self.deployments).values().cloned().collect();
        deployments.sort_by(|a, b| a.state.name.cmp(&b.state.name));
        ServeStatus {
            proxy: self.http_addr.map(|a| a.to_string()),
            deployments: deployments
                .iter()
                .map(|d| deployment_status(&d.state, lock(&d.route).clone()))
                .collect(),
        }
    }
}

/// The deployments of one program on one Troupe runtime, and their HTTP
/// proxy. Cheap to clone.
///
/// ```
/// use std::net::SocketAddr;
/// use troupe::prelude::*;
/// use troupe_serve::{Deployment, DeploymentOptions, HandlerError, Serve, ServeOptions};
///
/// struct Echo;
///
/// impl Deployment for Echo {
///     type Request = serde_json::Value;
///     type Response = serde_json::Value;
///     async fn call(&mut self, request: Self::Request) -> Result<Self::Response, HandlerError> {
///         Ok(request)
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = troupe::init(Config::default()).await?;
/// let addr: SocketAddr = "127.0.0.1:0".parse()?;
/// let serve = Serve::start(&rt, ServeOptions::new().http(addr)).await?;
/// let echo = serve
///     .deploy("echo", DeploymentOptions::new().replicas(2).route_prefix("/echo"), || Echo)
///     .await?;
/// assert_eq!(echo.call(serde_json::json!({"x": 1})).await?, serde_json::json!({"x": 1}));
/// println!("POST JSON to http://{}/echo", serve.http_addr().expect("proxy runs"));
/// serve.shutdown().await?;
/// rt.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Serve {
    inner: Arc<ServeInner>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("http_addr", &self.inner.http_addr)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// Starts serving on `rt`: binds the HTTP proxy if the options ask for
    /// one. Call it inside the runtime's tokio runtime.
    pub async fn start(rt: &Runtime, options: ServeOptions) -> Result<Self, ServeError> {
        let listener =
            match options.http {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
                    |source| ServeError::Bind {
                        addr: addr.to_string(),
                        source,
                    },
                )?),
                None => None,
            };
        let http_addr = match &listener {
            Some(l) => Some(l.local_addr().map_err(|source| ServeError::Bind {
                addr: format!("{:?}", options.http),
                source,
            })?),
            None => None,
        };
        let inner = Arc::new(ServeInner {
            rt: rt.clone(),
            options,
            deployments: Mutex::new(HashMap::new()),
            routes: RwLock::new(Arc::new(Vec::new())),
            http: Mutex::new(None),
            http_addr,
            directory: Mutex::new(None),
        });
        let directory = directory::start(rt, &inner.options.app, &inner).await?;
        *lock(&inner.directory) = Some(directory);
        if let Some(listener) = listener {
            let server = proxy::start(listener, Arc::downgrade(&inner), &inner.options);
            *lock(&inner.http) = Some(server);
            tracing::info!(addr = ?http_addr, "serve proxy listening");
        }
        Ok(Self { inner })
    }

    /// Where the HTTP proxy listens (with the port picked for port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.inner.http_addr
    }

    /// Deploys `factory`'s code as deployment `name` and returns once its
    /// replicas run. Deploying a name again updates it: another
    /// `version` replaces the replicas one at a time (a rolling update,
    /// no request fails), the same version applies the new options.
    ///
    /// If a replica cannot start, a new deployment is removed and the
    /// error returned; an update returns the error while the old replicas
    /// keep serving and the controller keeps trying (deploy the previous
    /// version again to roll back). The request and response types of a
    /// name cannot change ([`ServeError::WrongType`]; delete it first).
    pub async fn deploy<D, F>(
        &self,
        name: &str,
        options: DeploymentOptions,
        factory: F,
    ) -> Result<DeploymentHandle<D>, ServeError>
    where
        D: Deployment,
        F: Fn() -> D + Send + Sync + 'static,
    {
        options.validate(name)?;
        if options.on_cluster {
            return Err(ServeError::InvalidOptions {
                deployment: name.to_owned(),
                problem: "replicas on the cluster are built by kind on their nodes, and this deployment's code is a closure, which cannot reach another process; register it with troupe_serve::register_deployment!(\"kind\", Type, || ...) and deploy it with Serve::deploy_registered, or leave replicas_on_cluster off".into(),
            });
        }
        let factory: Factory =
            Arc::new(move || Box::new(Typed(factory())) as Box<dyn ErasedDeployment>);
        let router = self
            .deploy_erased(name, options, factory, Codec::of::<D>(), None)
            .await?;
        Ok(DeploymentHandle::new(&self.inner.options.app, router))
    }

    /// Deploys the deployment type registered as `kind` with
    /// [`register_deployment!`](crate::register_deployment), as
    /// [`deploy`](Self::deploy) does; with
    /// [`DeploymentOptions::replicas_on_cluster`] its replicas run on the
    /// nodes of the cluster, built there by kind. `D` must be the type
    /// registered under `kind` ([`ServeError::WrongType`] otherwise); an
    /// unknown kind is [`ServeError::UnknownKind`].
    pub async fn deploy_registered<D: Deployment>(
        &self,
        name: &str,
        options: DeploymentOptions,
        kind: &str,
    ) -> Result<DeploymentHandle<D>, ServeError> {
        let found = self.registered_kind(name, kind)?;
        if found.types.type_id != std::any::TypeId::of::<D>() {
            return Err(ServeError::WrongType {
                deployment: name.to_owned(),
                expected: std::any::type_name::<D>(),
                actual: found.types.type_name,
            });
        }
        let router = self.deploy_found(name, options, kind, found).await?;
        Ok(DeploymentHandle::new(&self.inner.options.app, router))
    }

    /// Deploys the kind registered as `kind`, whatever its type (a config
    /// file's entry).
    pub(crate) async fn deploy_kind(
        &self,
        name: &str,
        options: DeploymentOptions,
        kind: &str,
    ) -> Result<(), ServeError> {
        let found = self.registered_kind(name, kind)?;
        self.deploy_found(name, options, kind, found)
            .await
            .map(|_| ())
    }

    fn registered_kind(&self, name: &str, kind: &str) -> Result<registry::Registered, ServeError> {
        registry::registered(kind).map_err(|why| match why {
            registry::Unregistered::Unknown(_) => ServeError::UnknownKind {
                deployment: name.to_owned(),
                kind: kind.to_owned(),
                registered: registry::registered_deployments()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            },
            twice @ registry::Unregistered::Twice(_) => ServeError::InvalidOptions {
                deployment: name.to_owned(),
                problem: twice.to_string(),
            },
        })
    }

    async fn deploy_found(
        &self,
        name: &str,
        options: DeploymentOptions,
        kind: &str,
        found: registry::Registered,
    ) -> Result<Arc<Router>, ServeError> {
        options.validate(name)?;
        let make = found.make.clone();
        let factory: Factory = Arc::new(move || make());
        let registration = Registration {
            kind: kind.to_owned(),
            remote: found.types.remote,
        };
        self.deploy_erased(
            name,
            options,
            factory,
            found.types.codec,
            Some(registration),
        )
        .await
    }

    async fn deploy_erased(
        &self,
        name: &str,
        options: DeploymentOptions,
        factory: Factory,
        codec: Codec,
        registered: Option<Registration>,
    ) -> Result<Arc<Router>, ServeError> {
        let existing = lock(&self.inner.deployments).get(name).cloned();
        let created = existing.is_none();
        let deployed = match existing {
            Some(d) => {
                check_types(name, &d.state.router.codec, &codec)?;
                self.reroute(name, &d, options.route_prefix.clone())?;
                d.state.update(options, factory, registered);
                d
            }
            None => {
                self.create(name, options, factory, codec, registered)
                    .await?
            }
        };
        if let Err(e) = self.settle(&deployed).await {
            if created {
                // A new deployment that could not start is not left behind.
                let _ = self.delete(name).await;
            }
            return Err(e);
        }
        Ok(deployed.state.router.clone())
    }

    async fn create(
        &self,
        name: &str,
        options: DeploymentOptions,
        factory: Factory,
        codec: Codec,
        registered: Option<Registration>,
    ) -> Result<Arc<Deployed>, ServeError> {
        let settings = RouterSettings {
            max_ongoing: Default::default(),
            max_queued: Default::default(),
            timeout_ms: Default::default(),
            retry: Default::default(),
        };
        let router = Arc::new(Router::new(name, codec, settings));
        apply_settings(&router, &options);
        let route = options.route_prefix.clone();
        let state = Arc::new(DeploymentState::new(
            name,
            self.inner.rt.clone(),
            router,
            options,
            factory,
            registered,
        ));
        let for_controller = state.clone();
        let controller = self
            .inner
            .rt
            .spawn_actor(
                ActorOptions::new().max_restarts(Limit::Unlimited),
                move || Controller {
                    state: for_controller.clone(),
                },
            )
            .await
            .map_err(|source| ServeError::Spawn {
                deployment: name.to_owned(),
                source: Box::new(source),
            })?;
        let (stop, stopped) = watch::channel(false);
        // The ticker ends when `stop` turns true.
        let _ticker = start_ticker(
            name,
            controller.clone(),
            self.inner.options.control_interval,
            stopped,
        );
        let deployed = Arc::new(Deployed {
            state,
            controller,
            stop,
            route: Mutex::new(None),
        });
        let inserted = {
            let mut deployments = lock(&self.inner.deployments);
            let free = !deployments.contains_key(name);
            if free {
                deployments.insert(name.to_owned(), deployed.clone());
            }
            free
        };
        if !inserted {
            self.stop_driver(&deployed).await;
            return Err(ServeError::InvalidOptions {
                deployment: name.to_owned(),
                problem: "deployed twice at once; deploy it again to update it".into(),
            });
        }
        match self.reroute(name, &deployed, route) {
            Ok(()) => Ok(deployed),
            Err(e) => {
                lock(&self.inner.deployments).remove(name);
                self.stop_driver(&deployed).await;
                Err(e)
            }
        }
    }

    /// Points `prefix` at deployment `name` (and its old prefix nowhere).
    fn reroute(
        &self,
        name: &str,
        deployed: &Deployed,
        prefix: Option<String>,
    ) -> Result<(), ServeError> {
        if let Some(p) = &prefix {
            self.add_route(name, p, deployed)?;
        }
        let mut routes = write(&self.inner.routes);
        let kept: Vec<Route> = routes
            .iter()
            .filter(|r| r.router.name != name || Some(&r.prefix) == prefix.as_ref())
            .cloned()
            .collect();
        *routes = Arc::new(kept);
        drop(routes);
        *lock(&deployed.route) = prefix;
        Ok(())
    }

    fn add_route(&self, name: &str, prefix: &str, deployed: &Deployed) -> Result<(), ServeError> {
        let mut routes = write(&self.inner.routes);
        if let Some(owner) = routes.iter().find(|r| r.prefix == prefix) {
            if owner.router.name == name {
                return Ok(());
            }
            return Err(ServeError::RouteTaken {
                prefix: prefix.to_owned(),
                owner: owner.router.name.clone(),
            });
        }
        let mut next: Vec<Route> = routes.iter().cloned().collect();
        next.push(Route {
            prefix: prefix.to_owned(),
            router: deployed.state.router.clone(),
        });
        next.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        *routes = Arc::new(next);
        Ok(())
    }

    /// Steps the controller until the deployment has reached its target.
    async fn settle(&self, deployed: &Deployed) -> Result<(), ServeError> {
        let (start, drain, n) = {
            let spec = lock(&deployed.state.spec);
            (
                spec.options.start_timeout,
                spec.options.drain_timeout,
                spec.options.replicas.max(1),
            )
        };
        let limit = (start + drain) * (n as u32 + 1);
        let until = Instant::now() + limit;
        loop {
            if Instant::now() >= until {
                return Err(ServeError::Timeout {
                    what: format!("deploying {:?}", deployed.state.name),
                    after: limit,
                });
            }
            let action = match tokio::time::timeout(
                until.saturating_duration_since(Instant::now()),
                deployed.controller.step(),
            )
            .await
            {
                Ok(Ok(result)) => result?,
                // The controller panicked (it is restarted) or timed out:
                // look again.
                Ok(Err(_)) | Err(_) => Action::Idle,
            };
            if action == Action::Idle {
                if deployed.state.settled() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    /// A typed handle on deployment `name`, which must serve `D`'s request
    /// and response types.
    pub fn handle<D: Deployment>(&self, name: &str) -> Result<DeploymentHandle<D>, ServeError> {
        self.inner.handle(name)
    }

    /// Changes a batching deployment's batch size and wait, from its next
    /// batch on.
    pub fn set_batching(&self, name: &str, batching: BatchConfig) -> Result<(), ServeError> {
        let deployed = lock(&self.inner.deployments)
            .get(name)
            .cloned()
            .ok_or_else(|| ServeError::NoDeployment(name.to_owned()))?;
        if batching.max_batch_size == 0 {
            return Err(ServeError::InvalidOptions {
                deployment: name.to_owned(),
                problem: "batching.max_batch_size must be at least 1".into(),
            });
        }
        let mut spec = lock(&deployed.state.spec);
        if spec.options.batching.is_none() {
            return Err(ServeError::InvalidOptions {
                deployment: name.to_owned(),
                problem: "it was deployed without batching; deploy it with \
                          DeploymentOptions::batching first"
                    .into(),
            });
        }
        spec.options.batching = Some(batching);
        *write(&deployed.state.batching) = batching;
        Ok(())
    }

    /// Every deployment, its replicas and their health.
    pub fn status(&self) -> ServeStatus {
        self.inner.status()
    }

    /// Deletes deployment `name`: its route goes at once, requests waiting
    /// in its queue fail, and its replicas drain (within the drain
    /// timeout) and stop.
    pub async fn delete(&self, name: &str) -> Result<(), ServeError> {
        let deployed = lock(&self.inner.deployments)
            .remove(name)
            .ok_or_else(|| ServeError::NoDeployment(name.to_owned()))?;
        // New calls through handles fail at once, from the moment the
        // deployment is gone from the status (not once its controller has
        // stopped); those on replicas finish.
        deployed.state.router.close();
        {
            let mut routes = write(&self.inner.routes);
            let kept: Vec<Route> = routes
                .iter()
                .filter(|r| r.router.name != name)
                .cloned()
                .collect();
            *routes = Arc::new(kept);
        }
        self.stop_driver(&deployed).await;
        deployed.state.drain_all().await;
        Ok(())
    }

    async fn stop_driver(&self, deployed: &Deployed) {
        let _ = deployed.stop.send(true);
        // The controller answers its step in progress first (a replica
        // start has its own timeout); past that it is killed.
        let grace = lock(&deployed.state.spec).options.start_timeout;
        if tokio::time::timeout(grace, deployed.controller.stop())
            .await
            .is_err()
        {
            let _ = tokio::time::timeout(KILL_TIMEOUT, deployed.controller.kill(true)).await;
        }
    }

    /// Stops serving: the proxy stops accepting connections and finishes
    /// the requests it has (within the shutdown timeout), then every
    /// deployment drains and stops.
    pub async fn shutdown(&self) -> Result<(), ServeError> {
        let directory = lock(&self.inner.directory).take();
        if let Some(directory) = directory {
            // Connected handles learn that the deployments are gone.
            let _ = tokio::time::timeout(KILL_TIMEOUT, directory.stop()).await;
        }
        let server = lock(&self.inner.http).take();
        if let Some(server) = server {
            server.stop(self.inner.options.shutdown_timeout).await;
        }
        let names: Vec<String> = lock(&self.inner.deployments).keys().cloned().collect();
        let deletes = names.iter().map(|n| self.delete(n));
        for result in futures::future::join_all(deletes).await {
            if let Err(ServeError::NoDeployment(_)) | Ok(()) = result {
                continue;
            }
            result?;
        }
        Ok(())
    }
}

fn check_types(name: &str, have: &Codec, want: &Codec) -> Result<(), ServeError> {
    if have.request_type != want.request_type || have.response_type != want.response_type {
        return Err(ServeError::WrongType {
            deployment: name.to_owned(),
            expected: want.request_type,
            actual: have.request_type,
        });
    }
    Ok(())
}
