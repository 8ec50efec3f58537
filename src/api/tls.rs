//! TLS for the gRPC and HTTP listeners.
//!
//! [`TlsAcceptor`] holds the server configuration built from the PEM files of
//! [`TlsConfig`] and can swap it at run time ([`TlsAcceptor::reload`],
//! [`TlsAcceptor::spawn_reloader`]): new handshakes use the new certificate,
//! established connections keep theirs, and a bad new file keeps the old one
//! serving. When `client_ca_file` is set, clients *may* present a certificate
//! signed by that CA (mutual TLS); clients without one still connect and
//! authenticate with an API key.
//!
//! [`incoming`] turns a TCP listener into a stream of [`TlsConnection`]s for
//! tonic, whose `ConnectInfo` ([`TlsConnectInfo`]) carries the peer address and
//! the verified certificate identity; [`serve_http`] serves an axum router the
//! same way.

use crate::auth::{PeerAddr, PeerCertificateIdentity};
use crate::config::TlsConfig;
use futures::Stream;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use zeroize::Zeroizing;

/// How long a client has to complete the TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN protocols offered, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why the TLS files could not be turned into a server configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read TLS file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` PEM block.
    #[error("no certificate (`-----BEGIN CERTIFICATE-----` block) found in {}", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no private-key PEM block.
    #[error("no private key (PKCS#8, PKCS#1 or SEC1 PEM block) found in {}", path.display())]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// A file is not valid PEM.
    #[error("invalid PEM in {}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the one the certificate was issued for.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate or key is unusable (unsupported key type, malformed certificate, …).
    #[error("cannot use certificate {} with private key {}: {reason}", cert.display(), key.display())]
    BadCertificateOrKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls reported.
        reason: String,
    },
    /// The client CA bundle is empty or holds an unusable certificate.
    #[error("bad client CA bundle {}: {reason}", path.display())]
    BadCaBundle {
        /// The CA bundle file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The files a [`TlsAcceptor`] is built from.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

/// The raw contents of the files; the key is wiped on drop.
struct Material {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    ca: Option<Vec<u8>>,
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read_file(&files.cert_file)?,
            key: Zeroizing::new(read_file(&files.key_file)?),
            ca: files.client_ca_file.as_deref().map(read_file).transpose()?,
        })
    }

    /// A digest of all the contents, to tell whether anything changed.
    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [Some(&self.cert[..]), Some(&self.key[..]), self.ca.as_deref()] {
            match part {
                Some(bytes) => {
                    hasher.update([1]);
                    hasher.update((bytes.len() as u64).to_be_bytes());
                    hasher.update(bytes);
                }
                None => hasher.update([0]),
            }
        }
        hasher.finalize().into()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The server configurations built from one version of the files.
#[derive(Debug)]
struct Configs {
    /// Requests (optionally) a client certificate when a client CA is configured.
    client_auth: Arc<ServerConfig>,
    /// Never requests a client certificate.
    server_only: Arc<ServerConfig>,
    digest: [u8; 32],
}

#[derive(Debug)]
struct Shared {
    files: TlsFiles,
    current: RwLock<Arc<Configs>>,
}

/// Server TLS state that can be swapped at run time.
///
/// Clones share the state: a reload through one is seen by all.
#[derive(Clone)]
pub struct TlsAcceptor {
    shared: Arc<Shared>,
    /// Whether this handle requests client certificates (when a client CA is configured).
    client_auth: bool,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("cert_file", &self.shared.files.cert_file)
            .field("key_file", &self.shared.files.key_file)
            .field("client_ca_file", &self.shared.files.client_ca_file)
            .field("mutual", &self.mutual())
            .finish()
    }
}

