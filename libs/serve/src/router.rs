//! The router of one deployment: which replica gets a request (power of
//! two choices on ongoing requests, as Ray's router), the bounded queue
//! when every replica is full, the request timeout and the retry after a
//! replica failure. It is shared state, not an actor: the proxy's request
//! tasks and the handles call it directly, so a request costs one actor
//! message (to its replica) and no other hop.
//!
//! Invariants:
//! - a replica's `ongoing` counts the leases on it; a lease is taken
//!   before a request is sent and given back when its answer (or failure)
//!   has arrived, even when the caller gave up waiting;
//! - a draining replica gets no new lease: a lease is counted first and
//!   the drain flag checked after, and the drainer sets the flag first and
//!   reads the count after, so one of them sees the other;
//! - at most `max_queued_requests` requests wait; one more is refused at
//!   once.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use troupe::ActorError;

use crate::batch::BatchRequest;
use crate::deployment::{AnyRequest, AnyResponse, Codec};
use crate::error::{CallError, HandlerError};
use crate::lock::{read, write};
use crate::metrics::DeploymentMetrics;
use crate::registry::RemoteCodec;
use crate::replica::{ReplicaHandle, ReplicaReply};

/// How often a queued request looks again for a free replica even without
/// a wake-up (a replica back from a restart frees no lease).
const QUEUE_RECHECK: Duration = Duration::from_millis(20);

/// One replica as the router sees it.
pub(crate) struct ReplicaSlot {
    /// Its number within the deployment (never reused).
    pub(crate) index: u64,
    /// The version of the code it runs.
    pub(crate) version: String,
    pub(crate) handle: ReplicaHandle,
    /// Requests sent to it and not yet answered.
    pub(crate) ongoing: AtomicUsize,
    /// Requests it has answered.
    pub(crate) served: AtomicU64,
    /// Being drained: no new requests.
    pub(crate) draining: AtomicBool,
    /// Its last health check failed or timed out.
    pub(crate) unhealthy: AtomicBool,
    /// A health check is running.
    pub(crate) checking: AtomicBool,
    /// Its batcher's queue, when the deployment batches.
    pub(crate) batcher: Option<mpsc::UnboundedSender<BatchRequest>>,
    /// On another node: how its requests and responses are encoded.
    pub(crate) remote: Option<RemoteCodec>,
}

impl ReplicaSlot {
    /// Whether the router may give it a request now.
    fn eligible(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.handle.is_alive()
    }

    /// Takes one of its `max` places, if it has one free.
    fn try_reserve(&self, max: usize) -> bool {
        if !self.eligible() {
            return false;
        }
        let before = self.ongoing.fetch_add(1, Ordering::SeqCst);
        if before >= max || self.draining.load(Ordering::SeqCst) {
            self.ongoing.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// The tunables the router reads on every request.
pub(crate) struct RouterSettings {
    pub(crate) max_ongoing: AtomicUsize,
    pub(crate) max_queued: AtomicUsize,
    pub(crate) timeout_ms: AtomicU64,
    pub(crate) retry: AtomicBool,
}

/// One deployment's router.
pub(crate) struct Router {
    pub(crate) name: String,
    pub(crate) codec: Codec,
    pub(crate) replicas: RwLock<Arc<Vec<Arc<ReplicaSlot>>>>,
    pub(crate) settings: RouterSettings,
    /// Requests waiting for a replica.
    pub(crate) queued: AtomicUsize,
    /// Wakes a queued request when a lease is given back.
    freed: Arc<Notify>,
    /// The deployment was deleted: every request fails at once.
    pub(crate) closed: AtomicBool,
    pub(crate) metrics: Arc<DeploymentMetrics>,
}

/// A place on a replica, given back on drop.
pub(crate) struct Lease {
    slot: Arc<ReplicaSlot>,
    freed: Arc<Notify>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.ongoing.fetch_sub(1, Ordering::SeqCst);
        self.freed.notify_one();
    }
}

/// Leaves the queue count on drop (a request that gave up, or got in).
struct Queued<'a>(&'a Router);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let now = self.0.queued.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.metrics.queued.set(now as f64);
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        h.finish() | 1
    });
}

/// A cheap per-thread xorshift: good enough to pick two replicas.
fn random(below: usize) -> usize {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x % below as u64) as usize
    })
}

impl Router {
    pub(crate) fn new(name: &str, codec: Codec, settings: RouterSettings) -> Self {
        Self {
            name: name.to_owned(),
            codec,
            replicas: RwLock::new(Arc::new(Vec::new())),
            settings,
            queued: AtomicUsize::new(0),
            freed: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            metrics: Arc::new(DeploymentMetrics::new(name)),
        }
    }

