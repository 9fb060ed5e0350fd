//! TLS for the gRPC listener, with rustls (the provider tonic's `tls-aws-lc` feature uses): the
//! server certificate and key, and optionally a client CA whose certificates are then asked for
//! (mTLS); the files are read at start and again on [`ServerTls::reload`] (SIGHUP), which changes
//! what new connections get without touching open ones. [`incoming`] accepts connections and
//! runs each handshake on its own task under `limits.tls_handshake_timeout_seconds`, so a slow
//! client never holds up the others; every connection (plaintext too) is cuttable by the drain
//! and reports its [`PeerInfo`] (address and client-certificate names) to tonic.
//!
//! It must not decide who a certificate's names belong to: that is `api::access`.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::api::access::{PeerInfo, certificate_names};
use crate::config::{AuthMode, Config};
use crate::drain::CuttableStream;

/// Most TLS handshakes in progress at once; connections beyond it are closed at once.
const MAX_HANDSHAKES: usize = 1024;

/// Accepted connections waiting for the server to take them.
const ACCEPTED_BUFFER: usize = 64;

/// A TLS file that cannot be used; the message names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[error("tls: {path}: {message}", path = path.display())]
pub struct TlsError {
    /// The file (or the configuration key's file) at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// The files TLS is built from.
#[derive(Debug, Clone)]
struct TlsFiles {
    /// `tls.cert_file`.
    cert: PathBuf,
    /// `tls.key_file`.
    key: PathBuf,
    /// `tls.client_ca_file`.
    client_ca: Option<PathBuf>,
    /// Whether a client may connect without a certificate (`auth.mode = "api_key_or_mtls"`).
    client_cert_optional: bool,
}

/// The listener's TLS settings, swappable while serving.
#[derive(Clone)]
pub struct ServerTls {
    /// Where they are read from.
    files: Arc<TlsFiles>,
    /// What new connections get.
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ServerTls {
    /// TLS from `[tls]`, or `None` when it has no `cert_file` (plaintext).
    pub fn load(config: &Config) -> Result<Option<Self>, TlsError> {
        let tls = &config.tls;
        let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: tls.client_ca_file.clone(),
            client_cert_optional: config.auth.mode == AuthMode::ApiKeyOrMtls,
        };
        let built = build(&files)?;
        Ok(Some(Self {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(Arc::new(built))),
        }))
    }

    /// Reads the files again; new connections get them, open ones keep theirs. On an error
    /// the settings in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let built = Arc::new(build(&self.files)?);
        if let Ok(mut current) = self.current.write() {
            *current = built;
        }
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        TlsAcceptor::from(config)
    }
}

fn error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.to_owned(),
        message: message.to_string().to_lowercase(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, e))?;
    if certs.is_empty() {
        return Err(error(path, "holds no pem certificate"));
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| error(&files.key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(&files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.client_cert_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| error(ca, e))?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| error(&files.key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// One accepted connection, plaintext or TLS.
pub enum Connection {
    /// Plaintext.
    Plain(CuttableStream, PeerInfo),
    /// TLS, after the handshake.
    Tls(Box<TlsStream<CuttableStream>>, PeerInfo),
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Self::Plain(_, peer) | Self::Tls(_, peer) => peer.clone(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    /// Always false, so that HTTP/2 copies a frame's payload of less than 1 KiB into its
    /// write buffer. Over vectored I/O, h2 copies only payloads under 256 bytes and sends a
    /// larger one as a buffer of its own, after which nothing more can be buffered until a
    /// write: a unary response of a few hundred bytes (a submit's execution) then took one
    /// `writev` for its headers and message and a second for its trailers, and the
    /// responses and events ready together could not share a write.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The connections `listener` accepts, as a stream for tonic, and the task that accepts them
/// (it ends when the stream is dropped). With `tls`, each handshake runs on its own task and
/// is abandoned after `handshake_timeout`; failed handshakes are logged at debug and dropped.
pub fn incoming(
    listener: Arc<TcpListener>,
    tls: Option<ServerTls>,
    cut: CancellationToken,
    handshake_timeout: Duration,
) -> (ReceiverStream<io::Result<Connection>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(ACCEPTED_BUFFER);
    let task = tokio::spawn(async move {
        let mut handshakes = JoinSet::new();
        loop {
            tokio::select! {
                () = tx.closed() => break,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of descriptors and the like: pause instead of spinning.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let stream = CuttableStream::new(stream, &cut);
                    let mut peer = PeerInfo { remote: Some(remote), cert_names: None };
                    let Some(tls) = &tls else {
                        if tx.send(Ok(Connection::Plain(stream, peer))).await.is_err() {
                            break;
                        }
                        continue;
                    };
                    if handshakes.len() >= MAX_HANDSHAKES {
                        tracing::warn!(%remote, "too many tls handshakes in progress; connection closed");
                        continue;
                    }
                    let acceptor = tls.acceptor();
                    let tx = tx.clone();
                    handshakes.spawn(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                peer.cert_names = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|certs| certs.first())
                                    .map(|leaf| Arc::from(certificate_names(leaf)));
                                let _ = tx.send(Ok(Connection::Tls(Box::new(stream), peer))).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%remote, %error, "tls handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "tls handshake timed out");
                            }
                        }
                    });
                }
            }
        }
    });
    (ReceiverStream::new(rx), task)
}
