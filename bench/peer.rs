//! Benchmark 6, against a peer: Comfy-Org's `comfy-api-proxy` (PyPI), the
//! official self-hosted front of ComfyUI's job API (`POST /api/v2/jobs`, SSE
//! events), and the runtime, each in front of the same fake ComfyUI, side by
//! side with a direct client of that fake: added latency, CPU per job,
//! throughput, and wrong outcomes (jobs a front reports expired, failed or
//! cancelled although the fake ran them to success).
//!
//! It owns the proxy's process (found through `COMFY_API_PROXY`, else in
//! `.tools/venv`), its client (submit, then the job's SSE stream as the proxy
//! intends, or polling its status route as an informative variant), the
//! small SSE parser, and the windows of all four fronts. The fake, the
//! runtime, the direct client, the runtime client and the workflow are
//! benchmark 2's (`latency.rs`).
//!
//! The proxy is measured as it is: an SSE stream that stalls (the job ended
//! before the proxy's socket to ComfyUI registered; it notices at its 15 s
//! reconcile) is waited for in a full run, and counted; a smoke run stops
//! waiting after [`STALL`] and polls instead, so that it stays short.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use comfy_reality::pb::TaskEventType;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::harness::{self, Mode, Paired, Proc, Report, fmt_rate, fmt_secs, median};
use crate::latency::{
    Cpu, JOB_TIMEOUT, Setup, Slot, Subscription, fmt_added, paired_percentile, workflow,
};

/// The benchmark's name in the result table.
const BENCH: &str = "6 peer";

/// The environment variable naming the proxy's executable.
const PROXY_ENV: &str = "COMFY_API_PROXY";

/// Where `scripts/tools.sh` installs the proxy, relative to the repository.
const PROXY_IN_REPO: &str = ".tools/venv/bin/comfy-api-proxy";

/// Longest wait for the proxy to answer its health route.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the polling variant reads a job's status.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// How long a job the proxy reports `expired` is re-read to see whether it
/// turns `succeeded` (it reads `/history` and `/queue` in two requests, so a
/// job that ends between them looks gone).
const EXPIRED_GRACE: Duration = Duration::from_secs(1);

/// An SSE stream slower than this to bring a terminal status counts as stalled.
const STALL: Duration = Duration::from_secs(1);

/// The proxy's job statuses that end a job.
const TERMINAL: [&str; 4] = ["succeeded", "failed", "canceled", "expired"];

// ---------------------------------------------------------------------------------------------
// The proxy and its client
// ---------------------------------------------------------------------------------------------

/// The proxy's executable: `$COMFY_API_PROXY`, else the one in `.tools/venv`.
/// `None` when neither exists and the variable is unset; panics when it is
/// set (a CI run must not skip silently).
fn proxy_executable() -> Option<PathBuf> {
    let from_env = std::env::var_os(PROXY_ENV).map(PathBuf::from);
    let candidates = from_env
        .iter()
        .cloned()
        .chain([harness::repo_path(PROXY_IN_REPO)]);
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    if let Some(path) = from_env {
        panic!(
            "{PROXY_ENV}={} does not exist, nor does {PROXY_IN_REPO}",
            path.display()
        );
    }
    None
}

/// A free TCP port on 127.0.0.1 (bound, then released for the proxy).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// How a client of the proxy learns that a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// The job's SSE stream (`GET /api/v2/jobs/{id}/events`), as the proxy intends.
    Events,
    /// Reading `GET /api/v2/jobs/{id}` every [`POLL_EVERY`].
    Polling,
}

/// A running `comfy-api-proxy` in front of the fake, and a client of it.
struct Proxy {
    /// The process.
    proc: Proc,
    /// Its base URL (`http://127.0.0.1:PORT`).
    base: String,
    /// Keep-alive connection pool for every request to it (no `Origin` header).
    http: reqwest::Client,
    /// Its stderr, shown when it fails to start.
    log: PathBuf,
}

/// What the proxy answered to a submit.
struct Submitted {
    /// The job id (the proxy also uses it as ComfyUI's prompt id).
    id: String,
    /// `urls.self`: the status route.
    status_url: String,
    /// `urls.events`: the SSE stream.
    events_url: String,
}

