//! The fake's node set: EmptyImage, ImageInvert, ImageScale, SaveImage,
//! SaveImageWebsocket, PreviewImage, LoadImage and the capture's test nodes
//! TestDelay, TestFail and TestWriteBlob.
//!
//! Their `/object_info` entries are the captured ones (`object_info.json`
//! beside this file); input specs for validation are derived from them, so
//! the two can never disagree. This module also runs the nodes that only
//! compute (images, files); the nodes that report progress (TestDelay,
//! SaveImageWebsocket) run in the executor, which owns progress and
//! interruption.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

use super::files::{self, Dirs};
use super::image::{self, ImageBatch, MaskBatch, PngLayout};
use super::pyjson::{self, object};

/// Which node a class type runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// A batch of solid-color images.
    EmptyImage,
    /// `1 - x` on every channel.
    ImageInvert,
    /// Resize, optionally center-cropped.
    ImageScale,
    /// Writes PNGs to `output/` and shows them.
    SaveImage,
    /// Sends PNGs as binary preview frames; no UI, no files.
    SaveImageWebsocket,
    /// Writes PNGs to `temp/` and shows them.
    PreviewImage,
    /// Reads an image from `input/`.
    LoadImage,
    /// Sleeps with progress, honours interrupt.
    TestDelay,
    /// Raises `RuntimeError(message)`.
    TestFail,
    /// Writes `size` bytes to `output/`.
    TestWriteBlob,
}

/// The type of a declared input.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum InputType {
    /// A named type such as `INT`, `FLOAT`, `STRING`, `BOOLEAN`, `IMAGE`.
    Named(String),
    /// A combo: the value must be one of these.
    Combo(Vec<Value>),
}

impl InputType {
    /// The type as ComfyUI puts it in `input_config` and messages.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            InputType::Named(name) => Value::String(name.clone()),
            InputType::Combo(options) => Value::Array(options.clone()),
        }
    }

    /// The type as `str()` prints it in a `return_type_mismatch` message.
    pub(crate) fn display(&self) -> String {
        match self {
            InputType::Named(name) => name.clone(),
            InputType::Combo(options) => pyjson::repr(&Value::Array(options.clone())),
        }
    }
}

/// One declared (required or optional) input of a node.
#[derive(Debug, Clone)]
pub(crate) struct InputSpec {
    /// The input's name.
    pub(crate) name: String,
    /// Whether a prompt must give it.
    pub(crate) required: bool,
    /// Its type.
    pub(crate) ty: InputType,
    /// Its options (`min`, `max`, `default`, …); empty when none.
    pub(crate) extra: Map<String, Value>,
}

impl InputSpec {
    /// `(input_type, extra_info)` as ComfyUI reports it in validation errors.
    pub(crate) fn config(&self) -> Value {
        Value::Array(vec![self.ty.to_value(), Value::Object(self.extra.clone())])
    }
}

/// Everything the fake knows about one node class.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    /// The class type (`"SaveImage"`).
    pub(crate) class_type: String,
    /// Which implementation runs it.
    pub(crate) kind: NodeKind,
    /// Required inputs then optional ones, in declared order.
    pub(crate) inputs: Vec<InputSpec>,
    /// Hidden inputs: name and kind (`UNIQUE_ID`, `PROMPT`, `EXTRA_PNGINFO`).
    pub(crate) hidden: Vec<(String, String)>,
    /// The output types (`RETURN_TYPES`).
    pub(crate) outputs: Vec<String>,
    /// Whether it is an output node.
    pub(crate) output_node: bool,
    /// Inputs checked by the node's own `VALIDATE_INPUTS` instead of the
    /// generic range and combo checks.
    pub(crate) custom_validated: Vec<String>,
    /// Its `/object_info` entry.
    pub(crate) info: Value,
}

