//! The bulk-bytes path between nodes: large objects pulled node to node
//! over plain TCP, beside the control messages (which go over
//! ractor_cluster).
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
//! The wire, version 2 (integers little-endian):
//!
//! ```text
//! request:  "TRDP" | version: u8 | len: u32 | postcard(Request { id, from })   (len <= max_request_bytes)
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

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;
use troupe_objects::{BlobWriter, Fetched, NodeId, ObjectError, ObjectId, ObjectStore};

/// The first bytes of every request.
const MAGIC: [u8; 4] = *b"TRDP";
/// The protocol's version, after the magic.
const VERSION: u8 = 2;
/// The most refs a reply may list (a value holding more is refused).
const MAX_REFS: u32 = 1 << 20;
/// Magic, version, body length.
const REQUEST_HEAD: usize = 4 + 1 + 4;
/// Reply status: the object follows.
const STATUS_OK: u8 = 0;
/// Reply status: the holder's error follows.
const STATUS_ERR: u8 = 1;
/// Reply status: still waiting for the object (it is pending); more follows.
const STATUS_WAIT: u8 = 2;
/// The largest encoded error a client reads.
const MAX_ERROR_BYTES: u32 = 1 << 20;

/// What a client asks for.
#[derive(Serialize, Deserialize)]
struct Request {
    id: ObjectId,
    /// The node pulling it (it becomes a borrower of the refs inside).
    from: NodeId,
}

/// Registers (`true`) or takes back the puller as a borrower of the
/// objects a value sent to it holds refs to (the node's borrowing hook).
pub type Lend = Arc<dyn Fn(NodeId, &[ObjectId], bool) + Send + Sync>;

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
    /// Connections a server serves at once (default 1024); more wait to be
    /// accepted.
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

fn timed_out(what: &str, after: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} took longer than {after:?}"),
    )
}

/// Runs an I/O step with a deadline; elapsing is a `TimedOut` error.
async fn within<T>(
    after: Duration,
    what: &str,
    step: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(after, step).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(what, after)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is one container update: a panic cannot
    // leave it half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- server

/// Serves this node's objects to other nodes' [`DataClient`]s. Stops (its
/// accept loop and every connection) on [`shutdown`](Self::shutdown) or
/// when dropped.
pub struct DataServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    inner: Arc<ServerInner>,
}

struct ServerInner {
    store: ObjectStore,
    lend: Option<Lend>,
    limits: DataLimits,
    /// Free connection slots (of `max_connections`).
    slots: Arc<Semaphore>,
    accepted: AtomicU64,
    open: AtomicUsize,
    sent: metrics::Counter,
}

impl DataServer {
    /// Listens on `addr` (port 0: any free port, see
    /// [`local_addr`](Self::local_addr)) and serves `store`'s objects, on
    /// the current tokio runtime. Objects whose values hold refs are
    /// served without registering anyone as a borrower: use
    /// [`bind_lending`](Self::bind_lending) in a cluster.
    pub async fn bind(
        addr: SocketAddr,
        store: ObjectStore,
        limits: DataLimits,
    ) -> io::Result<DataServer> {
        Self::bind_with(addr, store, limits, None).await
    }

    /// [`bind`](Self::bind), registering each puller as a borrower of the
    /// refs inside what it pulls with `lend` before sending it.
    pub async fn bind_lending(
        addr: SocketAddr,
        store: ObjectStore,
        limits: DataLimits,
        lend: Lend,
    ) -> io::Result<DataServer> {
        Self::bind_with(addr, store, limits, Some(lend)).await
    }

