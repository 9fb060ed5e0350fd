//! The HTTP client of one ComfyUI backend: typed calls for every route the runtime needs,
//! capability detection, retries for idempotent calls, and safe file downloads.
//!
//! Rules this module keeps:
//! - One `reqwest::Client` per backend; credentials (`api_key` as `Authorization: Bearer`,
//!   `auth_header` as a raw `Authorization`) live only in its default headers, marked sensitive,
//!   and never in a log line, an error or `Debug` output.
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

use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;
use uuid::Uuid;

use crate::comfy::capabilities::{Capabilities, ComfyVersion};
use crate::comfy::wire::{
    self, CancelResponse, FileType, FreeRequest, HistoryEntry, HistoryMap, InterruptRequest, Job,
    NodeInfo, OutputFile, PromptRequest, PromptResponse, QueueDeleteRequest, QueueItem,
    QueueStatus, SystemStats, UploadResponse, ValidationErrorBody,
};
use crate::config::ServerConfig;

/// Largest JSON body read from the server (the full `/object_info` is about 1.6 MB).
const MAX_JSON_BODY: usize = 64 * 1024 * 1024;
/// Most bytes of an error body kept in [`ComfyError::Http`].
const MAX_ERROR_BODY: usize = 2048;
/// First retry delay; the backoff doubles from here.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest retry delay.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Why a ComfyUI call failed. Messages are lowercase and never carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    /// The server configuration cannot be used (bad URL, unusable credential).
    #[error("invalid comfyui server configuration: {0}")]
    Config(String),
    /// The request did not get an answer: connection refused or reset, DNS, TLS.
    #[error("comfyui at {server} unreachable on {route}: {message}")]
    Transport {
        /// The server, with any password redacted.
        server: String,
        /// The route, e.g. `history/<id>`.
        route: String,
        /// What went wrong.
        message: String,
    },
    /// No answer within the configured timeout.
    #[error("comfyui at {server} did not answer {route} within {timeout:?}")]
    Timeout {
        /// The server, with any password redacted.
        server: String,
        /// The route.
        route: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The server answered with an unexpected status.
    #[error(
        "comfyui at {server} answered {status} on {route}{}",
        body_suffix(body)
    )]
    Http {
        /// The server, with any password redacted.
        server: String,
        /// The route.
        route: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body (at most 2 KiB), e.g. the 500 `text/plain` page.
        body: String,
    },
    /// `POST /prompt` answered 400: the prompt is invalid. Every node's errors are kept.
    #[error("comfyui rejected the prompt: {0}")]
    Validation(Box<ValidationErrorBody>),
    /// The server answered 200 with a body that is not what the protocol says.
    #[error("unexpected answer from comfyui at {server} on {route}: {message}")]
    Protocol {
        /// The server, with any password redacted.
        server: String,
        /// The route.
        route: String,
        /// What was wrong.
        message: String,
    },
    /// The server is too old (or too different) for the operation.
    #[error("{what} is not supported by comfyui {version}")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// The server's version, or `of unknown version`.
        version: String,
    },
    /// An argument was refused before anything was sent.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A download was restricted to a prompt's outputs and the file is not one of them.
    #[error("file {filename} is not an output of prompt {prompt_id}")]
    NotAnOutput {
        /// The prompt.
        prompt_id: String,
        /// The file asked for.
        filename: String,
    },
    /// The WebSocket could not be opened or broke.
    #[error("websocket to comfyui at {server}: {message}")]
    WebSocket {
        /// The server, with any password redacted.
        server: String,
        /// What went wrong.
        message: String,
    },
    /// The backend's socket task has stopped (shut down).
    #[error("the websocket task of comfyui at {server} has stopped")]
    SocketClosed {
        /// The server, with any password redacted.
        server: String,
    },
}

fn body_suffix(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl ComfyError {
    /// Whether retrying the same idempotent request may succeed: transport failures, timeouts,
    /// 429 and 5xx answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Http { status, .. } => *status == 429 || (500..600).contains(status),
            _ => false,
        }
    }

    /// Whether a `POST` may or may not have reached the server: no answer, or a gateway error.
    fn is_ambiguous(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Http { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// The HTTP status, for [`ComfyError::Http`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Validation(_) => Some(400),
            _ => None,
        }
    }
}

