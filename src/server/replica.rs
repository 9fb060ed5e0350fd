//! Forwarding replicas (`runtime.queue_type = "redis"`). Of the runtimes on
//! one Redis key prefix, the one holding the lease runs the work: it admits,
//! schedules and dispatches every execution, and answers every call. The
//! others serve the same API on their own addresses by forwarding each call,
//! unchanged (metadata, keys and streams included), to the holder's advertised
//! url, and answer health themselves. Each keeps trying to take the lease, so
//! when the holder stops or dies one of them takes over within
//! `redis.lease_seconds`, recovers every execution from Redis (reconciling
//! running ones with ComfyUI by prompt id) and starts answering, and the
//! others forward to it.
//!
//! Authentication, rate limits and quotas are therefore enforced in one place
//! (the holder), and hold across replicas. A caller authenticated by a client
//! certificate is named to the holder in signed headers
//! (`api/access/forwarded.rs`), over https only.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::service::Routes;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceExt;

use super::{API_SERVICES, LIVENESS, READINESS, ServeError};
use crate::api::access::PeerInfo;
use crate::api::access::forwarded::{self, ForwardKey};
use crate::api::request_context::RequestContextLayer;
use crate::config::Config;
use crate::runtime::FORWARD_SECRET_META;
use crate::store::{LeaseHolder, RedisCandidate, RedisStore, StoreError};
use crate::telemetry::grpc_metrics::GrpcMetricsLayer;

/// How long forwarded calls still open get once this replica takes the lease
/// (they were forwarded to a holder that is gone).
const HANDOVER_GRACE: Duration = Duration::from_secs(1);

/// The url this process advertises: `redis.advertise_url`, or its bound address (the host's
/// name for an unspecified IP), `https` when it serves TLS.
pub fn advertise_url(config: &Config, bound: std::net::SocketAddr) -> String {
    if let Some(url) = &config.redis.advertise_url {
        return url.trim_end_matches('/').to_owned();
    }
    let scheme = if config.tls.cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    let host = if bound.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    format!("{scheme}://{host}:{}", bound.port())
}

/// Where calls go now.
#[derive(Clone)]
enum Target {
    /// Nobody can be forwarded to: why.
    Nowhere(String),
    /// The lease holder.
    Holder(Arc<Holder>),
}

/// The lease holder, as a replica forwards to it.
struct Holder {
    /// Its token (for messages).
    token: String,
    /// A channel to its advertised url.
    channel: Channel,
    /// Signs callers' certificate names; `None` unless the url is https and the secret is
    /// known.
    key: Option<ForwardKey>,
}

/// Forwards every call it gets to the lease holder.
#[derive(Clone)]
struct Forward {
    target: watch::Receiver<Target>,
}

fn status_response(status: &Status) -> http::Response<tonic::body::Body> {
    let (parts, ()) = status.clone().into_http::<()>().into_parts();
    http::Response::from_parts(parts, tonic::body::Body::empty())
}

impl tower::Service<http::Request<axum::body::Body>> for Forward {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        let target = self.target.borrow().clone();
        Box::pin(async move {
            let holder = match target {
                Target::Holder(holder) => holder,
                Target::Nowhere(why) => return Ok(status_response(&Status::unavailable(why))),
            };
            let mut request = request.map(tonic::body::Body::new);
            // Only this replica may name a caller's certificate, and only one it verified.
            forwarded::strip(request.headers_mut());
            let names = request
                .extensions()
                .get::<PeerInfo>()
                .and_then(|peer| peer.cert_names.clone());
            if let (Some(key), Some(names)) = (&holder.key, names) {
                let path = request.uri().path().to_owned();
                key.sign(request.headers_mut(), &path, &names);
            }
            match holder.channel.clone().oneshot(request).await {
                Ok(response) => Ok(response),
                Err(error) => Ok(status_response(&Status::unavailable(format!(
                    "the runtime holding the lease ({}) did not answer: {error}; another replica takes over within redis.lease_seconds, try again",
                    holder.token
                )))),
            }
        })
    }
}

/// What a replica's TLS to the holder trusts and presents (`redis.peer_*`).
#[derive(Default)]
struct PeerTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl PeerTls {
    fn load(config: &Config) -> Result<Self, StoreError> {
        let read = |path: &std::path::PathBuf, key: &str| {
            std::fs::read(path).map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: format!("cannot read {key}: {e}"),
            })
        };
        let redis = &config.redis;
        let ca = match &redis.peer_ca_file {
            Some(path) => Some(Certificate::from_pem(read(path, "redis.peer_ca_file")?)),
            None => None,
        };
        let identity = match (&redis.peer_cert_file, &redis.peer_key_file) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read(cert, "redis.peer_cert_file")?,
                read(key, "redis.peer_key_file")?,
            )),
            _ => None,
        };
        Ok(Self { ca, identity })
    }
}

/// A lazily connected channel to `url`.
fn channel_to(url: &str, config: &Config, peer: &PeerTls) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("the lease holder's url {url:?} is unusable: {e}"))?
        .connect_timeout(config.redis.command_timeout())
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &peer.ca {
            tls = tls.ca_certificate(ca.clone());
        }
        if let Some(identity) = &peer.identity {
            tls = tls.identity(identity.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("cannot set up TLS to {url}: {e}"))?;
    }
    Ok(endpoint.connect_lazy())
}

