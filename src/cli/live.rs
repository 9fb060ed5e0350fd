//! The live view of `watch` and `submit --watch` on a terminal: one row per
//! active execution (status, progress bar, current node, nodes done, queue
//! position, elapsed time, ETA, retries), finished executions collapsed into
//! one summary line each, and a footer with the queue per priority and the
//! backends (as GetRuntimeInfo counts them; from the followed executions
//! when the server does not say). [`LiveView`] is the model: built from events (and the
//! executions read once to seed it), rendered into plain lines at a given
//! width and time, so that it is tested without a terminal. [`Screen`] is
//! the terminal side: it redraws the frame in place with crossterm.
//!
//! It must not call the server: the caller feeds it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use anstyle::{AnsiColor, Style};
use serde_json::Value;

use super::executions::status_name;
use crate::pb::{
    BackendInfo, BackendState, Event, GetRuntimeInfoResponse, TaskEventType, TaskPriority,
    TaskStatus, WorkflowExecution, event,
};

/// Width of the progress bar, in cells.
const BAR_WIDTH: usize = 20;

/// The `[runtime]` settings of the live view.
#[derive(Debug, Clone, Copy)]
pub struct UiSettings {
    /// `runtime.enable_ui`: false prints one plain line per event instead.
    pub enabled: bool,
    /// `runtime.ui_update_interval_seconds`: the least time between frames.
    pub interval: Duration,
}

impl Default for UiSettings {
    fn default() -> Self {
        let runtime = crate::config::RuntimeConfig::default();
        Self {
            enabled: runtime.enable_ui,
            interval: runtime.ui_update_interval(),
        }
    }
}

/// The state of the view, built from events.
#[derive(Debug, Default)]
pub struct LiveView {
    /// The executions, by id.
    rows: BTreeMap<String, Row>,
    /// Ids in the order they were first seen.
    order: Vec<String>,
    /// The backends by name: whether each is up (`None`: unknown).
    backends: BTreeMap<String, Option<bool>>,
    /// The server's load as GetRuntimeInfo last told it; `None` from a
    /// server that does not report it (the footer then counts the rows).
    load: Option<ServerLoad>,
    /// Whether statuses are coloured.
    color: bool,
}

/// The queue and the busy backends as the server counts them.
#[derive(Debug, Default, Clone)]
struct ServerLoad {
    /// Executions waiting per priority.
    queued: BTreeMap<i32, u32>,
    /// Executions handed to each backend, by name.
    running: BTreeMap<String, u32>,
}

/// One execution.
#[derive(Debug, Default, Clone)]
struct Row {
    /// Execution id.
    id: String,
    /// Its root task's name (empty until known).
    name: String,
    /// Current status.
    status: TaskStatus,
    /// Its priority (for the queue footer).
    priority: TaskPriority,
    /// The root task's progress within [0, 1].
    progress: f64,
    /// The root task's id, once known.
    root_task_id: Option<String>,
    /// Its node tasks, by task id.
    nodes: BTreeMap<String, Node>,
    /// The node task that ran last.
    current: Option<String>,
    /// How many queued executions go before it, while queued.
    queue_position: Option<u32>,
    /// When it was created.
    created_at: Option<SystemTime>,
    /// When it (last) started running.
    started_at: Option<SystemTime>,
    /// When it ended.
    ended_at: Option<SystemTime>,
    /// Wall-clock duration reported by the server once finished.
    duration_seconds: Option<f64>,
    /// Retries so far.
    retries: u32,
    /// Why it failed, or the cancel's reason.
    error: Option<String>,
    /// Produced files, once read after its end.
    artifacts: Vec<String>,
    /// Whether the execution was read after it ended: its summary is final.
    settled: bool,
}

/// One node task of an execution.
#[derive(Debug, Default, Clone)]
struct Node {
    /// The ComfyUI node id.
    node_id: Option<String>,
    /// The node's class.
    class_type: Option<String>,
    /// Its status.
    status: TaskStatus,
    /// The current step and the number of steps, when the node reports them.
    steps: Option<(f64, f64)>,
}

impl LiveView {
    /// An empty view; `color` colours the statuses.
    pub fn new(color: bool) -> Self {
        Self {
            color,
            ..Self::default()
        }
    }

