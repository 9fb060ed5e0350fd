//! Proto <-> domain conversion for EventService: filters in, events out.
//! (Part of the conversion layer; `convert.rs` holds the rest.)

use std::collections::HashSet;

use prost::Message as _;

use crate::model::events::{AUDIT_EVENT_TYPE, AuditEvent};
use crate::model::{
    EventCategory, LogLevel, PerformanceMetric, RuntimeEvent, TaskEvent, TaskEventType,
    ValidationError, uuid_text,
};
use crate::pb;
use crate::pb::watch_execution_response::Update;
use crate::runtime::WatchUpdate;
use crate::runtime::bus::{Event, EventPayload};
use crate::runtime::events::{EventFilter, StreamItem};
use crate::runtime::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

use super::convert::{
    decode_enum, hex_decode, hex_encode, json_object_text, require_id, timestamp,
};

/// Most ids or tags in one filter list.
const MAX_FILTER_ENTRIES: usize = 256;

fn event_type_from_pb(field: &str, raw: i32) -> Result<TaskEventType, ValidationError> {
    use pb::TaskEventType as P;
    decode_enum(field, raw, |p: P| match p {
        P::Unspecified => None,
        P::Created => Some(TaskEventType::Created),
        P::Queued => Some(TaskEventType::Queued),
        P::Started => Some(TaskEventType::Started),
        P::Progress => Some(TaskEventType::Progress),
        P::Completed => Some(TaskEventType::Completed),
        P::Failed => Some(TaskEventType::Failed),
        P::Cancelled => Some(TaskEventType::Cancelled),
        P::Retrying => Some(TaskEventType::Retrying),
    })
}

fn event_type_to_pb(t: TaskEventType) -> pb::TaskEventType {
    match t {
        TaskEventType::Created => pb::TaskEventType::Created,
        TaskEventType::Queued => pb::TaskEventType::Queued,
        TaskEventType::Started => pb::TaskEventType::Started,
        TaskEventType::Progress => pb::TaskEventType::Progress,
        TaskEventType::Completed => pb::TaskEventType::Completed,
        TaskEventType::Failed => pb::TaskEventType::Failed,
        TaskEventType::Cancelled => pb::TaskEventType::Cancelled,
        TaskEventType::Retrying => pb::TaskEventType::Retrying,
    }
}

fn category_from_pb(field: &str, raw: i32) -> Result<EventCategory, ValidationError> {
    use pb::EventCategory as P;
    decode_enum(field, raw, |p: P| match p {
        P::Unspecified => None,
        P::Task => Some(EventCategory::Task),
        P::Workflow => Some(EventCategory::Workflow),
        P::System => Some(EventCategory::System),
        P::Performance => Some(EventCategory::Performance),
        P::Error => Some(EventCategory::Error),
        P::Audit => Some(EventCategory::Audit),
    })
}

fn category_to_pb(c: EventCategory) -> pb::EventCategory {
    match c {
        EventCategory::Task => pb::EventCategory::Task,
        EventCategory::Workflow => pb::EventCategory::Workflow,
        EventCategory::System => pb::EventCategory::System,
        EventCategory::Performance => pb::EventCategory::Performance,
        EventCategory::Error => pb::EventCategory::Error,
        EventCategory::Audit => pb::EventCategory::Audit,
    }
}

fn level_from_pb(field: &str, raw: i32) -> Result<LogLevel, ValidationError> {
    use pb::LogLevel as P;
    decode_enum(field, raw, |p: P| match p {
        P::Unspecified => None,
        P::Debug => Some(LogLevel::Debug),
        P::Info => Some(LogLevel::Info),
        P::Warning => Some(LogLevel::Warning),
        P::Error => Some(LogLevel::Error),
        P::Critical => Some(LogLevel::Critical),
    })
}

fn level_to_pb(l: LogLevel) -> pb::LogLevel {
    match l {
        LogLevel::Debug => pb::LogLevel::Debug,
        LogLevel::Info => pb::LogLevel::Info,
        LogLevel::Warning => pb::LogLevel::Warning,
        LogLevel::Error => pb::LogLevel::Error,
        LogLevel::Critical => pb::LogLevel::Critical,
    }
}

/// The filter fields shared by SubscribeEvents and ListEvents.
pub struct FilterFields {
    /// Task ids.
    pub task_ids: Vec<String>,
    /// Execution ids.
    pub execution_ids: Vec<String>,
    /// Workflow ids.
    pub workflow_ids: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Task event types.
    pub event_types: Vec<i32>,
    /// Categories.
    pub categories: Vec<i32>,
    /// Minimum level.
    pub min_level: Option<i32>,
    /// Node events wanted.
    pub include_node_events: bool,
}