/// Keeps `target` on the lease holder and tries to take the lease; ends with the store once
/// this process holds it, or `None` at shutdown.
async fn watch_lease(
    config: Config,
    candidate: Arc<RedisCandidate>,
    own_url: String,
    target: watch::Sender<Target>,
    reporter: HealthReporter,
    shutdown: CancellationToken,
) -> Result<Option<RedisStore>, ServeError> {
    let peer = PeerTls::load(&config)?;
    let period = config
        .redis
        .lease()
        .div_f64(10.0)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut current: Option<String> = None;
    let mut ready: Option<bool> = None;
    // The forwarding secret, once the holder has stored it.
    let mut key: Option<ForwardKey> = None;
    loop {
        let asked = Arc::clone(&candidate);
        let holder = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            match asked.holder()? {
                Some(holder) => Ok(Err(holder)),
                None => asked.try_lead().map(|store| match store {
                    Some(store) => Ok(store),
                    // Taken by another replica between the two calls.
                    None => Err(LeaseHolder {
                        token: String::new(),
                        url: None,
                    }),
                }),
            }
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("lease check failed: {e}"))));
        let serving = match holder {
            Ok(Ok(store)) => return Ok(Some(store)),
            Ok(Err(holder)) if holder.token.is_empty() => {
                matches!(*target.borrow(), Target::Holder(_))
            }
            Ok(Err(holder)) => {
                let keyed = key.is_none() && {
                    let asked = Arc::clone(&candidate);
                    key = tokio::task::spawn_blocking(move || asked.meta(FORWARD_SECRET_META))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .flatten()
                        .map(|secret| ForwardKey::from_secret(&secret));
                    key.is_some()
                };
                if keyed || current.as_deref() != Some(holder.token.as_str()) {
                    let next = match &holder.url {
                        _ if holder.token == candidate.token() => None,
                        Some(url) if *url == own_url => Some(Target::Nowhere(format!(
                            "the lease is still held by an earlier process on this replica's address ({}); it expires within redis.lease_seconds, try again",
                            holder.token
                        ))),
                        Some(url) => Some(match channel_to(url, &config, &peer) {
                            Ok(channel) => {
                                tracing::info!(holder = %holder.token, %url, "forwarding calls to the runtime holding the redis lease");
                                Target::Holder(Arc::new(Holder {
                                    token: holder.token.clone(),
                                    channel,
                                    key: key.clone().filter(|_| url.starts_with("https://")),
                                }))
                            }
                            Err(why) => Target::Nowhere(why),
                        }),
                        None => Some(Target::Nowhere(format!(
                            "the runtime holding the lease ({}) takes no forwarded calls (it advertises no url)",
                            holder.token
                        ))),
                    };
                    if let Some(next) = next {
                        let _ = target.send(next);
                    }
                    current = Some(holder.token);
                }
                // Ready while calls can be forwarded somewhere.
                matches!(*target.borrow(), Target::Holder(_))
            }
            Err(error) => {
                tracing::debug!(%error, "cannot read the redis lease");
                false
            }
        };
        if ready != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in API_SERVICES.iter().copied().chain(["", READINESS]) {
                reporter.set_service_status(name, status).await;
            }
            ready = Some(serving);
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// Serves as a forwarding replica on `listener` (and health on `health_listener`) until this
/// process takes the lease (its store is returned) or `shutdown` (`None`).
pub(super) async fn follow(
    config: &Config,
    candidate: Arc<RedisCandidate>,
    own_url: String,
    listener: Arc<TcpListener>,
    health_listener: Option<Arc<TcpListener>>,
    shutdown: CancellationToken,
) -> Result<Option<RedisStore>, ServeError> {
    let tls = crate::tls::ServerTls::load(config)?;
    let limits = &config.limits;
    tracing::info!(
        lease = candidate.lease_key(),
        "another runtime holds the redis lease: serving as a forwarding replica until it ends"
    );
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    for name in API_SERVICES.iter().copied().chain(["", READINESS]) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let (target, targets) = watch::channel(Target::Nowhere(
        "no runtime holds the lease yet; one takes over within redis.lease_seconds, try again"
            .to_owned(),
    ));
    // Stops the forwarding servers: at shutdown, or once this process holds the lease.
    let stop = shutdown.child_token();
    let watcher = tokio::spawn(watch_lease(
        config.clone(),
        candidate,
        own_url,
        target,
        reporter.clone(),
        stop.clone(),
    ));
    let cut = CancellationToken::new();
    let routes = Routes::from(
        Routes::new(health_service.clone())
            .into_axum_router()
            .fallback_service(Forward { target: targets }),
    );
    let (incoming, accepting) = crate::tls::incoming(
        Arc::clone(&listener),
        tls,
        cut.clone(),
        limits.tls_handshake_timeout(),
    );
    let forwarding = {
        let stop = stop.clone();
        tokio::spawn(
            super::hardened(limits)
                .layer(RequestContextLayer)
                .layer(GrpcMetricsLayer::new())
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
        )
    };
    let health_only = health_listener.map(|listener| {
        let (incoming, accepting) =
            crate::tls::incoming(listener, None, cut.clone(), limits.tls_handshake_timeout());
        let stop = stop.clone();
        let server = tokio::spawn(
            Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
        );
        (server, accepting)
    });
    let outcome = watcher.await.unwrap_or_else(|e| {
        Err(StoreError::Unavailable(format!("lease watcher failed: {e}")).into())
    });
    // The holder is gone (or this process stops): forwarded calls still open get a moment,
    // then their connections are cut, and the listeners are handed back.
    stop.cancel();
    let cutter = {
        let cut = cut.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HANDOVER_GRACE).await;
            cut.cancel();
        })
    };
    let _ = forwarding.await;
    let _ = accepting.await;
    if let Some((server, accepting)) = health_only {
        let _ = server.await;
        let _ = accepting.await;
    }
    cutter.abort();
    if let Ok(Some(_)) = &outcome {
        tracing::info!("this runtime took the redis lease: recovering and serving");
    }
    outcome
}
