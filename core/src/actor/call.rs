//! One call to an actor: the method to run, and where its reply goes, in
//! one allocation.
//!
//! A [`CallCell`] holds the closure until the actor runs it, then the
//! result until the caller takes it. The mailbox holds it as a `Job`, the
//! caller's [`Pending`] as a `Reply`: both are the same `Arc`, so a call
//! costs one allocation whether or not its reply is awaited (a detached
//! call drops its `Pending` and nothing else changes).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::error::{panic_message, ActorError};
use crate::ids::ActorInfo;

/// What running a call produced: finished at once (a sync method), or a
/// future to drive (an async one). `Err` is a panic's message: the caller
/// is told only once the incarnation is retired (see `Job::panicked`).
pub(crate) enum Run<'a> {
    Done(Result<(), String>),
    Pending(BoxFuture<'a, Result<(), String>>),
}

/// A call as the mailbox sees it, with its types erased.
pub(crate) trait Job<A>: Send + Sync + 'static {
    fn method(&self) -> &'static str;
    /// Runs the call on `actor`; at most once (a second run does nothing).
    fn run<'a>(&'a self, actor: &'a mut A) -> Run<'a>;
    /// Answers a call whose method panicked.
    fn panicked(&self, message: String);
    /// Fails the call, unless it has an answer already.
    fn fail(&self, err: ActorError);
    /// Whether the method has started (it cannot be delivered again).
    fn started(&self) -> bool;
    /// The actor it was sent to.
    fn actor(&self) -> &Arc<ActorInfo>;
}

/// What a caller waits on.
pub(crate) trait Reply<R>: Send + Sync {
    fn poll_reply(&self, cx: &mut Context<'_>) -> Poll<Result<R, ActorError>>;
}

/// How a call's closure runs: synchronously on the actor's task, on a
/// thread that may block, or as a future.
pub(crate) trait Body<A, R>: Send + 'static {
    fn start<'a>(self, actor: &'a mut A) -> Started<'a, R>;
}

pub(crate) enum Started<'a, R> {
    /// The method returned (or panicked).
    Now(std::thread::Result<R>),
    /// An async method: its future.
    Later(BoxFuture<'a, R>),
}

/// A sync method, run inline on the actor's task.
pub(crate) struct Inline<F>(pub(crate) F);

impl<A, R, F> Body<A, R> for Inline<F>
where
    F: FnOnce(&mut A) -> R + Send + 'static,
{
    fn start<'a>(self, actor: &'a mut A) -> Started<'a, R> {
        Started::Now(std::panic::catch_unwind(AssertUnwindSafe(|| {
            (self.0)(actor)
        })))
    }
}

/// A sync method that may block (`#[blocking]`): its worker thread is
/// handed to the runtime's other tasks while it runs, so a long method
/// stalls nothing but its own actor.
pub(crate) struct MayBlock<F>(pub(crate) F);

impl<A, R, F> Body<A, R> for MayBlock<F>
where
    F: FnOnce(&mut A) -> R + Send + 'static,
{
    fn start<'a>(self, actor: &'a mut A) -> Started<'a, R> {
        let run = || std::panic::catch_unwind(AssertUnwindSafe(|| (self.0)(actor)));
        Started::Now(crate::blocking::block_in_place(run))
    }
}

/// An async method.
pub(crate) struct Async<F>(pub(crate) F);

impl<A, R, F> Body<A, R> for Async<F>
where
    F: for<'a> FnOnce(&'a mut A) -> BoxFuture<'a, R> + Send + 'static,
{
    fn start<'a>(self, actor: &'a mut A) -> Started<'a, R> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| (self.0)(actor))) {
            Ok(future) => Started::Later(future),
            Err(payload) => Started::Now(Err(payload)),
        }
    }
}

struct State<B, R> {
    body: Option<B>,
    result: Option<Result<R, ActorError>>,
    waker: Option<Waker>,
    answered: bool,
}

/// One call: its body, then its answer.
pub(crate) struct CallCell<B, R> {
    method: &'static str,
    actor: Arc<ActorInfo>,
    state: Mutex<State<B, R>>,
}

