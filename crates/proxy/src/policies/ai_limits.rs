//! `ai-limits`: token limits and money budgets of AI calls, per consumer or team.
//!
//! The policy runs in [`Phase::Limit`], where it only notes which subject its counters belong
//! to, because the estimate needs the request body. The AI adapter ([`crate::ai`]) then reads
//! the body, estimates the call and reserves it with [`admit`] before the first provider is
//! called. A reservation that does not fit is rejected with 429 `token_limit_exceeded` or
//! `budget_exceeded`. When the response ends, [`Reservation::settle`] replaces the estimate
//! with the call's usage record, including after a client disconnect, and a reservation that
//! is dropped unsettled, because no provider served the call, is returned whole.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use portcullis_ai::CallSummary;
use portcullis_ai::limits::{Estimate, PriceBound};
use portcullis_config::{
    AiLimitKey, AiLimitsSpec, BackendErrorAction, CounterBackend, QuotaPeriod,
};
use portcullis_policy::ai_limits::{
    Amount, Budget, Levels, LimitKind, Limits, MemoryUsage, Outcome, Periods, Settlement,
    UsageStore,
};
use portcullis_policy::rate_limit::{CounterError, Period};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::policies::{Clock, PolicyContext};

/// Millionths of a currency unit per unit, the resolution of budget counters.
const MICROS_PER_UNIT: f64 = 1_000_000.0;

/// Label of a subject that has no consumer, so that client IPs do not become metric series.
const ANONYMOUS: &str = "anonymous";

/// The stores and metrics of `ai-limits` policies, kept across snapshots.
#[derive(Clone)]
pub struct AiLimitsContext {
    /// Counters of policies with `backend: local`.
    pub memory: Arc<dyn UsageStore>,
    /// Counters of policies with `backend: redis`, when the node has a `redis` key.
    pub shared: Option<Arc<dyn UsageStore>>,
    pub metrics: Arc<AiLimitMetrics>,
}

