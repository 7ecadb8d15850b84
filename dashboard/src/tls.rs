//! HTTPS for the dashboard and the metrics endpoint: a listener that runs
//! each TLS handshake beside the accept loop, at most
//! [`MAX_HANDSHAKES`] at once and each within [`HANDSHAKE_WITHIN`], so a
//! client that never finishes one holds nobody else up.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshakes under way at once; past it a connection is closed at once.
pub(crate) const MAX_HANDSHAKES: usize = 64;
/// How long a client has to finish its handshake.
pub(crate) const HANDSHAKE_WITHIN: Duration = Duration::from_secs(5);

/// Connections whose handshake finished, as axum takes them.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (done, ready) = mpsc::channel(MAX_HANDSHAKES);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of descriptors, most likely: wait rather than spin.
                        tracing::warn!(%err, "accepting an HTTPS connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(seat) = handshakes.clone().try_acquire_owned() else {
                    metrics::counter!("troupe_dashboard_handshakes_refused_total").increment(1);
                    continue;
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let shaken = tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(tcp)).await;
                    drop(seat);
                    match shaken {
                        Ok(Ok(stream)) => {
                            let _ = done.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => {
                            metrics::counter!("troupe_dashboard_handshakes_refused_total")
                                .increment(1);
                            tracing::debug!(%peer, %err, "an HTTPS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("troupe_dashboard_handshakes_refused_total")
                                .increment(1);
                            tracing::debug!(%peer, "an HTTPS handshake did not finish in time");
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone only when this listener is.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