    async fn bind_with(
        addr: SocketAddr,
        store: ObjectStore,
        limits: DataLimits,
        lend: Option<Lend>,
    ) -> io::Result<DataServer> {
        let limits = limits.normalized();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let inner = Arc::new(ServerInner {
            store,
            lend,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            sent: metrics::counter!("troupe_data_bytes_sent_total"),
        });
        tokio::spawn(
            accept_loop(listener, inner.clone(), stopped)
                .instrument(tracing::debug_span!("data_server", %addr)),
        );
        Ok(DataServer { addr, stop, inner })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection (pulls in progress from
    /// it fail). Idempotent.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since it started.
    pub fn connections_accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for DataServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    listener: TcpListener,
    inner: Arc<ServerInner>,
    mut stopped: watch::Receiver<bool>,
) {
    // Connection tasks live in the set: dropping it (when the loop ends)
    // aborts them.
    let mut connections = JoinSet::new();
    loop {
        if *stopped.borrow_and_update() {
            break;
        }
        tokio::select! {
            biased;
            // Told to stop (checked above), or the server is gone.
            changed = stopped.changed() => if changed.is_err() { break },
            Some(_) = connections.join_next() => {}
            accepted = accept(&listener, &inner.slots) => match accepted {
                Ok((stream, peer, slot)) => {
                    inner.accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(
                        serve_connection(stream, inner.clone(), slot)
                            .instrument(tracing::debug_span!("data_connection", %peer)),
                    );
                }
                Err(err) => {
                    // Out of descriptors, say: wait a little instead of
                    // spinning, and keep serving the connections open.
                    tracing::warn!(%err, "accepting a data connection failed");
                    tokio::select! {
                        _ = stopped.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
        }
    }
    tracing::debug!("data server stopped");
}

/// A slot, then a connection (both cancel-safe).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("the connection slots are closed"))?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

async fn serve_connection(
    mut stream: TcpStream,
    inner: Arc<ServerInner>,
    _slot: OwnedSemaphorePermit,
) {
    let _open = Open::enter(&inner.open);
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "TCP_NODELAY not set");
    }
    loop {
        let (id, from) = match read_request(&mut stream, &inner.limits).await {
            Ok(Some(request)) => request,
            Ok(None) => return, // closed or idle
            Err(RequestError::Io(err)) => {
                tracing::debug!(%err, "data connection closed while reading a request");
                return;
            }
            Err(RequestError::Malformed(reason)) => {
                tracing::warn!(%reason, "closing a data connection: malformed request");
                return;
            }
        };
        let served = serve_one(&mut stream, &inner, id, from)
            .instrument(tracing::debug_span!("serve", object = %id))
            .await;
        if let Err(err) = served {
            tracing::debug!(%err, object = %id, "data connection failed while serving");
            return;
        }
    }
}

/// Counts an open connection while it lives (aborted tasks included).
struct Open<'a>(&'a AtomicUsize);

impl<'a> Open<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum RequestError {
    Io(io::Error),
    Malformed(String),
}

/// The next request: `None` when the client closed the connection, or left
/// it idle for `idle_timeout`, between requests.
async fn read_request(
    stream: &mut TcpStream,
    limits: &DataLimits,
) -> Result<Option<(ObjectId, NodeId)>, RequestError> {
    let mut head = [0u8; REQUEST_HEAD];
    match tokio::time::timeout(limits.idle_timeout, stream.read(&mut head[..1])).await {
        Err(_) => {
            tracing::debug!("closing an idle data connection");
            return Ok(None);
        }
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return Err(RequestError::Io(err)),
    }
    within(
        limits.io_timeout,
        "reading a request",
        stream.read_exact(&mut head[1..]),
    )
    .await
    .map_err(RequestError::Io)?;
    if head[..4] != MAGIC {
        return Err(RequestError::Malformed(format!(
            "it does not start with the data protocol's magic ({:?})",
            &head[..4]
        )));
    }
    if head[4] != VERSION {
        return Err(RequestError::Malformed(format!(
            "data protocol version {} (this node speaks {VERSION})",
            head[4]
        )));
    }
    let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
    if len > limits.max_request_bytes {
        return Err(RequestError::Malformed(format!(
            "{len} bytes, over the limit of {}",
            limits.max_request_bytes
        )));
    }
    let mut body = vec![0u8; len];
    within(
        limits.io_timeout,
        "reading a request",
        stream.read_exact(&mut body),
    )
    .await
    .map_err(RequestError::Io)?;
    match postcard::take_from_bytes::<Request>(&body) {
        Ok((request, [])) => Ok(Some((request.id, request.from))),
        Ok((_, rest)) => Err(RequestError::Malformed(format!(
            "{} bytes after the request",
            rest.len()
        ))),
        Err(err) => Err(RequestError::Malformed(format!(
            "its body does not decode: {err}"
        ))),
    }
}

/// Answers one request: WAIT bytes while the object is pending, then the
/// object (and the refs its value holds: `from` is registered as their
/// borrower first) or the store's error.
async fn serve_one(
    stream: &mut TcpStream,
    inner: &ServerInner,
    id: ObjectId,
    from: NodeId,
) -> io::Result<()> {
    let limits = &inner.limits;
    let exported = {
        let export = inner.store.export(id);
        tokio::pin!(export);
        loop {
            tokio::select! {
                exported = &mut export => break exported,
                _ = tokio::time::sleep(limits.keepalive()) => {
                    within(limits.io_timeout, "writing a keep-alive", stream.write_all(&[STATUS_WAIT])).await?;
                }
            }
        }
    };
    match exported {
        Ok((blob, held)) => {
            let refs: Vec<ObjectId> = held.iter().map(|r| r.id()).collect();
            let mut head = Vec::with_capacity(13 + refs.len() * 16);
            head.push(STATUS_OK);
            head.extend_from_slice(&(blob.len() as u64).to_le_bytes());
            head.extend_from_slice(&(refs.len() as u32).to_le_bytes());
            for r in &refs {
                head.extend_from_slice(&r.node.0.to_le_bytes());
                head.extend_from_slice(&r.seq.to_le_bytes());
            }
            let lend = inner.lend.as_ref().filter(|_| !refs.is_empty());
            if let Some(lend) = lend {
                lend(from, &refs, true);
            }
            let sent = async {
                within(
                    limits.io_timeout,
                    "writing a reply",
                    stream.write_all(&head),
                )
                .await?;
                for chunk in blob.chunks(limits.chunk_bytes) {
                    within(
                        limits.io_timeout,
                        "writing a chunk",
                        stream.write_all(chunk),
                    )
                    .await?;
                    inner.sent.increment(chunk.len() as u64);
                }
                Ok::<_, io::Error>(())
            }
            .await;
            if sent.is_err() {
                // The puller never held them.
                if let Some(lend) = lend {
                    lend(from, &refs, false);
                }
            }
            sent?;
            drop(held);
            tracing::debug!(bytes = blob.len(), refs = refs.len(), "object sent");
        }
        Err(err) => {
            tracing::debug!(%err, "answering with an error");
            let body = encode_error(id, &err);
            let mut reply = Vec::with_capacity(5 + body.len());
            reply.push(STATUS_ERR);
            reply.extend_from_slice(&(body.len() as u32).to_le_bytes());
            reply.extend_from_slice(&body);
            within(
                limits.io_timeout,
                "writing a reply",
                stream.write_all(&reply),
            )
            .await?;
        }
    }
    Ok(())
}

/// The error's encoding, within the size a client reads; an error that does
/// not encode (or is too large) becomes a `Fetch` error with its message.
fn encode_error(id: ObjectId, err: &ObjectError) -> Vec<u8> {
    let fallback = |why: String| {
        let mut reason = format!("{err} ({why})");
        // Room for the rest of the encoding; on a char boundary.
        let mut cut = (MAX_ERROR_BYTES as usize / 2).min(reason.len());
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        postcard::to_allocvec(&ObjectError::Fetch { id, reason }).unwrap_or_default()
    };
    match postcard::to_allocvec(err) {
        Ok(bytes) if bytes.len() <= MAX_ERROR_BYTES as usize => bytes,
        Ok(bytes) => fallback(format!(
            "its encoding of {} bytes was too large",
            bytes.len()
        )),
        Err(e) => fallback(format!("it did not encode: {e}")),
    }
}

// ---------------------------------------------------------------- client

/// Pulls objects' bytes from other nodes into this node's store. Cheap to
/// clone (the clones share connections and the in-flight bound).
#[derive(Clone)]
pub struct DataClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    store: ObjectStore,
    /// This node (the puller), named in requests.
    me: NodeId,
    limits: DataLimits,
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    /// Bytes of chunks that may be received at once.
    in_flight: Arc<Semaphore>,
    in_flight_bytes: AtomicU64,
    peak_in_flight_bytes: AtomicU64,
    received: metrics::Counter,
}

