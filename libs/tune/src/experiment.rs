//! An experiment's state, shared by the trials' drivers: each trial's
//! config, status, history and last checkpoint, and the scheduler. The
//! state file is a snapshot of it (without histories and checkpoints,
//! which live in each trial's directory), written atomically.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::TuneError;
use crate::lock::lock;
use crate::params::Params;
use crate::results::{ResultGrid, TrialResult, TrialStatus};
use crate::scheduler::{Mode, Scheduler};
use crate::store::{self, Checkpoint, Report, STATE_FILE};

/// The state file's format version.
const VERSION: u32 = 1;

/// How often the state file is written while trials run (it is always
/// written at the start and the end, and each trial's checkpoint file is
/// written at once: a resume from an older state file restarts a trial
/// from its newest checkpoint).
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// One trial, as the state file keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TrialState {
    pub(crate) id: usize,
    pub(crate) params: Params,
    pub(crate) status: TrialStatus,
    pub(crate) error: Option<String>,
    pub(crate) failures: u32,
    /// The node its actor ran on last (absent in older state files).
    #[serde(default)]
    pub(crate) node: Option<troupe::NodeId>,
}

/// The state file.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    metric: String,
    mode: Mode,
    scheduler: Scheduler,
    trials: Vec<TrialState>,
}

/// One trial in memory.
#[derive(Debug)]
pub(crate) struct Trial {
    pub(crate) state: TrialState,
    pub(crate) history: Vec<Report>,
    pub(crate) checkpoint: Option<Checkpoint>,
    /// The trainable's iteration (its next report is one more).
    pub(crate) iteration: u64,
}

/// The experiment in memory.
#[derive(Debug)]
pub(crate) struct Experiment {
    pub(crate) metric: String,
    pub(crate) mode: Mode,
    pub(crate) scheduler: Scheduler,
    pub(crate) trials: Vec<Trial>,
}

impl Experiment {
    /// A fresh experiment over `configs`.
    pub(crate) fn new(
        metric: &str,
        mode: Mode,
        scheduler: Scheduler,
        configs: Vec<Params>,
    ) -> Self {
        let trials = configs
            .into_iter()
            .enumerate()
            .map(|(id, params)| Trial {
                state: TrialState {
                    id,
                    params,
                    status: TrialStatus::Pending,
                    error: None,
                    failures: 0,
                    node: None,
                },
                history: Vec::new(),
                checkpoint: None,
                iteration: 0,
            })
            .collect();
        Experiment {
            metric: metric.to_owned(),
            mode,
            scheduler,
            trials,
        }
    }

    /// The experiment in `dir`, its unfinished trials set back to their
    /// last checkpoints (their later results dropped) and pending.
    pub(crate) fn load(dir: &Path) -> Result<Self, TuneError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TuneError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file: StateFile = serde_json::from_str(&text).map_err(|e| TuneError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != VERSION {
            return Err(TuneError::State {
                path,
                reason: format!("version {} (this crate reads {VERSION})", file.version),
            });
        }
        let mut scheduler = file.scheduler;
        let mut trials = Vec::with_capacity(file.trials.len());
        for mut state in file.trials {
            let tdir = store::trial_dir(dir, state.id);
            let mut history = store::read_history(&tdir)?;
            let checkpoint = store::read_checkpoint(&tdir)?;
            if !state.status.is_finished() {
                let keep = checkpoint.as_ref().map_or(0, |c| c.reports);
                if history.len() != keep {
                    history.truncate(keep);
                    store::rewrite_history(&tdir, &history)?;
                }
                scheduler.rewind(state.id, checkpoint.as_ref().map_or(0, |c| c.iteration));
                if let Some(c) = &checkpoint {
                    state.params = c.params.clone();
                }
                state.status = TrialStatus::Pending;
            }
            let iteration = if state.status.is_finished() {
                history.last().map_or(0, |r| r.iteration)
            } else {
                checkpoint.as_ref().map_or(0, |c| c.iteration)
            };
            trials.push(Trial {
                state,
                history,
                checkpoint,
                iteration,
            });
        }
        Ok(Experiment {
            metric: file.metric,
            mode: file.mode,
            scheduler,
            trials,
        })
    }

