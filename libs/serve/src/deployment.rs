//! What a deployment is: the [`Deployment`] trait a replica implements,
//! and the [`DeploymentOptions`] that say how many replicas run, what they
//! hold, how they are routed to, batched, health-checked and scaled.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use troupe::Resources;

use crate::error::{HandlerError, ServeError};

/// A boxed future, as the erased replica returns.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A request on its way to a replica, its type erased.
pub(crate) type AnyRequest = Box<dyn Any + Send>;
/// A response on its way back, its type erased.
pub(crate) type AnyResponse = Box<dyn Any + Send>;

/// A replica's code: one value per replica, built by the deployment's
/// factory (again after a panic), answering one request (or one batch) at
/// a time in its actor.
///
/// Requests and responses are serde types: the HTTP proxy decodes a JSON
/// body into a [`Deployment::Request`] and encodes the
/// [`Deployment::Response`]; a [`DeploymentHandle`](crate::DeploymentHandle)
/// passes them in-process without encoding.
///
/// ```
/// use troupe_serve::{Deployment, HandlerError};
///
/// struct Doubler;
///
/// impl Deployment for Doubler {
///     type Request = Vec<i64>;
///     type Response = Vec<i64>;
///     async fn call(&mut self, request: Vec<i64>) -> Result<Vec<i64>, HandlerError> {
///         Ok(request.into_iter().map(|x| 2 * x).collect())
///     }
/// }
/// ```
pub trait Deployment: Send + 'static {
    /// What a request decodes into (an empty HTTP body is JSON `null`).
    type Request: DeserializeOwned + Send + 'static;
    /// What a response encodes from.
    type Response: Serialize + Send + 'static;

    /// Answers one request.
    fn call(
        &mut self,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, HandlerError>> + Send;

    /// Answers a batch, one result per request in the same order (used when
    /// the deployment has [`BatchConfig`]). The default answers them one by
    /// one with [`Deployment::call`]; override it to run them together (one
    /// forward pass of a model, say).
    fn call_batch(
        &mut self,
        requests: Vec<Self::Request>,
    ) -> impl Future<Output = Vec<Result<Self::Response, HandlerError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(requests.len());
            for request in requests {
                out.push(self.call(request).await);
            }
            out
        }
    }

    /// Whether the replica is healthy: called every
    /// period of [`DeploymentOptions::health_check`]; an `Err` (or no answer
    /// within the timeout) restarts the replica. Healthy by default.
    fn check_health(&mut self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// The replica's code with its types erased, as the replica actor holds it.
pub(crate) trait ErasedDeployment: Send {
    fn call(&mut self, request: AnyRequest) -> BoxFuture<'_, Result<AnyResponse, HandlerError>>;
    fn call_batch(
        &mut self,
        requests: Vec<AnyRequest>,
    ) -> BoxFuture<'_, Vec<Result<AnyResponse, HandlerError>>>;
    fn check_health(&mut self) -> BoxFuture<'_, Result<(), String>>;
}

/// A [`Deployment`] behind [`ErasedDeployment`].
pub(crate) struct Typed<D>(pub(crate) D);

fn wrong_type<D: Deployment>() -> HandlerError {
    HandlerError::internal(format!(
        "the replica expected a {} (a request of another type reached it)",
        std::any::type_name::<D::Request>()
    ))
}

impl<D: Deployment> ErasedDeployment for Typed<D> {
    fn call(&mut self, request: AnyRequest) -> BoxFuture<'_, Result<AnyResponse, HandlerError>> {
        Box::pin(async move {
            let request = request
                .downcast::<D::Request>()
                .map_err(|_| wrong_type::<D>())?;
            let response = self.0.call(*request).await?;
            Ok(Box::new(response) as AnyResponse)
        })
    }

    fn call_batch(
        &mut self,
        requests: Vec<AnyRequest>,
    ) -> BoxFuture<'_, Vec<Result<AnyResponse, HandlerError>>> {
        Box::pin(async move {
            let n = requests.len();
            // Requests of the wrong type get their own error; the rest go
            // to the handler as one batch.
            let mut typed = Vec::with_capacity(n);
            let mut slots: Vec<Option<HandlerError>> = Vec::with_capacity(n);
            for request in requests {
                match request.downcast::<D::Request>() {
                    Ok(r) => {
                        typed.push(*r);
                        slots.push(None);
                    }
                    Err(_) => slots.push(Some(wrong_type::<D>())),
                }
            }
            let expected = typed.len();
            let mut answers = self.0.call_batch(typed).await.into_iter();
            let mut out = Vec::with_capacity(n);
            for slot in slots {
                out.push(match slot {
                    Some(err) => Err(err),
                    None => match answers.next() {
                        Some(answer) => answer.map(|r| Box::new(r) as AnyResponse),
                        None => Err(HandlerError::internal(format!(
                            "call_batch returned fewer results than the {expected} requests it was given"
                        ))),
                    },
                });
            }
            out
        })
    }

    fn check_health(&mut self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.0.check_health())
    }
}

