//! Settings of a service's upstream targets: balancing, health checks, retries and the
//! circuit breaker, plus the HTTP/2 limits of client connections.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::load::{KeyError, check_target};
use crate::model::ServiceSpec;

/// One upstream target: a base URL and its weight.
///
/// Written as a plain URL string (weight 1) or as `{ url: ..., weight: ... }`. It serialises
/// back to the string form when the weight is 1, so stored and exported services keep the
/// shape they had before weights existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub url: String,
    /// Relative share of requests, from 1 to 1000.
    pub weight: u32,
}

impl TargetSpec {
    pub fn new(url: impl Into<String>) -> Self {
        TargetSpec {
            url: url.into(),
            weight: 1,
        }
    }

    /// Returns whether the target was given in the mapping form, which moves the URL's key path
    /// from `targets[i]` to `targets[i].url`.
    pub fn is_mapping(&self) -> bool {
        self.weight != 1
    }
}

impl From<&str> for TargetSpec {
    fn from(url: &str) -> Self {
        TargetSpec::new(url)
    }
}

impl Serialize for TargetSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Mapping<'a> {
            url: &'a str,
            weight: u32,
        }
        if self.weight == 1 {
            serializer.serialize_str(&self.url)
        } else {
            Mapping {
                url: &self.url,
                weight: self.weight,
            }
            .serialize(serializer)
        }
    }
}

// Written by hand instead of `#[serde(untagged)]` so that an invalid mapping reports the field
// at fault, such as `targets[0].weight`.
impl<'de> Deserialize<'de> for TargetSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetVisitor;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Mapping {
            url: String,
            #[serde(default = "default_weight")]
            weight: u32,
        }

        impl<'de> serde::de::Visitor<'de> for TargetVisitor {
            type Value = TargetSpec;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a target URL, or a mapping with `url` and `weight`")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<TargetSpec, E> {
                Ok(TargetSpec::new(text))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TargetSpec, A::Error> {
                let deserializer = serde::de::value::MapAccessDeserializer::new(map);
                let mapping = Mapping::deserialize(deserializer)?;
                Ok(TargetSpec {
                    url: mapping.url,
                    weight: mapping.weight,
                })
            }
        }

        deserializer.deserialize_any(TargetVisitor)
    }
}

fn default_weight() -> u32 {
    1
}

/// Largest target weight. Weights are relative, so a larger range adds nothing, and the bound
/// keeps the consistent-hash ring at most 1000 points per target times the points per weight.
pub const MAX_TARGET_WEIGHT: u32 = 1000;

/// Load-balancing settings of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancingSpec {
    pub algorithm: Algorithm,
    /// The request value that `consistent-hash` hashes.
    pub hash_on: HashOn,
    /// The header hashed when `hash_on: header`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
}

impl LoadBalancingSpec {
    pub fn is_default(&self) -> bool {
        *self == LoadBalancingSpec::default()
    }
}

/// A load-balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Smooth weighted round robin as nginx does it; plain round robin when weights are equal.
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight relative to its weight.
    LeastConnections,
    /// A hash ring keyed by `hash_on`, so one key keeps going to one target.
    ConsistentHash,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::ConsistentHash => "consistent-hash",
        }
    }
}

/// The request value a consistent hash is keyed by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashOn {
    /// The canonical client IP.
    #[default]
    Ip,
    /// The value of `hash_header`; requests without it hash on the client IP.
    Header,
    /// The authenticated consumer; requests without one hash on the client IP.
    Consumer,
    /// The canonical path without the query string.
    Path,
}

/// Active and passive health checks of a service's targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecksSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealthCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveHealthCheckSpec>,
}

/// A periodic `GET` to each target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealthCheckSpec {
    /// Path requested on the target, after the target's base path.
    pub path: String,
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Time for the connection and the response headers of one check.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Consecutive successful checks that put an unhealthy target back.
    pub healthy_threshold: u32,
    /// Consecutive failed checks that take a healthy target out.
    pub unhealthy_threshold: u32,
    /// Statuses that count as a success. Empty means any 2xx or 3xx.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expected_statuses: Vec<u16>,
}

