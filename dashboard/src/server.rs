//! The HTTP side: the dashboard's routes, the guard every request passes,
//! and the lifecycle both services share (bound, served, stopped).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State as Extract};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use troupe_core::runtime::{RunningService, WeakRuntime};
use troupe_core::{Runtime, StateQuery, TaskFilter, TaskState, TimelineError};

use crate::auth::Auth;
use crate::hub::Hub;
use crate::{bind, Dashboard, DashboardError};

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// Every asset is ours and embedded: nothing may load from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Who may be asked for: when bound to loopback, only requests naming the
/// address bound (or `localhost` at its port) are served. A page on
/// another site that points a host name of its own at 127.0.0.1 (DNS
/// rebinding) sends its own name, and is refused.
#[derive(Clone)]
pub(crate) struct HostGuard {
    allowed: Option<Arc<[String]>>,
}

impl HostGuard {
    pub(crate) fn for_addr(addr: SocketAddr) -> Self {
        if !addr.ip().is_loopback() {
            return Self { allowed: None };
        }
        let port = addr.port();
        let allowed = vec![
            addr.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        Self {
            allowed: Some(allowed.into()),
        }
    }

    fn admits(&self, host: Option<&HeaderValue>) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let Some(host) = host.and_then(|h| h.to_str().ok()) else {
            return false;
        };
        allowed.iter().any(|a| a.eq_ignore_ascii_case(host.trim()))
    }
}

pub(crate) async fn guard(
    Extract(guard): Extract<HostGuard>,
    request: Request,
    next: Next,
) -> Response {
    if guard.admits(request.headers().get(header::HOST)) {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        "this server answers only requests addressed to the address it listens on \
         (the Host header names another; a guard against DNS rebinding)\n",
    )
        .into_response()
}

/// A bound server and what runs beside it, until stopped.
pub(crate) struct Served {
    pub(crate) url: String,
    pub(crate) server: JoinHandle<()>,
    pub(crate) helpers: Vec<JoinHandle<()>>,
    pub(crate) shutdown: Arc<Notify>,
    pub(crate) hub: Option<Arc<Hub>>,
}

impl Served {
    /// Serves `app` on `listener` until `stop`.
    pub(crate) fn start(listener: tokio::net::TcpListener, url: String, app: Router) -> Self {
        let shutdown = Arc::new(Notify::new());
        let signal = shutdown.clone();
        let server = tokio::spawn(async move {
            let serving = axum::serve(listener, app)
                .with_graceful_shutdown(async move { signal.notified().await });
            if let Err(err) = serving.await {
                tracing::error!(%err, "the HTTP server stopped with an error");
            }
        });
        Self {
            url,
            server,
            helpers: Vec::new(),
            shutdown,
            hub: None,
        }
    }

    fn abort(&self) {
        self.server.abort();
        for helper in &self.helpers {
            helper.abort();
        }
    }
}

impl RunningService for Served {
    fn endpoint(&self) -> Option<String> {
        Some(self.url.clone())
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        let mut this = self;
        Box::pin(async move {
            if let Some(hub) = &this.hub {
                hub.close(); // ends the event streams, which would hold the server open
            }
            this.shutdown.notify_one();
            for helper in &this.helpers {
                helper.abort();
            }
            // Requests in flight get a moment to finish.
            let waited = tokio::time::timeout(Duration::from_secs(2), &mut this.server).await;
            if waited.is_err() {
                tracing::warn!(url = %this.url, "HTTP server did not stop within 2 s; aborting it");
            }
            this.abort();
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.abort();
    }
}

#[derive(Clone)]
struct App {
    runtime: WeakRuntime,
    hub: Arc<Hub>,
}

impl App {
    /// The runtime, unless it has shut down.
    fn runtime(&self) -> Option<Runtime> {
        self.runtime.upgrade().filter(|rt| !rt.is_shut_down())
    }
}

fn gone() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the runtime has shut down\n",
    )
        .into_response()
}

/// Starts the dashboard: binds, then serves the page, its assets and the
/// API, with the poller and the sampler beside it.
pub(crate) async fn start_dashboard(
    dashboard: Dashboard,
    runtime: WeakRuntime,
) -> Result<Served, DashboardError> {
    let auth = Auth::new(dashboard.token.as_deref())?;
    let listener = bind(&dashboard.addr).await?;
    let local = local_addr(&listener)?;
    auth.check(local)?;
    let hub = Hub::new(
        runtime.clone(),
        dashboard.query.clone(),
        dashboard.interval,
        dashboard.samples,
    );
    let app = Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(script))
        .route("/assets/style.css", get(style))
        .route("/api/events", get(events))
        .route("/api/snapshot", get(snapshot))
        .route("/api/state", get(state))
        .route("/api/timeline", get(timeline))
        .route("/api/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(not_found)
        .with_state(App {
            runtime,
            hub: hub.clone(),
        })
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::require,
        ))
        .layer(axum::middleware::from_fn_with_state(
            HostGuard::for_addr(local),
            guard,
        ));
    let url = format!("http://{local}/");
    let mut served = Served::start(listener, url, app);
    served.helpers.push(tokio::spawn(hub.clone().run_poller()));
    served.helpers.push(tokio::spawn(hub.clone().run_sampler()));
    served.hub = Some(hub);
    Ok(served)
}

