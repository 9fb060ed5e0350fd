//! Benchmark 8: the Redis store against the embedded one. Two runtimes in
//! front of the same fake ComfyUI, one on the SQLite store (the default) and
//! one on a real `redis-server` on this machine (append-only, `everysec`),
//! run the same one-node jobs in alternating windows: one at a time (CPU per
//! job, added latency) and a backlog at once (throughput). The Redis side's
//! CPU counts the runtime and `redis-server` together, since both work for it.
//!
//! Then replicas: 1, 2 and 3 runtimes on one Redis key prefix in front of 12
//! fake backends (the first holds the lease and runs the work, the others
//! forward to it; see the README's "Scale-out on Redis"), jobs submitted
//! round-robin across them and their ends read on the last one: added
//! latency one at a time, wall time of a backlog, and CPU per job of every
//! replica and redis-server together, in alternating windows.

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
    replicas(mode, report);
}

/// Replicas on one key prefix, the clients of each and a subscription on the last.
struct Cluster {
    replicas: Vec<harness::Runtime>,
    clients: Vec<RuntimeClient>,
    subscription: Subscription,
}

/// One window of a cluster: job latencies (sequential), backlog wall time, CPU per job.
struct ClusterWindow {
    ended: Vec<f64>,
    backlog: f64,
    cpu_per_job: f64,
}

impl Cluster {
    fn start(
        rt: &tokio::runtime::Runtime,
        redis: &RedisServer,
        backends: &[&str],
        count: usize,
    ) -> Self {
        let prefix = format!("\n[redis]\nkey_prefix = \"bench-{count}\"\n");
        let replicas: Vec<harness::Runtime> = (0..count)
            .map(|_| harness::start_runtime(StoreKind::Redis(redis.url()), backends, &prefix))
            .collect();
        let clients: Vec<RuntimeClient> = replicas
            .iter()
            .map(|r| {
                rt.block_on(async {
                    wait_ready(r.endpoint()).await;
                    RuntimeClient::connect(r.endpoint()).await
                })
            })
            .collect();
        let subscription = rt.block_on(Subscription::open(
            &clients.last().expect("a replica").events,
        ));
        Self {
            replicas,
            clients,
            subscription,
        }
    }

    fn cpu(&self, redis: &RedisServer) -> f64 {
        self.replicas.iter().map(|r| r.proc.cpu()).sum::<f64>() + redis_cpu(redis)
    }

    fn window(
        &self,
        rt: &tokio::runtime::Runtime,
        redis: &RedisServer,
        nonces: &Nonces,
        jobs: usize,
        backlog_jobs: usize,
    ) -> ClusterWindow {
        let before = self.cpu(redis);
        let ended = rt.block_on(async {
            let mut ended = Vec::with_capacity(jobs);
            for i in 0..jobs {
                let client = &self.clients[i % self.clients.len()];
                ended.push(
                    client
                        .job_subscribed(&self.subscription, nonces.next())
                        .await,
                );
            }
            ended
        });
        let backlog = rt.block_on(async {
            let start = Instant::now();
            let submits = (0..backlog_jobs)
                .map(|i| self.clients[i % self.clients.len()].submit(nonces.next()));
            let mut last = start;
            for id in futures_util::future::join_all(submits).await {
                last = last.max(self.subscription.wait_end(id).await);
            }
            (last - start).as_secs_f64()
        });
        ClusterWindow {
            ended,
            backlog,
            cpu_per_job: (self.cpu(redis) - before) / (jobs + backlog_jobs) as f64,
        }
    }

    fn stop(self) {
        let Self {
            replicas,
            clients,
            subscription,
        } = self;
        drop((subscription, clients));
        for replica in replicas.into_iter().rev() {
            replica.proc.stop();
        }
    }
}

/// Waits until the replica at `endpoint` reports readiness SERVING (a forwarding replica: once
/// it knows the lease holder).
async fn wait_ready(endpoint: String) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            && let Ok(answer) = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "readiness".into(),
                })
                .await
            && answer.into_inner().status == ServingStatus::Serving as i32
        {
            return;
        }
        assert!(Instant::now() < deadline, "{endpoint} never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// 1, 2 and 3 replicas in front of 12 backends (see the module docs).
fn replicas(mode: Mode, report: &mut Report) {
    let jobs = mode.pick(3, 100);
    let backlog_jobs = mode.pick(6, 120);
    let pairs = mode.pairs();
    let redis = RedisServer::start().expect("redis-server starts (the test command installs it)");
    let fakes: Vec<harness::Fake> = (0..mode.pick(3, 12))
        .map(|_| harness::start_fake())
        .collect();
    let urls: Vec<&str> = fakes.iter().map(|f| f.url.as_str()).collect();
    let rt = harness::client_runtime();
    let clusters: Vec<Cluster> = (1..=3)
        .map(|n| Cluster::start(&rt, &redis, &urls, n))
        .collect();
    println!(
        "replicas: 1, 2 and 3 runtimes on one prefix, {} backends; {jobs} sequential and {backlog_jobs} concurrent jobs per window, {pairs} round(s)",
        urls.len()
    );
    let nonces = Nonces::default();
    for cluster in &clusters {
        cluster.window(&rt, &redis, &nonces, mode.pick(1, 10), mode.pick(2, 20));
    }
    let mut p50 = vec![Vec::new(); 3];
    let mut wall = vec![Vec::new(); 3];
    let mut cpu = vec![Vec::new(); 3];
    for round in 0..pairs {
        for (n, cluster) in clusters.iter().enumerate() {
            let w = cluster.window(&rt, &redis, &nonces, jobs, backlog_jobs);
            println!(
                "round {round}, {} replica(s): p50 {}, {backlog_jobs} at once {}, CPU per job {}",
                n + 1,
                fmt_secs(median(&w.ended)),
                fmt_secs(w.backlog),
                fmt_secs(w.cpu_per_job)
            );
            p50[n].push(median(&w.ended));
            wall[n].push(w.backlog);
            cpu[n].push(w.cpu_per_job);
        }
    }
    let row = |values: &[Vec<f64>], show: &dyn Fn(f64) -> String| {
        let medians: Vec<f64> = values.iter().map(|v| median(v)).collect();
        format!(
            "{} / {} / {} ({:.2}x / {:.2}x of 1)",
            show(medians[0]),
            show(medians[1]),
            show(medians[2]),
            medians[1] / medians[0],
            medians[2] / medians[0]
        )
    };
    report.add(
        BENCH,
        "1 / 2 / 3 replicas: p50 submit -> completed, round-robin",
        row(&p50, &|v| fmt_secs(v)),
        "informative",
        None,
    );
    report.add(
        BENCH,
        &format!("1 / 2 / 3 replicas: throughput, {backlog_jobs} jobs at once"),
        row(
            &wall
                .iter()
                .map(|w| w.iter().map(|s| backlog_jobs as f64 / s).collect())
                .collect::<Vec<_>>(),
            &|v| harness::fmt_rate(v, "jobs"),
        ),
        "informative",
        None,
    );
    report.add(
        BENCH,
        "1 / 2 / 3 replicas: CPU per job, every replica + redis-server",
        row(&cpu, &|v| fmt_secs(v)),
        "informative",
        None,
    );
    drop(rt);
    for cluster in clusters {
        cluster.stop();
    }
    for fake in fakes {
        fake.proc.stop();
    }
    drop(redis);
}
