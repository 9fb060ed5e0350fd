//! The fake's HTTP surface: every ComfyUI route under `/x` and `/api/x`
//! (jobs only as `/api/jobs…`), the WebSocket upgrade, the `/__fake/…`
//! control routes, and the connection layer that injects faults (refused
//! and cut connections, slow and failing answers).
//!
//! Handlers stay thin: parse like aiohttp (a body that is not JSON is a 500
//! in `text/plain`), change the queue under its lock, answer with the
//! captured shapes and content types. Validation, execution and WebSocket
//! delivery live in their own modules.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::executor::now_ms;
use super::faults::{FaultState, FaultUpdate};
use super::files;
use super::hub;
use super::jobs;
use super::nodes::catalog;
use super::pyjson::{self, object};
use super::queue::{Priority, QueueItem};
use super::shared::{Shared, features};
use super::validate::{self, Rejected};

/// aiohttp's `client_max_size` with ComfyUI's default `--max-upload-size 100`.
const MAX_BODY: usize = 100 * 1024 * 1024;
/// The biggest WebSocket message a client may send.
const MAX_WS_MESSAGE: usize = 1024 * 1024;
/// The request prefix of the control routes, which faults never block.
const CONTROL_PREFIX: &[u8] = b"POST /__fake/";
/// How long a connection accepted while refusing may take to show it is a
/// control request.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(1);
/// `extra_data` keys ComfyUI keeps out of `/queue` and the history.
const SENSITIVE_KEYS: [&str; 2] = ["auth_token_comfy_org", "api_key_comfy_org"];

/// The model folders of the captured server (`GET /models`).
const MODEL_FOLDERS: [&str; 27] = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "datasets",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "background_removal",
    "frame_interpolation",
    "geometry_estimation",
    "optical_flow",
    "detection",
];

// ---------------------------------------------------------------------------
// Connections

/// Per-connection state the fault layer can act on.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Set to cut the connection: reads and writes fail from then on.
    killed: AtomicBool,
}

/// The connection handle handlers receive as `ConnectInfo`.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle(Arc<ConnState>);

impl ConnHandle {
    /// Cuts the connection: the answer being written is lost.
    fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, FakeListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, FakeListener>) -> Self {
        ConnHandle(stream.io().state.clone())
    }
}

/// A TCP connection that can be cut from a handler.
#[derive(Debug)]
pub(crate) struct FakeIo {
    /// The socket.
    stream: TcpStream,
    /// The cut switch.
    state: Arc<ConnState>,
}

impl FakeIo {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            state: Arc::new(ConnState::default()),
        }
    }

    fn cut() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            "cut by the fake's fault injection",
        )
    }
}

impl AsyncRead for FakeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for FakeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(Self::cut()));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The listener: while connections are refused it closes new ones at once,
/// except those whose first bytes are a control request.
#[derive(Debug)]
pub(crate) struct FakeListener {
    /// The bound socket.
    inner: TcpListener,
    /// The fault switches.
    faults: Arc<FaultState>,
    /// Screened control connections come back through here.
    admitted_tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    /// See `admitted_tx`.
    admitted_rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    /// Tracks the screening tasks.
    tracker: TaskTracker,
    /// Stops screening on shutdown.
    shutdown: CancellationToken,
}

impl FakeListener {
    /// Wraps a bound listener.
    pub(crate) fn new(
        inner: TcpListener,
        faults: Arc<FaultState>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (admitted_tx, admitted_rx) = mpsc::channel(64);
        Self {
            inner,
            faults,
            admitted_tx,
            admitted_rx,
            tracker,
            shutdown,
        }
    }
}

