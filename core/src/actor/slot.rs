//! An actor's slot: what outlives its incarnations.
//!
//! The slot holds the current incarnation (swapped on restart), the calls
//! parked while there is none, and whether the actor is dead for good. Calls
//! that an incarnation had queued but never ran come back here when its
//! mailbox is dropped, and are delivered again if `max_task_retries` allows.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use ractor::{ActorRef, ActorStatus, MessagingErr};

use super::{Actor, ActorOptions, InfoRef};
use crate::error::ActorError;

/// What running a call produced: done at once, or a future to await.
pub(crate) enum Run<'a> {
    Done(Result<(), Panicked>),
    Pending(BoxFuture<'a, Result<(), Panicked>>),
}

/// A method panicked. Its caller has not been told yet: the host first
/// retires the incarnation, so that a call made after the caller sees the
/// error goes to the next incarnation, never into the dying mailbox.
pub(crate) struct Panicked {
    pub(crate) message: String,
    pub(crate) reply: Box<dyn FnOnce(ActorError) + Send>,
}

/// One call: the method to run and where its reply goes, with the types
/// erased so that one mailbox carries calls of every method.
pub(crate) trait Job<A>: Send + 'static {
    fn method(&self) -> &'static str;
    fn run<'a>(self: Box<Self>, actor: &'a mut A, info: &'a InfoRef) -> Run<'a>;
    fn fail(self: Box<Self>, err: ActorError);
}

/// The message a host actor receives. If it is dropped unrun (its
/// incarnation died), the call goes back to the slot.
pub struct Envelope<A: Actor> {
    job: Option<Box<dyn Job<A>>>,
    deliveries: u32,
    slot: Arc<Slot<A>>,
}

impl<A: Actor> ractor::Message for Envelope<A> {}

impl<A: Actor> Envelope<A> {
    pub(crate) fn take_job(&mut self) -> Option<Box<dyn Job<A>>> {
        self.job.take()
    }
}

impl<A: Actor> Drop for Envelope<A> {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            self.slot.undelivered(job, self.deliveries);
        }
    }
}

struct Parked<A> {
    queue: VecDeque<(Box<dyn Job<A>>, u32)>,
    dead: Option<String>,
    flushing: bool,
}

