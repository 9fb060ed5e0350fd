//! Access control and abuse limits, as one tower layer in front of every service: it finds the
//! caller (an API key or a client certificate; see `identity.rs`), checks the method's role
//! (`methods.rs`), takes a call from the caller's rate limits and, for a server stream, one of its
//! stream slots (`quota.rs`), puts the [`Principal`] into the request's extensions for the
//! handlers, and audits every mutating and every refused call (`audit.rs`). Handlers never check
//! credentials themselves. Health is open; reflection follows `auth.reflection`.

mod audit;
pub mod forwarded;
mod identity;
mod methods;
mod quota;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::sync::OwnedSemaphorePermit;
use tower::{Layer, Service};

pub use audit::{AUDIT_EVENT_TYPE, record_target};
pub use identity::{
    ANONYMOUS, API_KEY_HEADER, AuthFailure, Authenticator, PeerInfo, Principal, certificate_names,
    key_sha256_hex, new_key,
};
pub use methods::{METHODS, MethodClass, Requirement, classify};
pub use quota::{LimitExceeded, Quotas};

use crate::config::{AuthMode, Config, ReflectionAccess, Role};
use crate::runtime::Runtime;

use super::status::access_status;

/// Why the layer refused a call.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessError {
    /// No usable credentials: UNAUTHENTICATED.
    Unauthenticated(AuthFailure),
    /// The caller's role may not call this method: PERMISSION_DENIED.
    PermissionDenied {
        /// The full gRPC method.
        method: String,
        /// The caller's role.
        role: Role,
        /// The role the method needs.
        required: Role,
    },
    /// Over a rate limit or quota: RESOURCE_EXHAUSTED.
    Limited(LimitExceeded),
}

/// An admitted caller and the stream slot its call holds, if any.
type Admitted = (Arc<Principal>, Option<OwnedSemaphorePermit>);

/// A refusal, with the caller when it was known.
type Refused = (Option<Arc<Principal>>, AccessError);

/// What the layer shares between connections.
#[derive(Debug)]
struct Shared {
    /// Verifies certificate names a forwarding replica signed (Redis only).
    forward: Option<forwarded::ForwardKey>,
    /// Finds the caller.
    authenticator: Authenticator,
    /// Rate limits and stream slots per principal.
    quotas: Quotas,
    /// `auth.reflection`.
    reflection: ReflectionAccess,
    /// Where audit events go; `None` when `auth.mode = "none"` (nobody to audit).
    audit: Option<audit::Auditor>,
}

/// The layer; see the module docs.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    /// Shared state.
    shared: Arc<Shared>,
}

impl AccessLayer {
    /// The layer for a validated configuration; audit events go to `runtime`'s bus.
    pub fn new(config: &Config, runtime: &Runtime) -> Self {
        let authenticator = Authenticator::new(config);
        let quotas = Quotas::new(authenticator.principals());
        let audit = (config.auth.mode != AuthMode::None).then(|| audit::Auditor::new(runtime));
        let forward = runtime
            .forward_secret()
            .map(|secret| forwarded::ForwardKey::from_secret(&secret));
        Self {
            shared: Arc::new(Shared {
                forward,
                authenticator,
                quotas,
                reflection: config.auth.reflection,
                audit,
            }),
        }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct AccessService<S> {
    /// The wrapped service.
    inner: S,
    /// Shared state.
    shared: Arc<Shared>,
}

impl Shared {
    /// The caller, checked against the method's requirement and the caller's limits; `None`
    /// for an open method. On success, the stream slot the call holds, if any.
    fn admit<B>(&self, req: &Request<B>, class: MethodClass) -> Result<Option<Admitted>, Refused> {
        let required = match class.requirement {
            Requirement::Open => return Ok(None),
            Requirement::Reflection if self.reflection == ReflectionAccess::Open => {
                return Ok(None);
            }
            Requirement::Reflection => Role::Viewer,
            Requirement::Role(role) => role,
        };
        let peer = req.extensions().get::<PeerInfo>();
        // A forwarding replica's call names the caller's certificate in signed headers.
        let principal =
            match forwarded::check(self.forward.as_ref(), req.headers(), req.uri().path()) {
                None => self.authenticator.authenticate(req.headers(), peer),
                Some(Ok(names)) => {
                    let forwarded = PeerInfo {
                        remote: peer.and_then(|p| p.remote),
                        cert_names: Some(names.into()),
                    };
                    self.authenticator
                        .authenticate(req.headers(), Some(&forwarded))
                }
                Some(Err(forwarded::Unverified)) => Err(AuthFailure::UnverifiedForward),
            }
            .map_err(|failure| (None, AccessError::Unauthenticated(failure)))?;
        if principal.role < required {
            return Err((
                Some(principal.clone()),
                AccessError::PermissionDenied {
                    method: req.uri().path().to_owned(),
                    role: principal.role,
                    required,
                },
            ));
        }
        let permit = self
            .quotas
            .admit(&principal, class.submit, class.stream)
            .map_err(|limit| (Some(principal.clone()), AccessError::Limited(limit)))?;
        Ok(Some((principal, permit)))
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<PermitBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let class = classify(req.uri().path());
        let shared = self.shared.clone();
        let admitted = shared.admit(&req, class);
        // What an audit event needs of the request, taken only for a call that is audited.
        let entry = |req: &Request<ReqBody>| {
            audit::Entry::new(
                req.uri().clone(),
                req.extensions().get::<PeerInfo>().and_then(|p| p.remote),
            )
        };
        let (principal, permit) = match admitted {
            Ok(Some((principal, permit))) => (Some(principal), permit),
            Ok(None) => (None, None),
            Err((principal, error)) => {
                let status = access_status(&error);
                if let Some(auditor) = &shared.audit {
                    auditor.refused(entry(&req), principal.as_deref(), &status);
                }
                let response = status.into_http::<ResBody>();
                return Box::pin(async move {
                    Ok(response.map(|body| PermitBody {
                        inner: body,
                        _permit: None,
                    }))
                });
            }
        };
        if let Some(principal) = &principal {
            req.extensions_mut().insert(principal.clone());
        }
        // Take the service that was driven to readiness; leave a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let audited = match (&shared.audit, principal) {
            (Some(auditor), Some(principal)) if class.mutating => {
                Some((auditor.clone(), entry(&req), principal))
            }
            _ => None,
        };
        Box::pin(async move {
            let Some((auditor, entry, principal)) = audited else {
                let response = inner.call(req).await?;
                return Ok(response.map(|body| PermitBody {
                    inner: body,
                    _permit: permit,
                }));
            };
            let (response, target) = audit::scoped(inner.call(req)).await;
            let response = response?;
            auditor.handled(entry, &principal, target, response.headers());
            Ok(response.map(|body| PermitBody {
                inner: body,
                _permit: permit,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds the call's stream slot until the stream ends or is dropped.
    pub struct PermitBody<B> {
        #[pin]
        inner: B,
        _permit: Option<OwnedSemaphorePermit>,
    }
}

impl<B: Body<Data = Bytes>> Body for PermitBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
