//! TLS and mTLS against the real server on port 0, with certificates the test makes (rcgen):
//! an API key over TLS, client certificates naming principals (CN or SAN), certificates from
//! another CA or naming nobody refused, the plaintext health-only listener, and bad TLS files
//! refused at start with the file named.

mod common;

use std::net::SocketAddr;

use comfy_reality::config::{AuthMode, Config, PrincipalConfig, Role, Secret};
use comfy_reality::pb::ListTasksRequest;
use comfy_reality::pb::task_service_client::TaskServiceClient;
use common::TestServer;
use common::certs::{Pem, TestCa, write};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

const KEY: &str = "tls-test-key-0123456789";

struct Setup {
    ca: TestCa,
    dir: tempfile::TempDir,
    config: Config,
}

fn setup(mode: AuthMode, client_ca: bool) -> Setup {
    let ca = TestCa::new("test ca");
    let dir = tempfile::tempdir().unwrap();
    let server = ca.server();
    let mut config = Config::default();
    config.runtime.queue_type = comfy_reality::config::QueueType::Memory;
    config.tls.cert_file = Some(write(dir.path(), "server.pem", &server.cert));
    config.tls.key_file = Some(write(dir.path(), "server.key", &server.key));
    if client_ca {
        config.tls.client_ca_file = Some(write(dir.path(), "ca.pem", &ca.pem()));
    }
    config.auth.mode = mode;
    config.auth.principals = vec![PrincipalConfig {
        name: "alice".into(),
        tenant: None,
        role: Role::Submitter,
        api_key_sha256: vec![Secret::new(comfy_reality::api::access::key_sha256_hex(KEY))],
        cert_names: vec!["alice.pipelines.internal".into()],
        limits: Default::default(),
    }];
    config.validate().unwrap();
    Setup { ca, dir, config }
}