/// Builds a replica's code: called for each replica, and again when one
/// restarts.
pub(crate) type Factory = Arc<dyn Fn() -> Box<dyn ErasedDeployment> + Send + Sync>;

/// JSON in and out for one deployment's types.
#[derive(Clone, Copy)]
pub(crate) struct Codec {
    pub(crate) decode: fn(&[u8]) -> Result<AnyRequest, serde_json::Error>,
    pub(crate) encode: fn(AnyResponse) -> Result<Vec<u8>, String>,
    pub(crate) request_type: &'static str,
    pub(crate) response_type: &'static str,
}

impl Codec {
    pub(crate) fn of<D: Deployment>() -> Self {
        Codec {
            decode: decode::<D>,
            encode: encode::<D>,
            request_type: std::any::type_name::<D::Request>(),
            response_type: std::any::type_name::<D::Response>(),
        }
    }
}

fn decode<D: Deployment>(body: &[u8]) -> Result<AnyRequest, serde_json::Error> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        body
    };
    Ok(Box::new(serde_json::from_slice::<D::Request>(body)?))
}

fn encode<D: Deployment>(response: AnyResponse) -> Result<Vec<u8>, String> {
    let response = response.downcast::<D::Response>().map_err(|_| {
        format!(
            "the replica answered with something other than a {}",
            std::any::type_name::<D::Response>()
        )
    })?;
    serde_json::to_vec(&*response).map_err(|e| e.to_string())
}

/// How requests are gathered into batches for [`Deployment::call_batch`]
/// (Ray's `@serve.batch(max_batch_size, batch_wait_timeout_s)`): a batch
/// goes to the replica when it has `max_batch_size` requests, or
/// `max_wait` after its first one. Changeable at run time with
/// [`Serve::set_batching`](crate::Serve::set_batching).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The most requests in one batch (at least 1).
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others.
    #[serde(with = "secs")]
    pub max_wait: Duration,
}

impl BatchConfig {
    /// Batches of at most `max_batch_size`, waiting at most `max_wait`.
    pub fn new(max_batch_size: usize, max_wait: Duration) -> Self {
        Self {
            max_batch_size,
            max_wait,
        }
    }
}

/// Scaling the number of replicas with the load (Ray's
/// `autoscaling_config`): the controller aims at `target_ongoing_requests`
/// per replica (requests queued in the proxy count too), between
/// `min_replicas` and `max_replicas`; a decision must hold for
/// `upscale_delay` (or `downscale_delay`) before it is acted on. Scaling
/// down drains a replica before stopping it; `min_replicas = 0` scales to
/// zero, and the first request then waits in the queue for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalingConfig {
    /// The fewest replicas (0 allows scaling to zero).
    pub min_replicas: usize,
    /// The most replicas.
    pub max_replicas: usize,
    /// The mean ongoing requests per replica to aim at (Ray's default 2).
    pub target_ongoing_requests: f64,
    /// How long more replicas must be wanted before they are started.
    #[serde(with = "secs")]
    pub upscale_delay: Duration,
    /// How long fewer replicas must be wanted before one is drained.
    #[serde(with = "secs")]
    pub downscale_delay: Duration,
}

impl Default for AutoscalingConfig {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 4,
            target_ongoing_requests: 2.0,
            upscale_delay: Duration::from_secs(3),
            downscale_delay: Duration::from_secs(60),
        }
    }
}

/// How a deployment runs. Defaults follow Ray Serve where it has one.
#[derive(Debug, Clone)]
pub struct DeploymentOptions {
    pub(crate) replicas: usize,
    pub(crate) resources: Resources,
    pub(crate) max_ongoing_requests: usize,
    pub(crate) max_queued_requests: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) health_check_period: Duration,
    pub(crate) health_check_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) retry_on_replica_failure: bool,
    pub(crate) route_prefix: Option<String>,
    pub(crate) batching: Option<BatchConfig>,
    pub(crate) autoscaling: Option<AutoscalingConfig>,
    pub(crate) version: String,
    pub(crate) start_timeout: Duration,
    pub(crate) on_cluster: bool,
}

impl Default for DeploymentOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            resources: Resources::default(),
            max_ongoing_requests: 5,
            max_queued_requests: 256,
            request_timeout: Duration::from_secs(60),
            health_check_period: Duration::from_secs(10),
            health_check_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            retry_on_replica_failure: false,
            route_prefix: None,
            batching: None,
            autoscaling: None,
            version: String::new(),
            start_timeout: Duration::from_secs(30),
            on_cluster: false,
        }
    }
}

