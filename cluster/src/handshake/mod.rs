//! The mutual handshake that opens every connection of Troupe's ports (the
//! control link, the data path, and the session port in front of
//! ractor_cluster's own handshake): both sides prove they hold the
//! cluster's cookie, without sending it, before anything else is read, and
//! the server learns which node the client is. That node id is the only
//! identity the connection's frames or requests may claim.
//!
//! The wire (integers little-endian):
//!
//! ```text
//! client → server: "TRHC"
//! server → client: "TRHS" | version: u8 | purpose: u8 | server: u64 | server_nonce [16]
//! client → server: client: u64 | client_nonce [16] | client_mac [32]
//! server → client: server_mac [32]
//!   client_mac = HMAC-SHA256(cookie, "troupe-client" | purpose | server | client | nonces)
//!   server_mac = HMAC-SHA256(cookie, "troupe-server" | purpose | server | client | nonces)
//! ```
//!
//! On the session port, a client may prove the read-only token in place of
//! the cookie (an observer); the server then answers with the label
//! "troupe-observer", so that a client that meant to join learns at once
//! that its key is not the cookie.
//!
//! The client speaks first so that a plain client at a TLS port (or the
//! reverse) fails at once, not at the deadline. Fresh nonces on both sides make a recorded handshake useless later; the
//! purpose byte keeps a proof made for one port from opening another; MACs
//! are compared in constant time. The server's node id is sent in the clear
//! (it is no secret: object ids and frames carry it too). A side that does
//! not finish within [`HANDSHAKE_TIMEOUT`] is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use troupe_core::NodeId;

use crate::tls::{self, Credentials, Stream};

/// How long either side has to complete the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

const MAGIC: [u8; 4] = *b"TRHS";
/// What a client sends first.
pub(crate) const CLIENT_MAGIC: [u8; 4] = *b"TRHC";
const VERSION: u8 = 1;
const NONCE_BYTES: usize = 16;
const MAC_BYTES: usize = 32;
/// Magic, version, purpose, server, nonce.
pub(crate) const GREETING_BYTES: usize = 4 + 1 + 1 + 8 + NONCE_BYTES;
/// Client, nonce, mac.
pub(crate) const PROOF_BYTES: usize = 8 + NONCE_BYTES + MAC_BYTES;

/// Which port a connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Purpose {
    /// A control link (`link/`).
    Link = 1,
    /// A data-path connection (`data_path/`).
    Data = 2,
    /// A ractor_cluster session (`session.rs`), before ractor's own
    /// handshake.
    Session = 3,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The connection failed or closed.
    #[error("the connection failed during the handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The other side is not a Troupe port of this kind.
    #[error("not a Troupe {0}")]
    NotTroupe(&'static str),
    /// The other side speaks another version.
    #[error("handshake version {0} (this node speaks {VERSION})")]
    Version(u8),
    /// The server closed the connection before greeting.
    #[error(
        "the other side closed the connection before its greeting (a node that \
         uses TLS closes plain connections: pass --tls-dir with the cluster's \
         certificates; one that does not closes TLS ones)"
    )]
    Closed,
    /// The other side does not hold this cluster's cookie.
    #[error("the other side does not hold this cluster's cookie")]
    WrongCookie,
    /// The server is another node than the one the client meant.
    #[error("it is node {got}, not node {expected}")]
    WrongNode {
        /// The node the client meant to reach.
        expected: NodeId,
        /// The node that answered.
        got: NodeId,
    },
    /// The other side did not finish in time.
    #[error("no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    /// The TLS handshake failed (no certificate, one from another CA, an
    /// expired one, or a peer that does not speak TLS).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// No randomness for a nonce.
    #[error("no randomness for a nonce: {0}")]
    Random(String),
}

