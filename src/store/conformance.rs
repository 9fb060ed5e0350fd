//! One behaviour suite for every `Store`: each check takes a fresh, empty
//! store, and `conformance!` runs it against `MemoryStore`, `SqliteStore` and
//! `RedisStore` (on a real `redis-server`, one per check),
//! so the durable store answers exactly as the reference one does.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use serde_json::Value;

use super::{
    Changes, CreateOutcome, ExecutionCreateOutcome, ExecutionFilter, IdempotencyKey,
    NewExecutionRecord, Page, Store, TaskFilter, WorkflowCursor, WorkflowFilter,
};
use crate::model::events::{Event, EventContext, EventPayload};
use crate::model::{
    EventCategory, NewExecution, NewTask, NewWorkflow, RuntimeEvent, Task, TaskStatus, TaskType,
    WorkflowDefinition, WorkflowExecution,
};

/// Runs every named check against both stores, each on a fresh one.
macro_rules! conformance {
    ($($check:ident),+ $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $check() {
                    super::$check(&crate::store::MemoryStore::new());
                }
            )+
        }

        mod sqlite {
            $(
                #[test]
                fn $check() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let store = crate::store::SqliteStore::open(&dir.path().join("store.db"))
                        .expect("a fresh store opens");
                    super::$check(&store);
                }
            )+
        }

        mod redis {
            $(
                #[test]
                fn $check() {
                    let server = comfy_reality_fake_comfyui::RedisServer::start()
                        .expect("redis-server starts");
                    let store = crate::store::RedisStore::open(&super::redis_options(&server.url()))
                        .expect("a fresh redis store opens");
                    super::$check(&store);
                }
            )+
        }
    };
}

/// Options for a test's Redis store: short lease and timeouts.
fn redis_options(url: &str) -> crate::store::RedisOptions {
    crate::store::RedisOptions {
        url: url.to_owned(),
        key_prefix: "conformance".to_owned(),
        lease: std::time::Duration::from_secs(3),
        event_retention: 10_000,
        command_timeout: std::time::Duration::from_secs(2),
    }
}

conformance!(
    idempotent_task_create,
    put_and_get_tasks_keep_json_exact,
    task_listing_pages_in_creation_order_with_filters,
    child_ids_in_creation_order,
    executions_are_created_with_their_tasks_and_prompt,
    an_execution_is_read_with_its_root_and_the_roots_children,
    node_tasks_added_later_belong_to_their_execution,
    idempotent_execution_create,
    execution_listing_pages_in_creation_order_with_filters,
    events_after_and_last_sequence,
    workflows_order_by_id_then_numeric_version,
    workflows_delete,
    meta_values,
    changes_are_written_whole_and_answered_in_order,
    new_executions_are_written_with_the_changes_after_them,
);

