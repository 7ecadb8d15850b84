//! Troupe's dashboard and Prometheus endpoint: see what a runtime runs,
//! from outside it.
//!
//! Two services, plugged into a runtime through core's service seam
//! ([`RuntimeService`]); core itself never opens a socket:
//!
//! - [`Dashboard`]: a live page (nodes and resources, the supervision
//!   tree with each child's restarts and last failure, tasks by state
//!   with their errors, the object store's use over time, recent
//!   failures), and, in a cluster, every node (health, resources, load,
//!   object store, its actors, tasks and objects) and the head's jobs with
//!   their logs; updated over server-sent events, every asset embedded in
//!   the binary; and the state API as JSON (`/api/state`), the cluster
//!   view (`/api/cluster`) and the timeline as a Chrome trace
//!   (`/api/timeline`).
//! - [`MetricsExporter`]: every `metrics` counter, gauge and histogram
//!   Troupe records, in Prometheus's text format at `/metrics`.
//!
//! Both answer only on the address configured (loopback unless you say
//! otherwise), refuse requests whose `Host` is not that address when
//! bound to loopback (a guard against DNS rebinding), and serve nothing
//! that changes the runtime. Bound beyond loopback, each needs a token
//! ([`Dashboard::token`], [`MetricsExporter::token`]), which every request
//! then carries: `Authorization: Bearer TOKEN`, a `troupe_token` cookie, or
//! `?token=TOKEN` in the URL (which sets the cookie for the page's own
//! requests). `/healthz` needs none.
//!
//! ```
//! use troupe_core::Config;
//! use troupe_dashboard::ConfigExt;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Port 0: any free port (a real program would use DEFAULT_ADDR).
//! let rt = troupe_core::init(Config::default().dashboard("127.0.0.1:0")).await?;
//! let url = troupe_dashboard::url(&rt).expect("the dashboard runs");
//! assert!(url.starts_with("http://127.0.0.1:"));
//! rt.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The page polls the runtime's state only while a browser has it open
//! (once per [`Dashboard::interval`], and at once after a supervision
//! event); with no page open it samples three numbers of the object
//! store per interval, for the page's usage chart. The cluster view is
//! polled apart, once per [`Dashboard::cluster_interval`] while a page is
//! open, through core's [`ClusterInspector`](troupe_core::runtime::ClusterInspector)
//! seam (the cluster crate plugs it in; this crate does not depend on it).

// The lint wall (CI denies warnings): no unsafe code but where a
// `SAFETY` comment allows it; every public item documented and truly
// public; no debugging leftovers; no `unwrap` outside tests.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod auth;
mod cluster;
mod hub;
mod panel;
mod prometheus;
mod server;
mod tls;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_rustls::rustls::ServerConfig;
use troupe_core::runtime::{RunningService, RuntimeService, ServiceError};
use troupe_core::{Config, Runtime, StateQuery, TaskFilter};

pub use panel::{ClusterPanel, NodeCard, ResourceUse, Row};
pub use prometheus::MetricsExporter;
pub use view::{Failure, Snapshot, StoreSample};

/// The dashboard's conventional address (Ray's port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8265";

/// What went wrong starting the dashboard or the metrics endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// The address does not parse.
    #[error("{addr:?} is not a socket address; write an IP and a port, like 127.0.0.1:8265 (or port 0 for any free port)")]
    Address {
        /// What was given.
        addr: String,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {cause}; is another program (or runtime) listening there? pick another port, or port 0 for any free one")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// Another `metrics` recorder is installed in this process: Prometheus
    /// cannot record what Troupe records.
    #[error("another metrics recorder is installed in this process; install none before starting the metrics endpoint, or export from the recorder you installed")]
    RecorderTaken,
    /// The Prometheus recorder could not be built.
    #[error("could not build the Prometheus recorder: {0}")]
    Recorder(String),
    /// Bound beyond loopback without a token: anyone who reaches the
    /// address would see the runtime.
    #[error("{addr} is reachable beyond this machine: give it a token (`.token(..)`), or bind 127.0.0.1")]
    NoToken {
        /// The address.
        addr: SocketAddr,
    },
    /// A token too short to guess slowly, or with characters a URL or a
    /// cookie would mangle.
    #[error("a token must be at least 16 characters of letters, digits, '-', '_' or '.'")]
    BadToken,
}

/// Adds the dashboard and the metrics endpoint to a [`Config`]:
/// `Config::default().dashboard("127.0.0.1:8265")`.
pub trait ConfigExt {
    /// Serves the dashboard on `addr` (see [`Dashboard`]).
    fn dashboard(self, addr: impl Into<String>) -> Config;
    /// Serves Prometheus metrics on `addr`, at `/metrics` (see
    /// [`MetricsExporter`]).
    fn metrics_addr(self, addr: impl Into<String>) -> Config;
}

