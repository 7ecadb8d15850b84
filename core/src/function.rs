//! Remote functions: what `#[troupe::remote]` generates ([`RemoteFn`]),
//! where a task's value goes ([`Returns`]), and the typed task body that
//! runs an attempt and stores its result.
//!
//! One body type serves both ways a task is made: submitted here with its
//! arguments as typed values (the fast path: nothing is encoded), or
//! received as a [`TaskSpec`](crate::spec::TaskSpec) whose arguments are
//! decoded into the same typed values. Either way the scheduler sees a
//! `TaskBody`.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use troupe_objects::{
    AnyObjectRef, Cause, Completer, Fetched, NodeId, Object, ObjectError, ObjectId, ObjectRef,
    ObjectStore, RemoteError,
};

use crate::context::{self, Frame};
pub use crate::error::Failure;
use crate::error::{panic_message, TaskError};
use crate::generator::StreamSink;
use crate::remote::RemoteResult;
use crate::spec;

/// A body's `Err`, on its way to becoming a [`Cause`]: errors that
/// implement `std::error::Error` keep their type and source chain; any other
/// `Display` keeps its text. Used by generated code as
/// `(&ErrorOf::new(err)).to_cause()`.
#[doc(hidden)]
pub struct ErrorOf<E>(Cell<Option<E>>);

impl<E> ErrorOf<E> {
    pub fn new(err: E) -> Self {
        Self(Cell::new(Some(err)))
    }
}

#[doc(hidden)]
pub trait TypedError {
    fn to_cause(&self) -> Cause;
}

impl<E: std::error::Error + Send + Sync + 'static> TypedError for ErrorOf<E> {
    fn to_cause(&self) -> Cause {
        match self.0.take() {
            Some(err) => Cause::new(err),
            None => Cause::new(RemoteError {
                message: "the error was taken already".to_owned(),
                source: None,
            }),
        }
    }
}

#[doc(hidden)]
pub trait DisplayError {
    fn to_cause(&self) -> Cause;
}

impl<E: fmt::Display> DisplayError for &ErrorOf<E> {
    fn to_cause(&self) -> Cause {
        let message = match self.0.take() {
            // `{:#}` shows a whole chain for types that print one that way
            // (anyhow's error, say).
            Some(err) => format!("{err:#}"),
            None => "the error was taken already".to_owned(),
        };
        Cause::new(RemoteError {
            message,
            source: None,
        })
    }
}

/// Where a task's value goes: one object, or one per element of a tuple
/// (`num_returns`). Used by generated code.
#[doc(hidden)]
pub trait Returns: Send + Sync + 'static {
    /// What the body returns.
    type Value: Send + 'static;
    /// What the caller gets.
    type Refs;
    /// What completes the objects.
    type Completers: Send + 'static;
    /// The kind, for the spec.
    const KIND: spec::Returns;
    /// New pending objects.
    fn pending(store: &ObjectStore) -> (Self::Refs, Self::Completers, Vec<ObjectId>);
    /// Pending objects under ids the owner minted.
    fn pending_at(
        store: &ObjectStore,
        ids: &[ObjectId],
    ) -> Result<(Vec<AnyObjectRef>, Self::Completers), ObjectError>;
    /// Stores the value(s); the first store error, if any.
    fn complete(completers: Self::Completers, value: Self::Value) -> Result<(), ObjectError>;
    /// Fails every object.
    fn fail(completers: Self::Completers, cause: Cause);
    /// Settles the objects from where another node left them.
    fn complete_remote(
        completers: Self::Completers,
        results: Vec<(ObjectId, RemoteResult)>,
    ) -> Result<(), ObjectError>;
    /// The refs, untyped.
    fn erase(refs: Self::Refs) -> Vec<AnyObjectRef>;
    /// Keeps a replica of result `index` (`id`, owned by `owner`) from
    /// its fetched bytes, decoded as that result's type; its size.
    fn keep_copy(
        store: &ObjectStore,
        index: usize,
        id: ObjectId,
        owner: NodeId,
        fetched: Fetched,
    ) -> BoxFuture<'static, Result<u64, ObjectError>>;
}

