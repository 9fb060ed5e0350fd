//! The HTTP client of one ComfyUI backend: typed calls for every route the runtime needs,
//! capability detection, retries for idempotent calls, and safe file downloads.
//!
//! Rules this module keeps:
//! - One `reqwest::Client` per backend (and, for the `POST /prompt` of a plain-http backend,
//!   one hyper client: see `direct`); credentials (`api_key` as `Authorization: Bearer`,
//!   `auth_header` as a raw `Authorization`) live only in its default headers (and the hyper
//!   client's request), marked sensitive, and never in a log line, an error or `Debug` output.
//!   Its TLS is `comfy::tls`'s (the process's platform roots, read once and only when needed),
//!   as the WebSocket's is.
//! - Only idempotent calls are retried (GETs, queue delete, targeted interrupt, free), with
//!   exponential backoff and jitter, `max_retries` times. `POST /prompt` is never retried
//!   blindly: after an ambiguous failure the client looks the (client-chosen) prompt id up in
//!   `/queue` and `/history` first, and only resubmits when the server has never seen it.
//! - A bare `POST /interrupt` interrupts whatever runs, including other users' prompts, so it is
//!   never sent: on servers without targeted interrupt, [`ComfyClient::interrupt`] is an error.
//! - `GET /view` arguments are checked before anything is sent, and files stream through
//!   without being buffered whole.
//!
//! It knows nothing of the WebSocket (see `ws`), of scheduling or of the store.
//!
//! The client is split by what the calls are about: `error` (the error
//! type), `request` (sending, retries, limits), `server_info` (capabilities
//! and the server's catalogue), `submit` (`POST /prompt`), `direct` (that
//! `POST` through hyper without reqwest, on a plain-http backend), `queue` (queue,
//! history, jobs, interrupt), `files` (`/view`, uploads) and `checks` (the
//! argument checks).

mod checks;
mod direct;
mod error;
mod files;
mod queue;
mod request;
mod server_info;
mod submit;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use url::Url;

use crate::comfy::capabilities::Capabilities;
use crate::comfy::tls;
use crate::config::ServerConfig;

pub use error::ComfyError;
pub use queue::PromptLocation;
pub use submit::{PromptJson, PromptText};

use request::error_chain;

/// The HTTP client of one ComfyUI backend. Cheap to clone; clones share the connection pool and
/// the detected capabilities.
#[derive(Clone)]
pub struct ComfyClient {
    inner: Arc<Inner>,
}

/// What the clones of a [`ComfyClient`] share.
struct Inner {
    /// The one HTTP client of this backend; carries the credential as a default header.
    http: reqwest::Client,
    /// Base URL, always ending in `/`, without query or fragment.
    base: Url,
    /// `base` with any password replaced, for messages and logs.
    display: String,
    /// Total time allowed for one non-streaming request.
    timeout: Duration,
    /// Retries of an idempotent request after the first attempt.
    max_retries: u32,
    /// The `Authorization` value (sensitive) from `auth_header` or `api_key`.
    authorization: Option<HeaderValue>,
    /// The `Authorization` value for the WebSocket handshake: `authorization`, or Basic
    /// credentials from the URL's user info, which the WebSocket URL never carries. (reqwest,
    /// for HTTP, sends the URL's credentials when there are both.)
    ws_authorization: Option<HeaderValue>,
    /// Whether TLS certificates are checked.
    verify_ssl: bool,
    /// Capabilities from the last detection; `None` until the first one.
    capabilities: RwLock<Option<Capabilities>>,
    /// `POST /prompt` through hyper directly, where reqwest would send it the same way (a
    /// plain-http backend, no proxy); `None` sends it with `http`.
    direct: Option<direct::DirectPost>,
}

impl fmt::Debug for ComfyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComfyClient")
            .field("url", &self.inner.display)
            .field("timeout", &self.inner.timeout)
            .field("max_retries", &self.inner.max_retries)
            .field("verify_ssl", &self.inner.verify_ssl)
            .field(
                "authorization",
                &self
                    .inner
                    .authorization
                    .as_ref()
                    .map(|_| crate::config::REDACTED),
            )
            .field("capabilities", &self.cached_capabilities())
            .finish()
    }
}

/// `url` with any password replaced by `REDACTED`.
fn redact(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        // Cannot fail: a URL that has a password can have one.
        let _ = url.set_password(Some("REDACTED"));
    }
    url.into()
}

