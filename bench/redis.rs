//! Benchmark 8: the Redis store against the embedded one. Two runtimes in
//! front of the same fake ComfyUI, one on the SQLite store (the default) and
//! one on a real `redis-server` on this machine (append-only, `everysec`),
//! run the same one-node jobs in alternating windows: one at a time (CPU per
//! job, added latency) and a backlog at once (throughput). The Redis side's
//! CPU counts the runtime and `redis-server` together, since both work for it.
//!
//! One runtime holds a Redis store's lease at a time (see the README's
//! "Scale-out on Redis"), so there is no 2- or 3-replica figure yet.

use std::time::Instant;

use comfy_reality_fake_comfyui::RedisServer;

use crate::harness::{self, Mode, Paired, Report, StoreKind, fmt_secs, median};
use crate::latency::{Nonces, RuntimeClient, Subscription};

const BENCH: &str = "8 redis";

/// One window's figures: job latencies and CPU seconds (runtime, redis-server).
struct Window {
    ended: Vec<f64>,
    runtime_cpu: f64,
    redis_cpu: f64,
}

struct Side {
    runtime: harness::Runtime,
    client: RuntimeClient,
    subscription: Subscription,
}

fn redis_cpu(redis: &RedisServer) -> f64 {
    redis.pid().map_or(0.0, harness::cpu_seconds)
}

impl Side {
    fn sequential(
        &self,
        rt: &tokio::runtime::Runtime,
        redis: &RedisServer,
        nonces: &Nonces,
        jobs: usize,
    ) -> Window {
        let (runtime_before, redis_before) = (self.runtime.proc.cpu(), redis_cpu(redis));
        let ended = rt.block_on(async {
            let mut ended = Vec::with_capacity(jobs);
            for _ in 0..jobs {
                ended.push(
                    self.client
                        .job_subscribed(&self.subscription, nonces.next())
                        .await,
                );
            }
            ended
        });
        Window {
            ended,
            runtime_cpu: self.runtime.proc.cpu() - runtime_before,
            redis_cpu: redis_cpu(redis) - redis_before,
        }
    }

    /// Seconds for `jobs` submitted at once to end.
    fn backlog(&self, rt: &tokio::runtime::Runtime, nonces: &Nonces, jobs: usize) -> f64 {
        rt.block_on(async {
            let start = Instant::now();
            let submits = (0..jobs).map(|_| self.client.submit(nonces.next()));
            let mut last = start;
            for id in futures_util::future::join_all(submits).await {
                last = last.max(self.subscription.wait_end(id).await);
            }
            (last - start).as_secs_f64()
        })
    }
}

/// Runs benchmark 8.
pub fn run(mode: Mode, report: &mut Report) {
    let jobs = mode.pick(3, 200);
    let backlog_jobs = mode.pick(5, 50);
    let pairs = mode.pairs();
    let redis = RedisServer::start().expect("redis-server starts (the test command installs it)");
    let fake = harness::start_fake();
    let rt = harness::client_runtime();
    let start = |store: StoreKind| {
        let runtime = harness::start_runtime(store, &[&fake.url], "");
        let client = rt.block_on(RuntimeClient::connect(runtime.endpoint()));
        let subscription = rt.block_on(Subscription::open(&client.events));
        Side {
            runtime,
            client,
            subscription,
        }
    };
    let sqlite = start(StoreKind::Sqlite);
    let on_redis = start(StoreKind::Redis(redis.url()));
    println!(
        "one TestDelay(0 s) job at a time, {jobs} per window, {pairs} pair(s); redis-server {} ",
        redis.url()
    );
    let nonces = Nonces::default();
    for side in [&sqlite, &on_redis] {
        side.sequential(&rt, &redis, &nonces, mode.pick(2, 30));
    }
    let mut cpu = Paired::default();
    let mut p50 = Paired::default();
    let mut redis_share = Vec::new();
    for pair in 0..pairs {
        let a = sqlite.sequential(&rt, &redis, &nonces, jobs);
        let b = on_redis.sequential(&rt, &redis, &nonces, jobs);
        let per_job = |w: &Window, with_redis: bool| {
            (w.runtime_cpu + if with_redis { w.redis_cpu } else { 0.0 }) / w.ended.len() as f64
        };
        println!(
            "pair {pair}: p50 sqlite {} / redis {}; CPU per job sqlite {} / redis {} (runtime {} + redis-server {})",
            fmt_secs(median(&a.ended)),
            fmt_secs(median(&b.ended)),
            fmt_secs(per_job(&a, false)),
            fmt_secs(per_job(&b, true)),
            fmt_secs(b.runtime_cpu / b.ended.len() as f64),
            fmt_secs(b.redis_cpu / b.ended.len() as f64),
        );
        cpu.push(per_job(&a, false), per_job(&b, true));
        p50.push(median(&a.ended), median(&b.ended));
        redis_share.push(b.redis_cpu / b.ended.len() as f64);
    }
    report.add(
        BENCH,
        "CPU per job: Redis store (runtime + redis-server) vs SQLite store",
        format!(
            "{} vs {} = {:.2}x (redis-server's part {})",
            fmt_secs(cpu.b_median()),
            fmt_secs(cpu.a_median()),
            cpu.ratio(),
            fmt_secs(median(&redis_share))
        ),
        "informative",
        None,
    );
    report.add(
        BENCH,
        "p50 submit -> completed: Redis store vs SQLite store",
        format!(
            "{} vs {} = {:.2}x",
            fmt_secs(p50.b_median()),
            fmt_secs(p50.a_median()),
            p50.ratio()
        ),
        "informative",
        None,
    );
    // What the Redis side asked of redis-server, per job of the sequential windows.
    let stats = redis.command("INFO commandstats").unwrap_or_default();
    let calls: Vec<(String, u64)> = stats
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect();
    let sequential_jobs = (jobs * pairs + mode.pick(2, 30)) as f64;
    let per_job: Vec<String> = calls
        .iter()
        .filter(|(_, n)| *n as f64 / sequential_jobs >= 0.05)
        .map(|(name, n)| format!("{name} {:.1}", *n as f64 / sequential_jobs))
        .collect();
    println!("redis commands per sequential job: {}", per_job.join(", "));
    report.add(
        BENCH,
        "Redis commands per job (sequential windows)",
        per_job.join(", "),
        "informative",
        None,
    );
    let mut wall = Paired::default();
    for _ in 0..pairs {
        wall.push(
            sqlite.backlog(&rt, &nonces, backlog_jobs),
            on_redis.backlog(&rt, &nonces, backlog_jobs),
        );
    }
    report.add(
        BENCH,
        &format!("{backlog_jobs} jobs at once: Redis store vs SQLite store (wall time)"),
        format!(
            "{} vs {} = {:.2}x",
            fmt_secs(wall.b_median()),
            fmt_secs(wall.a_median()),
            wall.ratio()
        ),
        "informative",
        None,
    );
    let Side {
        runtime: a,
        client: a_client,
        subscription: a_sub,
    } = sqlite;
    let Side {
        runtime: b,
        client: b_client,
        subscription: b_sub,
    } = on_redis;
    drop((a_sub, b_sub, a_client, b_client));
    drop(rt);
    a.proc.stop();
    b.proc.stop();
    fake.proc.stop();
    drop(redis);
}
