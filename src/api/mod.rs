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

/// The caller of a request, as the runtime scopes it: from the principal the access layer put
/// into the request's extensions (admins and unauthenticated servers see everything).
fn caller<T>(request: &tonic::Request<T>) -> crate::runtime::Caller {
    use crate::model::{Ownership, Scope};
    let Some(principal) = request
        .extensions()
        .get::<std::sync::Arc<access::Principal>>()
    else {
        return crate::runtime::Caller::unrestricted();
    };
    if !principal.authenticated {
        return crate::runtime::Caller::unrestricted();
    }
    crate::runtime::Caller {
        scope: if principal.is_admin() {
            Scope::All
        } else {
            Scope::Tenant(principal.tenant.clone())
        },
        ownership: Some(Ownership {
            owner: principal.name.clone(),
            tenant: principal.tenant.clone(),
        }),
        max_queued: principal.limits.map(|l| l.max_queued),
    }
}

/// Records the task or workflow a call is about on the request's span, and as the call's audit
/// target.
fn record_span(field: &'static str, value: &str) {
    tracing::Span::current().record(field, value);
    access::record_target(value);
}
