//! Troupe's object store.
//!
//! Objects are values shared by reference: [`ObjectStore::put`] moves a value
//! in and returns a typed [`ObjectRef`]; [`ObjectStore::get`] returns an
//! `Arc` of it (no copy, no encoding, in this process). An object is freed
//! when its last ref is dropped. [`ObjectStore::pending`] makes a ref to an
//! object that a producer completes later (a task's result); `get` and
//! [`ObjectStore::wait`] wait for it, with timeouts.
//!
//! Memory is budgeted: above a threshold, least-recently-used objects are
//! written to a spill directory and read back transparently on `get`. The
//! spilled form of a value is its postcard encoding, one file per object.
//!
//! Architecture invariant: this crate knows nothing of tasks, actors,
//! supervisors or the network.

#![warn(missing_docs)]

mod error;
mod id;
mod store;

pub use error::ObjectError;
pub use get_size2::{GetSize, GetSizeTracker};
pub use id::{NodeId, ObjectId};
pub use postcard::Error as DecodeError;
pub use store::{
    AnyObjectRef, Completer, Object, ObjectRef, ObjectStore, SpillReport, StoreConfig,
};

#[cfg(test)]
mod tests;
