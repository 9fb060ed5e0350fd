//! The execution subcommands: `submit`, `watch`, `get`, `list`, `cancel`
//! and `retry` (TaskService RetryTask). `watch` and `submit --watch` follow
//! the event stream ([`super::events::Follower`]), never poll, and show it
//! in the live view ([`super::live`]) on a terminal, else one plain line
//! per event; the exit code says how the executions ended.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::client::{CliError, Client, EXIT_FAILED, names, parse_enum, short_name};
use super::events::{Follower, print_event};
use super::live::{LiveView, Screen, UiSettings};
use super::overrides::{self, Override};
use crate::pb::{
    CancelExecutionRequest, DependencyType, Event, ExecuteWorkflowRequest, GetExecutionRequest,
    GetRuntimeInfoRequest, ListExecutionsRequest, RetryTaskRequest, SubscribeEventsRequest, Task,
    TaskDependency, TaskEventType, TaskPriority, TaskStatus, WorkflowExecution, event,
    execute_workflow_request::Workflow,
};

/// Flags of `submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The workflow in ComfyUI API format (JSON).
    #[arg(value_name = "WORKFLOW.json")]
    pub workflow: PathBuf,
    /// Priority: low, normal, high or critical (any case).
    #[arg(long, value_parser = parse_priority, value_name = "PRIORITY")]
    pub priority: Option<TaskPriority>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Set a node's literal input for this run: NODE.INPUT=VALUE, VALUE a
    /// JSON literal (64-bit integers exact) or bare text (repeatable).
    #[arg(long = "set", value_parser = overrides::parse, value_name = "NODE.INPUT=VALUE")]
    pub overrides: Vec<Override>,
    /// Running-time limit in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Retries after a transient failure.
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// The same key with the same body returns the same execution.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Run only after this task (or another execution's root task)
    /// completed (repeatable).
    #[arg(long = "after", value_name = "TASK_ID")]
    pub after: Vec<String>,
    /// Name of the execution's root task.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Stay, print each event, and exit with the execution's outcome.
    #[arg(long)]
    pub watch: bool,
    /// Wait for the execution and save its artifacts into DIR.
    #[arg(long, value_name = "DIR")]
    pub download: Option<PathBuf>,
}

fn parse_priority(value: &str) -> Result<TaskPriority, String> {
    parse_enum(
        value,
        "TASK_PRIORITY_",
        TaskPriority::from_str_name,
        "low, normal, high, critical",
    )
}

fn parse_status(value: &str) -> Result<TaskStatus, String> {
    parse_enum(
        value,
        "TASK_STATUS_",
        TaskStatus::from_str_name,
        "pending, queued, running, completed, failed, cancelled, retrying",
    )
}

/// Flags of `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Executions to watch until they end; none: everything, until Ctrl-C.
    #[arg(value_name = "EXECUTION_ID")]
    pub ids: Vec<String>,
}

/// Flags of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Execution id.
    pub id: String,
}

/// Flags of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only executions in this status (repeatable).
    #[arg(long = "status", value_parser = parse_status, value_name = "STATUS")]
    pub statuses: Vec<TaskStatus>,
    /// Only executions with this tag (repeatable: all of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only executions of this registered workflow.
    #[arg(long, value_name = "ID")]
    pub workflow: Option<String>,
    /// Executions per page (the server's default when omitted).
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,
    /// Start at this page (the token printed after the previous page).
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    pub all: bool,
}

/// Flags of `cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Execution id.
    pub id: String,
    /// Why (kept as the root task's progress message).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Flags of `retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Id of a failed or cancelled task.
    pub task_id: String,
}