    /// The state file's bytes.
    fn snapshot(&self) -> Result<Vec<u8>, TuneError> {
        let file = StateFile {
            version: VERSION,
            metric: self.metric.clone(),
            mode: self.mode,
            scheduler: self.scheduler.clone(),
            trials: self.trials.iter().map(|t| t.state.clone()).collect(),
        };
        serde_json::to_vec_pretty(&file)
            .map_err(|e| TuneError::io(STATE_FILE, std::io::Error::other(e)))
    }

    pub(crate) fn finished(&self) -> usize {
        self.trials
            .iter()
            .filter(|t| t.state.status.is_finished())
            .count()
    }

    /// The live table: one line per running trial.
    pub(crate) fn table(&self) -> String {
        let mut lines = Vec::new();
        let best = self.best_so_far();
        if let Some((id, v)) = best {
            lines.push(format!("best {} = {v:.6} (trial {id})", self.metric));
        }
        for t in self
            .trials
            .iter()
            .filter(|t| t.state.status == TrialStatus::Running)
        {
            let last = t.history.last();
            let value = last
                .and_then(|r| r.metrics.get(&self.metric))
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.6}"));
            lines.push(format!(
                "  trial {:>5}  iter {:>5}  {} {value}  [{}]",
                t.state.id,
                last.map_or(0, |r| r.iteration),
                self.metric,
                t.state.params
            ));
        }
        lines.join("\n")
    }

    fn best_so_far(&self) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for t in &self.trials {
            let Some(v) = t.history.last().and_then(|r| r.metrics.get(&self.metric)) else {
                continue;
            };
            if best.is_none_or(|(_, b)| self.mode.better(v, b)) {
                best = Some((t.state.id, v));
            }
        }
        best
    }

    pub(crate) fn results(&self, dir: &Path, interrupted: bool) -> ResultGrid {
        ResultGrid {
            dir: dir.to_owned(),
            metric: self.metric.clone(),
            mode: self.mode,
            interrupted,
            trials: self
                .trials
                .iter()
                .map(|t| TrialResult {
                    id: t.state.id,
                    params: t.state.params.clone(),
                    status: t.state.status,
                    error: t.state.error.clone(),
                    failures: t.state.failures,
                    node: t.state.node,
                    history: t.history.clone(),
                    checkpoint: t.checkpoint.clone(),
                    dir: store::trial_dir(dir, t.state.id),
                })
                .collect(),
        }
    }
}

/// Writes the state file off the async threads (a write fsyncs twice,
/// which can take a long time on a busy disk): while trials run, at most
/// every [`SAVE_EVERY`] when something changed ([`mark`](Self::mark)), and
/// at the start and the end of the experiment. Snapshots are numbered and
/// written under one lock, so a newer one is never replaced by an older.
#[derive(Debug)]
pub(crate) struct StateWriter {
    path: PathBuf,
    dirty: AtomicBool,
    next: AtomicU64,
    /// The number of the last snapshot written.
    written: Arc<Mutex<u64>>,
}

impl StateWriter {
    pub(crate) fn new(dir: &Path) -> Self {
        StateWriter {
            path: dir.join(STATE_FILE),
            dirty: AtomicBool::new(false),
            next: AtomicU64::new(1),
            written: Arc::new(Mutex::new(0)),
        }
    }

    /// Something changed: the next tick writes.
    pub(crate) fn mark(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes a snapshot now.
    pub(crate) async fn write_now(&self, experiment: &Mutex<Experiment>) -> Result<(), TuneError> {
        self.dirty.store(false, Ordering::Release);
        let (seq, bytes) = {
            let ex = lock(experiment);
            (self.next.fetch_add(1, Ordering::AcqRel), ex.snapshot()?)
        };
        let (path, written) = (self.path.clone(), self.written.clone());
        let write = move || {
            let mut last = lock(&written);
            if seq > *last {
                store::write_atomic(&path, &[&bytes])?;
                *last = seq;
            }
            Ok(())
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| TuneError::io(&self.path, std::io::Error::other(e)))?
    }

    /// Writes whenever something changed, every [`SAVE_EVERY`]; returns
    /// only on a failed write.
    pub(crate) async fn run(&self, experiment: &Mutex<Experiment>) -> TuneError {
        let mut tick = tokio::time::interval(SAVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.dirty.load(Ordering::Acquire) {
                if let Err(e) = self.write_now(experiment).await {
                    return e;
                }
            }
        }
    }
}
