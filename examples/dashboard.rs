//! A small job with the dashboard on: a supervision tree of workers, an
//! actor that crashes now and then (watch its restart count climb), and a
//! stream of tasks, some of which fail.
//!
//! ```text
//! cargo run --release --features dashboard --example dashboard
//! cargo run --release --features dashboard --example dashboard -- --seconds 10 --addr 127.0.0.1:0
//! ```
//!
//! Open the printed URL. Prometheus metrics are on the second URL, and
//! the timeline (a Chrome trace for Perfetto) downloads from the page.

use std::time::Duration;

use troupe::dashboard::{self, ConfigExt};
use troupe::prelude::*;

/// Parses a line: a task.
#[troupe::remote]
fn parse(line: u64) -> Result<u64, String> {
    if line % 17 == 0 {
        return Err(format!("line {line} is malformed"));
    }
    std::thread::sleep(Duration::from_millis(2));
    Ok(line * 2)
}

/// An actor that keeps a count and crashes when asked to.
struct Worker {
    seen: u64,
}

#[troupe::actor]
impl Worker {
    pub fn work(&mut self, item: u64) -> u64 {
        self.seen += 1;
        item + self.seen
    }
    pub fn crash(&mut self) {
        panic!("worker crashed after {} items", self.seen)
    }
}

struct Options {
    addr: String,
    metrics: String,
    seconds: Option<u64>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        addr: dashboard::DEFAULT_ADDR.to_owned(),
        metrics: "127.0.0.1:0".to_owned(),
        seconds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => options.addr = value()?,
            "--metrics-addr" => options.metrics = value()?,
            "--seconds" => {
                let v = value()?;
                options.seconds = Some(v.parse().map_err(|_| format!("--seconds {v:?}: not a number"))?);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --addr IP:PORT, --metrics-addr IP:PORT, --seconds N"
                ))
            }
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let rt = troupe::init(
        Config::default()
            .name("dashboard-example")
            .record_timeline(true)
            .timeline_events(100_000)
            .dashboard(options.addr.clone())
            .metrics_addr(options.metrics.clone()),
    )
    .await?;

    // A tree: two workers and a nested storage supervisor with a third.
    let (parser_spec, parser) =
        rt.actor_child(ActorOptions::new().name("parser"), || Worker { seen: 0 })?;
    let (indexer_spec, _indexer) =
        rt.actor_child(ActorOptions::new().name("indexer"), || Worker { seen: 0 })?;
    let (writer_spec, writer) =
        rt.actor_child(ActorOptions::new().name("writer"), || Worker { seen: 0 })?;
    rt.spawn_supervisor(
        SupervisorSpec::new("pipeline", Strategy::OneForOne)
            .child(parser_spec.restart(Restart::Permanent))
            .child(indexer_spec.restart(Restart::Permanent))
            .child(ChildSpec::supervisor(
                SupervisorSpec::new("storage", Strategy::OneForAll)
                    .child(writer_spec.restart(Restart::Permanent)),
            )),
    )
    .await?;
    // An actor supervised in place that crashes every few seconds.
    let flaky = rt
        .spawn_actor(ActorOptions::new().name("flaky").max_restarts(None), || {
            Worker { seen: 0 }
        })
        .await?;

    println!("dashboard:  {}", dashboard::url(&rt).unwrap_or_default());
    println!(
        "prometheus: {}",
        dashboard::metrics_url(&rt).unwrap_or_default()
    );
    match options.seconds {
        Some(s) => println!("running for {s} s"),
        None => println!("running until Ctrl-C"),
    }

    let job = {
        let rt = rt.clone();
        tokio::spawn(async move {
            let mut line = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let batch: Vec<_> = (0..20).map(|i| parse::remote(&rt, line + i)).collect();
                line += 20;
                for r in &batch {
                    let _ = rt.get(r).await; // failures show on the page
                }
                let _ = parser.work(line).await;
                let _ = writer.work(line).await;
                if line % 1000 == 0 {
                    let _ = flaky.crash().await; // restarted by its driver
                }
                let _ = flaky.work(line).await;
                if line % 5000 == 0 {
                    let _ = writer.crash().await; // restarted with its tree (one-for-all)
                }
            }
        })
    };

    match options.seconds {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    job.abort();
    let state = rt.state().await;
    println!(
        "{} tasks by function, {} actors alive, {} restarts",
        state.summary.functions.len(),
        state.summary.actors.alive,
        state.summary.actors.restarts
    );
    rt.shutdown().await?;
    Ok(())
}