impl Default for AiLimitsContext {
    fn default() -> Self {
        AiLimitsContext {
            memory: MemoryUsage::new(),
            shared: None,
            metrics: Arc::new(AiLimitMetrics::default()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SubjectLabels {
    /// The `name` of the `ai-limits` instance.
    pub policy: String,
    /// The consumer or team name, or `anonymous`.
    pub subject: String,
    /// The requested model under `per_model: true`, else empty.
    pub model: String,
    /// `tokens_per_minute`, `tokens_per_day` or `budget`.
    pub limit: &'static str,
}

/// Labels of `portcullis_ai_limit_remaining`: the [`SubjectLabels`] and the route of the call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RemainingLabels {
    /// The `name` of the `ai-limits` instance.
    pub policy: String,
    /// The route that served the call, so that unnamed instances on different routes, whose
    /// counters are separate, write separate series.
    pub route: String,
    /// The consumer or team name, or `anonymous`.
    pub subject: String,
    /// The requested model under `per_model: true`, else empty.
    pub model: String,
    /// `tokens_per_minute`, `tokens_per_day` or `budget`.
    pub limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendErrorLabels {
    pub policy: String,
    pub backend: &'static str,
    /// `allow` or `deny` for a failed reservation, from `on_backend_error`, or `unsettled`
    /// for a failed settlement.
    pub action: &'static str,
}

/// Metrics of `ai-limits` policies.
#[derive(Default)]
pub struct AiLimitMetrics {
    pub rejections: Family<SubjectLabels, Counter>,
    /// Tokens, or currency units for `budget`, left after the last reservation or settlement
    /// on a route.
    pub remaining: Family<RemainingLabels, Gauge<f64, AtomicU64>>,
    pub backend_errors: Family<BackendErrorLabels, Counter>,
}

impl AiLimitMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = AiLimitMetrics::default();
        registry.register(
            "portcullis_ai_limit_rejections",
            "AI calls rejected by an ai-limits policy, by policy name, consumer or team, model \
             under per_model, and limit",
            metrics.rejections.clone(),
        );
        registry.register(
            "portcullis_ai_limit_remaining",
            "Tokens, or currency units for a budget, left under an ai-limits policy after its last \
             reservation or settlement on a route, by policy name, route, consumer or team, \
             model under per_model, and limit",
            metrics.remaining.clone(),
        );
        registry.register(
            "portcullis_ai_limit_backend_errors",
            "ai-limits counter operations that failed, by policy name, backend and the action taken",
            metrics.backend_errors.clone(),
        );
        Arc::new(metrics)
    }

    /// Records the levels of `subject` and `model` after an operation on a call of `route`.
    fn record_levels(
        &self,
        policy: &str,
        route: &str,
        subject: &str,
        model: &str,
        levels: &Levels,
    ) {
        for (kind, level) in levels.iter() {
            let remaining = match kind {
                LimitKind::Budget => level.remaining as f64 / MICROS_PER_UNIT,
                _ => level.remaining as f64,
            };
            self.remaining
                .get_or_create(&RemainingLabels {
                    policy: policy.to_string(),
                    route: route.to_string(),
                    subject: subject.to_string(),
                    model: model.to_string(),
                    limit: kind.name(),
                })
                .set(remaining);
        }
    }
}

/// The configuration of one `ai-limits` instance, shared by its pending checks and
/// reservations.
struct Shared {
    name: Arc<str>,
    limits: Limits,
    by: AiLimitKey,
    teams: Vec<String>,
    models: Vec<String>,
    per_model: bool,
    default_output_tokens: u64,
    /// Prefix of every counter key: the attachment scope and the instance name.
    key_prefix: String,
    on_backend_error: BackendErrorAction,
    store: Arc<dyn UsageStore>,
    metrics: Arc<AiLimitMetrics>,
    clock: Arc<dyn Clock>,
}

impl Shared {
    /// Counts a failed counter operation in `portcullis_ai_limit_backend_errors`.
    fn count_backend_error(&self, action: &'static str) {
        let labels = BackendErrorLabels {
            policy: self.name.to_string(),
            backend: self.store.backend(),
            action,
        };
        self.metrics.backend_errors.get_or_create(&labels).inc();
    }
}

pub struct AiLimits {
    shared: Arc<Shared>,
}

/// An `ai-limits` instance that applies to a request, with the subject its counters belong to.
pub struct PendingLimit {
    shared: Arc<Shared>,
    /// `consumer:NAME`, `team:NAME` or `ip:ADDRESS`.
    subject_key: String,
    /// The consumer or team name for metrics, or `anonymous`.
    subject_label: String,
    /// The name of the request's route, for metrics.
    route: Arc<str>,
}

impl AiLimits {
    pub fn new(spec: &AiLimitsSpec, scope: &str, context: &PolicyContext) -> Self {
        let name = spec.name.as_deref().unwrap_or("default");
        let store = match (spec.backend, &context.ai_limits.shared) {
            (CounterBackend::Local, _) => context.ai_limits.memory.clone(),
            (CounterBackend::Redis, Some(shared)) => shared.clone(),
            (CounterBackend::Redis, None) => {
                // Validation rejects this in files; an entity written through the admin API
                // can still name Redis on a node without it.
                tracing::warn!(
                    policy = "ai-limits",
                    policy.name = name,
                    "ai-limits has `backend: redis`, but this node has no `redis` key; its calls get on_backend_error"
                );
                Arc::new(Unconfigured)
            }
        };
        let limits = Limits {
            tokens_per_minute: spec.tokens_per_minute,
            tokens_per_day: spec.tokens_per_day,
            budget: spec.budget.as_ref().map(|budget| Budget {
                micros: (budget.amount * MICROS_PER_UNIT).round() as u64,
                period: match budget.period {
                    QuotaPeriod::Day => Period::Day,
                    QuotaPeriod::Month => Period::Month,
                },
            }),
        };
        AiLimits {
            shared: Arc::new(Shared {
                name: name.into(),
                limits,
                by: spec.by,
                teams: spec.teams.clone(),
                models: spec.models.clone(),
                per_model: spec.per_model,
                default_output_tokens: spec.default_output_tokens,
                key_prefix: format!("ai|{scope}|{name}|"),
                on_backend_error: spec.on_backend_error,
                store,
                metrics: context.ai_limits.metrics.clone(),
                clock: context.clock.clone(),
            }),
        }
    }

    /// Returns the subject of the request, or `None` when the limit does not apply to it.
    fn subject(&self, exchange: &Exchange<'_>) -> Option<(String, String)> {
        let shared = &self.shared;
        let Some(consumer) = &exchange.consumer else {
            if shared.by == AiLimitKey::Team || !shared.teams.is_empty() {
                return None;
            }
            let key = format!("ip:{}", exchange.canonical.client_ip);
            return Some((key, ANONYMOUS.to_string()));
        };
        // The caller's teams are its consumer roles and the roles its credential carries.
        let mut roles = consumer.roles.iter().chain(&exchange.credential_roles);
        let team = roles.find(|role| shared.teams.is_empty() || shared.teams.contains(role));
        match (shared.by, team) {
            (AiLimitKey::Team, Some(team)) => Some((format!("team:{team}"), team.clone())),
            (AiLimitKey::Team, None) => None,
            // With `teams`, only consumers of one of those teams are limited.
            (AiLimitKey::Consumer, None) if !shared.teams.is_empty() => None,
            (AiLimitKey::Consumer, _) => Some((
                format!("consumer:{}", consumer.name),
                consumer.name.to_string(),
            )),
        }
    }
}

impl Policy for AiLimits {
    fn name(&self) -> &'static str {
        "ai-limits"
    }

    fn phase(&self) -> Phase {
        Phase::Limit
    }

    fn on_request<'a, 'r: 'a>(&'a self, exchange: &'a mut Exchange<'r>) -> PolicyFuture<'a> {
        Box::pin(async move {
            if exchange.route.ai.is_none() {
                return Ok(());
            }
            if let Some((subject_key, subject_label)) = self.subject(exchange) {
                exchange.ai_limits.push(PendingLimit {
                    shared: self.shared.clone(),
                    subject_key,
                    subject_label,
                    route: exchange.route.name.clone(),
                });
            }
            Ok(())
        })
    }
}

