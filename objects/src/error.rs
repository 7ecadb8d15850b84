//! Object store errors, and [`Cause`]: a producer's error kept as a value.
//!
//! Every error here is serializable, so that a failure crosses a process
//! boundary with its structure: a [`Cause`] keeps the typed error it wraps
//! (a task's `TaskError`, say) and encodes it with its type tag and its
//! chain of sources. A node that knows the tag decodes the same typed
//! error; one that does not gets a [`RemoteError`] with the same messages.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{NodeId, ObjectId};

/// Why an object could not be stored or read.
#[derive(Debug, thiserror::Error, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ObjectError {
    /// The value is larger than the whole memory budget.
    #[error("object of {size} bytes is larger than the object store's memory budget of {budget} bytes; raise StoreConfig::memory_budget or split the value")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The budget.
        budget: u64,
    },
    /// The store is over its budget and spilling cannot make room now.
    #[error("the object store is full: {size} more bytes do not fit ({in_memory} of {budget} bytes in memory, and nothing more can be spilled now); free objects, wait (put waits, try_put does not), or raise StoreConfig::memory_budget")]
    StoreFull {
        /// The size of the value that did not fit.
        size: u64,
        /// Bytes in memory when it was refused.
        in_memory: u64,
        /// The budget.
        budget: u64,
    },
    /// The object holds a value of another type.
    #[error("{id} holds a value of type {actual}, not {expected}")]
    WrongType {
        /// Which object.
        id: ObjectId,
        /// The type asked for.
        expected: Cow<'static, str>,
        /// The type it holds.
        actual: Cow<'static, str>,
    },
    /// Not ready within the timeout.
    #[error("{id} was not ready within {after:?}")]
    Timeout {
        /// Which object.
        id: ObjectId,
        /// How long it waited.
        after: Duration,
    },
    /// The object was made here and is gone (freed with `free`, or its last
    /// ref was dropped).
    #[error("{0} was freed")]
    Freed(ObjectId),
    /// This node has never seen the object and knows nowhere to fetch it
    /// from (a ref from another cluster, or an id made up by hand).
    #[error("{0} is unknown to this node: it was not made here and no object directory knows it")]
    Unknown(ObjectId),
    /// Its producer failed; the cause is the producer's error.
    #[error("{id} failed: {cause}")]
    Failed {
        /// Which object.
        id: ObjectId,
        /// What its producer reported (a task error, for task results).
        cause: Cause,
    },
    /// Its producer went away without a value.
    #[error("{0} will never be ready: its producer was dropped without a value")]
    ProducerDropped(ObjectId),
    /// Spilling or restoring it failed; the object is still where it was.
    #[error("{op} {id} at {path:?} failed: {cause}; the object is unchanged (check disk space and StoreConfig::spill_dir)")]
    Spill {
        /// What failed.
        op: SpillOp,
        /// Which object.
        id: ObjectId,
        /// The file.
        path: PathBuf,
        /// The I/O or decoding error.
        cause: String,
    },
    /// The only copy lived on a node that died, and it could not be made
    /// again (`why` says why, and what to do).
    #[error("{id} is lost: its only copy was on node {node}, which died; {why}")]
    Lost {
        /// Which object.
        id: ObjectId,
        /// The dead node.
        node: NodeId,
        /// Why it cannot be made again, and what the user can do.
        why: String,
    },
    /// Fetching it from another node failed.
    #[error("fetching {id} failed: {reason}")]
    Fetch {
        /// Which object.
        id: ObjectId,
        /// What went wrong.
        reason: String,
    },
    /// A blocking read was asked where blocking would deadlock (a
    /// current-thread tokio runtime has no other thread to run the producer).
    #[error("cannot block waiting for {id} on a current-thread tokio runtime (nothing else could run to produce it); use `get(..).await`, or a multi-thread runtime")]
    WouldDeadlock {
        /// Which object.
        id: ObjectId,
    },
}

/// What a spill error was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpillOp {
    /// Writing an object to disk.
    Spilling,
    /// Reading it back.
    Restoring,
}

impl fmt::Display for SpillOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpillOp::Spilling => "spilling",
            SpillOp::Restoring => "restoring",
        })
    }
}

impl ObjectError {
    /// `id` is lost with its owner, the node that made or submitted it (an
    /// object's owner is the only node that can make it again).
    pub fn owner_died(id: ObjectId) -> Self {
        ObjectError::Lost {
            id,
            node: id.node,
            why: "that node was its owner (it was put there, or made by a task submitted there), and only an object's owner can make it again: put values, and submit the tasks that make them with max_retries > 0, from a node that outlives the work (the driver)".to_owned(),
        }
    }

