//! Submission: every check of an execution request (graph, size, config,
//! overrides, the backends' `/object_info`, dependencies, idempotency key),
//! then the one store write that admits it, its idempotency fingerprint, and
//! ValidateWorkflow (the same checks without the write).
//!
//! More of [`Executor`]'s `impl`: it imports the handle's types from its
//! parent and the executor's lower modules; the parent imports nothing from it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::model::workflow::{GraphProblemKind, write_api_prompt};
use crate::model::{
    ComfyNode, DependencyType, JsonObject, NewExecution, NewTask, Task, TaskStatus, TaskType,
    ValidationError, WorkflowDefinition, WorkflowExecution,
};
use crate::runtime::fingerprint::Fingerprint;
use crate::runtime::workflow_checks::{
    OVERRIDES_FIELD, ObjectInfoCatalogue, WORKFLOW_FIELD, apply_node_overrides,
    check_nodes_against_object_info, rewrite_node_filename_prefixes,
};
use crate::runtime::{ObjectKind, RuntimeError};
use crate::store::{ExecutionCreateOutcome, IdempotencyKey, NewExecutionRecord};

use super::messages::{Admitted, Msg, Submitted};
use super::{
    ExecuteRequest, ExecutionOptions, ExecutionView, Executor, ValidationReport, WorkflowSource,
    deps,
};

/// Longest running time one execution may ask for: 7 days.
const MAX_TIMEOUT_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// Most retries one execution may ask for.
const MAX_RETRIES_LIMIT: u32 = 100;

/// Checks the per-execution options; every problem goes to `errors` under
/// the request's field name (`timeout_seconds`, `max_retries`).
fn check_options(options: &ExecutionOptions, errors: &mut ValidationError) {
    if let Some(seconds) = options.timeout_seconds
        && !(seconds > 0.0 && seconds <= MAX_TIMEOUT_SECONDS)
    {
        errors.push(
            "timeout_seconds",
            format!(
                "must be a number of seconds greater than 0 and at most {MAX_TIMEOUT_SECONDS}, got {seconds}"
            ),
        );
    }
    if let Some(retries) = options.max_retries
        && retries > MAX_RETRIES_LIMIT
    {
        errors.push(
            "max_retries",
            format!("must be from 0 to {MAX_RETRIES_LIMIT}, got {retries}"),
        );
    }
}

/// Renames each object_info problem of an input that an override set from
/// the graph's path (`workflow_json["3"].inputs.seed`) to the override's own
/// (`overrides["3"].seed`): the value came from there.
fn name_overridden_inputs(mut errors: ValidationError, overrides: &JsonObject) -> ValidationError {
    for violation in &mut errors.violations {
        for (node, inputs) in overrides {
            let Some(inputs) = inputs.as_object() else {
                continue;
            };
            let node_path =
                crate::model::key_path(&crate::model::key_path(WORKFLOW_FIELD, node), "inputs");
            for input in inputs.keys() {
                let input_path = crate::model::key_path(&node_path, input);
                if violation.field == input_path {
                    violation.field = crate::model::key_path(
                        &crate::model::key_path(OVERRIDES_FIELD, node),
                        input,
                    );
                }
            }
        }
    }
    errors
}

/// The prepared prompt and what the checks learnt.
struct Prepared {
    /// The prompt's nodes: overrides applied, filename prefixes rewritten.
    nodes: BTreeMap<String, ComfyNode>,
    /// The per-execution options.
    options: ExecutionOptions,
    /// The node classes it needs, sorted.
    required: Vec<String>,
    /// Backends, up now, that have every required class.
    backends: Vec<String>,
    /// Whether the object_info checks ran.
    object_info_checked: bool,
}

impl Executor {
    /// Every catalogue known (from backends up or down) and the names of
    /// the up backends with their catalogues.
    fn catalogues(&self) -> Vec<(String, bool, Arc<ObjectInfoCatalogue>)> {
        self.shared
            .pool
            .backends()
            .iter()
            .filter_map(|b| {
                b.read_state(|state| {
                    let catalogue = state.catalogue.clone()?;
                    Some((b.name.clone(), state.up, catalogue))
                })
            })
            .collect()
    }

