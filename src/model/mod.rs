//! Domain model: the types that mirror the seed's pydantic models (tasks,
//! workflows, executions, events, metrics), their validation rules and their
//! computed fields, plus the shared validation error.
//!
//! This module is the bottom of the import graph: it must not import any other
//! module of this crate (no gRPC, no generated code, no config, no runtime).
//! Constructors validate; state that has rules (a task's status and progress,
//! a workflow's parsed graph) is private and changes only through methods.
//!
//! # Field paths
//!
//! Every [`FieldViolation`] names the offending field with a path in the style
//! of `google.rpc.BadRequest`, using the proto (snake_case) field names:
//!
//! * a field is its name: `progress`, `metrics.end_time`;
//! * a list element is `[index]`: `tags[2]`, `dependencies[0].task_id`;
//! * a map or JSON-object key is `.key` when the key is an identifier
//!   (`[A-Za-z_][A-Za-z0-9_]*`) and `["key"]` (JSON-quoted) otherwise:
//!   `workflow_json["3"].inputs.image`, `environment["MY-VAR"]`.
//!
//! [`join_path`], [`index_path`] and [`key_path`] build such paths.

use std::fmt;

use serde::Serialize;

/// Defines a fieldless enum whose values are the seed's lowercase strings:
/// derives, `ALL`, `as_str`, `Display`, `FromStr` and serde (lowercase).
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($kind:literal) {
            $(
                $(#[$vmeta:meta])*
                $variant:ident $(= $disc:literal)? => $value:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
        )]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $value)]
                $variant $(= $disc)?,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [Self; <[&str]>::len(&[$($value),+])] = [$(Self::$variant),+];

            /// The seed's lowercase string value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::model::ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($value => Ok(Self::$variant),)+
                    _ => Err($crate::model::ParseEnumError::new($kind, s)),
                }
            }
        }
    };
}

pub mod events;
pub mod json_text;
pub mod ownership;
pub mod task;
mod timestamp;
pub mod workflow;

pub use events::{EventCategory, LogLevel, PerformanceMetric, RuntimeEvent};
pub use ownership::{Ownership, Scope};
pub use task::{
    DEFAULT_MAX_RETRIES, DependencyType, NewTask, RetryError, Task, TaskDependency, TaskEvent,
    TaskEventType, TaskMetrics, TaskPriority, TaskRecord, TaskStatus, TaskType, TransitionError,
};
pub use workflow::{
    ComfyNode, DEFAULT_WORKFLOW_VERSION, ExecutionRecord, ExecutionTransitionError,
    MAX_WORKFLOW_JSON_BYTES, MAX_WORKFLOW_NODES, NewExecution, NewWorkflow, OUTPUT_NODE_CLASSES,
    WorkflowDefinition, WorkflowExecution, WorkflowRecord, is_output_class,
};

/// Free-form JSON object (metadata, node inputs, outputs, config). With
/// serde_json's `arbitrary_precision` and `preserve_order` features numbers
/// keep their exact text and keys keep their order.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// A hash map for the keys the runtime makes or has checked (ids, sequence
/// numbers): foldhash, seeded once per process, instead of std's SipHash,
/// which was 4% of a memory-store submit's CPU (the actor's, the
/// scheduler's and the memory store's maps). Keys a client picks freely
/// (idempotency keys) stay on std's hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set of such keys; see [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Longest name (task, workflow, tag, metric) in characters, after stripping.
pub const MAX_NAME_CHARS: usize = 256;

/// Longest id (task, workflow, execution, client) in characters.
pub const MAX_ID_CHARS: usize = 256;

/// Deepest nesting of JSON arrays/objects accepted anywhere (a top-level
/// object counts as depth 1). Keeps recursive serde code far from the stack's end.
pub const MAX_JSON_DEPTH: usize = 64;

/// One broken rule: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldViolation {
    /// Path of the field (see the module docs for the syntax), e.g. `tags[1]`.
    pub field: String,
    /// What is wrong, lowercase, e.g. `must not be empty`.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.description)
        } else {
            write!(f, "{}: {}", self.field, self.description)
        }
    }
}

/// Input broke one or more validation rules; carries every violation found,
/// not only the first, so a client can fix them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("validation failed: {}", join_violations(.violations))]
pub struct ValidationError {
    /// The violations, in the order they were found.
    pub violations: Vec<FieldViolation>,
}

