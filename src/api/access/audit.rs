//! Audit: every mutating call and every refused call becomes an `audit.call` RuntimeEvent
//! (category AUDIT) on the event bus, which also logs it as a structured line: principal,
//! tenant, full gRPC method, target id, outcome status and peer address. The target id is what
//! the handler recorded through [`record_target`] while it ran. Nothing secret goes in: no key,
//! no header, no request body.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;

use http::{HeaderMap, Uri};
use tonic::{Code, Status};

use super::identity::Principal;
use crate::api::status::code_name;
use crate::model::LogLevel;
pub use crate::model::events::AUDIT_EVENT_TYPE;
use crate::model::events::{AuditEvent, AuditFacts, EventContext};
use crate::runtime::Runtime;

tokio::task_local! {
    /// The id the current call is about, set by handlers through [`record_target`].
    static TARGET: RefCell<Option<String>>;
}

/// Runs `future` as an audited call; gives its output and the id its handler recorded
/// through [`record_target`], if any.
pub(super) async fn scoped<F: Future>(future: F) -> (F::Output, Option<String>) {
    let mut call = pin!(TARGET.scope(RefCell::new(None), future));
    let output = call.as_mut().await;
    let target = call.as_mut().take_value().and_then(RefCell::into_inner);
    (output, target)
}

/// Records the id the current call is about (the last one recorded wins: an execution's id
/// after its workflow's). Outside an audited call it does nothing.
pub fn record_target(id: &str) {
    let _ = TARGET.try_with(|target| {
        if let Ok(mut slot) = target.try_borrow_mut() {
            *slot = Some(id.to_owned());
        }
    });
}

/// Where audit events go.
#[derive(Clone)]
pub(super) struct Auditor {
    /// The runtime whose bus carries the events.
    runtime: Runtime,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auditor")
    }
}

/// What is known of a call before it is handled.
#[derive(Debug)]
pub(super) struct Entry {
    /// The request's URI, whose path is the full gRPC method (a clone shares its bytes).
    uri: Uri,
    /// The peer's address.
    peer: Option<SocketAddr>,
}

impl Entry {
    pub(super) fn new(uri: Uri, peer: Option<SocketAddr>) -> Self {
        Self { uri, peer }
    }
}

impl Auditor {
    pub(super) fn new(runtime: &Runtime) -> Self {
        Self {
            runtime: runtime.clone(),
        }
    }

    /// A call refused before its handler ran.
    pub(super) fn refused(&self, entry: Entry, principal: Option<&Principal>, status: &Status) {
        self.publish(entry, principal, None, status.code(), LogLevel::Warning);
    }

    /// A mutating call its handler answered, with the status in the response headers (an
    /// error) or none (OK so far).
    pub(super) fn handled(
        &self,
        entry: Entry,
        principal: &Principal,
        target: Option<String>,
        headers: &HeaderMap,
    ) {
        let code = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(Code::Ok, Code::from_i32);
        self.publish(entry, Some(principal), target, code, LogLevel::Info);
    }

    fn publish(
        &self,
        entry: Entry,
        principal: Option<&Principal>,
        target: Option<String>,
        code: Code,
        level: LogLevel,
    ) {
        let facts = AuditFacts {
            principal: principal.map(|p| p.name.clone()),
            tenant: principal.map(|p| p.tenant.clone()),
            method: entry.uri.path().to_owned(),
            target_id: target,
            outcome: code_name(code),
            peer: entry.peer,
        };
        // Nobody waits for an audit event: it is held back and goes to the
        // store with the next write (usually the next call's), not as a write
        // of its own (see `EventBus::deferrable_batch`).
        let bus = self.runtime.bus();
        let _batch = bus.deferrable_batch();
        bus.publish_audit(AuditEvent::new(facts, level), EventContext::default());
    }
}
