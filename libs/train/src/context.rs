//! What a training loop gets: its rank, the world size, its device, its
//! shard of the data, the collectives, and `report`.

use std::path::PathBuf;
use std::sync::Arc;

use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use troupe::{Blob, ObjectRef, Pending, Runtime};

use crate::checkpoint::{self, Checkpoint};
use crate::collective::{Collectives, ReduceOp};
use crate::config::Settings;
use crate::error::TrainError;
use crate::remote::ReportSinkHandle;
use crate::report::Metrics;
use crate::trainer::RunState;

/// A worker's view of the training run, given to the training loop.
///
/// Every rank must make the same collective calls ([`all_reduce`],
/// [`broadcast`], [`barrier`], [`all_reduce_gradients`], [`report`]) in the
/// same order; a rank that fails aborts the others' calls with
/// [`TrainError::Aborted`], which the loop should return (`?`).
///
/// [`all_reduce`]: WorkerContext::all_reduce
/// [`broadcast`]: WorkerContext::broadcast
/// [`barrier`]: WorkerContext::barrier
/// [`all_reduce_gradients`]: WorkerContext::all_reduce_gradients
/// [`report`]: WorkerContext::report
pub struct WorkerContext {
    pub(crate) rank: usize,
    pub(crate) device: Device,
    pub(crate) attempt: u32,
    pub(crate) iteration: u64,
    pub(crate) group: Collectives,
    pub(crate) settings: Settings,
    pub(crate) reporter: Reporter,
    /// Rank 0's last report across nodes, sent and not yet confirmed.
    pub(crate) unconfirmed: Option<Pending<Result<(), String>>>,
    pub(crate) checkpoint: Option<StartFrom>,
    pub(crate) loop_config: Option<Arc<str>>,
    pub(crate) rt: Runtime,
}

/// Where rank 0's reports go: the run's state in this process, or the
/// trainer's sink on another node.
pub(crate) enum Reporter {
    Local(Arc<RunState>),
    Remote(ReportSinkHandle),
}

/// The checkpoint a worker starts from: a directory here, or one the
/// trainer read and sent (to a worker on another node).
pub(crate) enum StartFrom {
    Dir(PathBuf),
    Object(ObjectRef<Blob>),
}

impl WorkerContext {
    /// This worker's rank, `0..world_size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of workers.
    pub fn world_size(&self) -> usize {
        self.group.world()
    }

    /// Where this worker's model should live: a CUDA device when the
    /// trainer gives workers GPUs and libtorch sees one, else the CPU.
    pub fn device(&self) -> Device {
        self.device
    }

