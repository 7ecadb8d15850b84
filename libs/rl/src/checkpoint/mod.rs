//! Checkpoint files: a trainer's model, optimizer, config and counters.
//!
//! Layout (little-endian):
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TROUPERL"
//! 8       4     format version (u32): 2 (1 is still read)
//! 12      8     payload length in bytes (u64)
//! 20      4     CRC-32 of the payload (u32)
//! 24      n     payload
//! ```
//!
//! The payload of format 2 is CBOR (RFC 8949), self-describing: every
//! struct is a map keyed by field name. A field added later is filled with
//! its default when an older file lacks it, and a field a newer file has
//! but this code does not know is skipped, so adding a config field needs
//! no new format version. Format 1's payload was postcard (fields by
//! position); it is still read (module `v1`, guarded by
//! `fixtures/checkpoint_v1.ckpt`).
//!
//! Reading checks each header field in order, so a file that is not a
//! checkpoint, one cut short, one damaged, and one of an unknown version
//! each get their own error. Only what fixes the model's shape must match
//! the trainer that loads it ([`SHAPE_FIELDS`]); the number of workers,
//! the budget and the other hyperparameters may differ. Writing goes to a
//! temporary file that is fsynced, renamed over the checkpoint, and the
//! directory fsynced, so that a crash leaves the old checkpoint or the new
//! one, never a mix or an empty file.

mod v1;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::PpoConfig;
use crate::env::EpisodeStats;
use crate::learner::LearnerState;
use crate::space::Space;

const MAGIC: &[u8; 8] = b"TROUPERL";
/// The format this code writes.
pub const FORMAT_VERSION: u32 = 2;
const HEADER: usize = 24;

/// What must be equal between a checkpoint and the trainer that loads it:
/// they fix the model's shape.
pub const SHAPE_FIELDS: &[&str] = &["env", "observation_space", "action_space", "hidden"];

/// A checkpoint could not be written, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with a checkpoint's magic bytes.
    #[error("{path} is not a troupe-rl checkpoint (its first bytes are not \"TROUPERL\")")]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
    },
    /// The file is shorter than its header says: an interrupted write or copy.
    #[error("checkpoint {path} is truncated: {got} bytes where {expected} were written; use an earlier checkpoint")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes found.
        got: u64,
    },
    /// The payload does not match its checksum.
    #[error("checkpoint {path} is damaged: its checksum does not match its contents")]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
    /// Written by a format version this code does not read.
    #[error(
        "checkpoint {path} has format version {found}; this troupe-rl reads versions 1 to {supported} (a newer troupe-rl wrote it: load it with that one)"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest version read here.
        supported: u32,
    },
    /// The payload could not be decoded.
    #[error("checkpoint {path} could not be decoded: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why (with the file's format version).
        reason: String,
    },
    /// The checkpoint could not be encoded.
    #[error("checkpoint {path} could not be encoded: {reason}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The checkpoint's model has another shape than the trainer's.
    #[error("checkpoint {path} was saved with {field} = {saved}, but this trainer has {field} = {current}; env, observation_space, action_space and hidden fix the model's shape and must match (other settings, such as num_workers or the budget, may differ): build the trainer with the checkpoint's (Trainer::from_checkpoint) or use a matching checkpoint")]
    ConfigMismatch {
        /// The file.
        path: PathBuf,
        /// The first field that differs (one of [`SHAPE_FIELDS`]).
        field: String,
        /// Its value in the checkpoint.
        saved: String,
        /// Its value in the trainer.
        current: String,
    },
}

/// Where training stood.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Updates done.
    pub iteration: u64,
    /// Environment steps sampled (autoreset steps included, as Gymnasium
    /// counts them).
    pub env_steps: u64,
    /// Episodes finished.
    pub episodes: u64,
    /// Fragments sampled again after a worker failed, hung or was killed.
    pub worker_restarts: u64,
    /// Seconds spent training.
    pub train_seconds: f64,
}

/// What a checkpoint holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) env: String,
    pub(crate) observation_space: Space,
    pub(crate) action_space: Space,
    #[serde(default)]
    pub(crate) config: PpoConfig,
    #[serde(default)]
    pub(crate) counters: Counters,
    /// The last 100 episodes, for the running mean.
    #[serde(default)]
    pub(crate) recent_episodes: Vec<EpisodeStats>,
    pub(crate) learner: LearnerState,
}

