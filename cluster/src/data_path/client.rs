//! Pulling other nodes' objects into this node's store, over a small
//! pool of connections per peer.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::Instrument;
use troupe_objects::{BlobWriter, Fetched, NodeId, ObjectError, ObjectId, ObjectStore};

use super::wire::*;
use super::{lock, within, DataError, DataLimits};
use crate::handshake::{self, Purpose};
use crate::tls::{Credentials, Stream};

/// Pulls objects' bytes from other nodes into this node's store. Cheap to
/// clone (the clones share connections and the in-flight bound).
#[derive(Clone)]
pub struct DataClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    store: ObjectStore,
    /// This node (the puller), as its handshakes prove.
    me: NodeId,
    /// What it proves to holders (and checks of them).
    credentials: Credentials,
    limits: DataLimits,
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    /// Bytes of chunks that may be received at once.
    in_flight: Arc<Semaphore>,
    in_flight_bytes: AtomicU64,
    peak_in_flight_bytes: AtomicU64,
}

/// One peer's connections.
struct Peer {
    /// Connections open to it (of `max_connections_per_peer`).
    slots: Arc<Semaphore>,
    /// Open and unused, with when they were last used.
    idle: Mutex<Vec<(Stream, Instant)>>,
    /// Bytes received from it, by the node its first handshake proved.
    received: OnceLock<metrics::Counter>,
}

impl Peer {
    fn received(&self) -> metrics::Counter {
        self.received.get().cloned().unwrap_or_else(
            || metrics::counter!("troupe_data_bytes_received_total", "peer" => "unknown"),
        )
    }
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
    /// bounds the size of an object), proving `credentials` to each holder
    /// (and pulling only from holders that prove theirs back).
    pub fn new(store: ObjectStore, limits: DataLimits, credentials: Credentials) -> Self {
        let limits = limits.normalized();
        DataClient {
            inner: Arc::new(ClientInner {
                me: store.node(),
                credentials,
                store,
                in_flight: Arc::new(Semaphore::new(limits.max_in_flight_bytes as usize)),
                limits,
                peers: Mutex::new(HashMap::new()),
                in_flight_bytes: AtomicU64::new(0),
                peak_in_flight_bytes: AtomicU64::new(0),
            }),
        }
    }

    /// The limits it runs with (normalized).
    pub fn limits(&self) -> &DataLimits {
        &self.inner.limits
    }

    /// Pulls object `id`'s bytes from the node serving at `from` (its
    /// [`DataServer`](super::DataServer)): a byte object's bytes, any other
    /// object's encoding, and the refs its value holds. Waits while the object is pending
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
            match self.exchange(stream, from, id, &peer.received()).await {
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
        let (stream, node) = self.connect(from).await?;
        let _ = peer.received.set(metrics::counter!(
            "troupe_data_bytes_received_total",
            "peer" => node.to_string()
        ));
        match self.exchange(stream, from, id, &peer.received()).await {
            Ok((result, stream)) => {
                Self::put_idle(&peer, stream);
                result.map_err(DataError::Remote)
            }
            Err(failure) => Err(failure.error),
        }
    }

    /// [`pull`](Self::pull), the bytes only (tests).
    #[cfg(test)]
    pub(crate) async fn pull_bytes(
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
                    received: OnceLock::new(),
                })
            })
            .clone()
    }

    /// The most recently used idle connection, if one is recent enough (the
    /// server closes idle connections after `idle_timeout`).
    fn take_idle(&self, peer: &Peer) -> Option<Stream> {
        let max_age = self.inner.limits.idle_timeout / 2;
        let mut idle = lock(&peer.idle);
        idle.retain(|(_, since)| since.elapsed() < max_age);
        idle.pop().map(|(stream, _)| stream)
    }

    fn put_idle(peer: &Peer, stream: Stream) {
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

    /// A new connection to `addr`, and the node it proved to be.
    async fn connect(&self, addr: SocketAddr) -> Result<(Stream, NodeId), DataError> {
        let after = self.inner.limits.connect_timeout;
        let tcp = within(after, "connecting", tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|source| DataError::Connect { addr, source })?;
        tcp.set_nodelay(true)
            .map_err(|source| DataError::Connect { addr, source })?;
        let (me, credentials) = (self.inner.me, &self.inner.credentials);
        handshake::connect_over(tcp, Purpose::Data, me, credentials, None)
            .await
            .map_err(|why| DataError::Refused {
                addr,
                reason: why.to_string(),
            })
    }

    /// One request and its reply on `stream`; the stream back when it can be
    /// reused (the whole reply was read).
    async fn exchange(
        &self,
        mut stream: Stream,
        addr: SocketAddr,
        id: ObjectId,
        received: &metrics::Counter,
    ) -> Result<(Result<Fetched, ObjectError>, Stream), Failure> {
        let limits = &self.inner.limits;
        let io = |source: io::Error| DataError::Io { addr, source };
        let protocol = |reason: String| DataError::Protocol { addr, reason };
        // A failure before any reply byte on a pooled connection is a stale
        // connection, unless it is a timeout (the peer is there but slow).
        let before_reply = |source: io::Error| Failure {
            stale: source.kind() != io::ErrorKind::TimedOut,
            error: io(source),
        };

        let frame = encode_request(id);
        within(limits.io_timeout, "writing a request", async {
            // Flushed: over TLS, written bytes may wait in the session's buffer.
            stream.write_all(&frame).await?;
            stream.flush().await
        })
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
        self.receive(&mut stream, &mut writer, received)
            .await
            .map_err(io)?;
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
        received: &metrics::Counter,
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
            received.increment(got as u64);
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