/// A replica asked of a result a function does not have.
fn no_such_result(id: ObjectId, index: usize) -> ObjectError {
    ObjectError::Fetch {
        id,
        reason: format!("the function has no result {index}"),
    }
}

/// A single result.
#[doc(hidden)]
pub struct One<R>(PhantomData<fn() -> R>);

fn wrong_count(expected: usize, got: usize) -> ObjectError {
    ObjectError::Fetch {
        id: ObjectId {
            node: NodeId(0),
            seq: 0,
        },
        reason: format!("the spec names {got} result objects, the function returns {expected}"),
    }
}

impl<R: Object> Returns for One<R> {
    type Value = R;
    type Refs = ObjectRef<R>;
    type Completers = Completer<R>;
    const KIND: spec::Returns = spec::Returns::One;

    fn pending(store: &ObjectStore) -> (ObjectRef<R>, Completer<R>, Vec<ObjectId>) {
        let (r, c) = store.pending::<R>();
        let id = r.id();
        (r, c, vec![id])
    }

    fn pending_at(
        store: &ObjectStore,
        ids: &[ObjectId],
    ) -> Result<(Vec<AnyObjectRef>, Completer<R>), ObjectError> {
        let [id] = ids else {
            return Err(wrong_count(1, ids.len()));
        };
        let (r, c) = store.pending_at::<R>(*id)?;
        Ok((vec![r.erase()], c))
    }

    fn complete(completer: Completer<R>, value: R) -> Result<(), ObjectError> {
        completer.complete(value)
    }

    fn fail(completer: Completer<R>, cause: Cause) {
        completer.fail(cause);
    }

    fn erase(r: ObjectRef<R>) -> Vec<AnyObjectRef> {
        vec![r.erase()]
    }

    fn keep_copy(
        store: &ObjectStore,
        index: usize,
        id: ObjectId,
        owner: NodeId,
        fetched: Fetched,
    ) -> BoxFuture<'static, Result<u64, ObjectError>> {
        let store = store.clone();
        Box::pin(async move {
            match index {
                0 => store.keep_copy::<R>(id, owner, fetched).await,
                _ => Err(no_such_result(id, index)),
            }
        })
    }

    fn complete_remote(
        completer: Completer<R>,
        results: Vec<(ObjectId, RemoteResult)>,
    ) -> Result<(), ObjectError> {
        let mut results = results.into_iter();
        match (results.next(), results.next()) {
            (Some((_, result)), None) => settle_remote(completer, result),
            _ => Err(wrong_count(1, 0)),
        }
    }
}

fn settle_remote<T: Object>(
    completer: Completer<T>,
    result: RemoteResult,
) -> Result<(), ObjectError> {
    match result {
        // Its refs stay held (since the reply arrived) until it is decoded.
        RemoteResult::Inline(encoded) => completer.complete_encoded(&encoded.bytes),
        RemoteResult::At { node, replicas } => {
            let keepers: Vec<NodeId> = std::iter::once(node).chain(replicas).collect();
            completer.relocate(&keepers);
            Ok(())
        }
    }
}

/// A tuple stored one object per element (`num_returns`).
#[doc(hidden)]
pub struct Tuple<T>(PhantomData<fn() -> T>);

