//! The driver of an actor: one tokio task that builds the actor, runs its
//! calls one at a time, and decides what follows each incarnation's end.
//!
//! Two ways to be supervised:
//! - **in place** (actors spawned with `Runtime::spawn_actor`): the runtime's
//!   `user` supervisor is one-for-one with a cap per actor, so its decision
//!   depends on nothing but the actor itself; the driver applies the same
//!   [`policy`](crate::supervisor::policy) where the exit happens, without a
//!   round trip through a supervisor's mailbox, and keeps running.
//! - **as a child** of a [`Supervisor`](crate::supervisor::Supervisor) in a
//!   user's tree (`Runtime::actor_child`): each incarnation is one driver
//!   task that reports its exit to the supervisor, which applies its
//!   strategy and starts the next incarnation.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::call::Run;
use super::slot::{Envelope, Mailbox, Signal, Slot};
use super::{Actor, Limit};
use crate::context::{self, Frame};
use crate::error::{panic_message, SpawnError};
use crate::ids::ActorInfo;
use crate::supervisor::policy::{ChildRules, Exit, Verdict, Window};
use crate::supervisor::{
    ChildExit, EventBus, NativeChild, NativeControl, Restart, Shutdown, SupervisionEvent,
    SupervisorMsg,
};
use crate::timeline::{self, Timeline, TimelineEvent, Work};

