//! troupe-train's speed, one `metric value unit` line each on stdout
//! (rounds on stderr):
//!
//! ```text
//! cargo bench -p troupe-train --bench train_perf
//! TROUPE_PERF_QUICK=1 cargo bench -p troupe-train --bench train_perf   # short runs
//! ```
//!
//! - `tcp_loopback_gigabytes_per_s`: 100 MB (10^8 bytes) through one TCP
//!   connection on 127.0.0.1 (a writer and a reader thread, 1 MiB
//!   writes): the yardstick of what a byte move costs on this machine.
//! - `allreduce_100mb_gigabytes_per_s`: 2 workers all-reduce (sum) a
//!   100 MB f32 tensor each (25,000,000 elements); 10^8 bytes over the
//!   median call's time (the tensor's size per second: what NCCL's
//!   benchmarks call algorithm bandwidth).
//! - `mlp_samples_per_s_1_worker`, `mlp_samples_per_s_2_workers`: an MLP
//!   (32-256-256-10) with SGD on the synthetic set, a global batch of 256
//!   (2 workers: 128 each, gradients averaged), timed on rank 0 from the
//!   first step's end to the last's (startup excluded).
//! - `step_overhead_ms`: the library's cost per step: 2 workers whose
//!   steps do nothing but `all_reduce_gradients` (a 10-parameter model)
//!   and `report` (metrics, no checkpoint).
//!
//! With `TROUPE_TRAIN_BENCH_NODES=1` and `--features cluster`, the same
//! with each of 2 workers in a node process of its own (a head and two
//! nodes of one CPU on loopback): `allreduce_100mb_gigabytes_per_s_two_nodes`
//! (over Troupe's transport), `mlp_samples_per_s_2_workers_two_nodes`,
//! `step_overhead_ms_two_nodes`, beside `tcp_loopback_gigabytes_per_s`.
//!
//! libtorch's intra-op thread pool is shared by the workers of a process;
//! the figures are for its default size (the machine's cores).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use troupe::prelude::*;
use troupe_train::data::SyntheticClassification;
use troupe_train::{LoopError, Metrics, ReduceOp, Trainer, TrainerConfig, WorkerContext};

type Error = Box<dyn std::error::Error>;

fn quick() -> bool {
    std::env::var_os("TROUPE_PERF_QUICK").is_some_and(|v| v != "0")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const BYTES: usize = 100_000_000;

fn tcp_loopback_seconds() -> Result<f64, Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        let chunk = vec![7u8; 1 << 20];
        let mut left = BYTES;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    });
    let (mut s, _) = listener.accept()?;
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < BYTES {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err("the writer closed early".into());
        }
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    writer.join().map_err(|_| "the writer panicked")??;
    Ok(secs)
}

/// Seconds of each timed all-reduce (sum of a 100 MB f32 tensor).
fn allreduce_rounds(ctx: &mut WorkerContext, rounds: usize) -> Result<Vec<f64>, LoopError> {
    let mut t = Tensor::ones([(BYTES / 4) as i64], (Kind::Float, Device::Cpu));
    ctx.all_reduce(&mut t, ReduceOp::Sum)?; // warm-up
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        ctx.barrier()?;
        let started = Instant::now();
        ctx.all_reduce(&mut t, ReduceOp::Sum)?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(times)
}

const GLOBAL_BATCH: usize = 256;

