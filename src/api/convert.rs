//! The only place protobuf and domain types meet: request messages become
//! validated domain requests (violations name the proto field path), domain
//! objects become response messages with their computed fields filled in.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::config::{Config, LogFormat, LogLevel, OptimizationLevel, QueueType};
use crate::model::{
    JsonObject, Task, TaskDependency, TaskMetrics, TaskPriority, TaskStatus, TaskType,
    ValidationError, WorkflowDefinition, validate_id, validate_name,
};
use crate::pb;
use crate::runtime::{
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, NewTaskRequest, ProgressUpdate, RegisterWorkflowRequest,
};
use crate::store::{TaskFilter, WorkflowCursor, WorkflowFilter};

/// What a redacted secret looks like on the wire.
pub const REDACTED: &str = "[REDACTED]";

// ---------- small pieces ----------

/// A domain time as a protobuf Timestamp.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Most tags on one task or workflow.
pub const MAX_TAGS: usize = 64;
/// Most dependencies of one task.
pub const MAX_DEPENDENCIES: usize = 256;
/// Longest free-text field (description, progress message, reason, author), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest error message a client may report, in bytes.
pub const MAX_ERROR_BYTES: usize = 16 * 1024;
/// Largest metadata JSON object, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Largest task result JSON, in bytes.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;

/// A required id: non-empty, no surrounding whitespace, at most 256 characters.
pub fn require_id(field: &str, id: &str) -> Result<String, ValidationError> {
    validate_id(field, id)?;
    Ok(id.to_owned())
}

pub(super) fn check_len(v: &mut ValidationError, field: &str, value: Option<&str>, max: usize) {
    if let Some(value) = value
        && value.len() > max
    {
        v.push(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        );
    }
}

pub(super) fn check_count(v: &mut ValidationError, field: &str, count: usize, max: usize) -> bool {
    if count > max {
        v.push(
            field,
            format!("must have at most {max} entries, got {count}"),
        );
        return false;
    }
    true
}

/// A JSON object sent as text; empty text means `{}`. Numbers stay exact.
pub fn parse_json_object(field: &str, text: &str) -> Result<JsonObject, ValidationError> {
    if text.trim().is_empty() {
        return Ok(JsonObject::new());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(ValidationError::single(field, "must be a JSON object")),
        Err(e) => Err(ValidationError::single(
            field,
            format!("is not valid JSON: {e}"),
        )),
    }
}

/// Any JSON value sent as text.
pub fn parse_json_value(field: &str, text: &str) -> Result<serde_json::Value, ValidationError> {
    serde_json::from_str(text)
        .map_err(|e| ValidationError::single(field, format!("is not valid JSON: {e}")))
}

/// A JSON object as its text, written from the map in place (no copy of it; see
/// [`json_text`](crate::model::json_text)).
pub(super) fn json_object_text(map: &JsonObject) -> String {
    crate::model::json_text::object_text(map)
}

pub(super) fn tag_set(
    field: &str,
    tags: Vec<String>,
    violations: &mut ValidationError,
) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    if !check_count(violations, field, tags.len(), MAX_TAGS) {
        return set;
    }
    for (i, tag) in tags.into_iter().enumerate() {
        let tag = tag.trim();
        if tag.is_empty() {
            violations.push(format!("{field}[{i}]"), "must not be empty");
        } else {
            set.insert(tag.to_owned());
        }
    }
    set
}

// ---------- enums ----------

/// A generated enum's proto name (`TASK_PRIORITY_HIGH`), for error messages.
pub(super) trait ProtoEnumName: Copy {
    /// The value's name as written in the .proto file.
    fn proto_name(self) -> &'static str;
}

macro_rules! proto_enum_names {
    ($($ty:ty),+ $(,)?) => {
        $(impl ProtoEnumName for $ty {
            fn proto_name(self) -> &'static str {
                self.as_str_name()
            }
        })+
    };
}