/// Bounds the connections of one port still in their handshake: at most
/// `total` at once, and at most `per_source` from one IP address. A
/// connection over either bound is closed at once, so clients that never
/// prove the cookie hold a bounded share of the port (and for at most
/// [`HANDSHAKE_TIMEOUT`] each), and one address cannot take it all.
pub(crate) struct Admission {
    total: usize,
    per_source: usize,
    pending: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection admitted to its handshake; it leaves the count when
/// dropped.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    source: IpAddr,
}

/// Handshakes one port runs at once, all sources together.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Handshakes one port runs at once for one source address.
pub(crate) const MAX_PENDING_PER_SOURCE: usize = 128;

impl Admission {
    pub(crate) fn new(total: usize, per_source: usize) -> Arc<Admission> {
        Arc::new(Admission {
            total,
            per_source,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The default bounds.
    pub(crate) fn standard() -> Arc<Admission> {
        Self::new(MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_SOURCE)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Each critical section is one map update: a panic cannot leave it
        // half-done.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `source` to its handshake, or `None` (close
    /// it) when a bound is reached.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Admitted> {
        let mut pending = self.pending();
        let total: usize = pending.values().sum();
        let from_source = pending.get(&source).copied().unwrap_or(0);
        if total >= self.total || from_source >= self.per_source {
            return None;
        }
        *pending.entry(source).or_default() += 1;
        Some(Admitted {
            admission: self.clone(),
            source,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut pending = self.admission.pending();
        if let Some(n) = pending.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.source);
            }
        }
    }
}

/// Logs refused connections of one kind without letting a flood of them
/// flood the log: the first in each second is logged with its peer and
/// reason, and says how many were refused since the last one logged.
pub(crate) struct RefusalLog {
    what: &'static str,
    second: std::sync::atomic::AtomicU64,
    unlogged: std::sync::atomic::AtomicU64,
}

impl RefusalLog {
    pub(crate) const fn new(what: &'static str) -> RefusalLog {
        RefusalLog {
            what,
            second: std::sync::atomic::AtomicU64::new(0),
            unlogged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn refused(&self, peer: Option<std::net::SocketAddr>, why: &dyn std::fmt::Display) {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let last = self.second.load(Ordering::Relaxed);
        if last == now
            || self
                .second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let also = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(?peer, %why, refused_since_last_logged = also, "{} refused", self.what);
    }
}

fn nonce() -> Result<[u8; NONCE_BYTES], HandshakeError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| HandshakeError::Random(e.to_string()))?;
    Ok(nonce)
}

struct Transcript {
    purpose: Purpose,
    server: NodeId,
    client: NodeId,
    server_nonce: [u8; NONCE_BYTES],
    client_nonce: [u8; NONCE_BYTES],
}

impl Transcript {
    fn mac(&self, cookie: &[u8], side: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this never fails.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cookie)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(side);
        mac.update(&[self.purpose as u8]);
        mac.update(&self.server.0.to_le_bytes());
        mac.update(&self.client.0.to_le_bytes());
        mac.update(&self.server_nonce);
        mac.update(&self.client_nonce);
        mac
    }
}

fn node_at(bytes: &[u8], at: usize) -> NodeId {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    NodeId(u64::from_le_bytes(word))
}

fn what(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Link => "control link",
        Purpose::Data => "data connection",
        Purpose::Session => "control session",
    }
}

/// The server's side, as node `me`: the client's node id once both proved
/// the cookie.
pub(crate) async fn accept<S>(
    stream: &mut S,
    purpose: Purpose,
    me: NodeId,
    cookie: &[u8],
) -> Result<NodeId, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client, _) = accept_as(stream, purpose, me, cookie, None).await?;
    Ok(client)
}

/// What a client proved it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// The cluster's cookie: a member.
    Member,
    /// The read-only token (`cookie::read_only_token`): it may ask, not
    /// act.
    Observer,
}

impl Standing {
    /// The label of the server's MAC: a client learns which standing the
    /// server gave it.
    fn label(self) -> &'static [u8] {
        match self {
            Standing::Member => b"troupe-server",
            Standing::Observer => b"troupe-observer",
        }
    }
}

