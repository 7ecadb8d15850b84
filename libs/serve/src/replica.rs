//! The replica actor: one per replica, holding the deployment's code with
//! its types erased. It answers one request (or one batch) at a time; the
//! router keeps at most `max_ongoing_requests` in its mailbox.

use troupe::ActorError;

use crate::deployment::{AnyRequest, AnyResponse, ErasedDeployment};
use crate::error::HandlerError;

/// A replica: the user's [`Deployment`](crate::Deployment) value, built by
/// the factory when the actor starts and again after each restart.
pub(crate) struct Replica {
    pub(crate) code: Box<dyn ErasedDeployment>,
}

#[troupe::actor]
impl Replica {
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

    /// The user's health check.
    pub(crate) async fn check_health(&mut self) -> Result<(), String> {
        self.code.check_health().await
    }
}

/// What a call to a replica gives: the actor's failure, the handler's
/// error, or the response.
pub(crate) type ReplicaReply = Result<Result<AnyResponse, HandlerError>, ActorError>;
