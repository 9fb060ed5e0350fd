//! Runtime events and performance measurements: `LogLevel`, `EventCategory`,
//! `RuntimeEvent` and `PerformanceMetric`, with their validation.
//!
//! These are plain records; numbering (`sequence`), fan-out and retention
//! belong to the event bus, and exporting metrics to telemetry.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::task::{TaskEvent, TaskEventType};
use super::{
    JsonObject, ValidationError, key_path, validate_id, validate_json_object, validate_name,
};

string_enum! {
    /// Log severity levels (the seed's `LogLevel`), ordered
    /// `Debug < Info < Warning < Error < Critical`.
    #[derive(PartialOrd, Ord, Default)]
    pub enum LogLevel("log level") {
        /// Detail for debugging.
        Debug => "debug",
        /// Normal operation (the default).
        #[default]
        Info => "info",
        /// Something unexpected that was handled.
        Warning => "warning",
        /// An operation failed.
        Error => "error",
        /// The runtime itself is in trouble.
        Critical => "critical",
    }
}

string_enum! {
    /// What an event is about (the seed's `EventCategory`).
    pub enum EventCategory("event category") {
        /// A task's lifecycle.
        Task => "task",
        /// A workflow or execution.
        Workflow => "workflow",
        /// The runtime or a backend.
        System => "system",
        /// A measurement.
        Performance => "performance",
        /// A failure.
        Error => "error",
        /// Who did what, for the record.
        Audit => "audit",
    }
}

/// A generic runtime event (the seed's `RuntimeEvent`), plus the event bus's
/// sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeEvent {
    /// Unique id (UUID v4).
    pub id: String,
    /// What the event is about.
    pub category: EventCategory,
    /// Severity (default info).
    pub level: LogLevel,
    /// Machine-readable kind, e.g. `backend.connected`; stripped, non-empty.
    pub event_type: String,
    /// Human-readable description.
    pub message: String,
    /// Structured detail.
    pub data: JsonObject,
    /// The task it concerns.
    pub task_id: Option<String>,
    /// The workflow it concerns.
    pub workflow_id: Option<String>,
    /// The user who caused it.
    pub user_id: Option<String>,
    /// The client session it belongs to.
    pub session_id: Option<String>,
    /// Module that emitted it.
    pub source_module: Option<String>,
    /// Function that emitted it.
    pub source_function: Option<String>,
    /// Source line that emitted it.
    pub source_line: Option<u32>,
    /// Class of the error, for error events.
    pub error_type: Option<String>,
    /// Error message, for error events.
    pub error_message: Option<String>,
    /// Stack trace, for error events (never sent with secrets in it).
    pub stack_trace: Option<String>,
    /// When it was created.
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    #[serde(serialize_with = "crate::model::timestamp::serialize_option")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Position in the event history, assigned by the event bus (0 until then).
    pub sequence: u64,
}

impl RuntimeEvent {
    /// An info-level event with a fresh id, stamped now; `event_type` is
    /// stripped and must be non-empty.
    pub fn new(
        category: EventCategory,
        event_type: &str,
        message: impl Into<String>,
    ) -> Result<Self, ValidationError> {
        let event = Self {
            id: super::new_id(),
            category,
            level: LogLevel::Info,
            event_type: validate_name("event_type", event_type)?,
            message: message.into(),
            data: JsonObject::new(),
            task_id: None,
            workflow_id: None,
            user_id: None,
            session_id: None,
            source_module: None,
            source_function: None,
            source_line: None,
            error_type: None,
            error_message: None,
            stack_trace: None,
            created_at: Utc::now(),
            updated_at: None,
            sequence: 0,
        };
        Ok(event)
    }

    /// The same event at `level`.
    pub fn with_level(mut self, level: LogLevel) -> Self {
        self.level = level;
        self
    }