/// Where a prompt is, according to the server (see [`ComfyClient::locate`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptLocation {
    /// Executing now.
    Running(Box<QueueItem>),
    /// Waiting in the queue.
    Pending(Box<QueueItem>),
    /// Finished; its history entry.
    Finished(Box<HistoryEntry>),
    /// Neither queued nor in history: never submitted, deleted while pending, or lost in a
    /// server restart.
    Unknown,
}

/// The HTTP client of one ComfyUI backend. Cheap to clone; clones share the connection pool and
/// the detected capabilities.
#[derive(Clone)]
pub struct ComfyClient {
    inner: Arc<Inner>,
}

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
    /// credentials from the URL's user info (reqwest does the same for HTTP), which the
    /// WebSocket URL never carries.
    ws_authorization: Option<HeaderValue>,
    /// Whether TLS certificates are checked.
    verify_ssl: bool,
    /// Capabilities from the last detection; `None` until the first one.
    capabilities: RwLock<Option<Capabilities>>,
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

/// The error's message and its causes, joined; reqwest puts the useful part ("connection
/// refused") in the causes.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message.to_lowercase()
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
        let ws_authorization = match (&authorization, url_credentials) {
            (Some(value), _) => Some(value.clone()),
            (None, Some(credentials)) => {
                let mut value =
                    HeaderValue::from_str(&format!("Basic {}", base64(credentials.as_bytes())))
                        .map_err(|_| {
                            ComfyError::Config(
                                "the url's credentials cannot be sent as an http header".into(),
                            )
                        })?;
                value.set_sensitive(true);
                Some(value)
            }
            (None, None) => None,
        };

        let timeout = config.timeout();
        if timeout.is_zero() {
            return Err(ComfyError::Config("timeout must be greater than 0".into()));
        }
        let mut headers = HeaderMap::new();
        if let Some(value) = &authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(timeout)
            // Streams (`view`) have no total timeout, but a stalled one times out.
            .read_timeout(timeout)
            .danger_accept_invalid_certs(!config.verify_ssl)
            .build()
            .map_err(|e| ComfyError::Config(format!("http client: {}", error_chain(&e))))?;

        Ok(Self {
            inner: Arc::new(Inner {
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

    // -----------------------------------------------------------------------------------------
    // Plumbing
    // -----------------------------------------------------------------------------------------

    fn endpoint(&self, segments: &[&str]) -> Result<Url, ComfyError> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| ComfyError::Config("server url cannot be a base".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn transport(&self, route: &str, error: reqwest::Error) -> ComfyError {
        if error.is_timeout() {
            return ComfyError::Timeout {
                server: self.inner.display.clone(),
                route: route.to_owned(),
                timeout: self.inner.timeout,
            };
        }
        ComfyError::Transport {
            server: self.inner.display.clone(),
            route: route.to_owned(),
            message: error_chain(&error.without_url()),
        }
    }

    fn protocol(&self, route: &str, message: impl Into<String>) -> ComfyError {
        ComfyError::Protocol {
            server: self.inner.display.clone(),
            route: route.to_owned(),
            message: message.into(),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(usize::try_from(self.inner.max_retries).unwrap_or(usize::MAX))
    }

    /// Runs `op` with retries; only for idempotent requests.
    async fn idempotent<T, F, Fut>(&self, route: &str, op: F) -> Result<T, ComfyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ComfyError>>,
    {
        op.retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(ComfyError::is_retryable)
            .notify(|error, delay| {
                tracing::debug!(
                    server = %self.inner.display, route, %error, ?delay,
                    "retrying comfyui request"
                );
            })
            .await
    }

    /// Sends once and returns the response whatever its status.
    async fn send(&self, route: &str, request: RequestBuilder) -> Result<Response, ComfyError> {
        let response = request.send().await.map_err(|e| self.transport(route, e))?;
        tracing::trace!(server = %self.inner.display, route, status = response.status().as_u16(), "comfyui answered");
        Ok(response)
    }

    /// Reads at most `limit` bytes of the body; `None` when it is longer.
    async fn read_limited(
        &self,
        route: &str,
        mut response: Response,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, ComfyError> {
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Ok(None);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(route, e))?
        {
            if body.len() + chunk.len() > limit {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    /// The error for a non-success response, with the start of its body.
    async fn http_error(&self, route: &str, response: Response) -> ComfyError {
        let status = response.status().as_u16();
        let mut response = response;
        let mut body = Vec::new();
        // Best effort: the status is the error; a body that cannot be read is left out.
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        ComfyError::Http {
            server: self.inner.display.clone(),
            route: route.to_owned(),
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn expect_success(
        &self,
        route: &str,
        response: Response,
    ) -> Result<Response, ComfyError> {
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self.http_error(route, response).await)
        }
    }

    async fn json_body<T: DeserializeOwned>(
        &self,
        route: &str,
        response: Response,
    ) -> Result<T, ComfyError> {
        let body = self.bytes_body(route, response).await?;
        wire::from_slice(&body).map_err(|e| self.protocol(route, e.to_string()))
    }

    async fn bytes_body(&self, route: &str, response: Response) -> Result<Vec<u8>, ComfyError> {
        self.read_limited(route, response, MAX_JSON_BODY)
            .await?
            .ok_or_else(|| self.protocol(route, format!("body larger than {MAX_JSON_BODY} bytes")))
    }

    /// `GET` with retries, expecting 200 and a JSON body.
    async fn get_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, ComfyError> {
        let url = self.endpoint(segments)?;
        let route = segments.join("/");
        self.idempotent(&route, || async {
            let request = self
                .inner
                .http
                .get(url.clone())
                .query(query)
                .timeout(self.inner.timeout);
            let response = self.send(&route, request).await?;
            let response = self.expect_success(&route, response).await?;
            self.json_body(&route, response).await
        })
        .await
    }

    /// `GET` with retries; `None` on 404.
    async fn get_json_optional<T: DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<Option<T>, ComfyError> {
        let url = self.endpoint(segments)?;
        let route = segments.join("/");
        self.idempotent(&route, || async {
            let request = self.inner.http.get(url.clone()).timeout(self.inner.timeout);
            let response = self.send(&route, request).await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let response = self.expect_success(&route, response).await?;
            self.json_body(&route, response).await.map(Some)
        })
        .await
    }

    /// An idempotent `POST` of a JSON body whose answer is 200 with an empty body.
    async fn post_idempotent<B: Serialize + Sync>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<(), ComfyError> {
        let url = self.endpoint(segments)?;
        let route = segments.join("/");
        self.idempotent(&route, || async {
            let request = self
                .inner
                .http
                .post(url.clone())
                .json(body)
                .timeout(self.inner.timeout);
            let response = self.send(&route, request).await?;
            // The body is empty (and not JSON); it is not read.
            self.expect_success(&route, response).await.map(drop)
        })
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Capabilities
    // -----------------------------------------------------------------------------------------

    /// The capabilities from the last detection, if any.
    pub fn cached_capabilities(&self) -> Option<Capabilities> {
        *self
            .inner
            .capabilities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The capabilities, detected on first use and cached.
    pub async fn capabilities(&self) -> Result<Capabilities, ComfyError> {
        match self.cached_capabilities() {
            Some(capabilities) => Ok(capabilities),
            None => self.detect_capabilities().await,
        }
    }

    /// Detects the capabilities now (`/system_stats`, `/features`, `GET /api/jobs?limit=1`) and
    /// caches them. Called again after a reconnect: the server may have been upgraded.
    pub async fn detect_capabilities(&self) -> Result<Capabilities, ComfyError> {
        let stats = self.system_stats().await?;
        let version = stats
            .system
            .comfyui_version
            .as_deref()
            .and_then(ComfyVersion::parse);
        let features = self.features().await?;
        let jobs_probe = self.probe_jobs_api().await;
        let capabilities = Capabilities::detect(version, features.as_ref(), jobs_probe);
        tracing::debug!(server = %self.inner.display, ?capabilities, "comfyui capabilities detected");
        *self
            .inner
            .capabilities
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(capabilities);
        Ok(capabilities)
    }

    /// `GET /api/jobs?limit=1`: `Some(true)` on 200, `Some(false)` on 404/405, `None` otherwise.
    async fn probe_jobs_api(&self) -> Option<bool> {
        let url = self.endpoint(&["api", "jobs"]).ok()?;
        let request = self
            .inner
            .http
            .get(url)
            .query(&[("limit", "1")])
            .timeout(self.inner.timeout);
        match self.send("api/jobs", request).await {
            Ok(response) if response.status().is_success() => Some(true),
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) =>
            {
                Some(false)
            }
            _ => None,
        }
    }

    fn unsupported(&self, what: &'static str, capabilities: &Capabilities) -> ComfyError {
        ComfyError::Unsupported {
            what,
            version: capabilities
                .version
                .map_or_else(|| "of unknown version".to_owned(), |v| v.to_string()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Prompts
    // -----------------------------------------------------------------------------------------

    /// `POST /prompt` with a client-chosen `prompt_id` (sent lowercase), never with `front` or
    /// `number`. Use the `prompt_id` of the answer: servers older than 0.3.45 ignore ours.
    ///
    /// Not retried blindly. After an answer that may or may not have reached the server
    /// (transport error, timeout, 502-504), the id is looked up (`/queue`, then `/history`) and
    /// the prompt resubmitted only when the server has never seen it; when it has, the answer
    /// is rebuilt from the queue or history (without `node_errors`). A 409 on a resubmission
    /// (newer servers refuse a duplicate pending id) means the first attempt got through. On
    /// servers that ignore client ids an ambiguous failure is returned as is.
    ///
    /// A 400 is [`ComfyError::Validation`] with every node's errors.
    pub async fn submit_prompt(
        &self,
        prompt_id: Uuid,
        client_id: &str,
        prompt: &Value,
        extra_data: Option<&Value>,
    ) -> Result<PromptResponse, ComfyError> {
        if !prompt.is_object() {
            return Err(ComfyError::InvalidArgument {
                field: "prompt",
                message: "must be a json object of nodes".into(),
            });
        }
        if client_id.is_empty() {
            return Err(ComfyError::InvalidArgument {
                field: "client_id",
                message: "must not be empty".into(),
            });
        }
        if extra_data.is_some_and(|e| !e.is_object()) {
            return Err(ComfyError::InvalidArgument {
                field: "extra_data",
                message: "must be a json object".into(),
            });
        }
        let capabilities = self.capabilities().await?;
        let id = prompt_id.hyphenated().to_string();
        let body = serde_json::to_vec(&PromptRequest {
            prompt,
            client_id,
            prompt_id: Some(&id),
            extra_data,
            partial_execution_targets: None,
        })
        .map_err(|e| ComfyError::InvalidArgument {
            field: "prompt",
            message: e.to_string(),
        })?;

        let mut delays = self.backoff().build();
        let mut resubmission = false;
        loop {
            let error = match self.post_prompt_once(&body).await {
                Ok(response) => {
                    if capabilities.client_prompt_id && response.prompt_id != id {
                        tracing::warn!(
                            server = %self.inner.display, prompt_id = %id,
                            server_prompt_id = %response.prompt_id,
                            "comfyui replaced the client-chosen prompt id"
                        );
                    }
                    return Ok(response);
                }
                Err(error) if resubmission && error.status() == Some(409) => {
                    // The earlier attempt is pending or running: find its number.
                    return match self.locate(&id).await? {
                        PromptLocation::Unknown => Err(error),
                        found => Ok(accepted_response(&id, &found)),
                    };
                }
                Err(error) if error.is_ambiguous() && capabilities.client_prompt_id => error,
                Err(error) => return Err(error),
            };
            tracing::debug!(server = %self.inner.display, prompt_id = %id, %error, "submit outcome unknown; looking the prompt up");
            // Look the id up until the server answers; resubmit only if it never saw it.
            loop {
                let Some(delay) = delays.next() else {
                    return Err(error);
                };
                tokio::time::sleep(delay).await;
                match self.locate(&id).await {
                    Ok(PromptLocation::Unknown) => break,
                    Ok(found) => return Ok(accepted_response(&id, &found)),
                    Err(lookup) => {
                        tracing::debug!(server = %self.inner.display, prompt_id = %id, error = %lookup, "prompt lookup failed");
                    }
                }
            }
            resubmission = true;
        }
    }

    async fn post_prompt_once(&self, body: &[u8]) -> Result<PromptResponse, ComfyError> {
        const ROUTE: &str = "prompt";
        let request = self
            .inner
            .http
            .post(self.endpoint(&[ROUTE])?)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .timeout(self.inner.timeout);
        let response = self.send(ROUTE, request).await?;
        match response.status() {
            StatusCode::OK => self.json_body(ROUTE, response).await,
            StatusCode::BAD_REQUEST => {
                let body = self.bytes_body(ROUTE, response).await?;
                match wire::from_slice::<ValidationErrorBody>(&body) {
                    Ok(validation) => Err(ComfyError::Validation(Box::new(validation))),
                    Err(_) => Err(ComfyError::Http {
                        server: self.inner.display.clone(),
                        route: ROUTE.into(),
                        status: 400,
                        body: String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)])
                            .into_owned(),
                    }),
                }
            }
            _ => Err(self.http_error(ROUTE, response).await),
        }
    }

    /// `GET /history/{id}`: the entry, or `None` while the prompt is queued, running or unknown.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, ComfyError> {
        check_prompt_id(prompt_id)?;
        let mut map: HistoryMap = self.get_json(&["history", prompt_id], &[]).await?;
        Ok(map.remove(prompt_id))
    }

    /// `GET /queue`.
    pub async fn queue(&self) -> Result<QueueStatus, ComfyError> {
        self.get_json(&["queue"], &[]).await
    }

    /// Where a prompt is: `GET /queue` first, then `GET /history/{id}`, and when it is in
    /// neither, history once more. This order cannot miss a prompt that finishes between the
    /// reads (history-then-queue can).
    pub async fn locate(&self, prompt_id: &str) -> Result<PromptLocation, ComfyError> {
        let queue = self.queue().await?;
        if let Some(item) = queue
            .queue_running
            .iter()
            .find(|i| i.prompt_id == prompt_id)
        {
            return Ok(PromptLocation::Running(Box::new(item.clone())));
        }
        if let Some(item) = queue
            .queue_pending
            .iter()
            .find(|i| i.prompt_id == prompt_id)
        {
            return Ok(PromptLocation::Pending(Box::new(item.clone())));
        }
        for _ in 0..2 {
            if let Some(entry) = self.history(prompt_id).await? {
                return Ok(PromptLocation::Finished(Box::new(entry)));
            }
        }
        Ok(PromptLocation::Unknown)
    }

    /// `POST /queue {"delete": ids}`: removes pending prompts (a running one is untouched,
    /// unknown ids are ignored). Retried.
    pub async fn delete_from_queue(&self, prompt_ids: &[String]) -> Result<(), ComfyError> {
        if prompt_ids.is_empty() {
            return Ok(());
        }
        for id in prompt_ids {
            check_prompt_id(id)?;
        }
        self.post_idempotent(
            &["queue"],
            &QueueDeleteRequest {
                delete: prompt_ids,
                clear: false,
            },
        )
        .await
    }

    /// `POST /interrupt {"prompt_id"}`: interrupts the prompt if it is the one running, and does
    /// nothing otherwise. Refused (without sending anything) on servers before 0.3.57, where
    /// any interrupt is global. Retried.
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), ComfyError> {
        check_prompt_id(prompt_id)?;
        let capabilities = self.capabilities().await?;
        if !capabilities.targeted_interrupt {
            return Err(self.unsupported("targeted interrupt", &capabilities));
        }
        self.post_idempotent(&["interrupt"], &InterruptRequest { prompt_id })
            .await
    }

    /// `POST /api/jobs/{id}/cancel` (servers since 0.26.0): interrupts the prompt if it runs,
    /// dequeues it if it waits. Returns whether anything was cancelled. Retried (idempotent).
    pub async fn cancel_job(&self, prompt_id: &str) -> Result<bool, ComfyError> {
        check_prompt_id(prompt_id)?;
        let capabilities = self.capabilities().await?;
        if !capabilities.jobs_cancel {
            return Err(self.unsupported("job cancel", &capabilities));
        }
        let segments = ["api", "jobs", prompt_id, "cancel"];
        let url = self.endpoint(&segments)?;
        let route = segments.join("/");
        self.idempotent(&route, || async {
            let request = self
                .inner
                .http
                .post(url.clone())
                .timeout(self.inner.timeout);
            let response = self.send(&route, request).await?;
            let response = self.expect_success(&route, response).await?;
            self.json_body::<CancelResponse>(&route, response)
                .await
                .map(|r| r.cancelled)
        })
        .await
    }

    /// `GET /api/jobs/{id}` (servers since 0.6.0): the job, or `None` when unknown (also for a
    /// prompt deleted while pending).
    pub async fn job(&self, prompt_id: &str) -> Result<Option<Job>, ComfyError> {
        check_prompt_id(prompt_id)?;
        let capabilities = self.capabilities().await?;
        if !capabilities.jobs_api {
            return Err(self.unsupported("the jobs api", &capabilities));
        }
        self.get_json_optional(&["api", "jobs", prompt_id]).await
    }

    // -----------------------------------------------------------------------------------------
    // Server information
    // -----------------------------------------------------------------------------------------

    /// `GET /object_info`: every node class. Classes whose entry cannot be read are skipped
    /// (and logged) rather than failing the catalogue.
    pub async fn object_info(
        &self,
    ) -> Result<std::collections::BTreeMap<String, NodeInfo>, ComfyError> {
        let body = self.get_bytes(&["object_info"]).await?;
        let (nodes, skipped) = wire::parse_object_info(&body)
            .map_err(|e| self.protocol("object_info", e.to_string()))?;
        if !skipped.is_empty() {
            tracing::warn!(server = %self.inner.display, skipped = ?skipped, "object_info classes that could not be read");
        }
        Ok(nodes)
    }

    /// `GET /object_info/{class}`: one node class, or `None` when the server does not know it.
    pub async fn object_info_class(&self, class: &str) -> Result<Option<NodeInfo>, ComfyError> {
        if class.is_empty() {
            return Err(ComfyError::InvalidArgument {
                field: "class",
                message: "must not be empty".into(),
            });
        }
        let body = self.get_bytes(&["object_info", class]).await?;
        let (mut nodes, skipped) = wire::parse_object_info(&body)
            .map_err(|e| self.protocol("object_info", e.to_string()))?;
        if skipped.iter().any(|name| name == class) {
            return Err(self.protocol("object_info", format!("class {class} could not be read")));
        }
        Ok(nodes.remove(class))
    }

    async fn get_bytes(&self, segments: &[&str]) -> Result<Vec<u8>, ComfyError> {
        let url = self.endpoint(segments)?;
        let route = segments.join("/");
        self.idempotent(&route, || async {
            let request = self.inner.http.get(url.clone()).timeout(self.inner.timeout);
            let response = self.send(&route, request).await?;
            let response = self.expect_success(&route, response).await?;
            self.bytes_body(&route, response).await
        })
        .await
    }

    /// `GET /system_stats`.
    pub async fn system_stats(&self) -> Result<SystemStats, ComfyError> {
        self.get_json(&["system_stats"], &[]).await
    }

    /// `GET /features`, or `None` on servers before 0.3.45 (404).
    pub async fn features(&self) -> Result<Option<wire::Features>, ComfyError> {
        self.get_json_optional(&["features"]).await
    }

    /// `POST /free`; applied by the worker after the current prompt. `free_memory` also clears
    /// the output cache. Retried.
    pub async fn free(&self, unload_models: bool, free_memory: bool) -> Result<(), ComfyError> {
        self.post_idempotent(
            &["free"],
            &FreeRequest {
                unload_models,
                free_memory,
            },
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Files
    // -----------------------------------------------------------------------------------------

    /// `POST /upload/image` (multipart) into `input/<subfolder>/`. With `overwrite` false the
    /// server renames on a clash; the answer says where the file landed. Not retried: without
    /// `overwrite` a retry could store the file twice.
    pub async fn upload_image(
        &self,
        bytes: Bytes,
        filename: &str,
        subfolder: &str,
        overwrite: bool,
    ) -> Result<UploadResponse, ComfyError> {
        check_file_name(filename)?;
        check_subfolder(subfolder)?;
        if filename.contains(['"', '\r', '\n']) {
            return Err(ComfyError::InvalidArgument {
                field: "filename",
                message: "must not contain quotes or line breaks".into(),
            });
        }
        const ROUTE: &str = "upload/image";
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::stream(bytes).file_name(filename.to_owned()),
            )
            .text("type", "input")
            .text("subfolder", subfolder.to_owned())
            .text("overwrite", if overwrite { "true" } else { "false" });
        let request = self
            .inner
            .http
            .post(self.endpoint(&["upload", "image"])?)
            .multipart(form)
            .timeout(self.inner.timeout);
        let response = self.send(ROUTE, request).await?;
        let response = self.expect_success(ROUTE, response).await?;
        self.json_body(ROUTE, response).await
    }

    /// `GET /view`: the file as a stream of chunks, never buffered whole. The arguments are
    /// checked first: no `..`, no absolute path, no backslash, no control characters. The
    /// request (up to the response headers) is retried; the body is not.
    pub async fn view(
        &self,
        filename: &str,
        subfolder: &str,
        file_type: FileType,
    ) -> Result<impl Stream<Item = Result<Bytes, ComfyError>> + Send + 'static, ComfyError> {
        check_file_name(filename)?;
        check_subfolder(subfolder)?;
        const ROUTE: &str = "view";
        let url = self.endpoint(&[ROUTE])?;
        let query = [
            ("filename", filename),
            ("subfolder", subfolder),
            ("type", file_type.as_str()),
        ];
        let response = self
            .idempotent(ROUTE, || async {
                // No total timeout: a large file may take longer; the read timeout still applies.
                let request = self.inner.http.get(url.clone()).query(&query);
                let response = self.send(ROUTE, request).await?;
                self.expect_success(ROUTE, response).await
            })
            .await?;
        let server = self.inner.display.clone();
        let timeout = self.inner.timeout;
        Ok(response.bytes_stream().map_err(move |error| {
            if error.is_timeout() {
                ComfyError::Timeout {
                    server: server.clone(),
                    route: ROUTE.into(),
                    timeout,
                }
            } else {
                ComfyError::Transport {
                    server: server.clone(),
                    route: ROUTE.into(),
                    message: error_chain(&error.without_url()),
                }
            }
        }))
    }

    /// [`ComfyClient::view`] restricted to `prompt_id`'s own outputs: the file must be listed in
    /// that prompt's history outputs (same filename, subfolder and type), or this is
    /// [`ComfyError::NotAnOutput`].
    pub async fn view_output(
        &self,
        prompt_id: &str,
        file: &OutputFile,
    ) -> Result<impl Stream<Item = Result<Bytes, ComfyError>> + Send + 'static, ComfyError> {
        check_file_name(&file.filename)?;
        check_subfolder(&file.subfolder)?;
        let file_type: FileType =
            file.file_type
                .parse()
                .map_err(|_| ComfyError::InvalidArgument {
                    field: "type",
                    message: format!("`{}` is not one of output, input, temp", file.file_type),
                })?;
        let not_an_output = || ComfyError::NotAnOutput {
            prompt_id: prompt_id.to_owned(),
            filename: file.filename.clone(),
        };
        let entry = self.history(prompt_id).await?.ok_or_else(not_an_output)?;
        if !entry.has_output_file(file) {
            return Err(not_an_output());
        }
        self.view(&file.filename, &file.subfolder, file_type).await
    }
}

/// The answer to a submission found in the queue or history after an ambiguous failure.
fn accepted_response(prompt_id: &str, found: &PromptLocation) -> PromptResponse {
    let number = match found {
        PromptLocation::Running(item) | PromptLocation::Pending(item) => item.number.clone(),
        PromptLocation::Finished(entry) => entry.prompt.number.clone(),
        PromptLocation::Unknown => serde_json::Number::from(0),
    };
    PromptResponse {
        prompt_id: prompt_id.to_owned(),
        number,
        node_errors: Default::default(),
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

/// A prompt id goes into a URL path: it must be non-empty and free of separators.
fn check_prompt_id(prompt_id: &str) -> Result<(), ComfyError> {
    if prompt_id.is_empty()
        || prompt_id.len() > 128
        || prompt_id
            .chars()
            .any(|c| c == '/' || c == '\\' || c == '?' || c == '#' || c.is_control())
        || prompt_id == "."
        || prompt_id == ".."
    {
        return Err(ComfyError::InvalidArgument {
            field: "prompt_id",
            message: "must be a non-empty id without path separators".into(),
        });
    }
    Ok(())
}

fn path_problem(text: &str) -> Option<&'static str> {
    if text.contains("..") {
        Some("must not contain `..`")
    } else if text.contains('\\') {
        Some("must not contain a backslash")
    } else if text.starts_with('/') || text.as_bytes().get(1) == Some(&b':') {
        Some("must not be an absolute path")
    } else if text.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// A file name for `/view` or an upload: not empty, no separators, no `..`.
fn check_file_name(filename: &str) -> Result<(), ComfyError> {
    let problem = if filename.is_empty() {
        Some("must not be empty")
    } else if filename.contains('/') && !filename.starts_with('/') {
        Some("must not contain `/` (use subfolder)")
    } else {
        path_problem(filename)
    };
    match problem {
        Some(message) => Err(ComfyError::InvalidArgument {
            field: "filename",
            message: message.into(),
        }),
        None => Ok(()),
    }
}

/// A relative subfolder (may be empty): no `..`, no absolute path, no backslash.
fn check_subfolder(subfolder: &str) -> Result<(), ComfyError> {
    match path_problem(subfolder) {
        Some(message) => Err(ComfyError::InvalidArgument {
            field: "subfolder",
            message: message.into(),
        }),
        None => Ok(()),
    }
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
        let tls = ComfyClient::new(&ServerConfig::with_url("https://h")).unwrap();
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
    fn file_arguments_are_checked() {
        for ok in ["a.png", "success_00001_.png", "a b.png", "a.b.c"] {
            check_file_name(ok).unwrap();
        }
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/../b",
            "/etc/passwd",
            "a\\b",
            "C:x",
            "a\nb",
            "x/y.png",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "proto", "a/b"] {
            check_subfolder(ok).unwrap();
        }
        for bad in ["..", "a/../..", "/abs", "a\\b", "C:\\x", "\0"] {
            assert!(check_subfolder(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "a/b", "..", "a?b", "a#b"] {
            assert!(check_prompt_id(bad).is_err(), "{bad:?}");
        }
        check_prompt_id("a12acd6c-351a-4f4a-9bf2-99c14525783c").unwrap();
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

    #[test]
    fn retryable_errors() {
        let http = |status| ComfyError::Http {
            server: "s".into(),
            route: "r".into(),
            status,
            body: String::new(),
        };
        assert!(http(503).is_retryable() && http(429).is_retryable() && http(500).is_retryable());
        assert!(!http(404).is_retryable() && !http(400).is_retryable());
        assert!(http(502).is_ambiguous() && !http(500).is_ambiguous());
        let timeout = ComfyError::Timeout {
            server: "s".into(),
            route: "r".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(timeout.is_retryable() && timeout.is_ambiguous());
        assert_eq!(http(404).to_string(), "comfyui at s answered 404 on r");
        assert_eq!(
            ComfyError::Http {
                server: "s".into(),
                route: "r".into(),
                status: 500,
                body: "boom\n".into(),
            }
            .to_string(),
            "comfyui at s answered 500 on r: boom"
        );
    }
}
