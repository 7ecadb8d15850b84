//! Typed handles and pending replies.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::oneshot;

use super::slot::{Job, Panicked, Run, Slot};
use super::{Actor, ActorInfo, ActorOptions, InfoRef};
use crate::error::{panic_message, ActorError};

/// An untyped-method handle to an actor; `#[troupe::actor]` wraps it in a
/// typed handle. Cheap to clone; valid across restarts.
///
/// An unnamed actor spawned with `Runtime::spawn_actor` lives while a handle
/// to it does: when the last one is dropped, it answers the calls already
/// sent and stops (as Ray collects actors). Named actors and actors in your
/// own trees live until killed, removed or shut down.
pub struct ActorHandle<A: Actor> {
    owner: Arc<Owner<A>>,
}

/// Shared by all clones of a handle; its drop is the last handle's drop.
struct Owner<A: Actor> {
    slot: Arc<Slot<A>>,
    collect_on_drop: bool,
}

impl<A: Actor> Drop for Owner<A> {
    fn drop(&mut self) {
        if self.collect_on_drop {
            self.slot.release();
        }
    }
}

impl<A: Actor> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        Self {
            owner: self.owner.clone(),
        }
    }
}

impl<A: Actor> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({})", self.owner.slot.info)
    }
}

impl<A: Actor> ActorHandle<A> {
    /// A handle; with `collect_on_drop`, dropping its last clone stops the
    /// actor.
    pub(crate) fn new(slot: Arc<Slot<A>>, collect_on_drop: bool) -> Self {
        Self {
            owner: Arc::new(Owner {
                slot,
                collect_on_drop,
            }),
        }
    }

    /// Calls a synchronous method. The call is sent before this returns, so
    /// calls made one after another run in that order whether or not their
    /// replies are awaited.
    pub fn call<R, F>(&self, method: &'static str, f: F) -> Pending<R>
    where
        F: FnOnce(&mut A) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.owner
            .slot
            .send(Box::new(SyncCall { f, reply, method }));
        Pending::waiting(rx, &self.owner.slot.info, method)
    }

    /// Calls an async method; it still has the actor to itself until done.
    pub fn call_async<R, F>(&self, method: &'static str, f: F) -> Pending<R>
    where
        F: for<'a> FnOnce(&'a mut A) -> BoxFuture<'a, R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.owner
            .slot
            .send(Box::new(AsyncCall { f, reply, method }));
        Pending::waiting(rx, &self.owner.slot.info, method)
    }

    /// Who this actor is.
    pub fn info(&self) -> &ActorInfo {
        &self.owner.slot.info
    }

    /// Its id, unique in its runtime and stable across restarts.
    pub fn id(&self) -> u64 {
        self.owner.slot.info.id
    }

    /// The options it was spawned with.
    pub fn options(&self) -> &ActorOptions {
        &self.owner.slot.options
    }

    /// Whether an incarnation is running now (false while restarting).
    pub fn is_alive(&self) -> bool {
        self.owner.slot.current().is_some()
    }

    /// Whether the actor is dead for good.
    pub fn is_dead(&self) -> bool {
        self.owner.slot.is_dead()
    }

    /// Kills the running incarnation at once, interrupting its current call
    /// (Ray's `ray.kill`). With `no_restart` the actor is dead for good:
    /// pending and later calls fail with [`ActorError::ActorDied`] and its
    /// name is released. Otherwise it restarts if it has restarts left.
    /// Returns once the incarnation has stopped.
    pub async fn kill(&self, no_restart: bool) {
        if no_restart {
            self.owner.slot.no_restart.store(true, Ordering::Release);
            self.owner
                .slot
                .mark_dead("killed with no_restart".to_owned());
        }
        if let Some(actor) = self.owner.slot.current() {
            let _ = actor.kill_and_wait(None).await;
        }
    }
}

struct SyncCall<F, R> {
    f: F,
    reply: oneshot::Sender<Result<R, ActorError>>,
    method: &'static str,
}

impl<A, F, R> Job<A> for SyncCall<F, R>
where
    A: Actor,
    F: FnOnce(&mut A) -> R + Send + 'static,
    R: Send + 'static,
{
    fn method(&self) -> &'static str {
        self.method
    }

    fn run<'a>(self: Box<Self>, actor: &'a mut A, info: &'a InfoRef) -> Run<'a> {
        let SyncCall { f, reply, method } = *self;
        let _span = tracing::trace_span!("actor_call", actor = info.id, method).entered();
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(actor))) {
            Ok(value) => {
                let _ = reply.send(Ok(value));
                Run::Done(Ok(()))
            }
            Err(payload) => Run::Done(Err(Panicked {
                message: panic_message(payload.as_ref()),
                reply: Box::new(move |err| {
                    let _ = reply.send(Err(err));
                }),
            })),
        }
    }

    fn fail(self: Box<Self>, err: ActorError) {
        let _ = self.reply.send(Err(err));
    }
}

struct AsyncCall<F, R> {
    f: F,
    reply: oneshot::Sender<Result<R, ActorError>>,
    method: &'static str,
}

impl<A, F, R> Job<A> for AsyncCall<F, R>
where
    A: Actor,
    F: for<'a> FnOnce(&'a mut A) -> BoxFuture<'a, R> + Send + 'static,
    R: Send + 'static,
{
    fn method(&self) -> &'static str {
        self.method
    }

    fn run<'a>(self: Box<Self>, actor: &'a mut A, _info: &'a InfoRef) -> Run<'a> {
        // The host instruments the whole future with the call's span.
        let AsyncCall { f, reply, .. } = *self;
        Run::Pending(Box::pin(async move {
            match AssertUnwindSafe(async move { f(actor).await })
                .catch_unwind()
                .await
            {
                Ok(value) => {
                    let _ = reply.send(Ok(value));
                    Ok(())
                }
                Err(payload) => Err(Panicked {
                    message: panic_message(payload.as_ref()),
                    reply: Box::new(move |err| {
                        let _ = reply.send(Err(err));
                    }),
                }),
            }
        }))
    }

    fn fail(self: Box<Self>, err: ActorError) {
        let _ = self.reply.send(Err(err));
    }
}

/// The reply to an actor call: a future of `Result<R, ActorError>`.
///
/// The call was sent when this was made. Awaiting it is optional: drop it (or
/// call [`Pending::detach`]) for fire-and-forget; the call still runs.
#[must_use = "the call is already sent; await the reply, or call .detach() to ignore it"]
pub struct Pending<R> {
    rx: oneshot::Receiver<Result<R, ActorError>>,
    actor: InfoRef,
    method: &'static str,
}

impl<R> Pending<R> {
    fn waiting(
        rx: oneshot::Receiver<Result<R, ActorError>>,
        actor: &InfoRef,
        method: &'static str,
    ) -> Self {
        Self {
            rx,
            actor: actor.clone(),
            method,
        }
    }

    /// Ignores the reply (fire-and-forget). The call runs regardless.
    pub fn detach(self) {}
}

impl<R> Future for Pending<R> {
    type Output = Result<R, ActorError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            // The reply port was dropped unanswered: the incarnation was
            // killed while running this call.
            Poll::Ready(Err(_)) => Poll::Ready(Err(ActorError::ActorDied {
                actor: self.actor.clone(),
                method: self.method,
                reason: "it was killed while running the call".to_owned(),
            })),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R> Unpin for Pending<R> {}

impl<A: Actor> ActorHandle<A> {
    pub(crate) fn slot(&self) -> &Arc<Slot<A>> {
        &self.owner.slot
    }
}