macro_rules! tuple_returns {
    ($n:expr; $(($T:ident, $i:tt)),+) => {
        impl<$($T: Object),+> Returns for Tuple<($($T,)+)> {
            type Value = ($($T,)+);
            type Refs = ($(ObjectRef<$T>,)+);
            type Completers = ($(Completer<$T>,)+);
            const KIND: spec::Returns = spec::Returns::Many($n);

            fn pending(store: &ObjectStore) -> (Self::Refs, Self::Completers, Vec<ObjectId>) {
                let made = ($(store.pending::<$T>(),)+);
                let ids = vec![$(made.$i.0.id()),+];
                (($(made.$i.0,)+), ($(made.$i.1,)+), ids)
            }

            fn pending_at(
                store: &ObjectStore,
                ids: &[ObjectId],
            ) -> Result<(Vec<AnyObjectRef>, Self::Completers), ObjectError> {
                if ids.len() != $n {
                    return Err(wrong_count($n, ids.len()));
                }
                let made = ($(store.pending_at::<$T>(ids[$i])?,)+);
                Ok((vec![$(made.$i.0.erase()),+], ($(made.$i.1,)+)))
            }

            fn complete(completers: Self::Completers, value: Self::Value) -> Result<(), ObjectError> {
                let mut first = Ok(());
                $(
                    if let Err(err) = completers.$i.complete(value.$i) {
                        if first.is_ok() {
                            first = Err(err);
                        }
                    }
                )+
                first
            }

            fn fail(completers: Self::Completers, cause: Cause) {
                $( completers.$i.fail(cause.clone()); )+
            }

            fn erase(refs: Self::Refs) -> Vec<AnyObjectRef> {
                vec![$(refs.$i.erase()),+]
            }

            fn keep_copy(
                store: &ObjectStore,
                index: usize,
                id: ObjectId,
                owner: NodeId,
                fetched: Fetched,
            ) -> BoxFuture<'static, Result<u64, ObjectError>> {
                let store = store.clone();
                Box::pin(async move {
                    match index {
                        $($i => store.keep_copy::<$T>(id, owner, fetched).await,)+
                        _ => Err(no_such_result(id, index)),
                    }
                })
            }

            fn complete_remote(
                completers: Self::Completers,
                results: Vec<(ObjectId, RemoteResult)>,
            ) -> Result<(), ObjectError> {
                if results.len() != $n {
                    return Err(wrong_count($n, results.len()));
                }
                let mut results = results.into_iter().map(|(_, r)| r);
                let mut first = Ok(());
                $(
                    if let Some(result) = results.next() {
                        if let Err(err) = settle_remote(completers.$i, result) {
                            if first.is_ok() {
                                first = Err(err);
                            }
                        }
                    }
                )+
                first
            }
        }
    };
}

tuple_returns!(2; (A, 0), (B, 1));
tuple_returns!(3; (A, 0), (B, 1), (C, 2));
tuple_returns!(4; (A, 0), (B, 1), (C, 2), (D, 3));

/// What an attempt may use besides its arguments.
#[doc(hidden)]
pub struct Start {
    /// The node's store (arguments are read from it).
    pub store: ObjectStore,
    /// For generators: where yielded items go.
    pub sink: Option<Arc<StreamSink>>,
}

impl Start {
    /// The generator's sink (generated code asks only for generators).
    pub fn sink(&self) -> Result<&Arc<StreamSink>, Failure> {
        self.sink
            .as_ref()
            .ok_or_else(|| Failure::Panicked("a generator ran without a stream".to_owned()))
    }
}

/// A remote function, as `#[troupe::remote]` describes it. Not meant to be
/// implemented by hand.
#[doc(hidden)]
pub trait RemoteFn: Send + Sync + 'static {
    /// Its stable name (its module path).
    const NAME: &'static str;
    /// A sync body (run on a CPU thread, where it may block) or an async one.
    const BLOCKING: bool;
    /// A tuple of `Arg<T>`, one per parameter.
    type Args: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Where its value goes.
    type Returns: Returns;
    /// The items of a generator (`()` otherwise).
    type Item: Object;
    /// Whether it is a generator.
    const GENERATOR: bool = false;
    /// What kind of results it has.
    const RETURNS: spec::Returns = if Self::GENERATOR {
        spec::Returns::Stream
    } else {
        <Self::Returns as Returns>::KIND
    };
    /// The objects its top-level ref arguments name.
    fn deps(args: &Self::Args) -> Vec<ObjectId>;
    /// One attempt of a sync body.
    fn call_blocking(
        args: &Self::Args,
        start: &Start,
    ) -> Result<<Self::Returns as Returns>::Value, Failure> {
        let _ = (args, start);
        Err(Failure::Panicked(format!(
            "{} has no sync body",
            Self::NAME
        )))
    }
    /// One attempt of an async body.
    fn call_async(
        args: &Self::Args,
        start: &Start,
    ) -> BoxFuture<'static, Result<<Self::Returns as Returns>::Value, Failure>> {
        let _ = (args, start);
        Box::pin(async {
            Err(Failure::Panicked(format!(
                "{} has no async body",
                Self::NAME
            )))
        })
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Its results are stored.
    Done,
    Failed(Failure),
}

