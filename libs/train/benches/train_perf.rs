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
use troupe_train::{Metrics, ReduceOp, Trainer, TrainerConfig};

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

/// Seconds of each timed all-reduce on rank 0.
fn allreduce_seconds(rt: &Runtime, rounds: usize) -> Result<Vec<f64>, Error> {
    let times: Arc<Mutex<Vec<f64>>> = Arc::default();
    let out = times.clone();
    rt.block_on(Trainer::new(rt, TrainerConfig::new(2)).fit(move |ctx| {
        let mut t = Tensor::ones([(BYTES / 4) as i64], (Kind::Float, Device::Cpu));
        ctx.all_reduce(&mut t, ReduceOp::Sum)?; // warm-up
        for _ in 0..rounds {
            ctx.barrier()?;
            let started = Instant::now();
            ctx.all_reduce(&mut t, ReduceOp::Sum)?;
            if ctx.rank() == 0 {
                out.lock()
                    .map_err(|_| "poisoned")?
                    .push(started.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }))?;
    let v = times.lock().map_err(|_| "poisoned")?.clone();
    Ok(v)
}

/// Samples per second of the MLP with `workers` workers.
fn mlp_samples_per_s(rt: &Runtime, workers: usize, steps: u64) -> Result<f64, Error> {
    const GLOBAL: usize = 256;
    let data = Arc::new(SyntheticClassification::new(16_384, 32, 10, 3));
    let span: Arc<Mutex<f64>> = Arc::default();
    let out = span.clone();
    rt.block_on(
        Trainer::new(rt, TrainerConfig::new(workers)).fit(move |ctx| {
            let batch = GLOBAL / ctx.world_size();
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
            let per_epoch = data.len() / GLOBAL;
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
            if ctx.rank() == 0 {
                *out.lock().map_err(|_| "poisoned")? = started.elapsed().as_secs_f64();
            }
            Ok(())
        }),
    )?;
    let secs = *span.lock().map_err(|_| "poisoned")?;
    Ok((steps - 1) as f64 * GLOBAL as f64 / secs)
}

/// Milliseconds per step of a loop that only makes the library's calls.
fn step_overhead_ms(rt: &Runtime, steps: u64) -> Result<f64, Error> {
    let span: Arc<Mutex<f64>> = Arc::default();
    let out = span.clone();
    rt.block_on(Trainer::new(rt, TrainerConfig::new(2)).fit(move |ctx| {
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
        if ctx.rank() == 0 {
            *out.lock().map_err(|_| "poisoned")? = started.elapsed().as_secs_f64();
        }
        Ok(())
    }))?;
    let secs = *span.lock().map_err(|_| "poisoned")?;
    Ok(secs * 1e3 / steps as f64)
}

fn main() -> Result<(), Error> {
    let (rounds, ar_rounds, mlp_steps, overhead_steps) = if quick() {
        (1, 3, 50, 500)
    } else {
        (3, 10, 300, 5_000)
    };
    let rt = Runtime::start(Config::default().resources(Resources::cpus(2.0)))?;
    let mut tcp = Vec::new();
    let mut ar = Vec::new();
    let (mut mlp1, mut mlp2, mut over) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let t = BYTES as f64 / tcp_loopback_seconds()? / 1e9;
        let a = BYTES as f64 / median(allreduce_seconds(&rt, ar_rounds)?) / 1e9;
        let m1 = mlp_samples_per_s(&rt, 1, mlp_steps)?;
        let m2 = mlp_samples_per_s(&rt, 2, mlp_steps)?;
        let o = step_overhead_ms(&rt, overhead_steps)?;
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
