//! What every subcommand that talks to a running server shares: the global
//! connection flags, the connection itself (the crate's generated tonic
//! clients behind one channel that adds the API key), the errors and their
//! exit codes, and the printer that writes results as text or as one JSON
//! object per line in the proto's canonical JSON mapping.
//!
//! It must not know what any one subcommand does.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_types::StatusExt as _;

use crate::api::status::code_name;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::event_service_client::EventServiceClient;
use crate::pb::execution_service_client::ExecutionServiceClient;
use crate::pb::task_service_client::TaskServiceClient;
use crate::pb::workflow_service_client::WorkflowServiceClient;

/// The default server address, the one `serve` listens on by default.
pub const DEFAULT_SERVER: &str = "127.0.0.1:50051";

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit code: the execution failed, was cancelled or timed out.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage (clap's own code), or a local file that cannot be used.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the server refused the call.
pub const EXIT_REFUSED: u8 = 4;

/// Flags of every command that talks to a running server; global, so they
/// go before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server's gRPC address: HOST:PORT, http://HOST:PORT or
    /// https://HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "COMFY_REALITY_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "ADDR"
    )]
    pub server: String,
    /// API key, sent as `authorization: Bearer KEY`.
    #[arg(
        long,
        global = true,
        env = "COMFY_REALITY_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Connect with TLS, trusting this PEM CA certificate (https:// alone
    /// uses the system's roots).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; needs --tls-key. Implies TLS.
    #[arg(long, global = true, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How results are printed: text for people, json for scripts (one JSON
    /// object per line, in the proto's JSON mapping).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why a client command did not succeed; each has its exit code.
#[derive(Debug)]
pub enum CliError {
    /// The server could not be reached.
    Unreachable {
        /// The address as the user gave it.
        server: String,
        /// What went wrong.
        error: anyhow::Error,
    },
    /// The server answered with an error status.
    Refused(Status),
    /// Something local: a file that cannot be read or written, a bad value.
    Local(anyhow::Error),
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        Self::Local(error)
    }
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Unreachable { .. } => EXIT_UNREACHABLE,
            Self::Refused(_) => EXIT_REFUSED,
            Self::Local(_) => EXIT_USAGE,
        }
    }

    /// Writes the error to stderr: one line, plus one line per field
    /// violation of a refused call.
    pub fn report(&self) {
        match self {
            Self::Unreachable { server, error } => {
                eprintln!(
                    "error: cannot reach the server at {server}: {}",
                    super::error_chain(error)
                );
            }
            Self::Refused(status) => {
                eprintln!(
                    "error: the server refused the call: {}: {}",
                    code_name(status.code()),
                    status.message()
                );
                if let Some(bad_request) = status.get_details_bad_request() {
                    for violation in bad_request.field_violations {
                        eprintln!("  {}: {}", violation.field, violation.description);
                    }
                }
            }
            Self::Local(error) => eprintln!("error: {}", super::error_chain(error)),
        }
    }
}

/// Whether `status` was made on this side because the transport failed
/// (tonic keeps the transport error as its source), rather than sent by
/// the server.
pub fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Adds `authorization: Bearer KEY` to every call when a key was given.
#[derive(Debug, Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel every generated client of this module goes through.
pub type Service = InterceptedService<Channel, Auth>;

/// A connection to a running server and the printer for its answers.
pub struct Client {
    /// The address as the user gave it, for messages.
    server: String,
    /// One channel for every call (tonic reconnects it when a call needs it).
    channel: Channel,
    /// Adds the API key.
    auth: Auth,
    /// Writes results.
    pub printer: Printer,
}