/// One peer's connections.
struct Peer {
    /// Connections open to it (of `max_connections_per_peer`).
    slots: Arc<Semaphore>,
    /// Open and unused, with when they were last used.
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

/// A pull that failed; `stale` when the connection came from the pool and
/// failed before any reply (the server closed it while idle): retried.
struct Failure {
    error: DataError,
    stale: bool,
}

impl From<DataError> for Failure {
    fn from(error: DataError) -> Self {
        Failure {
            error,
            stale: false,
        }
    }
}

impl DataClient {
    /// A client that pulls into `store` (its buffers; its memory budget
    /// bounds the size of an object).
    pub fn new(store: ObjectStore, limits: DataLimits) -> Self {
        let limits = limits.normalized();
        DataClient {
            inner: Arc::new(ClientInner {
                me: store.node(),
                store,
                in_flight: Arc::new(Semaphore::new(limits.max_in_flight_bytes as usize)),
                limits,
                peers: Mutex::new(HashMap::new()),
                in_flight_bytes: AtomicU64::new(0),
                peak_in_flight_bytes: AtomicU64::new(0),
                received: metrics::counter!("troupe_data_bytes_received_total"),
            }),
        }
    }

    /// The limits it runs with (normalized).
    pub fn limits(&self) -> &DataLimits {
        &self.inner.limits
    }