proto_enum_names!(
    pb::TaskStatus,
    pb::TaskType,
    pb::TaskPriority,
    pb::DependencyType,
    pb::TaskEventType,
    pb::EventCategory,
    pb::LogLevel,
);

/// Largest enum number probed when listing the valid values of an enum.
const MAX_ENUM_NUMBER: i32 = 64;

/// A required enum value: UNSPECIFIED and unknown numbers are rejected with a
/// message that names what was sent and lists the accepted values
/// (`TASK_PRIORITY_UNSPECIFIED is not accepted; use one of TASK_PRIORITY_LOW, ...`).
pub(super) fn decode_enum<P, D>(
    field: &str,
    raw: i32,
    map: impl Fn(P) -> Option<D>,
) -> Result<D, ValidationError>
where
    P: TryFrom<i32> + ProtoEnumName,
{
    if let Some(value) = P::try_from(raw).ok().and_then(&map) {
        return Ok(value);
    }
    let valid: Vec<&str> = (0..=MAX_ENUM_NUMBER)
        .filter_map(|n| P::try_from(n).ok())
        .filter(|p| map(*p).is_some())
        .map(ProtoEnumName::proto_name)
        .collect();
    let sent = match P::try_from(raw) {
        Ok(p) => format!("{} is not accepted", p.proto_name()),
        Err(_) => format!("{raw} is not a valid value"),
    };
    Err(ValidationError::single(
        field,
        format!("{sent}; use one of {}", valid.join(", ")),
    ))
}

/// TaskStatus from the wire.
pub fn task_status_from_pb(field: &str, raw: i32) -> Result<TaskStatus, ValidationError> {
    use pb::TaskStatus as P;
    decode_enum(field, raw, |p: P| match p {
        P::Unspecified => None,
        P::Pending => Some(TaskStatus::Pending),
        P::Queued => Some(TaskStatus::Queued),
        P::Running => Some(TaskStatus::Running),
        P::Completed => Some(TaskStatus::Completed),
        P::Failed => Some(TaskStatus::Failed),
        P::Cancelled => Some(TaskStatus::Cancelled),
        P::Retrying => Some(TaskStatus::Retrying),
    })
}

/// TaskStatus to the wire.
pub fn task_status_to_pb(status: TaskStatus) -> pb::TaskStatus {
    match status {
        TaskStatus::Pending => pb::TaskStatus::Pending,
        TaskStatus::Queued => pb::TaskStatus::Queued,
        TaskStatus::Running => pb::TaskStatus::Running,
        TaskStatus::Completed => pb::TaskStatus::Completed,
        TaskStatus::Failed => pb::TaskStatus::Failed,
        TaskStatus::Cancelled => pb::TaskStatus::Cancelled,
        TaskStatus::Retrying => pb::TaskStatus::Retrying,
    }
}

/// TaskType from the wire.
pub fn task_type_from_pb(field: &str, raw: i32) -> Result<TaskType, ValidationError> {
    use pb::TaskType as P;
    decode_enum(field, raw, |p: P| match p {
        P::Unspecified => None,
        P::Workflow => Some(TaskType::Workflow),
        P::Node => Some(TaskType::Node),
        P::Preprocessing => Some(TaskType::Preprocessing),
        P::Postprocessing => Some(TaskType::Postprocessing),
        P::System => Some(TaskType::System),
        P::Cleanup => Some(TaskType::Cleanup),
    })
}

/// TaskType to the wire.
pub fn task_type_to_pb(t: TaskType) -> pb::TaskType {
    match t {
        TaskType::Workflow => pb::TaskType::Workflow,
        TaskType::Node => pb::TaskType::Node,
        TaskType::Preprocessing => pb::TaskType::Preprocessing,
        TaskType::Postprocessing => pb::TaskType::Postprocessing,
        TaskType::System => pb::TaskType::System,
        TaskType::Cleanup => pb::TaskType::Cleanup,
    }
}

