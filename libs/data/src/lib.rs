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
//! This version runs on the node that owns the dataset: its functions are
//! closures, which cannot reach another process.

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
mod rows;
mod shuffle;
mod worker;
mod write;

pub use aggregate::Aggregation;
pub use block::{Block, BlockRef};
pub use budget::{ExecStats, OperatorStats};
pub use dataset::{DataOptions, Dataset, Grouped};
pub use error::{BlockOrigin, BoxError, DataError};
pub use shuffle::SortKey;
pub use worker::ActorPoolStrategy;
pub use write::WriteSummary;
