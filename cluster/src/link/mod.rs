//! The control link: a TCP connection of Troupe's own per peer and
//! direction, carrying the control frames (requests, replies, notices)
//! outside ractor_cluster's session actors (five actor hops each way).
//! ractor_cluster authenticates nodes, finds peers and reports a session's
//! end; a frame to a peer costs one socket write and one read.
//!
//! Each node listens ([`LinkServer`]); to send to a peer it connects to the
//! peer's listener ([`LinkWriter::connect`]) and only writes on that
//! connection; what a peer sends arrives on the connection the peer opened.
//! So each direction has its own connection and its own order.
//!
//! The wire (integers little-endian): the mutual handshake of
//! `handshake.rs` (both sides prove the cookie; the client must reach the
//! node it meant), then
//!
//! ```text
//! client → server: (len: u32 | frame [len])*      len <= MAX_FRAME_BYTES
//! ```
//!
//! The node id the client proved is the sender of every frame on the link.
//! A client that does not finish the handshake within its deadline or
//! sends a frame over the cap is dropped (with a warning and
//! `troupe_cluster_link_refused_total` or `troupe_cluster_bad_frames_total`);
//! the server keeps serving others.
//!
//! Sending: an idle link writes a frame at once, from the sender's thread
//! (no task hop, and no wake-up of the writer task: for requests made one
//! at a time, that wake-up of another thread cost as much as the write). A
//! frame that follows the last direct write within `BURST_GAP` (or within
//! `BURST_HOLD` of the last burst), or one that finds a write under way,
//! is queued and written with the others by the link's writer task after
//! one yield: a burst becomes a few large writes. At most
//! `MAX_QUEUED_BYTES` wait; past that, sending fails (a peer that stops
//! reading cannot grow this node's memory). Under TLS every frame goes
//! through the writer task (it seals them), which runs on a thread of its
//! own ([`sealing`]), not on the cluster's I/O runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::Instrument;
use troupe_core::NodeId;

use crate::handshake::{self, HandshakeError, Purpose, RefusalLog};

/// Control links refused, logged at most once a second.
static REFUSALS: RefusalLog = RefusalLog::new("control link");
use crate::protocol::MAX_FRAME_BYTES;
use crate::tls::{Credentials, Stream};

/// Frames closer together than this after a direct write are a burst:
/// they queue for the writer task (one write for many) instead of each
/// making a syscall of its own.
const BURST_GAP: Duration = Duration::from_micros(20);

/// How long a link stays in burst mode after its last burst frame. Under
/// load the frames of a burst spread out (processes wait for the CPU), and
/// writing each alone costs a syscall and a wake-up of the reader: batching
/// holds until the link goes quiet.
const BURST_HOLD: Duration = Duration::from_millis(5);
/// The most bytes queued on one link before sending fails.
pub(crate) const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Why a link could not send (or connect).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The connection failed or was closed.
    #[error("the control link is closed")]
    Closed,
    /// The peer is not reading: too many bytes wait already.
    #[error("{MAX_QUEUED_BYTES} bytes already wait on the control link: the peer is not reading")]
    Backpressure,
    /// Connecting failed.
    #[error("control link to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The handshake failed: the peer does not hold the cookie, or is not
    /// the node meant.
    #[error("control link to {addr} refused: {source}")]
    Handshake {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: HandshakeError,
    },
}

/// What the server hands over: the sender and one frame's bytes.
pub(crate) type Deliver = Arc<dyn Fn(NodeId, &[u8]) + Send + Sync>;
/// Called when a peer's inbound connection is up (`true`, after the
/// handshake) and when it ends (`false`), with its serial number.
pub(crate) type Ended = Arc<dyn Fn(NodeId, u64, bool) + Send + Sync>;

