//! A node's health endpoint (`troupe start --health-port`): `GET /healthz`
//! answers `200 ok` while the node is part of its cluster and `503`
//! otherwise (not joined yet, or left): what Kubernetes probes. Anything
//! else gets `404`; a request over 1 KiB or slower than 2 s (TLS handshake
//! included) closes its connection, as does one past 64 open at once (a
//! flood holds a bounded share of the node). It serves nothing that
//! changes the node.
//!
//! A node with TLS serves it over TLS (HTTPS) with its own certificate,
//! and asks none of the client: probes present none (Kubernetes' `scheme:
//! HTTPS` does not verify the server's either). It is plain HTTP otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::tls::Tls;
use crate::ClusterNode;

const MAX_REQUEST: usize = 1024;
/// Health checks answered at once.
const MAX_OPEN: usize = 64;

/// Serves the health of the node `node` holds on `addr` until the returned
/// task is aborted (a watch: a worker that rejoins as a new node swaps it);
/// over TLS with `tls`'s certificate when given.
pub async fn serve(
    addr: SocketAddr,
    node: tokio::sync::watch::Receiver<ClusterNode>,
    tls: Option<&Tls>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tls: Option<TlsAcceptor> = tls.map(|tls| TlsAcceptor::from(tls.https_config()));
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let open = Arc::new(Semaphore::new(MAX_OPEN));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(%err, "accepting a health check failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Over the bound, the connection closes unanswered: probes
            // retry, and a flood holds a bounded share of the node.
            let Ok(slot) = open.clone().try_acquire_owned() else {
                continue;
            };
            let node = node.borrow().clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let check = async {
                    match tls {
                        Some(tls) => answer(tls.accept(stream).await?, &node).await,
                        None => answer(stream, &node).await,
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), check).await;
                drop(slot);
            });
        }
    });
    Ok((local, task))
}

async fn answer(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    node: &ClusterNode,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return Ok(()); // too long: closed unanswered
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next(), parts.next());
    let (status, body) = match (method, path) {
        (Some("GET") | Some("HEAD"), Some("/healthz")) if node.healthy() => ("200 OK", "ok\n"),
        (Some("GET") | Some("HEAD"), Some("/healthz")) => {
            ("503 Service Unavailable", "not part of a cluster\n")
        }
        _ => ("404 Not Found", "not found\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterOptions;
    use tokio::net::TcpStream;

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // A refused request may be reset mid-write or mid-read: it reads as
        // no answer.
        let _ = s.write_all(request).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn a_node_not_in_a_cluster_is_unhealthy_and_other_paths_are_not_found() {
        let node = ClusterNode::new(ClusterOptions::worker("127.0.0.1:1"));
        let (_keep, node) = tokio::sync::watch::channel(node);
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), node, None)
            .await
            .unwrap();
        let answer = get(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        let answer = get(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        // An oversize request is closed unanswered; the server goes on.
        let answer = get(addr, &vec![b'a'; 4096]).await;
        assert!(answer.is_empty());
        let answer = get(addr, b"GET /healthz HTTP/1.0\n\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        task.abort();
    }

    #[tokio::test]
    async fn past_the_bound_of_open_checks_a_connection_is_closed_and_later_ones_answered() {
        let node = ClusterNode::new(ClusterOptions::worker("127.0.0.1:1"));
        let (_keep, node) = tokio::sync::watch::channel(node);
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), node, None)
            .await
            .unwrap();
        let mut idle = Vec::new();
        for _ in 0..MAX_OPEN {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // The idle ones hold every slot until the server has seen them all;
        // then one more is closed unanswered.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let answer = get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
            if answer.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never refused: {answer}"
            );
        }
        drop(idle);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let answer = get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
            if answer.starts_with("HTTP/1.1 503") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never answered again"
            );
            tokio::task::yield_now().await;
        }
        task.abort();
    }
}
