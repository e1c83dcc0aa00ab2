//! `rate-limit`: rate limits, calendar quotas and concurrency limits, keyed by consumer, role,
//! route, service, client IP, a header or a JWT claim. Runs in [`Phase::Limit`].
//!
//! Admitted and rejected responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (draft-ietf-httpapi-ratelimit-headers-07) and `RateLimit-Policy` with
//! `RateLimit` in the structured form of later drafts; a rejection adds `Retry-After`.
//!
//! With `delay`, a request over the limit waits for capacity, as long as the wait stays within
//! `delay.max`, and is rejected at once otherwise. When the counter backend fails, the request
//! is admitted, or rejected with 503, as `on_backend_error` sets, and the failure is counted in
//! `portcullis_rate_limit_backend_errors`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use portcullis_config::{
    BackendErrorAction, CounterBackend, LimitAlgorithm, LimitKey, QuotaPeriod, RateLimitSpec,
};
use portcullis_policy::rate_limit::{
    Algorithm, Concurrency, CounterError, Counters, Decision, Gcra, Lease, LocalShare, Period,
    Quota, SlidingWindow,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::metrics::{BackendErrorLabels, Name};
use crate::policies::{Clock, PolicyContext};

/// Default time after which Redis drops a concurrency slot that was never released.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);
/// The single-valued fields that describe the binding limit, and their older `X-` forms.
const CURRENT_NAMES: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];
const LEGACY_NAMES: [&str; 3] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// Poll interval of a delayed request under a concurrency limit, which has no retry time.
const CONCURRENCY_POLL: Duration = Duration::from_millis(5);

/// The quantity one instance limits: a request rate, or the requests in flight.
enum Limit {
    Rate(Algorithm),
    Concurrency(Concurrency),
}

pub struct RateLimit {
    limit: Limit,
    by: LimitKey,
    header: Option<HeaderName>,
    claim: Option<String>,
    /// Consumer roles the limit applies to; empty means every request.
    roles: Vec<String>,
    /// Prefix of every counter key: the attachment scope and the instance name.
    key_prefix: String,
    policy_name: Arc<str>,
    legacy_headers: bool,
    max_delay: Option<Duration>,
    on_backend_error: BackendErrorAction,
    counters: Arc<dyn Counters>,
    clock: Arc<dyn Clock>,
    backend_errors: Family<BackendErrorLabels, Counter>,
}

/// The outcome of one attempt at the counters.
enum Attempt {
    Admitted(Decision, Option<Lease>),
    Rejected(Decision),
}

impl RateLimit {
    pub fn new(spec: &RateLimitSpec, scope: &str, context: &PolicyContext) -> Self {
        let instance = spec.name.as_deref().unwrap_or("default");
        let window = spec.window.unwrap_or(Duration::from_secs(1));
        let limit = match spec.algorithm {
            LimitAlgorithm::Gcra => {
                let burst = spec.burst.unwrap_or(spec.limit);
                Limit::Rate(Algorithm::Gcra(Gcra::new(spec.limit, window, burst)))
            }
            LimitAlgorithm::SlidingWindow => Limit::Rate(Algorithm::SlidingWindow(
                SlidingWindow::new(spec.limit, window),
            )),
            LimitAlgorithm::Quota => {
                let period = match spec.period {
                    Some(QuotaPeriod::Month) => Period::Month,
                    Some(QuotaPeriod::Day) | None => Period::Day,
                };
                Limit::Rate(Algorithm::Quota(Quota::new(spec.limit, period)))
            }
            LimitAlgorithm::Concurrency => Limit::Concurrency(Concurrency {
                limit: spec.limit.max(1),
                lease_ttl: spec.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
            }),
        };
        RateLimit {
            limit,
            by: spec.by,
            header: spec
                .header
                .as_deref()
                .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
            claim: spec.claim.clone(),
            roles: spec.roles.clone(),
            key_prefix: format!("{scope}|{instance}|"),
            policy_name: instance.into(),
            legacy_headers: spec.legacy_headers,
            max_delay: spec.delay.as_ref().map(|delay| delay.max),
            on_backend_error: spec.on_backend_error,
            counters: select_counters(spec, context),
            clock: context.clock.clone(),
            backend_errors: context.backend_errors.clone(),
        }
    }

