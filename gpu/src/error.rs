//! Errors of the GPU crate.

/// What went wrong with a device, a tensor or a set of weights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// The work was given a GPU ordinal libtorch does not see.
    #[error("this work was given GPU {ordinal}, but libtorch sees {visible} CUDA device(s); declare only real GPUs (use troupe_gpu::Detector) or run it without num_gpus")]
    NoSuchDevice {
        /// The ordinal the scheduler assigned.
        ordinal: u32,
        /// How many devices libtorch sees.
        visible: i64,
    },
    /// A tensor has a different element type than the one asked for.
    #[error("expected a tensor of {expected}, found {found}; convert it with Tensor::to_kind first, or read it as a TensorObject")]
    WrongDtype {
        /// The element type asked for.
        expected: String,
        /// The element type it has.
        found: String,
    },
    /// The tensor's element type has no stable serialized form here.
    #[error("tensors of {0} cannot be stored or sent (quantized and float8 types are not supported); convert it with Tensor::to_kind first")]
    UnsupportedDtype(String),
    /// Weights do not fit the variables they are loaded into.
    #[error("weights do not match the model: {0}")]
    WeightsMismatch(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for GpuError {
    fn from(err: tch::TchError) -> Self {
        GpuError::Torch(err.to_string())
    }
}
