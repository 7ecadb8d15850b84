//! Troupe's distributed object store.
//!
//! Not implemented yet: `put`, `get`, `wait`, reference counting and spilling
//! arrive with the tasks issue. This crate exists now so that the layering
//! (`objects` ← `core`) is fixed from the start. It will know nothing of
//! tasks, actors or the network.
