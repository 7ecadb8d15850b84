//! The Prometheus endpoint: installs a Prometheus recorder as the
//! process's `metrics` recorder (once per process: a recorder is
//! process-wide by the `metrics` crate's design), and serves its text
//! format at `/metrics`, refreshing the runtime's sampled gauges first;
//! `/targets` lists every cluster member's endpoint for Prometheus's HTTP
//! service discovery, so that one scrape config finds every node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State as Extract;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio_rustls::rustls::ServerConfig;
use troupe_core::runtime::{RunningService, RuntimeService, ServiceError, WeakRuntime};
use troupe_core::Runtime;

use crate::server::{guard, local_addr, HostGuard, Served};
use crate::{bind, DashboardError};

/// Seconds: scheduling latency (tens of µs to seconds), run and spill times.
const BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// How often the recorder drains its histograms when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALL: Mutex<()> = Mutex::new(());

/// The process's Prometheus recorder: installed by the first metrics
/// endpoint, shared by the next ones (one per runtime).
pub(crate) fn recorder() -> Result<PrometheusHandle, DashboardError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
        .map_err(|e| DashboardError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| DashboardError::RecorderTaken)?;
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// The metrics service: Prometheus's text format at `/metrics` on one
/// address. Add it with [`ConfigExt::metrics_addr`](crate::ConfigExt).
///
/// It installs a Prometheus recorder as the process's `metrics` recorder
/// when the runtime starts booting (its `prepare`), before the runtime
/// registers its metric handles, so every metric Troupe records is there
/// (and your own `metrics` calls too). Starting
/// it fails with [`DashboardError::RecorderTaken`] if another recorder is
/// installed. Runtimes of one process share the recorder: each endpoint
/// serves the whole process's metrics.
///
/// `/targets` serves Prometheus's HTTP service discovery: on a cluster
/// node, every live member that serves metrics (each node tells the
/// others its endpoint when it joins, so add this service before the
/// cluster node's); alone, this endpoint. One scrape config then finds
/// every node:
///
/// ```yaml
/// scrape_configs:
///   - job_name: troupe
///     http_sd_configs:
///       - url: http://HEAD:9464/targets
/// ```
#[derive(Clone)]
pub struct MetricsExporter {
    addr: String,
    token: Option<String>,
    tls: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for MetricsExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsExporter")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl MetricsExporter {
    /// Its name among the runtime's services.
    pub const NAME: &'static str = troupe_core::runtime::METRICS_SERVICE;

    /// An endpoint on `addr` (`ip:port`; port 0 picks a free one).
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            token: None,
            tls: None,
        }
    }

    /// Serves HTTPS with `config` (a node's certificate, say; Prometheus
    /// then scrapes with `scheme: https` and the CA in its `tls_config`).
    pub fn tls(mut self, config: Arc<ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Requires `token` of every scrape (`Authorization: Bearer TOKEN`, as
    /// Prometheus's `authorization` setting sends it); required to bind
    /// beyond loopback.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

impl RuntimeService for MetricsExporter {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// Installs the recorder before the runtime's parts register their
    /// metrics.
    fn prepare(&self) -> Result<(), ServiceError> {
        recorder()?;
        Ok(())
    }

    fn start(
        &self,
        runtime: &Runtime,
    ) -> BoxFuture<'static, Result<Box<dyn RunningService>, ServiceError>> {
        let addr = self.addr.clone();
        let token = self.token.clone();
        let tls = self.tls.clone();
        let runtime = runtime.downgrade();
        Box::pin(async move {
            let auth = crate::auth::Auth::new(token.as_deref())?;
            let handle = recorder()?;
            let listener = bind(&addr).await?;
            let local = local_addr(&listener)?;
            auth.check(local)?;
            let app = Router::new()
                .route("/metrics", get(scrape))
                .route("/", get(scrape))
                .route("/targets", get(targets))
                .with_state(Scrape {
                    runtime,
                    handle: handle.clone(),
                    local,
                })
                .layer(axum::middleware::from_fn_with_state(
                    auth,
                    crate::auth::require,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    HostGuard::for_addr(local),
                    guard,
                ));
            let mut served = Served::start(listener, tls, "/metrics", app)?;
            served.helpers.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(UPKEEP).await;
                    handle.run_upkeep();
                }
            }));
            Ok(Box::new(served) as Box<dyn RunningService>)
        })
    }
}

#[derive(Clone)]
struct Scrape {
    runtime: WeakRuntime,
    handle: PrometheusHandle,
    local: SocketAddr,
}

/// One group of Prometheus's HTTP service discovery: a node's endpoint
/// and the labels its series get.
#[derive(Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: BTreeMap<&'static str, String>,
}

fn labels(node: String, role: String, name: String) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("troupe_node", node),
        ("troupe_role", role),
        ("troupe_name", name),
    ])
}

/// Prometheus's HTTP service discovery (`http_sd_configs`): every live
/// member's metrics endpoint as the cluster's directory lists it, one
/// group per node; a runtime alone lists itself, at the address the
/// request came to.
async fn targets(Extract(scrape): Extract<Scrape>, headers: axum::http::HeaderMap) -> Response {
    let runtime = match scrape.runtime.upgrade() {
        Some(runtime) if !runtime.is_shut_down() => runtime,
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the runtime has shut down\n",
            )
                .into_response()
        }
    };
    let groups: Vec<TargetGroup> = match runtime.cluster_inspector() {
        Some(inspector) => inspector
            .metrics_targets()
            .into_iter()
            .map(|t| TargetGroup {
                targets: vec![t.address],
                labels: labels(t.node.to_string(), t.role, t.name),
            })
            .collect(),
        None => {
            let reached_at = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| scrape.local.to_string());
            vec![TargetGroup {
                targets: vec![reached_at],
                labels: labels(
                    runtime.node_id().to_string(),
                    "alone".to_owned(),
                    runtime.config().name.clone(),
                ),
            }]
        }
    };
    axum::Json(groups).into_response()
}

async fn scrape(Extract(scrape): Extract<Scrape>) -> Response {
    match scrape.runtime.upgrade() {
        Some(runtime) if !runtime.is_shut_down() => runtime.sample_metrics(),
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the runtime has shut down\n",
            )
                .into_response()
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        scrape.handle.render(),
    )
        .into_response()
}