    /// Runs every check on `workflow`, whose nodes are `nodes` (moved out of
    /// it for a submit, a copy for a validation), with `options`, and edits
    /// the nodes into the prompt to post; `execution_id` names the output
    /// folder of the rewritten filename prefixes.
    fn prepare(
        &self,
        workflow: &WorkflowDefinition,
        mut nodes: BTreeMap<String, ComfyNode>,
        options: &ExecutionOptions,
        execution_id: &str,
    ) -> Result<Prepared, ValidationError> {
        let mut errors = ValidationError::new();
        let settings = &self.shared.settings;
        if workflow.workflow_json.len() > settings.max_workflow_bytes {
            errors.push(
                WORKFLOW_FIELD,
                format!(
                    "is {} bytes; at most {} are accepted",
                    workflow.workflow_json.len(),
                    settings.max_workflow_bytes
                ),
            );
        }
        if nodes.len() > settings.max_workflow_nodes {
            errors.push(
                WORKFLOW_FIELD,
                format!(
                    "has {} nodes; at most {} are accepted",
                    nodes.len(),
                    settings.max_workflow_nodes
                ),
            );
        }
        let catalogues = self.catalogues();
        let object_info_checked = !catalogues.is_empty();
        for problem in &workflow.graph_problems {
            // Output nodes are judged by the backends' object_info when known.
            if object_info_checked && problem.kind == GraphProblemKind::NoOutputNode {
                continue;
            }
            errors.push(problem.field.clone(), problem.description.clone());
        }
        check_options(options, &mut errors);
        // Before the overrides, which change inputs only.
        let required: Vec<String> = nodes
            .values()
            .map(|node| node.class_type.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let Err(e) = apply_node_overrides(&mut nodes, &options.overrides) {
            errors.extend(e);
        }
        rewrite_node_filename_prefixes(&mut nodes, execution_id);
        let backends: Vec<String> = catalogues
            .iter()
            .filter(|(_, up, c)| *up && required.iter().all(|class| c.contains(class)))
            .map(|(name, _, _)| name.clone())
            .collect();
        if errors.is_empty() && object_info_checked {
            // Valid when valid for one known backend; else report against the
            // backend that has the most of the required classes.
            let mut best: Option<(usize, ValidationError)> = None;
            for (_, _, catalogue) in &catalogues {
                match check_nodes_against_object_info(&nodes, catalogue) {
                    Ok(()) => {
                        best = None;
                        break;
                    }
                    Err(e) => {
                        let known = required.iter().filter(|c| catalogue.contains(c)).count();
                        if best.as_ref().is_none_or(|(k, _)| known > *k) {
                            best = Some((known, e));
                        }
                    }
                }
            }
            if let Some((_, e)) = best {
                errors.extend(name_overridden_inputs(e, &options.overrides));
            }
        }
        if errors.is_empty() {
            Ok(Prepared {
                nodes,
                options: options.clone(),
                required,
                backends,
                object_info_checked,
            })
        } else {
            Err(errors)
        }
    }

    /// ValidateWorkflow: the checks of [`Executor::submit`] without queueing.
    pub fn validate(
        &self,
        workflow: &WorkflowDefinition,
        options: &ExecutionOptions,
    ) -> ValidationReport {
        let required: Vec<String> = workflow
            .nodes
            .values()
            .map(|n| n.class_type.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        match self.prepare(workflow, workflow.nodes.clone(), options, "validation") {
            Ok(prepared) => ValidationReport {
                problems: ValidationError::new(),
                required_classes: prepared.required,
                backends: prepared.backends,
                object_info_checked: prepared.object_info_checked,
            },
            Err(problems) => {
                let catalogues = self.catalogues();
                ValidationReport {
                    problems,
                    backends: catalogues
                        .iter()
                        .filter(|(_, up, c)| *up && required.iter().all(|class| c.contains(class)))
                        .map(|(name, _, _)| name.clone())
                        .collect(),
                    required_classes: required,
                    object_info_checked: !catalogues.is_empty(),
                }
            }
        }
    }

    /// Validates and admits an execution of `workflow` (already resolved:
    /// `registered` when it came from the registry).
    pub async fn submit(
        &self,
        request: ExecuteRequest,
        mut workflow: WorkflowDefinition,
        registered: bool,
    ) -> Result<ExecutionView, RuntimeError> {
        let execution_id = crate::model::new_id();
        // Only a keyed submit is compared with an earlier one.
        let fingerprint = request
            .idempotency_key
            .as_ref()
            .map(|_| fingerprint(&request));
        // A replay creates nothing: it is answered before any check that
        // depends on the moment (backends' catalogues, dependency states,
        // the queue's fill). Two first submissions racing with one key are
        // settled by the store.
        if let Some(key) = &request.idempotency_key
            && let Some((stored, id)) = self
                .shared
                .store
                .execution_for_key(&super::scoped_key(key, request.ownership.as_ref()))?
        {
            return if Some(stored) == fingerprint {
                self.view_with_position(&id).await
            } else {
                Err(idempotency_conflict(&id))
            };
        }
        let mut errors = ValidationError::new();
        // The nodes move out to be checked, edited and written as the prompt:
        // the definition is used for its name, id and version from here on.
        let nodes = workflow.take_nodes();
        let prepared = match self.prepare(&workflow, nodes, &request.options, &execution_id) {
            Ok(prepared) => Some(prepared),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        if let Err(e) = deps::check(&self.shared.tasks, &request.dependencies) {
            errors.extend(e);
        }
        if let Some(key) = &request.idempotency_key
            && (key.trim().is_empty() || key.len() > 256)
        {
            errors.push("idempotency_key", "must be 1 to 256 characters");
        }
        let Some(prepared) = prepared.filter(|_| errors.is_empty()) else {
            return Err(errors.into());
        };
        let capacity = self.shared.settings.max_queue_len + self.shared.settings.max_concurrent;
        let admitted = self
            .shared
            .backlog
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return Err(RuntimeError::ResourceExhausted {
                what: format!("execution queue ({capacity} executions admitted)"),
                retry_after: self.shared.retry_after(),
            });
        }
        let created = self.create(
            request,
            &workflow,
            registered,
            prepared,
            execution_id,
            fingerprint,
        );
        let (outcome, admitted) = match created {
            Ok(created) => created,
            Err(e) => {
                self.shared.backlog.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        match outcome {
            Creation::New(id) => {
                let (reply, answer) = oneshot::channel();
                self.tx
                    .send(Msg::Submit {
                        admitted: Box::new(admitted),
                        reply,
                    })
                    .map_err(|_| RuntimeError::Unavailable("the executor has stopped".into()))?;
                let submitted = answer
                    .await
                    .map_err(|_| RuntimeError::Unavailable("the executor has stopped".into()))?;
                // What the actor did with it (queued, held) is durable
                // before the client hears of it.
                self.durable().await?;
                match submitted {
                    Submitted {
                        execution: Some(execution),
                        tasks,
                        position,
                    } => {
                        let execution = super::with_tasks(execution, tasks);
                        Ok(ExecutionView {
                            queue_position: position
                                .filter(|_| execution.status() == TaskStatus::Queued),
                            execution,
                        })
                    }
                    // Not held by the actor: as stored.
                    Submitted {
                        execution: None, ..
                    } => self.view_with_position(&id).await,
                }
            }
            Creation::Existing {
                execution,
                same_body,
            } => {
                self.shared.backlog.fetch_sub(1, Ordering::SeqCst);
                if same_body {
                    self.view(&execution.id)
                } else {
                    Err(idempotency_conflict(&execution.id))
                }
            }
        }
    }

    /// Builds and stores the execution and its tasks.
    fn create(
        &self,
        request: ExecuteRequest,
        workflow: &WorkflowDefinition,
        registered: bool,
        prepared: Prepared,
        execution_id: String,
        fingerprint: Option<String>,
    ) -> Result<(Creation, Admitted), RuntimeError> {
        let nodes = prepared.nodes.len();
        let max_retries = prepared
            .options
            .max_retries
            .unwrap_or(crate::model::task::DEFAULT_MAX_RETRIES);
        let timeout = prepared
            .options
            .timeout_seconds
            .unwrap_or(self.shared.settings.default_timeout.as_secs_f64());
        let name = request.name.clone().unwrap_or_else(|| {
            if registered {
                workflow.name.clone()
            } else {
                "inline workflow".to_owned()
            }
        });
        // Sized: kept with the task (a map grown an entry at a time has room for three).
        let mut metadata = JsonObject::with_capacity(2);
        metadata.insert("execution_id".into(), Value::from(execution_id.clone()));
        metadata.insert("workflow_id".into(), Value::from(workflow.id.clone()));
        let mut root = Task::new(NewTask {
            id: None,
            task_type: TaskType::Workflow,
            priority: request.priority,
            name,
            description: None,
            tags: request.tags.iter().cloned().collect(),
            parent_id: None,
            dependencies: request.dependencies.clone(),
            max_retries,
            timeout_seconds: Some(timeout),
            metadata,
        })?;
        root.ownership = request.ownership.clone();
        // NODE tasks are created when the execution is first dispatched
        // (`node_tasks`): a queued execution costs one task, not one per node.
        let config = prepared.options.to_json();
        let mut execution = WorkflowExecution::new(NewExecution {
            id: Some(execution_id),
            workflow_id: workflow.id.clone(),
            client_id: None,
            root_task_id: Some(root.id.clone()),
            config,
            environment: Default::default(),
            workflow_version: registered.then(|| workflow.version.clone()),
        })?;
        execution.ownership = request.ownership.clone();
        // Written into a byte buffer (`to_string` goes through `Display`, a formatter call per
        // token), each string that needs no escape copied whole (`json_text`). Its exact
        // length (a boxed slice): the actor may hold it until the execution is dispatched, and
        // the memory store keeps it. Room for about what the workflow's text held, and the
        // rewritten prefixes: written without growing the buffer by doubling on the way.
        let mut encoded = String::with_capacity(workflow.workflow_json.len() + 64 * nodes);
        write_api_prompt(&mut encoded, &prepared.nodes);
        let prompt = Bytes::from(encoded.into_bytes().into_boxed_slice());
        let key = request
            .idempotency_key
            .zip(fingerprint)
            .map(|(key, fingerprint)| IdempotencyKey {
                key: super::scoped_key(&key, request.ownership.as_ref()),
                fingerprint,
            });
        let encoded_prompt = prompt.clone();
        // One execution and one root task (no tasks inside the execution: they
        // live as tasks), shared by the record, the actor and the pending writes.
        let execution = Arc::new(execution);
        let root = Arc::new(root);
        let record = NewExecutionRecord {
            execution: Arc::clone(&execution),
            tasks: vec![Arc::clone(&root)],
            prompt,
        };
        // A keyed create needs the store's answer (the key may be taken);
        // any other is stored by the actor, with what it does to it, in one
        // write. The keyed write blocks the async thread: run elsewhere, it
        // and the hand-over to the actor could interleave with the actor (a
        // Redis replica's recovery saw an execution completed twice; PERFORMANCE.md,
        // "The task API waits without holding the thread").
        let (outcome, unstored) = match key {
            Some(key) => (
                match self.shared.store.create_execution(record, Some(key))? {
                    ExecutionCreateOutcome::Created(execution) => Creation::New(execution.id),
                    ExecutionCreateOutcome::Existing {
                        execution,
                        same_body,
                    } => Creation::Existing {
                        execution: Box::new(execution),
                        same_body,
                    },
                },
                None,
            ),
            None => (Creation::New(execution.id.clone()), Some(record)),
        };
        let stored = unstored.is_none();
        let admitted = Admitted {
            execution,
            root,
            unstored,
            required: prepared.required,
            prompt: encoded_prompt,
        };
        if let Creation::New(_) = &outcome {
            let (execution, root) = (&admitted.execution, &admitted.root);
            for dep in &root.dependencies {
                match dep.dependency_type {
                    DependencyType::Blocks => {
                        self.shared.tasks.add_hold(&dep.task_id, &root.id);
                        self.shared.tasks.add_dependent(
                            &root.id,
                            &dep.task_id,
                            DependencyType::Optional,
                        );
                    }
                    kind => self
                        .shared
                        .tasks
                        .add_dependent(&dep.task_id, &root.id, kind),
                }
            }
            if stored {
                self.shared
                    .tasks
                    .announce_created(std::slice::from_ref(root.as_ref()));
            }
            tracing::info!(
                execution_id = %execution.id,
                workflow_id = %execution.workflow_id,
                task_id = %root.id,
                nodes,
                "execution created"
            );
        }
        Ok((outcome, admitted))
    }
}

/// What `create` did: made a new execution (its id), or found the one its
/// idempotency key already names.
enum Creation {
    /// Created: stored, or handed to the actor to store.
    New(String),
    /// The key's execution, and whether its request was the same.
    Existing {
        /// The execution the key names (boxed: the rare case).
        execution: Box<WorkflowExecution>,
        /// Whether the fingerprints match.
        same_body: bool,
    },
}

/// The error for an idempotency key reused with another request.
fn idempotency_conflict(id: &str) -> RuntimeError {
    RuntimeError::AlreadyExists {
        kind: ObjectKind::Execution,
        id: id.to_owned(),
        reason: "idempotency_key was used before with a different request".into(),
    }
}

/// The digest an idempotency key is checked against.
fn fingerprint(request: &ExecuteRequest) -> String {
    let mut fp = Fingerprint::default();
    fp = match &request.workflow {
        WorkflowSource::Registered { id, version } => fp
            .field(b"registered")
            .field(id.as_bytes())
            .field(version.as_deref().unwrap_or("\0latest").as_bytes()),
        WorkflowSource::Inline(json) => fp.field(b"inline").field(json.as_bytes()),
    };
    fp = fp
        .field(
            Value::Object(request.options.to_json())
                .to_string()
                .as_bytes(),
        )
        .field(request.priority.as_str().as_bytes());
    for tag in &request.tags {
        fp = fp.field(tag.as_bytes());
    }
    for dep in &request.dependencies {
        fp = fp
            .field(dep.task_id.as_bytes())
            .field(dep.dependency_type.as_str().as_bytes());
    }
    fp.field(request.name.as_deref().unwrap_or("\0none").as_bytes())
        .finish()
}
