//! # troupe-rl
//!
//! Reinforcement learning on Troupe: environments that match Gymnasium
//! exactly, rollout workers that are supervised actors, and a PPO learner
//! that owns its model on its device.
//!
//! ```no_run
//! use troupe::prelude::*;
//! use troupe_rl::{EnvMaker, PpoConfig, Progress, Stop, Trainer};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let rt = Runtime::start(Config::default())?;
//!     rt.block_on(async {
//!         let mut trainer = Trainer::new(&rt, EnvMaker::cart_pole(), PpoConfig::default()).await?;
//!         let summary = trainer
//!             .train_until(&Stop::at_return(475.0).or_env_steps(500_000), &mut Progress::new(500_000))
//!             .await?;
//!         println!("mean return {:.1} after {:.1} s", summary.last.episode_return_mean, summary.seconds);
//!         trainer.save("cartpole.ckpt").await?;
//!         trainer.shutdown().await;
//!         Ok::<_, Box<dyn std::error::Error>>(())
//!     })?;
//!     rt.block_on(rt.shutdown())?;
//!     Ok(())
//! }
//! ```
//!
//! ## Design
//!
//! ```text
//! Trainer (driver, your task)
//!   ├── Learner actor          model + Adam on troupe::gpu::device(); PPO update
//!   │     publish → ObjectRef<Weights> (one snapshot in the store per update)
//!   └── Supervisor "rl-rollout-workers" (one_for_one)
//!         ├── RolloutWorker 0  VecEnv of K envs + CpuPolicy → ObjectRef<Fragment>
//!         └── RolloutWorker 1  ...
//!   or, with workers_on_cluster: no supervisor, and
//!   RolloutWorker i on a node of the cluster (RolloutWorker::on_node),
//!         in bundle i of a placement group; respawned by the trainer
//! iteration: sample(weights, version) on every worker (concurrently)
//!            → learner.update(fragment refs, lr) → learner.publish()
//!            (async_sampling: the next batch's sample() runs during update)
//! ```
//!
//! - **Environments** are a trait ([`Env`]) with named implementations
//!   ([`CartPole`], [`Pendulum`]); observations are written into a buffer
//!   the caller owns so that a [`VecEnv`] steps K of them without
//!   allocating. `VecEnv` uses Gymnasium 1.x's default autoreset,
//!   `NEXT_STEP`: an environment whose episode ended is reset in the next
//!   call instead of stepped. The final observation thus stays in the batch
//!   for one step, and the worker values it in the same batched pass as the
//!   rest, which bootstraps truncated episodes correctly; those reset rows
//!   are marked invalid in the [`Fragment`] and never trained on.
//! - **Sampling** runs the policy in plain Rust ([`CpuPolicy`]): one
//!   batched matrix product per layer over the worker's K environments
//!   (`matrixmultiply`, runtime AVX2/FMA dispatch) and a rational `tanh`.
//!   Through libtorch, the dozen small operations of a forward pass cost
//!   microseconds of dispatch each, more than the environment step itself;
//!   the copy loads the learner's [`troupe::gpu::Weights`] by name after
//!   each update (the weight broadcast goes through the object store).
//! - **The learner** is an actor holding a `tch` model and a flat Adam on
//!   the device the runtime gave it: a GPU if the node has one, the CPU
//!   otherwise. The update is CleanRL's `ppo.py`: GAE, the clipped
//!   surrogate, optionally clipped value loss, entropy bonus, minibatch
//!   epochs (with CleanRL's optional KL early stop after each epoch),
//!   per-minibatch advantage normalisation, global gradient-norm clipping,
//!   linear learning-rate annealing over the run's budget, optional reward
//!   normalization (`normalize_rewards`), and a Gaussian log-std bounded
//!   to `[-5, 2]`. Adam is written out over one
//!   flat vector (PyTorch's arithmetic) so that its moments go into
//!   checkpoints and a step is a handful of tensor operations.
//! - **Supervision**: workers are children of their own one-for-one
//!   supervisor. A worker that panics mid-fragment answers the trainer's
//!   call with `ActorError::Panicked`; the supervisor restarts it (fresh
//!   environments, new seeds) and the trainer asks it for the fragment
//!   again. A worker silent past `sample_timeout` (a hung environment) is
//!   killed, replaced the same way and asked again. Each worker may fail
//!   `max_worker_restarts` times within `worker_restart_window` (OTP's
//!   restart intensity, per worker; the supervisor's intensity is the sum
//!   over workers); one more within the window, or a worker dead for good
//!   (`ActorDied`), ends training with an error, never a hang. Restarts and
//!   replacements are logged (`tracing` warnings) and counted
//!   (`troupe_rl_fragments_resampled_total`,
//!   `troupe_rl_workers_replaced_total`). An environment's *error* (a bad
//!   action, a NaN observation) is returned, not panicked: retrying cannot
//!   fix it, so training stops with an error naming the environment.
//! - **Threads**: a rollout (environment steps and policy inference) runs
//!   on a blocking thread (`spawn_blocking`), never on the runtime's async
//!   workers, so a slow environment cannot starve timers, the trainer's
//!   deadlines or other actors; a hung one holds its thread only (a thread
//!   stuck in user code cannot be stopped, and the runtime's shutdown
//!   waits for it). The learner's update and [`Trainer::evaluate`] run on
//!   blocking threads too.
//! - **Resources**: workers ask the runtime for `num_cpus_per_worker` CPUs
//!   and the learner for a GPU where there is one. The learner runs on the
//!   node that builds the trainer, and so do the workers (children of a
//!   supervisor there) by default.
//! - **Workers on any node**: with
//!   [`PpoConfig::workers_on_cluster`], on a runtime that joined a
//!   cluster, each worker is spawned on the cluster through its registered
//!   constructor [`RolloutWorker::on_node`] from a [`WorkerSetup`] (plain
//!   data: the environment's registered id, counts, policy shape, seed,
//!   index, incarnation), into bundle `i` of a placement group the trainer
//!   reserves (spread by default; see [`WorkerPlacement`]). Rust cannot
//!   send a closure to another process, so such workers make their
//!   environments by name: the built-ins, or yours registered with
//!   [`register_env!`] (every node runs the same program). A worker lost
//!   with its node, or that panics or hangs, is respawned by the trainer
//!   (its next incarnation, on a live node) and asked for the fragment
//!   again, within the same restart budget as local workers; its fragments
//!   are copied to the driver's store as they arrive, so that a node lost
//!   later loses nothing the learner needs.
//! - **Asynchronous sampling** ([`PpoConfig::async_sampling`]): the
//!   workers sample the next batch while the learner updates, with the
//!   weights from before the update; every batch but the first is exactly
//!   one update stale ([`IterationMetrics::policy_lag`]). Off by default:
//!   every fragment of an update is then sampled with the current weights.
//! - **Determinism**: every generator is seeded from `PpoConfig::seed`
//!   (environments, sampling, initial weights, minibatch order), each
//!   stream derived with [`mix_seed`], so a seed reproduces a run's
//!   randomness; for bit-identical arithmetic too, set
//!   `MKL_CBWR=COMPATIBLE` (libtorch's MKL picks kernels by alignment).
//!
//! ## Tuning
//!
//! With the `tune` feature, the module `tune` makes PPO a
//! [troupe-tune](https://docs.rs/troupe-tune) trainable: `PpoTrainable`
//! steps a trainer a few iterations at a time, reports its metrics by
//! name, and saves and restores through this crate's checkpoints (so a
//! trial that panics resumes training, and PBT's exploit copies a real
//! model and optimizer); `ppo_config` maps a trial's config onto a
//! [`PpoConfig`]. The `tune_ppo_cartpole` example tunes CartPole with ASHA
//! (or PBT).
//!
//! ## Checkpoints
//!
//! [`Trainer::save`] writes model, optimizer moments, config, counters and
//! the last 100 episodes into one file with a header (magic, format
//! version, length, CRC) and a self-describing CBOR payload, fsynced and
//! renamed into place (see [`checkpoint`]): config fields added later take
//! their defaults when an older file lacks them, and format-1 files are
//! still read. A restored trainer's policy acts exactly as the saved one
//! and training goes on from its counters, with the checkpoint's config
//! ([`Trainer::from_checkpoint`]) or another one that keeps the model's
//! shape ([`Trainer::from_checkpoint_with`], [`Trainer::load`]: more
//! workers, a longer budget); the environments start new episodes (their
//! states are not saved).