/// TaskPriority from the wire.
pub fn priority_from_pb(field: &str, raw: i32) -> Result<TaskPriority, ValidationError> {
    use pb::TaskPriority as P;
    decode_enum(field, raw, |p: P| match p {
        P::Unspecified => None,
        P::Low => Some(TaskPriority::Low),
        P::Normal => Some(TaskPriority::Normal),
        P::High => Some(TaskPriority::High),
        P::Critical => Some(TaskPriority::Critical),
    })
}

/// TaskPriority to the wire.
pub fn priority_to_pb(p: TaskPriority) -> pb::TaskPriority {
    match p {
        TaskPriority::Low => pb::TaskPriority::Low,
        TaskPriority::Normal => pb::TaskPriority::Normal,
        TaskPriority::High => pb::TaskPriority::High,
        TaskPriority::Critical => pb::TaskPriority::Critical,
    }
}

fn dependency_type_to_pb(t: crate::model::DependencyType) -> pb::DependencyType {
    use crate::model::DependencyType as D;
    match t {
        D::Requires => pb::DependencyType::Requires,
        D::Blocks => pb::DependencyType::Blocks,
        D::Optional => pb::DependencyType::Optional,
    }
}

// ---------- tasks ----------

/// Task metrics to the wire, with the computed duration.
pub fn metrics_to_pb(m: &TaskMetrics) -> pb::TaskMetrics {
    pb::TaskMetrics {
        start_time: m.start_time.map(timestamp),
        end_time: m.end_time.map(timestamp),
        cpu_time: m.cpu_time,
        memory_peak_mb: m.memory_peak_mb,
        gpu_memory_mb: m.gpu_memory_mb,
        duration_seconds: m.duration_seconds(),
    }
}

/// A task to the wire, with every computed field filled in.
pub fn task_to_pb(task: &Task) -> pb::Task {
    let status = task.status();
    pb::Task {
        id: task.id.clone(),
        r#type: task_type_to_pb(task.task_type).into(),
        status: task_status_to_pb(status).into(),
        priority: priority_to_pb(task.priority).into(),
        name: task.name.clone(),
        description: task.description.clone(),
        tags: task.tags.iter().cloned().collect(),
        parent_id: task.parent_id.clone(),
        dependencies: task
            .dependencies
            .iter()
            .map(|d: &TaskDependency| pb::TaskDependency {
                task_id: d.task_id.clone(),
                dependency_type: dependency_type_to_pb(d.dependency_type).into(),
            })
            .collect(),
        progress: task.progress(),
        progress_message: task.progress_message.clone(),
        retry_count: task.retry_count,
        max_retries: task.max_retries,
        timeout_seconds: task.timeout_seconds,
        result: task.result.as_ref().map(ToString::to_string),
        error: task.error.clone(),
        error_type: task.error_type.clone(),
        metrics: Some(metrics_to_pb(&task.metrics)),
        metadata: json_object_text(&task.metadata),
        created_at: Some(timestamp(task.created_at)),
        updated_at: task.updated_at.map(timestamp),
        is_terminal: status.is_terminal(),
        is_active: status.is_active(),
        is_complete: task.is_complete(),
        can_retry: task.can_retry(),
    }
}