impl NodeSpec {
    /// The declared input called `name`, if any.
    pub(crate) fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Whether the cache key includes the node id (a hidden `UNIQUE_ID`).
    pub(crate) fn keyed_by_node_id(&self) -> bool {
        self.hidden.iter().any(|(_, kind)| kind == "UNIQUE_ID")
    }
}

/// The node set, parsed once from the captured `/object_info` entries.
#[derive(Debug)]
pub(crate) struct Catalog {
    /// One spec per class, in `/object_info` order.
    specs: Vec<NodeSpec>,
}

/// The captured `/object_info/{class}` bodies of the fake's node set.
const OBJECT_INFO: &str = include_str!("object_info.json");

static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::parse);

/// The node set.
pub(crate) fn catalog() -> &'static Catalog {
    &CATALOG
}

impl Catalog {
    /// Parses [`OBJECT_INFO`]. It is a constant of this crate, so a parse
    /// failure is a build defect that the unit tests catch; it yields an
    /// empty catalog rather than a panic.
    fn parse() -> Self {
        let Ok(Value::Object(entries)) = serde_json::from_str::<Value>(OBJECT_INFO) else {
            return Self { specs: Vec::new() };
        };
        let specs = entries
            .into_iter()
            .filter_map(|(class_type, info)| spec_from_info(class_type, info))
            .collect();
        Self { specs }
    }

    /// The spec of `class_type`, if the fake has that node.
    pub(crate) fn get(&self, class_type: &str) -> Option<&NodeSpec> {
        self.specs.iter().find(|s| s.class_type == class_type)
    }

    /// `GET /object_info/{class}`: `{class: info}`, or `{}` when unknown.
    pub(crate) fn object_info_one(&self, class_type: &str, dirs: &Dirs) -> Value {
        let mut out = Map::new();
        if let Some(spec) = self.get(class_type) {
            out.insert(spec.class_type.clone(), live_info(spec, dirs));
        }
        Value::Object(out)
    }

    /// `GET /object_info`: every node of the set.
    pub(crate) fn object_info_all(&self, dirs: &Dirs) -> Value {
        let mut out = Map::new();
        for spec in &self.specs {
            out.insert(spec.class_type.clone(), live_info(spec, dirs));
        }
        Value::Object(out)
    }
}

/// The spec's info with LoadImage's choices read from the input folder.
fn live_info(spec: &NodeSpec, dirs: &Dirs) -> Value {
    let mut info = spec.info.clone();
    if spec.kind == NodeKind::LoadImage
        && let Some(choices) = info.pointer_mut("/input/required/image/0")
    {
        *choices = Value::Array(
            files::input_images(&dirs.input)
                .into_iter()
                .map(Value::String)
                .collect(),
        );
    }
    info
}

/// Builds a spec from one captured `/object_info` entry.
fn spec_from_info(class_type: String, info: Value) -> Option<NodeSpec> {
    let kind = match class_type.as_str() {
        "EmptyImage" => NodeKind::EmptyImage,
        "ImageInvert" => NodeKind::ImageInvert,
        "ImageScale" => NodeKind::ImageScale,
        "SaveImage" => NodeKind::SaveImage,
        "SaveImageWebsocket" => NodeKind::SaveImageWebsocket,
        "PreviewImage" => NodeKind::PreviewImage,
        "LoadImage" => NodeKind::LoadImage,
        "TestDelay" => NodeKind::TestDelay,
        "TestFail" => NodeKind::TestFail,
        "TestWriteBlob" => NodeKind::TestWriteBlob,
        _ => return None,
    };
    let mut inputs = Vec::new();
    for (category, required) in [("required", true), ("optional", false)] {
        let Some(Value::Object(declared)) = info.pointer(&format!("/input/{category}")) else {
            continue;
        };
        for (name, declaration) in declared {
            let Value::Array(parts) = declaration else {
                continue;
            };
            let ty = match parts.first() {
                Some(Value::String(name)) => InputType::Named(name.clone()),
                Some(Value::Array(options)) => InputType::Combo(options.clone()),
                _ => continue,
            };
            let extra = match parts.get(1) {
                Some(Value::Object(extra)) => extra.clone(),
                _ => Map::new(),
            };
            inputs.push(InputSpec {
                name: name.clone(),
                required,
                ty,
                extra,
            });
        }
    }
    let hidden = match info.pointer("/input/hidden") {
        Some(Value::Object(hidden)) => hidden
            .iter()
            .map(|(name, kind)| (name.clone(), pyjson::str_of(kind)))
            .collect(),
        _ => Vec::new(),
    };
    let outputs = match info.get("output") {
        Some(Value::Array(outputs)) => outputs.iter().map(pyjson::str_of).collect(),
        _ => Vec::new(),
    };
    let output_node = info.get("output_node") == Some(&Value::Bool(true));
    let custom_validated = if kind == NodeKind::LoadImage {
        vec!["image".to_owned()]
    } else {
        Vec::new()
    };
    Some(NodeSpec {
        class_type,
        kind,
        inputs,
        hidden,
        outputs,
        output_node,
        custom_validated,
        info,
    })
}

