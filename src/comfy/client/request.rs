//! How one call is sent: route URLs, retries of idempotent requests with
//! backoff, body size limits, and mapping failures to [`ComfyError`]
//! without credentials.
//!
//! The typed calls (`queue`, `submit`, `files`, `server_info`) build on
//! these helpers; nothing here knows a route's meaning.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::{ComfyClient, ComfyError};
use crate::comfy::wire;

/// Largest JSON body read from the server (the full `/object_info` is about 1.6 MB).
pub(super) const MAX_JSON_BODY: usize = 64 * 1024 * 1024;
/// Most bytes of an error body kept in [`ComfyError::Http`].
pub(super) const MAX_ERROR_BODY: usize = 2048;
/// How long an idle connection to a backend stays pooled, on both HTTP paths (reqwest's and
/// the direct `POST /prompt`'s; the pool never hands out one idle longer). Below the 75 s after
/// which ComfyUI's server (aiohttp's keep-alive default, as nginx's in front of it) closes an
/// idle connection, so the runtime normally lets go of it first instead of sending a request
/// on a connection the server is closing at that moment. A request that still meets a closed
/// one (a proxy with a shorter idle timeout, a response body read long after it was sent)
/// fails without an answer, as any other ([`NoAnswer`]): a prompt's POST then costs a lookup.
/// reqwest's default, 90 s, was above it.
pub(super) const POOL_IDLE: Duration = Duration::from_secs(60);
/// First retry delay; the backoff doubles from here.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest retry delay.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Why a request got no answer.
#[derive(Debug)]
pub(super) enum NoAnswer {
    /// None in time (connecting included).
    Timeout,
    /// The connection failed or closed; the message names the causes.
    Transport(String),
}

/// The error's message and its causes, joined; reqwest puts the useful part ("connection
/// refused") in the causes.
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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
    /// The URL of a route under the base URL; each segment is percent-encoded.
    pub(super) fn endpoint(&self, segments: &[&str]) -> Result<Url, ComfyError> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| ComfyError::Config("server url cannot be a base".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// The error for a request reqwest got no answer to.
    pub(super) fn transport(&self, route: &str, error: reqwest::Error) -> ComfyError {
        let why = if error.is_timeout() {
            NoAnswer::Timeout
        } else {
            NoAnswer::Transport(error_chain(&error.without_url()))
        };
        self.no_answer(route, why)
    }

    /// The error for a request that got no answer, whichever client sent it.
    pub(super) fn no_answer(&self, route: &str, why: NoAnswer) -> ComfyError {
        match why {
            NoAnswer::Timeout => ComfyError::Timeout {
                server: self.inner.display.clone(),
                route: route.to_owned(),
                timeout: self.inner.timeout,
            },
            NoAnswer::Transport(message) => ComfyError::Transport {
                server: self.inner.display.clone(),
                route: route.to_owned(),
                message,
            },
        }
    }

    /// The error for a body longer than `MAX_JSON_BODY`.
    pub(super) fn too_large(&self, route: &str) -> ComfyError {
        self.protocol(route, format!("body larger than {MAX_JSON_BODY} bytes"))
    }

    /// The error for a 200 whose body is not what the protocol says.
    pub(super) fn protocol(&self, route: &str, message: impl Into<String>) -> ComfyError {
        ComfyError::Protocol {
            server: self.inner.display.clone(),
            route: route.to_owned(),
            message: message.into(),
        }
    }

    /// The retry schedule: exponential with jitter, `max_retries` times.
    pub(super) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(usize::try_from(self.inner.max_retries).unwrap_or(usize::MAX))
    }

    /// Runs `op` with retries; only for idempotent requests.
    pub(super) async fn idempotent<T, F, Fut>(&self, route: &str, op: F) -> Result<T, ComfyError>
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
    pub(super) async fn send(
        &self,
        route: &str,
        request: RequestBuilder,
    ) -> Result<Response, ComfyError> {
        let response = request.send().await.map_err(|e| self.transport(route, e))?;
        tracing::trace!(server = %self.inner.display, route, status = response.status().as_u16(), "comfyui answered");
        Ok(response)
    }

    /// Reads at most `limit` bytes of the body; `None` when it is longer.
    pub(super) async fn read_limited(
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
    pub(super) async fn http_error(&self, route: &str, response: Response) -> ComfyError {
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
        self.http_error_body(route, status, &body)
    }

    /// The error for a non-success `status` whose body is `body` (its start is kept).
    pub(super) fn http_error_body(&self, route: &str, status: u16, body: &[u8]) -> ComfyError {
        ComfyError::Http {
            server: self.inner.display.clone(),
            route: route.to_owned(),
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).into_owned(),
        }
    }

    /// The response when its status is a success, else [`ComfyError::Http`].
    pub(super) async fn expect_success(
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

    /// The body parsed as `T` (at most `MAX_JSON_BODY` bytes).
    pub(super) async fn json_body<T: DeserializeOwned>(
        &self,
        route: &str,
        response: Response,
    ) -> Result<T, ComfyError> {
        let body = self.bytes_body(route, response).await?;
        self.json_slice(route, &body)
    }

    /// `body` parsed as `T`.
    pub(super) fn json_slice<T: DeserializeOwned>(
        &self,
        route: &str,
        body: &[u8],
    ) -> Result<T, ComfyError> {
        wire::from_slice(body).map_err(|e| self.protocol(route, e.to_string()))
    }

    /// The whole body (at most `MAX_JSON_BODY` bytes).
    pub(super) async fn bytes_body(
        &self,
        route: &str,
        response: Response,
    ) -> Result<Vec<u8>, ComfyError> {
        self.read_limited(route, response, MAX_JSON_BODY)
            .await?
            .ok_or_else(|| self.too_large(route))
    }

    /// `GET` with retries, expecting 200 and a JSON body.
    pub(super) async fn get_json<T: DeserializeOwned>(
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
    pub(super) async fn get_json_optional<T: DeserializeOwned>(
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
    pub(super) async fn post_idempotent<B: Serialize + Sync>(
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

    /// `GET` with retries, expecting 200; the raw body.
    pub(super) async fn get_bytes(&self, segments: &[&str]) -> Result<Vec<u8>, ComfyError> {
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
}
