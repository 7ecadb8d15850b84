//! # troupe-serve
//!
//! Serving on Troupe, in the manner of Ray Serve: a [`Deployment`] (a
//! type answering requests) runs as replica actors behind an HTTP proxy
//! and typed in-process [`DeploymentHandle`]s, with power-of-two-choices
//! routing, a bounded queue, batching, health checks, autoscaling and
//! rolling updates.
//!
//! ```text
//! client ──HTTP──▶ proxy (axum) ──route by prefix──▶ Router of the deployment
//!                                                     │ p2c on ongoing requests,
//!                  DeploymentHandle::call ───────────▶│ bounded queue, timeout
//!                                                     ▼
//!                                  [batcher] ──▶ Replica actor (the user's code)
//! Controller actor (one per deployment): start / drain / stop / restart
//! replicas as `plan` decides; health checks; autoscaling
//! ```
//!
//! - **Routing** is shared state, not an actor: a request costs one actor
//!   message, to its replica. Each replica has at most
//!   `max_ongoing_requests` requests (running or in its mailbox); when all
//!   are full a request waits in the deployment's queue of
//!   `max_queued_requests`, and past that it is refused at once (HTTP 503).
//! - **Replicas** are actors restarted after a panic (as often as needed):
//!   the request that panicked, and those queued behind it, fail with
//!   HTTP 503 saying so, or are retried once on another replica
//!   ([`DeploymentOptions::retry_on_replica_failure`]); requests go to the
//!   other replicas meanwhile.
//! - **Clusters**: a deployment registered by kind
//!   ([`register_deployment!`], [`Serve::deploy_registered`]) with
//!   [`DeploymentOptions::replicas_on_cluster`] runs its replicas on any
//!   node, built there by kind; requests and responses cross as JSON.
//!   [`DeploymentHandle::connect`] reaches a deployment from any process of
//!   the cluster (a task, another program's replica), by the `Serve`'s
//!   name ([`ServeOptions::app`]).
//! - **The controller** decides from a snapshot (its plan is a pure
//!   function) and holds no data: its state is shared with the router, so
//!   when it panics it is restarted and goes on.
//!
//! See [`Serve`] for an example, [`ServeConfig`] for the config file, the
//! crate's `README.md`, and `examples/serve_model.rs` (a batched tch model,
//! the `gpu` feature).
//!
//! ## Design
//!
//! The rules of the controller's plan, the router's invariants and the
//! batcher's protocol are in the docs of the private modules `plan`,
//! `router` and `batch`.

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod autoscale;
mod batch;
mod config;
mod controller;
mod deployment;
mod directory;
mod error;
mod handle;
mod lock;
mod metrics;
mod plan;
mod proxy;
mod registry;
mod remote_status;
mod replica;
mod router;
mod serve;
mod status;

/// The README's Rust snippet, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use config::{run_config_file, DeploymentConfig, HttpConfig, Registry, ServeConfig};
pub use deployment::{AutoscalingConfig, BatchConfig, Deployment, DeploymentOptions};
pub use error::{CallError, HandlerError, ServeError};
pub use handle::DeploymentHandle;
pub use registry::registered_deployments;
pub use remote_status::fetch_status;
pub use serve::{Serve, ServeOptions};
pub use status::{DeploymentStatus, ReplicaState, ReplicaStatus, ServeStatus};

/// What `register_deployment!` expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{built, types, Built, DeploymentRegistration, Types};
    pub use inventory;
}
