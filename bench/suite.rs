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
//! other argument, or a name `--only` does not know, stops the suite before it starts; under
//! `cargo test` the test harness's own flags pass.
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
    if args.iter().any(|a| a == "--bench")
        && let Err(problem) = check_args(&args, &names)
    {
        eprintln!(
            "{problem}\noptions: --only NAME[,NAME] ({}), --smoke, --queued N, --markdown FILE",
            names.join(" ")
        );
        std::process::exit(2);
    }
    let mode = if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--smoke") {
        Mode::Full
    } else {
        Mode::Smoke
    };
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_owned).collect());
    let markdown = args
        .iter()
        .position(|a| a == "--markdown")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if let Some(queued) = args
        .iter()
        .position(|a| a == "--queued")
        .and_then(|i| args.get(i + 1))
    {
        let queued = queued
            .parse()
            .expect("--queued takes a number of executions");
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

/// Whether `args` (as `cargo bench` passes them) are all the suite's: its flags, each option
/// with its value, and only benchmark names in `--only`.
fn check_args(args: &[String], names: &[&str]) -> Result<(), String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" | "--smoke" => {}
            "--only" | "--queued" | "--markdown" => {
                let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                if arg == "--only"
                    && let Some(unknown) = value.split(',').find(|n| !names.contains(n))
                {
                    return Err(format!("--only: no benchmark is called {unknown:?}"));
                }
                if arg == "--queued" && value.parse::<usize>().is_err() {
                    return Err(format!(
                        "--queued takes a number of executions, not {value:?}"
                    ));
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(())
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
