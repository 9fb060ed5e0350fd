//! `MemoryStore`: the in-process store for tests and throwaway runs. State is
//! lost when the process exits.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{
    Changes, Committed, CreateOutcome, ExecutionCreateOutcome, ExecutionFilter, IdempotencyKey,
    NewExecutionRecord, Page, Store, StoreError, TaskFilter, WorkflowCursor, WorkflowFilter,
    version_key,
};
use crate::model::FastMap;
use crate::model::events::Event;
use crate::model::{Task, WorkflowDefinition, WorkflowExecution};

/// Most events the memory store keeps; older ones are dropped.
const MAX_EVENTS: usize = 1_000_000;

type VersionKey = (u64, u64, u64);

/// Everything the memory store holds, behind one lock.
#[derive(Default)]
struct Inner {
    /// Tasks by creation sequence number: the listing order.
    tasks: BTreeMap<u64, Arc<Task>>,
    /// Task id -> creation sequence number.
    task_index: FastMap<String, u64>,
    /// Parent task id -> its children's ids in creation order (parent_id
    /// never changes, so the index is written once per task).
    children: FastMap<String, Vec<String>>,
    /// The next creation sequence number.
    next_seq: u64,
    /// Idempotency key -> (fingerprint, task id).
    idempotency: HashMap<String, (String, String)>,
    /// Workflows by (id, numeric version).
    workflows: BTreeMap<(String, VersionKey), WorkflowDefinition>,
    /// Executions by creation sequence number, with their prompt JSON.
    executions: BTreeMap<u64, (Arc<WorkflowExecution>, Bytes)>,
    /// Execution id -> creation sequence number.
    execution_index: FastMap<String, u64>,
    /// Task id (root or node) -> its execution's id.
    task_execution: FastMap<String, String>,
    /// Execution idempotency key -> (fingerprint, execution id).
    execution_keys: HashMap<String, (String, String)>,
    /// The newest events, oldest first (shared with the bus's window).
    events: std::collections::VecDeque<Arc<Event>>,
    /// Values the runtime keeps about itself.
    meta: HashMap<String, String>,
}

impl Inner {
    fn insert_task(&mut self, task: Arc<Task>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.task_index.insert(task.id.clone(), seq);
        if let Some(parent) = &task.parent_id {
            self.children
                .entry(parent.clone())
                .or_default()
                .push(task.id.clone());
        }
        self.tasks.insert(seq, task);
    }

