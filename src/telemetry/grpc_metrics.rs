//! gRPC server metrics with the go-grpc-prometheus names and labels, as a
//! tower layer around the tonic server: `grpc_server_started_total`,
//! `grpc_server_handled_total` (with `grpc_code`),
//! `grpc_server_handling_seconds`, `grpc_server_msg_received_total` and
//! `grpc_server_msg_sent_total`, each labelled `grpc_type`, `grpc_service`
//! and `grpc_method`.
//!
//! Streaming is covered by wrapping the bodies: messages are counted from
//! the gRPC length-prefixed framing as they pass (so a data frame holding
//! several messages, or a message split over several frames, counts right),
//! and a call is "handled" when its status is known: from the headers of a
//! trailers-only response, else from the trailers at the end of the stream.
//! A call whose response or stream is dropped before a status is counted as
//! `Canceled`, like a Go handler that sees its context cancelled.
//!
//! Each method's `grpc_type` comes from the served descriptor sets (ours,
//! health, reflection), so new RPCs are covered without code here. Paths
//! that name no served method (a scanner, a typo) are not recorded: their
//! service and method names would be labels chosen by callers, an unbounded
//! set of series. The layer knows nothing of the handlers or the runtime.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use ::metrics::{Counter, Histogram, Label, SharedString, counter, histogram};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prost::Message as _;
use tower::{Layer, Service};

use super::metrics::{
    GRPC_SERVER_HANDLED_TOTAL, GRPC_SERVER_HANDLING_SECONDS, GRPC_SERVER_MSG_RECEIVED_TOTAL,
    GRPC_SERVER_MSG_SENT_TOTAL, GRPC_SERVER_STARTED_TOTAL,
};

/// The kind of an RPC, as go-grpc-prometheus spells it in `grpc_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStream,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl GrpcType {
    /// The type of a method from its descriptor's streaming flags.
    pub fn from_streaming(client_streaming: bool, server_streaming: bool) -> Self {
        match (client_streaming, server_streaming) {
            (false, false) => Self::Unary,
            (true, false) => Self::ClientStream,
            (false, true) => Self::ServerStream,
            (true, true) => Self::BidiStream,
        }
    }

    /// The `grpc_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }
}

/// The `grpc_code` label value of a numeric status code: Go's
/// `codes.Code.String()`, so dashboards written for go-grpc-prometheus match.
/// Codes outside the gRPC range count as `Unknown` (bounded labels).
pub fn code_label(code: i32) -> &'static str {
    CODE_LABELS[code_index(code)]
}

/// The `grpc_code` label of each status code, by its number.
const CODE_LABELS: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The index in [`CODE_LABELS`] of a numeric status code (`Unknown` outside the range).
fn code_index(code: i32) -> usize {
    usize::try_from(code)
        .ok()
        .filter(|&i| i < CODE_LABELS.len())
        .unwrap_or(UNKNOWN)
}

/// [`CODE_LABELS`] index of `Canceled`.
const CANCELED: usize = 1;
/// [`CODE_LABELS`] index of `Unknown`.
const UNKNOWN: usize = 2;

/// The `grpc_code` of `grpc-status` in `headers` (headers of a
/// trailers-only response, or trailers); `None` when absent.
fn status_code(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .map_or(UNKNOWN, code_index),
    )
}

/// What the metrics know about one served method.
#[derive(Debug)]
struct MethodInfo {
    /// Its kind.
    grpc_type: GrpcType,
    /// `grpc_type`, `grpc_service`, `grpc_method`: shared by every metric
    /// of the method (cheap to clone: the values are `Arc`ed or static).
    labels: Vec<Label>,
    /// The method's series, registered at its first call with the recorder in effect then
    /// (the process-global one in the server; a test's local one in tests): a registration
    /// builds and hashes the key, so a call that looked each one up paid that four or five
    /// times.
    series: MethodSeries,
}

impl MethodInfo {
    fn new(grpc_type: GrpcType, labels: Vec<Label>) -> Self {
        Self {
            grpc_type,
            labels,
            series: MethodSeries::default(),
        }
    }

    /// `grpc_server_started_total`.
    fn started(&self) -> &Counter {
        self.series
            .started
            .get_or_init(|| counter!(GRPC_SERVER_STARTED_TOTAL, self.labels.iter()))
    }

