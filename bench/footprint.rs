//! Benchmark 5, footprint: the runtime's idle RSS and the time from
//! process start to SERVING on gRPC health, each next to the hello-world
//! baseline's (its RSS, and its time to print its address).

use std::time::{Duration, Instant};

use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{self, Fake, Mode, Report, StoreKind, fmt_bytes, fmt_secs};

/// Polls gRPC health until SERVING; returns when it was first seen.
async fn wait_serving(endpoint: String) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
        {
            let mut client = HealthClient::new(channel);
            loop {
                match client.check(HealthCheckRequest::default()).await {
                    Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => {
                        return Instant::now();
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(_) => break,
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the runtime never answered SERVING"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs benchmark 5.
pub fn run(mode: Mode, report: &mut Report) {
    let fake: Fake = harness::start_fake();
    let mut start = harness::Paired::default();
    let mut rss = harness::Paired::default();
    for pair in 0..mode.pairs() {
        let spawned = Instant::now();
        let hello = harness::start_baseline("hello");
        let hello_up = spawned.elapsed().as_secs_f64();
        // One client runtime per pair, dropped before the processes: its health connection
        // closed, the runtime stops when asked (see `harness::client_runtime`).
        let rt = harness::client_runtime();
        let runtime = harness::start_runtime(StoreKind::Sqlite, &[&fake.url], "");
        let serving = rt.block_on(wait_serving(runtime.endpoint()));
        let to_serving = serving.duration_since(runtime.started).as_secs_f64();
        // Idle: started, backend connected, nothing submitted.
        std::thread::sleep(Duration::from_millis(mode.pick(100, 1_000)));
        let (hello_rss, runtime_rss) = (hello.proc.rss() as f64, runtime.proc.rss() as f64);
        drop(rt);
        println!(
            "pair {pair}: start to SERVING {} (hello-world to listening {}), idle RSS {} (hello-world {})",
            fmt_secs(to_serving),
            fmt_secs(hello_up),
            fmt_bytes(runtime_rss),
            fmt_bytes(hello_rss)
        );
        start.push(hello_up, to_serving);
        rss.push(hello_rss, runtime_rss);
    }
    let idle = rss.b_median();
    report.add(
        "5 footprint",
        "idle RSS (durable store, one backend connected)",
        format!(
            "{} (hello-world {}, {:.2}x)",
            fmt_bytes(idle),
            fmt_bytes(rss.a_median()),
            rss.ratio()
        ),
        "< 20 MiB",
        Some(idle < 20.0 * 1024.0 * 1024.0),
    );
    let serving = start.b_median();
    report.add(
        "5 footprint",
        "process start to SERVING",
        format!(
            "{} (hello-world to listening {}, {:.2}x)",
            fmt_secs(serving),
            fmt_secs(start.a_median()),
            start.ratio()
        ),
        "< 100 ms",
        Some(serving < 0.1),
    );
}
