//! The bulk-bytes path between nodes: large objects pulled node to node
//! over plain TCP, beside the control frames (which go over the link,
//! `crate::link`).
//!
//! A node that needs an object's bytes pulls them from the node that holds
//! them ([`DataClient::pull`]); every node serves its own objects
//! ([`DataServer`]). The bytes are the holder's
//! [`ObjectStore::export`](troupe_objects::ObjectStore::export) (a byte
//! object's buffer as it is, anything else its encoding), sent from the
//! store's buffer in chunks and read from the socket straight into a buffer
//! of the receiving store ([`BlobWriter::read_from`]): no copy in between on
//! either side.
//!
//! The wire, version 3 (integers little-endian): each connection opens with
//! the mutual handshake of `handshake.rs` (both sides prove the cluster's
//! cookie; only members are served, and the puller is the node it proved),
//! then carries requests one at a time:
//!
//! ```text
//! request:  "TRDP" | version: u8 | len: u32 | postcard(Request { id })   (len <= max_request_bytes)
//! reply:    WAIT* (0x02, one byte, every io_timeout/3 while the object is pending)
//!           then   0x00 | len: u64 | refs: u32 | (node: u64 | seq: u64)*refs | len bytes
//!                                                       (the object, and the refs its value holds)
//!           or     0x01 | len: u32 | postcard(ObjectError)                (the holder's error)
//! ```
//!
//! The refs an object's value holds are listed before its bytes: the
//! holder registers the puller as a borrower of each (the borrowing
//! protocol, through the node's hook) before it sends them, and the
//! puller's store holds them before it decodes the value.
//!
//! A connection carries one request at a time and is reused for the next:
//! the client keeps a small pool per peer, so many small pulls share a few
//! sockets. A connection that fails is dropped, never reused; one that the
//! server closed while idle in the pool is noticed before any reply and the
//! pull is retried once on a new one. A malformed or oversized request
//! closes its connection (with a warning); the server keeps serving the
//! others.
//!
//! Liveness: every read and write of a chunk has a deadline
//! ([`DataLimits::io_timeout`]), so a peer that stops reading or writing is
//! dropped. A pull of a pending object waits as long as the object does: the
//! holder sends a WAIT byte every third of the timeout meanwhile, which
//! tells the puller it is alive.
//!
//! Memory: the receiver holds at most [`DataLimits::max_in_flight_bytes`]
//! in chunks being received at once (a semaphore of bytes, taken per chunk
//! before reading it), and refuses an object larger than its store's whole
//! memory budget ([`DataError::TooLarge`]) before reading any of it.
//!
//! Its parts: `wire` (the request and reply encodings), `server` (serving
//! this node's objects) and `client` (pulling other nodes' objects, with a
//! pool of connections per peer).

mod client;
mod server;
mod wire;

pub use client::DataClient;
pub use server::DataServer;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use troupe_objects::{NodeId, ObjectError, ObjectId};
#[cfg(test)]
use wire::*;

/// Registers (`true`) or takes back the puller as a borrower of the
/// objects a value sent to it holds refs to (the node's borrowing hook).
pub(crate) type Lend = Arc<dyn Fn(NodeId, &[ObjectId], bool) + Send + Sync>;