/// Accepts peers' links and hands their frames over.
pub(crate) struct LinkServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl LinkServer {
    /// Listens on `addr` for node `me`; frames go to `deliver`, and a
    /// peer's connection coming up and ending (with its serial number,
    /// unique in this server) to `ended`.
    pub(crate) async fn bind(
        addr: SocketAddr,
        me: NodeId,
        credentials: Credentials,
        deliver: Deliver,
        ended: Ended,
    ) -> io::Result<LinkServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let serials = Arc::new(AtomicU64::new(1));
        let admission = handshake::Admission::standard();
        tokio::spawn(
            async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        Some(_) = connections.join_next() => {}
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let Some(admitted) = admission.admit(peer.ip()) else {
                                    metrics::counter!("troupe_cluster_link_refused_total").increment(1);
                                    REFUSALS.refused(Some(peer), &"too many handshakes pending");
                                    continue;
                                };
                                let serial = serials.fetch_add(1, Ordering::Relaxed);
                                let (credentials, deliver, ended) = (credentials.clone(), deliver.clone(), ended.clone());
                                connections.spawn(
                                    serve(stream, me, credentials, deliver, ended, serial, admitted)
                                        .instrument(tracing::debug_span!("link_in", %peer)),
                                );
                            }
                            Err(err) => {
                                tracing::warn!(%err, "accepting a control link failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                    }
                }
            }
            .instrument(tracing::debug_span!("link_server", %addr)),
        );
        Ok(LinkServer { addr, stop })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LinkServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn serve(
    tcp: TcpStream,
    me: NodeId,
    credentials: Credentials,
    deliver: Deliver,
    ended: Ended,
    serial: u64,
    admitted: handshake::Admitted,
) {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();
    let proved = handshake::accept_over(tcp, Purpose::Link, me, &credentials).await;
    drop(admitted);
    let (mut stream, from) = match proved {
        Ok(proved) => proved,
        Err(why) => {
            metrics::counter!("troupe_cluster_link_refused_total").increment(1);
            REFUSALS.refused(peer, &why);
            return;
        }
    };
    tracing::debug!(%from, serial, "control link proven");
    // Up once the peer says its end is ready (`LinkWriter::ready`): from
    // then on its answers can come back.
    let up = || {
        tracing::debug!(%from, serial, "control link up");
        ended(from, serial, true)
    };
    let why = read_frames(&mut stream, from, &deliver, up).await;
    tracing::debug!(%from, serial, %why, "control link ended");
    ended(from, serial, false);
}

/// Reads frames until the connection ends; why it ended. It sleeps in the
/// reactor between reads: it runs on the cluster's one I/O thread, which a
/// spin would take from everything else there (work from peers is handed
/// to the dispatcher, which does the looking, `node/dispatch.rs`).
async fn read_frames(
    stream: &mut Stream,
    from: NodeId,
    deliver: &Deliver,
    up: impl FnOnce(),
) -> String {
    let mut up = Some(up);
    let received = metrics::counter!("troupe_cluster_control_bytes_received_total");
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut start = 0;
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            // Move what is left of a partial frame to the front first.
            buf.drain(..start);
            start = 0;
            buf.reserve(64 * 1024);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return "closed by the peer".to_owned(),
            Ok(n) => received.increment(n as u64),
            Err(err) => return err.to_string(),
        }
        while let Some(head) = buf.get(start..start + 4) {
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if len > MAX_FRAME_BYTES {
                metrics::counter!("troupe_cluster_bad_frames_total").increment(1);
                tracing::warn!(%from, len, "control frame over the cap: link closed");
                return format!("a frame of {len} bytes, over the cap");
            }
            let Some(frame) = buf.get(start + 4..start + 4 + len) else {
                break;
            };
            // An empty frame is the writer's "ready", never a message.
            if len == 0 {
                if let Some(up) = up.take() {
                    up();
                }
            } else {
                deliver(from, frame);
            }
            start += 4 + len;
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
        }
    }
}

/// Sends frames to one peer over the connection this node opened.
pub(crate) struct LinkWriter {
    inner: Arc<Writer>,
}