pub(crate) fn local_addr(listener: &tokio::net::TcpListener) -> Result<SocketAddr, DashboardError> {
    listener.local_addr().map_err(|cause| DashboardError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        cause,
    })
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    page("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    page("text/css; charset=utf-8", STYLE)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such page; try / or /api/state\n").into_response()
}

fn json(body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into(),
    )
        .into_response()
}

/// The page's live updates: the latest snapshot at once, then each new one.
async fn events(Extract(app): Extract<App>) -> Response {
    if app.runtime().is_none() {
        return gone();
    }
    let (client, updates) = app.hub.connect();
    let hub = app.hub.clone();
    let stream = futures::stream::unfold(
        (client, updates, hub),
        |(client, mut updates, hub)| async move {
            loop {
                if updates.changed().await.is_err() {
                    return None;
                }
                let latest = updates.borrow_and_update().clone();
                match latest {
                    Some(json) => {
                        let event = Event::default().event("snapshot").data(&*json);
                        return Some((Ok::<_, Infallible>(event), (client, updates, hub)));
                    }
                    None if hub.closed.load(Ordering::Acquire) => return None,
                    None => continue,
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The dashboard itself: open pages, snapshots taken, whether the poller
/// idles (no page open), the interval.
async fn status(Extract(app): Extract<App>) -> Response {
    json(
        serde_json::json!({
            "clients": app.hub.clients(),
            "polls": app.hub.polls(),
            "idle": app.hub.idle(),
            "interval_ms": app.hub.interval().as_millis() as u64,
        })
        .to_string(),
    )
}

async fn snapshot(Extract(app): Extract<App>) -> Response {
    if app.runtime().is_none() {
        return gone();
    }
    match app.hub.latest().await {
        Some(latest) => json(latest.to_string()),
        None => gone(),
    }
}

/// `/api/state`'s query: `state`, `function`, `limit`.
#[derive(Debug, Deserialize)]
struct StateParams {
    state: Option<String>,
    function: Option<String>,
    limit: Option<usize>,
}

fn parse_state(text: &str) -> Option<TaskState> {
    Some(match text.to_ascii_lowercase().replace('-', "_").as_str() {
        "queued" => TaskState::Queued,
        "waiting" | "waiting_for_args" => TaskState::WaitingForArgs,
        "running" => TaskState::Running,
        "unplaced" => TaskState::Unplaced,
        "delegated" => TaskState::Delegated,
        "finished" => TaskState::Finished,
        "failed" => TaskState::Failed,
        "cancelled" | "canceled" => TaskState::Cancelled,
        _ => return None,
    })
}

async fn state(Extract(app): Extract<App>, Query(params): Query<StateParams>) -> Response {
    let Some(runtime) = app.runtime() else {
        return gone();
    };
    let mut filter = TaskFilter::new();
    if let Some(text) = &params.state {
        match parse_state(text) {
            Some(state) => filter = filter.state(state),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("unknown task state {text:?}; use one of queued, waiting, running, unplaced, delegated, finished, failed, cancelled\n"),
                )
                    .into_response()
            }
        }
    }
    if let Some(function) = params.function {
        filter = filter.function(function);
    }
    let limit = params.limit.unwrap_or(1000);
    let query = StateQuery::new().limit(limit).tasks(filter.limit(limit));
    let state = runtime.state_with(&query).await;
    match serde_json::to_vec(&state) {
        Ok(body) => json(body),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

async fn timeline(Extract(app): Extract<App>) -> Response {
    let Some(runtime) = app.runtime() else {
        return gone();
    };
    let mut body = Vec::new();
    match runtime.write_timeline(&mut body) {
        Ok(_) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"troupe-timeline.json\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(err @ TimelineError::NotRecorded) => {
            (StatusCode::CONFLICT, format!("{err}\n")).into_response()
        }
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_admit_only_their_own_host() {
        let guard = HostGuard::for_addr("127.0.0.1:8265".parse().unwrap());
        let admits = |host: &str| guard.admits(Some(&HeaderValue::from_str(host).unwrap()));
        assert!(admits("127.0.0.1:8265"));
        assert!(admits("localhost:8265"));
        assert!(admits("LOCALHOST:8265"));
        assert!(!admits("127.0.0.1:9999"));
        assert!(!admits("evil.example:8265"), "a rebinding name");
        assert!(!guard.admits(None), "no Host header");
        let open = HostGuard::for_addr("0.0.0.0:8265".parse().unwrap());
        assert!(open.admits(Some(&HeaderValue::from_static("anything:1"))));
    }

    #[test]
    fn task_states_parse_as_the_api_documents() {
        assert_eq!(parse_state("failed"), Some(TaskState::Failed));
        assert_eq!(parse_state("Waiting"), Some(TaskState::WaitingForArgs));
        assert_eq!(
            parse_state("waiting-for-args"),
            Some(TaskState::WaitingForArgs)
        );
        assert_eq!(parse_state("done"), None);
    }
}