impl Client {
    /// Connects to the server named by `args`.
    pub async fn connect(args: &ClientArgs) -> Result<Self, CliError> {
        let auth = match &args.api_key {
            Some(key) => {
                Auth(Some(format!("Bearer {key}").parse().map_err(|_| {
                    anyhow::anyhow!("the API key must be printable ASCII")
                })?))
            }
            None => Auth(None),
        };
        let endpoint = endpoint(args)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| CliError::Unreachable {
                server: args.server.clone(),
                error: error.into(),
            })?;
        Ok(Self {
            server: args.server.clone(),
            channel,
            auth,
            printer: Printer::new(args.output)?,
        })
    }

    /// The error for a failed call: unreachable when the transport failed,
    /// refused when the server answered.
    pub fn error(&self, status: Status) -> CliError {
        if is_transport_failure(&status) {
            CliError::Unreachable {
                server: self.server.clone(),
                error: anyhow::Error::new(status),
            }
        } else {
            CliError::Refused(status)
        }
    }

    /// The address as the user gave it.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// An ExecutionService client.
    pub fn executions(&self) -> ExecutionServiceClient<Service> {
        ExecutionServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// An AdminService client.
    pub fn admin(&self) -> AdminServiceClient<Service> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// An EventService client.
    pub fn events(&self) -> EventServiceClient<Service> {
        EventServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// A TaskService client.
    pub fn tasks(&self) -> TaskServiceClient<Service> {
        TaskServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// A WorkflowService client.
    pub fn workflows(&self) -> WorkflowServiceClient<Service> {
        WorkflowServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
}

/// The endpoint for `--server`, with TLS when `--tls-ca` is given or the
/// address starts with https://.
fn endpoint(args: &ClientArgs) -> anyhow::Result<Endpoint> {
    let server = args.server.trim();
    let tls_flags = args.tls_ca.is_some() || args.tls_cert.is_some();
    let tls = tls_flags || server.starts_with("https://");
    let uri = if server.starts_with("http://") || server.starts_with("https://") {
        if tls_flags {
            server.replacen("http://", "https://", 1)
        } else {
            server.to_owned()
        }
    } else if tls {
        format!("https://{server}")
    } else {
        format!("http://{server}")
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .with_context(|| format!("invalid server address {server:?}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    if tls {
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &args.tls_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let cert_pem = std::fs::read(cert).with_context(|| {
                format!("cannot read the client certificate {}", cert.display())
            })?;
            let key_pem = std::fs::read(key)
                .with_context(|| format!("cannot read the client key {}", key.display()))?;
            config = config.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        }
        endpoint = endpoint.tls_config(config).context("cannot set up TLS")?;
    }
    Ok(endpoint)
}

/// Full names of the messages the CLI prints as JSON.
pub mod names {
    /// `WorkflowExecution`.
    pub const EXECUTION: &str = "comfyreality.runtime.v1.WorkflowExecution";
    /// `Task`.
    pub const TASK: &str = "comfyreality.runtime.v1.Task";
    /// `Event`.
    pub const EVENT: &str = "comfyreality.runtime.v1.Event";
    /// `WorkflowDefinition`.
    pub const WORKFLOW: &str = "comfyreality.runtime.v1.WorkflowDefinition";
    /// `DeleteWorkflowResponse`.
    pub const DELETE_WORKFLOW: &str = "comfyreality.runtime.v1.DeleteWorkflowResponse";
    /// `ValidateWorkflowResponse`.
    pub const VALIDATE_WORKFLOW: &str = "comfyreality.runtime.v1.ValidateWorkflowResponse";
}

/// Writes results on stdout: text, or one JSON object per line.
pub struct Printer {
    /// Text or JSON.
    pub format: OutputFormat,
    /// Whether text may be coloured (stdout is a terminal, NO_COLOR unset).
    color: bool,
    /// The API's descriptors, for the JSON mapping.
    pool: DescriptorPool,
}

impl Printer {
    /// A printer for `format`.
    pub fn new(format: OutputFormat) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .context("the built-in API descriptors do not decode")?;
        let color = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Ok(Self {
            format,
            color,
            pool,
        })
    }

    /// Whether text may be coloured (stdout is a terminal, NO_COLOR unset).
    pub fn color(&self) -> bool {
        self.color
    }

    /// Whether results are printed as JSON.
    pub fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// `message` (of type `name`) in the proto3 JSON mapping, on one line.
    pub fn to_json(&self, name: &str, message: &impl prost::Message) -> anyhow::Result<String> {
        let descriptor = self
            .pool
            .get_message_by_name(name)
            .with_context(|| format!("no descriptor for {name}"))?;
        let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .with_context(|| format!("cannot decode a {name}"))?;
        let mut out = Vec::new();
        let mut serializer = serde_json::Serializer::new(&mut out);
        dynamic
            .serialize_with_options(&mut serializer, &SerializeOptions::new())
            .with_context(|| format!("cannot write a {name} as JSON"))?;
        String::from_utf8(out).context("JSON is UTF-8")
    }

    /// Prints `message` as one JSON line.
    pub fn print_json(&self, name: &str, message: &impl prost::Message) -> anyhow::Result<()> {
        let line = self.to_json(name, message)?;
        self.line(&line);
        Ok(())
    }

    /// Prints one line on stdout, flushed (so pipes see it at once).
    pub fn line(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (`| head`) is not worth a panic.
        let _ = writeln!(stdout, "{text}");
        let _ = stdout.flush();
    }

    /// `status` (a TaskStatus name without its prefix), coloured when allowed.
    pub fn status(&self, status: &str) -> String {
        if !self.color {
            return status.to_owned();
        }
        use anstyle::{AnsiColor, Style};
        let color = match status {
            "COMPLETED" => AnsiColor::Green,
            "FAILED" => AnsiColor::Red,
            "CANCELLED" => AnsiColor::Magenta,
            "RUNNING" => AnsiColor::Cyan,
            "RETRYING" => AnsiColor::Yellow,
            _ => AnsiColor::Blue,
        };
        let style = Style::new().fg_color(Some(color.into())).bold();
        format!("{style}{status}{style:#}")
    }
}

/// Runs `body` on a fresh single-threaded runtime and turns its outcome into
/// the exit code, reporting errors on stderr.
pub fn block_on<F>(body: F) -> ExitCode
where
    F: Future<Output = Result<ExitCode, CliError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body) {
        Ok(code) => code,
        Err(error) => {
            error.report();
            ExitCode::from(error.exit_code())
        }
    }
}

/// Parses an enum value given in any case, with or without its prefix
/// (`high`, `HIGH`, `TASK_PRIORITY_HIGH`), through the generated
/// `from_str_name`.
pub fn parse_enum<T>(
    value: &str,
    prefix: &str,
    from_str_name: fn(&str) -> Option<T>,
    choices: &str,
) -> Result<T, String> {
    let upper = value.trim().to_ascii_uppercase().replace('-', "_");
    let name = if upper.starts_with(prefix) {
        upper
    } else {
        format!("{prefix}{upper}")
    };
    match from_str_name(&name) {
        Some(parsed) if !name.ends_with("_UNSPECIFIED") => Ok(parsed),
        _ => Err(format!("unknown value {value:?}; one of {choices}")),
    }
}

/// `name` without its enum prefix (`TASK_STATUS_RUNNING` -> `RUNNING`).
pub fn short_name<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::TaskPriority;

    #[test]
    fn priorities_parse_in_any_case_with_or_without_prefix() {
        for value in [
            "high",
            "HIGH",
            "High",
            "TASK_PRIORITY_HIGH",
            "task_priority_high",
        ] {
            assert_eq!(
                parse_enum(
                    value,
                    "TASK_PRIORITY_",
                    TaskPriority::from_str_name,
                    "low, normal"
                ),
                Ok(TaskPriority::High),
                "{value}"
            );
        }
        assert!(parse_enum("urgent", "TASK_PRIORITY_", TaskPriority::from_str_name, "").is_err());
        assert!(
            parse_enum(
                "unspecified",
                "TASK_PRIORITY_",
                TaskPriority::from_str_name,
                ""
            )
            .is_err()
        );
    }

    #[test]
    fn json_output_uses_the_proto_json_mapping() {
        let printer = Printer::new(OutputFormat::Json).expect("descriptors decode");
        let execution = crate::pb::WorkflowExecution {
            id: "e1".into(),
            status: crate::pb::TaskStatus::Completed as i32,
            queue_position: Some(3),
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let line = printer
            .to_json(names::EXECUTION, &execution)
            .expect("serializes");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["id"], "e1");
        assert_eq!(value["status"], "TASK_STATUS_COMPLETED");
        assert_eq!(value["queuePosition"], 3);
        assert_eq!(value["createdAt"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn addresses_get_a_scheme() {
        let args = |server: &str| ClientArgs {
            server: server.into(),
            api_key: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            output: OutputFormat::Text,
        };
        assert_eq!(
            endpoint(&args("127.0.0.1:1"))
                .expect("valid")
                .uri()
                .to_string(),
            "http://127.0.0.1:1/"
        );
        assert_eq!(
            endpoint(&args("http://localhost:2"))
                .expect("valid")
                .uri()
                .to_string(),
            "http://localhost:2/"
        );
    }
}
