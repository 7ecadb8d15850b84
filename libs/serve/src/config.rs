//! The deployment config file (TOML) and the registry of deployment kinds
//! it names: what a binary's `serve run CONFIG` command calls.
//!
//! ```toml
//! [http]
//! host = "127.0.0.1"
//! port = 8000
//!
//! [[deployments]]
//! name = "echo"
//! kind = "echo"            # Registry::register, or register_deployment!
//! replicas_on_cluster = false  # true: on the cluster's nodes (register_deployment! kinds)
//! route_prefix = "/echo"
//! replicas = 2
//! num_cpus = 0.5
//! max_ongoing_requests = 5
//!
//! [deployments.batching]
//! max_batch_size = 32
//! max_wait = 0.002         # seconds
//!
//! [deployments.autoscaling]
//! min_replicas = 1
//! max_replicas = 4
//! target_ongoing_requests = 2.0
//! upscale_delay = 3.0
//! downscale_delay = 60.0
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use troupe::Runtime;

use crate::deployment::{AutoscalingConfig, BatchConfig, BoxFuture, Deployment, DeploymentOptions};
use crate::error::ServeError;
use crate::serve::{Serve, ServeOptions};

/// A whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The HTTP proxy; none runs without it.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Seconds between control steps (default 0.1).
    #[serde(default)]
    pub control_interval: Option<f64>,
    /// The deployments.
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
}

/// Where the proxy listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The address (default `127.0.0.1`).
    #[serde(default = "default_host")]
    pub host: String,
    /// The port (default 8000; 0 picks one).
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    8000
}

/// One deployment in the file; fields left out keep
/// [`DeploymentOptions`]' defaults. Durations are in seconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The deployment's name.
    pub name: String,
    /// Which registered code it runs.
    pub kind: String,
    /// Its HTTP route.
    pub route_prefix: Option<String>,
    /// How many replicas (without autoscaling).
    pub replicas: Option<usize>,
    /// CPUs per replica.
    pub num_cpus: Option<f64>,
    /// GPUs per replica.
    pub num_gpus: Option<f64>,
    /// Requests a replica has at once.
    pub max_ongoing_requests: Option<usize>,
    /// Requests that may wait for a replica.
    pub max_queued_requests: Option<usize>,
    /// Seconds a request may take.
    pub request_timeout: Option<f64>,
    /// Seconds between health checks.
    pub health_check_period: Option<f64>,
    /// Seconds a health check may take.
    pub health_check_timeout: Option<f64>,
    /// Seconds a stopping replica may take to finish its requests.
    pub drain_timeout: Option<f64>,
    /// Retry once after a replica failure.
    pub retry_on_replica_failure: Option<bool>,
    /// The code's version (a change is a rolling update).
    pub version: Option<String>,
    /// Batching.
    pub batching: Option<BatchConfig>,
    /// Autoscaling.
    pub autoscaling: Option<AutoscalingConfig>,
    /// Run the replicas on the cluster's nodes (the kind must be registered
    /// with `register_deployment!`).
    pub replicas_on_cluster: Option<bool>,
}

fn seconds(deployment: &str, field: &str, value: f64) -> Result<Duration, ServeError> {
    Duration::try_from_secs_f64(value).map_err(|e| ServeError::InvalidOptions {
        deployment: deployment.to_owned(),
        problem: format!("{field} = {value}: {e}"),
    })
}

impl DeploymentConfig {
    /// The options this entry describes.
    pub fn options(&self) -> Result<DeploymentOptions, ServeError> {
        let name = self.name.as_str();
        let mut o = DeploymentOptions::new();
        if let Some(v) = &self.route_prefix {
            o = o.route_prefix(v.clone());
        }
        if let Some(v) = self.replicas {
            o = o.replicas(v);
        }
        if let Some(v) = self.num_cpus {
            o = o.num_cpus(v);
        }
        if let Some(v) = self.num_gpus {
            o = o.num_gpus(v);
        }
        if let Some(v) = self.max_ongoing_requests {
            o = o.max_ongoing_requests(v);
        }
        if let Some(v) = self.max_queued_requests {
            o = o.max_queued_requests(v);
        }
        if let Some(v) = self.request_timeout {
            o = o.request_timeout(seconds(name, "request_timeout", v)?);
        }
        let period = match self.health_check_period {
            Some(v) => seconds(name, "health_check_period", v)?,
            None => o.health_check_period,
        };
        let timeout = match self.health_check_timeout {
            Some(v) => seconds(name, "health_check_timeout", v)?,
            None => o.health_check_timeout,
        };
        o = o.health_check(period, timeout);
        if let Some(v) = self.drain_timeout {
            o = o.drain_timeout(seconds(name, "drain_timeout", v)?);
        }
        if let Some(v) = self.retry_on_replica_failure {
            o = o.retry_on_replica_failure(v);
        }
        if let Some(v) = &self.version {
            o = o.version(v.clone());
        }
        if let Some(v) = self.batching {
            o = o.batching(v);
        }
        if let Some(v) = self.autoscaling {
            o = o.autoscaling(v);
        }
        if let Some(v) = self.replicas_on_cluster {
            o = o.replicas_on_cluster(v);
        }
        o.validate(name)?;
        Ok(o)
    }
}