    /// `grpc_server_msg_received_total`.
    fn received(&self) -> &Counter {
        self.series
            .received
            .get_or_init(|| counter!(GRPC_SERVER_MSG_RECEIVED_TOTAL, self.labels.iter()))
    }

    /// `grpc_server_msg_sent_total`.
    fn sent(&self) -> &Counter {
        self.series
            .sent
            .get_or_init(|| counter!(GRPC_SERVER_MSG_SENT_TOTAL, self.labels.iter()))
    }

    /// `grpc_server_handling_seconds`.
    fn handling(&self) -> &Histogram {
        self.series
            .handling
            .get_or_init(|| histogram!(GRPC_SERVER_HANDLING_SECONDS, self.labels.iter()))
    }

    /// `grpc_server_handled_total{grpc_code}` of the code at `code` in [`CODE_LABELS`].
    fn handled(&self, code: usize) -> &Counter {
        let code = code.min(CODE_LABELS.len() - 1);
        self.series.handled[code].get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.push(Label::from_static_parts("grpc_code", CODE_LABELS[code]));
            counter!(GRPC_SERVER_HANDLED_TOTAL, labels)
        })
    }
}

/// The series of one method, each registered at its first use (a series, once registered, is
/// rendered, as 0 if never counted: a method that never saw a code shows none for it).
#[derive(Debug, Default)]
struct MethodSeries {
    /// `grpc_server_started_total`.
    started: OnceLock<Counter>,
    /// `grpc_server_msg_received_total`.
    received: OnceLock<Counter>,
    /// `grpc_server_msg_sent_total`.
    sent: OnceLock<Counter>,
    /// `grpc_server_handling_seconds`.
    handling: OnceLock<Histogram>,
    /// `grpc_server_handled_total` by code.
    handled: [OnceLock<Counter>; CODE_LABELS.len()],
}

/// The parts of `google.protobuf.FileDescriptorSet` that name services and
/// their methods, with the descriptor's field numbers. Decoding only these
/// skips the message types (most of a set's bytes): prost passes over fields a
/// message does not declare, so start-up does not build and drop every
/// descriptor of the API.
mod services {
    /// `FileDescriptorSet`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileSet {
        /// `file`.
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<File>,
    }

    /// `FileDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct File {
        /// `package`.
        #[prost(string, tag = "2")]
        pub package: String,
        /// `service`.
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<Service>,
    }

    /// `ServiceDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Service {
        /// `name`.
        #[prost(string, tag = "1")]
        pub name: String,
        /// `method`.
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<Method>,
    }

    /// `MethodDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Method {
        /// `name`.
        #[prost(string, tag = "1")]
        pub name: String,
        /// `client_streaming`.
        #[prost(bool, tag = "5")]
        pub client_streaming: bool,
        /// `server_streaming`.
        #[prost(bool, tag = "6")]
        pub server_streaming: bool,
    }
}

/// The served methods by request path (`/package.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct GrpcMethods {
    /// Path -> method.
    by_path: Arc<HashMap<String, Arc<MethodInfo>>>,
}