pub(crate) struct Slot<A: Actor> {
    pub(crate) info: InfoRef,
    pub(crate) options: ActorOptions,
    current: ArcSwapOption<ActorRef<Envelope<A>>>,
    /// True while calls are parked: new calls queue behind them to keep order.
    has_parked: AtomicBool,
    parked: Mutex<Parked<A>>,
    /// Set by `kill(no_restart)`; the supervisor asks before restarting.
    pub(crate) no_restart: AtomicBool,
    /// Set when the last owning handle was dropped: the actor drains its
    /// mailbox and stops, and is never restarted.
    released: AtomicBool,
    /// Run once when the actor is dead for good (releases its name).
    on_dead: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

fn is_live<M: ractor::Message>(actor: &ActorRef<M>) -> bool {
    actor.get_status() <= ActorStatus::Running
}

impl<A: Actor> Slot<A> {
    pub(crate) fn new(info: InfoRef, options: ActorOptions) -> Self {
        Self {
            info,
            options,
            current: ArcSwapOption::empty(),
            has_parked: AtomicBool::new(false),
            parked: Mutex::new(Parked {
                queue: VecDeque::new(),
                dead: None,
                flushing: false,
            }),
            no_restart: AtomicBool::new(false),
            released: AtomicBool::new(false),
            on_dead: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Parked<A>> {
        // A panic while holding this lock cannot leave the queue half-updated
        // (every critical section is a push, a take or a flag write).
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds something to do once the actor is dead for good.
    pub(crate) fn on_dead(&self, hook: Box<dyn FnOnce() + Send>) {
        self.on_dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// The current incarnation, if it is running.
    pub(crate) fn current(&self) -> Option<ActorRef<Envelope<A>>> {
        self.current
            .load()
            .as_deref()
            .filter(|a| is_live(a))
            .cloned()
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.lock().dead.is_some()
    }

    /// Sends a call: straight to the running incarnation when nothing is
    /// parked (the hot path: one atomic load, one mailbox push), else parks it.
    ///
    /// Order: calls from one caller run in the order sent, except across a
    /// crash. A call sent while the dying incarnation still accepted
    /// messages, but after its mailbox was taken down, can be parked ahead
    /// of an earlier call that comes back from that mailbox for
    /// re-delivery (`max_task_retries`).
    pub(crate) fn send(self: &Arc<Self>, job: Box<dyn Job<A>>) {
        let mut job = job;
        if !self.has_parked.load(Ordering::Acquire) {
            if let Some(actor) = &*self.current.load() {
                match actor.send_message(Envelope {
                    job: Some(job),
                    deliveries: 1,
                    slot: self.clone(),
                }) {
                    Ok(()) => return,
                    Err(MessagingErr::SendErr(mut envelope)) => match envelope.job.take() {
                        Some(j) => job = j,
                        None => return,
                    },
                    // The envelope was dropped inside ractor: its Drop parked it.
                    Err(_) => return,
                }
            }
        }
        self.park(job, 0);
    }

    /// An incarnation died with this call delivered but not run.
    fn undelivered(self: &Arc<Self>, job: Box<dyn Job<A>>, deliveries: u32) {
        if self.options.max_task_retries.allows(deliveries) {
            metrics::counter!("troupe_actor_calls_redelivered_total").increment(1);
            self.park(job, deliveries);
        } else {
            let reason = "it died before running the call (max_task_retries exhausted)";
            job.fail(self.died(reason.to_owned(), None));
        }
    }

    pub(crate) fn died(&self, reason: String, method: Option<&'static str>) -> ActorError {
        ActorError::ActorDied {
            actor: self.info.clone(),
            method: method.unwrap_or("a method"),
            reason,
        }
    }

    fn park(self: &Arc<Self>, job: Box<dyn Job<A>>, deliveries: u32) {
        let mut parked = self.lock();
        if let Some(reason) = parked.dead.clone() {
            drop(parked);
            let method = job.method();
            job.fail(self.died(reason, Some(method)));
            return;
        }
        parked.queue.push_back((job, deliveries));
        self.has_parked.store(true, Ordering::Release);
        drop(parked);
        self.flush();
    }

    /// Delivers parked calls, in order, to the running incarnation. One
    /// flusher at a time; sends happen outside the lock because a failed send
    /// can drop an envelope, whose Drop parks (and locks) again. The target
    /// is read under the lock with each batch, and retire/publish change it
    /// under the lock: a call parked after a retire never reaches the
    /// retired incarnation.
    fn flush(self: &Arc<Self>) {
        {
            let mut parked = self.lock();
            if parked.flushing {
                return;
            }
            parked.flushing = true;
        }
        loop {
            let (actor, batch) = {
                let mut parked = self.lock();
                let target = self.current();
                match target {
                    Some(actor) if !parked.queue.is_empty() && parked.dead.is_none() => {
                        (actor, parked.queue.drain(..).collect::<Vec<_>>())
                    }
                    _ => {
                        parked.flushing = false;
                        if parked.queue.is_empty() {
                            self.has_parked.store(false, Ordering::Release);
                        }
                        return;
                    }
                }
            };
            let mut rest = batch.into_iter();
            while let Some((job, deliveries)) = rest.next() {
                let envelope = Envelope {
                    job: Some(job),
                    deliveries: deliveries + 1,
                    slot: self.clone(),
                };
                if let Err(MessagingErr::SendErr(mut envelope)) = actor.send_message(envelope) {
                    // This incarnation died too: put the rest back, in order,
                    // for the next one.
                    let mut parked = self.lock();
                    let mut back: Vec<_> = envelope
                        .job
                        .take()
                        .map(|j| (j, deliveries))
                        .into_iter()
                        .chain(rest)
                        .collect();
                    while let Some(item) = back.pop() {
                        parked.queue.push_front(item);
                    }
                    parked.flushing = false;
                    return;
                }
            }
        }
    }

    /// The current incarnation is failing: calls from now on park until the
    /// next one (or fail if there is none).
    pub(crate) fn retire_current(&self) {
        let _parked = self.lock();
        self.current.store(None);
    }

    /// A new incarnation is running: make it current and deliver what waited.
    pub(crate) fn publish(self: &Arc<Self>, actor: ActorRef<Envelope<A>>) {
        {
            let mut parked = self.lock();
            self.current.store(Some(Arc::new(actor)));
            parked.dead = None;
        }
        if self.released.load(Ordering::Acquire) {
            // Restarted after its last handle went away: answer what was
            // parked, then stop.
            self.flush();
            self.drain_current();
            return;
        }
        self.no_restart.store(false, Ordering::Release);
        self.flush();
    }

    /// No handle can reach the actor any more (Ray's actor garbage
    /// collection): it answers the calls already sent, then stops for good.
    pub(crate) fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.no_restart.store(true, Ordering::Release);
        self.drain_current();
    }

    fn drain_current(&self) {
        if let Some(actor) = self.current() {
            // Drain: a stop queued behind the calls already in the mailbox.
            let _ = actor.drain();
        }
    }

    /// The actor is dead for good: fail everything parked, now and later.
    pub(crate) fn mark_dead(&self, reason: String) {
        let queue = {
            let mut parked = self.lock();
            if parked.dead.is_none() {
                parked.dead = Some(reason.clone());
            }
            self.has_parked.store(false, Ordering::Release);
            std::mem::take(&mut parked.queue)
        };
        self.current.store(None);
        for (job, _) in queue {
            let method = job.method();
            job.fail(self.died(reason.clone(), Some(method)));
        }
        let hooks = std::mem::take(&mut *self.on_dead.lock().unwrap_or_else(|e| e.into_inner()));
        for hook in hooks {
            hook();
        }
    }
}
