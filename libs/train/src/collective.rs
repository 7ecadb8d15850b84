//! Collectives over the workers of one node: all-reduce, broadcast and
//! barrier on tch tensors through shared memory.
//!
//! The all-reduce is a reduce-scatter then an all-gather: every rank
//! publishes (a shallow view of) its flattened tensor; rank `r` sums chunk
//! `r` of every rank's tensor, **in rank order** `0, 1, ..., N-1`, into
//! chunk `r` of its own tensor (no other rank reads it in that phase);
//! then every rank copies the other ranks' reduced chunks into its tensor.
//! No buffer is allocated for two ranks, and the work runs on all ranks at
//! once. Summing in rank order makes the result bitwise equal to
//! the sequential sum `x0 + x1 + ... + xN-1` of one process, and identical on
//! every rank (the replicas of a model stay in lockstep).
//!
//! Every wait is abortable: a failing worker aborts the group, and the
//! others return [`TrainError::Aborted`] from their next (or current)
//! collective instead of waiting forever.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tch::Tensor;

use crate::error::TrainError;
use crate::mesh::Mesh;

/// How an all-reduce combines the ranks' tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise mean (the sum divided by the world size); floating-point
    /// tensors only.
    Mean,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct BarrierState {
    arrived: usize,
    generation: u64,
    aborted: Option<String>,
}

/// A reusable barrier that can be aborted and times out.
pub(crate) struct Barrier {
    n: usize,
    state: Mutex<BarrierState>,
    cv: Condvar,
    timeout: Duration,
}

impl Barrier {
    fn new(n: usize, timeout: Duration) -> Self {
        Barrier {
            n,
            state: Mutex::new(BarrierState {
                arrived: 0,
                generation: 0,
                aborted: None,
            }),
            cv: Condvar::new(),
            timeout,
        }
    }

