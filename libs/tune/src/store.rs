//! The experiment directory:
//!
//! ```text
//! <dir>/experiment_state.json   the trials' configs and statuses, and the
//!                               scheduler's state (written atomically)
//! <dir>/curves.png              every trial's curve of the metric
//! <dir>/trial_00003/result.json one JSON object per iteration
//!                  /progress.csv the same as CSV (columns from the first row)
//!                  /checkpoint.bin the last checkpoint (written atomically):
//!                               a JSON header line (iteration, config),
//!                               then the trainable's bytes
//!                  /curve.png   this trial's curve
//! ```
//!
//! The state file does not name checkpoints: each trial's checkpoint file
//! says which iteration and config it holds, so a state file older than a
//! checkpoint still resumes correctly (from that newer checkpoint).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::TuneError;
use crate::params::Params;
use crate::trainable::Metrics;

/// The state file's name in the experiment directory.
pub const STATE_FILE: &str = "experiment_state.json";

/// A trial's checkpoint: what the trainable saved after `iteration`, with
/// the config it ran with.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The iteration it was taken after.
    pub iteration: u64,
    /// The config of the trial then.
    pub params: Params,
    /// The trainable's bytes ([`Trainable::save`](crate::Trainable::save)).
    pub bytes: Arc<Vec<u8>>,
    /// How many reports the trial had made then (its history goes back to
    /// this length when it is restored).
    pub(crate) reports: usize,
}

#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    iteration: u64,
    params: Params,
    reports: usize,
}

/// One iteration's result, as a trial's history and `result.json` keep it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The iteration (from 1; under PBT it jumps to the donor's after an
    /// exploit).
    pub iteration: u64,
    /// What the trainable reported.
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// A trial's directory.
pub(crate) fn trial_dir(root: &Path, trial: usize) -> PathBuf {
    root.join(format!("trial_{trial:05}"))
}

pub(crate) fn create_dir(path: &Path) -> Result<(), TuneError> {
    fs::create_dir_all(path).map_err(|e| TuneError::io(path, e))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it,
/// fsynced, renamed over `path`, and the directory fsynced.
pub(crate) fn write_atomic(path: &Path, parts: &[&[u8]]) -> Result<(), TuneError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |e| TuneError::io(&tmp, e);
    let mut file = File::create(&tmp).map_err(io)?;
    for part in parts {
        file.write_all(part).map_err(io)?;
    }
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| TuneError::io(path, e))?;
    // The rename is durable once the directory is; a failure here loses
    // nothing written (the file is complete, under one name or the other).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(crate) fn write_checkpoint(dir: &Path, checkpoint: &Checkpoint) -> Result<(), TuneError> {
    let header = CheckpointHeader {
        iteration: checkpoint.iteration,
        params: checkpoint.params.clone(),
        reports: checkpoint.reports,
    };
    let mut line =
        serde_json::to_vec(&header).map_err(|e| TuneError::io(dir, std::io::Error::other(e)))?;
    line.push(b'\n');
    write_atomic(&dir.join("checkpoint.bin"), &[&line, &checkpoint.bytes])
}

/// The trial's checkpoint, if it has one.
pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, TuneError> {
    let path = dir.join("checkpoint.bin");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TuneError::io(&path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| TuneError::io(&path, e))?;
    let header: CheckpointHeader = serde_json::from_str(&line).map_err(|e| TuneError::State {
        path: path.clone(),
        reason: format!("bad checkpoint header: {e}"),
    })?;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| TuneError::io(&path, e))?;
    Ok(Some(Checkpoint {
        iteration: header.iteration,
        params: header.params,
        bytes: Arc::new(bytes),
        reports: header.reports,
    }))
}

