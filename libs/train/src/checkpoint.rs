//! Checkpoints: named tensors (a model's variables, an optimizer's state)
//! and named numbers, written by rank 0 as a directory
//! `checkpoint_NNNNNN/` (`tensors.ot` in libtorch's format, `meta.json`)
//! atomically: written under a temporary name, each file fsynced, renamed,
//! and the parent directory fsynced.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Tensor;

use crate::error::TrainError;
use crate::report::Report;

const TENSORS: &str = "tensors.ot";
const META: &str = "meta.json";
const PREFIX: &str = "checkpoint_";

/// A model's (and optimizer's) state, made by a training loop and given to
/// [`WorkerContext::report`](crate::WorkerContext::report); after a restart
/// or on resume, [`WorkerContext::checkpoint`](crate::WorkerContext::checkpoint)
/// gives it back.
///
/// ```no_run
/// # fn f(ctx: &mut troupe_train::WorkerContext) -> Result<(), troupe_train::LoopError> {
/// use tch::nn::{self, VarStore};
/// let mut vs = VarStore::new(ctx.device());
/// let _layer = nn::linear(vs.root() / "fc", 4, 2, Default::default());
/// if let Some(c) = ctx.checkpoint()? {
///     c.load_var_store(&mut vs)?;
/// }
/// let c = troupe_train::Checkpoint::new().with_var_store(&vs).with_value("epoch", 3.0);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Checkpoint {
    tensors: Vec<(String, Tensor)>,
    values: BTreeMap<String, f64>,
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every variable of `vs` under `model.<its name>` (copies: the
    /// model may change after this returns).
    pub fn with_var_store(mut self, vs: &VarStore) -> Self {
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            self.tensors
                .push((format!("model.{name}"), t.detach().copy()));
        }
        self
    }

    /// Adds a tensor (a copy) under `name`, e.g. an optimizer's momentum.
    pub fn with_tensor(mut self, name: impl Into<String>, tensor: &Tensor) -> Self {
        self.tensors.push((name.into(), tensor.detach().copy()));
        self
    }

    /// Adds a number under `name` (an epoch, a learning rate).
    pub fn with_value(mut self, name: impl Into<String>, value: f64) -> Self {
        self.values.insert(name.into(), value);
        self
    }

    /// The tensor saved under `name`.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The number saved under `name`.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// Copies the saved `model.` variables into `vs` (onto its device).
    /// Fails if a variable of `vs` is missing or has another shape.
    pub fn load_var_store(&self, vs: &mut VarStore) -> Result<(), TrainError> {
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, mut var) in vars {
                let key = format!("model.{name}");
                let saved = self.tensor(&key).ok_or_else(|| {
                    TrainError::Mismatch(format!(
                        "the checkpoint has no variable `{name}`; was it saved from this model?"
                    ))
                })?;
                if saved.size() != var.size() {
                    return Err(TrainError::Mismatch(format!(
                        "variable `{name}` is {:?} in the checkpoint, {:?} in the model",
                        saved.size(),
                        var.size()
                    )));
                }
                var.f_copy_(&saved.f_to(var.device())?)?;
            }
            Ok(())
        })
    }

    pub(crate) fn values(&self) -> &BTreeMap<String, f64> {
        &self.values
    }

    pub(crate) fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// The checkpoint as bytes, to travel between nodes: the numbers as
    /// JSON after their length (8 bytes, little-endian), then the tensors in
    /// libtorch's format (what `tensors.ot` holds).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, TrainError> {
        let named: Vec<(&str, &Tensor)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        // tch takes the stream by value, for `'static`: share the buffer.
        let buffer = SharedBuffer::default();
        Tensor::save_multi_to_stream(&named, buffer.clone())?;
        let tensors = std::mem::take(&mut *buffer.0.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(frame(&self.values, &tensors))
    }

    /// A checkpoint that [`encode`](Self::encode) or [`read_encoded`] made.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Checkpoint, TrainError> {
        let (values, tensors) = unframe(bytes)?;
        let tensors = Tensor::load_multi_from_stream(std::io::Cursor::new(tensors))
            .map_err(|e| wire_error(format!("its tensors do not load: {e}")))?;
        Ok(Checkpoint { tensors, values })
    }
}

/// A byte buffer that a writer tch owns appends to.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn wire_error(reason: String) -> TrainError {
    TrainError::BadCheckpoint {
        path: PathBuf::from("<received from another node>"),
        reason,
    }
}

fn frame(values: &BTreeMap<String, f64>, tensors: &[u8]) -> Vec<u8> {
    // A map of strings to numbers always encodes.
    let json = serde_json::to_vec(values).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + json.len() + tensors.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(tensors);
    out
}

fn unframe(bytes: &[u8]) -> Result<(BTreeMap<String, f64>, &[u8]), TrainError> {
    let (len, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| wire_error(format!("{} bytes are too short", bytes.len())))?;
    let len = usize::try_from(u64::from_le_bytes(*len))
        .ok()
        .filter(|n| *n <= rest.len())
        .ok_or_else(|| wire_error("its numbers' length is past its end".to_owned()))?;
    let (json, tensors) = rest.split_at(len);
    let values = serde_json::from_slice(json)
        .map_err(|e| wire_error(format!("its numbers do not parse: {e}")))?;
    Ok((values, tensors))
}