/// `Store::write` with `new_executions`: each is stored as an unkeyed
/// `create_execution` would, before the rest of the same write (which may
/// change it, its tasks and add NODE tasks to it); a write whose other part
/// fails stores nothing of it.
fn new_executions_are_written_with_the_changes_after_them(store: &dyn Store) {
    let (answers, answered) = std::sync::mpsc::channel();
    let answer = |n: u32| -> super::Committed {
        let answers = answers.clone();
        Box::new(move |result| answers.send((n, result.is_ok())).unwrap())
    };
    // Prompts of their own, past the size a store may keep apart from the execution's record
    // (the SQLite store's `PROMPT_INLINE_BYTES`, 2 KiB).
    let mut first = new_execution("wf", &["blue"], 1);
    first.prompt = Bytes::from(vec![b'1'; 3000]);
    let mut second = new_execution("wf", &[], 0);
    second.prompt = Bytes::from(vec![b'2'; 3001]);
    let root = Task::clone(&first.tasks[0]);
    let mut queued = root.clone();
    queued.transition(TaskStatus::Queued).unwrap();
    let mut updated = WorkflowExecution::clone(&first.execution);
    updated.transition(TaskStatus::Queued).unwrap();
    let node = task_with("later node", TaskType::Node, &[], Some(&root.id));
    store.write(
        Changes {
            new_executions: vec![first.clone(), second.clone()],
            new_execution_tasks: Some((first.execution.id.clone(), vec![Arc::new(node.clone())])),
            tasks: vec![Arc::new(queued.clone())],
            executions: vec![Arc::new(updated.clone())],
            events: vec![Arc::new(event(1))],
        },
        answer(1),
    );
    let mut never = new_execution("wf", &[], 0);
    never.prompt = Bytes::from(vec![b'3'; 3002]);
    store.write(
        Changes {
            new_executions: vec![never.clone()],
            tasks: vec![Arc::new(task("never stored"))],
            ..Changes::default()
        },
        answer(2),
    );
    let outcomes: Vec<(u32, bool)> = answered.iter().take(2).collect();
    assert_eq!(outcomes, [(1, true), (2, false)]);

    assert_eq!(
        store.get_execution(&first.execution.id).unwrap(),
        Some(updated)
    );
    assert_eq!(
        store.execution_prompt(&first.execution.id).unwrap(),
        Some(first.prompt.clone())
    );
    assert_eq!(store.get_task(&root.id).unwrap(), Some(queued));
    assert_eq!(
        store.child_ids(&root.id).unwrap(),
        [first.tasks[1].id.clone(), node.id.clone()]
    );
    assert_eq!(
        store.execution_of_task(&node.id).unwrap(),
        Some(first.execution.id.clone())
    );
    let listed: Vec<String> = all_executions(store, &ExecutionFilter::default(), 10)
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        listed,
        [first.execution.id.clone(), second.execution.id.clone()]
    );
    // Listed under the state the same write gave it, not the one it was created in.
    let by_status = |status: TaskStatus| -> Vec<String> {
        let filter = ExecutionFilter {
            statuses: vec![status],
            ..ExecutionFilter::default()
        };
        all_executions(store, &filter, 10)
            .into_iter()
            .map(|e| e.id)
            .collect()
    };
    assert_eq!(
        by_status(TaskStatus::Queued),
        vec![first.execution.id.clone()]
    );
    assert_eq!(
        by_status(TaskStatus::Pending),
        vec![second.execution.id.clone()]
    );
    assert_eq!(
        store.execution_prompt(&second.execution.id).unwrap(),
        Some(second.prompt.clone())
    );
    assert_eq!(store.get_execution(&never.execution.id).unwrap(), None);
    assert_eq!(store.execution_prompt(&never.execution.id).unwrap(), None);
    assert_eq!(store.get_task(&never.tasks[0].id).unwrap(), None);
}

/// `Store::write`: a task change, an execution change, new node tasks and
/// their events land together; a write naming an unknown task changes
/// nothing; every write is answered, in the order it was handed over.
fn changes_are_written_whole_and_answered_in_order(store: &dyn Store) {
    let new = new_execution("wf", &[], 0);
    let root = Task::clone(&new.tasks[0]);
    let execution = created_execution(store.create_execution(new, None).unwrap());
    let (answers, answered) = std::sync::mpsc::channel();
    let answer = |n: u32| -> super::Committed {
        let answers = answers.clone();
        Box::new(move |result| answers.send((n, result.is_ok())).unwrap())
    };

    let mut running = root.clone();
    running.transition(TaskStatus::Queued).unwrap();
    let mut updated = execution.clone();
    updated.backend = Some("b".into());
    let node = task_with("node", TaskType::Node, &[], Some(&root.id));
    store.write(
        Changes {
            new_execution_tasks: Some((execution.id.clone(), vec![Arc::new(node.clone())])),
            tasks: vec![Arc::new(running.clone())],
            executions: vec![Arc::new(updated.clone())],
            events: vec![Arc::new(event(1)), Arc::new(event(2))],
            ..Changes::default()
        },
        answer(1),
    );
    // An unknown task fails the whole write: its event is not kept either.
    store.write(
        Changes {
            tasks: vec![Arc::new(task("never stored"))],
            events: vec![Arc::new(event(3))],
            ..Changes::default()
        },
        answer(2),
    );
    store.write(
        Changes {
            events: vec![Arc::new(event(4))],
            ..Changes::default()
        },
        answer(3),
    );
    let outcomes: Vec<(u32, bool)> = answered.iter().take(3).collect();
    assert_eq!(outcomes, [(1, true), (2, false), (3, true)]);

    assert_eq!(store.get_task(&root.id).unwrap(), Some(running));
    assert_eq!(
        store.get_execution(&execution.id).unwrap().unwrap().backend,
        Some("b".into())
    );
    assert_eq!(store.get_task(&node.id).unwrap(), Some(node.clone()));
    assert_eq!(
        store.execution_of_task(&node.id).unwrap(),
        Some(execution.id.clone())
    );
    let kept: Vec<u64> = store
        .events_after(0, 10)
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(kept, [1, 2, 4]);
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

pub(super) fn task(name: &str) -> Task {
    task_with(name, TaskType::Node, &[], None)
}

pub(super) fn task_with(
    name: &str,
    task_type: TaskType,
    tags: &[&str],
    parent: Option<&str>,
) -> Task {
    Task::new(NewTask {
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        parent_id: parent.map(str::to_owned),
        ..NewTask::new(name, task_type)
    })
    .expect("a valid task")
}

pub(super) fn key(key: &str, fingerprint: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        key: key.into(),
        fingerprint: fingerprint.into(),
    })
}