/// A value flowing into or out of a node.
#[derive(Debug, Clone)]
pub(crate) enum Datum {
    /// A literal input or a plain output (INT).
    Json(Value),
    /// An `IMAGE` batch.
    Image(Arc<ImageBatch>),
    /// A `MASK` batch.
    Mask(Arc<MaskBatch>),
}

impl Datum {
    /// `format_value` of `execution_error.current_inputs`: scalars as they
    /// are, anything else as its `str()`.
    pub(crate) fn format_value(&self) -> Value {
        match self {
            Datum::Json(
                v @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)),
            ) => v.clone(),
            Datum::Json(other) => Value::String(pyjson::str_of(other)),
            Datum::Image(batch) => Value::String(format!(
                "tensor(<IMAGE {}x{}x{}x3>)",
                batch.frames.len(),
                batch.height,
                batch.width
            )),
            Datum::Mask(batch) => Value::String(format!(
                "tensor(<MASK {}x{}x{}>)",
                batch.frames.len(),
                batch.height,
                batch.width
            )),
        }
    }

    /// The Python type name of the value, for error messages.
    fn type_name(&self) -> &'static str {
        match self {
            Datum::Json(v) => pyjson::type_name(v),
            Datum::Image(_) | Datum::Mask(_) => "Tensor",
        }
    }
}

/// A Python exception raised by a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PyException {
    /// `exception_type` (`"RuntimeError"`).
    pub(crate) exception_type: String,
    /// `str(exception)`.
    pub(crate) message: String,
    /// `traceback.format_tb` lines.
    pub(crate) traceback: Vec<String>,
}

/// The frames ComfyUI's executor adds above every node function.
pub(crate) fn traceback(file: &str, line: u32, function: &str) -> Vec<String> {
    let frame = |file: &str, line: u32, function: &str| {
        format!("  File \"<ComfyUI>/{file}\", line {line}, in {function}\n")
    };
    vec![
        frame("execution.py", 545, "execute"),
        frame("execution.py", 344, "get_output_data"),
        frame("execution.py", 318, "_async_map_node_over_list"),
        frame("execution.py", 306, "process_inputs"),
        frame(file, line, function),
    ]
}

impl PyException {
    /// An exception raised at `file:line` in `function`.
    pub(crate) fn new(
        exception_type: &str,
        message: impl Into<String>,
        file: &str,
        line: u32,
        function: &str,
    ) -> Self {
        Self {
            exception_type: exception_type.to_owned(),
            message: message.into(),
            traceback: traceback(file, line, function),
        }
    }
}

/// The inputs a node function receives (`input_data_all`), in prompt order.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeInputs {
    /// Name and value of every given input, then the hidden ones.
    pub(crate) values: Vec<(String, Datum)>,
}