fn id_set(field: &str, ids: Vec<String>, v: &mut ValidationError) -> HashSet<String> {
    if ids.len() > MAX_FILTER_ENTRIES {
        v.push(
            field,
            format!(
                "must have at most {MAX_FILTER_ENTRIES} entries, got {}",
                ids.len()
            ),
        );
        return HashSet::new();
    }
    ids.into_iter()
        .enumerate()
        .filter_map(|(i, id)| v.absorb(require_id(&format!("{field}[{i}]"), &id)))
        .collect()
}

/// The domain filter; every violation is collected with its field path.
pub fn filter_from_pb(fields: FilterFields) -> Result<EventFilter, ValidationError> {
    let mut v = ValidationError::default();
    let task_ids = id_set("task_ids", fields.task_ids, &mut v);
    let execution_ids = id_set("execution_ids", fields.execution_ids, &mut v);
    let workflow_ids = id_set("workflow_ids", fields.workflow_ids, &mut v);
    let tags: Vec<String> = id_set("tags", fields.tags, &mut v).into_iter().collect();
    let event_types = fields
        .event_types
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| v.absorb(event_type_from_pb(&format!("event_types[{i}]"), *raw)))
        .collect();
    let categories = fields
        .categories
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| v.absorb(category_from_pb(&format!("categories[{i}]"), *raw)))
        .collect();
    let min_level = match fields.min_level {
        Some(raw) => v.absorb(level_from_pb("min_level", raw)),
        None => None,
    };
    v.into_result()?;
    Ok(EventFilter {
        task_ids,
        execution_ids,
        workflow_ids,
        tags,
        event_types,
        categories,
        min_level,
        include_node_events: fields.include_node_events,
    })
}

fn task_event_to_pb(e: &TaskEvent) -> pb::TaskEvent {
    pb::TaskEvent {
        id: e.id.clone(),
        task_id: e.task_id.clone(),
        event_type: event_type_to_pb(e.event_type).into(),
        timestamp: Some(timestamp(e.timestamp)),
        message: e.message.clone(),
        data: json_object_text(&e.data),
        source: e.source.clone(),
        correlation_id: e.correlation_id.clone(),
        sequence: e.sequence,
    }
}

fn runtime_event_to_pb(e: &RuntimeEvent) -> pb::RuntimeEvent {
    pb::RuntimeEvent {
        id: e.id.clone(),
        category: category_to_pb(e.category).into(),
        level: level_to_pb(e.level).into(),
        event_type: e.event_type.clone(),
        message: e.message.clone(),
        data: json_object_text(&e.data),
        task_id: e.task_id.clone(),
        workflow_id: e.workflow_id.clone(),
        user_id: e.user_id.clone(),
        session_id: e.session_id.clone(),
        source_module: e.source_module.clone(),
        source_function: e.source_function.clone(),
        source_line: e.source_line,
        error_type: e.error_type.clone(),
        error_message: e.error_message.clone(),
        stack_trace: e.stack_trace.clone(),
        created_at: Some(timestamp(e.created_at)),
        updated_at: e.updated_at.map(timestamp),
        sequence: e.sequence,
    }
}

/// An audit event as the runtime event it stands for, from its facts: its data written as text
/// once (no JSON object made first, then written).
fn audit_event_to_pb(e: &AuditEvent) -> pb::RuntimeEvent {
    pb::RuntimeEvent {
        id: uuid_text(e.id),
        category: category_to_pb(EventCategory::Audit).into(),
        level: level_to_pb(e.level).into(),
        event_type: AUDIT_EVENT_TYPE.to_owned(),
        message: e.message().to_string(),
        data: e.data_text().to_string(),
        user_id: e.facts.principal.as_deref().map(str::to_owned),
        created_at: Some(timestamp(e.created_at)),
        sequence: e.sequence,
        ..pb::RuntimeEvent::default()
    }
}

fn metric_to_pb(m: &PerformanceMetric) -> pb::PerformanceMetric {
    pb::PerformanceMetric {
        name: m.name.clone(),
        value: m.value,
        unit: m.unit.clone(),
        timestamp: Some(timestamp(m.timestamp)),
        task_id: m.task_id.clone(),
        workflow_id: m.workflow_id.clone(),
        tags: m.tags.clone().into_iter().collect(),
    }
}

/// An event to the wire.
pub fn event_to_pb(event: &Event) -> pb::Event {
    use pb::event::Payload;
    pb::Event {
        sequence: event.sequence,
        timestamp: Some(timestamp(event.timestamp)),
        payload: Some(match &event.payload {
            EventPayload::Task(e) => Payload::TaskEvent(task_event_to_pb(e)),
            EventPayload::Runtime(e) => Payload::RuntimeEvent(runtime_event_to_pb(e)),
            EventPayload::Audit(e) => Payload::RuntimeEvent(audit_event_to_pb(e)),
            EventPayload::Metric(m) => Payload::Metric(metric_to_pb(m)),
        }),
        task_id: event.context.task_id.clone(),
        execution_id: event.context.execution_id.clone(),
        workflow_id: event.context.workflow_id.clone(),
        node: event.context.node,
    }
}