impl GrpcMethods {
    /// Every method of every service in the encoded `FileDescriptorSet`s.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut by_path = HashMap::new();
        for encoded in sets {
            let set = services::FileSet::decode(*encoded)?;
            for file in &set.file {
                let package = file.package.as_str();
                for service in &file.service {
                    let full_service = if package.is_empty() {
                        service.name.clone()
                    } else {
                        format!("{package}.{}", service.name)
                    };
                    let service_label = SharedString::from(Arc::<str>::from(full_service.as_str()));
                    for method in &service.method {
                        let grpc_type = GrpcType::from_streaming(
                            method.client_streaming,
                            method.server_streaming,
                        );
                        let labels = vec![
                            Label::from_static_parts("grpc_type", grpc_type.as_str()),
                            Label::new("grpc_service", service_label.clone()),
                            Label::new(
                                "grpc_method",
                                SharedString::from(Arc::<str>::from(method.name.as_str())),
                            ),
                        ];
                        by_path.insert(
                            format!("/{full_service}/{}", method.name),
                            Arc::new(MethodInfo::new(grpc_type, labels)),
                        );
                    }
                }
            }
        }
        Ok(Self {
            by_path: Arc::new(by_path),
        })
    }

    /// The methods this server serves: the v1 API, health, and reflection
    /// v1 and v1alpha. A set that fails to decode (a build bug, checked by
    /// the tests) is logged and its methods go unrecorded.
    pub fn served() -> Self {
        let sets: [(&str, &[u8]); 4] = [
            ("api", crate::pb::FILE_DESCRIPTOR_SET),
            ("health", tonic_health::pb::FILE_DESCRIPTOR_SET),
            (
                "reflection v1",
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            ),
            (
                "reflection v1alpha",
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ),
        ];
        let mut by_path = HashMap::new();
        for (name, set) in sets {
            match Self::from_descriptor_sets(&[set]) {
                Ok(methods) => by_path.extend(
                    methods
                        .by_path
                        .iter()
                        .map(|(path, info)| (path.clone(), Arc::clone(info))),
                ),
                Err(error) => {
                    tracing::error!(set = name, %error, "cannot decode a descriptor set; its gRPC methods are not measured");
                }
            }
        }
        Self {
            by_path: Arc::new(by_path),
        }
    }

    /// The kind of the method at `path`, if served.
    pub fn grpc_type(&self, path: &str) -> Option<GrpcType> {
        self.by_path.get(path).map(|info| info.grpc_type)
    }

    fn get(&self, path: &str) -> Option<Arc<MethodInfo>> {
        self.by_path.get(path).cloned()
    }
}

/// Layer that adds [`GrpcMetricsService`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    /// The methods measured.
    methods: GrpcMethods,
}

impl GrpcMetricsLayer {
    /// A layer measuring every method this server serves.
    pub fn new() -> Self {
        Self::with_methods(GrpcMethods::served())
    }

    /// A layer measuring `methods`.
    pub fn with_methods(methods: GrpcMethods) -> Self {
        Self { methods }
    }
}

impl Default for GrpcMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            methods: self.methods.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    /// The wrapped service.
    inner: S,
    /// The methods measured.
    methods: GrpcMethods,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcMetricsService<S>
where
    S: Service<Request<CountedBody<ReqBody>>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = self.methods.get(req.uri().path());
        let req = match &method {
            Some(info) => {
                info.started().increment(1);
                req.map(|body| CountedBody::new(body, Some(Counting::received(info))))
            }
            None => req.map(|body| CountedBody::new(body, None)),
        };
        let mut outcome = method.map(|info| Outcome {
            info,
            started: Instant::now(),
            finished: false,
        });
        let future = self.inner.call(req);
        Box::pin(async move {
            // Dropped before a response (the client went away): `Canceled`.
            let response = match future.await {
                Ok(response) => response,
                Err(error) => {
                    if let Some(outcome) = &mut outcome {
                        outcome.finish(UNKNOWN);
                    }
                    return Err(error);
                }
            };
            let Some(mut outcome) = outcome else {
                return Ok(response.map(|body| CountedBody::new(body, None)));
            };
            if let Some(code) = status_code(response.headers()) {
                // Trailers-only: the status is in the headers, the body is empty.
                outcome.finish(code);
            }
            Ok(response.map(|body| {
                if body.is_end_stream() {
                    // An ended body may never be polled; no status means a broken call.
                    outcome.finish(UNKNOWN);
                }
                CountedBody::new(body, Some(Counting::sent(outcome)))
            }))
        })
    }
}

/// The pending `handled` record of one call.
#[derive(Debug)]
struct Outcome {
    /// The method.
    info: Arc<MethodInfo>,
    /// When the call arrived.
    started: Instant,
    /// Whether `handled` was recorded.
    finished: bool,
}

impl Outcome {
    /// Records `handled{grpc_code=code}` and the handling time, once.
    fn finish(&mut self, code: usize) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.info.handled(code).increment(1);
        self.info
            .handling()
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.finish(CANCELED);
    }
}

