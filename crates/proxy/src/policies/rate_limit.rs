//! `rate-limit`: GCRA limits keyed by consumer, route, service, client IP or a header. Runs in
//! [`Phase::Limit`].
//!
//! Admitted and rejected responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (draft-ietf-httpapi-ratelimit-headers-07) and `RateLimit-Policy` with
//! `RateLimit` in the structured form of later drafts; a rejection adds `Retry-After`. When the
//! counter backend fails, the request is admitted and the failure is logged, so an outage of a
//! shared counter store cannot take the API down.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use portcullis_config::{LimitKey, RateLimitSpec};
use portcullis_policy::rate_limit::{Counters, Decision, Gcra};

use crate::chain::{Exchange, Phase, Policy, PolicyFuture};
use crate::error::Rejection;
use crate::policies::{Clock, PolicyContext};

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Names of the single-valued headers: limit, remaining and reset.
const BINDING_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("ratelimit-limit"),
    HeaderName::from_static("ratelimit-remaining"),
    HeaderName::from_static("ratelimit-reset"),
];
const LEGACY_BINDING_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
];

pub struct RateLimit {
    gcra: Gcra,
    by: LimitKey,
    header: Option<HeaderName>,
    /// Prefix of every counter key: the attachment scope and the instance name.
    key_prefix: String,
    policy_name: String,
    /// The `RateLimit-Policy` item, which is the same on every response. It is `None` when the
    /// instance name cannot appear in a header, and then neither structured header is sent.
    policy_header: Option<HeaderValue>,
    /// Limit in requests per window, as a header value.
    limit_header: HeaderValue,
    legacy_headers: bool,
    counters: Arc<dyn Counters>,
    clock: Arc<dyn Clock>,
}

impl RateLimit {
    pub fn new(spec: &RateLimitSpec, scope: &str, context: &PolicyContext) -> Self {
        let burst = spec.burst.unwrap_or(spec.limit);
        let instance = spec.name.as_deref().unwrap_or("default");
        let gcra = Gcra::new(spec.limit, spec.window, burst);
        let window = gcra.window.as_secs().max(1);
        let policy_header =
            HeaderValue::from_str(&format!("\"{instance}\";q={};w={window}", gcra.limit)).ok();
        RateLimit {
            limit_header: HeaderValue::from(gcra.limit),
            policy_header,
            gcra,
            by: spec.by,
            header: spec
                .header
                .as_deref()
                .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
            key_prefix: format!("{scope}|{instance}|"),
            policy_name: instance.to_string(),
            legacy_headers: spec.legacy_headers,
            counters: context.counters.clone(),
            clock: context.clock.clone(),
        }
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
            LimitKey::Route => {
                key.push_str("route:");
                key.push_str(&exchange.route.name);
            }
            LimitKey::Service => {
                key.push_str("service:");
                key.push_str(&exchange.route.service.name);
            }
            LimitKey::Ip => key.push_str(&client_ip()),
            LimitKey::Header => {
                key.push_str("header:");
                let value = self
                    .header
                    .as_ref()
                    .and_then(|name| exchange.headers.get(name));
                key.push_str(value.and_then(|v| v.to_str().ok()).unwrap_or(""));
            }
        }
        key
    }

    /// Adds this limit's state to `headers`. `RateLimit-Policy` and `RateLimit` list every
    /// limit that ran; the single-valued `RateLimit-Limit`, `-Remaining` and `-Reset` (and their
    /// `X-` forms) describe the limit with the fewest requests remaining, the one that binds.
    fn write_headers(&self, headers: &mut HeaderMap, decision: &Decision) {
        let reset = decision.reset_after.as_secs_f64().ceil() as u64;
        if let Some(policy) = &self.policy_header {
            let mut remaining_text = itoa::Buffer::new();
            let mut reset_text = itoa::Buffer::new();
            let mut state = String::with_capacity(self.policy_name.len() + 48);
            state.push('"');
            state.push_str(&self.policy_name);
            state.push_str("\";r=");
            state.push_str(remaining_text.format(decision.remaining));
            state.push_str(";t=");
            state.push_str(reset_text.format(reset));
            // The policy header's validity shows that the name is valid in this one too.
            if let Ok(state) = HeaderValue::from_maybe_shared(bytes::Bytes::from(state)) {
                headers.append(RATELIMIT_POLICY, policy.clone());
                headers.append(RATELIMIT, state);
            }
        }

        let binding_remaining = headers
            .get(&BINDING_HEADERS[1])
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        if binding_remaining.is_some_and(|remaining| remaining <= decision.remaining) {
            return;
        }
        let remaining = HeaderValue::from(decision.remaining);
        let reset = HeaderValue::from(reset);
        let sets: &[[HeaderName; 3]] = if self.legacy_headers {
            &[BINDING_HEADERS, LEGACY_BINDING_HEADERS]
        } else {
            &[BINDING_HEADERS]
        };
        for [limit_name, remaining_name, reset_name] in sets {
            headers.insert(limit_name, self.limit_header.clone());
            headers.insert(remaining_name, remaining.clone());
            headers.insert(reset_name, reset.clone());
        }
    }
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
            let key = self.counter_key(exchange);
            let now = self.clock.now_nanos();
            let decision = match self.counters.acquire(&key, &self.gcra, now).await {
                Ok(decision) => decision,
                Err(error) => {
                    tracing::warn!(policy = "rate-limit", route.name = %exchange.route.name, %error, "rate-limit counter failed; admitting the request");
                    return Ok(());
                }
            };
            if decision.allowed {
                self.write_headers(&mut exchange.response_headers, &decision);
                return Ok(());
            }
            let mut rejection = Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry after the time in Retry-After",
            )
            .by_policy("rate-limit");
            let mut headers = HeaderMap::new();
            self.write_headers(&mut headers, &decision);
            let retry_after = decision
                .retry_after
                .unwrap_or_default()
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64;
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
            rejection.add_missing_headers(&headers);
            Err(rejection)
        })
    }
}
