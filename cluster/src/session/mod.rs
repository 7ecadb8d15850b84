//! The session port: the front door of ractor_cluster's sessions (process
//! groups and link notices travel through them).
//!
//! ractor_cluster authenticates a session with SHA-256 over a 32-bit
//! challenge, compared with `==`, and sets no deadline on its handshake.
//! So Troupe accepts the session port's connections itself: each one runs
//! TLS (when the node has it) and Troupe's mutual cookie handshake
//! (`handshake.rs`: constant-time MACs, fresh 128-bit nonces, a deadline, a
//! bound on pending handshakes per port and per source) before ractor sees
//! a byte, and is then handed to the node server as an external stream.
//! ractor's own listener still runs (it cannot be turned off): it is bound
//! to loopback on a random port behind TLS that has no certificate to
//! present, so no connection through it can complete.
//!
//! The stream ractor gets is bounded both ways (`guard.rs`): whole frames
//! at a bounded rate, a bounded number of remote actors and groups, and a
//! deadline on writes to a peer that reads nothing.
//!
//! The node id proven here travels with the stream (its peer label); when
//! ractor reports the session authenticated, a peer whose ractor name
//! claims another node is disconnected.
//!
//! A client that proves the read-only token instead of the cookie (an
//! observer: `troupe status --token-file`) never reaches ractor: it may send
//! requests framed as on the control link (`len: u32 | frame`), and only
//! [`Request::Status`] and [`Request::ClusterState`] are answered;
//! anything else is refused.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;
use troupe_core::NodeId;

mod guard;

use self::guard::{DeadlineWrite, GuardedRead, SessionLimits};
use crate::handshake::{self, HandshakeError, Purpose, RefusalLog, Standing};
use futures::future::BoxFuture;

use crate::protocol::{Frame, Reply, Request, MAX_FRAME_BYTES};
use crate::tls::{Credentials, Stream};

static REFUSALS: RefusalLog = RefusalLog::new("control session");

/// Answers an observer's read-only request (the status, the cluster's
/// state).
pub(crate) type Observe = Arc<dyn Fn(Request) -> BoxFuture<'static, Reply> + Send + Sync>;

/// An observer's request, at most (a status request is a few bytes).
const MAX_OBSERVER_REQUEST: usize = 4096;
/// Requests an observer may make on one connection.
const MAX_OBSERVER_REQUESTS: usize = 16;
/// Observers connected at once.
const MAX_OBSERVERS: usize = 64;
/// How long an observer's connection may stay silent.
const OBSERVER_IDLE: Duration = Duration::from_secs(10);

/// The prefix of a session's peer label; the proven node id follows.
const PROVEN: &str = "troupe-node:";

/// An authenticated connection, as ractor_cluster takes it.
struct SessionStream {
    stream: Stream,
    label: String,
}

impl ClusterBidiStream for SessionStream {
    /// Both halves bounded (`guard.rs`): what ractor_cluster would queue
    /// for this peer without limit.
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let limits = SessionLimits::standard();
        let (read, write) = tokio::io::split(self.stream);
        (
            Box::new(GuardedRead::new(read, limits.clone(), self.label.clone())),
            Box::new(DeadlineWrite::new(write, limits.write_stall, self.label)),
        )
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

fn label(node: NodeId, peer: Option<SocketAddr>) -> String {
    match peer {
        Some(peer) => format!("{PROVEN}{} {peer}", node.0),
        None => format!("{PROVEN}{}", node.0),
    }
}

/// The node a session's peer label says was proven, if it carries one.
pub(crate) fn proven(peer_label: &str) -> Option<NodeId> {
    let rest = peer_label.strip_prefix(PROVEN)?;
    let id = rest.split(' ').next()?;
    id.parse().ok().map(NodeId)
}

/// The node a ractor session name (`troupe-<id>@host`) claims.
pub(crate) fn claimed(ractor_name: &str) -> Option<NodeId> {
    let rest = ractor_name.strip_prefix("troupe-")?;
    let id = rest.split('@').next()?;
    id.parse().ok().map(NodeId)
}

/// Forwards ractor_cluster's session events, closing a session whose name
/// claims another node than the one it proved.
pub(crate) struct SessionEvents(pub(crate) mpsc::UnboundedSender<SessionEvent>);

/// A session event the node acts on.
#[derive(Debug)]
pub(crate) enum SessionEvent {
    /// A session passed ractor's authentication.
    Authenticated,
    /// A session closed (its peer's ractor name, if it had one).
    Closed { peer: Option<String> },
}

impl ractor_cluster::NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Closed {
            peer: ses.peer_name.map(|n| n.name),
        });
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        // The node the session port's handshake proved is the only one the
        // session's ractor name may claim.
        let proven = proven(&ses.peer_addr);
        let claimed = ses.peer_name.as_ref().and_then(|n| claimed(&n.name));
        if proven.is_none() || proven != claimed {
            metrics::counter!("troupe_cluster_impersonations_total").increment(1);
            tracing::warn!(
                peer = %ses.peer_addr,
                claimed = ?ses.peer_name.as_ref().map(|n| &n.name),
                "closed a session whose name claims another node than the one it proved"
            );
            ses.actor.stop(Some("impersonation".to_owned()));
            return;
        }
        let _ = self.0.send(SessionEvent::Authenticated);
    }
}