    /// Checks every rule: `id` a valid id, `event_type` non-empty and
    /// stripped, `data` a valid object, context ids valid when set.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = ValidationError::new();
        errors.absorb(validate_id("id", &self.id));
        match validate_name("event_type", &self.event_type) {
            Ok(stripped) if stripped != self.event_type => {
                errors.push("event_type", "must not have surrounding whitespace");
            }
            Ok(_) => {}
            Err(e) => errors.extend(e),
        }
        errors.absorb(validate_json_object("data", &self.data));
        for (field, value) in [
            ("task_id", &self.task_id),
            ("workflow_id", &self.workflow_id),
        ] {
            if let Some(id) = value {
                errors.absorb(validate_id(field, id));
            }
        }
        errors.into_result()
    }

    /// Sets `updated_at` to now, never moving it backwards.
    pub fn touch(&mut self) {
        let floor = self.updated_at.unwrap_or(self.created_at);
        self.updated_at = Some(Utc::now().max(floor));
    }
}

/// `event_type` of every audit event.
pub const AUDIT_EVENT_TYPE: &str = "audit.call";

/// What an audit event records of one call: its `data`, field by field, in this order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditFacts {
    /// The caller's name; `None` when it was not known.
    pub principal: Option<Arc<str>>,
    /// The caller's tenant; `None` when the caller was not known.
    pub tenant: Option<Arc<str>>,
    /// The full gRPC method.
    pub method: String,
    /// The id the call was about, when its handler named one.
    pub target_id: Option<String>,
    /// The outcome: a gRPC status code's name (`OK`, `PERMISSION_DENIED` ...).
    pub outcome: &'static str,
    /// The caller's address, when known.
    #[serde(serialize_with = "peer_text")]
    pub peer: Option<SocketAddr>,
}

fn peer_text<S: Serializer>(peer: &Option<SocketAddr>, serializer: S) -> Result<S::Ok, S::Error> {
    match peer {
        Some(peer) => serializer.collect_str(peer),
        None => serializer.serialize_none(),
    }
}

/// An audited call (category AUDIT, event type [`AUDIT_EVENT_TYPE`]), kept as its facts: a
/// few hundred bytes instead of a [`RuntimeEvent`]'s object of six named values, its message
/// and empty fields, about 1.5 KiB that a memory store keeps for each mutating call. A
/// subscriber, a store or a log line sees the runtime event it stands for (category AUDIT,
/// event type [`AUDIT_EVENT_TYPE`], the facts as `data` in their order, the principal as
/// `user_id`), each written from the facts: the protobuf conversion (`api::events_convert`),
/// [`EventPayload`]'s JSON and the log line.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Unique id (a time-ordered UUID, as [`super::new_id`]'s).
    pub id: uuid::Uuid,
    /// Severity.
    pub level: LogLevel,
    /// What happened.
    pub facts: AuditFacts,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Position in the event history, assigned by the event bus (0 until then).
    pub sequence: u64,
}

impl AuditEvent {
    /// An audit event of `facts` with a fresh id, stamped now: INFO when the call succeeded,
    /// else `level`.
    pub fn new(facts: AuditFacts, level: LogLevel) -> Self {
        Self {
            id: uuid::Uuid::now_v7(),
            level: if facts.outcome == "OK" {
                LogLevel::Info
            } else {
                level
            },
            facts,
            created_at: Utc::now(),
            sequence: 0,
        }
    }

    /// Its human-readable description: `"<call|refused call> <method> by <principal>:
    /// <outcome>"`.
    pub fn message(&self) -> impl fmt::Display + '_ {
        AuditMessage(&self.facts)
    }

    /// Its `data` as JSON text.
    pub fn data_text(&self) -> impl fmt::Display + '_ {
        AuditData(&self.facts)
    }

    /// The runtime event it stands for, made whole (read back from the store's JSON of it,
    /// [`AuditEvent::as_json`]): what the tests compare each way of writing an audit event with.
    #[cfg(test)]
    pub(crate) fn to_runtime_event(&self) -> RuntimeEvent {
        serde_json::to_value(self.as_json())
            .and_then(serde_json::from_value)
            .expect("an audit event's JSON is a runtime event's")
    }

    /// What serializes as the runtime event it stands for does, borrowed: a store's JSON of
    /// the event without the runtime event and its object made first.
    fn as_json(&self) -> RuntimeEventJson<'_> {
        RuntimeEventJson {
            id: self.id,
            category: EventCategory::Audit,
            level: self.level,
            event_type: AUDIT_EVENT_TYPE,
            message: AuditMessage(&self.facts),
            data: &self.facts,
            task_id: None,
            workflow_id: None,
            user_id: self.facts.principal.as_deref(),
            session_id: None,
            source_module: None,
            source_function: None,
            source_line: None,
            error_type: None,
            error_message: None,
            stack_trace: None,
            created_at: self.created_at,
            updated_at: None,
            sequence: self.sequence,
        }
    }
}