pub(super) fn created(outcome: CreateOutcome) -> Task {
    match outcome {
        CreateOutcome::Created(task) => task,
        CreateOutcome::Existing { .. } => panic!("expected a new task, got {outcome:?}"),
    }
}

/// An execution of `workflow_id` with a root task tagged `tags` and `nodes`
/// node tasks under it.
pub(super) fn new_execution(workflow_id: &str, tags: &[&str], nodes: usize) -> NewExecutionRecord {
    let root = task_with("root", TaskType::Workflow, tags, None);
    let mut tasks = vec![root.clone()];
    for i in 0..nodes {
        tasks.push(task_with(
            &format!("node {i}"),
            TaskType::Node,
            tags,
            Some(&root.id),
        ));
    }
    let execution = WorkflowExecution::new(NewExecution {
        workflow_id: workflow_id.into(),
        root_task_id: Some(root.id.clone()),
        ..NewExecution::default()
    })
    .expect("a valid execution");
    NewExecutionRecord {
        execution: Arc::new(execution),
        tasks: tasks.into_iter().map(Arc::new).collect(),
        prompt: Bytes::from(format!(
            r#"{{"1":{{"class_type":"SaveImage","seed":{}}}}}"#,
            u64::MAX
        )),
    }
}

pub(super) fn created_execution(outcome: ExecutionCreateOutcome) -> WorkflowExecution {
    match outcome {
        ExecutionCreateOutcome::Created(execution) => execution,
        ExecutionCreateOutcome::Existing { .. } => {
            panic!("expected a new execution, got {outcome:?}")
        }
    }
}

pub(super) fn event(sequence: u64) -> Event {
    let runtime = RuntimeEvent::new(
        EventCategory::System,
        "test.event",
        format!("event {sequence}"),
    )
    .expect("a valid event");
    Event {
        sequence,
        timestamp: Utc::now(),
        payload: EventPayload::Runtime(Box::new(runtime)),
        context: EventContext::default(),
    }
}

pub(super) fn workflow(id: &str, version: &str, tags: &[&str]) -> WorkflowDefinition {
    let mut workflow = WorkflowDefinition::from_api_json(
        NewWorkflow {
            version: Some(version.into()),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..NewWorkflow::new(format!("{id} {version}"))
        },
        r#"{"9": {"class_type": "SaveImage", "inputs": {"seed": 18446744073709551615}}}"#,
    )
    .expect("a valid workflow");
    workflow.id = id.into();
    workflow
}

fn ids(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.id.as_str()).collect()
}

/// Every task a filter selects, read page by page with `limit`.
fn all_tasks(store: &dyn Store, filter: &TaskFilter, limit: usize) -> Vec<Task> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let Page { items, next } = store.list_tasks(filter, after, limit).expect("lists");
        assert!(items.len() <= limit);
        out.extend(items);
        match next {
            Some(cursor) => after = Some(cursor),
            None => return out,
        }
    }
}

