//! An actor's slot: what outlives its incarnations.
//!
//! The slot owns the actor's mailbox. Its sending end is what handles send
//! to; its receiving end is held by the running incarnation's driver, and
//! parked here between incarnations, so calls sent while the actor restarts
//! simply wait in the mailbox for the next one: nothing is parked elsewhere,
//! and no wake-up can be lost between a restart and a send.
//!
//! ```text
//! handles ── send ──→ [ mailbox ] ──→ driver (one incarnation at a time)
//!                          ↑               │ ends: queued calls are failed,
//!   redelivery queue ──────┘ (ahead)  ←────┘ or kept for the next one
//!                                            (max_task_retries)
//! ```
//!
//! Signals (stop, kill) bypass the mailbox: a driver checks them between
//! calls (stop) or while a call awaits (kill).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio::sync::{mpsc, Notify};

use super::call::Job;
use super::{Actor, ActorOptions};
use crate::error::ActorError;
use crate::ids::ActorInfo;
use crate::supervisor::LastFailure;

/// One message in a mailbox: a call, or (no job) a graceful stop that
/// takes effect after the calls sent before it.
pub(crate) struct Envelope<A: Actor> {
    pub(crate) job: Option<Arc<dyn Job<A>>>,
}

impl<A: Actor> Drop for Envelope<A> {
    fn drop(&mut self) {
        // A call dropped unanswered (its mailbox went away with it, or its
        // incarnation was killed while it ran) must not leave a caller
        // waiting forever.
        if let Some(job) = self.job.take() {
            let reason = if job.started() {
                "it was killed while running the call"
            } else {
                "it died before running the call"
            };
            job.fail(ActorError::ActorDied {
                actor: job.actor().clone(),
                method: job.method().into(),
                reason: reason.to_owned(),
            });
        }
    }
}

/// A request that bypasses the mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Signal {
    None = 0,
    /// Finish the running call, then end the incarnation (a supervisor's
    /// shutdown).
    Stop = 1,
    /// End the incarnation now, interrupting an async call at its next
    /// await (a sync method cannot be interrupted: it ends first).
    Kill = 2,
}

/// Signals for the running driver, and its waker.
pub(crate) struct Signals {
    requested: AtomicU8,
    waker: AtomicWaker,
}

impl Signals {
    fn new() -> Self {
        Self {
            requested: AtomicU8::new(Signal::None as u8),
            waker: AtomicWaker::new(),
        }
    }

    pub(crate) fn raise(&self, signal: Signal) {
        // A kill overrides a stop, never the reverse.
        self.requested.fetch_max(signal as u8, Ordering::AcqRel);
        self.waker.wake();
    }

    pub(crate) fn get(&self) -> Signal {
        match self.requested.load(Ordering::Acquire) {
            0 => Signal::None,
            1 => Signal::Stop,
            _ => Signal::Kill,
        }
    }

    /// Clears the signals for a new incarnation.
    pub(crate) fn reset(&self) {
        self.requested.store(Signal::None as u8, Ordering::Release);
    }

    /// Resolves when a signal at least as strong as `at_least` is raised.
    pub(crate) fn wait(&self, at_least: Signal) -> impl std::future::Future<Output = Signal> + '_ {
        std::future::poll_fn(move |cx: &mut Context<'_>| {
            let now = self.get();
            if now as u8 >= at_least as u8 {
                return Poll::Ready(now);
            }
            self.waker.register(cx.waker());
            let now = self.get();
            if now as u8 >= at_least as u8 {
                Poll::Ready(now)
            } else {
                Poll::Pending
            }
        })
    }
}

pub(crate) type Mailbox<A> = mpsc::UnboundedReceiver<Envelope<A>>;

/// Why an actor is not restarted any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Forbid {
    Killed = 1,
    Stopped = 2,
    Collected = 3,
    ShutDown = 4,
}

impl Forbid {
    fn from_u8(n: u8) -> Option<Self> {
        match n {
            1 => Some(Forbid::Killed),
            2 => Some(Forbid::Stopped),
            3 => Some(Forbid::Collected),
            4 => Some(Forbid::ShutDown),
            _ => None,
        }
    }
}

impl std::fmt::Display for Forbid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Forbid::Killed => "it was killed with no_restart",
            Forbid::Stopped => "it was stopped",
            Forbid::Collected => "its last handle was dropped, so it was stopped",
            Forbid::ShutDown => "its runtime shut down",
        })
    }
}

/// Run once an actor is dead for good, with why.
pub(crate) type DeadHook = Box<dyn FnOnce(&str) + Send>;