    /// The replicas now (a snapshot).
    pub(crate) fn replicas(&self) -> Arc<Vec<Arc<ReplicaSlot>>> {
        read(&self.replicas).clone()
    }

    /// Adds a replica; queued requests look at it at once.
    pub(crate) fn add(&self, slot: Arc<ReplicaSlot>) {
        let mut replicas = write(&self.replicas);
        let mut next: Vec<_> = replicas.iter().cloned().collect();
        next.push(slot);
        *replicas = Arc::new(next);
        self.metrics.replicas.set(replicas.len() as f64);
        drop(replicas);
        self.freed.notify_waiters();
    }

    /// The deployment was deleted: new and queued requests fail at once
    /// ([`CallError::NoDeployment`]); those on replicas finish.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    /// Removes a replica from routing (it must be drained first).
    pub(crate) fn remove(&self, index: u64) -> Option<Arc<ReplicaSlot>> {
        let mut replicas = write(&self.replicas);
        let found = replicas.iter().find(|s| s.index == index).cloned();
        let next: Vec<_> = replicas
            .iter()
            .filter(|s| s.index != index)
            .cloned()
            .collect();
        *replicas = Arc::new(next);
        self.metrics.replicas.set(replicas.len() as f64);
        found
    }

    /// Power of two choices: of two replicas picked at random, the one
    /// with fewer ongoing requests, if it has room; then the other; then
    /// any with room. The replica `avoid` (one that just failed this
    /// request) comes last.
    fn try_acquire(&self, avoid: Option<u64>) -> Option<Lease> {
        let replicas = self.replicas();
        let n = replicas.len();
        if n == 0 {
            return None;
        }
        let max = self.settings.max_ongoing.load(Ordering::Relaxed);
        let take = |i: usize| {
            let slot = &replicas[i];
            (Some(slot.index) != avoid && slot.try_reserve(max)).then(|| Lease {
                slot: slot.clone(),
                freed: self.freed.clone(),
            })
        };
        let a = random(n);
        if n > 1 {
            let b = (a + 1 + random(n - 1)) % n;
            let (load_a, load_b) = (
                replicas[a].ongoing.load(Ordering::Relaxed),
                replicas[b].ongoing.load(Ordering::Relaxed),
            );
            let order = if load_b < load_a { [b, a] } else { [a, b] };
            if let Some(lease) = order.into_iter().find_map(take) {
                return Some(lease);
            }
        }
        (0..n).map(|k| (a + k) % n).find_map(take).or_else(|| {
            let slot = replicas.iter().find(|s| Some(s.index) == avoid)?;
            slot.try_reserve(max).then(|| Lease {
                slot: slot.clone(),
                freed: self.freed.clone(),
            })
        })
    }

