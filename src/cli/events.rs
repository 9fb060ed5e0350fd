//! `comfy-reality events`: prints the retained events (ListEvents, every
//! page) or follows them (SubscribeEvents). Also owns [`Follower`], the
//! resumable subscription `watch` and `submit --watch` use: on a dropped
//! stream it reconnects, with backoff while the server is unreachable, and
//! resumes after the last sequence seen (an event's or a heartbeat's), so
//! nothing is missed and nothing is printed twice.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use super::client::{CliError, Client, names, parse_enum, short_name};
use crate::pb::{
    Event, EventCategory, ListEventsRequest, LogLevel, SubscribeEventsRequest, TaskEventType,
    event, subscribe_events_response,
};

/// First wait before reconnecting; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Flags of `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep streaming new events (SubscribeEvents) until Ctrl-C; without it,
    /// print what is retained and exit.
    #[arg(long, short)]
    pub follow: bool,
    /// Start after this sequence number (with --follow: default now;
    /// without: the oldest retained).
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// Only events about this execution (repeatable).
    #[arg(long = "execution", value_name = "ID")]
    pub executions: Vec<String>,
    /// Only events about this task (repeatable).
    #[arg(long = "task", value_name = "ID")]
    pub tasks: Vec<String>,
    /// Only events about this workflow (repeatable).
    #[arg(long = "workflow", value_name = "ID")]
    pub workflows: Vec<String>,
    /// Only events whose task has this tag (repeatable: all of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only task events of this type: created, queued, started, progress,
    /// completed, failed, cancelled, retrying (repeatable).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_event_type)]
    pub types: Vec<TaskEventType>,
    /// Only events of this category: task, workflow, system, performance,
    /// error, audit (repeatable).
    #[arg(long = "category", value_name = "CATEGORY", value_parser = parse_category)]
    pub categories: Vec<EventCategory>,
    /// Only events at least this severe: debug, info, warning, error, critical.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    pub min_level: Option<LogLevel>,
    /// Include the events of single nodes of executions.
    #[arg(long)]
    pub node_events: bool,
}

fn parse_event_type(value: &str) -> Result<TaskEventType, String> {
    parse_enum(
        value,
        "TASK_EVENT_TYPE_",
        TaskEventType::from_str_name,
        "created, queued, started, progress, completed, failed, cancelled, retrying",
    )
}

fn parse_category(value: &str) -> Result<EventCategory, String> {
    parse_enum(
        value,
        "EVENT_CATEGORY_",
        EventCategory::from_str_name,
        "task, workflow, system, performance, error, audit",
    )
}

fn parse_level(value: &str) -> Result<LogLevel, String> {
    parse_enum(
        value,
        "LOG_LEVEL_",
        LogLevel::from_str_name,
        "debug, info, warning, error, critical",
    )
}

/// Runs `events`.
pub async fn run(client: &Client, args: EventsArgs) -> Result<ExitCode, CliError> {
    if args.follow {
        let request = SubscribeEventsRequest {
            after_sequence: args.after,
            task_ids: args.tasks,
            execution_ids: args.executions,
            workflow_ids: args.workflows,
            tags: args.tags,
            event_types: args.types.into_iter().map(i32::from).collect(),
            categories: args.categories.into_iter().map(i32::from).collect(),
            min_level: args.min_level.map(i32::from),
            include_node_events: args.node_events,
        };
        let mut follower = Follower::start(client, request).await?;
        loop {
            tokio::select! {
                event = follower.next() => print_event(client, &event?)?,
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    }
    let mut request = ListEventsRequest {
        after_sequence: args.after.unwrap_or(0),
        page_size: 1000,
        page_token: String::new(),
        task_ids: args.tasks,
        execution_ids: args.executions,
        workflow_ids: args.workflows,
        tags: args.tags,
        event_types: args.types.into_iter().map(i32::from).collect(),
        categories: args.categories.into_iter().map(i32::from).collect(),
        min_level: args.min_level.map(i32::from),
        include_node_events: args.node_events,
    };
    loop {
        let page = client
            .events()
            .list_events(request.clone())
            .await
            .map_err(|s| client.error(s))?
            .into_inner();
        for event in &page.events {
            print_event(client, event)?;
        }
        if page.next_page_token.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        request.page_token = page.next_page_token;
    }
}

/// Prints one event: a JSON line, or a text line.
pub fn print_event(client: &Client, event: &Event) -> Result<(), CliError> {
    if client.printer.json() {
        client.printer.print_json(names::EVENT, event)?;
    } else {
        client.printer.line(&event_line(event));
    }
    Ok(())
}

/// One event as a line of text: `#SEQ TIME WHAT [ids] message`.
pub fn event_line(event: &Event) -> String {
    let time = event
        .timestamp
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "--:--:--".to_owned());
    let mut line = format!("#{} {time}", event.sequence);
    match &event.payload {
        Some(event::Payload::TaskEvent(task_event)) => {
            let kind = TaskEventType::try_from(task_event.event_type)
                .map(|t| short_name(t.as_str_name(), "TASK_EVENT_TYPE_"))
                .unwrap_or("UNKNOWN");
            line.push_str(&format!(
                " {} {kind}",
                if event.node { "node" } else { "task" }
            ));
            if let Some(message) = task_event.message.as_deref().filter(|m| !m.is_empty()) {
                line.push_str(&format!(" {message:?}"));
            }
        }
        Some(event::Payload::RuntimeEvent(runtime_event)) => {
            let level = LogLevel::try_from(runtime_event.level)
                .map(|l| short_name(l.as_str_name(), "LOG_LEVEL_"))
                .unwrap_or("UNKNOWN");
            line.push_str(&format!(
                " {level} {} {:?}",
                runtime_event.event_type, runtime_event.message
            ));
        }
        Some(event::Payload::Metric(metric)) => {
            line.push_str(&format!(
                " metric {}={} {}",
                metric.name, metric.value, metric.unit
            ));
        }
        None => line.push_str(" (empty)"),
    }
    if let Some(id) = &event.execution_id {
        line.push_str(&format!(" execution={id}"));
    }
    if let Some(id) = &event.task_id {
        line.push_str(&format!(" task={id}"));
    }
    line
}

/// A SubscribeEvents stream that survives dropped connections.
pub struct Follower<'a> {
    /// Where the calls go.
    client: &'a Client,
    /// The filter; `after_sequence` advances with every event and heartbeat.
    request: SubscribeEventsRequest,
    /// The open stream, if any.
    stream: Option<tonic::Streaming<crate::pb::SubscribeEventsResponse>>,
}