impl ServeConfig {
    /// Parses a config from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ServeError> {
        Self::parse(text, "<string>")
    }

    /// Reads and parses a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ServeError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ServeError::Config {
            path: path.display().to_string(),
            problem: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, path: &str) -> Result<Self, ServeError> {
        toml::from_str(text).map_err(|e| ServeError::Config {
            path: path.to_owned(),
            problem: e.to_string(),
        })
    }

    /// The serve options this config describes.
    pub fn serve_options(&self) -> Result<ServeOptions, ServeError> {
        let mut options = ServeOptions::new();
        if let Some(http) = &self.http {
            let addr: SocketAddr = format!("{}:{}", http.host, http.port)
                .parse()
                .map_err(|e| ServeError::Config {
                    path: "[http]".into(),
                    problem: format!("host {:?} port {}: {e}", http.host, http.port),
                })?;
            options = options.http(addr);
        }
        if let Some(v) = self.control_interval {
            options = options.control_interval(seconds("-", "control_interval", v)?);
        }
        Ok(options)
    }
}

type Deploy = Arc<
    dyn Fn(Serve, String, DeploymentOptions) -> BoxFuture<'static, Result<(), ServeError>>
        + Send
        + Sync,
>;

/// The deployment kinds a program offers to config files: each a name
/// and the factory of its code.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<String, Deploy>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// No kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers `factory`'s code under `kind`.
    pub fn register<D, F>(mut self, kind: &str, factory: F) -> Self
    where
        D: Deployment,
        F: Fn() -> D + Send + Sync + 'static,
    {
        let factory = Arc::new(factory);
        let deploy: Deploy = Arc::new(move |serve: Serve, name: String, options| {
            let factory = factory.clone();
            Box::pin(async move {
                serve
                    .deploy(&name, options, move || factory())
                    .await
                    .map(|_| ())
            })
        });
        self.kinds.insert(kind.to_owned(), deploy);
        self
    }

    /// Starts serving on `rt` as `config` says, each deployment with the
    /// code its `kind` names; returns once every replica runs.
    pub async fn run(&self, rt: &Runtime, config: &ServeConfig) -> Result<Serve, ServeError> {
        // Check every entry before starting anything.
        let mut plans = Vec::new();
        for d in &config.deployments {
            // This registry's kinds first, then those registered by name
            // (register_deployment!), which replicas on the cluster need.
            let deploy = match self.kinds.get(&d.kind) {
                Some(deploy) => deploy.clone(),
                // A kind registered twice is refused, saying so, as it deploys.
                None if !matches!(
                    crate::registry::registered(&d.kind),
                    Err(crate::registry::Unregistered::Unknown(_))
                ) =>
                {
                    by_kind(&d.kind)
                }
                None => {
                    let mut registered: Vec<String> = self.kinds.keys().cloned().collect();
                    registered.extend(
                        crate::registry::registered_deployments()
                            .into_iter()
                            .map(str::to_owned),
                    );
                    return Err(ServeError::UnknownKind {
                        deployment: d.name.clone(),
                        kind: d.kind.clone(),
                        registered,
                    });
                }
            };
            plans.push((d.name.clone(), d.options()?, deploy));
        }
        let serve = Serve::start(rt, config.serve_options()?).await?;
        for (name, options, deploy) in plans {
            if let Err(e) = deploy(serve.clone(), name, options).await {
                let _ = serve.shutdown().await;
                return Err(e);
            }
        }
        Ok(serve)
    }
}

/// Deploys the kind registered by name as `kind`.
fn by_kind(kind: &str) -> Deploy {
    let kind = kind.to_owned();
    Arc::new(move |serve: Serve, name: String, options| {
        let kind = kind.clone();
        Box::pin(async move { serve.deploy_kind(&name, options, &kind).await })
    })
}

/// `serve run CONFIG` for a binary: reads the file and serves it on `rt`
/// with the kinds `registry` offers.
pub async fn run_config_file(
    rt: &Runtime,
    path: impl AsRef<Path>,
    registry: &Registry,
) -> Result<Serve, ServeError> {
    let config = ServeConfig::load(path)?;
    registry.run(rt, &config).await
}