    /// Whether the view has a row for execution `id`.
    pub fn tracks(&self, id: &str) -> bool {
        self.rows.contains_key(id)
    }

    /// Sets the backends and the server's load from GetRuntimeInfo. A server
    /// that sends no queue depths reports no load: the footer then counts
    /// the executions the view follows.
    pub fn set_runtime_info(&mut self, info: &GetRuntimeInfoResponse) {
        self.set_backends(&info.backends);
        self.load = (!info.queue.is_empty()).then(|| ServerLoad {
            queued: info.queue.iter().map(|q| (q.priority, q.queued)).collect(),
            running: info
                .backends
                .iter()
                .map(|b| (b.name.clone(), b.running))
                .collect(),
        });
    }

    /// Sets the backends (from GetRuntimeInfo).
    pub fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.backends = backends
            .iter()
            .map(|b| {
                let up = match BackendState::try_from(b.state) {
                    Ok(BackendState::Up) => Some(true),
                    Ok(BackendState::Down) => Some(false),
                    _ => None,
                };
                (b.name.clone(), up)
            })
            .collect();
    }

    /// Sets a row from an execution read from the server: at the start, for
    /// an execution first seen on the stream, and after it ended (then its
    /// summary is final).
    pub fn seed(&mut self, execution: &WorkflowExecution) {
        let row = self.row(&execution.id);
        row.status = TaskStatus::try_from(execution.status).unwrap_or_default();
        row.priority = TaskPriority::try_from(execution.priority).unwrap_or_default();
        row.progress = row.progress.max(execution.progress);
        row.root_task_id = execution.root_task_id.clone();
        row.queue_position = execution.queue_position;
        row.created_at = execution.created_at.and_then(system_time);
        row.duration_seconds = execution.total_duration_seconds.or(row.duration_seconds);
        row.error = execution.error.clone().or(row.error.take());
        row.artifacts = execution.artifacts.clone();
        for task in &execution.tasks {
            if Some(&task.id) == execution.root_task_id.as_ref() {
                row.name = task.name.clone();
                row.retries = row.retries.max(task.retry_count);
                if row.started_at.is_none() && row.status != TaskStatus::Queued {
                    row.started_at = task
                        .metrics
                        .as_ref()
                        .and_then(|m| m.start_time)
                        .and_then(system_time);
                }
                continue;
            }
            let metadata: serde_json::Map<String, Value> =
                serde_json::from_str(&task.metadata).unwrap_or_default();
            let node = row.nodes.entry(task.id.clone()).or_default();
            node.status = TaskStatus::try_from(task.status).unwrap_or_default();
            node.node_id = metadata.get("node_id").map(text).or(node.node_id.take());
            node.class_type = metadata
                .get("class_type")
                .map(text)
                .or(node.class_type.take());
            if node.status == TaskStatus::Running {
                row.current = Some(task.id.clone());
            }
        }
        row.settled = is_terminal(row.status);
    }

    /// Applies one event from the stream.
    pub fn apply(&mut self, event: &Event) {
        let at = event.timestamp.and_then(system_time);
        let Some(id) = event.execution_id.clone() else {
            if let Some(event::Payload::RuntimeEvent(runtime)) = &event.payload {
                let up = match runtime.event_type.as_str() {
                    "backend.up" => true,
                    "backend.down" => false,
                    _ => return,
                };
                if let Some(name) = data(&runtime.data).get("backend") {
                    self.backends.insert(text(name), Some(up));
                }
            }
            return;
        };
        match &event.payload {
            Some(event::Payload::TaskEvent(task_event)) => {
                let kind = TaskEventType::try_from(task_event.event_type).unwrap_or_default();
                let data = data(&task_event.data);
                if event.node {
                    self.apply_node(&id, &task_event.task_id, kind, &data);
                } else {
                    let message = task_event.message.clone();
                    self.apply_root(&id, &task_event.task_id, kind, &data, message, at);
                }
            }
            Some(event::Payload::RuntimeEvent(runtime)) => {
                let data = data(&runtime.data);
                let row = self.row(&id);
                if runtime.event_type == "execution.retrying" {
                    let retry = data.get("retry").and_then(Value::as_u64).unwrap_or(0);
                    row.retries = row.retries.max(u32::try_from(retry).unwrap_or(u32::MAX));
                } else if let Some(seconds) = data.get("duration_seconds").and_then(Value::as_f64) {
                    row.duration_seconds = Some(seconds);
                }
            }
            Some(event::Payload::Metric(_)) | None => {}
        }
    }

    fn apply_root(
        &mut self,
        id: &str,
        task_id: &str,
        kind: TaskEventType,
        data: &serde_json::Map<String, Value>,
        message: Option<String>,
        at: Option<SystemTime>,
    ) {
        let queued_before = self.rows.get(id).and_then(|r| r.queue_position);
        let row = self.row(id);
        row.root_task_id.get_or_insert_with(|| task_id.to_owned());
        match kind {
            TaskEventType::Created => {
                row.status = TaskStatus::Pending;
                row.created_at = row.created_at.or(at);
            }
            TaskEventType::Queued => {
                row.status = TaskStatus::Queued;
                if row.queue_position.is_none() {
                    let ahead = self
                        .rows
                        .values()
                        .filter(|r| r.id != id && r.status == TaskStatus::Queued)
                        .count();
                    self.row(id).queue_position = Some(u32::try_from(ahead).unwrap_or(u32::MAX));
                }
            }
            TaskEventType::Started => {
                row.status = TaskStatus::Running;
                row.started_at = at.or(row.started_at);
                row.queue_position = None;
                // It left the queue: whoever waited behind it moves up.
                if let Some(left) = queued_before {
                    for other in self.rows.values_mut() {
                        if let Some(position) = other.queue_position.as_mut()
                            && *position > left
                        {
                            *position -= 1;
                        }
                    }
                }
            }
            TaskEventType::Progress => {
                if let Some(progress) = data.get("progress").and_then(Value::as_f64) {
                    row.progress = progress;
                }
            }
            TaskEventType::Retrying => {
                row.status = TaskStatus::Retrying;
                row.error = message.or(row.error.take());
                row.nodes.clear();
                row.current = None;
            }
            TaskEventType::Completed | TaskEventType::Failed | TaskEventType::Cancelled => {
                row.status = match kind {
                    TaskEventType::Completed => TaskStatus::Completed,
                    TaskEventType::Failed => TaskStatus::Failed,
                    _ => TaskStatus::Cancelled,
                };
                if kind == TaskEventType::Completed {
                    row.progress = 1.0;
                } else {
                    row.error = message.or(row.error.take());
                }
                row.ended_at = at;
                row.queue_position = None;
            }
            TaskEventType::Unspecified => {}
        }
    }

    fn apply_node(
        &mut self,
        id: &str,
        task_id: &str,
        kind: TaskEventType,
        data: &serde_json::Map<String, Value>,
    ) {
        let row = self.row(id);
        let node = row.nodes.entry(task_id.to_owned()).or_default();
        if let Some(value) = data.get("node_id") {
            node.node_id = Some(text(value));
        }
        if let Some(value) = data.get("class_type") {
            node.class_type = Some(text(value));
        }
        match kind {
            TaskEventType::Created => node.status = TaskStatus::Pending,
            TaskEventType::Queued => node.status = TaskStatus::Queued,
            TaskEventType::Started | TaskEventType::Progress => {
                node.status = TaskStatus::Running;
                let value = data.get("value").and_then(Value::as_f64);
                let max = data.get("max").and_then(Value::as_f64);
                if let (Some(value), Some(max)) = (value, max) {
                    node.steps = Some((value, max));
                }
                row.current = Some(task_id.to_owned());
            }
            TaskEventType::Completed => node.status = TaskStatus::Completed,
            TaskEventType::Failed => node.status = TaskStatus::Failed,
            TaskEventType::Cancelled => node.status = TaskStatus::Cancelled,
            TaskEventType::Retrying => node.status = TaskStatus::Retrying,
            TaskEventType::Unspecified => {}
        }
    }

    fn row(&mut self, id: &str) -> &mut Row {
        if !self.rows.contains_key(id) {
            self.order.push(id.to_owned());
        }
        self.rows.entry(id.to_owned()).or_insert_with(|| Row {
            id: id.to_owned(),
            ..Row::default()
        })
    }

    /// The summary lines of the executions that ended and were read again
    /// since, in the order they were first seen; their rows leave the view.
    /// Not cut to any width: they stay on the screen.
    pub fn drain_settled(&mut self) -> Vec<String> {
        let settled: Vec<String> = self
            .order
            .iter()
            .filter(|id| self.rows[*id].settled)
            .cloned()
            .collect();
        let mut lines = Vec::new();
        for id in settled {
            if let Some(row) = self.rows.remove(&id) {
                lines.push(self.summary(&row).render(self.color, usize::MAX));
            }
            self.order.retain(|o| o != &id);
        }
        lines
    }

    /// The frame at `width` columns and time `now`: the finished executions'
    /// summary lines, two lines per active one, then the footer.
    pub fn render(&self, width: usize, now: SystemTime) -> Vec<String> {
        let mut lines = Vec::new();
        for row in self.order.iter().map(|id| &self.rows[id]) {
            if is_terminal(row.status) {
                lines.push(self.summary(row).render(self.color, width));
            }
        }
        for row in self.order.iter().map(|id| &self.rows[id]) {
            if !is_terminal(row.status) {
                for line in self.active(row, now) {
                    lines.push(line.render(self.color, width));
                }
            }
        }
        lines.push(self.footer().render(self.color, width));
        lines
    }

    fn active(&self, row: &Row, now: SystemTime) -> [Line; 2] {
        let done = row.nodes.values().filter(|n| is_terminal(n.status)).count();
        let total = row.nodes.len();
        let mut progress = row.progress;
        if total > 0 {
            let steps = row
                .current
                .as_ref()
                .and_then(|c| row.nodes.get(c))
                .filter(|n| n.status == TaskStatus::Running)
                .and_then(|n| n.steps)
                .map_or(
                    0.0,
                    |(value, max)| if max > 0.0 { value / max } else { 0.0 },
                );
            progress = progress.max((done as f64 + steps) / total as f64);
        }
        let progress = progress.clamp(0.0, 1.0);
        let mut first = Line::default();
        first.status(row.status);
        first.text(&format!(" {} {} ", display_name(row), short_id(&row.id)));
        first.text(&format!(
            "{} {:>3}%",
            bar(progress),
            (progress * 100.0).floor()
        ));
        if total > 0 {
            first.text(&format!("  nodes {done}/{total}"));
        }
        let elapsed = row
            .started_at
            .and_then(|s| now.duration_since(s).ok())
            .filter(|_| row.status != TaskStatus::Queued);
        if let Some(elapsed) = elapsed {
            first.text(&format!("  {}", clock(elapsed)));
            if progress > 0.0 && progress < 1.0 {
                let eta = elapsed.as_secs_f64() * (1.0 - progress) / progress;
                first.text(&format!(" eta {}", clock(Duration::from_secs_f64(eta))));
            }
        } else if let Some(waited) = row.created_at.and_then(|c| now.duration_since(c).ok()) {
            first.text(&format!("  waiting {}", clock(waited)));
        }
        if row.retries > 0 {
            first.text(&format!("  retries {}", row.retries));
        }
        let mut second = Line::default();
        second.text("    ");
        match row.status {
            TaskStatus::Queued => match row.queue_position {
                Some(0) => second.text("queued, next"),
                Some(ahead) => second.text(&format!("queued, {ahead} ahead")),
                None => second.text("queued"),
            },
            TaskStatus::Pending => second.text("waiting to be queued"),
            TaskStatus::Retrying => {
                second.text(&format!("retrying: {}", row.error.as_deref().unwrap_or("")))
            }
            _ => match row.current.as_ref().and_then(|c| row.nodes.get(c)) {
                Some(node) => {
                    second.text(&format!(
                        "node {} #{}",
                        node.class_type.as_deref().unwrap_or("?"),
                        node.node_id.as_deref().unwrap_or("?")
                    ));
                    if let Some((value, max)) = node.steps {
                        second.text(&format!("  step {value}/{max}"));
                    }
                    if is_terminal(node.status) {
                        second.text(&format!(" ({})", status_name(node.status as i32)));
                    }
                }
                None => second.text("starting"),
            },
        }
        [first, second]
    }

    fn summary(&self, row: &Row) -> Line {
        let mut line = Line::default();
        line.text(if row.status == TaskStatus::Completed {
            "✔ "
        } else {
            "✘ "
        });
        line.status(row.status);
        line.text(&format!(" {} {}", display_name(row), short_id(&row.id)));
        let duration = row
            .duration_seconds
            .map(Duration::from_secs_f64)
            .or_else(|| {
                let (start, end) = (row.started_at.or(row.created_at)?, row.ended_at?);
                end.duration_since(start).ok()
            });
        if let Some(duration) = duration {
            line.text(&format!(" in {:.2}s", duration.as_secs_f64()));
        }
        if row.status != TaskStatus::Completed
            && let Some(error) = &row.error
        {
            line.text(&format!(": {error}"));
        }
        match row.artifacts.len() {
            0 => {}
            1 => line.text(&format!(" · artifact {}", row.artifacts[0])),
            n => line.text(&format!(" · {n} artifacts: {}", row.artifacts.join(", "))),
        }
        line
    }

    fn footer(&self) -> Line {
        let mut line = Line::default();
        line.text("queue");
        for priority in [
            TaskPriority::Critical,
            TaskPriority::High,
            TaskPriority::Normal,
            TaskPriority::Low,
        ] {
            let depth = match &self.load {
                Some(load) => load
                    .queued
                    .get(&(priority as i32))
                    .map_or(0, |&n| usize::try_from(n).unwrap_or(usize::MAX)),
                None => self
                    .rows
                    .values()
                    .filter(|r| r.status == TaskStatus::Queued && r.priority == priority)
                    .count(),
            };
            let name = priority.as_str_name()["TASK_PRIORITY_".len()..].to_lowercase();
            line.text(&format!(" {name} {depth}"));
        }
        let running = self
            .rows
            .values()
            .filter(|r| r.status == TaskStatus::Running)
            .count();
        if self.backends.is_empty() {
            line.text(&format!("  ·  running {running}"));
        } else {
            let up = self.backends.values().filter(|u| **u == Some(true)).count();
            let busy = match &self.load {
                Some(load) => self
                    .backends
                    .iter()
                    .filter(|(name, up)| {
                        **up == Some(true) && load.running.get(*name).is_some_and(|&n| n > 0)
                    })
                    .count(),
                None => running.min(up),
            };
            line.text(&format!(
                "  ·  backends {up}/{} up, {busy} busy",
                self.backends.len(),
            ));
        }
        line
    }
}

