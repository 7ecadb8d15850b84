//! Typed handles on deployments: how one deployment calls another (a
//! pipeline of preprocess, model and postprocess is three deployments), or
//! how the program itself calls one, without HTTP. In the `Serve`'s
//! process, calls go through the same router as HTTP requests (power of two
//! choices, the bounded queue, the request timeout), never encoded; a
//! handle connected from another process has a router of its own over the
//! same replicas (see the `directory` module).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::OnceCell;
use troupe::Runtime;

use crate::deployment::Deployment;
use crate::error::{CallError, ServeError};
use crate::router::Router;

/// How a handle decoded in another process reaches its deployment: the
/// typed `connect`, kept with the handle (decoding is where the request
/// and response types are known to serialize).
type Connector = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<Router>, ServeError>> + Send>> + Send + Sync,
>;

/// A handle on a running deployment of type `D`, cheap to clone. Get one
/// from [`Serve::deploy`](crate::Serve::deploy) or
/// [`Serve::handle`](crate::Serve::handle), or from any process of the
/// cluster with [`connect`](Self::connect). It follows the deployment
/// through updates and autoscaling; once the deployment is deleted its
/// calls fail with [`CallError::NoDeployment`].
///
/// A handle can travel: inside a task's arguments, an actor call or an
/// object, it goes as the names of its `Serve` and deployment, and where
/// it lands it [`connect`](Self::connect)s on its first call (a failure
/// is [`CallError::Connect`], and the next call tries again).
pub struct DeploymentHandle<D> {
    app: Arc<str>,
    name: Arc<str>,
    /// Set from the start, or on the first call of a decoded handle
    /// (shared by its clones, so they connect once).
    router: Arc<OnceCell<Arc<Router>>>,
    connect: Option<Connector>,
    _types: PhantomData<fn() -> D>,
}

impl<D> Clone for DeploymentHandle<D> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            name: self.name.clone(),
            router: self.router.clone(),
            connect: self.connect.clone(),
            _types: PhantomData,
        }
    }
}

impl<D> std::fmt::Debug for DeploymentHandle<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentHandle")
            .field("app", &self.app)
            .field("deployment", &self.name)
            .field("connected", &self.router.initialized())
            .finish()
    }
}

/// What a handle is on the wire: whose deployment it is.
#[derive(Serialize, Deserialize)]
struct HandleWire {
    app: String,
    deployment: String,
}

impl<D> Serialize for DeploymentHandle<D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HandleWire {
            app: self.app.to_string(),
            deployment: self.name.to_string(),
        }
        .serialize(s)
    }
}

impl<'de, D> Deserialize<'de> for DeploymentHandle<D>
where
    D: Deployment,
    D::Request: Serialize,
    D::Response: DeserializeOwned,
{
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        let wire = HandleWire::deserialize(d)?;
        let (app, name): (Arc<str>, Arc<str>) = (wire.app.into(), wire.deployment.into());
        // Decoding runs with the receiving runtime current; a handle
        // decoded elsewhere looks for one when it first calls.
        let decoded_in = Runtime::current();
        let (to_app, to_name) = (app.clone(), name.clone());
        let connect: Connector = Arc::new(move || {
            let (app, name) = (to_app.clone(), to_name.clone());
            let rt = decoded_in.clone().or_else(Runtime::current);
            Box::pin(async move {
                let rt = rt.ok_or_else(|| ServeError::Connect {
                    app: app.to_string(),
                    deployment: name.to_string(),
                    problem: "the handle was decoded and called outside a Troupe runtime".into(),
                })?;
                crate::directory::connect_router::<D>(&rt, &app, &name).await
            })
        });
        Ok(DeploymentHandle {
            app,
            name,
            router: Arc::new(OnceCell::new()),
            connect: Some(connect),
            _types: PhantomData,
        })
    }
}

impl<D> troupe::GetSize for DeploymentHandle<D> {}

impl<D: Deployment> DeploymentHandle<D> {
    pub(crate) fn new(app: &str, router: Arc<Router>) -> Self {
        Self {
            app: app.into(),
            name: router.name.as_str().into(),
            router: Arc::new(OnceCell::new_with(Some(router))),
            connect: None,
            _types: PhantomData,
        }
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the deployment's [`Serve`](crate::Serve)
    /// ([`ServeOptions::app`](crate::ServeOptions::app)).
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The router, connecting first if this handle was decoded here.
    async fn router(&self) -> Result<&Arc<Router>, CallError> {
        if let Some(router) = self.router.get() {
            return Ok(router);
        }
        let failed = |problem: String| CallError::Connect {
            app: self.app.to_string(),
            deployment: self.name.to_string(),
            problem,
        };
        let Some(connect) = &self.connect else {
            return Err(failed(
                "the handle has neither a router nor a way to connect".into(),
            ));
        };
        self.router
            .get_or_try_init(|| connect())
            .await
            .map_err(|e| match e {
                ServeError::NoDeployment(deployment) => CallError::NoDeployment { deployment },
                ServeError::Connect { problem, .. } => failed(problem),
                other => failed(other.to_string()),
            })
    }

    /// Sends `request` to a replica and waits for its response (at most
    /// the deployment's request timeout). Not retried after a replica
    /// failure: the request was moved into the failed replica.
    pub async fn call(&self, request: D::Request) -> Result<D::Response, CallError> {
        let router = self.router().await?;
        let response = router.call(Box::new(request), None).await?;
        response
            .downcast::<D::Response>()
            .map(|r| *r)
            .map_err(|_| CallError::BadResponse {
                deployment: self.name.to_string(),
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
