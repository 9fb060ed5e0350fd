//! Contract tests of the fake ComfyUI (`comfy_reality_fake_comfyui`) against
//! the transcripts captured from a real ComfyUI 0.33 in
//! `../shared/comfyui-protocol/`.
//!
//! Each scenario test replays the recorded client actions over real sockets
//! (reqwest and tokio-tungstenite), waiting before every action until each
//! socket has received as many frames as the recording had at that point
//! (never sleeping for readiness), then compares per socket the sequence of
//! WebSocket messages (runs of progress updates collapse to one step, since
//! their count depends on timing), and per request the status, content
//! type and JSON shape (keys and value types, recursively; ids normalized).
//! Further tests cover each fault switch, the control routes, malformed
//! input and the binary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Upper bound for any wait. A hang guard, not a timing assertion: healthy
/// runs take milliseconds.
const HANG_GUARD: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Transcripts

/// Loads `../shared/comfyui-protocol/<name>.json`.
fn transcript(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/comfyui-protocol")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad transcript {name}: {e}"))
}

fn events(t: &Value) -> &Vec<Value> {
    t["events"].as_array().expect("events")
}

/// The frames a socket received in the recording.
fn recorded_frames(t: &Value, label: &str) -> Vec<Frame> {
    events(t)
        .iter()
        .filter(|e| e["kind"] == "ws_recv" && e["ws"] == label)
        .map(|e| {
            if e["binary"] == true {
                Frame::Recorded(e["decoded"].clone())
            } else {
                Frame::Json(e["msg"].clone())
            }
        })
        .collect()
}

/// Starts a fake with `time_scale`.
async fn fake(time_scale: f64) -> FakeComfy {
    FakeComfy::start(FakeOptions {
        time_scale,
        ..FakeOptions::default()
    })
    .await
    .expect("start the fake")
}

// ---------------------------------------------------------------------------
// Frames and tokens

/// A WebSocket frame, received or recorded.
#[derive(Debug, Clone)]
enum Frame {
    /// A text frame, parsed.
    Json(Value),
    /// A binary frame as received.
    Binary(Vec<u8>),
    /// A binary frame as the transcript decoded it.
    Recorded(Value),
}

/// A binary frame, decoded like the transcripts' `decoded` field.
#[derive(Debug, Clone, PartialEq)]
struct Binary {
    /// The event number (1, 3 or 4).
    event: u64,
    /// TEXT frames: the node id.
    node_id: Option<String>,
    /// TEXT frames: the text.
    text: Option<String>,
    /// Event 4: the metadata length.
    metadata_len: Option<u64>,
    /// Event 4: the metadata.
    metadata: Option<Value>,
    /// Previews: the first 8 image bytes, in hex.
    image_magic: Option<String>,
}

fn be_u32(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes(
        bytes[at..at + 4].try_into().expect("4 bytes"),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Frame {
    fn json(&self) -> Option<&Value> {
        match self {
            Frame::Json(v) => Some(v),
            _ => None,
        }
    }

    fn binary(&self) -> Option<Binary> {
        match self {
            Frame::Json(_) => None,
            Frame::Recorded(d) => Some(Binary {
                event: d["event_type"].as_u64().expect("event_type"),
                node_id: d["node_id"].as_str().map(str::to_owned),
                text: d["text"].as_str().map(str::to_owned),
                metadata_len: d["metadata_len"].as_u64(),
                metadata: d.get("metadata").cloned(),
                image_magic: d["image_magic_hex"].as_str().map(str::to_owned),
            }),
            Frame::Binary(b) => {
                let event = be_u32(b, 0);
                let mut out = Binary {
                    event,
                    node_id: None,
                    text: None,
                    metadata_len: None,
                    metadata: None,
                    image_magic: None,
                };
                match event {
                    1 => out.image_magic = Some(hex(&b[8..16])),
                    3 => {
                        let len = be_u32(b, 4) as usize;
                        out.node_id =
                            Some(String::from_utf8(b[8..8 + len].to_vec()).expect("utf8"));
                        out.text = Some(String::from_utf8(b[8 + len..].to_vec()).expect("utf8"));
                    }
                    4 => {
                        let len = be_u32(b, 4) as usize;
                        out.metadata_len = Some(len as u64);
                        out.metadata =
                            Some(serde_json::from_slice(&b[8..8 + len]).expect("metadata"));
                        out.image_magic = Some(hex(&b[8 + len..8 + len + 8]));
                    }
                    _ => {}
                }
                Some(out)
            }
        }
    }

    fn kind(&self) -> String {
        match self {
            Frame::Json(v) => v["type"].as_str().unwrap_or("?").to_owned(),
            other => format!("bin{}", other.binary().map(|b| b.event).unwrap_or(0)),
        }
    }

    fn prompt_id(&self) -> Option<String> {
        match self {
            Frame::Json(v) => v["data"]["prompt_id"].as_str().map(str::to_owned),
            other => other
                .binary()
                .and_then(|b| b.metadata)
                .and_then(|m| m["prompt_id"].as_str().map(str::to_owned)),
        }
    }
}

/// One step of a message sequence; progress runs are collapsed.
#[derive(Debug, Clone)]
struct Token {
    /// The step's name (`executing`, `ps:start`, `progress*`, …).
    name: String,
    /// The (first) frame of the step.
    frame: Frame,
}

/// Names every frame and collapses runs of progress updates (and their
/// binary frames) into one `progress*` step.
fn tokens(frames: &[Frame]) -> Vec<Token> {
    let mut previous: HashMap<String, Map<String, Value>> = HashMap::new();
    let mut named = Vec::new();
    for frame in frames {
        let mut name = frame.kind();
        if name == "progress_state" {
            let data = &frame.json().expect("json")["data"];
            let prompt = data["prompt_id"].as_str().unwrap_or_default().to_owned();
            let nodes = data["nodes"].as_object().cloned().unwrap_or_default();
            let before = previous.get(&prompt).cloned().unwrap_or_default();
            let changed = nodes
                .iter()
                .find(|(id, entry)| before.get(*id) != Some(entry))
                .map(|(id, entry)| (before.contains_key(id), entry.clone()));
            name = match changed {
                Some((_, entry)) if entry["state"] == "finished" => "ps:finish".to_owned(),
                Some((false, _)) => "ps:start".to_owned(),
                _ => "ps:update".to_owned(),
            };
            previous.insert(prompt, nodes);
        }
        named.push(Token {
            name,
            frame: frame.clone(),
        });
    }
    let in_run = |n: &str| matches!(n, "ps:update" | "progress" | "bin1" | "bin3" | "bin4");
    let mut out: Vec<Token> = Vec::new();
    for token in named {
        if in_run(&token.name) {
            if out.last().is_some_and(|t| t.name == "progress*") {
                continue;
            }
            out.push(Token {
                name: "progress*".to_owned(),
                frame: token.frame,
            });
        } else {
            out.push(token);
        }
    }
    out
}

fn names(tokens: &[Token]) -> Vec<String> {
    tokens.iter().map(|t| t.name.clone()).collect()
}

// ---------------------------------------------------------------------------
// Shapes

/// Whether a string is an id (a UUID or 32 hex digits).
fn is_id(s: &str) -> bool {
    let hexish = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    (s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        }))
        || (s.len() == 32 && hexish(s))
}