impl TlsAcceptor {
    /// Reads the files of `config` and builds the server configuration: TLS 1.2
    /// and 1.3, ALPN `h2` then `http/1.1`. With `client_ca_file`, client
    /// certificates are verified against that bundle but optional, so API-key
    /// callers still connect over TLS.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let files = TlsFiles {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            client_ca_file: config.client_ca_file.clone(),
        };
        let material = Material::read(&files)?;
        let configs = build(&files, &material)?;
        Ok(Self {
            shared: Arc::new(Shared {
                files,
                current: RwLock::new(Arc::new(configs)),
            }),
            client_auth: true,
        })
    }

    /// Re-reads the files. Returns `Ok(true)` when they changed and the new
    /// configuration now serves new handshakes, `Ok(false)` when nothing
    /// changed. On error the previous configuration keeps serving.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let material = Material::read(&self.shared.files)?;
        if material.digest() == self.current().digest {
            return Ok(false);
        }
        let configs = build(&self.shared.files, &material)?;
        *self.shared.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(configs);
        Ok(true)
    }

    /// Checks the files every `interval` (at least one second) until `stop` is
    /// cancelled, reloading them when their contents change. Logs
    /// "TLS certificate reloaded" on success and a warning (once per distinct
    /// error) when the new files cannot be used.
    pub fn spawn_reloader(&self, interval: Duration, stop: CancellationToken) -> JoinHandle<()> {
        let acceptor = self.clone();
        let interval = interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_error: Option<String> = None;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let reloading = acceptor.clone();
                let outcome = tokio::task::spawn_blocking(move || reloading.reload()).await;
                let files = &acceptor.shared.files;
                match outcome {
                    Ok(Ok(changed)) => {
                        last_error = None;
                        if changed {
                            tracing::info!(cert_file = %files.cert_file.display(), "TLS certificate reloaded");
                        }
                    }
                    Ok(Err(error)) => {
                        let message = error.to_string();
                        if last_error.as_deref() != Some(message.as_str()) {
                            tracing::warn!(%error, "cannot reload the TLS files; still serving the previous certificate");
                        }
                        last_error = Some(message);
                    }
                    Err(error) => tracing::warn!(%error, "TLS reload task failed"),
                }
            }
        })
    }

    /// Whether clients may authenticate with a certificate on connections this handle accepts.
    pub fn mutual(&self) -> bool {
        self.client_auth && self.shared.files.client_ca_file.is_some()
    }

    /// A handle on the same (reloaded) certificate that never asks clients for
    /// a certificate: for listeners browsers reach, such as the OAuth callback,
    /// where a certificate request could make a browser prompt the user.
    pub fn without_client_auth(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            client_auth: false,
        }
    }

    /// The configuration new handshakes use right now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let current = self.current();
        if self.client_auth {
            current.client_auth.clone()
        } else {
            current.server_only.clone()
        }
    }

    fn current(&self) -> Arc<Configs> {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn parse_certs(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, pem::Error> {
    CertificateDer::pem_slice_iter(pem_bytes).collect()
}

fn build(files: &TlsFiles, material: &Material) -> Result<Configs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = parse_certs(&material.cert).map_err(|e| TlsError::BadPem {
        path: files.cert_file.clone(),
        reason: e.to_string(),
    })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert_file.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&material.key).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: files.key_file.clone(),
        },
        other => TlsError::BadPem {
            path: files.key_file.clone(),
            reason: other.to_string(),
        },
    })?;
    warn_if_not_valid_now(&files.cert_file, &chain[0]);

    let server_only = server_config(files, &provider, None, chain.clone(), key.clone_key())?;
    let client_auth = match (&files.client_ca_file, &material.ca) {
        (Some(ca_file), Some(ca_pem)) => {
            let verifier = client_verifier(ca_file, ca_pem, &provider)?;
            server_config(files, &provider, Some(verifier), chain, key)?
        }
        _ => server_only.clone(),
    };
    Ok(Configs {
        client_auth,
        server_only,
        digest: material.digest(),
    })
}

fn client_verifier(
    path: &Path,
    ca_pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |reason: String| TlsError::BadCaBundle {
        path: path.to_path_buf(),
        reason,
    };
    let certs = parse_certs(ca_pem).map_err(|e| bad(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate #{}: {e}", index + 1)))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(e.to_string()))
}

fn server_config(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let unusable = |reason: String| TlsError::BadCertificateOrKey {
        cert: files.cert_file.clone(),
        key: files.key_file.clone(),
        reason,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| unusable(e.to_string()))?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
        },
        other => unusable(other.to_string()),
    })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Logs a warning when the leaf certificate is expired or not yet valid: rustls serves it anyway.
fn warn_if_not_valid_now(path: &Path, leaf: &CertificateDer<'_>) {
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) {
        if !cert.validity().is_valid() {
            tracing::warn!(
                cert_file = %path.display(),
                not_before = %cert.validity().not_before,
                not_after = %cert.validity().not_after,
                "the TLS certificate is not valid now (expired or not yet valid); clients will reject it"
            );
        }
    }
}

