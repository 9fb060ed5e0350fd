//! Benchmark 4, memory per queued execution, and benchmark 1's "a million
//! already queued" figure: one runtime on the default durable store is
//! filled with 1 KiB executions that stay queued (its backend is a closed
//! port), its RSS read at 100,000 and 1,000,000; then its submit cost is
//! compared with a fresh runtime's in alternating windows.

use std::time::Instant;

use crate::harness::{self, Mode, Report, StoreKind, fmt_bytes, fmt_rate, fmt_secs};
use crate::submit::{self, BIG_QUEUE, CLOSED_BACKEND};

/// Runs benchmark 4 and the queued half of benchmark 1.
pub fn run(mode: Mode, report: &mut Report) {
    let warm = mode.pick(20, 2_000);
    let second = mode.pick(400, harness::queued());
    let first = mode.pick(200, 100_000.min(second / 2));
    let calls = mode.pick(40, 10_000);
    let workflow = submit::workflow_1kib();
    let request = submit::request(&workflow);
    let rt = harness::client_runtime();

    let full = harness::start_runtime(StoreKind::Sqlite, &[CLOSED_BACKEND], BIG_QUEUE);
    let client = rt.block_on(submit::connect(full.endpoint()));
    rt.block_on(submit::submit_many(&client, &request, warm));
    let base = full.proc.rss();
    println!("RSS after {warm} executions: {}", fmt_bytes(base as f64));
    let mut queued = warm;
    for target in [first, second] {
        let start = Instant::now();
        let cpu = full.proc.cpu();
        rt.block_on(submit::submit_many(&client, &request, target - queued));
        let rate = (target - queued) as f64 / start.elapsed().as_secs_f64();
        let cpu_per_call = (full.proc.cpu() - cpu) / (target - queued) as f64;
        queued = target;
        let rss = full.proc.rss();
        let per = (rss.saturating_sub(base)) as f64 / (target - warm) as f64;
        let budget = workflow.len() as f64 + 256.0;
        println!(
            "{target} queued: RSS {}, filled at {} ({} server CPU per call)",
            fmt_bytes(rss as f64),
            fmt_rate(rate, "calls"),
            fmt_secs(cpu_per_call)
        );
        report.add(
            "4 memory",
            &format!("RSS per queued execution at {target}"),
            format!("{} (RSS {})", fmt_bytes(per), fmt_bytes(rss as f64)),
            &format!("<= JSON {} B + 256 B", workflow.len()),
            Some(per <= budget),
        );
    }

    // Submit cost with the queue full against a fresh runtime's.
    let fresh = harness::start_runtime(StoreKind::Sqlite, &[CLOSED_BACKEND], BIG_QUEUE);
    let fresh_client = rt.block_on(submit::connect(fresh.endpoint()));
    submit::window(&rt, &fresh_client, &fresh.proc, &request, warm);
    let mut cpu = harness::Paired::default();
    let mut throughput = harness::Paired::default();
    for pair in 0..mode.pairs() {
        let empty = submit::window(&rt, &fresh_client, &fresh.proc, &request, calls);
        let loaded = submit::window(&rt, &client, &full.proc, &request, calls);
        println!(
            "pair {pair}: empty queue {} {}, {queued} queued {} {}",
            fmt_secs(empty.cpu_per_call),
            fmt_rate(empty.throughput, "calls"),
            fmt_secs(loaded.cpu_per_call),
            fmt_rate(loaded.throughput, "calls"),
        );
        cpu.push(empty.cpu_per_call, loaded.cpu_per_call);
        throughput.push(empty.throughput, loaded.throughput);
    }
    let ratio = cpu.ratio();
    report.add(
        "1 submit",
        &format!("server CPU per call with {queued} queued vs empty (durable)"),
        format!(
            "{} vs {} = {ratio:.2}x",
            fmt_secs(cpu.b_median()),
            fmt_secs(cpu.a_median())
        ),
        "<= 1.1x",
        Some(ratio <= 1.1),
    );
    report.add(
        "1 submit",
        &format!("throughput with {queued} queued vs empty (durable)"),
        format!("{:.2}x", throughput.ratio()),
        "(informative)",
        None,
    );
    // Before the runtimes (see `harness::client_runtime`).
    drop((client, fresh_client, rt));
}