impl ComfyClient {
    /// A client for `config`'s server. Fails on a URL that is not http(s) or a credential that
    /// cannot be a header value; the error never shows the credential.
    pub fn new(config: &ServerConfig) -> Result<Self, ComfyError> {
        let mut base = Url::parse(&config.url).map_err(|e| {
            ComfyError::Config(format!("server url: {}", e.to_string().to_lowercase()))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none_or(str::is_empty) {
            return Err(ComfyError::Config(
                "server url must be an http or https url with a host".into(),
            ));
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }

        // `auth_header` is the whole header value and wins over `api_key`.
        let authorization = match (&config.auth_header, &config.api_key) {
            (Some(header), _) => Some(("auth_header", header.expose().to_owned())),
            (None, Some(key)) => Some(("api_key", format!("Bearer {}", key.expose()))),
            (None, None) => None,
        };
        let authorization = authorization
            .map(|(field, value)| {
                HeaderValue::from_str(&value)
                    .map(|mut value| {
                        value.set_sensitive(true);
                        value
                    })
                    .map_err(|_| {
                        ComfyError::Config(format!(
                            "{field} cannot be sent as an http header value (the value is a secret and is not shown)"
                        ))
                    })
            })
            .transpose()?;

        let url_credentials =
            (!base.username().is_empty() || base.password().is_some()).then(|| {
                format!(
                    "{}:{}",
                    percent_decode(base.username()),
                    percent_decode(base.password().unwrap_or(""))
                )
            });
        let url_basic = url_credentials
            .map(|credentials| {
                HeaderValue::from_str(&format!("Basic {}", base64(credentials.as_bytes())))
                    .map(|mut value| {
                        value.set_sensitive(true);
                        value
                    })
                    .map_err(|_| {
                        ComfyError::Config(
                            "the url's credentials cannot be sent as an http header".into(),
                        )
                    })
            })
            .transpose()?;
        let ws_authorization = authorization.clone().or_else(|| url_basic.clone());
        // What reqwest sends over HTTP: the URL's credentials on the request win over the
        // default header (which only fills a header the request does not have).
        let http_authorization = url_basic.or_else(|| authorization.clone());

        let timeout = config.timeout();
        if timeout.is_zero() {
            return Err(ComfyError::Config("timeout must be greater than 0".into()));
        }
        let mut headers = HeaderMap::new();
        if let Some(value) = &authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        let mut http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(timeout)
            .pool_idle_timeout(request::POOL_IDLE)
            // Streams (`view`) have no total timeout, but a stalled one times out.
            .read_timeout(timeout);
        if config.verify_ssl {
            // The platform's roots, read once per process when a handshake first needs them
            // (see `comfy::tls`), not by every client as it is built; HTTP/1.1 as reqwest offers
            // it (built without its `http2` feature: offer `h2` too if that ever changes).
            let mut tls = tls::verified_client_config()
                .map_err(|e| ComfyError::Config(format!("tls configuration: {e}")))?;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            http = http.tls_backend_preconfigured(tls);
            if base.scheme() == "https" {
                tls::preload_platform_roots();
            }
        } else {
            http = http.danger_accept_invalid_certs(true);
        }
        let http = http
            .build()
            .map_err(|e| ComfyError::Config(format!("http client: {}", error_chain(&e))))?;

        let direct = direct::DirectPost::for_base(&base, http_authorization, timeout);
        Ok(Self {
            inner: Arc::new(Inner {
                direct,
                http,
                display: redact(&base),
                base,
                timeout,
                max_retries: config.max_retries,
                authorization,
                ws_authorization,
                verify_ssl: config.verify_ssl,
                capabilities: RwLock::new(None),
            }),
        })
    }

    /// The server's base URL, with any password redacted (for logs and messages).
    pub fn server(&self) -> &str {
        &self.inner.display
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether TLS certificates are verified.
    pub fn verify_ssl(&self) -> bool {
        self.inner.verify_ssl
    }

    /// The WebSocket URL for `client_id`: `ws[s]://<base>/ws?clientId=<client_id>`, without
    /// the base URL's credentials (they go in a header; see `ws_authorization`).
    pub fn ws_url(&self, client_id: &str) -> Url {
        let mut url = self.inner.base.clone();
        // Cannot fail on an http(s) URL with a host (checked in `new`).
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        // Cannot fail: http(s) and ws(s) are both special schemes.
        let _ = url.set_scheme(scheme);
        url.set_path(&format!("{}ws", url.path()));
        url.query_pairs_mut().append_pair("clientId", client_id);
        url
    }

    /// The `Authorization` value (marked sensitive) for the WebSocket handshake.
    pub(crate) fn ws_authorization(&self) -> Option<&HeaderValue> {
        self.inner.ws_authorization.as_ref()
    }
}

/// Decodes `%XX` escapes of a URL's user info; invalid escapes stay as they are.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Standard base64 with padding (for a Basic credential).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn new_checks_the_url_and_redacts_credentials() {
        let client =
            ComfyClient::new(&ServerConfig::with_url("http://u:s3cr3t@h:8188/comfy")).unwrap();
        assert_eq!(client.server(), "http://u:REDACTED@h:8188/comfy/");
        assert_eq!(
            client.ws_url("c 1").as_str(),
            "ws://h:8188/comfy/ws?clientId=c+1"
        );
        let basic = client.ws_authorization().unwrap();
        assert!(basic.is_sensitive());
        assert_eq!(
            basic.to_str().unwrap(),
            format!("Basic {}", base64(b"u:s3cr3t"))
        );
        assert!(!format!("{client:?}").contains("s3cr3t"));
        // The direct POST carries what reqwest would send: the URL's credentials as Basic.
        let proxied = direct::PROXY_VARIABLES
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        assert_eq!(client.inner.direct.is_some(), !proxied);
        if let Some(direct) = &client.inner.direct {
            assert_eq!(direct.authorization.as_ref(), Some(basic));
        }
        let tls = ComfyClient::new(&ServerConfig::with_url("https://h")).unwrap();
        assert!(tls.inner.direct.is_none(), "https keeps reqwest");
        assert_eq!(tls.ws_url("x").as_str(), "wss://h/ws?clientId=x");
        assert_eq!(
            tls.endpoint(&["history", "a/b"]).unwrap().as_str(),
            "https://h/history/a%2Fb"
        );
        for bad in ["ftp://h", "not a url", "unix:/x"] {
            assert!(
                matches!(
                    ComfyClient::new(&ServerConfig::with_url(bad)),
                    Err(ComfyError::Config(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_become_a_sensitive_header_and_never_print() {
        let mut config = ServerConfig::with_url("http://h:1");
        config.api_key = Some(Secret::new("s3cr3t"));
        let client = ComfyClient::new(&config).unwrap();
        let value = client.ws_authorization().unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cr3t");
        assert!(value.is_sensitive());
        let printed = format!("{client:?}");
        assert!(
            !printed.contains("s3cr3t") && printed.contains("REDACTED"),
            "{printed}"
        );

        config.auth_header = Some(Secret::new("Basic abc"));
        let client = ComfyClient::new(&config).unwrap();
        assert_eq!(
            client.ws_authorization().unwrap().to_str().unwrap(),
            "Basic abc"
        );

        config.auth_header = Some(Secret::new("bad\nvalue s3cr3t"));
        let error = ComfyClient::new(&config).unwrap_err();
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
        assert!(error.to_string().contains("auth_header"), "{error}");
    }

    #[test]
    fn the_prompt_post_sends_the_credential_reqwest_would() {
        // Both the URL's credentials and a key: reqwest puts the URL's on the request, and its
        // default header (the key) only fills a header the request lacks.
        let mut config = ServerConfig::with_url("http://u:p@h:1");
        config.api_key = Some(Secret::new("s3cr3t"));
        let client = ComfyClient::new(&config).unwrap();
        let basic = format!("Basic {}", base64(b"u:p"));
        if let Some(direct) = &client.inner.direct {
            let sent = direct.authorization.as_ref().unwrap();
            assert_eq!(sent.to_str().unwrap(), basic);
            assert!(sent.is_sensitive());
        }
        // The WebSocket handshake keeps the key first.
        let ws = client.ws_authorization().unwrap();
        assert_eq!(ws.to_str().unwrap(), "Bearer s3cr3t");
        // The key alone.
        let client = ComfyClient::new(&ServerConfig {
            api_key: Some(Secret::new("s3cr3t")),
            ..ServerConfig::with_url("http://h:1")
        })
        .unwrap();
        if let Some(direct) = &client.inner.direct {
            let sent = direct.authorization.as_ref().unwrap();
            assert_eq!(sent.to_str().unwrap(), "Bearer s3cr3t");
        }
    }

    #[test]
    fn base64_and_percent_decoding() {
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(percent_decode("p%40ss%3Aw%zz%"), "p@ss:w%zz%");
    }
}