/// CreateTaskRequest to its domain form; every violation is collected.
pub fn create_task_request(req: pb::CreateTaskRequest) -> Result<NewTaskRequest, ValidationError> {
    let mut v = ValidationError::default();
    // Checked here too (Task::new checks it again) so one answer lists every bad field.
    v.absorb(validate_name("name", &req.name));
    let task_type = match req.r#type {
        None => Some(TaskType::Node),
        Some(raw) => v.absorb(task_type_from_pb("type", raw)),
    };
    let priority = match req.priority {
        None => Some(TaskPriority::Normal),
        Some(raw) => v.absorb(priority_from_pb("priority", raw)),
    };
    check_len(&mut v, "metadata", Some(&req.metadata), MAX_METADATA_BYTES);
    let metadata = v.absorb(parse_json_object("metadata", &req.metadata));
    let tags = tag_set("tags", req.tags, &mut v);
    check_len(
        &mut v,
        "description",
        req.description.as_deref(),
        MAX_TEXT_BYTES,
    );
    if check_count(
        &mut v,
        "dependencies",
        req.dependencies.len(),
        MAX_DEPENDENCIES,
    ) {
        for (i, dep) in req.dependencies.iter().enumerate() {
            v.absorb(validate_id(&format!("dependencies[{i}]"), dep));
        }
    }
    if let Some(parent) = &req.parent_id {
        v.absorb(validate_id("parent_id", parent));
    }
    if let Some(key) = &req.request_id {
        check_len(&mut v, "request_id", Some(key), 256);
    }
    let request_id = match req.request_id {
        Some(key) if key.trim().is_empty() => {
            v.push("request_id", "must not be empty when set");
            None
        }
        other => other,
    };
    v.into_result()?;
    Ok(NewTaskRequest {
        name: req.name,
        task_type: task_type.unwrap_or(TaskType::Node),
        priority: priority.unwrap_or(TaskPriority::Normal),
        dependencies: req.dependencies,
        metadata: metadata.unwrap_or_default(),
        description: req.description,
        tags,
        parent_id: req.parent_id,
        max_retries: req.max_retries.unwrap_or(crate::model::DEFAULT_MAX_RETRIES),
        timeout_seconds: req.timeout_seconds,
        request_id,
        // Set from the caller by the scoped runtime.
        ownership: None,
    })
}

/// CancelTaskRequest's task id, with the reason's length checked.
pub fn cancel_request(req: &pb::CancelTaskRequest) -> Result<String, ValidationError> {
    let mut v = ValidationError::default();
    let id = v.absorb(require_id("id", &req.id));
    check_len(&mut v, "reason", req.reason.as_deref(), MAX_TEXT_BYTES);
    v.into_result()?;
    Ok(id.unwrap_or_default())
}

/// UpdateTaskProgressRequest to (task id, update).
pub fn progress_update(
    req: pb::UpdateTaskProgressRequest,
) -> Result<(String, ProgressUpdate), ValidationError> {
    let mut v = ValidationError::default();
    let id = v.absorb(require_id("id", &req.id));
    if let Some(p) = req.progress
        && !(0.0..=1.0).contains(&p)
    {
        v.push("progress", format!("must be within [0, 1], got {p}"));
    }
    let status = match req.status {
        None => None,
        Some(raw) => v.absorb(task_status_from_pb("status", raw)),
    };
    check_len(
        &mut v,
        "progress_message",
        req.progress_message.as_deref(),
        MAX_TEXT_BYTES,
    );
    check_len(&mut v, "error", req.error.as_deref(), MAX_ERROR_BYTES);
    check_len(
        &mut v,
        "error_type",
        req.error_type.as_deref(),
        MAX_TEXT_BYTES,
    );
    check_len(&mut v, "result", req.result.as_deref(), MAX_RESULT_BYTES);
    let result = match req.result.as_deref() {
        None => None,
        Some(text) => v.absorb(parse_json_value("result", text)),
    };
    v.into_result()?;
    Ok((
        id.unwrap_or_default(),
        ProgressUpdate {
            progress: req.progress,
            progress_message: req.progress_message,
            status,
            result,
            error: req.error,
            error_type: req.error_type,
        },
    ))
}

