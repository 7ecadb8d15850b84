//! Troupe's GPU support, on libtorch through [`tch`].
//!
//! - [`Detector`] finds a node's GPUs when its runtime starts; they become
//!   its `GPU` resources, so tasks and actors can ask for `num_gpus`
//!   (fractions of one device allowed).
//! - [`device`] is the `tch::Device` the running actor or task was given:
//!   an actor that asked for a GPU owns that device for its whole life, and
//!   a restarted incarnation gets it again. Work that asked for none runs on
//!   `Device::Cpu`, on every machine.
//! - [`TensorObject`] and [`TypedTensor`] put tensors in the object store
//!   and pass them to tasks and actors without copying their data;
//!   [`Weights`] carries a model's variables from one actor to others.
//!
//! ```
//! use troupe_core::{Config, Resources};
//! use troupe_gpu::{device, Detector};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = troupe_core::init(Config::default().gpu_detector(Detector)).await?;
//! println!("GPUs: {:?}", rt.gpus()); // empty on a machine without one
//! // An actor or task that asked for a GPU gets Device::Cuda(n) here; work
//! // that asked for none (and code outside any) gets the CPU.
//! assert_eq!(device()?, tch::Device::Cpu);
//! let resources = Resources::default().with_gpus(if rt.gpus().is_empty() { 0.0 } else { 0.5 });
//! # let _ = resources;
//! rt.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! `examples/gpu_model.rs` in the repository shows the whole pattern: a
//! learner actor that owns a model on its device, fed by producer actors
//! through the object store, broadcasting its weights to CPU replicas.
//!
//! Architecture Invariant: this crate plugs into core only through core's
//! public API (the [`GpuDetector`](troupe_core::GpuDetector) trait and the
//! actor and task contexts); core knows nothing of libtorch.

// The lint wall (CI denies warnings): no unsafe code but where a
// `SAFETY` comment allows it; every public item documented and truly
// public; no debugging leftovers; no `unwrap` outside tests.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod detect;
mod error;
mod tensor;
mod weights;

pub use detect::{cuda_available, Detector};
pub use error::GpuError;
pub use tensor::{TensorObject, TypedTensor};
pub use weights::Weights;

/// The libtorch binding this crate is built on, re-exported so that users
/// name the same version.
pub use tch;

use tch::Device;

/// The device the running actor or task was given: `Device::Cuda(n)` for
/// the first GPU it holds, `Device::Cpu` if it asked for none (or outside
/// any actor or task).
///
/// Fails if the work was given a GPU that libtorch cannot see, as happens
/// when a node declares GPUs in its config on a machine without them:
/// running on CPU instead would hide a misconfiguration.
pub fn device() -> Result<Device, GpuError> {
    let ids = troupe_core::actor::current()
        .map(|actor| actor.gpu_ids.clone())
        .or_else(|| troupe_core::task::current().map(|task| task.gpu_ids))
        .unwrap_or_default();
    match ids.first() {
        None => Ok(Device::Cpu),
        Some(&ordinal) => {
            let visible = tch::Cuda::device_count();
            if i64::from(ordinal) < visible {
                Ok(Device::Cuda(ordinal as usize))
            } else {
                Err(GpuError::NoSuchDevice { ordinal, visible })
            }
        }
    }
}
