//! Settings of a service's upstream targets: balancing, health checks, retries and the
//! circuit breaker, plus the HTTP/2 limits of client connections.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

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

/// Largest `retries.attempts`, which caps one request at 11 upstream attempts.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
