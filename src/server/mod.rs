//! Assembles and serves the gRPC server: the API services, health (for
//! Kubernetes, Envoy, Istio), reflection v1 and v1alpha (for grpcurl), the
//! request-context layer, and graceful shutdown. On Redis, a runtime that does
//! not hold the lease serves as a forwarding replica (`replica.rs`).

mod replica;

pub use replica::advertise_url;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::access::AccessLayer;
use crate::api::request_context::RequestContextLayer;
use crate::api::{AdminApi, EventApi, ExecutionApi, TaskApi, WorkflowApi};
use crate::config::{AuthMode, Config, QueueType, ReflectionAccess};
use crate::gpu::GpuMonitor;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::event_service_server::EventServiceServer;
use crate::pb::execution_service_server::ExecutionServiceServer;
use crate::pb::task_service_server::TaskServiceServer;
use crate::pb::workflow_service_server::WorkflowServiceServer;
use crate::runtime::Runtime;
use crate::store::{
    MemoryStore, RedisCandidate, RedisOptions, RedisStore, SqliteOptions, SqliteStore, Store,
    StoreError,
};
use crate::telemetry::grpc_metrics::GrpcMetricsLayer;

/// Health service name that stays SERVING while the process lives.
pub const LIVENESS: &str = "liveness";
/// Health service name that goes NOT_SERVING as soon as shutdown starts.
pub const READINESS: &str = "readiness";

/// The full names of the API services, each reported by the health service.
pub const API_SERVICES: [&str; 5] = [
    <TaskServiceServer<TaskApi> as NamedService>::NAME,
    <WorkflowServiceServer<WorkflowApi> as NamedService>::NAME,
    <ExecutionServiceServer<ExecutionApi> as NamedService>::NAME,
    <EventServiceServer<EventApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
];

/// HTTP/2 keepalive pings, so idle long-lived streams survive proxies.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Streams a client may reset before the server has accepted them, per connection (the
/// HTTP/2 rapid-reset defence; h2's default is 20).
const MAX_PENDING_RESETS: usize = 20;

/// Streams the server may reset because of a client's protocol errors before it closes the
/// connection (h2's default is 1024).
const MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the embedded descriptors (a build bug).
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The store could not be opened (locked, corrupt, unwritable); the
    /// message names its path.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A TLS file is missing or unusable; the message names it.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The listener's bound address could not be read.
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(std::io::Error),
    /// The health-only listener (`tls.health_listen`) could not be bound.
    #[error("cannot listen for health probes on {addr}: {source}")]
    HealthListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The store `runtime.queue_type` names: the SQLite file, memory, or Redis at
/// `runtime.queue_url` (this waits for another runtime's lease there to expire,
/// up to one and a half `redis.lease_seconds`). RabbitMQ is refused by
/// validation; this refuses it too for a configuration built by hand.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match config.runtime.queue_type {
        QueueType::Sqlite => {
            let path = config.store_path();
            let store = SqliteStore::open_with(&path, SqliteOptions::from_config(config))?;
            // The default `data_dir` is relative to the working directory: log where the file
            // really is. It exists now, so canonicalizing only fails on odd filesystems.
            let resolved = std::fs::canonicalize(&path)
                .or_else(|_| std::path::absolute(&path))
                .unwrap_or_else(|_| path.clone());
            tracing::info!(path = %resolved.display(), "durable store opened");
            Ok(Arc::new(store))
        }
        QueueType::Memory => Ok(Arc::new(MemoryStore::new())),
        QueueType::Redis => {
            let options = redis_options(config)?;
            let store = RedisStore::open(&options)?;
            tracing::info!(
                url = %crate::config::redact_url(&options.url),
                key_prefix = %options.key_prefix,
                "redis store opened; this runtime holds its lease"
            );
            Ok(Arc::new(store))
        }
        QueueType::Rabbitmq => Err(StoreError::Open {
            path: "runtime.queue_url".into(),
            reason: "runtime.queue_type rabbitmq is not implemented yet".into(),
        }),
    }
}

/// What a server runs on: a store opened for this process alone, or a Redis key prefix shared
/// with other replicas (the lease decides which one runs the work; see `replica.rs`).
pub enum Backing {
    /// The SQLite file or memory.
    Store(Arc<dyn Store>),
    /// Redis, connected; the lease is taken when serving starts.
    Redis(Box<RedisCandidate>),
}

/// Opens what `runtime.queue_type` names: the SQLite file or memory store (a locked, corrupt or
/// unwritable one fails here), or a connection to Redis (an unreachable one fails here).
pub fn open_backing(config: &Config) -> Result<Backing, StoreError> {
    match config.runtime.queue_type {
        QueueType::Redis => {
            let options = redis_options(config)?;
            let candidate = RedisCandidate::connect(&options)?;
            tracing::info!(
                url = %crate::config::redact_url(&options.url),
                key_prefix = %options.key_prefix,
                "redis reached"
            );
            Ok(Backing::Redis(Box::new(candidate)))
        }
        _ => open_store(config).map(Backing::Store),
    }
}