impl Listener for FakeListener {
    type Io = FakeIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                admitted = self.admitted_rx.recv() => {
                    if let Some((stream, addr)) = admitted {
                        return (FakeIo::new(stream), addr);
                    }
                }
                accepted = self.inner.accept() => match accepted {
                    Ok((stream, addr)) => {
                        // aiohttp sets TCP_NODELAY on every connection; without
                        // it, Nagle and delayed ACKs hold small WebSocket frames
                        // for ~40 ms.
                        let _ = stream.set_nodelay(true);
                        if !self.faults.refuse_connections() {
                            return (FakeIo::new(stream), addr);
                        }
                        let admitted = self.admitted_tx.clone();
                        let shutdown = self.shutdown.clone();
                        self.tracker.spawn(async move {
                            tokio::select! {
                                keep = screen(&stream) => if keep {
                                    let _ = admitted.send((stream, addr)).await;
                                },
                                _ = shutdown.cancelled() => {}
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "fake comfyui: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Whether a connection accepted while refusing starts with a control
/// request (peeked, not consumed).
async fn screen(stream: &TcpStream) -> bool {
    let check = async {
        let mut buf = [0u8; CONTROL_PREFIX.len()];
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if buf[..n] != CONTROL_PREFIX[..n] {
                return false;
            }
            if n == CONTROL_PREFIX.len() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(SCREEN_TIMEOUT, check)
        .await
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Responses

/// A JSON answer as aiohttp's `json_response` writes it.
fn json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        pyjson::dumps(value),
    )
        .into_response()
}

/// `200` with a JSON body.
fn ok_json(value: &Value) -> Response {
    json(StatusCode::OK, value)
}

/// `web.Response(status=200)`: empty, no content type.
fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

/// aiohttp's answer to an unhandled exception.
pub(crate) fn internal_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

/// An empty answer with only a status.
fn status_only(status: StatusCode) -> Response {
    status.into_response()
}

/// The static route's answer to a GET it has no file for.
fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        Body::empty(),
    )
        .into_response()
}

/// aiohttp's 405.
fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "405: Method Not Allowed",
    )
        .into_response()
}

/// `{"error": message}` with `status`.
fn json_error(status: StatusCode, message: &str) -> Response {
    json(
        status,
        &object([("error", Value::String(message.to_owned()))]),
    )
}

/// `await request.json()`: `None` where aiohttp would raise.
fn parse_body(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    let mut value: Value = serde_json::from_str(text).ok()?;
    pyjson::pythonize(&mut value);
    Some(value)
}

/// The decoded query pairs, in order.
fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// The first value of `key`, like aiohttp's `query[key]`.
fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Python's `key in value`, or `None` where Python raises `TypeError`.
fn py_contains(value: &Value, key: &str) -> Option<bool> {
    match value {
        Value::Object(map) => Some(map.contains_key(key)),
        Value::Array(items) => Some(items.iter().any(|i| i.as_str() == Some(key))),
        Value::String(text) => Some(text.contains(key)),
        _ => None,
    }
}

/// Python's iteration over a value, or `None` where it raises.
fn py_iter(value: &Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) => Some(items.clone()),
        Value::Object(map) => Some(map.keys().cloned().map(Value::String).collect()),
        Value::String(text) => Some(text.chars().map(|c| Value::String(c.to_string())).collect()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Router

/// Builds the whole application.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let comfy = comfy_routes();
    let main = Router::new()
        .merge(comfy.clone())
        .nest("/api", comfy)
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(shared.clone(), fault_layer));
    let control = Router::new()
        .route("/__fake/faults", get(get_faults).post(post_faults))
        .route("/__fake/restart", post(post_restart));
    main.merge(control)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// The ComfyUI routes, mounted at `/` and again at `/api`.
fn comfy_routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/embeddings", get(embeddings))
        .route("/models", get(models))
        .route("/models/{folder}", get(models_in))
        .route("/view", get(view))
        .route("/system_stats", get(system_stats))
        .route("/features", get(get_features))
        .route("/prompt", get(get_prompt).post(post_prompt))
        .route("/object_info", get(object_info_all))
        .route("/object_info/{node_class}", get(object_info_one))
        .route("/api/jobs", get(list_jobs))
        .route(
            "/api/jobs/cancel",
            get(get_job_named_cancel).post(cancel_jobs),
        )
        .route("/api/jobs/{job_id}", get(get_job))
        .route("/api/jobs/{job_id}/cancel", post(cancel_job))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{prompt_id}", get(get_history_one))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/interrupt", post(post_interrupt))
        .route("/free", post(post_free))
        .route("/upload/image", post(upload_image))
        .method_not_allowed_fallback(wrong_method)
}

/// Unknown paths: GET/HEAD reach aiohttp's static route (404), other
/// methods get 405.
async fn fallback(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        not_found()
    } else {
        method_not_allowed()
    }
}

/// A known path with another method: a GET falls through to the static
/// route (404), anything else is a 405.
async fn wrong_method(method: Method) -> Response {
    fallback(method).await
}

/// Applies the HTTP faults to every non-control route.
async fn fault_layer(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if shared.faults.refuse_connections() {
        if let Some(ConnectInfo(conn)) = request.extensions().get::<ConnectInfo<ConnHandle>>() {
            conn.kill();
        }
        return status_only(StatusCode::SERVICE_UNAVAILABLE);
    }
    let response = if shared.faults.http_500() {
        internal_error()
    } else {
        next.run(request).await
    };
    if let Some(delay) = shared.faults.slow() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
    response
}

