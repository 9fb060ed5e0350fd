//! The executor under faults, end to end: the real server on port 0 in front
//! of fake ComfyUI backends that pipeline, lose prompts, refuse connections,
//! answer 500, run out of memory, go silent or take too long. Deterministic:
//! tests wait for states (of the execution, or of the fake's own queue),
//! never for fixed times, and assert on what happened, not on how long it took.
//!
//! Faults that make `POST /prompt` fail are armed with background probes
//! slowed down (`probe_interval_seconds = 30`): a probe that saw the fault
//! first would mark the backend down and the prompt would never be posted, so
//! the test would check nothing. The prober still runs at once when an
//! attempt reports a transport failure (`Backend::suspect`).

mod common;

use comfy_reality::config::Config;
use comfy_reality::pb::{
    CancelExecutionRequest, ExecuteWorkflowRequest, Task, TaskPriority, TaskStatus,
    WorkflowExecution, execute_workflow_request::Workflow,
};
use comfy_reality_fake_comfyui::{FakeComfy, capture_test_logs};
use common::exec::{Harness, delay_workflow, harness, image_workflow, status};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Pipelining, take-back, load sharing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pipelining_hands_the_next_prompt_to_the_backend_while_one_executes() {
    capture_test_logs();
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 2).await;
    let a = h
        .execute(&delay_workflow(1.5, 1), TaskPriority::Normal)
        .await;
    let b = h
        .execute(&delay_workflow(0.2, 2), TaskPriority::Normal)
        .await;
    h.wait_for(&a.id, "A executing", executing).await;
    let a_prompt = prompt_id(&h.get(&a.id).await);
    let b_prompt = prompt_id(&h.get(&b.id).await);
    wait_fake_queue(&h.fakes[0], "A running and B pending on the fake", |q| {
        q.running.contains(&a_prompt) && q.pending.contains(&b_prompt)
    })
    .await;
    // B is RUNNING (handed over) but not started: the backend holds it.
    let b_now = h.get(&b.id).await;
    assert_eq!(status(&b_now), TaskStatus::Running, "{b_now:?}");
    assert_eq!(
        root(&b_now).progress_message.as_deref(),
        Some("handed to gpu-0; waiting in its queue"),
        "{b_now:?}"
    );
    assert_eq!(b_now.backend.as_deref(), Some("gpu-0"));
    let a_now = h.get(&a.id).await;
    assert_eq!(
        root(&a_now).progress_message.as_deref(),
        Some("executing on gpu-0")
    );

    let a_done = h.wait_end(&a.id).await;
    let b_done = h.wait_end(&b.id).await;
    assert_eq!(status(&a_done), TaskStatus::Completed, "{a_done:?}");
    assert_eq!(status(&b_done), TaskStatus::Completed, "{b_done:?}");
    // The same prompt ran (it was never re-posted), after A's, on the backend's clock.
    assert_eq!(prompt_id(&b_done), b_prompt);
    assert_eq!(root(&b_done).retry_count, 0);
    let fake = &h.fakes[0];
    assert!(
        history_time(fake, &b_prompt, "execution_start").await
            >= history_time(fake, &a_prompt, "execution_success").await,
        "B started before A ended"
    );
}

