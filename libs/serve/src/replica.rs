//! The replica actor: one per replica, holding the deployment's code with
//! its types erased. It answers one request (or one batch) at a time; the
//! router keeps at most `max_ongoing_requests` in its mailbox.
//!
//! A replica on another node ([`Replica::on_node`]) is built from its
//! registered kind and answers requests encoded as JSON
//! (`handle_encoded`, `handle_batch_encoded`); one here takes them as
//! they are (`handle`, `handle_batch`), never encoded.

use troupe::ActorError;

use crate::deployment::{AnyRequest, AnyResponse, Codec, ErasedDeployment};
use crate::error::HandlerError;
use crate::registry;

/// A replica: the user's [`Deployment`](crate::Deployment) value, built by
/// the factory when the actor starts and again after each restart.
pub(crate) struct Replica {
    pub(crate) code: Box<dyn ErasedDeployment>,
    /// How requests that arrive encoded decode (a replica built by kind).
    pub(crate) codec: Option<Codec>,
}

/// A kind this node cannot build (another program's): every call says so.
struct Unbuildable(String);

impl ErasedDeployment for Unbuildable {
    fn call(
        &mut self,
        _: AnyRequest,
    ) -> crate::deployment::BoxFuture<'_, Result<AnyResponse, HandlerError>> {
        let reason = self.0.clone();
        Box::pin(async move { Err(HandlerError::internal(reason)) })
    }

    fn call_batch(
        &mut self,
        requests: Vec<AnyRequest>,
    ) -> crate::deployment::BoxFuture<'_, Vec<Result<AnyResponse, HandlerError>>> {
        let reason = self.0.clone();
        Box::pin(async move {
            requests
                .iter()
                .map(|_| Err(HandlerError::internal(reason.clone())))
                .collect()
        })
    }

    fn check_health(&mut self) -> crate::deployment::BoxFuture<'_, Result<(), String>> {
        let reason = self.0.clone();
        Box::pin(async move { Err(reason) })
    }
}

impl Replica {
    fn decode(&self, request: &[u8]) -> Result<AnyRequest, HandlerError> {
        let Some(codec) = &self.codec else {
            return Err(HandlerError::internal(
                "this replica takes requests in process only",
            ));
        };
        (codec.decode)(request).map_err(|e| HandlerError::bad_request(e.to_string()))
    }

    fn encode(&self, response: AnyResponse) -> Result<Vec<u8>, HandlerError> {
        match &self.codec {
            Some(codec) => (codec.encode)(response).map_err(HandlerError::internal),
            None => Err(HandlerError::internal(
                "this replica answers in process only",
            )),
        }
    }
}

#[troupe::actor]
impl Replica {
    /// A replica of the deployment registered as `kind`, built on the node
    /// that spawns it (the constructor of replicas on a cluster).
    pub(crate) fn on_node(kind: String) -> Self {
        match registry::registered(&kind) {
            Ok(found) => Replica {
                code: (found.make)(),
                codec: Some(found.types.codec),
            },
            Err(reason) => Replica {
                code: Box::new(Unbuildable(reason.to_string())),
                codec: None,
            },
        }
    }

    /// One request.
    pub(crate) async fn handle(
        &mut self,
        request: AnyRequest,
    ) -> Result<AnyResponse, HandlerError> {
        self.code.call(request).await
    }

    /// One batch, one result per request.
    pub(crate) async fn handle_batch(
        &mut self,
        requests: Vec<AnyRequest>,
    ) -> Vec<Result<AnyResponse, HandlerError>> {
        self.code.call_batch(requests).await
    }

    /// One request encoded as JSON; the response too.
    pub(crate) async fn handle_encoded(
        &mut self,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, HandlerError> {
        let request = self.decode(&request)?;
        let response = self.code.call(request).await?;
        self.encode(response)
    }

    /// One batch of requests encoded as JSON, one result per request. A
    /// request that does not decode gets its own error; the others go to
    /// the handler as one batch.
    pub(crate) async fn handle_batch_encoded(
        &mut self,
        requests: Vec<Vec<u8>>,
    ) -> Vec<Result<Vec<u8>, HandlerError>> {
        let mut decoded = Vec::with_capacity(requests.len());
        let mut slots = Vec::with_capacity(requests.len());
        for request in &requests {
            match self.decode(request) {
                Ok(r) => {
                    decoded.push(r);
                    slots.push(None);
                }
                Err(e) => slots.push(Some(e)),
            }
        }
        let mut answers = self.code.call_batch(decoded).await.into_iter();
        slots
            .into_iter()
            .map(|slot| match slot {
                Some(e) => Err(e),
                None => match answers.next() {
                    Some(answer) => answer.and_then(|r| self.encode(r)),
                    None => Err(HandlerError::internal(
                        "the batch returned fewer results than it had requests",
                    )),
                },
            })
            .collect()
    }

    /// The user's health check.
    pub(crate) async fn check_health(&mut self) -> Result<(), String> {
        self.code.check_health().await
    }
}

/// What a call to a replica gives: the actor's failure, the handler's
/// error, or the response.
pub(crate) type ReplicaReply = Result<Result<AnyResponse, HandlerError>, ActorError>;
