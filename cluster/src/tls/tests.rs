use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use troupe_core::NodeId;
use troupe_objects::{ObjectStore, StoreConfig};

use super::*;
use crate::data_path::{DataClient, DataError, DataLimits, DataServer};
use crate::handshake::{self, HandshakeError, Purpose};

/// A directory removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "troupe-tls-{name}-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("randomness");
    u64::from_le_bytes(bytes)
}

/// A CA and one node certificate valid for `days`, loaded.
fn cluster(name: &str, days: i64) -> (Dir, Arc<Tls>) {
    let dir = Dir::new(name);
    init_ca(&dir.0).expect("a CA");
    issue(&dir.0, &dir.0, days).expect("a node certificate");
    let tls = Tls::load(&dir.0).expect("loads");
    (dir, tls)
}

fn credentials(tls: Option<&Arc<Tls>>) -> Credentials {
    Credentials {
        cookie: Arc::from(&b"cookie"[..]),
        tls: tls.cloned(),
    }
}

/// Both sides of a handshake over loopback: the server's and the
/// client's results.
async fn handshake_between(
    server: Credentials,
    client: Credentials,
) -> (
    Result<NodeId, HandshakeError>,
    Result<NodeId, HandshakeError>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let addr = listener.local_addr().expect("an address");
    let accepting = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accepted");
        handshake::accept_over(tcp, Purpose::Link, NodeId(1), &server)
            .await
            .map(|(_, from)| from)
    });
    let tcp = TcpStream::connect(addr).await.expect("connected");
    let connected = handshake::connect_over(tcp, Purpose::Link, NodeId(2), &client, None)
        .await
        .map(|(_, server)| server);
    (accepting.await.expect("joined"), connected)
}

