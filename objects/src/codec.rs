//! How values become bytes and back: one encoding (postcard) for spilling
//! and for the wire, and the scope in which refs inside values encode and
//! decode.
//!
//! An [`ObjectRef`](crate::ObjectRef) encodes as its id. Decoding one must
//! attach it to a live store (so that refcounts stay exact), which serde's
//! derived impls cannot be told about: the store is put in a thread-local
//! scope for the length of a decode, entered through a guard that restores
//! the previous scope on drop (panics and nesting included).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Weak};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::blob::Blob;
use crate::store::Inner;
use crate::store::RefHandle;
use crate::{AnyObjectRef, Object, ObjectId};

pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// How to turn one type's values into bytes and back, captured where the
/// type is known (at `put`, or when a typed ref is decoded).
#[derive(Clone, Copy)]
pub(crate) struct Codec {
    /// Appends the value's encoding to `out`.
    pub(crate) encode: fn(&(dyn Any + Send + Sync), &mut Vec<u8>) -> Result<(), String>,
    /// The value back from its encoding.
    pub(crate) decode: fn(&[u8]) -> Result<AnyValue, String>,
    /// The value's size for the memory budget.
    pub(crate) size: fn(&(dyn Any + Send + Sync)) -> u64,
    /// For values that are just bytes (a [`Blob`]): spilled and sent as
    /// they are, without an encoding pass.
    pub(crate) raw: Option<RawCodec>,
}

/// The bytes of a byte-buffer value, and the value back from its bytes.
#[derive(Clone, Copy)]
pub(crate) struct RawCodec {
    pub(crate) bytes: fn(&(dyn Any + Send + Sync)) -> Option<&[u8]>,
    pub(crate) from: fn(Blob) -> AnyValue,
}

fn encode<T: Object>(value: &(dyn Any + Send + Sync), out: &mut Vec<u8>) -> Result<(), String> {
    let value = value
        .downcast_ref::<T>()
        .ok_or_else(|| format!("stored value is not a {}", std::any::type_name::<T>()))?;
    let mut bytes = postcard::to_extend(value, std::mem::take(out)).map_err(|e| e.to_string())?;
    std::mem::swap(out, &mut bytes);
    Ok(())
}

fn decode<T: Object>(bytes: &[u8]) -> Result<AnyValue, String> {
    postcard::from_bytes::<T>(bytes)
        .map(|v| Arc::new(v) as AnyValue)
        .map_err(|e| e.to_string())
}

fn size<T: Object>(value: &(dyn Any + Send + Sync)) -> u64 {
    // get_size2 walks a Vec element by element: seconds for 200 MB of bytes
    // in a debug build, on whichever thread settles the object.
    if let Some(bytes) = value.downcast_ref::<Vec<u8>>() {
        return (std::mem::size_of::<Vec<u8>>() + bytes.capacity()) as u64;
    }
    value.downcast_ref::<T>().map_or(0, |v| v.get_size() as u64)
}

fn blob_bytes(value: &(dyn Any + Send + Sync)) -> Option<&[u8]> {
    value.downcast_ref::<Blob>().map(|b| &b[..])
}

fn blob_value(blob: Blob) -> AnyValue {
    Arc::new(blob)
}

fn vec_bytes(value: &(dyn Any + Send + Sync)) -> Option<&[u8]> {
    value.downcast_ref::<Vec<u8>>().map(|v| &v[..])
}

fn vec_value(blob: Blob) -> AnyValue {
    Arc::new(blob.into_vec())
}

const UNTYPED: &str = "its type is not known on this node yet: read it through a typed ref";

fn untyped_encode(_: &(dyn Any + Send + Sync), _: &mut Vec<u8>) -> Result<(), String> {
    Err(UNTYPED.to_owned())
}

fn untyped_decode(_: &[u8]) -> Result<AnyValue, String> {
    Err(UNTYPED.to_owned())
}

fn untyped_size(_: &(dyn Any + Send + Sync)) -> u64 {
    0
}

impl Codec {
    /// The codec of an object whose type is not known yet: every use of it
    /// fails and says so.
    pub(crate) fn untyped() -> Self {
        Codec {
            encode: untyped_encode,
            decode: untyped_decode,
            size: untyped_size,
            raw: None,
        }
    }

    pub(crate) fn of<T: Object>() -> Self {
        // Plain byte vectors are bytes too: spilled and sent without an
        // encoding pass (postcard would encode them one element at a time).
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Vec<u8>>() {
            return Codec {
                encode: encode::<T>,
                decode: decode::<T>,
                size: size::<T>,
                raw: Some(RawCodec {
                    bytes: vec_bytes,
                    from: vec_value,
                }),
            };
        }
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Blob>() {
            return Codec {
                encode: encode::<T>,
                decode: decode::<T>,
                size: size::<T>,
                raw: Some(RawCodec {
                    bytes: blob_bytes,
                    from: blob_value,
                }),
            };
        }
        Codec {
            encode: encode::<T>,
            decode: decode::<T>,
            size: size::<T>,
            raw: None,
        }
    }
}

