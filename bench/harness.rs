//! What every benchmark shares: processes to measure (the runtime, the fake
//! ComfyUI, the baselines), their CPU time and memory read from `/proc`,
//! alternating A/B pairs with median ratios, percentiles, and the result
//! table.
//!
//! It owns no benchmark of its own and never asserts on a timing: a figure
//! that misses its target is reported, not failed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The runtime's binary: the one cargo built for this bench target, or another build named
/// by [`RUNTIME_BIN_ENV`] (to compare two builds with one suite binary).
pub fn runtime_bin() -> PathBuf {
    std::env::var_os(RUNTIME_BIN_ENV).map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_comfy-reality")),
        PathBuf::from,
    )
}
/// The environment variable naming another runtime binary for [`runtime_bin`].
pub const RUNTIME_BIN_ENV: &str = "COMFY_BENCH_RUNTIME_BIN";
/// The fake ComfyUI's binary (its own crate of the workspace; built beside
/// this one by `cargo test` at the root and by `scripts/bench.sh`).
pub fn fake_bin() -> PathBuf {
    comfy_reality_fake_comfyui::binary_path().unwrap_or_else(|e| panic!("{e}"))
}
/// The environment variable that makes this executable run a baseline
/// server instead of the suite (see `suite.rs`).
pub const ROLE_ENV: &str = "COMFY_BENCH_ROLE";

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Tiny sizes, under `cargo test`: proves every benchmark still runs.
    Smoke,
    /// The real sizes, under `cargo bench`.
    Full,
}

impl Mode {
    /// `full` in a full run, `smoke` in a smoke run.
    pub fn pick<T>(self, smoke: T, full: T) -> T {
        match self {
            Mode::Smoke => smoke,
            Mode::Full => full,
        }
    }

    /// Alternating pairs per comparison (the issue asks for at least 5).
    pub fn pairs(self) -> usize {
        self.pick(1, 5)
    }
}

static QUEUED: OnceLock<usize> = OnceLock::new();

/// Sets the largest queue of benchmarks 1 and 4 (`--queued N`).
pub fn set_queued(executions: usize) {
    let _ = QUEUED.set(executions);
}

/// The largest queue of benchmarks 1 and 4: `--queued N`, else 1,000,000.
pub fn queued() -> usize {
    QUEUED.get().copied().unwrap_or(1_000_000)
}

// ---------------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf only reads a constant of the system.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 { ticks as f64 } else { 100.0 }
    })
}

/// User + system CPU seconds a process has used so far, all threads
/// included (also the ones that have exited).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces; the fields start after its ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / clock_ticks()
}

/// CPU seconds this process has used so far.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id())
}