    /// A lease on a replica: at once if one has room, else after waiting
    /// in the bounded queue until `deadline`.
    async fn acquire(&self, deadline: Instant, avoid: Option<u64>) -> Result<Lease, CallError> {
        if let Some(lease) = self.try_acquire(avoid) {
            return Ok(lease);
        }
        let max_queued = self.settings.max_queued.load(Ordering::Relaxed);
        let before = self.queued.fetch_add(1, Ordering::SeqCst);
        let _queued = Queued(self);
        if before >= max_queued {
            return Err(CallError::Overloaded {
                deployment: self.name.clone(),
                queued: before,
            });
        }
        self.metrics.queued.set((before + 1) as f64);
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(self.gone());
            }
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = self.try_acquire(avoid) {
                return Ok(lease);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout());
            }
            let wake = (deadline - now).min(QUEUE_RECHECK);
            let _ = tokio::time::timeout(wake, notified).await;
        }
    }

    fn gone(&self) -> CallError {
        CallError::NoDeployment {
            deployment: self.name.clone(),
        }
    }

    fn timeout(&self) -> CallError {
        CallError::Timeout {
            deployment: self.name.clone(),
            after: Duration::from_millis(self.settings.timeout_ms.load(Ordering::Relaxed)),
        }
    }

    /// Sends `request` to a replica and waits for its answer, retrying
    /// once on another replica (with a request from `again`) if the
    /// replica failed and the deployment allows it.
    pub(crate) async fn call(
        &self,
        request: AnyRequest,
        again: Option<&(dyn Fn() -> Option<AnyRequest> + Sync)>,
    ) -> Result<AnyResponse, CallError> {
        let started = Instant::now();
        self.metrics.requests.increment(1);
        let result = self.call_inner(request, again, started).await;
        self.metrics.latency.record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics.error(e.kind());
        }
        result
    }

    async fn call_inner(
        &self,
        request: AnyRequest,
        again: Option<&(dyn Fn() -> Option<AnyRequest> + Sync)>,
        started: Instant,
    ) -> Result<AnyResponse, CallError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(self.gone());
        }
        let timeout = Duration::from_millis(self.settings.timeout_ms.load(Ordering::Relaxed));
        let deadline = started + timeout;
        let retry = again.is_some() && self.settings.retry.load(Ordering::Relaxed);
        let mut request = request;
        let mut avoid = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lease = self.acquire(deadline, avoid).await?;
            let replica = lease.slot.index;
            let mut reply = send(lease, request);
            let answer = match tokio::time::timeout_at(deadline.into(), &mut reply).await {
                Ok(answer) => answer,
                Err(_) => {
                    // The replica still has the request: its place stays
                    // taken until it answers, so that it is never sent
                    // more than max_ongoing_requests.
                    tokio::spawn(reply);
                    return Err(self.timeout());
                }
            };
            match answer {
                Ok(Ok(response)) => {
                    return Ok(response);
                }
                Ok(Err(source)) => {
                    return Err(CallError::Handler {
                        deployment: self.name.clone(),
                        source,
                    });
                }
                Err(failure) => {
                    let reason = failure_reason(&failure);
                    tracing::warn!(
                        deployment = %self.name,
                        replica,
                        attempt,
                        %reason,
                        "replica failed with a request in flight"
                    );
                    if retry && attempt == 1 {
                        if let Some(again) = again.and_then(|f| f()) {
                            request = again;
                            avoid = Some(replica);
                            continue;
                        }
                    }
                    return Err(CallError::ReplicaFailed {
                        deployment: self.name.clone(),
                        replica,
                        reason,
                    });
                }
            }
        }
    }
}

/// The reply of one request; it holds the request's lease until the
/// answer arrives.
type Reply = std::pin::Pin<Box<dyn std::future::Future<Output = ReplicaReply> + Send>>;

/// Sends the request to the lease's replica (through its batcher when it
/// has one).
fn send(lease: Lease, request: AnyRequest) -> Reply {
    let slot = lease.slot.clone();
    match &slot.batcher {
        Some(batcher) => {
            let (tx, rx) = oneshot::channel();
            let sent = batcher.send(BatchRequest { request, reply: tx });
            Box::pin(async move {
                let answer = match sent {
                    Ok(()) => rx.await.unwrap_or_else(|_| Err(batcher_gone(&slot))),
                    Err(_) => Err(batcher_gone(&slot)),
                };
                lease.slot.served.fetch_add(1, Ordering::Relaxed);
                drop(lease);
                answer
            })
        }
        None => match slot.remote {
            None => {
                let pending = slot.handle.handle(request);
                Box::pin(async move {
                    let answer = pending.await;
                    lease.slot.served.fetch_add(1, Ordering::Relaxed);
                    drop(lease);
                    answer
                })
            }
            Some(codec) => {
                let pending =
                    (codec.encode_request)(&request).map(|bytes| slot.handle.handle_encoded(bytes));
                Box::pin(async move {
                    let answer = match pending {
                        Ok(pending) => decoded(&codec, pending.await),
                        Err(problem) => Ok(Err(HandlerError::bad_request(problem))),
                    };
                    lease.slot.served.fetch_add(1, Ordering::Relaxed);
                    drop(lease);
                    answer
                })
            }
        },
    }
}

/// A remote replica's encoded answer, decoded.
pub(crate) fn decoded(
    codec: &RemoteCodec,
    answer: Result<Result<Vec<u8>, HandlerError>, ActorError>,
) -> ReplicaReply {
    answer.map(|r| {
        r.and_then(|bytes| (codec.decode_response)(&bytes).map_err(HandlerError::internal))
    })
}

fn batcher_gone(slot: &ReplicaSlot) -> ActorError {
    ActorError::ActorDied {
        actor: Arc::new(slot.handle.info().clone()),
        method: "handle_batch".into(),
        reason: "the replica's batcher stopped (the replica was removed)".into(),
    }
}

/// What to tell the client about a replica's failure.
fn failure_reason(failure: &ActorError) -> String {
    match failure {
        ActorError::Panicked { message, .. } => format!("it panicked: {message}"),
        ActorError::ActorDied { reason, .. } => format!("it died: {reason}"),
        other => other.to_string(),
    }
}