/// Replaces ids (in values and keys) with `<id>`.
fn normalize(value: &Value) -> Value {
    match value {
        Value::String(s) if is_id(s) => Value::String("<id>".to_owned()),
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    (
                        if is_id(k) {
                            "<id>".to_owned()
                        } else {
                            k.clone()
                        },
                        normalize(v),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_float(n: &serde_json::Number) -> bool {
    n.to_string().contains(['.', 'e', 'E'])
}

/// Options of a shape comparison.
#[derive(Default, Clone)]
struct ShapeOpts {
    /// Keys whose numbers may be int in one and float in the other.
    loose_numbers: Vec<&'static str>,
    /// Keys whose arrays may differ in length (first elements compared).
    loose_arrays: Vec<&'static str>,
}

/// Collects the differences in keys and value types.
fn shape_diff(
    actual: &Value,
    expected: &Value,
    path: &str,
    opts: &ShapeOpts,
    out: &mut Vec<String>,
) {
    let key = path.rsplit('.').next().unwrap_or_default();
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for k in e.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}: missing key {k:?}"));
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                out.push(format!("{path}: extra key {k:?}"));
            }
            for (k, v) in a {
                if let Some(w) = e.get(k) {
                    shape_diff(v, w, &format!("{path}.{k}"), opts, out);
                }
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            if opts.loose_arrays.contains(&key) {
                if let (Some(x), Some(y)) = (a.first(), e.first()) {
                    shape_diff(x, y, &format!("{path}[0]"), opts, out);
                }
            } else if a.len() != e.len() {
                out.push(format!("{path}: {} items, recorded {}", a.len(), e.len()));
            } else {
                for (i, (x, y)) in a.iter().zip(e).enumerate() {
                    shape_diff(x, y, &format!("{path}[{i}]"), opts, out);
                }
            }
        }
        (Value::Number(a), Value::Number(e)) => {
            if is_float(a) != is_float(e) && !opts.loose_numbers.contains(&key) {
                out.push(format!("{path}: number {a} vs recorded {e} (int/float)"));
            }
        }
        (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => {}
        (a, e) => out.push(format!("{path}: {a} vs recorded {e}")),
    }
}

fn assert_shape(actual: &Value, expected: &Value, what: &str, opts: &ShapeOpts) {
    let mut out = Vec::new();
    shape_diff(
        &normalize(actual),
        &normalize(expected),
        "$",
        opts,
        &mut out,
    );
    assert!(
        out.is_empty(),
        "{what}: shape differs from the recording:\n  {}\nactual:   {actual}\nrecorded: {expected}",
        out.join("\n  ")
    );
}

/// Compares two token sequences: names, then each step's shape.
fn assert_tokens(actual: &[Frame], recorded: &[Frame], what: &str, opts: &ShapeOpts) {
    let (a, r) = (tokens(actual), tokens(recorded));
    assert_eq!(
        names(&a),
        names(&r),
        "{what}: message sequence differs from the recording"
    );
    for (i, (x, y)) in a.iter().zip(&r).enumerate() {
        match (&x.frame, &y.frame) {
            (Frame::Json(v), Frame::Json(w)) => {
                assert_shape(v, w, &format!("{what} message {i} ({})", x.name), opts)
            }
            (left, right) => {
                let (p, q) = (
                    left.binary().expect("binary"),
                    right.binary().expect("binary"),
                );
                assert_eq!(p.event, q.event, "{what} message {i}");
                assert_eq!(p.node_id, q.node_id, "{what} message {i}");
                assert_eq!(p.text, q.text, "{what} message {i}");
                assert_eq!(p.image_magic, q.image_magic, "{what} message {i}");
                assert_eq!(
                    p.metadata_len, q.metadata_len,
                    "{what} message {i}: metadata length"
                );
                if let (Some(m), Some(n)) = (&p.metadata, &q.metadata) {
                    assert_shape(m, n, &format!("{what} message {i} metadata"), opts);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// An HTTP answer.
#[derive(Debug, Clone)]
struct Reply {
    /// The status code.
    status: u16,
    /// The `Content-Type` header, if any.
    content_type: Option<String>,
    /// The body.
    bytes: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }
}

/// A reqwest client bound to one fake.
#[derive(Clone)]
struct Http {
    /// The client (with a hang-guard timeout).
    client: reqwest::Client,
    /// The fake's base URL.
    base: String,
}

impl Http {
    fn new(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(HANG_GUARD)
                .build()
                .expect("client"),
            base: base.to_owned(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<String>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let bytes = response.bytes().await.expect("body").to_vec();
        Reply {
            status,
            content_type,
            bytes,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send("POST", path, Some(body.to_string())).await
    }
}

// ---------------------------------------------------------------------------
// WebSockets

type WsSink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A client socket whose frames a background task collects.
struct Socket {
    /// Every frame received so far.
    frames: Arc<Mutex<Vec<Frame>>>,
    /// Set when the connection ended.
    ended: Arc<AtomicBool>,
    /// Woken on every frame and at the end.
    notify: Arc<Notify>,
    /// The sending half.
    sink: WsSink,
    /// The task filling `frames`.
    reader: JoinHandle<()>,
}

impl Socket {
    async fn connect(base: &str, path: &str) -> Self {
        Self::try_connect(base, path)
            .await
            .unwrap_or_else(|e| panic!("ws connect {path}: {e}"))
    }

    async fn try_connect(base: &str, path: &str) -> Result<Self, String> {
        let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
        let (stream, _) = tokio::time::timeout(HANG_GUARD, connect_async(url))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (sink, mut source) = stream.split();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicBool::new(false));
        let notify = Arc::new(Notify::new());
        let reader = {
            let (frames, ended, notify) = (frames.clone(), ended.clone(), notify.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = source.next().await {
                    let frame = match message {
                        Message::Text(text) => {
                            Frame::Json(serde_json::from_str(text.as_str()).expect("json frame"))
                        }
                        Message::Binary(bytes) => Frame::Binary(bytes.to_vec()),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    frames.lock().expect("frames").push(frame);
                    notify.notify_waiters();
                }
                ended.store(true, Ordering::SeqCst);
                notify.notify_waiters();
            })
        };
        Ok(Self {
            frames,
            ended,
            notify,
            sink,
            reader,
        })
    }

    fn snapshot(&self) -> Vec<Frame> {
        self.frames.lock().expect("frames").clone()
    }

    /// Waits until `done` holds for the frames received so far.
    async fn wait(&self, what: &str, done: impl Fn(&[Frame], bool) -> bool) -> Vec<Frame> {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                let frames = self.snapshot();
                if done(&frames, self.ended.load(Ordering::SeqCst)) {
                    return frames;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(HANG_GUARD, wait).await {
            Ok(frames) => frames,
            Err(_) => panic!(
                "hang guard: waiting for {what}; received {:?}",
                names(&tokens(&self.snapshot()))
            ),
        }
    }

    async fn wait_count(&self, n: usize) -> Vec<Frame> {
        self.wait(&format!("{n} frames"), |f, _| f.len() >= n).await
    }

    /// Waits for `executing {node: null, prompt_id}`.
    async fn wait_done(&self, prompt_id: &str) -> Vec<Frame> {
        self.wait(&format!("end of {prompt_id}"), |frames, _| {
            frames.iter().any(|f| {
                f.json().is_some_and(|v| {
                    v["type"] == "executing"
                        && v["data"]["node"].is_null()
                        && v["data"]["prompt_id"] == prompt_id
                })
            })
        })
        .await
    }

    /// Waits for the connection to end (closed or cut by the server).
    async fn wait_ended(&self) {
        self.wait("the end of the connection", |_, ended| ended)
            .await;
    }

    async fn send_json(&mut self, value: &Value) {
        self.sink
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("ws send");
    }

    async fn send_raw(&mut self, message: Message) {
        let _ = self.sink.send(message).await;
    }

    /// Closes and waits for the server's acknowledgement.
    async fn close(mut self) -> Vec<Frame> {
        let _ = self.sink.send(Message::Close(None)).await;
        let frames = self
            .wait("the close acknowledgement", |_, ended| ended)
            .await;
        self.reader.abort();
        frames
    }
}

// ---------------------------------------------------------------------------
// Replay

/// One replayed request and its two answers.
struct Exchange {
    /// The HTTP method.
    method: String,
    /// The recorded path (before id mapping).
    path: String,
    /// The recorded `http_response` event.
    recorded: Value,
    /// The fake's answer.
    actual: Reply,
}

/// Replays a transcript's client actions against a fake.
struct Replay {
    /// The fake's base URL.
    base: String,
    /// The HTTP client.
    http: Http,
    /// Open sockets by transcript label.
    sockets: HashMap<String, Socket>,
    /// Frames of the sockets the transcript closed, by label.
    closed: HashMap<String, Vec<Frame>>,
    /// Recorded prompt id → the fake's.
    ids: HashMap<String, String>,
    /// Every replayed request, in order.
    exchanges: Vec<Exchange>,
}

impl Replay {
    fn new(fake: &FakeComfy) -> Self {
        Self {
            base: fake.base_url(),
            http: Http::new(&fake.base_url()),
            sockets: HashMap::new(),
            closed: HashMap::new(),
            ids: HashMap::new(),
            exchanges: Vec::new(),
        }
    }

    fn map_ids(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (recorded, actual) in &self.ids {
            out = out.replace(recorded.as_str(), actual);
        }
        out
    }

    /// Waits until every open socket has the frames it had in the recording
    /// before event `index`.
    async fn sync(&self, t: &Value, index: usize) {
        for (label, socket) in &self.sockets {
            let expected = events(t)[..index]
                .iter()
                .filter(|e| e["kind"] == "ws_recv" && e["ws"] == label.as_str())
                .count();
            socket.wait_count(expected).await;
        }
    }

    /// Replays `t`; `rewrite` may change a request body before it is sent.
    async fn run(&mut self, t: &Value, rewrite: &dyn Fn(&str, &mut Value)) {
        let all = events(t);
        for (index, event) in all.iter().enumerate() {
            let kind = event["kind"].as_str().unwrap_or_default();
            let label = event["ws"].as_str().unwrap_or_default().to_owned();
            match kind {
                "ws_connect" => {
                    self.sync(t, index).await;
                    let url = event["url"].as_str().expect("url");
                    let socket = Socket::connect(&self.base, url).await;
                    self.sockets.insert(label, socket);
                }
                "ws_send" => {
                    self.sync(t, index).await;
                    let socket = self.sockets.get_mut(&label).expect("socket");
                    socket.send_json(&event["msg"]).await;
                }
                "ws_closed" => {
                    self.sync(t, index).await;
                    let socket = self.sockets.remove(&label).expect("socket");
                    let frames = socket.close().await;
                    self.closed.insert(label, frames);
                }
                "http_request" => {
                    self.sync(t, index).await;
                    let method = event["method"].as_str().expect("method").to_owned();
                    let path = event["path"].as_str().expect("path").to_owned();
                    let body = if let Some(raw) = event["body_raw"].as_str() {
                        Some(raw.to_owned())
                    } else if event.get("body").is_some() {
                        let mut body = event["body"].clone();
                        rewrite(&path, &mut body);
                        Some(self.map_ids(&body.to_string()))
                    } else {
                        None
                    };
                    let actual = self.http.send(&method, &self.map_ids(&path), body).await;
                    let recorded = all[index + 1..]
                        .iter()
                        .find(|e| {
                            e["kind"] == "http_response"
                                && e["path"] == path.as_str()
                                && e["method"] == method.as_str()
                        })
                        .cloned()
                        .expect("recorded response");
                    if method == "POST"
                        && path.ends_with("/prompt")
                        && actual.status == 200
                        && let Some(id) = recorded["body"]["prompt_id"].as_str()
                    {
                        self.ids.insert(
                            id.to_owned(),
                            actual.json()["prompt_id"].as_str().expect("id").to_owned(),
                        );
                    }
                    self.exchanges.push(Exchange {
                        method,
                        path,
                        recorded,
                        actual,
                    });
                }
                _ => {}
            }
        }
        for (label, socket) in &self.sockets {
            let total = events(t)
                .iter()
                .filter(|e| e["kind"] == "ws_recv" && e["ws"] == label.as_str())
                .count();
            socket.wait_count(total).await;
        }
    }

    /// The frames socket `label` received.
    fn frames(&self, label: &str) -> Vec<Frame> {
        self.sockets
            .get(label)
            .map(Socket::snapshot)
            .or_else(|| self.closed.get(label).cloned())
            .expect("socket label")
    }

    /// The exchanges whose recorded path is `path`.
    fn exchange(&self, method: &str, path: &str) -> &Exchange {
        self.exchanges
            .iter()
            .find(|x| x.method == method && x.path == path)
            .unwrap_or_else(|| panic!("no exchange {method} {path}"))
    }

    /// Compares every exchange with the recording, except those `skip` names.
    fn assert_http(&self, opts: &ShapeOpts, skip: &[&str]) {
        for x in &self.exchanges {
            let what = format!("{} {}", x.method, x.path);
            assert_eq!(
                Some(u64::from(x.actual.status)),
                x.recorded["status"].as_u64(),
                "{what}: status ({})",
                String::from_utf8_lossy(&x.actual.bytes)
            );
            assert_eq!(
                x.actual.content_type.as_deref(),
                x.recorded["content_type"].as_str(),
                "{what}: content type"
            );
            if skip.contains(&x.path.as_str()) {
                continue;
            }
            if let Some(body) = x.recorded.get("body") {
                assert_shape(&x.actual.json(), body, &what, opts);
            } else if let Some(text) = x.recorded["body_text"].as_str() {
                assert_eq!(
                    String::from_utf8_lossy(&x.actual.bytes),
                    text,
                    "{what}: body"
                );
            } else if let Some(len) = x.recorded["body_len"].as_u64() {
                assert_eq!(x.actual.bytes.is_empty(), len == 0, "{what}: body length");
            } else if let Some(count) = x.recorded["body_summary"]["top_level_keys_count"].as_u64()
            {
                let actual = x.actual.json();
                assert_eq!(
                    actual.as_object().map(|m| m.len() as u64),
                    Some(count),
                    "{what}"
                );
            }
        }
    }

    /// Compares socket `label`'s whole message sequence with the recording.
    fn assert_ws(&self, t: &Value, label: &str, opts: &ShapeOpts) {
        assert_tokens(
            &self.frames(label),
            &recorded_frames(t, label),
            &format!("socket {label}"),
            opts,
        );
    }

    /// Compares socket `label` prompt by prompt (for scenarios whose
    /// `status` broadcasts race with the prompts' own messages), plus the
    /// number of `status` frames.
    fn assert_ws_per_prompt(&self, t: &Value, label: &str, opts: &ShapeOpts) {
        let group = |frames: &[Frame], map: &dyn Fn(&str) -> String| {
            let mut groups: Vec<(String, Vec<Frame>)> = Vec::new();
            let mut statuses = 0;
            for frame in frames {
                if frame.kind() == "status" {
                    statuses += 1;
                    continue;
                }
                let key = frame.prompt_id().map(|p| map(&p)).unwrap_or_default();
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, list)) => list.push(frame.clone()),
                    None => groups.push((key, vec![frame.clone()])),
                }
            }
            (groups, statuses)
        };
        let (actual, actual_statuses) = group(&self.frames(label), &|p| p.to_owned());
        let (recorded, recorded_statuses) = group(&recorded_frames(t, label), &|p| {
            self.ids.get(p).cloned().unwrap_or_else(|| p.to_owned())
        });
        assert_eq!(
            actual_statuses, recorded_statuses,
            "socket {label}: number of status frames"
        );
        let keys = |g: &[(String, Vec<Frame>)]| -> Vec<String> {
            let mut k: Vec<String> = g.iter().map(|(k, _)| k.clone()).collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&actual),
            keys(&recorded),
            "socket {label}: prompts seen"
        );
        for (key, frames) in &recorded {
            let mine = &actual.iter().find(|(k, _)| k == key).expect("group").1;
            assert_tokens(mine, frames, &format!("socket {label} prompt {key}"), opts);
        }
    }
}

/// No request rewriting.
fn as_recorded(_: &str, _: &mut Value) {}

// ---------------------------------------------------------------------------
// Scenarios

#[tokio::test]
async fn success_matches_the_capture() {
    let t = transcript("success");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    let history = replay.exchanges[1].actual.json();
    let entry = history
        .as_object()
        .expect("history")
        .values()
        .next()
        .expect("entry");
    assert_eq!(
        entry["outputs"]["4"]["images"][0],
        json!({"filename": "success_00001_.png", "subfolder": "proto", "type": "output"})
    );
    let png =
        std::fs::read(fake.output_dir().join("proto/success_00001_.png")).expect("png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let view = &replay
        .exchange(
            "GET",
            "/view?filename=success_00001_.png&subfolder=proto&type=output",
        )
        .actual;
    assert_eq!(view.bytes, png, "/view serves the written file");
    // The stored prompt is the validated one; ids line up with the run.
    assert_eq!(entry["prompt"][4], json!(["4"]));
    fake.shutdown().await;
}

/// Runs the success prompt once on `socket`'s client.
async fn run_success_prompt(http: &Http, socket: &Socket, client_id: &str) -> String {
    let t = transcript("success");
    let mut body = events(&t)
        .iter()
        .find(|e| e["kind"] == "http_request" && e["path"] == "/prompt")
        .expect("prompt")["body"]
        .clone();
    body["client_id"] = json!(client_id);
    let reply = http.post("/prompt", &body).await;
    assert_eq!(reply.status, 200);
    let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    socket.wait_done(&id).await;
    id
}

#[tokio::test]
async fn cached_matches_the_capture() {
    let t = transcript("cached");
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let setup = Socket::connect(&fake.base_url(), "/ws?clientId=setup").await;
    run_success_prompt(&http, &setup, "setup").await;

    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    let frames = replay.frames("A");
    let cached: Vec<Value> = frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "execution_cached")
        .map(|v| v["data"]["nodes"].clone())
        .collect();
    assert_eq!(cached, [json!(["1", "2", "3", "4"]), json!(["1", "2"])]);
    let executed: Vec<Value> = frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "executed")
        .map(|v| v["data"]["output"]["images"][0]["filename"].clone())
        .collect();
    assert_eq!(
        executed,
        [json!("success_00001_.png"), json!("success_00002_.png")]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn progress_matches_the_capture() {
    let t = transcript("progress");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    // Throttling scales with time: every step is reported, like the capture.
    let kinds = |frames: &[Frame]| -> Vec<String> { frames.iter().map(Frame::kind).collect() };
    assert_eq!(kinds(&replay.frames("A")), kinds(&recorded_frames(&t, "A")));
    let texts: Vec<String> = replay
        .frames("A")
        .iter()
        .filter_map(Frame::binary)
        .filter_map(|b| b.text)
        .collect();
    assert_eq!(
        texts,
        ["step 1/5", "step 2/5", "step 3/5", "step 4/5", "step 5/5"]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn binary_preview_matches_the_capture() {
    let t = transcript("binary_preview");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_ws(&t, "B", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let kinds = |frames: &[Frame]| -> Vec<String> { frames.iter().map(Frame::kind).collect() };
    assert_eq!(kinds(&replay.frames("B")), kinds(&recorded_frames(&t, "B")));
    fake.shutdown().await;
}

/// Sorts every node's error list, whose order is Python set order.
fn sorted_errors(mut body: Value) -> Value {
    if let Some(nodes) = body["node_errors"].as_object_mut() {
        for node in nodes.values_mut() {
            if let Some(errors) = node["errors"].as_array_mut() {
                errors.sort_by_key(|e| e["details"].to_string());
            }
        }
    }
    body
}

#[tokio::test]
async fn validation_errors_match_the_capture_exactly() {
    let t = transcript("validation_error");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    let mut numbers = Vec::new();
    for x in &replay.exchanges {
        if x.recorded["status"] == 400 {
            assert_eq!(
                sorted_errors(x.actual.json()),
                sorted_errors(x.recorded["body"].clone()),
                "400 body of {}",
                x.recorded["path"]
            );
        }
        if x.recorded["status"] == 200 && x.path == "/prompt" {
            numbers.push(x.actual.json()["number"].clone());
            assert_eq!(
                x.actual.json()["node_errors"],
                x.recorded["body"]["node_errors"]
            );
        }
    }
    // Every rejected POST with a JSON body advanced the counter (14 of them).
    assert_eq!(numbers, [json!(14)]);
    fake.shutdown().await;
}

#[tokio::test]
async fn execution_error_matches_the_capture_when_the_sibling_runs_first() {
    let t = transcript("execution_error");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    // Python's set order ran the sibling output first in the capture; the
    // fake runs outputs in key order, so send the keys in that order.
    let reorder = |path: &str, body: &mut Value| {
        if path == "/prompt" {
            let prompt = body["prompt"].as_object().expect("prompt").clone();
            let mut reordered = Map::new();
            for key in ["3", "1", "2"] {
                reordered.insert(key.to_owned(), prompt[key].clone());
            }
            body["prompt"] = Value::Object(reordered);
        }
    };
    replay.run(&t, &reorder).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    let error = replay
        .frames("A")
        .iter()
        .filter_map(Frame::json)
        .find(|v| v["type"] == "execution_error")
        .expect("execution_error")["data"]
        .clone();
    let recorded = recorded_frames(&t, "A")
        .iter()
        .filter_map(Frame::json)
        .find(|v| v["type"] == "execution_error")
        .expect("recorded error")["data"]
        .clone();
    for key in [
        "node_id",
        "node_type",
        "executed",
        "exception_message",
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
    ] {
        assert_eq!(error[key], recorded[key], "execution_error.{key}");
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn execution_error_stops_at_the_first_failure_in_key_order() {
    let t = transcript("execution_error");
    // The README allows the other order: the sibling never runs. Expect the
    // recorded frames without node 3's steps and progress entries.
    let mut variant = t.clone();
    let kept: Vec<Value> = events(&t)
        .iter()
        .filter_map(|e| {
            let mut e = e.clone();
            if e["kind"] != "ws_recv" {
                return Some(e);
            }
            if e["msg"]["data"]["node"] == "3" {
                return None;
            }
            let nodes = e
                .get_mut("msg")
                .and_then(|m| m.get_mut("data"))
                .and_then(|d| d.get_mut("nodes"))
                .and_then(Value::as_object_mut);
            if let Some(nodes) = nodes {
                nodes.shift_remove("3");
                if nodes.is_empty() {
                    return None;
                }
            }
            Some(e)
        })
        .collect();
    variant["events"] = Value::Array(kept);
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&variant, &as_recorded).await;
    let opts = ShapeOpts {
        loose_arrays: vec!["executed"],
        ..ShapeOpts::default()
    };
    let actual = replay.frames("A");
    assert_tokens(&actual, &recorded_frames(&variant, "A"), "socket A", &opts);
    let error = actual
        .iter()
        .filter_map(Frame::json)
        .find(|v| v["type"] == "execution_error")
        .expect("error")["data"]
        .clone();
    assert_eq!(error["executed"], json!(["1"]));
    assert_eq!(error["current_outputs"], json!(["1", "2", "3"]));
    let history = replay.exchanges[1].actual.json();
    let entry = history
        .as_object()
        .expect("history")
        .values()
        .next()
        .expect("entry");
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(
        entry["outputs"],
        json!({"1": {"text": ["slept 0.3s in 3 steps"]}})
    );
    let job = replay.exchanges[3].actual.json();
    assert_eq!(job["status"], "failed");
    assert_eq!(job["outputs_count"], 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn interrupt_matches_the_capture() {
    let t = transcript("interrupt");
    let fake = fake(0.1).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let frames = replay.frames("A");
    let interrupted: Vec<&Value> = frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "execution_interrupted")
        .collect();
    assert_eq!(interrupted.len(), 2);
    // The interrupt naming another prompt changed nothing: the first prompt
    // went on reporting progress until its own id was interrupted.
    let first = &interrupted[0]["data"]["prompt_id"];
    let progress = frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "progress" && &v["data"]["prompt_id"] == first)
        .count();
    assert!(
        progress >= 2,
        "progress after the ignored interrupt: {progress}"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn queue_delete_matches_the_capture() {
    let t = transcript("queue_delete");
    let fake = fake(0.1).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws_per_prompt(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let queue = replay
        .exchanges
        .iter()
        .filter(|x| x.path == "/queue" && x.method == "GET")
        .nth(1)
        .expect("second GET /queue");
    let pending = queue.actual.json()["queue_pending"].clone();
    let recorded_c = queue.recorded["body"]["queue_pending"][0][1]
        .as_str()
        .expect("id");
    assert_eq!(
        pending[0][1],
        json!(replay.ids[recorded_c]),
        "only C is left pending"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn artifacts_match_the_capture() {
    let t = transcript("artifact");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let usdz = &replay
        .exchange(
            "GET",
            "/view?filename=out_00001_.usdz&subfolder=proto&type=output",
        )
        .actual;
    assert_eq!(usdz.bytes.len(), 64);
    let bin = &replay
        .exchange(
            "GET",
            "/view?filename=blob_00001_.bin&subfolder=&type=output",
        )
        .actual;
    assert_eq!(bin.bytes.len(), 10);
    fake.shutdown().await;
}

#[tokio::test]
async fn priority_matches_the_capture() {
    let t = transcript("priority");
    let fake = fake(0.1).await;
    // The heap layout depends on the numbers: advance the counter to where
    // the capture's server was (every rejected POST counts).
    let http = Http::new(&fake.base_url());
    for _ in 0..29 {
        assert_eq!(http.post("/prompt", &json!({})).await.status, 400);
    }
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws_per_prompt(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);

    // GET /queue shows the same raw heap order as the capture.
    let queue = replay.exchange("GET", "/queue");
    let order = |body: &Value, map: &dyn Fn(&str) -> String| -> Vec<String> {
        body["queue_pending"]
            .as_array()
            .expect("pending")
            .iter()
            .map(|i| map(i[1].as_str().expect("id")))
            .collect()
    };
    assert_eq!(
        order(&queue.actual.json(), &|id| id.to_owned()),
        order(&queue.recorded["body"], &|id| replay.ids[id].clone())
    );
    // And the prompts ran in the captured order.
    let starts = |frames: &[Frame], map: &dyn Fn(&str) -> String| -> Vec<String> {
        frames
            .iter()
            .filter_map(Frame::json)
            .filter(|v| v["type"] == "execution_start")
            .map(|v| map(v["data"]["prompt_id"].as_str().expect("id")))
            .collect()
    };
    assert_eq!(
        starts(&replay.frames("A"), &|id| id.to_owned()),
        starts(&recorded_frames(&t, "A"), &|id| replay.ids[id].clone())
    );
    let numbers: Vec<Value> = replay
        .exchanges
        .iter()
        .filter(|x| x.path == "/prompt" && x.method == "POST")
        .map(|x| x.actual.json()["number"].clone())
        .collect();
    assert_eq!(
        numbers,
        [
            json!(29),
            json!(30),
            json!(-31),
            json!(-1000.0),
            json!(1000000000.0),
            json!(7.5)
        ]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn client_prompt_ids_match_the_capture() {
    let t = transcript("client_prompt_id");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let chosen = events(&t)[2]["body"]["prompt_id"]
        .as_str()
        .expect("chosen id");
    let first = replay.exchanges[0].actual.json();
    assert_eq!(first["prompt_id"], chosen);
    let history = replay
        .exchange("GET", &format!("/history/{chosen}"))
        .actual
        .json();
    assert_eq!(
        history[chosen]["prompt"][0],
        json!(1),
        "the duplicate overwrote the entry"
    );
    fake.shutdown().await;
}

/// Runs three short prompts to completion so the history holds jobs like
/// the ones the capture's server had from earlier scenarios.
async fn seed_completed_jobs(http: &Http, socket: &Socket, client_id: &str) {
    for number in [Some(json!(1000000000.0)), Some(json!(7.5)), None] {
        let mut body = json!({
            "prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.3, "steps": 1, "nonce": 7}}},
            "client_id": client_id,
        });
        body["prompt"]["1"]["inputs"]["nonce"] = json!(uuid::Uuid::new_v4().as_u128() as u32);
        if let Some(number) = number {
            body["number"] = number;
        }
        let reply = http.post("/prompt", &body).await;
        let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
        socket.wait_done(&id).await;
    }
}

#[tokio::test]
async fn jobs_api_matches_the_capture() {
    let t = transcript("jobs_api");
    let fake = fake(0.1).await;
    let http = Http::new(&fake.base_url());
    let setup = Socket::connect(&fake.base_url(), "/ws?clientId=setup").await;
    seed_completed_jobs(&http, &setup, "setup").await;
    let _ = setup.close().await;

    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws_per_prompt(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let list = replay.exchange("GET", "/api/jobs?limit=5").actual.json();
    let jobs = list["jobs"].as_array().expect("jobs");
    let statuses: Vec<&str> = jobs
        .iter()
        .map(|j| j["status"].as_str().expect("status"))
        .collect();
    let created: Vec<f64> = jobs
        .iter()
        .map(|j| j["create_time"].as_f64().expect("create_time"))
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );
    // Jobs created in the same millisecond keep the order ComfyUI lists
    // them in (running, then pending): a replay on a busy machine can post
    // two prompts within one, so compare the statuses run by run of equal
    // creation times, each run in any order.
    let expected = [
        "pending",
        "pending",
        "in_progress",
        "completed",
        "completed",
    ];
    assert_eq!(statuses.len(), expected.len(), "{statuses:?}");
    let mut at = 0;
    for run in created.chunk_by(|a, b| a == b) {
        let mut got = statuses[at..at + run.len()].to_vec();
        let mut want = expected[at..at + run.len()].to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{statuses:?} created at {created:?}");
        at += run.len();
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn ws_reconnect_reproduces_the_orphaned_socket() {
    let t = transcript("ws_reconnect");
    let fake = fake(0.1).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    for label in ["A", "B", "C", "D", "E"] {
        replay.assert_ws(&t, label, &ShapeOpts::default());
    }
    replay.assert_http(&ShapeOpts::default(), &[]);
    // B is open but got nothing after A closed: no end of either prompt.
    let b = replay.frames("B");
    assert!(
        !b.iter()
            .filter_map(Frame::json)
            .any(|v| v["type"] == "executing" && v["data"]["node"].is_null()),
        "the orphaned socket must not see the end of the prompt"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn prompts_without_client_id_match_the_capture() {
    let t = transcript("no_client_id");
    let fake = fake(0.1).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "O", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    fake.shutdown().await;
}

#[tokio::test]
async fn free_cache_matches_the_capture() {
    let t = transcript("free_cache");
    let fake = fake(0.05).await;
    let mut replay = Replay::new(&fake);
    replay.run(&t, &as_recorded).await;
    replay.assert_ws(&t, "A", &ShapeOpts::default());
    replay.assert_http(&ShapeOpts::default(), &[]);
    let cached: Vec<Value> = replay
        .frames("A")
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "execution_cached")
        .map(|v| v["data"]["nodes"].clone())
        .collect();
    assert_eq!(cached, [json!([]), json!(["1"]), json!([])]);
    fake.shutdown().await;
}

/// Waits for a `status` with `queue_remaining: 0` after `from` frames.
async fn wait_idle(socket: &Socket, from: usize) {
    socket
        .wait("an idle status", |frames, _| {
            frames[from.min(frames.len())..]
                .iter()
                .filter_map(Frame::json)
                .any(|v| {
                    v["type"] == "status"
                        && v["data"]["status"]["exec_info"]["queue_remaining"] == 0
                })
        })
        .await;
}

#[tokio::test]
async fn misc_routes_match_the_capture() {
    let t = transcript("misc");
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    // The capture's history held the success prompt, then a finished and an
    // interrupted prompt without client_id (no_client_id.json).
    let observer = Socket::connect(&fake.base_url(), "/ws?clientId=observer").await;
    let success = run_success_prompt(&http, &observer, "observer").await;
    let from = observer.snapshot().len();
    let reply = http
        .post("/prompt", &json!({"prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 1.0, "steps": 4, "nonce": 630791956337u64}}}}))
        .await;
    let finished = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    wait_idle(&observer, from).await;
    let from = observer.snapshot().len();
    let reply = http
        .post("/prompt", &json!({"prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 20, "steps": 40, "nonce": 785409369199u64}}}}))
        .await;
    let interrupted = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    observer
        .wait("progress", |frames, _| {
            frames[from..].iter().any(|f| f.kind() == "progress")
        })
        .await;
    let from_interrupt = observer.snapshot().len();
    assert_eq!(
        http.post("/interrupt", &json!({"prompt_id": interrupted}))
            .await
            .status,
        200
    );
    wait_idle(&observer, from_interrupt).await;

    let mut replay = Replay::new(&fake);
    let response = |path: &str| {
        events(&t)
            .iter()
            .find(|e| e["kind"] == "http_response" && e["path"] == path)
            .expect("response")["body"]
            .clone()
    };
    let two = response("/history?max_items=2");
    let keys: Vec<&String> = two.as_object().expect("history").keys().collect();
    replay.ids.insert(keys[0].clone(), finished);
    replay.ids.insert(keys[1].clone(), interrupted);
    let first = response("/history?max_items=1&offset=0");
    replay.ids.insert(
        first
            .as_object()
            .expect("history")
            .keys()
            .next()
            .expect("key")
            .clone(),
        success,
    );
    replay.run(&t, &as_recorded).await;
    replay.assert_http(&ShapeOpts::default(), &["/object_info"]);
    let all = replay.exchange("GET", "/object_info").actual.json();
    let classes: Vec<&String> = all.as_object().expect("object_info").keys().collect();
    assert_eq!(
        classes,
        [
            "EmptyImage",
            "ImageInvert",
            "ImageScale",
            "SaveImage",
            "SaveImageWebsocket",
            "PreviewImage",
            "LoadImage",
            "TestDelay",
            "TestFail",
            "TestWriteBlob"
        ]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn object_info_matches_the_capture_exactly() {
    let t = transcript("object_info");
    let fake = fake(1.0).await;
    let http = Http::new(&fake.base_url());
    for (class, info) in t.as_object().expect("classes") {
        let reply = http.get(&format!("/api/object_info/{class}")).await;
        assert_eq!(reply.status, 200);
        let mut expected = Map::new();
        expected.insert(class.clone(), info.clone());
        assert_eq!(reply.json(), Value::Object(expected), "{class}");
    }
    assert_eq!(http.get("/object_info/NoSuchNode").await.json(), json!({}));
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------
// More behaviour

#[tokio::test]
async fn upload_then_load_image() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let png = std::fs::read(fake.input_dir().join("example.png")).expect("example.png");
    let boundary = "fakeboundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"up.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let reply = http
        .client
        .post(format!("{}/upload/image", http.base))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(reply.status(), 200);
    let uploaded: Value = reply.json().await.expect("json");
    assert_eq!(
        uploaded,
        json!({"name": "up.png", "subfolder": "", "type": "input"})
    );

    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=u").await;
    let reply = http
        .post(
            "/prompt",
            &json!({"client_id": "u", "prompt": {
                "1": {"class_type": "LoadImage", "inputs": {"image": "up.png"}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
            }}),
        )
        .await;
    assert_eq!(reply.status, 200);
    let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    let frames = socket.wait_done(&id).await;
    let executed = frames
        .iter()
        .filter_map(Frame::json)
        .find(|v| v["type"] == "executed")
        .expect("executed")
        .clone();
    let image = &executed["data"]["output"]["images"][0];
    assert_eq!(image["type"], "temp");
    let view = http
        .get(&format!(
            "/view?filename={}&type=temp",
            image["filename"].as_str().expect("name")
        ))
        .await;
    assert_eq!(view.status, 200);
    assert_eq!(view.content_type.as_deref(), Some("image/png"));

    let reply = http
        .post("/prompt", &json!({"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}}, "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}}))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json()["node_errors"]["1"]["errors"][0]["type"],
        "custom_validation_failed"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn malformed_input_never_breaks_the_server() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let bodies = [
        "",
        "{",
        "[]",
        "null",
        "5",
        "\"prompt\"",
        "{\"prompt\": null}",
        "{\"prompt\": []}",
        "{\"prompt\": {\"1\": 5}}",
        "{\"prompt\": {\"1\": {\"class_type\": 5}}}",
        "{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": []}}}",
        "{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [1, \"x\"]}}}}",
        "{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [[1], 0]}}}}",
        "{\"prompt\": {\"1\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": \"x\", \"filename_prefix\": \"../../x\"}}}}",
        "{\"number\": \"abc\", \"prompt\": {}}",
        "{\"number\": 1e999, \"prompt\": {}}",
        "{\"extra_data\": 5, \"client_id\": \"x\", \"prompt\": {}}",
        "{\"delete\": 5}",
        "{\"clear\": true, \"delete\": [[1]]}",
        "{\"job_ids\": [1, null, {}]}",
        "\u{0}\u{1}",
    ];
    let routes = [
        "/prompt",
        "/queue",
        "/history",
        "/interrupt",
        "/free",
        "/api/jobs/cancel",
        "/upload/image",
        "/api/jobs/x/cancel",
    ];
    for route in routes {
        for body in bodies {
            let reply = http.send("POST", route, Some(body.to_owned())).await;
            assert!(
                [200, 400, 404, 500].contains(&reply.status),
                "POST {route} {body:?}: {}",
                reply.status
            );
            if reply.status == 500 {
                assert_eq!(
                    reply.content_type.as_deref(),
                    Some("text/plain; charset=utf-8")
                );
            }
        }
    }
    for path in [
        "/view?filename=%2e%2e%2fx",
        "/view?filename=&type=output",
        "/view?filename=a&subfolder=../../",
        "/view?filename=a&subfolder=%00",
        "/history?max_items=abc",
        "/history?max_items=-5&offset=99999999999999999999",
        "/api/jobs?limit=-1&offset=x",
        "/api/jobs?sort_by=x",
        "/api/jobs?status=,,,",
        "/object_info/%ff",
        "/ws",
        "/api/jobs/cancel",
        "/%",
        "/interrupt",
    ] {
        let reply = http.get(path).await;
        assert!(reply.status < 600, "GET {path}");
    }
    // Odd WebSocket input: binary frames, bad JSON, a late feature_flags.
    let mut socket = Socket::connect(&fake.base_url(), "/ws?clientId=odd").await;
    socket.send_raw(Message::Binary(vec![0, 1, 2].into())).await;
    socket.send_raw(Message::Text("{not json".into())).await;
    socket.send_json(&json!(["feature_flags"])).await;
    socket
        .send_json(&json!({"type": "feature_flags", "data": 5}))
        .await;
    let frames = socket.wait_count(2).await;
    assert_eq!(
        frames[1].kind(),
        "feature_flags",
        "a first JSON object message negotiates"
    );
    // Still serving.
    assert_eq!(http.get("/system_stats").await.status, 200);
    let _ = socket.close().await;
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn drop_websockets_closes_and_refuses_sockets() {
    let fake = fake(0.05).await;
    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=d").await;
    socket.wait_count(1).await;
    fake.faults().set_drop_websockets(true);
    socket.wait_ended().await;
    assert!(
        Socket::try_connect(&fake.base_url(), "/ws?clientId=d")
            .await
            .is_err()
    );
    fake.faults().set_drop_websockets(false);
    let again = Socket::connect(&fake.base_url(), "/ws?clientId=d").await;
    again.wait_count(1).await;
    fake.faults().drop_websockets_once();
    again.wait_ended().await;
    let third = Socket::connect(&fake.base_url(), "/ws?clientId=d").await;
    third.wait_count(1).await;

    // The same over HTTP.
    let http = Http::new(&fake.base_url());
    let reply = http
        .post("/__fake/faults", &json!({"drop_websockets": true}))
        .await;
    assert_eq!(reply.json()["drop_websockets"], true);
    third.wait_ended().await;
    http.post("/__fake/faults", &json!({"drop_websockets": false}))
        .await;
    Socket::connect(&fake.base_url(), "/ws")
        .await
        .wait_count(1)
        .await;
    fake.shutdown().await;
}

#[tokio::test]
async fn silent_runs_prompts_without_any_frame() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    fake.faults().set_silent(true);
    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=s").await;
    let reply = http
        .post("/prompt", &json!({"client_id": "s", "prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 0.2, "steps": 2, "nonce": 1}}}}))
        .await;
    let id = reply.json()["prompt_id"].as_str().expect("id").to_owned();
    // Polling history is how a client copes with a silent server.
    let guard = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let history = http.get(&format!("/history/{id}")).await.json();
            if history.get(id.as_str()).is_some() {
                return history;
            }
            tokio::task::yield_now().await;
        }
    });
    let history = guard.await.expect("prompt finished");
    assert_eq!(history[id.as_str()]["status"]["status_str"], "success");
    // Frames are ordered: the first one after silence ends is the status
    // this clear causes, so nothing was sent while silent.
    fake.faults().set_silent(false);
    http.post("/queue", &json!({"clear": true})).await;
    let frames = socket.wait_count(1).await;
    assert_eq!(frames[0].kind(), "status");
    assert!(frames[0].json().expect("json")["data"].get("sid").is_none());
    fake.shutdown().await;
}

#[tokio::test]
async fn slow_delays_answers_but_not_control_routes() {
    let fake = fake(0.05).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let url = |p: &str| format!("{}{p}", fake.base_url());
    fake.faults().set_slow(Some(Duration::from_secs(30)));
    let err = impatient
        .get(url("/system_stats"))
        .send()
        .await
        .expect_err("delayed past the timeout");
    assert!(err.is_timeout(), "{err}");
    let control = impatient
        .post(url("/__fake/faults"))
        .body(json!({"slow_ms": null}).to_string())
        .send()
        .await
        .expect("control routes are never slow");
    assert_eq!(control.status(), 200);
    assert_eq!(
        impatient
            .get(url("/system_stats"))
            .send()
            .await
            .expect("fast again")
            .status(),
        200
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn http_500_fails_every_route_like_aiohttp() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    fake.faults().set_http_500(true);
    for path in ["/queue", "/api/prompt", "/nope"] {
        let reply = http.get(path).await;
        assert_eq!(reply.status, 500, "{path}");
        assert_eq!(
            reply.content_type.as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            reply.bytes,
            b"500 Internal Server Error\n\nServer got itself in trouble"
        );
    }
    assert!(Socket::try_connect(&fake.base_url(), "/ws").await.is_err());
    let reply = http
        .post("/__fake/faults", &json!({"http_500": false}))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(http.get("/queue").await.status, 200);
    fake.shutdown().await;
}

#[tokio::test]
async fn refused_connections_fail_until_turned_off_over_http() {
    let fake = fake(0.05).await;
    let url = |p: &str| format!("{}{p}", fake.base_url());
    let pooled = reqwest::Client::new();
    assert_eq!(
        pooled.get(url("/queue")).send().await.expect("up").status(),
        200
    );
    let socket = Socket::connect(&fake.base_url(), "/ws").await;
    fake.faults().set_refuse_connections(true);
    socket.wait_ended().await;
    let fresh = reqwest::Client::new();
    assert!(
        fresh.get(url("/queue")).send().await.is_err(),
        "new connections are closed"
    );
    assert!(
        pooled.get(url("/queue")).send().await.is_err(),
        "pooled connections are cut"
    );
    assert!(Socket::try_connect(&fake.base_url(), "/ws").await.is_err());
    let off = reqwest::Client::new()
        .post(url("/__fake/faults"))
        .body(json!({"refuse_connections": false}).to_string())
        .send()
        .await
        .expect("control requests get through");
    assert_eq!(off.status(), 200);
    assert_eq!(
        fresh
            .get(url("/queue"))
            .send()
            .await
            .expect("back")
            .status(),
        200
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn restart_loses_queue_history_and_sockets() {
    let fake = fake(0.05).await;
    let http = Http::new(&fake.base_url());
    let socket = Socket::connect(&fake.base_url(), "/ws?clientId=r").await;
    let done = run_success_prompt(&http, &socket, "r").await;
    let long = |nonce: u64| json!({"client_id": "r", "prompt": {"1": {"class_type": "TestDelay", "inputs": {"seconds": 600, "steps": 600, "nonce": nonce}}}});
    let running = http.post("/prompt", &long(1)).await.json()["prompt_id"]
        .as_str()
        .expect("id")
        .to_owned();
    http.post("/prompt", &long(2)).await;
    socket
        .wait("the long prompt running", |frames, _| {
            frames
                .iter()
                .filter_map(Frame::json)
                .any(|v| v["type"] == "executing" && v["data"]["prompt_id"] == running.as_str())
        })
        .await;
    fake.restart().await;
    socket.wait_ended().await;
    let queue = http.get("/queue").await.json();
    assert_eq!(queue, json!({"queue_running": [], "queue_pending": []}));
    assert_eq!(http.get("/history").await.json(), json!({}));
    assert_eq!(
        http.get(&format!("/history/{done}")).await.json(),
        json!({})
    );
    assert_eq!(http.get(&format!("/api/jobs/{running}")).await.status, 404);
    let again = http.post("/prompt", &long(3)).await.json();
    assert_eq!(again["number"], 0, "the counter starts over");

    // The HTTP control route does the same.
    let socket = Socket::connect(&fake.base_url(), "/ws").await;
    socket.wait_count(1).await;
    assert_eq!(http.send("POST", "/__fake/restart", None).await.status, 200);
    socket.wait_ended().await;
    assert_eq!(
        http.get("/prompt").await.json(),
        json!({"exec_info": {"queue_remaining": 0}})
    );
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------
// The binary

#[test]
fn binary_serves_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let output = std::env::temp_dir().join(format!(
        "fake-comfyui-bin-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfy-reality-fake-comfyui"))
        .args([
            "--port",
            "0",
            "--time-scale",
            "0.05",
            "--http-500",
            "--output-dir",
        ])
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the fake");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        let _ = tx.send(first);
        lines.map_while(Result::ok).collect::<Vec<String>>()
    });
    let line = rx
        .recv_timeout(HANG_GUARD)
        .expect("a line on stdout")
        .expect("first line");
    let base = line
        .strip_prefix("comfy-reality-fake-comfyui listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Started with the --http-500 fault: every route fails until the control
    // route turns it off.
    let (failing, stats) = runtime.block_on(async {
        let http = Http::new(&base);
        let failing = http.get("/system_stats").await;
        let off = http
            .post("/__fake/faults", &json!({"http_500": false}))
            .await;
        assert_eq!(off.status, 200);
        (failing, http.get("/system_stats").await)
    });
    assert_eq!(failing.status, 500);
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json()["system"]["comfyui_version"], "0.33.0");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the fake did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "exit status {exit}");
    let rest = reader.join().expect("reader");
    assert!(rest.is_empty(), "exactly one line on stdout, then {rest:?}");
    let _ = std::fs::remove_dir_all(output);
}

// ---------------------------------------------------------------------------
// Property: any prompt body gets a sane answer

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|x| json!(x)),
            "[a-zA-Z0-9 _./]{0,8}".prop_map(Value::String),
            prop_oneof![
                Just("1"),
                Just("2"),
                Just("EmptyImage"),
                Just("SaveImage"),
                Just("TestDelay"),
                Just("IMAGE")
            ]
            .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("1".to_owned()),
                        Just("2".to_owned()),
                        Just("class_type".to_owned()),
                        Just("inputs".to_owned()),
                        Just("images".to_owned()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// One fake serves every case: each prompt is validated (and, when
    /// valid, queued) by the same server, which must keep answering.
    #[test]
    fn any_prompt_gets_a_python_like_answer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let fake = runtime.block_on(fake(0.001));
        let http = Http::new(&fake.base_url());
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 256,
            ..ProptestConfig::default()
        });
        let outcome = runner.run(&json_value(), |prompt| {
            runtime.block_on(async {
                let reply = http.post("/prompt", &json!({"prompt": prompt})).await;
                prop_assert!([200, 400, 500].contains(&reply.status), "{}", reply.status);
                if reply.status == 500 {
                    prop_assert_eq!(
                        reply.content_type.as_deref(),
                        Some("text/plain; charset=utf-8")
                    );
                } else {
                    let body = reply.json();
                    prop_assert!(body.get("node_errors").is_some(), "{}", body);
                }
                prop_assert_eq!(http.get("/prompt").await.status, 200);
                Ok(())
            })
        });
        runtime.block_on(fake.shutdown());
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }
}