// ---------------------------------------------------------------------------
// Control routes

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    ok_json(&shared.faults.snapshot())
}

async fn post_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let update: FaultUpdate = if body.iter().all(u8::is_ascii_whitespace) {
        FaultUpdate::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(update) => update,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid fault update: {e}"),
                );
            }
        }
    };
    shared.faults.apply(&update);
    ok_json(&shared.faults.snapshot())
}

async fn post_restart(State(shared): State<Arc<Shared>>) -> Response {
    shared.restart().await;
    ok_empty()
}

// ---------------------------------------------------------------------------
// WebSocket

async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    conn: Option<Extension<ConnectInfo<ConnHandle>>>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Subscribe before checking the switch, so a drop that lands between
    // this check and the upgrade still closes the socket.
    let drops = shared.faults.drop_signal();
    if shared.faults.drop_websockets() {
        if let Some(Extension(ConnectInfo(conn))) = conn {
            conn.kill();
        }
        return status_only(StatusCode::SERVICE_UNAVAILABLE);
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                "400: No WebSocket UPGRADE hdr: None\n Can \"Upgrade\" only to \"WebSocket\".",
            )
                .into_response();
        }
    };
    let pairs = query_pairs(query.as_deref());
    let sid = match first(&pairs, "clientId") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => uuid::Uuid::new_v4().simple().to_string(),
    };
    let tracker = shared.tracker.clone();
    upgrade
        .max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| {
            let remaining = shared.lock().remaining();
            let registration = shared.hub.register(sid, remaining);
            tracker.track_future(hub::run_socket(
                shared.hub.clone(),
                socket,
                registration,
                drops,
                shared.shutdown.clone(),
            ))
        })
}

// ---------------------------------------------------------------------------
// Simple routes

async fn embeddings() -> Response {
    ok_json(&Value::Array(Vec::new()))
}

async fn models() -> Response {
    ok_json(&Value::Array(
        MODEL_FOLDERS
            .iter()
            .map(|f| Value::String((*f).to_owned()))
            .collect(),
    ))
}

async fn models_in(Path(folder): Path<String>) -> Response {
    if MODEL_FOLDERS.contains(&folder.as_str()) {
        ok_json(&Value::Array(Vec::new()))
    } else {
        status_only(StatusCode::NOT_FOUND)
    }
}

async fn get_features() -> Response {
    ok_json(&features())
}

async fn get_prompt(State(shared): State<Arc<Shared>>) -> Response {
    let info = shared.lock().queue_info();
    ok_json(&info)
}

async fn system_stats(State(shared): State<Arc<Shared>>) -> Response {
    let package = |name: &str, version: &str| {
        object([
            ("name", Value::String(name.to_owned())),
            ("installed", Value::String(version.to_owned())),
            ("required", Value::String(version.to_owned())),
        ])
    };
    let ram_total = Value::from(25_276_510_208u64);
    let ram_free = Value::from(23_749_312_512u64);
    let argv: Vec<Value> = [
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        &shared.port.to_string(),
        "--disable-auto-launch",
    ]
    .iter()
    .map(|a| Value::String((*a).to_owned()))
    .collect();
    let stats = object([
        (
            "system",
            object([
                ("os", Value::String("linux".to_owned())),
                ("ram_total", ram_total.clone()),
                ("ram_free", ram_free.clone()),
                (
                    "comfyui_version",
                    Value::String(shared.settings.version.clone()),
                ),
                (
                    "required_frontend_version",
                    Value::String("1.49.6".to_owned()),
                ),
                (
                    "installed_templates_version",
                    Value::String("0.11.44".to_owned()),
                ),
                (
                    "required_templates_version",
                    Value::String("0.11.44".to_owned()),
                ),
                (
                    "comfy_package_versions",
                    Value::Array(vec![
                        package("comfyui-frontend-package", "1.49.6"),
                        package("comfyui-workflow-templates", "0.11.44"),
                        package("comfyui-embedded-docs", "0.5.10"),
                        package("comfy-kitchen", "0.2.31"),
                        package("comfy-aimdo", "0.4.13"),
                    ]),
                ),
                (
                    "python_version",
                    Value::String("3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]".to_owned()),
                ),
                ("pytorch_version", Value::String("2.11.0+cu130".to_owned())),
                ("embedded_python", Value::Bool(false)),
                ("deploy_environment", Value::String("local-git".to_owned())),
                ("argv", Value::Array(argv)),
            ]),
        ),
        (
            "devices",
            Value::Array(vec![object([
                ("name", Value::String("cpu".to_owned())),
                ("type", Value::String("cpu".to_owned())),
                ("index", Value::Null),
                ("vram_total", ram_total.clone()),
                ("vram_free", ram_free.clone()),
                ("torch_vram_total", ram_total),
                ("torch_vram_free", ram_free),
            ])]),
        ),
    ]);
    ok_json(&stats)
}