/// How one job's SSE stream went.
enum Streamed {
    /// A terminal `status` event arrived (the status, when).
    Ended(String, Instant),
    /// The proxy refused the stream (429: too many streams).
    Refused,
    /// No terminal status before the cap; the stream was dropped.
    Cut,
}

/// One job through any front, as its client saw it.
#[derive(Debug, Clone, Default)]
struct Outcome {
    /// Seconds from just before the submit to the end; after an `expired`,
    /// to the real success when the status route showed it within
    /// [`EXPIRED_GRACE`].
    seconds: f64,
    /// The proxy's job id when the first terminal status it reported was not
    /// `succeeded` (checked against the fake's history after the window).
    suspect: Option<String>,
    /// That first terminal status was `expired`.
    expired: bool,
    /// The runtime reported the job failed or cancelled.
    runtime_wrong: bool,
    /// Events only: the terminal status took longer than [`STALL`], or never came on the stream.
    stalled: bool,
    /// Events only: the stream was refused and the job was polled instead.
    refused: bool,
}

impl Proxy {
    /// Starts the proxy in front of `comfyui` and waits until it is healthy.
    fn start(executable: &Path, comfyui: &str, rt: &tokio::runtime::Runtime) -> Self {
        let port = free_port();
        let dir = harness::scratch_dir();
        // Where `Proc::spawn` sends the stderr of a process that owns a folder.
        let log = dir.path().join("stderr.log");
        let mut command = Command::new(executable);
        command
            .args(["--comfyui", comfyui, "--host", "127.0.0.1", "--port"])
            .arg(port.to_string());
        let proxy = Self {
            proc: Proc::spawn("comfy-api-proxy", command, Some(dir)),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            log,
        };
        rt.block_on(proxy.wait_healthy());
        proxy
    }