    /// Pulls object `id`'s bytes from the node serving at `from` (its
    /// [`DataServer`]): a byte object's bytes, any other object's encoding,
    /// and the refs its value holds. Waits while the object is pending
    /// there. The bytes land in a buffer of this client's store.
    ///
    /// Cancel-safe: dropping the future drops its connection.
    pub async fn pull(&self, from: SocketAddr, id: ObjectId) -> Result<Fetched, DataError> {
        let started = Instant::now();
        let span = tracing::debug_span!("data_pull", object = %id, peer = %from);
        let result = self.pull_inner(from, id).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(fetched) => {
                span.in_scope(
                    || tracing::debug!(bytes = fetched.bytes.len(), elapsed = ?started.elapsed(), "pulled"),
                );
                "ok"
            }
            Err(DataError::Remote(_)) => "remote_error",
            Err(err) => {
                span.in_scope(|| tracing::debug!(%err, "pull failed"));
                "error"
            }
        };
        metrics::histogram!("troupe_data_pull_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn pull_inner(&self, from: SocketAddr, id: ObjectId) -> Result<Fetched, DataError> {
        let peer = self.peer(from);
        let _slot = peer
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DataError::Protocol {
                addr: from,
                reason: "the connection pool is closed".into(),
            })?;
        if let Some(stream) = self.take_idle(&peer) {
            match self.exchange(stream, from, id).await {
                Ok((result, stream)) => {
                    Self::put_idle(&peer, stream);
                    return result.map_err(DataError::Remote);
                }
                Err(Failure { stale: true, error }) => {
                    tracing::debug!(%error, "a pooled connection was closed; opening another");
                }
                Err(failure) => return Err(failure.error),
            }
        }
        let stream = self.connect(from).await?;
        match self.exchange(stream, from, id).await {
            Ok((result, stream)) => {
                Self::put_idle(&peer, stream);
                result.map_err(DataError::Remote)
            }
            Err(failure) => Err(failure.error),
        }
    }