impl Default for ActiveHealthCheckSpec {
    fn default() -> Self {
        ActiveHealthCheckSpec {
            path: "/".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expected_statuses: Vec::new(),
        }
    }
}

/// Health judged from real traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthCheckSpec {
    /// Consecutive failed requests that take a target out.
    pub unhealthy_threshold: u32,
    /// Response statuses that count as a failed request, besides connection failures and
    /// timeouts.
    pub failure_statuses: Vec<u16>,
    /// How long a target taken out by passive checks stays out when the service has no active
    /// check to put it back.
    #[serde(with = "duration")]
    pub ejection_time: Duration,
}

impl Default for PassiveHealthCheckSpec {
    fn default() -> Self {
        PassiveHealthCheckSpec {
            unhealthy_threshold: 5,
            failure_statuses: default_failure_statuses(),
            ejection_time: Duration::from_secs(30),
        }
    }
}

fn default_failure_statuses() -> Vec<u16> {
    vec![500, 502, 503, 504]
}

/// Retries of failed upstream attempts on another target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Retries after the first attempt. 0 turns retries off.
    pub attempts: u32,
    /// Response statuses retried for idempotent requests, besides connection failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_statuses: Vec<u16>,
    pub budget: RetryBudgetSpec,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 2,
            on_statuses: Vec::new(),
            budget: RetryBudgetSpec::default(),
        }
    }
}

impl RetrySpec {
    pub fn is_default(&self) -> bool {
        *self == RetrySpec::default()
    }
}

/// The share of requests that may be retries, so that retries cannot multiply the load on a
/// failing upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetSpec {
    /// Retries allowed per request in the window, from 0 to 1.
    pub ratio: f64,
    /// Retries allowed per second whatever the ratio, so that a service with little traffic
    /// can still retry.
    pub min_per_second: u32,
    /// Span over which requests and retries are counted.
    #[serde(with = "duration")]
    pub window: Duration,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        RetryBudgetSpec {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// A circuit breaker on each target of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerSpec {
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Share of failed requests in `window` that opens the circuit, above 0 and at most 1. Unset
    /// turns the ratio off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    /// Requests in `window` needed before `failure_ratio` applies.
    pub min_requests: u32,
    #[serde(with = "duration")]
    pub window: Duration,
    /// Time an open circuit waits before it lets trial requests through.
    #[serde(with = "duration")]
    pub cooldown: Duration,
    /// Trial requests let through at once while half-open. That many successes close it.
    pub half_open_requests: u32,
    /// Response statuses that count as failures, besides connection failures and timeouts.
    pub failure_statuses: Vec<u16>,
}

impl Default for CircuitBreakerSpec {
    fn default() -> Self {
        CircuitBreakerSpec {
            consecutive_failures: 5,
            failure_ratio: None,
            min_requests: 20,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            half_open_requests: 1,
            failure_statuses: default_failure_statuses(),
        }
    }
}

/// HTTP/2 limits of client connections, which bound the CPU and memory that one connection can
/// cost the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Settings {
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Streams that the client may reset before the gateway has accepted them. Past it, the
    /// connection gets `GOAWAY` with `ENHANCE_YOUR_CALM`, which stops the rapid-reset attack.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway may reset for protocol errors on one connection before it closes
    /// the connection with `ENHANCE_YOUR_CALM`.
    pub max_local_error_reset_streams: usize,
    /// Largest decoded header list, in bytes. Unset means twice `limits.max_header_bytes`, and
    /// at least 16 KiB. It also bounds the CONTINUATION frames of one header block.
    pub max_header_list_size: Option<u32>,
    /// Bytes buffered for sending per stream.
    pub max_send_buf_size: usize,
    /// Interval of keep-alive pings. Unset turns them off.
    #[serde(with = "duration::option")]
    pub keep_alive_interval: Option<Duration>,
    /// Time a ping may go unanswered before the connection is closed.
    #[serde(with = "duration")]
    pub keep_alive_timeout: Duration,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: 256,
            max_pending_accept_reset_streams: 64,
            max_local_error_reset_streams: 256,
            max_header_list_size: None,
            max_send_buf_size: 400 * 1024,
            keep_alive_interval: Some(Duration::from_secs(30)),
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