    /// Polls `GET /api/v2/health` until it answers 200.
    async fn wait_healthy(&self) {
        let started = Instant::now();
        let url = format!("{}/api/v2/health", self.base);
        loop {
            let answer = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if started.elapsed() > START_TIMEOUT {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!(
                    "comfy-api-proxy is not healthy after {START_TIMEOUT:?}; its stderr:\n{log}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the client's connections, then stops the process.
    fn stop(self) {
        drop(self.http);
        self.proc.stop();
    }

    /// `POST /api/v2/jobs` with the zero-duration workflow.
    async fn submit(&self, nonce: u64) -> Submitted {
        let response = self
            .http
            .post(format!("{}/api/v2/jobs", self.base))
            .json(&json!({ "workflow": workflow(nonce) }))
            .send()
            .await
            .expect("proxy: POST /api/v2/jobs");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(
            status.as_u16(),
            201,
            "proxy: POST /api/v2/jobs answered {status}: {text}"
        );
        let job: Value = serde_json::from_str(&text).expect("proxy: job JSON");
        let id = job["id"].as_str().expect("proxy: job id").to_owned();
        let url = |name: &str, fallback: String| {
            job["urls"][name].as_str().map_or(fallback, str::to_owned)
        };
        Submitted {
            status_url: url("self", format!("{}/api/v2/jobs/{id}", self.base)),
            events_url: url("events", format!("{}/api/v2/jobs/{id}/events", self.base)),
            id,
        }
    }

    /// `GET /api/v2/jobs/{id}`: the job's status.
    async fn status(&self, url: &str) -> String {
        let response = self.http.get(url).send().await.expect("proxy: GET job");
        let code = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            code.is_success(),
            "proxy: GET {url} answered {code}: {text}"
        );
        let job: Value = serde_json::from_str(&text).expect("proxy: job JSON");
        job["status"].as_str().unwrap_or_default().to_owned()
    }

    /// Reads the status route every [`POLL_EVERY`] until it is terminal.
    async fn poll(&self, url: &str) -> (String, Instant) {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let status = self.status(url).await;
            let now = Instant::now();
            if TERMINAL.contains(&status.as_str()) {
                return (status, now);
            }
            assert!(
                now < deadline,
                "proxy: {url} not terminal after {JOB_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// After an `expired`: reads the status route for up to
    /// [`EXPIRED_GRACE`]; when it turns `succeeded`, when it did.
    async fn real_success(&self, url: &str) -> Option<Instant> {
        let deadline = Instant::now() + EXPIRED_GRACE;
        loop {
            let status = self.status(url).await;
            let now = Instant::now();
            match status.as_str() {
                "succeeded" => return Some(now),
                "failed" | "canceled" => return None,
                _ if now >= deadline => return None,
                _ => tokio::time::sleep(POLL_EVERY).await,
            }
        }
    }

    /// Follows the job's SSE stream until a terminal `status` event (then
    /// reads the stream to its end, as a client collecting `output` events
    /// does), or until `cap`.
    async fn stream(&self, url: &str, cap: Duration) -> Streamed {
        let response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .expect("proxy: GET events");
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Streamed::Refused;
        }
        let code = response.status();
        assert!(code.is_success(), "proxy: GET {url} answered {code}");
        let deadline = tokio::time::Instant::now() + cap;
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        let mut ended = None;
        loop {
            let limit = if ended.is_some() {
                tokio::time::Instant::now() + JOB_TIMEOUT
            } else {
                deadline
            };
            let chunk = match tokio::time::timeout_at(limit, body.next()).await {
                Ok(Some(chunk)) => chunk.expect("proxy: SSE body"),
                Ok(None) | Err(_) => break,
            };
            let now = Instant::now();
            for (event, data) in parser.push(&chunk) {
                if ended.is_some() || event != "status" {
                    continue;
                }
                let status = serde_json::from_str::<Value>(&data)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if TERMINAL.contains(&status.as_str()) {
                    ended = Some((status, now));
                }
            }
        }
        match ended {
            Some((status, at)) => Streamed::Ended(status, at),
            None => Streamed::Cut,
        }
    }

    /// One job: submit, then learn its end by `follow`. A stream slower than
    /// `cap` is dropped and the job polled.
    async fn job(&self, nonce: u64, follow: Follow, cap: Duration) -> Outcome {
        let start = Instant::now();
        let job = self.submit(nonce).await;
        let mut outcome = Outcome::default();
        let (status, mut at) = match follow {
            Follow::Polling => self.poll(&job.status_url).await,
            Follow::Events => {
                let opened = Instant::now();
                match self.stream(&job.events_url, cap).await {
                    Streamed::Ended(status, at) => {
                        outcome.stalled = at - opened > STALL;
                        (status, at)
                    }
                    Streamed::Refused => {
                        outcome.refused = true;
                        self.poll(&job.status_url).await
                    }
                    Streamed::Cut => {
                        outcome.stalled = true;
                        self.poll(&job.status_url).await
                    }
                }
            }
        };
        if status == "expired" {
            outcome.expired = true;
            at = self
                .real_success(&job.status_url)
                .await
                .unwrap_or_else(Instant::now);
        }
        if status != "succeeded" {
            outcome.suspect = Some(job.id);
        }
        outcome.seconds = (at - start).as_secs_f64();
        outcome
    }
}

/// A Server-Sent Events parser: bytes in, complete `(event, data)` frames out.
#[derive(Debug, Default)]
struct SseParser {
    /// Bytes after the last complete line.
    pending: Vec<u8>,
    /// The `event:` name of the frame being read (`message` when none).
    event: String,
    /// Its `data:` lines, joined by newlines.
    data: String,
}

impl SseParser {
    /// Adds `chunk`; returns the frames it completed.
    fn push(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.pending.extend_from_slice(chunk);
        let mut frames = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.event.is_empty() || !self.data.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    let event = if event.is_empty() {
                        "message".to_owned()
                    } else {
                        event
                    };
                    frames.push((event, std::mem::take(&mut self.data)));
                }
            } else if let Some(name) = line.strip_prefix("event:") {
                name.trim().clone_into(&mut self.event);
            } else if let Some(data) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(data.strip_prefix(' ').unwrap_or(data));
            }
        }
        frames
    }
}

// ---------------------------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------------------------