/// Accepts sessions for node `me` and hands them to its ractor node server.
pub(crate) struct SessionServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl SessionServer {
    /// Listens on `addr`.
    pub(crate) async fn bind(
        addr: SocketAddr,
        me: NodeId,
        credentials: Credentials,
        server: ActorRef<NodeServerMessage>,
        observe: Observe,
    ) -> io::Result<SessionServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let admission = handshake::Admission::standard();
        let observers = Arc::new(tokio::sync::Semaphore::new(MAX_OBSERVERS));
        tokio::spawn(
            async move {
                let mut pending = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        Some(_) = pending.join_next() => {}
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, peer)) => {
                                let Some(admitted) = admission.admit(peer.ip()) else {
                                    metrics::counter!("troupe_cluster_session_refused_total").increment(1);
                                    REFUSALS.refused(Some(peer), &"too many handshakes pending");
                                    continue;
                                };
                                let (credentials, server, observe) = (credentials.clone(), server.clone(), observe.clone());
                                let observers = observers.clone();
                                pending.spawn(async move {
                                    let _ = tcp.set_nodelay(true);
                                    let proved = handshake::accept_session_over(tcp, me, &credentials).await;
                                    drop(admitted);
                                    match proved {
                                        Ok((stream, from, Standing::Observer)) => {
                                            // Token holders may not hold the port either.
                                            let Ok(_seat) = observers.try_acquire_owned() else {
                                                REFUSALS.refused(Some(peer), &"too many observers connected");
                                                return;
                                            };
                                            tracing::debug!(%from, %peer, "observer proven");
                                            let why = serve_observer(stream, &observe).await;
                                            tracing::debug!(%from, %peer, %why, "observer gone");
                                        }
                                        Ok((stream, from, Standing::Member)) => {
                                            tracing::debug!(%from, %peer, "control session proven");
                                            let stream = Box::new(SessionStream { stream, label: label(from, Some(peer)) });
                                            let _ = server.cast(NodeServerMessage::ConnectionOpenedExternal { stream, is_server: true });
                                        }
                                        Err(why) => {
                                            metrics::counter!("troupe_cluster_session_refused_total").increment(1);
                                            REFUSALS.refused(Some(peer), &why);
                                        }
                                    }
                                });
                            }
                            Err(err) => {
                                // Out of descriptors, most likely: wait
                                // rather than spin.
                                tracing::warn!(%err, "accepting a control session failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                    }
                }
            }
            .instrument(tracing::debug_span!("session_server", %addr)),
        );
        Ok(SessionServer { addr, stop })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SessionServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// No TCP connection within the deadline, or refused.
    #[error("{0}")]
    Connect(String),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The node server is gone (the node is stopping).
    #[error("the node is stopping")]
    Stopping,
    /// The connection failed after the handshake.
    #[error("the connection broke: {0}")]
    Broken(String),
}

/// Opens a session from node `me` to `addr` (the node `expect`, when
/// known): the node proven at the other end.
pub(crate) async fn open(
    server: &ActorRef<NodeServerMessage>,
    addr: &str,
    me: NodeId,
    credentials: &Credentials,
    expect: Option<NodeId>,
    timeout: Duration,
) -> Result<NodeId, SessionError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| SessionError::Connect(format!("no connection within {timeout:?}")))?
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();
    let (stream, server_node) =
        handshake::connect_over(tcp, Purpose::Session, me, credentials, expect).await?;
    let stream = Box::new(SessionStream {
        stream,
        label: label(server_node, peer),
    });
    ractor_cluster::client_connect_external(server, stream)
        .await
        .map_err(|_| SessionError::Stopping)?;
    Ok(server_node)
}