// The lint wall (CI denies warnings): no unsafe code but where a
// `SAFETY` comment allows it; every public item documented and truly
// public; no debugging leftovers; no `unwrap` outside tests.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod checkpoint;
mod config;
mod env;
mod error;
mod fragment;
mod learner;
mod normalize;
mod plot;
mod policy;
mod report;
mod sampling;
mod schedule;
mod space;
mod trainer;
#[cfg(feature = "tune")]
pub mod tune;
mod vec_env;
mod worker;

pub use checkpoint::{CheckpointError, Counters};
pub use config::{PpoConfig, WorkerPlacement};
pub use env::{CartPole, Env, EnvError, EnvMaker, EpisodeStats, Info, Pendulum, Transition};
pub use error::RlError;
pub use fragment::Fragment;
pub use learner::UpdateStats;
pub use plot::plot_learning_curve;
pub use policy::{ActMode, ActionHead, CpuPolicy, PolicyOutput, PolicyShape};
pub use report::{read_csv_log, CsvLog, IterationMetrics, Progress, Reporter};
pub use space::{Action, Actions, Space};
pub use trainer::{Evaluation, Stop, TrainSummary, Trainer, RETURN_WINDOW};
pub use vec_env::VecEnv;
pub use worker::{RolloutWorker, RolloutWorkerHandle, SampleError, WorkerSetup};

/// What `register_env!` expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::env::{boxed_env, EnvRegistration};
    pub use inventory;
}

/// A seed for one random stream, derived from the run's seed and the
/// stream's coordinates (SplitMix64 finalisation over each word), so that
/// streams of different workers, incarnations and updates never coincide.
pub fn mix_seed(seed: u64, words: &[u64]) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    words
        .iter()
        .fold(splitmix(seed), |acc, w| splitmix(acc ^ splitmix(*w)))
}