/// Subject names of a certificate: the subject common name, every DNS SAN,
/// every URI SAN, in that order. `None` when the certificate cannot be parsed.
pub fn certificate_subjects(der: &[u8]) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut subjects: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        subjects.extend(names.iter().filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        }));
        subjects.extend(names.iter().filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        }));
    }
    Some(subjects)
}

/// What tonic (and axum) see about a TLS peer.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate's identity, when the client presented one.
    pub identity: Option<PeerCertificateIdentity>,
}

/// A TLS connection usable by tonic: implements `AsyncRead + AsyncWrite +
/// tonic::transport::server::Connected<ConnectInfo = TlsConnectInfo>`.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl std::fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TlsConnection {
    /// The peer address and certificate identity.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }

    /// The protocol agreed by ALPN (`h2`, `http/1.1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Completes the server side of a handshake within [`HANDSHAKE_TIMEOUT`].
async fn handshake(acceptor: &TlsAcceptor, stream: TcpStream, remote_addr: SocketAddr) -> io::Result<TlsConnection> {
    // Latency matters more than segment count for gRPC; failure to set it is harmless.
    let _ = stream.set_nodelay(true);
    let accept = tokio_rustls::TlsAcceptor::from(acceptor.server_config()).accept(stream);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    // rustls only reports peer certificates that its verifier accepted.
    let identity = match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
        Some(leaf) => match certificate_subjects(leaf) {
            Some(subjects) => Some(PeerCertificateIdentity { subjects }),
            None => {
                tracing::debug!(%remote_addr, "verified client certificate could not be parsed; ignoring it");
                None
            }
        },
        None => None,
    };
    Ok(TlsConnection {
        stream,
        info: TlsConnectInfo {
            remote_addr: Some(remote_addr),
            identity,
        },
    })
}

/// Handles an `accept` error: per-connection errors are skipped, others
/// (such as running out of file descriptors) are logged and waited out.
async fn accept_error(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(%error, "accepting a TCP connection failed; retrying in one second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow
/// or failing handshake never blocks others; handshake timeout 10 s; failures
/// logged at debug and dropped), yielding connections for
/// `Server::serve_with_incoming_shutdown`.
///
/// Must be called inside a Tokio runtime: the accept loop is spawned at once
/// (so handshakes proceed before the stream is first polled) and stops,
/// closing the listener, when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, acceptor, sender));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, sender: mpsc::Sender<io::Result<TlsConnection>>) {
    loop {
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_error(error).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            match handshake(&acceptor, stream, remote_addr).await {
                // Fails only when the server stopped; the connection is then dropped.
                Ok(connection) => drop(sender.send(Ok(connection)).await),
                Err(error) => tracing::debug!(%remote_addr, %error, "TLS handshake failed"),
            }
        });
    }
}