fn redis_options(config: &Config) -> Result<RedisOptions, StoreError> {
    RedisOptions::from_config(config).ok_or_else(|| StoreError::Open {
        path: "runtime.queue_url".into(),
        reason: "runtime.queue_type is redis but runtime.queue_url is not set".into(),
    })
}

/// Serves on `backing`. On Redis, the process serves as a forwarding replica while another
/// runtime holds the lease, and runs the work itself once it holds it.
pub async fn serve_backing(
    config: Config,
    backing: Backing,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut candidate = match backing {
        Backing::Store(store) => {
            return serve_with_listeners(config, store, listener, health_listener, shutdown).await;
        }
        Backing::Redis(candidate) => candidate,
    };
    let own_url = advertise_url(
        &config,
        listener.local_addr().map_err(ServeError::LocalAddr)?,
    );
    candidate.advertise(&own_url);
    let candidate = Arc::new(*candidate);
    let listener = Arc::new(listener);
    let health_listener = health_listener.map(Arc::new);
    let first = Arc::clone(&candidate);
    let led = tokio::task::spawn_blocking(move || first.try_lead())
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("lease check failed: {e}"))))?;
    let store = match led {
        Some(store) => store,
        None => match replica::follow(
            &config,
            candidate,
            own_url.clone(),
            Arc::clone(&listener),
            health_listener.clone(),
            shutdown.clone(),
        )
        .await?
        {
            Some(store) => store,
            None => return Ok(()),
        },
    };
    tracing::info!(url = %own_url, "this runtime holds the redis lease and runs the work");
    let gpu = tokio::task::spawn_blocking(GpuMonitor::load_nvml)
        .await
        .unwrap_or_else(|e| GpuMonitor::unavailable(format!("NVML loading failed: {e}")));
    let runtime = Runtime::with_gpu(config, Arc::new(store), gpu)?;
    serve_runtime(runtime, listener, health_listener, shutdown).await
}

/// How often readiness asks the store whether it can be used.
const STORE_HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Readiness follows the store: NOT_SERVING (the API services and readiness; liveness stays
/// SERVING) while it cannot be reached, SERVING again once it can. A store taken over by
/// another runtime (a lost Redis lease) starts the shutdown: this process must stop working.
async fn follow_store_health(
    runtime: Runtime,
    reporter: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(STORE_HEALTH_INTERVAL) => {}
        }
        let check = runtime.clone();
        let health = tokio::task::spawn_blocking(move || check.store_health())
            .await
            .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("health check failed: {e}"))));
        match health {
            Ok(()) if !serving => {
                tracing::info!("the store is reachable again: readiness SERVING");
                set_all(&reporter, ServingStatus::Serving, false).await;
                serving = true;
            }
            Ok(()) => {}
            Err(error @ StoreError::Fenced(_)) => {
                tracing::error!(%error, "shutting down: another runtime took the store over");
                set_all(&reporter, ServingStatus::NotServing, false).await;
                shutdown.cancel();
                return;
            }
            Err(error) if serving => {
                tracing::warn!(%error, "the store is unreachable: readiness NOT_SERVING");
                set_all(&reporter, ServingStatus::NotServing, false).await;
                serving = false;
            }
            Err(_) => {}
        }
    }
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus, include_liveness: bool) {
    for name in API_SERVICES.iter().copied().chain(["", READINESS]) {
        reporter.set_service_status(name, status).await;
    }
    if include_liveness {
        reporter.set_service_status(LIVENESS, status).await;
    }
}

/// Serves the API on an already-bound `listener` until `shutdown` is
/// cancelled; then readiness goes NOT_SERVING, no new connections are
/// accepted, and in-flight calls get `service.shutdown_grace_seconds` to finish.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let backing = open_backing(&config)?;
    let health = bind_health(&config).await?;
    serve_backing(config, backing, listener, health, shutdown).await
}

/// A server builder with the HTTP/2 settings every API listener gets (keepalive, stream and
/// header limits, the rapid-reset defences): the full server's and a forwarding replica's.
fn hardened(limits: &crate::config::LimitsConfig) -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
        .max_concurrent_streams(Some(limits.max_concurrent_streams_per_connection))
        .http2_max_header_list_size(Some(limits.max_header_list_bytes))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
}

/// The health-only listener of `tls.health_listen`, when configured.
async fn bind_health(config: &Config) -> Result<Option<TcpListener>, ServeError> {
    match config.tls.health_listen {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| ServeError::HealthListen { addr, source }),
        None => Ok(None),
    }
}

/// [`serve`] over a store the caller opened (the CLI opens it before it
/// announces the address, so a locked or corrupt store fails first). The health-only listener
/// of `tls.health_listen`, when configured, is bound here.
pub async fn serve_with_store(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let health = bind_health(&config).await?;
    serve_with_listeners(config, store, listener, health, shutdown).await
}