    /// Returns whether the limit applies to this request's consumer.
    fn applies_to(&self, exchange: &Exchange<'_>) -> bool {
        if self.roles.is_empty() {
            return true;
        }
        exchange
            .consumer
            .as_ref()
            .is_some_and(|consumer| consumer.roles.iter().any(|role| self.roles.contains(role)))
    }

    fn counter_key(&self, exchange: &Exchange<'_>) -> String {
        let mut key = self.key_prefix.clone();
        let client_ip = || format!("ip:{}", exchange.canonical.client_ip);
        match self.by {
            LimitKey::Consumer => match &exchange.consumer {
                Some(consumer) => {
                    key.push_str("consumer:");
                    key.push_str(&consumer.name);
                }
                None => key.push_str(&client_ip()),
            },
            LimitKey::Role => {
                // With `roles`, the first of the consumer's roles that the limit names;
                // otherwise the consumer's first role.
                let role = exchange.consumer.as_ref().and_then(|consumer| {
                    consumer
                        .roles
                        .iter()
                        .find(|role| self.roles.is_empty() || self.roles.contains(role))
                        .cloned()
                });
                match role {
                    Some(role) => {
                        key.push_str("role:");
                        key.push_str(&role);
                    }
                    None => key.push_str(&client_ip()),
                }
            }
            LimitKey::Route => {
                key.push_str("route:");
                key.push_str(&exchange.route.name);
            }
            // An `ai` route has no service, so the limit counts by its route name instead.
            LimitKey::Service => match &exchange.route.service {
                Some(service) => {
                    key.push_str("service:");
                    key.push_str(&service.name);
                }
                None => {
                    key.push_str("route:");
                    key.push_str(&exchange.route.name);
                }
            },
            LimitKey::Ip => key.push_str(&client_ip()),
            LimitKey::Header => {
                key.push_str("header:");
                let value = self
                    .header
                    .as_ref()
                    .and_then(|name| exchange.headers.get(name));
                key.push_str(value.and_then(|v| v.to_str().ok()).unwrap_or(""));
            }
            LimitKey::Claim => {
                let value = match (&exchange.claims, &self.claim) {
                    (Some(claims), Some(name)) => portcullis_policy::jwt::claim_at(claims, name)
                        .and_then(|value| match value {
                            serde_json::Value::String(text) => Some(text.clone()),
                            serde_json::Value::Number(number) => Some(number.to_string()),
                            _ => None,
                        }),
                    _ => None,
                };
                match value {
                    Some(value) => {
                        key.push_str("claim:");
                        key.push_str(&value);
                    }
                    None => key.push_str(&client_ip()),
                }
            }
        }
        key
    }

    /// Asks the counters once.
    async fn attempt(&self, key: &str) -> Result<Attempt, CounterError> {
        let now = self.clock.now_nanos();
        match &self.limit {
            Limit::Rate(algorithm) => {
                let decision = self.counters.acquire(key, algorithm, now).await?;
                Ok(if decision.allowed {
                    Attempt::Admitted(decision, None)
                } else {
                    Attempt::Rejected(decision)
                })
            }
            Limit::Concurrency(limit) => {
                let (decision, lease) = self.counters.acquire_slot(key, limit, now).await?;
                Ok(match lease {
                    Some(id) => Attempt::Admitted(
                        decision,
                        Some(Lease::new(self.counters.clone(), key.to_string(), id)),
                    ),
                    None => Attempt::Rejected(decision),
                })
            }
        }
    }

