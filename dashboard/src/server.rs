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
use tokio_rustls::rustls::ServerConfig;
use troupe_core::runtime::{RunningService, WeakRuntime};
use troupe_core::{Runtime, StateQuery, TaskFilter, TaskState, TimelineError};

use crate::auth::Auth;
use crate::cluster::ClusterFeed;
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
    /// Serves `app` on `listener` until `stop`, over TLS with `tls`; its
    /// URL is `path` at the address it listens on.
    pub(crate) fn start(
        listener: tokio::net::TcpListener,
        tls: Option<Arc<ServerConfig>>,
        path: &str,
        app: Router,
    ) -> Result<Self, DashboardError> {
        let local = local_addr(&listener)?;
        let shutdown = Arc::new(Notify::new());
        let signal = shutdown.clone();
        let url = match &tls {
            Some(_) => format!("https://{local}{path}"),
            None => format!("http://{local}{path}"),
        };
        let server = match tls {
            None => tokio::spawn(async move {
                let serving = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { signal.notified().await });
                if let Err(err) = serving.await {
                    tracing::error!(%err, "the HTTP server stopped with an error");
                }
            }),
            Some(config) => {
                let listener = crate::tls::TlsListener::new(listener, config)
                    .map_err(|cause| DashboardError::Bind { addr: local, cause })?;
                tokio::spawn(async move {
                    let serving = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { signal.notified().await });
                    if let Err(err) = serving.await {
                        tracing::error!(%err, "the HTTPS server stopped with an error");
                    }
                })
            }
        };
        Ok(Self {
            url,
            server,
            helpers: Vec::new(),
            shutdown,
            hub: None,
        })
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
    cluster: Arc<ClusterFeed>,
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
    let cluster = ClusterFeed::new(
        runtime.clone(),
        dashboard.cluster_interval,
        dashboard.cluster_deadline,
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
        .route("/api/cluster", get(cluster_view))
        .route("/api/jobs/log", get(job_log))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(not_found)
        .with_state(App {
            runtime,
            hub: hub.clone(),
            cluster: cluster.clone(),
        })
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::require,
        ))
        .layer(axum::middleware::from_fn_with_state(
            HostGuard::for_addr(local),
            guard,
        ));
    let mut served = Served::start(listener, dashboard.tls.clone(), "/", app)?;
    served.helpers.push(tokio::spawn(hub.clone().run_poller()));
    served.helpers.push(tokio::spawn(hub.clone().run_sampler()));
    served.helpers.push(tokio::spawn(cluster.run(hub.clone())));
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

/// The page's live updates: the latest snapshot at once, then each new
/// one (`snapshot` events); the cluster view likewise (`cluster` events).
async fn events(Extract(app): Extract<App>) -> Response {
    if app.runtime().is_none() {
        return gone();
    }
    let (client, updates) = app.hub.connect();
    let cluster = app.cluster.subscribe();
    let hub = app.hub.clone();
    // The page's own snapshot goes first: the cluster's waits for it.
    let stream = futures::stream::unfold(
        (client, updates, cluster, hub, false),
        |(client, mut updates, mut cluster, hub, mut rendered)| async move {
            loop {
                // Either feed's sender lives as long as the server: an
                // error means the dashboard stopped.
                let (kind, latest) = tokio::select! {
                    changed = updates.changed() => {
                        changed.ok()?;
                        ("snapshot", updates.borrow_and_update().clone())
                    }
                    changed = cluster.changed(), if rendered => {
                        changed.ok()?;
                        ("cluster", cluster.borrow_and_update().clone())
                    }
                };
                if hub.closed.load(Ordering::Acquire) {
                    return None;
                }
                if let Some(json) = latest {
                    rendered = true;
                    let event = Event::default().event(kind).data(&*json);
                    return Some((
                        Ok::<_, Infallible>(event),
                        (client, updates, cluster, hub, rendered),
                    ));
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The cluster view: every node and the jobs (the latest poll's, or one
/// taken now if none was).
async fn cluster_view(Extract(app): Extract<App>) -> Response {
    if app.runtime().is_none() {
        return gone();
    }
    match app.cluster.latest().await {
        Some(latest) => json(latest.to_string()),
        None => gone(),
    }
}

/// `/api/jobs/log`'s query: the job, and the byte to start from.
#[derive(Debug, Deserialize)]
struct LogParams {
    id: String,
    #[serde(default)]
    from: u64,
}

/// A page of a job's log (at most the head's page size), as text.
async fn job_log(Extract(app): Extract<App>, Query(params): Query<LogParams>) -> Response {
    if app.runtime().is_none() {
        return gone();
    }
    match app.cluster.job_log(params.id, params.from).await {
        None => (
            StatusCode::NOT_FOUND,
            "this node runs alone: there are no jobs\n",
        )
            .into_response(),
        Some(Ok(page)) => {
            let (text, next) = whole_chars(&page.bytes, page.next);
            json(
                serde_json::json!({
                    "text": text,
                    "next": next,
                    "ended": page.ended,
                })
                .to_string(),
            )
        }
        Some(Err(why)) => (StatusCode::BAD_GATEWAY, format!("{why}\n")).into_response(),
    }
}

/// A log page as text, and where the next starts: a character cut at the
/// page's end is left for the next page (the rest of what is not UTF-8
/// shows as U+FFFD).
fn whole_chars(bytes: &[u8], next: u64) -> (String, u64) {
    let cut = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        // An incomplete character at the very end (no error length).
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    };
    let left = (bytes.len() - cut) as u64;
    (
        String::from_utf8_lossy(&bytes[..cut]).into_owned(),
        next.saturating_sub(left),
    )
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
            "cluster_polls": app.cluster.counts().0,
            "cluster_timeouts": app.cluster.counts().1,
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

    #[test]
    fn a_character_cut_at_a_log_page_end_waits_for_the_next_page() {
        assert_eq!(whole_chars(b"ok\n", 13), ("ok\n".to_owned(), 13));
        let e_acute = "é".as_bytes(); // two bytes
        let cut = [b"caf".as_slice(), &e_acute[..1]].concat();
        assert_eq!(whole_chars(&cut, 4), ("caf".to_owned(), 3));
        let bad = [b"a".as_slice(), &[0xff], b"b"].concat();
        assert_eq!(whole_chars(&bad, 3), ("a\u{fffd}b".to_owned(), 3));
    }
}
