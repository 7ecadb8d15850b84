//! Typed handles on deployments: how one deployment calls another (a
//! pipeline of preprocess, model and postprocess is three deployments), or
//! how the program itself calls one, without HTTP. In the `Serve`'s
//! process, calls go through the same router as HTTP requests (power of two
//! choices, the bounded queue, the request timeout), never encoded; a
//! handle connected from another process has a router of its own over the
//! same replicas (see the `directory` module).

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use troupe::Runtime;

use crate::deployment::Deployment;
use crate::error::{CallError, ServeError};
use crate::router::Router;

/// A handle on a running deployment of type `D`, cheap to clone. Get one
/// from [`Serve::deploy`](crate::Serve::deploy) or
/// [`Serve::handle`](crate::Serve::handle), or from any process of the
/// cluster with [`connect`](Self::connect). It follows the deployment
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

impl<D> DeploymentHandle<D>
where
    D: Deployment,
    D::Request: Serialize,
    D::Response: DeserializeOwned,
{
    /// A handle on deployment `deployment` of the [`Serve`](crate::Serve)
    /// named `app` ([`ServeOptions::app`](crate::ServeOptions::app),
    /// `"default"` unless set), wherever it runs in `rt`'s cluster: in a
    /// task, in another deployment's replica, in another program joined as
    /// a driver. Requests and responses cross as JSON to the replicas,
    /// routed here with the deployment's own settings (power of two
    /// choices, queue bound, timeout, retry, batching); the handle follows
    /// new replicas, drains and settings every 200 ms, and its calls fail
    /// with [`CallError::NoDeployment`] once the deployment is deleted or
    /// its `Serve` shuts down. In the `Serve`'s own process it is the same
    /// handle as [`Serve::handle`](crate::Serve::handle).
    ///
    /// `max_ongoing_requests` holds per process: with handles in several
    /// processes, a replica may have up to that many from each.
    ///
    /// Errors: [`ServeError::Connect`] when no such `Serve` answers (within
    /// 10 s) or it serves other types, [`ServeError::NoDeployment`] when it
    /// has no such deployment.
    ///
    /// ```no_run
    /// # use troupe_serve::{DeploymentHandle, Deployment, HandlerError};
    /// # struct Upper;
    /// # impl Deployment for Upper {
    /// #     type Request = String;
    /// #     type Response = String;
    /// #     async fn call(&mut self, s: String) -> Result<String, HandlerError> { Ok(s.to_uppercase()) }
    /// # }
    /// # async fn in_a_task(rt: &troupe::Runtime) -> Result<(), Box<dyn std::error::Error>> {
    /// let upper = DeploymentHandle::<Upper>::connect(rt, "default", "upper").await?;
    /// assert_eq!(upper.call("hi".to_owned()).await?, "HI");
    /// # Ok(()) }
    /// ```
    pub async fn connect(rt: &Runtime, app: &str, deployment: &str) -> Result<Self, ServeError> {
        crate::directory::connect(rt, app, deployment).await
    }
}
