//! A caller's client-certificate identity, carried from a forwarding replica to
//! the lease holder (`runtime.queue_type = "redis"`). The replica verified the
//! caller's certificate in its own TLS handshake; the holder sees only the
//! replica's connection. So the replica names the certificate's names in a
//! header and signs them (HMAC-SHA256, with a secret every runtime of the key
//! prefix reads from Redis, `Runtime::forward_secret`), bound to the method and to the time; the holder
//! takes the names only when the signature verifies and is under a minute old,
//! and refuses the call otherwise. A replica signs only over https, and removes
//! any such headers a caller sent. API keys need none of this: they pass
//! through unchanged.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue};

/// The caller's certificate names, as base64url of a JSON array.
pub const CERT_HEADER: &str = "x-comfy-reality-forwarded-cert";
/// `<unix milliseconds>.<hex HMAC>` of the method, the time and the names.
pub const SIGNATURE_HEADER: &str = "x-comfy-reality-forwarded-signature";

/// How far a signature's time may be from the holder's clock.
const MAX_SKEW_MS: u128 = 60_000;

/// Why forwarded names were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unverified;

/// The key replicas sign with and the holder verifies with.
#[derive(Clone)]
pub struct ForwardKey(hmac::Key);

impl std::fmt::Debug for ForwardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardKey(..)")
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

fn message(path: &str, at: u128, names: &str) -> Vec<u8> {
    format!("{path}\0{at}\0{names}").into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Removes forwarded-identity headers (a replica does it to every call it forwards).
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(CERT_HEADER);
    headers.remove(SIGNATURE_HEADER);
}

impl ForwardKey {
    /// The key of a stored secret.
    pub fn from_secret(secret: &str) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    /// Adds headers naming `names` for a call of `path`, signed now.
    pub fn sign(&self, headers: &mut HeaderMap, path: &str, names: &[String]) {
        let Ok(json) = serde_json::to_vec(names) else {
            return;
        };
        let encoded = URL_SAFE_NO_PAD.encode(json);
        let at = now_ms();
        let tag = hmac::sign(&self.0, &message(path, at, &encoded));
        if let (Ok(cert), Ok(signature)) = (
            HeaderValue::from_str(&encoded),
            HeaderValue::from_str(&format!("{at}.{}", hex(tag.as_ref()))),
        ) {
            headers.insert(CERT_HEADER, cert);
            headers.insert(SIGNATURE_HEADER, signature);
        }
    }

    /// The names a call of `path` carries: `None` without the headers, an error when they are
    /// there but do not verify (a wrong or old signature, a bad encoding).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        path: &str,
    ) -> Option<Result<Vec<String>, Unverified>> {
        let cert = headers.get(CERT_HEADER);
        let signature = headers.get(SIGNATURE_HEADER);
        if cert.is_none() && signature.is_none() {
            return None;
        }
        Some(self.verified(cert, signature, path).ok_or(Unverified))
    }

    fn verified(
        &self,
        cert: Option<&HeaderValue>,
        signature: Option<&HeaderValue>,
        path: &str,
    ) -> Option<Vec<String>> {
        let encoded = cert?.to_str().ok()?;
        let (at, tag) = signature?.to_str().ok()?.split_once('.')?;
        let at: u128 = at.parse().ok()?;
        if now_ms().abs_diff(at) > MAX_SKEW_MS {
            return None;
        }
        hmac::verify(&self.0, &message(path, at, encoded), &unhex(tag)?).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(encoded).ok()?).ok()
    }
}

/// Verification of forwarded identities at the holder, when its store keeps a secret.
pub(super) fn check(
    key: Option<&ForwardKey>,
    headers: &HeaderMap,
    path: &str,
) -> Option<Result<Vec<String>, Unverified>> {
    match key {
        Some(key) => key.verify(headers, path),
        // Not on Redis (or no secret): nobody may claim to forward.
        None => (headers.contains_key(CERT_HEADER) || headers.contains_key(SIGNATURE_HEADER))
            .then_some(Err(Unverified)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_names_verify_for_their_method_only_and_forgeries_do_not() {
        let key = ForwardKey::from_secret("s3cret");
        let names = vec!["alice.internal".to_owned(), "Alice".to_owned()];
        let mut headers = HeaderMap::new();
        key.sign(&mut headers, "/pkg.Svc/Method", &names);
        assert_eq!(key.verify(&headers, "/pkg.Svc/Method"), Some(Ok(names)));
        assert_eq!(
            key.verify(&headers, "/pkg.Svc/Other"),
            Some(Err(Unverified))
        );
        let other = ForwardKey::from_secret("another");
        assert_eq!(
            other.verify(&headers, "/pkg.Svc/Method"),
            Some(Err(Unverified))
        );
        let mut forged = headers.clone();
        forged.insert(
            CERT_HEADER,
            HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(br#"["admin.internal"]"#)).unwrap(),
        );
        assert_eq!(
            key.verify(&forged, "/pkg.Svc/Method"),
            Some(Err(Unverified))
        );
        assert_eq!(key.verify(&HeaderMap::new(), "/pkg.Svc/Method"), None);
        assert_eq!(
            check(None, &headers, "/pkg.Svc/Method"),
            Some(Err(Unverified))
        );
        strip(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn an_old_signature_is_refused() {
        let key = ForwardKey::from_secret("s3cret");
        let at = now_ms() - MAX_SKEW_MS - 1_000;
        let encoded = URL_SAFE_NO_PAD.encode(br#"["alice.internal"]"#);
        let tag = hmac::sign(&key.0, &message("/m", at, &encoded));
        let mut headers = HeaderMap::new();
        headers.insert(CERT_HEADER, HeaderValue::from_str(&encoded).unwrap());
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&format!("{at}.{}", hex(tag.as_ref()))).unwrap(),
        );
        assert_eq!(key.verify(&headers, "/m"), Some(Err(Unverified)));
    }
}
