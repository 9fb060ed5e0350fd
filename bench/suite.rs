//! The benchmark suite: `cargo bench --bench suite` runs every benchmark at
//! full size and prints one table; `cargo test --bench suite` (part of the
//! test command through `--all-targets`) runs each at tiny sizes, so the
//! suite keeps working. Cargo passes `--bench` only to the former.
//!
//! Every figure is a ratio against a baseline measured in the same run, in
//! alternating pairs, with the server's CPU time from `/proc` as the main
//! figure (this machine is shared and noisy; see `harness.rs`).
//!
//! Options after `--`: `--only NAME[,NAME]` (submit, latency, fanout,
//! memory, footprint, peer, auth, redis), `--smoke` (tiny sizes under `cargo bench`),
//! `--queued N` (the largest queue of benchmarks 1 and 4; default 1,000,000),
//! `--markdown FILE` (also write the table there). Under `cargo bench` (with `--bench`) any
//! other argument stops the suite before it starts, as does a name `--only` does not know;
//! under `cargo test` the test harness's own flags pass.
//!
//! This executable is also each baseline server: with `COMFY_BENCH_ROLE`
//! set it serves that baseline instead of running the suite.

mod auth;
mod baseline_broadcast;
mod baseline_hello;
mod fanout;
mod footprint;
mod harness;
mod latency;
mod memory;
mod peer;
mod progress;
mod redis;
mod submit;

use harness::{Mode, Report};

fn main() {
    if let Ok(role) = std::env::var(harness::ROLE_ENV) {
        serve_role(&role);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benchmarks: [(&str, Benchmark); 8] = [
        ("submit", submit::run),
        ("latency", latency::run),
        ("fanout", fanout::run),
        ("memory", memory::run),
        ("footprint", footprint::run),
        ("peer", peer::run),
        ("auth", auth::run),
        ("redis", redis::run),
    ];
    let names: Vec<&str> = benchmarks.iter().map(|(name, _)| *name).collect();
    let options = parse_args(&args, &names).unwrap_or_else(|problem| {
        eprintln!(
            "{problem}\noptions: --only NAME[,NAME] ({}), --smoke, --queued N, --markdown FILE",
            names.join(" ")
        );
        std::process::exit(2);
    });
    let mode = if options.bench && !options.smoke {
        Mode::Full
    } else {
        Mode::Smoke
    };
    let (only, markdown) = (options.only, options.markdown);
    if let Some(queued) = options.queued {
        harness::set_queued(queued);
    }
    let selected = |name: &str| {
        only.as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    };

    println!("comfy-reality benchmark suite ({mode:?} run)");
    let mut report = Report::new(mode);
    for (name, run) in benchmarks {
        if selected(name) {
            println!("\n== {name}");
            run(mode, &mut report);
        }
    }
    let table = report.markdown();
    println!("\n{table}");
    if let Some(path) = markdown {
        std::fs::write(&path, &table).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
    if mode == Mode::Full {
        println!("{} figure(s) missed their target", report.missed());
    }
}

/// One benchmark's entry point.
type Benchmark = fn(Mode, &mut Report);

/// The suite's options.
#[derive(Default)]
struct Options {
    /// `--bench`: run by `cargo bench` (full sizes unless `--smoke`).
    bench: bool,
    /// `--smoke`: tiny sizes under `cargo bench`.
    smoke: bool,
    /// `--only`: the benchmarks to run; all when `None`.
    only: Option<Vec<String>>,
    /// `--markdown`: where to write the table as well.
    markdown: Option<String>,
    /// `--queued`: the largest queue of benchmarks 1 and 4.
    queued: Option<usize>,
}

/// Reads `args` in one pass. Under `cargo bench` (`--bench`) an argument the suite does not
/// know is an error; under `cargo test` it is the test harness's and passes. Either way an
/// option needs its value, `--only` names benchmarks in `names`, and `--queued` a number.
fn parse_args(args: &[String], names: &[&str]) -> Result<Options, String> {
    let strict = args.iter().any(|a| a == "--bench");
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => options.bench = true,
            "--smoke" => options.smoke = true,
            "--only" => {
                let list: Vec<String> = value()?.split(',').map(str::to_owned).collect();
                if let Some(unknown) = list.iter().find(|n| !names.contains(&n.as_str())) {
                    return Err(format!("--only: no benchmark is called {unknown:?}"));
                }
                options.only = Some(list);
            }
            "--queued" => {
                let value = value()?;
                let queued = value
                    .parse()
                    .map_err(|_| format!("--queued takes a number of executions, not {value:?}"))?;
                options.queued = Some(queued);
            }
            "--markdown" => options.markdown = Some(value()?.clone()),
            other if strict => return Err(format!("unknown argument {other:?}")),
            _ => {}
        }
    }
    Ok(options)
}

/// Serves one baseline server (this process was started by the suite).
fn serve_role(role: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match role {
        "hello" => runtime.block_on(baseline_hello::serve()),
        "broadcast" => runtime.block_on(baseline_broadcast::serve()),
        other => panic!("unknown benchmark role {other:?}"),
    }
}
