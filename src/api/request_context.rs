//! A tower layer around every gRPC call: takes the caller's `x-request-id` or
//! makes a UUID, opens the request's tracing span (request_id, method, and
//! empty task_id / workflow_id / execution_id fields that handlers fill in),
//! and stamps `x-request-id`, `x-duration-ms` and `x-api-version` on the
//! response headers (also on errors, which tonic sends as trailers-only
//! responses whose status rides in the headers).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::pb::API_VERSION;

/// Header carrying the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Response header: server-side handling time in milliseconds.
pub const DURATION_HEADER: &str = "x-duration-ms";
/// Response header: the API version.
pub const API_VERSION_HEADER: &str = "x-api-version";

/// Longest caller-supplied request id kept; longer or non-visible-ASCII ids
/// are replaced by a fresh UUID.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id of the current call, stored in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Layer that adds [`RequestContextService`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContextLayer;

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    /// The wrapped service.
    inner: S,
}

fn request_id_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(crate::model::new_id)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let request_id = request_id_of(&req);
        let span = tracing::info_span!(
            "grpc",
            request_id = %request_id,
            method = %req.uri().path(),
            task_id = tracing::field::Empty,
            workflow_id = tracing::field::Empty,
            execution_id = tracing::field::Empty,
        );
        req.extensions_mut().insert(RequestId(request_id.clone()));
        // Take the service that was driven to readiness; leave a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let result = inner.call(req).await;
                result.map(|mut response| {
                    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                    let headers = response.headers_mut();
                    if let Ok(value) = HeaderValue::from_str(&request_id) {
                        headers.insert(REQUEST_ID_HEADER, value);
                    }
                    if let Ok(value) = HeaderValue::from_str(&format!("{elapsed_ms:.3}")) {
                        headers.insert(DURATION_HEADER, value);
                    }
                    headers.insert(API_VERSION_HEADER, HeaderValue::from_static(API_VERSION));
                    tracing::debug!(duration_ms = elapsed_ms, "call handled");
                    response
                })
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req_with(id: Option<&str>) -> Request<()> {
        let mut builder = Request::builder();
        if let Some(id) = id {
            builder = builder.header(REQUEST_ID_HEADER, id);
        }
        builder.body(()).expect("static request is valid")
    }

    #[test]
    fn caller_request_id_is_kept() {
        assert_eq!(request_id_of(&req_with(Some("abc-123"))), "abc-123");
    }

    #[test]
    fn missing_or_bad_request_id_gets_a_uuid() {
        for bad in [
            None,
            Some(""),
            Some("has space"),
            Some(&"x".repeat(200)[..]),
        ] {
            let id = request_id_of(&req_with(bad));
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad:?} -> {id}");
        }
    }
}