    /// 0 for the first run of the group, then one more after each restart.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Reports made so far in this run (the checkpoint's iteration after a
    /// restart or resume): the loop resumes its step count from it.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// The Troupe runtime, e.g. to fetch the objects of a shard with
    /// `runtime().get_blocking(&r)`.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The checkpoint to start from: the last one reported before a
    /// restart, or the one given to `resume_from`; `None` on a fresh start.
    /// Loaded from disk (onto the CPU) on each call.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, TrainError> {
        match &self.checkpoint {
            None => Ok(None),
            Some(StartFrom::Dir(path)) => checkpoint::load(path).map(Some),
            Some(StartFrom::Object(r)) => {
                let bytes = self.rt.get_blocking(r).map_err(|e| {
                    TrainError::Transport(format!("reading the checkpoint to start from: {e}"))
                })?;
                Checkpoint::decode(&bytes).map(Some)
            }
        }
    }

    /// The configuration given to
    /// [`fit_registered_with`](crate::Trainer::fit_registered_with) (a
    /// registered loop's parameters: a batch size, a data path), decoded.
    ///
    /// ```no_run
    /// #[derive(serde::Deserialize)]
    /// struct Params { batch: usize }
    ///
    /// troupe_train::register_train_loop!("with-params", |ctx| {
    ///     let params: Params = ctx.loop_config()?;
    ///     let _batches = ctx.shard_indices(1000, 0).chunks(params.batch).count();
    ///     Ok::<_, troupe_train::TrainError>(())
    /// });
    /// ```
    pub fn loop_config<T: serde::de::DeserializeOwned>(&self) -> Result<T, TrainError> {
        let json = self.loop_config.as_deref().ok_or_else(|| {
            TrainError::Config(
                "this loop was given no configuration; pass one to Trainer::fit_registered_with"
                    .to_owned(),
            )
        })?;
        serde_json::from_str(json).map_err(|e| {
            TrainError::Config(format!(
                "the loop's configuration does not decode as {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// This rank's shard of `0..len` for `epoch`: the indices shuffled with
    /// the trainer's seed and the epoch (the same permutation on every
    /// rank and for every world size), cut to a multiple of the world size
    /// (so that every rank makes the same number of steps), and every
    /// `world_size`-th one from position `rank`. So the ranks' `k`-th
    /// batches of size `b` together are the `k`-th batch of size
    /// `b * world_size` of one worker.
    pub fn shard_indices(&self, len: usize, epoch: u64) -> Vec<usize> {
        shard_indices(len, epoch, self.settings.seed, self.rank, self.world_size())
    }

    /// This rank's shard of `items` for `epoch` (see
    /// [`shard_indices`](Self::shard_indices)): a dataset's records, or a
    /// list of object refs to fetch with [`runtime`](Self::runtime).
    pub fn shard<T: Clone>(&self, items: &[T], epoch: u64) -> Vec<T> {
        self.shard_indices(items.len(), epoch)
            .into_iter()
            .map(|i| items[i].clone())
            .collect()
    }

    /// Replaces `tensor` on every rank by the sum (or mean) of all ranks'
    /// tensors, exactly as one process summing them in rank order would.
    pub fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), TrainError> {
        tch::no_grad(|| self.group.all_reduce(self.rank, tensor, op))
    }

    /// Replaces `tensor` on every rank by rank `root`'s.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), TrainError> {
        tch::no_grad(|| self.group.broadcast(self.rank, tensor, root))
    }

    /// Waits until every rank has called it.
    pub fn barrier(&self) -> Result<(), TrainError> {
        self.group.barrier(self.rank)
    }

    /// Averages the gradients of `vs`'s trainable variables over the ranks
    /// (call it after `backward`, before the optimizer's step): the
    /// variables, in name order, go in buckets of `bucket_bytes`, each
    /// all-reduced as one flat tensor. With equal local batches, N workers
    /// then take the step one worker takes on the N batches at once.
    pub fn all_reduce_gradients(&self, vs: &VarStore) -> Result<(), TrainError> {
        if self.world_size() == 1 {
            return Ok(());
        }
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let limit = self.settings.bucket_bytes;
        tch::no_grad(|| {
            let mut bucket: Vec<Tensor> = Vec::new();
            let mut bytes = 0;
            let mut kind: Option<Kind> = None;
            for (_, var) in &vars {
                let grad = var.grad();
                let grad = if grad.defined() {
                    grad
                } else {
                    // No gradient on this rank: contribute zeros, keep none.
                    var.f_zeros_like()?
                };
                let size = grad.numel() * grad.kind().elt_size_in_bytes();
                if !bucket.is_empty() && (bytes + size > limit || kind != Some(grad.kind())) {
                    self.reduce_bucket(std::mem::take(&mut bucket))?;
                    bytes = 0;
                }
                kind = Some(grad.kind());
                bytes += size;
                bucket.push(grad);
            }
            if !bucket.is_empty() {
                self.reduce_bucket(bucket)?;
            }
            Ok(())
        })
    }

    fn reduce_bucket(&self, grads: Vec<Tensor>) -> Result<(), TrainError> {
        let flats: Vec<Tensor> = grads
            .iter()
            .map(|g| g.f_reshape([-1]))
            .collect::<Result<_, _>>()?;
        let mut flat = Tensor::f_cat(&flats, 0)?;
        self.group
            .all_reduce(self.rank, &mut flat, ReduceOp::Mean)?;
        let mut offset = 0;
        for mut g in grads {
            let n = g.numel() as i64;
            let part = flat.f_narrow(0, offset, n)?.f_view_as(&g)?;
            g.f_copy_(&part)?;
            offset += n;
        }
        Ok(())
    }

    /// Copies rank `root`'s variables of `vs` to every rank (e.g. after
    /// building the model, so that every replica starts the same).
    pub fn broadcast_var_store(&self, vs: &VarStore, root: usize) -> Result<(), TrainError> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut var) in vars {
            self.broadcast(&mut var, root)?;
        }
        Ok(())
    }

    /// Reports this step's metrics, and maybe a checkpoint: a collective
    /// (every rank calls it once per step). Rank 0's checkpoint, if any, is
    /// written (atomically) and its metrics are in the history before any
    /// rank returns. Without a checkpoint, on a group across nodes, rank
    /// 0's metrics are sent and confirmed by its next report or at the
    /// loop's end (before `fit` returns), not waited for at each step.
    /// Other ranks' metrics and checkpoints are dropped, so they may pass
    /// `None`.
    pub fn report(
        &mut self,
        metrics: Metrics,
        checkpoint: Option<Checkpoint>,
    ) -> Result<(), TrainError> {
        self.iteration += 1;
        if self.rank == 0 {
            if let Err(e) = self.record(metrics, checkpoint) {
                self.group
                    .abort(&format!("rank 0 failed to record a report: {e}"));
                return Err(e);
            }
        }
        self.group.report(self.rank)
    }

    /// Rank 0's report, into the run's history (and its checkpoint onto
    /// the trainer's disk) before any rank leaves `report`. Across nodes,
    /// metrics alone are sent and not waited for: they cannot fail to be
    /// recorded, the trainer's sink takes reports in the order sent, and
    /// the next report (or the loop's end) confirms this one. That takes a
    /// round trip to the trainer off every step; a checkpoint is still
    /// waited for, so it is on disk before any rank leaves.
    fn record(
        &mut self,
        metrics: Metrics,
        checkpoint: Option<Checkpoint>,
    ) -> Result<(), TrainError> {
        let sink = match &self.reporter {
            Reporter::Local(run) => return run.record(self.iteration, metrics, checkpoint),
            Reporter::Remote(sink) => sink.clone(),
        };
        // The previous step's: in long ago, as a rule.
        self.confirm_reports()?;
        let Some(c) = checkpoint else {
            self.unconfirmed = Some(sink.record(self.iteration, metrics, None));
            return Ok(());
        };
        let stored = self
            .rt
            .put_blocking(Blob::from(c.encode()?))
            .map_err(|e| TrainError::Transport(format!("storing a checkpoint: {e}")))?;
        let reply = sink.record(self.iteration, metrics, Some(stored));
        self.await_record(reply)
    }

    /// Waits for the trainer to have recorded every report sent (at the
    /// loop's end, so the history is whole when the worker answers).
    pub(crate) fn confirm_reports(&mut self) -> Result<(), TrainError> {
        match self.unconfirmed.take() {
            Some(reply) => self.await_record(reply),
            None => Ok(()),
        }
    }

    fn await_record(&self, reply: Pending<Result<(), String>>) -> Result<(), TrainError> {
        let timeout = self.settings.collective_timeout;
        match self.rt.block_on(tokio::time::timeout(timeout, reply)) {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(TrainError::Transport(format!(
                "the trainer failed to record the report: {e}"
            ))),
            Ok(Err(e)) => Err(TrainError::Transport(format!(
                "sending the report to the trainer: {e}"
            ))),
            Err(_) => Err(TrainError::CollectiveTimeout(timeout)),
        }
    }
}

/// See [`WorkerContext::shard_indices`].
pub(crate) fn shard_indices(
    len: usize,
    epoch: u64,
    seed: u64,
    rank: usize,
    world: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(
        seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    for i in (1..len).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let usable = len - len % world.max(1);
    order
        .into_iter()
        .take(usable)
        .skip(rank)
        .step_by(world.max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::shard_indices;

    #[test]
    fn shards_partition_the_epoch_and_reshuffle() {
        let one = shard_indices(10, 3, 7, 0, 1);
        let a = shard_indices(10, 3, 7, 0, 2);
        let b = shard_indices(10, 3, 7, 1, 2);
        assert_eq!(a.len(), 5);
        assert_eq!(b.len(), 5);
        // Interleaved, they are one worker's epoch.
        let merged: Vec<usize> = a.iter().zip(&b).flat_map(|(x, y)| [*x, *y]).collect();
        assert_eq!(merged, one);
        let mut all = one.clone();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(
            one,
            shard_indices(10, 4, 7, 0, 1),
            "another epoch, another order"
        );
        assert_eq!(
            shard_indices(10, 0, 1, 2, 3).len(),
            3,
            "cut to a multiple of 3"
        );
    }
}
