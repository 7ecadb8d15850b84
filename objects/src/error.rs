//! Object store errors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::ObjectId;

/// Why an object could not be stored or read.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ObjectError {
    /// The value is larger than the whole memory budget.
    #[error("object of {size} bytes is larger than the object store's memory budget of {budget} bytes; raise StoreConfig::memory_budget or split the value")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The budget.
        budget: u64,
    },
    /// The object holds a value of another type.
    #[error("{id} holds a {actual}, not a {expected}")]
    WrongType {
        /// Which object.
        id: ObjectId,
        /// The type asked for.
        expected: &'static str,
        /// The type it holds.
        actual: &'static str,
    },
    /// Not ready within the timeout.
    #[error("{id} was not ready within {after:?}")]
    Timeout {
        /// Which object.
        id: ObjectId,
        /// How long it waited.
        after: Duration,
    },
    /// The object was freed (explicitly, with `free`).
    #[error("{0} was freed")]
    Freed(ObjectId),
    /// Its producer failed; the cause is the producer's error.
    #[error("{id} failed: {cause}")]
    Failed {
        /// Which object.
        id: ObjectId,
        /// What its producer reported (a task error, for task results).
        cause: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Its producer went away without a value.
    #[error("{0} will never be ready: its producer was dropped without a value")]
    ProducerDropped(ObjectId),
    /// Spilling or restoring it failed; the object is still where it was.
    #[error("{op} {id} at {path:?} failed: {cause}; the object is unchanged (check disk space and StoreConfig::spill_dir)")]
    Spill {
        /// "spilling" or "restoring".
        op: &'static str,
        /// Which object.
        id: ObjectId,
        /// The file.
        path: PathBuf,
        /// The I/O or decoding error.
        cause: String,
    },
}

impl ObjectError {
    /// The producer's error, when the object failed with one of type `E`
    /// (a task's `TaskError`, for task results).
    pub fn failure<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            ObjectError::Failed { cause, .. } => cause.downcast_ref::<E>(),
            _ => None,
        }
    }
}