impl NodeInputs {
    /// The value of input `name`, if given.
    pub(crate) fn get(&self, name: &str) -> Option<&Datum> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// `current_inputs` of an `execution_error`.
    pub(crate) fn formatted(&self) -> Value {
        let mut map = Map::new();
        for (name, value) in &self.values {
            map.insert(name.clone(), Value::Array(vec![value.format_value()]));
        }
        Value::Object(map)
    }

    /// A JSON input, or a `TypeError` naming the missing argument.
    fn json(&self, name: &str, at: Site) -> Result<&Value, PyException> {
        match self.get(name) {
            Some(Datum::Json(v)) => Ok(v),
            Some(other) => Err(at.raise(
                "TypeError",
                format!(
                    "unsupported operand type for {name}: '{}'",
                    other.type_name()
                ),
            )),
            None => Err(at.raise(
                "TypeError",
                format!(
                    "{}() missing 1 required positional argument: '{name}'",
                    at.function
                ),
            )),
        }
    }

    /// An integer input.
    pub(crate) fn int(&self, name: &str, at: Site) -> Result<i64, PyException> {
        let value = self.json(name, at)?;
        value
            .as_i64()
            .or_else(|| value.as_f64().map(|x| x as i64))
            .ok_or_else(|| {
                at.raise(
                    "TypeError",
                    format!(
                        "'{}' object cannot be interpreted as an integer",
                        pyjson::type_name(value)
                    ),
                )
            })
    }

    /// A float input.
    pub(crate) fn float(&self, name: &str, at: Site) -> Result<f64, PyException> {
        let value = self.json(name, at)?;
        value.as_f64().ok_or_else(|| {
            at.raise(
                "TypeError",
                format!("must be real number, not {}", pyjson::type_name(value)),
            )
        })
    }

    /// A string input (`str()` of whatever was given).
    pub(crate) fn string(&self, name: &str, at: Site) -> Result<String, PyException> {
        self.json(name, at).map(pyjson::str_of)
    }

    /// An `IMAGE` input.
    pub(crate) fn image(&self, name: &str, at: Site) -> Result<Arc<ImageBatch>, PyException> {
        match self.get(name) {
            Some(Datum::Image(batch)) => Ok(batch.clone()),
            Some(other) => Err(at.raise(
                "AttributeError",
                format!("'{}' object has no attribute 'cpu'", other.type_name()),
            )),
            None => Err(at.raise(
                "TypeError",
                format!(
                    "{}() missing 1 required positional argument: '{name}'",
                    at.function
                ),
            )),
        }
    }
}

/// Where a node function lives, for its traceback frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Site {
    /// Source file relative to ComfyUI's root.
    pub(crate) file: &'static str,
    /// Line of the failing statement.
    pub(crate) line: u32,
    /// The node's function name.
    pub(crate) function: &'static str,
}

impl Site {
    /// An exception raised here.
    pub(crate) fn raise(&self, exception_type: &str, message: impl Into<String>) -> PyException {
        PyException::new(exception_type, message, self.file, self.line, self.function)
    }
}

/// What a node produced.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeOutcome {
    /// One value per output slot.
    pub(crate) outputs: Vec<Datum>,
    /// The UI dict (`{"images": [...]}`), when the node shows something.
    pub(crate) ui: Option<Map<String, Value>>,
}

/// What a computing node may read besides its inputs.
#[derive(Debug, Clone)]
pub(crate) struct NodeEnv {
    /// The fake's folders.
    pub(crate) dirs: Dirs,
    /// The prompt being run (SaveImage's `prompt` text chunk).
    pub(crate) prompt: Value,
    /// `extra_data.extra_pnginfo` (SaveImage's other text chunks).
    pub(crate) extra_pnginfo: Option<Value>,
}