/// [`RuntimeEvent`]'s fields in its order, each as its derive writes it (see
/// [`AuditEvent::as_json`]).
#[derive(Serialize)]
struct RuntimeEventJson<'a> {
    #[serde(serialize_with = "uuid_as_id")]
    id: uuid::Uuid,
    category: EventCategory,
    level: LogLevel,
    event_type: &'static str,
    #[serde(serialize_with = "display_text")]
    message: AuditMessage<'a>,
    data: &'a AuditFacts,
    task_id: Option<&'a str>,
    workflow_id: Option<&'a str>,
    user_id: Option<&'a str>,
    session_id: Option<&'a str>,
    source_module: Option<&'a str>,
    source_function: Option<&'a str>,
    source_line: Option<u32>,
    error_type: Option<&'a str>,
    error_message: Option<&'a str>,
    stack_trace: Option<&'a str>,
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::model::timestamp::serialize_option")]
    updated_at: Option<DateTime<Utc>>,
    sequence: u64,
}

/// A UUID as an id's text ([`super::uuid_text`]'s), without a `String` on the way.
fn uuid_as_id<S: Serializer>(id: &uuid::Uuid, serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = uuid::Uuid::encode_buffer();
    serializer.serialize_str(id.hyphenated().encode_lower(&mut text))
}

/// A value's `Display` as a string.
fn display_text<S: Serializer>(
    value: &impl fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// [`AuditEvent::message`].
struct AuditMessage<'a>(&'a AuditFacts);

impl fmt::Display for AuditMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let facts = self.0;
        let call = if facts.outcome == "OK" {
            "call"
        } else {
            "refused call"
        };
        let by = facts
            .principal
            .as_deref()
            .unwrap_or("an unauthenticated caller");
        write!(f, "{call} {} by {by}: {}", facts.method, facts.outcome)
    }
}

/// [`AuditEvent::data_text`].
struct AuditData<'a>(&'a AuditFacts);

impl fmt::Display for AuditData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self.0).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

/// One performance measurement (the seed's `PerformanceMetric`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceMetric {
    /// What was measured, e.g. `node_execution_seconds`; stripped, non-empty.
    pub name: String,
    /// The measured value; finite.
    pub value: f64,
    /// Its unit, e.g. `seconds`; stripped, non-empty.
    pub unit: String,
    /// When it was measured.
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub timestamp: DateTime<Utc>,
    /// The task it was measured for.
    pub task_id: Option<String>,
    /// The workflow it was measured for.
    pub workflow_id: Option<String>,
    /// Dimensions, e.g. `{"backend": "gpu0"}`.
    pub tags: BTreeMap<String, String>,
}

impl PerformanceMetric {
    /// A measurement stamped now; name and unit are stripped and must be
    /// non-empty, the value finite.
    pub fn new(name: &str, value: f64, unit: &str) -> Result<Self, ValidationError> {
        let mut errors = ValidationError::new();
        let name = errors.absorb(validate_name("name", name));
        let unit = errors.absorb(validate_name("unit", unit));
        check_finite(&mut errors, value);
        errors.into_result()?;
        Ok(Self {
            name: name.unwrap_or_default(),
            value,
            unit: unit.unwrap_or_default(),
            timestamp: Utc::now(),
            task_id: None,
            workflow_id: None,
            tags: BTreeMap::new(),
        })
    }

    /// Checks every rule: name and unit non-empty and stripped, value finite,
    /// tag names non-empty, context ids valid when set.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = ValidationError::new();
        for (field, text) in [("name", &self.name), ("unit", &self.unit)] {
            match validate_name(field, text) {
                Ok(stripped) if stripped != *text => {
                    errors.push(field, "must not have surrounding whitespace");
                }
                Ok(_) => {}
                Err(e) => errors.extend(e),
            }
        }
        check_finite(&mut errors, self.value);
        for key in self.tags.keys() {
            if key.trim().is_empty() {
                errors.push(key_path("tags", key), "tag names must not be empty");
            }
        }
        for (field, value) in [
            ("task_id", &self.task_id),
            ("workflow_id", &self.workflow_id),
        ] {
            if let Some(id) = value {
                errors.absorb(validate_id(field, id));
            }
        }
        errors.into_result()
    }
}

