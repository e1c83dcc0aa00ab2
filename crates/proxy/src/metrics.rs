//! Prometheus metrics of the data plane, served by the admin listener at `/metrics`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label value that shares the name string with the snapshot instead of copying it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Name,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UsageDropLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectionLabels {
    pub policy: Name,
    pub code: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendErrorLabels {
    /// The `name` of the `rate-limit` instance.
    pub policy: Name,
    pub backend: Name,
    /// `allow` or `deny`, from the limit's `on_backend_error`.
    pub action: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TargetLabels {
    pub service: Name,
    /// The target URL as configured.
    pub target: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UnavailableLabels {
    pub service: Name,
    /// `unhealthy` or `circuit_open`.
    pub reason: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct IntrospectionLabels {
    /// The introspection endpoint URL, or the issuer while discovery has not found it.
    pub endpoint: Name,
    /// `active`, `inactive`, `rejected` (a JWT response that failed verification) or
    /// `unavailable` (connection error, timeout, non-200 status or unreadable response).
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WafVerdictLabels {
    pub route: Name,
    /// Rule file stem of a matched rule, such as `REQUEST-942-APPLICATION-ATTACK-SQLI` or
    /// `BUILTIN-SQLI`, or `none` when no rule matched.
    pub family: Name,
    /// `pass`, `block`, `detect` (would have blocked, forwarded in detect mode) or
    /// `body_too_large` (rejected because the body exceeds the inspection limit).
    pub verdict: &'static str,
}

/// Latency buckets in seconds, from 100 microseconds to 30 seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// All data-plane metrics.
pub struct Metrics {
    pub ai: portcullis_ai::AiMetrics,
    pub ai_limits: Arc<crate::policies::ai_limits::AiLimitMetrics>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub rejections: Family<RejectionLabels, Counter>,
    pub open_connections: Gauge,
    pub tls_handshake_failures: Counter,
    pub config_version: Gauge,
    pub access_log_dropped: Counter,
    /// AI calls left out of the usage report, by reason: `queue_full` or `store_error`.
    pub ai_usage_dropped: Family<UsageDropLabels, Counter>,
    pub rate_limit_backend_errors: Family<BackendErrorLabels, Counter>,
    /// 1 while a target is in service, 0 while health checks keep it out.
    pub target_healthy: Family<TargetLabels, Gauge>,
    /// 0 closed, 1 half-open, 2 open.
    pub target_circuit_state: Family<TargetLabels, Gauge>,
    pub upstream_retries: Family<ServiceLabels, Counter>,
    pub upstream_retries_denied: Family<ServiceLabels, Counter>,
    pub upstream_unavailable: Family<UnavailableLabels, Counter>,
    pub introspection_calls: Family<IntrospectionLabels, Counter>,
    pub waf_verdicts: Family<WafVerdictLabels, Counter>,
}

/// The series of one route that almost every request updates, looked up in their families on
/// first use and kept with the compiled route, so that a request does not hash its labels.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// `portcullis_requests_total` with status 200.
    ok_requests: OnceLock<Counter>,
    request_duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
}

impl RouteMetrics {
    /// Records a finished request of the route named `route`, as [`Metrics::record_request`]
    /// does.
    pub fn record(
        &self,
        metrics: &Metrics,
        route: &Arc<str>,
        status: u16,
        duration: Duration,
        upstream_latency: Option<Duration>,
    ) {
        let route_labels = || RouteLabels {
            route: Name(route.clone()),
        };
        if status == 200 {
            self.ok_requests
                .get_or_init(|| {
                    let labels = RequestLabels {
                        route: Name(route.clone()),
                        status,
                    };
                    metrics.requests.get_or_create(&labels).clone()
                })
                .inc();
        } else {
            metrics.count_request(route, status);
        }
        self.request_duration
            .get_or_init(|| {
                metrics
                    .request_duration
                    .get_or_create(&route_labels())
                    .clone()
            })
            .observe(duration.as_secs_f64());
        if let Some(latency) = upstream_latency {
            self.upstream_duration
                .get_or_init(|| {
                    metrics
                        .upstream_duration
                        .get_or_create(&route_labels())
                        .clone()
                })
                .observe(latency.as_secs_f64());
        }
    }
}

impl Metrics {
    /// Records a finished request: its count by route and status, its duration and the time
    /// its upstream took to send the response headers. `route` is empty for a request that
    /// matched no route.
    pub fn record_request(
        &self,
        route: &Arc<str>,
        status: u16,
        duration: Duration,
        upstream_latency: Option<Duration>,
    ) {
        let route_labels = RouteLabels {
            route: Name(route.clone()),
        };
        self.count_request(route, status);
        self.request_duration
            .get_or_create(&route_labels)
            .observe(duration.as_secs_f64());
        if let Some(latency) = upstream_latency {
            self.upstream_duration
                .get_or_create(&route_labels)
                .observe(latency.as_secs_f64());
        }
    }

    fn count_request(&self, route: &Arc<str>, status: u16) {
        let labels = RequestLabels {
            route: Name(route.clone()),
            status,
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Metrics {
            ai: portcullis_ai::AiMetrics::register(registry),
            ai_limits: crate::policies::ai_limits::AiLimitMetrics::register(registry),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            rejections: Family::default(),
            open_connections: Gauge::default(),
            tls_handshake_failures: Counter::default(),
            config_version: Gauge::default(),
            access_log_dropped: Counter::default(),
            ai_usage_dropped: Family::default(),
            rate_limit_backend_errors: Family::default(),
            target_healthy: Family::default(),
            target_circuit_state: Family::default(),
            upstream_retries: Family::default(),
            upstream_retries_denied: Family::default(),
            upstream_unavailable: Family::default(),
            introspection_calls: Family::default(),
            waf_verdicts: Family::default(),
        };
        registry.register(
            "portcullis_requests",
            "Requests by route and response status",
            metrics.requests.clone(),
        );
        registry.register(
            "portcullis_request_duration_seconds",
            "Time from request arrival to the end of the response body",
            metrics.request_duration.clone(),
        );
        registry.register(
            "portcullis_upstream_duration_seconds",
            "Time from sending a request upstream to receiving its response headers",
            metrics.upstream_duration.clone(),
        );
        registry.register(
            "portcullis_rejections",
            "Requests rejected by the gateway, by policy and error code",
            metrics.rejections.clone(),
        );
        registry.register(
            "portcullis_open_connections",
            "Client connections currently open",
            metrics.open_connections.clone(),
        );
        registry.register(
            "portcullis_tls_handshake_failures",
            "Client TLS handshakes that failed",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "portcullis_config_version",
            "Config version of the snapshot being served",
            metrics.config_version.clone(),
        );
        registry.register(
            "portcullis_ai_usage_dropped",
            "AI calls left out of the usage report, by reason: queue_full when the queue to the writer was full, store_error when the store rejected the batch after its retries",
            metrics.ai_usage_dropped.clone(),
        );
        registry.register(
            "portcullis_access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            metrics.access_log_dropped.clone(),
        );
        registry.register(
            "portcullis_rate_limit_backend_errors",
            "Rate-limit checks whose counter backend failed, by limit name, backend and the action taken",
            metrics.rate_limit_backend_errors.clone(),
        );
        registry.register(
            "portcullis_upstream_target_healthy",
            "1 while a target is in service, 0 while health checks keep it out",
            metrics.target_healthy.clone(),
        );
        registry.register(
            "portcullis_upstream_circuit_state",
            "Circuit state of a target: 0 closed, 1 half-open, 2 open; updated when a request \
             or probe reaches the target",
            metrics.target_circuit_state.clone(),
        );
        registry.register(
            "portcullis_upstream_retries",
            "Upstream attempts that were retries of a failed attempt",
            metrics.upstream_retries.clone(),
        );
        registry.register(
            "portcullis_upstream_retries_denied",
            "Retries not made because the service's retry budget was spent",
            metrics.upstream_retries_denied.clone(),
        );
        registry.register(
            "portcullis_upstream_unavailable",
            "Requests answered 503 because no target was available, by reason",
            metrics.upstream_unavailable.clone(),
        );
        registry.register(
            "portcullis_introspection_calls",
            "Token introspection calls to authorization servers, by endpoint and result",
            metrics.introspection_calls.clone(),
        );
        registry.register(
            "portcullis_waf_verdicts",
            "Requests inspected by a waf policy, by route, matched rule family and verdict; a \
             request that matched rules of several families counts once in each",
            metrics.waf_verdicts.clone(),
        );
        Arc::new(metrics)
    }
}