pub(crate) struct Slot<A: Actor> {
    pub(crate) info: Arc<ActorInfo>,
    pub(crate) options: ActorOptions,
    tx: mpsc::UnboundedSender<Envelope<A>>,
    /// The mailbox's receiving end while no driver holds it.
    parked: Mutex<Option<Mailbox<A>>>,
    /// Calls to deliver again, ahead of the mailbox, with their deliveries.
    redeliver: Mutex<VecDeque<(Envelope<A>, u32)>>,
    pub(crate) signals: Signals,
    /// Why the actor must not be restarted, if it must not (a
    /// [`Forbid`] as its number; 0: it may).
    forbidden: AtomicU8,
    /// An incarnation is running.
    alive: AtomicBool,
    /// Bumped when an incarnation ends; with `changed`, how `kill` waits.
    incarnations: AtomicU64,
    /// Restarts so far (for the state API and events).
    pub(crate) restarts: AtomicU32,
    /// Why it is dead for good, once it is.
    dead: OnceLock<String>,
    /// `mark_dead` has run to its end: its name and resources are given
    /// back (what `wait_dead` waits for; `dead` is set first).
    buried: AtomicBool,
    /// Woken when an incarnation ends and when the actor dies for good.
    changed: Notify,
    /// Run once when the actor is dead for good (gives its resources back).
    on_dead: Mutex<Vec<DeadHook>>,
    /// Its runtime's list of actors, which it leaves (freeing its name)
    /// when dead for good.
    directory: super::DirectoryLink,
    /// Why it failed last (a panic, a kill, a failed restart), for the
    /// state API.
    last_failure: Mutex<Option<LastFailure>>,
    /// The path of its supervisor (`root/user`, or in a tree of yours,
    /// set when the tree starts it).
    supervisor: Mutex<Option<Arc<str>>>,
}