async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Pem>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(pem) = identity {
        tls = tls.identity(Identity::from_pem(&pem.cert, &pem.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn list(channel: Channel, key: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = Request::new(ListTasksRequest::default());
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    TaskServiceClient::new(channel)
        .list_tasks(request)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_api_key_over_tls() {
    let s = setup(AuthMode::ApiKey, false);
    let server = TestServer::start_with(s.config.clone()).await;
    let channel = tls_channel(server.addr, &s.ca.pem(), None).await.unwrap();
    list(channel.clone(), Some(KEY)).await.unwrap();
    let status = list(channel, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Plaintext gets no answer from a TLS listener.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_lazy();
    assert!(list(plain, Some(KEY)).await.is_err());
    // A client that trusts another CA refuses the server.
    let other = TestCa::new("other ca");
    let result = match tls_channel(server.addr, &other.pem(), None).await {
        Ok(channel) => list(channel, Some(KEY)).await.map_err(|s| s.code()),
        Err(_) => Err(Code::Unavailable),
    };
    assert!(result.is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn client_certificates_name_principals() {
    let s = setup(AuthMode::Mtls, true);
    let server = TestServer::start_with(s.config.clone()).await;
    // By CN, and by a DNS SAN.
    for pem in [
        s.ca.client("alice.pipelines.internal", &[]),
        s.ca.client("someone", &["alice.pipelines.internal"]),
    ] {
        let channel = tls_channel(server.addr, &s.ca.pem(), Some(&pem))
            .await
            .unwrap();
        list(channel, None).await.unwrap();
    }
    // A valid certificate that names no principal.
    let channel = tls_channel(server.addr, &s.ca.pem(), Some(&s.ca.client("mallory", &[])))
        .await
        .unwrap();
    let status = list(channel, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["cause"],
        "unknown_certificate"
    );
    // A certificate from another CA, and none at all: the handshake fails.
    let other = TestCa::new("other ca").client("alice.pipelines.internal", &[]);
    for identity in [Some(&other), None] {
        let refused = match tls_channel(server.addr, &s.ca.pem(), identity).await {
            Ok(channel) => list(channel, None).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "identity {:?}", identity.map(|p| &p.cert[..20]));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn either_a_key_or_a_certificate() {
    let s = setup(AuthMode::ApiKeyOrMtls, true);
    let server = TestServer::start_with(s.config.clone()).await;
    let without_cert = tls_channel(server.addr, &s.ca.pem(), None).await.unwrap();
    list(without_cert.clone(), Some(KEY)).await.unwrap();
    assert_eq!(
        list(without_cert, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let pem = s.ca.client("alice.pipelines.internal", &[]);
    let with_cert = tls_channel(server.addr, &s.ca.pem(), Some(&pem))
        .await
        .unwrap();
    list(with_cert, None).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn the_health_only_listener_speaks_plaintext() {
    let s = setup(AuthMode::ApiKey, false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_addr = health.local_addr().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(comfy_reality::server::serve_with_listeners(
        s.config.clone(),
        std::sync::Arc::new(comfy_reality::store::MemoryStore::new()),
        listener,
        Some(health),
        token.clone(),
    ));
    let channel = tls_channel(addr, &s.ca.pem(), None).await.unwrap();
    list(channel, Some(KEY)).await.unwrap();
    let plain = Endpoint::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let response = HealthClient::new(plain.clone())
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap();
    assert_eq!(response.into_inner().status, 1);
    // Only health: the API is not served there.
    let status = list(plain, Some(KEY)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    token.cancel();
    server.await.unwrap().unwrap();
}

/// The binary reloads its certificates on SIGHUP: new connections get the new ones, an open
/// connection keeps working. Paths in the file are relative to it.
#[test]
fn sighup_reloads_the_certificates() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    const GUARD: Duration = Duration::from_secs(60);
    let first = TestCa::new("first ca");
    let second = TestCa::new("second ca");
    let dir = tempfile::tempdir().unwrap();
    let install = |ca: &TestCa| {
        let pem = ca.server();
        write(dir.path(), "server.pem", &pem.cert);
        write(dir.path(), "server.key", &pem.key);
    };
    install(&first);
    let config = write(
        dir.path(),
        "config.toml",
        &format!(
            "[service]\ndata_dir = \"{}\"\n[runtime]\nenable_metrics = false\nqueue_type = \"memory\"\n\
             [auth]\nmode = \"api_key\"\n[[auth.principals]]\nname = \"alice\"\nrole = \"viewer\"\n\
             api_key_sha256 = [\"{}\"]\n[tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n",
            dir.path().join("data").display(),
            comfy_reality::api::access::key_sha256_hex(KEY)
        ),
    );
    let mut child = common::clean_command()
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let tx = lines_tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        let line = lines
            .recv_timeout(GUARD)
            .unwrap_or_else(|e| panic!("no line with {needle:?}: {e}"));
        if line.contains(needle) {
            return line;
        }
    };
    let addr: SocketAddr = wait_for("comfy-reality listening on ")
        .trim_start_matches("comfy-reality listening on ")
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let open = runtime.block_on(async {
        let channel = tls_channel(addr, &first.pem(), None).await.unwrap();
        list(channel.clone(), Some(KEY)).await.unwrap();
        channel
    });
    install(&second);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_for("tls certificates reloaded");
    runtime.block_on(async {
        let renewed = tls_channel(addr, &second.pem(), None).await.unwrap();
        list(renewed, Some(KEY)).await.unwrap();
        let stale = match tls_channel(addr, &first.pem(), None).await {
            Ok(channel) => list(channel, Some(KEY)).await.is_err(),
            Err(_) => true,
        };
        assert!(stale, "a client trusting only the old CA must be refused");
        // The connection opened before the reload still serves.
        list(open, Some(KEY)).await.unwrap();
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn bad_tls_files_stop_the_start_naming_the_file() {
    let s = setup(AuthMode::ApiKey, false);
    let mut config = s.config.clone();
    let bad = write(s.dir.path(), "broken.pem", "not a certificate");
    config.tls.cert_file = Some(bad.clone());
    let store = std::sync::Arc::new(comfy_reality::store::MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = comfy_reality::server::serve_with_store(
        config,
        store,
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains(&bad.display().to_string()),
        "{error}"
    );
}

/// The CLI connects with TLS, a custom CA, a client certificate and an API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_a_client_certificate_or_a_key() {
    let s = setup(AuthMode::ApiKeyOrMtls, true);
    let server = TestServer::start_with(s.config.clone()).await;
    let ca = write(s.dir.path(), "client-ca.pem", &s.ca.pem());
    let pem = s.ca.client("alice.pipelines.internal", &[]);
    let cert = write(s.dir.path(), "alice.pem", &pem.cert);
    let key = write(s.dir.path(), "alice.key", &pem.key);
    let addr = server.addr.to_string();
    let run = move |extra: Vec<String>| {
        let addr = addr.clone();
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || {
            common::run_bounded(
                common::clean_command()
                    .args(["list", "--output", "json", "--server", &addr, "--tls-ca"])
                    .arg(&ca)
                    .args(extra),
                std::time::Duration::from_secs(60),
            )
        })
    };
    let with_cert = run(vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ])
    .await
    .unwrap();
    assert!(
        with_cert.status.success(),
        "{}",
        String::from_utf8_lossy(&with_cert.stderr)
    );
    let with_key = run(vec!["--api-key".into(), KEY.into()]).await.unwrap();
    assert!(
        with_key.status.success(),
        "{}",
        String::from_utf8_lossy(&with_key.stderr)
    );
    let without = run(vec![]).await.unwrap();
    assert_eq!(without.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    server.shutdown().await;
}