struct Writer {
    /// The plain socket, which a sender writes to directly when the link is
    /// idle; `None` with TLS (records are sealed by the writer task alone,
    /// which owns the stream).
    direct: Option<TcpStream>,
    state: Mutex<WriteState>,
    wake: Notify,
    /// Told when the queue has been written (or the link closed).
    drained: Notify,
    closed: AtomicBool,
    /// `troupe_cluster_control_bytes_sent_total`.
    sent: metrics::Counter,
    /// Called once, by whoever sees the connection fail first.
    broken: Mutex<Option<Broken>>,
}

type Broken = Box<dyn FnOnce(io::Error) + Send>;

#[derive(Default)]
struct WriteState {
    /// Length-prefixed frames waiting for the writer task.
    queued: Vec<u8>,
    /// The writer task owns the socket's order now: frames queue.
    busy: bool,
    /// When a sender last wrote a frame itself.
    last_direct: Option<Instant>,
    /// Until when frames are treated as a burst (queued behind a direct
    /// write for the writer task).
    burst_until: Option<Instant>,
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        self.drained.notify_waiters();
    }

    /// The connection failed: closes it and tells the owner (once).
    fn fail(&self, err: io::Error) {
        self.close();
        let broken = self.broken.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(broken) = broken {
            broken(err);
        }
    }
}

impl LinkWriter {
    /// Connects to `to`'s link server at `addr` as node `from`, proving
    /// `credentials`; `broken` is called once if the connection fails
    /// later.
    pub(crate) async fn connect(
        addr: SocketAddr,
        from: NodeId,
        to: NodeId,
        credentials: &Credentials,
        broken: Broken,
    ) -> Result<LinkWriter, LinkError> {
        let failed = |source| LinkError::Connect { addr, source };
        let tcp = tokio::time::timeout(handshake::HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| failed(io::ErrorKind::TimedOut.into()))?
            .map_err(failed)?;
        tcp.set_nodelay(true).map_err(failed)?;
        let (stream, _) = handshake::connect_over(tcp, Purpose::Link, from, credentials, Some(to))
            .await
            .map_err(|source| LinkError::Handshake { addr, source })?;
        let (direct, sealed) = match stream {
            Stream::Plain(tcp) => (Some(tcp), None),
            tls => (None, Some(tls)),
        };
        let inner = Arc::new(Writer {
            direct,
            state: Mutex::new(WriteState::default()),
            wake: Notify::new(),
            drained: Notify::new(),
            closed: AtomicBool::new(false),
            sent: metrics::counter!("troupe_cluster_control_bytes_sent_total"),
            broken: Mutex::new(Some(broken)),
        });
        let writing = write_queued(inner.clone(), sealed)
            .instrument(tracing::debug_span!("link_out", %to, %addr));
        match (inner.direct.is_none(), sealing()) {
            (true, Some(sealing)) => drop(sealing.spawn(writing)),
            _ => drop(tokio::spawn(writing)),
        }
        Ok(LinkWriter { inner })
    }

    /// Tells the peer this end is ready: its owner can send (and so answer)
    /// on it. The peer counts the link as up from then on, not from the
    /// handshake, which ends on its side before this end has stored the
    /// link.
    pub(crate) fn ready(&self) -> Result<(), LinkError> {
        self.send(&[])
    }