#[tokio::test]
async fn a_critical_execution_takes_back_a_low_one_waiting_in_the_backend_queue() {
    capture_test_logs();
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 2).await;
    let a = h
        .execute(&delay_workflow(2.0, 1), TaskPriority::Normal)
        .await;
    h.wait_for(&a.id, "A executing", executing).await;
    let b = h.execute(&delay_workflow(0.1, 2), TaskPriority::Low).await;
    h.wait_for(&b.id, "B handed over", |e| status(e) == TaskStatus::Running)
        .await;
    let b_first_prompt = prompt_id(&h.get(&b.id).await);
    wait_fake_queue(&h.fakes[0], "B pending on the fake", |q| {
        q.pending.contains(&b_first_prompt)
    })
    .await;

    let c = h
        .execute(&delay_workflow(0.1, 3), TaskPriority::Critical)
        .await;
    h.wait_for(&b.id, "B taken back into the runtime's queue", |e| {
        status(e) == TaskStatus::Queued
    })
    .await;
    let b_back = h.get(&b.id).await;
    assert_eq!(
        root(&b_back).progress_message.as_deref(),
        Some("taken back from the backend's queue for a more urgent execution"),
        "{b_back:?}"
    );
    let queue = fake_queue(&h.fakes[0]).await;
    assert!(
        !queue.pending.contains(&b_first_prompt) && !queue.running.contains(&b_first_prompt),
        "B's prompt is still on the backend: {queue:?}"
    );

    let a_done = h.wait_end(&a.id).await;
    let b_done = h.wait_end(&b.id).await;
    let c_done = h.wait_end(&c.id).await;
    for done in [&a_done, &b_done, &c_done] {
        assert_eq!(status(done), TaskStatus::Completed, "{done:?}");
    }
    let fake = &h.fakes[0];
    assert!(
        history_time(fake, &prompt_id(&c_done), "execution_success").await
            <= history_time(fake, &prompt_id(&b_done), "execution_start").await,
        "C did not run before B"
    );
    // B ran as a new prompt; the one taken back never ran. A take-back is no failure.
    assert_ne!(prompt_id(&b_done), b_first_prompt);
    assert_eq!(
        fake_history(&h.fakes[0], &b_first_prompt).await,
        json!({}),
        "the taken-back prompt ran anyway"
    );
    assert_eq!(root(&b_done).retry_count, 0, "{b_done:?}");
}

#[tokio::test]
async fn two_backends_share_the_load() {
    capture_test_logs();
    let h = harness(2, |c| c.runtime.max_concurrent_tasks = 4).await;
    let mut ids = Vec::new();
    for nonce in 0..4 {
        let e = h
            .execute(&delay_workflow(0.5, nonce), TaskPriority::Normal)
            .await;
        ids.push(e.id);
    }
    let mut per_backend = [0, 0];
    for id in &ids {
        let done = h.wait_end(id).await;
        assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
        let index = match done.backend.as_deref() {
            Some("gpu-0") => 0,
            Some("gpu-1") => 1,
            other => panic!("unexpected backend {other:?}"),
        };
        per_backend[index] += 1;
        // The prompt really ran on the backend the execution names.
        let history = fake_history(&h.fakes[index], &prompt_id(&done)).await;
        assert!(
            history.get(prompt_id(&done)).is_some(),
            "{index}: {history}"
        );
    }
    assert_eq!(per_backend, [2, 2], "least loaded first");
}

// ---------------------------------------------------------------------------------------------
// A backend dying mid-run
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_backend_refusing_connections_mid_run_moves_its_execution_to_the_other() {
    capture_test_logs();
    let h = harness(2, |c| {
        // One probe fails at once instead of after its own retries.
        for server in &mut c.servers {
            server.max_retries = 0;
        }
    })
    .await;
    let a = h
        .execute(&delay_workflow(2.0, 1), TaskPriority::Normal)
        .await;
    h.wait_for(&a.id, "A executing", executing).await;
    let first = h.get(&a.id).await;
    let dying = backend_index(&first);
    h.fakes[dying].faults().set_refuse_connections(true);

    let done = h.wait_end(&a.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    assert_eq!(
        done.backend.as_deref(),
        Some(format!("gpu-{}", 1 - dying).as_str()),
        "{done:?}"
    );
    assert_eq!(root(&done).retry_count, 1, "{done:?}");
    assert_ne!(prompt_id(&done), prompt_id(&first));
}

#[tokio::test]
async fn a_backend_shut_down_mid_run_moves_its_execution_to_the_other() {
    capture_test_logs();
    let mut h = harness(2, |c| {
        for server in &mut c.servers {
            server.max_retries = 0;
        }
    })
    .await;
    let a = h
        .execute(&delay_workflow(2.0, 1), TaskPriority::Normal)
        .await;
    h.wait_for(&a.id, "A executing", executing).await;
    let first = h.get(&a.id).await;
    let dying = backend_index(&first);
    h.fakes.remove(dying).shutdown().await;

    let done = h.wait_end(&a.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    assert_eq!(
        done.backend.as_deref(),
        Some(format!("gpu-{}", 1 - dying).as_str()),
        "{done:?}"
    );
    assert_eq!(root(&done).retry_count, 1, "{done:?}");
}

// ---------------------------------------------------------------------------------------------
// Retry classes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http_500_on_post_prompt_is_retried_until_it_succeeds() {
    capture_test_logs();
    let h = harness(1, |c| {
        no_background_probes(c);
        // Room to clear the fault before the retry is due.
        c.runtime.task_retry_delay_seconds = 0.5;
    })
    .await;
    h.fakes[0].faults().set_http_500(true);
    let e = h
        .execute(&delay_workflow(0.1, 1), TaskPriority::Normal)
        .await;
    h.wait_for(&e.id, "the first attempt failed", |e| {
        root(e).retry_count >= 1
    })
    .await;
    let retrying = h.get(&e.id).await;
    h.fakes[0].faults().set_http_500(false);
    assert!(
        root(&retrying)
            .progress_message
            .as_deref()
            .is_some_and(|m| m.contains("BackendUnavailableError")),
        "{retrying:?}"
    );

    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    assert!(root(&done).retry_count >= 1, "{done:?}");
}

#[tokio::test]
async fn http_500_on_post_prompt_without_retries_fails_as_backend_unavailable() {
    capture_test_logs();
    let h = harness(1, no_background_probes).await;
    h.fakes[0].faults().set_http_500(true);
    let e = execute_config(
        &h,
        &delay_workflow(0.1, 1),
        json!({"max_retries": 0}),
        TaskPriority::Normal,
    )
    .await;
    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_type.as_deref(),
        Some("BackendUnavailableError"),
        "{done:?}"
    );
    assert_eq!(root(&done).retry_count, 0);
}