/// Every execution a filter selects, read page by page with `limit`.
fn all_executions(
    store: &dyn Store,
    filter: &ExecutionFilter,
    limit: usize,
) -> Vec<WorkflowExecution> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let Page { items, next } = store.list_executions(filter, after, limit).expect("lists");
        assert!(items.len() <= limit);
        out.extend(items);
        match next {
            Some(cursor) => after = Some(cursor),
            None => return out,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

fn idempotent_task_create(store: &dyn Store) {
    let first = created(store.create_task(task("a"), key("k1", "fp-a")).unwrap());
    match store
        .create_task(task("a again"), key("k1", "fp-a"))
        .unwrap()
    {
        CreateOutcome::Existing { task, same_body } => {
            assert_eq!(task, first);
            assert!(same_body);
        }
        other => panic!("expected the first task back, got {other:?}"),
    }
    match store
        .create_task(task("a other"), key("k1", "fp-b"))
        .unwrap()
    {
        CreateOutcome::Existing { task, same_body } => {
            assert_eq!(task.id, first.id);
            assert!(!same_body);
        }
        other => panic!("expected the first task back, got {other:?}"),
    }
    // Another key, or none, creates.
    let second = created(store.create_task(task("b"), key("k2", "fp-a")).unwrap());
    let third = created(store.create_task(task("c"), None).unwrap());
    let all = all_tasks(store, &TaskFilter::default(), 10);
    assert_eq!(ids(&all), [&first.id, &second.id, &third.id]);
    // Task keys and execution keys are separate.
    assert_eq!(store.execution_for_key("k1").unwrap(), None);
}

fn put_and_get_tasks_keep_json_exact(store: &dyn Store) {
    let mut original = task("exact");
    let big: Value = serde_json::from_str("123456789012345678901234567890.000000000000000000001")
        .expect("arbitrary precision");
    let metadata = std::sync::Arc::make_mut(&mut original.metadata);
    metadata.insert("seed".into(), Value::from(u64::MAX));
    metadata.insert("big".into(), big.clone());
    let original = created(store.create_task(original, None).unwrap());
    assert_eq!(
        store.get_task(&original.id).unwrap().as_ref(),
        Some(&original)
    );
    assert_eq!(store.get_task("missing").unwrap(), None);

    let mut changed = original.clone();
    changed.transition(TaskStatus::Queued).unwrap();
    changed.transition(TaskStatus::Running).unwrap();
    changed.set_progress(0.25).unwrap();
    changed.tags.insert("now-tagged".into());
    assert!(store.put_task(&changed).unwrap());
    let read = store.get_task(&original.id).unwrap().expect("stored");
    assert_eq!(read, changed);
    assert_eq!(read.metadata["big"].to_string(), big.to_string());
    assert_eq!(read.metadata["seed"].to_string(), "18446744073709551615");
    // The listing columns follow the update.
    let running = TaskFilter {
        statuses: vec![TaskStatus::Running],
        tags: vec!["now-tagged".into()],
        ..TaskFilter::default()
    };
    assert_eq!(ids(&all_tasks(store, &running, 5)), [&original.id]);
    changed.tags.clear();
    assert!(store.put_task(&changed).unwrap());
    assert!(all_tasks(store, &running, 5).is_empty());
    // An update that keeps its status keeps it in that status's listing.
    changed.set_progress(0.5).unwrap();
    assert!(store.put_task(&changed).unwrap());
    let running_now = TaskFilter {
        statuses: vec![TaskStatus::Running],
        ..TaskFilter::default()
    };
    assert_eq!(ids(&all_tasks(store, &running_now, 5)), [&original.id]);
    assert_eq!(store.get_task(&original.id).unwrap(), Some(changed));

    assert!(!store.put_task(&task("never created")).unwrap());
}

fn task_listing_pages_in_creation_order_with_filters(store: &dyn Store) {
    let parent = created(
        store
            .create_task(task_with("p", TaskType::Workflow, &["x"], None), None)
            .unwrap(),
    );
    let specs: [(&str, TaskType, &[&str], bool); 6] = [
        ("n1", TaskType::Node, &["x", "y"], true),
        ("n2", TaskType::Node, &["y"], false),
        ("b1", TaskType::Cleanup, &["x"], true),
        ("n3", TaskType::Node, &[], true),
        ("s1", TaskType::System, &["x", "y", "z"], false),
        ("n4", TaskType::Node, &["x"], true),
    ];
    let mut made = vec![parent.clone()];
    for (name, task_type, tags, child) in specs {
        let parent_id = child.then_some(parent.id.as_str());
        made.push(created(
            store
                .create_task(task_with(name, task_type, tags, parent_id), None)
                .unwrap(),
        ));
    }
    // n2 and n4 move on.
    for index in [2, 6] {
        let mut moved = made[index].clone();
        moved.transition(TaskStatus::Queued).unwrap();
        assert!(store.put_task(&moved).unwrap());
        made[index] = moved;
    }
    let names = |tasks: &[Task]| tasks.iter().map(|t| t.name.clone()).collect::<Vec<_>>();

    for limit in [1, 2, 3, 7, 100] {
        assert_eq!(
            names(&all_tasks(store, &TaskFilter::default(), limit)),
            ["p", "n1", "n2", "b1", "n3", "s1", "n4"],
            "limit {limit}"
        );
    }
    let cases: Vec<(TaskFilter, Vec<&str>)> = vec![
        (
            TaskFilter {
                statuses: vec![TaskStatus::Queued],
                ..TaskFilter::default()
            },
            vec!["n2", "n4"],
        ),
        (
            TaskFilter {
                statuses: vec![TaskStatus::Queued, TaskStatus::Pending],
                types: vec![TaskType::Node],
                ..TaskFilter::default()
            },
            vec!["n1", "n2", "n3", "n4"],
        ),
        (
            TaskFilter {
                tags: vec!["x".into(), "y".into()],
                ..TaskFilter::default()
            },
            vec!["n1", "s1"],
        ),
        (
            TaskFilter {
                parent_id: Some(parent.id.clone()),
                tags: vec!["x".into()],
                ..TaskFilter::default()
            },
            vec!["n1", "b1", "n4"],
        ),
        (
            TaskFilter {
                types: vec![TaskType::Cleanup, TaskType::System],
                ..TaskFilter::default()
            },
            vec!["b1", "s1"],
        ),
        (
            TaskFilter {
                tags: vec!["nobody".into()],
                ..TaskFilter::default()
            },
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        for limit in [1, 2, 10] {
            assert_eq!(
                names(&all_tasks(store, &filter, limit)),
                expected,
                "{filter:?} limit {limit}"
            );
        }
    }

    // A full last page has no cursor; a page with more behind it has one that resumes.
    let page = store.list_tasks(&TaskFilter::default(), None, 7).unwrap();
    assert_eq!(page.items.len(), 7);
    assert_eq!(page.next, None);
    let page = store.list_tasks(&TaskFilter::default(), None, 3).unwrap();
    let rest = store
        .list_tasks(&TaskFilter::default(), page.next, 100)
        .unwrap();
    assert_eq!(names(&rest.items), ["b1", "n3", "s1", "n4"]);
    let empty = store.list_tasks(&TaskFilter::default(), None, 0).unwrap();
    assert!(empty.items.is_empty());
    assert_eq!(empty.next, None);
    // A task created later lists after every cursor handed out before.
    let late = created(store.create_task(task("late"), None).unwrap());
    let rest = store
        .list_tasks(&TaskFilter::default(), page.next, 100)
        .unwrap();
    assert_eq!(
        rest.items.last().map(|t| t.id.as_str()),
        Some(late.id.as_str())
    );
}

fn child_ids_in_creation_order(store: &dyn Store) {
    let parent = created(store.create_task(task("parent"), None).unwrap());
    let other = created(store.create_task(task("other"), None).unwrap());
    let mut children = Vec::new();
    for i in 0..5 {
        let under = if i == 2 { &other.id } else { &parent.id };
        let child = created(
            store
                .create_task(
                    task_with(&format!("c{i}"), TaskType::Node, &[], Some(under)),
                    None,
                )
                .unwrap(),
        );
        if i != 2 {
            children.push(child.id);
        }
    }
    assert_eq!(store.child_ids(&parent.id).unwrap(), children);
    assert_eq!(store.child_ids(&other.id).unwrap().len(), 1);
    assert!(store.child_ids("nobody").unwrap().is_empty());
}

/// `Store::execution_with_tasks`: the execution, its root, then the root's
/// children in creation order, NODE tasks added later included; what the
/// single reads give, and `None` for an unknown execution.
fn an_execution_is_read_with_its_root_and_the_roots_children(store: &dyn Store) {
    let new = new_execution("wf", &[], 2);
    let tasks: Vec<Task> = new.tasks.iter().map(|task| Task::clone(task)).collect();
    let execution = created_execution(store.create_execution(new, None).unwrap());
    let (answers, answered) = std::sync::mpsc::channel();
    let later = task_with("later node", TaskType::Node, &[], Some(&tasks[0].id));
    store.write(
        Changes {
            new_execution_tasks: Some((execution.id.clone(), vec![Arc::new(later.clone())])),
            ..Changes::default()
        },
        Box::new(move |result| answers.send(result.is_ok()).unwrap()),
    );
    assert!(answered.recv().unwrap());
    let (read, with) = store
        .execution_with_tasks(&execution.id)
        .unwrap()
        .expect("the execution is there");
    assert_eq!(read, execution);
    let expected: Vec<Task> = tasks.iter().cloned().chain([later]).collect();
    assert_eq!(with, expected);
    let singly: Vec<Task> = std::iter::once(tasks[0].id.clone())
        .chain(store.child_ids(&tasks[0].id).unwrap())
        .map(|id| store.get_task(&id).unwrap().unwrap())
        .collect();
    assert_eq!(with, singly);
    // The same tasks by their root alone (an execution listed, read already).
    assert_eq!(store.root_and_children(&tasks[0].id).unwrap(), expected);
    assert!(store.root_and_children("missing").unwrap().is_empty());
    assert_eq!(store.execution_with_tasks("missing").unwrap(), None);
}

fn executions_are_created_with_their_tasks_and_prompt(store: &dyn Store) {
    let standalone = created(store.create_task(task("standalone"), None).unwrap());
    let mut new = new_execution("wf", &["blue"], 2);
    let prompt = new.prompt.clone();
    let tasks: Vec<Task> = new.tasks.iter().map(|task| Task::clone(task)).collect();
    // Tasks are stored as tasks, never inside the execution.
    Arc::make_mut(&mut new.execution).tasks = vec![standalone.clone()];
    let execution = created_execution(store.create_execution(new, key("e1", "fp")).unwrap());
    assert!(execution.tasks.is_empty());
    assert_eq!(
        store.get_execution(&execution.id).unwrap().as_ref(),
        Some(&execution)
    );
    assert_eq!(store.execution_prompt(&execution.id).unwrap(), Some(prompt));
    assert_eq!(store.get_execution("missing").unwrap(), None);
    assert_eq!(store.execution_prompt("missing").unwrap(), None);
    for task in &tasks {
        assert_eq!(store.get_task(&task.id).unwrap().as_ref(), Some(task));
        assert_eq!(
            store.execution_of_task(&task.id).unwrap(),
            Some(execution.id.clone())
        );
    }
    assert_eq!(store.execution_of_task(&standalone.id).unwrap(), None);
    assert_eq!(store.execution_of_task("missing").unwrap(), None);
    assert_eq!(
        store.child_ids(&tasks[0].id).unwrap(),
        [tasks[1].id.clone(), tasks[2].id.clone()]
    );
    assert_eq!(
        ids(&all_tasks(store, &TaskFilter::default(), 2)),
        [&standalone.id, &tasks[0].id, &tasks[1].id, &tasks[2].id]
    );
    assert_eq!(
        store.execution_for_key("e1").unwrap(),
        Some(("fp".to_owned(), execution.id.clone()))
    );
    assert_eq!(store.execution_for_key("e2").unwrap(), None);

    let mut changed = execution.clone();
    changed.transition(TaskStatus::Queued).unwrap();
    changed.prompt_id = Some("prompt-1".into());
    changed.artifacts.push("out/ComfyUI_00001_.png".into());
    changed.tasks = tasks.clone();
    assert!(store.put_execution(&changed).unwrap());
    changed.tasks = Vec::new();
    assert_eq!(
        store.get_execution(&execution.id).unwrap(),
        Some(changed.clone())
    );
    // The listing columns follow an update that changes them, and stay with
    // one that does not.
    let listed = |statuses: Vec<TaskStatus>, workflow_id: &str| {
        let filter = ExecutionFilter {
            statuses,
            workflow_id: Some(workflow_id.into()),
            ..ExecutionFilter::default()
        };
        all_executions(store, &filter, 5)
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(vec![TaskStatus::Queued], &changed.workflow_id),
        std::slice::from_ref(&execution.id)
    );
    changed.artifacts.push("out/ComfyUI_00002_.png".into());
    assert!(store.put_execution(&changed).unwrap());
    assert_eq!(
        listed(vec![TaskStatus::Queued], &changed.workflow_id),
        std::slice::from_ref(&execution.id)
    );
    changed.transition(TaskStatus::Running).unwrap();
    assert!(store.put_execution(&changed).unwrap());
    assert!(listed(vec![TaskStatus::Queued], &changed.workflow_id).is_empty());
    assert_eq!(
        listed(vec![TaskStatus::Running], &changed.workflow_id),
        std::slice::from_ref(&execution.id)
    );
    assert_eq!(store.get_execution(&execution.id).unwrap(), Some(changed));
    let unknown = Arc::unwrap_or_clone(new_execution("wf", &[], 0).execution);
    assert!(!store.put_execution(&unknown).unwrap());
}

fn node_tasks_added_later_belong_to_their_execution(store: &dyn Store) {
    let new = new_execution("wf", &["blue"], 0);
    let root = new.tasks[0].clone();
    let execution = created_execution(store.create_execution(new, None).unwrap());
    let later = created(store.create_task(task("created after"), None).unwrap());
    assert!(store.child_ids(&root.id).unwrap().is_empty());
    let nodes: Vec<Task> = (0..3)
        .map(|i| {
            task_with(
                &format!("node {i}"),
                TaskType::Node,
                &["blue"],
                Some(&root.id),
            )
        })
        .collect();
    store.add_execution_tasks(&execution.id, &nodes).unwrap();
    assert_eq!(
        store.child_ids(&root.id).unwrap(),
        nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>()
    );
    for node in &nodes {
        assert_eq!(store.get_task(&node.id).unwrap().as_ref(), Some(node));
        assert_eq!(
            store.execution_of_task(&node.id).unwrap(),
            Some(execution.id.clone())
        );
    }
    // Listing order is the order of storing, so the nodes come after a task
    // created before them.
    let listed = all_tasks(store, &TaskFilter::default(), 2);
    assert_eq!(
        ids(&listed),
        [
            &root.id,
            &later.id,
            &nodes[0].id,
            &nodes[1].id,
            &nodes[2].id
        ]
    );
}

fn idempotent_execution_create(store: &dyn Store) {
    let first = created_execution(
        store
            .create_execution(new_execution("wf", &[], 1), key("k", "fp-1"))
            .unwrap(),
    );
    let again = new_execution("wf", &[], 1);
    let again_root = again.tasks[0].id.clone();
    match store.create_execution(again, key("k", "fp-1")).unwrap() {
        ExecutionCreateOutcome::Existing {
            execution,
            same_body,
        } => {
            assert_eq!(execution, first);
            assert!(same_body);
        }
        other => panic!("expected the first execution back, got {other:?}"),
    }
    // Nothing of the refused request was stored.
    assert_eq!(store.get_task(&again_root).unwrap(), None);
    match store
        .create_execution(new_execution("wf", &[], 1), key("k", "fp-2"))
        .unwrap()
    {
        ExecutionCreateOutcome::Existing {
            execution,
            same_body,
        } => {
            assert_eq!(execution.id, first.id);
            assert!(!same_body);
        }
        other => panic!("expected the first execution back, got {other:?}"),
    }
    // Execution keys and task keys are separate.
    created(store.create_task(task("t"), key("k", "fp-1")).unwrap());
    let second = created_execution(
        store
            .create_execution(new_execution("wf", &[], 0), None)
            .unwrap(),
    );
    let all = all_executions(store, &ExecutionFilter::default(), 1);
    assert_eq!(
        all.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&first.id, &second.id]
    );
}

fn execution_listing_pages_in_creation_order_with_filters(store: &dyn Store) {
    let specs: [(&str, &[&str], bool); 5] = [
        ("wf-a", &["red"], false),
        ("wf-b", &["red", "blue"], true),
        ("wf-a", &["blue"], true),
        ("wf-a", &[], false),
        ("wf-b", &["red"], false),
    ];
    let mut made = Vec::new();
    for (workflow_id, tags, queued) in specs {
        // Standalone tasks in between share nothing with executions.
        created(
            store
                .create_task(task_with("noise", TaskType::Node, tags, None), None)
                .unwrap(),
        );
        let mut execution = created_execution(
            store
                .create_execution(new_execution(workflow_id, tags, 1), None)
                .unwrap(),
        );
        if queued {
            execution.transition(TaskStatus::Queued).unwrap();
            assert!(store.put_execution(&execution).unwrap());
        }
        made.push(execution.id);
    }
    let cases: Vec<(ExecutionFilter, Vec<usize>)> = vec![
        (ExecutionFilter::default(), vec![0, 1, 2, 3, 4]),
        (
            ExecutionFilter {
                statuses: vec![TaskStatus::Queued],
                ..ExecutionFilter::default()
            },
            vec![1, 2],
        ),
        (
            ExecutionFilter {
                workflow_id: Some("wf-a".into()),
                ..ExecutionFilter::default()
            },
            vec![0, 2, 3],
        ),
        (
            ExecutionFilter {
                tags: vec!["red".into()],
                ..ExecutionFilter::default()
            },
            vec![0, 1, 4],
        ),
        (
            ExecutionFilter {
                statuses: vec![TaskStatus::Pending],
                workflow_id: Some("wf-b".into()),
                tags: vec!["red".into()],
            },
            vec![4],
        ),
        (
            ExecutionFilter {
                tags: vec!["red".into(), "blue".into()],
                ..ExecutionFilter::default()
            },
            vec![1],
        ),
        (
            ExecutionFilter {
                workflow_id: Some("wf-none".into()),
                ..ExecutionFilter::default()
            },
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        let expected: Vec<&String> = expected.into_iter().map(|i| &made[i]).collect();
        for limit in [1, 2, 10] {
            let got = all_executions(store, &filter, limit);
            assert_eq!(
                got.iter().map(|e| &e.id).collect::<Vec<_>>(),
                expected,
                "{filter:?} limit {limit}"
            );
        }
    }
    let empty = store
        .list_executions(&ExecutionFilter::default(), None, 0)
        .unwrap();
    assert!(empty.items.is_empty() && empty.next.is_none());
}

fn events_after_and_last_sequence(store: &dyn Store) {
    assert_eq!(store.last_event_sequence().unwrap(), 0);
    assert!(store.events_after(0, 10).unwrap().is_empty());
    let events: Vec<Event> = (1..=5).map(event).collect();
    for event in &events {
        store.append_event(event).unwrap();
    }
    assert_eq!(store.last_event_sequence().unwrap(), 5);
    assert_eq!(store.events_after(0, 10).unwrap(), events);
    assert_eq!(store.events_after(2, 2).unwrap(), events[2..4]);
    assert!(store.events_after(5, 10).unwrap().is_empty());
    assert!(store.events_after(1, 0).unwrap().is_empty());
}

fn workflows_order_by_id_then_numeric_version(store: &dyn Store) {
    for (id, version, tags) in [
        ("w1", "1.2.0", &["a"][..]),
        ("w1", "1.10.0", &["b"][..]),
        ("w0", "2.0.0", &["a", "b"][..]),
        ("w1", "1.9.0", &["a"][..]),
        ("w2", "1.0.0", &["a"][..]),
    ] {
        let stored = store.insert_workflow(workflow(id, version, tags)).unwrap();
        assert_eq!(stored.as_ref().map(|w| w.version.as_str()), Ok(version));
    }
    let existing = store
        .insert_workflow(workflow("w1", "1.9.0", &["other"]))
        .unwrap();
    let existing = existing.expect_err("id and version are taken");
    assert_eq!(existing, workflow_from(store, "w1", Some("1.9.0")));
    assert!(existing.tags.contains("a"));

    assert_eq!(workflow_from(store, "w1", None).version, "1.10.0");
    assert_eq!(workflow_from(store, "w1", Some("1.2.0")).version, "1.2.0");
    assert_eq!(store.get_workflow("w1", Some("3.0.0")).unwrap(), None);
    assert_eq!(store.get_workflow("nobody", None).unwrap(), None);
    let stored = workflow_from(store, "w0", None);
    assert_eq!(
        stored.workflow_json,
        workflow("w0", "2.0.0", &[]).workflow_json
    );

    let listed = |filter: &WorkflowFilter, limit: usize| {
        let mut out = Vec::new();
        let mut after: Option<WorkflowCursor> = None;
        loop {
            let page = store.list_workflows(filter, after.as_ref(), limit).unwrap();
            assert!(page.items.len() <= limit);
            out.extend(page.items.iter().map(|w| format!("{}@{}", w.id, w.version)));
            match page.next {
                Some(cursor) => after = Some(cursor),
                None => return out,
            }
        }
    };
    let every = WorkflowFilter {
        all_versions: true,
        ..WorkflowFilter::default()
    };
    for limit in [1, 2, 10] {
        assert_eq!(
            listed(&every, limit),
            ["w0@2.0.0", "w1@1.2.0", "w1@1.9.0", "w1@1.10.0", "w2@1.0.0"]
        );
        assert_eq!(
            listed(&WorkflowFilter::default(), limit),
            ["w0@2.0.0", "w1@1.10.0", "w2@1.0.0"]
        );
        // Only the highest version counts, then the tags.
        let tagged_a = WorkflowFilter {
            tags: vec!["a".into()],
            ..WorkflowFilter::default()
        };
        assert_eq!(listed(&tagged_a, limit), ["w0@2.0.0", "w2@1.0.0"]);
        let every_a = WorkflowFilter {
            tags: vec!["a".into()],
            all_versions: true,
        };
        assert_eq!(
            listed(&every_a, limit),
            ["w0@2.0.0", "w1@1.2.0", "w1@1.9.0", "w2@1.0.0"]
        );
    }
    let page = store.list_workflows(&every, None, 0).unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
}

fn workflow_from(store: &dyn Store, id: &str, version: Option<&str>) -> WorkflowDefinition {
    store
        .get_workflow(id, version)
        .unwrap()
        .unwrap_or_else(|| panic!("workflow {id} {version:?} is stored"))
}

fn workflows_delete(store: &dyn Store) {
    for version in ["1.10.0", "1.2.0", "1.9.0"] {
        store
            .insert_workflow(workflow("w", version, &[]))
            .unwrap()
            .unwrap();
    }
    store
        .insert_workflow(workflow("v", "1.0.0", &[]))
        .unwrap()
        .unwrap();
    assert_eq!(
        store.delete_workflow("w", Some("1.9.0")).unwrap(),
        ["1.9.0"]
    );
    assert!(
        store
            .delete_workflow("w", Some("1.9.0"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(workflow_from(store, "w", None).version, "1.10.0");
    assert_eq!(
        store.delete_workflow("w", None).unwrap(),
        ["1.2.0", "1.10.0"]
    );
    assert_eq!(store.get_workflow("w", None).unwrap(), None);
    assert!(store.delete_workflow("w", None).unwrap().is_empty());
    assert_eq!(workflow_from(store, "v", None).version, "1.0.0");
    // A deleted version can be registered again.
    store
        .insert_workflow(workflow("w", "1.9.0", &[]))
        .unwrap()
        .unwrap();
}

fn meta_values(store: &dyn Store) {
    assert_eq!(store.meta("instance").unwrap(), None);
    store.set_meta("instance", "one").unwrap();
    store.set_meta("other", "x").unwrap();
    assert_eq!(store.meta("instance").unwrap().as_deref(), Some("one"));
    store.set_meta("instance", "two").unwrap();
    assert_eq!(store.meta("instance").unwrap().as_deref(), Some("two"));
    assert_eq!(store.meta("other").unwrap().as_deref(), Some("x"));
}
