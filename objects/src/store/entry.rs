//! An object's entry in the store: where its value stands ([`State`]), its
//! type as the store knows it ([`Kind`]: for decoding and spilling without
//! the static type at hand), and what keeps it alive.

use std::any::TypeId;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::{Object, RefHandle};
use crate::codec::{AnyValue, Codec};
use crate::{NodeId, ObjectError};

pub(crate) enum State {
    /// Woken when it settles; readers of this object wait on it alone.
    /// `fetch` is 0 when a producer here fills it (a [`Completer`]), else
    /// the token of the fetch that fills it: only that fetch may settle it
    /// (a producer here that takes it over makes the fetch's answer moot).
    Pending {
        notify: Arc<Notify>,
        fetch: u64,
    },
    Ready(AnyValue),
    /// Boxed, as the error: rare states do not size every entry.
    Spilled(Box<Path>),
    Failed(Box<ObjectError>),
    /// Known, not here: fetched through the directory on the first read.
    /// `failed`: why the last fetch failed (told to the readers that
    /// waited for it; the next read fetches again).
    Remote {
        location: Option<NodeId>,
        failed: Option<Box<ObjectError>>,
    },
}

impl State {
    pub(crate) fn failed(error: ObjectError) -> Self {
        State::Failed(Box::new(error))
    }

    /// Pending, filled by a producer here.
    pub(crate) fn pending() -> Self {
        State::Pending {
            notify: Arc::new(Notify::new()),
            fetch: 0,
        }
    }

    pub(crate) fn remote(location: Option<NodeId>) -> Self {
        State::Remote {
            location,
            failed: None,
        }
    }
}

/// The value's type, when the entry knows it (a remote entry decoded from
/// an untyped ref does not, until someone reads it typed). One pointer to a
/// per-type constant, so that every entry does not carry the type's name
/// and codec (entries are the store's working set: ~10,000 per 10,000
/// tasks in flight).
#[derive(Clone, Copy)]
pub(crate) struct Kind(&'static dyn TypeInfo);

/// What the store needs to know about a value's type.
trait TypeInfo: Send + Sync {
    fn type_id(&self) -> TypeId;
    fn type_name(&self) -> &'static str;
    fn codec(&self) -> Codec;
}

struct Typed<T>(std::marker::PhantomData<fn() -> T>);

/// The type of an object known only by its id so far (a ref that arrived
/// listed in a message, before the message's value was decoded): the
/// first typed read or decode of a ref to it gives it its type.
struct Untyped;

impl TypeInfo for Untyped {
    fn type_id(&self) -> TypeId {
        TypeId::of::<Untyped>()
    }
    fn type_name(&self) -> &'static str {
        "an object whose type this node does not know yet"
    }
    fn codec(&self) -> Codec {
        Codec::untyped()
    }
}

impl<T: Object> TypeInfo for Typed<T> {
    fn type_id(&self) -> TypeId {
        TypeId::of::<T>()
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn codec(&self) -> Codec {
        Codec::of::<T>()
    }
}

impl Kind {
    pub(crate) fn of<T: Object>() -> Self {
        Kind(const { &Typed::<T>(std::marker::PhantomData) })
    }

    pub(crate) fn untyped() -> Self {
        Kind(&Untyped)
    }

    pub(crate) fn is_untyped(self) -> bool {
        self.type_id() == TypeId::of::<Untyped>()
    }

    pub(crate) fn type_id(self) -> TypeId {
        self.0.type_id()
    }

    pub(crate) fn type_name(self) -> &'static str {
        self.0.type_name()
    }

    pub(crate) fn codec(self) -> Codec {
        self.0.codec()
    }
}

pub(crate) struct Entry {
    pub(crate) state: State,
    pub(crate) size: u64,
    pub(crate) kind: Kind,
    /// Store clock at the last read, for least-recently-used spilling.
    pub(crate) last_used: AtomicU64,
    /// The handle every local ref to this object shares; a ref decoded from
    /// bytes attaches to it, so the object still dies with its last ref.
    pub(crate) handle: Weak<RefHandle>,
    /// Its value holds refs: never spilled (dropping the value from memory
    /// would drop those refs and free what they point to).
    pub(crate) pinned: bool,
    /// Registrations of other nodes as holders of refs to it (on its
    /// owner, or on the node keeping a result for its owner): it lives
    /// while any count is above zero. A count dips below zero when a
    /// release overtakes the registration it cancels (they travel on
    /// different connections); the registering sender holds the object
    /// meanwhile.
    pub(crate) borrowers: Vec<(NodeId, i64)>,
    /// For another node's object: how many times this node was registered
    /// with its owner as a borrower (released together when the entry
    /// goes).
    pub(crate) credits: u32,
    /// For an object of this node whose value other nodes keep for it (a
    /// task's result left where it was made, then its replicas): those
    /// nodes, the maker first, each told when this node lets go.
    pub(crate) kept_at: Vec<NodeId>,
}

impl Entry {
    /// An entry in `state` with nothing else known yet.
    pub(crate) fn new(state: State, kind: Kind) -> Self {
        Entry {
            state,
            size: 0,
            kind,
            last_used: AtomicU64::new(0),
            handle: Weak::new(),
            pinned: false,
            borrowers: Vec::new(),
            credits: 0,
            kept_at: Vec::new(),
        }
    }

    /// Whether another node's registration keeps it alive.
    pub(crate) fn borrowed(&self) -> bool {
        self.borrowers.iter().any(|(_, n)| *n > 0)
    }
}