/// The CPU time the calling thread has used, in seconds (nanosecond resolution).
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Resident memory of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// Peak resident memory of a process in bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(key))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process that is killed when dropped.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// The process.
    child: Child,
    /// Its stdout after the lines already read.
    stdout: Option<BufReader<ChildStdout>>,
    /// Where its stderr goes, shown when it fails to start.
    log: Option<PathBuf>,
    /// Directory it owns (config, data, log), removed on drop.
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// Starts `command` with a piped stdout; its stderr goes to a file in
    /// `dir` when given.
    pub fn spawn(name: &str, mut command: Command, dir: Option<tempfile::TempDir>) -> Self {
        command.stdout(Stdio::piped()).stdin(Stdio::null());
        let log = dir.as_ref().map(|dir| dir.path().join("stderr.log"));
        if let Some(log) = &log {
            let file = std::fs::File::create(log).expect("create log file");
            command.stderr(file);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().map(BufReader::new);
        Self {
            name: name.to_owned(),
            child,
            stdout,
            log,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until one contains `marker`; returns the text after it.
    pub fn read_after(&mut self, marker: &str) -> String {
        let stdout = self.stdout.as_mut().expect("stdout is piped");
        let mut line = String::new();
        loop {
            line.clear();
            let read = stdout.read_line(&mut line).unwrap_or(0);
            if read == 0 {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "{} ended before printing {marker:?} ({status:?})",
                    self.name
                );
            }
            if let Some((_, after)) = line.split_once(marker) {
                return after.trim().to_owned();
            }
        }
    }

    /// CPU seconds used so far.
    pub fn cpu(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// Stops it with SIGTERM and waits up to 10 s, then kills it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A running fake ComfyUI.
pub struct Fake {
    /// The process.
    pub proc: Proc,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
}

/// Starts a fake ComfyUI on a free port, writing into a temporary folder.
pub fn start_fake() -> Fake {
    start_fake_scaled(1.0)
}

/// [`start_fake`] with its TestDelay sleeps and progress throttle (0.1 s, as ComfyUI's)
/// multiplied by `time_scale`.
pub fn start_fake_scaled(time_scale: f64) -> Fake {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(fake_bin());
    command
        .args([
            "--port",
            "0",
            "--time-scale",
            &time_scale.to_string(),
            "--output-dir",
        ])
        .arg(dir.path().join("output"));
    let mut proc = Proc::spawn("fake ComfyUI", command, Some(dir));
    let url = proc.read_after("listening on ");
    Fake { proc, url }
}

/// A running comfy-reality server.
pub struct Runtime {
    /// The process.
    pub proc: Proc,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// When the process was started.
    pub started: Instant,
}

impl Runtime {
    /// `http://ADDR` for tonic.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Which store a runtime uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// `queue_type = "memory"`.
    Memory,
    /// `queue_type = "sqlite"` (the default), in a fresh data directory.
    Sqlite,
    /// `queue_type = "redis"` at this url.
    Redis(String),
}

/// Starts the runtime with `extra_toml` appended to a benchmark base
/// configuration (warn-level logs to stderr discarded, no metrics listener,
/// the chosen store in a fresh data directory, backends from `backends`).
pub fn start_runtime(store: StoreKind, backends: &[&str], extra_toml: &str) -> Runtime {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let queue = match &store {
        StoreKind::Memory => "queue_type = \"memory\"".to_owned(),
        StoreKind::Sqlite => "queue_type = \"sqlite\"".to_owned(),
        StoreKind::Redis(url) => format!("queue_type = \"redis\"\nqueue_url = {url:?}"),
    };
    let mut toml = format!(
        "[service]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n\
         [runtime]\n{queue}\nlog_level = \"warning\"\n{extra_toml}\n"
    );
    for (i, url) in backends.iter().enumerate() {
        let _ = write!(toml, "\n[[servers]]\nname = \"b{i}\"\nurl = \"{url}\"\n");
    }
    let config = dir.path().join("bench.toml");
    std::fs::write(&config, toml).expect("write config");
    let mut command = Command::new(runtime_bin());
    command
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("COMFY_REALITY_CONFIG");
    for (key, _) in std::env::vars() {
        if key.starts_with("COMFY_REALITY__") {
            command.env_remove(key);
        }
    }
    let started = Instant::now();
    let mut proc = Proc::spawn("comfy-reality", command, Some(dir));
    let addr = proc
        .read_after("listening on ")
        .parse()
        .expect("runtime prints its address");
    Runtime {
        proc,
        addr,
        started,
    }
}

/// A baseline server: this executable started in another role.
pub struct Baseline {
    /// The process.
    pub proc: Proc,
    /// Its gRPC address.
    pub addr: SocketAddr,
}

impl Baseline {
    /// `http://ADDR` for tonic.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts this executable as the baseline server `role` (see `baselines.rs`).
pub fn start_baseline(role: &str) -> Baseline {
    let exe = std::env::current_exe().expect("own executable");
    let mut command = Command::new(exe);
    command.env(ROLE_ENV, role).stderr(Stdio::inherit());
    let mut proc = Proc::spawn(role, command, None);
    let addr = proc
        .read_after("listening on ")
        .parse()
        .expect("baseline prints its address");
    Baseline { proc, addr }
}

/// A one-thread tokio runtime for a load generator: its own CPU stays small
/// next to the servers' on a 2-core machine, and in-process measurements
/// (receivers and publisher on one thread) mirror one server worker.
///
/// Drop it before the runtime processes it talked to (declare it after them, or drop it by
/// hand): a process asked to stop drains its connections first, and a connection whose client
/// end belongs to a runtime nobody polls never answers the drain (HTTP/2's GOAWAY and its
/// ping), so the process would wait out its whole grace (10 s) before it stops.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A path for scratch files that lives as long as the returned guard.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Where a file of the repository is.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`-th percentile (nearest rank) of `values` (0 when empty).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Results of alternating A/B pairs for one figure.
#[derive(Debug, Clone, Default)]
pub struct Paired {
    /// A's value in each pair.
    pub a: Vec<f64>,
    /// B's value in each pair.
    pub b: Vec<f64>,
}

impl Paired {
    /// Adds one pair.
    pub fn push(&mut self, a: f64, b: f64) {
        self.a.push(a);
        self.b.push(b);
    }

    /// The median of the per-pair ratios B / A.
    pub fn ratio(&self) -> f64 {
        let ratios: Vec<f64> = self
            .a
            .iter()
            .zip(&self.b)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, b)| b / a)
            .collect();
        median(&ratios)
    }

    /// The median of A's values.
    pub fn a_median(&self) -> f64 {
        median(&self.a)
    }

    /// The median of B's values.
    pub fn b_median(&self) -> f64 {
        median(&self.b)
    }
}

/// Runs `a` then `b`, `pairs` times (A B A B ...), each returning a set of
/// named figures, and pairs them figure by figure.
pub fn alternate<A, B>(pairs: usize, mut a: A, mut b: B) -> BTreeMap<&'static str, Paired>
where
    A: FnMut() -> Vec<(&'static str, f64)>,
    B: FnMut() -> Vec<(&'static str, f64)>,
{
    let mut out: BTreeMap<&'static str, Paired> = BTreeMap::new();
    for _ in 0..pairs {
        let a_figures = a();
        let b_figures = b();
        for (name, a_value) in a_figures {
            if let Some((_, b_value)) = b_figures.iter().find(|(n, _)| *n == name) {
                out.entry(name).or_default().push(a_value, *b_value);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Formatting and the result table
// ---------------------------------------------------------------------------------------------

/// Seconds as a short human figure (ns, µs, ms or s).
pub fn fmt_secs(seconds: f64) -> String {
    let abs = seconds.abs();
    if abs < 1e-6 {
        format!("{:.0} ns", seconds * 1e9)
    } else if abs < 1e-3 {
        format!("{:.1} µs", seconds * 1e6)
    } else if abs < 1.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

/// Bytes as a short human figure.
pub fn fmt_bytes(bytes: f64) -> String {
    if bytes.abs() < 10.0 * 1024.0 {
        format!("{bytes:.0} B")
    } else if bytes.abs() < 10.0 * 1024.0 * 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    }
}

/// A rate as a short human figure.
pub fn fmt_rate(per_second: f64, unit: &str) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M {unit}/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1} k {unit}/s", per_second / 1e3)
    } else {
        format!("{per_second:.1} {unit}/s")
    }
}

/// Whether a figure meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Met.
    Met,
    /// Missed.
    Missed,
    /// Only informative, or a smoke run (sizes too small to judge).
    Info,
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Benchmark number and name, e.g. `1 submit`.
    pub bench: String,
    /// What is measured.
    pub metric: String,
    /// The figure (with its baseline or ratio).
    pub value: String,
    /// The target, in words.
    pub target: String,
    /// Met or not.
    pub verdict: Verdict,
}

/// The rows of a whole run.
#[derive(Debug, Default)]
pub struct Report {
    /// Smoke runs never judge.
    pub mode: Option<Mode>,
    /// Rows in the order added.
    pub rows: Vec<Row>,
}

impl Report {
    /// A report for a run in `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode: Some(mode),
            rows: Vec::new(),
        }
    }

    /// Adds a row judged by `met` (`None`: informative only).
    pub fn add(
        &mut self,
        bench: &str,
        metric: &str,
        value: String,
        target: &str,
        met: Option<bool>,
    ) {
        let verdict = match (self.mode, met) {
            (Some(Mode::Smoke), _) | (_, None) => Verdict::Info,
            (_, Some(true)) => Verdict::Met,
            (_, Some(false)) => Verdict::Missed,
        };
        println!("  {metric}: {value}  [{target}]");
        self.rows.push(Row {
            bench: bench.to_owned(),
            metric: metric.to_owned(),
            value,
            target: target.to_owned(),
            verdict,
        });
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out =
            String::from("| Benchmark | Figure | Measured | Target | |\n|---|---|---|---|---|\n");
        for row in &self.rows {
            let mark = match row.verdict {
                Verdict::Met => "met",
                Verdict::Missed => "MISSED",
                Verdict::Info => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                row.bench, row.metric, row.value, row.target, mark
            );
        }
        out
    }

    /// How many judged rows missed their target.
    pub fn missed(&self) -> usize {
        self.rows
            .iter()
            .filter(|row| row.verdict == Verdict::Missed)
            .count()
    }
}