    /// [`pull`](Self::pull), the bytes only (tests).
    #[cfg(test)]
    async fn pull_bytes(
        &self,
        from: SocketAddr,
        id: ObjectId,
    ) -> Result<troupe_objects::Blob, DataError> {
        self.pull(from, id).await.map(|fetched| fetched.bytes)
    }

    fn peer(&self, addr: SocketAddr) -> Arc<Peer> {
        lock(&self.inner.peers)
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Peer {
                    slots: Arc::new(Semaphore::new(self.inner.limits.max_connections_per_peer)),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// The most recently used idle connection, if one is recent enough (the
    /// server closes idle connections after `idle_timeout`).
    fn take_idle(&self, peer: &Peer) -> Option<TcpStream> {
        let max_age = self.inner.limits.idle_timeout / 2;
        let mut idle = lock(&peer.idle);
        idle.retain(|(_, since)| since.elapsed() < max_age);
        idle.pop().map(|(stream, _)| stream)
    }

    fn put_idle(peer: &Peer, stream: TcpStream) {
        // At most one per slot held, so this stays within the per-peer limit.
        lock(&peer.idle).push((stream, Instant::now()));
    }

    /// Closes the idle connections to `addr` (a node that died or left).
    pub fn forget(&self, addr: SocketAddr) {
        if let Some(peer) = lock(&self.inner.peers).remove(&addr) {
            lock(&peer.idle).clear();
        }
    }

    /// Idle connections kept for `addr`.
    pub fn idle_connections(&self, addr: SocketAddr) -> usize {
        lock(&self.inner.peers)
            .get(&addr)
            .map_or(0, |peer| lock(&peer.idle).len())
    }

    /// Bytes of chunks being received now.
    pub fn in_flight_bytes(&self) -> u64 {
        self.inner.in_flight_bytes.load(Ordering::Relaxed)
    }

    /// The most bytes of chunks that were ever received at once (at most
    /// [`DataLimits::max_in_flight_bytes`]).
    pub fn peak_in_flight_bytes(&self) -> u64 {
        self.inner.peak_in_flight_bytes.load(Ordering::Relaxed)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, DataError> {
        let after = self.inner.limits.connect_timeout;
        let stream = within(after, "connecting", TcpStream::connect(addr))
            .await
            .map_err(|source| DataError::Connect { addr, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| DataError::Connect { addr, source })?;
        Ok(stream)
    }

    /// One request and its reply on `stream`; the stream back when it can be
    /// reused (the whole reply was read).
    async fn exchange(
        &self,
        mut stream: TcpStream,
        addr: SocketAddr,
        id: ObjectId,
    ) -> Result<(Result<Fetched, ObjectError>, TcpStream), Failure> {
        let limits = &self.inner.limits;
        let io = |source: io::Error| DataError::Io { addr, source };
        let protocol = |reason: String| DataError::Protocol { addr, reason };
        // A failure before any reply byte on a pooled connection is a stale
        // connection, unless it is a timeout (the peer is there but slow).
        let before_reply = |source: io::Error| Failure {
            stale: source.kind() != io::ErrorKind::TimedOut,
            error: io(source),
        };

        let frame = encode_request(id, self.inner.me);
        within(
            limits.io_timeout,
            "writing a request",
            stream.write_all(&frame),
        )
        .await
        .map_err(before_reply)?;

        let mut status = read_u8(&mut stream, limits.io_timeout)
            .await
            .map_err(before_reply)?;
        while status == STATUS_WAIT {
            status = read_u8(&mut stream, limits.io_timeout).await.map_err(io)?;
        }
        match status {
            STATUS_OK => {}
            STATUS_ERR => {
                let mut len = [0u8; 4];
                within(
                    limits.io_timeout,
                    "reading a reply",
                    stream.read_exact(&mut len),
                )
                .await
                .map_err(io)?;
                let len = u32::from_le_bytes(len);
                if len > MAX_ERROR_BYTES {
                    return Err(protocol(format!(
                        "an error of {len} bytes (at most {MAX_ERROR_BYTES})"
                    ))
                    .into());
                }
                let mut body = vec![0u8; len as usize];
                within(
                    limits.io_timeout,
                    "reading a reply",
                    stream.read_exact(&mut body),
                )
                .await
                .map_err(io)?;
                let err: ObjectError = postcard::from_bytes(&body)
                    .map_err(|e| protocol(format!("its error does not decode: {e}")))?;
                return Ok((Err(err), stream));
            }
            other => return Err(protocol(format!("reply status {other}")).into()),
        }

        let mut head = [0u8; 12];
        within(
            limits.io_timeout,
            "reading a reply",
            stream.read_exact(&mut head),
        )
        .await
        .map_err(io)?;
        let len = u64::from_le_bytes([
            head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
        ]);
        let nrefs = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if nrefs > MAX_REFS {
            return Err(protocol(format!("{nrefs} refs (at most {MAX_REFS})")).into());
        }
        let mut listed = vec![0u8; nrefs as usize * 16];
        within(
            limits.io_timeout,
            "reading a reply",
            stream.read_exact(&mut listed),
        )
        .await
        .map_err(io)?;
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let refs = listed
            .chunks_exact(16)
            .map(|r| ObjectId {
                node: NodeId(word(&r[..8])),
                seq: word(&r[8..]),
            })
            .collect();
        let limit = self
            .inner
            .store
            .config()
            .memory_budget
            .min(usize::MAX as u64);
        if len > limit {
            return Err(DataError::TooLarge {
                addr,
                id,
                len,
                limit,
            }
            .into());
        }
        let mut writer = self.inner.store.blob_writer(len as usize);
        self.receive(&mut stream, &mut writer).await.map_err(io)?;
        let bytes = writer
            .finish()
            .map_err(|e| protocol(format!("the object's bytes: {e}")))?;
        Ok((Ok(Fetched { bytes, refs }), stream))
    }

    /// Reads the writer's announced bytes from `stream` into it, chunk by
    /// chunk, each within the in-flight bound and the I/O timeout.
    async fn receive<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        writer: &mut BlobWriter,
    ) -> io::Result<()> {
        let inner = &*self.inner;
        let chunk = inner.limits.chunk_bytes;
        while writer.written() < writer.expected() {
            let n = (writer.expected() - writer.written()).min(chunk);
            // n <= chunk_bytes <= u32::MAX (normalized).
            let permits = u32::try_from(n).unwrap_or(u32::MAX);
            let permit = inner
                .in_flight
                .acquire_many(permits)
                .await
                .map_err(|_| io::Error::other("the in-flight bound is closed"))?;
            let _held = InFlight::enter(inner, u64::from(permits));
            // Straight into the store's buffer, never zeroed first.
            let mut got = 0;
            while got < n {
                let read = within(
                    inner.limits.io_timeout,
                    "reading a chunk",
                    writer.read_from(stream, n - got),
                )
                .await?;
                if read == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                got += read;
            }
            inner.received.increment(got as u64);
            drop(permit);
        }
        Ok(())
    }
}

/// Counts a chunk's bytes as in flight while it lives.
struct InFlight<'a> {
    inner: &'a ClientInner,
    bytes: u64,
}

impl<'a> InFlight<'a> {
    fn enter(inner: &'a ClientInner, bytes: u64) -> Self {
        let now = inner.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        inner.peak_in_flight_bytes.fetch_max(now, Ordering::Relaxed);
        InFlight { inner, bytes }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.inner
            .in_flight_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn encode_request(id: ObjectId, from: NodeId) -> Vec<u8> {
    let body = postcard::to_allocvec(&Request { id, from }).unwrap_or_default();
    let mut frame = Vec::with_capacity(REQUEST_HEAD + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

async fn read_u8(stream: &mut TcpStream, after: Duration) -> io::Result<u8> {
    let mut byte = [0u8; 1];
    within(after, "reading a reply", stream.read_exact(&mut byte)).await?;
    Ok(byte[0])
}

#[cfg(test)]
mod tests;
