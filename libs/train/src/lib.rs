//! # troupe-train
//!
//! Distributed data-parallel training on Troupe, in the manner of Ray
//! Train: [`Trainer::fit`] runs your training loop on a group of worker
//! actors (placed through a placement group, PACK by default, supervised
//! one-for-all), each with a [`WorkerContext`] that gives its rank, the
//! world size, its device, its shard of the data, collectives on `tch`
//! tensors ([`all_reduce`](WorkerContext::all_reduce),
//! [`broadcast`](WorkerContext::broadcast),
//! [`barrier`](WorkerContext::barrier),
//! [`all_reduce_gradients`](WorkerContext::all_reduce_gradients)) and
//! [`report`](WorkerContext::report) for metrics and checkpoints.
//!
//! A worker that fails (panics, or returns an error) makes the group
//! restart from the last checkpoint while
//! [`max_failures`](TrainerConfig::max_failures) allows. Checkpoints are
//! written by rank 0 atomically, best-K are kept, and
//! [`resume_from`](TrainerConfig::resume_from) starts a new `fit` where
//! one left off.
//!
//! [`Trainer::fit`] runs a closure on workers in this process, whose
//! collectives go through shared memory. [`Trainer::fit_registered`] runs a
//! loop registered by name ([`register_train_loop!`]) on workers on any
//! node of a cluster, whose collectives go over Troupe's transport. Both
//! all-reduce to bitwise the sum one process makes in rank order.
//!
//! ```no_run
//! use tch::nn::{self, Module, OptimizerConfig};
//! use troupe::prelude::*;
//! use troupe_train::{Checkpoint, Metrics, Trainer, TrainerConfig};
//!
//! # async fn f(rt: &Runtime) -> Result<(), troupe_train::TrainError> {
//! let config = TrainerConfig::new(2).storage_path("/tmp/my-run").max_failures(2);
//! let result = Trainer::new(rt, config)
//!     .fit(|ctx| {
//!         let mut vs = nn::VarStore::new(ctx.device());
//!         let model = nn::linear(vs.root() / "fc", 8, 1, Default::default());
//!         let mut opt = nn::Sgd::default().build(&vs, 0.1)?;
//!         match ctx.checkpoint()? {
//!             Some(c) => c.load_var_store(&mut vs)?,
//!             None => ctx.broadcast_var_store(&vs, 0)?, // same start everywhere
//!         }
//!         for _step in ctx.iteration()..100 {
//!             let x = tch::Tensor::randn([16, 8], (tch::Kind::Float, ctx.device()));
//!             let loss = model.forward(&x).pow_tensor_scalar(2).mean(None);
//!             opt.zero_grad();
//!             loss.backward();
//!             ctx.all_reduce_gradients(&vs)?;
//!             opt.step();
//!             let metrics = Metrics::new().with("loss", loss.double_value(&[]));
//!             ctx.report(metrics, Some(Checkpoint::new().with_var_store(&vs)))?;
//!         }
//!         Ok(())
//!     })
//!     .await?;
//! println!("best: {:?}", result.best_checkpoint);
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod byte_view;
mod checkpoint;
mod collective;
mod config;
mod context;
pub mod data;
mod error;
mod mesh;
mod metrics;
mod registry;
mod remote;
mod report;
mod trainer;

pub use checkpoint::{latest_checkpoint, Checkpoint, CheckpointInfo};
pub use collective::ReduceOp;
pub use config::{Mode, TrainerConfig};
pub use context::WorkerContext;
pub use error::{LoopError, TrainError};
pub use registry::registered_train_loops;
pub use report::{Metrics, Report, TrainResult};
pub use trainer::Trainer;

/// What `register_train_loop!` expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::TrainLoopRegistration;
    pub use inventory;
}