    /// Returns the time to wait before the next attempt, or `None` when the request must be
    /// rejected now because the wait would pass `delay.max`.
    fn next_wait(&self, decision: &Decision, started: Instant) -> Option<Duration> {
        let max_delay = self.max_delay?;
        let wait = match &self.limit {
            Limit::Rate(_) => decision.retry_after?,
            Limit::Concurrency(_) => CONCURRENCY_POLL,
        };
        let waited = started.elapsed();
        (waited + wait <= max_delay).then_some(wait)
    }

    /// Counts a failed counter operation and admits or rejects the request as `on_backend_error`
    /// sets.
    fn backend_failed(
        &self,
        exchange: &Exchange<'_>,
        error: &CounterError,
    ) -> Result<(), Rejection> {
        let action = match self.on_backend_error {
            BackendErrorAction::Allow => "allow",
            BackendErrorAction::Deny => "deny",
        };
        self.backend_errors
            .get_or_create(&BackendErrorLabels {
                policy: Name(self.policy_name.clone()),
                backend: Name(Arc::from(self.counters.backend())),
                action: Name(Arc::from(action)),
            })
            .inc();
        tracing::debug!(policy = "rate-limit", policy.name = %self.policy_name, route.name = %exchange.route.name, redis.addr = self.counters.address(), %error, action, "rate-limit counter failed");
        match self.on_backend_error {
            BackendErrorAction::Allow => Ok(()),
            BackendErrorAction::Deny => Err(Rejection::upstream(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limit_unavailable",
                "the rate-limit counters are unavailable; retry later",
            )
            .by_policy("rate-limit")
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))),
        }
    }

    /// Adds this limit's state to `headers`. `RateLimit-Policy` and `RateLimit` list every
    /// limit that ran; the single-valued `RateLimit-Limit`, `-Remaining` and `-Reset` (and their
    /// `X-` forms) describe the limit with the fewest requests remaining, the one that binds,
    /// or this limit when `binding` is set because it rejected the request.
    fn write_headers(&self, headers: &mut HeaderMap, decision: &Decision, binding: bool) {
        let reset = decision.reset_after.as_secs_f64().ceil() as u64;
        let limit = match &self.limit {
            Limit::Rate(algorithm) => algorithm.limit(),
            Limit::Concurrency(concurrency) => concurrency.limit,
        };
        let (policy, state) = match &self.limit {
            Limit::Rate(algorithm) => {
                let window = algorithm.window_at(self.clock.now_nanos()).as_secs().max(1);
                (
                    format!("\"{}\";q={limit};w={window}", self.policy_name),
                    format!(
                        "\"{}\";r={};t={reset}",
                        self.policy_name, decision.remaining
                    ),
                )
            }
            // A concurrency limit has no window and no reset time.
            Limit::Concurrency(_) => (
                format!("\"{}\";q={limit}", self.policy_name),
                format!("\"{}\";r={}", self.policy_name, decision.remaining),
            ),
        };
        if let (Ok(policy), Ok(state)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            headers.append(HeaderName::from_static("ratelimit-policy"), policy);
            headers.append(HeaderName::from_static("ratelimit"), state);
        }

        let binding_remaining = headers
            .get("ratelimit-remaining")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        let binds =
            binding || binding_remaining.is_none_or(|remaining| decision.remaining < remaining);
        // The `X-` forms mirror the binding limit as soon as any limit that ran sets
        // `legacy_headers`.
        let legacy = self.legacy_headers || headers.contains_key(LEGACY_NAMES[0]);
        if binds {
            let values = [
                HeaderValue::from(limit),
                HeaderValue::from(decision.remaining),
                HeaderValue::from(reset),
            ];
            for ((name, legacy_name), value) in
                CURRENT_NAMES.into_iter().zip(LEGACY_NAMES).zip(values)
            {
                if legacy {
                    headers.insert(HeaderName::from_static(legacy_name), value.clone());
                }
                headers.insert(HeaderName::from_static(name), value);
            }
        } else if legacy && !headers.contains_key(LEGACY_NAMES[0]) {
            // Another limit binds: copy its values into the `X-` forms.
            for (name, legacy_name) in CURRENT_NAMES.into_iter().zip(LEGACY_NAMES) {
                if let Some(value) = headers.get(name).cloned() {
                    headers.insert(HeaderName::from_static(legacy_name), value);
                }
            }
        }
    }

    fn reject(&self, exchange: &Exchange<'_>, decision: &Decision) -> Rejection {
        let mut rejection = Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry after the time in Retry-After",
        )
        .by_policy("rate-limit");
        let mut headers = exchange.response_headers.clone();
        self.write_headers(&mut headers, decision, true);
        let retry_after = decision
            .retry_after
            .unwrap_or_default()
            .as_secs_f64()
            .ceil()
            .max(1.0) as u64;
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
        rejection.add_missing_headers(&headers);
        rejection
    }
}

