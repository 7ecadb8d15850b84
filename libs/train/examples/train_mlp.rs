//! An MLP on a synthetic classification set, trained with 1 worker (batch
//! 64) and with 2 workers (batch 32 each, gradients averaged): the same
//! optimisation, so the same accuracy.
//!
//! ```text
//! cargo run --release -p troupe-train --example train_mlp
//! ```
//!
//! Exits with an error if the two accuracies differ by more than 2 points
//! or either is below 70%.

use std::sync::Arc;

use tch::nn::{self, Module, OptimizerConfig};
use tch::Kind;
use troupe::prelude::*;
use troupe_train::data::SyntheticClassification;
use troupe_train::{Checkpoint, Metrics, Mode, ReduceOp, Trainer, TrainerConfig};

const GLOBAL_BATCH: usize = 64;
const EPOCHS: u64 = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::start(Config::default().resources(Resources::cpus(2.0)))?;
    let data = Arc::new(SyntheticClassification::new(8192, 4, 6, 1));
    let storage = std::env::temp_dir().join(format!("troupe-train-mlp-{}", std::process::id()));
    let mut accuracies = Vec::new();
    for workers in [1usize, 2] {
        tch::manual_seed(0);
        let config = TrainerConfig::new(workers)
            .seed(7)
            .storage_path(storage.join(format!("{workers}-workers")))
            .keep_best(2, "loss", Mode::Min)
            .max_failures(1);
        let data = data.clone();
        let started = std::time::Instant::now();
        let result = rt.block_on(Trainer::new(&rt, config).fit(move |ctx| {
            let batch = GLOBAL_BATCH / ctx.world_size();
            let device = ctx.device();
            let mut vs = nn::VarStore::new(device);
            let root = vs.root();
            let model = nn::seq()
                .add(nn::linear(
                    &root / "l1",
                    data.dim() as i64,
                    64,
                    Default::default(),
                ))
                .add_fn(|x| x.relu())
                .add(nn::linear(
                    &root / "l2",
                    64,
                    data.classes() as i64,
                    Default::default(),
                ));
            match ctx.checkpoint()? {
                Some(c) => c.load_var_store(&mut vs)?,
                // Every replica starts from rank 0's weights.
                None => ctx.broadcast_var_store(&vs, 0)?,
            }
            let mut opt = nn::Sgd::default().build(&vs, 0.05)?;
            let per_epoch = (data.len() / ctx.world_size() / batch) as u64;
            for epoch in ctx.iteration()..EPOCHS {
                let shard = ctx.shard_indices(data.len(), epoch);
                let mut sum = tch::Tensor::zeros([1], (Kind::Float, device));
                for b in 0..per_epoch as usize {
                    let (x, y) = data.batch(&shard[b * batch..(b + 1) * batch], device)?;
                    let loss = model.forward(&x).cross_entropy_for_logits(&y);
                    opt.zero_grad();
                    loss.backward();
                    ctx.all_reduce_gradients(&vs)?;
                    opt.step();
                    sum += loss.detach();
                }
                ctx.all_reduce(&mut sum, ReduceOp::Mean)?;
                let loss = sum.double_value(&[0]) / per_epoch as f64;
                let all: Vec<usize> = (0..data.len()).collect();
                let (x, y) = data.batch(&all, device)?;
                let acc = tch::no_grad(|| model.forward(&x).accuracy_for_logits(&y));
                let metrics = Metrics::new()
                    .with("loss", loss)
                    .with("accuracy", acc.to_kind(Kind::Double).double_value(&[]));
                let checkpoint = (ctx.rank() == 0).then(|| Checkpoint::new().with_var_store(&vs));
                ctx.report(metrics, checkpoint)?;
            }
            Ok(())
        }))?;
        let last = result.last_metrics().cloned().unwrap_or_default();
        let accuracy = last.get("accuracy").unwrap_or(0.0);
        println!(
            "{workers} worker(s), batch {} each: loss {:.4}, accuracy {:.2}% after {EPOCHS} epochs ({:.2} s); best checkpoint {}",
            GLOBAL_BATCH / workers,
            last.get("loss").unwrap_or(f64::NAN),
            100.0 * accuracy,
            started.elapsed().as_secs_f64(),
            result
                .best_checkpoint
                .map(|c| c.path.display().to_string())
                .unwrap_or_default()
        );
        accuracies.push(accuracy);
    }
    std::fs::remove_dir_all(&storage).ok();
    rt.block_on(rt.shutdown())?;
    let (one, two) = (accuracies[0], accuracies[1]);
    if (one - two).abs() > 0.02 || one.min(two) < 0.70 {
        return Err(format!(
            "accuracies differ or are low: {one:.4} (1 worker) vs {two:.4} (2 workers)"
        )
        .into());
    }
    println!(
        "same accuracy within 2 points: {:.2}% vs {:.2}%",
        100.0 * one,
        100.0 * two
    );
    Ok(())
}
