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

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::pb::API_VERSION;

/// Header carrying the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Response header: server-side handling time in milliseconds.
pub const DURATION_HEADER: &str = "x-duration-ms";
/// Response header: the API version.
pub const API_VERSION_HEADER: &str = "x-api-version";

// The names as `HeaderName`s: a header inserted under a `&str` name that is not a standard
// one is copied into a name of its own on every insert.
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const DURATION: HeaderName = HeaderName::from_static(DURATION_HEADER);
const API_VERSION_NAME: HeaderName = HeaderName::from_static(API_VERSION_HEADER);

/// Longest caller-supplied request id kept; longer or non-visible-ASCII ids
/// are replaced by a fresh UUID.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id of the current call, stored in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id (visible ASCII).
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is kept or made (`request_id_of`).
        self.0.to_str().unwrap_or_default()
    }
}

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

/// The caller's request id when it is usable (shared with the request's
/// header, not copied), else a fresh UUID.
fn request_id_of<B>(req: &Request<B>) -> RequestId {
    let caller = req.headers().get(&REQUEST_ID).filter(|v| {
        let id = v.as_bytes().trim_ascii();
        !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(u8::is_ascii_graphic)
    });
    RequestId(match caller {
        // Surrounding whitespace is not part of the id.
        Some(value) if value.as_bytes().trim_ascii().len() == value.len() => value.clone(),
        Some(value) => HeaderValue::from_bytes(value.as_bytes().trim_ascii())
            .unwrap_or_else(|_| fresh_request_id()),
        None => fresh_request_id(),
    })
}

fn fresh_request_id() -> HeaderValue {
    // A UUID is visible ASCII; taken over without a copy.
    HeaderValue::try_from(crate::model::new_id())
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

/// `elapsed` in milliseconds with three decimals, e.g. `1.234`, truncated to the
/// microsecond: written from whole microseconds, as a float written with a fixed number
/// of decimals takes the formatter's exact, slow path.
fn duration_value(elapsed: std::time::Duration) -> HeaderValue {
    use std::io::Write as _;
    let micros = elapsed.as_micros();
    let mut text = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    // 48 bytes hold any u128 and the fraction.
    let _ = write!(cursor, "{}.{:03}", micros / 1000, micros % 1000);
    let written = usize::try_from(cursor.position()).unwrap_or(0);
    HeaderValue::from_bytes(&text[..written]).unwrap_or_else(|_| HeaderValue::from_static("0.000"))
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
            request_id = %request_id.as_str(),
            method = %req.uri().path(),
            task_id = tracing::field::Empty,
            workflow_id = tracing::field::Empty,
            execution_id = tracing::field::Empty,
        );
        let response_id = request_id.0.clone();
        req.extensions_mut().insert(request_id);
        // Take the service that was driven to readiness; leave a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let result = inner.call(req).await;
                result.map(|mut response| {
                    let elapsed = started.elapsed();
                    let headers = response.headers_mut();
                    headers.insert(REQUEST_ID, response_id);
                    headers.insert(DURATION, duration_value(elapsed));
                    headers.insert(API_VERSION_NAME, HeaderValue::from_static(API_VERSION));
                    tracing::debug!(duration_ms = elapsed.as_secs_f64() * 1000.0, "call handled");
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
        assert_eq!(
            request_id_of(&req_with(Some("abc-123"))).as_str(),
            "abc-123"
        );
        assert_eq!(
            request_id_of(&req_with(Some(" abc-123\t"))).as_str(),
            "abc-123"
        );
    }

    #[test]
    fn the_duration_is_milliseconds_with_three_decimals() {
        use std::time::Duration;
        for (elapsed, text) in [
            (Duration::ZERO, "0.000"),
            (Duration::from_nanos(999), "0.000"),
            (Duration::from_micros(7), "0.007"),
            (Duration::from_micros(1_234), "1.234"),
            (Duration::from_micros(12_345_678), "12345.678"),
            (Duration::MAX, "18446744073709551615999.999"),
        ] {
            assert_eq!(
                duration_value(elapsed).to_str().ok(),
                Some(text),
                "{elapsed:?}"
            );
        }
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
            let id = id.as_str();
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{bad:?} -> {id}");
        }
    }
}