thread_local! {
    /// The refs encoded on this thread inside open [`EncodeScope`]s.
    static ENCODED_REFS: RefCell<Vec<Arc<RefHandle>>> = const { RefCell::new(Vec::new()) };
    /// How many [`EncodeScope`]s are open on this thread.
    static ENCODE_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The store that refs decoded on this thread attach to.
    static DECODING_FOR: RefCell<Weak<Inner>> = const { RefCell::new(Weak::new()) };
}

/// Watches an encoding for refs: which ones did the value hold? (A value
/// holding refs is never spilled: dropping it from memory would drop those
/// refs; a value sent to another node tells the receiver which refs it
/// carries.) Scopes nest: an enclosing scope sees what inner ones saw.
pub(crate) struct EncodeScope {
    start: usize,
}

impl EncodeScope {
    pub(crate) fn enter() -> Self {
        ENCODE_DEPTH.with(|d| d.set(d.get() + 1));
        EncodeScope {
            start: ENCODED_REFS.with(|r| r.borrow().len()),
        }
    }

    /// Whether a ref was encoded since this scope began.
    pub(crate) fn saw_a_ref(&self) -> bool {
        ENCODED_REFS.with(|r| r.borrow().len() > self.start)
    }

    /// The refs encoded since this scope began, each once, in order.
    pub(crate) fn refs(&self) -> Vec<AnyObjectRef> {
        ENCODED_REFS.with(|r| {
            let mut seen = std::collections::HashSet::new();
            r.borrow()[self.start..]
                .iter()
                .filter(|h| seen.insert(h.id))
                .map(|h| AnyObjectRef { handle: h.clone() })
                .collect()
        })
    }
}

impl Drop for EncodeScope {
    fn drop(&mut self) {
        let depth = ENCODE_DEPTH.with(|d| {
            let depth = d.get().saturating_sub(1);
            d.set(depth);
            depth
        });
        if depth == 0 {
            ENCODED_REFS.with(|r| r.borrow_mut().clear());
        }
    }
}

pub(crate) fn note_ref_encoded(handle: &Arc<RefHandle>) {
    if ENCODE_DEPTH.with(Cell::get) > 0 {
        ENCODED_REFS.with(|r| r.borrow_mut().push(handle.clone()));
    }
}

/// Refs decoded while this guard lives attach to `store`; the previous
/// scope comes back when it drops.
pub(crate) struct DecodeScope {
    previous: Weak<Inner>,
}

impl DecodeScope {
    pub(crate) fn enter(store: &Arc<Inner>) -> Self {
        DecodeScope {
            previous: DECODING_FOR.with(|s| s.replace(Arc::downgrade(store))),
        }
    }
}

impl Drop for DecodeScope {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        DECODING_FOR.with(|s| *s.borrow_mut() = previous);
    }
}

/// The store decoding on this thread, if any.
pub(crate) fn decoding_for() -> Option<Arc<Inner>> {
    DECODING_FOR.with(|s| s.borrow().upgrade())
}

/// Encodes any serializable value the way the store does (postcard; refs
/// as ids). For a value that leaves the process, use [`Encoded::of`],
/// which also lists the refs it carries.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// A value's encoding on its way to another node, with the refs inside it.
///
/// The refs are listed so that both ends can account for them before the
/// bytes are decoded (the borrowing protocol: see
/// [`ObjectStore::receive`](crate::ObjectStore::receive)). The sender's
/// `Encoded` holds the refs it encoded until it is dropped (after it was
/// sent), and the sender registers the receiver as a borrower of each; the
/// receiver's holds them from the moment the message arrives until it is
/// dropped (by then the decoded value holds its own refs).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Encoded {
    /// The postcard encoding.
    #[serde(with = "crate::bytes_field")]
    pub bytes: Vec<u8>,
    /// The objects whose refs it holds, each once.
    pub refs: Vec<ObjectId>,
    /// Its refs, held while it lives (on the sender, since it was encoded;
    /// on the receiver, since it arrived).
    #[serde(skip)]
    pub(crate) held: Vec<AnyObjectRef>,
}

impl Encoded {
    /// Encodes `value`, listing (and holding) the refs it holds.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, postcard::Error> {
        let scope = EncodeScope::enter();
        let bytes = postcard::to_allocvec(value)?;
        Ok(Encoded::new(bytes, scope.refs()))
    }

    /// Bytes and the refs they hold (as [`ObjectStore::export`](crate::ObjectStore::export)
    /// gives them), held while this lives.
    pub fn new(bytes: Vec<u8>, refs: Vec<AnyObjectRef>) -> Encoded {
        Encoded {
            bytes,
            refs: refs.iter().map(AnyObjectRef::id).collect(),
            held: refs,
        }
    }

    /// Bytes that hold no refs (or whose refs need no accounting).
    pub fn plain(bytes: Vec<u8>) -> Encoded {
        Encoded::new(bytes, Vec::new())
    }
}

/// Decodes a value that holds no refs (refs need a store:
/// [`ObjectStore::decode`](crate::ObjectStore::decode)).
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
