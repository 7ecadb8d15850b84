//! troupe-serve's headline speeds, one `metric value unit` line each on
//! stdout (details on stderr):
//!
//! ```text
//! cargo bench -p troupe-serve --bench serve_perf              # everything
//! cargo bench -p troupe-serve --bench serve_perf -- noop      # metrics whose name contains "noop"
//! TROUPE_PERF_QUICK=1 cargo bench -p troupe-serve --bench serve_perf   # short runs
//! ```
//!
//! - `noop_requests_per_s`: one deployment of 2 replicas whose handler
//!   returns its input, behind the HTTP proxy, 64 keep-alive connections
//!   sending `GET /` (an empty body, JSON `null`), as Ray Serve's bench
//!   with wrk.
//! - `p50_latency_ms`, `p99_latency_ms`: the same at 8 connections.
//! - `batched_requests_per_s`: the same deployment with batching (at most
//!   32 per batch, at most 2 ms of wait), 64 connections.
//! - `bare_axum_requests_per_s`: a plain axum server returning its input,
//!   no actors, 64 connections: the ceiling of this machine and load
//!   generator.
//! - `remote_noop_requests_per_s` (with the `cluster` feature): the noop
//!   deployment's 2 replicas on another node (a worker process of a
//!   local cluster, this bench re-launched; the bench is the driver and
//!   holds the proxy), requests and responses crossing as JSON over
//!   loopback, 64 connections; `remote_p50_latency_ms` at 8.
//!
//! Every figure comes from the same load generator in the same run, so the
//! ratios are comparable: this file's (on the tests' HTTP/1.1 client, in
//! the bench's process), or with `TROUPE_SERVE_LOADGEN=wrk` Debian's `wrk`
//! (`scripts/setup-wrk.sh`; 2 threads), the generator Ray Serve's side
//! uses (`benches/ray/serve_compare.sh`). Either shares the machine's cores
//! with the server. Each measurement warms up for 1 s and then runs 5 s,
//! in 3 rounds that take the servers in turn; the median of the rounds is
//! printed and each round goes to stderr (one round of 0.2 s and 1 s with
//! `TROUPE_PERF_QUICK=1`; `SERVE_PERF_SECONDS` and `SERVE_PERF_ROUNDS` set
//! them).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use troupe::prelude::*;
use troupe_serve::{BatchConfig, Deployment, DeploymentOptions, HandlerError, Serve, ServeOptions};

#[path = "../tests/support/client.rs"]
#[allow(dead_code)] // shared with the tests, which use all of it
mod client;

struct Echo;

// By kind, so that a node of the local cluster builds its replicas.
troupe_serve::register_deployment!("serve-perf-echo", Echo, || Echo);

impl Deployment for Echo {
    type Request = serde_json::Value;
    type Response = serde_json::Value;
    async fn call(&mut self, request: Self::Request) -> Result<Self::Response, HandlerError> {
        Ok(request)
    }
}

fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn quick() -> bool {
    std::env::var_os("TROUPE_PERF_QUICK").is_some_and(|v| v != "0")
}

/// What one load run measured.
struct Load {
    requests: u64,
    errors: u64,
    seconds: f64,
    /// Each request's latency, in microseconds, sorted.
    latencies_us: Vec<u32>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// `connections` keep-alive connections, each sending `GET /` one after
/// another: a warm-up, then the measured run.
async fn load(addr: SocketAddr, connections: usize) -> Load {
    let (warm, mut run) = if quick() {
        (Duration::from_millis(200), Duration::from_secs(1))
    } else {
        (Duration::from_secs(1), Duration::from_secs(5))
    };
    if let Some(secs) = std::env::var("SERVE_PERF_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        run = Duration::from_secs(secs);
    }
    if std::env::var("TROUPE_SERVE_LOADGEN").is_ok_and(|v| v == "wrk") {
        return wrk(addr, connections, warm, run).await;
    }
    let began = Instant::now();
    let measure_from = began + warm;
    let until = measure_from + run;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut conn = match client::Conn::connect(addr).await {
                    Ok(c) => c,
                    Err(_) => return (latencies, 1),
                };
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let ok = matches!(conn.get("/").await, Ok(r) if r.status == 200);
                    let done = Instant::now();
                    if sent >= measure_from {
                        if ok {
                            let us = done.duration_since(sent).as_micros();
                            latencies.push(us.min(u128::from(u32::MAX)) as u32);
                        } else {
                            errors += 1;
                        }
                    }
                    if !ok {
                        match client::Conn::connect(addr).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies_us.extend(l);
            errors += e;
        }
    }
    latencies_us.sort_unstable();
    Load {
        requests: latencies_us.len() as u64,
        errors,
        seconds: run.as_secs_f64(),
        latencies_us,
    }
}

