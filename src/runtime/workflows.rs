//! The workflow registry: registers ComfyUI API-format graphs as versioned
//! `WorkflowDefinition`s (rejecting graphs that fail the checks), and gets,
//! lists and deletes them by id and version.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::model::{NewWorkflow, ValidationError, WorkflowDefinition, validate_semver};
use crate::store::{Page, Store, WorkflowCursor, WorkflowFilter};

use super::{ObjectKind, RuntimeError};

/// Longest client-chosen workflow id.
const MAX_WORKFLOW_ID_LEN: usize = 128;

/// A RegisterWorkflow request, in domain terms.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterWorkflowRequest {
    /// Workflow name.
    pub name: String,
    /// Optional description.
    pub description: Option<String>,
    /// Semver; None means "1.0.0".
    pub version: Option<String>,
    /// The ComfyUI API-format graph, as sent.
    pub workflow_json: String,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Author.
    pub author: Option<String>,
    /// Id of the workflow this is a version of; None creates a new one.
    pub workflow_id: Option<String>,
    /// Who registers it; `None` without authentication.
    pub ownership: Option<crate::model::Ownership>,
}

/// See the module docs.
pub struct WorkflowRegistry {
    /// Where workflows live.
    store: Arc<dyn Store>,
}

impl WorkflowRegistry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Parses, checks and stores a workflow version. Registering the same
    /// id, version and graph again returns the stored one.
    pub fn register(
        &self,
        request: RegisterWorkflowRequest,
    ) -> Result<WorkflowDefinition, RuntimeError> {
        let id = match request.workflow_id {
            Some(id) => validate_workflow_id(&id)?,
            None => crate::model::new_id(),
        };
        let mut workflow = WorkflowDefinition::from_api_json(
            NewWorkflow {
                name: request.name,
                description: request.description,
                version: request.version,
                tags: request.tags,
                author: request.author,
            },
            &request.workflow_json,
        )?;
        if !workflow.is_valid {
            let mut violations = ValidationError::default();
            for problem in &workflow.graph_problems {
                violations.push(problem.field.clone(), problem.description.clone());
            }
            return Err(violations.into());
        }
        workflow.id = id;
        workflow.ownership = request.ownership;
        let same_registration = |other: &WorkflowDefinition| {
            other.name == workflow.name
                && other.description == workflow.description
                && other.tags == workflow.tags
                && other.author == workflow.author
                && other.workflow_json == workflow.workflow_json
        };
        match self.store.insert_workflow(workflow.clone())? {
            Ok(stored) => {
                tracing::info!(workflow_id = %stored.id, version = %stored.version, nodes = stored.nodes.len(), "workflow registered");
                Ok(stored)
            }
            Err(existing) if same_registration(&existing) => Ok(existing),
            Err(existing) => Err(RuntimeError::AlreadyExists {
                kind: ObjectKind::Workflow,
                id: existing.id,
                reason: format!(
                    "version {} is registered with a different body; register a new version",
                    existing.version
                ),
            }),
        }
    }

    /// One version, or the highest when `version` is None.
    pub fn get(&self, id: &str, version: Option<&str>) -> Result<WorkflowDefinition, RuntimeError> {
        if let Some(v) = version {
            validate_semver("version", v)?;
        }
        self.store
            .get_workflow(id, version)?
            .ok_or_else(|| RuntimeError::workflow_not_found(id, version))
    }

    /// A page of workflows ordered by id then version.
    pub fn list(
        &self,
        filter: &WorkflowFilter,
        after: Option<&WorkflowCursor>,
        limit: usize,
    ) -> Result<Page<WorkflowDefinition, WorkflowCursor>, RuntimeError> {
        Ok(self.store.list_workflows(filter, after, limit)?)
    }

    /// Deletes one version or all; NOT_FOUND when nothing matched.
    pub fn delete(&self, id: &str, version: Option<&str>) -> Result<Vec<String>, RuntimeError> {
        if let Some(v) = version {
            validate_semver("version", v)?;
        }
        let deleted = self.store.delete_workflow(id, version)?;
        if deleted.is_empty() {
            return Err(RuntimeError::workflow_not_found(id, version));
        }
        tracing::info!(workflow_id = %id, versions = ?deleted, "workflow deleted");
        Ok(deleted)
    }
}

fn validate_workflow_id(id: &str) -> Result<String, ValidationError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_WORKFLOW_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(id.to_owned())
    } else {
        Err(ValidationError::single(
            "workflow_id",
            format!(
                "must be 1 to {MAX_WORKFLOW_ID_LEN} characters of letters, digits, '-', '_' or '.'"
            ),
        ))
    }
}