/// A line made of spans, some coloured; cut to a width before colouring so
/// that escape codes never count as cells.
#[derive(Debug, Default)]
struct Line {
    /// The spans and the style of each.
    spans: Vec<(String, Option<Style>)>,
}

impl Line {
    fn text(&mut self, text: &str) {
        self.spans.push((text.to_owned(), None));
    }

    fn status(&mut self, status: TaskStatus) {
        let name = status_name(status as i32);
        let color = match status {
            TaskStatus::Completed => AnsiColor::Green,
            TaskStatus::Failed => AnsiColor::Red,
            TaskStatus::Cancelled => AnsiColor::Magenta,
            TaskStatus::Running => AnsiColor::Cyan,
            TaskStatus::Retrying => AnsiColor::Yellow,
            _ => AnsiColor::Blue,
        };
        let style = Style::new().fg_color(Some(color.into())).bold();
        self.spans.push((format!("{name:<9}"), Some(style)));
    }

    fn render(&self, color: bool, width: usize) -> String {
        let mut out = String::new();
        let mut left = width;
        for (text, style) in &self.spans {
            let cut: String = text.chars().take(left).collect();
            left -= cut.chars().count();
            match style.filter(|_| color) {
                // Pad outside the colour, so that only the word is coloured.
                Some(style) => {
                    let word = cut.trim_end();
                    out.push_str(&format!("{style}{word}{style:#}{}", &cut[word.len()..]));
                }
                None => out.push_str(&cut),
            }
        }
        out.trim_end().to_owned()
    }
}

