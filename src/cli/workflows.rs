//! `comfy-reality workflows register|list|get|delete|validate`: the
//! WorkflowService calls, with plain or JSON output.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::client::{CliError, Client, EXIT_FAILED, names};
use super::overrides::{self, Override};
use crate::pb::{
    DeleteWorkflowRequest, GetWorkflowRequest, ListWorkflowsRequest, RegisterWorkflowRequest,
    ValidateWorkflowRequest, WorkflowDefinition, WorkflowRef, validate_workflow_request::Workflow,
};

/// `workflows` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// Register a workflow (ComfyUI API-format JSON) under a name and version.
    Register(RegisterArgs),
    /// List the registered workflows.
    List(ListArgs),
    /// Show one registered workflow.
    Get(RefArgs),
    /// Delete a registered workflow (one version, or all of them).
    Delete(RefArgs),
    /// Check a workflow against the server and its backends without running
    /// it; exit 1 when it is invalid.
    Validate(ValidateArgs),
}

/// Flags of `workflows register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The workflow in ComfyUI API format (JSON).
    pub file: PathBuf,
    /// Its name.
    #[arg(long)]
    pub name: String,
    /// Its semver version.
    #[arg(long, value_name = "SEMVER")]
    pub version: Option<String>,
    /// A description.
    #[arg(long)]
    pub description: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Register as a new version of this workflow id.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

/// Flags of `workflows list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Every version, not only the newest of each workflow.
    #[arg(long)]
    pub all_versions: bool,
    /// Only workflows with this tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

/// A workflow id and an optional version.
#[derive(Debug, Args)]
pub struct RefArgs {
    /// Workflow id.
    pub id: String,
    /// One version; default: the newest (get) or all of them (delete).
    #[arg(long, value_name = "SEMVER")]
    pub version: Option<String>,
}

/// Flags of `workflows validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The workflow in ComfyUI API format (JSON).
    #[arg(required_unless_present = "id", conflicts_with = "id")]
    pub file: Option<PathBuf>,
    /// A registered workflow instead of a file.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The registered version (with --id).
    #[arg(long, value_name = "SEMVER", requires = "id")]
    pub version: Option<String>,
    /// Overrides to check: NODE.INPUT=VALUE (repeatable).
    #[arg(long = "set", value_parser = overrides::parse, value_name = "NODE.INPUT=VALUE")]
    pub overrides: Vec<Override>,
}

/// Runs `workflows`.
pub async fn run(client: &Client, command: WorkflowsCommand) -> Result<ExitCode, CliError> {
    let mut service = client.workflows();
    match command {
        WorkflowsCommand::Register(args) => {
            let workflow_json = std::fs::read_to_string(&args.file)
                .with_context(|| format!("cannot read {}", args.file.display()))?;
            let workflow = service
                .register_workflow(RegisterWorkflowRequest {
                    name: args.name,
                    description: args.description,
                    version: args.version,
                    workflow_json,
                    tags: args.tags,
                    author: None,
                    workflow_id: args.id,
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner()
                .workflow
                .context("the server returned no workflow")?;
            print_workflow(client, &workflow, false)?;
        }
        WorkflowsCommand::List(args) => {
            let mut request = ListWorkflowsRequest {
                page_size: 0,
                page_token: String::new(),
                tags: args.tags,
                all_versions: args.all_versions,
            };
            if !client.printer.json() {
                client.printer.line(&format!(
                    "{:<36}  {:<10}  {:<5}  NAME",
                    "ID", "VERSION", "VALID"
                ));
            }
            loop {
                let page = service
                    .list_workflows(request.clone())
                    .await
                    .map_err(|s| client.error(s))?
                    .into_inner();
                for workflow in &page.workflows {
                    print_workflow(client, workflow, false)?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
        }
        WorkflowsCommand::Get(args) => {
            let workflow = service
                .get_workflow(GetWorkflowRequest {
                    id: args.id,
                    version: args.version,
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner()
                .workflow
                .context("the server returned no workflow")?;
            print_workflow(client, &workflow, true)?;
        }
        WorkflowsCommand::Delete(args) => {
            let response = service
                .delete_workflow(DeleteWorkflowRequest {
                    id: args.id.clone(),
                    version: args.version,
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            if client.printer.json() {
                client
                    .printer
                    .print_json(names::DELETE_WORKFLOW, &response)?;
            } else {
                for version in &response.deleted_versions {
                    client
                        .printer
                        .line(&format!("deleted {} {version}", args.id));
                }
            }
        }
        WorkflowsCommand::Validate(args) => {
            let workflow = match (args.file, args.id) {
                (Some(file), _) => Workflow::WorkflowJson(
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?,
                ),
                (None, Some(id)) => Workflow::WorkflowRef(WorkflowRef {
                    id,
                    version: args.version,
                }),
                (None, None) => {
                    return Err(anyhow::anyhow!("name a FILE or --id").into());
                }
            };
            let response = service
                .validate_workflow(ValidateWorkflowRequest {
                    workflow: Some(workflow),
                    overrides: overrides::to_map(&args.overrides),
                    timeout_seconds: None,
                    max_retries: None,
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            if client.printer.json() {
                client
                    .printer
                    .print_json(names::VALIDATE_WORKFLOW, &response)?;
            } else {
                client
                    .printer
                    .line(if response.valid { "valid" } else { "invalid" });
                for issue in &response.issues {
                    client
                        .printer
                        .line(&format!("  {}: {}", issue.field, issue.description));
                }
                if !response.required_classes.is_empty() {
                    client.printer.line(&format!(
                        "node classes: {}",
                        response.required_classes.join(", ")
                    ));
                }
            }
            if !response.valid {
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One workflow: a JSON line, a table row, or (`details`) its fields.
fn print_workflow(
    client: &Client,
    workflow: &WorkflowDefinition,
    details: bool,
) -> Result<(), CliError> {
    let p = &client.printer;
    if p.json() {
        p.print_json(names::WORKFLOW, workflow)?;
        return Ok(());
    }
    if !details {
        p.line(&format!(
            "{:<36}  {:<10}  {:<5}  {}",
            workflow.id, workflow.version, workflow.is_valid, workflow.name
        ));
        return Ok(());
    }
    p.line(&format!("id:          {}", workflow.id));
    p.line(&format!("name:        {}", workflow.name));
    p.line(&format!("version:     {}", workflow.version));
    if let Some(description) = &workflow.description {
        p.line(&format!("description: {description}"));
    }
    p.line(&format!("valid:       {}", workflow.is_valid));
    for error in &workflow.validation_errors {
        p.line(&format!("  {error}"));
    }
    if !workflow.tags.is_empty() {
        p.line(&format!("tags:        {}", workflow.tags.join(", ")));
    }
    let mut nodes: Vec<_> = workflow.nodes.values().collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    p.line(&format!("nodes:       {}", nodes.len()));
    for node in nodes {
        p.line(&format!("  {} {}", node.id, node.r#type));
    }
    Ok(())
}
