//! `troupe start --block`: a node in this process until it is stopped,
//! and a worker's rejoining after it was cut off.

use std::time::Duration;

use troupe_core::Config;

use super::{options_of, resources_of, StartArgs};
use crate::protocol::Role;
use crate::{ClusterError, ClusterNode};

/// The first pause before a cut-off worker dials its head again, doubled
/// after each failed try up to [`REJOIN_MAX_PAUSE`].
const REJOIN_FIRST_PAUSE: Duration = Duration::from_millis(200);
const REJOIN_MAX_PAUSE: Duration = Duration::from_secs(5);

/// Refuses `--metrics-port` where it could not be served (a build
/// without the dashboard, or beyond loopback without a token) before the
/// node starts.
pub(super) fn check_metrics(args: &StartArgs) -> Result<(), ClusterError> {
    if args.metrics_port.is_none() {
        return Ok(());
    }
    if !cfg!(feature = "dashboard") {
        return Err(ClusterError::Start(
            "--metrics-port needs a program built with troupe's `dashboard` feature \
             (it serves the Prometheus endpoint)"
                .to_owned(),
        ));
    }
    if !args.bind.is_loopback() && args.metrics_token.as_deref().unwrap_or("").is_empty() {
        return Err(ClusterError::Start(format!(
            "--metrics-port on {} (beyond loopback) needs a token that scrapes must carry: \
             set TROUPE_METRICS_TOKEN (16 or more letters, digits, `-`, `_` or `.`)",
            args.bind
        )));
    }
    Ok(())
}

/// Adds the Prometheus endpoint `--metrics-port` asks for.
#[cfg(feature = "dashboard")]
/// HTTPS with the node's certificate when it has TLS.
fn with_metrics(config: Config, args: &StartArgs, tls: Option<&crate::tls::Tls>) -> Config {
    let Some(port) = args.metrics_port else {
        return config;
    };
    let addr = std::net::SocketAddr::new(args.bind, port).to_string();
    let mut exporter = troupe_dashboard::MetricsExporter::new(addr);
    if let Some(token) = &args.metrics_token {
        exporter = exporter.token(token.clone());
    }
    if let Some(tls) = tls {
        exporter = exporter.tls(tls.https_config());
    }
    config.service(exporter)
}

#[cfg(not(feature = "dashboard"))]
fn with_metrics(config: Config, _: &StartArgs, _: Option<&crate::tls::Tls>) -> Config {
    config
}

/// Runs a node until it is stopped. A worker cut off from its cluster
/// (declared dead after a stall or a partition) has had its work handled
/// as lost by the others: it drops its runtime and joins again as a new
/// node, dialing the head with backoff until it answers. (A worker whose
/// head is lost keeps its runtime, and a head restarted at the same
/// address takes it back: `node/member.rs`.)
pub(super) async fn blocking(args: StartArgs, user_build: bool) -> Result<(), ClusterError> {
    let options = options_of(&args, user_build)?;
    check_metrics(&args)?;
    let role = options.role;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| if role == Role::Head { "head" } else { "node" }.to_owned());
    let resources = resources_of(&args)?;
    // The HTTPS endpoints' certificate (the node loads its own as it starts).
    let tls = match &args.tls_dir {
        Some(dir) => Some(crate::tls::Tls::load(dir)?),
        None => None,
    };
    let (current, watched) = tokio::sync::watch::channel(ClusterNode::new(options.clone()));
    // Up before joining, so that a probe sees 503 (not a refused
    // connection) while the node joins.
    let health = match args.health_port {
        Some(port) => {
            let addr = std::net::SocketAddr::new(args.bind, port);
            let (_, task) = crate::health::serve(addr, watched, tls.as_deref())
                .await
                .map_err(|source| ClusterError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            Some(task)
        }
        None => None,
    };
    let mut rejoining = false;
    let mut pause = REJOIN_FIRST_PAUSE;
    let result = loop {
        let node = if rejoining {
            let node = ClusterNode::new(options.clone());
            current.send_replace(node.clone());
            node
        } else {
            current.borrow().clone()
        };
        let mut config = Config::default()
            .name(name.clone())
            .resources(resources.clone());
        if let Some(bytes) = args.object_store_memory {
            config = config.objects(troupe_objects::StoreConfig::with_budget(bytes));
        }
        // Before the node's own service, which tells the others where
        // this endpoint is.
        config = with_metrics(config, &args, tls.as_deref());
        let rt = match troupe_core::init(node.configure(config)).await {
            Ok(rt) => rt,
            Err(err) if rejoining => {
                println!("troupe: the head does not take this node back yet ({err}); trying again in {} ms", pause.as_millis());
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tokio::signal::ctrl_c() => break Ok(()),
                }
                pause = (pause * 2).min(REJOIN_MAX_PAUSE);
                continue;
            }
            Err(err) => break Err(ClusterError::Start(err.to_string())),
        };
        pause = REJOIN_FIRST_PAUSE;
        let endpoint = |name: &str| {
            rt.services()
                .into_iter()
                .find(|s| s.name == name)
                .and_then(|s| s.endpoint)
        };
        let address = endpoint(crate::SERVICE_NAME).unwrap_or_default();
        let scraped_at = endpoint(troupe_core::runtime::METRICS_SERVICE)
            .map(|url| format!(" (metrics: {url})"))
            .unwrap_or_default();
        println!(
            "troupe: {role:?} {} up at {address}{scraped_at}",
            rt.node_id()
        );
        let (why, interrupted) = tokio::select! {
            why = node.ended() => (why, false),
            _ = tokio::signal::ctrl_c() => ("interrupted".to_owned(), true),
        };
        println!("troupe: node {} stopping: {why}", rt.node_id());
        let _ = tokio::time::timeout(Duration::from_secs(10), rt.shutdown()).await;
        if interrupted || role == Role::Head || !node.was_cut_off() {
            break Ok(());
        }
        println!(
            "troupe: node {} was cut off from its cluster; joining again as a new node",
            rt.node_id()
        );
        rejoining = true;
    };
    if let Some(task) = health {
        task.abort();
    }
    result
}