#[tokio::test]
async fn a_backend_restart_loses_the_prompts_which_are_retried() {
    capture_test_logs();
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 2).await;
    let a = h
        .execute(&delay_workflow(1.0, 1), TaskPriority::Normal)
        .await;
    let b = h
        .execute(&delay_workflow(0.1, 2), TaskPriority::Normal)
        .await;
    h.wait_for(&a.id, "A executing", executing).await;
    let a_prompt = prompt_id(&h.get(&a.id).await);
    let b_prompt = prompt_id(&h.get(&b.id).await);
    wait_fake_queue(&h.fakes[0], "A running and B pending", |q| {
        q.running.contains(&a_prompt) && q.pending.contains(&b_prompt)
    })
    .await;
    // Loses A (running) and B (waiting in the backend's queue).
    h.fakes[0].restart().await;

    for (id, lost) in [(&a.id, &a_prompt), (&b.id, &b_prompt)] {
        let done = h.wait_end(id).await;
        assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
        assert!(root(&done).retry_count >= 1, "{done:?}");
        assert_ne!(&prompt_id(&done), lost, "not re-posted: {done:?}");
    }
}

#[tokio::test]
async fn a_prompt_lost_in_a_restart_without_retries_fails_as_prompt_lost() {
    capture_test_logs();
    let h = harness(1, |_| {}).await;
    let e = execute_config(
        &h,
        &delay_workflow(2.0, 1),
        json!({"max_retries": 0}),
        TaskPriority::Normal,
    )
    .await;
    h.wait_for(&e.id, "executing", executing).await;
    h.fakes[0].restart().await;
    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_type.as_deref(),
        Some("PromptLostError"),
        "{done:?}"
    );
}

#[tokio::test]
async fn out_of_memory_is_retried_then_fails_as_out_of_memory() {
    capture_test_logs();
    let h = harness(1, |_| {}).await;
    // 16384 x 16384 RGB is 768 MiB: over the fake's 256 MiB, it fails the way
    // torch does when an allocation cannot be served.
    let huge = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16384, "height": 16384, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "huge"}}
    });
    let e = execute_config(&h, &huge, json!({"max_retries": 1}), TaskPriority::Normal).await;
    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_type.as_deref(),
        Some("OutOfMemoryError"),
        "error: {:?}",
        done.error
    );
    assert_eq!(root(&done).retry_count, 1, "{done:?}");
}

#[tokio::test]
async fn an_unreachable_backend_is_retried_on_another() {
    capture_test_logs();
    let h = harness(2, |c| {
        no_background_probes(c);
        c.runtime.task_retry_delay_seconds = 0.5;
        for server in &mut c.servers {
            server.max_retries = 0;
        }
    })
    .await;
    // With equal loads the lowest id gets it: gpu-0, which refuses.
    h.fakes[0].faults().set_refuse_connections(true);
    let e = h
        .execute(&delay_workflow(0.1, 1), TaskPriority::Normal)
        .await;
    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
    assert_eq!(done.backend.as_deref(), Some("gpu-1"), "{done:?}");
    assert!(root(&done).retry_count >= 1, "{done:?}");
}

