//! The errors of serving: what a caller of a deployment sees
//! ([`CallError`], also the HTTP status), what a handler returns
//! ([`HandlerError`]) and what setting up fails with ([`ServeError`]).

use std::time::Duration;

/// What a deployment's handler returns instead of a response: a problem
/// with the request (HTTP 400) or with the handler itself (HTTP 500).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum HandlerError {
    /// The request decoded but makes no sense to the handler; the message
    /// tells the client what to change.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The handler could not answer; the message says why.
    #[error("handler failed: {0}")]
    Internal(String),
}

impl HandlerError {
    /// A problem with the request (HTTP 400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// A problem in the handler (HTTP 500).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
}

/// Why a request to a deployment got no response, through HTTP or a
/// [`DeploymentHandle`](crate::DeploymentHandle). Each variant maps to one
/// HTTP status ([`CallError::status`]) and its message says what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The body is not valid JSON for the deployment's request type
    /// (HTTP 400).
    #[error("the request body is not a valid request for deployment {deployment:?}: {problem}")]
    BadBody {
        /// The deployment.
        deployment: String,
        /// What serde_json found wrong, with line and column.
        problem: String,
    },
    /// The handler refused or failed (HTTP 400 or 500).
    #[error("deployment {deployment:?}: {source}")]
    Handler {
        /// The deployment.
        deployment: String,
        /// What the handler returned.
        #[source]
        source: HandlerError,
    },
    /// Every replica is at `max_ongoing_requests` and the deployment's
    /// queue is full (HTTP 503, at once): retry later, or raise
    /// `max_queued_requests` or the number of replicas.
    #[error(
        "deployment {deployment:?} is overloaded: all replicas are busy and {queued} requests \
         already wait (max_queued_requests); retry later"
    )]
    Overloaded {
        /// The deployment.
        deployment: String,
        /// How many requests were waiting.
        queued: usize,
    },
    /// The replica failed while it had this request (it panicked or died);
    /// it is being restarted (HTTP 503). Safe to retry if the request is
    /// idempotent; `DeploymentOptions::retry_on_replica_failure` makes the
    /// proxy retry once on another replica.
    #[error(
        "replica {replica} of deployment {deployment:?} failed while handling this request \
         ({reason}); it is being restarted, retry the request"
    )]
    ReplicaFailed {
        /// The deployment.
        deployment: String,
        /// The replica's index.
        replica: u64,
        /// The panic message or the cause of death.
        reason: String,
    },
    /// No answer within the request timeout (HTTP 504).
    #[error("deployment {deployment:?} did not answer within {after:?} (request_timeout)")]
    Timeout {
        /// The deployment.
        deployment: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// The deployment does not exist or is being deleted (HTTP 404 from
    /// the proxy, 503 through a handle).
    #[error("no deployment {deployment:?} is running; deploy it first")]
    NoDeployment {
        /// The name asked for.
        deployment: String,
    },
    /// A handle that came from another process (inside a task's arguments
    /// or an object) could not reach its deployment's `Serve` on its first
    /// call (HTTP 503); the next call tries again.
    #[error("a handle on deployment {deployment:?} of Serve {app:?} could not connect: {problem}")]
    Connect {
        /// The `Serve`'s name (`ServeOptions::app`).
        app: String,
        /// The deployment.
        deployment: String,
        /// Why.
        problem: String,
    },
    /// The response could not be encoded as JSON (HTTP 500): the
    /// deployment's response type does not serialize as JSON.
    #[error("deployment {deployment:?} returned a response that is not JSON-encodable: {problem}")]
    BadResponse {
        /// The deployment.
        deployment: String,
        /// serde_json's message.
        problem: String,
    },
}

impl CallError {
    /// The HTTP status the proxy answers with.
    pub fn status(&self) -> u16 {
        match self {
            CallError::BadBody { .. } => 400,
            CallError::Handler {
                source: HandlerError::BadRequest(_),
                ..
            } => 400,
            CallError::Handler { .. } | CallError::BadResponse { .. } => 500,
            CallError::Overloaded { .. }
            | CallError::ReplicaFailed { .. }
            | CallError::Connect { .. } => 503,
            CallError::Timeout { .. } => 504,
            CallError::NoDeployment { .. } => 404,
        }
    }