/// Checks the URLs and weights of a service's targets.
pub(crate) fn validate_targets(at: &str, targets: &[TargetSpec]) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (j, target) in targets.iter().enumerate() {
        let url_key = if target.is_mapping() {
            format!("{at}.targets[{j}].url")
        } else {
            format!("{at}.targets[{j}]")
        };
        if let Err(message) = check_target(&target.url) {
            errors.push(KeyError::new(url_key, message));
        } else if !seen.insert(target.url.trim_end_matches('/')) {
            // Health and circuit state is kept per URL, so two entries would share it.
            errors.push(KeyError::new(
                url_key,
                format!(
                    "target `{}` is listed twice; give it one entry with a weight instead",
                    target.url
                ),
            ));
        }
        if !(1..=MAX_TARGET_WEIGHT).contains(&target.weight) {
            errors.push(KeyError::new(
                format!("{at}.targets[{j}].weight"),
                format!("must be from 1 to {MAX_TARGET_WEIGHT}"),
            ));
        }
    }
    errors
}

/// Checks balancing, health checks, retries and the circuit breaker of one service.
pub(crate) fn validate_resilience(at: &str, service: &ServiceSpec) -> Vec<KeyError> {
    let mut errors = Vec::new();
    let balancing = &service.load_balancing;
    let hash_header_key = format!("{at}.load_balancing.hash_header");
    match (balancing.hash_on, &balancing.hash_header) {
        (HashOn::Header, None) => errors.push(KeyError::new(
            hash_header_key,
            "`hash_on: header` needs the header name in `hash_header`",
        )),
        (HashOn::Header, Some(name)) if http::HeaderName::from_bytes(name.as_bytes()).is_err() => {
            errors.push(KeyError::new(
                hash_header_key,
                format!("invalid header name `{name}`"),
            ))
        }
        (HashOn::Header, Some(_)) | (_, None) => {}
        (_, Some(_)) => errors.push(KeyError::new(
            hash_header_key,
            "`hash_header` is only read with `hash_on: header`",
        )),
    }

    if let Some(checks) = &service.health_checks {
        if let Some(active) = &checks.active {
            let key = format!("{at}.health_checks.active");
            if !active.path.starts_with('/')
                || http::uri::PathAndQuery::try_from(active.path.as_str()).is_err()
            {
                errors.push(KeyError::new(
                    format!("{key}.path"),
                    format!("invalid path `{}`; it must start with `/`", active.path),
                ));
            }
            at_least(
                &mut errors,
                &format!("{key}.interval"),
                active.interval,
                Duration::from_millis(10),
                "10ms",
            );
            at_least(
                &mut errors,
                &format!("{key}.timeout"),
                active.timeout,
                Duration::from_millis(1),
                "1ms",
            );
            positive(
                &mut errors,
                &format!("{key}.healthy_threshold"),
                active.healthy_threshold,
            );
            positive(
                &mut errors,
                &format!("{key}.unhealthy_threshold"),
                active.unhealthy_threshold,
            );
            check_statuses(
                &mut errors,
                &format!("{key}.expected_statuses"),
                &active.expected_statuses,
            );
        }
        if let Some(passive) = &checks.passive {
            let key = format!("{at}.health_checks.passive");
            positive(
                &mut errors,
                &format!("{key}.unhealthy_threshold"),
                passive.unhealthy_threshold,
            );
            check_statuses(
                &mut errors,
                &format!("{key}.failure_statuses"),
                &passive.failure_statuses,
            );
            at_least(
                &mut errors,
                &format!("{key}.ejection_time"),
                passive.ejection_time,
                Duration::from_millis(1),
                "1ms",
            );
        }
    }

    let retries = &service.retries;
    if retries.attempts > MAX_RETRY_ATTEMPTS {
        errors.push(KeyError::new(
            format!("{at}.retries.attempts"),
            format!("must be at most {MAX_RETRY_ATTEMPTS}"),
        ));
    }
    check_statuses(
        &mut errors,
        &format!("{at}.retries.on_statuses"),
        &retries.on_statuses,
    );
    check_ratio(
        &mut errors,
        &format!("{at}.retries.budget.ratio"),
        retries.budget.ratio,
        true,
    );
    at_least(
        &mut errors,
        &format!("{at}.retries.budget.window"),
        retries.budget.window,
        Duration::from_millis(100),
        "100ms",
    );

    if let Some(breaker) = &service.circuit_breaker {
        let key = format!("{at}.circuit_breaker");
        positive(
            &mut errors,
            &format!("{key}.consecutive_failures"),
            breaker.consecutive_failures,
        );
        if let Some(ratio) = breaker.failure_ratio {
            check_ratio(&mut errors, &format!("{key}.failure_ratio"), ratio, false);
        }
        positive(
            &mut errors,
            &format!("{key}.min_requests"),
            breaker.min_requests,
        );
        at_least(
            &mut errors,
            &format!("{key}.window"),
            breaker.window,
            Duration::from_millis(100),
            "100ms",
        );
        at_least(
            &mut errors,
            &format!("{key}.cooldown"),
            breaker.cooldown,
            Duration::from_millis(1),
            "1ms",
        );
        positive(
            &mut errors,
            &format!("{key}.half_open_requests"),
            breaker.half_open_requests,
        );
        check_statuses(
            &mut errors,
            &format!("{key}.failure_statuses"),
            &breaker.failure_statuses,
        );
    }
    errors
}

