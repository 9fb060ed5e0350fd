//! Conversions of ExecutionService (and ValidateWorkflow) messages: execute and
//! validate requests with their typed options, executions and their listing.
//! Like `convert.rs`, a place where protobuf and domain types meet; it uses
//! `convert.rs`'s small pieces and never the other way round.

use crate::model::{JsonObject, TaskDependency, TaskPriority, ValidationError};
use crate::pb;
use crate::runtime::{
    DEFAULT_PAGE_SIZE, ExecuteRequest, ExecutionOptions, ExecutionView, ValidationReport,
    WorkflowSource,
};
use crate::store::ExecutionFilter;

use super::convert::*;

/// Most dependencies of one execution.
const MAX_EXECUTION_DEPENDENCIES: usize = 256;

fn workflow_source(
    workflow: Option<pb::execute_workflow_request::Workflow>,
) -> Result<WorkflowSource, ValidationError> {
    use pb::execute_workflow_request::Workflow as W;
    match workflow {
        Some(W::WorkflowRef(r)) => workflow_ref(r),
        Some(W::WorkflowJson(json)) => Ok(WorkflowSource::Inline(json)),
        None => Err(ValidationError::single(
            "workflow",
            "set workflow_ref (a registered workflow) or workflow_json (an inline graph)",
        )),
    }
}

fn workflow_ref(r: pb::WorkflowRef) -> Result<WorkflowSource, ValidationError> {
    let mut v = ValidationError::default();
    let id = v.absorb(require_id("workflow_ref.id", &r.id));
    if let Some(version) = &r.version {
        v.absorb(crate::model::validate_semver(
            "workflow_ref.version",
            version,
        ));
    }
    v.into_result()?;
    Ok(WorkflowSource::Registered {
        id: id.unwrap_or_default(),
        version: r.version,
    })
}

/// ExecuteWorkflowRequest to its domain form; every violation is collected.
pub fn execute_request(req: pb::ExecuteWorkflowRequest) -> Result<ExecuteRequest, ValidationError> {
    let mut v = ValidationError::default();
    let workflow = v.absorb(workflow_source(req.workflow));
    let options = execution_options(req.overrides, req.timeout_seconds, req.max_retries, &mut v);
    let priority = match req.priority {
        Some(raw) => v.absorb(priority_from_pb("priority", raw)),
        None => Some(TaskPriority::Normal),
    };
    let tags = tag_set("tags", req.tags, &mut v);
    check_len(
        &mut v,
        "idempotency_key",
        req.idempotency_key.as_deref(),
        256,
    );
    if req
        .idempotency_key
        .as_deref()
        .is_some_and(|k| k.trim().is_empty())
    {
        v.push("idempotency_key", "must not be empty when set");
    }
    check_len(&mut v, "name", req.name.as_deref(), 256);
    let mut dependencies = Vec::new();
    if check_count(
        &mut v,
        "dependencies",
        req.dependencies.len(),
        MAX_EXECUTION_DEPENDENCIES,
    ) {
        for (i, dep) in req.dependencies.iter().enumerate() {
            let field = format!("dependencies[{i}]");
            let task_id = v.absorb(require_id(&format!("{field}.task_id"), &dep.task_id));
            let kind = v.absorb(dependency_type_from_pb(
                &format!("{field}.dependency_type"),
                dep.dependency_type,
            ));
            if let (Some(task_id), Some(dependency_type)) = (task_id, kind) {
                dependencies.push(TaskDependency {
                    task_id,
                    dependency_type,
                });
            }
        }
    }
    v.into_result()?;
    Ok(ExecuteRequest {
        workflow: workflow.unwrap_or(WorkflowSource::Inline(String::new())),
        options,
        priority: priority.unwrap_or(TaskPriority::Normal),
        tags,
        idempotency_key: req.idempotency_key,
        dependencies,
        name: req
            .name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty()),
        // Set from the caller by the scoped runtime.
        ownership: None,
    })
}

/// Most nodes one request may override.
const MAX_OVERRIDDEN_NODES: usize = 1024;
/// Most inputs one request may override on one node.
const MAX_OVERRIDDEN_INPUTS: usize = 256;

/// One typed override value to its exact JSON literal; `field` names it.
fn input_value(field: &str, value: pb::InputValue) -> Result<serde_json::Value, ValidationError> {
    use pb::input_value::Kind;
    match value.kind {
        Some(Kind::IntValue(n)) => Ok(serde_json::Value::from(n)),
        Some(Kind::UintValue(n)) => Ok(serde_json::Value::from(n)),
        Some(Kind::DoubleValue(x)) => serde_json::Number::from_f64(x)
            .map(serde_json::Value::Number)
            .ok_or_else(|| {
                ValidationError::single(field, format!("must be a finite number, got {x}"))
            }),
        Some(Kind::StringValue(text)) => Ok(serde_json::Value::String(text)),
        Some(Kind::BoolValue(b)) => Ok(serde_json::Value::Bool(b)),
        None => Err(ValidationError::single(
            field,
            "set one of int_value, uint_value, double_value, string_value, bool_value",
        )),
    }
}