/// Picks the counters a limit uses: local, Redis, or a local share of Redis.
fn select_counters(spec: &RateLimitSpec, context: &PolicyContext) -> Arc<dyn Counters> {
    if spec.backend == CounterBackend::Local {
        return context.counters.clone();
    }
    let Some(shared) = &context.shared_counters else {
        // Validation rejects this in files. An entity written through the admin API can still
        // name Redis on a node without it, and its limit then applies `on_backend_error`.
        tracing::warn!(
            policy = "rate-limit",
            policy.name = spec.name.as_deref().unwrap_or("default"),
            "a limit has `backend: redis`, but this node has no `redis` key; its requests get on_backend_error"
        );
        return Arc::new(Unconfigured);
    };
    match spec.batch {
        Some(batch) if batch > 1 && spec.algorithm != LimitAlgorithm::Concurrency => {
            Arc::new(LocalShare::new(shared.clone(), batch))
        }
        _ => shared.clone(),
    }
}

/// The counters of a limit that names Redis on a node without `redis` in its file.
struct Unconfigured;

impl Unconfigured {
    fn error() -> CounterError {
        CounterError {
            backend: "redis",
            message: "the limit has `backend: redis`, but this node has no `redis` key in its \
                      configuration file; add `redis: { url: ... }` to the file and restart"
                .into(),
        }
    }
}

impl Counters for Unconfigured {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn acquire<'a>(
        &'a self,
        _key: &'a str,
        _algorithm: &'a Algorithm,
        _now: u64,
    ) -> portcullis_policy::rate_limit::CounterFuture<'a> {
        Box::pin(std::future::ready(Err(Unconfigured::error())))
    }

    fn acquire_slot<'a>(
        &'a self,
        _key: &'a str,
        _limit: &'a Concurrency,
        _now: u64,
    ) -> portcullis_policy::rate_limit::CounterFuture<'a, (Decision, Option<u64>)> {
        Box::pin(std::future::ready(Err(Unconfigured::error())))
    }

    fn release_slot(&self, _key: &str, _lease: u64) {}
}

impl Policy for RateLimit {
    fn name(&self) -> &'static str {
        "rate-limit"
    }

    fn phase(&self) -> Phase {
        Phase::Limit
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(async move {
            if !self.applies_to(exchange) {
                return Ok(());
            }
            let key = self.counter_key(exchange);
            let started = Instant::now();
            loop {
                let attempt = match self.attempt(&key).await {
                    Ok(attempt) => attempt,
                    Err(error) => return self.backend_failed(exchange, &error),
                };
                match attempt {
                    Attempt::Admitted(decision, lease) => {
                        self.write_headers(&mut exchange.response_headers, &decision, false);
                        exchange.leases.extend(lease);
                        return Ok(());
                    }
                    Attempt::Rejected(decision) => match self.next_wait(&decision, started) {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => return Err(self.reject(exchange, &decision)),
                    },
                }
            }
        })
    }
}