impl<A: Actor> Slot<A> {
    pub(crate) fn new(
        info: Arc<ActorInfo>,
        options: ActorOptions,
        directory: super::DirectoryLink,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            info,
            options,
            tx,
            parked: Mutex::new(Some(rx)),
            redeliver: Mutex::new(VecDeque::new()),
            signals: Signals::new(),
            forbidden: AtomicU8::new(0),
            alive: AtomicBool::new(false),
            incarnations: AtomicU64::new(0),
            restarts: AtomicU32::new(0),
            dead: OnceLock::new(),
            buried: AtomicBool::new(false),
            changed: Notify::new(),
            on_dead: Mutex::new(Vec::new()),
            directory,
            last_failure: Mutex::new(None),
            supervisor: Mutex::new(None),
        }
    }

    /// Records why it failed (an abnormal exit, a failed restart).
    pub(crate) fn failed(&self, reason: &str) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(LastFailure::now(reason));
    }

    pub(crate) fn last_failure(&self) -> Option<LastFailure> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the path of the supervisor running it.
    pub(crate) fn supervised_by(&self, path: Arc<str>) {
        *self.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    pub(crate) fn supervisor_path(&self) -> Arc<str> {
        self.supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Sends a call. If the actor is dead for good the call fails at once,
    /// with the reason it died.
    pub(crate) fn send(&self, job: Arc<dyn Job<A>>) {
        if let Err(mpsc::error::SendError(mut refused)) = self.tx.send(Envelope { job: Some(job) })
        {
            if let Some(job) = refused.job.take() {
                let reason = self.dead_reason().unwrap_or("it is dead").to_owned();
                job.fail(self.died(reason, Some(job.method())));
            }
        }
    }

    /// Asks for a stop after the calls already sent (graceful).
    pub(crate) fn send_stop(&self, why: Forbid) {
        self.forbid_restart(why);
        // Refused: dead already, nothing to stop.
        let _ = self.tx.send(Envelope { job: None });
    }

    /// The actor must not be restarted again, for `why` (the first reason
    /// given is kept).
    pub(crate) fn forbid_restart(&self, why: Forbid) {
        let _ = self
            .forbidden
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Why the actor must not be restarted, if it must not.
    pub(crate) fn restart_forbidden(&self) -> Option<Forbid> {
        Forbid::from_u8(self.forbidden.load(Ordering::Acquire))
    }

    fn lock_parked(&self) -> MutexGuard<'_, Option<Mailbox<A>>> {
        // One field move per critical section: poisoning cannot break it.
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_redeliver(&self) -> MutexGuard<'_, VecDeque<(Envelope<A>, u32)>> {
        self.redeliver.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mailbox, for a starting incarnation.
    pub(crate) fn take_mailbox(&self) -> Option<Mailbox<A>> {
        self.lock_parked().take()
    }

    /// Calls to deliver again to a starting incarnation, ahead of its
    /// mailbox (its driver keeps them; no lock per call).
    pub(crate) fn take_redeliveries(&self) -> VecDeque<(Envelope<A>, u32)> {
        std::mem::take(&mut *self.lock_redeliver())
    }

    /// An incarnation started. (Signals raised while it was being built
    /// apply to it: they are cleared when an incarnation ends.)
    pub(crate) fn started(&self) {
        self.alive.store(true, Ordering::Release);
    }

    /// An incarnation ended. Calls it had not run (re-deliveries it did not
    /// reach, then its mailbox) are failed, or kept for the next incarnation
    /// where `max_task_retries` allows: one more delivery each.
    pub(crate) fn ended(&self, mailbox: &mut Mailbox<A>, left: VecDeque<(Envelope<A>, u32)>) {
        self.alive.store(false, Ordering::Release);
        self.signals.reset();
        if self.restart_forbidden().is_some() {
            // No next incarnation: everything waits for `mark_dead`, which
            // fails it with the reason the actor died.
            *self.lock_redeliver() = left;
            self.incarnations.fetch_add(1, Ordering::AcqRel);
            self.changed.notify_waiters();
            return;
        }
        let limit = self.options.max_task_retries;
        let mut kept = VecDeque::new();
        let mut failed = Vec::new();
        let mut sort = |envelope: Envelope<A>, deliveries: u32| {
            if envelope.job.is_none() {
                return; // a stop: no_restart already says it
            }
            if limit.allows(deliveries + 1) {
                kept.push_back((envelope, deliveries + 1));
            } else {
                failed.push(envelope);
            }
        };
        for (envelope, deliveries) in left {
            sort(envelope, deliveries);
        }
        while let Ok(envelope) = mailbox.try_recv() {
            sort(envelope, 0);
        }
        if !kept.is_empty() {
            metrics::counter!("troupe_actor_calls_redelivered_total").increment(kept.len() as u64);
        }
        *self.lock_redeliver() = kept;
        let reason = "it died before running the call (max_task_retries exhausted)";
        for mut envelope in failed {
            if let Some(job) = envelope.job.take() {
                job.fail(self.died(reason.to_owned(), Some(job.method())));
            }
        }
        self.incarnations.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Parks the mailbox between incarnations.
    pub(crate) fn park(&self, mailbox: Mailbox<A>) {
        *self.lock_parked() = Some(mailbox);
    }

    pub(crate) fn died(&self, reason: String, method: Option<&'static str>) -> ActorError {
        ActorError::ActorDied {
            actor: self.info.clone(),
            method: method.unwrap_or("a method").into(),
            reason,
        }
    }

    /// Adds something to do once the actor is dead for good.
    pub(crate) fn on_dead(&self, hook: DeadHook) {
        self.on_dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Calls `hook` with why once the actor is dead for good, at once if it
    /// is (checked under the hooks' lock, which `mark_dead` takes after
    /// setting the reason: never missed).
    pub(crate) fn when_dead(&self, hook: Box<dyn FnOnce(String) + Send>) {
        let mut hooks = self.on_dead.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = self.dead.get() {
            let reason = reason.clone();
            drop(hooks);
            hook(reason);
            return;
        }
        hooks.push(Box::new(move |reason: &str| hook(reason.to_owned())));
    }

    /// The actor is dead for good: its mailbox closes (later calls fail at
    /// once), the calls in it fail, and its hooks run.
    pub(crate) fn mark_dead(&self, reason: String) {
        if self.dead.set(reason.clone()).is_err() {
            return;
        }
        self.alive.store(false, Ordering::Release);
        let mailbox = self.lock_parked().take();
        let redeliver = std::mem::take(&mut *self.lock_redeliver());
        let mut pending = Vec::new();
        for (envelope, _) in redeliver {
            pending.push(envelope);
        }
        if let Some(mut mailbox) = mailbox {
            mailbox.close();
            while let Ok(envelope) = mailbox.try_recv() {
                pending.push(envelope);
            }
        }
        for mut envelope in pending {
            if let Some(job) = envelope.job.take() {
                job.fail(self.died(reason.clone(), Some(job.method())));
            }
        }
        if let Some(directory) = self.directory.upgrade() {
            directory.remove(&self.info);
        }
        let hooks = std::mem::take(&mut *self.on_dead.lock().unwrap_or_else(|e| e.into_inner()));
        for hook in hooks {
            hook(&reason);
        }
        self.buried.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Whether an incarnation is running now.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Why the actor is dead for good, if it is.
    pub(crate) fn dead_reason(&self) -> Option<&str> {
        self.dead.get().map(String::as_str)
    }

    /// Waits until the actor is dead for good.
    pub(crate) async fn wait_dead(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Not `dead`: that is set as `mark_dead` starts, and a stopper
            // woken then could find the name still taken.
            if self.buried.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    /// Waits until the incarnation running now (if any) has ended.
    pub(crate) async fn wait_incarnation_end(&self, seen: u64) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.incarnations.load(Ordering::Acquire) != seen || self.dead.get().is_some() {
                return;
            }
            changed.await;
        }
    }

    /// How many incarnations have ended so far.
    pub(crate) fn incarnations(&self) -> u64 {
        self.incarnations.load(Ordering::Acquire)
    }
}
