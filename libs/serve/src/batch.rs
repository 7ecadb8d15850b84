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

use troupe::ActorError;

use crate::deployment::{AnyRequest, AnyResponse, BatchConfig};
use crate::error::HandlerError;
use crate::lock::read;
use crate::metrics::DeploymentMetrics;
use crate::registry::RemoteCodec;
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
    remote: Option<RemoteCodec>,
    config: Arc<RwLock<BatchConfig>>,
    metrics: Arc<DeploymentMetrics>,
) -> mpsc::UnboundedSender<BatchRequest> {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::debug_span!("serve_batcher", deployment, replica);
    tokio::spawn(run(rx, handle, remote, config, metrics).instrument(span));
    tx
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<BatchRequest>,
    handle: ReplicaHandle,
    remote: Option<RemoteCodec>,
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
        let answered = match &remote {
            None => handle.handle_batch(requests).await,
            Some(codec) => call_remote(&handle, codec, requests).await,
        };
        match answered {
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

/// A batch sent to a replica on another node: the requests encoded (one
/// that does not encode gets its own error, the others go as one batch),
/// the responses decoded.
async fn call_remote(
    handle: &ReplicaHandle,
    codec: &RemoteCodec,
    requests: Vec<AnyRequest>,
) -> Result<Vec<Result<AnyResponse, HandlerError>>, ActorError> {
    let (encoded, slots) = encode_batch(codec, requests);
    let mut answers = handle.handle_batch_encoded(encoded).await?.into_iter();
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Some(e) => Err(e),
            None => match answers.next() {
                Some(answer) => answer.and_then(|bytes| {
                    (codec.decode_response)(&bytes).map_err(HandlerError::internal)
                }),
                None => Err(HandlerError::internal(
                    "the batch returned fewer results than it had requests",
                )),
            },
        })
        .collect())
}

/// The requests that encode, and for each request its own error if it
/// does not (sync: the requests are not `Sync`, and are not held across
/// the call).
fn encode_batch(
    codec: &RemoteCodec,
    requests: Vec<AnyRequest>,
) -> (Vec<Vec<u8>>, Vec<Option<HandlerError>>) {
    let mut encoded = Vec::with_capacity(requests.len());
    let mut slots = Vec::with_capacity(requests.len());
    for request in &requests {
        match (codec.encode_request)(request) {
            Ok(bytes) => {
                encoded.push(bytes);
                slots.push(None);
            }
            Err(problem) => slots.push(Some(HandlerError::bad_request(problem))),
        }
    }
    (encoded, slots)
}
