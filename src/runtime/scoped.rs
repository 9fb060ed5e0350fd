//! The runtime as one caller sees it: [`Runtime::scoped`] gives a [`ScopedRuntime`] whose
//! methods are the runtime's, limited to the caller's [`Scope`]. Work another tenant owns
//! answers NOT_FOUND (never a refusal that would tell it exists), lists and event streams leave
//! it out, dependencies and parents must be visible, what the caller creates carries its
//! [`Ownership`], and a principal's queued plus running executions are held under its
//! `max_queued`. Admins and callers without authentication see everything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::events::Event;
use crate::model::{
    FastMap, FastSet, Ownership, Scope, Task, TaskStatus, ValidationError, WorkflowDefinition,
};
use crate::store::{ExecutionFilter, Page, TaskFilter, WorkflowCursor, WorkflowFilter};

use super::artifacts::OpenArtifact;
use super::events::{EventFilter, EventPage};
use super::{
    ExecuteRequest, ExecutionOptions, ExecutionView, NewTaskRequest, ProgressUpdate,
    RegisterWorkflowRequest, Runtime, RuntimeError, ValidationReport, WatchUpdate, WorkflowSource,
};

/// Who is calling, as the runtime needs to know it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What it may see.
    pub scope: Scope,
    /// What it creates is owned by this; `None` without authentication.
    pub ownership: Option<Ownership>,
    /// Its most queued plus running executions; `None` for no per-principal limit.
    pub max_queued: Option<u64>,
}

impl Caller {
    /// A caller that sees everything and owns nothing (no authentication).
    pub fn unrestricted() -> Self {
        Self {
            scope: Scope::All,
            ownership: None,
            max_queued: None,
        }
    }
}

/// Each principal's executions that may still be queued or running, by principal name.
#[derive(Default)]
pub(super) struct ActiveByOwner {
    /// Per principal, read from the store on first use.
    owners: Mutex<FastMap<String, OwnerActive>>,
}

/// One principal's executions that may still be queued or running.
#[derive(Default)]
struct OwnerActive {
    /// Their ids; ids of ended executions are pruned when the principal reaches its limit.
    ids: FastSet<ActiveId>,
    /// Submits in progress, each holding a slot until its execution exists.
    reserved: usize,
}

/// An execution id as the quota table keeps it: one the runtime made (a UUID, lowercase and
/// hyphenated) as its 128 bits, no string to allocate, compare or hash per submit; any other
/// as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ActiveId {
    /// A UUID in its canonical text (36 characters, lowercase).
    Uuid(u128),
    /// Any other id.
    Other(Box<str>),
}

impl ActiveId {
    fn new(id: &str) -> Self {
        // Only the canonical text: it is the one `text` gives back.
        if id.len() == 36
            && !id.bytes().any(|b| b.is_ascii_uppercase())
            && let Ok(uuid) = uuid::Uuid::try_parse(id)
        {
            return Self::Uuid(uuid.as_u128());
        }
        Self::Other(id.into())
    }

    /// The id as the runtime knows it.
    fn text(&self) -> String {
        match self {
            Self::Uuid(bits) => crate::model::uuid_text(uuid::Uuid::from_u128(*bits)),
            Self::Other(id) => id.to_string(),
        }
    }
}

fn active_owners(runtime: &Runtime) -> &Mutex<FastMap<String, OwnerActive>> {
    &runtime.active_by_owner().owners
}

/// A slot of a principal's `max_queued` held by a submit in progress; released when dropped
/// (also when the caller goes away mid-submit), after [`Reservation::become_execution`] counts
/// the execution instead.
struct Reservation<'a> {
    /// The table it is counted in.
    owners: &'a Mutex<FastMap<String, OwnerActive>>,
    /// The principal.
    owner: &'a str,
}

impl Reservation<'_> {
    fn become_execution(&self, id: &str) {
        if let Ok(mut owners) = self.owners.lock()
            && let Some(active) = owners.get_mut(self.owner)
        {
            active.ids.insert(ActiveId::new(id));
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut owners) = self.owners.lock()
            && let Some(active) = owners.get_mut(self.owner)
        {
            active.reserved = active.reserved.saturating_sub(1);
        }
    }
}

/// The runtime limited to one caller; see the module docs.
pub struct ScopedRuntime<'a> {
    /// The runtime.
    runtime: &'a Runtime,
    /// The caller.
    caller: Caller,
}

impl Runtime {
    /// The runtime as `caller` sees it.
    pub fn scoped(&self, caller: Caller) -> ScopedRuntime<'_> {
        ScopedRuntime {
            runtime: self,
            caller,
        }
    }
}