async fn object_info_all(State(shared): State<Arc<Shared>>) -> Response {
    ok_json(&catalog().object_info_all(&shared.dirs))
}

async fn object_info_one(
    State(shared): State<Arc<Shared>>,
    Path(node_class): Path<String>,
) -> Response {
    ok_json(&catalog().object_info_one(&node_class, &shared.dirs))
}

// ---------------------------------------------------------------------------
// Prompts and the queue

/// A 400 of `POST /prompt`.
fn prompt_error(error: Value, node_errors: Value) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &object([("error", error), ("node_errors", node_errors)]),
    )
}

/// The `no_prompt` 400.
fn no_prompt() -> Response {
    prompt_error(
        object([
            ("type", Value::String("no_prompt".to_owned())),
            ("message", Value::String("No prompt provided".to_owned())),
            ("details", Value::String("No prompt provided".to_owned())),
            ("extra_info", Value::Object(Map::new())),
        ]),
        Value::Object(Map::new()),
    )
}

/// Whether a client-chosen prompt id is a canonical lowercase UUID.
fn canonical_uuid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

async fn post_prompt(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(data) = parse_body(&body) else {
        return internal_error();
    };
    let request = match data {
        Value::Object(map) => map,
        other => {
            // `"number" in json_data` and friends on a non-dict body.
            let (Some(has_number), Some(has_prompt)) =
                (py_contains(&other, "number"), py_contains(&other, "prompt"))
            else {
                return internal_error();
            };
            if has_number {
                return internal_error();
            }
            shared.lock().next_number();
            return if has_prompt {
                internal_error()
            } else {
                no_prompt()
            };
        }
    };

    let number = match request.get("number") {
        Some(raw) => match pyjson::py_float(raw) {
            Ok(x) if x.is_finite() => Priority::Explicit(x),
            _ => return internal_error(),
        },
        None => {
            let n = shared.lock().next_number();
            let front = request.get("front").is_some_and(pyjson::truthy);
            Priority::Counter(if front { -n } else { n })
        }
    };
    let Some(prompt) = request.get("prompt") else {
        return no_prompt();
    };
    let prompt_id = match request.get("prompt_id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(id)) if canonical_uuid(id) => id.clone(),
        Some(_) => {
            return prompt_error(
                object([
                    ("type", Value::String("invalid_prompt_id".to_owned())),
                    ("message", Value::String("prompt_id must be a valid UUID".to_owned())),
                    (
                        "details",
                        Value::String(
                            "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one"
                                .to_owned(),
                        ),
                    ),
                    ("extra_info", Value::Object(Map::new())),
                ]),
                Value::Object(Map::new()),
            );
        }
    };
    let mut prompt = match prompt {
        Value::Object(map) => map.clone(),
        Value::Array(items) if items.is_empty() => Map::new(),
        Value::String(text) if text.is_empty() => Map::new(),
        _ => return internal_error(),
    };
    let verdict = validate::validate_prompt(
        &mut prompt,
        request.get("partial_execution_targets"),
        &shared.dirs,
    );

    let mut extra_data = match request.get("extra_data") {
        None => Some(Map::new()),
        Some(Value::Object(map)) => Some(map.clone()),
        Some(_) => None,
    };
    if let Some(client_id) = request.get("client_id") {
        match extra_data.as_mut() {
            Some(extra) => {
                extra.insert("client_id".to_owned(), client_id.clone());
            }
            None => return internal_error(),
        }
    }
    if let (Some(extra), Some(source)) = (
        extra_data.as_mut(),
        headers
            .get("comfy-usage-source")
            .and_then(|v| v.to_str().ok()),
    ) && !extra.contains_key("comfy_usage_source")
        && !source.is_empty()
    {
        extra.insert(
            "comfy_usage_source".to_owned(),
            Value::String(source.to_owned()),
        );
    }

    let accepted = match verdict {
        Ok(accepted) => accepted,
        Err(Rejected::Internal) => return internal_error(),
        Err(Rejected::Invalid(body)) => return prompt_error(body.error, body.node_errors),
    };
    let Some(mut extra_data) = extra_data else {
        return internal_error();
    };
    let mut sensitive = Map::new();
    for key in SENSITIVE_KEYS {
        if let Some(value) = extra_data.shift_remove(key) {
            sensitive.insert(key.to_owned(), value);
        }
    }
    extra_data.insert("create_time".to_owned(), Value::from(now_ms()));
    let item = Arc::new(QueueItem::new(
        number,
        prompt_id.clone(),
        prompt,
        extra_data,
        sensitive,
        accepted.outputs,
    ));
    {
        let mut state = shared.lock();
        state.push(item);
        shared.broadcast_status(&state);
    }
    shared.wake.notify_one();
    ok_json(&object([
        ("prompt_id", Value::String(prompt_id)),
        ("number", number.to_value()),
        ("node_errors", accepted.node_errors),
    ]))
}