/// The reservations of an admitted call, and what the gateway and the response need from them.
#[derive(Default)]
pub struct Admission {
    pub reservations: Vec<Reservation>,
    /// The output allowance per choice that the gateway sends to the provider, set when the
    /// request has none of its own.
    pub max_output_tokens: Option<u64>,
    /// Token and budget headers for the response.
    pub headers: HeaderMap,
}

/// Reserves the estimate of a call under every pending limit that applies to its model, in
/// order. The first limit that rejects ends the call, and the reservations made before it are
/// returned when they drop.
pub async fn admit(
    gateway: &portcullis_ai::Gateway,
    estimate: &Estimate,
    pending: Vec<PendingLimit>,
) -> Result<Admission, Rejection> {
    let applicable: Vec<PendingLimit> = pending
        .into_iter()
        .filter(|limit| {
            limit.shared.models.is_empty() || limit.shared.models.contains(&estimate.model)
        })
        .collect();
    let mut admission = Admission::default();
    if applicable.is_empty() {
        return Ok(admission);
    }
    // An unknown model gets the gateway's 404, so there is nothing to reserve.
    let Some(prices) = gateway.target_prices(&estimate.model) else {
        return Ok(admission);
    };
    let price_bound = PriceBound::over(&prices);
    let per_choice = match (estimate.has_output, estimate.max_output_tokens) {
        (false, _) => 0,
        (true, Some(requested)) => requested,
        (true, None) => {
            let default = applicable
                .iter()
                .map(|limit| limit.shared.default_output_tokens)
                .min()
                .unwrap_or(portcullis_config::ai_limits::DEFAULT_OUTPUT_TOKENS);
            admission.max_output_tokens = Some(default);
            default
        }
    };
    let output_tokens = per_choice.saturating_mul(estimate.choices);
    let tokens = estimate.input_tokens.saturating_add(output_tokens);
    for limit in applicable {
        let shared = limit.shared.clone();
        let cost_micros = match (shared.limits.budget, price_bound) {
            (None, _) => 0,
            (Some(_), Some(bound)) => {
                let cost = bound.cost(estimate.input_tokens, output_tokens);
                (cost * MICROS_PER_UNIT).ceil() as u64
            }
            (Some(_), None) => return Err(unpriced(&shared, &estimate.model)),
        };
        let amount = Amount {
            tokens,
            cost_micros,
        };
        reserve_one(limit, &estimate.model, amount, &mut admission).await?;
    }
    Ok(admission)
}