/// `path` with `.tmp` appended (not replacing its extension, so that
/// `a.ckpt` and `a.bak` never share a temporary file).
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `bytes` to `path` durably: a temporary file, fsynced, renamed
/// over `path`, then the directory fsynced (the rename itself is durable
/// only once the directory is).
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary(path);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(err) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        // Best effort: the temporary file is garbage now.
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    sync_directory(path)
}

#[cfg(unix)]
fn sync_directory(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_: &Path) -> std::io::Result<()> {
    // Directories cannot be opened for fsync here; the rename is atomic.
    Ok(())
}

impl Checkpoint {
    pub(crate) fn encode(&self, path: &Path) -> Result<Vec<u8>, CheckpointError> {
        let mut payload = Vec::new();
        ciborium::into_writer(self, &mut payload).map_err(|e| CheckpointError::Encode {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(framed(FORMAT_VERSION, &payload))
    }

    pub(crate) fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        let bytes = self.encode(path)?;
        write_durably(path, &bytes).map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })
    }

    pub(crate) fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        })?;
        Checkpoint::decode(&bytes, path)
    }

    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Checkpoint, CheckpointError> {
        let path = || path.to_owned();
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            // A prefix of the magic is a checkpoint cut inside its header.
            if !bytes.is_empty() && MAGIC.starts_with(bytes) {
                return Err(CheckpointError::Truncated {
                    path: path(),
                    expected: HEADER as u64,
                    got: bytes.len() as u64,
                });
            }
            return Err(CheckpointError::NotACheckpoint { path: path() });
        }
        if bytes.len() < HEADER {
            return Err(CheckpointError::Truncated {
                path: path(),
                expected: HEADER as u64,
                got: bytes.len() as u64,
            });
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let version = u32_at(8);
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(CheckpointError::UnsupportedVersion {
                path: path(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[12..20]);
        let len = u64::from_le_bytes(len);
        let expected = (HEADER as u64).saturating_add(len);
        if (bytes.len() as u64) < expected {
            return Err(CheckpointError::Truncated {
                path: path(),
                expected,
                got: bytes.len() as u64,
            });
        }
        let payload = &bytes[HEADER..HEADER + len as usize];
        if crc32fast::hash(payload) != u32_at(20) || bytes.len() as u64 != expected {
            return Err(CheckpointError::Corrupt { path: path() });
        }
        let decoded = match version {
            1 => v1::decode(payload).map_err(|e| e.to_string()),
            _ => ciborium::from_reader(payload).map_err(|e| e.to_string()),
        };
        decoded.map_err(|reason| CheckpointError::Decode {
            path: path(),
            reason: format!("format {version}: {reason}"),
        })
    }

    /// Refuses a checkpoint whose model has another shape: another
    /// environment, spaces or hidden layers ([`SHAPE_FIELDS`]).
    pub(crate) fn check_matches(
        &self,
        path: &Path,
        env: &str,
        observation_space: &Space,
        action_space: &Space,
        config: &PpoConfig,
    ) -> Result<(), CheckpointError> {
        let mismatch =
            |field: &str, saved: String, current: String| CheckpointError::ConfigMismatch {
                path: path.to_owned(),
                field: field.to_owned(),
                saved,
                current,
            };
        if self.env != env {
            return Err(mismatch(
                "env",
                format!("{:?}", self.env),
                format!("{env:?}"),
            ));
        }
        if &self.observation_space != observation_space {
            return Err(mismatch(
                "observation_space",
                self.observation_space.to_string(),
                observation_space.to_string(),
            ));
        }
        if &self.action_space != action_space {
            return Err(mismatch(
                "action_space",
                self.action_space.to_string(),
                action_space.to_string(),
            ));
        }
        if self.config.hidden != config.hidden {
            return Err(mismatch(
                "hidden",
                format!("{:?}", self.config.hidden),
                format!("{:?}", config.hidden),
            ));
        }
        Ok(())
    }
}

/// The header and `payload`.
fn framed(version: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

#[cfg(test)]
mod tests;