async fn get_queue(State(shared): State<Arc<Shared>>) -> Response {
    let (running, pending) = {
        let state = shared.lock();
        let running: Vec<Value> = state.running.iter().map(|i| i.tuple.clone()).collect();
        let pending: Vec<Value> = state.pending().iter().map(|i| i.tuple.clone()).collect();
        (running, pending)
    };
    ok_json(&object([
        ("queue_running", Value::Array(running)),
        ("queue_pending", Value::Array(pending)),
    ]))
}

/// The `clear`/`delete` body of `POST /queue` and `POST /history`.
enum Edit {
    /// `clear: true`.
    Clear,
    /// One id of `delete`.
    Delete(Value),
}

/// Reads `{"clear": bool, "delete": [ids]}` the way ComfyUI does; `None`
/// where it would raise.
fn parse_edit(body: &[u8]) -> Option<Vec<Edit>> {
    let data = parse_body(body)?;
    let mut edits = Vec::new();
    if py_contains(&data, "clear")? {
        let clear = data.get("clear")?;
        if pyjson::truthy(clear) {
            edits.push(Edit::Clear);
        }
    }
    if py_contains(&data, "delete")? {
        let ids = py_iter(data.get("delete")?)?;
        edits.extend(ids.into_iter().map(Edit::Delete));
    }
    Some(edits)
}

async fn post_queue(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(edits) = parse_edit(&body) else {
        return internal_error();
    };
    let mut state = shared.lock();
    for edit in edits {
        match edit {
            Edit::Clear => {
                state.clear_pending();
                shared.broadcast_status(&state);
            }
            Edit::Delete(id) => {
                let Some(id) = id.as_str() else { continue };
                for _ in 0..state.delete_pending(id) {
                    shared.broadcast_status(&state);
                }
            }
        }
    }
    ok_empty()
}

async fn post_interrupt(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let data = if std::str::from_utf8(&body).is_err() {
        return internal_error();
    } else {
        parse_body(&body).unwrap_or_else(|| Value::Object(Map::new()))
    };
    let Value::Object(data) = data else {
        return internal_error();
    };
    match data.get("prompt_id").filter(|v| pyjson::truthy(v)) {
        Some(Value::String(id)) => {
            let state = shared.lock();
            shared.interrupt_if_running(&state, id);
        }
        Some(_) => {}
        None => shared.interrupt_any(),
    }
    ok_empty()
}

async fn post_free(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(Value::Object(data)) = parse_body(&body) else {
        return internal_error();
    };
    {
        let mut state = shared.lock();
        if data.get("unload_models").is_some_and(pyjson::truthy) {
            state.flags.unload_models = true;
        }
        if data.get("free_memory").is_some_and(pyjson::truthy) {
            state.flags.free_memory = true;
        }
    }
    shared.wake.notify_one();
    ok_empty()
}

// ---------------------------------------------------------------------------
// History

/// `{id: entry, …}` for history records.
fn history_body(records: Vec<(String, Arc<Value>)>) -> Value {
    let mut map = Map::new();
    for (id, entry) in records {
        map.insert(id, (*entry).clone());
    }
    Value::Object(map)
}

async fn get_history(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref());
    let parse = |key: &str| -> Result<Option<i64>, ()> {
        match first(&pairs, key) {
            None => Ok(None),
            Some(raw) => jobs::parse_int(raw).map(Some).ok_or(()),
        }
    };
    let (Ok(max_items), Ok(offset)) = (parse("max_items"), parse("offset")) else {
        return internal_error();
    };
    let records: Vec<(String, Arc<Value>)> = shared
        .lock()
        .history_page(max_items, offset)
        .into_iter()
        .map(|r| (r.prompt_id, r.entry))
        .collect();
    ok_json(&history_body(records))
}

