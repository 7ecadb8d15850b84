//! Serving this node's objects to other nodes' pulls.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;
use troupe_objects::{NodeId, ObjectId, ObjectStore};

use super::wire::*;
use super::{within, DataLimits, Lend};
use crate::handshake::{self, Purpose, RefusalLog};

/// Data connections refused, logged at most once a second.
static REFUSALS: RefusalLog = RefusalLog::new("data connection");
use crate::tls::{Credentials, Stream};

/// Serves this node's objects to other nodes'
/// [`DataClient`](super::DataClient)s. Stops (its accept loop and every
/// connection) on [`shutdown`](Self::shutdown) or when dropped.
pub struct DataServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    inner: Arc<ServerInner>,
}

struct ServerInner {
    store: ObjectStore,
    /// What every connection must prove (the cookie; a certificate with TLS).
    credentials: Credentials,
    lend: Option<Lend>,
    limits: DataLimits,
    /// Free connection slots (of `max_connections`).
    slots: Arc<Semaphore>,
    accepted: AtomicU64,
    open: AtomicUsize,
}

impl DataServer {
    /// Listens on `addr` (port 0: any free port, see
    /// [`local_addr`](Self::local_addr)) and serves `store`'s objects, on
    /// the current tokio runtime, to clients that prove `credentials` (and
    /// to no one else). Objects whose values hold refs are served without
    /// registering anyone as a borrower: use
    /// [`bind_lending`](Self::bind_lending) in a cluster.
    pub async fn bind(
        addr: SocketAddr,
        store: ObjectStore,
        limits: DataLimits,
        credentials: Credentials,
    ) -> io::Result<DataServer> {
        Self::bind_with(addr, store, limits, credentials, None).await
    }

    /// [`bind`](Self::bind), registering each puller as a borrower of the
    /// refs inside what it pulls with `lend` before sending it.
    pub async fn bind_lending(
        addr: SocketAddr,
        store: ObjectStore,
        limits: DataLimits,
        credentials: Credentials,
        lend: Lend,
    ) -> io::Result<DataServer> {
        Self::bind_with(addr, store, limits, credentials, Some(lend)).await
    }

    async fn bind_with(
        addr: SocketAddr,
        store: ObjectStore,
        limits: DataLimits,
        credentials: Credentials,
        lend: Option<Lend>,
    ) -> io::Result<DataServer> {
        let limits = limits.normalized();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let inner = Arc::new(ServerInner {
            store,
            credentials,
            lend,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
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
    let admission = handshake::Admission::standard();
    loop {
        if *stopped.borrow_and_update() {
            break;
        }
        tokio::select! {
            biased;
            // Told to stop (checked above), or the server is gone.
            changed = stopped.changed() => if changed.is_err() { break },
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(admitted) = admission.admit(peer.ip()) else {
                        metrics::counter!("troupe_data_connections_refused_total").increment(1);
                        REFUSALS.refused(Some(peer), &"too many handshakes pending");
                        continue;
                    };
                    inner.accepted.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(
                        serve_connection(stream, inner.clone(), admitted)
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

/// Serves one connection: its handshake first (bounded by `admitted`),
/// then, holding one of the server's slots, its requests.
async fn serve_connection(tcp: TcpStream, inner: Arc<ServerInner>, admitted: handshake::Admitted) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(%err, "TCP_NODELAY not set");
    }
    let peer = tcp.peer_addr().ok();
    let me = inner.store.node();
    let proved = handshake::accept_over(tcp, Purpose::Data, me, &inner.credentials).await;
    drop(admitted);
    let (mut stream, from) = match proved {
        Ok(proved) => proved,
        Err(why) => {
            metrics::counter!("troupe_data_connections_refused_total").increment(1);
            REFUSALS.refused(peer, &why);
            return;
        }
    };
    // Only members take a slot: clients that never prove the cookie cannot
    // keep a member's pulls waiting.
    let Ok(_slot) = inner.slots.clone().acquire_owned().await else {
        return;
    };
    let _open = Open::enter(&inner.open);
    loop {
        let id = match read_request(&mut stream, &inner.limits).await {
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

pub(super) enum RequestError {
    Io(io::Error),
    Malformed(String),
}

/// The next request: `None` when the client closed the connection, or left
/// it idle for `idle_timeout`, between requests.
pub(super) async fn read_request<R: AsyncRead + Unpin>(
    stream: &mut R,
    limits: &DataLimits,
) -> Result<Option<ObjectId>, RequestError> {
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
        Ok((request, [])) => Ok(Some(request.id)),
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
    stream: &mut Stream,
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
                    within(limits.io_timeout, "writing a keep-alive", written(stream, &[STATUS_WAIT])).await?;
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
            let sent_to =
                metrics::counter!("troupe_data_bytes_sent_total", "peer" => from.to_string());
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
                    sent_to.increment(chunk.len() as u64);
                }
                within(limits.io_timeout, "writing a chunk", stream.flush()).await
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
                written(stream, &reply),
            )
            .await?;
        }
    }
    Ok(())
}

/// Writes `bytes` and flushes them: over TLS, written bytes may wait in the
/// session's buffer until a flush.
async fn written(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