/// Largest `retries.attempts`, which caps one request at 11 upstream attempts.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Checks the HTTP/2 limits of client connections.
pub(crate) fn validate_http2(settings: &Http2Settings) -> Vec<KeyError> {
    let mut errors = Vec::new();
    positive(
        &mut errors,
        "http2.max_concurrent_streams",
        settings.max_concurrent_streams,
    );
    for (key, value) in [
        (
            "http2.max_pending_accept_reset_streams",
            settings.max_pending_accept_reset_streams,
        ),
        (
            "http2.max_local_error_reset_streams",
            settings.max_local_error_reset_streams,
        ),
    ] {
        if value == 0 {
            errors.push(KeyError::new(key, "must be greater than 0"));
        }
    }
    if let Some(size) = settings.max_header_list_size {
        if size < 1024 {
            errors.push(KeyError::new(
                "http2.max_header_list_size",
                "must be at least 1024",
            ));
        }
    }
    if settings.max_send_buf_size < 1024 {
        errors.push(KeyError::new(
            "http2.max_send_buf_size",
            "must be at least 1024",
        ));
    }
    if let Some(interval) = settings.keep_alive_interval {
        at_least(
            &mut errors,
            "http2.keep_alive_interval",
            interval,
            Duration::from_millis(10),
            "10ms",
        );
    }
    at_least(
        &mut errors,
        "http2.keep_alive_timeout",
        settings.keep_alive_timeout,
        Duration::from_millis(10),
        "10ms",
    );
    errors
}

fn positive(errors: &mut Vec<KeyError>, key: &str, value: u32) {
    if value == 0 {
        errors.push(KeyError::new(key, "must be greater than 0"));
    }
}

fn at_least(errors: &mut Vec<KeyError>, key: &str, value: Duration, minimum: Duration, text: &str) {
    if value < minimum {
        errors.push(KeyError::new(key, format!("must be at least {text}")));
    }
}

fn check_ratio(errors: &mut Vec<KeyError>, key: &str, value: f64, zero_allowed: bool) {
    let valid =
        value.is_finite() && value <= 1.0 && (value > 0.0 || (zero_allowed && value == 0.0));
    if !valid {
        let range = if zero_allowed {
            "from 0 to 1"
        } else {
            "greater than 0 and at most 1"
        };
        errors.push(KeyError::new(key, format!("must be {range}, such as 0.2")));
    }
}

fn check_statuses(errors: &mut Vec<KeyError>, key: &str, statuses: &[u16]) {
    for (i, status) in statuses.iter().enumerate() {
        if !(100..=599).contains(status) {
            errors.push(KeyError::new(
                format!("{key}[{i}]"),
                format!("invalid status {status}; use 100 to 599"),
            ));
        }
    }
}