/// Which front a window measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    /// The direct ComfyUI client (the zero-overhead baseline).
    Direct,
    /// The runtime, ends from one `SubscribeEvents` stream.
    Runtime,
    /// The proxy, one SSE stream per job.
    Proxy,
    /// The proxy, its status route polled every [`POLL_EVERY`] (informative).
    ProxyPolled,
}

/// CPU seconds used so far by every process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// The runtime's, the fake's and this process's.
    base: Cpu,
    /// The proxy's.
    proxy: f64,
}

impl Usage {
    /// What was used since `before`.
    fn since(self, before: Usage) -> Usage {
        Usage {
            base: self.base.since(before.base),
            proxy: self.proxy - before.proxy,
        }
    }
}

/// One window of one front: its jobs, `concurrency` at a time.
#[derive(Debug, Clone)]
struct Window {
    /// Seconds to each job's end, as its client saw it.
    seconds: Vec<f64>,
    /// Seconds from the first submit to the last end.
    wall: f64,
    /// CPU used during the window.
    cpu: Usage,
    /// Jobs reported expired, failed or cancelled that succeeded at the fake.
    wrong: usize,
    /// Of those, the ones reported `expired`.
    expired: usize,
    /// Proxy jobs reported not succeeded that did fail at the fake (none expected).
    really_failed: usize,
    /// Proxy SSE streams that stalled (see [`Outcome::stalled`]).
    stalled: usize,
    /// Proxy SSE streams refused with 429.
    refused: usize,
}

impl Window {
    /// CPU seconds per job of one process.
    fn per_job(&self, figure: impl Fn(&Usage) -> f64) -> f64 {
        figure(&self.cpu) / self.seconds.len().max(1) as f64
    }
}

/// Everything the benchmark runs against.
struct Bench {
    /// The fake, the runtime and their clients (benchmark 2's).
    setup: Setup,
    /// The proxy in front of the same fake.
    proxy: Proxy,
    /// How long a proxy job's SSE stream is followed before polling instead.
    stream_cap: Duration,
}

/// When `execution_id` ended on `subscription`, and the end's event type
/// (the counting twin of `Subscription::wait_end`, which panics unless the
/// execution completed).
async fn runtime_end(subscription: &Subscription, execution_id: String) -> (Instant, i32) {
    let (tx, rx) = oneshot::channel();
    {
        let mut slots = subscription.slots.lock().expect("slots");
        if let Some(Slot::Ended(at, kind)) = slots.remove(&execution_id) {
            return (at, kind);
        }
        slots.insert(execution_id.clone(), Slot::Waiting(tx));
    }
    tokio::time::timeout(JOB_TIMEOUT, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("execution {execution_id}: no end after {JOB_TIMEOUT:?}"))
}

impl Bench {
    /// CPU used so far.
    fn usage(&self) -> Usage {
        Usage {
            base: self.setup.cpu(),
            proxy: self.proxy.proc.cpu(),
        }
    }

    /// One job through `front`.
    async fn one(&self, front: Front, subscription: Option<&Subscription>) -> Outcome {
        let nonce = self.setup.nonces.next();
        match front {
            Front::Direct => Outcome {
                seconds: self.setup.direct.job(nonce).await.ended,
                ..Outcome::default()
            },
            Front::Runtime => {
                let start = Instant::now();
                let id = self.setup.client.submit(nonce).await;
                let subscription = subscription.expect("a subscription");
                let (at, kind) = runtime_end(subscription, id).await;
                Outcome {
                    seconds: (at - start).as_secs_f64(),
                    runtime_wrong: kind != TaskEventType::Completed as i32,
                    ..Outcome::default()
                }
            }
            Front::Proxy => self.proxy.job(nonce, Follow::Events, self.stream_cap).await,
            Front::ProxyPolled => {
                self.proxy
                    .job(nonce, Follow::Polling, self.stream_cap)
                    .await
            }
        }
    }

