//! The crate's counters (the `metrics` facade; Troupe's Prometheus
//! endpoint exports them when the dashboard feature is on).

/// Training steps (reports) recorded by rank 0.
pub(crate) fn step() {
    metrics::counter!("troupe_train_steps_total").increment(1);
}

/// Bytes all-reduced by one rank (its input size).
pub(crate) fn allreduce_bytes(bytes: usize) {
    metrics::counter!("troupe_train_allreduce_bytes_total").increment(bytes as u64);
}

/// Restarts of the worker group after a failure.
pub(crate) fn restart() {
    metrics::counter!("troupe_train_restarts_total").increment(1);
}

/// Checkpoints written.
pub(crate) fn checkpoint() {
    metrics::counter!("troupe_train_checkpoints_total").increment(1);
}

/// How long one all-reduce took on this rank, by where its group is
/// (`shared_memory` in one process, `transport` across processes).
pub(crate) fn allreduce_seconds(path: &'static str, seconds: f64) {
    metrics::histogram!("troupe_train_allreduce_seconds", "path" => path).record(seconds);
}