/// Seconds from the end of the MLP's first step to the end of its last.
fn mlp_seconds(ctx: &mut WorkerContext, steps: u64) -> Result<f64, LoopError> {
    let data = SyntheticClassification::new(16_384, 32, 10, 3);
    let batch = GLOBAL_BATCH / ctx.world_size();
    let vs = nn::VarStore::new(ctx.device());
    let root = vs.root();
    let model = nn::seq()
        .add(nn::linear(&root / "l1", 32, 256, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "l2", 256, 256, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "l3", 256, 10, Default::default()));
    ctx.broadcast_var_store(&vs, 0)?;
    let mut opt = nn::Sgd::default().build(&vs, 0.05)?;
    let per_epoch = data.len() / GLOBAL_BATCH;
    let mut started = Instant::now();
    for step in 0..steps {
        let shard = ctx.shard_indices(data.len(), step / per_epoch as u64);
        let b = step as usize % per_epoch;
        let (x, y) = data.batch(&shard[b * batch..(b + 1) * batch], ctx.device())?;
        let loss = model.forward(&x).cross_entropy_for_logits(&y);
        opt.zero_grad();
        loss.backward();
        ctx.all_reduce_gradients(&vs)?;
        opt.step();
        ctx.report(Metrics::new().with("loss", loss.double_value(&[])), None)?;
        if step == 0 {
            started = Instant::now();
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds of `steps` steps that only make the library's calls.
fn overhead_seconds(ctx: &mut WorkerContext, steps: u64) -> Result<f64, LoopError> {
    let vs = nn::VarStore::new(ctx.device());
    let model = nn::linear(vs.root() / "l", 4, 2, Default::default());
    let loss = model
        .forward(&Tensor::ones([1, 4], (Kind::Float, ctx.device())))
        .sum(None);
    loss.backward();
    ctx.barrier()?;
    let started = Instant::now();
    for _ in 0..steps {
        ctx.all_reduce_gradients(&vs)?;
        ctx.report(Metrics::new().with("loss", 0.0), None)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs `f` as the loop of `workers` workers in this process; rank 0's
/// result.
fn local<T: Send + 'static>(
    rt: &Runtime,
    workers: usize,
    f: impl Fn(&mut WorkerContext) -> Result<T, LoopError> + Send + Sync + 'static,
) -> Result<T, Error> {
    let out: Arc<Mutex<Option<T>>> = Arc::default();
    let put = out.clone();
    rt.block_on(
        Trainer::new(rt, TrainerConfig::new(workers)).fit(move |ctx| {
            let value = f(ctx)?;
            if ctx.rank() == 0 {
                *put.lock().map_err(|_| "poisoned")? = Some(value);
            }
            Ok(())
        }),
    )?;
    let value = out.lock().map_err(|_| "poisoned")?.take();
    value.ok_or_else(|| "rank 0 gave no result".into())
}

fn samples_per_s(steps: u64, seconds: f64) -> f64 {
    (steps - 1) as f64 * GLOBAL_BATCH as f64 / seconds
}

/// The same measurements with each worker in a node process of its own
/// (`TROUPE_TRAIN_BENCH_NODES=1`, with the `cluster` feature): a head and
/// two nodes of one CPU each on loopback, this process the driver.
#[cfg(feature = "cluster")]
mod two_nodes {
    use super::*;
    use serde::{Deserialize, Serialize};
    use troupe::cluster::local::{test_binary, LocalCluster};
    use troupe::cluster::ClusterNode;

    #[derive(Serialize, Deserialize)]
    enum Job {
        AllReduce { rounds: usize },
        Mlp { steps: u64 },
        Overhead { steps: u64 },
    }

    troupe_train::register_train_loop!("TrainPerf-Job", |ctx| {
        let value = match ctx.loop_config::<Job>()? {
            Job::AllReduce { rounds } => median(allreduce_rounds(ctx, rounds)?),
            Job::Mlp { steps } => mlp_seconds(ctx, steps)?,
            Job::Overhead { steps } => overhead_seconds(ctx, steps)?,
        };
        ctx.report(Metrics::new().with("value", value), None)?;
        Ok::<_, LoopError>(())
    });

    fn remote(rt: &Runtime, workers: usize, job: Job) -> Result<f64, Error> {
        let trainer = Trainer::new(rt, TrainerConfig::new(workers));
        let result = rt.block_on(trainer.fit_registered_with("TrainPerf-Job", &job))?;
        let value = result.last_metrics().and_then(|m| m.get("value"));
        value.ok_or_else(|| "rank 0 reported no value".into())
    }

    pub(super) fn run(
        rounds: usize,
        ar_rounds: usize,
        mlp: u64,
        overhead: u64,
    ) -> Result<(), Error> {
        let mut p = LocalCluster::new("train-perf", test_binary("train-perf-node", &[]))?;
        let head = p.head(&["--num-cpus", "0"])?;
        for _ in 0..2 {
            p.worker(&head, &["--num-cpus", "1"])?;
        }
        let rt = Runtime::start(
            Config::default()
                .resources(Resources::default())
                .cluster_node(p.driver_options(&head)),
        )?;
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while ClusterNode::current().is_none_or(|c| c.alive_nodes() != 3) {
            if Instant::now() > deadline {
                return Err("the two nodes did not join within 60 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (mut tcp, mut ar, mut m2, mut over) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let t = BYTES as f64 / tcp_loopback_seconds()? / 1e9;
            let a = BYTES as f64 / remote(&rt, 2, Job::AllReduce { rounds: ar_rounds })? / 1e9;
            let m = samples_per_s(mlp, remote(&rt, 2, Job::Mlp { steps: mlp })?);
            let o = remote(&rt, 2, Job::Overhead { steps: overhead })? * 1e3 / overhead as f64;
            eprintln!("round {round} (two nodes): tcp {t:.3} GB/s, allreduce {a:.3} GB/s, mlp {m:.0} samples/s, overhead {o:.4} ms");
            tcp.push(t);
            ar.push(a);
            m2.push(m);
            over.push(o);
        }
        println!("tcp_loopback_gigabytes_per_s {:.3} GB/s", median(tcp));
        println!(
            "allreduce_100mb_gigabytes_per_s_two_nodes {:.3} GB/s",
            median(ar)
        );
        println!(
            "mlp_samples_per_s_2_workers_two_nodes {:.0} samples/s",
            median(m2)
        );
        println!("step_overhead_ms_two_nodes {:.4} ms", median(over));
        rt.block_on(rt.shutdown())?;
        Ok(())
    }
}

fn main() -> Result<(), Error> {
    #[cfg(feature = "cluster")]
    troupe::cluster::local::run_node_if_asked();
    let (rounds, ar_rounds, mlp_steps, overhead_steps) = if quick() {
        (1, 3, 50, 500)
    } else {
        (3, 10, 300, 5_000)
    };
    if std::env::var_os("TROUPE_TRAIN_BENCH_NODES").is_some_and(|v| v != "0") {
        #[cfg(feature = "cluster")]
        return two_nodes::run(rounds, ar_rounds, mlp_steps, overhead_steps);
        #[cfg(not(feature = "cluster"))]
        return Err("TROUPE_TRAIN_BENCH_NODES needs --features cluster".into());
    }
    let rt = Runtime::start(Config::default().resources(Resources::cpus(2.0)))?;
    let mut tcp = Vec::new();
    let mut ar = Vec::new();
    let (mut mlp1, mut mlp2, mut over) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let t = BYTES as f64 / tcp_loopback_seconds()? / 1e9;
        let a =
            BYTES as f64 / median(local(&rt, 2, move |c| allreduce_rounds(c, ar_rounds))?) / 1e9;
        let m1 = samples_per_s(
            mlp_steps,
            local(&rt, 1, move |c| mlp_seconds(c, mlp_steps))?,
        );
        let m2 = samples_per_s(
            mlp_steps,
            local(&rt, 2, move |c| mlp_seconds(c, mlp_steps))?,
        );
        let o = local(&rt, 2, move |c| overhead_seconds(c, overhead_steps))? * 1e3
            / overhead_steps as f64;
        eprintln!("round {round}: tcp {t:.3} GB/s, allreduce {a:.3} GB/s, mlp {m1:.0} / {m2:.0} samples/s, overhead {o:.4} ms");
        tcp.push(t);
        ar.push(a);
        mlp1.push(m1);
        mlp2.push(m2);
        over.push(o);
    }
    println!("tcp_loopback_gigabytes_per_s {:.3} GB/s", median(tcp));
    println!("allreduce_100mb_gigabytes_per_s {:.3} GB/s", median(ar));
    println!("mlp_samples_per_s_1_worker {:.0} samples/s", median(mlp1));
    println!("mlp_samples_per_s_2_workers {:.0} samples/s", median(mlp2));
    println!("step_overhead_ms {:.4} ms", median(over));
    rt.block_on(rt.shutdown())?;
    Ok(())
}