/// Reserves `amount` under one limit and adds the reservation and its headers to `admission`.
async fn reserve_one(
    limit: PendingLimit,
    model_name: &str,
    amount: Amount,
    admission: &mut Admission,
) -> Result<(), Rejection> {
    let shared = limit.shared.clone();
    let key = limit.counter_key(model_name);
    let model = match shared.per_model {
        true => model_name.to_string(),
        false => String::new(),
    };
    let now = shared.clock.now_nanos();
    match shared
        .store
        .reserve(&key, &shared.limits, amount, now)
        .await
    {
        Ok(Outcome::Admitted { periods, levels }) => {
            limit.record_levels(&model, &levels);
            write_headers(&mut admission.headers, &levels);
            let reservation = Reservation::new(limit, key, model, amount, Some(periods));
            admission.reservations.push(reservation);
        }
        Ok(Outcome::Rejected {
            kind,
            retry_after,
            levels,
        }) => {
            limit.record_levels(&model, &levels);
            shared
                .metrics
                .rejections
                .get_or_create(&SubjectLabels {
                    policy: shared.name.to_string(),
                    subject: limit.subject_label.clone(),
                    model,
                    limit: kind.name(),
                })
                .inc();
            let mut headers = admission.headers.clone();
            write_headers(&mut headers, &levels);
            return Err(reject(
                &shared,
                kind,
                retry_after,
                amount,
                &levels,
                &headers,
            ));
        }
        Err(error) => {
            backend_failed(&shared, &error)?;
            // Admitted unreserved: the settlement still charges the real usage.
            let reservation = Reservation::new(limit, key, model, Amount::default(), None);
            admission.reservations.push(reservation);
        }
    }
    Ok(())
}

impl PendingLimit {
    fn counter_key(&self, model: &str) -> String {
        let mut key = format!("{}{}", self.shared.key_prefix, self.subject_key);
        if self.shared.per_model {
            key.push_str("|model:");
            key.push_str(model);
        }
        key
    }

    /// Records the levels of this limit's counters after an operation on a call of `model`.
    fn record_levels(&self, model: &str, levels: &Levels) {
        let shared = &self.shared;
        let (route, subject) = (&self.route, &self.subject_label);
        shared
            .metrics
            .record_levels(&shared.name, route, subject, model, levels);
    }
}

/// Counts a failed reservation and admits or rejects the call as `on_backend_error` sets.
fn backend_failed(shared: &Shared, error: &CounterError) -> Result<(), Rejection> {
    let action = match shared.on_backend_error {
        BackendErrorAction::Allow => "allow",
        BackendErrorAction::Deny => "deny",
    };
    shared.count_backend_error(action);
    tracing::debug!(policy = "ai-limits", policy.name = %shared.name, redis.addr = shared.store.address(), %error, action, "ai-limits reservation failed");
    match shared.on_backend_error {
        BackendErrorAction::Allow => Ok(()),
        BackendErrorAction::Deny => Err(Rejection::upstream(
            StatusCode::SERVICE_UNAVAILABLE,
            "ai_limits_unavailable",
            "the token and budget counters are unavailable; retry later",
        )
        .by_policy("ai-limits")
        .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))),
    }
}

