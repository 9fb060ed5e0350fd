//! The command line: `serve`, `healthcheck` and `config check|print`, and
//! the client commands that talk to a running server (`submit`, `watch`,
//! `get`, `list`, `cancel`, `retry`, `events`, `workflows`, `artifacts`).
//! Parsing and process concerns live here; the work is done by the library
//! (the server) or by the server itself through the generated gRPC clients.

mod artifacts;
pub mod client;
mod events;
mod executions;
mod healthcheck;
mod live;
mod overrides;
mod workflows;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, CliOverrides, Config, ConfigSources};
use crate::signals::ShutdownSignals;

/// Exit codes of the client commands, shown by `--help`.
const EXIT_CODES: &str = "\
Exit codes (client commands):
  0  success
  1  the execution failed, was cancelled or timed out (submit --watch or
     --download, watch with ids); workflows validate: the workflow is invalid
  2  usage: bad flags, or a local file that cannot be read or written
  3  the server is unreachable
  4  the server refused the call (the gRPC code and message, and each field
     violation, on stderr)";

/// comfy-reality: a production gRPC runtime for ComfyUI workflows.
#[derive(Debug, Parser)]
#[command(name = "comfy-reality", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// TOML configuration file (layered over the defaults, under
    /// COMFY_REALITY__SECTION__KEY environment variables and flags).
    #[arg(long, global = true, env = "COMFY_REALITY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Connection and output flags of the client commands.
    #[command(flatten)]
    pub client: client::ClientArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC service.
    Serve(ServeArgs),
    /// Exit 0 when the service answers SERVING on gRPC health (for container HEALTHCHECKs).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make API keys for `[[auth.principals]]`.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The commands that talk to a running server.
    #[command(flatten)]
    Client(ClientCommand),
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a fresh API key and the hex SHA-256 of its UTF-8 text, for a principal's
    /// `api_key_sha256`. The key is shown once and stored nowhere.
    New,
}

/// Flags for the settings people change most.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// gRPC listen address; port 0 picks a free port (the bound address is printed on stdout).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Prometheus metrics listen address.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// A ComfyUI backend URL; repeat for a pool. Replaces the configured servers.
    #[arg(long = "comfyui", value_name = "URL")]
    pub comfyui: Vec<String>,
    /// Directory for the runtime's data.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log level: debug, info, warning, error, critical.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: json or text.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> CliOverrides {
        CliOverrides {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            comfyui: self.comfyui.clone(),
            data_dir: self.data_dir.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
        }
    }
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration; exit 0 when it is valid.
    Check(ServeArgs),
    /// Print the effective configuration as TOML, secrets redacted.
    Print(ServeArgs),
}

fn load(config: &Option<PathBuf>, args: &ServeArgs) -> Result<Config, config::ConfigError> {
    config::load(&ConfigSources {
        file: config.clone(),
        env: true,
        overrides: args.overrides(),
    })
}