async fn get_history_one(
    State(shared): State<Arc<Shared>>,
    Path(prompt_id): Path<String>,
) -> Response {
    let entry = shared.lock().history_entry(&prompt_id);
    let records = entry.map(|e| vec![(prompt_id, e)]).unwrap_or_default();
    ok_json(&history_body(records))
}

async fn post_history(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(edits) = parse_edit(&body) else {
        return internal_error();
    };
    let mut state = shared.lock();
    for edit in edits {
        match edit {
            Edit::Clear => state.clear_history(),
            Edit::Delete(Value::Array(_) | Value::Object(_)) => return internal_error(),
            Edit::Delete(id) => {
                if let Some(id) = id.as_str() {
                    state.delete_history(id);
                }
            }
        }
    }
    ok_empty()
}

// ---------------------------------------------------------------------------
// Jobs

/// Snapshots the queue and history for the jobs view.
#[allow(clippy::type_complexity)]
fn job_snapshot(shared: &Shared) -> (Vec<Value>, Vec<Value>, Vec<(String, Arc<Value>)>) {
    let state = shared.lock();
    let running = state.running.iter().map(|i| i.tuple.clone()).collect();
    let pending = state.pending().iter().map(|i| i.tuple.clone()).collect();
    let history = state
        .history()
        .iter()
        .map(|r| (r.prompt_id.clone(), r.entry.clone()))
        .collect();
    (running, pending, history)
}

async fn list_jobs(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref());
    let query = match jobs::parse_list_query(&pairs) {
        Ok(query) => query,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let (running, pending, history) = job_snapshot(&shared);
    let (page, total) = jobs::list(&query, &running, &pending, &history);
    let has_more = (query.offset as usize).saturating_add(page.len()) < total;
    ok_json(&object([
        ("jobs", Value::Array(page)),
        (
            "pagination",
            object([
                ("offset", Value::from(query.offset)),
                ("limit", query.limit.map(Value::from).unwrap_or(Value::Null)),
                ("total", Value::from(total)),
                ("has_more", Value::Bool(has_more)),
            ]),
        ),
    ]))
}

/// `get_job`: history first, then running, then pending.
fn find_job(shared: &Shared, job_id: &str) -> Response {
    let state = shared.lock();
    let job = if let Some(entry) = state.history_entry(job_id) {
        Some(jobs::history_job(job_id, &entry, true))
    } else if let Some(running) = state.running.as_ref().filter(|r| r.prompt_id == job_id) {
        Some(jobs::queue_job(&running.tuple, "in_progress"))
    } else {
        state
            .pending()
            .iter()
            .find(|i| i.prompt_id == job_id)
            .map(|i| jobs::queue_job(&i.tuple, "pending"))
    };
    drop(state);
    match job {
        Some(job) => ok_json(&job),
        None => json_error(StatusCode::NOT_FOUND, "Job not found"),
    }
}

async fn get_job(State(shared): State<Arc<Shared>>, Path(job_id): Path<String>) -> Response {
    find_job(&shared, &job_id)
}

/// `GET /api/jobs/cancel` reaches the `{job_id}` route in aiohttp.
async fn get_job_named_cancel(State(shared): State<Arc<Shared>>) -> Response {
    find_job(&shared, "cancel")
}

/// `_cancel_job_by_id`: interrupts a running job, dequeues a pending one.
fn cancel_one(shared: &Shared, job_id: &str) -> bool {
    let mut state = shared.lock();
    if state.is_running(job_id) {
        return shared.interrupt_if_running(&state, job_id);
    }
    if state.is_pending(job_id) {
        let broadcasts = state.delete_pending(job_id);
        for _ in 0..broadcasts {
            shared.broadcast_status(&state);
        }
        return broadcasts > 0;
    }
    false
}

async fn cancel_job(State(shared): State<Arc<Shared>>, Path(job_id): Path<String>) -> Response {
    let cancelled = cancel_one(&shared, &job_id);
    ok_json(&object([("cancelled", Value::Bool(cancelled))]))
}

async fn cancel_jobs(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(data) = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return json_error(StatusCode::BAD_REQUEST, "Request body must be valid JSON");
    };
    let Some(Value::Array(ids)) = data.get("job_ids").filter(|_| data.is_object()) else {
        return json_error(StatusCode::BAD_REQUEST, "job_ids must be a list");
    };
    let invalid: Vec<Value> = ids
        .iter()
        .filter(|id| !id.as_str().is_some_and(canonical_uuid))
        .map(|id| match id {
            Value::String(_) => id.clone(),
            other => Value::String(pyjson::repr(other)),
        })
        .collect();
    if !invalid.is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            &object([
                (
                    "error",
                    Value::String("job_ids contains invalid id(s)".to_owned()),
                ),
                ("invalid_ids", Value::Array(invalid)),
            ]),
        );
    }
    let mut cancelled = false;
    for id in ids.iter().filter_map(Value::as_str) {
        cancelled |= cancel_one(&shared, id);
    }
    ok_json(&object([("cancelled", Value::Bool(cancelled))]))
}