/// [`serve_with_store`] with the health-only listener bound by the caller too (the CLI binds
/// it to print its address).
pub async fn serve_with_listeners(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // Opening NVML is a blocking library call: off the async workers.
    let gpu = tokio::task::spawn_blocking(GpuMonitor::load_nvml)
        .await
        .unwrap_or_else(|e| GpuMonitor::unavailable(format!("NVML loading failed: {e}")));
    let runtime = Runtime::with_gpu(config, store, gpu)?;
    serve_with_runtime(runtime, listener, health_listener, shutdown).await
}

/// [`serve_with_listeners`] over a runtime the caller built (tests build one over a fake GPU
/// probe).
pub async fn serve_with_runtime(
    runtime: Runtime,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    serve_runtime(
        runtime,
        Arc::new(listener),
        health_listener.map(Arc::new),
        shutdown,
    )
    .await
}

async fn serve_runtime(
    runtime: Runtime,
    listener: Arc<TcpListener>,
    health_listener: Option<Arc<TcpListener>>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let config = runtime.config();
    let tls = crate::tls::ServerTls::load(config)?;
    let grace = config.service.shutdown_grace();
    let max_message = config.service.max_request_bytes;
    let limits = config.limits.clone();
    let reflection = config.auth.reflection != ReflectionAccess::Off;
    if config.auth.mode == AuthMode::None && !config.service.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.service.listen,
            "serving a non-loopback address without authentication (auth.allow_anonymous = true): anyone who reaches it may run, read and cancel all work"
        );
    }
    let access = AccessLayer::new(runtime.config(), &runtime);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_all(&reporter, ServingStatus::Serving, true).await;
    let store_watch = tokio::spawn(follow_store_health(
        runtime.clone(),
        reporter.clone(),
        shutdown.clone(),
    ));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Cancelled when the drain deadline passes: cuts connections still open.
    let cut = CancellationToken::new();
    // The SIGHUP handler is installed before anything is served, so that a SIGHUP sent once
    // the server answers never hits the default (fatal) action.
    let reloads = tls.clone().map(|tls| {
        let hangup = hangup_signal();
        tokio::spawn(reload_on_hangup(tls, hangup, shutdown.clone()))
    });
    let (incoming, accepting) =
        crate::tls::incoming(listener, tls, cut.clone(), limits.tls_handshake_timeout());
    // Probes that speak neither TLS nor keys: health only, in plaintext.
    let health_only = health_listener.map(|listener| {
        let health = health_service.clone();
        let shutdown = shutdown.clone();
        let (incoming, _accepting) =
            crate::tls::incoming(listener, None, cut.clone(), limits.tls_handshake_timeout());
        tokio::spawn(
            Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async move {
                    shutdown.cancelled().await;
                }),
        )
    });
    let signal = {
        let shutdown = shutdown.clone();
        let reporter = reporter.clone();
        let runtime = runtime.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutdown requested: readiness NOT_SERVING, draining");
            set_all(&reporter, ServingStatus::NotServing, false).await;
            // Long-lived streams end now with UNAVAILABLE (and where to
            // resume), so the drain waits only for unary calls.
            runtime.close_streams();
        }
    };
    let server = hardened(&limits)
        .layer(RequestContextLayer)
        .layer(GrpcMetricsLayer::new())
        .layer(access)
        .add_service(health_service)
        .add_optional_service(reflection.then_some(reflection_v1))
        .add_optional_service(reflection.then_some(reflection_v1alpha))
        .add_service(
            TaskServiceServer::new(TaskApi::new(runtime.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            WorkflowServiceServer::new(WorkflowApi::new(runtime.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            EventServiceServer::new(EventApi::new(runtime.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            ExecutionServiceServer::new(ExecutionApi::new(runtime.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            AdminServiceServer::new(AdminApi::new(runtime.clone()))
                .max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);

    tokio::select! {
        result = &mut server => result?,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_seconds = grace.as_secs_f64(), "drain deadline passed; cutting remaining connections");
            cut.cancel();
            // With every connection cut, the server finishes promptly.
            (&mut server).await?;
        }
    }
    let _ = accepting.await;
    if let Some(reloads) = reloads {
        let _ = reloads.await;
    }
    if let Some(health_only) = health_only {
        match health_only.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "health-only listener failed"),
            Err(error) => tracing::warn!(%error, "health-only listener task failed"),
        }
    }
    store_watch.abort();
    runtime.shutdown().await;
    tracing::info!("server stopped");
    Ok(())
}

/// SIGHUP, when it can be handled.
#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(error) => {
                tracing::warn!(%error, "cannot handle SIGHUP; tls files will not be reloaded");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Reloads the TLS files on each SIGHUP until `shutdown`; a failed reload keeps the old ones.
async fn reload_on_hangup(tls: crate::tls::ServerTls, hangup: Hangup, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        let Some(mut hangup) = hangup else { return };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    match tls.reload() {
                        Ok(()) => tracing::info!("tls certificates reloaded"),
                        Err(error) => tracing::error!(%error, "tls reload failed; the previous certificates stay in use"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, hangup, shutdown);
    }
}
