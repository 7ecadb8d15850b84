//! Typed, in-process handles on deployments: how one deployment calls
//! another (a pipeline of preprocess, model and postprocess is three
//! deployments), or how the program itself calls one, without HTTP or
//! encoding. Calls go through the same router as HTTP requests: power of
//! two choices, the bounded queue, the request timeout.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::deployment::Deployment;
use crate::error::CallError;
use crate::router::Router;

/// A handle on a running deployment of type `D`, cheap to clone. Get one
/// from [`Serve::deploy`](crate::Serve::deploy) or
/// [`Serve::handle`](crate::Serve::handle). It follows the deployment
/// through updates and autoscaling; once the deployment is deleted its
/// calls fail with [`CallError::NoDeployment`].
pub struct DeploymentHandle<D> {
    router: Arc<Router>,
    _types: PhantomData<fn() -> D>,
}

impl<D> Clone for DeploymentHandle<D> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            _types: PhantomData,
        }
    }
}

impl<D> std::fmt::Debug for DeploymentHandle<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentHandle")
            .field("deployment", &self.router.name)
            .finish()
    }
}

impl<D: Deployment> DeploymentHandle<D> {
    pub(crate) fn new(router: Arc<Router>) -> Self {
        Self {
            router,
            _types: PhantomData,
        }
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.router.name
    }

    /// Sends `request` to a replica and waits for its response (at most
    /// the deployment's request timeout). Not retried after a replica
    /// failure: the request was moved into the failed replica.
    pub async fn call(&self, request: D::Request) -> Result<D::Response, CallError> {
        let response = self.router.call(Box::new(request), None).await?;
        response
            .downcast::<D::Response>()
            .map(|r| *r)
            .map_err(|_| CallError::BadResponse {
                deployment: self.router.name.clone(),
                problem: format!(
                    "the replica answered with something other than a {}",
                    std::any::type_name::<D::Response>()
                ),
            })
    }
}