// ---------------------------------------------------------------------------
// Files

async fn view(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref());
    let Some(filename) = first(&pairs, "filename") else {
        return status_only(StatusCode::NOT_FOUND);
    };
    if filename.starts_with("blake3:") {
        return status_only(StatusCode::NOT_FOUND);
    }
    let (name, annotated_dir) = shared.dirs.annotated(filename);
    if name.is_empty() {
        return status_only(StatusCode::BAD_REQUEST);
    }
    if name.starts_with('/') || name.contains("..") {
        return status_only(StatusCode::BAD_REQUEST);
    }
    let base = match annotated_dir {
        Some(dir) => dir.to_path_buf(),
        None => match shared
            .dirs
            .by_type(first(&pairs, "type").unwrap_or("output"))
        {
            Some(dir) => dir.to_path_buf(),
            None => return status_only(StatusCode::BAD_REQUEST),
        },
    };
    let mut dir = base.clone();
    if let Some(subfolder) = first(&pairs, "subfolder") {
        let joined = files::normalize(&base.join(subfolder));
        if !joined.starts_with(&base) {
            return status_only(StatusCode::FORBIDDEN);
        }
        dir = joined;
    }
    let basename = name.rsplit('/').next().unwrap_or(name).to_owned();
    let path = dir.join(&basename);
    let channel = first(&pairs, "channel").unwrap_or("rgba").to_owned();
    let bytes = match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() => match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(_) => return status_only(StatusCode::NOT_FOUND),
        },
        _ => return status_only(StatusCode::NOT_FOUND),
    };
    let disposition = format!(
        "filename=\"{}\"",
        basename.replace('\\', "\\\\").replace('"', "\\\"")
    );
    if channel == "rgb" || channel == "a" {
        return match reencode_channel(&bytes, &channel) {
            Some(png) => with_headers("image/png", &disposition, png),
            None => internal_error(),
        };
    }
    let mut content_type = files::guess_type(&basename).unwrap_or("application/octet-stream");
    let mut disposition = disposition;
    if files::is_dangerous_type(content_type) {
        content_type = "application/octet-stream";
        disposition = format!("attachment; {disposition}");
    }
    with_headers(content_type, &disposition, bytes)
}

/// A file answer with its content type and disposition.
fn with_headers(content_type: &str, disposition: &str, bytes: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `/view?channel=rgb|a`: the PNG re-encoded without alpha, or its alpha.
fn reencode_channel(bytes: &[u8], channel: &str) -> Option<Vec<u8>> {
    use super::image::{PngLayout, decode_png, encode_png};
    let decoded = decode_png(bytes).ok()?;
    if channel == "rgb" {
        return encode_png(
            decoded.width,
            decoded.height,
            PngLayout::Rgb,
            &decoded.rgb,
            &[],
            false,
        )
        .ok();
    }
    let alpha = decoded
        .alpha
        .unwrap_or_else(|| vec![255; decoded.width as usize * decoded.height as usize]);
    let rgba: Vec<u8> = alpha.iter().flat_map(|a| [0, 0, 0, *a]).collect();
    encode_png(
        decoded.width,
        decoded.height,
        PngLayout::Rgba,
        &rgba,
        &[],
        false,
    )
    .ok()
}

/// One part of a `multipart/form-data` body.
#[derive(Debug)]
struct Part {
    /// The field name.
    name: String,
    /// The file name, for file fields.
    filename: Option<String>,
    /// The content.
    data: Vec<u8>,
}

/// Parses a `multipart/form-data` body; `None` when it is malformed.
fn parse_multipart(content_type: &str, body: &[u8]) -> Option<Vec<Part>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    if boundary.is_empty() {
        return None;
    }
    let delimiter = format!("--{boundary}").into_bytes();
    let find = |haystack: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        haystack
            .get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut parts = Vec::new();
    let mut pos = find(body, &delimiter, 0)? + delimiter.len();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            break;
        }
        pos += 2; // CRLF after the delimiter
        let headers_end = find(body, b"\r\n\r\n", pos)?;
        let headers = std::str::from_utf8(body.get(pos..headers_end)?).ok()?;
        let data_start = headers_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(&delimiter);
        let data_end = find(body, &closing, data_start)?;
        let mut name = None;
        let mut filename = None;
        for line in headers.split("\r\n") {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if !key.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for param in value.split(';').map(str::trim) {
                if let Some(v) = param.strip_prefix("name=") {
                    name = Some(v.trim_matches('"').to_owned());
                } else if let Some(v) = param.strip_prefix("filename=") {
                    filename = Some(v.trim_matches('"').to_owned());
                }
            }
        }
        parts.push(Part {
            name: name?,
            filename,
            data: body.get(data_start..data_end)?.to_vec(),
        });
        pos = data_end + closing.len();
    }
    Some(parts)
}