fn join_violations(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ValidationError {
    /// No violations yet; collect them with [`push`](Self::push).
    pub fn new() -> Self {
        Self::default()
    }

    /// Exactly one violation.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            violations: vec![FieldViolation::new(field, description)],
        }
    }

    /// Adds a violation.
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    /// Whether no violation was recorded.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations were recorded.
    pub fn len(&self) -> usize {
        self.violations.len()
    }

    /// Whether some violation names exactly `field`.
    pub fn has_field(&self, field: &str) -> bool {
        self.violations.iter().any(|v| v.field == field)
    }

    /// Puts `prefix` in front of every field path (`image` under
    /// `nodes["3"].inputs` becomes `nodes["3"].inputs.image`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for v in &mut self.violations {
            v.field = join_path(prefix, &v.field);
        }
        self
    }

    /// Appends every violation of `other`.
    pub fn extend(&mut self, other: ValidationError) {
        self.violations.extend(other.violations);
    }

    /// Records the violations of a failed result and returns its value, if any.
    pub fn absorb<T>(&mut self, result: Result<T, ValidationError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.extend(e);
                None
            }
        }
    }

    /// `Ok(())` when empty, otherwise `Err(self)`.
    pub fn into_result(self) -> Result<(), ValidationError> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// `prefix` followed by `rest`: `a` + `b` is `a.b`, `a` + `[0]` is `a[0]`;