    /// Inserts a new execution, its tasks and prompt, and its key; returns
    /// the execution as stored (shared: a write's new executions need no copy).
    fn insert_execution(
        &mut self,
        new: NewExecutionRecord,
        idempotency: Option<IdempotencyKey>,
    ) -> Arc<WorkflowExecution> {
        let NewExecutionRecord {
            mut execution,
            tasks,
            prompt,
        } = new;
        if !execution.tasks.is_empty() {
            Arc::make_mut(&mut execution).tasks = Vec::new();
        }
        for task in tasks {
            self.task_execution
                .insert(task.id.clone(), execution.id.clone());
            self.insert_task(task);
        }
        if let Some(key) = idempotency {
            self.execution_keys
                .insert(key.key, (key.fingerprint, execution.id.clone()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.execution_index.insert(execution.id.clone(), seq);
        self.executions
            .insert(seq, (Arc::clone(&execution), prompt));
        execution
    }

    fn task(&self, id: &str) -> Option<&Task> {
        self.task_index
            .get(id)
            .and_then(|seq| self.tasks.get(seq))
            .map(Arc::as_ref)
    }

    fn push_event(&mut self, event: Arc<Event>) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// [`Store::write`]: checks every id first, so a write applies whole or not at all.
    fn apply(&mut self, changes: Changes) -> Result<(), StoreError> {
        let unknown =
            |what: &str, id: &str| StoreError::Unavailable(format!("{what} {id} is not stored"));
        // The ids this write creates, gathered only when an id is not stored
        // yet (most writes change what is stored, or only add events).
        let new_ids = std::cell::OnceCell::new();
        let new_task = |id: &str| {
            new_ids
                .get_or_init(|| {
                    changes
                        .new_execution_tasks
                        .iter()
                        .flat_map(|(_, tasks)| tasks.iter().map(|t| t.id.as_str()))
                        .chain(
                            changes
                                .new_executions
                                .iter()
                                .flat_map(|new| new.tasks.iter().map(|t| t.id.as_str())),
                        )
                        .collect::<std::collections::HashSet<&str>>()
                })
                .contains(id)
        };
        let new_executions = std::cell::OnceCell::new();
        let known_execution = |id: &str| {
            self.execution_index.contains_key(id)
                || new_executions
                    .get_or_init(|| {
                        changes
                            .new_executions
                            .iter()
                            .map(|new| new.execution.id.as_str())
                            .collect::<std::collections::HashSet<&str>>()
                    })
                    .contains(id)
        };
        if let Some((execution_id, _)) = &changes.new_execution_tasks
            && !known_execution(execution_id)
        {
            return Err(unknown("execution", execution_id));
        }
        if let Some(task) = changes
            .tasks
            .iter()
            .find(|t| !self.task_index.contains_key(&t.id) && !new_task(&t.id))
        {
            return Err(unknown("task", &task.id));
        }
        if let Some(execution) = changes.executions.iter().find(|e| !known_execution(&e.id)) {
            return Err(unknown("execution", &execution.id));
        }
        drop(new_ids);
        drop(new_executions);
        for new in changes.new_executions {
            self.insert_execution(new, None);
        }
        if let Some((execution_id, tasks)) = changes.new_execution_tasks {
            for task in tasks {
                self.task_execution
                    .insert(task.id.clone(), execution_id.clone());
                self.insert_task(task);
            }
        }
        for task in changes.tasks {
            if let Some(seq) = self.task_index.get(&task.id).copied() {
                self.tasks.insert(seq, task);
            }
        }
        for mut execution in changes.executions {
            if !execution.tasks.is_empty() {
                Arc::make_mut(&mut execution).tasks = Vec::new();
            }
            if let Some(seq) = self.execution_index.get(&execution.id).copied()
                && let Some((stored, _)) = self.executions.get_mut(&seq)
            {
                *stored = execution;
            }
        }
        for event in changes.events {
            self.push_event(event);
        }
        Ok(())
    }

    fn execution(&self, id: &str) -> Option<&(Arc<WorkflowExecution>, Bytes)> {
        self.execution_index
            .get(id)
            .and_then(|seq| self.executions.get(seq))
    }
}

/// An in-memory `Store`.
#[derive(Default)]
pub struct MemoryStore {
    /// All state; every method holds the lock briefly and never across an await.
    inner: Mutex<Inner>,
    /// Reads of one task or execution (`get_task`, `get_execution`), for the tests of who
    /// reads the store.
    #[cfg(test)]
    record_reads: std::sync::atomic::AtomicUsize,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times one task or execution was read (test builds only).
    #[cfg(test)]
    pub(crate) fn record_reads(&self) -> usize {
        self.record_reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a read of one record (test builds only).
    fn count_read(&self) {
        #[cfg(test)]
        self.record_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
    }
}

impl Store for MemoryStore {
    fn create_task(
        &self,
        task: Task,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CreateOutcome, StoreError> {
        let mut inner = self.lock()?;
        if let Some(key) = &idempotency
            && let Some((fingerprint, task_id)) = inner.idempotency.get(&key.key)
        {
            let same_body = *fingerprint == key.fingerprint;
            let existing = inner
                .task_index
                .get(task_id)
                .and_then(|seq| inner.tasks.get(seq))
                .map(|task| Task::clone(task));
            if let Some(existing) = existing {
                return Ok(CreateOutcome::Existing {
                    task: existing,
                    same_body,
                });
            }
        }
        if let Some(key) = idempotency {
            inner
                .idempotency
                .insert(key.key, (key.fingerprint, task.id.clone()));
        }
        inner.insert_task(Arc::new(task.clone()));
        Ok(CreateOutcome::Created(task))
    }

    fn put_task(&self, task: &Task) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let Some(seq) = inner.task_index.get(&task.id).copied() else {
            return Ok(false);
        };
        inner.tasks.insert(seq, Arc::new(task.clone()));
        Ok(true)
    }

    fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.count_read();
        let inner = self.lock()?;
        Ok(inner
            .task_index
            .get(id)
            .and_then(|seq| inner.tasks.get(seq))
            .map(|task| Task::clone(task)))
    }

    fn child_ids(&self, parent_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()?
            .children
            .get(parent_id)
            .cloned()
            .unwrap_or_default())
    }

    fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<Task, u64>, StoreError> {
        let inner = self.lock()?;
        let start = after.map_or(0, |seq| seq.saturating_add(1));
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut last = None;
        let mut more = false;
        for (seq, task) in inner.tasks.range(start..) {
            if !filter.matches(task) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(Task::clone(task));
            last = Some(*seq);
        }
        Ok(Page {
            items,
            next: if more { last } else { None },
        })
    }

    fn create_execution(
        &self,
        new: NewExecutionRecord,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<ExecutionCreateOutcome, StoreError> {
        let mut inner = self.lock()?;
        if let Some(key) = &idempotency
            && let Some((fingerprint, id)) = inner.execution_keys.get(&key.key)
            && let Some((existing, _)) = inner.execution(id)
        {
            return Ok(ExecutionCreateOutcome::Existing {
                execution: WorkflowExecution::clone(existing),
                same_body: *fingerprint == key.fingerprint,
            });
        }
        Ok(ExecutionCreateOutcome::Created(WorkflowExecution::clone(
            &inner.insert_execution(new, idempotency),
        )))
    }

    fn add_execution_tasks(&self, execution_id: &str, tasks: &[Task]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        for task in tasks {
            inner
                .task_execution
                .insert(task.id.clone(), execution_id.to_owned());
            inner.insert_task(Arc::new(task.clone()));
        }
        Ok(())
    }

    fn execution_for_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self.lock()?.execution_keys.get(key).cloned())
    }

    fn put_execution(&self, execution: &WorkflowExecution) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let Some(seq) = inner.execution_index.get(&execution.id).copied() else {
            return Ok(false);
        };
        if let Some((stored, _)) = inner.executions.get_mut(&seq) {
            let mut execution = execution.clone();
            execution.tasks = Vec::new();
            *stored = Arc::new(execution);
        }
        Ok(true)
    }

    fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>, StoreError> {
        self.count_read();
        Ok(self
            .lock()?
            .execution(id)
            .map(|(e, _)| WorkflowExecution::clone(e)))
    }

    fn execution_prompt(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.lock()?.execution(id).map(|(_, p)| p.clone()))
    }

    fn execution_of_task(&self, task_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.task_execution.get(task_id).cloned())
    }

    fn list_executions(
        &self,
        filter: &ExecutionFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<WorkflowExecution, u64>, StoreError> {
        let inner = self.lock()?;
        let start = after.map_or(0, |seq| seq.saturating_add(1));
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut last = None;
        let mut more = false;
        for (seq, (execution, _)) in inner.executions.range(start..) {
            let matches = (filter.statuses.is_empty()
                || filter.statuses.contains(&execution.status()))
                && filter
                    .workflow_id
                    .as_ref()
                    .is_none_or(|id| *id == execution.workflow_id)
                && (filter.tags.is_empty()
                    || execution
                        .root_task_id
                        .as_deref()
                        .and_then(|root| inner.task(root))
                        .is_some_and(|root| filter.tags.iter().all(|t| root.tags.contains(t))));
            if !matches {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(WorkflowExecution::clone(execution));
            last = Some(*seq);
        }
        Ok(Page {
            items,
            next: if more { last } else { None },
        })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.meta.get(key).cloned())
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock()?.meta.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn append_event(&self, event: &Event) -> Result<(), StoreError> {
        self.lock()?.push_event(Arc::new(event.clone()));
        Ok(())
    }

    fn write(&self, changes: Changes, committed: Committed) {
        let outcome = self.lock().and_then(|mut inner| inner.apply(changes));
        committed(outcome);
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let inner = self.lock()?;
        let skip = inner.events.partition_point(|e| e.sequence <= after);
        Ok(inner
            .events
            .iter()
            .skip(skip)
            .take(limit)
            .map(|event| Event::clone(event))
            .collect())
    }

    fn last_event_sequence(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.events.back().map_or(0, |e| e.sequence))
    }

    fn insert_workflow(
        &self,
        workflow: WorkflowDefinition,
    ) -> Result<Result<WorkflowDefinition, WorkflowDefinition>, StoreError> {
        let mut inner = self.lock()?;
        let key = (workflow.id.clone(), version_key(&workflow.version));
        if let Some(existing) = inner.workflows.get(&key) {
            return Ok(Err(existing.clone()));
        }
        inner.workflows.insert(key, workflow.clone());
        Ok(Ok(workflow))
    }

    fn get_workflow(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<WorkflowDefinition>, StoreError> {
        let inner = self.lock()?;
        Ok(match version {
            Some(v) => inner
                .workflows
                .get(&(id.to_owned(), version_key(v)))
                .cloned(),
            None => inner
                .workflows
                .range((id.to_owned(), (0, 0, 0))..=(id.to_owned(), (u64::MAX, u64::MAX, u64::MAX)))
                .next_back()
                .map(|(_, w)| w.clone()),
        })
    }

    fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<&WorkflowCursor>,
        limit: usize,
    ) -> Result<Page<WorkflowDefinition, WorkflowCursor>, StoreError> {
        let inner = self.lock()?;
        let start = after.map(|c| (c.id.clone(), version_key(&c.version)));
        let mut items: Vec<WorkflowDefinition> = Vec::new();
        let mut more = false;
        let mut iter = inner
            .workflows
            .iter()
            .filter(|(key, _)| start.as_ref().is_none_or(|s| *key > s))
            .peekable();
        while let Some((key, workflow)) = iter.next() {
            if !filter.all_versions {
                // Only the highest version: skip when the next entry has the same id.
                if iter.peek().is_some_and(|(next, _)| next.0 == key.0) {
                    continue;
                }
            }
            if !filter.tags.iter().all(|t| workflow.tags.contains(t)) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(workflow.clone());
        }
        Ok(Page::of_workflows(items, more))
    }

    fn delete_workflow(&self, id: &str, version: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut inner = self.lock()?;
        let keys: Vec<(String, VersionKey)> = match version {
            Some(v) => vec![(id.to_owned(), version_key(v))],
            None => inner
                .workflows
                .range((id.to_owned(), (0, 0, 0))..=(id.to_owned(), (u64::MAX, u64::MAX, u64::MAX)))
                .map(|(k, _)| k.clone())
                .collect(),
        };
        Ok(keys
            .into_iter()
            .filter_map(|key| inner.workflows.remove(&key).map(|w| w.version))
            .collect())
    }
}
