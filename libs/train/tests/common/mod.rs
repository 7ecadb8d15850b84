//! A small MLP training loop on the synthetic set, shared by the tests.

#![allow(dead_code)]

use std::sync::Arc;

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Tensor};
use troupe::prelude::*;
use troupe_train::data::SyntheticClassification;
use troupe_train::{Checkpoint, LoopError, Metrics, ReduceOp, WorkerContext};

pub async fn runtime(cpus: f64) -> Runtime {
    troupe::init(Config::default().resources(Resources::cpus(cpus)))
        .await
        .expect("runtime starts")
}

/// How a test breaks a worker.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub enum Break {
    /// `rank` panics before step `step` of the first attempt.
    Panic { rank: usize, step: u64 },
    /// `rank` returns an error before step `step` of the first attempt.
    Error { rank: usize, step: u64 },
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Mlp {
    pub steps: u64,
    /// Per worker.
    pub batch: usize,
    /// 0: never.
    pub checkpoint_every: u64,
    pub fault: Option<Break>,
    /// Each step lasts at least this long (so that a test can act in the
    /// middle of a run).
    pub pace_ms: u64,
}

/// Every variable of `vs`, in name order, from a seeded generator: the
/// same initial model in every run, whatever the world size (tch's global
/// generator is shared by the worker threads).
fn init(vs: &nn::VarStore, seed: u64) {
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    tch::no_grad(|| {
        for (_, mut v) in vars {
            let n = v.numel();
            let fan_in = v.size().last().copied().unwrap_or(1).max(1) as f32;
            let bound = 1.0 / fan_in.sqrt();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                    (2.0 * u - 1.0) * bound
                })
                .collect();
            v.copy_(&Tensor::from_slice(&values).view_as(&v));
        }
    });
}

/// The training loop: an MLP (dim-32-classes) trained with SGD on its shard.
pub fn mlp_loop(
    data: Arc<SyntheticClassification>,
    p: Mlp,
) -> impl Fn(&mut WorkerContext) -> Result<(), LoopError> + Send + Sync + 'static {
    move |ctx| {
        let device = ctx.device();
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let model = nn::seq()
            .add(nn::linear(
                &root / "l1",
                data.dim() as i64,
                32,
                Default::default(),
            ))
            .add_fn(|x| x.relu())
            .add(nn::linear(
                &root / "l2",
                32,
                data.classes() as i64,
                Default::default(),
            ));
        init(&vs, 42);
        if let Some(c) = ctx.checkpoint()? {
            c.load_var_store(&mut vs)?;
        }
        let mut opt = nn::Sgd::default().build(&vs, 0.1)?;
        let per_epoch = (data.len() / ctx.world_size() / p.batch) as u64;
        let mut shard: Option<(u64, Vec<usize>)> = None;
        for step in ctx.iteration()..p.steps {
            let began = std::time::Instant::now();
            match p.fault {
                Some(Break::Panic { rank, step: s })
                    if ctx.attempt() == 0 && ctx.rank() == rank && step == s =>
                {
                    panic!("injected failure at step {step}");
                }
                Some(Break::Error { rank, step: s })
                    if ctx.attempt() == 0 && ctx.rank() == rank && step == s =>
                {
                    return Err(format!("injected error at step {step}").into());
                }
                _ => {}
            }
            let epoch = step / per_epoch;
            if shard.as_ref().is_none_or(|(e, _)| *e != epoch) {
                shard = Some((epoch, ctx.shard_indices(data.len(), epoch)));
            }
            let Some((_, indices)) = shard.as_ref() else {
                unreachable!()
            };
            let b = (step % per_epoch) as usize;
            let (x, y) = data.batch(&indices[b * p.batch..(b + 1) * p.batch], device)?;
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            opt.zero_grad();
            loss.backward();
            ctx.all_reduce_gradients(&vs)?;
            opt.step();
            let mut global = loss.detach();
            ctx.all_reduce(&mut global, ReduceOp::Mean)?;
            let mut metrics = Metrics::new().with("loss", global.double_value(&[]));
            let last = step + 1 == p.steps;
            if last {
                let all: Vec<usize> = (0..data.len()).collect();
                let (x, y) = data.batch(&all, device)?;
                let acc = tch::no_grad(|| model.forward(&x).accuracy_for_logits(&y));
                metrics = metrics.with("accuracy", acc.to_kind(Kind::Double).double_value(&[]));
            }
            let due = p.checkpoint_every > 0 && (step + 1) % p.checkpoint_every == 0;
            let checkpoint =
                (due && ctx.rank() == 0).then(|| Checkpoint::new().with_var_store(&vs));
            let pace = std::time::Duration::from_millis(p.pace_ms);
            std::thread::sleep(pace.saturating_sub(began.elapsed()));
            ctx.report(metrics, checkpoint)?;
        }
        Ok(())
    }
}

pub fn losses(result: &troupe_train::TrainResult) -> Vec<f64> {
    result
        .history
        .iter()
        .map(|r| r.metrics.get("loss").expect("every report has a loss"))
        .collect()
}

/// Rank `rank`'s random input for a case: normal-ish floats (not integers:
/// the order of the sum matters), or integers of both signs.
pub fn input(rank: usize, size: usize, kind: Kind) -> Tensor {
    let mut s = (rank as u64 + 1) * 0x9E37_79B9 + size as u64 * 31 + kind as u64;
    let values: Vec<f64> = (0..size)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            match kind {
                Kind::Float | Kind::Double => (u - 0.5) * 1e3 / (1.0 + 7.0 * u),
                _ => ((u - 0.5) * 2e6).round(),
            }
        })
        .collect();
    Tensor::from_slice(&values).to_kind(kind)
}
