//! Per-target state: health, circuit breaker and requests in flight, kept across snapshots.
//!
//! The [`TargetRegistry`] hands out one [`TargetState`] per service and target URL and keeps it
//! while any snapshot uses it, so a config reload that leaves a target unchanged also leaves its
//! health and circuit untouched. The state holds the plain models of
//! `portcullis_policy::upstream` behind a mutex that is held only for a model call. Active
//! health checks run as one task per target. The task ends when the last snapshot that uses
//! the target is dropped, or when its service no longer has an active check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::{ActiveHealthCheckSpec, ServiceSpec};
use portcullis_policy::upstream::breaker::{BreakerParams, CircuitBreaker, CircuitState};
use portcullis_policy::upstream::health::{Health, HealthParams, Transition};
use portcullis_policy::upstream::retry_budget::{BudgetParams, RetryBudget};
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::metrics::{Metrics, Name, TargetLabels};
use crate::policies::Clock;
use crate::upstream::Target;

/// The outcome of one upstream attempt, for health checks and the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The upstream sent response headers with this status.
    Response(u16),
    /// The connection failed, timed out, or closed without a valid response.
    TransportFailure,
}

/// Settings of a target that a reload may change without resetting its state.
#[derive(Debug, Clone, Default)]
struct TargetSettings {
    health: HealthParams,
    passive_failure_statuses: Vec<u16>,
    breaker_failure_statuses: Vec<u16>,
    active: Option<ActiveHealthCheckSpec>,
}

struct Models {
    settings: TargetSettings,
    health: Health,
    breaker: Option<CircuitBreaker>,
}

/// The live state of one target of one service.
pub struct TargetState {
    pub service: Arc<str>,
    /// The target URL as configured, which identifies the target across reloads.
    pub url: Arc<str>,
    pub target: Target,
    weight: AtomicU32,
    in_flight: AtomicU64,
    models: Mutex<Models>,
    pub(crate) probe_running: AtomicBool,
    clock: Arc<dyn Clock>,
    healthy_gauge: Gauge,
    circuit_gauge: Gauge,
    table: Arc<StateTable>,
}

impl Drop for TargetState {
    /// Forgets the target and its metric series once no snapshot uses it.
    fn drop(&mut self) {
        let key = (self.service.to_string(), self.url.to_string());
        let mut states = self.table.lock();
        // A later snapshot may have created a new state for the same target after this one's
        // last reference went away. That state owns the entry and the series now.
        if states
            .get(&key)
            .is_some_and(|state| state.upgrade().is_none())
        {
            states.remove(&key);
            let labels = TargetLabels {
                service: Name(self.service.clone()),
                target: Name(self.url.clone()),
            };
            self.table.metrics.target_healthy.remove(&labels);
            self.table.metrics.target_circuit_state.remove(&labels);
        }
    }
}

