//! [`TlsAcceptor`]: the server TLS configuration in use right now, swapped at
//! run time when the files change ([`TlsAcceptor::reload`],
//! [`TlsAcceptor::spawn_reloader`]). New handshakes use the new certificate,
//! established connections keep theirs, and a bad new file keeps the old one
//! serving.

use super::certs::{Material, TlsError, TlsFiles};
use super::tls_config::{build, Configs};
use crate::config::TlsConfig;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

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
            .field("client_crl_file", &self.shared.files.client_crl_file)
            .field("mutual", &self.mutual())
            .finish()
    }
}

impl TlsAcceptor {
    /// Reads the files of `config` and builds the server configuration: TLS 1.2
    /// and 1.3, ALPN `h2` then `http/1.1`. With `client_ca_file`, client
    /// certificates are verified against that bundle but optional, so API-key
    /// callers still connect over TLS; with `client_crl_file` too, a client
    /// certificate those CRLs revoke is refused at the handshake.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let files = TlsFiles {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            client_ca_file: config.client_ca_file.clone(),
            client_crl_file: config.client_crl_file.clone(),
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

    /// [`load`](Self::load)s the files of `config` and spawns the
    /// [reloader](Self::spawn_reloader) that checks them every
    /// `reload_interval_seconds` until `stop` is cancelled.
    pub fn load_and_watch(config: &TlsConfig, stop: CancellationToken) -> Result<Self, TlsError> {
        let acceptor = Self::load(config)?;
        acceptor.spawn_reloader(Duration::from_secs(config.reload_interval_seconds), stop);
        Ok(acceptor)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::incoming;
    use crate::transport::test_pki::{connect, listener, next_connection, served_leaf, Pki};
    use crate::transport::{certificate_subjects, CertSubject};
    use futures::StreamExt;

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
        assert_eq!(
            certificate_subjects(&leaf).unwrap(),
            vec![CertSubject::dns("localhost"), CertSubject::cn("tokenvault-2")]
        );

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

    /// Whether the server refused the client's certificate (a TLS alert) rather than serving it.
    async fn refused(addr: std::net::SocketAddr, pki: &Pki, leaf: &crate::transport::test_pki::Leaf) -> bool {
        use tokio::io::AsyncReadExt;
        let mut stream = connect(addr, pki.client(Some(leaf))).await.unwrap();
        let mut buf = [0u8; 1];
        // A served connection is closed by the server (end of stream, with or
        // without close_notify); a refused one ends with the server's alert.
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(_)) => false,
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Ok(Err(error)) => {
                assert!(error.to_string().contains("alert"), "{error}");
                true
            }
            Err(_) => panic!("the server neither refused nor closed the connection"),
        }
    }

    #[tokio::test]
    async fn the_client_crl_refuses_revoked_certificates_and_reloads_with_the_files() {
        let pki = Pki::new();
        pki.write("crl.pem", &pki.ca.crl(&[71]).pem);
        let mut config = pki.config(true);
        config.client_crl_file = Some(pki.path("crl.pem"));
        let acceptor = TlsAcceptor::load(&config).unwrap();
        let (listener, addr) = listener().await;
        // The server side accepts in the background and closes each connection it gets.
        let drain = tokio::spawn(incoming(listener, acceptor.clone()).for_each(|_| async {}));

        let served = pki.ca.issue("agent-7", &[], &["spiffe://x/agent/7"], true, 70);
        let revoked = pki.ca.issue("agent-8", &[], &["spiffe://x/agent/8"], true, 71);
        assert!(!refused(addr, &pki, &served).await, "not on the CRL: served");
        assert!(
            refused(addr, &pki, &revoked).await,
            "on the CRL: refused at the handshake"
        );

        // A new CRL (DER this time) is picked up with the certificate reload.
        std::fs::write(pki.path("crl.pem"), pki.ca.crl(&[70, 71]).der).unwrap();
        assert!(acceptor.reload().unwrap());
        assert!(refused(addr, &pki, &served).await, "revoked by the new CRL");

        // A broken CRL: a clear error naming it, and the previous CRL keeps being enforced.
        pki.write(
            "crl.pem",
            "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
        );
        let error = acceptor.reload().unwrap_err();
        assert!(matches!(error, TlsError::BadCrl { .. }), "{error}");
        assert!(error.to_string().contains("crl.pem"), "{error}");
        assert!(refused(addr, &pki, &served).await);
        let fresh = pki.ca.issue("agent-9", &[], &[], true, 72);
        assert!(!refused(addr, &pki, &fresh).await);

        // A certificate from a CA the CRLs do not cover is refused too (fail closed).
        let other = crate::transport::test_pki::Ca::new("second CA");
        pki.write("ca.pem", &format!("{}{}", pki.ca.pem(), other.pem()));
        pki.write("crl.pem", &pki.ca.crl(&[]).pem);
        assert!(acceptor.reload().unwrap());
        assert!(!refused(addr, &pki, &served).await, "the new CRL revokes nothing");
        assert!(refused(addr, &pki, &other.issue("agent-10", &[], &[], true, 73)).await);
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
}
