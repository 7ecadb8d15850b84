//! Tunes a synthetic objective with ASHA: 32 configs of (x, y, lr), each
//! trial descending towards its own floor, `(x − 1)² + (y + 2)²`, at the
//! speed its `lr` sets. ASHA stops the trials that lag at each rung.
//!
//! ```text
//! cargo run --release -p troupe-tune --example tune_quadratic
//! ```

use troupe::prelude::*;
use troupe_tune::{
    Asha, Metrics, Mode, Params, Scheduler, SearchSpace, Trainable, TrainableError, TuneOptions,
    Tuner,
};

/// A trainable written against the trait: its state is the iteration and
/// the current loss, saved as 16 bytes.
struct Quadratic {
    floor: f64,
    lr: f64,
    iteration: u64,
    loss: f64,
}

impl Quadratic {
    fn new(p: &Params) -> Result<Self, TrainableError> {
        let (x, y) = (p.f64("x")?, p.f64("y")?);
        Ok(Quadratic {
            floor: (x - 1.0).powi(2) + (y + 2.0).powi(2),
            lr: p.f64("lr")?,
            iteration: 0,
            loss: 10.0,
        })
    }
}

impl Trainable for Quadratic {
    fn step(&mut self) -> Result<Metrics, TrainableError> {
        self.iteration += 1;
        // Gradient descent on (loss − floor): each step keeps (1 − lr) of the gap.
        self.loss = self.floor + (self.loss - self.floor) * (1.0 - self.lr);
        Ok(Metrics::new().with("loss", self.loss))
    }

    fn save(&mut self) -> Result<Vec<u8>, TrainableError> {
        let mut bytes = self.iteration.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.loss.to_le_bytes());
        Ok(bytes)
    }

    fn restore(&mut self, checkpoint: &[u8]) -> Result<(), TrainableError> {
        let bad = || TrainableError::Checkpoint(format!("{} bytes, wanted 16", checkpoint.len()));
        let (it, loss) = checkpoint.split_at_checked(8).ok_or_else(bad)?;
        self.iteration = u64::from_le_bytes(it.try_into().map_err(|_| bad())?);
        self.loss = f64::from_le_bytes(loss.try_into().map_err(|_| bad())?);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = troupe::init(Config::default()).await?;
    let dir = std::env::temp_dir().join("troupe-tune-quadratic");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?; // a fresh experiment, not a resume
    }
    let space = SearchSpace::new()
        .uniform("x", -3.0, 3.0)
        .uniform("y", -4.0, 2.0)
        .log_uniform("lr", 0.01, 0.5);
    let options = TuneOptions::new("loss", Mode::Min)
        .num_samples(32)
        .seed(2026)
        .max_concurrent(2)
        .scheduler(Scheduler::Asha(Asha::new().max_t(32).grace_period(2)))
        .dir(&dir);
    let results = Tuner::new(rt.clone(), space, options, Quadratic::new)
        .fit()
        .await?;

    let stopped = results
        .trials()
        .iter()
        .filter(|t| t.status == troupe_tune::TrialStatus::Stopped)
        .count();
    let best = results.best()?;
    println!(
        "{} trials, {stopped} stopped early by ASHA, {} iterations in all",
        results.trials().len(),
        results.trials().iter().map(|t| t.iteration()).sum::<u64>()
    );
    println!(
        "best: trial {} with loss {:.4} after {} iterations: {}",
        best.id,
        best.last().and_then(|m| m.get("loss")).unwrap_or(f64::NAN),
        best.iteration(),
        best.params
    );
    println!("results, checkpoints and curves.png in {}", dir.display());
    rt.shutdown().await?;
    Ok(())
}
