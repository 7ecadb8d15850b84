//! Collectives between workers in different processes (on any nodes of a
//! cluster), over Troupe's own transport: every worker has an [`Inbox`]
//! actor on its node, and the workers send each other their chunks as
//! calls to those inboxes. A chunk up to [`INLINE_BYTES`] travels inside
//! the call; a larger one is put in the sender's object store and its ref
//! travels, so its bytes take the data path.
//!
//! The all-reduce is the same reduce-scatter then all-gather as the
//! one-process group's (`collective.rs`): rank `r` owns chunk `r`, receives
//! it from every other rank, sums the parts **in rank order** and sends
//! the sum back to every rank. So the result is bitwise the sum one process
//! makes in rank order, on every rank. Each rank sends and receives
//! `(N-1)/N` of the tensor in each phase, as a ring all-reduce does, in
//! two rounds instead of a ring's `2(N-1)`; what a ring adds (only ever
//! talking to neighbours) matters for large groups, not for the few
//! workers of a data-parallel job here.
//!
//! Message flow of one all-reduce (N = 3, rank 0's view):
//! `deliver(chunk 1) → rank 1`, `deliver(chunk 2) → rank 2`; wait for
//! chunk 0 from ranks 1 and 2; sum `c0 + c1 + c2`; `deliver(sum 0) → 1, 2`;
//! wait for sums 1 and 2; every call's reply is awaited before returning.
//!
//! Every message names its attempt, its collective's number, kind, size and
//! element kind: a message of an earlier attempt is dropped, and one whose
//! call differs from the receiver's fails both with a mismatch. Every wait
//! has a deadline (`collective_timeout`) and ends at once when the group is
//! aborted: by a failing rank, which tells every inbox, or by the trainer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use troupe::{Blob, ObjectRef, Pending, Runtime};

use crate::byte_view::{bytes_of, BlobTensor};
use crate::collective::{chunk, ReduceOp};
use crate::error::TrainError;

/// Chunks up to this size travel inside the call (control frames are at
/// most 1 MiB); larger ones through the object store and the data path.
pub(crate) const INLINE_BYTES: usize = 256 << 10;

/// A chunk travels in pieces of at most this size, pulled at once: the
/// receiver copies one piece in while the next ones are still on the wire.
/// (100 MB all-reduced by 2 ranks on two nodes of the 2-vCPU VM: 1 to
/// 4 MiB pieces 0.42-0.45 GB/s, 8 MiB 0.39, one piece per chunk 0.30.)
pub(crate) const PIECE_BYTES: usize = 2 << 20;

/// The pieces of a chunk of `numel` elements of `elt` bytes: `[start, len)`
/// each (one empty piece for an empty chunk).
fn pieces(numel: i64, elt: usize) -> Vec<(i64, i64)> {
    let per = (PIECE_BYTES / elt.max(1)).max(1) as i64;
    let mut out = Vec::new();
    let mut start = 0;
    while start < numel || out.is_empty() {
        let len = per.min(numel - start);
        out.push((start, len));
        start += len;
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which collective a message belongs to: its number in the attempt, its
/// kind, and the tensor's size and element kind (checked on receipt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Call {
    number: u64,
    op: String,
    numel: i64,
    kind: String,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} of {} {}",
            self.number, self.op, self.numel, self.kind
        )
    }
}

/// A chunk's bytes, inline or in the sender's store.
#[derive(Serialize, Deserialize)]
pub(crate) enum Payload {
    Empty,
    Inline(Blob),
    Stored(ObjectRef<Blob>),
}

/// One message between two ranks.
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope {
    attempt: u32,
    from: usize,
    phase: u8,
    piece: u32,
    call: Call,
    payload: Payload,
}

struct InboxInner {
    attempt: u32,
    aborted: Option<String>,
    arrived: HashMap<(u64, u8, usize, u32), Envelope>,
}

/// What an inbox received and not yet taken, shared between its actor and
/// the worker's loop.
pub(crate) struct InboxState {
    inner: Mutex<InboxInner>,
    cv: Condvar,
}