    fn wait(&self) -> Result<(), TrainError> {
        let mut s = lock(&self.state);
        if let Some(why) = &s.aborted {
            return Err(TrainError::Aborted(why.clone()));
        }
        s.arrived += 1;
        if s.arrived == self.n {
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
            return Ok(());
        }
        let generation = s.generation;
        let deadline = Instant::now() + self.timeout;
        loop {
            if s.generation != generation {
                return Ok(());
            }
            if let Some(why) = &s.aborted {
                return Err(TrainError::Aborted(why.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                let why = format!("a collective timed out after {:?}", self.timeout);
                s.aborted = Some(why);
                self.cv.notify_all();
                return Err(TrainError::CollectiveTimeout(self.timeout));
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn abort(&self, why: &str) {
        let mut s = lock(&self.state);
        if s.aborted.is_none() {
            s.aborted = Some(why.to_owned());
        }
        self.cv.notify_all();
    }
}

/// The shared state of one attempt's worker group on this node.
pub(crate) struct Group {
    world: usize,
    inputs: Vec<Mutex<Option<Tensor>>>,
    /// Each rank's collective calls so far and the kind of its last one:
    /// checked on entry, so that ranks whose calls differ fail at once.
    calls: Vec<Mutex<(u64, &'static str)>>,
    barrier: Barrier,
}

/// `[start, start + len)` of chunk `c` of `numel` elements in `world` chunks.
pub(crate) fn chunk(numel: i64, world: usize, c: usize) -> (i64, i64) {
    let w = world as i64;
    let c = c as i64;
    let (base, extra) = (numel / w, numel % w);
    let start = c * base + c.min(extra);
    let len = base + i64::from(c < extra);
    (start, len)
}

impl Group {
    pub(crate) fn new(world: usize, timeout: Duration) -> Self {
        Group {
            world,
            inputs: (0..world).map(|_| Mutex::new(None)).collect(),
            calls: (0..world).map(|_| Mutex::new((0, ""))).collect(),
            barrier: Barrier::new(world, timeout),
        }
    }

    pub(crate) fn world(&self) -> usize {
        self.world
    }

    /// Makes every waiting and later collective fail with `Aborted(why)`.
    pub(crate) fn abort(&self, why: &str) {
        self.barrier.abort(why);
    }

    /// Waits until every rank has called it.
    pub(crate) fn barrier(&self, rank: usize) -> Result<(), TrainError> {
        if self.world > 1 {
            self.enter(rank, "barrier")?;
        }
        self.barrier.wait()
    }

    /// Enters collective `op`: waits for every rank and checks that each
    /// is at the same call, of the same kind. Every collective waits at
    /// least once more before a rank can enter the next one, so no rank
    /// changes its record while another still reads it.
    fn enter(&self, rank: usize, op: &'static str) -> Result<(), TrainError> {
        let mine = {
            let mut call = lock(&self.calls[rank]);
            *call = (call.0 + 1, op);
            *call
        };
        self.barrier.wait()?;
        for (i, theirs) in self.calls.iter().enumerate() {
            let theirs = *lock(theirs);
            if theirs != mine {
                let e = TrainError::Mismatch(format!(
                    "rank {rank}'s collective call #{} is {}, rank {i}'s is #{} {}",
                    mine.0, mine.1, theirs.0, theirs.1
                ));
                self.abort(&e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }

    /// A report's wait: every rank leaves once rank 0 has recorded it.
    pub(crate) fn report(&self, rank: usize) -> Result<(), TrainError> {
        if self.world > 1 {
            self.enter(rank, "report")?;
        }
        self.barrier.wait()
    }

    /// The other ranks' published tensors, checked against ours.
    fn check_inputs(&self, rank: usize, mine: &Tensor) -> Result<(), TrainError> {
        for (i, slot) in self.inputs.iter().enumerate() {
            if i == rank {
                continue;
            }
            let slot = lock(slot);
            let Some(t) = slot.as_ref() else {
                return Err(TrainError::Mismatch(format!(
                    "rank {i} published no tensor"
                )));
            };
            if t.numel() != mine.numel() || t.kind() != mine.kind() {
                return Err(TrainError::Mismatch(format!(
                    "rank {rank} has {} elements of {:?}, rank {i} has {} of {:?}",
                    mine.numel(),
                    mine.kind(),
                    t.numel(),
                    t.kind()
                )));
            }
        }
        Ok(())
    }

    /// A view of chunk `[start, start+len)` of rank `i`'s published tensor.
    fn input_chunk(&self, i: usize, start: i64, len: i64) -> Result<Tensor, TrainError> {
        let slot = lock(&self.inputs[i]);
        let t = slot
            .as_ref()
            .ok_or_else(|| TrainError::Mismatch(format!("rank {i} published no tensor")))?;
        Ok(t.f_narrow(0, start, len)?)
    }

    /// Replaces `tensor` on every rank by the reduction of all ranks'.
    pub(crate) fn all_reduce(
        &self,
        rank: usize,
        tensor: &mut Tensor,
        op: ReduceOp,
    ) -> Result<(), TrainError> {
        if op == ReduceOp::Mean && !tensor.is_floating_point() {
            self.abort("an all-reduce mean of an integer tensor");
            return Err(TrainError::Mismatch(format!(
                "ReduceOp::Mean needs a floating-point tensor, got {:?}; use Sum",
                tensor.kind()
            )));
        }
        if self.world == 1 {
            return Ok(());
        }
        let started = Instant::now();
        let flat = tensor.f_contiguous()?.f_reshape([-1])?;
        let numel = flat.numel() as i64;
        *lock(&self.inputs[rank]) = Some(flat.shallow_clone());
        self.enter(rank, "all_reduce")?;
        // Reduce-scatter: this rank sums its chunk of every input, in rank
        // order, into that chunk of its own tensor (which only it reads).
        let step = self.check_inputs(rank, &flat).and_then(|()| {
            let (start, len) = chunk(numel, self.world, rank);
            let device = flat.device();
            let part = |i: usize| -> Result<Tensor, TrainError> {
                let p = self.input_chunk(i, start, len)?;
                Ok(if p.device() == device {
                    p
                } else {
                    p.f_to(device)?
                })
            };
            let own = flat.f_narrow(0, start, len)?;
            let last = self.world - 1;
            if self.world == 2 {
                let _ = part(0)?.f_add_out(&own, &part(1)?)?;
            } else {
                let mut acc = part(0)?.f_add(&part(1)?)?;
                for i in 2..last {
                    let _ = acc.f_add_(&part(i)?)?;
                }
                let _ = acc.f_add_out(&own, &part(last)?)?;
            }
            if op == ReduceOp::Mean {
                let _ = own.shallow_clone().f_div_scalar_(self.world as f64)?;
            }
            Ok(())
        });
        if let Err(e) = step {
            self.abort(&e.to_string());
            return Err(e);
        }
        self.barrier.wait()?;
        // All-gather: every rank copies the other ranks' reduced chunks
        // (chunk c lives in rank c's tensor) into its own.
        let gathered = (0..self.world).filter(|c| *c != rank).try_for_each(|c| {
            let (start, len) = chunk(numel, self.world, c);
            let part = self.input_chunk(c, start, len)?;
            let mut dst = flat.f_narrow(0, start, len)?;
            dst.f_copy_(&part)?;
            Ok::<(), TrainError>(())
        });
        if let Err(e) = gathered {
            self.abort(&e.to_string());
            return Err(e);
        }
        // Nobody may publish the next inputs before all have gathered.
        self.barrier.wait()?;
        *lock(&self.inputs[rank]) = None;
        if flat.data_ptr() != tensor.data_ptr() || !tensor.is_contiguous() {
            tensor.f_copy_(&flat.f_view_as(tensor)?)?;
        }
        crate::metrics::allreduce_bytes(flat.numel() * flat.kind().elt_size_in_bytes());
        crate::metrics::allreduce_seconds("shared_memory", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Replaces `tensor` on every rank by `root`'s.
    pub(crate) fn broadcast(
        &self,
        rank: usize,
        tensor: &mut Tensor,
        root: usize,
    ) -> Result<(), TrainError> {
        if root >= self.world {
            self.abort("a broadcast from a rank outside the group");
            return Err(TrainError::Mismatch(format!(
                "broadcast root {root} is not a rank of a group of {}",
                self.world
            )));
        }
        if self.world == 1 {
            return Ok(());
        }
        if rank == root {
            *lock(&self.inputs[rank]) = Some(tensor.shallow_clone());
        }
        self.enter(rank, "broadcast")?;
        if rank != root {
            let copied = (|| {
                let src = lock(&self.inputs[root])
                    .as_ref()
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| {
                        TrainError::Mismatch(format!("root {root} published nothing"))
                    })?;
                if src.size() != tensor.size() || src.kind() != tensor.kind() {
                    return Err(TrainError::Mismatch(format!(
                        "broadcast root {root} has {:?} {:?}, rank {rank} has {:?} {:?}",
                        src.size(),
                        src.kind(),
                        tensor.size(),
                        tensor.kind()
                    )));
                }
                tensor.f_copy_(&src)?;
                Ok(())
            })();
            if let Err(e) = copied {
                self.abort(&e.to_string());
                return Err(e);
            }
        }
        self.barrier.wait()?;
        if rank == root {
            *lock(&self.inputs[rank]) = None;
        }
        Ok(())
    }
}

/// A worker's group: in this process (shared memory), or spread over
/// processes (`mesh.rs`, over the transport).
#[derive(Clone)]
pub(crate) enum Collectives {
    Local(Arc<Group>),
    Mesh(Arc<Mesh>),
}

impl Collectives {
    pub(crate) fn world(&self) -> usize {
        match self {
            Collectives::Local(g) => g.world(),
            Collectives::Mesh(m) => m.world(),
        }
    }

    /// Makes every waiting and later collective of the attempt fail with
    /// `Aborted(why)`, on every rank.
    pub(crate) fn abort(&self, why: &str) {
        match self {
            Collectives::Local(g) => g.abort(why),
            Collectives::Mesh(m) => m.abort(why),
        }
    }

    pub(crate) fn barrier(&self, rank: usize) -> Result<(), TrainError> {
        match self {
            Collectives::Local(g) => g.barrier(rank),
            Collectives::Mesh(m) => m.barrier("barrier"),
        }
    }

    pub(crate) fn report(&self, rank: usize) -> Result<(), TrainError> {
        match self {
            Collectives::Local(g) => g.report(rank),
            Collectives::Mesh(m) => m.barrier("report"),
        }
    }

    pub(crate) fn all_reduce(
        &self,
        rank: usize,
        tensor: &mut Tensor,
        op: ReduceOp,
    ) -> Result<(), TrainError> {
        if op == ReduceOp::Mean && !tensor.is_floating_point() {
            let e = TrainError::Mismatch(format!(
                "ReduceOp::Mean needs a floating-point tensor, got {:?}; use Sum",
                tensor.kind()
            ));
            self.abort(&e.to_string());
            return Err(e);
        }
        match self {
            Collectives::Local(g) => g.all_reduce(rank, tensor, op),
            Collectives::Mesh(_) if self.world() == 1 => Ok(()),
            Collectives::Mesh(m) => m.all_reduce(tensor, op),
        }
    }

    pub(crate) fn broadcast(
        &self,
        rank: usize,
        tensor: &mut Tensor,
        root: usize,
    ) -> Result<(), TrainError> {
        if root >= self.world() {
            let e = TrainError::Mismatch(format!(
                "broadcast root {root} is not a rank of a group of {}",
                self.world()
            ));
            self.abort(&e.to_string());
            return Err(e);
        }
        match self {
            Collectives::Local(g) => g.broadcast(rank, tensor, root),
            Collectives::Mesh(_) if self.world() == 1 => Ok(()),
            Collectives::Mesh(m) => m.broadcast(tensor, root),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk;

    #[test]
    fn chunks_cover_the_tensor_exactly() {
        for numel in [0i64, 1, 2, 7, 100, 101] {
            for world in 1..5 {
                let mut next = 0;
                for c in 0..world {
                    let (start, len) = chunk(numel, world, c);
                    assert_eq!(start, next);
                    next += len;
                }
                assert_eq!(next, numel);
            }
        }
    }
}
