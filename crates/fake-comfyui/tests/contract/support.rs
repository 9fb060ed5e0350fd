//! Support for the contract tests: the transcripts, frames and ids, JSON shapes, HTTP and
//! WebSocket clients, and the replay of a recorded scenario.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Upper bound for any wait. A hang guard, not a timing assertion: healthy
/// runs take milliseconds.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Transcripts

/// Loads `../shared/comfyui-protocol/<name>.json`.
pub(crate) fn transcript(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/comfyui-protocol")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad transcript {name}: {e}"))
}

pub(crate) fn events(t: &Value) -> &Vec<Value> {
    t["events"].as_array().expect("events")
}

/// The frames a socket received in the recording.
pub(crate) fn recorded_frames(t: &Value, label: &str) -> Vec<Frame> {
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
pub(crate) async fn fake(time_scale: f64) -> FakeComfy {
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
pub(crate) enum Frame {
    /// A text frame, parsed.
    Json(Value),
    /// A binary frame as received.
    Binary(Vec<u8>),
    /// A binary frame as the transcript decoded it.
    Recorded(Value),
}

/// A binary frame, decoded like the transcripts' `decoded` field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Binary {
    /// The event number (1, 3 or 4).
    pub(crate) event: u64,
    /// TEXT frames: the node id.
    pub(crate) node_id: Option<String>,
    /// TEXT frames: the text.
    pub(crate) text: Option<String>,
    /// Event 4: the metadata length.
    pub(crate) metadata_len: Option<u64>,
    /// Event 4: the metadata.
    pub(crate) metadata: Option<Value>,
    /// Previews: the first 8 image bytes, in hex.
    pub(crate) image_magic: Option<String>,
}

pub(crate) fn be_u32(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes(
        bytes[at..at + 4].try_into().expect("4 bytes"),
    ))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Frame {
    pub(crate) fn json(&self) -> Option<&Value> {
        match self {
            Frame::Json(v) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn binary(&self) -> Option<Binary> {
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

    pub(crate) fn kind(&self) -> String {
        match self {
            Frame::Json(v) => v["type"].as_str().unwrap_or("?").to_owned(),
            other => format!("bin{}", other.binary().map(|b| b.event).unwrap_or(0)),
        }
    }

    pub(crate) fn prompt_id(&self) -> Option<String> {
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
pub(crate) struct Token {
    /// The step's name (`executing`, `ps:start`, `progress*`, …).
    pub(crate) name: String,
    /// The (first) frame of the step.
    pub(crate) frame: Frame,
}

/// Names every frame and collapses runs of progress updates (and their
/// binary frames) into one `progress*` step.
pub(crate) fn tokens(frames: &[Frame]) -> Vec<Token> {
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

pub(crate) fn names(tokens: &[Token]) -> Vec<String> {
    tokens.iter().map(|t| t.name.clone()).collect()
}

// ---------------------------------------------------------------------------
// Shapes

/// Whether a string is an id (a UUID or 32 hex digits).
pub(crate) fn is_id(s: &str) -> bool {
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
pub(crate) fn normalize(value: &Value) -> Value {
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

pub(crate) fn is_float(n: &serde_json::Number) -> bool {
    n.to_string().contains(['.', 'e', 'E'])
}

/// Options of a shape comparison.
#[derive(Default, Clone)]
pub(crate) struct ShapeOpts {
    /// Keys whose numbers may be int in one and float in the other.
    pub(crate) loose_numbers: Vec<&'static str>,
    /// Keys whose arrays may differ in length (first elements compared).
    pub(crate) loose_arrays: Vec<&'static str>,
}

/// Collects the differences in keys and value types.
pub(crate) fn shape_diff(
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

pub(crate) fn assert_shape(actual: &Value, expected: &Value, what: &str, opts: &ShapeOpts) {
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
pub(crate) fn assert_tokens(actual: &[Frame], recorded: &[Frame], what: &str, opts: &ShapeOpts) {
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
pub(crate) struct Reply {
    /// The status code.
    pub(crate) status: u16,
    /// The `Content-Type` header, if any.
    pub(crate) content_type: Option<String>,
    /// The body.
    pub(crate) bytes: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }
}

/// A reqwest client bound to one fake.
#[derive(Clone)]
pub(crate) struct Http {
    /// The client (with a hang-guard timeout).
    pub(crate) client: reqwest::Client,
    /// The fake's base URL.
    pub(crate) base: String,
}

impl Http {
    pub(crate) fn new(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(HANG_GUARD)
                .build()
                .expect("client"),
            base: base.to_owned(),
        }
    }

    pub(crate) async fn send(&self, method: &str, path: &str, body: Option<String>) -> Reply {
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

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send("POST", path, Some(body.to_string())).await
    }
}

// ---------------------------------------------------------------------------
// WebSockets

pub(crate) type WsSink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A client socket whose frames a background task collects.
pub(crate) struct Socket {
    /// Every frame received so far.
    pub(crate) frames: Arc<Mutex<Vec<Frame>>>,
    /// Set when the connection ended.
    pub(crate) ended: Arc<AtomicBool>,
    /// Woken on every frame and at the end.
    pub(crate) notify: Arc<Notify>,
    /// The sending half.
    pub(crate) sink: WsSink,
    /// The task filling `frames`.
    pub(crate) reader: JoinHandle<()>,
}

impl Socket {
    pub(crate) async fn connect(base: &str, path: &str) -> Self {
        Self::try_connect(base, path)
            .await
            .unwrap_or_else(|e| panic!("ws connect {path}: {e}"))
    }

    pub(crate) async fn try_connect(base: &str, path: &str) -> Result<Self, String> {
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

    pub(crate) fn snapshot(&self) -> Vec<Frame> {
        self.frames.lock().expect("frames").clone()
    }

    /// Waits until `done` holds for the frames received so far.
    pub(crate) async fn wait(
        &self,
        what: &str,
        done: impl Fn(&[Frame], bool) -> bool,
    ) -> Vec<Frame> {
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

    pub(crate) async fn wait_count(&self, n: usize) -> Vec<Frame> {
        self.wait(&format!("{n} frames"), |f, _| f.len() >= n).await
    }

    /// Waits for `executing {node: null, prompt_id}`.
    pub(crate) async fn wait_done(&self, prompt_id: &str) -> Vec<Frame> {
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
    pub(crate) async fn wait_ended(&self) {
        self.wait("the end of the connection", |_, ended| ended)
            .await;
    }

    pub(crate) async fn send_json(&mut self, value: &Value) {
        self.sink
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("ws send");
    }

    pub(crate) async fn send_raw(&mut self, message: Message) {
        let _ = self.sink.send(message).await;
    }

    /// Closes and waits for the server's acknowledgement.
    pub(crate) async fn close(mut self) -> Vec<Frame> {
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
pub(crate) struct Exchange {
    /// The HTTP method.
    pub(crate) method: String,
    /// The recorded path (before id mapping).
    pub(crate) path: String,
    /// The recorded `http_response` event.
    pub(crate) recorded: Value,
    /// The fake's answer.
    pub(crate) actual: Reply,
}

/// Replays a transcript's client actions against a fake.
pub(crate) struct Replay {
    /// The fake's base URL.
    pub(crate) base: String,
    /// The HTTP client.
    pub(crate) http: Http,
    /// Open sockets by transcript label.
    pub(crate) sockets: HashMap<String, Socket>,
    /// Frames of the sockets the transcript closed, by label.
    pub(crate) closed: HashMap<String, Vec<Frame>>,
    /// Recorded prompt id → the fake's.
    pub(crate) ids: HashMap<String, String>,
    /// Every replayed request, in order.
    pub(crate) exchanges: Vec<Exchange>,
}

impl Replay {
    pub(crate) fn new(fake: &FakeComfy) -> Self {
        Self {
            base: fake.base_url(),
            http: Http::new(&fake.base_url()),
            sockets: HashMap::new(),
            closed: HashMap::new(),
            ids: HashMap::new(),
            exchanges: Vec::new(),
        }
    }

    pub(crate) fn map_ids(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (recorded, actual) in &self.ids {
            out = out.replace(recorded.as_str(), actual);
        }
        out
    }

    /// Waits until every open socket has the frames it had in the recording
    /// before event `index`.
    pub(crate) async fn sync(&self, t: &Value, index: usize) {
        for (label, socket) in &self.sockets {
            let expected = events(t)[..index]
                .iter()
                .filter(|e| e["kind"] == "ws_recv" && e["ws"] == label.as_str())
                .count();
            socket.wait_count(expected).await;
        }
    }

    /// Replays `t`; `rewrite` may change a request body before it is sent.
    pub(crate) async fn run(&mut self, t: &Value, rewrite: &dyn Fn(&str, &mut Value)) {
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
    pub(crate) fn frames(&self, label: &str) -> Vec<Frame> {
        self.sockets
            .get(label)
            .map(Socket::snapshot)
            .or_else(|| self.closed.get(label).cloned())
            .expect("socket label")
    }

    /// The exchanges whose recorded path is `path`.
    pub(crate) fn exchange(&self, method: &str, path: &str) -> &Exchange {
        self.exchanges
            .iter()
            .find(|x| x.method == method && x.path == path)
            .unwrap_or_else(|| panic!("no exchange {method} {path}"))
    }

    /// Compares every exchange with the recording, except those `skip` names.
    pub(crate) fn assert_http(&self, opts: &ShapeOpts, skip: &[&str]) {
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
    pub(crate) fn assert_ws(&self, t: &Value, label: &str, opts: &ShapeOpts) {
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
    pub(crate) fn assert_ws_per_prompt(&self, t: &Value, label: &str, opts: &ShapeOpts) {
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
pub(crate) fn as_recorded(_: &str, _: &mut Value) {}