/// Counts gRPC messages in a byte stream from their 5-byte prefixes (a
/// compression flag and a big-endian u32 length), across any split into
/// chunks.
#[derive(Debug, Default, Clone)]
pub struct MessageCounter {
    /// Prefix bytes of the next message seen so far (0..=4; at 5 a message starts).
    prefix_seen: usize,
    /// The length bytes seen so far.
    length: [u8; 4],
    /// Payload bytes of the current message still to skip.
    remaining: u64,
}

impl MessageCounter {
    /// Feeds the next chunk; returns how many messages started in it.
    pub fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut started = 0;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip =
                    usize::try_from(self.remaining).map_or(chunk.len(), |r| r.min(chunk.len()));
                chunk = &chunk[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            // The flag byte (index 0) is skipped; bytes 1..=4 are the length.
            if self.prefix_seen > 0 {
                self.length[self.prefix_seen - 1] = chunk[0];
            }
            self.prefix_seen += 1;
            chunk = &chunk[1..];
            if self.prefix_seen == 5 {
                started += 1;
                self.prefix_seen = 0;
                self.remaining = u64::from(u32::from_be_bytes(self.length));
            }
        }
        started
    }
}

/// Which way a body's messages go, and what ends the call.
#[derive(Debug)]
enum Direction {
    /// A request body: messages received.
    Received(Arc<MethodInfo>),
    /// A response body: messages sent; its trailers or its end finish the call.
    Sent(Outcome),
}

/// The measuring state of a [`CountedBody`].
#[derive(Debug)]
pub struct Counting {
    /// Message framing.
    messages: MessageCounter,
    /// Which way.
    direction: Direction,
}

impl Counting {
    fn received(info: &Arc<MethodInfo>) -> Self {
        Self {
            messages: MessageCounter::default(),
            direction: Direction::Received(Arc::clone(info)),
        }
    }

    fn sent(outcome: Outcome) -> Self {
        Self {
            messages: MessageCounter::default(),
            direction: Direction::Sent(outcome),
        }
    }

    fn on_data(&mut self, data: &[u8]) {
        let n = self.messages.feed(data);
        if n == 0 {
            return;
        }
        let info = match &self.direction {
            Direction::Received(info) => info,
            Direction::Sent(outcome) => &outcome.info,
        };
        match self.direction {
            Direction::Received(_) => info.received().increment(n),
            Direction::Sent(_) => info.sent().increment(n),
        }
    }

    fn on_end(&mut self, code: usize) {
        if let Direction::Sent(outcome) = &mut self.direction {
            outcome.finish(code);
        }
    }
}

pin_project_lite::pin_project! {
    /// A request or response body whose gRPC messages are counted; a
    /// response body also records the call's status when it ends.
    #[derive(Debug)]
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        counting: Option<Counting>,
    }
}