/// Limits of the data path, for both sides.
#[derive(Clone, Debug)]
pub struct DataLimits {
    /// Bytes per chunk: the unit of writing, reading, timeouts and of the
    /// in-flight bound (default 5 MiB; at most `u32::MAX`, and at most
    /// `max_in_flight_bytes`).
    pub chunk_bytes: usize,
    /// Bytes of chunks a client receives at once, all pulls together
    /// (default 2 GiB).
    pub max_in_flight_bytes: u64,
    /// The largest request a server reads (default 1 KiB); a larger one
    /// closes its connection.
    pub max_request_bytes: usize,
    /// How long one chunk (or a request, or a reply's header) may take to
    /// read or write before the peer is dropped (default 30 s).
    pub io_timeout: Duration,
    /// How long a connection may take to open (default 5 s).
    pub connect_timeout: Duration,
    /// A server closes a connection idle this long; a client reuses pooled
    /// connections idle for at most half of it (default 60 s).
    pub idle_timeout: Duration,
    /// Members' connections a server serves at once (default 1024); more
    /// wait, once their handshake is done, for one to close. Connections
    /// still in their handshake are bounded apart (per port and per source
    /// address) and never take one of these.
    pub max_connections: usize,
    /// Connections a client opens to one peer at once (default 16); more
    /// pulls from that peer wait for one. Also the most it keeps idle.
    pub max_connections_per_peer: usize,
}

impl Default for DataLimits {
    fn default() -> Self {
        DataLimits {
            chunk_bytes: 5 << 20,
            max_in_flight_bytes: 2 << 30,
            max_request_bytes: 1 << 10,
            io_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_peer: 16,
        }
    }
}

impl DataLimits {
    /// The limits made consistent: nothing zero that would stall, a chunk
    /// no larger than the in-flight bound (or one chunk could never start).
    fn normalized(mut self) -> Self {
        let max_permits = Semaphore::MAX_PERMITS.min(u64::MAX as usize) as u64;
        self.max_in_flight_bytes = self.max_in_flight_bytes.clamp(1, max_permits);
        let chunk_cap = (u32::MAX as u64).min(self.max_in_flight_bytes);
        self.chunk_bytes = (self.chunk_bytes as u64).clamp(1, chunk_cap) as usize;
        self.max_connections = self.max_connections.max(1);
        self.max_connections_per_peer = self.max_connections_per_peer.max(1);
        self.io_timeout = self.io_timeout.max(Duration::from_millis(1));
        self
    }

    /// How often a server says it is still there while an object is pending.
    fn keepalive(&self) -> Duration {
        (self.io_timeout / 3).max(Duration::from_millis(1))
    }
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The holder could not be reached.
    #[error("connecting to {addr} to pull object bytes failed: {source}")]
    Connect {
        /// The holder's data address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection failed or timed out during the pull.
    #[error("pulling object bytes from {addr} failed: {source}")]
    Io {
        /// The holder's data address.
        addr: SocketAddr,
        /// Why (`TimedOut`: the peer stopped sending for `io_timeout`).
        #[source]
        source: io::Error,
    },
    /// The holder answered with an error (the object is unknown there, lost,
    /// failed...).
    #[error("the holder could not serve the object: {0}")]
    Remote(#[source] ObjectError),
    /// The handshake failed: the holder does not hold this cluster's
    /// cookie, or refused this node's proof (another cluster's, or a wrong
    /// cookie).
    #[error("{addr} refused the data connection: {reason}; do both nodes use the same cookie?")]
    Refused {
        /// The holder's data address.
        addr: SocketAddr,
        /// What the handshake said.
        reason: String,
    },
    /// The holder sent something that is not this protocol.
    #[error("{addr} broke the data protocol: {reason}")]
    Protocol {
        /// The holder's data address.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The object is larger than this node can hold (its store's whole
    /// memory budget); nothing of it was read.
    #[error("{addr} holds {id} as {len} bytes, more than this node's limit of {limit} bytes (its object store's memory budget)")]
    TooLarge {
        /// The holder's data address.
        addr: SocketAddr,
        /// The object.
        id: ObjectId,
        /// Its size, as announced.
        len: u64,
        /// The most this node accepts.
        limit: u64,
    },
}

pub(super) fn timed_out(what: &str, after: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} took longer than {after:?}"),
    )
}

/// Runs an I/O step with a deadline; elapsing is a `TimedOut` error.
pub(super) async fn within<T>(
    after: Duration,
    what: &str,
    step: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(after, step).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(what, after)),
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is one container update: a panic cannot
    // leave it half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