#[test]
fn a_ca_is_never_replaced_and_its_files_are_private() {
    let dir = Dir::new("init");
    init_ca(&dir.0).expect("a CA");
    assert!(matches!(init_ca(&dir.0), Err(TlsError::CaExists(_))));
    #[cfg(unix)]
    for file in ["ca.pem", "ca.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.0.join(file))
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // Loading without a node certificate says what to do.
    let err = Tls::load(&dir.0).expect_err("no node.pem yet");
    assert!(err.to_string().contains("node.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_one_ca_meet_and_strangers_are_refused() {
    let (_a_dir, a) = cluster("a", 30);
    let (server, client) = handshake_between(credentials(Some(&a)), credentials(Some(&a))).await;
    assert_eq!(
        (server.expect("accepted"), client.expect("connected")),
        (NodeId(2), NodeId(1))
    );

    // A certificate from another CA: refused both ways.
    let (_b_dir, b) = cluster("b", 30);
    let (server, client) = handshake_between(credentials(Some(&a)), credentials(Some(&b))).await;
    assert!(matches!(server, Err(HandshakeError::Tls(_))), "{server:?}");
    assert!(client.is_err(), "{client:?}");

    // An expired certificate of the right CA: refused.
    let expired_dir = Dir::new("expired");
    issue(&_a_dir.0, &expired_dir.0, -1).expect("an expired certificate");
    let expired = Tls::load(&expired_dir.0).expect("loads");
    let (server, _) = handshake_between(credentials(Some(&a)), credentials(Some(&expired))).await;
    let err = server.expect_err("refused");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");

    // A plain client at a TLS port, and a TLS client at a plain one.
    let (server, client) = handshake_between(credentials(Some(&a)), credentials(None)).await;
    assert!(server.is_err() && client.is_err(), "{server:?} {client:?}");
    let (server, client) = handshake_between(credentials(None), credentials(Some(&a))).await;
    assert!(server.is_err() && client.is_err(), "{server:?} {client:?}");
}

/// Frames on a TLS link arrive whole and in order from the proven
/// sender, lone and in bursts (the writer task seals every frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_link_carries_frames_in_order() {
    use crate::link::{LinkServer, LinkWriter};
    let (_dir, tls) = cluster("link", 30);
    let got = Arc::new(std::sync::Mutex::new(Vec::<(NodeId, Vec<u8>)>::new()));
    let sink = got.clone();
    let server = LinkServer::bind(
        "127.0.0.1:0".parse().expect("an address"),
        NodeId(2),
        credentials(Some(&tls)),
        Arc::new(move |from, frame: &[u8]| {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((from, frame.to_vec()))
        }),
        Arc::new(|_, _, _| {}),
    )
    .await
    .expect("bound");
    let writer = LinkWriter::connect(
        server.local_addr(),
        NodeId(1),
        NodeId(2),
        &credentials(Some(&tls)),
        Box::new(|_| {}),
    )
    .await
    .expect("connected");
    let frames: Vec<Vec<u8>> = (0..500u32)
        .map(|i| {
            vec![
                (i % 251) as u8;
                if i % 100 == 7 {
                    300_000
                } else {
                    (i % 61) as usize + 1
                }
            ]
        })
        .collect();
    for frame in &frames {
        writer.send(frame).expect("sent");
    }
    troupe_test_kit::eventually("every frame", || {
        got.lock().unwrap_or_else(|e| e.into_inner()).len() == frames.len()
    })
    .await;
    let got = got.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (i, (from, bytes)) in got.iter().enumerate() {
        assert_eq!((*from, bytes), (NodeId(1), &frames[i]), "frame {i}");
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), writer.flushed())
        .await
        .expect("flushed");
}

/// What crosses the wire between a data client and server over TLS
/// holds none of the object's bytes in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_cross_the_wire_encrypted() {
    let (_dir, tls) = cluster("wire", 30);
    let holder = ObjectStore::new(StoreConfig::with_budget(1 << 30));
    let server = DataServer::bind(
        "127.0.0.1:0".parse().expect("an address"),
        holder.clone(),
        DataLimits::default(),
        credentials(Some(&tls)),
    )
    .await
    .expect("bound");
    // A recording proxy between the client and the server.
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let proxy_addr = proxy.local_addr().expect("an address");
    let target = server.local_addr();
    let captured = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = captured.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = proxy.accept().await {
            let mut outbound = TcpStream::connect(target).await.expect("the server");
            let record = record.clone();
            tokio::spawn(async move {
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = ri.read(&mut buf).await {
                        if n == 0 || wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = wo.shutdown().await;
                };
                let down = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = ro.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        record
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buf[..n]);
                        if wi.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    let secret: Vec<u8> = b"TOP SECRET OBJECT BYTES ".repeat(40_000);
    let r = holder.put_bytes(&secret).await.expect("put");
    let client = DataClient::new(
        ObjectStore::new(StoreConfig::with_budget(1 << 30)),
        DataLimits::default(),
        credentials(Some(&tls)),
    );
    let got = client.pull_bytes(proxy_addr, r.id()).await.expect("pulled");
    assert!(got[..] == secret[..]);
    let wire = captured.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        wire.len() >= secret.len(),
        "the object went through the proxy"
    );
    assert!(
        !wire.windows(10).any(|w| w == b"TOP SECRET"),
        "object bytes in the clear on the wire"
    );

    // A client without a certificate is refused, clearly.
    let outsider = DataClient::new(
        ObjectStore::new(StoreConfig::with_budget(1 << 20)),
        DataLimits::default(),
        credentials(None),
    );
    let err = outsider
        .pull_bytes(target, r.id())
        .await
        .expect_err("refused");
    assert!(matches!(err, DataError::Refused { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speak_tls_1_3_with_aes_128_gcm() {
    let (_dir, tls) = cluster("suite", 30);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let addr = listener.local_addr().expect("an address");
    let server_tls = tls.clone();
    let accepting = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accepted");
        accept(Some(&server_tls), tcp).await.expect("TLS")
    });
    let tcp = TcpStream::connect(addr).await.expect("connected");
    let client = connect(Some(&tls), tcp).await.expect("TLS");
    let server = accepting.await.expect("joined");
    let Stream::Client(client) = client else {
        panic!("a TLS client stream")
    };
    let Stream::Server(server) = server else {
        panic!("a TLS server stream")
    };
    for connection in [
        client.get_ref().1.negotiated_cipher_suite(),
        server.get_ref().1.negotiated_cipher_suite(),
    ] {
        let suite = connection.expect("negotiated");
        assert_eq!(suite.version(), &rustls::version::TLS13);
        assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}

/// An HTTPS request from a client that trusts `dir`'s CA and presents no
/// certificate (as Kubernetes' probes and Prometheus): the answer.
async fn https_get(dir: &Dir, addr: std::net::SocketAddr, path: &str) -> String {
    let mut roots = RootCertStore::empty();
    for cert in certificates(&dir.0.join("ca.pem")).expect("ca.pem") {
        roots.add(cert).expect("a root");
    }
    let client = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut https = TlsConnector::from(Arc::new(client))
        .connect(Tls::server_name(), tcp)
        .await
        .expect("an HTTPS handshake without a client certificate");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    https.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    let _ = https.read_to_string(&mut answer).await;
    answer
}

/// What a plain-HTTP request to `addr` gets back.
async fn plain_get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    let _ = plain.write_all(request.as_bytes()).await;
    let mut bytes = Vec::new();
    let _ = plain.read_to_end(&mut bytes).await;
    bytes
}

/// Kubernetes' probes present no certificate: the health endpoint of a TLS
/// node serves them HTTPS with the node's certificate, and nothing in clear.
#[tokio::test]
async fn the_health_endpoint_speaks_https_to_a_client_without_a_certificate() {
    let (dir, tls) = cluster("health", 30);
    let node = crate::ClusterNode::new(crate::ClusterOptions::worker("127.0.0.1:1"));
    let (_keep, node) = tokio::sync::watch::channel(node);
    let (addr, task) = crate::health::serve("127.0.0.1:0".parse().expect("addr"), node, Some(&tls))
        .await
        .expect("serves");
    let answer = https_get(&dir, addr, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let bytes = plain_get(addr, "/healthz").await;
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "answered in clear: {}",
        String::from_utf8_lossy(&bytes)
    );
    task.abort();
}

/// `troupe start --metrics-port` with `--tls-dir` serves HTTPS: the token
/// Prometheus sends never crosses the network in clear. A client that
/// never finishes its handshake holds nobody up.
#[cfg(feature = "dashboard")]
#[tokio::test]
async fn the_metrics_endpoint_of_a_tls_node_serves_https_only() {
    let (dir, tls) = cluster("metrics", 30);
    let exporter = troupe_dashboard::MetricsExporter::new("127.0.0.1:0").tls(tls.https_config());
    let rt = troupe_core::init(troupe_core::Config::default().service(exporter))
        .await
        .expect("a runtime");
    let url = troupe_dashboard::metrics_url(&rt).expect("the endpoint is up");
    let addr: std::net::SocketAddr = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTPS URL: {url}"));
    let _stalled = TcpStream::connect(addr).await.expect("connect");
    let answer = https_get(&dir, addr, "/metrics").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("troupe_"), "no Troupe metric in: {answer}");
    let bytes = plain_get(addr, "/metrics").await;
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "answered in clear: {}",
        String::from_utf8_lossy(&bytes)
    );
    rt.shutdown().await.expect("shuts down");
}