/// A checkpoint directory as [`Checkpoint::encode`] lays it out, read
/// without decoding its tensors (sent to workers on other nodes).
pub(crate) fn read_encoded(path: &Path) -> Result<Vec<u8>, TrainError> {
    let meta = read_meta(path)?;
    let tensors_path = path.join(TENSORS);
    let tensors = fs::read(&tensors_path).map_err(|e| TrainError::BadCheckpoint {
        path: path.to_owned(),
        reason: format!("reading {TENSORS}: {e}"),
    })?;
    Ok(frame(&meta.values, &tensors))
}

/// What `meta.json` holds.
#[derive(Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) iteration: u64,
    pub(crate) values: BTreeMap<String, f64>,
    /// The metrics history up to and including this checkpoint's report.
    pub(crate) history: Vec<Report>,
}

/// A checkpoint on disk, as a result lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Its directory (give it to `TrainerConfig::resume_from`).
    pub path: PathBuf,
    /// The number of reports made when it was saved.
    pub iteration: u64,
    /// The metrics of that report.
    pub metrics: BTreeMap<String, f64>,
}

fn fsync(path: &Path) -> Result<(), TrainError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io("fsyncing", path, e))
}

/// Writes `c` as `dir/checkpoint_<iteration>` atomically; its path.
pub(crate) fn write(dir: &Path, c: &Checkpoint, meta: &Meta) -> Result<PathBuf, TrainError> {
    fs::create_dir_all(dir).map_err(|e| TrainError::io("creating", dir, e))?;
    let name = format!("{PREFIX}{:06}", meta.iteration);
    let tmp = dir.join(format!(".tmp-{name}"));
    let dest = dir.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| TrainError::io("removing", &tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| TrainError::io("creating", &tmp, e))?;
    let tensors = tmp.join(TENSORS);
    let named: Vec<(&str, &Tensor)> = c.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::save_multi(&named, &tensors)?;
    fsync(&tensors)?;
    let meta_path = tmp.join(META);
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| TrainError::io("encoding", &meta_path, std::io::Error::other(e)))?;
    fs::write(&meta_path, json).map_err(|e| TrainError::io("writing", &meta_path, e))?;
    fsync(&meta_path)?;
    fsync(&tmp)?;
    if dest.exists() {
        // A retry after a restart reached the same iteration again.
        fs::remove_dir_all(&dest).map_err(|e| TrainError::io("removing", &dest, e))?;
    }
    fs::rename(&tmp, &dest).map_err(|e| TrainError::io("renaming", &tmp, e))?;
    fsync(dir)?;
    crate::metrics::checkpoint();
    Ok(dest)
}

/// Reads a checkpoint directory's metadata.
pub(crate) fn read_meta(path: &Path) -> Result<Meta, TrainError> {
    let meta_path = path.join(META);
    let bytes = fs::read(&meta_path).map_err(|e| TrainError::BadCheckpoint {
        path: path.to_owned(),
        reason: format!("reading {META}: {e}"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::BadCheckpoint {
        path: path.to_owned(),
        reason: format!("parsing {META}: {e}"),
    })
}

/// Loads a checkpoint directory's tensors and numbers (onto the CPU).
pub(crate) fn load(path: &Path) -> Result<Checkpoint, TrainError> {
    let meta = read_meta(path)?;
    let tensors_path = path.join(TENSORS);
    if !tensors_path.is_file() {
        return Err(TrainError::BadCheckpoint {
            path: path.to_owned(),
            reason: format!("{TENSORS} is missing"),
        });
    }
    let tensors = Tensor::load_multi(&tensors_path).map_err(|e| TrainError::BadCheckpoint {
        path: path.to_owned(),
        reason: format!("loading {TENSORS}: {e}"),
    })?;
    Ok(Checkpoint {
        tensors,
        values: meta.values,
    })
}

/// The newest complete checkpoint under `dir`, if any: the way to resume
/// an experiment whose last checkpoint you do not know.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io("listing", dir, e)),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix(PREFIX))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if path.join(META).is_file() && best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, path));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Removes a checkpoint directory the best-K policy no longer keeps.
pub(crate) fn remove(path: &Path) -> Result<(), TrainError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TrainError::io("removing", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_travels_as_bytes_and_a_directory_reads_as_the_same_bytes() {
        let c = Checkpoint::new()
            .with_tensor("w", &Tensor::from_slice(&[1.5f32, -2.0, 3.25]))
            .with_value("epoch", 4.0);
        let back = Checkpoint::decode(&c.encode().expect("encodes")).expect("decodes");
        assert_eq!(back.value("epoch"), Some(4.0));
        assert!(back
            .tensor("w")
            .is_some_and(|t| t.equal(&Tensor::from_slice(&[1.5f32, -2.0, 3.25]))));

        let dir = tempfile::tempdir().expect("a directory");
        let meta = Meta {
            iteration: 7,
            values: c.values().clone(),
            history: Vec::new(),
        };
        let path = write(dir.path(), &c, &meta).expect("written");
        let read = Checkpoint::decode(&read_encoded(&path).expect("read")).expect("decodes");
        assert!(read
            .tensor("w")
            .is_some_and(|t| t.equal(c.tensor("w").expect("w"))));
        assert_eq!(read.value("epoch"), Some(4.0));

        for bad in [&b""[..], &[200, 0, 0, 0, 0, 0, 0, 0, b'{'][..]] {
            let err = Checkpoint::decode(bad).expect_err("not a checkpoint");
            assert!(err.to_string().contains("another node"), "{err}");
        }
    }
}