/// ListTasksRequest to (filter, cursor, page size).
pub fn task_listing(
    req: pb::ListTasksRequest,
) -> Result<(TaskFilter, Option<u64>, usize), ValidationError> {
    let mut v = ValidationError::default();
    let mut statuses = Vec::new();
    for (i, raw) in req.statuses.iter().enumerate() {
        if let Some(s) = v.absorb(task_status_from_pb(&format!("statuses[{i}]"), *raw)) {
            statuses.push(s);
        }
    }
    let mut types = Vec::new();
    for (i, raw) in req.types.iter().enumerate() {
        if let Some(t) = v.absorb(task_type_from_pb(&format!("types[{i}]"), *raw)) {
            types.push(t);
        }
    }
    let tags = tag_set("tags", req.tags, &mut v).into_iter().collect();
    let limit = v.absorb(page_size("page_size", req.page_size));
    let after = v.absorb(decode_task_token(&req.page_token));
    v.into_result()?;
    Ok((
        TaskFilter {
            statuses,
            types,
            tags,
            parent_id: req.parent_id.map(|p| p.trim().to_owned()),
        },
        after.flatten(),
        limit.unwrap_or(DEFAULT_PAGE_SIZE),
    ))
}

// ---------- paging ----------

pub(super) fn page_size(field: &str, raw: u32) -> Result<usize, ValidationError> {
    match usize::try_from(raw).unwrap_or(usize::MAX) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(ValidationError::single(
            field,
            format!("must be at most {MAX_PAGE_SIZE}, got {n}"),
        )),
    }
}

const TASK_TOKEN_PREFIX: &str = "t1:";
const WORKFLOW_TOKEN_PREFIX: &str = "w1:";

pub(super) fn hex_encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn hex_decode(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The opaque token for the task listing position `seq`.
pub fn encode_task_token(seq: u64) -> String {
    hex_encode(&format!("{TASK_TOKEN_PREFIX}{seq}"))
}

fn decode_task_token(token: &str) -> Result<Option<u64>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    hex_decode(token)
        .and_then(|t| {
            t.strip_prefix(TASK_TOKEN_PREFIX)
                .and_then(|s| s.parse().ok())
        })
        .map(Some)
        .ok_or_else(|| ValidationError::single("page_token", "is not a token this listing issued"))
}

/// The opaque token for a workflow listing position.
pub fn encode_workflow_token(cursor: &WorkflowCursor) -> String {
    hex_encode(&format!(
        "{WORKFLOW_TOKEN_PREFIX}{}\n{}",
        cursor.id, cursor.version
    ))
}

fn decode_workflow_token(token: &str) -> Result<Option<WorkflowCursor>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    hex_decode(token)
        .and_then(|t| {
            let rest = t.strip_prefix(WORKFLOW_TOKEN_PREFIX)?;
            let (id, version) = rest.split_once('\n')?;
            Some(WorkflowCursor {
                id: id.to_owned(),
                version: version.to_owned(),
            })
        })
        .map(Some)
        .ok_or_else(|| ValidationError::single("page_token", "is not a token this listing issued"))
}

// ---------- workflows ----------

/// RegisterWorkflowRequest to its domain form.
pub fn register_workflow_request(
    req: pb::RegisterWorkflowRequest,
) -> Result<RegisterWorkflowRequest, ValidationError> {
    let mut v = ValidationError::default();
    let tags = tag_set("tags", req.tags, &mut v);
    check_len(
        &mut v,
        "description",
        req.description.as_deref(),
        MAX_TEXT_BYTES,
    );
    check_len(&mut v, "author", req.author.as_deref(), MAX_TEXT_BYTES);
    v.into_result()?;
    Ok(RegisterWorkflowRequest {
        name: req.name,
        description: req.description,
        version: req.version,
        workflow_json: req.workflow_json,
        tags,
        author: req.author,
        workflow_id: req.workflow_id,
        // Set from the caller by the scoped runtime.
        ownership: None,
    })
}

/// ListWorkflowsRequest to (filter, cursor, page size).
pub fn workflow_listing(
    req: pb::ListWorkflowsRequest,
) -> Result<(WorkflowFilter, Option<WorkflowCursor>, usize), ValidationError> {
    let mut v = ValidationError::default();
    let tags = tag_set("tags", req.tags, &mut v).into_iter().collect();
    let limit = v.absorb(page_size("page_size", req.page_size));
    let after = v.absorb(decode_workflow_token(&req.page_token));
    v.into_result()?;
    Ok((
        WorkflowFilter {
            tags,
            all_versions: req.all_versions,
        },
        after.flatten(),
        limit.unwrap_or(DEFAULT_PAGE_SIZE),
    ))
}

