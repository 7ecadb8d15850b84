//! Checkpoint files: a trainer's model, optimizer, config and counters.
//!
//! Layout (little-endian), version 1:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TROUPERL"
//! 8       4     format version (u32) = 1
//! 12      8     payload length in bytes (u64)
//! 20      4     CRC-32 of the payload (u32)
//! 24      n     payload: postcard encoding of the checkpoint
//! ```
//!
//! Reading checks each field in order, so a file that is not a checkpoint,
//! one cut short, one damaged, and one from another version each get their
//! own error; a checkpoint whose config or spaces differ from the trainer's
//! is refused naming the first field that differs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::PpoConfig;
use crate::env::EpisodeStats;
use crate::learner::LearnerState;
use crate::space::Space;

const MAGIC: &[u8; 8] = b"TROUPERL";
const VERSION: u32 = 1;
const HEADER: usize = 24;

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
    /// Written by another format version.
    #[error(
        "checkpoint {path} has format version {found}; this troupe-rl reads version {supported}"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// The payload could not be decoded.
    #[error("checkpoint {path} could not be decoded: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The checkpoint belongs to a differently configured trainer.
    #[error("checkpoint {path} was saved with {field} = {saved}, but this trainer has {field} = {current}; build the trainer with the checkpoint's config (Trainer::from_checkpoint) or use a matching checkpoint")]
    ConfigMismatch {
        /// The file.
        path: PathBuf,
        /// The first field that differs.
        field: String,
        /// Its value in the checkpoint.
        saved: String,
        /// Its value in the trainer.
        current: String,
    },
}

/// Where training stood.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Updates done.
    pub iteration: u64,
    /// Environment steps sampled (autoreset steps included, as Gymnasium
    /// counts them).
    pub env_steps: u64,
    /// Episodes finished.
    pub episodes: u64,
    /// Fragments sampled again after a worker failed.
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
    pub(crate) config: PpoConfig,
    pub(crate) counters: Counters,
    /// The last 100 episodes, for the running mean.
    pub(crate) recent_episodes: Vec<EpisodeStats>,
    pub(crate) learner: LearnerState,
}

impl Checkpoint {
    pub(crate) fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_owned(),
            source,
        };
        let payload = postcard::to_stdvec(self).map_err(|e| CheckpointError::Decode {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut bytes = Vec::with_capacity(HEADER + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        // Write then rename: a crash mid-write never leaves a half file
        // under the checkpoint's name.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
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
        if version != VERSION {
            return Err(CheckpointError::UnsupportedVersion {
                path: path(),
                found: version,
                supported: VERSION,
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[12..20]);
        let len = u64::from_le_bytes(len);
        let expected = HEADER as u64 + len;
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
        postcard::from_bytes(payload).map_err(|e| CheckpointError::Decode {
            path: path(),
            reason: e.to_string(),
        })
    }

    /// Refuses a checkpoint of another environment, spaces or config.
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
        if let Some((field, saved, current)) = self.config.first_difference(config) {
            return Err(mismatch(field, saved, current));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            env: "CartPole-v1".into(),
            observation_space: Space::unbounded(4),
            action_space: Space::discrete(2),
            config: PpoConfig::default(),
            counters: Counters {
                iteration: 3,
                ..Counters::default()
            },
            recent_episodes: vec![EpisodeStats {
                episode_return: 12.0,
                length: 12,
            }],
            learner: LearnerState {
                variables: vec![],
                adam_m: vec![1.0],
                adam_v: vec![2.0],
                adam_steps: 3,
                updates: 3,
            },
        }
    }

    #[test]
    fn round_trip_and_every_kind_of_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ckpt");
        let c = sample();
        c.write(&path).unwrap();
        assert_eq!(Checkpoint::read(&path).unwrap(), c);
        let bytes = std::fs::read(&path).unwrap();
        let p = Path::new("x");
        for cut in [3, 10, HEADER, bytes.len() - 1] {
            let err = Checkpoint::decode(&bytes[..cut], p).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(matches!(
            Checkpoint::decode(&flipped, p),
            Err(CheckpointError::Corrupt { .. })
        ));
        let mut version = bytes.clone();
        version[8] = 9;
        assert!(matches!(
            Checkpoint::decode(&version, p),
            Err(CheckpointError::UnsupportedVersion { found: 9, .. })
        ));
        assert!(matches!(
            Checkpoint::decode(b"hello, world, not a checkpoint", p),
            Err(CheckpointError::NotACheckpoint { .. })
        ));
        assert!(matches!(
            Checkpoint::decode(b"", p),
            Err(CheckpointError::NotACheckpoint { .. })
        ));
    }

    #[test]
    fn another_config_is_refused_by_name() {
        let c = sample();
        let p = Path::new("x");
        let (obs, act) = (Space::unbounded(4), Space::discrete(2));
        c.check_matches(p, "CartPole-v1", &obs, &act, &PpoConfig::default())
            .unwrap();
        let err = c
            .check_matches(
                p,
                "CartPole-v1",
                &obs,
                &act,
                &PpoConfig::default().hidden(vec![32]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("hidden = [64, 64]"), "{err}");
        let err = c
            .check_matches(p, "Pendulum-v1", &obs, &act, &PpoConfig::default())
            .unwrap_err();
        assert!(
            matches!(&err, CheckpointError::ConfigMismatch { field, .. } if field == "env"),
            "{err}"
        );
    }
}
