//! `comfy-reality healthcheck`: asks a running server's gRPC health service
//! and exits 0 only when the answer is SERVING.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Flags of `healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The server's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    pub addr: SocketAddr,
    /// The health service name to ask about ("" is the whole server;
    /// also `liveness`, `readiness`, or a service's full name).
    #[arg(long, default_value = "", value_name = "NAME")]
    pub service: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub timeout: f64,
}

/// Runs the check.
pub fn run(args: &HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let timeout = Duration::from_secs_f64(args.timeout.max(0.1));
    let outcome = runtime.block_on(async {
        tokio::time::timeout(timeout, check(args.addr, args.service.clone())).await
    });
    match outcome {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            eprintln!("health check of {} failed: {e:#}", args.addr);
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("health check of {} timed out after {timeout:?}", args.addr);
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn check(addr: SocketAddr, service: String) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .context("invalid address")?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest { service })
        .await
        .context("health check call failed")?;
    Ok(response.into_inner().status())
}
