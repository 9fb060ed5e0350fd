//! The JSON log line: one object per event with `timestamp`, `level`,
//! `target`, `message`, the event's fields, and the fields of every span the
//! event is in, all at the top level, so `request_id`, `task_id`,
//! `execution_id`, `workflow_id` and `prompt_id` can be filtered on directly
//! (`jq 'select(.task_id == "...")'`, Loki, Elasticsearch) wherever the code
//! recorded them: on the event or on an enclosing span.
//!
//! Precedence: an event's own fields over its spans', an inner span's over
//! an outer one's; `timestamp`, `level` and `target` are always the event's.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Fields that `tracing-log` adds to events bridged from the `log` crate;
/// `log.target` becomes the `target`, the others are noise in a log line.
const LOG_FIELD_PREFIX: &str = "log.";

/// The event formatter; spans' fields are kept as JSON by [`JsonFields`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        line.insert(
            "timestamp".to_owned(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert(
            "level".to_owned(),
            Value::String(event.metadata().level().to_string()),
        );
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                let Some(formatted) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(span_fields)) =
                    serde_json::from_str::<Value>(formatted.as_str())
                {
                    fields.extend(span_fields);
                }
            }
            if let Some(name) = innermost {
                line.insert("span".to_owned(), Value::String(name.to_owned()));
            }
        }
        let mut visitor = FieldVisitor {
            fields: &mut fields,
            log_target: None,
        };
        event.record(&mut visitor);
        let target = visitor
            .log_target
            .take()
            .unwrap_or_else(|| event.metadata().target().to_owned());
        // The reserved keys are the event's, whatever a field is called.
        for key in ["timestamp", "level", "target"] {
            fields.remove(key);
        }
        line.extend(fields);
        line.insert("target".to_owned(), Value::String(target));
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields as JSON values.
struct FieldVisitor<'a> {
    /// Where the fields go (over the spans' fields).
    fields: &'a mut Map<String, Value>,
    /// `log.target` of an event bridged from the `log` crate.
    log_target: Option<String>,
}

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if let Some(log_field) = name.strip_prefix(LOG_FIELD_PREFIX) {
            if let ("target", Value::String(target)) = (log_field, value) {
                self.log_target = Some(target);
            }
            return;
        }
        // `r#type` and friends: the raw-identifier prefix is not part of the name.
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.fields.insert(name.to_owned(), value);
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A writer collecting every line in memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Self;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(lines.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = lines.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn span_fields_are_flattened_to_the_top_level() {
        let lines = capture(|| {
            let outer = tracing::info_span!(
                "grpc",
                request_id = "req-1",
                task_id = tracing::field::Empty,
                method = "/x.Y/Z"
            );
            let _outer = outer.enter();
            outer.record("task_id", "task-1");
            let inner = tracing::info_span!("execution", execution_id = "exec-1", method = "inner");
            let _inner = inner.enter();
            tracing::info!(
                prompt_id = "prompt-1",
                attempt = 2_u64,
                ok = true,
                "submitted {}",
                7
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["request_id"], "req-1", "{line}");
        assert_eq!(line["task_id"], "task-1", "{line}");
        assert_eq!(line["execution_id"], "exec-1", "{line}");
        assert_eq!(line["prompt_id"], "prompt-1", "{line}");
        assert_eq!(line["method"], "inner", "inner span wins: {line}");
        assert_eq!(line["attempt"], 2, "{line}");
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["message"], "submitted 7", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["span"], "execution", "{line}");
        assert!(
            line["target"].as_str().unwrap().contains("json_log"),
            "{line}"
        );
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
        assert!(
            line.get("spans").is_none() && line.get("fields").is_none(),
            "{line}"
        );
    }

    #[test]
    fn event_fields_win_and_reserved_keys_stay_the_events() {
        let lines = capture(|| {
            let span = tracing::info_span!("grpc", task_id = "from-span", level = "bogus");
            let _span = span.enter();
            tracing::warn!(task_id = "from-event", target = "spoofed", "x");
        });
        let line = &lines[0];
        assert_eq!(line["task_id"], "from-event", "{line}");
        assert_eq!(line["level"], "WARN", "{line}");
        assert_ne!(line["target"], "spoofed", "{line}");
    }

    #[test]
    fn an_event_outside_any_span_has_no_span_key() {
        let lines = capture(|| tracing::debug!(r#type = "workflow", "plain"));
        let line = &lines[0];
        assert!(line.get("span").is_none(), "{line}");
        assert_eq!(line["type"], "workflow", "{line}");
        assert_eq!(line["level"], "DEBUG", "{line}");
    }
}