impl<'a> Follower<'a> {
    /// Opens the subscription. Without `after_sequence` it starts at the
    /// newest event published now, so a reconnection before the first event
    /// still knows where to resume.
    pub async fn start(
        client: &'a Client,
        mut request: SubscribeEventsRequest,
    ) -> Result<Follower<'a>, CliError> {
        if request.after_sequence.is_none() {
            request.after_sequence = Some(last_sequence(client).await?);
        }
        let stream = client
            .events()
            .subscribe_events(request.clone())
            .await
            .map_err(|s| client.error(s))?
            .into_inner();
        Ok(Self {
            client,
            request,
            stream: Some(stream),
        })
    }

    /// The next matching event, reconnecting as often as needed.
    pub async fn next(&mut self) -> Result<Event, CliError> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match self
                    .client
                    .events()
                    .subscribe_events(self.request.clone())
                    .await
                {
                    Ok(response) => {
                        eprintln!(
                            "reconnected to {}, resuming after #{}",
                            self.client.server(),
                            self.resume_point()
                        );
                        self.stream = Some(response.into_inner());
                        backoff = FIRST_BACKOFF;
                    }
                    Err(status) if resumable(&status) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Err(status) => return Err(self.client.error(status)),
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(response)) => match response.item {
                    Some(subscribe_events_response::Item::Event(event)) => {
                        self.request.after_sequence = Some(event.sequence);
                        return Ok(event);
                    }
                    Some(subscribe_events_response::Item::Heartbeat(heartbeat))
                        if heartbeat.last_sequence > self.resume_point() =>
                    {
                        self.request.after_sequence = Some(heartbeat.last_sequence);
                    }
                    Some(subscribe_events_response::Item::Heartbeat(_)) => {}
                    None => {}
                },
                Ok(None) => {
                    eprintln!(
                        "the event stream from {} ended; resuming after #{}",
                        self.client.server(),
                        self.resume_point()
                    );
                    self.stream = None;
                }
                Err(status) if resumable(&status) => {
                    if status.code() == Code::ResourceExhausted {
                        // Fell behind the retained history: resume where the
                        // server says, the events in between are gone.
                        if let Some(last) = resume_metadata(&status) {
                            eprintln!(
                                "warning: fell behind the retained events; skipping to #{last}"
                            );
                            self.request.after_sequence = Some(last);
                        }
                    }
                    eprintln!(
                        "the event stream from {} dropped ({}); resuming after #{}",
                        self.client.server(),
                        status.message(),
                        self.resume_point()
                    );
                    self.stream = None;
                }
                Err(status) => return Err(self.client.error(status)),
            }
        }
    }

    fn resume_point(&self) -> u64 {
        self.request.after_sequence.unwrap_or(0)
    }
}

/// Whether a failed stream may be opened again: the server went away or
/// is shutting down, the transport broke, or the subscriber fell behind.
fn resumable(status: &Status) -> bool {
    super::client::is_transport_failure(status)
        || matches!(
            status.code(),
            Code::Unavailable | Code::ResourceExhausted | Code::Cancelled
        )
}

/// The `last_sequence` of a status's ErrorInfo.
fn resume_metadata(status: &Status) -> Option<u64> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get("last_sequence")?.parse().ok())
}

/// The newest sequence the server published.
pub async fn last_sequence(client: &Client) -> Result<u64, CliError> {
    let request = ListEventsRequest {
        page_size: 1,
        ..ListEventsRequest::default()
    };
    match client.events().list_events(request).await {
        Ok(page) => Ok(page.into_inner().last_sequence),
        Err(status) if status.code() == Code::OutOfRange => {
            // The oldest events are gone; ask from the oldest retained one.
            let oldest = status
                .get_details_error_info()
                .and_then(|info| info.metadata.get("oldest_sequence")?.parse::<u64>().ok())
                .unwrap_or(1);
            let request = ListEventsRequest {
                page_size: 1,
                after_sequence: oldest.saturating_sub(1),
                ..ListEventsRequest::default()
            };
            client
                .events()
                .list_events(request)
                .await
                .map(|page| page.into_inner().last_sequence)
                .map_err(|s| client.error(s))
        }
        Err(status) => Err(client.error(status)),
    }
}
