//! `comfy-reality-fake-comfyui`: runs the fake ComfyUI server of
//! `comfy_reality_fake_comfyui` as a process, for manual testing, other
//! languages' SDK tests and the quick start.
//!
//! Prints exactly one line on stdout once the port is bound
//! (`comfy-reality-fake-comfyui listening on http://HOST:PORT`) and stops
//! cleanly, exit code 0, on SIGINT or SIGTERM.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use comfy_reality_fake_comfyui::{DeviceType, FakeComfy, FakeOptions};

/// A fake ComfyUI 0.33 server.
#[derive(Debug, Parser)]
#[command(name = "comfy-reality-fake-comfyui", version)]
struct Args {
    /// Port to listen on; 0 picks a free one.
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Where SaveImage writes; a temporary folder when omitted.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Multiplies TestDelay sleeps (0.05 makes them 20 times faster).
    #[arg(long, default_value_t = 1.0, value_parser = parse_time_scale)]
    time_scale: f64,
    /// Fault: close every WebSocket and refuse new ones (also `POST /__fake/faults`).
    #[arg(long)]
    drop_websockets: bool,
    /// Fault: run prompts but send no WebSocket messages at all.
    #[arg(long)]
    silent: bool,
    /// Fault: delay every HTTP answer by this many milliseconds.
    #[arg(long, value_name = "MS")]
    slow_ms: Option<u64>,
    /// Fault: answer every HTTP route with a 500 text/plain page.
    #[arg(long)]
    http_500: bool,
    /// Fault: close accepted connections at once (the control routes still answer).
    #[arg(long)]
    refuse_connections: bool,
    /// The device `/system_stats` reports: cuda, cpu, mps or directml.
    #[arg(long, default_value = "cpu", value_parser = DeviceType::parse)]
    device_type: DeviceType,
    /// The device's memory in MiB (default: the kind's; the captured machine's RAM for cpu).
    /// The memory in use is set with `POST /__fake/vram {"used_mb": N}`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    vram_total_mb: Option<u64>,
}

/// Accepts finite, non-negative scales.
fn parse_time_scale(raw: &str) -> Result<f64, String> {
    let value: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err("must be a finite number >= 0".to_owned())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    // Handlers first, so a signal right after the address is printed is not lost.
    let mut signals = Signals::install()?;
    let listener = tokio::net::TcpListener::bind((args.host, args.port)).await?;
    let options = FakeOptions {
        output_dir: args.output_dir,
        time_scale: args.time_scale,
        device_type: args.device_type,
        vram_total_mb: args.vram_total_mb,
        ..FakeOptions::default()
    };
    let fake = FakeComfy::start_on(listener, options).await?;
    let faults = fake.faults();
    faults.set_drop_websockets(args.drop_websockets);
    faults.set_silent(args.silent);
    faults.set_slow(args.slow_ms.map(std::time::Duration::from_millis));
    faults.set_http_500(args.http_500);
    faults.set_refuse_connections(args.refuse_connections);
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "comfy-reality-fake-comfyui listening on {}",
            fake.base_url()
        )?;
        stdout.flush()?;
    }
    signals.recv().await;
    fake.shutdown().await;
    Ok(())
}

/// SIGINT and SIGTERM (`ctrl_c` alone misses SIGTERM, which is what test
/// harnesses, Kubernetes and Docker send), installed before the address is
/// printed.
struct Signals {
    /// SIGTERM.
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    /// SIGINT.
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
