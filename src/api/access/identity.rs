//! Who is calling: the principals of `[auth]`, found from an API key (SHA-256 of the presented
//! key compared in constant time with every configured hash) or from the names of the client
//! certificate the connection presented. Also the peer of a connection, as every listener
//! (plaintext or TLS) describes it to tonic. Nothing here logs, and no error carries a key.

use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::digest;
use http::HeaderMap;
use subtle::ConstantTimeEq as _;

use crate::config::{AuthConfig, AuthMode, Config, PrincipalLimits, Role, parse_sha256_hex};

/// The name of the principal every caller is when `auth.mode = "none"`.
pub const ANONYMOUS: &str = "anonymous";

/// Header carrying an API key, as an alternative to `authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Longest API key accepted; longer ones are refused without being hashed.
const MAX_KEY_LEN: usize = 512;

/// What one connection's peer is: its address and, over mTLS, the names its verified client
/// certificate carries. tonic puts it in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The remote address.
    pub remote: Option<SocketAddr>,
    /// The client certificate's CN and DNS/URI subject alternative names; `None` without a
    /// client certificate.
    pub cert_names: Option<Arc<[String]>>,
}

/// An authenticated caller, in request extensions as `Arc<Principal>` for the handlers.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its configured name (`anonymous` without authentication); shared with the
    /// [`Ownership`](crate::model::Ownership) of its work and its audit events.
    pub name: Arc<str>,
    /// Its tenant: whose work it sees.
    pub tenant: Arc<str>,
    /// What it may do.
    pub role: Role,
    /// Whether it proved who it is (false only for the anonymous principal of
    /// `auth.mode = "none"`).
    pub authenticated: bool,
    /// Its limits; `None` for the anonymous principal of `auth.mode = "none"`, which is not
    /// limited per principal.
    pub limits: Option<PrincipalLimits>,
}

impl Principal {
    /// Whether it sees and may act on every tenant's work.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Why no principal was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No API key and no client certificate.
    Missing,
    /// A header that is not a usable key (not visible ASCII, empty, too long).
    Malformed,
    /// A key that is no principal's.
    UnknownKey,
    /// A verified client certificate whose names are no principal's.
    UnknownCertificate,
    /// Forwarded certificate names whose signature did not verify (forged, or more than a
    /// minute old; see `forwarded.rs`).
    UnverifiedForward,
}

impl AuthFailure {
    /// Machine-readable cause, sent in `ErrorInfo.metadata["cause"]`.
    pub fn cause(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::Malformed => "malformed_credentials",
            Self::UnknownKey => "invalid_api_key",
            Self::UnknownCertificate => "unknown_certificate",
            Self::UnverifiedForward => "unverified_forwarded_identity",
        }
    }
}

/// The hex SHA-256 of a key's UTF-8 text: what `api_key_sha256` holds.
pub fn key_sha256_hex(key: &str) -> String {
    digest::digest(&digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh API key: `cr_` and 43 characters of base64url, 256 random bits.
pub fn new_key() -> Result<String, aws_lc_rs::error::Unspecified> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)?;
    Ok(format!(
        "cr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Finds principals from credentials.
#[derive(Debug)]
pub struct Authenticator {
    /// `auth.mode`.
    mode: AuthMode,
    /// Every principal, in configuration order.
    principals: Vec<Arc<Principal>>,
    /// Each key hash with the index of its principal.
    keys: Vec<([u8; 32], usize)>,
    /// Each certificate name with the index of its principal.
    cert_names: Vec<(String, usize)>,
    /// The caller of `auth.mode = "none"`.
    anonymous: Arc<Principal>,
}

impl Authenticator {
    /// The principals of a validated configuration.
    pub fn new(config: &Config) -> Self {
        let AuthConfig {
            mode, principals, ..
        } = &config.auth;
        let mut keys = Vec::new();
        let mut cert_names = Vec::new();
        let mut all = Vec::new();
        for (i, p) in principals.iter().enumerate() {
            all.push(Arc::new(Principal {
                name: p.name.as_str().into(),
                tenant: p.tenant().into(),
                role: p.role,
                authenticated: true,
                limits: Some(config.limits.with(&p.limits)),
            }));
            keys.extend(
                p.api_key_sha256
                    .iter()
                    .filter_map(|h| parse_sha256_hex(h.expose()))
                    .map(|h| (h, i)),
            );
            cert_names.extend(p.cert_names.iter().map(|n| (n.clone(), i)));
        }
        Self {
            mode: *mode,
            principals: all,
            keys,
            cert_names,
            anonymous: Arc::new(Principal {
                name: ANONYMOUS.into(),
                tenant: ANONYMOUS.into(),
                role: Role::Admin,
                authenticated: false,
                limits: None,
            }),
        }
    }

    /// Every configured principal.
    pub fn principals(&self) -> &[Arc<Principal>] {
        &self.principals
    }

    /// The caller of a request with these headers, on a connection with this peer.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Arc<Principal>, AuthFailure> {
        if self.mode == AuthMode::None {
            return Ok(self.anonymous.clone());
        }
        if self.mode.accepts_api_keys() {
            match presented_key(headers) {
                Some(Ok(key)) => return self.by_key(key),
                Some(Err(failure)) => return Err(failure),
                None => {}
            }
        }
        if self.mode.accepts_certificates()
            && let Some(names) = peer.and_then(|p| p.cert_names.as_deref())
        {
            return self.by_certificate(names);
        }
        Err(AuthFailure::Missing)
    }

    fn by_key(&self, key: &str) -> Result<Arc<Principal>, AuthFailure> {
        let presented = digest::digest(&digest::SHA256, key.as_bytes());
        let presented = presented.as_ref();
        // Every hash is compared, whatever matched, in constant time each.
        let mut found = None;
        for (hash, index) in &self.keys {
            if bool::from(hash.as_slice().ct_eq(presented)) {
                found = Some(*index);
            }
        }
        found
            .and_then(|i| self.principals.get(i).cloned())
            .ok_or(AuthFailure::UnknownKey)
    }

    fn by_certificate(&self, names: &[String]) -> Result<Arc<Principal>, AuthFailure> {
        names
            .iter()
            .find_map(|name| {
                self.cert_names
                    .iter()
                    .find(|(known, _)| known == name)
                    .map(|(_, i)| *i)
            })
            .and_then(|i| self.principals.get(i).cloned())
            .ok_or(AuthFailure::UnknownCertificate)
    }
}

/// The API key of `authorization: Bearer <key>` or `x-api-key: <key>`; `None` when neither is
/// sent (an `authorization` header of another scheme counts as none).
fn presented_key(headers: &HeaderMap) -> Option<Result<&str, AuthFailure>> {
    let bearer = headers.get(http::header::AUTHORIZATION).and_then(|value| {
        let Ok(text) = value.to_str() else {
            return Some(Err(AuthFailure::Malformed));
        };
        let (scheme, rest) = text.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| Ok(rest.trim()))
    });
    let key = bearer.or_else(|| {
        headers.get(API_KEY_HEADER).map(|value| {
            value
                .to_str()
                .map(str::trim)
                .map_err(|_| AuthFailure::Malformed)
        })
    })?;
    Some(key.and_then(|key| {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            Err(AuthFailure::Malformed)
        } else {
            Ok(key)
        }
    }))
}