    /// Sends one frame (already encoded, at most `MAX_FRAME_BYTES`), in
    /// order after those sent before it. An empty frame is `ready`.
    pub(crate) fn send(&self, frame: &[u8]) -> Result<(), LinkError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(LinkError::Closed);
        }
        let head = (frame.len() as u32).to_le_bytes();
        let mut state = inner.lock();
        let Some(direct) = inner.direct.as_ref().filter(|_| !state.busy) else {
            if state.queued.len() + 4 + frame.len() > MAX_QUEUED_BYTES {
                return Err(LinkError::Backpressure);
            }
            state.queued.extend_from_slice(&head);
            state.queued.extend_from_slice(frame);
            state.burst_until = Some(Instant::now() + BURST_HOLD);
            if !state.busy {
                // TLS: the writer task seals and writes every frame.
                state.busy = true;
                drop(state);
                inner.wake.notify_one();
            }
            return Ok(());
        };
        // Idle: write now, from this thread. In a burst, the frames that
        // follow queue behind this one (busy) and go together.
        let now = Instant::now();
        let burst = state.burst_until.is_some_and(|until| now < until)
            || state
                .last_direct
                .is_some_and(|at| now.saturating_duration_since(at) < BURST_GAP);
        state.last_direct = Some(now);
        if burst {
            state.burst_until = Some(now + BURST_HOLD);
        }
        let parts = [io::IoSlice::new(&head), io::IoSlice::new(frame)];
        let total = 4 + frame.len();
        let written = match direct.try_write_vectored(&parts) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => {
                drop(state);
                inner.fail(err);
                return Err(LinkError::Closed);
            }
        };
        inner.sent.increment(written as u64);
        if written == total && !burst {
            // A lone frame, all written: nothing for the writer task.
            return Ok(());
        }
        if written < total {
            let mut rest = Vec::with_capacity(total - written);
            rest.extend_from_slice(&head);
            rest.extend_from_slice(frame);
            state.queued.extend_from_slice(&rest[written..]);
        }
        state.busy = true;
        drop(state);
        inner.wake.notify_one();
        Ok(())
    }
}

impl LinkWriter {
    /// Resolves once every frame sent before the call is in the socket
    /// (what a node about to close its links waits for), or the link
    /// closed.
    pub(crate) async fn flushed(&self) {
        loop {
            let drained = self.inner.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.inner.closed.load(Ordering::Acquire) || !self.inner.lock().busy {
                return;
            }
            drained.await;
        }
    }

    /// Closes the link as failed (`why`): this node's owner of the link is
    /// told (the `broken` callback), as for a connection that broke by
    /// itself, and the socket closes once its last user lets go (the peer
    /// sees it end).
    pub(crate) fn abort(&self, why: &str) {
        self.inner.fail(io::Error::other(why.to_owned()));
    }
}

impl Drop for LinkWriter {
    fn drop(&mut self) {
        self.inner.close();
    }
}

/// The writer task: after one yield (the rest of the burst queues up),
/// writes what is queued, until nothing is. With TLS it owns the stream
/// (`sealed`) and writes every frame; otherwise it writes to the socket the
/// senders share.
/// Where TLS links' writer tasks run: a thread of their own, not the
/// cluster's I/O runtime. A TLS link's every frame is sealed and written
/// by its writer task, heartbeats included, so a writer queued behind the
/// I/O runtime's ready work on a loaded machine would hold them up (and
/// get a live node declared dead). The stream stays registered with the
/// I/O runtime's reactor: a write that fits the socket's buffer, as a
/// heartbeat's does, needs nothing from it. `None` if the thread could not
/// be started (the writers then run on the I/O runtime).
fn sealing() -> Option<&'static tokio::runtime::Handle> {
    // Lives as long as the process (statics are never dropped): nodes come
    // and go in one (a worker that rejoins), and an idle one costs a
    // parked thread.
    static SEALING: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    SEALING
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("troupe-link-seal")
                .enable_all()
                .build()
                .map_err(|err| {
                    tracing::warn!(%err, "no thread for TLS link writers: they share the I/O runtime")
                })
                .ok()
        })
        .as_ref()
        .map(|runtime| runtime.handle())
}

async fn write_queued(inner: Arc<Writer>, mut sealed: Option<Stream>) {
    let mut batch = Vec::new();
    loop {
        inner.wake.notified().await;
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        tokio::task::yield_now().await;
        loop {
            {
                let mut state = inner.lock();
                if state.queued.is_empty() {
                    state.busy = false;
                    break;
                }
                std::mem::swap(&mut batch, &mut state.queued);
            }
            let written = match (&mut sealed, &inner.direct) {
                (Some(stream), _) => write_sealed(stream, &batch).await,
                (None, Some(direct)) => write_all(direct, &batch).await,
                (None, None) => Err(io::Error::other("a link with no stream")),
            };
            if let Err(err) = written {
                inner.fail(err);
                return;
            }
            inner.sent.increment(batch.len() as u64);
            batch.clear();
        }
        inner.drained.notify_waiters();
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
    }
}

async fn write_sealed(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