impl TargetState {
    fn models(&self) -> MutexGuard<'_, Models> {
        self.models
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn apply(&self, spec: &ServiceSpec) {
        let checks = spec.health_checks.as_ref();
        let settings = TargetSettings {
            health: HealthParams::from_spec(checks),
            passive_failure_statuses: checks
                .and_then(|checks| checks.passive.as_ref())
                .map(|passive| passive.failure_statuses.clone())
                .unwrap_or_default(),
            breaker_failure_statuses: spec
                .circuit_breaker
                .as_ref()
                .map(|breaker| breaker.failure_statuses.clone())
                .unwrap_or_default(),
            active: checks.and_then(|checks| checks.active.clone()),
        };
        let mut models = self.models();
        models.breaker = match (&spec.circuit_breaker, models.breaker.take()) {
            (None, _) => None,
            (Some(breaker_spec), Some(mut breaker)) => {
                breaker.set_params(BreakerParams::from_spec(breaker_spec));
                Some(breaker)
            }
            (Some(breaker_spec), None) => {
                Some(CircuitBreaker::new(BreakerParams::from_spec(breaker_spec)))
            }
        };
        models.settings = settings;
        let circuit = models
            .breaker
            .as_ref()
            .map_or(CircuitState::Closed, |breaker| {
                breaker.state(self.clock.now_nanos())
            });
        drop(models);
        self.circuit_gauge.set(circuit_gauge_value(circuit));
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Returns the number of requests sent to this target whose response has not ended yet.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Returns whether health checks keep the target in service, and whether its circuit
    /// would let a request through now. An expired passive ejection ends here.
    pub fn availability(&self) -> (bool, bool) {
        let now = self.clock.now_nanos();
        let mut models = self.models();
        let settings = models.settings.health;
        let (healthy, transition) = models.health.poll(&settings, now);
        let circuit_allows = models
            .breaker
            .as_ref()
            .is_none_or(|breaker| breaker.would_allow(now));
        drop(models);
        if let Some(transition) = transition {
            self.report_health(transition);
        }
        (healthy, circuit_allows)
    }

    /// Starts an attempt on this target: takes a circuit-breaker slot and counts the request in
    /// flight. Returns `None` when the circuit does not let it through.
    pub fn try_start(self: &Arc<Self>) -> Option<Attempt> {
        let now = self.clock.now_nanos();
        let mut models = self.models();
        let allowed = models
            .breaker
            .as_mut()
            .is_none_or(|breaker| breaker.try_acquire(now));
        let state = models.breaker.as_ref().map(|breaker| breaker.state(now));
        drop(models);
        // An open circuit turns half-open by time alone, so the first request after the
        // cooldown reports it.
        if let Some(state) = state
            && self.circuit_gauge.get() != circuit_gauge_value(state)
        {
            self.report_circuit(state);
        }
        if !allowed {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Attempt {
            state: self.clone(),
            recorded: false,
        })
    }

    fn record(&self, observed: Observed) {
        let now = self.clock.now_nanos();
        let mut models = self.models();
        let passive_failure = match observed {
            Observed::TransportFailure => true,
            Observed::Response(status) => {
                models.settings.passive_failure_statuses.contains(&status)
            }
        };
        let breaker_failure = match observed {
            Observed::TransportFailure => true,
            Observed::Response(status) => {
                models.settings.breaker_failure_statuses.contains(&status)
            }
        };
        let settings = models.settings.health;
        let health = models
            .health
            .record_request(&settings, !passive_failure, now);
        let circuit = models
            .breaker
            .as_mut()
            .and_then(|breaker| breaker.record(!breaker_failure, now));
        drop(models);
        if let Some(transition) = health {
            self.report_health(transition);
        }
        if let Some(state) = circuit {
            self.report_circuit(state);
        }
    }

    fn release(&self) {
        if let Some(breaker) = self.models().breaker.as_mut() {
            breaker.release();
        }
    }

    pub(crate) fn record_probe(&self, success: bool) {
        let now = self.clock.now_nanos();
        let mut models = self.models();
        let settings = models.settings.health;
        let transition = models.health.record_probe(&settings, success, now);
        drop(models);
        if let Some(transition) = transition {
            self.report_health(transition);
        }
    }

    pub(crate) fn active_check(&self) -> Option<ActiveHealthCheckSpec> {
        self.models().settings.active.clone()
    }

    fn report_health(&self, transition: Transition) {
        match transition {
            Transition::TakenOut(cause) => {
                self.healthy_gauge.set(0);
                tracing::warn!(service.name = %self.service, upstream.target = %self.url, cause = cause.name(), "upstream target taken out of service");
            }
            Transition::PutBack => {
                self.healthy_gauge.set(1);
                tracing::info!(service.name = %self.service, upstream.target = %self.url, "upstream target back in service");
            }
        }
    }

    fn report_circuit(&self, state: CircuitState) {
        self.circuit_gauge.set(circuit_gauge_value(state));
        match state {
            CircuitState::Open => {
                tracing::warn!(service.name = %self.service, upstream.target = %self.url, "circuit opened")
            }
            CircuitState::HalfOpen => {
                tracing::info!(service.name = %self.service, upstream.target = %self.url, "circuit half-open, sending trial requests")
            }
            CircuitState::Closed => {
                tracing::info!(service.name = %self.service, upstream.target = %self.url, "circuit closed")
            }
        }
    }

    /// Returns the target's state for the admin API.
    pub fn report(&self) -> TargetReport {
        let now = self.clock.now_nanos();
        let models = self.models();
        let unhealthy = models.health.unhealthy_since();
        let (probe_successes, probe_failures, request_failures) = models.health.counters();
        TargetReport {
            target: self.url.to_string(),
            address: self.target.address.to_string(),
            weight: self.weight.load(Ordering::Relaxed),
            health: if unhealthy.is_some() {
                "unhealthy"
            } else {
                "healthy"
            },
            unhealthy_cause: unhealthy.map(|(cause, _)| cause.name()),
            unhealthy_for_ms: unhealthy.map(|(_, since)| now.saturating_sub(since) / 1_000_000),
            circuit: models
                .breaker
                .as_ref()
                .map(|breaker| breaker.state(now).name()),
            in_flight: self.in_flight(),
            probe_successes,
            probe_failures,
            request_failures,
        }
    }
}

fn circuit_gauge_value(state: CircuitState) -> i64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::HalfOpen => 1,
        CircuitState::Open => 2,
    }
}

/// One target's state as `GET /services/{name}/health` returns it.
#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub address: String,
    pub weight: u32,
    /// `healthy` or `unhealthy`.
    pub health: &'static str,
    /// `active_check` or `passive_check`, while unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_cause: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy_for_ms: Option<u64>,
    /// `closed`, `open` or `half_open`. Absent without a circuit breaker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit: Option<&'static str>,
    pub in_flight: u64,
    /// Consecutive successful active checks.
    pub probe_successes: u32,
    /// Consecutive failed active checks.
    pub probe_failures: u32,
    /// Consecutive failed requests, counted by passive checks.
    pub request_failures: u32,
}

