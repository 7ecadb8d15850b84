//! # troupe-data
//!
//! Data processing on Troupe, in the manner of Ray Data: a [`Dataset`] is
//! a lazy plan over blocks (Arrow record batches) kept in Troupe's object
//! store. Sources read Parquet, CSV and JSON lines (or make rows); one-to-one
//! transforms ([`map_batches`](Dataset::map_batches), [`map`](Dataset::map),
//! [`filter`](Dataset::filter), ...) run on task-like actors or on a pool of
//! long-lived ones ([`ActorPoolStrategy`]); all-to-all ones
//! ([`random_shuffle`](Dataset::random_shuffle), [`sort`](Dataset::sort),
//! [`groupby`](Dataset::groupby)) map every block to partitions and reduce
//! them. A sink runs the plan as a streaming pipeline whose bytes in flight
//! stay within [`DataOptions::memory_budget`].
//!
//! Closures run on the node that runs the dataset (a closure cannot reach
//! another process); a function registered by name
//! ([`register_batch_fn!`]) runs as tasks on any node of a cluster
//! ([`map_batches_registered`](Dataset::map_batches_registered)).

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod aggregate;
mod block;
mod budget;
mod dataset;
mod error;
mod exec;
mod io;
mod plan;
mod registry;
mod rows;
mod shuffle;
mod source;
mod text_split;
mod worker;
mod write;

pub use aggregate::Aggregation;
/// Arrow's arrays and record batches, as this crate uses them.
pub use arrow_array;
/// Arrow's schemas and errors.
pub use arrow_schema;
pub use block::{Block, BlockRef};
pub use budget::{ExecStats, OperatorStats};
pub use dataset::{DataOptions, Dataset, Grouped};
pub use error::{BlockOrigin, BoxError, DataError};
pub use registry::registered_batch_fns;
pub use shuffle::SortKey;
pub use text_split::TextReadOptions;
pub use worker::ActorPoolStrategy;

/// For the macros' expansions only.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::BatchFnRegistration;
    pub use inventory;
}
pub use write::WriteSummary;