/// Runs `submit`.
pub async fn submit(
    client: &Client,
    args: SubmitArgs,
    ui: UiSettings,
) -> Result<ExitCode, CliError> {
    let text = std::fs::read_to_string(&args.workflow)
        .with_context(|| format!("cannot read {}", args.workflow.display()))?;
    let request = ExecuteWorkflowRequest {
        workflow: Some(Workflow::WorkflowJson(text)),
        priority: args.priority.map(i32::from),
        tags: args.tags,
        idempotency_key: args.idempotency_key,
        dependencies: args
            .after
            .into_iter()
            .map(|task_id| TaskDependency {
                task_id,
                dependency_type: DependencyType::Requires.into(),
            })
            .collect(),
        name: args.name,
        overrides: overrides::to_map(&args.overrides),
        timeout_seconds: args.timeout,
        max_retries: args.max_retries,
    };
    let wait = args.watch || args.download.is_some();
    // Where the events of the new execution start: read before submitting,
    // so the first ones are replayed, not missed.
    let after = if wait {
        Some(super::events::last_sequence(client).await?)
    } else {
        None
    };
    let execution = client
        .executions()
        .execute_workflow(request)
        .await
        .map_err(|s| client.error(s))?
        .into_inner()
        .execution
        .context("the server returned no execution")?;
    if !wait {
        print_execution_line(client, &execution)?;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "submitted execution {} ({})",
        execution.id,
        status_name(execution.status)
    );
    let mut show = if args.watch {
        Show::new(client, ui)
    } else {
        Show::Nothing
    };
    let Some(ended) = follow_to_end(client, vec![execution.id.clone()], after, &mut show).await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let code = print_endings(client, &ended, show.is_live())?;
    if let (Some(dir), Some(execution)) = (&args.download, ended.first())
        && execution.status == TaskStatus::Completed as i32
    {
        super::artifacts::save_all(client, execution, dir).await?;
    }
    Ok(code)
}