/// A workflow definition to the wire.
pub fn workflow_to_pb(w: &WorkflowDefinition) -> pb::WorkflowDefinition {
    pb::WorkflowDefinition {
        id: w.id.clone(),
        name: w.name.clone(),
        description: w.description.clone(),
        version: w.version.clone(),
        nodes: w
            .nodes
            .iter()
            .map(|(id, node)| {
                (
                    id.clone(),
                    pb::ComfyNode {
                        id: node.id.clone(),
                        r#type: node.class_type.clone(),
                        inputs: json_object_text(&node.inputs),
                        outputs: node.outputs.clone(),
                        metadata: json_object_text(&node.metadata),
                    },
                )
            })
            .collect(),
        edges: w
            .edges
            .iter()
            .map(|(from, to)| pb::WorkflowEdge {
                from_node: from.clone(),
                to_node: to.clone(),
            })
            .collect(),
        is_valid: w.is_valid,
        validation_errors: w.validation_errors.clone(),
        tags: w.tags.iter().cloned().collect(),
        author: w.author.clone(),
        created_at: Some(timestamp(w.created_at)),
        workflow_json: w.workflow_json.clone(),
    }
}

// ---------- configuration ----------

fn redact(secret: Option<&crate::config::Secret>) -> Option<String> {
    secret.map(|_| REDACTED.to_owned())
}

/// Strips credentials from a URL (user:password@host) before it is shown.
pub fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

/// The effective configuration to the wire, secrets redacted.
pub fn config_to_pb(config: &Config) -> pb::RuntimeConfig {
    let r = &config.runtime;
    let e = &config.executor;
    pb::RuntimeConfig {
        max_concurrent_tasks: u32::try_from(r.max_concurrent_tasks).unwrap_or(u32::MAX),
        task_timeout_seconds: r.task_timeout_seconds,
        task_retry_delay_seconds: r.task_retry_delay_seconds,
        queue_type: match r.queue_type {
            QueueType::Sqlite => pb::QueueType::Sqlite,
            QueueType::Memory => pb::QueueType::Memory,
            QueueType::Redis => pb::QueueType::Redis,
            QueueType::Rabbitmq => pb::QueueType::Rabbitmq,
        }
        .into(),
        queue_url: r.queue_url.as_deref().map(redacted_url),
        log_level: match r.log_level {
            LogLevel::Debug => pb::LogLevel::Debug,
            LogLevel::Info => pb::LogLevel::Info,
            LogLevel::Warning => pb::LogLevel::Warning,
            LogLevel::Error => pb::LogLevel::Error,
            LogLevel::Critical => pb::LogLevel::Critical,
        }
        .into(),
        log_format: match r.log_format {
            LogFormat::Json => pb::LogFormat::Json,
            LogFormat::Text => pb::LogFormat::Text,
        }
        .into(),
        log_file: r.log_file.as_ref().map(|p| p.display().to_string()),
        enable_metrics: r.enable_metrics,
        metrics_port: u32::try_from(r.metrics_port).unwrap_or(0),
        enable_ui: r.enable_ui,
        ui_update_interval_seconds: r.ui_update_interval_seconds,
        servers: config
            .servers
            .iter()
            .map(|s| pb::ServerConfig {
                url: redacted_url(&s.url),
                timeout_seconds: s.timeout_seconds,
                max_retries: s.max_retries,
                verify_ssl: s.verify_ssl,
                api_key: redact(s.api_key.as_ref()),
                auth_header: redact(s.auth_header.as_ref()),
            })
            .collect(),
        executor: Some(pb::TaskExecutorConfig {
            max_memory_mb: e.max_memory_mb,
            max_cpu_percent: e.max_cpu_percent,
            gpu_memory_fraction: e.gpu_memory_fraction,
            enable_gpu: e.enable_gpu,
            prefer_gpu_types: e.prefer_gpu_types.clone(),
            enable_optimization: e.enable_optimization,
            optimization_level: match e.optimization_level {
                OptimizationLevel::O0 => pb::OptimizationLevel::O0,
                OptimizationLevel::O1 => pb::OptimizationLevel::O1,
                OptimizationLevel::O2 => pb::OptimizationLevel::O2,
                OptimizationLevel::O3 => pb::OptimizationLevel::O3,
            }
            .into(),
            enable_cache: e.enable_cache,
            cache_size_mb: e.cache_size_mb,
            cache_ttl_seconds: e.cache_ttl_seconds,
        }),
        listen: config.service.listen.to_string(),
        metrics_listen: config.metrics_addr().to_string(),
        data_dir: config.service.data_dir.display().to_string(),
    }
}