/// One attempt, ready to run: on a CPU thread, or on the async workers.
pub(crate) enum Launch {
    Blocking(Box<dyn FnOnce() -> Outcome + Send>),
    Async(BoxFuture<'static, Outcome>),
}

/// A task's body with its types erased, as the scheduler holds it.
pub(crate) trait TaskBody: Send + Sync + 'static {
    /// One attempt, under `frame` (the task's context).
    fn launch(self: Arc<Self>, frame: Frame) -> Launch;
    /// Fails its results for good. False when they were settled already
    /// (an attempt stored its value first): what `cancel` reports.
    fn give_up(&self, err: TaskError) -> bool;
    /// Its arguments, encoded (to send the task to another node).
    fn encode_args(&self) -> Result<troupe_objects::Encoded, String>;
    /// Whether its body is sync (runs on a CPU thread, cannot be aborted).
    fn blocking(&self) -> bool;
    /// Settles its results from where the node that ran it left them.
    fn complete_remote(&self, results: Vec<(ObjectId, RemoteResult)>) -> Result<(), ObjectError>;
}

/// The body of a task of the remote function `F`.
pub(crate) struct TypedTask<F: RemoteFn> {
    args: F::Args,
    completers: Mutex<Option<<F::Returns as Returns>::Completers>>,
    start: Start,
}

impl<F: RemoteFn> TypedTask<F> {
    pub(crate) fn new(
        args: F::Args,
        completers: <F::Returns as Returns>::Completers,
        start: Start,
    ) -> Self {
        Self {
            args,
            completers: Mutex::new(Some(completers)),
            start,
        }
    }

    /// Stores an attempt's value (if the task was not given up meanwhile).
    fn store(&self, outcome: Result<<F::Returns as Returns>::Value, Failure>) -> Outcome {
        match outcome {
            Ok(value) => {
                let completers = self
                    .completers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                match completers.map(|c| F::Returns::complete(c, value)) {
                    Some(Err(err)) => Outcome::Failed(Failure::Store(err)),
                    // Stored, or given up already (cancelled): done either way.
                    _ => Outcome::Done,
                }
            }
            Err(failure) => Outcome::Failed(failure),
        }
    }
}

impl<F: RemoteFn> TaskBody for TypedTask<F> {
    fn launch(self: Arc<Self>, frame: Frame) -> Launch {
        if F::BLOCKING {
            Launch::Blocking(Box::new(move || {
                let _context = context::enter(frame);
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    F::call_blocking(&self.args, &self.start)
                }));
                match outcome {
                    Ok(outcome) => self.store(outcome),
                    Err(payload) => {
                        Outcome::Failed(Failure::Panicked(panic_message(payload.as_ref())))
                    }
                }
            }))
        } else {
            let body = F::call_async(&self.args, &self.start);
            Launch::Async(Box::pin(context::scope(frame, async move {
                match AssertUnwindSafe(body).catch_unwind().await {
                    Ok(outcome) => self.store(outcome),
                    Err(payload) => {
                        Outcome::Failed(Failure::Panicked(panic_message(payload.as_ref())))
                    }
                }
            })))
        }
    }

    fn give_up(&self, err: TaskError) -> bool {
        let completers = self
            .completers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match completers {
            Some(completers) => {
                F::Returns::fail(completers, Cause::new(err));
                true
            }
            None => false,
        }
    }

    fn encode_args(&self) -> Result<troupe_objects::Encoded, String> {
        troupe_objects::Encoded::of(&self.args).map_err(|e| e.to_string())
    }

    fn blocking(&self) -> bool {
        F::BLOCKING
    }

    fn complete_remote(&self, results: Vec<(ObjectId, RemoteResult)>) -> Result<(), ObjectError> {
        let completers = self
            .completers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match completers {
            Some(completers) => F::Returns::complete_remote(completers, results),
            None => Ok(()), // given up meanwhile (cancelled)
        }
    }
}