/// An attempt started on a target. Dropping it without [`Attempt::finish`] returns its
/// circuit-breaker slot unrecorded, as for a request the client cancelled.
pub struct Attempt {
    state: Arc<TargetState>,
    recorded: bool,
}

impl Attempt {
    pub fn target(&self) -> &Arc<TargetState> {
        &self.state
    }

    /// Records the outcome and returns the in-flight count, which ends when the response body
    /// does.
    pub fn finish(mut self, observed: Observed) -> InFlight {
        self.state.record(observed);
        self.recorded = true;
        InFlight {
            state: Some(self.state.clone()),
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.recorded {
            self.state.release();
            self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A request counted in flight on a target until this is dropped.
pub struct InFlight {
    state: Option<Arc<TargetState>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

type StateKey = (String, String);

/// The live target states by service and URL, shared by the registry and the states, which
/// remove themselves when dropped.
struct StateTable {
    states: Mutex<HashMap<StateKey, Weak<TargetState>>>,
    metrics: Arc<Metrics>,
}

impl StateTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<StateKey, Weak<TargetState>>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The target states and retry budgets of every service, kept across snapshots.
pub struct TargetRegistry {
    table: Arc<StateTable>,
    budgets: Mutex<HashMap<String, Weak<Mutex<RetryBudget>>>>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    probe_client: Client<HttpConnector, Empty<Bytes>>,
}

impl TargetRegistry {
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let probe_client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        TargetRegistry {
            table: Arc::new(StateTable {
                states: Mutex::new(HashMap::new()),
                metrics: metrics.clone(),
            }),
            budgets: Mutex::new(HashMap::new()),
            metrics,
            clock,
            probe_client,
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Returns the state of `target` in `spec`, reusing the one in service when there is one,
    /// and applies the service's current settings to it. Starts the target's active check
    /// when the service has one and it is not running yet.
    pub fn target(
        &self,
        spec: &ServiceSpec,
        url: &str,
        target: Target,
        weight: u32,
    ) -> Arc<TargetState> {
        let key = (spec.name.clone(), url.to_string());
        // No state is dropped while this lock is held, because its `Drop` takes the same lock.
        let mut states = self.table.lock();
        let existing = states.get(&key).and_then(Weak::upgrade);
        let state = match existing {
            Some(state) => {
                state.weight.store(weight, Ordering::Relaxed);
                state
            }
            None => {
                let labels = TargetLabels {
                    service: Name(spec.name.as_str().into()),
                    target: Name(url.into()),
                };
                let healthy_gauge = self.metrics.target_healthy.get_or_create(&labels).clone();
                healthy_gauge.set(1);
                let circuit_gauge = self
                    .metrics
                    .target_circuit_state
                    .get_or_create(&labels)
                    .clone();
                let state = Arc::new(TargetState {
                    service: spec.name.as_str().into(),
                    url: url.into(),
                    target,
                    weight: AtomicU32::new(weight),
                    in_flight: AtomicU64::new(0),
                    models: Mutex::new(Models {
                        settings: TargetSettings::default(),
                        health: Health::default(),
                        breaker: None,
                    }),
                    probe_running: AtomicBool::new(false),
                    clock: self.clock.clone(),
                    healthy_gauge,
                    circuit_gauge,
                    table: self.table.clone(),
                });
                states.insert(key, Arc::downgrade(&state));
                state
            }
        };
        drop(states);

        state.apply(spec);
        if spec
            .health_checks
            .as_ref()
            .is_some_and(|checks| checks.active.is_some())
        {
            self.start_probe(&state);
        }
        state
    }

    /// Returns the retry budget of a service, shared with earlier snapshots of it.
    pub fn budget(&self, spec: &ServiceSpec) -> Arc<Mutex<RetryBudget>> {
        let params = BudgetParams::from_spec(&spec.retries.budget);
        let mut budgets = self
            .budgets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        budgets.retain(|_, budget| budget.strong_count() > 0);
        if let Some(budget) = budgets.get(&spec.name).and_then(Weak::upgrade) {
            budget
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .set_params(params);
            return budget;
        }
        let budget = Arc::new(Mutex::new(RetryBudget::new(params)));
        budgets.insert(spec.name.clone(), Arc::downgrade(&budget));
        budget
    }

    fn start_probe(&self, state: &Arc<TargetState>) {
        // Compiling outside a runtime (as `portcullis validate` may) starts no checks.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if state.probe_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(state);
        let client = self.probe_client.clone();
        runtime.spawn(crate::health_check::run_probes(weak, client));
    }
}
