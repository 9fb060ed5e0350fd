//! A ComfyUI backend behind TLS (`https` and `wss`), with certificates the test makes (rcgen):
//! the fake ComfyUI behind a TLS front on port 0, and the real binary in front of it. With
//! `verify_ssl` (the default) both the HTTP routes and the WebSocket verify the backend against
//! the platform's roots (here `SSL_CERT_FILE`, the test's CA): a job runs to the end. Against
//! roots that do not vouch for it the backend is DOWN, the certificate named; with
//! `verify_ssl = false` any certificate is accepted on both.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use comfy_reality::pb::admin_service_client::AdminServiceClient;
use comfy_reality::pb::execution_service_client::ExecutionServiceClient;
use comfy_reality::pb::{
    BackendInfo, BackendState, ExecuteWorkflowRequest, GetExecutionRequest, GetRuntimeInfoRequest,
    TaskStatus, execute_workflow_request::Workflow,
};
use comfy_reality_fake_comfyui::{FakeComfy, FakeOptions};
use common::certs::{TestCa, write};
use common::exec::delay_workflow;
use common::process::ServerProcess;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A TLS front on port 0 for `backend`: each connection's TLS ends here and its bytes go on to
/// the backend as they are (HTTP and the WebSocket alike). Runs until the test's runtime ends.
async fn tls_front(ca: &TestCa, backend: SocketAddr) -> SocketAddr {
    let pem = ca.server();
    let certs = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the server certificate");
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("the server key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("a server configuration");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake the client refuses ends here; that is what some cases expect.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    addr
}

/// A durable runtime in `base/case` whose one backend is `https://{front}`, `verify_ssl` as
/// given, with `SSL_CERT_FILE` (the platform's roots, as rustls-native-certs reads them) set to
/// `roots`.
fn start_runtime(
    base: &Path,
    case: &str,
    front: SocketAddr,
    verify_ssl: bool,
    roots: &Path,
) -> ServerProcess {
    let dir = base.join(case);
    std::fs::create_dir(&dir).expect("the case's directory");
    let dir = dir.as_path();
    let config = write(
        dir,
        "config.toml",
        &format!(
            r#"[service]
data_dir = "{data}"

[runtime]
enable_metrics = false

[scheduling]
probe_interval_seconds = 0.1

[[servers]]
name = "tls-0"
url = "https://{front}"
verify_ssl = {verify_ssl}
"#,
            data = dir.join("state").display(),
        ),
    );
    ServerProcess::start_with(&config, |command| {
        command
            .env("SSL_CERT_FILE", roots)
            .env_remove("SSL_CERT_DIR");
    })
}

/// Polls the runtime's one backend until `done` holds for it; fails with the last seen after
/// a hang guard.
async fn wait_backend(server: &ServerProcess, done: impl Fn(&BackendInfo) -> bool) -> BackendInfo {
    let mut admin = AdminServiceClient::new(server.channel().await);
    let mut last = None;
    for _ in 0..300 {
        let info = admin
            .get_runtime_info(GetRuntimeInfoRequest::default())
            .await
            .expect("runtime info")
            .into_inner();
        let backend = info.backends.into_iter().next().expect("one backend");
        if done(&backend) {
            return backend;
        }
        last = Some(backend);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the backend never got there: {last:?}");
}

/// Runs a one-node job to its end and returns its status.
async fn run_job(server: &ServerProcess, nonce: u64) -> TaskStatus {
    let mut executions = ExecutionServiceClient::new(server.channel().await);
    let id = executions
        .execute_workflow(ExecuteWorkflowRequest {
            workflow: Some(Workflow::WorkflowJson(
                delay_workflow(0.05, nonce).to_string(),
            )),
            ..Default::default()
        })
        .await
        .expect("execute")
        .into_inner()
        .execution
        .expect("the execution")
        .id;
    for _ in 0..300 {
        let execution = executions
            .get_execution(GetExecutionRequest { id: id.clone() })
            .await
            .expect("get")
            .into_inner()
            .execution
            .expect("the execution");
        let status = execution.status();
        if matches!(
            status,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        ) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("execution {id} never ended");
}

#[tokio::test]
async fn a_tls_backend_is_verified_against_the_platform_roots_on_http_and_websocket() {
    let fake = FakeComfy::start(FakeOptions {
        time_scale: 0.1,
        ..FakeOptions::default()
    })
    .await
    .expect("fake starts");
    let ca = TestCa::new("backend test ca");
    let front = tls_front(&ca, fake.addr()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = write(dir.path(), "ours.pem", &ca.pem());
    let theirs = write(dir.path(), "theirs.pem", &TestCa::new("another ca").pem());

    // Verified against roots holding the test's CA: the probe (HTTP) and the job's progress
    // (the WebSocket) both pass, and the job ends COMPLETED.
    let server = start_runtime(dir.path(), "verified", front, true, &ours);
    wait_backend(&server, |b| b.state() == BackendState::Up).await;
    assert_eq!(run_job(&server, 1).await, TaskStatus::Completed);
    server.kill();

    // Roots that do not vouch for the backend: DOWN, and the probe's error names the
    // certificate.
    let server = start_runtime(dir.path(), "refused", front, true, &theirs);
    let down = wait_backend(&server, |b| {
        b.state() == BackendState::Down && b.last_error.is_some()
    })
    .await;
    let error = down.last_error.unwrap_or_default();
    assert!(error.contains("invalid peer certificate"), "{error}");
    server.kill();

    // verify_ssl = false: any certificate, on both; the job ends COMPLETED.
    let server = start_runtime(dir.path(), "unverified", front, false, &theirs);
    wait_backend(&server, |b| b.state() == BackendState::Up).await;
    assert_eq!(run_job(&server, 2).await, TaskStatus::Completed);
    server.kill();
}