fn check_finite(errors: &mut ValidationError, value: f64) {
    if !value.is_finite() {
        errors.push("value", "must be a finite number");
    }
}

/// What an event carries.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum EventPayload {
    /// A task's lifecycle event.
    Task(TaskEvent),
    /// Something operators care about (backend up or down, retries, errors).
    /// Boxed: a runtime event is nearly twice a task event's size, and every
    /// event (each a task's in the job path) would otherwise take its room.
    Runtime(Box<RuntimeEvent>),
    /// A measurement (node duration, queue wait, execution time).
    Metric(PerformanceMetric),
    /// An audited call: a runtime event to everyone who reads it (serialized as one, so a
    /// store reads it back as [`EventPayload::Runtime`]), kept as its facts until then.
    #[serde(skip_deserializing)]
    Audit(Box<AuditEvent>),
}

impl Serialize for EventPayload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const NAME: &str = "EventPayload";
        match self {
            Self::Task(event) => serializer.serialize_newtype_variant(NAME, 0, "Task", event),
            Self::Runtime(event) => serializer.serialize_newtype_variant(NAME, 1, "Runtime", event),
            Self::Metric(metric) => serializer.serialize_newtype_variant(NAME, 2, "Metric", metric),
            Self::Audit(event) => {
                serializer.serialize_newtype_variant(NAME, 1, "Runtime", &event.as_json())
            }
        }
    }
}

/// What an event is about, for filtering.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventContext {
    /// The task, when about one.
    pub task_id: Option<String>,
    /// The execution, when about one (its root or node tasks included).
    pub execution_id: Option<String>,
    /// The workflow, when known.
    pub workflow_id: Option<String>,
    /// The tags of the task (node tasks carry their execution's tags).
    pub tags: Vec<String>,
    /// Whether it is about one node of an execution.
    pub node: bool,
}

/// One numbered event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Global position, from 1, strictly increasing.
    pub sequence: u64,
    /// When it was published.
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub timestamp: DateTime<Utc>,
    /// What happened.
    pub payload: EventPayload,
    /// What it is about.
    pub context: EventContext,
}

impl Event {
    /// The category: task events are TASK, metrics PERFORMANCE, runtime
    /// events their own.
    pub fn category(&self) -> EventCategory {
        match &self.payload {
            EventPayload::Task(_) => EventCategory::Task,
            EventPayload::Runtime(event) => event.category,
            EventPayload::Metric(_) => EventCategory::Performance,
            EventPayload::Audit(_) => EventCategory::Audit,
        }
    }

    /// The severity: task events are INFO, except RETRYING (WARNING) and
    /// FAILED (ERROR); metrics DEBUG; runtime events their own.
    pub fn level(&self) -> LogLevel {
        match &self.payload {
            EventPayload::Task(event) => match event.event_type {
                TaskEventType::Failed => LogLevel::Error,
                TaskEventType::Retrying => LogLevel::Warning,
                _ => LogLevel::Info,
            },
            EventPayload::Runtime(event) => event.level,
            EventPayload::Audit(event) => event.level,
            EventPayload::Metric(_) => LogLevel::Debug,
        }
    }