async fn read_frame(stream: &mut Stream, cap: usize) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let len = stream.read_u32_le().await.map_err(|e| e.to_string())? as usize;
    if len > cap {
        return Err(format!("a frame of {len} bytes, over the {cap}-byte cap"));
    }
    let mut frame = vec![0u8; len];
    stream
        .read_exact(&mut frame)
        .await
        .map_err(|e| e.to_string())?;
    Ok(frame)
}

async fn write_frame(stream: &mut Stream, frame: &Frame) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let bytes = frame.encode().map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// Answers an observer's requests: the status, and a refusal for anything
/// else; why the connection ended.
async fn serve_observer(mut stream: Stream, observe: &Observe) -> String {
    for _ in 0..MAX_OBSERVER_REQUESTS {
        let frame = match tokio::time::timeout(
            OBSERVER_IDLE,
            read_frame(&mut stream, MAX_OBSERVER_REQUEST),
        )
        .await
        {
            Err(_) => return format!("silent for {OBSERVER_IDLE:?}"),
            Ok(Err(why)) => return why,
            Ok(Ok(frame)) => frame,
        };
        let (id, body) = match Frame::decode(&frame) {
            Ok(Frame::Request { id, body, .. }) => (id, body),
            Ok(_) => return "not a request".to_owned(),
            Err(err) => return err.to_string(),
        };
        let reply = match body {
            read_only @ (Request::Status | Request::ClusterState(_)) => observe(read_only).await,
            other => {
                metrics::counter!("troupe_cluster_observer_refused_total").increment(1);
                tracing::warn!(request = other.kind(), "refused an observer's request");
                Reply::Refused(format!(
                    "a read-only token may ask for the cluster's status and state only, \
                     not {}: joining, running work and stopping need the cluster's cookie",
                    other.kind()
                ))
            }
        };
        let answer = Frame::Reply { id, body: reply };
        if let Err(why) = write_frame(&mut stream, &answer).await {
            return why;
        }
    }
    format!("{MAX_OBSERVER_REQUESTS} requests served")
}

/// Asks the node at `addr` `request` as an observer (`credentials` hold the
/// read-only token in place of the cookie), within `timeout`.
pub(crate) async fn ask(
    addr: &str,
    credentials: &Credentials,
    request: Request,
    timeout: Duration,
) -> Result<Reply, SessionError> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| SessionError::Connect(e.to_string()))?;
        let me = NodeId(u64::from_le_bytes(id));
        let (mut stream, server) = handshake::observe_over(tcp, me, credentials).await?;
        let frame = Frame::Request {
            id: 1,
            from: me,
            body: request,
        };
        write_frame(&mut stream, &frame)
            .await
            .map_err(SessionError::Broken)?;
        let bytes = read_frame(&mut stream, MAX_FRAME_BYTES)
            .await
            .map_err(SessionError::Broken)?;
        match Frame::decode(&bytes) {
            Ok(Frame::Reply { id: 1, body }) => Ok(body),
            Ok(other) => Err(SessionError::Broken(format!(
                "node {server} answered with {other:?}"
            ))),
            Err(err) => Err(SessionError::Broken(err.to_string())),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SessionError::Connect(format!("no answer within {timeout:?}")))?
}

/// TLS that no client can pass: it has no certificate to present, so every
/// handshake fails. ractor_cluster's own listener runs behind it. (No key
/// is made: a node starts without paying for one.)
pub(crate) fn sealed() -> Result<TlsAcceptor, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Resolves no certificate, whoever asks.
#[derive(Debug)]
struct NoCertificate;

