//! gRPC handlers: thin (validate, convert, call the runtime, convert back).
//! Only this module knows tonic and the generated types.

pub mod access;
mod admin;
pub mod convert;
mod events;
mod events_convert;
mod executions;
mod executions_convert;
pub mod request_context;
pub mod status;
mod tasks;
mod workflows;

pub use admin::AdminApi;
pub use events::EventApi;
pub use executions::ExecutionApi;
pub use tasks::TaskApi;
pub use workflows::WorkflowApi;

/// Records the task or workflow a call is about on the request's span, and as the call's audit
/// target.
fn record_span(field: &'static str, value: &str) {
    tracing::Span::current().record(field, value);
    access::record_target(value);
}
