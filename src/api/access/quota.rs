//! Per-principal rate limits and stream quotas: for each configured principal, a `governor`
//! limiter for submits and one for other calls, and a semaphore for its open server streams.
//! The principals are fixed by configuration, so the set of keys is bounded.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::identity::Principal;
use crate::config::PrincipalLimits;

/// Why a call is over a principal's limits.
#[derive(Debug, Clone, PartialEq)]
pub enum LimitExceeded {
    /// The submit or call rate; retry after this long.
    Rate {
        /// `submits_per_second` or `calls_per_second`.
        limit: &'static str,
        /// When a call would be allowed again.
        retry_after: Duration,
    },
    /// Every one of `max_streams` streams is open.
    Streams {
        /// The quota.
        max: u32,
    },
}

/// One principal's limiters.
struct Limiters {
    /// Submits.
    submits: DefaultDirectRateLimiter,
    /// Other calls.
    calls: DefaultDirectRateLimiter,
    /// Open server streams.
    streams: Arc<Semaphore>,
    /// The configured numbers.
    limits: PrincipalLimits,
}

/// The limiters of every principal, by name.
pub struct Quotas {
    /// Limiters by principal name.
    by_name: HashMap<String, Limiters>,
    /// The clock governor measures with.
    clock: DefaultClock,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("principals", &self.by_name.len())
            .finish()
    }
}

fn quota(per_second: f64, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    // A validated rate is finite and > 0; one too high for a period is unlimited in practice.
    Duration::try_from_secs_f64(1.0 / per_second)
        .ok()
        .and_then(Quota::with_period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

impl Quotas {
    /// Limiters for each principal that has limits.
    pub fn new<'a>(principals: impl IntoIterator<Item = &'a Arc<Principal>>) -> Self {
        let by_name = principals
            .into_iter()
            .filter_map(|p| {
                let limits = p.limits?;
                Some((
                    p.name.to_string(),
                    Limiters {
                        submits: RateLimiter::direct(quota(
                            limits.submits_per_second,
                            limits.submit_burst,
                        )),
                        calls: RateLimiter::direct(quota(
                            limits.calls_per_second,
                            limits.call_burst,
                        )),
                        streams: Arc::new(Semaphore::new(
                            usize::try_from(limits.max_streams).unwrap_or(usize::MAX),
                        )),
                        limits,
                    },
                ))
            })
            .collect();
        Self {
            by_name,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one call from the principal's submit or call rate, and for a stream one of its
    /// stream slots (held until the permit drops). Unlimited principals always pass.
    pub fn admit(
        &self,
        principal: &Principal,
        submit: bool,
        stream: bool,
    ) -> Result<Option<OwnedSemaphorePermit>, LimitExceeded> {
        let Some(limiters) = self.by_name.get(&*principal.name) else {
            return Ok(None);
        };
        let (limiter, limit) = if submit {
            (&limiters.submits, "submits_per_second")
        } else {
            (&limiters.calls, "calls_per_second")
        };
        limiter.check().map_err(|not_until| LimitExceeded::Rate {
            limit,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })?;
        if !stream {
            return Ok(None);
        }
        limiters
            .streams
            .clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| LimitExceeded::Streams {
                max: limiters.limits.max_streams,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitsConfig, LimitsOverride, Role};

    fn principal(overrides: LimitsOverride) -> Arc<Principal> {
        Arc::new(Principal {
            name: "p".into(),
            tenant: "t".into(),
            role: Role::Submitter,
            authenticated: true,
            limits: Some(LimitsConfig::default().with(&overrides)),
        })
    }

    #[test]
    fn the_burst_is_allowed_then_refused_with_a_retry_time() {
        let p = principal(LimitsOverride {
            submits_per_second: Some(0.001),
            submit_burst: Some(3),
            max_streams: Some(1),
            ..LimitsOverride::default()
        });
        let quotas = Quotas::new([&p]);
        for _ in 0..3 {
            quotas.admit(&p, true, false).unwrap();
        }
        let LimitExceeded::Rate { limit, retry_after } = quotas.admit(&p, true, false).unwrap_err()
        else {
            panic!("expected a rate refusal");
        };
        assert_eq!(limit, "submits_per_second");
        assert!(retry_after > Duration::from_secs(100), "{retry_after:?}");
        // Other calls have their own rate.
        quotas.admit(&p, false, false).unwrap();

        let held = quotas.admit(&p, false, true).unwrap();
        assert!(held.is_some());
        assert_eq!(
            quotas.admit(&p, false, true).unwrap_err(),
            LimitExceeded::Streams { max: 1 }
        );
        drop(held);
        assert!(quotas.admit(&p, false, true).unwrap().is_some());
    }

    #[test]
    fn unlimited_principals_pass() {
        let anonymous = Arc::new(Principal {
            name: "anonymous".into(),
            tenant: "anonymous".into(),
            role: Role::Admin,
            authenticated: false,
            limits: None,
        });
        let quotas = Quotas::new([&anonymous]);
        for _ in 0..10_000 {
            assert!(quotas.admit(&anonymous, true, true).unwrap().is_none());
        }
    }
}