/// Runs a node that only computes. Blocking (file I/O, pixel loops): call it
/// from a blocking thread.
pub(crate) fn run_computing(
    kind: NodeKind,
    inputs: &NodeInputs,
    env: &NodeEnv,
) -> Result<NodeOutcome, PyException> {
    match kind {
        NodeKind::EmptyImage => empty_image(inputs),
        NodeKind::ImageInvert => {
            let at = Site {
                file: "nodes.py",
                line: 1851,
                function: "invert",
            };
            let image = inputs.image("image", at)?;
            Ok(one(Datum::Image(Arc::new(image.inverted()))))
        }
        NodeKind::ImageScale => image_scale(inputs),
        NodeKind::SaveImage => save_images(inputs, env, SaveTarget::Output),
        NodeKind::PreviewImage => save_images(inputs, env, SaveTarget::Temp),
        NodeKind::LoadImage => load_image(inputs, env),
        NodeKind::TestFail => {
            let at = Site {
                file: "custom_nodes/zz_test_nodes.py",
                line: 79,
                function: "run",
            };
            let message = inputs.string("message", at)?;
            Err(at.raise("RuntimeError", message))
        }
        NodeKind::TestWriteBlob => write_blob(inputs, env),
        NodeKind::TestDelay | NodeKind::SaveImageWebsocket => Ok(NodeOutcome::default()),
    }
}

/// A single-output result without UI.
fn one(datum: Datum) -> NodeOutcome {
    NodeOutcome {
        outputs: vec![datum],
        ui: None,
    }
}

/// Narrows an integer input to a pixel size.
fn dimension(value: i64, at: Site) -> Result<u32, PyException> {
    u32::try_from(value).map_err(|_| {
        at.raise(
            "RuntimeError",
            format!("Trying to create tensor with negative dimension {value}"),
        )
    })
}

fn empty_image(inputs: &NodeInputs) -> Result<NodeOutcome, PyException> {
    let at = Site {
        file: "nodes.py",
        line: 1903,
        function: "generate",
    };
    let width = dimension(inputs.int("width", at)?, at)?;
    let height = dimension(inputs.int("height", at)?, at)?;
    let batch = dimension(inputs.int("batch_size", at)?, at)?;
    let color = inputs.int("color", at)?.clamp(0, 0xff_ffff) as u32;
    let image = ImageBatch::filled(width, height, u64::from(batch), color)
        .map_err(|m| at.raise("RuntimeError", m))?;
    Ok(one(Datum::Image(Arc::new(image))))
}

fn image_scale(inputs: &NodeInputs) -> Result<NodeOutcome, PyException> {
    let at = Site {
        file: "nodes.py",
        line: 1807,
        function: "upscale",
    };
    let image = inputs.image("image", at)?;
    let method = inputs.string("upscale_method", at)?;
    let width = dimension(inputs.int("width", at)?, at)?;
    let height = dimension(inputs.int("height", at)?, at)?;
    let crop = inputs.string("crop", at)?;
    let scaled = image
        .scaled(&method, width, height, crop == "center")
        .map_err(|m| at.raise("RuntimeError", m))?;
    Ok(one(Datum::Image(Arc::new(scaled))))
}

/// Where SaveImage/PreviewImage write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SaveTarget {
    /// `output/`, `type: "output"`.
    Output,
    /// `temp/`, `type: "temp"`, with a random `_temp_xxxxx` suffix.
    Temp,
}

/// Replaces ComfyUI's `%width%`, `%height%` and date variables in a prefix.
fn compute_vars(prefix: &str, width: u32, height: u32) -> String {
    if !prefix.contains('%') {
        return prefix.to_owned();
    }
    let now = chrono::Local::now();
    prefix
        .replace("%width%", &width.to_string())
        .replace("%height%", &height.to_string())
        .replace("%year%", &now.format("%Y").to_string())
        .replace("%month%", &now.format("%m").to_string())
        .replace("%day%", &now.format("%d").to_string())
        .replace("%hour%", &now.format("%H").to_string())
        .replace("%minute%", &now.format("%M").to_string())
        .replace("%second%", &now.format("%S").to_string())
}

