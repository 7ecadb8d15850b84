//! Per-deployment metrics, registered once per deployment so that the
//! request path only touches handles (no label lookups per request).
//!
//! | Name | Kind | Labels |
//! |---|---|---|
//! | `troupe_serve_requests_total` | counter | `deployment` |
//! | `troupe_serve_errors_total` | counter | `deployment`, `kind` ([`CallError::kind`](crate::CallError::kind)) |
//! | `troupe_serve_request_seconds` | histogram | `deployment` |
//! | `troupe_serve_queued_requests` | gauge | `deployment` |
//! | `troupe_serve_ongoing_requests` | gauge | `deployment` (sampled by the controller) |
//! | `troupe_serve_replicas` | gauge | `deployment` |
//! | `troupe_serve_replica_restarts_total` | counter | `deployment` (health-check restarts) |
//! | `troupe_serve_batch_size` | histogram | `deployment` |

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// The handles of one deployment's metrics.
pub(crate) struct DeploymentMetrics {
    name: String,
    pub(crate) requests: Counter,
    pub(crate) latency: Histogram,
    pub(crate) queued: Gauge,
    pub(crate) ongoing: Gauge,
    pub(crate) replicas: Gauge,
    pub(crate) health_restarts: Counter,
    pub(crate) batch_size: Histogram,
}

impl DeploymentMetrics {
    pub(crate) fn new(deployment: &str) -> Self {
        let label = deployment.to_owned();
        Self {
            name: label.clone(),
            requests: counter!("troupe_serve_requests_total", "deployment" => label.clone()),
            latency: histogram!("troupe_serve_request_seconds", "deployment" => label.clone()),
            queued: gauge!("troupe_serve_queued_requests", "deployment" => label.clone()),
            ongoing: gauge!("troupe_serve_ongoing_requests", "deployment" => label.clone()),
            replicas: gauge!("troupe_serve_replicas", "deployment" => label.clone()),
            health_restarts: counter!("troupe_serve_replica_restarts_total", "deployment" => label.clone()),
            batch_size: histogram!("troupe_serve_batch_size", "deployment" => label),
        }
    }

    /// Counts a failed request (errors are rare: the label lookup is fine).
    pub(crate) fn error(&self, kind: &'static str) {
        counter!("troupe_serve_errors_total", "deployment" => self.name.clone(), "kind" => kind)
            .increment(1);
    }
}