#[tokio::test]
async fn an_unreachable_backend_without_retries_fails_as_backend_unavailable() {
    capture_test_logs();
    let h = harness(1, |c| {
        no_background_probes(c);
        c.servers[0].max_retries = 0;
    })
    .await;
    h.fakes[0].faults().set_refuse_connections(true);
    let e = execute_config(
        &h,
        &delay_workflow(0.1, 1),
        json!({"max_retries": 0}),
        TaskPriority::Normal,
    )
    .await;
    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    assert_eq!(
        done.error_type.as_deref(),
        Some("BackendUnavailableError"),
        "{done:?}"
    );
    assert_eq!(root(&done).retry_count, 0);
}

// ---------------------------------------------------------------------------------------------
// Timeout and stall detection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_timeout_interrupts_the_right_prompt() {
    capture_test_logs();
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 2).await;
    let a = execute_config(
        &h,
        &delay_workflow(30.0, 1),
        json!({"timeout_seconds": 0.5}),
        TaskPriority::Normal,
    )
    .await;
    let b = h
        .execute(&delay_workflow(0.2, 2), TaskPriority::Normal)
        .await;
    let a_done = h.wait_end(&a.id).await;
    assert_eq!(status(&a_done), TaskStatus::Failed, "{a_done:?}");
    assert_eq!(
        a_done.error_type.as_deref(),
        Some("TimeoutError"),
        "{a_done:?}"
    );
    assert_eq!(root(&a_done).retry_count, 0, "a timeout is not retried");
    let b_done = h.wait_end(&b.id).await;
    assert_eq!(status(&b_done), TaskStatus::Completed, "{b_done:?}");
    assert_eq!(root(&b_done).retry_count, 0, "{b_done:?}");
    // The fake interrupted A's prompt, not B's.
    let a_prompt = prompt_id(&a_done);
    let history = fake_history(&h.fakes[0], &a_prompt).await;
    assert_eq!(
        history[&a_prompt]["status"]["status_str"], "error",
        "{history}"
    );
    let b_prompt = prompt_id(&b_done);
    let history = fake_history(&h.fakes[0], &b_prompt).await;
    assert_eq!(
        history[&b_prompt]["status"]["status_str"], "success",
        "{history}"
    );
}

#[tokio::test]
async fn a_silent_backend_stalls_the_execution_and_its_prompt_is_interrupted() {
    capture_test_logs();
    let h = harness(1, |c| {
        c.scheduling.stall_timeout_seconds = 0.5;
        // The socket's own reconciliation would otherwise find the prompt first.
        c.servers[0].silence_timeout_seconds = 60.0;
    })
    .await;
    h.fakes[0].faults().set_silent(true);
    let e = execute_config(
        &h,
        &delay_workflow(30.0, 1),
        json!({"max_retries": 0}),
        TaskPriority::Normal,
    )
    .await;
    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    assert_eq!(done.error_type.as_deref(), Some("StalledError"), "{done:?}");
    // The stalled prompt does not keep the GPU busy.
    wait_fake_queue(&h.fakes[0], "the stalled prompt interrupted", |q| {
        q.running.is_empty() && q.pending.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_prompt_heard_late_is_not_stalled() {
    capture_test_logs();
    let h = harness(1, |c| {
        c.scheduling.stall_timeout_seconds = 1.0;
        c.servers[0].silence_timeout_seconds = 60.0;
    })
    .await;
    // Every frame reaches the runtime 1.4 s after the fake sent it: the backend's queue
    // shows the prompt running before its client hears it start (as when it begins the
    // instant the prompt ahead of it ends). The check at 1 s finds it running, unheard;
    // its start arrives before the next check, and a step every 0.1 s after that.
    h.fakes[0]
        .faults()
        .set_lag(Some(std::time::Duration::from_millis(1400)));
    let steady = json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 2.0, "steps": 20, "nonce": 1}}
    });
    let e = execute_config(&h, &steady, json!({"max_retries": 0}), TaskPriority::Normal).await;
    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Completed, "{done:?}");
}

