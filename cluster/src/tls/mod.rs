//! TLS for every connection between nodes: the session port (in front of
//! ractor_cluster), the control links and the data path, with mutual authentication. Each node
//! presents a certificate signed by the cluster's CA and accepts only peers
//! whose certificate the same CA signed.
//!
//! Certificates name the cluster ([`SERVER_NAME`]), not a host: nodes are
//! addressed by IP and come and go, so what a certificate proves is
//! membership of the cluster that issued it. Which node a peer is stays the
//! cookie handshake's job (`handshake.rs`), run inside the TLS stream.
//!
//! The files of a TLS directory (written by `troupe cert`, mode 0600):
//! `ca.pem` (the CA's certificate, which every node trusts), `ca.key` (its
//! key: only where certificates are issued), `node.pem` and `node.key` (this
//! node's certificate and key).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name every node certificate carries and every client checks.
pub const SERVER_NAME: &str = "troupe.cluster";

/// The CA's distinguished name (a CA is re-created from its key with it to
/// sign node certificates).
const CA_NAME: &str = "Troupe cluster CA";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {reason}; create the cluster's files with `troupe cert init` and `troupe cert issue`")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate and key do not make a TLS configuration.
    #[error("the TLS configuration in {dir} is unusable: {reason}")]
    Config {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate could not be made.
    #[error("could not make a certificate: {0}")]
    Generate(String),
    /// `troupe cert init` would overwrite a CA.
    #[error("{0} already holds a CA; remove it first to make a new one (every node certificate must then be issued again)")]
    CaExists(PathBuf),
}

/// What a node proves to its peers and checks of them: the cluster's
/// cookie always, and the cluster CA's certificate when TLS is on.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The cluster's shared secret.
    pub cookie: Arc<[u8]>,
    /// This node's TLS setup, if the cluster uses TLS.
    pub tls: Option<Arc<Tls>>,
}

impl Credentials {
    /// The cookie alone (no TLS).
    pub fn cookie(cookie: impl AsRef<[u8]>) -> Credentials {
        Credentials {
            cookie: Arc::from(cookie.as_ref()),
            tls: None,
        }
    }

    /// With TLS.
    pub fn with_tls(mut self, tls: Arc<Tls>) -> Credentials {
        self.tls = Some(tls);
        self
    }
}

/// A node's TLS setup: what it accepts connections with and what it
/// connects with, both requiring the peer's certificate.
pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// The HTTPS endpoints' (health, metrics): this node's certificate,
    /// none asked of the client (Kubernetes' probes and Prometheus present
    /// none).
    https: Arc<ServerConfig>,
    dir: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("dir", &self.dir).finish()
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadFile {
            path: path.to_owned(),
            reason: format!("not PEM certificates ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadFile {
            path: path.to_owned(),
            reason: "no certificate in it".to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadFile {
        path: path.to_owned(),
        reason: format!("no PEM private key ({e})"),
    })
}

/// TLS 1.3 only, AES-128-GCM first: nodes are ours on both ends (no old
/// peer to accommodate), and on the bulk data path AES-128 moves more
/// bytes per core than AES-256 (ten rounds, not fourteen) at a security
/// margin no attack comes near.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

impl Tls {
    /// Loads `dir`'s `ca.pem`, `node.pem` and `node.key`.
    pub fn load(dir: &Path) -> Result<Arc<Tls>, TlsError> {
        let ca = certificates(&dir.join("ca.pem"))?;
        let chain = certificates(&dir.join("node.pem"))?;
        let key = private_key(&dir.join("node.key"))?;
        Self::from_parts(dir, ca, chain, key)
    }

    fn from_parts(
        dir: &Path,
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Tls>, TlsError> {
        let unusable = |reason: String| TlsError::Config {
            dir: dir.to_owned(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots
                .add(cert)
                .map_err(|e| unusable(format!("ca.pem: {e}")))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| unusable(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| unusable(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| unusable(format!("node.pem and node.key: {e}")))?;
        let https = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| unusable(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| unusable(format!("node.pem and node.key: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| unusable(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| unusable(format!("node.pem and node.key: {e}")))?;
        Ok(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            https: Arc::new(https),
            dir: dir.to_owned(),
        }))
    }

    /// What the HTTPS endpoints serve with (TLS 1.3, which Kubernetes'
    /// probes and Prometheus speak): clients check the certificate against
    /// `ca.pem`, under the name [`SERVER_NAME`].
    pub(crate) fn https_config(&self) -> Arc<ServerConfig> {
        self.https.clone()
    }

    /// Where its files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name clients check.
    pub(crate) fn server_name() -> ServerName<'static> {
        ServerName::try_from(SERVER_NAME).unwrap_or_else(|_| unreachable!("a valid DNS name"))
    }
}

/// A connection between nodes: plain TCP, or TLS on either side.
pub(crate) enum Stream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The server side of a new connection: TLS first when `tls` is set.
pub(crate) async fn accept(tls: Option<&Tls>, tcp: TcpStream) -> io::Result<Stream> {
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(tls) => {
            let stream = tls.acceptor.accept(tcp).await?;
            Ok(Stream::Server(Box::new(stream)))
        }
    }
}

/// The client side of a new connection: TLS first when `tls` is set.
pub(crate) async fn connect(tls: Option<&Tls>, tcp: TcpStream) -> io::Result<Stream> {
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(tls) => {
            let stream = tls.connector.connect(Tls::server_name(), tcp).await?;
            Ok(Stream::Client(Box::new(stream)))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------------------
// Making the files (`troupe cert`).

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    crate::cookie::refuse_link(path).map_err(io_error(path))?;
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Makes a cluster CA in `dir` (`ca.pem`, `ca.key`), refusing to replace
/// one.
pub fn init_ca(dir: &Path) -> Result<(), TlsError> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        return Err(TlsError::CaExists(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key_path, &key.serialize_pem())?;
    write_private(&cert_path, &cert.pem())
}

/// How long a node certificate is valid.
pub const NODE_CERT_DAYS: i64 = 365;

/// Issues a node certificate signed by the CA in `ca_dir`, written to
/// `out_dir` with a copy of `ca.pem` (what `troupe start --tls-dir out_dir`
/// loads), valid for `days` from now (a negative number makes an expired
/// one, for tests).
pub fn issue(ca_dir: &Path, out_dir: &Path, days: i64) -> Result<(), TlsError> {
    let key_path = ca_dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::BadFile {
        path: key_path.clone(),
        reason: format!("no PEM key ({e})"),
    })?;
    // The issuer: the CA's name and key (its signature is not needed).
    let issuer = ca_params()?
        .self_signed(&ca_key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "troupe node");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time_now();
    params.not_before = now - rcgen_duration_days(1);
    params.not_after = now + rcgen_duration_days(days);
    if days < 0 {
        params.not_before = now + rcgen_duration_days(days - 1);
    }
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let ca_pem_path = ca_dir.join("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io_error(&ca_pem_path))?;
    if out_dir != ca_dir {
        write_private(&out_dir.join("ca.pem"), &ca_pem)?;
    }
    write_private(&out_dir.join("node.key"), &key.serialize_pem())?;
    write_private(&out_dir.join("node.pem"), &cert.pem())
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_duration_days(days: i64) -> time::Duration {
    time::Duration::days(days)
}

#[cfg(test)]
mod tests;