/// DependencyType from the wire.
pub fn dependency_type_from_pb(
    field: &str,
    raw: i32,
) -> Result<crate::model::DependencyType, ValidationError> {
    use crate::model::DependencyType as D;
    use pb::DependencyType as P;
    decode_enum(field, raw, |p: P| match p {
        P::Unspecified => None,
        P::Requires => Some(D::Requires),
        P::Blocks => Some(D::Blocks),
        P::Optional => Some(D::Optional),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::model::NewTask;

    #[test]
    fn every_enum_round_trips_and_unspecified_is_rejected() {
        for s in TaskStatus::ALL {
            let raw = task_status_to_pb(s) as i32;
            assert_eq!(task_status_from_pb("status", raw).ok(), Some(s));
        }
        for t in TaskType::ALL {
            let raw = task_type_to_pb(t) as i32;
            assert_eq!(task_type_from_pb("type", raw).ok(), Some(t));
        }
        for p in TaskPriority::ALL {
            let raw = priority_to_pb(p) as i32;
            assert_eq!(priority_from_pb("priority", raw).ok(), Some(p));
        }
        for (field, result) in [
            ("status", task_status_from_pb("status", 0).err()),
            ("type", task_type_from_pb("type", 0).err()),
            ("priority", priority_from_pb("priority", 0).err()),
            ("priority", priority_from_pb("priority", 99).err()),
        ] {
            assert!(result.is_some_and(|e| e.has_field(field)), "{field}");
        }
    }

    #[test]
    fn a_refused_enum_value_is_named_with_the_accepted_ones() {
        let unspecified = priority_from_pb("priority", 0).unwrap_err().to_string();
        assert!(
            unspecified.contains(
                "TASK_PRIORITY_UNSPECIFIED is not accepted; use one of TASK_PRIORITY_LOW, \
                 TASK_PRIORITY_NORMAL, TASK_PRIORITY_HIGH, TASK_PRIORITY_CRITICAL"
            ),
            "{unspecified}"
        );
        let unknown = task_status_from_pb("status", 99).unwrap_err().to_string();
        assert!(
            unknown.contains("99 is not a valid value; use one of TASK_STATUS_PENDING"),
            "{unknown}"
        );
    }

    #[test]
    fn priority_keeps_the_seed_order_on_the_wire() {
        let wire: Vec<i32> = [
            TaskPriority::Low,
            TaskPriority::Normal,
            TaskPriority::High,
            TaskPriority::Critical,
        ]
        .into_iter()
        .map(|p| priority_to_pb(p) as i32)
        .collect();
        assert!(wire.windows(2).all(|w| w[0] < w[1]), "{wire:?}");
    }

    #[test]
    fn create_request_defaults_follow_the_seed() {
        let req = create_task_request(pb::CreateTaskRequest {
            name: "t".into(),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(req.task_type, TaskType::Node);
        assert_eq!(req.priority, TaskPriority::Normal);
        assert_eq!(req.max_retries, 3);
        assert!(req.metadata.is_empty());
    }

    #[test]
    fn create_request_collects_every_violation() {
        let err = create_task_request(pb::CreateTaskRequest {
            name: "t".into(),
            r#type: Some(0),
            priority: Some(0),
            metadata: "[1]".into(),
            tags: vec![" ".into()],
            request_id: Some(" ".into()),
            ..Default::default()
        })
        .expect_err("invalid");
        for field in ["type", "priority", "metadata", "tags[0]", "request_id"] {
            assert!(err.has_field(field), "{field}: {err}");
        }
    }

    #[test]
    fn task_to_pb_fills_computed_fields_and_keeps_numbers_exact() {
        let mut new = NewTask::new("t", TaskType::Node);
        new.metadata = parse_json_object("metadata", r#"{"seed": 18446744073709551615}"#)
            .expect("valid object");
        let mut task = Task::new(new).expect("valid task");
        let wire = task_to_pb(&task);
        assert_eq!(wire.status, pb::TaskStatus::Pending as i32);
        assert!(!wire.is_terminal && !wire.is_active && !wire.is_complete && !wire.can_retry);
        assert!(
            wire.metadata.contains("18446744073709551615"),
            "{}",
            wire.metadata
        );

        task.transition(TaskStatus::Running)
            .expect("pending -> running");
        assert!(task_to_pb(&task).is_active);
        task.transition(TaskStatus::Failed)
            .expect("running -> failed");
        let wire = task_to_pb(&task);
        assert!(wire.is_terminal && wire.is_complete && wire.can_retry && !wire.is_active);
        let metrics = wire.metrics.expect("metrics always sent");
        assert!(metrics.start_time.is_some() && metrics.end_time.is_some());
        assert!(metrics.duration_seconds.is_some_and(|d| d >= 0.0));
    }

    #[test]
    fn progress_outside_range_names_progress() {
        let err = progress_update(pb::UpdateTaskProgressRequest {
            id: "t".into(),
            progress: Some(1.5),
            ..Default::default()
        })
        .expect_err("1.5 is out of range");
        assert!(err.has_field("progress"));
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_tokens_are_rejected() {
        assert_eq!(
            decode_task_token(&encode_task_token(42)).ok(),
            Some(Some(42))
        );
        let cursor = WorkflowCursor {
            id: "w-1".into(),
            version: "1.10.0".into(),
        };
        assert_eq!(
            decode_workflow_token(&encode_workflow_token(&cursor)).ok(),
            Some(Some(cursor))
        );
        for bad in [
            "zz",
            "abc",
            "7431",
            &encode_workflow_token(&WorkflowCursor {
                id: "x".into(),
                version: "1.0.0".into(),
            }),
        ] {
            assert!(decode_task_token(bad).is_err(), "{bad}");
        }
        assert!(page_size("page_size", 1001).is_err());
        assert_eq!(page_size("page_size", 0).ok(), Some(DEFAULT_PAGE_SIZE));
    }

    #[test]
    fn config_to_pb_redacts_secrets_and_url_credentials() {
        let mut config = Config::default();
        config.servers[0].api_key = Some(Secret::new("s3cr3t-key"));
        config.servers[0].auth_header = Some(Secret::new("Bearer s3cr3t-header"));
        config.servers[0].url = "http://user:s3cr3t-pw@comfy.local:8188".into();
        let wire = config_to_pb(&config);
        let shown = format!("{wire:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(wire.servers[0].api_key.as_deref(), Some(REDACTED));
        assert_eq!(wire.servers[0].auth_header.as_deref(), Some(REDACTED));
        assert_eq!(wire.max_concurrent_tasks, 10);
        assert_eq!(wire.metrics_port, 9090);
        assert_eq!(wire.listen, "127.0.0.1:50051");
    }
}
