//! `[tls]`: the server's certificate and key, and the CA whose client certificates are accepted
//! (mTLS), as PEM file paths, plus a plaintext listener for health probes only. Relative paths are
//! taken relative to the configuration file's directory (see `loading.rs`). Only settings live
//! here; the files are read by `server/tls` (at start and on SIGHUP).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[tls]`: TLS for the gRPC listener. Absent (no `cert_file`): plaintext.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server. Bound: given together with `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when given, every client must present a certificate signed by one.
    /// Bound: needs `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// A plaintext listener that serves only `grpc.health.v1.Health`, for probes that speak
    /// neither TLS nor keys. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<SocketAddr>,
}

impl TlsConfig {
    /// Whether the gRPC listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}
