//! Part of benchmark 1: `UpdateTaskProgress` on client-reported tasks with
//! [`IN_FLIGHT`] calls in flight, the durable store against the in-memory
//! one, in alternating windows. Each call is one acknowledged write; calls
//! that wait for their commit together can share it, so the durable store's
//! throughput shows whether its calls wait without holding the server's
//! thread.

use comfy_reality::pb::task_service_client::TaskServiceClient;
use comfy_reality::pb::{CreateTaskRequest, TaskType, UpdateTaskProgressRequest};
use futures_util::StreamExt as _;
use tonic::transport::Channel;

use crate::harness::{self, Mode, Proc, Report, fmt_rate, fmt_secs};
use crate::submit::{IN_FLIGHT, Window};

/// A task client on `endpoint` with [`IN_FLIGHT`] tasks of its own.
pub struct Lanes {
    client: TaskServiceClient<Channel>,
    tasks: Vec<String>,
    calls: u64,
}

impl Lanes {
    /// Connects and creates one task per call in flight.
    pub async fn new(endpoint: String) -> Self {
        let channel = Channel::from_shared(endpoint)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = TaskServiceClient::new(channel);
        let mut tasks = Vec::with_capacity(IN_FLIGHT);
        for lane in 0..IN_FLIGHT {
            let task = client
                .create_task(CreateTaskRequest {
                    name: format!("progress-{lane}"),
                    r#type: Some(TaskType::Preprocessing.into()),
                    ..CreateTaskRequest::default()
                })
                .await
                .unwrap_or_else(|status| panic!("CreateTask: {status}"))
                .into_inner()
                .task
                .expect("task");
            tasks.push(task.id);
        }
        Self {
            client,
            tasks,
            calls: 0,
        }
    }

    /// Sends `calls` progress reports, [`IN_FLIGHT`] at a time, one lane per
    /// task (each report changes its task: the message counts); panics on an
    /// error.
    async fn report(&mut self, calls: usize) {
        let first = self.calls;
        self.calls += calls as u64;
        let lanes = self.tasks.len() as u64;
        futures_util::stream::iter(first..first + calls as u64)
            .map(|n| {
                let mut client = self.client.clone();
                let id = self.tasks[(n % lanes) as usize].clone();
                async move {
                    client
                        .update_task_progress(UpdateTaskProgressRequest {
                            id,
                            progress: Some((n % 1000) as f64 / 1000.0),
                            progress_message: Some(format!("report {n}")),
                            ..UpdateTaskProgressRequest::default()
                        })
                        .await
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .for_each(|outcome| async move {
                if let Err(status) = outcome {
                    panic!("UpdateTaskProgress failed: {status}");
                }
            })
            .await;
    }

    /// One measured window of `calls` reports against the server `proc`.
    pub fn window(&mut self, rt: &tokio::runtime::Runtime, proc: &Proc, calls: usize) -> Window {
        crate::submit::timed(rt, proc, calls, self.report(calls))
    }
}

/// Runs the progress windows against the memory-store and durable runtimes
/// that benchmark 1 started.
pub fn run(
    mode: Mode,
    report: &mut Report,
    rt: &tokio::runtime::Runtime,
    memory: (&Proc, String),
    durable: (&Proc, String),
) {
    let calls = mode.pick(40, 5_000);
    let mut memory_lanes = rt.block_on(Lanes::new(memory.1));
    let mut durable_lanes = rt.block_on(Lanes::new(durable.1));
    memory_lanes.window(rt, memory.0, calls / 4);
    durable_lanes.window(rt, durable.0, calls / 4);
    let mut cpu = harness::Paired::default();
    let mut throughput = harness::Paired::default();
    for pair in 0..mode.pairs() {
        let m = memory_lanes.window(rt, memory.0, calls);
        let d = durable_lanes.window(rt, durable.0, calls);
        println!(
            "progress pair {pair}: memory {} {}, durable {} {}",
            fmt_secs(m.cpu_per_call),
            fmt_rate(m.throughput, "calls"),
            fmt_secs(d.cpu_per_call),
            fmt_rate(d.throughput, "calls"),
        );
        cpu.push(m.cpu_per_call, d.cpu_per_call);
        throughput.push(m.throughput, d.throughput);
    }
    report.add(
        "1 submit",
        &format!(
            "UpdateTaskProgress, {IN_FLIGHT} in flight: server CPU per call, durable vs memory store"
        ),
        format!(
            "{} vs {} = {:.2}x",
            fmt_secs(cpu.b_median()),
            fmt_secs(cpu.a_median()),
            cpu.ratio()
        ),
        "(informative)",
        None,
    );
    report.add(
        "1 submit",
        &format!("UpdateTaskProgress, {IN_FLIGHT} in flight: throughput, durable vs memory store"),
        format!(
            "{} vs {} = {:.2}x",
            fmt_rate(throughput.b_median(), "calls"),
            fmt_rate(throughput.a_median(), "calls"),
            throughput.ratio()
        ),
        "(informative)",
        None,
    );
}
