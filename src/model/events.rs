//! Runtime events and performance measurements: `LogLevel`, `EventCategory`,
//! `RuntimeEvent` and `PerformanceMetric`, with their validation.
//!
//! These are plain records; numbering (`sequence`), fan-out and retention
//! belong to the event bus, and exporting metrics to telemetry.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventPayload {
    /// A task's lifecycle event.
    Task(TaskEvent),
    /// Something operators care about (backend up or down, retries, errors).
    /// Boxed: a runtime event is nearly twice a task event's size, and every
    /// event (each a task's in the job path) would otherwise take its room.
    Runtime(Box<RuntimeEvent>),
    /// A measurement (node duration, queue wait, execution time).
    Metric(PerformanceMetric),
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
            EventPayload::Metric(_) => LogLevel::Debug,
        }
    }

    /// The short kind name: `task`, `runtime` or `metric`.
    pub fn kind(&self) -> &'static str {
        match &self.payload {
            EventPayload::Task(_) => "task",
            EventPayload::Runtime(_) => "runtime",
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
}