impl<B> CountedBody<B> {
    fn new(inner: B, counting: Option<Counting>) -> Self {
        Self { inner, counting }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        if let Some(counting) = this.counting {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        counting.on_data(data);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        counting.on_end(status_code(trailers).unwrap_or(UNKNOWN));
                    }
                }
                Some(Err(_)) | None => counting.on_end(UNKNOWN),
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt as _, StreamBody};
    use proptest::prelude::*;
    use tower::ServiceExt as _;

    use super::*;
    use crate::telemetry::metrics::tests::{parse, recorder, value};

    const TASK_SERVICE: &str = "comfyreality.runtime.v1.TaskService";
    const EXECUTION_SERVICE: &str = "comfyreality.runtime.v1.ExecutionService";

    #[test]
    fn grpc_type_follows_the_streaming_flags() {
        assert_eq!(GrpcType::from_streaming(false, false).as_str(), "unary");
        assert_eq!(
            GrpcType::from_streaming(true, false).as_str(),
            "client_stream"
        );
        assert_eq!(
            GrpcType::from_streaming(false, true).as_str(),
            "server_stream"
        );
        assert_eq!(GrpcType::from_streaming(true, true).as_str(), "bidi_stream");
    }

    #[test]
    fn served_methods_are_typed_from_their_descriptors() {
        for (name, set) in [
            ("api", crate::pb::FILE_DESCRIPTOR_SET),
            ("health", tonic_health::pb::FILE_DESCRIPTOR_SET),
            (
                "reflection v1",
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            ),
            (
                "reflection v1alpha",
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ),
        ] {
            let methods =
                GrpcMethods::from_descriptor_sets(&[set]).unwrap_or_else(|e| panic!("{name}: {e}"));
            // The partial decode finds what the full descriptor says, method by method.
            let full = prost_types::FileDescriptorSet::decode(set).expect(name);
            let mut described = Vec::new();
            for file in &full.file {
                for service in &file.service {
                    for method in &service.method {
                        let path =
                            format!("/{}.{}/{}", file.package(), service.name(), method.name());
                        let grpc_type = GrpcType::from_streaming(
                            method.client_streaming(),
                            method.server_streaming(),
                        );
                        assert_eq!(methods.grpc_type(&path), Some(grpc_type), "{name}: {path}");
                        described.push(path);
                    }
                }
            }
            assert!(!described.is_empty(), "{name}: no methods");
            assert_eq!(methods.by_path.len(), described.len(), "{name}");
        }
        let methods = GrpcMethods::served();
        let cases = [
            (format!("/{TASK_SERVICE}/CreateTask"), Some(GrpcType::Unary)),
            (format!("/{TASK_SERVICE}/GetTask"), Some(GrpcType::Unary)),
            (
                format!("/{EXECUTION_SERVICE}/GetArtifact"),
                Some(GrpcType::ServerStream),
            ),
            (
                "/grpc.health.v1.Health/Check".to_owned(),
                Some(GrpcType::Unary),
            ),
            (
                "/grpc.health.v1.Health/Watch".to_owned(),
                Some(GrpcType::ServerStream),
            ),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned(),
                Some(GrpcType::BidiStream),
            ),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_owned(),
                Some(GrpcType::BidiStream),
            ),
            (format!("/{TASK_SERVICE}/NoSuchMethod"), None),
            ("/".to_owned(), None),
        ];
        for (path, want) in cases {
            assert_eq!(methods.grpc_type(&path), want, "{path}");
        }
    }

    #[test]
    fn code_labels_are_go_spellings() {
        assert_eq!(code_label(0), "OK");
        assert_eq!(code_label(1), "Canceled");
        assert_eq!(code_label(5), "NotFound");
        assert_eq!(code_label(16), "Unauthenticated");
        assert_eq!(code_label(17), "Unknown");
        assert_eq!(code_label(-1), "Unknown");
        // Every tonic code maps to the name Go gives it (tonic spells some differently).
        for n in 0..=16 {
            let go = code_label(n);
            let tonic = format!("{:?}", tonic::Code::from_i32(n));
            let normalised = match tonic.as_str() {
                "Ok" => "OK".to_owned(),
                "Cancelled" => "Canceled".to_owned(),
                other => other.to_owned(),
            };
            assert_eq!(go, normalised, "code {n}");
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend(u32::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend(payload);
        out
    }

    proptest! {
        #[test]
        fn messages_are_counted_across_any_split(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut counter = MessageCounter::default();
            let total: u64 = points.windows(2).map(|w| counter.feed(&stream[w[0]..w[1]])).sum();
            prop_assert_eq!(total, payloads.len() as u64);
        }
    }

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    /// A response body of `messages` data frames and a `grpc-status` trailer.
    fn streaming_response(messages: &[&[u8]], status: i32) -> Response<TestBody> {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = messages
            .iter()
            .map(|m| Ok(Frame::data(Bytes::from(frame(m)))))
            .collect();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", status.to_string().parse().unwrap());
        frames.push(Ok(Frame::trailers(trailers)));
        Response::new(StreamBody::new(tokio_stream::iter(frames)).boxed_unsync())
    }

    /// Runs one call through the layer with a thread-local recorder and
    /// returns the rendered metrics.
    fn run_call(
        path: &str,
        request_messages: &[&[u8]],
        respond: impl FnOnce() -> Response<TestBody> + Send + Clone + 'static,
        drain_response: bool,
    ) -> String {
        let recorder = recorder();
        let handle = recorder.handle();
        let request_bytes: Vec<u8> = request_messages.iter().flat_map(|m| frame(m)).collect();
        let request = Request::builder()
            .uri(path)
            .body(http_body_util::Full::new(Bytes::from(request_bytes)))
            .unwrap();
        let inner = tower::service_fn(
            move |req: Request<CountedBody<http_body_util::Full<Bytes>>>| {
                let respond = respond.clone();
                async move {
                    // Like tonic, read the whole request before answering.
                    req.into_body().collect().await.unwrap();
                    Ok::<_, Infallible>(respond())
                }
            },
        );
        let service = GrpcMetricsLayer::new().layer(inner);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let response = service.oneshot(request).await.unwrap();
                if drain_response {
                    response.into_body().collect().await.unwrap();
                } else {
                    drop(response);
                }
            });
        });
        handle.render()
    }

    #[test]
    fn a_server_stream_counts_each_message_and_is_handled_at_its_end() {
        let path = format!("/{EXECUTION_SERVICE}/GetArtifact");
        let text = run_call(
            &path,
            &[b"request"],
            || streaming_response(&[b"one", b"two", b"", b"four"], 0),
            true,
        );
        let samples = parse(&text);
        let labels = [
            ("grpc_type", "server_stream"),
            ("grpc_service", EXECUTION_SERVICE),
            ("grpc_method", "GetArtifact"),
        ];
        let with_code = [labels[0], labels[1], labels[2], ("grpc_code", "OK")];
        assert_eq!(
            value(&samples, GRPC_SERVER_STARTED_TOTAL, &labels),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&samples, GRPC_SERVER_MSG_RECEIVED_TOTAL, &labels),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&samples, GRPC_SERVER_MSG_SENT_TOTAL, &labels),
            Some(4.0),
            "{text}"
        );
        assert_eq!(
            value(&samples, GRPC_SERVER_HANDLED_TOTAL, &with_code),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&samples, "grpc_server_handling_seconds_count", &labels),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn a_status_in_the_trailers_is_the_handled_code() {
        let path = format!("/{EXECUTION_SERVICE}/GetArtifact");
        let text = run_call(&path, &[b"r"], || streaming_response(&[b"one"], 8), true);
        let samples = parse(&text);
        let labels = [
            ("grpc_type", "server_stream"),
            ("grpc_service", EXECUTION_SERVICE),
            ("grpc_method", "GetArtifact"),
            ("grpc_code", "ResourceExhausted"),
        ];
        assert_eq!(
            value(&samples, GRPC_SERVER_HANDLED_TOTAL, &labels),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn a_trailers_only_error_is_handled_from_the_headers() {
        let path = format!("/{TASK_SERVICE}/GetTask");
        let text = run_call(
            &path,
            &[b"id"],
            || {
                let mut response = Response::new(
                    http_body_util::Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                response
                    .headers_mut()
                    .insert("grpc-status", "5".parse().unwrap());
                response
            },
            false,
        );
        let samples = parse(&text);
        let labels = [
            ("grpc_type", "unary"),
            ("grpc_service", TASK_SERVICE),
            ("grpc_method", "GetTask"),
        ];
        let not_found = [labels[0], labels[1], labels[2], ("grpc_code", "NotFound")];
        assert_eq!(
            value(&samples, GRPC_SERVER_HANDLED_TOTAL, &not_found),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&samples, GRPC_SERVER_MSG_SENT_TOTAL, &labels),
            None,
            "{text}"
        );
        assert_eq!(
            value(&samples, GRPC_SERVER_MSG_RECEIVED_TOTAL, &labels),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn a_stream_dropped_before_its_status_is_canceled() {
        let path = format!("/{EXECUTION_SERVICE}/GetArtifact");
        let text = run_call(&path, &[b"r"], || streaming_response(&[b"one"], 0), false);
        let samples = parse(&text);
        let canceled = [
            ("grpc_type", "server_stream"),
            ("grpc_service", EXECUTION_SERVICE),
            ("grpc_method", "GetArtifact"),
            ("grpc_code", "Canceled"),
        ];
        assert_eq!(
            value(&samples, GRPC_SERVER_HANDLED_TOTAL, &canceled),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn unknown_paths_are_not_recorded() {
        let text = run_call(
            "/evil.Scanner/Probe",
            &[b"x"],
            || streaming_response(&[], 12),
            true,
        );
        assert!(!text.contains("evil"), "{text}");
        assert!(!text.contains(GRPC_SERVER_STARTED_TOTAL), "{text}");
    }
}