/// Whether a PNG `tEXt` keyword is safe to write.
fn valid_keyword(keyword: &str) -> bool {
    (1..=79).contains(&keyword.len())
        && keyword
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ' '))
        && !keyword.starts_with(' ')
        && !keyword.ends_with(' ')
}

fn save_images(
    inputs: &NodeInputs,
    env: &NodeEnv,
    target: SaveTarget,
) -> Result<NodeOutcome, PyException> {
    let at = Site {
        file: "nodes.py",
        line: 1640,
        function: "save_images",
    };
    let images = inputs.image("images", at)?;
    let (base, kind, prefix) = match target {
        SaveTarget::Output => (
            &env.dirs.output,
            "output",
            inputs.string("filename_prefix", at)?,
        ),
        SaveTarget::Temp => {
            // ComfyUI's own alphabet (it has no 'w').
            let letters = b"abcdefghijklmnopqrstupvxyz";
            let suffix: String = uuid::Uuid::new_v4().as_bytes()[..5]
                .iter()
                .map(|b| char::from(letters[usize::from(*b) % letters.len()]))
                .collect();
            (&env.dirs.temp, "temp", format!("ComfyUI_temp_{suffix}"))
        }
    };
    let prefix = compute_vars(&prefix, images.width, images.height);
    let mut path = files::save_path(base, &prefix).map_err(|m| at.raise("Exception", m))?;
    let mut text = Vec::new();
    if target == SaveTarget::Output {
        text.push(("prompt".to_owned(), pyjson::dumps(&env.prompt)));
        if let Some(Value::Object(extra)) = &env.extra_pnginfo {
            for (key, value) in extra {
                if valid_keyword(key) {
                    text.push((key.clone(), pyjson::dumps(value)));
                }
            }
        }
    }
    let mut results = Vec::new();
    for (batch_number, frame) in images.frames.iter().enumerate() {
        let stem = path
            .filename
            .replace("%batch_num%", &batch_number.to_string());
        let file = format!("{stem}_{:05}_.png", path.counter);
        let bytes = image::encode_png(
            images.width,
            images.height,
            PngLayout::Rgb,
            frame,
            &text,
            target == SaveTarget::Temp,
        )
        .map_err(|m| at.raise("OSError", m))?;
        std::fs::write(path.folder.join(&file), bytes)
            .map_err(|e| at.raise("OSError", e.to_string()))?;
        results.push(object([
            ("filename", Value::String(file)),
            ("subfolder", Value::String(path.subfolder.clone())),
            ("type", Value::String(kind.to_owned())),
        ]));
        path.counter = path.counter.saturating_add(1);
    }
    let mut ui = Map::new();
    ui.insert("images".to_owned(), Value::Array(results));
    Ok(NodeOutcome {
        outputs: vec![Datum::Image(images)],
        ui: Some(ui),
    })
}

fn load_image(inputs: &NodeInputs, env: &NodeEnv) -> Result<NodeOutcome, PyException> {
    let at = Site {
        file: "nodes.py",
        line: 1714,
        function: "load_image",
    };
    let name = inputs.string("image", at)?;
    let path = env.dirs.annotated_input_path(&name).ok_or_else(|| {
        at.raise(
            "FileNotFoundError",
            format!(
                "[Errno 2] No such file or directory: {}",
                pyjson::str_repr(&name)
            ),
        )
    })?;
    let bytes = std::fs::read(&path).map_err(|_| {
        at.raise(
            "FileNotFoundError",
            format!(
                "[Errno 2] No such file or directory: {}",
                pyjson::str_repr(&path.to_string_lossy())
            ),
        )
    })?;
    let decoded = image::decode_png(&bytes).map_err(|m| {
        at.raise(
            "PIL.UnidentifiedImageError",
            format!("{m} {}", pyjson::str_repr(&path.to_string_lossy())),
        )
    })?;
    let mask = match &decoded.alpha {
        Some(alpha) => MaskBatch {
            width: decoded.width,
            height: decoded.height,
            frames: vec![alpha.iter().map(|a| 255 - a).collect()],
        },
        None => MaskBatch {
            width: 64,
            height: 64,
            frames: vec![vec![0; 64 * 64]],
        },
    };
    let image = ImageBatch {
        width: decoded.width,
        height: decoded.height,
        frames: vec![decoded.rgb],
    };
    Ok(NodeOutcome {
        outputs: vec![Datum::Image(Arc::new(image)), Datum::Mask(Arc::new(mask))],
        ui: None,
    })
}