/// How long a principal at its `max_queued` is told to wait before trying again.
const QUOTA_RETRY_AFTER: Duration = Duration::from_secs(5);

impl ScopedRuntime<'_> {
    fn sees(&self, ownership: Option<&Ownership>) -> bool {
        self.caller.scope.sees(ownership)
    }

    fn visible_task(&self, id: &str) -> Result<Task, RuntimeError> {
        let task = self.runtime.tasks().get(id)?;
        if self.sees(task.ownership.as_ref()) {
            Ok(task)
        } else {
            Err(RuntimeError::task_not_found(id))
        }
    }

    fn check_execution(&self, id: &str) -> Result<(), RuntimeError> {
        if self.caller.scope == Scope::All {
            return Ok(());
        }
        let view = self.runtime.executor().view(id)?;
        if self.sees(view.execution.ownership.as_ref()) {
            Ok(())
        } else {
            Err(RuntimeError::execution_not_found(id))
        }
    }

    fn visible_workflow(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<WorkflowDefinition, RuntimeError> {
        let workflow = self.runtime.workflows().get(id, version)?;
        if self.sees(workflow.ownership.as_ref()) {
            Ok(workflow)
        } else {
            Err(RuntimeError::workflow_not_found(id, version))
        }
    }

    /// Each dependency must be a task this caller sees; others read as unknown ids.
    fn check_dependencies<'i>(
        &self,
        ids: impl Iterator<Item = (String, &'i str)>,
    ) -> Result<(), RuntimeError> {
        if self.caller.scope == Scope::All {
            return Ok(());
        }
        let mut errors = ValidationError::new();
        for (field, id) in ids {
            if let Ok(task) = self.runtime.tasks().get(id)
                && !self.sees(task.ownership.as_ref())
            {
                errors.push(field, format!("task {id} not found"));
            }
        }
        Ok(errors.into_result()?)
    }

    /// Runs a workflow as the caller: a registered one must be visible, dependencies too,
    /// and the principal must be under its `max_queued`.
    pub async fn execute(
        &self,
        mut request: ExecuteRequest,
    ) -> Result<ExecutionView, RuntimeError> {
        if let WorkflowSource::Registered { id, version } = &request.workflow {
            self.visible_workflow(id, version.as_deref())?;
        }
        self.check_dependencies(
            request
                .dependencies
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("dependencies[{i}].task_id"), d.task_id.as_str())),
        )?;
        request.ownership = self.caller.ownership.clone();
        let (Some(owner), Some(max)) = (&self.caller.ownership, self.caller.max_queued) else {
            return self.runtime.execute(request).await;
        };
        let reservation = self.reserve(&owner.owner, max)?;
        let result = self.runtime.execute(request).await;
        if let Ok(view) = &result
            && !view.execution.status().is_terminal()
        {
            // A replayed idempotent request names an execution already counted: a set.
            reservation.become_execution(&view.execution.id);
        }
        result
    }

    /// Takes a slot of `owner`'s `max_queued` until the execution exists, pruning executions
    /// that ended when it is full.
    fn reserve<'a>(&'a self, owner: &'a str, max: u64) -> Result<Reservation<'a>, RuntimeError> {
        let active = &self.runtime.active_by_owner().owners;
        let mut owners = active
            .lock()
            .map_err(|_| RuntimeError::Unavailable("the quota table is poisoned".into()))?;
        if !owners.contains_key(owner) {
            let ids = self.active_in_store(owner)?;
            owners.insert(owner.to_owned(), OwnerActive { ids, reserved: 0 });
        }
        let Some(active) = owners.get_mut(owner) else {
            return Err(RuntimeError::Unavailable(
                "the quota table lost an owner".into(),
            ));
        };
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if active.ids.len() + active.reserved >= max {
            let executor = self.runtime.executor();
            active.ids.retain(|id| {
                executor
                    .view(&id.text())
                    .is_ok_and(|v| !v.execution.status().is_terminal())
            });
        }
        if active.ids.len() + active.reserved >= max {
            return Err(RuntimeError::ResourceExhausted {
                what: format!("max_queued ({max} queued or running executions of {owner})"),
                retry_after: QUOTA_RETRY_AFTER,
            });
        }
        active.reserved += 1;
        Ok(Reservation {
            owners: active_owners(self.runtime),
            owner,
        })
    }

    /// The owner's queued and running executions in the store (read once per owner).
    fn active_in_store(&self, owner: &str) -> Result<FastSet<ActiveId>, RuntimeError> {
        let filter = ExecutionFilter {
            statuses: vec![
                TaskStatus::Pending,
                TaskStatus::Queued,
                TaskStatus::Running,
                TaskStatus::Retrying,
            ],
            ..ExecutionFilter::default()
        };
        let mut ids = FastSet::default();
        let mut after = None;
        loop {
            let page = self.runtime.list_executions(&filter, after, 1000)?;
            ids.extend(
                page.items
                    .iter()
                    .filter(|v| {
                        v.execution
                            .ownership
                            .as_ref()
                            .is_some_and(|o| &*o.owner == owner)
                    })
                    .map(|v| ActiveId::new(&v.execution.id)),
            );
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(ids),
            }
        }
    }

    /// Checks a workflow (a registered one must be visible).
    pub fn validate_workflow(
        &self,
        source: &WorkflowSource,
        options: &ExecutionOptions,
    ) -> Result<ValidationReport, RuntimeError> {
        if let WorkflowSource::Registered { id, version } = source {
            self.visible_workflow(id, version.as_deref())?;
        }
        self.runtime.validate_workflow(source, options)
    }

    /// One execution.
    pub async fn get_execution(&self, id: &str) -> Result<ExecutionView, RuntimeError> {
        let view = self.runtime.get_execution(id).await?;
        if self.sees(view.execution.ownership.as_ref()) {
            Ok(view)
        } else {
            Err(RuntimeError::execution_not_found(id))
        }
    }

    /// A page of executions, the caller's tenant's only (a page may hold fewer than `limit`;
    /// the cursor goes on).
    pub fn list_executions(
        &self,
        filter: &ExecutionFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<ExecutionView, u64>, RuntimeError> {
        let mut page = self.runtime.list_executions(filter, after, limit)?;
        page.items
            .retain(|v| self.caller.scope.sees(v.execution.ownership.as_ref()));
        Ok(page)
    }

    /// Cancels an execution.
    pub async fn cancel_execution(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<ExecutionView, RuntimeError> {
        self.check_execution(id)?;
        self.runtime.cancel_execution(id, reason).await
    }

    /// Opens one of an execution's artifacts.
    pub async fn open_artifact(
        &self,
        execution_id: &str,
        path: &str,
    ) -> Result<OpenArtifact, RuntimeError> {
        self.check_execution(execution_id)?;
        self.runtime.open_artifact(execution_id, path).await
    }

    /// Follows an execution.
    pub async fn watch_execution(
        &self,
        id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<WatchUpdate, RuntimeError>>, RuntimeError> {
        self.check_execution(id)?;
        self.runtime.watch_execution(id).await
    }

    /// Creates a client task owned by the caller; its parent and dependencies must be visible.
    pub async fn create_task(&self, mut request: NewTaskRequest) -> Result<Task, RuntimeError> {
        self.check_dependencies(
            request
                .dependencies
                .iter()
                .enumerate()
                .map(|(i, id)| (format!("dependencies[{i}]"), id.as_str()))
                .chain(
                    request
                        .parent_id
                        .iter()
                        .map(|id| ("parent_id".to_owned(), id.as_str())),
                ),
        )?;
        request.ownership = self.caller.ownership.clone();
        self.runtime.create_task(request).await
    }

    /// One task.
    pub fn get_task(&self, id: &str) -> Result<Task, RuntimeError> {
        self.visible_task(id)
    }

    /// A page of tasks, the caller's tenant's only.
    pub fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<Task, u64>, RuntimeError> {
        let mut page = self.runtime.tasks().list(filter, after, limit)?;
        page.items
            .retain(|t| self.caller.scope.sees(t.ownership.as_ref()));
        Ok(page)
    }

    /// Reports a client task's progress.
    pub async fn update_task_progress(
        &self,
        id: &str,
        update: ProgressUpdate,
    ) -> Result<Task, RuntimeError> {
        self.visible_task(id)?;
        self.runtime.update_task_progress(id, update).await
    }

    /// Cancels a task (an execution's: the execution).
    pub async fn cancel_task(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<Task, RuntimeError> {
        self.visible_task(id)?;
        self.runtime.cancel_task(id, reason).await
    }

    /// Retries a task.
    pub async fn retry_task(&self, id: &str) -> Result<Task, RuntimeError> {
        self.visible_task(id)?;
        self.runtime.retry_task(id).await
    }

    /// Registers a workflow owned by the caller; a new version of another tenant's workflow
    /// id reads as an unknown id. Stored in a write of its own, waited for on a blocking
    /// thread (`runtime::off_thread`).
    pub async fn register_workflow(
        &self,
        mut request: RegisterWorkflowRequest,
    ) -> Result<WorkflowDefinition, RuntimeError> {
        if let Some(id) = &request.workflow_id
            && let Ok(existing) = self.runtime.workflows().get(id, None)
            && !self.sees(existing.ownership.as_ref())
        {
            return Err(RuntimeError::workflow_not_found(id, None));
        }
        request.ownership = self.caller.ownership.clone();
        let runtime = self.runtime.clone();
        super::off_thread(move || runtime.workflows().register(request)).await
    }

    /// One workflow version.
    pub fn get_workflow(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<WorkflowDefinition, RuntimeError> {
        self.visible_workflow(id, version)
    }

    /// A page of workflows, the caller's tenant's only.
    pub fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<&WorkflowCursor>,
        limit: usize,
    ) -> Result<Page<WorkflowDefinition, WorkflowCursor>, RuntimeError> {
        let mut page = self.runtime.workflows().list(filter, after, limit)?;
        page.items
            .retain(|w| self.caller.scope.sees(w.ownership.as_ref()));
        Ok(page)
    }

    /// Deletes workflow versions, in a write of their own waited for on a blocking thread.
    pub async fn delete_workflow(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Vec<String>, RuntimeError> {
        if self.caller.scope != Scope::All {
            if let Some(v) = version {
                crate::model::validate_semver("version", v)?;
            }
            self.visible_workflow(id, None)?;
        }
        let (runtime, id, version) = (
            self.runtime.clone(),
            id.to_owned(),
            version.map(str::to_owned),
        );
        super::off_thread(move || runtime.workflows().delete(&id, version.as_deref())).await
    }

    /// A page of events, the caller's tenant's only.
    pub fn list_events(
        &self,
        filter: &EventFilter,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, RuntimeError> {
        let mut page = self.runtime.list_events(filter, after, limit)?;
        if self.caller.scope != Scope::All {
            let visibility = EventVisibility::new(self.runtime.clone(), self.caller.scope.clone());
            page.events.retain(|e| visibility.sees(e));
        }
        Ok(page)
    }

    /// Which events this caller may receive, for filtering a subscription.
    pub fn event_visibility(&self) -> EventVisibility {
        EventVisibility::new(self.runtime.clone(), self.caller.scope.clone())
    }
}

/// Decides, event by event, whether a scoped caller may see it: events about a task or an
/// execution of its tenant. Runtime-wide events (backends, audit) are for admins only.
/// Remembers what it looked up, within a bound.
#[derive(Clone)]
pub struct EventVisibility {
    /// Where tasks and executions are looked up.
    runtime: Runtime,
    /// The caller's scope.
    scope: Scope,
    /// Visibility of each execution and task id looked up.
    known: Arc<Mutex<FastMap<String, bool>>>,
}

/// Most ids an [`EventVisibility`] remembers before it starts afresh.
const MAX_REMEMBERED: usize = 4096;

impl EventVisibility {
    fn new(runtime: Runtime, scope: Scope) -> Self {
        Self {
            runtime,
            scope,
            known: Arc::default(),
        }
    }

    /// Whether the caller may see `event`.
    pub fn sees(&self, event: &Event) -> bool {
        if self.scope == Scope::All {
            return true;
        }
        let context = &event.context;
        let (id, is_execution) = match (&context.execution_id, &context.task_id) {
            (Some(id), _) => (id, true),
            (None, Some(id)) => (id, false),
            (None, None) => return false,
        };
        if let Ok(known) = self.known.lock()
            && let Some(visible) = known.get(id)
        {
            return *visible;
        }
        let ownership = if is_execution {
            self.runtime
                .executor()
                .view(id)
                .ok()
                .and_then(|v| v.execution.ownership)
        } else {
            self.runtime.tasks().get(id).ok().and_then(|t| t.ownership)
        };
        let visible = self.scope.sees(ownership.as_ref());
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_REMEMBERED {
                known.clear();
            }
            known.insert(id.clone(), visible);
        }
        visible
    }
}

#[cfg(test)]
mod tests {
    use super::ActiveId;

    #[test]
    fn an_active_id_gives_back_the_id_it_was_made_from() {
        let made = crate::model::new_id();
        let upper = made.to_uppercase();
        let simple = made.replace('-', "");
        let braced = format!("{{{made}}}");
        for id in [made.as_str(), &upper, &simple, &braced, "job-7", ""] {
            assert_eq!(ActiveId::new(id).text(), id);
        }
        assert!(matches!(ActiveId::new(&made), ActiveId::Uuid(_)));
        // Other spellings of the same UUID are other ids.
        for other in [&upper, &simple, &braced] {
            assert!(
                matches!(ActiveId::new(other), ActiveId::Other(_)),
                "{other}"
            );
            assert_ne!(ActiveId::new(other), ActiveId::new(&made));
        }
    }
}