/// an empty side leaves the other unchanged.
pub fn join_path(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_owned()
    } else if rest.is_empty() {
        prefix.to_owned()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// The path of element `index` of the list `field`: `tags[3]`.
pub fn index_path(field: &str, index: usize) -> String {
    format!("{field}[{index}]")
}

/// The path of `key` in the map `field`: `.key` for identifiers, `["key"]`
/// (JSON-quoted) otherwise. An empty `field` gives a path relative to the map.
pub fn key_path(field: &str, key: &str) -> String {
    let mut chars = key.chars();
    let is_identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if is_identifier {
        join_path(field, key)
    } else {
        // Value's Display writes a JSON string literal and cannot fail.
        format!("{field}[{}]", serde_json::Value::String(key.to_owned()))
    }
}

/// Strips surrounding whitespace (the seed's `str_strip_whitespace`) and
/// checks the result is non-empty and at most [`MAX_NAME_CHARS`] characters.
/// Returns the stripped name.
pub fn validate_name(field: &str, raw: &str) -> Result<String, ValidationError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ValidationError::single(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ValidationError::single(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// A fresh id for a task, an execution, a workflow, an event or a request: a
/// UUID version 7 (RFC 9562), whose leading bits are the time in milliseconds.
/// Ids made one after another sort one after another, so the store's id
/// indexes grow at one end instead of taking each insert at a random page
/// (with version 4 ids every submit rewrote four random index pages), and
/// ids within one millisecond still differ (a counter, then random bits).
pub fn new_id() -> String {
    uuid_text(uuid::Uuid::now_v7())
}

/// `uuid` as an id: hyphenated, lowercase. Written into a buffer of its size
/// and copied once (`to_string` goes through the formatter and grows its
/// string as it writes).
pub fn uuid_text(uuid: uuid::Uuid) -> String {
    let mut text = uuid::Uuid::encode_buffer();
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

/// Checks an identifier as given (ids are never rewritten): non-empty, no
/// surrounding whitespace, at most [`MAX_ID_CHARS`] characters.
pub fn validate_id(field: &str, id: &str) -> Result<(), ValidationError> {
    if id.trim().is_empty() {
        Err(ValidationError::single(field, "must not be empty"))
    } else if id.trim() != id {
        Err(ValidationError::single(
            field,
            "must not have surrounding whitespace",
        ))
    } else if id.chars().count() > MAX_ID_CHARS {
        Err(ValidationError::single(
            field,
            format!("must be at most {MAX_ID_CHARS} characters"),
        ))
    } else {
        Ok(())
    }
}

/// The seed's "simple semver" rule: exactly three dot-separated parts, each a
/// non-empty run of ASCII digits (`1.0.0`; not `1.0`, `1.a.0` or `1..0`).
/// Stricter than the seed, as semver itself is: no leading zeros (`1.01.0`
/// would otherwise be a second spelling of `1.1.0`) and each part fits a u64,
/// so every valid version has exactly one numeric identity.
pub fn validate_semver(field: &str, version: &str) -> Result<(), ValidationError> {
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() != 3
        || !parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ValidationError::single(
            field,
            "version must be in semver format (x.y.z)",
        ));
    }
    if parts.iter().any(|p| p.len() > 1 && p.starts_with('0')) {
        return Err(ValidationError::single(
            field,
            "version parts must not have leading zeros",
        ));
    }
    if parts.iter().any(|p| p.parse::<u64>().is_err()) {
        return Err(ValidationError::single(
            field,
            format!("version parts must be at most {}", u64::MAX),
        ));
    }
    Ok(())
}

/// Checks a free-form JSON object: keys non-empty and nesting at most
/// [`MAX_JSON_DEPTH`] deep (the object itself is depth 1).
pub fn validate_json_object(field: &str, object: &JsonObject) -> Result<(), ValidationError> {
    let mut errors = ValidationError::new();
    if object.keys().any(String::is_empty) {
        errors.push(field, "keys must not be empty");
    }
    if json_object_depth(object) > MAX_JSON_DEPTH {
        errors.push(
            field,
            format!("must not nest deeper than {MAX_JSON_DEPTH} levels"),
        );
    }
    errors.into_result()
}

/// Nesting depth of a JSON object (1 for a flat object), without recursion.
pub fn json_object_depth(object: &JsonObject) -> usize {
    let mut max = 1;
    let mut stack: Vec<(&serde_json::Value, usize)> = object.values().map(|v| (v, 2)).collect();
    while let Some((value, depth)) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                max = max.max(depth);
                stack.extend(map.values().map(|v| (v, depth + 1)));
            }
            serde_json::Value::Array(items) => {
                max = max.max(depth);
                stack.extend(items.iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Checks an optional measurement: finite and not negative.
pub(crate) fn check_non_negative(errors: &mut ValidationError, field: &str, value: Option<f64>) {
    if let Some(v) = value
        && (!v.is_finite() || v < 0.0)
    {
        errors.push(field, "must be a finite number >= 0");
    }
}

/// Checks a progress fraction: a number in [0, 1] (NaN is not).
pub(crate) fn check_progress(field: &str, progress: f64) -> Result<(), ValidationError> {
    if (0.0..=1.0).contains(&progress) {
        Ok(())
    } else {
        Err(ValidationError::single(field, "must be between 0 and 1"))
    }
}

/// A string did not name any value of an enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct ParseEnumError {
    /// Which enum, e.g. `task status`.
    pub kind: &'static str,
    /// The rejected input (cut to 64 characters).
    pub value: String,
}

impl ParseEnumError {
    /// An unknown `value` for the enum named `kind`.
    pub fn new(kind: &'static str, value: &str) -> Self {
        Self {
            kind,
            value: value.chars().take(64).collect(),
        }
    }
}

/// The seed's generic `Result` wrapper for an operation. An error message
/// with `success = true` cannot be built (the seed's validator).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpResult<T> {
    /// Whether the operation succeeded.
    success: bool,
    /// What it produced.
    data: Option<T>,
    /// Why it failed; never set (non-empty) when `success` is true.
    error: Option<String>,
    /// Anything else worth returning.
    metadata: JsonObject,
}

impl<T> OpResult<T> {
    /// Checks the seed's rule: a non-empty `error` requires `success = false`
    /// (the seed tests truthiness, so an empty error string is allowed).
    pub fn new(
        success: bool,
        data: Option<T>,
        error: Option<String>,
        metadata: JsonObject,
    ) -> Result<Self, ValidationError> {
        if success && error.as_deref().is_some_and(|e| !e.is_empty()) {
            return Err(ValidationError::single(
                "error",
                "cannot have error with success=true",
            ));
        }
        Ok(Self {
            success,
            data,
            error,
            metadata,
        })
    }

    /// A success carrying `data`.
    pub fn ok(data: T) -> Self {
        Self {
            success: true,
            data: Some(data),
            error: None,
            metadata: JsonObject::new(),
        }
    }

    /// A failure with an error message.
    pub fn failure(error: impl Into<String>) -> Self {
        Self {
            success: false,
            data: None,
            error: Some(error.into()),
            metadata: JsonObject::new(),
        }
    }

    /// Whether the operation succeeded.
    pub fn success(&self) -> bool {
        self.success
    }

    /// What the operation produced.
    pub fn data(&self) -> Option<&T> {
        self.data.as_ref()
    }

    /// Why the operation failed.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Extra information.
    pub fn metadata(&self) -> &JsonObject {
        &self.metadata
    }

    /// Extra information, to add to (it has no rules).
    pub fn metadata_mut(&mut self) -> &mut JsonObject {
        &mut self.metadata
    }

    /// Takes the produced data.
    pub fn into_data(self) -> Option<T> {
        self.data
    }

    /// `(success, data, error, metadata)`.
    pub fn into_parts(self) -> (bool, Option<T>, Option<String>, JsonObject) {
        (self.success, self.data, self.error, self.metadata)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn new_ids_are_uuids_that_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        let id = uuid::Uuid::parse_str(&ids[0]).expect("a UUID");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(ids[0], id.hyphenated().to_string(), "hyphenated, lowercase");
        assert!(validate_id("id", &ids[0]).is_ok());
    }

    #[test]
    fn display_lists_every_violation_lowercase() {
        let mut e = ValidationError::single("name", "must not be empty");
        e.push("progress", "must be between 0 and 1");
        assert_eq!(
            e.to_string(),
            "validation failed: name: must not be empty; progress: must be between 0 and 1"
        );
        assert_eq!(e.len(), 2);
        assert!(!e.is_empty());
        assert!(ValidationError::new().is_empty());
        assert!(ValidationError::new().into_result().is_ok());
        assert!(e.into_result().is_err());
    }

    #[test]
    fn paths_follow_the_documented_scheme() {
        assert_eq!(join_path("", "a"), "a");
        assert_eq!(join_path("a", ""), "a");
        assert_eq!(join_path("a", "b"), "a.b");
        assert_eq!(join_path("a", "[0].b"), "a[0].b");
        assert_eq!(index_path("tags", 2), "tags[2]");
        assert_eq!(key_path("nodes", "3"), "nodes[\"3\"]");
        assert_eq!(key_path("inputs", "image"), "inputs.image");
        assert_eq!(key_path("env", "MY-VAR"), "env[\"MY-VAR\"]");
        assert_eq!(key_path("env", "a\"b"), "env[\"a\\\"b\"]");
        assert_eq!(key_path("", "x"), "x");
        assert_eq!(key_path("m", ""), "m[\"\"]");
        let e = ValidationError::single("image", "bad")
            .prefixed(&key_path("nodes", "3"))
            .prefixed("");
        assert_eq!(e.violations[0].field, "nodes[\"3\"].image");
        let e = ValidationError::single("[1].task_id", "bad").prefixed("dependencies");
        assert!(e.has_field("dependencies[1].task_id"));
    }

    #[test]
    fn absorb_collects_errors_and_keeps_values() {
        let mut errors = ValidationError::new();
        assert_eq!(
            errors.absorb(validate_name("name", " a ")),
            Some("a".into())
        );
        assert_eq!(errors.absorb(validate_name("name", " ")), None);
        assert!(errors.has_field("name"));
    }

    #[test]
    fn validate_name_rules() {
        let long = "x".repeat(MAX_NAME_CHARS);
        let too_long = "é".repeat(MAX_NAME_CHARS + 1);
        let cases: &[(&str, Option<&str>)] = &[
            ("job", Some("job")),
            ("  job \n", Some("job")),
            ("a b", Some("a b")),
            ("", None),
            ("   ", None),
            ("\t\n", None),
            (&long, Some(&long)),
            (&too_long, None),
        ];
        for (raw, want) in cases {
            let got = validate_name("name", raw);
            match want {
                Some(w) => assert_eq!(got.as_deref(), Ok(*w), "{raw:?}"),
                None => {
                    let e = got.expect_err(raw);
                    assert_eq!(e.violations[0].field, "name");
                }
            }
        }
    }

    #[test]
    fn validate_id_rules() {
        let too_long = "i".repeat(MAX_ID_CHARS + 1);
        let cases: &[(&str, bool)] = &[
            ("abc", true),
            ("7f3c-1", true),
            ("", false),
            ("  ", false),
            (" a", false),
            ("a\n", false),
            (&too_long, false),
        ];
        for (id, ok) in cases {
            assert_eq!(validate_id("id", id).is_ok(), *ok, "{id:?}");
        }
    }

    #[test]
    fn semver_rules() {
        let cases: &[(&str, bool)] = &[
            ("1.0.0", true),
            ("0.0.0", true),
            ("10.200.3000", true),
            ("01.2.3", false),
            ("1.01.0", false),
            ("0.0.0", true),
            ("18446744073709551615.0.0", true),
            ("18446744073709551616.0.0", false),
            ("1.0", false),
            ("1", false),
            ("", false),
            ("1.a.0", false),
            ("1..0", false),
            ("1.0.0.0", false),
            ("1.0.0-beta", false),
            (" 1.0.0", false),
            ("-1.0.0", false),
            ("+1.0.0", false),
            ("١.٠.٠", false),
        ];
        for (v, ok) in cases {
            let got = validate_semver("version", v);
            assert_eq!(got.is_ok(), *ok, "{v:?}");
            if let Err(e) = got {
                assert!(e.has_field("version"));
                assert!(e.to_string().contains("version"));
            }
        }
    }

    #[test]
    fn json_object_rules() {
        let flat = json!({"a": 1}).as_object().cloned().unwrap_or_default();
        assert_eq!(json_object_depth(&flat), 1);
        assert!(validate_json_object("metadata", &flat).is_ok());

        let mut empty_key = JsonObject::new();
        empty_key.insert(String::new(), json!(1));
        let e = validate_json_object("metadata", &empty_key).unwrap_err();
        assert!(e.has_field("metadata"));

        let mut deep = json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            deep = json!([deep]);
        }
        let mut at_limit = JsonObject::new();
        // depth: object (1) + MAX_JSON_DEPTH - 1 arrays
        let mut v = json!(1);
        for _ in 0..MAX_JSON_DEPTH - 1 {
            v = json!([v]);
        }
        at_limit.insert("k".into(), v);
        assert_eq!(json_object_depth(&at_limit), MAX_JSON_DEPTH);
        assert!(validate_json_object("metadata", &at_limit).is_ok());
        let mut over = JsonObject::new();
        over.insert("k".into(), deep);
        assert_eq!(json_object_depth(&over), MAX_JSON_DEPTH + 1);
        assert!(validate_json_object("metadata", &over).is_err());
    }

    #[test]
    fn progress_and_measurement_checks() {
        for (p, ok) in [
            (0.0, true),
            (0.5, true),
            (1.0, true),
            (-0.0, true),
            (1.5, false),
            (-0.1, false),
            (f64::NAN, false),
            (f64::INFINITY, false),
        ] {
            assert_eq!(check_progress("progress", p).is_ok(), ok, "{p}");
        }
        for (v, ok) in [
            (None, true),
            (Some(0.0), true),
            (Some(3.5), true),
            (Some(-1.0), false),
            (Some(f64::NAN), false),
            (Some(f64::INFINITY), false),
        ] {
            let mut e = ValidationError::new();
            check_non_negative(&mut e, "cpu_time", v);
            assert_eq!(e.is_empty(), ok, "{v:?}");
        }
    }

    #[test]
    fn op_result_rejects_error_with_success() {
        let cases: &[(bool, Option<&str>, bool)] = &[
            (true, None, true),
            (true, Some(""), true),
            (true, Some("boom"), false),
            (false, Some("boom"), true),
            (false, None, true),
        ];
        for (success, error, ok) in cases {
            let r =
                OpResult::<u8>::new(*success, None, error.map(str::to_owned), JsonObject::new());
            assert_eq!(r.is_ok(), *ok, "{success} {error:?}");
            if let Err(e) = r {
                assert!(e.has_field("error"));
            }
        }
        let ok = OpResult::ok(5);
        assert!(ok.success());
        assert_eq!(ok.data(), Some(&5));
        assert_eq!(ok.error(), None);
        let failed = OpResult::<u8>::failure("boom");
        assert!(!failed.success());
        assert_eq!(failed.error(), Some("boom"));
        assert_eq!(failed.clone().into_data(), None);
        let (success, data, error, metadata) = failed.into_parts();
        assert!(!success && data.is_none() && error.is_some() && metadata.is_empty());
    }

    #[test]
    fn parse_enum_error_truncates_input() {
        let e = ParseEnumError::new("task status", &"x".repeat(500));
        assert_eq!(e.value.len(), 64);
        assert!(e.to_string().starts_with("unknown task status"));
    }
}