impl DeploymentOptions {
    /// The defaults: one replica, no resources held, 5 ongoing requests per
    /// replica, 256 queued, a 60 s request timeout, a health check every
    /// 10 s with a 30 s timeout, a 20 s drain, no HTTP route.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many replicas run (ignored with [`Self::autoscaling`]).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// The CPUs each replica holds for its life.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.resources.num_cpus = n;
        self
    }

    /// The GPUs each replica holds for its life (its device, as for GPU
    /// actors: `troupe::actor::current()` lists its `gpu_ids`).
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.resources.num_gpus = n;
        self
    }

    /// All the resources each replica holds (replaces `num_cpus`/`num_gpus`).
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Requests a replica has at once, running or in its mailbox (Ray's
    /// `max_ongoing_requests`, default 5). Past it on every replica,
    /// requests wait in the deployment's queue.
    pub fn max_ongoing_requests(mut self, n: usize) -> Self {
        self.max_ongoing_requests = n;
        self
    }

    /// Requests that may wait for a replica when all are busy (default
    /// 256); one more is refused at once with HTTP 503.
    pub fn max_queued_requests(mut self, n: usize) -> Self {
        self.max_queued_requests = n;
        self
    }

    /// How long a request may take, queueing included (HTTP 504 after).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How often each replica's [`Deployment::check_health`] runs, and how
    /// long it may take before the replica counts as unhealthy and is
    /// restarted.
    pub fn health_check(mut self, period: Duration, timeout: Duration) -> Self {
        self.health_check_period = period;
        self.health_check_timeout = timeout;
        self
    }

    /// How long a replica being stopped (scale-down, update, shutdown) may
    /// take to finish its requests before it is killed.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Retry, once and on another replica, a request whose replica failed
    /// while it had it (off by default: the request gets a 503 saying so).
    /// Only for idempotent handlers.
    pub fn retry_on_replica_failure(mut self, yes: bool) -> Self {
        self.retry_on_replica_failure = yes;
        self
    }

    /// Serve the deployment over HTTP under this path prefix (`/echo`
    /// serves `/echo` and `/echo/...`). Without one it is reachable only
    /// through handles.
    pub fn route_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.route_prefix = Some(prefix.into());
        self
    }

    /// Gather requests into batches for [`Deployment::call_batch`].
    pub fn batching(mut self, batching: BatchConfig) -> Self {
        self.batching = Some(batching);
        self
    }

    /// Scale the number of replicas with the load.
    pub fn autoscaling(mut self, autoscaling: AutoscalingConfig) -> Self {
        self.autoscaling = Some(autoscaling);
        self
    }

    /// The code's version: deploying a deployment again under the same name
    /// with another version replaces its replicas one at a time (a rolling
    /// update); the same version only changes its options.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// How long starting a replica may wait for its resources.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Runs the replicas on the nodes of the cluster this runtime joined
    /// (Ray Serve on a Ray cluster): each where the cluster places its
    /// [`resources`](Self::resources) (this node included, if it offers
    /// them), built there from the deployment's registered kind
    /// ([`register_deployment!`](crate::register_deployment),
    /// [`Serve::deploy_registered`](crate::Serve::deploy_registered)).
    /// Requests and responses cross as JSON. A replica whose node dies is
    /// restarted on another node; its requests in flight fail with 503 (or
    /// are retried, [`retry_on_replica_failure`](Self::retry_on_replica_failure)).
    /// Default false: every replica on this node.
    pub fn replicas_on_cluster(mut self, on: bool) -> Self {
        self.on_cluster = on;
        self
    }

    /// The number of replicas to start with.
    pub(crate) fn initial_replicas(&self) -> usize {
        match &self.autoscaling {
            Some(a) => a.min_replicas,
            None => self.replicas,
        }
    }

    /// Refuses options that make no sense, saying which.
    pub(crate) fn validate(&self, deployment: &str) -> Result<(), ServeError> {
        let bad = |problem: String| {
            Err(ServeError::InvalidOptions {
                deployment: deployment.to_owned(),
                problem,
            })
        };
        if self.max_ongoing_requests == 0 {
            return bad("max_ongoing_requests must be at least 1".into());
        }
        if let Some(b) = &self.batching {
            if b.max_batch_size == 0 {
                return bad("batching.max_batch_size must be at least 1".into());
            }
        }
        if let Some(a) = &self.autoscaling {
            if a.max_replicas == 0 || a.min_replicas > a.max_replicas {
                return bad(format!(
                    "autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas >= 1 \
                     (got {}..={})",
                    a.min_replicas, a.max_replicas
                ));
            }
            if a.target_ongoing_requests.is_nan() || a.target_ongoing_requests <= 0.0 {
                return bad("autoscaling.target_ongoing_requests must be above 0".into());
            }
        }
        if let Some(prefix) = &self.route_prefix {
            if !prefix.starts_with('/') {
                return bad(format!("route_prefix {prefix:?} must start with '/'"));
            }
        }
        if self.request_timeout.is_zero() || self.health_check_timeout.is_zero() {
            return bad("request_timeout and health_check timeout must be above 0".into());
        }
        Ok(())
    }
}

/// Durations as seconds (a float) in the config file.
pub(crate) mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