/// The typed options of an execute or validate request, every problem
/// collected into `v` under its own path (`overrides["3"].seed`).
fn execution_options(
    overrides: std::collections::HashMap<String, pb::NodeOverrides>,
    timeout_seconds: Option<f64>,
    max_retries: Option<u32>,
    v: &mut ValidationError,
) -> ExecutionOptions {
    let mut options = ExecutionOptions {
        overrides: JsonObject::new(),
        timeout_seconds,
        max_retries,
    };
    if !check_count(v, "overrides", overrides.len(), MAX_OVERRIDDEN_NODES) {
        return options;
    }
    // Sorted, so that errors and the stored record do not depend on map order.
    let mut nodes: Vec<_> = overrides.into_iter().collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    for (node, inputs) in nodes {
        let node_field = crate::model::key_path("overrides", &node);
        if !check_count(v, &node_field, inputs.inputs.len(), MAX_OVERRIDDEN_INPUTS) {
            continue;
        }
        let mut values: Vec<_> = inputs.inputs.into_iter().collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        let mut object = JsonObject::new();
        for (input, value) in values {
            let field = crate::model::key_path(&node_field, &input);
            if let Some(json) = v.absorb(input_value(&field, value)) {
                object.insert(input, json);
            }
        }
        options
            .overrides
            .insert(node, serde_json::Value::Object(object));
    }
    options
}

/// ValidateWorkflowRequest to (source, options).
pub fn validate_request(
    req: pb::ValidateWorkflowRequest,
) -> Result<(WorkflowSource, ExecutionOptions), ValidationError> {
    use pb::validate_workflow_request::Workflow as W;
    let mut v = ValidationError::default();
    let source = match req.workflow {
        Some(W::WorkflowRef(r)) => v.absorb(workflow_ref(r)),
        Some(W::WorkflowJson(json)) => Some(WorkflowSource::Inline(json)),
        None => {
            v.push(
                "workflow",
                "set workflow_ref (a registered workflow) or workflow_json (an inline graph)",
            );
            None
        }
    };
    let options = execution_options(req.overrides, req.timeout_seconds, req.max_retries, &mut v);
    v.into_result()?;
    Ok((
        source.unwrap_or(WorkflowSource::Inline(String::new())),
        options,
    ))
}

/// A ValidateWorkflow report to the wire.
pub fn validation_report_to_pb(report: &ValidationReport) -> pb::ValidateWorkflowResponse {
    pb::ValidateWorkflowResponse {
        valid: report.problems.is_empty(),
        issues: report
            .problems
            .violations
            .iter()
            .map(|f| pb::ValidationIssue {
                field: f.field.clone(),
                description: f.description.clone(),
            })
            .collect(),
        required_classes: report.required_classes.clone(),
        backends: report.backends.clone(),
        object_info_checked: report.object_info_checked,
    }
}

/// An execution to the wire, with its tasks and computed fields.
pub fn execution_to_pb(view: &ExecutionView) -> pb::WorkflowExecution {
    let e = &view.execution;
    let root = view.root();
    pb::WorkflowExecution {
        id: e.id.clone(),
        workflow_id: e.workflow_id.clone(),
        client_id: e.client_id.clone(),
        status: task_status_to_pb(e.status()).into(),
        progress: e.progress(),
        root_task_id: e.root_task_id.clone(),
        tasks: e.tasks.iter().map(task_to_pb).collect(),
        outputs: json_object_text(&e.outputs),
        artifacts: e.artifacts.clone(),
        total_duration_seconds: e.total_duration_seconds,
        node_metrics: e
            .node_metrics
            .iter()
            .map(|(node, m)| (node.clone(), metrics_to_pb(m)))
            .collect(),
        config: json_object_text(&e.config),
        environment: e.environment.clone().into_iter().collect(),
        created_at: Some(timestamp(e.created_at)),
        updated_at: e.updated_at.map(timestamp),
        completed_tasks: u32::try_from(e.completed_tasks()).unwrap_or(u32::MAX),
        failed_tasks: u32::try_from(e.failed_tasks()).unwrap_or(u32::MAX),
        workflow_version: e.workflow_version.clone(),
        backend: e.backend.clone(),
        prompt_id: e.prompt_id.clone(),
        priority: root
            .map(|r| priority_to_pb(r.priority))
            .unwrap_or(pb::TaskPriority::Unspecified)
            .into(),
        tags: root
            .map(|r| r.tags.iter().cloned().collect())
            .unwrap_or_default(),
        error: root.and_then(|r| r.error.clone()),
        error_type: root.and_then(|r| r.error_type.clone()),
        queue_position: view.queue_position,
    }
}

const EXECUTION_TOKEN_PREFIX: &str = "e1:";

/// The opaque token for the execution listing position `seq`.
pub fn encode_execution_token(seq: u64) -> String {
    hex_encode(&format!("{EXECUTION_TOKEN_PREFIX}{seq}"))
}

fn decode_execution_token(token: &str) -> Result<Option<u64>, ValidationError> {
    if token.is_empty() {
        return Ok(None);
    }
    hex_decode(token)
        .and_then(|t| {
            t.strip_prefix(EXECUTION_TOKEN_PREFIX)
                .and_then(|s| s.parse().ok())
        })
        .map(Some)
        .ok_or_else(|| ValidationError::single("page_token", "is not a token this listing issued"))
}

/// ListExecutionsRequest to (filter, cursor, page size).
pub fn execution_listing(
    req: pb::ListExecutionsRequest,
) -> Result<(ExecutionFilter, Option<u64>, usize), ValidationError> {
    let mut v = ValidationError::default();
    let mut statuses = Vec::new();
    for (i, raw) in req.statuses.iter().enumerate() {
        if let Some(s) = v.absorb(task_status_from_pb(&format!("statuses[{i}]"), *raw)) {
            statuses.push(s);
        }
    }
    let workflow_id = match req.workflow_id {
        Some(id) => v.absorb(require_id("workflow_id", &id)),
        None => None,
    };
    let tags = tag_set("tags", req.tags, &mut v).into_iter().collect();
    let limit = v.absorb(page_size("page_size", req.page_size));
    let after = v.absorb(decode_execution_token(&req.page_token));
    v.into_result()?;
    Ok((
        ExecutionFilter {
            statuses,
            workflow_id,
            tags,
        },
        after.flatten(),
        limit.unwrap_or(DEFAULT_PAGE_SIZE),
    ))
}
