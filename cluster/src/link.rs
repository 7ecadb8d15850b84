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
//! reading cannot grow this node's memory).

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
        tokio::spawn(
            write_queued(inner.clone(), sealed)
                .instrument(tracing::debug_span!("link_out", %to, %addr)),
        );
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
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use tokio::io::AsyncWriteExt;
    use troupe_test_kit::eventually;

    type Got = Arc<StdMutex<Vec<(NodeId, Vec<u8>)>>>;

    async fn server(cookie: &[u8]) -> (LinkServer, Got, Arc<StdMutex<Vec<NodeId>>>) {
        let got: Got = Arc::default();
        let ended: Arc<StdMutex<Vec<NodeId>>> = Arc::default();
        let (g, e) = (got.clone(), ended.clone());
        let server = LinkServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            NodeId(2),
            Credentials::cookie(cookie),
            Arc::new(move |from, frame: &[u8]| g.lock().unwrap().push((from, frame.to_vec()))),
            Arc::new(move |from, _, up| {
                if !up {
                    e.lock().unwrap().push(from)
                }
            }),
        )
        .await
        .unwrap();
        (server, got, ended)
    }

    /// A link from node 1 to `to` at `server`, proving `cookie`.
    async fn try_connect(
        server: &LinkServer,
        to: NodeId,
        cookie: &[u8],
    ) -> Result<LinkWriter, LinkError> {
        LinkWriter::connect(
            server.local_addr(),
            NodeId(1),
            to,
            &Credentials::cookie(cookie),
            Box::new(|_| {}),
        )
        .await
    }

    async fn connect(server: &LinkServer, to: NodeId, cookie: &[u8]) -> LinkWriter {
        try_connect(server, to, cookie).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_arrive_whole_and_in_order_from_the_proven_sender() {
        let (server, got, ended) = server(b"secret").await;
        let writer = connect(&server, NodeId(2), b"secret").await;
        // A burst (queued, batched) with frames of every size up to the cap.
        let frames: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| {
                let len = if i % 500 == 7 {
                    MAX_FRAME_BYTES
                } else {
                    (i % 97) as usize + 1
                };
                vec![(i % 251) as u8; len]
            })
            .collect();
        for f in &frames {
            writer.send(f).unwrap();
        }
        eventually("every frame", || got.lock().unwrap().len() == frames.len()).await;
        let got = got.lock().unwrap().clone();
        for (i, (from, bytes)) in got.iter().enumerate() {
            assert_eq!(*from, NodeId(1));
            assert_eq!(bytes, &frames[i], "frame {i}");
        }
        drop(writer);
        eventually("the end is reported", || !ended.lock().unwrap().is_empty()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_sent_one_at_a_time_from_many_tasks_all_arrive() {
        let (server, got, _) = server(b"secret").await;
        let writer = Arc::new(connect(&server, NodeId(2), b"secret").await);
        let senders: Vec<_> = (0..4u8)
            .map(|t| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for i in 0..3000u32 {
                        writer.send(&[t; 8]).unwrap();
                        match i % 7 {
                            0 => tokio::time::sleep(Duration::from_micros(50)).await,
                            1 | 2 => tokio::task::yield_now().await,
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        eventually("every frame", || got.lock().unwrap().len() == 12_000).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lone_frames_bursts_and_partial_writes_keep_their_order() {
        let (server, got, _) = server(b"secret").await;
        let writer = connect(&server, NodeId(2), b"secret").await;
        let quiet = || tokio::time::sleep(BURST_HOLD + Duration::from_millis(2));
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut send = |frame: Vec<u8>| {
            writer.send(&frame).unwrap();
            sent.push(frame);
        };
        for round in 0..5u8 {
            // Lone, written by the sender itself.
            send(vec![round; 16]);
            quiet().await;
            // Too large for one write: the rest goes to the writer task,
            // and the small frame right after it queues behind it.
            send(vec![round.wrapping_add(100); MAX_FRAME_BYTES]);
            send(vec![round; 3]);
            quiet().await;
            // A burst.
            for i in 0..200u32 {
                send(vec![round; (i % 50) as usize + 1]);
            }
            quiet().await;
        }
        let expected = sent.len();
        eventually("every frame", || got.lock().unwrap().len() == expected).await;
        let got = got.lock().unwrap().clone();
        for (i, (_, bytes)) in got.iter().enumerate() {
            assert_eq!(bytes, &sent[i], "frame {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushed_resolves_once_what_was_queued_is_written() {
        let (server, got, _) = server(b"secret").await;
        let writer = connect(&server, NodeId(2), b"secret").await;
        // A frame too large for one write, and a burst behind it: queued.
        writer.send(&vec![7u8; MAX_FRAME_BYTES]).unwrap();
        for i in 0..100u8 {
            writer.send(&[i; 10]).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), writer.flushed())
            .await
            .expect("flushed within 10 s");
        {
            let state = writer.inner.lock();
            assert!(!state.busy && state.queued.is_empty());
        }
        eventually("every frame", || got.lock().unwrap().len() == 101).await;
        // A closed link is flushed at once.
        writer.abort("test");
        tokio::time::timeout(Duration::from_secs(1), writer.flushed())
            .await
            .expect("at once");
    }

    /// The server counts a link as up only once the writer says it is
    /// ready (its owner stored it and can answer), not when the handshake
    /// ends on the server's side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_is_up_once_its_writer_is_ready() {
        let ups = Arc::new(StdMutex::new(Vec::new()));
        let seen = ups.clone();
        let server = LinkServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            NodeId(2),
            Credentials::cookie(b"k"),
            Arc::new(|_, _: &[u8]| {}),
            Arc::new(move |from, _, up| seen.lock().unwrap().push((from, up))),
        )
        .await
        .unwrap();
        let writer = connect(&server, NodeId(2), b"k").await;
        writer.send(b"a frame before ready").unwrap();
        // The frame is read (and the server would have said "up" by now).
        let marker = connect(&server, NodeId(2), b"k").await;
        marker.ready().unwrap();
        eventually("the ready link is up", || ups.lock().unwrap().len() == 1).await;
        assert_eq!(*ups.lock().unwrap(), vec![(NodeId(1), true)]);
        writer.ready().unwrap();
        eventually("both are up", || ups.lock().unwrap().len() == 2).await;
    }

    #[tokio::test]
    async fn a_wrong_cookie_or_another_target_is_refused_and_the_server_keeps_serving() {
        let (server, got, _) = server(b"secret").await;
        let wrong_cookie = try_connect(&server, NodeId(2), b"guess").await.err();
        assert!(
            matches!(
                wrong_cookie,
                Some(LinkError::Handshake {
                    source: HandshakeError::WrongCookie,
                    ..
                })
            ),
            "{wrong_cookie:?}"
        );
        let wrong_node = try_connect(&server, NodeId(3), b"secret").await.err();
        assert!(
            matches!(
                wrong_node,
                Some(LinkError::Handshake {
                    source: HandshakeError::WrongNode { .. },
                    ..
                })
            ),
            "{wrong_node:?}"
        );
        // Garbage instead of a proof.
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        let mut greeting = [0u8; handshake::GREETING_BYTES];
        raw.read_exact(&mut greeting).await.unwrap();
        raw.write_all(&[0xAB; handshake::PROOF_BYTES])
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest).await; // closed by the server
        assert!(rest.is_empty(), "no answer to a wrong proof");
        let good = connect(&server, NodeId(2), b"secret").await;
        good.send(b"hello").unwrap();
        eventually("the good frame", || !got.lock().unwrap().is_empty()).await;
        assert_eq!(*got.lock().unwrap(), vec![(NodeId(1), b"hello".to_vec())]);
    }

    #[tokio::test]
    async fn an_oversize_frame_closes_the_link() {
        let (server, got, ended) = server(b"k").await;
        let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
        handshake::connect(&mut raw, Purpose::Link, NodeId(7), b"k", Some(NodeId(2)))
            .await
            .unwrap();
        raw.write_all(&((MAX_FRAME_BYTES as u32) + 1).to_le_bytes())
            .await
            .unwrap();
        eventually("the link ends", || {
            ended.lock().unwrap().contains(&NodeId(7))
        })
        .await;
        assert!(got.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_reading_hits_backpressure_not_unbounded_memory() {
        // A listener that completes the handshake's first half, then never reads.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            handshake::accept(&mut s, Purpose::Link, NodeId(2), b"k")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        });
        let w = LinkWriter::connect(
            addr,
            NodeId(1),
            NodeId(2),
            &Credentials::cookie(b"k"),
            Box::new(|_| {}),
        )
        .await
        .unwrap();
        let frame = vec![0u8; MAX_FRAME_BYTES];
        let mut refused = None;
        for i in 0..(MAX_QUEUED_BYTES / MAX_FRAME_BYTES) * 4 {
            if let Err(err) = w.send(&frame) {
                refused = Some((i, err));
                break;
            }
            tokio::task::yield_now().await;
        }
        let (_, err) = refused.expect("sending stops succeeding");
        assert!(matches!(err, LinkError::Backpressure), "{err}");
        assert!(w.inner.lock().queued.len() <= MAX_QUEUED_BYTES);
    }
}