fn unpriced(shared: &Shared, model: &str) -> Rejection {
    Rejection::new(
        StatusCode::FORBIDDEN,
        "model_not_priced",
        format!(
            "model `{model}` has a target without a price in ai.prices, so the budget of \
             ai-limits `{}` cannot count its calls",
            shared.name
        ),
    )
    .by_policy("ai-limits")
}

/// Builds the 429 of a reservation that does not fit `kind`.
fn reject(
    shared: &Shared,
    kind: LimitKind,
    retry_after: Option<Duration>,
    amount: Amount,
    levels: &Levels,
    headers: &HeaderMap,
) -> Rejection {
    let level = levels
        .iter()
        .find(|(found, _)| *found == kind)
        .map(|(_, level)| level);
    let (limit, remaining) = level.map_or((0, 0), |level| (level.limit, level.remaining));
    let name = &shared.name;
    let (code, message) = match kind {
        LimitKind::Budget => {
            let unit = |micros: u64| micros as f64 / MICROS_PER_UNIT;
            let needed = unit(amount.cost_micros);
            let message = match retry_after {
                Some(_) => format!(
                    "the call's estimated cost of {needed:.6} is more than the {:.6} left of \
                     the budget of ai-limits `{name}`; retry after the time in Retry-After",
                    unit(remaining)
                ),
                None => format!(
                    "the call's estimated cost of {needed:.6} is more than the whole budget of \
                     {:.6} of ai-limits `{name}`; lower max_tokens or shorten the request",
                    unit(limit)
                ),
            };
            ("budget_exceeded", message)
        }
        _ => {
            let field = kind.name();
            let needed = amount.tokens;
            let message = match retry_after {
                Some(_) => format!(
                    "the call needs an estimated {needed} tokens, and `{field}` of ai-limits \
                     `{name}` has {remaining} left; retry after the time in Retry-After"
                ),
                None => format!(
                    "the call needs an estimated {needed} tokens, more than the {limit} that \
                     `{field}` of ai-limits `{name}` allows; lower max_tokens or shorten the \
                     request"
                ),
            };
            ("token_limit_exceeded", message)
        }
    };
    let mut rejection =
        Rejection::new(StatusCode::TOO_MANY_REQUESTS, code, message).by_policy("ai-limits");
    if let Some(retry_after) = retry_after {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        rejection = rejection.with_header(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    rejection.add_missing_headers(headers);
    rejection
}

const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
const BUDGET_REMAINING: HeaderName = HeaderName::from_static("x-portcullis-budget-remaining");

/// Sets the token headers to the token limit with the fewest tokens left, over every limit
/// written so far, and the budget header to the smallest budget left.
fn write_headers(headers: &mut HeaderMap, levels: &Levels) {
    let current = |headers: &HeaderMap, name: &HeaderName| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<f64>().ok())
    };
    let tokens = [levels.tokens_per_minute, levels.tokens_per_day]
        .into_iter()
        .flatten()
        .min_by_key(|level| level.remaining);
    if let Some(level) = tokens
        && current(headers, &REMAINING_TOKENS).is_none_or(|known| (level.remaining as f64) < known)
    {
        let reset = level.reset_after.as_secs_f64().ceil() as u64;
        headers.insert(LIMIT_TOKENS, HeaderValue::from(level.limit));
        headers.insert(REMAINING_TOKENS, HeaderValue::from(level.remaining));
        if let Ok(value) = HeaderValue::from_str(&format!("{reset}s")) {
            headers.insert(RESET_TOKENS, value);
        }
    }
    if let Some(level) = levels.budget {
        let remaining = level.remaining as f64 / MICROS_PER_UNIT;
        if current(headers, &BUDGET_REMAINING).is_none_or(|known| remaining < known)
            && let Ok(value) = HeaderValue::from_str(&format!("{remaining:.6}"))
        {
            headers.insert(BUDGET_REMAINING, value);
        }
    }
}