impl tokio_rustls::rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(
        &self,
        _: tokio_rustls::rustls::server::ClientHello<'_>,
    ) -> Option<Arc<tokio_rustls::rustls::sign::CertifiedKey>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_names_give_back_their_node() {
        assert_eq!(
            proven(&label(NodeId(42), "127.0.0.1:9".parse().ok())),
            Some(NodeId(42))
        );
        assert_eq!(proven(&label(NodeId(7), None)), Some(NodeId(7)));
        assert_eq!(proven("127.0.0.1:9"), None);
        assert_eq!(claimed("troupe-42@127.0.0.1"), Some(NodeId(42)));
        assert_eq!(claimed("troupe-x@h"), None);
        assert_eq!(claimed("other-1@h"), None);
    }

    #[tokio::test]
    async fn the_sealed_listener_admits_no_client() {
        let acceptor = sealed().expect("sealed TLS");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            acceptor.accept(tcp).await.map(|_| ())
        });
        // A client with a certificate from a real cluster CA still fails.
        let dir = std::env::temp_dir().join(format!(
            "troupe-sealed-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        crate::tls::init_ca(&dir).expect("ca");
        crate::tls::issue(&dir, &dir, 1).expect("cert");
        let tls = crate::tls::Tls::load(&dir).expect("load");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let client = crate::tls::connect(Some(&tls), tcp).await;
        let served = server.await.expect("joined");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(served.is_err(), "the sealed listener accepted a client");
        // The client may see its handshake finish (TLS 1.3 sends the
        // client's certificate last) but never a usable connection.
        if let Ok(mut stream) = client {
            use tokio::io::AsyncReadExt;
            let mut byte = [0u8; 1];
            assert!(
                !matches!(stream.read(&mut byte).await, Ok(1)),
                "the sealed listener sent data"
            );
        }
    }

    /// The halves ractor gets are bounded: a peer that never reads is cut
    /// off, and a frame over the limit ends the read side.
    #[tokio::test(start_paused = true)]
    async fn a_session_stream_is_bounded_in_both_directions() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peer = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (ours, _) = listener.accept().await.expect("accept");
        let stream = Box::new(SessionStream {
            stream: Stream::Plain(ours),
            label: label(NodeId(9), None),
        });
        let (mut read, mut write) = stream.split();
        // The peer never reads: the kernel's buffers fill, then the limit.
        let started = tokio::time::Instant::now();
        let chunk = vec![0u8; 1 << 20];
        let err = loop {
            if let Err(err) = write.write_all(&chunk).await {
                break err;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= SessionLimits::standard().write_stall);

        let mut peer = peer;
        let oversize = (SessionLimits::standard().frame_bytes as u64 + 1).to_be_bytes();
        peer.write_all(&oversize).await.expect("write");
        let err = read
            .read(&mut [0u8; 16])
            .await
            .expect_err("an oversize frame is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// A holder of the read-only token gets the status, and is refused
    /// anything else by the node itself (not only by the `troupe` command):
    /// submitting or stopping a job, stopping the cluster.
    #[tokio::test]
    async fn an_observer_gets_the_status_and_is_refused_anything_else() {
        use ractor::Actor;
        let cookie: &[u8] = b"a session cookie";
        let node_server = ractor_cluster::NodeServer::new(
            0,
            "unused".to_owned(),
            "troupe-5".to_owned(),
            "127.0.0.1".to_owned(),
            Some(ractor_cluster::IncomingEncryptionMode::Tls(
                sealed().expect("sealed TLS"),
            )),
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let (node_server, _) = Actor::spawn(None, node_server, ())
            .await
            .expect("a node server");
        let observe: Observe = Arc::new(|request| {
            Box::pin(async move {
                match request {
                    Request::Status => Reply::Ok,
                    other => Reply::Refused(format!("the test's observe got {}", other.kind())),
                }
            })
        });
        let served = SessionServer::bind(
            "127.0.0.1:0".parse().expect("addr"),
            NodeId(5),
            Credentials::cookie(cookie),
            node_server.clone(),
            observe,
        )
        .await
        .expect("bound");
        let addr = served.local_addr().to_string();
        let token = Credentials::cookie(crate::cookie::read_only_token(cookie));
        let within = Duration::from_secs(5);
        let status = ask(&addr, &token, Request::Status, within).await;
        assert!(matches!(status, Ok(Reply::Ok)), "{status:?}");
        let submit = Request::JobSubmit(crate::jobs::JobSpec {
            command: vec!["sh".to_owned(), "-c".to_owned(), "echo owned".to_owned()],
            env: Vec::new(),
            working_dir: None,
        });
        for request in [
            submit,
            Request::JobStop("job-1".to_owned()),
            Request::StopCluster,
        ] {
            let kind = request.kind();
            match ask(&addr, &token, request, within).await {
                Ok(Reply::Refused(why)) => {
                    assert!(why.contains(kind) && why.contains("cookie"), "{why}")
                }
                other => panic!("{kind} by an observer: {other:?}"),
            }
        }
        drop(served);
        node_server.stop(None);
    }

    fn rand_suffix() -> u64 {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }
}
