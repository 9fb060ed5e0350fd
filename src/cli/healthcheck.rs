//! `comfy-reality healthcheck`: asks a running server's gRPC health service
//! and exits 0 only when the answer is SERVING.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
    /// The server's gRPC address; default: the configured `service.listen`
    /// (an unspecified address such as 0.0.0.0 is asked on loopback).
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
    /// The health service name to ask about ("" is the whole server;
    /// also `liveness`, `readiness`, or a service's full name).
    #[arg(long, default_value = "", value_name = "NAME")]
    pub service: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub timeout: f64,
}

/// The address to probe for a configured listen address.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

/// Runs the check against `addr`.
pub fn run(args: &HealthcheckArgs, addr: SocketAddr) -> anyhow::Result<ExitCode> {
    let Some(timeout) = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
    else {
        anyhow::bail!(
            "--timeout must be a positive number of seconds, got {}",
            args.timeout
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime
        .block_on(async { tokio::time::timeout(timeout, check(addr, args.service.clone())).await });
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
            eprintln!("health check of {addr} failed: {}", super::error_chain(&e));
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("health check of {} timed out after {timeout:?}", addr);
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