/// A subscription item to the wire. An event goes as its encoding, made by
/// the first subscriber that sends it and shared by every other one.
pub fn stream_item_to_pb(item: &StreamItem) -> pb::SubscribeEventsFrame {
    use pb::subscribe_events_response::Item;
    match item {
        StreamItem::Event(event) => pb::SubscribeEventsFrame::EncodedEvent(
            event.encoded(|event| event_to_pb(event).encode_to_vec().into()),
        ),
        StreamItem::Heartbeat { last_sequence } => {
            pb::SubscribeEventsFrame::Message(pb::SubscribeEventsResponse {
                item: Some(Item::Heartbeat(pb::Heartbeat {
                    last_sequence: *last_sequence,
                })),
            })
        }
    }
}

const EVENT_TOKEN_PREFIX: &str = "v1:";

/// The opaque token for resuming a listing after `sequence`.
pub fn encode_event_token(sequence: u64) -> String {
    hex_encode(&format!("{EVENT_TOKEN_PREFIX}{sequence}"))
}

/// ListEventsRequest to (filter, after, page size).
pub fn list_request(
    req: pb::ListEventsRequest,
) -> Result<(EventFilter, u64, usize), ValidationError> {
    let mut v = ValidationError::default();
    let limit = match usize::try_from(req.page_size).unwrap_or(usize::MAX) {
        0 => DEFAULT_PAGE_SIZE,
        n if n <= MAX_PAGE_SIZE => n,
        n => {
            v.push(
                "page_size",
                format!("must be at most {MAX_PAGE_SIZE}, got {n}"),
            );
            DEFAULT_PAGE_SIZE
        }
    };
    let after = if req.page_token.is_empty() {
        req.after_sequence
    } else {
        match decode_event_token(&req.page_token) {
            Some(after) => after,
            None => {
                v.push("page_token", "is not a token this listing issued");
                0
            }
        }
    };
    let filter = v.absorb(filter_from_pb(FilterFields {
        task_ids: req.task_ids,
        execution_ids: req.execution_ids,
        workflow_ids: req.workflow_ids,
        tags: req.tags,
        event_types: req.event_types,
        categories: req.categories,
        min_level: req.min_level,
        include_node_events: req.include_node_events,
    }));
    v.into_result()?;
    Ok((filter.unwrap_or_default(), after, limit))
}

fn decode_event_token(token: &str) -> Option<u64> {
    hex_decode(token)?
        .strip_prefix(EVENT_TOKEN_PREFIX)?
        .parse()
        .ok()
}

/// One WatchExecution update to the wire.
pub fn watch_update_to_pb(update: WatchUpdate) -> Update {
    match update {
        WatchUpdate::Snapshot(view) => {
            Update::Execution(super::executions_convert::execution_to_pb(&view))
        }
        WatchUpdate::Progress(step) => Update::Progress(pb::ExecutionProgress {
            sequence: step.sequence,
            task_id: step.task_id,
            node_id: step.node_id,
            class_type: step.class_type,
            value: step.value,
            max: step.max,
            execution_progress: step.execution_progress,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::model::LogLevel;
    use crate::model::events::{AuditEvent, AuditFacts, EventContext};
    use crate::runtime::bus::{Event, EventPayload};

    use super::event_to_pb;

    /// A subscriber gets an audit event as the protobuf of the runtime event it stands for.
    #[test]
    fn an_audit_event_goes_out_as_its_runtime_event() {
        for (outcome, principal) in [("OK", Some("sam")), ("PERMISSION_DENIED", None)] {
            let mut audit = AuditEvent::new(
                AuditFacts {
                    principal: principal.map(Arc::from),
                    tenant: principal.map(Arc::from),
                    method: "/comfyreality.runtime.v1.TaskService/CreateTask".into(),
                    target_id: principal.map(|_| "t-1".to_owned()),
                    outcome,
                    peer: Some("127.0.0.1:4242".parse().unwrap()),
                },
                LogLevel::Warning,
            );
            audit.sequence = 9;
            let event = |payload| Event {
                sequence: 9,
                timestamp: audit.created_at,
                payload,
                context: EventContext::default(),
            };
            assert_eq!(
                event_to_pb(&event(EventPayload::Audit(Box::new(audit.clone())))),
                event_to_pb(&event(EventPayload::Runtime(Box::new(
                    audit.to_runtime_event()
                )))),
            );
        }
    }
}
