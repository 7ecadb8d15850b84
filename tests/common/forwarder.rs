//! A TCP forwarder between two loopback addresses that can cut every
//! connection it carries at once (a partition between one node and the
//! nodes that reach it through the forwarder), or silence those of one
//! port without closing them (half-open connections), and keeps accepting
//! new ones. A node bound to 127.0.0.1 that advertises 127.0.0.2 is reached
//! through it on the same ports.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards `listen_host:port` to `target_host:port` for each of its ports.
pub struct Forwarder {
    ports: Vec<u16>,
    cut: watch::Sender<u64>,
    /// Per port: bumped to silence its open connections.
    stall: Vec<watch::Sender<u64>>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    listeners: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `n` ports the kernel picks on `listen_host`, forwarding
    /// each to the same port on `target_host`. The ports are held from
    /// the moment they are picked: choosing free ports first and binding
    /// them later lets another process take one in between, and while
    /// they are held no wildcard bind or outgoing connection is given
    /// them, so the node started next can bind them on `target_host`.
    pub async fn start(listen_host: &str, target_host: &str, n: usize) -> Self {
        let (cut, _) = watch::channel(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        let mut stalls = Vec::new();
        for _ in 0..n {
            let listener = TcpListener::bind((listen_host, 0))
                .await
                .unwrap_or_else(|err| panic!("the forwarder binds {listen_host}: {err}"));
            let port = listener
                .local_addr()
                .unwrap_or_else(|err| panic!("the forwarder's address: {err}"))
                .port();
            ports.push(port);
            let target = format!("{target_host}:{port}");
            let (cut, open, accepted) = (cut.clone(), open.clone(), accepted.clone());
            let (stall, _) = watch::channel(0u64);
            stalls.push(stall.clone());
            listeners.push(tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let target = target.clone();
                    let mut cut = cut.subscribe();
                    let mut stall = stall.subscribe();
                    let open = open.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(&target).await else {
                            return;
                        };
                        open.fetch_add(1, Ordering::SeqCst);
                        // Biased, the cut and the stall first: bytes that
                        // arrive after `stall` or `cut` returned are never
                        // forwarded, even when this task runs late (a loaded
                        // machine) and finds both ready at once.
                        let stalled = tokio::select! {
                            biased;
                            _ = cut.changed() => false,
                            _ = stall.changed() => true,
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        };
                        if stalled {
                            // Held open, never read or written: each end's
                            // bytes vanish and nothing tells it so.
                            let _ = cut.changed().await;
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                        // Both dropped here: each end sees its connection close.
                    });
                }
            }));
        }
        Forwarder {
            ports,
            cut,
            stall: stalls,
            open,
            accepted,
            listeners,
        }
    }

    /// The ports it listens on, in the order they were asked for.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Closes every connection open now; returns how many there were.
    pub fn cut(&self) -> usize {
        let open = self.open.load(Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
        open
    }

    /// Silences every connection open now on `port` (one of
    /// [`ports`](Self::ports)): kept open, they carry nothing more either
    /// way, as a half-open connection or a firewall that drops its packets.
    /// Connections accepted later are forwarded.
    pub fn stall(&self, port: u16) {
        let Some(i) = self.ports.iter().position(|p| *p == port) else {
            panic!("port {port} is not one of the forwarder's {:?}", self.ports);
        };
        self.stall[i].send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut.send_modify(|n| *n += 1);
        for listener in &self.listeners {
            listener.abort();
        }
    }
}