#[tokio::test]
async fn a_backend_going_silent_mid_run_stalls_the_execution() {
    capture_test_logs();
    let h = harness(1, |c| {
        c.scheduling.stall_timeout_seconds = 0.5;
        c.servers[0].silence_timeout_seconds = 60.0;
    })
    .await;
    // A progress step every 0.1 s: never silent for the stall timeout until the fault.
    let talkative = json!({
        "1": {"class_type": "TestDelay", "inputs": {"seconds": 30.0, "steps": 300, "nonce": 1}}
    });
    let e = execute_config(
        &h,
        &talkative,
        json!({"max_retries": 0}),
        TaskPriority::Normal,
    )
    .await;
    h.wait_for(&e.id, "executing", executing).await;
    h.fakes[0].faults().set_silent(true);
    let done = h.wait_end(&e.id).await;
    assert_eq!(status(&done), TaskStatus::Failed, "{done:?}");
    assert_eq!(done.error_type.as_deref(), Some("StalledError"), "{done:?}");
    wait_fake_queue(&h.fakes[0], "the stalled prompt interrupted", |q| {
        q.running.is_empty() && q.pending.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_prompt_waiting_behind_a_long_one_is_not_stalled() {
    capture_test_logs();
    let h = harness(1, |c| {
        c.runtime.max_concurrent_tasks = 2;
        c.scheduling.stall_timeout_seconds = 0.5;
    })
    .await;
    // A talks all the time (a progress step every 0.1 s) for 1.5 s; B, in the
    // backend's queue meanwhile, hears nothing about itself: that is not a stall.
    let a = h
        .execute(
            &json!({"1": {"class_type": "TestDelay", "inputs": {"seconds": 1.5, "steps": 15, "nonce": 1}}}),
            TaskPriority::Normal,
        )
        .await;
    let b = execute_config(
        &h,
        &delay_workflow(0.1, 2),
        json!({"max_retries": 0}),
        TaskPriority::Normal,
    )
    .await;
    let a_done = h.wait_end(&a.id).await;
    assert_eq!(status(&a_done), TaskStatus::Completed, "{a_done:?}");
    let b_done = h.wait_end(&b.id).await;
    assert_eq!(status(&b_done), TaskStatus::Completed, "{b_done:?}");
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_during_a_retry_back_off_is_immediate() {
    capture_test_logs();
    let h = harness(1, |c| {
        no_background_probes(c);
        c.runtime.task_retry_delay_seconds = 30.0;
    })
    .await;
    h.fakes[0].faults().set_http_500(true);
    let e = h
        .execute(&delay_workflow(0.1, 1), TaskPriority::Normal)
        .await;
    h.wait_for(&e.id, "RETRYING", |e| status(e) == TaskStatus::Retrying)
        .await;
    let cancelled = cancel(&h, &e.id, "no longer needed").await;
    assert_eq!(status(&cancelled), TaskStatus::Cancelled, "{cancelled:?}");
    assert_eq!(
        root(&cancelled).progress_message.as_deref(),
        Some("no longer needed")
    );
    let again = h.get(&e.id).await;
    assert_eq!(status(&again), TaskStatus::Cancelled, "{again:?}");
    assert_eq!(root(&again).retry_count, 1);
}

#[tokio::test]
async fn cancel_an_execution_waiting_in_the_backend_queue() {
    capture_test_logs();
    let h = harness(1, |c| c.runtime.max_concurrent_tasks = 2).await;
    let a = h
        .execute(&delay_workflow(1.0, 1), TaskPriority::Normal)
        .await;
    let b = h
        .execute(&delay_workflow(0.1, 2), TaskPriority::Normal)
        .await;
    h.wait_for(&a.id, "A executing", executing).await;
    let b_prompt = prompt_id(&h.get(&b.id).await);
    wait_fake_queue(&h.fakes[0], "B pending on the fake", |q| {
        q.pending.contains(&b_prompt)
    })
    .await;
    let b_now = h.get(&b.id).await;
    assert_eq!(status(&b_now), TaskStatus::Running, "{b_now:?}");

    cancel(&h, &b.id, "changed my mind").await;
    let b_done = h.wait_end(&b.id).await;
    assert_eq!(status(&b_done), TaskStatus::Cancelled, "{b_done:?}");
    let queue = fake_queue(&h.fakes[0]).await;
    assert!(
        !queue.pending.contains(&b_prompt) && !queue.running.contains(&b_prompt),
        "{queue:?}"
    );

    let a_done = h.wait_end(&a.id).await;
    assert_eq!(status(&a_done), TaskStatus::Completed, "{a_done:?}");
    assert_eq!(
        fake_history(&h.fakes[0], &b_prompt).await,
        json!({}),
        "the cancelled prompt ran anyway"
    );
    // The backend is free for the next one.
    let next = h
        .execute(&image_workflow("after"), TaskPriority::Normal)
        .await;
    assert_eq!(status(&h.wait_end(&next.id).await), TaskStatus::Completed);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Probes only on demand (start, suspected failures), so a fault armed before
/// a submit is met by `POST /prompt`, not by a probe.
fn no_background_probes(config: &mut Config) {
    config.scheduling.probe_interval_seconds = 30.0;
}

async fn execute_config(
    h: &Harness,
    workflow: &Value,
    config: Value,
    priority: TaskPriority,
) -> WorkflowExecution {
    // The options as typed fields: only these two are used here.
    h.execute_with(ExecuteWorkflowRequest {
        workflow: Some(Workflow::WorkflowJson(workflow.to_string())),
        max_retries: config["max_retries"]
            .as_u64()
            .map(|n| u32::try_from(n).expect("a small retry count")),
        timeout_seconds: config["timeout_seconds"].as_f64(),
        priority: Some(priority.into()),
        ..Default::default()
    })
    .await
    .expect("execute")
}

async fn cancel(h: &Harness, id: &str, reason: &str) -> WorkflowExecution {
    h.server
        .executions()
        .cancel_execution(CancelExecutionRequest {
            id: id.to_owned(),
            reason: Some(reason.to_owned()),
        })
        .await
        .expect("cancel")
        .into_inner()
        .execution
        .expect("execution")
}

/// The root WORKFLOW task (always first).
fn root(execution: &WorkflowExecution) -> &Task {
    execution.tasks.first().expect("root task")
}

/// ComfyUI started the execution's prompt.
fn executing(execution: &WorkflowExecution) -> bool {
    root(execution)
        .progress_message
        .as_deref()
        .is_some_and(|m| m.starts_with("executing on "))
}

fn prompt_id(execution: &WorkflowExecution) -> String {
    execution.prompt_id.clone().expect("a prompt id")
}

/// The index of the fake the execution is on.
fn backend_index(execution: &WorkflowExecution) -> usize {
    match execution.backend.as_deref() {
        Some("gpu-0") => 0,
        Some("gpu-1") => 1,
        other => panic!("unexpected backend {other:?}"),
    }
}

/// The prompt ids in a fake's own queue.
#[derive(Debug)]
struct FakeQueue {
    running: Vec<String>,
    pending: Vec<String>,
}

async fn fake_queue(fake: &FakeComfy) -> FakeQueue {
    let queue = get_json(&format!("{}/queue", fake.base_url())).await;
    let ids = |key: &str| -> Vec<String> {
        queue[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {queue}"))
            .iter()
            .filter_map(|item| item[1].as_str().map(str::to_owned))
            .collect()
    };
    FakeQueue {
        running: ids("queue_running"),
        pending: ids("queue_pending"),
    }
}

async fn wait_fake_queue(
    fake: &FakeComfy,
    what: &str,
    check: impl Fn(&FakeQueue) -> bool,
) -> FakeQueue {
    for _ in 0..1500 {
        let queue = fake_queue(fake).await;
        if check(&queue) {
            return queue;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what} never happened: {:?}", fake_queue(fake).await);
}

/// The timestamp (ms) of a status message (`execution_start`,
/// `execution_success`) in the prompt's history on the fake.
async fn history_time(fake: &FakeComfy, prompt_id: &str, message: &str) -> u64 {
    let history = fake_history(fake, prompt_id).await;
    history[prompt_id]["status"]["messages"]
        .as_array()
        .and_then(|messages| {
            messages
                .iter()
                .find(|m| m[0] == message)
                .and_then(|m| m[1]["timestamp"].as_u64())
        })
        .unwrap_or_else(|| panic!("no {message} in {history}"))
}

/// `GET /history/{prompt_id}`: `{}` when the fake never finished it.
async fn fake_history(fake: &FakeComfy, prompt_id: &str) -> Value {
    get_json(&format!("{}/history/{prompt_id}", fake.base_url())).await
}

async fn get_json(url: &str) -> Value {
    let body = reqwest::get(url)
        .await
        .expect("fake answers")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&body).expect("json")
}