/// The live view's settings from the layered configuration, read only when
/// stdout is a terminal (otherwise the view is never drawn). A configuration
/// that does not load is reported and the defaults are used: it is the
/// server's, and the client only borrows two of its settings.
fn ui_settings(file: &Option<PathBuf>) -> live::UiSettings {
    use std::io::IsTerminal as _;
    if !std::io::stdout().is_terminal() {
        return live::UiSettings::default();
    }
    match load(file, &ServeArgs::default()) {
        Ok(config) => live::UiSettings {
            enabled: config.runtime.enable_ui,
            interval: config.runtime.ui_update_interval(),
        },
        Err(error) => {
            eprintln!("warning: configuration not loaded, live view defaults used: {error}");
            live::UiSettings::default()
        }
    }
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let client_args = cli.client;
    let config_file = cli.config.clone();
    let client_command = |command: ClientCommand| {
        let ui = match &command {
            ClientCommand::Submit(args) if args.watch => ui_settings(&config_file),
            ClientCommand::Watch(_) => ui_settings(&config_file),
            _ => live::UiSettings::default(),
        };
        Ok(client::block_on(async move {
            let client = client::Client::connect(&client_args).await?;
            match command {
                ClientCommand::Submit(args) => executions::submit(&client, args, ui).await,
                ClientCommand::Watch(args) => executions::watch(&client, args, ui).await,
                ClientCommand::Get(args) => executions::get(&client, args).await,
                ClientCommand::List(args) => executions::list(&client, args).await,
                ClientCommand::Cancel(args) => executions::cancel(&client, args).await,
                ClientCommand::Retry(args) => executions::retry(&client, args).await,
                ClientCommand::Events(args) => events::run(&client, args).await,
                ClientCommand::Workflows(command) => workflows::run(&client, command).await,
                ClientCommand::Artifacts(command) => artifacts::run(&client, command).await,
            }
        }))
    };
    match cli.command {
        Command::Client(command) => client_command(command),
        Command::Serve(args) => {
            let config = load(&cli.config, &args)?;
            serve(config)
        }
        Command::Healthcheck(args) => {
            let addr = match args.addr {
                Some(addr) => addr,
                None => {
                    // Behind TLS, the plaintext health-only listener is the one to ask.
                    let config = load(&cli.config, &ServeArgs::default())?;
                    healthcheck::probe_addr(
                        config.tls.health_listen.unwrap_or(config.service.listen),
                    )
                }
            };
            healthcheck::run(&args, addr)
        }
        Command::Config(ConfigCommand::Check(args)) => match load(&cli.config, &args) {
            Ok(_) => {
                println!("configuration is valid");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("invalid configuration: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Keys(KeysCommand::New) => {
            let key = crate::api::access::new_key()
                .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
            println!("key = \"{key}\"");
            println!(
                "api_key_sha256 = \"{}\"",
                crate::api::access::key_sha256_hex(&key)
            );
            eprintln!(
                "give the key to the client (authorization: Bearer <key>); put only the hash into the principal's api_key_sha256 list"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Print(args)) => {
            let config = load(&cli.config, &args)?;
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The commands that talk to a running server.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Submit a workflow (ComfyUI API-format JSON) for execution.
    #[command(after_help = EXIT_CODES)]
    Submit(executions::SubmitArgs),
    /// Print the events of executions as they happen, until they end
    /// (with ids) or Ctrl-C (without).
    #[command(after_help = EXIT_CODES)]
    Watch(executions::WatchArgs),
    /// Show one execution with its tasks.
    #[command(after_help = EXIT_CODES)]
    Get(executions::GetArgs),
    /// List executions, oldest first.
    #[command(after_help = EXIT_CODES)]
    List(executions::ListArgs),
    /// Cancel an execution.
    #[command(after_help = EXIT_CODES)]
    Cancel(executions::CancelArgs),
    /// Retry a failed or cancelled task.
    #[command(after_help = EXIT_CODES)]
    Retry(executions::RetryArgs),
    /// Print the retained events, or follow new ones (resumable).
    #[command(after_help = EXIT_CODES)]
    Events(events::EventsArgs),
    /// Register, list, show, delete or validate workflows.
    #[command(subcommand, after_help = EXIT_CODES)]
    Workflows(workflows::WorkflowsCommand),
    /// Download an execution's artifacts.
    #[command(subcommand, after_help = EXIT_CODES)]
    Artifacts(artifacts::ArtifactsCommand),
}

/// The server's async runtime for `service.worker_threads` (0: one thread per core). One thread
/// runs tokio's current-thread scheduler: a task woken there runs after those already waiting,
/// so the responses and events that one turn makes ready are all handed to their connection
/// before its task, woken by the first, flushes them, in one write. The multi-thread scheduler
/// runs a woken task next (its LIFO slot), so a connection woken by its first response flushed
/// each response alone.
fn async_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build()
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let _log_guard = crate::telemetry::init(&config.runtime)?;
    let runtime =
        async_runtime(config.service.worker_threads).context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // The store first: a locked, corrupt or unwritable one (or a Redis that cannot be
        // reached) stops startup with its path before any address is announced.
        let backing = crate::server::open_backing(&config)?;
        let listener = tokio::net::TcpListener::bind(config.service.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.service.listen))?;
        let addr = listener.local_addr()?;
        let metrics = if config.runtime.enable_metrics {
            Some(bind_metrics(&config).await?)
        } else {
            None
        };
        // Handlers first: a signal that arrives right after the address is
        // printed must shut down cleanly, not kill the process.
        let signals = ShutdownSignals::install().context("cannot handle SIGINT and SIGTERM")?;
        // Scripts and tests read the bound addresses here: the gRPC one on the
        // first line, the metrics one (when enabled) on the second.
        println!("comfy-reality listening on {addr}");
        tracing::info!(
            %addr,
            version = env!("CARGO_PKG_VERSION"),
            worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            "serving gRPC"
        );
        let shutdown = CancellationToken::new();
        // The endpoint outlives the gRPC drain, so scrapes see it; then it stops.
        let metrics_shutdown = CancellationToken::new();
        let metrics_server = match metrics {
            Some((listener, handle)) => {
                let metrics_addr = listener.local_addr()?;
                println!("comfy-reality metrics on http://{metrics_addr}/metrics");
                tracing::info!(addr = %metrics_addr, "serving Prometheus metrics");
                Some(tokio::spawn(crate::telemetry::metrics_endpoint::serve(
                    listener,
                    handle,
                    metrics_shutdown.clone(),
                )))
            }
            None => None,
        };
        // Third line, when configured: the plaintext health-only listener.
        let health = match config.tls.health_listen {
            Some(addr) => {
                let health = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for health probes on {addr}"))?;
                println!("comfy-reality health on {}", health.local_addr()?);
                Some(health)
            }
            None => None,
        };
        let signals = tokio::spawn(cancel_on_signal(signals, shutdown.clone()));
        let result =
            crate::server::serve_backing(config, backing, listener, health, shutdown).await;
        signals.abort();
        metrics_shutdown.cancel();
        if let Some(metrics_server) = metrics_server {
            match metrics_server.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "metrics endpoint failed"),
                Err(error) => tracing::warn!(%error, "metrics endpoint task failed"),
            }
        }
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Binds the metrics listener and installs the process-global Prometheus
/// recorder (here and nowhere else: `crate::run` may run many times in one
/// process, a recorder only once).
async fn bind_metrics(
    config: &Config,
) -> anyhow::Result<(
    tokio::net::TcpListener,
    metrics_exporter_prometheus::PrometheusHandle,
)> {
    let metrics_addr = config.metrics_addr();
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {metrics_addr}"))?;
    let handle = crate::telemetry::metrics::install_recorder()
        .map_err(crate::telemetry::TelemetryError::from)?;
    Ok((listener, handle))
}

/// Cancels `token` when SIGINT or SIGTERM arrives.
async fn cancel_on_signal(mut signals: ShutdownSignals, token: CancellationToken) {
    let name = signals.recv().await;
    tracing::info!(signal = name, "shutdown signal received");
    token.cancel();
}

/// An error and its causes on one line, `outer: cause: root`, each distinct
/// message once: transport stacks often repeat a layer's text in its source
/// ("tcp connect error: tcp connect error: ..."), which `{:#}` prints twice.
pub(crate) fn error_chain(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    #[test]
    fn a_repeated_cause_is_printed_once() {
        let root = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = anyhow::Error::new(root)
            .context("tcp connect error")
            .context("tcp connect error")
            .context("cannot connect to 127.0.0.1:1");
        assert_eq!(
            error_chain(&error),
            "cannot connect to 127.0.0.1:1: tcp connect error: refused"
        );
    }
}

#[cfg(test)]
mod cli_definition_tests {
    use clap::CommandFactory as _;

    /// Catches clashing flags (a subcommand's flag shadowing a global one)
    /// at test time instead of as a panic when the flag is used.
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

#[cfg(test)]
mod runtime_tests {
    use tokio::runtime::RuntimeFlavor;

    /// One thread is the current-thread scheduler (what lets a connection write the responses
    /// of one turn together); 0 and more than one are the multi-thread scheduler.
    #[test]
    fn one_worker_thread_is_the_current_thread_scheduler() {
        let flavor = |threads| {
            let runtime = super::async_runtime(threads).expect("runtime");
            let flavor = runtime.handle().runtime_flavor();
            let workers = runtime.metrics().num_workers();
            (flavor, workers)
        };
        assert_eq!(flavor(1), (RuntimeFlavor::CurrentThread, 1));
        assert_eq!(flavor(2), (RuntimeFlavor::MultiThread, 2));
        let (all, workers) = flavor(0);
        assert_eq!(all, RuntimeFlavor::MultiThread);
        assert_eq!(
            workers,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
}