    /// Runs `jobs` jobs through `front`, `concurrency` at a time, then checks
    /// every job the proxy did not report succeeded against the fake's history.
    fn window(&self, front: Front, jobs: usize, concurrency: usize) -> Window {
        // Opened before the window and closed after it, as in benchmark 2.
        let subscription = (front == Front::Runtime).then(|| {
            self.setup
                .rt
                .block_on(Subscription::open(&self.setup.client.events))
        });
        let next = &Cell::new(0);
        let events = subscription.as_ref();
        let before = self.usage();
        let start = Instant::now();
        let outcomes: Vec<Outcome> = self.setup.rt.block_on(async {
            let worker = || async move {
                let mut mine = Vec::new();
                while next.get() < jobs {
                    next.set(next.get() + 1);
                    mine.push(self.one(front, events).await);
                }
                mine
            };
            let workers = (0..concurrency.max(1)).map(|_| worker());
            futures_util::future::join_all(workers)
                .await
                .into_iter()
                .flatten()
                .collect()
        });
        let wall = start.elapsed().as_secs_f64();
        let cpu = self.usage().since(before);
        drop(subscription);
        let mut window = Window {
            seconds: outcomes.iter().map(|o| o.seconds).collect(),
            wall,
            cpu,
            wrong: outcomes.iter().filter(|o| o.runtime_wrong).count(),
            expired: 0,
            really_failed: 0,
            stalled: outcomes.iter().filter(|o| o.stalled).count(),
            refused: outcomes.iter().filter(|o| o.refused).count(),
        };
        for outcome in &outcomes {
            let Some(id) = &outcome.suspect else {
                continue;
            };
            let history = self.setup.rt.block_on(self.setup.direct.history_one(id));
            if history[id.as_str()]["status"]["status_str"] == "success" {
                window.wrong += 1;
                window.expired += usize::from(outcome.expired);
            } else {
                window.really_failed += 1;
                println!("  proxy job {id} failed at the fake: {history}");
            }
        }
        window
    }

    /// Closes every client, then stops the proxy, the runtime and the fake.
    fn stop(self) {
        self.proxy.stop();
        self.setup.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// The sum of one CPU figure over windows, per job.
fn cpu_per_job(windows: &[Window], figure: impl Fn(&Usage) -> f64) -> f64 {
    let cpu: f64 = windows.iter().map(|w| figure(&w.cpu)).sum();
    cpu / total(windows, |w| w.seconds.len()).max(1) as f64
}

/// The sum of one count over windows.
fn total<'a>(
    windows: impl IntoIterator<Item = &'a Window>,
    count: impl Fn(&Window) -> usize,
) -> usize {
    windows.into_iter().map(count).sum()
}

/// How many times `runtime` the proxy's figure is (infinite when the
/// runtime's is not above zero and the proxy's is).
fn times(runtime: f64, proxy: f64) -> f64 {
    if runtime > 0.0 {
        proxy / runtime
    } else if proxy > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

/// `12.3x`, or `∞` (the runtime's figure is zero or below).
fn fmt_times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.1}x")
    } else {
        "∞".to_owned()
    }
}

/// The seconds of each window.
fn seconds(windows: &[Window]) -> Vec<Vec<f64>> {
    windows.iter().map(|w| w.seconds.clone()).collect()
}