    /// A short, stable name of the variant, for the `kind` label of the
    /// error counter and the JSON error body.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::BadBody { .. } => "bad_body",
            CallError::Handler { .. } => "handler",
            CallError::Overloaded { .. } => "overloaded",
            CallError::ReplicaFailed { .. } => "replica_failed",
            CallError::Timeout { .. } => "timeout",
            CallError::NoDeployment { .. } => "no_deployment",
            CallError::BadResponse { .. } => "bad_response",
            CallError::Connect { .. } => "connect",
        }
    }
}

/// Setting up or changing serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The proxy could not listen on its address: pick a free port (or 0).
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The options make no sense; the message says which one and why.
    #[error("invalid options for deployment {deployment:?}: {problem}")]
    InvalidOptions {
        /// The deployment.
        deployment: String,
        /// What is wrong.
        problem: String,
    },
    /// Another deployment already serves this route prefix.
    #[error("route prefix {prefix:?} is already served by deployment {owner:?}; pick another")]
    RouteTaken {
        /// The prefix asked for.
        prefix: String,
        /// The deployment that has it.
        owner: String,
    },
    /// A replica could not be started (its resources cannot be had, or its
    /// constructor failed).
    #[error("could not start a replica of deployment {deployment:?}: {source}")]
    Spawn {
        /// The deployment.
        deployment: String,
        /// Troupe's reason.
        #[source]
        source: Box<troupe::SpawnError>,
    },
    /// A replica did not start in time (its resources stayed busy).
    #[error(
        "a replica of deployment {deployment:?} did not start within {after:?}: its resources \
         stayed busy; free some or lower num_cpus/num_gpus"
    )]
    SpawnTimeout {
        /// The deployment.
        deployment: String,
        /// How long it waited.
        after: Duration,
    },
    /// No deployment of this name exists.
    #[error("no deployment {0:?}; deploy it first")]
    NoDeployment(String),
    /// Another `Serve` on this runtime already has this name.
    #[error(
        "another Serve on this runtime is already called {0:?}; give this one another name with \
         ServeOptions::app"
    )]
    AppTaken(String),
    /// [`DeploymentHandle::connect`](crate::DeploymentHandle::connect)
    /// could not reach the deployment of a `Serve` in another process.
    #[error("cannot connect to deployment {deployment:?} of Serve {app:?}: {problem}")]
    Connect {
        /// The `Serve`'s name ([`ServeOptions::app`](crate::ServeOptions::app)).
        app: String,
        /// The deployment.
        deployment: String,
        /// What went wrong.
        problem: String,
    },
    /// A deployment of this name exists with another request or response
    /// type than the handle asked for.
    #[error("deployment {deployment:?} serves {actual}, not {expected}")]
    WrongType {
        /// The deployment.
        deployment: String,
        /// The type asked for.
        expected: &'static str,
        /// The type it serves.
        actual: &'static str,
    },
    /// The config file could not be read or parsed.
    #[error("config {path}: {problem}")]
    Config {
        /// The file (or `<string>`).
        path: String,
        /// What is wrong, with line and column where known.
        problem: String,
    },
    /// The config names a deployment kind that the program did not
    /// register with [`Registry::register`](crate::Registry::register).
    #[error(
        "config deployment {deployment:?} uses kind {kind:?}, which this program does not \
         register (registered: {registered:?})"
    )]
    UnknownKind {
        /// The deployment in the config.
        deployment: String,
        /// The kind it names.
        kind: String,
        /// The kinds the registry has.
        registered: Vec<String>,
    },
    /// A proxy's status could not be read: check the address and that
    /// the program serving it runs.
    #[error("status of the proxy at {addr}: {problem}")]
    Status {
        /// The proxy's address.
        addr: String,
        /// What went wrong.
        problem: String,
    },
    /// A control operation did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
}
