//! `POST /prompt` sent through hyper's client directly: the one request every job makes.
//!
//! reqwest costs a job's submission about 20 µs of the runtime's only async thread on top of
//! hyper's own work (measured: the runtime's CPU per one-node job, with and without this path):
//! its redirect layer formats and parses the request's URL again for every request, it turns
//! the `Url` into a `Uri` by parsing it, and it wraps the request and the response in futures
//! and layers (retry, redirect, per-request timer) this route has no use for. Here the URI is
//! parsed once per backend, and a request is its method, URI, headers and the body.
//!
//! Only where reqwest would send the request the same way: a plain `http` base URL, and no proxy
//! named in the environment (reqwest's system proxy reads `http_proxy`, `HTTP_PROXY`,
//! `all_proxy` and `ALL_PROXY`). An `https` backend (certificates, `verify_ssl`) and a proxied
//! one keep reqwest, as does every other route. What the request carries is what reqwest sends:
//! Basic credentials from the URL's user info (never in the URI itself), else the
//! `Authorization` of `auth_header` or `api_key`; `Accept: */*`; `Content-Type:
//! application/json`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, timeout_at};
use url::Url;

use super::request::{MAX_ERROR_BODY, MAX_JSON_BODY, NoAnswer, POOL_IDLE};

/// TCP keep-alive probes of a connection, as reqwest sets them: after 15 s idle, every 15 s, 3
/// unanswered ones close it (a pooled connection to a host gone away is found out while idle,
/// not by the next request's timeout).
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 3;

/// The environment variables reqwest's system proxy reads for an `http` URL.
pub(super) const PROXY_VARIABLES: [&str; 4] =
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];

/// The direct `POST /prompt` of one backend.
pub(super) struct DirectPost {
    /// hyper's pooling client, plain HTTP/1.1.
    client: Client<HttpConnector, Full<Bytes>>,
    /// `<base>prompt`, without user info.
    uri: Uri,
    /// The `Authorization` value, if any (sensitive).
    pub(super) authorization: Option<HeaderValue>,
}

/// An answer, with its body as far as it matters for its status.
#[derive(Debug)]
pub(super) struct DirectAnswer {
    pub(super) status: StatusCode,
    /// For a 200 or a 400 (whose body is read): the whole body, `None` when it is longer than
    /// `MAX_JSON_BODY`. For any other status (the status is the answer): the start of the
    /// body, at most `MAX_ERROR_BODY` bytes, read as far as it could be.
    pub(super) body: Option<Bytes>,
}

impl DirectPost {
    /// The direct path for `base` (ending in `/`), when reqwest would send the request the same
    /// way: `None` for an `https` URL or with a proxy in the environment. `authorization` is
    /// what the request must carry (see the module's documentation).
    pub(super) fn for_base(
        base: &Url,
        authorization: Option<HeaderValue>,
        connect_timeout: Duration,
    ) -> Option<Self> {
        Self::new(base, authorization, connect_timeout, |name| {
            std::env::var_os(name).is_some_and(|value| !value.is_empty())
        })
    }

    /// [`for_base`](Self::for_base) with the environment given as `proxy_set`.
    fn new(
        base: &Url,
        authorization: Option<HeaderValue>,
        connect_timeout: Duration,
        proxy_set: impl Fn(&str) -> bool,
    ) -> Option<Self> {
        if base.scheme() != "http" || PROXY_VARIABLES.iter().any(|name| proxy_set(name)) {
            return None;
        }
        let mut url = base.join("prompt").ok()?;
        url.set_username("").ok()?;
        url.set_password(None).ok()?;
        let uri = url.as_str().parse::<Uri>().ok()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(KEEPALIVE));
        connector.set_keepalive_interval(Some(KEEPALIVE));
        connector.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Some(Self {
            client,
            uri,
            authorization,
        })
    }

    /// The request for `body`.
    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(value) = &self.authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        request
    }

    /// Posts `body` and reads the answer, within `timeout` in all. A body that breaks or
    /// stalls is an error for a 200 or a 400 (whose body is the answer); for any other status
    /// the status is the answer, with what could be read of its body in the time left.
    pub(super) async fn post(
        &self,
        body: Bytes,
        timeout: Duration,
    ) -> Result<DirectAnswer, NoAnswer> {
        let deadline = Instant::now() + timeout;
        let response = timeout_at(deadline, self.client.request(self.request(body)))
            .await
            .map_err(|_| NoAnswer::Timeout)?
            .map_err(|error| classify(&error))?;
        let status = response.status();
        let body = response.into_body();
        if status == StatusCode::OK || status == StatusCode::BAD_REQUEST {
            let body = timeout_at(deadline, read_limited(body, MAX_JSON_BODY))
                .await
                .map_err(|_| NoAnswer::Timeout)?
                .map_err(|error| NoAnswer::Transport(super::error_chain(error.as_ref())))?;
            return Ok(DirectAnswer { status, body });
        }
        let mut start = Vec::new();
        let _ = timeout_at(deadline, read_start(body, &mut start)).await;
        Ok(DirectAnswer {
            status,
            body: Some(Bytes::from(start)),
        })
    }
}