/// Runs benchmark 6.
pub fn run(mode: Mode, report: &mut Report) {
    let Some(executable) = proxy_executable() else {
        println!("comfy-api-proxy is not installed ({PROXY_ENV} unset): benchmark 6 skipped");
        report.add(
            BENCH,
            "against comfy-api-proxy",
            "comfy-api-proxy not installed: run ./scripts/bench.sh".to_owned(),
            "informative",
            None,
        );
        return;
    };
    let jobs = mode.pick(3, 200);
    let warm = mode.pick(1, 20);
    let burst = mode.pick(4, 50);
    let concurrency = mode.pick(2, 8);
    let pairs = mode.pairs();
    println!(
        "workflow: one TestDelay(0 s, 1 step, fresh nonce); {jobs} sequential jobs per window, \
         burst {burst} at {concurrency} at a time, {pairs} pair(s); peer: {}",
        executable.display()
    );
    let setup = Setup::start();
    let proxy = Proxy::start(&executable, &setup.fake.url, &setup.rt);
    println!(
        "fake ComfyUI at {}, runtime (durable store) at {}, comfy-api-proxy at {}",
        setup.fake.url, setup.runtime.addr, proxy.base
    );
    let bench = Bench {
        setup,
        proxy,
        stream_cap: mode.pick(STALL, JOB_TIMEOUT),
    };
    let fronts = [
        Front::Direct,
        Front::Runtime,
        Front::Proxy,
        Front::ProxyPolled,
    ];
    for front in fronts {
        bench.window(front, warm, 1);
    }

    // Sequential: one job at a time, the four fronts in turn per pair.
    let mut windows: [Vec<Window>; 4] = Default::default();
    for pair in 0..pairs {
        for (front, list) in fronts.iter().zip(windows.iter_mut()) {
            list.push(bench.window(*front, jobs, 1));
        }
        let [d, r, p, q] = windows.each_ref().map(|w| &w[pair]);
        println!(
            "pair {pair}: p50 direct {}, runtime {}, proxy SSE {}, proxy polled {}; \
             runtime CPU/job {}, proxy CPU/job {} (SSE) {} (polled), idle proxy {}; \
             wrong {} / {} / {}, stalled streams {}",
            fmt_secs(median(&d.seconds)),
            fmt_secs(median(&r.seconds)),
            fmt_secs(median(&p.seconds)),
            fmt_secs(median(&q.seconds)),
            fmt_secs(r.per_job(|c| c.base.runtime)),
            fmt_secs(p.per_job(|c| c.proxy)),
            fmt_secs(q.per_job(|c| c.proxy)),
            fmt_secs(d.cpu.proxy + r.cpu.proxy),
            r.wrong,
            p.wrong,
            q.wrong,
            p.stalled,
        );
    }
    let [direct, runtime, proxy, polled] = &windows;
    let (d_ended, r_ended, p_ended, q_ended) = (
        seconds(direct),
        seconds(runtime),
        seconds(proxy),
        seconds(polled),
    );
    for p in [50.0, 99.0] {
        let (d, r, r_added) = paired_percentile(&d_ended, &r_ended, p);
        let (_, x, x_added) = paired_percentile(&d_ended, &p_ended, p);
        let ratio = times(r_added, x_added);
        report.add(
            BENCH,
            &format!("added p{p:.0}, submit -> done: runtime vs comfy-api-proxy (SSE)"),
            format!(
                "runtime {} ({}), proxy {} ({}), direct {}: proxy / runtime {}",
                fmt_secs(r),
                fmt_added(r_added),
                fmt_secs(x),
                fmt_added(x_added),
                fmt_secs(d),
                fmt_times(ratio)
            ),
            ">= 10x",
            Some(ratio >= 10.0),
        );
    }
    let (_, q50, q_added50) = paired_percentile(&d_ended, &q_ended, 50.0);
    let (_, q99, q_added99) = paired_percentile(&d_ended, &q_ended, 99.0);
    report.add(
        BENCH,
        "comfy-api-proxy polled every 10 ms: p50 / p99 (added)",
        format!(
            "{} / {} ({} / {})",
            fmt_secs(q50),
            fmt_secs(q99),
            fmt_added(q_added50),
            fmt_added(q_added99)
        ),
        "informative",
        None,
    );
    let runtime_cpu = cpu_per_job(runtime, |c| c.base.runtime);
    let proxy_cpu = cpu_per_job(proxy, |c| c.proxy);
    let ratio = times(runtime_cpu, proxy_cpu);
    report.add(
        BENCH,
        "CPU per job: runtime vs comfy-api-proxy (SSE)",
        format!(
            "runtime {} vs proxy {}: proxy / runtime {} (proxy polled: {})",
            fmt_secs(runtime_cpu),
            fmt_secs(proxy_cpu),
            fmt_times(ratio),
            fmt_secs(cpu_per_job(polled, |c| c.proxy))
        ),
        ">= 10x",
        Some(ratio >= 10.0),
    );
    report.add(
        BENCH,
        "fake ComfyUI CPU per job: direct / runtime / proxy SSE / proxy polled",
        format!(
            "{} / {} / {} / {}",
            fmt_secs(cpu_per_job(direct, |c| c.base.fake)),
            fmt_secs(cpu_per_job(runtime, |c| c.base.fake)),
            fmt_secs(cpu_per_job(proxy, |c| c.base.fake)),
            fmt_secs(cpu_per_job(polled, |c| c.base.fake))
        ),
        "informative",
        None,
    );

    // Throughput: a burst through each front, `concurrency` jobs at a time
    // (the proxy serves at most 8 SSE streams).
    println!("burst: {burst} jobs, {concurrency} at a time");
    let burst_fronts = [Front::Direct, Front::Runtime, Front::Proxy];
    for front in burst_fronts {
        bench.window(front, burst, concurrency);
    }
    let mut bursts: [Vec<Window>; 3] = Default::default();
    let mut rate = Paired::default();
    for pair in 0..pairs {
        for (front, list) in burst_fronts.iter().zip(bursts.iter_mut()) {
            list.push(bench.window(*front, burst, concurrency));
        }
        let [d, r, p] = bursts.each_ref().map(|w| &w[pair]);
        let per_second = |w: &Window| w.seconds.len() as f64 / w.wall.max(1e-9);
        println!(
            "pair {pair}: direct {}, runtime {}, proxy {}; wrong {} / {}, stalled streams {}, \
             refused {}",
            fmt_rate(per_second(d), "jobs"),
            fmt_rate(per_second(r), "jobs"),
            fmt_rate(per_second(p), "jobs"),
            r.wrong,
            p.wrong,
            p.stalled,
            p.refused,
        );
        rate.push(per_second(p), per_second(r));
    }
    let [b_direct, b_runtime, b_proxy] = &bursts;
    let direct_rate: Vec<f64> = b_direct
        .iter()
        .map(|w| w.seconds.len() as f64 / w.wall.max(1e-9))
        .collect();
    report.add(
        BENCH,
        &format!("throughput, {burst} jobs {concurrency} at a time: runtime vs comfy-api-proxy"),
        format!(
            "{} vs {} = {:.2}x (direct {})",
            fmt_rate(rate.b_median(), "jobs"),
            fmt_rate(rate.a_median(), "jobs"),
            rate.ratio(),
            fmt_rate(median(&direct_rate), "jobs")
        ),
        "informative",
        None,
    );
    report.add(
        BENCH,
        "CPU per job in the burst: runtime vs comfy-api-proxy",
        format!(
            "{} vs {}",
            fmt_secs(cpu_per_job(b_runtime, |c| c.base.runtime)),
            fmt_secs(cpu_per_job(b_proxy, |c| c.proxy))
        ),
        "informative",
        None,
    );

    // Wrong outcomes over every measured job.
    let all_runtime = || runtime.iter().chain(b_runtime);
    let all_proxy = || proxy.iter().chain(polled).chain(b_proxy);
    let streams = || proxy.iter().chain(b_proxy);
    let runtime_wrong = total(all_runtime(), |w| w.wrong);
    report.add(
        BENCH,
        "wrong outcomes (reported expired/failed/cancelled, succeeded at the fake)",
        format!(
            "runtime {runtime_wrong} of {}; comfy-api-proxy {} of {} ({} expired; SSE {}, \
             polled {}, burst {})",
            total(all_runtime(), |w| w.seconds.len()),
            total(all_proxy(), |w| w.wrong),
            total(all_proxy(), |w| w.seconds.len()),
            total(all_proxy(), |w| w.expired),
            total(proxy, |w| w.wrong),
            total(polled, |w| w.wrong),
            total(b_proxy, |w| w.wrong),
        ),
        "runtime 0",
        Some(runtime_wrong == 0),
    );
    report.add(
        BENCH,
        "comfy-api-proxy SSE streams that stalled (> 1 s to the end)",
        format!(
            "{} of {} (refused with 429: {}; failed at the fake: {})",
            total(streams(), |w| w.stalled),
            total(streams(), |w| w.seconds.len()),
            total(streams(), |w| w.refused),
            total(all_proxy(), |w| w.really_failed),
        ),
        "informative",
        None,
    );
    bench.stop();
}
