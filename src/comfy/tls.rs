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
#[derive(Debug, Default)]
struct PlatformRoots {
    /// The verifier over the platform's roots, made once.
    verifier: OnceLock<Verifier>,
    /// Held while the roots are read, so that they are read once.
    reading: Mutex<()>,
}

impl PlatformRoots {
    /// The verifier, made (the roots read) by the first caller; the others wait for it. When
    /// none can be made (no root certificate found) the error is the caller's, and the next
    /// caller reads the roots again: a root file provided later is found without a restart.
    fn verifier(&self, provider: &Arc<CryptoProvider>) -> Result<&Verifier, rustls::Error> {
        if let Some(verifier) = self.verifier.get() {
            return Ok(verifier);
        }
        let _reading = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(verifier) = self.verifier.get() {
            return Ok(verifier);
        }
        let verifier = Verifier::new(Arc::clone(provider))?;
        Ok(self.verifier.get_or_init(|| verifier))
    }
}

/// Which certificate chains a backend connection accepts.
#[derive(Debug)]
enum Chains {
    /// Those the platform's roots vouch for, for the server's name (`verify_ssl = true`).
    Platform(PlatformRoots),
    /// Any (`verify_ssl = false`).
    Any,
}

/// The certificate check of a backend connection: the chain as `chains` says; the handshake's
/// signatures, and the schemes the client hello offers, from the crypto provider in both cases
/// (as the platform verifier's own are on Linux: the hello, sent before any certificate is seen,
/// reads nothing from disk).
#[derive(Debug)]
struct BackendCertificates {
    /// The provider whose algorithms check signatures.
    provider: Arc<CryptoProvider>,
    /// Which chains are accepted.
    chains: Chains,
}

impl BackendCertificates {
    /// Whether the platform's roots have been read (never, for `Chains::Any`).
    #[cfg(test)]
    fn loaded(&self) -> bool {
        matches!(&self.chains, Chains::Platform(roots) if roots.verifier.get().is_some())
    }
}

impl ServerCertVerifier for BackendCertificates {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.chains {
            Chains::Platform(roots) => roots.verifier(&self.provider)?.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            Chains::Any => Ok(ServerCertVerified::assertion()),
        }
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

/// The process's one verifier over the platform's roots.
fn platform_roots() -> &'static Arc<BackendCertificates> {
    static ROOTS: OnceLock<Arc<BackendCertificates>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        Arc::new(BackendCertificates {
            provider: provider(),
            chains: Chains::Platform(PlatformRoots::default()),
        })
    })
}

/// Reads the platform's roots on a thread of its own, once per process, so that the first
/// handshake with an `https` backend finds them read instead of reading them on the runtime's
/// thread. Called when a client for a verified `https` backend is made; a thread that cannot be
/// started leaves the reading to that first handshake.
pub fn preload_platform_roots() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let certificates = Arc::clone(platform_roots());
        let _ = std::thread::Builder::new()
            .name("tls-roots".into())
            .spawn(move || {
                if let Chains::Platform(roots) = &certificates.chains
                    && let Err(error) = roots.verifier(&certificates.provider)
                {
                    tracing::warn!(%error, "no root certificate to verify https backends with");
                }
            });
    });
}

/// A client configuration whose certificate check is `verifier`; no ALPN (set it for HTTP).
fn client_config(
    verifier: Arc<BackendCertificates>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&verifier.provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// A client configuration that verifies the server's certificate against the platform's roots,
/// read on first use and shared by every client of the process; no ALPN (set it for HTTP).
pub fn verified_client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    client_config(Arc::clone(platform_roots()))
}

/// A client configuration that does not verify the server's certificate.
pub fn unverified_client_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    client_config(Arc::new(BackendCertificates {
        provider: provider(),
        chains: Chains::Any,
    }))
    .map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_certificate_is_accepted_and_schemes_come_from_the_provider() {
        let verifier = BackendCertificates {
            provider: provider(),
            chains: Chains::Any,
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
        let roots = BackendCertificates {
            provider: provider(),
            chains: Chains::Platform(PlatformRoots::default()),
        };
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
