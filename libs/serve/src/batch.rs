//! The batcher of one replica: gathers the requests the router sends it
//! into batches of at most `max_batch_size`, waiting at most `max_wait`
//! after a batch's first request, sends each batch to the replica as one
//! call, and answers every request with its own result.
//!
//! The batch settings are shared by the deployment's batchers and read
//! once per batch, so [`Serve::set_batching`](crate::Serve::set_batching)
//! takes effect from the next batch on.

use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::deployment::{AnyRequest, BatchConfig};
use crate::lock::read;
use crate::metrics::DeploymentMetrics;
use crate::replica::{ReplicaHandle, ReplicaReply};

/// A request waiting for its batch, and where its answer goes.
pub(crate) struct BatchRequest {
    pub(crate) request: AnyRequest,
    pub(crate) reply: oneshot::Sender<ReplicaReply>,
}

/// Starts the batcher of one replica; it ends when the returned sender
/// (held by the replica's slot) and every clone are dropped, after
/// answering what it has.
pub(crate) fn start(
    deployment: &str,
    replica: u64,
    handle: ReplicaHandle,
    config: Arc<RwLock<BatchConfig>>,
    metrics: Arc<DeploymentMetrics>,
) -> mpsc::UnboundedSender<BatchRequest> {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::debug_span!("serve_batcher", deployment, replica);
    tokio::spawn(run(rx, handle, config, metrics).instrument(span));
    tx
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<BatchRequest>,
    handle: ReplicaHandle,
    config: Arc<RwLock<BatchConfig>>,
    metrics: Arc<DeploymentMetrics>,
) {
    while let Some(first) = rx.recv().await {
        let BatchConfig {
            max_batch_size,
            max_wait,
        } = *read(&config);
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + max_wait;
        while batch.len() < max_batch_size {
            // Take what is already there without waiting, then wait for
            // more until the batch's deadline.
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(next)) => batch.push(next),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        metrics.batch_size.record(batch.len() as f64);
        let (requests, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|b| (b.request, b.reply)).unzip();
        match handle.handle_batch(requests).await {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                for reply in replies {
                    let answer = answers.next().unwrap_or_else(|| {
                        Err(crate::HandlerError::internal(
                            "the batch returned fewer results than it had requests",
                        ))
                    });
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(failure) => {
                for reply in replies {
                    let _ = reply.send(Err(failure.clone()));
                }
            }
        }
    }
}
