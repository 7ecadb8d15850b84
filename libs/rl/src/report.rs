//! What training reports: per-iteration metrics, and the [`Reporter`]s that
//! show or record them (a progress bar or log lines, a CSV file).

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::RlError;

/// One training iteration (sample, update, broadcast), as `Trainer::train`
/// returns it and the CSV log records it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IterationMetrics {
    /// Updates done so far (1 for the first).
    pub iteration: u64,
    /// Environment steps sampled so far.
    pub env_steps: u64,
    /// Episodes finished so far.
    pub episodes: u64,
    /// Mean return of the last 100 finished episodes (NaN before the first).
    pub episode_return_mean: f64,
    /// Mean length of the last 100 finished episodes (NaN before the first).
    pub episode_length_mean: f64,
    /// Environment steps per second of this iteration, sampling and update.
    pub steps_per_second: f64,
    /// Environment steps per second of this iteration's sampling alone.
    pub sampling_steps_per_second: f64,
    /// PPO's clipped surrogate loss.
    pub policy_loss: f64,
    /// The value loss.
    pub value_loss: f64,
    /// Mean entropy of the policy.
    pub entropy: f64,
    /// Approximate KL divergence of the update.
    pub approx_kl: f64,
    /// Fraction of clipped ratios.
    pub clip_fraction: f64,
    /// Explained variance of the values.
    pub explained_variance: f64,
    /// The learning rate of this update.
    pub learning_rate: f64,
    /// Seconds of training so far.
    pub wall_seconds: f64,
    /// Fragments sampled again after a worker failed, so far.
    pub worker_restarts: u64,
    /// Updates between the weights this batch was sampled with and the
    /// ones it trained: 0 with synchronous sampling, 1 with
    /// [`PpoConfig::async_sampling`](crate::PpoConfig::async_sampling)
    /// (0 for its first batch).
    #[serde(default)]
    pub policy_lag: u64,
}

/// Receives every iteration's metrics while a trainer runs
/// (`Trainer::train_until`). Implement it to log elsewhere.
pub trait Reporter {
    /// One iteration finished.
    fn report(&mut self, metrics: &IterationMetrics) -> Result<(), RlError>;

    /// Training stopped (with the last metrics, if any).
    fn finish(&mut self, _last: Option<&IterationMetrics>) -> Result<(), RlError> {
        Ok(())
    }
}

/// Reports nothing.
impl Reporter for () {
    fn report(&mut self, _: &IterationMetrics) -> Result<(), RlError> {
        Ok(())
    }
}

/// Several reporters, in order.
impl Reporter for Vec<Box<dyn Reporter + Send>> {
    fn report(&mut self, metrics: &IterationMetrics) -> Result<(), RlError> {
        self.iter_mut().try_for_each(|r| r.report(metrics))
    }

    fn finish(&mut self, last: Option<&IterationMetrics>) -> Result<(), RlError> {
        self.iter_mut().try_for_each(|r| r.finish(last))
    }
}

/// Shows progress: an `indicatif` bar with the live return when stderr is a
/// terminal, plain log lines on stderr (at most one a second, and the last)
/// when it is not (CI, a file).
pub struct Progress {
    bar: Option<ProgressBar>,
    every: Duration,
    last_line: Option<Instant>,
}

impl Progress {
    /// Progress towards `total_env_steps` (the bar's length).
    pub fn new(total_env_steps: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total_env_steps);
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} steps  {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            bar,
            every: Duration::from_secs(1),
            last_line: None,
        }
    }

    /// Plain lines whatever stderr is (for tests and logs), every `every`.
    pub fn plain(every: Duration) -> Progress {
        Progress {
            bar: None,
            every,
            last_line: None,
        }
    }

    fn line(m: &IterationMetrics) -> String {
        format!(
            "iter {:>5}  steps {:>9}  return {:>7.1}  length {:>6.1}  {:>8.0} steps/s  kl {:.4}  entropy {:.3}  {:.1} s",
            m.iteration,
            m.env_steps,
            m.episode_return_mean,
            m.episode_length_mean,
            m.steps_per_second,
            m.approx_kl,
            m.entropy,
            m.wall_seconds
        )
    }
}

impl Reporter for Progress {
    fn report(&mut self, m: &IterationMetrics) -> Result<(), RlError> {
        match &self.bar {
            Some(bar) => {
                bar.set_position(m.env_steps);
                bar.set_message(format!(
                    "return {:.1}  {:.0} steps/s",
                    m.episode_return_mean, m.steps_per_second
                ));
            }
            None => {
                if self.last_line.is_none_or(|at| at.elapsed() >= self.every) {
                    eprintln!("{}", Progress::line(m));
                    self.last_line = Some(Instant::now());
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, last: Option<&IterationMetrics>) -> Result<(), RlError> {
        match &self.bar {
            // abandon, not finish: finish would fill the bar to the budget.
            Some(bar) => bar.abandon(),
            None => {
                if let Some(m) = last {
                    eprintln!("{}", Progress::line(m));
                }
            }
        }
        Ok(())
    }
}

/// Writes one CSV row per iteration (a header first, flushed each row).
pub struct CsvLog {
    path: PathBuf,
    writer: csv::Writer<File>,
}

impl CsvLog {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<CsvLog, RlError> {
        let path = path.as_ref().to_owned();
        let writer = csv::Writer::from_path(&path).map_err(|e| RlError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(CsvLog { path, writer })
    }
}

impl Reporter for CsvLog {
    fn report(&mut self, m: &IterationMetrics) -> Result<(), RlError> {
        let io = |e: std::io::Error| RlError::Io {
            path: self.path.clone(),
            source: e,
        };
        self.writer
            .serialize(m)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        self.writer.flush().map_err(io)
    }
}

/// Reads a CSV log back.
pub fn read_csv_log(path: impl AsRef<Path>) -> Result<Vec<IterationMetrics>, RlError> {
    let path = path.as_ref();
    let io = |e: String| RlError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| io(e.to_string()))?;
    reader
        .deserialize()
        .map(|row| row.map_err(|e| io(e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_log_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.csv");
        let mut log = CsvLog::create(&path).unwrap();
        let rows: Vec<IterationMetrics> = (1..=3)
            .map(|i| IterationMetrics {
                iteration: i,
                env_steps: i * 256,
                episode_return_mean: 10.0 * i as f64,
                ..IterationMetrics::default()
            })
            .collect();
        for r in &rows {
            log.report(r).unwrap();
        }
        assert_eq!(read_csv_log(&path).unwrap(), rows);
        let header = std::fs::read_to_string(&path).unwrap();
        assert!(header.starts_with("iteration,env_steps,episodes,episode_return_mean"));
    }
}