/// Runs `watch`.
pub async fn watch(client: &Client, args: WatchArgs, ui: UiSettings) -> Result<ExitCode, CliError> {
    let mut show = Show::new(client, ui);
    if args.ids.is_empty() {
        return watch_everything(client, show).await;
    }
    match follow_to_end(client, args.ids, None, &mut show).await? {
        Some(ended) => print_endings(client, &ended, show.is_live()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `watch` without ids: every execution, until Ctrl-C.
async fn watch_everything(client: &Client, mut show: Show) -> Result<ExitCode, CliError> {
    let request = SubscribeEventsRequest {
        include_node_events: true,
        ..SubscribeEventsRequest::default()
    };
    let mut follower = Follower::start(client, request).await?;
    if show.is_live() {
        // The rows of what is active now; later ones come from the stream.
        let mut request = ListExecutionsRequest {
            statuses: [
                TaskStatus::Pending,
                TaskStatus::Queued,
                TaskStatus::Running,
                TaskStatus::Retrying,
            ]
            .into_iter()
            .map(i32::from)
            .collect(),
            ..ListExecutionsRequest::default()
        };
        loop {
            let page = client
                .executions()
                .list_executions(request.clone())
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            for execution in &page.executions {
                show.seed(execution);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        show.refresh_info(client).await;
    }
    let mut tick = tokio::time::interval(show.interval());
    loop {
        let event = tokio::select! {
            event = follower.next() => event?,
            _ = tick.tick(), if show.is_live() => {
                show.refresh_info_if_due(client).await;
                show.redraw(false)?;
                continue;
            }
            _ = tokio::signal::ctrl_c() => {
                show.redraw(true)?;
                return Ok(ExitCode::SUCCESS);
            }
        };
        // A row first seen, or one that just ended: read it once, for its
        // name, or for its final state and artifacts.
        if let (Show::Live { view, .. }, Some(id)) = (&mut show, &event.execution_id)
            && (!view.tracks(id) || (!event.node && ends_a_task(&event)))
            && let Ok(execution) = get_execution(client, id).await
        {
            view.seed(&execution);
        }
        show.event(client, &event)?;
        show.after_event(client, &event).await;
    }
}

/// How `watch` and `submit --watch` show the events.
enum Show {
    /// Not at all (`submit --download` without `--watch`).
    Nothing,
    /// One line per event (or one JSON object): stdout is not a terminal,
    /// `--output json`, or `runtime.enable_ui = false`.
    Plain,
    /// The live view.
    Live {
        /// The model.
        view: LiveView,
        /// The terminal.
        screen: Screen,
        /// When GetRuntimeInfo was last read (`None`: never).
        info_at: Option<tokio::time::Instant>,
        /// Whether a followed execution was queued, started or ended since:
        /// the footer's load is stale.
        info_stale: bool,
    },
}

impl Show {
    /// The live view when stdout is a terminal, the output is text and the
    /// configuration allows it; else plain lines.
    fn new(client: &Client, ui: UiSettings) -> Self {
        use std::io::IsTerminal as _;
        if client.printer.json() || !ui.enabled || !std::io::stdout().is_terminal() {
            return Self::Plain;
        }
        Self::Live {
            view: LiveView::new(client.printer.color()),
            screen: Screen::new(ui.interval.max(std::time::Duration::from_millis(50))),
            info_at: None,
            info_stale: false,
        }
    }

    fn is_live(&self) -> bool {
        matches!(self, Self::Live { .. })
    }

    /// How often the live view redraws (for the others: rarely, unused).
    fn interval(&self) -> std::time::Duration {
        match self {
            Self::Live { screen, .. } => screen.interval(),
            _ => std::time::Duration::from_secs(3600),
        }
    }

    /// Sets a row from an execution read from the server.
    fn seed(&mut self, execution: &WorkflowExecution) {
        if let Self::Live { view, .. } = self {
            view.seed(execution);
        }
    }

    /// Shows one event.
    fn event(&mut self, client: &Client, event: &Event) -> Result<(), CliError> {
        match self {
            Self::Nothing => {}
            Self::Plain => print_event(client, event)?,
            Self::Live { view, screen, .. } => {
                view.apply(event);
                screen
                    .draw(view, false)
                    .context("cannot draw on the terminal")?;
            }
        }
        Ok(())
    }

    /// Redraws the live view (`force`: even before the interval passed).
    fn redraw(&mut self, force: bool) -> Result<(), CliError> {
        if let Self::Live { view, screen, .. } = self {
            screen
                .draw(view, force)
                .context("cannot draw on the terminal")?;
        }
        Ok(())
    }

    /// Keeps the footer's load current after `event`: a backend that went up
    /// or down reads GetRuntimeInfo now; an execution queued, started or
    /// ended marks it stale, read again on the next tick
    /// ([`Show::refresh_info_if_due`]): at most once per redraw interval, and
    /// after the runtime had time to publish the load that event changed.
    async fn after_event(&mut self, client: &Client, event: &Event) {
        let Self::Live { info_stale, .. } = self else {
            return;
        };
        match &event.payload {
            Some(event::Payload::RuntimeEvent(r)) if r.event_type.starts_with("backend.") => {
                self.refresh_info(client).await;
            }
            Some(event::Payload::TaskEvent(task_event)) if !event.node => {
                if matches!(
                    TaskEventType::try_from(task_event.event_type),
                    Ok(TaskEventType::Queued
                        | TaskEventType::Started
                        | TaskEventType::Completed
                        | TaskEventType::Failed
                        | TaskEventType::Cancelled)
                ) {
                    *info_stale = true;
                }
            }
            _ => {}
        }
    }

    /// Reads GetRuntimeInfo again when the load is stale and the last read
    /// is at least one redraw interval old.
    async fn refresh_info_if_due(&mut self, client: &Client) {
        if let Self::Live {
            screen,
            info_at,
            info_stale: true,
            ..
        } = self
            && info_at.is_none_or(|at| at.elapsed() >= screen.interval())
        {
            self.refresh_info(client).await;
        }
    }

    /// Reads the backends and the load for the footer (GetRuntimeInfo); a
    /// server that refuses (an admin-only API key) leaves the footer
    /// counting the executions it follows.
    async fn refresh_info(&mut self, client: &Client) {
        if let Self::Live {
            view,
            info_at,
            info_stale,
            ..
        } = self
        {
            *info_at = Some(tokio::time::Instant::now());
            *info_stale = false;
            if let Ok(info) = client
                .admin()
                .get_runtime_info(GetRuntimeInfoRequest {})
                .await
            {
                view.set_runtime_info(&info.into_inner());
            }
        }
    }
}

/// Follows `ids` on the event stream (after `after`, default now) until
/// every one of them ended, showing each event as `show` says.
/// Returns the ended executions in the order of `ids`, or `None` on Ctrl-C.
async fn follow_to_end(
    client: &Client,
    ids: Vec<String>,
    after: Option<u64>,
    show: &mut Show,
) -> Result<Option<Vec<WorkflowExecution>>, CliError> {
    let request = SubscribeEventsRequest {
        after_sequence: after,
        execution_ids: ids.clone(),
        include_node_events: true,
        ..SubscribeEventsRequest::default()
    };
    // Subscribe first, then read the executions: an end that happens in
    // between is then both in the state read and on the stream.
    let mut follower = Follower::start(client, request).await?;
    let mut ended: BTreeMap<String, WorkflowExecution> = BTreeMap::new();
    let mut pending: HashSet<String> = HashSet::new();
    for id in &ids {
        let execution = get_execution(client, id).await?;
        show.seed(&execution);
        // With a replay (`after`, read before the submit) an execution that has already ended
        // still has every event on the stream, its end last: followed to it, so that a job
        // faster than this read is shown like any other. Without one, it is done.
        if is_terminal(execution.status) && after.is_none() {
            ended.insert(id.clone(), execution);
        } else {
            pending.insert(id.clone());
        }
    }
    show.refresh_info(client).await;
    show.redraw(true)?;
    let mut tick = tokio::time::interval(show.interval());
    while !pending.is_empty() {
        let event = tokio::select! {
            event = follower.next() => event?,
            _ = tick.tick(), if show.is_live() => {
                show.refresh_info_if_due(client).await;
                show.redraw(false)?;
                continue;
            }
            _ = tokio::signal::ctrl_c() => {
                show.redraw(true)?;
                return Ok(None);
            }
        };
        show.event(client, &event)?;
        show.after_event(client, &event).await;
        let Some(id) = event
            .execution_id
            .as_ref()
            .filter(|id| pending.contains(*id))
        else {
            continue;
        };
        if event.node || !ends_a_task(&event) {
            continue;
        }
        let execution = get_execution(client, id).await?;
        if is_terminal(execution.status) {
            show.seed(&execution);
            pending.remove(id);
            ended.insert(id.clone(), execution);
        }
    }
    show.redraw(true)?;
    Ok(Some(ids.iter().filter_map(|id| ended.remove(id)).collect()))
}

/// Whether `event` is a task event that ends its task.
fn ends_a_task(event: &crate::pb::Event) -> bool {
    let Some(event::Payload::TaskEvent(task_event)) = &event.payload else {
        return false;
    };
    matches!(
        TaskEventType::try_from(task_event.event_type),
        Ok(TaskEventType::Completed | TaskEventType::Failed | TaskEventType::Cancelled)
    )
}

/// Prints how each execution ended (unless the live view's summaries
/// already said it: `shown`); exit 1 unless all completed.
fn print_endings(
    client: &Client,
    ended: &[WorkflowExecution],
    shown: bool,
) -> Result<ExitCode, CliError> {
    let mut all_completed = true;
    for execution in ended {
        all_completed &= execution.status == TaskStatus::Completed as i32;
        if shown {
            continue;
        }
        if client.printer.json() {
            client.printer.print_json(names::EXECUTION, execution)?;
            continue;
        }
        let mut line = format!(
            "execution {} {}",
            execution.id,
            client.printer.status(status_name(execution.status))
        );
        if let Some(seconds) = execution.total_duration_seconds {
            line.push_str(&format!(" in {seconds:.2}s"));
        }
        if let Some(error) = &execution.error {
            line.push_str(&format!(": {error}"));
        }
        client.printer.line(&line);
        for artifact in &execution.artifacts {
            client.printer.line(&format!("  artifact {artifact}"));
        }
    }
    Ok(if all_completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Runs `get`.
pub async fn get(client: &Client, args: GetArgs) -> Result<ExitCode, CliError> {
    let execution = get_execution(client, &args.id).await?;
    if client.printer.json() {
        client.printer.print_json(names::EXECUTION, &execution)?;
    } else {
        print_details(client, &execution);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one execution.
pub async fn get_execution(client: &Client, id: &str) -> Result<WorkflowExecution, CliError> {
    let execution = client
        .executions()
        .get_execution(GetExecutionRequest { id: id.to_owned() })
        .await
        .map_err(|s| client.error(s))?
        .into_inner()
        .execution
        .context("the server returned no execution")?;
    Ok(execution)
}

/// Runs `list`.
pub async fn list(client: &Client, args: ListArgs) -> Result<ExitCode, CliError> {
    let mut request = ListExecutionsRequest {
        statuses: args.statuses.into_iter().map(i32::from).collect(),
        workflow_id: args.workflow,
        tags: args.tags,
        page_size: args.page_size.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
    };
    if !client.printer.json() {
        client.printer.line(&format!(
            "{:<36}  {:<9}  {:<8}  {:>5}  {:<19}  NAME",
            "ID", "STATUS", "PRIORITY", "DONE", "CREATED"
        ));
    }
    loop {
        let page = client
            .executions()
            .list_executions(request.clone())
            .await
            .map_err(|s| client.error(s))?
            .into_inner();
        for execution in &page.executions {
            if client.printer.json() {
                client.printer.print_json(names::EXECUTION, execution)?;
            } else {
                client.printer.line(&row(client, execution));
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        if !args.all {
            eprintln!("more: --page-token {}", page.next_page_token);
            break;
        }
        request.page_token = page.next_page_token;
    }
    Ok(ExitCode::SUCCESS)
}

fn row(client: &Client, execution: &WorkflowExecution) -> String {
    let status = status_name(execution.status);
    // Pad before colouring: escape codes have no width.
    let padded = format!("{status:<9}");
    let coloured = client.printer.status(status) + &padded[status.len()..];
    format!(
        "{:<36}  {coloured}  {:<8}  {:>4}%  {:<19}  {}",
        execution.id,
        priority_name(execution.priority),
        (execution.progress * 100.0).round(),
        timestamp(execution.created_at.as_ref()),
        root_name(execution)
    )
}

/// Runs `cancel`.
pub async fn cancel(client: &Client, args: CancelArgs) -> Result<ExitCode, CliError> {
    let execution = client
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: args.id,
            reason: args.reason,
        })
        .await
        .map_err(|s| client.error(s))?
        .into_inner()
        .execution
        .context("the server returned no execution")?;
    print_execution_line(client, &execution)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `retry`.
pub async fn retry(client: &Client, args: RetryArgs) -> Result<ExitCode, CliError> {
    let task = client
        .tasks()
        .retry_task(RetryTaskRequest { id: args.task_id })
        .await
        .map_err(|s| client.error(s))?
        .into_inner()
        .task
        .context("the server returned no task")?;
    if client.printer.json() {
        client.printer.print_json(names::TASK, &task)?;
    } else {
        client.printer.line(&format!(
            "task {} {} (retry {} of {})",
            task.id,
            client.printer.status(status_name(task.status)),
            task.retry_count,
            task.max_retries
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `execution ID STATUS`, or the execution as JSON.
fn print_execution_line(client: &Client, execution: &WorkflowExecution) -> Result<(), CliError> {
    if client.printer.json() {
        client.printer.print_json(names::EXECUTION, execution)?;
    } else {
        client.printer.line(&format!(
            "execution {} {}",
            execution.id,
            client.printer.status(status_name(execution.status))
        ));
    }
    Ok(())
}

fn print_details(client: &Client, e: &WorkflowExecution) {
    let p = &client.printer;
    p.line(&format!("id:        {}", e.id));
    p.line(&format!("name:      {}", root_name(e)));
    p.line(&format!("status:    {}", p.status(status_name(e.status))));
    p.line(&format!("priority:  {}", priority_name(e.priority)));
    p.line(&format!(
        "progress:  {}% ({} nodes done, {} failed)",
        (e.progress * 100.0).round(),
        e.completed_tasks,
        e.failed_tasks
    ));
    if !e.workflow_id.is_empty() {
        let version = e.workflow_version.as_deref().unwrap_or("-");
        p.line(&format!("workflow:  {} {version}", e.workflow_id));
    }
    if let Some(position) = e.queue_position {
        p.line(&format!("queued at: {position}"));
    }
    if let Some(backend) = &e.backend {
        p.line(&format!("backend:   {backend}"));
    }
    if !e.tags.is_empty() {
        p.line(&format!("tags:      {}", e.tags.join(", ")));
    }
    p.line(&format!("created:   {}", timestamp(e.created_at.as_ref())));
    if let Some(seconds) = e.total_duration_seconds {
        p.line(&format!("duration:  {seconds:.2}s"));
    }
    if let Some(error) = &e.error {
        let kind = e.error_type.as_deref().unwrap_or("error");
        p.line(&format!("error:     {kind}: {error}"));
    }
    if !e.artifacts.is_empty() {
        p.line("artifacts:");
        for artifact in &e.artifacts {
            p.line(&format!("  {artifact}"));
        }
    }
    if !e.tasks.is_empty() {
        p.line("tasks:");
        for task in &e.tasks {
            p.line(&format!("  {}", task_line(p, task)));
        }
    }
}

fn task_line(p: &super::client::Printer, task: &Task) -> String {
    format!(
        "{} {:<9} {:>4}% {}",
        task.id,
        p.status(status_name(task.status)),
        (task.progress * 100.0).round(),
        task.name
    )
}

/// The execution's name: its root task's.
fn root_name(execution: &WorkflowExecution) -> &str {
    execution
        .root_task_id
        .as_ref()
        .and_then(|root| execution.tasks.iter().find(|t| &t.id == root))
        .map_or("", |t| t.name.as_str())
}

/// Whether a status is final.
fn is_terminal(status: i32) -> bool {
    matches!(
        TaskStatus::try_from(status),
        Ok(TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled)
    )
}

/// `RUNNING` for TASK_STATUS_RUNNING.
pub fn status_name(status: i32) -> &'static str {
    TaskStatus::try_from(status)
        .map(|s| short_name(s.as_str_name(), "TASK_STATUS_"))
        .unwrap_or("UNKNOWN")
}

fn priority_name(priority: i32) -> &'static str {
    TaskPriority::try_from(priority)
        .map(|p| short_name(p.as_str_name(), "TASK_PRIORITY_"))
        .unwrap_or("UNKNOWN")
}

fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_owned())
}