/// An estimate counted under one limit, settled when the call's response ends. Dropping it
/// unsettled returns the whole estimate.
pub struct Reservation {
    limit: PendingLimit,
    key: String,
    /// The model label of the metrics.
    model: String,
    reserved: Amount,
    /// `None` for a call admitted while the backend failed, which reserved nothing.
    periods: Option<Periods>,
    settled: bool,
    runtime: tokio::runtime::Handle,
}

impl Reservation {
    fn new(
        limit: PendingLimit,
        key: String,
        model: String,
        reserved: Amount,
        periods: Option<Periods>,
    ) -> Self {
        Reservation {
            limit,
            key,
            model,
            reserved,
            periods,
            settled: false,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Replaces the estimate with the usage of the finished call. A call without a price
    /// keeps its reserved cost, because its real cost is unknown.
    pub fn settle(mut self, summary: &CallSummary) {
        let tokens = summary.input_tokens
            + summary.cache_read_tokens
            + summary.cache_write_tokens
            + summary.output_tokens
            + summary.reasoning_tokens;
        let cost_micros = summary.cost.map_or(self.reserved.cost_micros, |cost| {
            (cost * MICROS_PER_UNIT).round() as u64
        });
        self.send(Amount {
            tokens,
            cost_micros,
        });
    }

    /// Sends the settlement in a task of its own, because it runs when a response body ends.
    fn send(&mut self, actual: Amount) {
        self.settled = true;
        if self.periods.is_none() && actual == Amount::default() {
            return;
        }
        let shared = self.limit.shared.clone();
        let subject = self.limit.subject_label.clone();
        let route = self.limit.route.clone();
        let key = std::mem::take(&mut self.key);
        let model = std::mem::take(&mut self.model);
        let settlement = Settlement {
            reserved: self.reserved,
            actual,
            periods: self.periods,
        };
        self.runtime.spawn(async move {
            let now = shared.clock.now_nanos();
            match shared.store.settle(&key, &shared.limits, settlement, now).await {
                Ok(levels) => {
                    let metrics = &shared.metrics;
                    metrics.record_levels(&shared.name, &route, &subject, &model, &levels);
                }
                Err(error) => {
                    shared.count_backend_error("unsettled");
                    tracing::debug!(policy = "ai-limits", policy.name = %shared.name, redis.addr = shared.store.address(), %error, "ai-limits settlement failed; the reservation stays counted");
                }
            }
        });
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.send(Amount::default());
        }
    }
}

/// The counters of a policy that names Redis on a node without `redis` in its file.
struct Unconfigured;

impl Unconfigured {
    fn error() -> CounterError {
        CounterError {
            backend: "redis",
            message: "ai-limits has `backend: redis`, but this node has no `redis` key in its \
                      configuration file; add `redis: { url: ... }` to the file and restart"
                .into(),
        }
    }
}

impl UsageStore for Unconfigured {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn reserve<'a>(
        &'a self,
        _key: &'a str,
        _limits: &'a Limits,
        _amount: Amount,
        _now: u64,
    ) -> portcullis_policy::ai_limits::UsageFuture<'a, Outcome> {
        Box::pin(std::future::ready(Err(Unconfigured::error())))
    }

    fn settle<'a>(
        &'a self,
        _key: &'a str,
        _limits: &'a Limits,
        _settlement: Settlement,
        _now: u64,
    ) -> portcullis_policy::ai_limits::UsageFuture<'a, Levels> {
        Box::pin(std::future::ready(Err(Unconfigured::error())))
    }
}