    /// The producer's error, when the object failed with one of type `E`
    /// (a task's `TaskError`, for task results).
    pub fn failure<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            ObjectError::Failed { cause, .. } => cause.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// The object the error is about, when it names one.
    pub fn object(&self) -> Option<ObjectId> {
        match self {
            ObjectError::WrongType { id, .. }
            | ObjectError::Timeout { id, .. }
            | ObjectError::Failed { id, .. }
            | ObjectError::Spill { id, .. }
            | ObjectError::Lost { id, .. }
            | ObjectError::Fetch { id, .. }
            | ObjectError::WouldDeadlock { id } => Some(*id),
            ObjectError::Freed(id)
            | ObjectError::Unknown(id)
            | ObjectError::ProducerDropped(id) => Some(*id),
            ObjectError::TooLarge { .. } | ObjectError::StoreFull { .. } => None,
        }
    }
}

type DynError = dyn std::error::Error + Send + Sync + 'static;

/// A producer's error, kept as the typed value it was: read it back with
/// [`Cause::downcast_ref`] (or [`ObjectError::failure`]).
///
/// It serializes with its type's tag, its own encoding and its chain of
/// sources. Types registered with [`register_cause!`](crate::register_cause)
/// decode to the same typed value on the other side; any other error
/// decodes to a [`RemoteError`] with the same messages, so the chain is never
/// flattened into one string.
///
/// ```
/// use troupe_objects::{Cause, RemoteError};
/// let cause = Cause::new(std::io::Error::other("disk on fire"));
/// let bytes = postcard::to_allocvec(&cause).unwrap();
/// let back: Cause = postcard::from_bytes(&bytes).unwrap();
/// // io::Error is not a registered cause type: it comes back as a RemoteError.
/// assert_eq!(back.to_string(), "disk on fire");
/// assert!(back.downcast_ref::<RemoteError>().is_some());
/// ```
#[derive(Clone)]
pub struct Cause(Arc<DynError>);

impl Cause {
    /// Wraps an error.
    pub fn new<E: std::error::Error + Send + Sync + 'static>(err: E) -> Self {
        Cause(Arc::new(err))
    }

    /// Wraps an error already shared.
    pub fn from_arc(err: Arc<DynError>) -> Self {
        Cause(err)
    }

    /// The error, when it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        (*self.0).downcast_ref::<E>()
    }

    /// The error itself.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// An error type that a [`Cause`] encodes and decodes as itself. Register
/// one with [`register_cause!`](crate::register_cause); the tag must be
/// stable across builds (a type path is a good one).
pub struct CauseType {
    /// The stable tag written on the wire.
    pub tag: &'static str,
    /// The encoding of `err` if it is of this type.
    pub encode: fn(&DynError) -> Option<Vec<u8>>,
    /// The error back from its encoding.
    pub decode: fn(&[u8]) -> Option<Arc<DynError>>,
}

inventory::collect!(CauseType);

/// Encodes `err` if it is an `E` (used by [`register_cause!`](crate::register_cause)).
#[doc(hidden)]
pub fn encode_cause<E>(err: &DynError) -> Option<Vec<u8>>
where
    E: std::error::Error + Serialize + Send + Sync + 'static,
{
    let typed = err.downcast_ref::<E>()?;
    postcard::to_allocvec(typed).ok()
}

/// Decodes an `E` (used by [`register_cause!`](crate::register_cause)).
#[doc(hidden)]
pub fn decode_cause<E>(bytes: &[u8]) -> Option<Arc<DynError>>
where
    E: std::error::Error + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    postcard::from_bytes::<E>(bytes)
        .ok()
        .map(|e| Arc::new(e) as Arc<DynError>)
}

/// Registers an error type so that a [`Cause`] holding it crosses the wire
/// as itself: `register_cause!(MyError, "my_crate::MyError");`. The type
/// must be `Error + Serialize + DeserializeOwned + Send + Sync`.
#[macro_export]
macro_rules! register_cause {
    ($ty:ty, $tag:expr) => {
        $crate::__private::inventory::submit! {
            $crate::CauseType {
                tag: $tag,
                encode: $crate::__private::encode_cause::<$ty>,
                decode: $crate::__private::decode_cause::<$ty>,
            }
        }
    };
}

register_cause!(ObjectError, "troupe::ObjectError");
register_cause!(RemoteError, "troupe::RemoteError");

