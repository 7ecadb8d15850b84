//! The hand-off from the cluster's I/O threads to the runtime's own: work
//! that arrives from peers (replies, tasks, actor calls, spawns, stops)
//! goes through one queue to one task on the runtime's tokio runtime,
//! which carries it out in arrival order.
//!
//! A frame handed from one thread to another wakes the other, and on the
//! VMs Troupe is measured on a wake-up costs tens of µs: for requests made
//! one at a time, two of those per round trip were a third of it. So the
//! dispatcher keeps looking for the next piece of work for a short while
//! (`ClusterOptions::dispatch_spin`) before it sleeps, while work came
//! recently, yielding to the runtime's other tasks and to other threads
//! between looks (a spin that kept its vCPU starved the work it waited for
//! on a 2-vCPU VM). An idle node never spins. Measured with
//! `cluster_perf`, one at a time: sync remote tasks from 7k/s without it to
//! 13-16k/s, beside a TCP ping-pong of 19-21k/s between two processes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::*;

/// How close together two pieces of work must come for the dispatcher to
/// keep looking for a third before it sleeps.
const HOT_GAP: Duration = Duration::from_millis(2);

/// How long the dispatcher keeps looking by default.
pub(super) const DEFAULT_SPIN: Duration = Duration::from_micros(100);

/// A piece of work from a peer, for the runtime's threads.
pub(super) enum Work {
    /// A reply to a request of this node, from the node that sent it.
    Reply { from: NodeId, id: u64, body: Reply },
    /// A peer's request that runs user code (a task, an actor call, a
    /// spawn, a stop).
    Request {
        from: NodeId,
        id: u64,
        body: Request,
    },
    /// A peer's answer to a probe (after the replies queued before it).
    Unknown { from: NodeId, ids: Vec<u64> },
}

/// The queue between the I/O threads and the dispatching task.
#[derive(Default)]
pub(super) struct Dispatcher {
    queue: Mutex<VecDeque<Work>>,
    wake: Notify,
    /// The dispatching task sleeps (a push must wake it).
    asleep: AtomicBool,
}

impl Dispatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Work>> {
        // One push or drain per critical section: never half-done.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `work` (from an I/O thread), waking the dispatching task only
    /// if it sleeps.
    pub(super) fn push(&self, work: Work) {
        self.lock().push_back(work);
        if self.asleep.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }

    /// Everything queued now.
    fn drain(&self) -> VecDeque<Work> {
        std::mem::take(&mut *self.lock())
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl Shared {
    /// The dispatching task: carries out the work peers send, in order,
    /// on the runtime's threads, until the node ends.
    pub(super) async fn dispatch(self: Arc<Self>, spin: Duration) {
        let mut last_work: Option<Instant> = None;
        let mut ended = self.ended.subscribe();
        loop {
            let batch = self.dispatcher.drain();
            if !batch.is_empty() {
                last_work = Some(Instant::now());
                for work in batch {
                    self.carry_out(work);
                }
                // Let what that spawned run (on this worker) before more.
                tokio::task::yield_now().await;
                continue;
            }
            if self.is_ended() {
                return;
            }
            let hot = last_work.is_some_and(|at| at.elapsed() < HOT_GAP);
            if hot && !spin.is_zero() {
                let until = Instant::now() + spin;
                while self.dispatcher.is_empty() && Instant::now() < until {
                    tokio::task::yield_now().await;
                    std::thread::yield_now();
                }
                if !self.dispatcher.is_empty() {
                    continue;
                }
            }
            let woken = self.dispatcher.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.dispatcher.asleep.store(true, Ordering::Release);
            // Pushed between the last look and now: go on at once.
            if self.dispatcher.is_empty() {
                tokio::select! {
                    _ = woken => {}
                    _ = ended.changed() => {}
                }
            }
            self.dispatcher.asleep.store(false, Ordering::Release);
        }
    }

    fn carry_out(self: &Arc<Self>, work: Work) {
        let Some(transport) = self.transport.get().cloned() else {
            return;
        };
        match work {
            Work::Reply { from, id, body } => transport.complete(from, id, body),
            Work::Request { from, id, body } => self.work(&transport, from, id, body),
            Work::Unknown { from, ids } => transport.unknown_to(from, &ids),
        }
    }
}