/// Serves an axum Router over TLS until `stop` is cancelled (hyper-util auto
/// builder, HTTP/1.1 and HTTP/2; graceful: stop accepting, let in-flight
/// requests finish); inserts [`PeerAddr`], [`TlsConnectInfo`],
/// `axum::extract::ConnectInfo<SocketAddr>` and (if any)
/// [`PeerCertificateIdentity`] into each request's extensions.
pub async fn serve_http(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    stop: CancellationToken,
) -> io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper only enforces its header read timeout when it has a timer.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_error(error).await;
                continue;
            }
        };
        // Taken now, so shutdown waits for handshakes in progress too.
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let connection = match handshake(&acceptor, stream, remote_addr).await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::debug!(%remote_addr, %error, "TLS handshake failed");
                    return;
                }
            };
            let info = connection.info().clone();
            let service = router.map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                let extensions = request.extensions_mut();
                extensions.insert(PeerAddr(info.remote_addr));
                if let Some(addr) = info.remote_addr {
                    extensions.insert(axum::extract::ConnectInfo(addr));
                }
                if let Some(identity) = &info.identity {
                    extensions.insert(identity.clone());
                }
                extensions.insert(info.clone());
                request
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let served = builder.serve_connection_with_upgrades(TokioIo::new(connection), service);
            if let Err(error) = watcher.watch(served).await {
                tracing::debug!(%remote_addr, %error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
        SerialNumber,
    };
    use rustls_pki_types::ServerName;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::ClientConfig;

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Self { cert, key }
        }

        fn pem(&self) -> String {
            self.cert.pem()
        }

        /// A leaf certificate signed by this CA.
        fn issue(&self, cn: &str, dns: &[&str], uris: &[&str], client: bool, serial: u64) -> Leaf {
            let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            for uri in uris {
                params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
            }
            params.distinguished_name.push(DnType::CommonName, cn);
            params.serial_number = Some(SerialNumber::from(serial));
            params.extended_key_usages = vec![if client {
                ExtendedKeyUsagePurpose::ClientAuth
            } else {
                ExtendedKeyUsagePurpose::ServerAuth
            }];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }

        fn server(&self, cn: &str, serial: u64) -> Leaf {
            self.issue(cn, &["localhost", "127.0.0.1"], &[], false, serial)
        }
    }

    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    impl Leaf {
        fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            (
                vec![self.der.clone()],
                PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap(),
            )
        }
    }

    /// A CA, a server certificate for localhost, and the files of a `TlsConfig`.
    struct Pki {
        dir: tempfile::TempDir,
        ca: Ca,
        server: Leaf,
    }

    impl Pki {
        fn new() -> Self {
            let ca = Ca::new("tokenvault test CA");
            let server = ca.server("tokenvault-1", 1);
            let pki = Self {
                dir: tempfile::tempdir().unwrap(),
                ca,
                server,
            };
            pki.write("cert.pem", &pki.server.cert_pem);
            pki.write("key.pem", &pki.server.key_pem);
            pki.write("ca.pem", &pki.ca.pem());
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, contents: &str) {
            std::fs::write(self.path(name), contents).unwrap();
        }

        fn config(&self, mutual: bool) -> TlsConfig {
            TlsConfig {
                cert_file: self.path("cert.pem"),
                key_file: self.path("key.pem"),
                client_ca_file: mutual.then(|| self.path("ca.pem")),
                reload_interval_seconds: 30,
            }
        }

        fn client(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.cert.der().clone()).unwrap();
            let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let mut config = match identity {
                Some(leaf) => {
                    let (chain, key) = leaf.chain_and_key();
                    builder.with_client_auth_cert(chain, key).unwrap()
                }
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(config)
        }
    }

    type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<ClientStream> {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    fn served_leaf(stream: &ClientStream) -> CertificateDer<'static> {
        stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
    }

    async fn next_connection(stream: &mut (impl Stream<Item = io::Result<TlsConnection>> + Unpin)) -> TlsConnection {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a connection within 5 s")
            .expect("stream open")
            .expect("no error")
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn handshake_through_incoming_reports_the_peer_address() {
        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(false)).unwrap();
        assert!(!acceptor.mutual());
        let (listener, addr) = listener().await;
        let mut connections = Box::pin(incoming(listener, acceptor));

        // A client that opens TCP and never speaks does not hold up the others.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut client = tokio::time::timeout(Duration::from_secs(5), connect(addr, pki.client(None)))
            .await
            .expect("not held up by the silent client")
            .unwrap();
        assert_eq!(served_leaf(&client), pki.server.der);
        let mut server = next_connection(&mut connections).await;

        use tonic::transport::server::Connected;
        let info = server.connect_info();
        assert_eq!(info.remote_addr, Some(client.get_ref().0.local_addr().unwrap()));
        assert!(info.identity.is_none());
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));

        // Bytes flow both ways.
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn mutual_tls_reports_the_verified_identity_and_keeps_certificates_optional() {
        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(true)).unwrap();
        assert!(acceptor.mutual());
        let (listener, addr) = listener().await;
        let mut connections = Box::pin(incoming(listener, acceptor));

        let agent = pki.ca.issue(
            "agent-7",
            &["agent.internal"],
            &["spiffe://tokenvault/agent/7"],
            true,
            70,
        );
        let client = connect(addr, pki.client(Some(&agent))).await.unwrap();
        let server = next_connection(&mut connections).await;
        assert_eq!(
            server.info().remote_addr,
            Some(client.get_ref().0.local_addr().unwrap())
        );
        let identity = server.info().identity.clone().expect("a verified identity");
        assert_eq!(
            identity.subjects,
            vec!["agent-7", "agent.internal", "spiffe://tokenvault/agent/7"]
        );

        // No client certificate: still accepted, without an identity (API-key callers).
        let anonymous = connect(addr, pki.client(None)).await.unwrap();
        let server = next_connection(&mut connections).await;
        assert_eq!(
            server.info().remote_addr,
            Some(anonymous.get_ref().0.local_addr().unwrap())
        );
        assert!(server.info().identity.is_none());

        // A certificate from another CA is refused at the handshake.
        let stranger = Ca::new("someone else's CA").issue("agent-7", &["agent.internal"], &[], true, 71);
        let mut refused = connect(addr, pki.client(Some(&stranger))).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf))
            .await
            .unwrap();
        let error = read.expect_err("the server must abort the handshake");
        assert!(error.to_string().contains("alert"), "{error}");
        // ... and never reaches the server: the next connection yielded is the next good one.
        let good = connect(addr, pki.client(Some(&agent))).await.unwrap();
        let server = next_connection(&mut connections).await;
        assert_eq!(server.info().remote_addr, Some(good.get_ref().0.local_addr().unwrap()));
        assert!(server.info().identity.is_some());
    }

    #[tokio::test]
    async fn without_client_auth_never_asks_for_a_certificate() {
        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(true)).unwrap().without_client_auth();
        assert!(!acceptor.mutual());
        let (listener, addr) = listener().await;
        let mut connections = Box::pin(incoming(listener, acceptor));
        let agent = pki.ca.issue("agent-7", &[], &[], true, 70);
        let _client = connect(addr, pki.client(Some(&agent))).await.unwrap();
        let server = next_connection(&mut connections).await;
        assert!(server.info().identity.is_none());
    }

    #[tokio::test]
    async fn tonic_serves_grpc_over_incoming() {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;

        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(true)).unwrap();
        let (listener, addr) = listener().await;
        let (_reporter, health) = tonic_health::server::health_reporter();
        let seen: Arc<Mutex<Vec<Option<TlsConnectInfo>>>> = Arc::default();
        let record = seen.clone();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tonic::service::InterceptorLayer::new(
                    move |request: tonic::Request<()>| {
                        record
                            .lock()
                            .unwrap()
                            .push(request.extensions().get::<TlsConnectInfo>().cloned());
                        Ok(request)
                    },
                ))
                .add_service(health)
                .serve_with_incoming_shutdown(incoming(listener, acceptor), stop.clone().cancelled_owned()),
        );

        let agent = pki.ca.issue("agent-7", &["agent.internal"], &[], true, 70);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.ca.pem()))
            .identity(Identity::from_pem(&agent.cert_pem, &agent.key_pem))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap();
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let info = seen[0].clone().expect("tonic inserts TlsConnectInfo");
        assert_eq!(info.remote_addr.unwrap().ip(), addr.ip());
        assert_eq!(info.identity.unwrap().subjects, vec!["agent-7", "agent.internal"]);

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn reload_swaps_the_certificate_and_keeps_the_old_one_on_bad_files() {
        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(false)).unwrap();
        let (listener, addr) = listener().await;
        let connections = incoming(listener, acceptor.clone());
        // Keep the server side accepting in the background.
        let drain = tokio::spawn(connections.for_each(|_| async {}));

        assert_eq!(
            served_leaf(&connect(addr, pki.client(None)).await.unwrap()),
            pki.server.der
        );
        assert!(!acceptor.reload().unwrap(), "nothing changed yet");

        let renewed = pki.ca.server("tokenvault-2", 2);
        pki.write("cert.pem", &renewed.cert_pem);
        // Half-way through a rotation: the new certificate with the old key is refused.
        let error = acceptor.reload().unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        assert_eq!(
            served_leaf(&connect(addr, pki.client(None)).await.unwrap()),
            pki.server.der
        );

        pki.write("key.pem", &renewed.key_pem);
        assert!(acceptor.reload().unwrap());
        assert!(!acceptor.reload().unwrap());
        let leaf = served_leaf(&connect(addr, pki.client(None)).await.unwrap());
        assert_eq!(leaf, renewed.der);
        assert_eq!(certificate_subjects(&leaf).unwrap(), vec!["tokenvault-2", "localhost"]);

        // A corrupt file: an error naming it, and the renewed certificate keeps serving.
        pki.write("cert.pem", "-----BEGIN GARBAGE-----\nnot a certificate\n");
        let error = acceptor.reload().unwrap_err();
        assert!(
            matches!(error, TlsError::NoCertificate { .. } | TlsError::BadPem { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("cert.pem"), "{error}");
        assert_eq!(
            served_leaf(&connect(addr, pki.client(None)).await.unwrap()),
            renewed.der
        );
        drain.abort();
    }

    #[tokio::test]
    async fn the_reloader_picks_up_new_files() {
        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(false)).unwrap();
        let (listener, addr) = listener().await;
        let drain = tokio::spawn(incoming(listener, acceptor.clone()).for_each(|_| async {}));
        let stop = CancellationToken::new();
        let reloader = acceptor.spawn_reloader(Duration::from_secs(1), stop.clone());
        let renewed = pki.ca.server("tokenvault-3", 3);
        pki.write("key.pem", &renewed.key_pem);
        pki.write("cert.pem", &renewed.cert_pem);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if served_leaf(&connect(addr, pki.client(None)).await.unwrap()) == renewed.der {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not reloaded within 5 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), reloader)
            .await
            .unwrap()
            .unwrap();
        drain.abort();
    }

    #[tokio::test]
    async fn serve_http_serves_a_router_over_tls_and_stops_gracefully() {
        use axum::routing::get;

        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(true)).unwrap();
        let (listener, addr) = listener().await;
        let router = axum::Router::new()
            .route(
                "/whoami",
                get(
                    |axum::Extension(PeerAddr(peer)): axum::Extension<PeerAddr>,
                     identity: Option<axum::Extension<PeerCertificateIdentity>>| async move {
                        let subjects = identity.map(|i| i.0.subjects.join(",")).unwrap_or_default();
                        format!("{}|{subjects}", peer.map(|p| p.to_string()).unwrap_or_default())
                    },
                ),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "done"
                }),
            );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_http(listener, acceptor, router, stop.clone()));

        let client = |identity: Option<&Leaf>| {
            let mut builder = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap())
                .resolve("localhost", addr);
            if let Some(leaf) = identity {
                let pem = format!("{}{}", leaf.cert_pem, leaf.key_pem);
                builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
            }
            builder.build().unwrap()
        };
        let url = format!("https://localhost:{}/whoami", addr.port());

        let body = client(None).get(&url).send().await.unwrap().text().await.unwrap();
        let (peer, subjects) = body.split_once('|').unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(peer.ip(), addr.ip());
        assert_ne!(peer.port(), addr.port());
        assert_eq!(subjects, "");

        let agent = pki.ca.issue("agent-7", &["agent.internal"], &[], true, 70);
        let body = client(Some(&agent))
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.ends_with("|agent-7,agent.internal"), "{body}");

        // A request in flight when stop is cancelled still completes.
        let slow_client = client(None);
        let slow = tokio::spawn(
            slow_client
                .get(format!("https://localhost:{}/slow", addr.port()))
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        let response = slow.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "done");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let pki = Pki::new();

        let mut config = pki.config(false);
        config.cert_file = pki.path("missing.pem");
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::Read { .. }), "{error}");
        assert!(
            error.to_string().contains(&*pki.path("missing.pem").to_string_lossy()),
            "{error}"
        );

        let other = pki.ca.server("tokenvault-other", 9);
        pki.write("other-key.pem", &other.key_pem);
        let mut config = pki.config(false);
        config.key_file = pki.path("other-key.pem");
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        assert!(error.to_string().contains("does not match"), "{error}");
        assert!(error.to_string().contains("other-key.pem"), "{error}");

        let mut config = pki.config(false);
        config.cert_file = pki.path("key.pem");
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");

        let mut config = pki.config(false);
        config.key_file = pki.path("cert.pem");
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error}");
        assert!(error.to_string().contains("no private key"), "{error}");

        pki.write("empty-ca.pem", "");
        let mut config = pki.config(true);
        config.client_ca_file = Some(pki.path("empty-ca.pem"));
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::BadCaBundle { .. }), "{error}");
        assert!(error.to_string().contains("empty-ca.pem"), "{error}");

        assert!(TlsAcceptor::load(&pki.config(true)).unwrap().mutual());
    }

    #[test]
    fn subjects_list_the_common_name_then_dns_then_uri_names() {
        let ca = Ca::new("ca");
        let leaf = ca.issue(
            "worker",
            &["a.example", "b.example"],
            &["spiffe://x/y", "urn:z"],
            true,
            5,
        );
        assert_eq!(
            certificate_subjects(&leaf.der).unwrap(),
            vec!["worker", "a.example", "b.example", "spiffe://x/y", "urn:z"]
        );
        assert_eq!(certificate_subjects(b"not der"), None);
    }
}
