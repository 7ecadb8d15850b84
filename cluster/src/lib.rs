//! Troupe's cluster: nodes that join through `ractor_cluster`, a head that
//! keeps the directory and detects failures, a chunked data path for large
//! objects, and core's seams (placement, remote execution, the object
//! directory) implemented over them.
//!
//! Every node runs the same program (Rust cannot ship a closure): remote
//! functions and actor types are registered by name at link time, and a
//! node whose registry differs from the cluster's is refused.
//!
//! ```no_run
//! use troupe_cluster::ConfigExt;
//! use troupe_core::Config;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A driver joining a head started with `troupe start --head`:
//! let rt = troupe_core::init(Config::connect("127.0.0.1:6380")).await?;
//! // ... submit tasks: what does not fit here runs on the cluster ...
//! rt.shutdown().await?;
//! # Ok(()) }
//! ```

// The lint wall (CI denies warnings): no unsafe code but where a
// `SAFETY` comment allows it; every public item documented and truly
// public; no debugging leftovers; no `unwrap` outside tests.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![warn(clippy::dbg_macro, clippy::todo)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod agent;
pub mod cli;
pub mod cookie;
mod data_path;
#[cfg(test)]
mod fuzz;
mod handshake;
pub mod health;
pub mod jobs;
mod link;
pub mod local;
pub mod membership;
mod node;
pub mod placement;
pub mod protocol;
mod session;
pub mod state;
pub mod tls;
mod transport;

use std::path::PathBuf;

pub use agent::{AGENT_GROUP, MAX_PENDING_PER_PEER};
pub use data_path::{DataClient, DataError, DataLimits, DataServer};
pub use membership::Detector;
pub use node::{
    ClusterNode, ClusterOptions, NodeService, DEFAULT_PORT, HOLD_IO_ENV, SERVICE_NAME, TLS_DIR_ENV,
};
pub use protocol::{Member, MemberState, Role};
pub use transport::{Patience, TransportError, PROBE_AFTER, PROBE_ANSWER_WITHIN};
use troupe_core::Config;

/// The environment variable a driver reads the head's address from.
pub const ADDRESS_ENV: &str = "TROUPE_ADDRESS";

/// What can go wrong joining or running a cluster node. Each says what to
/// do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Nothing (or nothing that speaks Troupe) answered at the address.
    #[error("cannot reach the head at {addr}: {reason} (is it running? start one with `troupe start --head`)")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The head closed the session during authentication: a wrong cookie,
    /// or a cluster with TLS reached without its certificate.
    #[error("the head at {addr} refused this node: use the cluster's cookie (TROUPE_COOKIE, TROUPE_COOKIE_FILE, or the cookie file the head wrote), and if the cluster uses TLS, its certificate (--tls-dir or TROUPE_TLS_DIR)")]
    CookieRefused {
        /// The head's address.
        addr: String,
    },
    /// The head refused the join (another build, another protocol).
    #[error("the head refused this node: {0}")]
    Refused(String),
    /// A read-only client (`--token-file`) asked for what only members may
    /// do, or its token is not the cluster's.
    #[error("the head refused a read-only client: {0}")]
    ReadOnly(String),
    /// A job request failed (no such job, one that cannot start).
    #[error("job: {0}")]
    Job(String),
    /// A state query's input or answer (a malformed filter, an id no node
    /// knows, a timeline nobody recorded): what to change.
    #[error("{0}")]
    Query(String),
    /// No cookie was configured.
    #[error("no cluster cookie: set TROUPE_COOKIE or TROUPE_COOKIE_FILE, or copy the head's cookie file to {}", looked_in.display())]
    NoCookie {
        /// Where one was looked for last.
        looked_in: PathBuf,
    },
    /// A cookie file could not be read or written.
    #[error("cookie file {}: {source}", path.display())]
    CookieFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A socket could not be opened.
    #[error("cannot listen on {addr}: {source} (is the port in use? pick another with --port)")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A part of the node did not start.
    #[error("the cluster node could not start {0}")]
    Start(String),
    /// A second node in one process.
    #[error("this process already runs a cluster node (ractor_cluster's sessions and process groups are process-wide): one node per process")]
    OnePerProcess,
    /// The node has not joined (yet), or has left.
    #[error("this node is not part of a cluster (not joined yet, or it left)")]
    NotJoined,
    /// A peer answered something this protocol does not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A request failed in transport.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// TLS could not be set up (the files of `--tls-dir`).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The node would listen beyond loopback without TLS.
    #[error("binding {addr} without TLS exposes the cluster's traffic to the network: pass --tls-dir (make the files with `troupe cert init` and `troupe cert issue`), or --insecure on a network you trust")]
    Insecure {
        /// The address it would bind.
        addr: String,
    },
    /// `TROUPE_ADDRESS` is unset.
    #[error("TROUPE_ADDRESS is not set: pass the head's address (`host:port`)")]
    NoAddress,
}

/// Cluster options on [`Config`].
pub trait ConfigExt: Sized {
    /// A driver's config joining the head at `address` (`host:port`). The
    /// driver offers no resources of its own unless given some
    /// (`.resources(..)` after this): its tasks run on the cluster.
    fn connect(address: impl Into<String>) -> Config;

    /// [`connect`](Self::connect) to the address in `TROUPE_ADDRESS`.
    fn connect_from_env() -> Result<Config, ClusterError>;

    /// This config, as a member of a cluster with these options.
    fn cluster_node(self, options: ClusterOptions) -> Config;
}

impl ConfigExt for Config {
    fn connect(address: impl Into<String>) -> Config {
        Config::default()
            .resources(troupe_core::Resources::default())
            .cluster_node(ClusterOptions::driver(address))
    }

    fn connect_from_env() -> Result<Config, ClusterError> {
        let address = std::env::var(ADDRESS_ENV)
            .ok()
            .filter(|a| !a.is_empty())
            .ok_or(ClusterError::NoAddress)?;
        Ok(<Config as ConfigExt>::connect(address))
    }

    fn cluster_node(self, options: ClusterOptions) -> Config {
        ClusterNode::new(options).configure(self)
    }
}