/// A trial's results so far, from `result.json` (empty if none).
pub(crate) fn read_history(dir: &Path) -> Result<Vec<Report>, TuneError> {
    let path = dir.join("result.json");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TuneError::io(&path, e)),
    };
    // A line cut short by a crash ends the history.
    Ok(text
        .lines()
        .map_while(|l| serde_json::from_str::<Report>(l).ok())
        .collect())
}

/// Writes a trial's whole history again (after it went back to a
/// checkpoint).
pub(crate) fn rewrite_history(dir: &Path, history: &[Report]) -> Result<(), TuneError> {
    for name in ["result.json", "progress.csv"] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TuneError::io(&path, e)),
        }
    }
    for (i, report) in history.iter().enumerate() {
        append_result(dir, report, i == 0)?;
    }
    Ok(())
}

/// Appends iteration `iteration`'s metrics to `result.json` and
/// `progress.csv` (whose header the first row writes).
pub(crate) fn append_result(dir: &Path, report: &Report, first: bool) -> Result<(), TuneError> {
    let open = |name: &str| {
        let path = dir.join(name);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TuneError::io(&path, e))
    };
    let (iteration, metrics) = (report.iteration, &report.metrics);
    let mut json =
        serde_json::to_vec(report).map_err(|e| TuneError::io(dir, std::io::Error::other(e)))?;
    json.push(b'\n');
    open("result.json")?
        .write_all(&json)
        .map_err(|e| TuneError::io(dir.join("result.json"), e))?;

    let csv_path = dir.join("progress.csv");
    let mut w = csv::Writer::from_writer(open("progress.csv")?);
    let csv_err = |e: csv::Error| TuneError::io(&csv_path, std::io::Error::other(e));
    if first {
        let header = std::iter::once("iteration").chain(metrics.iter().map(|(k, _)| k));
        w.write_record(header).map_err(csv_err)?;
    }
    let values =
        std::iter::once(iteration.to_string()).chain(metrics.iter().map(|(_, v)| v.to_string()));
    w.write_record(values).map_err(csv_err)?;
    w.flush().map_err(|e| TuneError::io(&csv_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_as_written_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoint {
            iteration: 7,
            params: Params::new().with("lr", 0.5),
            bytes: Arc::new(vec![0, 1, 2, b'\n', 255]),
            reports: 6,
        };
        write_checkpoint(dir.path(), &c).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), Some(c));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["checkpoint.bin"]);
        assert_eq!(read_checkpoint(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn a_history_cut_short_ends_at_its_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let report = |i| Report {
            iteration: i,
            metrics: Metrics::new().with("m", i as f64),
        };
        rewrite_history(dir.path(), &[report(1), report(2)]).unwrap();
        let path = dir.path().join("result.json");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(r#"{"iteration":3,"val"#);
        fs::write(&path, text).unwrap();
        assert_eq!(read_history(dir.path()).unwrap(), [report(1), report(2)]);
        let csv = fs::read_to_string(dir.path().join("progress.csv")).unwrap();
        assert_eq!(csv, "iteration,m\n1,1\n2,2\n");
    }

    #[test]
    fn a_history_with_nan_and_infinite_metrics_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let reports = [
            Report {
                iteration: 1,
                metrics: Metrics::new().with("loss", f64::NAN).with("m", 1.0),
            },
            Report {
                iteration: 2,
                metrics: Metrics::new().with("loss", f64::INFINITY).with("m", 2.0),
            },
            Report {
                iteration: 3,
                metrics: Metrics::new().with("loss", 0.5).with("m", 3.0),
            },
        ];
        rewrite_history(dir.path(), &reports).unwrap();
        let read = read_history(dir.path()).unwrap();
        assert_eq!(read.len(), 3, "{read:?}");
        assert!(read[0].metrics.get("loss").unwrap().is_nan());
        assert!(
            read[1].metrics.get("loss").unwrap().is_nan(),
            "JSON keeps no infinity"
        );
        assert_eq!(read[2], reports[2]);
        assert_eq!(read[1].metrics.get("m"), Some(2.0));
    }
}