impl InboxState {
    pub(crate) fn new(attempt: u32) -> Arc<Self> {
        Arc::new(InboxState {
            inner: Mutex::new(InboxInner {
                attempt,
                aborted: None,
                arrived: HashMap::new(),
            }),
            cv: Condvar::new(),
        })
    }

    fn put(&self, envelope: Envelope) {
        let mut inner = lock(&self.inner);
        if envelope.attempt != inner.attempt || inner.aborted.is_some() {
            return; // an earlier attempt's, or nobody will take it
        }
        let key = (
            envelope.call.number,
            envelope.phase,
            envelope.from,
            envelope.piece,
        );
        inner.arrived.insert(key, envelope);
        self.cv.notify_all();
    }

    pub(crate) fn abort(&self, why: &str) {
        let mut inner = lock(&self.inner);
        if inner.aborted.is_none() {
            inner.aborted = Some(why.to_owned());
        }
        inner.arrived.clear();
        self.cv.notify_all();
    }

    fn take(
        &self,
        key: (u64, u8, usize, u32),
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Envelope, TrainError> {
        let mut inner = lock(&self.inner);
        loop {
            if let Some(why) = &inner.aborted {
                return Err(TrainError::Aborted(why.clone()));
            }
            if let Some(envelope) = inner.arrived.remove(&key) {
                return Ok(envelope);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TrainError::CollectiveTimeout(timeout));
            }
            inner = self
                .cv
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A worker's inbox: other ranks' chunks for it arrive as calls.
pub(crate) struct Inbox {
    state: Arc<InboxState>,
}

impl Inbox {
    /// A new inbox for `attempt` on this node, and what it fills.
    pub(crate) async fn start(
        rt: &Runtime,
        attempt: u32,
    ) -> Result<(InboxHandle, Arc<InboxState>), troupe::SpawnError> {
        let state = InboxState::new(attempt);
        let shared = state.clone();
        let inbox = rt
            .spawn_actor(troupe::ActorOptions::new(), move || Inbox {
                state: shared.clone(),
            })
            .await?;
        Ok((inbox, state))
    }
}

#[troupe::actor]
impl Inbox {
    /// A message from another rank.
    pub(crate) fn deliver(&mut self, envelope: Envelope) {
        self.state.put(envelope);
    }

    /// Fails this rank's current and later collectives of the attempt.
    pub(crate) fn abort(&mut self, why: String) {
        self.state.abort(&why);
    }
}

/// One rank's end of a group whose ranks may be in other processes.
pub(crate) struct Mesh {
    rank: usize,
    attempt: u32,
    peers: Vec<InboxHandle>,
    inbox: Arc<InboxState>,
    rt: Runtime,
    timeout: Duration,
    calls: AtomicU64,
}

impl Mesh {
    pub(crate) fn new(
        rank: usize,
        attempt: u32,
        peers: Vec<InboxHandle>,
        inbox: Arc<InboxState>,
        rt: Runtime,
        timeout: Duration,
    ) -> Self {
        Mesh {
            rank,
            attempt,
            peers,
            inbox,
            rt,
            timeout,
            calls: AtomicU64::new(0),
        }
    }

    pub(crate) fn world(&self) -> usize {
        self.peers.len()
    }

    /// Fails every rank's current and later collectives of this attempt.
    pub(crate) fn abort(&self, why: &str) {
        self.inbox.abort(why);
        for (i, peer) in self.peers.iter().enumerate() {
            if i != self.rank {
                peer.abort(why.to_owned()).detach();
            }
        }
    }

    /// Aborts the group with `e` unless `e` is an abort already.
    fn failed(&self, e: TrainError) -> TrainError {
        if !matches!(e, TrainError::Aborted(_)) {
            self.abort(&format!("rank {}: {e}", self.rank));
        }
        e
    }

    fn next_call(&self, op: &str, t: Option<&Tensor>) -> Call {
        Call {
            number: self.calls.fetch_add(1, Ordering::Relaxed) + 1,
            op: op.to_owned(),
            numel: t.map_or(0, |t| t.numel() as i64),
            kind: t.map_or_else(String::new, |t| format!("{:?}", t.kind())),
        }
    }

    /// Sends `part` (or nothing) to rank `to`, in pieces; the replies to
    /// await go into `sends`.
    fn send(
        &self,
        sends: &mut Vec<(usize, Pending<()>)>,
        to: usize,
        phase: u8,
        call: &Call,
        part: Option<&Tensor>,
    ) -> Result<(), TrainError> {
        let envelope = |piece: usize, payload: Payload| Envelope {
            attempt: self.attempt,
            from: self.rank,
            phase,
            piece: piece as u32,
            call: call.clone(),
            payload,
        };
        let Some(part) = part else {
            sends.push((to, self.peers[to].deliver(envelope(0, Payload::Empty))));
            return Ok(());
        };
        // On the CPU and compact once; each piece's bytes are then copied
        // once, straight into a store buffer (or the call, if small).
        let flat = part.f_to(Device::Cpu)?.f_contiguous()?.f_reshape([-1])?;
        let elt = flat.kind().elt_size_in_bytes();
        for (i, (start, len)) in pieces(flat.numel() as i64, elt).into_iter().enumerate() {
            let piece = flat.f_narrow(0, start, len)?;
            let bytes = bytes_of(&piece)?;
            let payload = if bytes.len() <= INLINE_BYTES {
                Payload::Inline(Blob::from(bytes.to_vec()))
            } else {
                let stored = self.rt.block_on(self.rt.put_bytes(bytes)).map_err(|e| {
                    TrainError::Transport(format!("putting a chunk in the store: {e}"))
                })?;
                Payload::Stored(stored)
            };
            sends.push((to, self.peers[to].deliver(envelope(i, payload))));
        }
        Ok(())
    }

    /// Rank `from`'s message of `call` and `phase`, a chunk of `numel`
    /// elements of `kind`: `each(start, piece)` for every piece as it
    /// arrives, in order, `piece` on `device` (on the CPU, a view of the
    /// received bytes: read it, never keep it). An empty message is a
    /// barrier's (`numel` 0); anywhere else it is a mismatch.
    #[allow(clippy::too_many_arguments)]
    fn receive(
        &self,
        from: usize,
        phase: u8,
        call: &Call,
        numel: i64,
        kind: Kind,
        device: Device,
        mut each: impl FnMut(i64, &Tensor) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let deadline = Instant::now() + self.timeout;
        let parts = pieces(numel, kind.elt_size_in_bytes());
        let mut payloads = Vec::with_capacity(parts.len());
        for piece in 0..parts.len() {
            let key = (call.number, phase, from, piece as u32);
            let envelope = self.inbox.take(key, deadline, self.timeout)?;
            if envelope.call != *call {
                return Err(TrainError::Mismatch(format!(
                    "rank {}'s collective call is {call}, rank {from}'s is {}",
                    self.rank, envelope.call
                )));
            }
            payloads.push(envelope.payload);
        }
        if let [Payload::Empty] = payloads.as_slice() {
            return match numel {
                0 => Ok(()),
                _ => Err(TrainError::Mismatch(format!(
                    "rank {from} sent nothing where {numel} elements were due"
                ))),
            };
        }
        let rt = &self.rt;
        rt.block_on(async {
            // Every piece pulled at once; each used as it arrives.
            let mut pulls: futures::stream::FuturesOrdered<_> = payloads
                .into_iter()
                .map(|payload| async move {
                    match payload {
                        Payload::Empty => Err(TrainError::Mismatch(format!(
                            "rank {from} sent a piece without bytes"
                        ))),
                        Payload::Inline(bytes) => Ok(Arc::new(bytes)),
                        Payload::Stored(r) => rt.get(&r).await.map_err(|e| {
                            TrainError::Transport(format!("reading rank {from}'s chunk: {e}"))
                        }),
                    }
                })
                .collect();
            let mut next = parts.iter();
            while let Some(bytes) = futures::StreamExt::next(&mut pulls).await {
                let bytes = bytes?;
                let Some(&(start, len)) = next.next() else {
                    break;
                };
                let view = BlobTensor::new(bytes, len, kind).map_err(|e| match e {
                    TrainError::Mismatch(m) => TrainError::Mismatch(format!("rank {from}: {m}")),
                    e => e,
                })?;
                if device == Device::Cpu {
                    each(start, view.tensor())?;
                } else {
                    each(start, &view.tensor().f_to(device)?)?;
                }
            }
            Ok::<_, TrainError>(())
        })
    }

    /// Waits for the replies of `sends` (each within the timeout).
    fn settle(&self, sends: Vec<(usize, Pending<()>)>) -> Result<(), TrainError> {
        let timeout = self.timeout;
        self.rt.block_on(async move {
            for (to, reply) in sends {
                match tokio::time::timeout(timeout, reply).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(TrainError::Transport(format!("sending to rank {to}: {e}")))
                    }
                    Err(_) => return Err(TrainError::CollectiveTimeout(timeout)),
                }
            }
            Ok(())
        })
    }

    /// Waits until every rank has made this call (`op`: its name, checked).
    pub(crate) fn barrier(&self, op: &str) -> Result<(), TrainError> {
        let call = self.next_call(op, None);
        self.exchange_empty(&call).map_err(|e| self.failed(e))
    }

    fn exchange_empty(&self, call: &Call) -> Result<(), TrainError> {
        let mut sends = Vec::with_capacity(self.world());
        for to in (0..self.world()).filter(|i| *i != self.rank) {
            self.send(&mut sends, to, 0, call, None)?;
        }
        for from in (0..self.world()).filter(|i| *i != self.rank) {
            self.receive(from, 0, call, 0, Kind::Uint8, Device::Cpu, |_, _| Ok(()))?;
        }
        self.settle(sends)
    }

    /// Replaces `tensor` on every rank by the reduction of all ranks'.
    pub(crate) fn all_reduce(&self, tensor: &mut Tensor, op: ReduceOp) -> Result<(), TrainError> {
        let started = Instant::now();
        let flat = tensor.f_contiguous()?.f_reshape([-1])?;
        let call = self.next_call("all_reduce", Some(&flat));
        self.reduce(&flat, &call, op).map_err(|e| self.failed(e))?;
        if flat.data_ptr() != tensor.data_ptr() || !tensor.is_contiguous() {
            tensor.f_copy_(&flat.f_view_as(tensor)?)?;
        }
        crate::metrics::allreduce_bytes(flat.numel() * flat.kind().elt_size_in_bytes());
        crate::metrics::allreduce_seconds("transport", started.elapsed().as_secs_f64());
        Ok(())
    }

    fn reduce(&self, flat: &Tensor, call: &Call, op: ReduceOp) -> Result<(), TrainError> {
        let world = self.world();
        let numel = flat.numel() as i64;
        let (kind, device) = (flat.kind(), flat.device());
        // Reduce-scatter: chunk c to its owner, rank c.
        let mut sends = Vec::with_capacity(2 * world);
        for to in (0..world).filter(|i| *i != self.rank) {
            let (start, len) = chunk(numel, world, to);
            let part = flat.f_narrow(0, start, len)?;
            self.send(&mut sends, to, 1, call, Some(&part))?;
        }
        let (start, len) = chunk(numel, world, self.rank);
        let own = flat.f_narrow(0, start, len)?;
        self.sum_in_rank_order(&own, call)?;
        if op == ReduceOp::Mean {
            let _ = own.shallow_clone().f_div_scalar_(world as f64)?;
        }
        // All-gather: this rank's sum to every rank, theirs into ours.
        for to in (0..world).filter(|i| *i != self.rank) {
            self.send(&mut sends, to, 2, call, Some(&own))?;
        }
        for from in (0..world).filter(|i| *i != self.rank) {
            let (start, len) = chunk(numel, world, from);
            let sum = flat.f_narrow(0, start, len)?;
            self.receive(from, 2, call, len, kind, device, |at, piece| {
                sum.f_narrow(0, at, piece.size()[0])?.f_copy_(piece)?;
                Ok(())
            })?;
        }
        self.settle(sends)
    }

    /// Replaces `own` (this rank's chunk) by the sum of every rank's,
    /// `c0 + c1 + ... + c(N-1)` left to right as one process sums, each
    /// received piece read in place. The partial sum lives in `own` from
    /// this rank's turn on (rank 1 starts with `c0 + own` in one pass);
    /// before it, from rank 2 on, in a buffer of its own.
    fn sum_in_rank_order(&self, own: &Tensor, call: &Call) -> Result<(), TrainError> {
        let (len, kind, device) = (own.size()[0], own.kind(), own.device());
        let early = if self.rank >= 2 {
            Some(own.f_empty_like()?)
        } else {
            None
        };
        for i in 0..self.world() {
            if i == self.rank {
                if let Some(early) = &early {
                    let _ = early.f_add_out(own, own)?; // own = (c0 + .. + c(i-1)) + own
                }
                continue;
            }
            self.receive(i, 1, call, len, kind, device, |at, piece| {
                let n = piece.size()[0];
                let mine = own.f_narrow(0, at, n)?;
                match (&early, i) {
                    (Some(early), 0) => {
                        early.f_narrow(0, at, n)?.f_copy_(piece)?;
                    }
                    (None, 0) => {
                        let _ = piece.f_add_out(&mine, &mine)?; // own = c0 + own
                    }
                    (Some(early), i) if i < self.rank => {
                        let _ = early.f_narrow(0, at, n)?.f_add_(piece)?;
                    }
                    _ => {
                        let _ = mine.shallow_clone().f_add_(piece)?;
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Replaces `tensor` on every rank by `root`'s.
    pub(crate) fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), TrainError> {
        let call = self.next_call("broadcast", Some(tensor));
        let world = self.world();
        let done = if self.rank == root {
            (|| {
                let mut sends = Vec::with_capacity(world);
                for to in (0..world).filter(|i| *i != root) {
                    self.send(&mut sends, to, 1, &call, Some(tensor))?;
                }
                self.settle(sends)
            })()
        } else {
            (|| {
                let numel = tensor.numel() as i64;
                let into = if tensor.is_contiguous() {
                    tensor.f_view([-1])?
                } else {
                    Tensor::f_empty([numel], (tensor.kind(), tensor.device()))?
                };
                let (kind, device) = (tensor.kind(), tensor.device());
                self.receive(root, 1, &call, numel, kind, device, |at, piece| {
                    into.f_narrow(0, at, piece.size()[0])?.f_copy_(piece)?;
                    Ok(())
                })?;
                if !tensor.is_contiguous() {
                    tensor.f_copy_(&into.f_view_as(tensor)?)?;
                }
                Ok(())
            })()
        };
        done.map_err(|e| self.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe::prelude::*;

    /// `world` meshes in this process (their inboxes local actors), as
    /// the workers of one attempt.
    async fn meshes(rt: &Runtime, world: usize, attempt: u32) -> Vec<Arc<Mesh>> {
        let mut states = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..world {
            let (inbox, state) = Inbox::start(rt, attempt).await.expect("an inbox starts");
            states.push(state);
            inboxes.push(inbox);
        }
        states
            .into_iter()
            .enumerate()
            .map(|(rank, state)| {
                Arc::new(Mesh::new(
                    rank,
                    attempt,
                    inboxes.clone(),
                    state,
                    rt.clone(),
                    Duration::from_secs(30),
                ))
            })
            .collect()
    }

    /// Rank `rank`'s input: its own generator (libtorch's is global, and
    /// the ranks run at once).
    fn input(rank: usize, size: i64, kind: Kind) -> Tensor {
        let mut s = (rank as u64 + 1) * 0x9E37_79B9 + size as u64 * 31;
        let values: Vec<f64> = (0..size)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                (u - 0.5) * 1e3 / (1.0 + 7.0 * u)
            })
            .collect();
        let t = Tensor::from_slice(&values);
        match kind {
            Kind::Int64 => t.round().to_kind(kind),
            _ => t.to_kind(kind),
        }
    }

    /// Runs `f` as every rank, each on a thread of its own; each rank's
    /// result.
    fn on_every_rank<T: Send + 'static>(
        meshes: &[Arc<Mesh>],
        f: impl Fn(&Mesh) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let threads: Vec<_> = meshes
            .iter()
            .map(|m| {
                let (m, f) = (m.clone(), f.clone());
                std::thread::spawn(move || f(&m))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a rank's thread"))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_reduce_over_inboxes_is_bitwise_the_sum_in_rank_order() {
        let rt = troupe::init(Config::default()).await.expect("a runtime");
        // The two largest travel through the object store, the largest in
        // more than one piece.
        let stored = (INLINE_BYTES / 4 + 1000) as i64;
        let pieces = (PIECE_BYTES / 4 * 2 + 77) as i64;
        // Rank 2 of 3 and of 4 sums its first operands aside, rank 2 of 4
        // then adds a later rank's in place.
        for world in [2, 3, 4] {
            let group = meshes(&rt, world, 0).await;
            let results = tokio::task::spawn_blocking(move || {
                on_every_rank(&group, move |m| {
                    let mut out = Vec::new();
                    for size in [1, 7, 1001, stored, pieces] {
                        for kind in [Kind::Float, Kind::Double, Kind::Int64] {
                            let mut t = input(m.rank, size, kind);
                            m.all_reduce(&mut t, ReduceOp::Sum).expect("all-reduce");
                            out.push((size, kind, t));
                        }
                    }
                    let mut x = Tensor::from(m.rank as f64 + 1.0);
                    m.broadcast(&mut x, world - 1).expect("broadcast");
                    m.barrier("barrier").expect("barrier");
                    (out, x.double_value(&[]))
                })
            })
            .await
            .expect("the ranks");
            for (rank, (out, root)) in results.into_iter().enumerate() {
                assert_eq!(root, world as f64, "rank {rank} has the root's value");
                for (size, kind, t) in out {
                    let mut want = input(0, size, kind);
                    for r in 1..world {
                        want += input(r, size, kind);
                    }
                    assert!(
                        t.equal(&want),
                        "rank {rank} of {world}: {size} {kind:?} is not the sum in rank order"
                    );
                }
            }
        }
        rt.shutdown().await.expect("shuts down");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mismatch_or_an_abort_fails_every_rank_instead_of_hanging() {
        let rt = troupe::init(Config::default()).await.expect("a runtime");
        let group = meshes(&rt, 2, 0).await;
        let results = tokio::task::spawn_blocking(move || {
            on_every_rank(&group, |m| {
                let mut t = Tensor::zeros([3 + m.rank as i64], (Kind::Float, Device::Cpu));
                m.all_reduce(&mut t, ReduceOp::Sum).map(|_| ())
            })
        })
        .await
        .expect("the ranks");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(TrainError::Mismatch(m)) if m.contains("all_reduce"))),
            "{results:?}"
        );
        assert!(results.iter().all(Result::is_err), "{results:?}");

        // A rank that never comes: the other leaves when the group is
        // aborted (as the trainer does when a node dies).
        let group = meshes(&rt, 2, 1).await;
        let waiting = group[0].clone();
        let blocked = tokio::task::spawn_blocking(move || waiting.barrier("barrier"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        group[1].abort("rank 1's node died");
        let left = tokio::time::timeout(Duration::from_secs(10), blocked)
            .await
            .expect("rank 0 leaves")
            .expect("the thread");
        assert!(
            matches!(&left, Err(TrainError::Aborted(why)) if why.contains("node died")),
            "{left:?}"
        );
        rt.shutdown().await.expect("shuts down");
    }
}
