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
use crate::Object;

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

impl Codec {
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
    /// Set when an `ObjectRef` is encoded inside an [`EncodeScope`].
    static ENCODED_A_REF: Cell<bool> = const { Cell::new(false) };
    /// The store that refs decoded on this thread attach to.
    static DECODING_FOR: RefCell<Weak<Inner>> = const { RefCell::new(Weak::new()) };
}

/// Watches an encoding for refs: did the value hold any? (A value holding
/// refs is never spilled: dropping it from memory would drop those refs.)
pub(crate) struct EncodeScope {
    previous: bool,
}

impl EncodeScope {
    pub(crate) fn enter() -> Self {
        EncodeScope {
            previous: ENCODED_A_REF.with(|f| f.replace(false)),
        }
    }

    /// Whether a ref was encoded since this scope began.
    pub(crate) fn saw_a_ref(&self) -> bool {
        ENCODED_A_REF.with(Cell::get)
    }
}

impl Drop for EncodeScope {
    fn drop(&mut self) {
        let inner = ENCODED_A_REF.with(Cell::get);
        // An enclosing scope also saw whatever this one saw.
        ENCODED_A_REF.with(|f| f.set(self.previous || inner));
    }
}

pub(crate) fn note_ref_encoded() {
    ENCODED_A_REF.with(|f| f.set(true));
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
/// as ids). What the cluster sends, and what a task's arguments become when
/// they leave the process.
pub fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a value that holds no refs (refs need a store:
/// [`ObjectStore::decode`](crate::ObjectStore::decode)).
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
