//! TLS for a backend's HTTPS routes and its WebSocket (`wss`), one choice for both:
//!
//! - `verify_ssl = true`: the platform's root certificates (what reqwest's rustls backend reads,
//!   through `rustls-platform-verifier`: the system's bundle and directory, or `SSL_CERT_FILE` /
//!   `SSL_CERT_DIR` when set), read once per process and only when a handshake first needs them
//!   ([`verified_client_config`]). Building a client reads nothing: a runtime whose backends are
//!   plain `http` never reads them, and one with many `https` backends reads them once (each
//!   reqwest client had read and parsed the whole store itself, about 12 ms of the start for every
//!   backend on the benchmark machine, before readiness).
//! - `verify_ssl = false`: a configuration that accepts any server certificate, the same choice
//!   reqwest's `danger_accept_invalid_certs` makes for the HTTP routes
//!   ([`unverified_client_config`]). Signatures are still checked with the crypto provider; only
//!   the certificate chain and name are not.
//!
//! Without any root certificate on the host the runtime still starts: an `https` backend is DOWN
//! with "No CA certificates were loaded from the system", and its next probe reads them again.

use std::sync::{Arc, Mutex, Once, OnceLock, PoisonError};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls_platform_verifier::Verifier;

/// The crypto provider of every backend connection (the one reqwest's and tonic's rustls use).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The platform's root certificates, behind a verifier made on first use: reading and parsing
/// them costs milliseconds, and a process whose backends are all plain `http` never needs them.
#[derive(Debug)]
struct PlatformRoots {
    /// The provider whose algorithms check handshake signatures.
    provider: Arc<CryptoProvider>,
    /// The verifier over the platform's roots, made once.
    verifier: OnceLock<Verifier>,
    /// Held while the roots are read, so that they are read once.
    reading: Mutex<()>,
}

impl PlatformRoots {
    fn new(provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            verifier: OnceLock::new(),
            reading: Mutex::new(()),
        }
    }

    /// The verifier, made (the roots read) by the first caller; the others wait for it. When
    /// none can be made (no root certificate found) the error is the caller's, and the next
    /// caller reads the roots again: a root file provided later is found without a restart.
    fn verifier(&self) -> Result<&Verifier, rustls::Error> {
        if let Some(verifier) = self.verifier.get() {
            return Ok(verifier);
        }
        let _reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(verifier) = self.verifier.get() {
            return Ok(verifier);
        }
        let verifier = Verifier::new(Arc::clone(&self.provider))?;
        Ok(self.verifier.get_or_init(|| verifier))
    }

    /// Whether the roots have been read.
    #[cfg(test)]
    fn loaded(&self) -> bool {
        self.verifier.get().is_some()
    }
}

impl ServerCertVerifier for PlatformRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    // The signatures and the schemes offered come from the provider, as the platform
    // verifier's own do on Linux: the client hello, sent before any certificate is seen, reads
    // nothing from disk.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The process's one [`PlatformRoots`].
fn platform_roots() -> &'static Arc<PlatformRoots> {
    static ROOTS: OnceLock<Arc<PlatformRoots>> = OnceLock::new();
    ROOTS.get_or_init(|| Arc::new(PlatformRoots::new(provider())))
}

/// Reads the platform's roots on a thread of its own, once per process, so that the first
/// handshake with an `https` backend finds them read instead of reading them on the runtime's
/// thread. Called when a client for a verified `https` backend is made; a thread that cannot be
/// started leaves the reading to that first handshake.
pub fn preload_platform_roots() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let roots = Arc::clone(platform_roots());
        let _ = std::thread::Builder::new()
            .name("tls-roots".into())
            .spawn(move || {
                if let Err(error) = roots.verifier() {
                    tracing::warn!(%error, "no root certificate to verify https backends with");
                }
            });
    });
}

/// A client configuration that verifies the server's certificate against the platform's roots,
/// read on first use and shared by every client of the process; no ALPN (set it for HTTP).
pub fn verified_client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let roots: Arc<dyn ServerCertVerifier> = Arc::clone(platform_roots()) as _;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(roots)
        .with_no_client_auth())
}

/// Accepts every certificate chain; verifies handshake signatures.
#[derive(Debug)]
struct AcceptAnyCertificate {
    /// The provider whose algorithms check signatures.
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that does not verify the server's certificate.
pub fn unverified_client_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_certificate_is_accepted_and_schemes_come_from_the_provider() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = AcceptAnyCertificate {
            provider: Arc::clone(&provider),
        };
        let garbage = CertificateDer::from(vec![0u8; 16]);
        let name = ServerName::try_from("comfy.invalid").expect("valid dns name");
        assert!(
            verifier
                .verify_server_cert(&garbage, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert!(!verifier.supported_verify_schemes().is_empty());
        assert!(unverified_client_config().is_ok());
    }

    #[test]
    fn the_platform_roots_are_read_by_the_first_verification_only() {
        let roots = PlatformRoots::new(provider());
        // Making a configuration and offering schemes (the client hello) read nothing.
        assert!(!roots.supported_verify_schemes().is_empty());
        assert!(!roots.loaded());
        // A self-signed certificate no root vouches for is refused, whether or not this machine
        // has root certificates at all (then the error says none were found).
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["comfy.invalid".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("a certificate");
        let name = ServerName::try_from("comfy.invalid").expect("valid dns name");
        let refused = roots.verify_server_cert(cert.der(), &[], &name, &[], UnixTime::now());
        match refused {
            // Roots read: refused as signed by nobody they hold, and kept for the next.
            Err(rustls::Error::InvalidCertificate(_)) => assert!(roots.loaded()),
            // No root certificate on this machine: tried again next time.
            Err(rustls::Error::General(_)) => assert!(!roots.loaded()),
            other => panic!("{other:?}"),
        }
    }
}
