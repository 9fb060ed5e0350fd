//! HTTP/2 abuse against the server binary: one client opens and resets streams as fast as it
//! can (the "rapid reset" attack), others send a HEADERS frame a byte at a time and never
//! finish it, while a well-behaved client keeps calling. Every well-behaved call is answered,
//! and the server's resident memory grows by less than 20 MiB.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use comfy_reality::pb::ListTasksRequest;
use comfy_reality::pb::task_service_client::TaskServiceClient;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Streams the attacker opens and resets, in all.
const RESETS: usize = 20_000;
/// Connections that send their headers a byte at a time.
const SLOW_CONNECTIONS: usize = 200;
/// Calls the well-behaved client makes while the attack runs.
const GOOD_CALLS: usize = 200;
/// Allowed growth of the server's resident memory.
const MAX_GROWTH_KIB: u64 = 20 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens streams and resets them at once, reconnecting whenever the server closes the
/// connection; returns the streams reset.
async fn rapid_reset(addr: SocketAddr) -> usize {
    let mut sent = 0;
    let mut connections = 0;
    while sent < RESETS && connections < 2_000 {
        connections += 1;
        let Ok(tcp) = TcpStream::connect(addr).await else {
            continue;
        };
        let Ok((client, connection)) = h2::client::handshake(tcp).await else {
            continue;
        };
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client;
        while sent < RESETS {
            client = match client.ready().await {
                Ok(client) => client,
                Err(_) => break,
            };
            let request = http::Request::post(format!(
                "http://{addr}/comfyreality.runtime.v1.TaskService/ListTasks"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("static request");
            match client.send_request(request, false) {
                Ok((_response, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    sent += 1;
                }
                Err(_) => break,
            }
        }
        driver.abort();
    }
    sent
}

/// A connection that sends the preface, then a HEADERS frame one byte at a time until `stop`.
async fn slow_headers(addr: SocketAddr, stop: Arc<AtomicBool>) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return;
    };
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame, then a HEADERS frame header announcing 16 KiB on stream 1
    // without END_HEADERS.
    opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    opening.extend_from_slice(&[0, 0x40, 0, 1, 0, 0, 0, 0, 1]);
    if tcp.write_all(&opening).await.is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        if tcp.write_all(&[0x40]).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_resets_and_slow_headers_keep_memory_bounded_and_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = common::clean_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warning"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("COMFY_REALITY__RUNTIME__ENABLE_METRICS", "false")
        .env("COMFY_REALITY__RUNTIME__QUEUE_TYPE", "memory")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let addr: SocketAddr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().expect("a first line").expect("utf-8");
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        line.trim_start_matches("comfy-reality listening on ")
            .parse()
            .expect("address")
    })
    .await
    .unwrap();
    let pid = child.id();

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut good = TaskServiceClient::new(channel);
    for _ in 0..20 {
        good.list_tasks(ListTasksRequest::default()).await.unwrap();
    }
    let before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|_| tokio::spawn(slow_headers(addr, stop.clone())))
        .collect();
    let attack = tokio::spawn(rapid_reset(addr));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut peak = before;
    for _ in 0..GOOD_CALLS {
        good.list_tasks(ListTasksRequest::default())
            .await
            .expect("a well-behaved client is served during the attack");
        answered.fetch_add(1, Ordering::Relaxed);
        peak = peak.max(rss_kib(pid));
    }
    let resets = attack.await.unwrap();
    peak = peak.max(rss_kib(pid));
    stop.store(true, Ordering::Relaxed);
    for task in slow {
        let _ = task.await;
    }
    good.list_tasks(ListTasksRequest::default()).await.unwrap();
    peak = peak.max(rss_kib(pid));
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(answered.load(Ordering::Relaxed), GOOD_CALLS);
    assert!(resets > 0, "the attacker reset no stream");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "http/2 abuse: {resets} streams reset, {SLOW_CONNECTIONS} slow connections, rss {before} KiB -> peak {peak} KiB (+{growth} KiB)"
    );
    assert!(
        growth < MAX_GROWTH_KIB,
        "resident memory grew by {growth} KiB (from {before} KiB)"
    );
}
