//! The HTTP proxy: an axum server that sends each request to the
//! deployment whose route prefix matches its path, JSON in and out.
//!
//! | Path | Answer |
//! |---|---|
//! | a deployment's prefix, or below it | the deployment's JSON response; errors as `{"error", "kind"}` with [`CallError::status`] |
//! | `/-/healthz` | `ok` while the proxy runs |
//! | `/-/routes` | `{prefix: deployment}` |
//! | `/-/status` | [`ServeStatus`](crate::ServeStatus) as JSON |
//!
//! Any method is accepted; an empty body is JSON `null`.

use std::sync::Weak;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::error::CallError;
use crate::serve::{ServeInner, ServeOptions};

/// The running proxy.
pub(crate) struct HttpServer {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Stops accepting connections and waits (at most `timeout`) for the
    /// requests in flight to be answered.
    pub(crate) async fn stop(self, timeout: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            tracing::warn!(
                ?timeout,
                "the proxy's requests did not finish in time; closing it"
            );
            task.abort();
        }
    }
}

type Shared = Weak<ServeInner>;

/// Serves `listener` until [`HttpServer::stop`].
pub(crate) fn start(
    listener: tokio::net::TcpListener,
    serve: Shared,
    options: &ServeOptions,
) -> HttpServer {
    // Past max_concurrent_requests in flight to deployments, a request is
    // shed at once (load_shed turns the limit's backpressure into an
    // error, answered as a 503) instead of waiting for a place. One
    // semaphore for every route; the /-/ paths stay outside it, so that
    // an overloaded proxy still reports its status.
    let guard = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            error_response(
                503,
                "proxy_overloaded",
                "the proxy has max_concurrent_requests in flight; retry later".into(),
            )
        }))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            options.max_concurrent_requests,
        ));
    let deployments = axum::Router::new()
        .fallback(proxy)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(guard)
        .with_state(serve.clone());
    let app = axum::Router::new()
        .route("/-/healthz", get(healthz))
        .route("/-/routes", get(routes))
        .route("/-/status", get(status))
        .with_state(serve)
        .fallback_service(deployments);
    let listener = listener.tap_io(|tcp| {
        // Small responses go out at once (no Nagle delay).
        let _ = tcp.set_nodelay(true);
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the serve proxy stopped");
        }
    });
    HttpServer { stop, task }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

fn error_response(status: u16, kind: &str, message: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": message, "kind": kind });
    json(status, body.to_string().into_bytes())
}

fn call_error(e: &CallError) -> Response {
    error_response(e.status(), e.kind(), e.to_string())
}

fn stopping() -> Response {
    error_response(503, "stopping", "serving is shutting down".into())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn routes(State(serve): State<Shared>) -> Response {
    let Some(serve) = serve.upgrade() else {
        return stopping();
    };
    let map: serde_json::Map<String, serde_json::Value> = serve
        .routes()
        .into_iter()
        .map(|(prefix, name)| (prefix, serde_json::Value::String(name)))
        .collect();
    json(
        StatusCode::OK,
        serde_json::Value::Object(map).to_string().into_bytes(),
    )
}

async fn status(State(serve): State<Shared>) -> Response {
    let Some(serve) = serve.upgrade() else {
        return stopping();
    };
    match serde_json::to_vec(&serve.status()) {
        Ok(body) => json(StatusCode::OK, body),
        Err(e) => error_response(500, "status", format!("could not encode the status: {e}")),
    }
}

async fn proxy(State(serve): State<Shared>, uri: Uri, body: Bytes) -> Response {
    let Some(serve) = serve.upgrade() else {
        return stopping();
    };
    let path = uri.path();
    let Some(router) = serve.route(path) else {
        return error_response(
            404,
            "no_route",
            format!("no deployment serves {path:?}; GET /-/routes lists the routes"),
        );
    };
    drop(serve);
    let span = tracing::debug_span!("serve_request", deployment = %router.name, path);
    async move {
        let request = match (router.codec.decode)(&body) {
            Ok(request) => request,
            Err(e) => {
                let e = CallError::BadBody {
                    deployment: router.name.clone(),
                    problem: e.to_string(),
                };
                router.metrics.requests.increment(1);
                router.metrics.error(e.kind());
                return call_error(&e);
            }
        };
        let again = || (router.codec.decode)(&body).ok();
        match router.call(request, Some(&again)).await {
            Ok(response) => match (router.codec.encode)(response) {
                Ok(bytes) => json(StatusCode::OK, bytes),
                Err(problem) => {
                    let e = CallError::BadResponse {
                        deployment: router.name.clone(),
                        problem,
                    };
                    router.metrics.error(e.kind());
                    call_error(&e)
                }
            },
            Err(e) => call_error(&e),
        }
    }
    .instrument(span)
    .await
}