/// A client error as reqwest reports it: a connect that timed out is a timeout.
fn classify(error: &hyper_util::client::legacy::Error) -> NoAnswer {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return NoAnswer::Timeout;
        }
        source = cause.source();
    }
    NoAnswer::Transport(super::error_chain(error))
}

/// At most `limit` bytes of `body`; `None` once it is longer (or says it will be).
async fn read_limited(
    body: hyper::body::Incoming,
    limit: usize,
) -> Result<Option<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
    // A declared length over the limit is refused before reading (`Limited` counts frames).
    if body.size_hint().lower() > limit as u64 {
        return Ok(None);
    }
    // A body of one frame (the usual answer) comes back as it came, without a copy.
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(error) if error.is::<LengthLimitError>() => Ok(None),
        Err(error) => Err(error),
    }
}

/// Reads the start of an error answer's body into `start`, at most [`MAX_ERROR_BODY`] bytes,
/// until it ends or breaks (best effort: what was read stays).
async fn read_start(mut body: hyper::body::Incoming, start: &mut Vec<u8>) {
    while start.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_ERROR_BODY - start.len();
                    start.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn direct(url: &str, authorization: Option<&str>) -> Option<DirectPost> {
        let authorization = authorization.map(|v| HeaderValue::from_str(v).unwrap());
        DirectPost::new(
            &Url::parse(url).unwrap(),
            authorization,
            Duration::from_secs(5),
            |_| false,
        )
    }

    #[test]
    fn only_plain_http_without_a_proxy_goes_direct() {
        assert!(direct("https://h/", None).is_none());
        let base = Url::parse("http://h:8188/comfy/").unwrap();
        for variable in PROXY_VARIABLES {
            let proxied =
                DirectPost::new(&base, None, Duration::from_secs(1), |name| name == variable);
            assert!(proxied.is_none(), "{variable}");
        }
        let plain = direct("http://u:s3cr3t@h:8188/comfy/", None).unwrap();
        // User info never goes into the URI (it travels as the Authorization header).
        assert_eq!(plain.uri.to_string(), "http://h:8188/comfy/prompt");
        let request = plain.request(Bytes::from_static(b"{}"));
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.headers()[CONTENT_TYPE], "application/json");
        assert!(request.headers().get(AUTHORIZATION).is_none());
    }

    /// A server that answers one request with `answer` and gives back what it read.
    async fn answer_once(answer: &'static [u8]) -> (Url, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let read = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0u8; 4096];
            // Headers, then the two-byte body.
            while !String::from_utf8_lossy(&seen).contains("\r\n\r\n{}") {
                let n = socket.read(&mut buffer).await.unwrap();
                assert!(n > 0, "closed early");
                seen.extend_from_slice(&buffer[..n]);
            }
            socket.write_all(answer).await.unwrap();
            String::from_utf8(seen).unwrap()
        });
        (url, read)
    }

    /// What a post of `{}` gets from a server that answers it with `answer`.
    async fn posted_to(answer: &'static [u8]) -> DirectAnswer {
        let (url, _read) = answer_once(answer).await;
        let post = direct(url.as_str(), None).unwrap();
        post.post(Bytes::from_static(b"{}"), Duration::from_secs(5))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_request_carries_its_credential_and_the_answer_comes_back_whole() {
        let (url, read) =
            answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n{\"number\": 1}").await;
        let post = direct(url.as_str(), Some("Bearer s3cr3t")).unwrap();
        let answer = post
            .post(Bytes::from_static(b"{}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.unwrap(), Bytes::from_static(b"{\"number\": 1}"));
        let request = read.await.unwrap().to_lowercase();
        assert!(
            request.starts_with("post /prompt http/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("authorization: bearer s3cr3t\r\n"),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/json\r\n"),
            "{request}"
        );
        assert!(request.contains("content-length: 2\r\n"), "{request}");
        assert!(request.contains("accept: */*\r\n"), "{request}");
    }

    #[tokio::test]
    async fn an_error_status_is_the_answer_with_the_start_of_its_body() {
        // Longer than kept: its start comes back.
        let long: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 500 Oops\r\ncontent-length: 3000\r\n\r\n{}",
                "x".repeat(3000)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let answer = posted_to(long).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.body.unwrap().len(), MAX_ERROR_BODY);

        // A body that breaks off: still the status, with what came of it.
        let answer = posted_to(b"HTTP/1.1 401 No\r\ncontent-length: 100\r\n\r\nnot allowed").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.body.unwrap(), Bytes::from_static(b"not allowed"));
    }

    #[tokio::test]
    async fn an_answer_longer_than_the_limit_is_not_kept() {
        let answer = posted_to(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n{").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.is_none());
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_timeout_and_a_refused_connection_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let post = direct(silent.as_str(), None).unwrap();
        let outcome = post
            .post(Bytes::from_static(b"{}"), Duration::from_millis(200))
            .await;
        assert!(matches!(outcome, Err(NoAnswer::Timeout)), "{outcome:?}");

        let closed = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        let post = direct(closed.as_str(), None).unwrap();
        match post
            .post(Bytes::from_static(b"{}"), Duration::from_secs(5))
            .await
        {
            Err(NoAnswer::Transport(message)) => {
                assert!(message.contains("refused"), "{message}");
            }
            other => panic!("{:?}", other.map(|a| a.status)),
        }
    }
}