/// Draws the frames of a [`LiveView`] in place on a terminal.
pub struct Screen {
    /// How many lines the last frame took (the cursor is below them).
    drawn: u16,
    /// The least time between two frames.
    interval: Duration,
    /// When the last frame was drawn.
    last: Option<std::time::Instant>,
}

impl Screen {
    /// A screen that redraws at most every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            drawn: 0,
            interval,
            last: None,
        }
    }

    /// The redraw interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Redraws when `interval` has passed since the last frame (or `force`):
    /// the settled summaries go above for good, then the frame.
    pub fn draw(&mut self, view: &mut LiveView, force: bool) -> std::io::Result<()> {
        let now = std::time::Instant::now();
        if !force && self.last.is_some_and(|last| now - last < self.interval) {
            return Ok(());
        }
        self.last = Some(now);
        let width = crossterm::terminal::size().map_or(80, |(columns, _)| usize::from(columns));
        // One column spare: a line that fills the row would wrap on some terminals.
        let frame = view.render(width.saturating_sub(1).max(20), SystemTime::now());
        let settled = view.drain_settled();
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            crossterm::queue!(out, crossterm::cursor::MoveToPreviousLine(self.drawn))?;
        }
        crossterm::queue!(
            out,
            crossterm::terminal::Clear(crossterm::terminal::ClearType::FromCursorDown)
        )?;
        for line in &settled {
            writeln!(out, "{line}")?;
        }
        // Drawn again without the settled rows, which now stand above.
        let frame = if settled.is_empty() {
            frame
        } else {
            view.render(width.saturating_sub(1).max(20), SystemTime::now())
        };
        for line in &frame {
            writeln!(out, "{line}")?;
        }
        self.drawn = u16::try_from(frame.len()).unwrap_or(u16::MAX);
        out.flush()
    }
}