async fn upload_image(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("multipart/form-data") {
        return status_only(StatusCode::BAD_REQUEST);
    }
    let Some(parts) = parse_multipart(content_type, &body) else {
        return internal_error();
    };
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name && p.filename.is_none())
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
    };
    let kind = field("type").unwrap_or_else(|| "input".to_owned());
    let Some(base) = shared.dirs.by_type(&kind).map(std::path::Path::to_path_buf) else {
        return internal_error();
    };
    let Some(image) = parts.iter().find(|p| p.name == "image") else {
        return status_only(StatusCode::BAD_REQUEST);
    };
    let Some(filename) = image.filename.clone() else {
        return internal_error();
    };
    if filename.is_empty() {
        return status_only(StatusCode::BAD_REQUEST);
    }
    let subfolder = field("subfolder").unwrap_or_default();
    let overwrite = matches!(field("overwrite").as_deref(), Some("true" | "1"));
    let data = image.data.clone();
    let result = shared
        .tracker
        .spawn_blocking(move || {
            store_upload(&base, &subfolder, &filename, &data, overwrite)
                .map(|name| (name, subfolder))
        })
        .await;
    match result {
        Ok(Ok((name, subfolder))) => ok_json(&object([
            ("name", Value::String(name)),
            ("subfolder", Value::String(subfolder)),
            ("type", Value::String(kind)),
        ])),
        Ok(Err(StatusCode::BAD_REQUEST)) => status_only(StatusCode::BAD_REQUEST),
        _ => internal_error(),
    }
}

/// `image_upload`: writes the file (renaming `x (1).png` unless it
/// overwrites or is identical) and returns the stored name.
fn store_upload(
    base: &std::path::Path,
    subfolder: &str,
    filename: &str,
    data: &[u8],
    overwrite: bool,
) -> Result<String, StatusCode> {
    let folder = files::normalize(&base.join(subfolder));
    let mut path = files::normalize(&folder.join(filename));
    if !path.starts_with(base) || !folder.starts_with(base) {
        return Err(StatusCode::BAD_REQUEST);
    }
    std::fs::create_dir_all(&folder).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let (stem, extension) = match filename.rfind('.') {
        Some(i) if i > 0 => (&filename[..i], &filename[i..]),
        _ => (filename, ""),
    };
    let mut name = filename.to_owned();
    if !overwrite {
        let mut i = 1;
        while path.exists() {
            if std::fs::read(&path).is_ok_and(|existing| existing == data) {
                return Ok(name);
            }
            name = format!("{stem} ({i}){extension}");
            path = folder.join(&name);
            i += 1;
        }
    }
    std::fs::write(&path, data).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_parse() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nPNGDATA\r\n--xyz\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\nsub\r\n--xyz--\r\n";
        let parts = parse_multipart("multipart/form-data; boundary=xyz", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].filename.as_deref(), Some("a.png"));
        assert_eq!(parts[0].data, b"PNGDATA");
        assert_eq!(parts[1].name, "subfolder");
        assert!(parse_multipart("multipart/form-data; boundary=xyz", b"garbage").is_none());
    }

    #[test]
    fn canonical_uuids_only() {
        assert!(canonical_uuid("a12acd6c-351a-4f4a-9bf2-99c14525783c"));
        assert!(!canonical_uuid("A12ACD6C-351A-4F4A-9BF2-99C14525783C"));
        assert!(!canonical_uuid("a12acd6c351a4f4a9bf299c14525783c"));
        assert!(!canonical_uuid("not-a-uuid"));
    }

    #[test]
    fn python_membership_on_bodies() {
        assert_eq!(
            py_contains(&serde_json::json!(["clear"]), "clear"),
            Some(true)
        );
        assert_eq!(py_contains(&serde_json::json!(5), "clear"), None);
    }
}