/// The CN(s) and DNS/URI subject alternative names of a DER certificate; empty when it does
/// not parse (a verified certificate always does).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                GeneralName::URI(uri) => names.push((*uri).to_owned()),
                _ => {}
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::config::{LimitsOverride, PrincipalConfig, Secret};

    fn config(mode: AuthMode) -> Config {
        let mut c = Config::default();
        c.auth.mode = mode;
        c.auth.principals = vec![
            PrincipalConfig {
                name: "alice".into(),
                tenant: Some("studio-a".into()),
                role: Role::Submitter,
                api_key_sha256: vec![
                    Secret::new(key_sha256_hex("old-key")),
                    Secret::new(key_sha256_hex("new-key")),
                ],
                cert_names: vec!["alice.internal".into()],
                limits: LimitsOverride::default(),
            },
            PrincipalConfig {
                name: "bob".into(),
                tenant: None,
                role: Role::Viewer,
                api_key_sha256: vec![Secret::new(key_sha256_hex("bob-key"))],
                cert_names: vec![],
                limits: LimitsOverride::default(),
            },
        ];
        c
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn keys_find_their_principal_and_rotation_works() {
        let auth = Authenticator::new(&config(AuthMode::ApiKey));
        for key in ["old-key", "new-key"] {
            let p = auth
                .authenticate(
                    &headers(&[("authorization", &format!("Bearer {key}"))]),
                    None,
                )
                .unwrap();
            assert_eq!((&*p.name, &*p.tenant), ("alice", "studio-a"));
        }
        let bob = auth
            .authenticate(&headers(&[("x-api-key", "bob-key")]), None)
            .unwrap();
        assert_eq!(
            (&*bob.name, &*bob.tenant, bob.role),
            ("bob", "bob", Role::Viewer)
        );
        let lower = auth
            .authenticate(&headers(&[("authorization", "bearer bob-key")]), None)
            .unwrap();
        assert_eq!(&*lower.name, "bob");

        for (h, failure) in [
            (headers(&[]), AuthFailure::Missing),
            (
                headers(&[("authorization", "Basic Ym9iOmJvYg==")]),
                AuthFailure::Missing,
            ),
            (
                headers(&[("authorization", "Bearer wrong")]),
                AuthFailure::UnknownKey,
            ),
            (headers(&[("x-api-key", "")]), AuthFailure::Malformed),
            (
                headers(&[("x-api-key", &"k".repeat(600))]),
                AuthFailure::Malformed,
            ),
        ] {
            assert_eq!(auth.authenticate(&h, None).unwrap_err(), failure);
        }
        // A certificate is not accepted in api_key mode.
        let peer = PeerInfo {
            remote: None,
            cert_names: Some(Arc::from(vec!["alice.internal".to_owned()])),
        };
        assert_eq!(
            auth.authenticate(&headers(&[]), Some(&peer)).unwrap_err(),
            AuthFailure::Missing
        );
    }

    #[test]
    fn certificates_find_their_principal() {
        let auth = Authenticator::new(&config(AuthMode::ApiKeyOrMtls));
        let peer = |names: &[&str]| PeerInfo {
            remote: None,
            cert_names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
        };
        let alice = auth
            .authenticate(&headers(&[]), Some(&peer(&["x", "alice.internal"])))
            .unwrap();
        assert_eq!(&*alice.name, "alice");
        assert_eq!(
            auth.authenticate(&headers(&[]), Some(&peer(&["mallory"])))
                .unwrap_err(),
            AuthFailure::UnknownCertificate
        );
        // A key, when sent, decides: a wrong one is refused even with a good certificate.
        assert_eq!(
            auth.authenticate(
                &headers(&[("x-api-key", "wrong")]),
                Some(&peer(&["alice.internal"]))
            )
            .unwrap_err(),
            AuthFailure::UnknownKey
        );
    }

    #[test]
    fn none_mode_is_the_anonymous_admin_and_keys_are_fresh() {
        let auth = Authenticator::new(&Config::default());
        let p = auth.authenticate(&headers(&[]), None).unwrap();
        assert_eq!((&*p.name, p.role, p.limits), (ANONYMOUS, Role::Admin, None));
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 46);
        assert_eq!(
            key_sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