/// Whether LoadImage's `VALIDATE_INPUTS` accepts `name`; the error text
/// when it does not.
pub(crate) fn validate_load_image(name: &Value, dirs: &Dirs) -> Result<(), String> {
    let text = pyjson::str_of(name);
    match dirs.annotated_input_path(&text) {
        Some(path) if path.is_file() => Ok(()),
        _ => Err(format!("Invalid image file: {text}")),
    }
}

/// The cache fingerprint of LoadImage's file (`IS_CHANGED`).
pub(crate) fn load_image_fingerprint(name: &Value, dirs: &Dirs) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    if let Some(path) = dirs.annotated_input_path(&pyjson::str_of(name))
        && let Ok(bytes) = std::fs::read(&path)
    {
        bytes.hash(&mut hasher);
    }
    hasher.finish()
}

fn write_blob(inputs: &NodeInputs, env: &NodeEnv) -> Result<NodeOutcome, PyException> {
    let at = Site {
        file: "custom_nodes/zz_test_nodes.py",
        line: 104,
        function: "run",
    };
    let prefix = inputs.string("filename_prefix", at)?;
    let extension = inputs.string("extension", at)?;
    let ui_key = inputs.string("ui_key", at)?;
    let size = inputs.int("size", at)?.clamp(0, 1 << 20) as usize;
    let nonce = inputs
        .get("nonce")
        .map(|d| match d {
            Datum::Json(v) => pyjson::str_of(v),
            _ => String::new(),
        })
        .unwrap_or_default();
    if extension.contains(['/', '\\']) || extension.contains("..") {
        return Err(at.raise(
            "Exception",
            "Saving outside the output folder is not allowed.",
        ));
    }
    let path = files::save_path(&env.dirs.output, &prefix).map_err(|m| at.raise("Exception", m))?;
    let file = format!("{}_{:05}_.{extension}", path.filename, path.counter);
    let seed = nonce
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let bytes: Vec<u8> = (0..size).map(|i| seed.wrapping_add(i as u8)).collect();
    write_file(&path.folder.join(&file), &bytes).map_err(|m| at.raise("OSError", m))?;
    let mut ui = Map::new();
    ui.insert(
        ui_key,
        Value::Array(vec![object([
            ("filename", Value::String(file)),
            ("subfolder", Value::String(path.subfolder)),
            ("type", Value::String("output".to_owned())),
        ])]),
    );
    Ok(NodeOutcome {
        outputs: Vec::new(),
        ui: Some(ui),
    })
}

/// Writes a file, creating its folder.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_the_captured_node_set() {
        let names: Vec<&str> = catalog()
            .specs
            .iter()
            .map(|s| s.class_type.as_str())
            .collect();
        assert_eq!(
            names,
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
        let delay = catalog().get("TestDelay").unwrap();
        assert!(delay.output_node && delay.keyed_by_node_id());
        assert_eq!(delay.outputs, ["INT"]);
        let seconds = delay.input("seconds").unwrap();
        assert_eq!(seconds.ty, InputType::Named("FLOAT".to_owned()));
        assert!(!delay.input("value").unwrap().required);
        let scale = catalog().get("ImageScale").unwrap();
        assert_eq!(
            scale.input("upscale_method").unwrap().config().to_string(),
            r#"[["nearest-exact","bilinear","area","bicubic","lanczos"],{}]"#
        );
        assert!(!catalog().get("EmptyImage").unwrap().output_node);
    }
}