impl ConfigExt for Config {
    fn dashboard(self, addr: impl Into<String>) -> Config {
        self.service(Dashboard::new(addr))
    }

    fn metrics_addr(self, addr: impl Into<String>) -> Config {
        self.service(MetricsExporter::new(addr))
    }
}

/// The URL of `runtime`'s dashboard, if it runs one.
pub fn url(runtime: &Runtime) -> Option<String> {
    endpoint(runtime, Dashboard::NAME)
}

/// The URL of `runtime`'s Prometheus endpoint, if it runs one.
pub fn metrics_url(runtime: &Runtime) -> Option<String> {
    endpoint(runtime, MetricsExporter::NAME)
}

fn endpoint(runtime: &Runtime, name: &str) -> Option<String> {
    runtime
        .services()
        .into_iter()
        .find(|s| s.name == name)
        .and_then(|s| s.endpoint)
}

/// The dashboard service: a live page of a runtime's state, served on one
/// address. Add it with [`ConfigExt::dashboard`], or with
/// `Config::service(Dashboard::new(addr).interval(..))` to tune it.
///
/// Routes: `/` (the page), `/api/events` (server-sent events: a
/// [`Snapshot`] per change), `/api/snapshot` (the latest one),
/// `/api/state?state=failed&function=f&limit=100` (the state API),
/// `/api/timeline` (the Chrome trace, once the timeline has recorded),
/// `/api/status` (open pages, snapshots taken, whether the poller idles),
/// `/api/cluster` (the cluster view: a [`ClusterPanel`]; "alone" without a
/// cluster), `/api/jobs/log?id=job-1&from=0` (a page of a job's log),
/// `/healthz`.
#[derive(Clone, Debug)]
pub struct Dashboard {
    addr: String,
    interval: Duration,
    samples: usize,
    query: StateQuery,
    token: Option<String>,
    cluster_interval: Duration,
    cluster_deadline: Duration,
    tls: Option<Arc<ServerConfig>>,
}

impl Dashboard {
    /// Its name among the runtime's services.
    pub const NAME: &'static str = "dashboard";

    /// A dashboard on `addr` (`ip:port`; port 0 picks a free one).
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            interval: Duration::from_secs(1),
            samples: 600,
            query: StateQuery::new()
                .limit(200)
                .tasks(TaskFilter::new().limit(200)),
            token: None,
            cluster_interval: Duration::from_secs(1),
            cluster_deadline: Duration::from_secs(5),
            tls: None,
        }
    }

    /// Serves HTTPS with `config` (a server certificate the browsers that
    /// open it trust): the token then never crosses the network in clear.
    pub fn tls(mut self, config: Arc<ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// How often the cluster view asks the cluster for every node's state
    /// and the jobs while a page is open (default 1 s; one poll for all
    /// pages).
    pub fn cluster_interval(mut self, interval: Duration) -> Self {
        self.cluster_interval = interval.max(Duration::from_millis(50));
        self
    }

    /// How long one such poll may take (default 5 s): past it, the page
    /// keeps the last answer and says why it is old. The head waits a few
    /// seconds for a member that does not answer before listing it as
    /// such, so a deadline shorter than that hides the other members too.
    pub fn cluster_deadline(mut self, deadline: Duration) -> Self {
        self.cluster_deadline = deadline.max(Duration::from_millis(50));
        self
    }

    /// Requires `token` of every request (see the crate docs for how a
    /// request carries it); required to bind beyond loopback. At least 16
    /// characters of letters, digits, `-`, `_` or `.`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How often an open page is updated, and the object store sampled
    /// (default 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How many object store samples the usage chart keeps (default 600:
    /// ten minutes at the default interval).
    pub fn samples(mut self, samples: usize) -> Self {
        self.samples = samples.max(1);
        self
    }

    /// How much of the state each update lists (default: 200 tasks,
    /// actors, objects and children per supervisor; counts are complete).
    pub fn query(mut self, query: StateQuery) -> Self {
        self.query = query;
        self
    }
}

impl RuntimeService for Dashboard {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn start(
        &self,
        runtime: &Runtime,
    ) -> BoxFuture<'static, Result<Box<dyn RunningService>, ServiceError>> {
        let this = self.clone();
        let runtime = runtime.downgrade();
        Box::pin(async move {
            let running = server::start_dashboard(this, runtime).await?;
            Ok(Box::new(running) as Box<dyn RunningService>)
        })
    }
}

/// Parses and binds `addr`, with the errors a user can act on.
async fn bind(addr: &str) -> Result<tokio::net::TcpListener, DashboardError> {
    let parsed: SocketAddr = addr.trim().parse().map_err(|_| DashboardError::Address {
        addr: addr.to_owned(),
    })?;
    tokio::net::TcpListener::bind(parsed)
        .await
        .map_err(|cause| DashboardError::Bind {
            addr: parsed,
            cause,
        })
}
