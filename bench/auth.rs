//! Benchmark 7, the cost of access control: `ExecuteWorkflow` with a 1 KiB workflow against a
//! runtime with `auth.mode = "api_key"` (a key on every call, hashed and compared, the role and
//! rate limits checked, the tenant's quota counted, an audit event published) and against the
//! same runtime without authentication, in alternating windows. Executions stay queued, as in
//! benchmark 1.

use comfy_reality::pb::ExecuteWorkflowRequest;
use comfy_reality::pb::execution_service_client::ExecutionServiceClient;
use futures_util::StreamExt as _;
use tonic::transport::Channel;

use crate::harness::{self, Mode, Proc, Report, StoreKind, fmt_secs};
use crate::submit::{
    BIG_QUEUE, CLOSED_BACKEND, IN_FLIGHT, Window, connect, request, workflow_1kib,
};

/// The key the benchmark's principal sends.
const KEY: &str = "bench-key-0123456789abcdef";

/// Sends `calls` submits, each with `authorization: Bearer KEY` when `key` is set.
async fn submit_many(
    client: &ExecutionServiceClient<Channel>,
    request: &ExecuteWorkflowRequest,
    calls: usize,
    key: bool,
) {
    futures_util::stream::iter(0..calls)
        .map(|_| {
            let mut client = client.clone();
            let mut call = tonic::Request::new(request.clone());
            if key {
                call.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {KEY}").parse().expect("ascii header"),
                );
            }
            async move { client.execute_workflow(call).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|outcome| async move {
            if let Err(status) = outcome {
                panic!("submit failed: {status}");
            }
        })
        .await;
}

fn window(
    rt: &tokio::runtime::Runtime,
    client: &ExecutionServiceClient<Channel>,
    proc: &Proc,
    request: &ExecuteWorkflowRequest,
    calls: usize,
    key: bool,
) -> Window {
    crate::submit::timed(rt, proc, calls, submit_many(client, request, calls, key))
}

/// Runs benchmark 7.
pub fn run(mode: Mode, report: &mut Report) {
    let calls = mode.pick(40, 10_000);
    let workflow = workflow_1kib();
    let request = request(&workflow);
    let hash = comfy_reality::api::access::key_sha256_hex(KEY);
    // Limits high enough never to refuse the benchmark, but present: they are checked.
    let secured_toml = format!(
        "{BIG_QUEUE}\n[auth]\nmode = \"api_key\"\n[limits]\nsubmits_per_second = 1000000.0\n\
         submit_burst = 1000000\nmax_queued = 100000000\n\
         [[auth.principals]]\nname = \"bench\"\nrole = \"submitter\"\napi_key_sha256 = [\"{hash}\"]\n"
    );
    println!("{calls} calls per window, {IN_FLIGHT} in flight, memory store");
    let open = harness::start_runtime(StoreKind::Memory, &[CLOSED_BACKEND], BIG_QUEUE);
    let secured = harness::start_runtime(StoreKind::Memory, &[CLOSED_BACKEND], &secured_toml);
    // After the processes: dropped before them (see `harness::client_runtime`).
    let rt = harness::client_runtime();
    let open_client = rt.block_on(connect(open.endpoint()));
    let secured_client = rt.block_on(connect(secured.endpoint()));
    let warm = calls / 4;
    window(&rt, &open_client, &open.proc, &request, warm, false);
    window(&rt, &secured_client, &secured.proc, &request, warm, true);

    let mut cost = harness::Paired::default();
    for pair in 0..mode.pairs() {
        let o = window(&rt, &open_client, &open.proc, &request, calls, false);
        let s = window(&rt, &secured_client, &secured.proc, &request, calls, true);
        println!(
            "pair {pair}: unauthenticated {}, authenticated {}",
            fmt_secs(o.cpu_per_call),
            fmt_secs(s.cpu_per_call),
        );
        cost.push(o.cpu_per_call, s.cpu_per_call);
    }
    let ratio = cost.ratio();
    report.add(
        "7 auth",
        "server CPU per submit, authenticated vs unauthenticated",
        format!(
            "{} vs {} = {ratio:.2}x",
            fmt_secs(cost.b_median()),
            fmt_secs(cost.a_median())
        ),
        "<= 1.1x",
        Some(ratio <= 1.1),
    );
}