/// The same load from `wrk` (a warm-up run, then the measured one).
async fn wrk(addr: SocketAddr, connections: usize, warm: Duration, run: Duration) -> Load {
    let url = format!("http://{addr}/");
    let go = move |secs: u64, url: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("wrk")
                .args([
                    "-t2",
                    &format!("-c{connections}"),
                    &format!("-d{secs}s"),
                    "--latency",
                    &url,
                ])
                .output()
        })
    };
    let _ = go(warm.as_secs().max(1), url.clone()).await;
    let output = match go(run.as_secs().max(1), url).await {
        Ok(Ok(o)) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => panic!("wrk failed (run scripts/setup-wrk.sh): {other:?}"),
    };
    // wrk reports a rate and percentiles, not each latency: keep the rate
    // and put the two percentiles where percentile_ms finds them.
    let field = |prefix: &str| {
        output
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    let rate: f64 = field("Requests/sec:")
        .and_then(|r| r.parse().ok())
        .unwrap_or(f64::NAN);
    let ms = |v: Option<String>| -> u32 {
        let v = v.unwrap_or_default();
        let (number, scale) = if let Some(n) = v.strip_suffix("us") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1e3)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1e6)
        } else {
            (v.as_str(), f64::NAN)
        };
        (number.parse::<f64>().unwrap_or(f64::NAN) * scale) as u32
    };
    let (p50, p99) = (ms(field("50%")), ms(field("99%")));
    // "Non-2xx or 3xx responses: N"
    let errors = output
        .lines()
        .find(|l| l.trim().starts_with("Non-2xx"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // 101 points: index 50 is p50 and index 99 is p99.
    let mut latencies_us = vec![p50; 51];
    latencies_us.extend(vec![p99; 50]);
    Load {
        requests: (rate * run.as_secs_f64()) as u64,
        errors,
        seconds: run.as_secs_f64(),
        latencies_us,
    }
}

fn report(metric: &str, value: f64, unit: &str) {
    println!("{metric} {value:.3} {unit}");
}

fn detail(what: &str, load: &Load) {
    eprintln!(
        "  {what}: {:.0} requests/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
        load.rate(),
        load.percentile_ms(0.5),
        load.percentile_ms(0.99),
        load.errors
    );
}

/// A `Serve` named `app` (two run side by side on one runtime).
async fn serve_echo(
    rt: &Runtime,
    app: &str,
    batching: Option<BatchConfig>,
) -> Result<Serve, Box<dyn std::error::Error>> {
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let serve = Serve::start(rt, ServeOptions::new().http(addr).app(app)).await?;
    let mut options = DeploymentOptions::new().replicas(2).route_prefix("/");
    if let Some(b) = batching {
        // Room on each replica for a whole batch and the next one.
        options = options.batching(b).max_ongoing_requests(64);
    }
    serve.deploy("echo", options, || Echo).await?;
    Ok(serve)
}

async fn bare_axum() -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Box<dyn std::error::Error>>
{
    use axum::body::Bytes;
    let app = axum::Router::new().fallback(|body: Bytes| async move {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A local cluster of this bench's processes: a head and a worker node of
/// 2 CPUs; the bench joins as a driver with no CPUs of its own, so that the
/// remote deployment's replicas (1 CPU each) go to the worker.
#[cfg(feature = "cluster")]
fn cluster() -> Result<(troupe::cluster::local::LocalCluster, Config), Box<dyn std::error::Error>> {
    use troupe::cluster::local::{test_binary, LocalCluster};
    let mut cluster = LocalCluster::new("serve-perf", test_binary("serve-perf-node", &[]))?;
    let head = cluster.head(&["--num-cpus", "0"])?;
    cluster.worker(&head, &["--num-cpus", "2"])?;
    let config = Config::default()
        .resources(Resources::default())
        .cluster_node(cluster.driver_options(&head));
    Ok((cluster, config))
}

/// The noop deployment with its replicas on the cluster's worker.
#[cfg(feature = "cluster")]
async fn serve_echo_remote(rt: &Runtime) -> Result<Serve, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while troupe::cluster::ClusterNode::current().is_none_or(|c| c.alive_nodes() != 2) {
        if Instant::now() > deadline {
            return Err("the local cluster's nodes did not come up within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let serve = Serve::start(rt, ServeOptions::new().http(addr)).await?;
    let options = DeploymentOptions::new()
        .replicas(2)
        .num_cpus(1.0)
        .replicas_on_cluster(true)
        .route_prefix("/");
    serve
        .deploy_registered::<Echo>("echo", options, "serve-perf-echo")
        .await?;
    Ok(serve)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Re-launched as a node of the local cluster: be that node.
    #[cfg(feature = "cluster")]
    troupe::cluster::local::run_node_if_asked();
    #[cfg(feature = "cluster")]
    let (_cluster, config) = if wanted("remote") {
        let (cluster, config) = cluster()?;
        (Some(cluster), config)
    } else {
        (None, Config::default())
    };
    #[cfg(not(feature = "cluster"))]
    let config = Config::default();
    let rounds: usize = if quick() {
        1
    } else {
        std::env::var("SERVE_PERF_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3)
    };
    let rt = Runtime::start(config)?;
    let medians = rt.block_on(async {
        // Every server runs for the whole bench and the rounds take them in
        // turn, so that a change in the machine's load (it may be shared)
        // falls on all of them alike.
        let plain = serve_echo(&rt, "plain", None).await?;
        let batched = serve_echo(
            &rt,
            "batched",
            Some(BatchConfig::new(32, Duration::from_millis(2))),
        )
        .await?;
        let (bare_addr, bare) = bare_axum().await?;
        let plain_addr = plain.http_addr().ok_or("no proxy")?;
        let batched_addr = batched.http_addr().ok_or("no proxy")?;
        let mut samples: Vec<(&'static str, &'static str, Vec<f64>)> = vec![
            ("noop_requests_per_s", "requests/s", vec![]),
            ("p50_latency_ms", "ms", vec![]),
            ("p99_latency_ms", "ms", vec![]),
            ("batched_requests_per_s", "requests/s", vec![]),
            ("bare_axum_requests_per_s", "requests/s", vec![]),
            ("remote_noop_requests_per_s", "requests/s", vec![]),
            ("remote_p50_latency_ms", "ms", vec![]),
        ];
        #[cfg(feature = "cluster")]
        let remote = match wanted("remote") {
            true => Some(serve_echo_remote(&rt).await?),
            false => None,
        };
        #[cfg(feature = "cluster")]
        let remote_addr = remote.as_ref().and_then(|r| r.http_addr());
        #[cfg(not(feature = "cluster"))]
        let remote_addr: Option<SocketAddr> = None;
        for round in 1..=rounds {
            if wanted("noop") {
                let l = load(plain_addr, 64).await;
                detail(&format!("round {round}: noop, 64 connections"), &l);
                samples[0].2.push(l.rate());
            }
            if wanted("latency") {
                let l = load(plain_addr, 8).await;
                detail(&format!("round {round}: noop, 8 connections"), &l);
                samples[1].2.push(l.percentile_ms(0.5));
                samples[2].2.push(l.percentile_ms(0.99));
            }
            if wanted("batched") {
                let l = load(batched_addr, 64).await;
                detail(&format!("round {round}: batched noop, 64 connections"), &l);
                samples[3].2.push(l.rate());
            }
            if wanted("bare_axum") {
                let l = load(bare_addr, 64).await;
                detail(&format!("round {round}: bare axum, 64 connections"), &l);
                samples[4].2.push(l.rate());
            }
            if let Some(addr) = remote_addr {
                let l = load(addr, 64).await;
                detail(&format!("round {round}: remote noop, 64 connections"), &l);
                samples[5].2.push(l.rate());
                let l = load(addr, 8).await;
                detail(&format!("round {round}: remote noop, 8 connections"), &l);
                samples[6].2.push(l.percentile_ms(0.5));
            }
        }
        #[cfg(feature = "cluster")]
        if let Some(remote) = remote {
            remote.shutdown().await?;
        }
        plain.shutdown().await?;
        batched.shutdown().await?;
        bare.abort();
        let medians: Vec<(&str, &str, f64)> = samples
            .into_iter()
            .filter(|(_, _, v)| !v.is_empty())
            .map(|(metric, unit, v)| (metric, unit, median(&v)))
            .collect();
        Ok::<_, Box<dyn std::error::Error>>(medians)
    })?;
    rt.block_on(rt.shutdown())?;
    eprintln!("medians of {rounds} round(s):");
    for (metric, unit, value) in &medians {
        report(metric, *value, unit);
    }
    let of = |name: &str| medians.iter().find(|(m, _, _)| *m == name).map(|m| m.2);
    if let (Some(noop), Some(bare)) = (of("noop_requests_per_s"), of("bare_axum_requests_per_s")) {
        eprintln!("  noop / bare axum: {:.2}", noop / bare);
    }
    if let (Some(remote), Some(noop)) =
        (of("remote_noop_requests_per_s"), of("noop_requests_per_s"))
    {
        eprintln!("  remote noop / noop: {:.2}", remote / noop);
    }
    Ok(())
}