impl<B, R> CallCell<B, R> {
    pub(crate) fn new(actor: Arc<ActorInfo>, method: &'static str, body: B) -> Self {
        Self {
            method,
            actor,
            state: Mutex::new(State {
                body: Some(body),
                result: None,
                waker: None,
                answered: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B, R>> {
        // Every critical section is a field move: a panic cannot leave it
        // half-done (user code never runs under this lock).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(&self, result: Result<R, ActorError>) {
        let waker = {
            let mut state = self.lock();
            if state.answered {
                return;
            }
            state.answered = true;
            state.result = Some(result);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<A, B, R> Job<A> for CallCell<B, R>
where
    A: 'static,
    B: Body<A, R>,
    R: Send + 'static,
{
    fn method(&self) -> &'static str {
        self.method
    }

    fn run<'a>(&'a self, actor: &'a mut A) -> Run<'a> {
        let Some(body) = self.lock().body.take() else {
            return Run::Done(Ok(()));
        };
        match body.start(actor) {
            Started::Now(Ok(value)) => {
                self.answer(Ok(value));
                Run::Done(Ok(()))
            }
            Started::Now(Err(payload)) => Run::Done(Err(panic_message(payload.as_ref()))),
            Started::Later(future) => Run::Pending(Box::pin(async move {
                match AssertUnwindSafe(future).catch_unwind().await {
                    Ok(value) => {
                        self.answer(Ok(value));
                        Ok(())
                    }
                    Err(payload) => Err(panic_message(payload.as_ref())),
                }
            })),
        }
    }

    fn panicked(&self, message: String) {
        self.answer(Err(ActorError::Panicked {
            actor: self.actor.clone(),
            method: self.method.into(),
            message,
        }));
    }

    fn fail(&self, err: ActorError) {
        self.answer(Err(err));
    }

    fn started(&self) -> bool {
        self.lock().body.is_none()
    }

    fn actor(&self) -> &Arc<ActorInfo> {
        &self.actor
    }
}

impl<B: Send, R: Send> Reply<R> for CallCell<B, R> {
    fn poll_reply(&self, cx: &mut Context<'_>) -> Poll<Result<R, ActorError>> {
        let mut state = self.lock();
        if let Some(result) = state.result.take() {
            return Poll::Ready(result);
        }
        if state.answered {
            // Taken already: a Pending is polled after completion only by
            // misuse; say so rather than hang.
            return Poll::Ready(Err(ActorError::ActorDied {
                actor: self.actor.clone(),
                method: self.method.into(),
                reason: "its reply was already taken".to_owned(),
            }));
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The reply to an actor call: a future of `Result<R, ActorError>`.
///
/// The call was sent when this was made. Awaiting it is optional: drop it (or
/// call [`Pending::detach`]) for fire-and-forget; the call still runs.
#[must_use = "the call is already sent; await the reply, or call .detach() to ignore it"]
pub struct Pending<R> {
    inner: PendingInner<R>,
}

enum PendingInner<R> {
    Waiting(Arc<dyn Reply<R>>),
    Ready(Option<Result<R, ActorError>>),
}

impl<R> Pending<R> {
    pub(crate) fn waiting(reply: Arc<dyn Reply<R>>) -> Self {
        Self {
            inner: PendingInner::Waiting(reply),
        }
    }

    /// A reply known at once (a call to a remote actor's node that failed
    /// before it was sent, say).
    pub fn ready(result: Result<R, ActorError>) -> Self {
        Self {
            inner: PendingInner::Ready(Some(result)),
        }
    }

    /// A reply that a future will give (how the cluster answers calls to
    /// actors on other nodes).
    pub fn from_future(future: impl Future<Output = Result<R, ActorError>> + Send + 'static) -> Self
    where
        R: Send + 'static,
    {
        Self::waiting(Arc::new(FutureReply(Mutex::new(Some(Box::pin(future))))))
    }

    /// Ignores the reply (fire-and-forget). The call runs regardless.
    pub fn detach(self) {}
}

impl<R> Future for Pending<R> {
    type Output = Result<R, ActorError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            PendingInner::Waiting(reply) => reply.poll_reply(cx),
            PendingInner::Ready(result) => match result.take() {
                Some(result) => Poll::Ready(result),
                None => Poll::Pending,
            },
        }
    }
}

impl<R> Unpin for Pending<R> {}

/// A reply produced by a future.
type ReplyFuture<R> = Pin<Box<dyn Future<Output = Result<R, ActorError>> + Send>>;

struct FutureReply<R>(Mutex<Option<ReplyFuture<R>>>);

impl<R: Send> Reply<R> for FutureReply<R> {
    fn poll_reply(&self, cx: &mut Context<'_>) -> Poll<Result<R, ActorError>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(future) => {
                let out = future.as_mut().poll(cx);
                if out.is_ready() {
                    *slot = None;
                }
                out
            }
            None => Poll::Pending,
        }
    }
}