/// Builds a fresh instance: at spawn and again on every restart.
pub(crate) enum Factory<A> {
    Sync(Arc<dyn Fn() -> A + Send + Sync>),
    Async(Arc<dyn Fn() -> BoxFuture<'static, Result<A, String>> + Send + Sync>),
}

impl<A> Clone for Factory<A> {
    fn clone(&self) -> Self {
        match self {
            Factory::Sync(f) => Factory::Sync(f.clone()),
            Factory::Async(f) => Factory::Async(f.clone()),
        }
    }
}

/// What every actor of a runtime shares: its runtime (for the context of
/// its calls) and where supervision events go.
pub(crate) struct Env {
    pub(crate) runtime: Option<Weak<dyn Any + Send + Sync>>,
    pub(crate) events: EventBus,
    /// The supervisor in-place actors are children of ("user").
    pub(crate) supervisor: Arc<str>,
    /// Where calls go when the runtime records its timeline.
    pub(crate) timeline: Arc<Timeline>,
}

impl Env {
    fn frame(&self, info: &Arc<ActorInfo>) -> Frame {
        Frame {
            task: None,
            actor: Some(info.clone()),
            runtime: self.runtime.clone(),
        }
    }
}

/// Runs the constructor under the actor's context. A panic or an error is
/// a failed start, with the cause in its text.
pub(crate) async fn construct<A: Actor>(
    info: &Arc<ActorInfo>,
    factory: &Factory<A>,
    env: &Env,
) -> Result<A, String> {
    let frame = env.frame(info);
    match factory {
        Factory::Sync(new) => {
            let _frame = context::enter(frame);
            std::panic::catch_unwind(AssertUnwindSafe(|| new())).map_err(|payload| {
                format!(
                    "its constructor panicked: {}",
                    panic_message(payload.as_ref())
                )
            })
        }
        Factory::Async(new) => {
            let building = AssertUnwindSafe(async { new().await }).catch_unwind();
            match context::scope(frame, building).await {
                Ok(result) => result,
                Err(payload) => Err(format!(
                    "its constructor panicked: {}",
                    panic_message(payload.as_ref())
                )),
            }
        }
    }
}

/// How an incarnation ended.
enum Ended<A: Actor> {
    /// Stopped in order: a graceful stop, a supervisor's shutdown, or its
    /// mailbox closed.
    Stopped(&'static str),
    /// A method panicked; its caller is answered once the incarnation is
    /// retired, so that its next call reaches the next incarnation.
    Panicked(Arc<dyn super::call::Job<A>>, String),
    /// Killed.
    Killed,
}

/// Puts one call on the timeline.
fn record_call<A: Actor>(
    timeline: &Timeline,
    slot: &Slot<A>,
    method: &'static str,
    (began, thread): (Instant, u64),
    error: Option<String>,
) {
    timeline.record(TimelineEvent {
        work: Work::ActorCall {
            actor: slot.info.id,
            actor_type: slot.info.type_name.clone(),
            method: method.into(),
        },
        start_us: timeline.clock().unix_us(began),
        duration_us: began.elapsed().as_micros() as u64,
        thread,
        error,
    });
}

/// Runs calls until the incarnation ends.
async fn serve<A: Actor>(
    slot: &Slot<A>,
    actor: &mut A,
    mailbox: &mut Mailbox<A>,
    redeliver: &mut VecDeque<(Envelope<A>, u32)>,
    timeline: &Timeline,
) -> Ended<A> {
    loop {
        match slot.signals.get() {
            Signal::Kill => return Ended::Killed,
            Signal::Stop => return Ended::Stopped("shutdown"),
            Signal::None => {}
        }
        let mut envelope = match redeliver.pop_front() {
            Some((envelope, _)) => envelope,
            None => {
                let next = tokio::select! {
                    biased;
                    _ = slot.signals.wait(Signal::Stop) => continue,
                    next = mailbox.recv() => next,
                };
                match next {
                    Some(envelope) => envelope,
                    None => return Ended::Stopped("its mailbox closed"),
                }
            }
        };
        let Some(job) = envelope.job.clone() else {
            return Ended::Stopped("stopped");
        };
        // A span per call: free unless a subscriber wants trace level.
        let span = tracing::trace_span!(
            "actor_call",
            actor = %slot.info.id,
            actor_type = %slot.info.type_name,
            method = job.method(),
            node = %slot.info.node,
        );
        // The timeline costs this load when it does not record.
        let timed = timeline
            .is_recording()
            .then(|| (Instant::now(), timeline::thread_number()));
        let outcome = {
            let started = {
                let _entered = span.enter();
                job.run(actor)
            };
            match started {
                Run::Done(outcome) => outcome,
                Run::Pending(future) => {
                    let running = tracing::Instrument::instrument(future, span);
                    tokio::select! {
                        biased;
                        // The envelope drops with the call unanswered: its
                        // Drop tells the caller it was killed while running.
                        _ = slot.signals.wait(Signal::Kill) => {
                            if let Some(timed) = timed {
                                record_call(timeline, slot, job.method(), timed, Some("killed".into()));
                            }
                            return Ended::Killed;
                        }
                        outcome = running => outcome,
                    }
                }
            }
        };
        if let Some(timed) = timed {
            record_call(
                timeline,
                slot,
                job.method(),
                timed,
                outcome.as_ref().err().cloned(),
            );
        }
        // Answered (or to be answered below): nothing for the Drop to do.
        envelope.job = None;
        if let Err(message) = outcome {
            return Ended::Panicked(job, message);
        }
    }
}

/// Ends an incarnation: what it had not run is failed or kept, then a
/// panicking caller gets its answer. Returns the exit for the policy.
fn retire<A: Actor>(
    slot: &Slot<A>,
    mailbox: &mut Mailbox<A>,
    left: VecDeque<(Envelope<A>, u32)>,
    ended: Ended<A>,
) -> Exit {
    slot.ended(mailbox, left);
    let exit = match ended {
        Ended::Stopped(reason) => Exit {
            abnormal: false,
            reason: reason.to_owned(),
        },
        Ended::Killed => Exit {
            abnormal: true,
            reason: "killed".to_owned(),
        },
        Ended::Panicked(job, message) => {
            let reason = format!("{} panicked in {}: {message}", slot.info, job.method());
            job.panicked(message);
            Exit {
                abnormal: true,
                reason,
            }
        }
    };
    if exit.abnormal {
        slot.failed(&exit.reason);
    }
    exit
}

/// Runs one incarnation under the actor's context until it ends, then
/// retires it; returns its exit for the policy.
async fn run_incarnation<A: Actor>(
    slot: &Slot<A>,
    mut actor: A,
    mailbox: &mut Mailbox<A>,
    env: &Env,
) -> Exit {
    let mut redeliver = slot.take_redeliveries();
    let ended = context::scope(
        env.frame(&slot.info),
        serve(slot, &mut actor, mailbox, &mut redeliver, &env.timeline),
    )
    .await;
    drop(actor);
    retire(slot, mailbox, redeliver, ended)
}

/// What an in-place actor's restart type and cap are.
pub(crate) fn rules_of(max_restarts: Limit) -> ChildRules {
    ChildRules {
        // Temporary already means "never restart".
        restart: if max_restarts == Limit::Finite(0) {
            Restart::Temporary
        } else {
            Restart::Transient
        },
        max_restarts: max_restarts.finite().filter(|max| *max > 0),
    }
}

/// Why an actor is dead for good, in words.
pub(crate) fn describe(exit: &ChildExit, max_restarts: Limit) -> String {
    match exit {
        ChildExit::Stopped => "it stopped".to_owned(),
        ChildExit::Failed(reason) => {
            if max_restarts == Limit::Finite(0) {
                format!("it failed and has no restarts (max_restarts = 0): {reason}")
            } else {
                format!("it failed and was not restarted: {reason}")
            }
        }
        ChildExit::RestartsExhausted {
            restarts,
            last_error,
        } => format!(
            "it failed after {restarts} restarts and has none left (max_restarts = {max_restarts:?}): {last_error}"
        ),
        ChildExit::Terminated => "it was stopped by its supervisor".to_owned(),
    }
}

/// Drives an in-place actor over all its incarnations. `first` is the
/// instance the spawner built (a failed first start never gets here).
pub(crate) async fn run_in_place<A: Actor>(
    slot: Arc<Slot<A>>,
    factory: Factory<A>,
    env: Arc<Env>,
    first: A,
) {
    let Some(mut mailbox) = slot.take_mailbox() else {
        slot.mark_dead("its mailbox was taken by another driver".to_owned());
        return;
    };
    let rules = rules_of(slot.options.max_restarts);
    let mut window = Window::new(None, None);
    let mut next = Some(first);
    loop {
        let actor = match next.take() {
            Some(actor) => actor,
            None => match construct(&slot.info, &factory, &env).await {
                // Killed, stopped or shut down while it was being rebuilt:
                // those signals found no incarnation to stop, so they are
                // honoured here, before it serves anything.
                _ if slot.restart_forbidden().is_some() => {
                    let why = slot.restart_forbidden().map(|w| w.to_string());
                    slot.park(mailbox);
                    slot.mark_dead(format!(
                        "{} while it was restarting",
                        why.unwrap_or_default()
                    ));
                    return;
                }
                Ok(actor) => actor,
                Err(error) => {
                    slot.failed(&format!("failed to restart: {error}"));
                    env.events.emit(|| SupervisionEvent::ChildStartFailed {
                        supervisor: env.supervisor.clone(),
                        child: slot.info.to_string().into(),
                        error: error.clone(),
                    });
                    // This attempt was counted when it was decided.
                    let restarts = slot.restarts.load(Ordering::Acquire);
                    match window.after_failed_start(rules, restarts, error.clone(), Instant::now())
                    {
                        Verdict::Restart { delay, restarts } => {
                            slot.restarts.store(restarts, Ordering::Release);
                            if delay.is_zero() {
                                // A sync constructor that keeps failing
                                // must not hold this worker.
                                tokio::task::yield_now().await;
                            } else {
                                tokio::time::sleep(delay).await;
                            }
                            continue;
                        }
                        Verdict::Remove(exit) => {
                            let reason = format!(
                                "it failed to restart: {error} ({})",
                                describe(&exit, slot.options.max_restarts)
                            );
                            slot.park(mailbox);
                            slot.mark_dead(reason);
                            return;
                        }
                        Verdict::Escalate => {
                            slot.park(mailbox);
                            slot.mark_dead(format!("it failed to restart: {error}"));
                            return;
                        }
                    }
                }
            },
        };
        slot.started();
        let exit = run_incarnation(&slot, actor, &mut mailbox, &env).await;
        report_exit(&env, &slot.info, &exit);
        let forbidden = slot.restart_forbidden();
        let restarts = slot.restarts.load(Ordering::Acquire);
        match window.after_exit(rules, restarts, exit, forbidden.is_none(), Instant::now()) {
            Verdict::Restart { delay, restarts } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some(why) = slot.restart_forbidden() {
                    slot.park(mailbox);
                    slot.mark_dead(format!("{why} while it was restarting"));
                    return;
                }
                slot.restarts.store(restarts, Ordering::Release);
                tracing::warn!(actor = %slot.info, restarts, "actor restarted");
                metrics::counter!("troupe_supervisor_restarts_total", "supervisor" => env.supervisor.to_string())
                    .increment(1);
                env.events.emit(|| SupervisionEvent::ChildRestarted {
                    supervisor: env.supervisor.clone(),
                    child: slot.info.to_string().into(),
                    restarts,
                });
            }
            Verdict::Remove(exit) => {
                let reason = match forbidden {
                    Some(why) => why.to_string(),
                    None => describe(&exit, slot.options.max_restarts),
                };
                env.events.emit(|| SupervisionEvent::ChildRemoved {
                    supervisor: env.supervisor.clone(),
                    child: slot.info.to_string().into(),
                });
                slot.park(mailbox);
                slot.mark_dead(reason);
                return;
            }
            // The user supervisor has no intensity limit: each actor has
            // its own cap, so one crash-looping actor cannot take the
            // others down with it.
            Verdict::Escalate => {
                slot.park(mailbox);
                slot.mark_dead("its supervisor's restart intensity was exceeded".to_owned());
                return;
            }
        }
    }
}

fn report_exit(env: &Env, info: &ActorInfo, exit: &Exit) {
    if exit.abnormal {
        tracing::warn!(supervisor = %env.supervisor, actor = %info, reason = %exit.reason, "actor failed");
    } else {
        tracing::debug!(supervisor = %env.supervisor, actor = %info, reason = %exit.reason, "actor stopped");
    }
    env.events.emit(|| SupervisionEvent::ChildExited {
        supervisor: env.supervisor.clone(),
        child: info.to_string().into(),
        abnormal: exit.abnormal,
        reason: exit.reason.clone(),
    });
}

/// Starts one incarnation as a child of a supervisor: builds the actor in
/// the caller's task (a failed build is a failed start), then drives it in
/// a task of its own, which reports its exit to `reports`.
pub(crate) async fn start_as_child<A: Actor>(
    slot: Arc<Slot<A>>,
    factory: Factory<A>,
    env: Arc<Env>,
    reports: ractor::ActorRef<SupervisorMsg>,
    supervisor_path: Arc<str>,
) -> Result<NativeChild, SpawnError> {
    slot.supervised_by(supervisor_path);
    let start_failed = |cause: String| SpawnError::StartFailed {
        what: slot.info.to_string(),
        cause,
    };
    if let Some(reason) = slot.dead_reason() {
        return Err(start_failed(format!("it is dead: {reason}")));
    }
    let Some(mut mailbox) = slot.take_mailbox() else {
        return Err(start_failed(
            "an incarnation of it is running already".to_owned(),
        ));
    };
    let actor = match construct(&slot.info, &factory, &env).await {
        Ok(actor) => actor,
        Err(cause) => {
            slot.failed(&format!("failed to start: {cause}"));
            slot.park(mailbox);
            return Err(start_failed(cause));
        }
    };
    let incarnation = slot.incarnations();
    if incarnation > 0 {
        // Its supervisor started it again: the state API counts it, as the
        // supervisor does.
        slot.restarts.fetch_add(1, Ordering::AcqRel);
    }
    slot.started();
    let child = NativeChild {
        actor: slot.info.id,
        incarnation,
        control: slot.clone() as Arc<dyn NativeControl>,
    };
    tokio::spawn(async move {
        let exit = run_incarnation(&slot, actor, &mut mailbox, &env).await;
        slot.park(mailbox);
        let _ = reports.send_message(SupervisorMsg::NativeExited {
            actor: slot.info.id,
            incarnation,
            abnormal: exit.abnormal,
            reason: exit.reason,
        });
    });
    Ok(child)
}

impl<A: Actor> Slot<A> {
    /// Ends the running incarnation per `shutdown` and waits until it has.
    pub(crate) async fn stop_incarnation(&self, shutdown: Shutdown) {
        let seen = self.incarnations();
        if !self.is_alive() {
            return;
        }
        match shutdown {
            Shutdown::Brutal => self.signals.raise(Signal::Kill),
            Shutdown::Infinity | Shutdown::Timeout(_) => self.signals.raise(Signal::Stop),
        }
        if let Shutdown::Timeout(limit) = shutdown {
            if tokio::time::timeout(limit, self.wait_incarnation_end(seen))
                .await
                .is_err()
            {
                tracing::warn!(actor = %self.info, ?limit, "actor ignored stop; killing it");
                self.signals.raise(Signal::Kill);
            }
        }
        self.wait_incarnation_end(seen).await;
    }
}

impl<A: Actor> NativeControl for Slot<A> {
    fn stop(self: Arc<Self>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.stop_incarnation(shutdown).await })
    }

    fn kill(&self) {
        self.signals.raise(Signal::Kill);
    }
}
