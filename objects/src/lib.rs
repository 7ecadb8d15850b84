//! Troupe's object store.
//!
//! Objects are values shared by reference: [`ObjectStore::put`] moves a value
//! in and returns a typed [`ObjectRef`]; [`ObjectStore::get`] returns an
//! `Arc` of it (no copy, no encoding, in this process). An object is freed
//! when its last ref is dropped and no other node borrows it.
//! [`ObjectStore::pending`] makes a ref to an object that a producer
//! completes later (a task's result); `get` and [`ObjectStore::wait`] wait
//! for it, with timeouts.
//!
//! Memory is budgeted: above a threshold, least-recently-used objects are
//! written to a spill directory and read back transparently on `get`; a
//! `put` that does not fit waits while spilling makes room. Byte objects
//! ([`Blob`]) live in buffers the store allocates and reuses. The encoded
//! form of a value (spilling, the wire) is its postcard encoding.
//!
//! Architecture invariant: this crate knows nothing of tasks, actors,
//! supervisors or the network. The cluster plugs in through
//! [`ObjectDirectory`].

// The lint wall (CI denies warnings): no unsafe code but where a
// `SAFETY` comment allows it; every public item documented and truly
// public; no debugging leftovers; no `unwrap` outside tests.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod blob;
pub mod bytes_field;
mod codec;
mod directory;
mod error;
mod id;
mod store;

pub use blob::{Blob, BlobWriteError, BlobWriter};
pub use codec::{decode_value, encode_value, Encoded};
pub use directory::{Fetched, ObjectDirectory};
pub use error::{
    Cause, CauseType, ObjectError, RemoteError, SpillOp, MAX_CAUSE_CHAIN, MAX_TYPED_CAUSE_DEPTH,
};
pub use get_size2::{GetSize, GetSizeTracker};
pub use id::{IdHasher, IdHashing, NodeId, ObjectId};
pub use postcard::Error as DecodeError;
pub use store::{
    AnyObjectRef, Availability, Completer, ForgetHook, Object, ObjectInfo, ObjectRef, ObjectStore,
    SpillReport, SpillerGuard, StoreConfig,
};

/// For [`register_cause!`]'s expansion. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::error::{decode_cause, encode_cause};
    pub use inventory;
}

#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod tests;