/// The server's side, accepting the cookie (a member) or, where
/// `observer_key` is given, the read-only token (an observer).
async fn accept_as<S>(
    stream: &mut S,
    purpose: Purpose,
    me: NodeId,
    cookie: &[u8],
    observer_key: Option<&[u8]>,
) -> Result<(NodeId, Standing), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let mut hello = [0u8; 4];
        stream.read_exact(&mut hello).await?;
        if hello != CLIENT_MAGIC {
            return Err(HandshakeError::NotTroupe(what(purpose)));
        }
        let server_nonce = nonce()?;
        let mut greeting = Vec::with_capacity(GREETING_BYTES);
        greeting.extend_from_slice(&MAGIC);
        greeting.push(VERSION);
        greeting.push(purpose as u8);
        greeting.extend_from_slice(&me.0.to_le_bytes());
        greeting.extend_from_slice(&server_nonce);
        // Flushed: over TLS, written bytes may wait in the session's buffer.
        stream.write_all(&greeting).await?;
        stream.flush().await?;
        let mut proof = [0u8; PROOF_BYTES];
        stream.read_exact(&mut proof).await?;
        let mut client_nonce = [0u8; NONCE_BYTES];
        client_nonce.copy_from_slice(&proof[8..8 + NONCE_BYTES]);
        let transcript = Transcript {
            purpose,
            server: me,
            client: node_at(&proof, 0),
            server_nonce,
            client_nonce,
        };
        let client_mac = &proof[8 + NONCE_BYTES..];
        let proves = |key: &[u8]| {
            transcript
                .mac(key, b"troupe-client")
                .verify_slice(client_mac)
                .is_ok()
        };
        let (key, standing) = if proves(cookie) {
            (cookie, Standing::Member)
        } else {
            match observer_key.filter(|key| proves(key)) {
                Some(key) => (key, Standing::Observer),
                None => return Err(HandshakeError::WrongCookie),
            }
        };
        let answer = transcript.mac(key, standing.label()).finalize();
        stream.write_all(&answer.into_bytes()).await?;
        stream.flush().await?;
        Ok((transcript.client, standing))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// The client's side, as node `me`: the server's node id once both proved
/// the cookie (refused if `expect` names another node).
#[cfg(test)]
pub(crate) async fn connect<S>(
    stream: &mut S,
    purpose: Purpose,
    me: NodeId,
    cookie: &[u8],
    expect: Option<NodeId>,
) -> Result<NodeId, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    connect_as(stream, purpose, me, cookie, expect, Standing::Member).await
}

/// [`connect`] with `key` standing for a member (the cookie) or an
/// observer (the read-only token).
async fn connect_as<S>(
    stream: &mut S,
    purpose: Purpose,
    me: NodeId,
    cookie: &[u8],
    expect: Option<NodeId>,
    standing: Standing,
) -> Result<NodeId, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        stream.write_all(&CLIENT_MAGIC).await?;
        stream.flush().await?;
        let mut greeting = [0u8; GREETING_BYTES];
        match stream.read_exact(&mut greeting).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(HandshakeError::Closed)
            }
            Err(err) => return Err(err.into()),
        }
        if greeting[..4] != MAGIC || greeting[5] != purpose as u8 {
            return Err(HandshakeError::NotTroupe(what(purpose)));
        }
        if greeting[4] != VERSION {
            return Err(HandshakeError::Version(greeting[4]));
        }
        let server = node_at(&greeting, 6);
        if let Some(expected) = expect.filter(|e| *e != server) {
            return Err(HandshakeError::WrongNode {
                expected,
                got: server,
            });
        }
        let mut server_nonce = [0u8; NONCE_BYTES];
        server_nonce.copy_from_slice(&greeting[14..]);
        let transcript = Transcript {
            purpose,
            server,
            client: me,
            server_nonce,
            client_nonce: nonce()?,
        };
        let mut proof = Vec::with_capacity(PROOF_BYTES);
        proof.extend_from_slice(&me.0.to_le_bytes());
        proof.extend_from_slice(&transcript.client_nonce);
        proof.extend_from_slice(
            &transcript
                .mac(cookie, b"troupe-client")
                .finalize()
                .into_bytes(),
        );
        stream.write_all(&proof).await?;
        stream.flush().await?;
        let mut answer = [0u8; MAC_BYTES];
        match stream.read_exact(&mut answer).await {
            Ok(_) => {}
            // A server that closes instead of answering refused the proof.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(HandshakeError::WrongCookie)
            }
            Err(err) => return Err(err.into()),
        }
        transcript
            .mac(cookie, standing.label())
            .verify_slice(&answer)
            .map_err(|_| HandshakeError::WrongCookie)?;
        Ok(server)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// The server's side over a new TCP connection: TLS first when the