fn system_time(t: prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(t).ok()
}

fn data(text: &str) -> serde_json::Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_terminal(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
    )
}

fn display_name(row: &Row) -> &str {
    if row.name.is_empty() { "-" } else { &row.name }
}

/// The first 8 characters of an id.
fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn bar(progress: f64) -> String {
    let full = ((progress * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!("[{}{}]", "█".repeat(full), "░".repeat(BAR_WIDTH - full))
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::pb::{QueueDepth, RuntimeEvent, Task, TaskEvent};

    /// The fixed clock: the events happen at `T0 + n` seconds.
    const T0: i64 = 1_767_225_600;

    fn at(seconds: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(T0 + seconds).unwrap())
    }

    fn stamp(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: T0 + seconds,
            nanos: 0,
        })
    }

    fn task_event(
        seconds: i64,
        execution: &str,
        task: &str,
        node: bool,
        kind: TaskEventType,
        data: Value,
        message: Option<&str>,
    ) -> Event {
        Event {
            timestamp: stamp(seconds),
            payload: Some(event::Payload::TaskEvent(TaskEvent {
                task_id: task.into(),
                event_type: kind.into(),
                message: message.map(Into::into),
                data: data.to_string(),
                ..TaskEvent::default()
            })),
            task_id: Some(task.into()),
            execution_id: Some(execution.into()),
            node,
            ..Event::default()
        }
    }

    fn root(seconds: i64, execution: &str, kind: TaskEventType, message: Option<&str>) -> Event {
        let task = format!("{execution}-root");
        task_event(seconds, execution, &task, false, kind, json!({}), message)
    }

    fn node(seconds: i64, execution: &str, n: u32, kind: TaskEventType, data: Value) -> Event {
        let task = format!("{execution}-node{n}");
        task_event(seconds, execution, &task, true, kind, data, None)
    }

    fn runtime(execution: Option<&str>, event_type: &str, data: Value) -> Event {
        Event {
            timestamp: stamp(0),
            payload: Some(event::Payload::RuntimeEvent(RuntimeEvent {
                event_type: event_type.into(),
                data: data.to_string(),
                ..RuntimeEvent::default()
            })),
            execution_id: execution.map(Into::into),
            ..Event::default()
        }
    }

    fn execution(
        id: &str,
        name: &str,
        status: TaskStatus,
        priority: TaskPriority,
    ) -> WorkflowExecution {
        WorkflowExecution {
            id: id.into(),
            status: status.into(),
            priority: priority.into(),
            root_task_id: Some(format!("{id}-root")),
            tasks: vec![Task {
                id: format!("{id}-root"),
                name: name.into(),
                ..Task::default()
            }],
            created_at: stamp(0),
            ..WorkflowExecution::default()
        }
    }

    const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
    const C: &str = "cccccccc-0000-4000-8000-000000000003";

    /// Two queued executions (A ahead of B), one running one (C); the
    /// backends: one up, one down.
    fn recorded() -> LiveView {
        let mut view = LiveView::new(false);
        view.set_backends(&[
            BackendInfo {
                name: "gpu-0".into(),
                state: BackendState::Up.into(),
                ..BackendInfo::default()
            },
            BackendInfo {
                name: "gpu-1".into(),
                state: BackendState::Up.into(),
                ..BackendInfo::default()
            },
        ]);
        let mut a = execution(A, "upscale", TaskStatus::Queued, TaskPriority::Normal);
        a.queue_position = Some(0);
        let mut b = execution(B, "portrait", TaskStatus::Queued, TaskPriority::High);
        b.queue_position = Some(1);
        let mut c = execution(C, "broken", TaskStatus::Queued, TaskPriority::Normal);
        c.queue_position = Some(2);
        view.seed(&a);
        view.seed(&b);
        view.seed(&c);
        view.apply(&runtime(None, "backend.down", json!({"backend": "gpu-1"})));
        // A starts: B moves up.
        view.apply(&root(2, A, TaskEventType::Started, None));
        for n in 1..=3 {
            view.apply(&node(2, A, n, TaskEventType::Created, json!({})));
        }
        view.apply(&node(3, A, 1, TaskEventType::Started, json!({})));
        view.apply(&node(
            3,
            A,
            1,
            TaskEventType::Progress,
            json!({"progress": 0.0, "node_id": "4", "class_type": "CheckpointLoader"}),
        ));
        view.apply(&node(4, A, 1, TaskEventType::Completed, json!({})));
        view.apply(&node(
            4,
            A,
            2,
            TaskEventType::Progress,
            json!({
                "progress": 0.3, "node_id": "3", "class_type": "KSampler", "value": 6, "max": 20
            }),
        ));
        view.apply(&root(4, A, TaskEventType::Progress, None));
        view
    }

    #[test]
    fn a_running_node_and_a_queued_position() {
        let view = recorded();
        let frame = view.render(100, at(10));
        assert_eq!(
            frame,
            [
                "RUNNING   upscale aaaaaaaa [█████████░░░░░░░░░░░]  43%  nodes 1/3  0:08 eta 0:10",
                "    node KSampler #3  step 6/20",
                "QUEUED    portrait bbbbbbbb [░░░░░░░░░░░░░░░░░░░░]   0%  waiting 0:10",
                "    queued, next",
                "QUEUED    broken cccccccc [░░░░░░░░░░░░░░░░░░░░]   0%  waiting 0:10",
                "    queued, 1 ahead",
                "queue critical 0 high 1 normal 1 low 0  ·  backends 1/2 up, 1 busy",
            ]
        );
    }

    #[test]
    fn the_servers_queue_and_busy_backends_win_over_the_followed_rows() {
        let mut view = recorded();
        // The server knows executions the view does not follow.
        view.set_runtime_info(&GetRuntimeInfoResponse {
            backends: vec![
                BackendInfo {
                    name: "gpu-0".into(),
                    state: BackendState::Up.into(),
                    running: 2,
                    ..BackendInfo::default()
                },
                BackendInfo {
                    name: "gpu-1".into(),
                    state: BackendState::Up.into(),
                    running: 1,
                    ..BackendInfo::default()
                },
            ],
            queue: [
                (TaskPriority::Critical, 1),
                (TaskPriority::High, 0),
                (TaskPriority::Normal, 7),
                (TaskPriority::Low, 3),
            ]
            .into_iter()
            .map(|(priority, queued)| QueueDepth {
                priority: priority.into(),
                queued,
            })
            .collect(),
            ..GetRuntimeInfoResponse::default()
        });
        let frame = view.render(100, at(10));
        assert_eq!(
            frame.last().map(String::as_str),
            Some("queue critical 1 high 0 normal 7 low 3  ·  backends 2/2 up, 2 busy")
        );
        // A backend that goes down is no longer busy, whatever it held.
        view.apply(&runtime(None, "backend.down", json!({"backend": "gpu-1"})));
        let frame = view.render(100, at(10));
        assert_eq!(
            frame.last().map(String::as_str),
            Some("queue critical 1 high 0 normal 7 low 3  ·  backends 1/2 up, 1 busy")
        );
        // A server that reports no load: the footer counts the rows again.
        view.set_runtime_info(&GetRuntimeInfoResponse {
            backends: vec![BackendInfo {
                name: "gpu-0".into(),
                state: BackendState::Up.into(),
                ..BackendInfo::default()
            }],
            ..GetRuntimeInfoResponse::default()
        });
        let frame = view.render(100, at(10));
        assert_eq!(
            frame.last().map(String::as_str),
            Some("queue critical 0 high 1 normal 1 low 0  ·  backends 1/1 up, 1 busy")
        );
    }

    #[test]
    fn a_failure_and_a_completion_collapse_into_summary_lines() {
        let mut view = recorded();
        view.apply(&root(5, C, TaskEventType::Started, None));
        view.apply(&runtime(Some(C), "execution.retrying", json!({"retry": 1})));
        view.apply(&root(6, C, TaskEventType::Retrying, Some("backend lost")));
        view.apply(&root(
            7,
            C,
            TaskEventType::Failed,
            Some("node 2 raised ValueError"),
        ));
        view.apply(&node(9, A, 2, TaskEventType::Completed, json!({})));
        view.apply(&node(9, A, 3, TaskEventType::Completed, json!({})));
        view.apply(&root(12, A, TaskEventType::Completed, None));
        // Ended, not read again yet: a summary in the frame.
        let frame = view.render(100, at(12));
        assert_eq!(
            frame,
            [
                "✔ COMPLETED upscale aaaaaaaa in 10.00s",
                "✘ FAILED    broken cccccccc in 2.00s: node 2 raised ValueError",
                "QUEUED    portrait bbbbbbbb [░░░░░░░░░░░░░░░░░░░░]   0%  waiting 0:12",
                "    queued, next",
                "queue critical 0 high 1 normal 0 low 0  ·  backends 1/2 up, 0 busy",
            ]
        );
        // Read again after its end: its artifacts, and it leaves the view.
        let mut a = execution(A, "upscale", TaskStatus::Completed, TaskPriority::Normal);
        a.total_duration_seconds = Some(10.25);
        a.artifacts = vec!["aaaaaaaa/out_00001_.png".into()];
        view.seed(&a);
        assert_eq!(
            view.drain_settled(),
            ["✔ COMPLETED upscale aaaaaaaa in 10.25s · artifact aaaaaaaa/out_00001_.png"]
        );
        assert_eq!(view.render(100, at(12)).len(), 4);
        assert!(view.drain_settled().is_empty());
    }

    #[test]
    fn a_retried_execution_counts_its_retries() {
        let mut view = recorded();
        view.apply(&root(5, C, TaskEventType::Started, None));
        view.apply(&runtime(Some(C), "execution.retrying", json!({"retry": 1})));
        view.apply(&root(6, C, TaskEventType::Retrying, Some("backend lost")));
        let frame = view.render(120, at(8));
        let row = frame.iter().position(|l| l.contains("broken")).unwrap();
        assert!(
            frame[row].starts_with("RETRYING  broken cccccccc"),
            "{frame:?}"
        );
        assert!(frame[row].ends_with("retries 1"), "{frame:?}");
        assert_eq!(frame[row + 1], "    retrying: backend lost");
    }

    #[test]
    fn lines_fit_the_width_and_colour_only_when_asked() {
        let plain = recorded();
        for line in plain.render(40, at(10)) {
            assert!(line.chars().count() <= 40, "{line}");
            assert!(!line.contains('\x1b'), "{line}");
        }
        let mut coloured = recorded();
        coloured.color = true;
        let frame = coloured.render(40, at(10));
        assert!(frame[0].starts_with("\x1b["), "{frame:?}");
        // Escape codes take no cells: the same text once they are removed.
        let stripped: Vec<String> = frame
            .iter()
            .map(|l| {
                let mut out = String::new();
                let mut chars = l.chars();
                while let Some(c) = chars.next() {
                    if c == '\x1b' {
                        chars.by_ref().find(|c| *c == 'm');
                    } else {
                        out.push(c);
                    }
                }
                out
            })
            .collect();
        assert_eq!(stripped, plain.render(40, at(10)));
    }
}