    /// The short kind name: `task`, `runtime` or `metric`.
    pub fn kind(&self) -> &'static str {
        match &self.payload {
            EventPayload::Task(_) => "task",
            EventPayload::Runtime(_) | EventPayload::Audit(_) => "runtime",
            EventPayload::Metric(_) => "metric",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use serde_json::json;

    use super::*;

    /// Every event in the job path is a task's: the payload takes no more room
    /// than a task event (a rarer, larger variant is boxed).
    #[test]
    fn a_payload_is_the_size_of_a_task_event() {
        assert!(
            std::mem::size_of::<EventPayload>() <= std::mem::size_of::<TaskEvent>() + 8,
            "EventPayload is {} bytes, TaskEvent {}",
            std::mem::size_of::<EventPayload>(),
            std::mem::size_of::<TaskEvent>()
        );
    }

    #[test]
    fn log_levels_are_ordered_and_parse() {
        use LogLevel::*;
        assert!(Debug < Info && Info < Warning && Warning < Error && Error < Critical);
        assert_eq!(LogLevel::default(), Info);
        for l in LogLevel::ALL {
            assert_eq!(LogLevel::from_str(l.as_str()), Ok(l));
            assert_eq!(serde_json::to_value(l).unwrap(), json!(l.as_str()));
        }
        assert!(LogLevel::from_str("warn").is_err());
        for c in EventCategory::ALL {
            assert_eq!(EventCategory::from_str(c.as_str()), Ok(c));
        }
        assert_eq!(EventCategory::ALL.len(), 6);
        assert!(EventCategory::from_str("Task").is_err());
    }

    #[test]
    fn runtime_event_rules() {
        let e = RuntimeEvent::new(EventCategory::System, " backend.connected ", "up").unwrap();
        assert_eq!(e.event_type, "backend.connected");
        assert_eq!(e.level, LogLevel::Info);
        assert_eq!(e.sequence, 0);
        assert!(e.validate().is_ok());
        assert_eq!(e.clone().with_level(LogLevel::Error).level, LogLevel::Error);
        assert!(
            RuntimeEvent::new(EventCategory::Task, "  ", "m")
                .unwrap_err()
                .has_field("event_type")
        );

        type Edit = fn(&mut RuntimeEvent);
        let cases: Vec<(&str, Edit, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            (
                "empty type",
                |e| e.event_type = String::new(),
                Some("event_type"),
            ),
            (
                "padded type",
                |e| e.event_type = " x".into(),
                Some("event_type"),
            ),
            ("empty id", |e| e.id = String::new(), Some("id")),
            (
                "empty task",
                |e| e.task_id = Some(String::new()),
                Some("task_id"),
            ),
            (
                "empty workflow",
                |e| e.workflow_id = Some(" ".into()),
                Some("workflow_id"),
            ),
            (
                "data key",
                |e| {
                    e.data.insert(String::new(), json!(1));
                },
                Some("data"),
            ),
        ];
        for (label, edit, want) in cases {
            let mut event = e.clone();
            edit(&mut event);
            match (event.validate(), want) {
                (Ok(()), None) => {}
                (Err(err), Some(field)) => assert!(err.has_field(field), "{label}: {err}"),
                (got, want) => panic!("{label}: got {got:?}, want error on {want:?}"),
            }
        }
        let mut t = e.clone();
        t.touch();
        assert!(t.updated_at.is_some_and(|u| u >= t.created_at));
        let back: RuntimeEvent = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn performance_metric_rules() {
        let cases: &[(&str, f64, &str, &[&str])] = &[
            ("latency", 1.5, "seconds", &[]),
            (" latency ", -3.0, " ms ", &[]),
            ("", 1.0, "s", &["name"]),
            ("x", 1.0, " ", &["unit"]),
            ("x", f64::NAN, "s", &["value"]),
            ("x", f64::INFINITY, "s", &["value"]),
            ("", f64::NEG_INFINITY, "", &["name", "unit", "value"]),
        ];
        for (name, value, unit, fields) in cases {
            match PerformanceMetric::new(name, *value, unit) {
                Ok(m) => {
                    assert!(fields.is_empty(), "{name:?}");
                    assert_eq!(m.name, name.trim());
                    assert_eq!(m.unit, unit.trim());
                    assert!(m.validate().is_ok());
                }
                Err(e) => {
                    assert_eq!(e.len(), fields.len(), "{e}");
                    for f in *fields {
                        assert!(e.has_field(f), "{e}");
                    }
                }
            }
        }
        let ok = PerformanceMetric::new("m", 1.0, "s").unwrap();
        type Edit = fn(&mut PerformanceMetric);
        let edits: Vec<(Edit, &str)> = vec![
            (|m| m.name = " m".into(), "name"),
            (|m| m.unit = String::new(), "unit"),
            (|m| m.value = f64::NAN, "value"),
            (
                |m| {
                    m.tags.insert(" ".into(), "v".into());
                },
                "tags[\" \"]",
            ),
            (|m| m.task_id = Some(String::new()), "task_id"),
        ];
        for (edit, field) in edits {
            let mut m = ok.clone();
            edit(&mut m);
            assert!(m.validate().unwrap_err().has_field(field), "{field}");
        }
    }

    fn audit(outcome: &'static str, principal: Option<&str>) -> AuditEvent {
        AuditEvent::new(
            AuditFacts {
                principal: principal.map(Arc::from),
                tenant: principal.map(|p| Arc::from(format!("{p}-tenant"))),
                method: "/comfyreality.runtime.v1.TaskService/CreateTask".into(),
                target_id: Some("t-1".into()),
                outcome,
                peer: Some("127.0.0.1:4242".parse().unwrap()),
            },
            LogLevel::Warning,
        )
    }

    /// An audit event reads as the runtime event it stands for: its data field by field, its
    /// message, its level (INFO when the call succeeded), and through a store's JSON.
    #[test]
    fn an_audit_event_is_the_runtime_event_it_stands_for() {
        let mut ok = audit("OK", Some("sam"));
        ok.sequence = 7;
        let runtime = ok.to_runtime_event();
        assert!(runtime.validate().is_ok());
        assert_eq!(runtime.id, crate::model::uuid_text(ok.id));
        assert_eq!(runtime.category, EventCategory::Audit);
        assert_eq!(runtime.level, LogLevel::Info);
        assert_eq!(runtime.event_type, AUDIT_EVENT_TYPE);
        assert_eq!(
            runtime.message,
            "call /comfyreality.runtime.v1.TaskService/CreateTask by sam: OK"
        );
        assert_eq!(
            serde_json::Value::Object(runtime.data.clone()),
            json!({
                "principal": "sam",
                "tenant": "sam-tenant",
                "method": "/comfyreality.runtime.v1.TaskService/CreateTask",
                "target_id": "t-1",
                "outcome": "OK",
                "peer": "127.0.0.1:4242",
            })
        );
        // In that order, as the log line writes it.
        let keys: Vec<&str> = runtime.data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "principal",
                "tenant",
                "method",
                "target_id",
                "outcome",
                "peer"
            ]
        );
        assert_eq!(
            ok.data_text().to_string(),
            serde_json::to_string(&runtime.data).unwrap()
        );
        assert_eq!(runtime.user_id.as_deref(), Some("sam"));
        assert_eq!((runtime.created_at, runtime.sequence), (ok.created_at, 7));

        let refused = audit("PERMISSION_DENIED", None);
        let runtime = refused.to_runtime_event();
        assert_eq!(runtime.level, LogLevel::Warning);
        assert_eq!(
            runtime.message,
            "refused call /comfyreality.runtime.v1.TaskService/CreateTask by an unauthenticated \
             caller: PERMISSION_DENIED"
        );
        assert_eq!(runtime.data["principal"], serde_json::Value::Null);
        assert_eq!(runtime.user_id, None);

        // A store writes it as a runtime event and reads that back.
        let event = Event {
            sequence: 7,
            timestamp: ok.created_at,
            payload: EventPayload::Audit(Box::new(ok.clone())),
            context: EventContext::default(),
        };
        assert_eq!(event.category(), EventCategory::Audit);
        assert_eq!(event.level(), LogLevel::Info);
        assert_eq!(event.kind(), "runtime");
        // Written as the runtime event's derive writes it, field for field.
        let text = serde_json::to_string(&event).unwrap();
        let as_runtime = Event {
            payload: EventPayload::Runtime(Box::new(ok.to_runtime_event())),
            ..event.clone()
        };
        assert_eq!(text, serde_json::to_string(&as_runtime).unwrap());
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.payload,
            EventPayload::Runtime(Box::new(ok.to_runtime_event()))
        );
        // The payload's other kinds read back as they were.
        for payload in [
            EventPayload::Runtime(Box::new(refused.to_runtime_event())),
            EventPayload::Metric(PerformanceMetric::new("m", 1.0, "s").unwrap()),
        ] {
            let text = serde_json::to_string(&payload).unwrap();
            assert_eq!(
                serde_json::from_str::<EventPayload>(&text).unwrap(),
                payload
            );
        }
    }
}