/// credentials have it, then the cookie handshake inside it, all within
/// [`HANDSHAKE_TIMEOUT`]; the stream and the client's node id.
pub(crate) async fn accept_over(
    tcp: tokio::net::TcpStream,
    purpose: Purpose,
    me: NodeId,
    credentials: &Credentials,
) -> Result<(Stream, NodeId), HandshakeError> {
    let exchange = async {
        let mut stream = tls::accept(credentials.tls.as_deref(), tcp)
            .await
            .map_err(HandshakeError::Tls)?;
        let from = accept(&mut stream, purpose, me, &credentials.cookie).await?;
        Ok((stream, from))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// [`accept_over`] for the session port, where the read-only token is
/// accepted too (as an observer).
pub(crate) async fn accept_session_over(
    tcp: tokio::net::TcpStream,
    me: NodeId,
    credentials: &Credentials,
) -> Result<(Stream, NodeId, Standing), HandshakeError> {
    let exchange = async {
        let mut stream = tls::accept(credentials.tls.as_deref(), tcp)
            .await
            .map_err(HandshakeError::Tls)?;
        let token = crate::cookie::read_only_token(&credentials.cookie);
        let (from, standing) = accept_as(
            &mut stream,
            Purpose::Session,
            me,
            &credentials.cookie,
            Some(token.as_bytes()),
        )
        .await?;
        Ok((stream, from, standing))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// The client's side over a new TCP connection: TLS first when the
/// credentials have it, then the cookie handshake; the stream and the
/// server's node id.
pub(crate) async fn connect_over(
    tcp: tokio::net::TcpStream,
    purpose: Purpose,
    me: NodeId,
    credentials: &Credentials,
    expect: Option<NodeId>,
) -> Result<(Stream, NodeId), HandshakeError> {
    connect_over_as(tcp, purpose, me, credentials, expect, Standing::Member).await
}

/// [`connect_over`] as an observer: `credentials` hold the read-only token
/// in place of the cookie.
pub(crate) async fn observe_over(
    tcp: tokio::net::TcpStream,
    me: NodeId,
    credentials: &Credentials,
) -> Result<(Stream, NodeId), HandshakeError> {
    connect_over_as(
        tcp,
        Purpose::Session,
        me,
        credentials,
        None,
        Standing::Observer,
    )
    .await
}

async fn connect_over_as(
    tcp: tokio::net::TcpStream,
    purpose: Purpose,
    me: NodeId,
    credentials: &Credentials,
    expect: Option<NodeId>,
    standing: Standing,
) -> Result<(Stream, NodeId), HandshakeError> {
    let exchange = async {
        let mut stream = tls::connect(credentials.tls.as_deref(), tcp)
            .await
            .map_err(HandshakeError::Tls)?;
        let server = connect_as(
            &mut stream,
            purpose,
            me,
            &credentials.cookie,
            expect,
            standing,
        )
        .await?;
        Ok((stream, server))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

#[cfg(test)]
mod tests;