/// An error whose type this node does not know: its message and its
/// sources' messages, in order.
///
/// On the wire it is the list of messages (never a nested structure, so no
/// peer's bytes can make a decoder recurse), at most [`MAX_CAUSE_CHAIN`]
/// long: a longer chain keeps its first messages and says how many it left
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// The error's own message.
    pub message: String,
    /// The error it was caused by, if any.
    pub source: Option<Box<RemoteError>>,
}

/// The most messages a [`RemoteError`] chain keeps.
pub const MAX_CAUSE_CHAIN: usize = 64;

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl RemoteError {
    fn chain_of(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut messages = Vec::new();
        let mut next = Some(err);
        while let Some(err) = next {
            messages.push(err.to_string());
            next = err.source();
        }
        Self::from_messages(messages)
    }

    /// Its messages, outermost first.
    pub fn messages(&self) -> Vec<&str> {
        let mut messages = Vec::new();
        let mut next = Some(self);
        while let Some(err) = next {
            messages.push(err.message.as_str());
            next = err.source.as_deref();
        }
        messages
    }

    /// The chain of `messages` (outermost first), cut to [`MAX_CAUSE_CHAIN`];
    /// an empty list is one empty message.
    pub fn from_messages(mut messages: Vec<String>) -> Self {
        if messages.len() > MAX_CAUSE_CHAIN {
            let left_out = messages.len() - (MAX_CAUSE_CHAIN - 1);
            messages.truncate(MAX_CAUSE_CHAIN - 1);
            messages.push(format!("... and {left_out} more causes, left out"));
        }
        let mut chain: Option<Box<RemoteError>> = None;
        while let Some(message) = messages.pop() {
            chain = Some(Box::new(RemoteError {
                message,
                source: chain,
            }));
        }
        chain.map(|c| *c).unwrap_or(RemoteError {
            message: String::new(),
            source: None,
        })
    }
}

impl Serialize for RemoteError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let messages = self.messages();
        let mut seq = serializer.serialize_seq(Some(messages.len().min(MAX_CAUSE_CHAIN)))?;
        for message in messages.iter().take(MAX_CAUSE_CHAIN) {
            seq.serialize_element(message)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for RemoteError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer).map(Self::from_messages)
    }
}

/// A [`Cause`] on the wire.
#[derive(Serialize, Deserialize)]
struct CauseRepr {
    /// The registered type's tag and its encoding, when it has one.
    typed: Option<(String, Vec<u8>)>,
    /// The chain of messages, always (what a node that lacks the type shows).
    chain: RemoteError,
}

fn registered(tag: &str) -> Option<&'static CauseType> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static BY_TAG: OnceLock<HashMap<&'static str, &'static CauseType>> = OnceLock::new();
    BY_TAG
        .get_or_init(|| {
            inventory::iter::<CauseType>
                .into_iter()
                .map(|t| (t.tag, t))
                .collect()
        })
        .get(tag)
        .copied()
}

impl Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let typed = inventory::iter::<CauseType>
            .into_iter()
            .find_map(|t| (t.encode)(&*self.0).map(|bytes| (t.tag.to_owned(), bytes)));
        let err: &(dyn std::error::Error + 'static) = &*self.0;
        CauseRepr {
            typed,
            chain: RemoteError::chain_of(err),
        }
        .serialize(serializer)
    }
}

/// How deep typed causes may nest when decoded (a cause holding an error
/// that holds a cause...): past it, the inner cause keeps only its messages,
/// so no peer's bytes can make the decoder recurse without bound.
pub const MAX_TYPED_CAUSE_DEPTH: u32 = 16;

thread_local! {
    /// Typed causes being decoded on this thread, outermost first.
    static DECODING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Decodes a typed cause one level deeper (see [`MAX_TYPED_CAUSE_DEPTH`]).
fn decode_nested(t: &CauseType, bytes: &[u8]) -> Option<Arc<DynError>> {
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            DECODING.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    let depth = DECODING.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    let _level = Level;
    if depth > MAX_TYPED_CAUSE_DEPTH {
        return None;
    }
    (t.decode)(bytes)
}

impl<'de> Deserialize<'de> for Cause {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = CauseRepr::deserialize(deserializer)?;
        let typed = repr
            .typed
            .and_then(|(tag, bytes)| registered(&tag).and_then(|t| decode_nested(t, &bytes)));
        Ok(match typed {
            Some(err) => Cause(err),
            None => Cause::new(repr.chain),
        })
    }
}

impl From<ObjectError> for Cause {
    fn from(err: ObjectError) -> Self {
        Cause::new(err)
    }
}
