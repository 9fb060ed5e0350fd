//! Checks of an execution's dependencies at submit: every task exists, none
//! is named twice, a BLOCKS target has not started, and no cycle forms.
//!
//! The new execution X has no task yet, so the only edges into it are its
//! BLOCKS (the blocked task B then waits for X). A cycle forms exactly when a
//! task X waits for (REQUIRES or OPTIONAL) already waits, directly or
//! transitively, for some B.

use std::collections::{HashSet, VecDeque};

use crate::model::{
    DependencyType, TaskDependency, TaskStatus, TaskType, ValidationError, index_path,
};
use crate::runtime::tasks::TaskRegistry;

/// Most tasks the cycle search visits; a larger dependency graph is refused
/// rather than searched without bound.
const MAX_VISITED: usize = 100_000;

/// See the module docs. Field paths are `dependencies[i].task_id`.
pub(crate) fn check(
    tasks: &TaskRegistry,
    dependencies: &[TaskDependency],
) -> Result<(), ValidationError> {
    let mut errors = ValidationError::new();
    let mut seen = HashSet::new();
    let mut waits = Vec::new();
    let mut blocks = HashSet::new();
    for (i, dep) in dependencies.iter().enumerate() {
        let field = format!("{}.task_id", index_path("dependencies", i));
        if dep.task_id.trim().is_empty() {
            errors.push(field, "must not be empty");
            continue;
        }
        if !seen.insert(dep.task_id.clone()) {
            errors.push(field, format!("task {} is named twice", dep.task_id));
            continue;
        }
        let task = match tasks.store().get_task(&dep.task_id) {
            Ok(Some(task)) => task,
            Ok(None) => {
                errors.push(field, format!("task {} not found", dep.task_id));
                continue;
            }
            Err(e) => {
                errors.push(
                    field,
                    format!("task {} could not be read: {e}", dep.task_id),
                );
                continue;
            }
        };
        match dep.dependency_type {
            DependencyType::Blocks => {
                if task.task_type == TaskType::Node && task.parent_id.is_some() {
                    errors.push(
                        field,
                        format!(
                            "task {} is a node of an execution; block its execution's root task instead",
                            dep.task_id
                        ),
                    );
                } else if task.status() != TaskStatus::Pending {
                    errors.push(
                        field,
                        format!(
                            "task {} is {}; only a PENDING task can be blocked",
                            dep.task_id,
                            task.status().as_str()
                        ),
                    );
                } else {
                    blocks.insert(dep.task_id.clone());
                }
            }
            DependencyType::Requires | DependencyType::Optional => {
                waits.push((field, dep.task_id.clone()));
            }
        }
    }
    if !blocks.is_empty() {
        for (field, start) in waits {
            if let Some(problem) = reaches(tasks, &start, &blocks) {
                errors.push(field, problem);
            }
        }
    }
    errors.into_result()
}

/// Whether `start`, following what each task waits for, reaches a task of
/// `targets`: the message naming the cycle, if so.
fn reaches(tasks: &TaskRegistry, start: &str, targets: &HashSet<String>) -> Option<String> {
    let mut visited = HashSet::new();
    let mut queue = VecDeque::from([start.to_owned()]);
    while let Some(id) = queue.pop_front() {
        if targets.contains(&id) {
            return Some(format!(
                "depending on task {start} forms a cycle: it waits for task {id}, which this execution blocks"
            ));
        }
        if !visited.insert(id.clone()) {
            continue;
        }
        if visited.len() > MAX_VISITED {
            return Some(format!(
                "the dependency graph behind task {start} has more than {MAX_VISITED} tasks"
            ));
        }
        if let Ok(Some(task)) = tasks.store().get_task(&id) {
            queue.extend(tasks.waits_on(&task));
        }
    }
    None
}
